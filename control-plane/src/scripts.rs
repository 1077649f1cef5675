//! Deployment scripts: playbooks and shell scripts a technician keeps in the UI, with
//! declared variables (default, description, secret, required) and a scope (one
//! project, or every project). The sample playbooks of `playbooks/` are embedded in
//! the binary and seeded into an empty scripts table at startup.
//!
//! This module also owns what keeps secret values out of the store's execution
//! records: a run splits its variables into plain ones (stored in the execution's
//! work) and secret ones, kept aside in `execution_secrets` only while the job is
//! queued or running, merged into the job spec when it is sent, and listed in the
//! spec's `secrets` so the agent masks them in every output chunk.
//!
//! Names are unique per scope (one project, or the global scope), through the index
//! `script_by_scope_name` (`SCOPE/lower-cased name`, SCOPE a project id or `*`); a name
//! another project uses is free, and nobody learns another project's script names
//! from a refusal. [`index_names_per_scope`] moves the first schema's store-wide index
//! (`script_by_name`) over at startup.
//!
//! **Invariant:** every function here that acts for a subject decides `policy::can`
//! before it looks anything else up or validates the input.
//!
//! What does not live here: running a script over many servers (`rollouts`), the job
//! lifecycle (`executions`), parsing playbooks (the agent's `playbook` module, which
//! this module calls so that saving validates with the very parser that runs it, in its
//! mode that never touches the control plane's files: imports are resolved by the
//! agent at run time).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{Execution, KindHooks, NewExecution};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Store, Writer};
use dynserv_shared::proto::{JobKind, JobSpec};

/// `SCOPE/lower-cased name` -> script id; SCOPE is the project id or [`GLOBAL_SCOPE`].
const BY_SCOPE_NAME: &str = "script_by_scope_name";
/// The first schema's index: lower-cased name -> id, unique across all projects.
/// [`index_names_per_scope`] empties it.
const OLD_BY_NAME: &str = "script_by_name";
/// The scope part of the name index for scripts every project may use (no project id
/// is `*`: ids are UUIDs).
const GLOBAL_SCOPE: &str = "*";
/// Longest script body accepted.
pub const MAX_BODY_LEN: usize = 1024 * 1024;
/// Most variables a script declares.
pub const MAX_VARIABLES: usize = 100;

/// What a script is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    /// An Ansible playbook run by the agent's native runtime; variables are extra vars.
    Playbook,
    /// A shell script run by its interpreter; variables are environment variables.
    Shell,
}

impl ScriptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptKind::Playbook => "playbook",
            ScriptKind::Shell => "shell",
        }
    }

    pub fn parse(text: &str) -> Option<ScriptKind> {
        match text.trim() {
            "playbook" => Some(ScriptKind::Playbook),
            "shell" | "script" => Some(ScriptKind::Shell),
            _ => None,
        }
    }
}

/// A variable a script declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    /// The value used when a run gives none; empty means "not passed" (the playbook's
    /// own default applies). Secret variables have no stored default.
    #[serde(default)]
    pub default: String,
    #[serde(default)]
    pub description: String,
    /// Its value is masked in all output and never stored.
    #[serde(default)]
    pub secret: bool,
    /// A run must give a non-empty value (or the default must be non-empty).
    #[serde(default)]
    pub required: bool,
}

/// A stored deployment script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Script {
    pub id: String,
    pub name: String,
    pub description: String,
    pub kind: ScriptKind,
    pub body: String,
    /// The interpreter of a shell script (`/bin/sh` by default).
    pub interpreter: String,
    pub variables: Vec<Variable>,
    /// A playbook task whose module the native runtime lacks may run through
    /// ansible-core on the server (when installed there); otherwise such a playbook is
    /// refused before any task runs.
    #[serde(default)]
    pub allow_ansible_fallback: bool,
    /// The project it belongs to; `None` for a script every project may use.
    pub project_id: Option<String>,
    /// The sample file it was seeded from, if any.
    pub sample: Option<String>,
    /// The files that come with a playbook (roles/, templates/, …): the id of their
    /// stored tree (see `script_files`), absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// The tree's files as pages list them (path, size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::script_files::FileEntry>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for Script {
    const TABLE: &'static str = "scripts";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Secret variable values of a queued or running execution; stored sealed (encrypted
/// with the master secret's key) and deleted when the execution ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionSecrets {
    /// The execution id.
    pub id: String,
    pub values: BTreeMap<String, String>,
}

impl Record for ExecutionSecrets {
    const TABLE: &'static str = "execution_secrets";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// A body that does not validate, with the position of the first error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BodyError {
    pub message: String,
    /// 1-based; 0 when the error has no position.
    pub line: usize,
    pub column: usize,
}

