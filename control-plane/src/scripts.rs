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
//! What does not live here: running a script over many servers (`rollouts`), the job
//! lifecycle (`executions`), parsing playbooks (the agent's `playbook` module, which
//! this module calls so that saving validates with the very parser that runs it).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{Execution, NewExecution};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Store, Writer};
use dynserv_shared::proto::{JobKind, JobSpec};

const BY_NAME: &str = "script_by_name";
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
        let parsed = if allow_fallback {
            dynserv_agent::playbook::parse_playbook_with_ansible_fallback(
                body,
                std::path::Path::new("."),
            )
            .map(|_| ())
        } else {
            dynserv_agent::playbook::validate(body)
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

/// One script by id or name, if the subject may see it.
pub fn get_visible(r: &impl Read, subject: &Subject, key: &str) -> AppResult<Script> {
    let script = match r.get::<Script>(key)? {
        Some(s) => Some(s),
        None => match r.index_get(BY_NAME, &key.trim().to_lowercase())? {
            Some(id) => r.get::<Script>(&id)?,
            None => None,
        },
    };
    match script {
        Some(s) if may_see(subject, &s) => Ok(s),
        _ => Err(AppError::not_found("script")),
    }
}

fn project_of(r: &impl Read, key: Option<&str>) -> AppResult<Option<String>> {
    let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    match crate::projects::find(r, key)? {
        Some(p) => Ok(Some(p.id)),
        None => Err(AppError::invalid(
            "project",
            format!("no project {:?}", crate::validate::echo(key)),
        )),
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
}

fn check_input(r: &impl Read, input: &ScriptInput, old: Option<&Script>) -> AppResult<Checked> {
    let name = crate::validate::name(
        "name",
        input.name.as_deref().or(old.map(|o| o.name.as_str())),
        100,
    )?;
    if let Some(id) = r.index_get(BY_NAME, &name.to_lowercase())? {
        if old.map(|o| o.id.as_str()) != Some(id.as_str()) {
            return Err(AppError::invalid(
                "name",
                format!("a script named {name} already exists"),
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
    let project_id = match &input.project {
        Some(p) => project_of(r, Some(p))?,
        None => old.and_then(|o| o.project_id.clone()),
    };
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
    })
}

/// Validates and stores a new script.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    input: &ScriptInput,
) -> AppResult<Script> {
    let c = check_input(w, input, None)?;
    if !may_manage(subject, c.project_id.as_deref()) {
        return Err(AppError::forbidden());
    }
    let now = Utc::now();
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
        created_by: actor.username.clone(),
        created_at: now,
        updated_by: actor.username.clone(),
        updated_at: now,
    };
    w.put(&script)?;
    w.index_put(BY_NAME, &script.name.to_lowercase(), &script.id)?;
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
    if !may_manage(subject, old.project_id.as_deref()) {
        return Err(AppError::forbidden());
    }
    let c = check_input(w, input, Some(&old))?;
    if !may_manage(subject, c.project_id.as_deref()) {
        return Err(AppError::forbidden());
    }
    if c.name.to_lowercase() != old.name.to_lowercase() {
        w.index_delete(BY_NAME, &old.name.to_lowercase())?;
        w.index_put(BY_NAME, &c.name.to_lowercase(), &old.id)?;
    }
    let script = Script {
        name: c.name,
        description: c.description,
        kind: c.kind,
        body: c.body,
        interpreter: c.interpreter,
        variables: c.variables,
        allow_ansible_fallback: c.allow_ansible_fallback,
        project_id: c.project_id,
        updated_by: actor.username.clone(),
        updated_at: Utc::now(),
        ..old
    };
    w.put(&script)?;
    audit::record(
        w,
        actor,
        "script.update",
        &format!("script:{}", script.name),
        "",
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
                    created_by: "system".into(),
                    created_at: now,
                    updated_by: "system".into(),
                    updated_at: now,
                };
                w.put(&script)?;
                w.index_put(BY_NAME, &script.name, &script.id)?;
            }
            Ok(SAMPLES.len())
        })
        .context("seeding the sample scripts")
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
    let script = match get_visible(r, subject, key) {
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

/// Keeps an execution's secret values aside until it ends.
pub fn keep_execution_secrets(
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
pub fn forget_execution_secrets(w: &mut Writer, execution_id: &str) -> anyhow::Result<()> {
    w.delete::<ExecutionSecrets>(execution_id)?;
    Ok(())
}

/// The job sent to the agent: the stored work plus the secret variables, which the
/// agent masks in its output.
pub fn job_spec_with_secrets(store: &Store, execution: &Execution) -> anyhow::Result<JobSpec> {
    let mut spec = execution.job_spec();
    let Some(secrets) = store.get::<ExecutionSecrets>(&execution.id)? else {
        return Ok(spec);
    };
    match &mut spec.kind {
        JobKind::Script { env, .. } => env.extend(secrets.values.clone()),
        JobKind::Playbook { vars, .. } => vars.extend(secrets.values.clone()),
        _ => {}
    }
    spec.secrets = secrets.values.into_values().collect();
    Ok(spec)
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
}