impl BodyError {
    /// `line L, column C: message`, as the editor shows it.
    pub fn display(&self) -> String {
        if self.line == 0 {
            self.message.clone()
        } else {
            format!(
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

/// Validates a script body: a playbook with the agent's own parser (which accepts
/// modules it lacks only when `allow_fallback` lets them run through ansible-core), a
/// shell script for size only (its interpreter judges the rest).
pub fn check_body(kind: ScriptKind, body: &str, allow_fallback: bool) -> Result<(), BodyError> {
    if body.trim().is_empty() {
        return Err(BodyError {
            message: "the body is empty".into(),
            line: 0,
            column: 0,
        });
    }
    if body.len() > MAX_BODY_LEN {
        return Err(BodyError {
            message: "the body is larger than 1 MiB".into(),
            line: 0,
            column: 0,
        });
    }
    if kind == ScriptKind::Playbook {
        // Pure parses: the files a playbook imports are the agent's, read when it runs
        // the playbook; reading them here would read (or hang on) the control plane's.
        let parsed = if allow_fallback {
            dynserv_playbook::check_playbook_text_with_ansible_fallback(body)
        } else {
            dynserv_playbook::validate(body)
        };
        if let Err(e) = parsed {
            let (line, column) = e.pos().map(|p| (p.line, p.column)).unwrap_or((0, 0));
            let text = e.to_string();
            // The parser's message ends with its own "(line L, column C)"; the editor
            // shows the position in front instead.
            let message = text
                .strip_suffix(&format!(" (line {line}, column {column})"))
                .unwrap_or(&text)
                .to_string();
            return Err(BodyError {
                message,
                line,
                column,
            });
        }
    }
    Ok(())
}

/// A variable name: a shell variable's rules, so it works as env and as extra var.
pub fn variable_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks declared variables: valid unique names, no stored default for a secret.
pub fn check_variables(variables: &[Variable]) -> AppResult<()> {
    if variables.len() > MAX_VARIABLES {
        return Err(AppError::invalid(
            "variables",
            format!("at most {MAX_VARIABLES} variables"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for v in variables {
        if !variable_name_ok(&v.name) {
            return Err(AppError::invalid(
                "variables",
                format!(
                    "{:?} is not a valid variable name (letters, digits and _, not starting with a digit)",
                    v.name
                ),
            ));
        }
        if !seen.insert(v.name.as_str()) {
            return Err(AppError::invalid(
                "variables",
                format!("variable {} is declared twice", v.name),
            ));
        }
        if v.secret && !v.default.is_empty() {
            return Err(AppError::invalid(
                "variables",
                format!(
                    "secret variable {} cannot have a stored default; give its value when running",
                    v.name
                ),
            ));
        }
        if v.default.len() > 64 * 1024 || v.default.contains('\0') || v.description.len() > 1000 {
            return Err(AppError::invalid(
                "variables",
                format!("variable {}: default or description too long", v.name),
            ));
        }
        crate::validate::check_text("variables", &v.description, 1000).map_err(|_| {
            AppError::invalid(
                "variables",
                format!(
                    "variable {}: the description must not contain control characters such as NUL",
                    v.name
                ),
            )
        })?;
    }
    Ok(())
}

/// The variables of one run, split: plain ones go into the stored work, secret ones
/// only to the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunVars {
    pub plain: BTreeMap<String, String>,
    pub secret: BTreeMap<String, String>,
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Fills a run's variables from what was given and the declared defaults: a declared
/// variable with an empty value is not passed; a required one must have a value;
/// undeclared names pass as plain variables.
pub fn resolve_vars(
    variables: &[Variable],
    given: &BTreeMap<String, serde_json::Value>,
) -> AppResult<RunVars> {
    let mut out = RunVars::default();
    for v in variables {
        let value = given
            .get(&v.name)
            .map(value_text)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| v.default.clone());
        if value.is_empty() {
            if v.required {
                return Err(AppError::invalid(
                    "vars",
                    format!("variable {} is required", v.name),
                ));
            }
            continue;
        }
        if v.secret {
            out.secret.insert(v.name.clone(), value);
        } else {
            out.plain.insert(v.name.clone(), value);
        }
    }
    for (name, value) in given {
        if variables.iter().any(|v| &v.name == name) {
            continue;
        }
        if !variable_name_ok(name) {
            return Err(AppError::invalid(
                "vars",
                format!(
                    "{:?} is not a valid variable name",
                    crate::validate::echo(name)
                ),
            ));
        }
        out.plain.insert(name.clone(), value_text(value));
    }
    Ok(out)
}

/// The body of `POST /api/v1/scripts` and `PUT /api/v1/scripts/{id}`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScriptInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub kind: Option<String>,
    pub body: Option<String>,
    pub interpreter: Option<String>,
    pub variables: Option<Vec<Variable>>,
    /// Whether tasks the native runtime lacks may run through ansible-core.
    pub allow_ansible_fallback: Option<bool>,
    /// A project id or name; absent or empty for a global script.
    pub project: Option<String>,
    /// The files that come with a playbook, replacing the script's (an empty list
    /// removes them); absent: kept as they are.
    pub files: Option<Vec<dynserv_shared::tree::TreeFile>>,
}

/// Whether the subject may edit scripts of this scope.
pub fn may_manage(subject: &Subject, project_id: Option<&str>) -> bool {
    match project_id {
        Some(p) => policy::can(subject, Action::ManageScripts, Some(p)),
        // A global script runs on every project: editing it takes the admin role or a
        // manager's role-wide access.
        None => {
            subject.role == crate::policy::Role::Admin
                || (subject.is_manager && policy::can(subject, Action::ManageScripts, None))
        }
    }
}

/// Whether the subject may see (and run, where it may operate) this script.
pub fn may_see(subject: &Subject, script: &Script) -> bool {
    match &script.project_id {
        Some(p) => policy::can(subject, Action::ViewServers, Some(p)),
        None => policy::can(subject, Action::ViewServers, None),
    }
}

/// Every script the subject may see, by name.
pub fn visible(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Script>> {
    let mut list: Vec<Script> = r
        .list::<Script>()?
        .into_iter()
        .filter(|s| may_see(subject, s))
        .collect();
    list.sort_by_key(|s| s.name.to_lowercase());
    Ok(list)
}

/// The name index key of a script name in a scope.
fn name_key(project_id: Option<&str>, name: &str) -> String {
    format!(
        "{}/{}",
        project_id.unwrap_or(GLOBAL_SCOPE),
        name.trim().to_lowercase()
    )
}

/// The script of a scope with this name, if any.
fn by_name_in(
    r: &impl Read,
    project_id: Option<&str>,
    name: &str,
) -> anyhow::Result<Option<Script>> {
    match r.index_get(BY_SCOPE_NAME, &name_key(project_id, name))? {
        Some(id) => r.get::<Script>(&id),
        None => Ok(None),
    }
}

/// One script by id or name, if the subject may see it: 404 when there is none it may
/// see, 422 when a name matches scripts of several scopes it sees (use the id then).
pub fn get_visible(r: &impl Read, subject: &Subject, key: &str) -> AppResult<Script> {
    if let Some(script) = r.get::<Script>(key)? {
        return match may_see(subject, &script) {
            true => Ok(script),
            false => Err(AppError::not_found("script")),
        };
    }
    // Only the scopes the subject may see are asked, so an answer never tells whether
    // another project has a script of that name.
    let mut found = Vec::new();
    if policy::can(subject, Action::ViewServers, None) {
        found.extend(by_name_in(r, None, key)?);
    }
    for project in crate::projects::all(r)? {
        if policy::can(subject, Action::ViewServers, Some(&project.id)) {
            found.extend(by_name_in(r, Some(&project.id), key)?);
        }
    }
    found.retain(|s| may_see(subject, s));
    match found.len() {
        0 => Err(AppError::not_found("script")),
        1 => Ok(found.remove(0)),
        _ => Err(AppError::invalid(
            "script",
            format!(
                "several scripts are named {}; use the script id",
                key.trim()
            ),
        )),
    }
}

/// One script by id or name for a run on a server of `project_id`: by name, the
/// project's own script first, then a global one.
fn get_for_project(
    r: &impl Read,
    subject: &Subject,
    project_id: &str,
    key: &str,
) -> AppResult<Script> {
    let found = match r.get::<Script>(key)? {
        Some(script) => Some(script),
        None => match by_name_in(r, Some(project_id), key)? {
            Some(script) => Some(script),
            None => by_name_in(r, None, key)?,
        },
    };
    match found {
        Some(script) if may_see(subject, &script) => Ok(script),
        _ => Err(AppError::not_found("script")),
    }
}

/// The scope (project id, or `None` for global) an input names, decided with the
/// subject's rights before anything else is looked at: a project the subject may not
/// see reads as unknown, one it sees but may not manage scripts of is 403.
fn scope_to_manage(
    r: &impl Read,
    subject: &Subject,
    key: Option<&str>,
) -> AppResult<Option<String>> {
    let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
        return match may_manage(subject, None) {
            true => Ok(None),
            false => Err(AppError::forbidden()),
        };
    };
    let project = crate::projects::find(r, key)?
        .filter(|p| policy::can(subject, Action::ViewServers, Some(&p.id)))
        .ok_or_else(|| {
            AppError::invalid(
                "project",
                format!("no project {:?}", crate::validate::echo(key)),
            )
        })?;
    match may_manage(subject, Some(&project.id)) {
        true => Ok(Some(project.id)),
        false => Err(AppError::forbidden()),
    }
}

/// Decides whether the subject may save `input` (as a new script, or over `old`), before
/// the input is validated or any name looked up; the scope it will have.
pub fn authorize_save(
    r: &impl Read,
    subject: &Subject,
    input: &ScriptInput,
    old: Option<&Script>,
) -> AppResult<Option<String>> {
    match old {
        None => scope_to_manage(r, subject, input.project.as_deref()),
        Some(old) => {
            if !may_manage(subject, old.project_id.as_deref()) {
                return Err(AppError::forbidden());
            }
            match &input.project {
                Some(key) => scope_to_manage(r, subject, Some(key)),
                None => Ok(old.project_id.clone()),
            }
        }
    }
}

fn check_interpreter(kind: ScriptKind, interpreter: Option<&str>) -> AppResult<String> {
    let interpreter = interpreter
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("/bin/sh");
    if kind == ScriptKind::Shell
        && (!interpreter.starts_with('/')
            || interpreter.len() > 200
            || interpreter.contains(['\n', '\0']))
    {
        return Err(AppError::invalid(
            "interpreter",
            "interpreter must be an absolute path such as /bin/bash",
        ));
    }
    Ok(interpreter.to_string())
}

/// The validated fields of an input, merged over an existing script's.
struct Checked {
    name: String,
    description: String,
    kind: ScriptKind,
    body: String,
    interpreter: String,
    variables: Vec<Variable>,
    allow_ansible_fallback: bool,
    project_id: Option<String>,
    /// New files to store (`Some(empty)`: none any more); `None`: the old ones stay.
    files: Option<Vec<dynserv_shared::tree::TreeFile>>,
}

/// Validates an input over `old` for the scope `project_id` the caller was authorized
/// for (by [`authorize_save`]).
fn check_input(
    r: &impl Read,
    input: &ScriptInput,
    old: Option<&Script>,
    project_id: Option<String>,
) -> AppResult<Checked> {
    let name = crate::validate::name(
        "name",
        input.name.as_deref().or(old.map(|o| o.name.as_str())),
        100,
    )?;
    if let Some(id) = r.index_get(BY_SCOPE_NAME, &name_key(project_id.as_deref(), &name))? {
        if old.map(|o| o.id.as_str()) != Some(id.as_str()) {
            let scope = match project_id {
                Some(_) => "this project",
                None => "the global scope",
            };
            return Err(AppError::invalid(
                "name",
                format!("a script named {name} already exists in {scope}"),
            ));
        }
    }
    let kind = match input.kind.as_deref() {
        Some(k) => ScriptKind::parse(k)
            .ok_or_else(|| AppError::invalid("kind", "kind is playbook or shell"))?,
        None => old.map(|o| o.kind).unwrap_or(ScriptKind::Playbook),
    };
    let body = input
        .body
        .clone()
        .or_else(|| old.map(|o| o.body.clone()))
        .unwrap_or_default()
        .replace("\r\n", "\n");
    if body.contains('\0') {
        return Err(AppError::invalid(
            "body",
            "the script must not contain NUL bytes",
        ));
    }
    let allow_ansible_fallback = input
        .allow_ansible_fallback
        .or_else(|| old.map(|o| o.allow_ansible_fallback))
        .unwrap_or(false);
    check_body(kind, &body, allow_ansible_fallback)
        .map_err(|e| AppError::invalid("body", e.display()))?;
    let interpreter = check_interpreter(
        kind,
        input
            .interpreter
            .as_deref()
            .or(old.map(|o| o.interpreter.as_str())),
    )?;
    let variables = input
        .variables
        .clone()
        .or_else(|| old.map(|o| o.variables.clone()))
        .unwrap_or_default();
    let variables: Vec<Variable> = variables
        .into_iter()
        .map(|v| Variable {
            name: v.name.trim().to_string(),
            ..v
        })
        .collect();
    check_variables(&variables)?;
    let files = input.files.clone().map(crate::script_files::normalize);
    let kept = old.map(|o| o.files.as_slice()).unwrap_or_default();
    match &files {
        Some(files) if !files.is_empty() => {
            if kind != ScriptKind::Playbook {
                return Err(AppError::invalid(
                    "files",
                    "only a playbook has files (roles, templates, files); a shell script is one body",
                ));
            }
            crate::script_files::check(files, &body, allow_ansible_fallback)?;
        }
        Some(_) => {}
        None if !kept.is_empty() => {
            if kind != ScriptKind::Playbook {
                return Err(AppError::invalid(
                    "kind",
                    "this script has files: remove them before making it a shell script",
                ));
            }
            // A new body must still fit with the files it keeps.
            if let Some(old) = old.filter(|o| o.body != body) {
                let files = files_of(r, old)?;
                dynserv_shared::tree::check_tree(&files, dynserv_shared::tree::wire_len(&body))
                    .map_err(|(_, message)| AppError::invalid("body", message))?;
            }
        }
        None => {}
    }
    let description = crate::validate::text(
        "description",
        input
            .description
            .as_deref()
            .or(old.map(|o| o.description.as_str())),
        2000,
    )?
    .unwrap_or_default();
    Ok(Checked {
        name,
        description,
        kind,
        body,
        interpreter,
        variables,
        allow_ansible_fallback,
        project_id,
        files,
    })
}

/// Stores the new files of a checked input (or none), and answers the script's tree
/// id and file list.
fn save_files(
    w: &mut Writer,
    files: Option<Vec<dynserv_shared::tree::TreeFile>>,
    old: Option<&Script>,
) -> anyhow::Result<(Option<String>, Vec<crate::script_files::FileEntry>)> {
    match files {
        None => Ok(old
            .map(|o| (o.tree.clone(), o.files.clone()))
            .unwrap_or_default()),
        Some(files) if files.is_empty() => Ok((None, Vec::new())),
        Some(files) => {
            let entries = crate::script_files::entries(&files);
            let id = crate::script_files::store(w, files, Utc::now())?;
            Ok((Some(id), entries))
        }
    }
}

/// Validates and stores a new script.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    input: &ScriptInput,
) -> AppResult<Script> {
    let scope = authorize_save(w, subject, input, None)?;
    let c = check_input(w, input, None, scope)?;
    let now = Utc::now();
    let (tree, files) = save_files(w, c.files, None)?;
    let script = Script {
        id: uuid::Uuid::now_v7().to_string(),
        name: c.name,
        description: c.description,
        kind: c.kind,
        body: c.body,
        interpreter: c.interpreter,
        variables: c.variables,
        allow_ansible_fallback: c.allow_ansible_fallback,
        project_id: c.project_id,
        sample: None,
        tree,
        files,
        created_by: actor.username.clone(),
        created_at: now,
        updated_by: actor.username.clone(),
        updated_at: now,
    };
    w.put(&script)?;
    w.index_put(
        BY_SCOPE_NAME,
        &name_key(script.project_id.as_deref(), &script.name),
        &script.id,
    )?;
    audit::record(
        w,
        actor,
        "script.create",
        &format!("script:{}", script.name),
        script.kind.as_str(),
    )?;
    Ok(script)
}

/// Validates and stores a change; fields absent from the input keep their value.
pub fn update(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
    input: &ScriptInput,
) -> AppResult<Script> {
    let old = get_visible(w, subject, id)?;
    let scope = authorize_save(w, subject, input, Some(&old))?;
    let c = check_input(w, input, Some(&old), scope)?;
    let old_key = name_key(old.project_id.as_deref(), &old.name);
    let new_key = name_key(c.project_id.as_deref(), &c.name);
    if old_key != new_key {
        w.index_delete(BY_SCOPE_NAME, &old_key)?;
        w.index_put(BY_SCOPE_NAME, &new_key, &old.id)?;
    }
    let files_changed = c.files.is_some();
    let (tree, files) = save_files(w, c.files, Some(&old))?;
    let script = Script {
        name: c.name,
        description: c.description,
        kind: c.kind,
        body: c.body,
        interpreter: c.interpreter,
        variables: c.variables,
        allow_ansible_fallback: c.allow_ansible_fallback,
        project_id: c.project_id,
        tree,
        files,
        updated_by: actor.username.clone(),
        updated_at: Utc::now(),
        ..old
    };
    w.put(&script)?;
    let detail = if files_changed {
        format!("{} files", script.files.len())
    } else {
        String::new()
    };
    audit::record(
        w,
        actor,
        "script.update",
        &format!("script:{}", script.name),
        &detail,
    )?;
    Ok(script)
}

/// One sample shipped in `playbooks/`.
struct Sample {
    file: &'static str,
    name: &'static str,
    text: &'static str,
    variables: &'static [(&'static str, &'static str, bool)],
}

/// The samples of `playbooks/`, embedded at build time. Their variables are declared
/// with empty defaults, so the playbook's own `vars:` apply unless a run overrides
/// them.
const SAMPLES: &[Sample] = &[
    Sample {
        file: "hello.yml",
        name: "hello",
        text: include_str!("../../playbooks/hello.yml"),
        variables: &[(
            "greeting",
            "The greeting printed first (playbook default: Hello)",
            false,
        )],
    },
    Sample {
        file: "nginx.yml",
        name: "nginx",
        text: include_str!("../../playbooks/nginx.yml"),
        variables: &[
            (
                "server_name",
                "The site's server_name (default: the host's FQDN)",
                false,
            ),
            (
                "web_root",
                "Directory served (default: /var/www/html)",
                false,
            ),
            ("listen_port", "Port nginx listens on (default: 80)", false),
            ("index_title", "Title of the index page", false),
        ],
    },
    Sample {
        file: "docker.yml",
        name: "docker",
        text: include_str!("../../playbooks/docker.yml"),
        variables: &[],
    },
    Sample {
        file: "system-update.yml",
        name: "system-update",
        text: include_str!("../../playbooks/system-update.yml"),
        variables: &[(
            "reboot_if_required",
            "Reboot when the upgrade requires it (default: false)",
            false,
        )],
    },
    Sample {
        file: "compose-deploy.yml",
        name: "compose-deploy",
        text: include_str!("../../playbooks/compose-deploy.yml"),
        variables: &[
            (
                "project_dir",
                "The Compose project's directory (default: /home/dynamic/nova-hr-docker)",
                false,
            ),
            (
                "deploy_command",
                "The deploy command run there (default: ./deploy.sh)",
                false,
            ),
            ("pull", "Pull images first (default: true)", false),
        ],
    },
    Sample {
        file: "db-backup.yml",
        name: "db-backup",
        text: include_str!("../../playbooks/db-backup.yml"),
        variables: &[
            ("project_dir", "The Compose project's directory", false),
            (
                "compose_service",
                "The database service (default: db)",
                false,
            ),
            ("db_engine", "postgres or mysql (default: postgres)", false),
            ("db_name", "Database name (default: app)", false),
            ("db_user", "Database user (default: app)", false),
            (
                "backup_dir",
                "Where dumps are kept (default: /var/backups/dynserv)",
                false,
            ),
            ("keep", "How many dumps to keep (default: 7)", false),
        ],
    },
];

/// The description of a sample: its leading comment lines, up to the list of its
/// variables (the editor shows those in its own table).
fn sample_description(text: &str) -> String {
    let joined = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ");
    match joined.find("Variables:") {
        Some(at) => joined[..at].trim().to_string(),
        None => joined,
    }
}

/// Seeds the sample playbooks into an empty scripts table (a new installation).
pub fn seed_samples(store: &Store) -> anyhow::Result<usize> {
    store
        .write(|w| {
            if w.count::<Script>()? > 0 {
                return Ok(0);
            }
            let now = Utc::now();
            for sample in SAMPLES {
                let script = Script {
                    id: uuid::Uuid::now_v7().to_string(),
                    name: sample.name.to_string(),
                    description: sample_description(sample.text),
                    kind: ScriptKind::Playbook,
                    body: sample.text.to_string(),
                    interpreter: "/bin/sh".into(),
                    variables: sample
                        .variables
                        .iter()
                        .map(|(name, description, secret)| Variable {
                            name: name.to_string(),
                            default: String::new(),
                            description: description.to_string(),
                            secret: *secret,
                            required: false,
                        })
                        .collect(),
                    allow_ansible_fallback: false,
                    project_id: None,
                    sample: Some(format!("playbooks/{}", sample.file)),
                    tree: None,
                    files: Vec::new(),
                    created_by: "system".into(),
                    created_at: now,
                    updated_by: "system".into(),
                    updated_at: now,
                };
                w.put(&script)?;
                w.index_put(BY_SCOPE_NAME, &name_key(None, &script.name), &script.id)?;
            }
            Ok(SAMPLES.len())
        })
        .context("seeding the sample scripts")
}

/// Moves the name index of the first schema (names unique across all projects,
/// `script_by_name`) to the per-scope one, at startup and in one transaction: every
/// script gets its `SCOPE/name` entry and the old entries go. Does nothing once the
/// old index is empty, so later startups cost one index lookup.
pub fn index_names_per_scope(store: &Store) -> anyhow::Result<usize> {
    store
        .write(|w| {
            let old = w.index_scan(OLD_BY_NAME, "")?;
            if old.is_empty() {
                return Ok(0);
            }
            for (key, _) in &old {
                w.index_delete(OLD_BY_NAME, key)?;
            }
            let scripts: Vec<Script> = w.list()?;
            for script in &scripts {
                w.index_put(
                    BY_SCOPE_NAME,
                    &name_key(script.project_id.as_deref(), &script.name),
                    &script.id,
                )?;
            }
            Ok(scripts.len())
        })
        .context("moving script names to the per-project index")
}

/// Builds the execution input of a stored script run on an agent of `project_id`.
pub fn execution_input(
    script: &Script,
    project_id: &str,
    given: &BTreeMap<String, serde_json::Value>,
    check: bool,
    base: &NewExecution,
) -> AppResult<NewExecution> {
    if let Some(p) = &script.project_id {
        if p != project_id {
            return Err(AppError::invalid(
                "playbook",
                format!("script {} belongs to another project", script.name),
            ));
        }
    }
    let vars = resolve_vars(&script.variables, given)?;
    let mut input = NewExecution {
        agents: None,
        secrets: vars.secret,
        script_id: Some(script.id.clone()),
        script_name: Some(script.name.clone()),
        ..base.clone()
    };
    match script.kind {
        ScriptKind::Playbook => {
            input.kind = Some("playbook".into());
            input.playbook = Some(script.body.clone());
            input.vars = Some(
                vars.plain
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
            );
            input.check = Some(check);
            input.ansible_fallback = Some(script.allow_ansible_fallback);
            input.tree = script.tree.clone();
        }
        ScriptKind::Shell => {
            input.kind = Some("script".into());
            input.script = Some(script.body.clone());
            input.interpreter = Some(script.interpreter.clone());
            input.env = Some(vars.plain);
            input.playbook = None;
            input.vars = None;
        }
    }
    Ok(input)
}

/// `POST /api/v1/executions` with `"kind": "playbook", "playbook": "<script id>"`: the
/// execution input of that stored script, or `None` when the text is not a script id
/// (or name) but playbook YAML.
pub fn resolve_execution(
    r: &impl Read,
    subject: &Subject,
    project_id: &str,
    input: &NewExecution,
) -> AppResult<Option<NewExecution>> {
    if input.kind.as_deref() != Some("playbook") || !input.secrets.is_empty() {
        return Ok(None);
    }
    let Some(key) = input.playbook.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > 100 || key.contains(['\n', ':']) {
        return Ok(None);
    }
    let script = match get_for_project(r, subject, project_id, key) {
        Ok(s) => s,
        Err(e) if e.kind == crate::error::Kind::NotFound => {
            return Err(AppError::invalid(
                "playbook",
                format!(
                    "no script {:?} that you can see (give a script id or playbook YAML)",
                    crate::validate::echo(key)
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let given = input.vars.clone().unwrap_or_default();
    execution_input(
        &script,
        project_id,
        &given,
        input.check.unwrap_or(false),
        input,
    )
    .map(Some)
}

/// The files of a script, read from its stored tree (none when it has none).
pub fn files_of(
    r: &impl Read,
    script: &Script,
) -> anyhow::Result<Vec<dynserv_shared::tree::TreeFile>> {
    match &script.tree {
        Some(tree) => Ok(crate::script_files::load(r, tree)?.unwrap_or_default()),
        None => Ok(Vec::new()),
    }
}

/// Replaces a script's files with an uploaded `.tar.gz` (and its body with the
/// archive's playbook, when it has one), validated as any save.
pub fn replace_from_archive(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
    archive: &[u8],
) -> AppResult<Script> {
    // The right to edit comes before reading what was sent.
    let old = get_visible(w, subject, id)?;
    authorize_save(w, subject, &ScriptInput::default(), Some(&old))?;
    let (body, files) = crate::script_files::from_archive(archive)?;
    let input = ScriptInput {
        body,
        files: Some(files),
        ..Default::default()
    };
    update(w, actor, subject, id, &input)
}

/// Writes one file of a script's tree: `content` at `path`, replacing the file at
/// `original` when it is given (an edit, or a rename when the paths differ); `content`
/// `None` deletes `original`. The tree is validated again as a whole, as any save.
pub fn edit_file(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
    original: Option<&str>,
    path: &str,
    content: Option<String>,
) -> AppResult<Script> {
    let old = get_visible(w, subject, id)?;
    authorize_save(w, subject, &ScriptInput::default(), Some(&old))?;
    let mut files = files_of(w, &old)?;
    let original = original.map(str::trim).filter(|o| !o.is_empty());
    if let Some(original) = original {
        let at = files
            .iter()
            .position(|f| f.path == original)
            .ok_or_else(|| AppError::not_found("file"))?;
        files.remove(at);
    }
    if let Some(content) = content {
        let path = path.trim();
        dynserv_shared::tree::check_path(path).map_err(|m| AppError::invalid("path", m))?;
        if files.iter().any(|f| f.path == path) {
            return Err(AppError::invalid(
                "path",
                format!("a file {} exists already", crate::validate::echo(path)),
            ));
        }
        files.push(dynserv_shared::tree::TreeFile {
            path: path.to_string(),
            content,
            base64: false,
        });
    } else if original.is_none() {
        return Err(AppError::not_found("file"));
    }
    let input = ScriptInput {
        files: Some(files),
        ..Default::default()
    };
    update(w, actor, subject, id, &input)
}

/// Stored scripts' part in script and playbook executions (see [`KindHooks`]): a
/// `playbook` naming a stored script runs that script, and its secret variables wait
/// in `execution_secrets` only while the execution is queued or running.
pub struct ExecutionHooks;

impl KindHooks for ExecutionHooks {
    fn kinds(&self) -> &'static [&'static str] {
        &["script", "playbook"]
    }

    fn resolve(
        &self,
        r: &Writer,
        subject: &Subject,
        agent: &Agent,
        input: &NewExecution,
    ) -> AppResult<Option<NewExecution>> {
        resolve_execution(r, subject, &agent.project_id, input)
    }

    fn created(&self, w: &mut Writer, e: &Execution, input: &NewExecution) -> anyhow::Result<()> {
        if let crate::executions::Work::Playbook {
            tree: Some(tree), ..
        } = &e.work
        {
            crate::script_files::mark_used(w, tree, e.created_at)?;
        }
        keep_execution_secrets(w, &e.id, &input.secrets)
    }

    fn finished(&self, w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
        if matches!(
            e.status,
            crate::executions::Status::Failed | crate::executions::Status::TimedOut
        ) {
            // A batch of the fleet's ingestion: an alert that cannot be raised is
            // logged, never the reason the batch is undone.
            if let Err(err) = alert_execution_failed(w, e) {
                tracing::error!(execution = %e.id, "raising execution.failed: {err:#}");
            }
        }
        // A drift check's or Apply's result (`drift`).
        if matches!(e.work, crate::executions::Work::Playbook { diff: true, .. }) {
            crate::drift::execution_finished(w, e);
        }
        forget_execution_secrets(w, &e.id)
    }

    fn pruned(&self, w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
        if matches!(e.work, crate::executions::Work::Playbook { diff: true, .. }) {
            crate::drift::execution_pruned(w, e)?;
        }
        forget_execution_secrets(w, &e.id)
    }
}

/// The `execution.failed` alert of a script or playbook that failed or timed out: to
/// the admins and technicians who see its project and whoever started it.
fn alert_execution_failed(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    let mut recipients = crate::alerts::failure_recipients(w, &e.project_id)?;
    if let Some(id) = crate::notifications::user_id_of(w, &e.created_by)? {
        recipients.push(id);
    }
    let project = w
        .get::<crate::projects::Project>(&e.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    let exit = e
        .exit_code
        .map(|c| format!("exit code {c}"))
        .unwrap_or_else(|| e.status.as_str().replace('_', " "));
    crate::alerts::raise(
        w,
        &recipients,
        &crate::alerts::Alert {
            event: "execution.failed",
            project_id: Some(e.project_id.clone()),
            subject: serde_json::json!({
                "execution": e.id,
                "name": e.name,
                "kind": e.work.kind(),
                "agent": e.agent_name,
                "server": e.server_id,
                "project": project,
                "rollout": e.rollout_id,
                "status": e.status.as_str(),
                "exit_code": e.exit_code,
                "started_by": e.created_by,
            }),
            message: crate::notifications::Message {
                title: format!("{} failed on {}", e.name, e.agent_name),
                body: format!(
                    "{} in {project} ended with {exit}{}",
                    e.name,
                    e.summary
                        .as_deref()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                ),
                link: Some(format!("/executions/{}", e.id)),
                level: "danger",
                subject: format!("execution:{}", e.id),
            },
        },
    )
}

/// Keeps an execution's secret values aside until it ends.
fn keep_execution_secrets(
    w: &mut Writer,
    execution_id: &str,
    values: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    w.put(&ExecutionSecrets {
        id: execution_id.to_string(),
        values: values.clone(),
    })
}

/// Drops an ended execution's secret values.
fn forget_execution_secrets(w: &mut Writer, execution_id: &str) -> anyhow::Result<()> {
    w.remove::<ExecutionSecrets>(execution_id)
}

/// The job sent to the agent: the stored work plus the secret variables, which the
/// agent masks in its output.
pub fn job_spec_with_secrets(store: &Store, execution: &Execution) -> anyhow::Result<JobSpec> {
    let mut specs = store.read(|r| job_specs_with_secrets(r, std::slice::from_ref(execution)))?;
    specs
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no job for execution {}", execution.id))
}

/// [`job_spec_with_secrets`] for several executions, their secrets read together
/// (one query on PostgreSQL), in the order given.
pub fn job_specs_with_secrets(
    r: &impl Read,
    executions: &[Execution],
) -> anyhow::Result<Vec<JobSpec>> {
    let ids: Vec<String> = executions.iter().map(|e| e.id.clone()).collect();
    let secrets = r.get_many::<ExecutionSecrets>(&ids)?;
    // A fan-out's thousands of jobs share one copy of their tree.
    let trees = crate::script_files::load_shared(
        r,
        executions.iter().filter_map(|e| match &e.work {
            crate::executions::Work::Playbook { tree, .. } => tree.clone(),
            _ => None,
        }),
    )?;
    let mut specs = executions
        .iter()
        .zip(secrets)
        .map(|(execution, secrets)| {
            let mut spec = execution.job_spec();
            if let (
                crate::executions::Work::Playbook {
                    tree: Some(tree), ..
                },
                JobKind::Playbook { files, .. },
            ) = (&execution.work, &mut spec.kind)
            {
                match trees.get(tree) {
                    Some(tree) => *files = tree.clone(),
                    None => tracing::warn!(
                        execution = %execution.id,
                        "the files of this playbook run are gone (pruned); it runs without them"
                    ),
                }
            }
            crate::backups::add_offsite_target(r, execution, &mut spec)?;
            Ok(with_secrets(spec, secrets))
        })
        .collect::<anyhow::Result<Vec<JobSpec>>>()?;
    // A playbook's inventory: each snapshot read once for the batch.
    crate::inventory::attach_to_specs(r, executions, &mut specs)?;
    Ok(specs)
}

/// A job with an execution's secret values added (the agent masks them in output).
fn with_secrets(mut spec: JobSpec, secrets: Option<ExecutionSecrets>) -> JobSpec {
    let Some(secrets) = secrets else {
        return spec;
    };
    match &mut spec.kind {
        JobKind::Script { env, .. } => env.extend(secrets.values.clone()),
        JobKind::Playbook { vars, .. } => vars.extend(secrets.values.clone()),
        _ => {}
    }
    spec.secrets.extend(secrets.values.into_values());
    spec
}

/// The API view of a script.
pub fn view(r: &impl Read, script: &Script) -> anyhow::Result<serde_json::Value> {
    let project = match &script.project_id {
        Some(id) => r.get::<crate::projects::Project>(id)?.map(|p| p.name),
        None => None,
    };
    Ok(serde_json::json!({
        "id": script.id,
        "name": script.name,
        "description": script.description,
        "kind": script.kind.as_str(),
        "body": script.body,
        "interpreter": script.interpreter,
        "variables": script.variables,
        "project_id": script.project_id,
        "project": project,
        "sample": script.sample,
        "files": script.files,
        "created_by": script.created_by,
        "created_at": script.created_at,
        "updated_by": script.updated_by,
        "updated_at": script.updated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn var(name: &str, default: &str, secret: bool, required: bool) -> Variable {
        Variable {
            name: name.into(),
            default: default.into(),
            description: String::new(),
            secret,
            required,
        }
    }

    /// Every sample in playbooks/ passes the parser the editor uses.
    #[test]
    fn samples_validate() {
        for sample in SAMPLES {
            assert_eq!(
                check_body(ScriptKind::Playbook, sample.text, false),
                Ok(()),
                "{}",
                sample.file
            );
            assert!(
                !sample_description(sample.text).is_empty(),
                "{}",
                sample.file
            );
        }
    }

    /// An invalid playbook is reported with the line and column of its first error.
    #[test]
    fn invalid_playbook_has_line_and_column() {
        let body =
            "- hosts: all\n  tasks:\n    - name: x\n      no_such_module_here:\n        a: 1\n";
        let err = check_body(ScriptKind::Playbook, body, false).unwrap_err();
        assert_eq!(err.line, 3, "{err:?}");
        assert!(err.column > 0);
        assert!(
            err.display().starts_with("line 3, column "),
            "{}",
            err.display()
        );
        assert!(
            err.message.contains("no_such_module_here"),
            "{}",
            err.message
        );

        let err =
            check_body(ScriptKind::Playbook, "- hosts: all\n  tasks: [\n", false).unwrap_err();
        assert!(err.line >= 2, "{err:?}");

        // A shell script is only checked for emptiness and size.
        assert!(check_body(ScriptKind::Shell, "echo hi\n", false).is_ok());
        assert!(check_body(ScriptKind::Shell, "  \n", false).is_err());
    }

    /// Defaults fill in, empty values are not passed, required ones must be given,
    /// secret values go apart from plain ones.
    #[test]
    fn run_variables() {
        let declared = vec![
            var("greeting", "Hello", false, false),
            var("optional", "", false, false),
            var("db_password", "", true, true),
        ];
        let given = BTreeMap::from([
            ("db_password".to_string(), json!("s3cr3t")),
            ("extra".to_string(), json!(7)),
        ]);
        let vars = resolve_vars(&declared, &given).unwrap();
        assert_eq!(
            vars.plain,
            BTreeMap::from([
                ("greeting".to_string(), "Hello".to_string()),
                ("extra".to_string(), "7".to_string()),
            ])
        );
        assert_eq!(
            vars.secret,
            BTreeMap::from([("db_password".to_string(), "s3cr3t".to_string())])
        );
        let err = resolve_vars(&declared, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vars"));
        assert!(err.message.contains("db_password"));
        let bad = BTreeMap::from([("not-a-name".to_string(), json!("x"))]);
        assert!(resolve_vars(&[], &bad).is_err());
    }

    /// Declarations: names are checked, duplicates and stored secret defaults refused.
    #[test]
    fn declared_variables() {
        assert!(check_variables(&[var("a", "1", false, true), var("b", "", true, false)]).is_ok());
        assert!(check_variables(&[var("1a", "", false, false)]).is_err());
        assert!(
            check_variables(&[var("a", "", false, false), var("a", "", false, false)]).is_err()
        );
        assert!(check_variables(&[var("token", "stored", true, false)]).is_err());
    }

    fn subject(role: crate::policy::Role, grants: &[(&str, crate::policy::Level)]) -> Subject {
        Subject {
            user_id: "u".into(),
            username: "u".into(),
            role,
            is_manager: false,
            grants: grants.iter().map(|(p, l)| (p.to_string(), *l)).collect(),
        }
    }

    fn project(id: &str) -> crate::projects::Project {
        crate::projects::Project {
            id: id.into(),
            name: id.into(),
            description: None,
            budget_monthly: None,
            hetzner_token_enc: None,
            last_sync: None,
            deploy_command: None,
            created_at: Utc::now(),
            terminal_enabled: true,
        }
    }

    fn input(name: &str, project: &str) -> ScriptInput {
        ScriptInput {
            name: Some(name.into()),
            kind: Some("shell".into()),
            body: Some("echo hi\n".into()),
            project: Some(project.into()),
            ..Default::default()
        }
    }

    /// Script names are unique per project, not across projects (regression: a
    /// technician learnt another project's script names from "already exists"): the
    /// first schema's store-wide index moves over at startup, once; then each project
    /// may have its own `deploy`, a name lookup asks only the scopes the caller sees,
    /// and a run on a project finds that project's script.
    #[test]
    fn names_are_unique_per_project() {
        use crate::policy::{Level, Role};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let admin = subject(Role::Admin, &[]);
        let actor = Actor::system();
        let first = store
            .write(|w| {
                w.put(&project("p1"))?;
                w.put(&project("p2"))?;
                let made = create(w, &actor, &admin, &input("deploy", "p1"))?;
                // As the first schema stored it: one store-wide name entry.
                w.index_delete(BY_SCOPE_NAME, &name_key(Some("p1"), "deploy"))?;
                w.index_put(OLD_BY_NAME, "deploy", &made.id)?;
                Ok(made)
            })
            .unwrap();
        assert_eq!(index_names_per_scope(&store).unwrap(), 1);
        assert_eq!(index_names_per_scope(&store).unwrap(), 0, "only once");
        let old_left = store.read(|r| r.index_scan(OLD_BY_NAME, "")).unwrap();
        assert!(old_left.is_empty(), "{old_left:?}");

        let again = store
            .write(|w| Ok(create(w, &actor, &admin, &input("Deploy", "p1"))))
            .unwrap();
        assert_eq!(again.unwrap_err().field.as_deref(), Some("name"));
        let second = store
            .write(|w| Ok(create(w, &actor, &admin, &input("deploy", "p2"))?))
            .unwrap();

        let p2_tech = subject(Role::Technical, &[("p2", Level::Write)]);
        let found = store
            .read(|r| Ok(get_visible(r, &p2_tech, "deploy")))
            .unwrap();
        assert_eq!(found.unwrap().id, second.id);
        let ambiguous = store
            .read(|r| Ok(get_visible(r, &admin, "deploy")))
            .unwrap();
        assert!(ambiguous.unwrap_err().message.contains("use the script id"));
        let for_p1 = store
            .read(|r| Ok(get_for_project(r, &admin, "p1", "deploy")))
            .unwrap();
        assert_eq!(for_p1.unwrap().id, first.id);
    }

    /// The caller's right to the scope is decided before the input is judged: a
    /// read-only technician hears 403 even for a taken name or a broken body, and a
    /// project the caller may not see answers exactly like one that does not exist.
    #[test]
    fn authorization_comes_before_validation() {
        use crate::error::Kind;
        use crate::policy::{Level, Role};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let admin = subject(Role::Admin, &[]);
        store
            .write(|w| {
                w.put(&project("p1"))?;
                w.put(&project("p2"))?;
                create(w, &Actor::system(), &admin, &input("deploy", "p1"))?;
                Ok(())
            })
            .unwrap();
        let reader = subject(
            Role::Technical,
            &[("p1", Level::Read), ("p2", Level::Write)],
        );
        let attempt = |who: &Subject, input: &ScriptInput| {
            store
                .write(|w| Ok(create(w, &Actor::system(), who, input)))
                .unwrap()
                .unwrap_err()
        };
        assert_eq!(
            attempt(&reader, &input("deploy", "p1")).kind,
            Kind::Forbidden
        );
        let mut broken = input("new", "p1");
        broken.kind = Some("nonsense".into());
        assert_eq!(attempt(&reader, &broken).kind, Kind::Forbidden);
        let outsider = subject(Role::Technical, &[("p2", Level::Write)]);
        let hidden = attempt(&outsider, &input("deploy", "p1"));
        let missing = attempt(&outsider, &input("deploy", "nope"));
        assert_eq!(hidden.kind, Kind::Invalid);
        assert_eq!(
            hidden.message.replace("\"p1\"", "X"),
            missing.message.replace("\"nope\"", "X")
        );
    }
}
