//! The play/task engine: variables and their precedence, conditionals, loops, blocks,
//! handlers, check mode, output lines and the PLAY RECAP counters.
//!
//! The engine talks to the outside only through the output sink it is given and the
//! modules it calls, so a run can be driven from the CLI, from a control-plane job (with
//! output streamed and secrets masked) or from a test.
//!
//! What does not live here: parsing (`model`), templating (`template`), what a module
//! does (`modules`).

use super::facts::{build_facts, FactSources};
use super::model::{Inherited, LoopKind, Play, Playbook, Task, TaskBody};
use super::modules::{self, files, ModuleContext, Outcome};
use super::roles::RoleScope;
use super::template::{python_repr, Templar, TemplateError, OMIT};
use minijinja::value::ValueKind;
use minijinja::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a playbook run should do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Check mode (`--check`).
    pub check: bool,
    /// Diff mode (`--diff`).
    pub diff: bool,
    /// Extra variables (`-e`), highest precedence.
    pub extra_vars: Vec<(String, Value)>,
    /// Only run tasks with these tags (`--tags`); empty means all.
    pub tags: Vec<String>,
    /// Skip tasks with these tags (`--skip-tags`).
    pub skip_tags: Vec<String>,
    /// Values replaced by `********` in every output line.
    pub secrets: Vec<String>,
    /// Run notified handlers even after a failure (`--force-handlers`).
    pub force_handlers: bool,
    /// The name of this host in the play (`inventory_hostname`).
    pub inventory_hostname: String,
    /// The program to re-execute under sudo for `become` (defaults to the current executable).
    pub become_program: Option<PathBuf>,
    /// ansible-core's `ansible` program, when tasks with modules the runtime lacks may run
    /// through it (the playbook must then be parsed with
    /// [`parse_playbook_with_ansible_fallback`](super::model::parse_playbook_with_ansible_fallback)).
    pub ansible_fallback: Option<PathBuf>,
    /// Set from another thread to stop the run before its next task (job cancellation).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            check: false,
            diff: false,
            extra_vars: Vec::new(),
            tags: Vec::new(),
            skip_tags: Vec::new(),
            secrets: Vec::new(),
            force_handlers: false,
            inventory_hostname: "localhost".into(),
            become_program: None,
            ansible_fallback: None,
            cancel: None,
        }
    }
}

/// The PLAY RECAP counters of one host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks that succeeded (including changed ones).
    pub ok: u32,
    /// Tasks that changed something.
    pub changed: u32,
    /// Unreachable (always 0 for the local host).
    pub unreachable: u32,
    /// Failed tasks.
    pub failed: u32,
    /// Skipped tasks.
    pub skipped: u32,
    /// Failures handled by a `rescue` section.
    pub rescued: u32,
    /// Failures ignored with `ignore_errors`.
    pub ignored: u32,
}

impl Stats {
    /// The recap line in ansible-playbook's format.
    pub fn recap_line(&self, host: &str) -> String {
        let field = |name: &str, value: u32| format!("{name}={:<4}", value);
        format!(
            "{:<26} : {} {} {} {} {} {} {}",
            host,
            field("ok", self.ok),
            field("changed", self.changed),
            field("unreachable", self.unreachable),
            field("failed", self.failed),
            field("skipped", self.skipped),
            field("rescued", self.rescued),
            field("ignored", self.ignored)
        )
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The host's counters.
    pub stats: Stats,
    /// Whether the run ended with a failed host.
    pub failed: bool,
    /// Whether the run was stopped through [`RunOptions::cancel`].
    pub cancelled: bool,
}

/// Runs a parsed playbook against the local host, writing Ansible-style lines to `sink`.
pub fn run_playbook(
    playbook: &Playbook,
    options: &RunOptions,
    sink: &mut dyn FnMut(&str),
) -> RunReport {
    let mut runner = Runner::new(playbook, options, sink);
    for play in &playbook.plays {
        runner.run_play(play);
        if runner.host_failed {
            break;
        }
    }
    runner.recap();
    RunReport {
        stats: runner.stats,
        failed: runner.host_failed,
        cancelled: runner.cancelled(),
    }
}

/// Ansible's banner: the text padded with stars to 80 columns.
pub fn banner(text: &str) -> String {
    let stars = 79usize.saturating_sub(text.chars().count()).max(3);
    format!("{text} {}", "*".repeat(stars))
}

/// Whether a task with `tags` runs under `--tags`/`--skip-tags`.
pub fn tags_selected(tags: &[String], only: &[String], skip: &[String]) -> bool {
    let has = |t: &str| tags.iter().any(|x| x == t);
    let run = if only.is_empty() || only.iter().any(|t| t == "all") {
        !has("never") || only.iter().any(|o| tags.contains(o))
    } else {
        has("always")
            || only.iter().any(|o| tags.contains(o))
            || (only.iter().any(|o| o == "tagged") && !tags.is_empty())
            || (only.iter().any(|o| o == "untagged") && tags.is_empty())
    };
    if !run {
        return false;
    }
    let skipped = skip.iter().any(|s| tags.contains(s))
        || (skip.iter().any(|s| s == "tagged") && !tags.is_empty())
        || (skip.iter().any(|s| s == "untagged") && tags.is_empty());
    !skipped || (has("always") && !skip.iter().any(|s| s == "always"))
}

/// Merges a child's keywords over the inherited ones.
fn merge(parent: &Inherited, child: &Inherited) -> Inherited {
    let pick = |c: &Option<Value>, p: &Option<Value>| c.clone().or_else(|| p.clone());
    let mut tags = parent.tags.clone();
    for t in &child.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    let mut when = parent.when.clone();
    when.extend(child.when.iter().cloned());
    let mut vars = parent.vars.clone();
    vars.extend(child.vars.iter().cloned());
    Inherited {
        become_: pick(&child.become_, &parent.become_),
        become_user: pick(&child.become_user, &parent.become_user),
        become_method: pick(&child.become_method, &parent.become_method),
        check_mode: pick(&child.check_mode, &parent.check_mode),
        diff: pick(&child.diff, &parent.diff),
        ignore_errors: pick(&child.ignore_errors, &parent.ignore_errors),
        no_log: pick(&child.no_log, &parent.no_log),
        environment: pick(&child.environment, &parent.environment),
        tags,
        when,
        vars,
        any_errors_fatal: pick(&child.any_errors_fatal, &parent.any_errors_fatal),
        role: child.role.clone().or_else(|| parent.role.clone()),
    }
}

/// Python-style display of a loop item: strings bare, containers as Python literals.
pub fn item_label(item: &Value) -> String {
    match item.kind() {
        ValueKind::String => item.as_str().unwrap_or_default().to_string(),
        _ => python_literal(item),
    }
}

fn python_literal(value: &Value) -> String {
    match value.kind() {
        ValueKind::Seq => format!(
            "[{}]",
            value
                .try_iter()
                .map(|items| items
                    .map(|i| python_literal(&i))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        ValueKind::Map => format!(
            "{{{}}}",
            value
                .try_iter()
                .map(|keys| keys
                    .map(|k| format!(
                        "{}: {}",
                        python_literal(&k),
                        python_literal(&value.get_item(&k).unwrap_or_default())
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        _ => python_repr(value),
    }
}

/// Removes internal keys and, for `debug`-style results, everything but `msg`.
fn displayable(outcome: &Outcome, no_log: bool) -> serde_json::Value {
    if no_log {
        return serde_json::json!({
            "censored": "the output has been hidden due to the fact that 'no_log: true' was specified for this result",
            "changed": outcome.changed(),
        });
    }
    // Like the default callback: debug results show only their message (or variable).
    let debug = outcome.get("_ansible_debug").is_some();
    let mut map = serde_json::Map::new();
    for (key, value) in outcome.fields() {
        if key.starts_with("_ansible") || key == "invocation" || key == "diff" || key == "failed" {
            continue;
        }
        if key == "changed" && debug {
            continue;
        }
        if debug
            && outcome.get("msg").is_some()
            && !matches!(
                key.as_str(),
                "msg" | "failed" | "exception" | "warnings" | "deprecations"
            )
        {
            continue;
        }
        map.insert(
            key.clone(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(map)
}

fn pretty_json(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return value.to_string();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal line diff for `--diff` output.
pub fn unified_diff(before: &str, after: &str, header: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut out = vec![
        format!("--- before: {header}"),
        format!("+++ after: {header}"),
    ];
    if a.len() * b.len() > 4_000_000 {
        out.extend(a.iter().map(|l| format!("-{l}")));
        out.extend(b.iter().map(|l| format!("+{l}")));
        return out;
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    out.push(format!("@@ -1,{} +1,{} @@", a.len(), b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}

struct Runner<'a> {
    playbook: &'a Playbook,
    options: &'a RunOptions,
    sink: &'a mut dyn FnMut(&str),
    templar: Arc<Templar>,
    stats: Stats,
    facts: Option<Vec<(String, Value)>>,
    host_vars: Vec<(String, Value)>,
    play_vars: Vec<(String, Value)>,
    play_name: String,
    handlers: Vec<Task>,
    notified: Vec<bool>,
    play_scope: Inherited,
    force_handlers: bool,
    host_failed: bool,
    end_play: bool,
    rescue_depth: usize,
    rescue_vars: Vec<(String, Value)>,
    current_user: String,
    /// The current play's directory for relative paths (an imported playbook's own).
    base_dir: PathBuf,
    /// Roles whose defaults and vars every task of the play sees.
    play_roles: Vec<Arc<RoleScope>>,
    /// Identities of roles that ran a task in this play.
    roles_ran: HashSet<String>,
    /// Identities of roles that completed in this play (they do not run again).
    roles_completed: HashSet<String>,
}

/// What happened to one task (after loops were aggregated).
enum Verdict {
    Ok,
    Skipped,
    Failed,
}

impl<'a> Runner<'a> {
    fn new(
        playbook: &'a Playbook,
        options: &'a RunOptions,
        sink: &'a mut dyn FnMut(&str),
    ) -> Runner<'a> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Runner {
            playbook,
            options,
            sink,
            templar: Templar::new(playbook.base_dir.clone()),
            stats: Stats::default(),
            facts: None,
            host_vars: Vec::new(),
            play_vars: Vec::new(),
            play_name: String::new(),
            handlers: Vec::new(),
            notified: Vec::new(),
            play_scope: Inherited::default(),
            force_handlers: false,
            host_failed: false,
            end_play: false,
            rescue_depth: 0,
            rescue_vars: Vec::new(),
            current_user: files::user_name(uid),
            base_dir: playbook.base_dir.clone(),
            play_roles: Vec::new(),
            roles_ran: HashSet::new(),
            roles_completed: HashSet::new(),
        }
    }

    fn emit(&mut self, line: &str) {
        let mut text = line.to_string();
        for secret in &self.options.secrets {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "********");
            }
        }
        (self.sink)(&text);
    }

    fn emit_banner(&mut self, text: &str) {
        self.emit("");
        let line = banner(text);
        self.emit(&line);
    }

    fn recap(&mut self) {
        self.emit_banner("PLAY RECAP");
        let line = self
            .stats
            .recap_line(&self.options.inventory_hostname.clone());
        self.emit(&line);
        self.emit("");
    }

    fn host(&self) -> &str {
        &self.options.inventory_hostname
    }

    /// Builds the variable context for a task (precedence low to high).
    fn context(&self, scope: &Inherited, extra: &[(String, Value)]) -> Value {
        let mut vars: HashMap<String, Value> = HashMap::new();
        let host = self.host().to_string();
        let hosts_list = Value::from(vec![host.clone()]);
        vars.insert("inventory_hostname".into(), Value::from(host.clone()));
        vars.insert(
            "inventory_hostname_short".into(),
            Value::from(host.split('.').next().unwrap_or_default()),
        );
        vars.insert("ansible_host".into(), Value::from(host.clone()));
        vars.insert("ansible_connection".into(), Value::from("local"));
        vars.insert(
            "playbook_dir".into(),
            Value::from(self.playbook.base_dir.display().to_string()),
        );
        vars.insert("ansible_check_mode".into(), Value::from(self.options.check));
        vars.insert("ansible_diff_mode".into(), Value::from(self.options.diff));
        vars.insert(
            "ansible_play_name".into(),
            Value::from(self.play_name.clone()),
        );
        vars.insert("ansible_play_hosts".into(), hosts_list.clone());
        vars.insert("ansible_play_batch".into(), hosts_list.clone());
        vars.insert("play_hosts".into(), hosts_list.clone());
        vars.insert(
            "ansible_run_tags".into(),
            Value::from(if self.options.tags.is_empty() {
                vec!["all".to_string()]
            } else {
                self.options.tags.clone()
            }),
        );
        vars.insert(
            "ansible_skip_tags".into(),
            Value::from(self.options.skip_tags.clone()),
        );
        vars.insert(
            "groups".into(),
            Value::from_pairs([("all", hosts_list.clone()), ("ungrouped", hosts_list)]),
        );
        vars.insert("group_names".into(), Value::from(Vec::<String>::new()));
        vars.insert("omit".into(), Value::from(OMIT));
        vars.insert(
            "ansible_version".into(),
            Value::from_pairs([
                ("full", Value::from("2.19.0")),
                ("major", Value::from(2)),
                ("minor", Value::from(19)),
                ("revision", Value::from(0)),
                ("string", Value::from("2.19.0 (dynserv native runtime)")),
            ]),
        );
        if let Some(facts) = &self.facts {
            vars.insert(
                "ansible_facts".into(),
                Value::from_pairs(facts.iter().cloned()),
            );
            for (k, v) in facts {
                vars.insert(format!("ansible_{k}"), v.clone());
            }
        } else {
            vars.insert(
                "ansible_facts".into(),
                Value::from_pairs(Vec::<(String, Value)>::new()),
            );
        }
        // Precedence, low to high, as ansible-core's VariableManager stacks it: the play's
        // roles' defaults, the task's role's defaults, play vars and vars_files, the
        // play's roles' vars, the task's role's vars, block/task vars, set_fact and
        // registered vars, role params, then loop variables (and extra vars below).
        let role = scope.role.as_deref();
        let play_defaults = self.play_roles.iter().flat_map(|r| r.play_defaults.iter());
        let play_role_vars = self.play_roles.iter().flat_map(|r| r.exported_vars.iter());
        let none: &[(String, Value)] = &[];
        for (k, v) in play_defaults
            .chain(role.map_or(none, |r| &r.defaults).iter())
            .chain(self.play_vars.iter())
            .chain(play_role_vars)
            .chain(role.map_or(none, |r| &r.vars).iter())
            .chain(scope.vars.iter())
            .chain(self.host_vars.iter())
            .chain(self.rescue_vars.iter())
            .chain(role.map_or(none, |r| &r.params).iter())
            .chain(extra.iter())
        {
            vars.insert(k.clone(), v.clone());
        }
        if let Some(role) = role {
            vars.insert("role_name".into(), Value::from(role.name.clone()));
            vars.insert("ansible_role_name".into(), Value::from(role.name.clone()));
            vars.insert(
                "role_path".into(),
                Value::from(role.path.display().to_string()),
            );
        }
        for (k, v) in &self.options.extra_vars {
            vars.insert(k.clone(), v.clone());
        }
        self.templar.context(vars)
    }

    fn set_host_var(&mut self, name: &str, value: Value) {
        self.host_vars.retain(|(k, _)| k != name);
        self.host_vars.push((name.to_string(), value));
    }

    fn host_matches(&self, play: &Play) -> bool {
        let ctx = self.context(&Inherited::default(), &[]);
        let hosts = self
            .templar
            .template(&play.hosts, &ctx)
            .unwrap_or_else(|_| play.hosts.clone());
        let patterns: Vec<String> = match hosts.kind() {
            ValueKind::Seq => hosts
                .try_iter()
                .map(|i| i.map(|v| modules::value_to_string(&v)).collect())
                .unwrap_or_default(),
            _ => modules::value_to_string(&hosts)
                .split([',', ':'])
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        };
        let hostname = super::facts::nodename();
        patterns.iter().any(|p| {
            let p = p.trim_start_matches('&');
            matches!(p, "all" | "*" | "localhost" | "127.0.0.1" | "ungrouped")
                || p == self.host()
                || p == hostname
                || p == hostname.split('.').next().unwrap_or_default()
        })
    }

    fn run_play(&mut self, play: &Play) {
        self.play_name = play.name.clone();
        let ctx = self.context(&Inherited::default(), &[]);
        let title = self
            .templar
            .template_str(&play.name, &ctx)
            .map(|v| modules::value_to_string(&v))
            .unwrap_or_else(|_| play.name.clone());
        self.emit_banner(&format!("PLAY [{title}]"));
        if !self.host_matches(play) {
            self.emit("skipping: no hosts matched");
            return;
        }
        self.end_play = false;
        // Play vars live in `play_vars` (below vars_files and role vars), not in the
        // scope, whose vars are block/task vars.
        let mut scope = play.inherited.clone();
        scope.vars.clear();
        self.play_scope = scope;
        self.play_vars = play.vars.clone();
        if self.base_dir != play.base_dir {
            self.base_dir = play.base_dir.clone();
            self.templar = Templar::new(play.base_dir.clone());
        }
        self.play_roles = play.public_roles.clone();
        self.roles_ran.clear();
        self.roles_completed.clear();
        self.force_handlers = play.force_handlers || self.options.force_handlers;
        self.handlers = play.handlers.clone();
        self.notified = vec![false; play.handlers.len()];
        if let Err(message) = self.load_vars_files(play) {
            self.emit(&format!("ERROR! {message}"));
            self.host_failed = true;
            self.stats.failed += 1;
            return;
        }
        let gather = match &play.gather_facts {
            None => true,
            Some(v) => {
                let ctx = self.context(&self.play_scope.clone(), &[]);
                let v = self.templar.template(v, &ctx).unwrap_or(Value::from(true));
                modules::parse_bool(&v).unwrap_or(true)
            }
        };
        if gather {
            self.emit_banner("TASK [Gathering Facts]");
            self.gather_facts();
            let line = format!("ok: [{}]", self.host());
            self.emit(&line);
            self.stats.ok += 1;
        }
        let scope = self.play_scope.clone();
        // Ansible's Play.compile: pre_tasks, flush, roles + tasks, flush, post_tasks, flush.
        for sections in [
            &[&play.pre_tasks][..],
            &[&play.roles, &play.tasks][..],
            &[&play.post_tasks][..],
        ] {
            for section in sections {
                self.run_list(section, &scope);
            }
            if self.host_failed && !self.force_handlers {
                break;
            }
            self.flush_handlers();
            if self.host_failed || self.end_play {
                break;
            }
        }
    }

    fn gather_facts(&mut self) {
        if self.facts.is_none() {
            self.facts = Some(build_facts(&FactSources::read(), chrono::Local::now()));
        }
    }

    fn load_vars_files(&mut self, play: &Play) -> Result<(), String> {
        for entry in &play.vars_files {
            let ctx = self.context(&play.inherited, &[]);
            let name = self
                .templar
                .template(entry, &ctx)
                .map_err(|e| e.to_string())?;
            let candidates: Vec<String> = match name.kind() {
                ValueKind::Seq => name
                    .try_iter()
                    .map(|i| i.map(|v| modules::value_to_string(&v)).collect())
                    .unwrap_or_default(),
                _ => vec![modules::value_to_string(&name)],
            };
            let path = candidates
                .iter()
                .map(|c| self.base_dir.join(c))
                .find(|p| p.exists())
                .ok_or_else(|| format!("vars file {} was not found", candidates.join(", ")))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("could not read {}: {e}", path.display()))?;
            let node =
                super::yaml::parse_one(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let value = node.to_value();
            if value.kind() != ValueKind::Map && !value.is_none() {
                return Err(format!(
                    "{} must contain a dictionary of variables",
                    path.display()
                ));
            }
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    if let (Some(k), Ok(v)) = (key.as_str(), value.get_item(&key)) {
                        self.play_vars.push((k.to_string(), v));
                    }
                }
            }
        }
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn run_list(&mut self, tasks: &[Task], scope: &Inherited) {
        for task in tasks {
            if self.cancelled() && !self.host_failed {
                self.emit("");
                self.emit("[ERROR]: the run was cancelled");
                self.host_failed = true;
            }
            if self.host_failed || self.end_play {
                return;
            }
            self.run_task(task, scope, false);
        }
    }

    fn flush_handlers(&mut self) {
        if self.host_failed && !self.force_handlers {
            return;
        }
        while let Some(index) = self.notified.iter().position(|n| *n) {
            self.notified[index] = false;
            let handler = self.handlers[index].clone();
            let scope = self.play_scope.clone();
            self.run_task(&handler, &scope, true);
            if self.host_failed && !self.force_handlers {
                break;
            }
        }
    }

    fn notify(&mut self, names: &[String], ctx: &Value) {
        for name in names {
            let name = self
                .templar
                .template_str(name, ctx)
                .map(|v| modules::value_to_string(&v))
                .unwrap_or_else(|_| name.clone());
            // As ansible-core 2.19: a name reaches only the last handler loaded with that
            // name (plain or `role : name`); a `listen` topic reaches every listener,
            // once per handler name.
            let mut found = false;
            let by_name = self.handlers.iter().rposition(|handler| {
                let handler_name = handler.name.clone().unwrap_or_default();
                let rendered = self
                    .templar
                    .template_str(&handler_name, ctx)
                    .map(|v| modules::value_to_string(&v))
                    .unwrap_or(handler_name.clone());
                !handler_name.is_empty()
                    && (rendered == name
                        || handler_name == name
                        || handler.keywords.role.as_ref().is_some_and(|role| {
                            name == format!("{} : {rendered}", role.name)
                                || name == format!("{} : {handler_name}", role.name)
                        }))
            });
            if let Some(index) = by_name {
                self.notified[index] = true;
                found = true;
            }
            let mut seen: Vec<String> = Vec::new();
            for index in (0..self.handlers.len()).rev() {
                let handler = &self.handlers[index];
                if !handler.listen.contains(&name) {
                    continue;
                }
                let handler_name = handler.name.clone().unwrap_or_default();
                if !handler_name.is_empty() && seen.contains(&handler_name) {
                    continue;
                }
                seen.push(handler_name);
                self.notified[index] = true;
                found = true;
            }
            if !found {
                let line = format!(
                    "ERROR! The requested handler '{name}' was not found in either the main handlers list nor in the listening handlers list"
                );
                self.emit(&line);
                self.host_failed = true;
            }
        }
    }

    fn run_task(&mut self, task: &Task, scope: &Inherited, handler: bool) {
        let merged = merge(scope, &task.keywords);
        match &task.body {
            TaskBody::Block {
                block,
                rescue,
                always,
            } => {
                if !rescue.is_empty() {
                    self.rescue_depth += 1;
                }
                self.run_list(block, &merged);
                if !rescue.is_empty() {
                    self.rescue_depth -= 1;
                }
                if self.host_failed && !rescue.is_empty() && !self.end_play {
                    self.host_failed = false;
                    self.run_list(rescue, &merged);
                    self.rescue_vars.clear();
                }
                if !always.is_empty() && !self.end_play {
                    let was_failed = self.host_failed;
                    self.host_failed = false;
                    self.run_list(always, &merged);
                    self.host_failed |= was_failed;
                }
            }
            TaskBody::Action {
                module,
                args,
                written,
            } => {
                if !handler
                    && !tags_selected(&merged.tags, &self.options.tags, &self.options.skip_tags)
                {
                    return;
                }
                // ansible-core's own module runs under the name the playbook wrote.
                let module = if module == super::model::ANSIBLE_FALLBACK {
                    format!("{}:{written}", super::model::ANSIBLE_FALLBACK)
                } else {
                    module.clone()
                };
                self.run_action_task(task, &merged, &module, args, handler);
            }
            TaskBody::Role { role, tasks, .. } => {
                // A role runs once per play unless its parameters differ or it allows
                // duplicates (ansible-core's role cache and its implicit role_complete).
                if !role.allow_duplicates && self.roles_completed.contains(&role.identity) {
                    return;
                }
                self.run_list(tasks, &merged);
                if !self.host_failed && self.roles_ran.contains(&role.identity) {
                    self.roles_completed.insert(role.identity.clone());
                }
            }
        }
    }

    /// The name in `TASK [...]`: a role's tasks are `role : name`, an unnamed
    /// include_role is `include_role : role`, as ansible-core's `get_name`.
    fn task_title(&self, task: &Task, scope: &Inherited) -> String {
        let include_role =
            matches!(&task.body, TaskBody::Action { module, .. } if module == "include_role");
        let raw = match (&task.name, &task.body) {
            (Some(name), _) => name.clone(),
            (None, TaskBody::Action { written, args, .. }) if include_role => {
                let role = arg_str(args, "name")
                    .or_else(|| arg_str(args, "role"))
                    .unwrap_or_default();
                return format!("{written} : {role}");
            }
            (None, _) => task.default_name(),
        };
        let title = if !super::template::is_template(&raw) {
            raw
        } else {
            let ctx = self.context(scope, &[]);
            self.templar
                .template_str(&raw, &ctx)
                .map(|v| modules::value_to_string(&v))
                .unwrap_or(raw)
        };
        match &scope.role {
            Some(role) if !include_role => format!("{} : {title}", role.name),
            _ => title,
        }
    }

    fn eval_bool(
        &self,
        value: &Option<Value>,
        ctx: &Value,
        default: bool,
    ) -> Result<bool, TemplateError> {
        match value {
            None => Ok(default),
            Some(v) => {
                let rendered = self.templar.template(v, ctx)?;
                Ok(modules::parse_bool(&rendered).unwrap_or(default))
            }
        }
    }

    fn loop_items(
        &self,
        scope: &Inherited,
        kind: &LoopKind,
        source: &Value,
        ctx: &Value,
    ) -> Result<Vec<Value>, String> {
        let value = self
            .templar
            .template(source, ctx)
            .map_err(|e| e.to_string())?;
        let as_list = |v: &Value| -> Result<Vec<Value>, String> {
            match v.kind() {
                ValueKind::Seq | ValueKind::Iterable => Ok(v.try_iter().map_err(|e| e.to_string())?.collect()),
                ValueKind::None => Ok(Vec::new()),
                _ => Err(format!(
                    "Invalid data passed to 'loop', it requires a list, got this instead: {}. Hint: If you passed a list/dict of just one element, try adding wantlist=True to your lookup invocation or use q/query instead of lookup.",
                    item_label(v)
                )),
            }
        };
        match kind {
            LoopKind::Loop => as_list(&value),
            LoopKind::Items => {
                let list = if value.kind() == ValueKind::Seq {
                    value.clone()
                } else {
                    Value::from(vec![value.clone()])
                };
                super::filters::flatten(&list, Some(1)).map_err(|e| e.to_string())
            }
            LoopKind::List => {
                if value.kind() == ValueKind::Seq {
                    as_list(&value)
                } else {
                    Ok(vec![value])
                }
            }
            LoopKind::Dict => {
                if value.kind() != ValueKind::Map {
                    return Err("with_dict expects a dict".into());
                }
                let mut out = Vec::new();
                for key in value.try_iter().map_err(|e| e.to_string())? {
                    let item = value.get_item(&key).map_err(|e| e.to_string())?;
                    out.push(Value::from_pairs([("key", key), ("value", item)]));
                }
                Ok(out)
            }
            LoopKind::IndexedItems => Ok(super::filters::flatten(&value, Some(1))
                .map_err(|e| e.to_string())?
                .into_iter()
                .enumerate()
                .map(|(i, v)| Value::from(vec![Value::from(i), v]))
                .collect()),
            LoopKind::Fileglob => {
                let patterns = if value.kind() == ValueKind::Seq {
                    as_list(&value)?
                } else {
                    vec![value]
                };
                let mut out = Vec::new();
                for pattern in patterns {
                    let pattern = modules::value_to_string(&pattern);
                    let full = if pattern.starts_with('/') {
                        pattern
                    } else {
                        self.role_dirs(scope)
                            .into_iter()
                            .map(|d| d.join("files"))
                            .find(|d| d.is_dir())
                            .unwrap_or_else(|| self.base_dir.join("files"))
                            .join(&pattern)
                            .display()
                            .to_string()
                    };
                    if let Ok(paths) = glob::glob(&full) {
                        for p in paths.flatten().filter(|p| p.is_file()) {
                            out.push(Value::from(p.display().to_string()));
                        }
                    }
                }
                Ok(out)
            }
            LoopKind::Sequence => sequence_items(&value),
            LoopKind::Together => {
                let lists: Vec<Vec<Value>> = as_list(&value)?
                    .iter()
                    .map(as_list)
                    .collect::<Result<_, _>>()?;
                let len = lists.iter().map(Vec::len).max().unwrap_or(0);
                Ok((0..len)
                    .map(|i| {
                        Value::from(
                            lists
                                .iter()
                                .map(|l| l.get(i).cloned().unwrap_or(Value::from(())))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect())
            }
            LoopKind::Nested => {
                let lists: Vec<Vec<Value>> = as_list(&value)?
                    .iter()
                    .map(as_list)
                    .collect::<Result<_, _>>()?;
                let mut combos: Vec<Vec<Value>> = vec![Vec::new()];
                for list in lists {
                    combos = combos
                        .into_iter()
                        .flat_map(|prefix| {
                            list.iter().map(move |v| {
                                let mut c = prefix.clone();
                                c.push(v.clone());
                                c
                            })
                        })
                        .collect();
                }
                Ok(combos.into_iter().map(Value::from).collect())
            }
            LoopKind::Lines => {
                let command = modules::value_to_string(&value);
                let output = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&command)
                    .current_dir(&self.base_dir)
                    .output()
                    .map_err(|e| format!("lookup_plugin.lines({command}) failed: {e}"))?;
                Ok(String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(Value::from)
                    .collect())
            }
            LoopKind::File => {
                let names = if value.kind() == ValueKind::Seq {
                    as_list(&value)?
                } else {
                    vec![value]
                };
                names
                    .iter()
                    .map(|n| {
                        let name = modules::value_to_string(n);
                        let path = self.resolve_local(scope, &name, "files");
                        std::fs::read_to_string(&path)
                            .map(|t| Value::from(t.trim_end().to_string()))
                            .map_err(|e| format!("could not read {name}: {e}"))
                    })
                    .collect()
            }
            LoopKind::Subelements => {
                let parts = as_list(&value)?;
                let (Some(list), Some(key)) = (parts.first(), parts.get(1)) else {
                    return Err("with_subelements expects a list and a key".into());
                };
                let key = modules::value_to_string(key);
                let mut out = Vec::new();
                for element in as_list(list)? {
                    let sub = element.get_attr(&key).map_err(|e| e.to_string())?;
                    // Like Ansible's lookup, the first item is the element without the subkey.
                    let mut rest = Vec::new();
                    for k in element.try_iter().map_err(|e| e.to_string())? {
                        if k.as_str() != Some(key.as_str()) {
                            rest.push((k.clone(), element.get_item(&k).unwrap_or_default()));
                        }
                    }
                    let parent = Value::from_pairs(rest);
                    for s in as_list(&sub)? {
                        out.push(Value::from(vec![parent.clone(), s]));
                    }
                }
                Ok(out)
            }
        }
    }

    /// The directories a task's relative files are searched in: its role's, then the
    /// play's.
    fn role_dirs(&self, scope: &Inherited) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(role) = &scope.role {
            dirs.push(role.path.clone());
        }
        dirs.push(self.base_dir.clone());
        dirs
    }

    /// Finds a file for `src`: in the task's role (`<role>/<subdir>/<name>`,
    /// `<role>/<name>`, `<role>/tasks/<name>`), then `<base>/<subdir>/<name>`, then
    /// `<base>/<name>`, as Ansible's search path for a role's task.
    fn resolve_local(&self, scope: &Inherited, name: &str, subdir: &str) -> PathBuf {
        let path = Path::new(name);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        if let Some(role) = &scope.role {
            for candidate in [
                role.path.join(subdir).join(path),
                role.path.join(path),
                role.path.join("tasks").join(path),
            ] {
                if candidate.exists() {
                    return candidate;
                }
            }
        }
        let candidate = self.base_dir.join(subdir).join(path);
        if candidate.exists() {
            return candidate;
        }
        self.base_dir.join(path)
    }

    fn run_action_task(
        &mut self,
        task: &Task,
        scope: &Inherited,
        module: &str,
        args: &Value,
        handler: bool,
    ) {
        let title = self.task_title(task, scope);
        if module == "meta" {
            self.run_meta(args, scope);
            return;
        }
        if handler {
            self.emit_banner(&format!("RUNNING HANDLER [{title}]"));
        } else {
            self.emit_banner(&format!("TASK [{title}]"));
        }
        let host = self.host().to_string();
        if module == "include_tasks" || module == "include_role" {
            if let Some(role) = &scope.role {
                self.roles_ran.insert(role.identity.clone());
            }
            self.run_include(task, scope, module, args, &host);
            return;
        }
        let ctx0 = self.context(scope, &[]);
        let ignore_errors = match self.eval_bool(&scope.ignore_errors, &ctx0, false) {
            Ok(b) => b,
            Err(e) => {
                self.finish_failed_outright(task, &host, &e.to_string());
                return;
            }
        };
        let no_log = self.eval_bool(&scope.no_log, &ctx0, false).unwrap_or(false);
        let loop_var = task
            .loop_control
            .as_ref()
            .and_then(|lc| lc.get_attr("loop_var").ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| "item".into());

        let outcome = if let Some((kind, source)) = &task.loop_source {
            let items = match self.loop_items(scope, kind, source, &ctx0) {
                Ok(items) => items,
                Err(message) => {
                    self.finish_failed_outright(task, &host, &message);
                    return;
                }
            };
            if items.is_empty() {
                let outcome = Outcome::new()
                    .with("results", Value::from(Vec::<Value>::new()))
                    .with("skipped", true)
                    .with("skipped_reason", "No items in the list")
                    .with("msg", "All items skipped");
                self.emit(&format!("skipping: [{host}]"));
                self.stats.skipped += 1;
                self.register(task, &outcome);
                return;
            }
            let mut results = Vec::new();
            let total = items.len();
            for (index, item) in items.into_iter().enumerate() {
                let mut loop_vars = vec![
                    (loop_var.clone(), item.clone()),
                    (
                        "ansible_loop_var".to_string(),
                        Value::from(loop_var.clone()),
                    ),
                ];
                if let Some(lc) = &task.loop_control {
                    if let Some(index_var) = lc
                        .get_attr("index_var")
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                    {
                        loop_vars.push((index_var, Value::from(index)));
                    }
                    if lc
                        .get_attr("extended")
                        .map(|v| v.is_true())
                        .unwrap_or(false)
                    {
                        loop_vars.push((
                            "ansible_loop".into(),
                            Value::from_pairs([
                                ("index", Value::from(index + 1)),
                                ("index0", Value::from(index)),
                                ("first", Value::from(index == 0)),
                                ("last", Value::from(index + 1 == total)),
                                ("length", Value::from(total)),
                                ("revindex", Value::from(total - index)),
                                ("revindex0", Value::from(total - index - 1)),
                            ]),
                        ));
                    }
                }
                let mut result = self.run_one(task, scope, module, args, &loop_vars);
                result.set(&loop_var, item.clone());
                result.set("ansible_loop_var", loop_var.clone());
                let label_ctx = self.context(scope, &loop_vars);
                let label = task
                    .loop_control
                    .as_ref()
                    .and_then(|lc| lc.get_attr("label").ok())
                    .filter(|v| !v.is_undefined())
                    .and_then(|l| self.templar.template(&l, &label_ctx).ok())
                    .map(|v| item_label(&v))
                    .unwrap_or_else(|| item_label(&item));
                let label = if no_log { "None".to_string() } else { label };
                self.print_item(&host, &label, &result, no_log, scope);
                results.push(result);
                if let Some(pause) = task
                    .loop_control
                    .as_ref()
                    .and_then(|lc| lc.get_attr("pause").ok())
                    .and_then(|v| v.as_i64())
                {
                    if pause > 0 {
                        std::thread::sleep(std::time::Duration::from_secs(pause as u64));
                    }
                }
            }
            let changed = results.iter().any(Outcome::changed);
            let failed = results.iter().any(Outcome::is_failed);
            let all_skipped = results.iter().all(Outcome::skipped);
            let mut outcome = Outcome::new().with("changed", changed);
            if failed {
                outcome.set("failed", true);
                outcome.set("msg", "One or more items failed");
            } else if all_skipped {
                outcome.set("skipped", true);
                outcome.set("msg", "All items skipped");
            } else {
                outcome.set("msg", "All items completed");
            }
            outcome.set(
                "results",
                Value::from(results.iter().map(Outcome::to_value).collect::<Vec<_>>()),
            );
            if failed {
                if ignore_errors {
                    self.emit("...ignoring");
                }
            } else if all_skipped {
                self.emit(&format!("skipping: [{host}]"));
            }
            outcome
        } else {
            let outcome = self.run_one(task, scope, module, args, &[]);
            self.print_single(task, &host, &outcome, no_log, ignore_errors, scope);
            outcome
        };
        self.register(task, &outcome);
        let verdict = if outcome.is_failed() {
            Verdict::Failed
        } else if outcome.skipped() {
            Verdict::Skipped
        } else {
            Verdict::Ok
        };
        if let (Some(role), false) = (&scope.role, matches!(verdict, Verdict::Skipped)) {
            self.roles_ran.insert(role.identity.clone());
        }
        match verdict {
            Verdict::Ok => {
                self.stats.ok += 1;
                if outcome.changed() {
                    self.stats.changed += 1;
                    let ctx = self.context(scope, &[]);
                    self.notify(&task.notify, &ctx);
                }
            }
            Verdict::Skipped => self.stats.skipped += 1,
            Verdict::Failed => {
                if ignore_errors {
                    self.stats.ok += 1;
                    self.stats.ignored += 1;
                    if outcome.changed() {
                        self.stats.changed += 1;
                    }
                } else {
                    self.mark_failed(task, &title, &outcome);
                }
            }
        }
    }

    fn mark_failed(&mut self, task: &Task, title: &str, outcome: &Outcome) {
        if self.rescue_depth > 0 {
            self.stats.rescued += 1;
        } else {
            self.stats.failed += 1;
        }
        self.host_failed = true;
        self.rescue_vars = vec![
            (
                "ansible_failed_task".into(),
                Value::from_pairs([
                    ("name", Value::from(title)),
                    ("action", Value::from(task.default_name())),
                ]),
            ),
            ("ansible_failed_result".into(), outcome.to_value()),
        ];
    }

    /// A task that failed before any item ran (bad loop, bad keyword value).
    fn finish_failed_outright(&mut self, task: &Task, host: &str, message: &str) {
        let outcome = Outcome::failed(message.to_string());
        let json = super::filters::python_json(&displayable(&outcome, false));
        self.emit(&format!("fatal: [{host}]: FAILED! => {json}"));
        let title = task.name.clone().unwrap_or_else(|| task.default_name());
        self.mark_failed(task, &title, &outcome);
    }

    fn register(&mut self, task: &Task, outcome: &Outcome) {
        if let Some(name) = &task.register {
            let mut stored = outcome.clone();
            stored.remove("ansible_facts");
            stored.remove("_ansible_verbose_always");
            stored.remove("_ansible_debug");
            self.set_host_var(name, stored.to_value());
        }
    }

    fn print_diff(&mut self, outcome: &Outcome, scope: &Inherited) {
        let ctx = self.context(scope, &[]);
        let diff_mode = self
            .eval_bool(&scope.diff, &ctx, self.options.diff)
            .unwrap_or(self.options.diff);
        if !diff_mode || !outcome.changed() {
            return;
        }
        let Some(diff) = outcome.get("diff") else {
            return;
        };
        let get = |k: &str| {
            diff.get_attr(k)
                .ok()
                .filter(|v| !v.is_undefined())
                .map(|v| modules::value_to_string(&v))
                .unwrap_or_default()
        };
        for line in unified_diff(&get("before"), &get("after"), &get("after_header")) {
            self.emit(&line);
        }
    }

    /// Ansible 2.19's `[ERROR]: Task failed: ...` line with the task's origin.
    fn emit_origin(&mut self, task: &Task, outcome: &Outcome) {
        let msg = outcome
            .get("msg")
            .map(modules::value_to_string)
            .unwrap_or_default();
        self.emit(&format!("[ERROR]: Task failed: {msg}"));
        let file = task
            .file
            .as_deref()
            .cloned()
            .or_else(|| self.playbook.source_path.clone());
        if let Some(file) = file {
            self.emit(&format!(
                "Origin: {}:{}:{}",
                file.display(),
                task.pos.line,
                task.pos.column
            ));
            self.emit("");
        }
    }

    fn print_single(
        &mut self,
        task: &Task,
        host: &str,
        outcome: &Outcome,
        no_log: bool,
        ignore_errors: bool,
        scope: &Inherited,
    ) {
        self.print_diff(outcome, scope);
        let verbose = outcome
            .get("_ansible_verbose_always")
            .is_some_and(Value::is_true);
        if outcome.is_failed() {
            self.emit_origin(task, outcome);
            let json = super::filters::python_json(&displayable(outcome, no_log));
            self.emit(&format!("fatal: [{host}]: FAILED! => {json}"));
            if ignore_errors {
                self.emit("...ignoring");
            }
        } else if outcome.skipped() {
            self.emit(&format!("skipping: [{host}]"));
        } else {
            let status = if outcome.changed() { "changed" } else { "ok" };
            if verbose {
                let json = pretty_json(&displayable(outcome, no_log));
                for (i, line) in json.lines().enumerate() {
                    if i == 0 {
                        self.emit(&format!("{status}: [{host}] => {line}"));
                    } else {
                        self.emit(line);
                    }
                }
            } else {
                self.emit(&format!("{status}: [{host}]"));
            }
        }
    }

    fn print_item(
        &mut self,
        host: &str,
        label: &str,
        outcome: &Outcome,
        no_log: bool,
        scope: &Inherited,
    ) {
        self.print_diff(outcome, scope);
        let verbose = outcome
            .get("_ansible_verbose_always")
            .is_some_and(Value::is_true);
        if outcome.is_failed() {
            let json = super::filters::python_json(&displayable(outcome, no_log));
            self.emit(&format!("failed: [{host}] (item={label}) => {json}"));
        } else if outcome.skipped() {
            self.emit(&format!("skipping: [{host}] => (item={label}) "));
        } else {
            let status = if outcome.changed() { "changed" } else { "ok" };
            if verbose {
                let json = pretty_json(&displayable(outcome, no_log));
                for (i, line) in json.lines().enumerate() {
                    if i == 0 {
                        self.emit(&format!("{status}: [{host}] => (item={label}) => {line}"));
                    } else {
                        self.emit(line);
                    }
                }
            } else {
                self.emit(&format!("{status}: [{host}] => (item={label})"));
            }
        }
    }

    /// Runs one task for one loop item (or once): when, args, module, until, changed/failed_when.
    fn run_one(
        &mut self,
        task: &Task,
        scope: &Inherited,
        module: &str,
        args: &Value,
        loop_vars: &[(String, Value)],
    ) -> Outcome {
        let ctx = self.context(scope, loop_vars);
        for condition in &scope.when {
            match self.templar.condition(condition, &ctx) {
                Ok(true) => {}
                Ok(false) => {
                    return Outcome::new()
                        .with("skipped", true)
                        .with("skip_reason", "Conditional result was False")
                        .with("false_condition", modules::value_to_string(condition));
                }
                Err(e) => {
                    return Outcome::failed(format!(
                        "The conditional check '{}' failed. The error was: {e}",
                        modules::value_to_string(condition)
                    ));
                }
            }
        }
        if let Some(delegate) = &task.delegate_to {
            let target = self
                .templar
                .template(delegate, &ctx)
                .map(|v| modules::value_to_string(&v))
                .unwrap_or_default();
            if !matches!(target.as_str(), "localhost" | "127.0.0.1") && target != self.host() {
                return Outcome::failed(format!("delegate_to '{target}' is not supported by the native runtime (only the local host)"));
            }
        }
        let retries = task.until.as_ref().map(|_| {
            task.retries
                .as_ref()
                .and_then(|r| self.templar.template(r, &ctx).ok())
                .and_then(|r| {
                    r.as_i64()
                        .or_else(|| modules::value_to_string(&r).parse().ok())
                })
                .unwrap_or(3)
                .max(0) as usize
        });
        let delay = task
            .delay
            .as_ref()
            .and_then(|d| self.templar.template(d, &ctx).ok())
            .and_then(|d| {
                d.as_i64()
                    .or_else(|| modules::value_to_string(&d).parse().ok())
            })
            .unwrap_or(5)
            .max(0) as u64;
        let attempts_allowed = retries.map(|r| r + 1).unwrap_or(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut outcome = self.execute(scope, module, args, &ctx);
            let mut register_vars = loop_vars.to_vec();
            if let Some(name) = &task.register {
                register_vars.push((name.clone(), outcome.to_value()));
            }
            if let Some(until) = &task.until {
                let check_ctx = self.context(scope, &register_vars);
                let done = until.iter().try_fold(true, |acc, c| {
                    self.templar.condition(c, &check_ctx).map(|b| acc && b)
                });
                outcome.set("attempts", attempt);
                match done {
                    Ok(true) => {}
                    Ok(false) if attempt < attempts_allowed => {
                        let title = task.name.clone().unwrap_or_else(|| task.default_name());
                        let host = self.host().to_string();
                        self.emit(&format!(
                            "FAILED - RETRYING: [{host}]: {title} ({} retries left).",
                            attempts_allowed - attempt
                        ));
                        std::thread::sleep(std::time::Duration::from_secs(delay));
                        continue;
                    }
                    Ok(false) => {
                        outcome.set("failed", true);
                        if outcome.get("msg").is_none() {
                            outcome.set("msg", "Retries exhausted");
                        }
                    }
                    Err(e) => {
                        return Outcome::failed(format!(
                            "The conditional check failed. The error was: {e}"
                        ))
                    }
                }
                if let Some(name) = &task.register {
                    register_vars.retain(|(k, _)| k != name);
                    register_vars.push((name.clone(), outcome.to_value()));
                }
            }
            return self.post_process(task, scope, outcome, &register_vars);
        }
    }

    fn post_process(
        &self,
        task: &Task,
        scope: &Inherited,
        mut outcome: Outcome,
        register_vars: &[(String, Value)],
    ) -> Outcome {
        if outcome.skipped() {
            return outcome;
        }
        let ctx = self.context(scope, register_vars);
        if let Some(conditions) = &task.changed_when {
            match all_true(&self.templar, conditions, &ctx) {
                Ok(changed) => outcome.set("changed", changed),
                Err(e) => {
                    outcome.set("failed", true);
                    outcome.set(
                        "msg",
                        format!(
                            "The conditional check '{}' failed. The error was: {e}",
                            join_conditions(conditions)
                        ),
                    );
                    return outcome;
                }
            }
        }
        if let Some(conditions) = &task.failed_when {
            let ctx = if task.changed_when.is_some() {
                let mut vars = register_vars.to_vec();
                if let Some(name) = &task.register {
                    vars.retain(|(k, _)| k != name);
                    vars.push((name.clone(), outcome.to_value()));
                }
                self.context(scope, &vars)
            } else {
                ctx
            };
            match all_true(&self.templar, conditions, &ctx) {
                Ok(failed) => {
                    outcome.set("failed_when_result", failed);
                    outcome.set("failed", failed);
                    if failed && outcome.get("msg").is_none() {
                        outcome.set("msg", "");
                    }
                }
                Err(e) => {
                    outcome.set("failed", true);
                    outcome.set(
                        "msg",
                        format!(
                            "The conditional check '{}' failed. The error was: {e}",
                            join_conditions(conditions)
                        ),
                    );
                }
            }
        }
        outcome
    }

    /// Templates arguments and runs the action or module.
    fn execute(&mut self, scope: &Inherited, module: &str, args: &Value, ctx: &Value) -> Outcome {
        let check = match self.eval_bool(&scope.check_mode, ctx, self.options.check) {
            Ok(b) => b,
            Err(e) => return Outcome::failed(e.to_string()),
        };
        let diff = self
            .eval_bool(&scope.diff, ctx, self.options.diff)
            .unwrap_or(self.options.diff);
        // Expressions of assert/debug var are evaluated by the action, not templated first.
        let raw_keys: &[&str] = match module {
            "assert" => &["that"],
            "debug" => &["var"],
            _ => &[],
        };
        let templated = match template_args(&self.templar, args, ctx, raw_keys) {
            Ok(v) => v,
            Err(e) => return Outcome::failed(format!("{e}")),
        };
        let environment = match &scope.environment {
            None => Vec::new(),
            Some(env) => match self.templar.template(env, ctx) {
                Ok(env) => env_pairs(&env),
                Err(e) => return Outcome::failed(e.to_string()),
            },
        };
        let become_user = match self.become_user(scope, ctx) {
            Ok(user) => user,
            Err(e) => return Outcome::failed(e),
        };
        if matches!(module, "package" | "service") && self.facts.is_none() {
            self.gather_facts();
        }
        let mctx = ModuleContext {
            check,
            diff,
            environment,
            facts: self
                .facts
                .as_ref()
                .map(|f| Value::from_pairs(f.iter().cloned()))
                .unwrap_or_default(),
        };
        match module {
            "debug" => self.action_debug(&templated, ctx),
            "set_fact" => self.action_set_fact(&templated),
            "assert" => self.action_assert(&templated, ctx),
            "fail" => Outcome::failed(
                arg_str(&templated, "msg")
                    .unwrap_or_else(|| "Failed as requested from task".into()),
            ),
            "include_vars" => self.action_include_vars(scope, &templated),
            "pause" => action_pause(&templated, check),
            "template" => {
                self.action_template(scope, &templated, ctx, &mctx, become_user.as_deref())
            }
            "copy" | "unarchive" => {
                let mut args = templated;
                let remote = arg_str(&args, "remote_src")
                    .and_then(|v| modules::parse_bool(&Value::from(v)))
                    .unwrap_or(false);
                if let (Some(src), false) = (arg_str(&args, "src"), remote) {
                    let mut path = self
                        .resolve_local(scope, &src, "files")
                        .display()
                        .to_string();
                    if src.ends_with('/') && !path.ends_with('/') {
                        path.push('/');
                    }
                    args = files::with_arg(&args, "src", Value::from(path));
                }
                self.run_module(module, &args, &mctx, become_user.as_deref())
            }
            _ if module.starts_with(super::model::ANSIBLE_FALLBACK) => {
                let written = module.split_once(':').map(|(_, w)| w).unwrap_or_default();
                match &self.options.ansible_fallback {
                    Some(program) => super::fallback::run_ansible_module(program, written, &templated, &mctx, become_user.as_deref()),
                    None => Outcome::failed(format!("couldn't resolve module/action '{written}': the native runtime does not implement it")),
                }
            }
            "package" => {
                let manager = arg_str(&templated, "use")
                    .filter(|u| u != "auto")
                    .or_else(|| {
                        mctx.facts
                            .get_attr("pkg_mgr")
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                    })
                    .unwrap_or_default();
                match manager.as_str() {
                    "apt" => {
                        let mut args = templated;
                        args = strip_key(&args, "use");
                        self.run_module("apt", &args, &mctx, become_user.as_deref())
                    }
                    "dnf" | "yum" | "dnf5" => {
                        let args = strip_key(&templated, "use");
                        self.run_module("dnf", &args, &mctx, become_user.as_deref())
                    }
                    other => Outcome::failed(format!(
                        "package: the package manager '{other}' is not supported by the native runtime (apt, dnf, yum)"
                    )),
                }
            }
            _ => self.run_module(module, &templated, &mctx, become_user.as_deref()),
        }
    }

    fn become_user(&self, scope: &Inherited, ctx: &Value) -> Result<Option<String>, String> {
        let enabled = self
            .eval_bool(&scope.become_, ctx, false)
            .map_err(|e| e.to_string())?;
        if !enabled {
            return Ok(None);
        }
        let user = match &scope.become_user {
            Some(u) => {
                modules::value_to_string(&self.templar.template(u, ctx).map_err(|e| e.to_string())?)
            }
            None => "root".to_string(),
        };
        if let Some(method) = &scope.become_method {
            let method = modules::value_to_string(method);
            if method != "sudo" {
                return Err(format!(
                    "become_method '{method}' is not supported by the native runtime (only sudo)"
                ));
            }
        }
        if user == self.current_user {
            Ok(None)
        } else {
            Ok(Some(user))
        }
    }

    fn run_module(
        &self,
        module: &str,
        args: &Value,
        mctx: &ModuleContext,
        become_user: Option<&str>,
    ) -> Outcome {
        match become_user {
            None => modules::run_module(module, args, mctx),
            Some(user) => super::become_::run_module_as(
                self.options.become_program.as_deref(),
                user,
                module,
                args,
                mctx,
            ),
        }
    }

    fn run_meta(&mut self, args: &Value, scope: &Inherited) {
        let action = arg_str(args, "_raw_params").unwrap_or_default();
        let ctx = self.context(scope, &[]);
        if !scope.when.is_empty() {
            let run = scope
                .when
                .iter()
                .all(|c| self.templar.condition(c, &ctx).unwrap_or(false));
            if !run {
                return;
            }
        }
        match action.trim() {
            "flush_handlers" => self.flush_handlers(),
            "end_play" | "end_host" | "end_batch" => self.end_play = true,
            "clear_facts" => self.facts = None,
            "clear_host_errors" => {}
            _ => {}
        }
    }

    fn action_debug(&self, args: &Value, ctx: &Value) -> Outcome {
        let verbosity = args
            .get_attr("verbosity")
            .ok()
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        if verbosity > 0 {
            return Outcome::new()
                .with("skipped", true)
                .with("skipped_reason", "Verbosity threshold not met.");
        }
        let mut outcome = Outcome::default();
        if let Some(var) = arg_str(args, "var") {
            let value = match self.templar.template_str(&format!("{{{{ {var} }}}}"), ctx) {
                Ok(v) => v,
                Err(TemplateError::Undefined { .. }) => Value::from("VARIABLE IS NOT DEFINED!"),
                Err(e) => Value::from(e.to_string()),
            };
            outcome.set(&var, value);
        } else {
            let msg = args
                .get_attr("msg")
                .ok()
                .filter(|v| !v.is_undefined())
                .unwrap_or(Value::from("Hello world!"));
            outcome.set("msg", msg);
        }
        outcome.set("changed", false);
        outcome.set("_ansible_verbose_always", true);
        outcome.set("_ansible_debug", true);
        outcome
    }

    fn action_set_fact(&mut self, args: &Value) -> Outcome {
        let mut facts = Vec::new();
        if let Ok(keys) = args.try_iter() {
            for key in keys {
                let Some(name) = key.as_str() else { continue };
                if name == "cacheable" {
                    continue;
                }
                let value = args.get_item(&key).unwrap_or_default();
                facts.push((name.to_string(), value));
            }
        }
        if facts.is_empty() {
            return Outcome::failed(
                "No key/value pairs provided, at least one is required for this action to succeed",
            );
        }
        for (k, v) in &facts {
            self.set_host_var(k, v.clone());
        }
        Outcome::new().with("ansible_facts", Value::from_pairs(facts))
    }

    fn action_assert(&self, args: &Value, ctx: &Value) -> Outcome {
        let that = args.get_attr("that").unwrap_or_default();
        let conditions: Vec<Value> = match that.kind() {
            ValueKind::Seq => that.try_iter().map(|i| i.collect()).unwrap_or_default(),
            ValueKind::Undefined | ValueKind::None => {
                return Outcome::failed("conditional required in \"that\" string");
            }
            _ => vec![that],
        };
        let quiet = args
            .get_attr("quiet")
            .ok()
            .and_then(|v| modules::parse_bool(&v))
            .unwrap_or(false);
        for condition in conditions {
            match self.templar.condition(&condition, ctx) {
                Ok(true) => {}
                Ok(false) => {
                    let msg = args
                        .get_attr("fail_msg")
                        .ok()
                        .filter(|v| !v.is_undefined() && !v.is_none())
                        .or_else(|| {
                            args.get_attr("msg")
                                .ok()
                                .filter(|v| !v.is_undefined() && !v.is_none())
                        })
                        .unwrap_or(Value::from("Assertion failed"));
                    let msg = self.templar.template(&msg, ctx).unwrap_or(msg);
                    return Outcome::default()
                        .with("assertion", condition.clone())
                        .with("changed", false)
                        .with("evaluated_to", false)
                        .with("failed", true)
                        .with("msg", msg);
                }
                Err(e) => {
                    return Outcome::failed(format!(
                        "The conditional check '{}' failed. The error was: {e}",
                        modules::value_to_string(&condition)
                    ))
                }
            }
        }
        let success = args
            .get_attr("success_msg")
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
            .unwrap_or(Value::from("All assertions passed"));
        let success = self.templar.template(&success, ctx).unwrap_or(success);
        let mut outcome = Outcome::new().with("msg", success);
        if !quiet {
            outcome.set("_ansible_verbose_always", true);
        }
        outcome
    }

    fn action_include_vars(&mut self, scope: &Inherited, args: &Value) -> Outcome {
        let Some(file) = arg_str(args, "_raw_params").or_else(|| arg_str(args, "file")) else {
            return Outcome::failed("include_vars: 'file' (or a free-form file name) is required; 'dir' is not supported");
        };
        let path = self.resolve_local(scope, &file, "vars");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(format!("Could not find or access '{file}': {e}")),
        };
        let value = match super::yaml::parse_one(&text) {
            Ok(node) => node.to_value(),
            Err(e) => return Outcome::failed(format!("{}: {e}", path.display())),
        };
        let mut facts = Vec::new();
        if let Some(name) = arg_str(args, "name") {
            facts.push((name, value));
        } else if let Ok(keys) = value.try_iter() {
            for key in keys {
                if let (Some(k), Ok(v)) = (key.as_str(), value.get_item(&key)) {
                    facts.push((k.to_string(), v));
                }
            }
        }
        for (k, v) in &facts {
            self.set_host_var(k, v.clone());
        }
        Outcome::new()
            .with("ansible_facts", Value::from_pairs(facts))
            .with(
                "ansible_included_var_files",
                Value::from(vec![path.display().to_string()]),
            )
    }

    /// `include_tasks`: evaluated at run time, once per loop item; the included tasks run
    /// after all items were processed, as in Ansible.
    fn run_include(
        &mut self,
        task: &Task,
        scope: &Inherited,
        module: &str,
        args: &Value,
        host: &str,
    ) {
        let ctx0 = self.context(scope, &[]);
        let loop_var = task
            .loop_control
            .as_ref()
            .and_then(|lc| lc.get_attr("loop_var").ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| "item".into());
        let items: Vec<Option<Value>> = match &task.loop_source {
            None => vec![None],
            Some((kind, source)) => match self.loop_items(scope, kind, source, &ctx0) {
                Ok(items) => items.into_iter().map(Some).collect(),
                Err(message) => {
                    self.finish_failed_outright(task, host, &message);
                    return;
                }
            },
        };
        let mut pending = Vec::new();
        for item in items {
            let loop_vars: Vec<(String, Value)> =
                item.iter().map(|i| (loop_var.clone(), i.clone())).collect();
            let ctx = self.context(scope, &loop_vars);
            let mut skip = false;
            for condition in &scope.when {
                match self.templar.condition(condition, &ctx) {
                    Ok(true) => {}
                    Ok(false) => skip = true,
                    Err(e) => {
                        self.finish_failed_outright(
                            task,
                            host,
                            &format!("The conditional check failed. The error was: {e}"),
                        );
                        return;
                    }
                }
            }
            if skip {
                match &item {
                    Some(i) => {
                        self.emit(&format!("skipping: [{host}] => (item={}) ", item_label(i)))
                    }
                    None => self.emit(&format!("skipping: [{host}]")),
                }
                continue;
            }
            let templated = match template_args(&self.templar, args, &ctx, &[]) {
                Ok(v) => v,
                Err(e) => {
                    self.finish_failed_outright(task, host, &e.to_string());
                    return;
                }
            };
            let loaded = if module == "include_role" {
                self.load_included_role(task, &templated)
            } else {
                self.load_included_tasks(scope, &templated)
            };
            let (tasks, shown) = match loaded {
                Ok(loaded) => loaded,
                Err(message) => {
                    self.finish_failed_outright(task, host, &message);
                    return;
                }
            };
            match &item {
                Some(i) => self.emit(&format!(
                    "included: {shown} for {host} => (item={})",
                    item_label(i)
                )),
                None => self.emit(&format!("included: {shown} for {host}")),
            }
            // Ansible counts every processed include as ok.
            self.stats.ok += 1;
            pending.push((tasks, loop_vars));
        }
        for (tasks, loop_vars) in pending {
            let mut inner = scope.clone();
            inner.when.clear();
            inner.vars.extend(loop_vars);
            self.run_list(&tasks, &inner);
            if self.host_failed || self.end_play {
                return;
            }
        }
    }

    /// Loads an include_tasks file: its tasks and the name `included:` shows.
    fn load_included_tasks(
        &mut self,
        scope: &Inherited,
        templated: &Value,
    ) -> Result<(Vec<Task>, String), String> {
        let file = arg_str(templated, "_raw_params")
            .or_else(|| arg_str(templated, "file"))
            .ok_or_else(|| "include_tasks needs a file name".to_string())?;
        let path = self.resolve_local(scope, &file, "tasks");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("Could not find or access '{file}': {e}"))?;
        let node = super::yaml::parse_one(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let super::yaml::NodeKind::Seq(items) = &node.kind else {
            return Err(format!("{} must contain a list of tasks", path.display()));
        };
        let file_dir = path.parent().unwrap_or(&self.base_dir).to_path_buf();
        let dirs = super::model::Dirs {
            file_dir: &file_dir,
            playbook_dir: &self.base_dir,
            deferred: None,
        };
        let mut tasks = items
            .iter()
            .map(|i| super::model::parse_task(i, &dirs, false))
            .collect::<Result<Vec<Task>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        super::model::set_file(&mut tasks, &Arc::new(path.clone()));
        self.add_role_handlers(&tasks);
        Ok((tasks, path.display().to_string()))
    }

    /// Loads an include_role's role: its task, and the role's name for `included:`.
    /// Its handlers join the play's; with `public: true` its variables become the
    /// play's.
    fn load_included_role(
        &mut self,
        task: &Task,
        templated: &Value,
    ) -> Result<(Vec<Task>, String), String> {
        let TaskBody::Action { written, .. } = &task.body else {
            return Err("include_role must be a task".into());
        };
        let mut request = super::roles::request_from_task(written, templated, &[], task.pos)
            .map_err(|e| e.to_string())?;
        // Dynamic includes are private unless `public: true` (ansible-core's default).
        request.public = Some(request.public.unwrap_or(false));
        request.vars = task.keywords.vars.clone();
        let loaded =
            super::roles::load_role(&request, &self.base_dir).map_err(|e| e.to_string())?;
        let tasks = vec![loaded.task];
        self.add_role_handlers(&tasks);
        if let Some(TaskBody::Role { role, .. }) = tasks.first().map(|t| &t.body) {
            if role.public {
                self.play_roles.push(Arc::clone(role));
            }
        }
        Ok((tasks, request.name))
    }

    /// Adds the handlers of roles found in `tasks` to the play's.
    fn add_role_handlers(&mut self, tasks: &[Task]) {
        for handler in super::roles::role_handlers(tasks) {
            self.handlers.push(handler);
            self.notified.push(false);
        }
    }

    fn action_template(
        &self,
        scope: &Inherited,
        args: &Value,
        ctx: &Value,
        mctx: &ModuleContext,
        become_user: Option<&str>,
    ) -> Outcome {
        let Some(src) = arg_str(args, "src") else {
            return Outcome::failed("src and dest are required");
        };
        let Some(dest) = arg_str(args, "dest") else {
            return Outcome::failed("src and dest are required");
        };
        let path = self.resolve_local(scope, &src, "templates");
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(_) => return Outcome::failed(format!("Could not find or access '{src}'")),
        };
        let lstrip = arg_str(args, "lstrip_blocks")
            .and_then(|v| modules::parse_bool(&Value::from(v)))
            .unwrap_or(false);
        let trim = arg_str(args, "trim_blocks")
            .and_then(|v| modules::parse_bool(&Value::from(v)))
            .unwrap_or(true);
        let rendered =
            match render_template_file(&self.templar, &source, ctx, &path, &dest, lstrip, trim) {
                Ok(r) => r,
                Err(e) => return Outcome::failed(format!("{e}")),
            };
        let rendered = match arg_str(args, "newline_sequence").as_deref() {
            Some("\\r\\n") => rendered.replace('\n', "\r\n"),
            _ => rendered,
        };
        let mut module_args = args.clone();
        for key in [
            "src",
            "lstrip_blocks",
            "trim_blocks",
            "newline_sequence",
            "output_encoding",
            "variable_start_string",
            "variable_end_string",
            "block_start_string",
            "block_end_string",
            "comment_start_string",
            "comment_end_string",
        ] {
            module_args = strip_key(&module_args, key);
        }
        module_args = files::with_arg(&module_args, "content", Value::from(rendered));
        let mut outcome = self.run_module("copy", &module_args, mctx, become_user);
        if !outcome.is_failed() {
            outcome.set("src", path.display().to_string());
        }
        outcome
    }
}

fn all_true(templar: &Templar, conditions: &[Value], ctx: &Value) -> Result<bool, TemplateError> {
    for c in conditions {
        if !templar.condition(c, ctx)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn join_conditions(conditions: &[Value]) -> String {
    conditions
        .iter()
        .map(modules::value_to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

fn arg_str(args: &Value, key: &str) -> Option<String> {
    args.get_attr(key)
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_none())
        .map(|v| modules::value_to_string(&v))
}

fn strip_key(args: &Value, key: &str) -> Value {
    let mut pairs = Vec::new();
    if let Ok(keys) = args.try_iter() {
        for k in keys {
            if k.as_str() != Some(key) {
                if let Ok(v) = args.get_item(&k) {
                    pairs.push((k, v));
                }
            }
        }
    }
    Value::from_pairs(pairs)
}

fn env_pairs(env: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(keys) = env.try_iter() {
        for k in keys {
            if let (Some(name), Ok(v)) = (k.as_str(), env.get_item(&k)) {
                out.push((name.to_string(), modules::value_to_string(&v)));
            }
        }
    }
    out
}

/// Templates module arguments, leaving `raw_keys` untouched and dropping `omit` values.
fn template_args(
    templar: &Templar,
    args: &Value,
    ctx: &Value,
    raw_keys: &[&str],
) -> Result<Value, TemplateError> {
    let mut out = Vec::new();
    if let Ok(keys) = args.try_iter() {
        for key in keys {
            let value = args.get_item(&key).unwrap_or_default();
            let name = key.as_str().unwrap_or_default();
            let rendered = if raw_keys.contains(&name) {
                value
            } else {
                templar.template(&value, ctx)?
            };
            if rendered.as_str() == Some(OMIT) {
                continue;
            }
            out.push((key, drop_omitted(rendered)));
        }
    }
    Ok(Value::from_pairs(out))
}

fn drop_omitted(value: Value) -> Value {
    match value.kind() {
        ValueKind::Map => {
            let mut pairs = Vec::new();
            if let Ok(keys) = value.try_iter() {
                for k in keys {
                    let v = value.get_item(&k).unwrap_or_default();
                    if v.as_str() != Some(OMIT) {
                        pairs.push((k, drop_omitted(v)));
                    }
                }
            }
            Value::from_pairs(pairs)
        }
        ValueKind::Seq => Value::from(
            value
                .try_iter()
                .map(|items| {
                    items
                        .filter(|v| v.as_str() != Some(OMIT))
                        .map(drop_omitted)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        ),
        _ => value,
    }
}

fn render_template_file(
    templar: &Templar,
    source: &str,
    ctx: &Value,
    path: &Path,
    dest: &str,
    lstrip: bool,
    trim: bool,
) -> Result<String, TemplateError> {
    // Template-only variables are layered over the task context.
    let extra = [
        ("template_path", Value::from(path.display().to_string())),
        ("template_fullpath", Value::from(path.display().to_string())),
        ("template_destpath", Value::from(dest)),
        ("template_host", Value::from(super::facts::nodename())),
        ("ansible_managed", Value::from("Ansible managed")),
    ];
    let ctx = Value::from_object(Overlay {
        base: ctx.clone(),
        extra: extra.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    });
    if lstrip || !trim {
        let mut env = templar.environment().clone();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(trim)
            .lstrip_blocks(lstrip)
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| TemplateError::Render {
                message: e.to_string(),
                source_text: path.display().to_string(),
            })?;
        env.set_syntax(syntax);
        return env
            .render_str(source, ctx)
            .map_err(|e| TemplateError::Render {
                message: e.to_string(),
                source_text: path.display().to_string(),
            });
    }
    templar.render_text(source, &ctx)
}

/// A context with a few extra variables on top of another context.
#[derive(Debug)]
struct Overlay {
    base: Value,
    extra: Vec<(String, Value)>,
}

impl minijinja::value::Object for Overlay {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if let Some((_, v)) = self.extra.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.base.get_attr(name).ok().filter(|v| !v.is_undefined())
    }
}

fn action_pause(args: &Value, check: bool) -> Outcome {
    let seconds = arg_str(args, "seconds")
        .and_then(|s| s.parse::<f64>().ok())
        .or_else(|| {
            arg_str(args, "minutes")
                .and_then(|m| m.parse::<f64>().ok())
                .map(|m| m * 60.0)
        });
    let Some(seconds) = seconds else {
        return Outcome::failed(
            "pause without seconds/minutes needs a terminal; runs are non-interactive",
        );
    };
    if !check || seconds > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds.max(0.0)));
    }
    Outcome::new()
        .with("delta", seconds as i64)
        .with("stdout", format!("Paused for {seconds} seconds"))
}

fn sequence_items(value: &Value) -> Result<Vec<Value>, String> {
    let text = modules::value_to_string(value);
    let mut start = 1i64;
    let mut end: Option<i64> = None;
    let mut stride = 1i64;
    let mut format = "%d".to_string();
    let mut count: Option<i64> = None;
    for token in text.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            let parse = |v: &str| -> Result<i64, String> {
                if let Some(hex) = v.strip_prefix("0x") {
                    i64::from_str_radix(hex, 16).map_err(|e| e.to_string())
                } else {
                    v.parse::<i64>()
                        .map_err(|e| format!("can't parse {k}={v}: {e}"))
                }
            };
            match k {
                "start" => start = parse(v)?,
                "end" => end = Some(parse(v)?),
                "stride" => stride = parse(v)?,
                "count" => count = Some(parse(v)?),
                "format" => format = v.to_string(),
                other => return Err(format!("unrecognized sequence argument {other}")),
            }
        } else if let Some((a, b)) = token.split_once('-') {
            start = a
                .parse()
                .map_err(|_| format!("can't parse sequence {token}"))?;
            end = Some(
                b.parse()
                    .map_err(|_| format!("can't parse sequence {token}"))?,
            );
        } else {
            end = Some(
                token
                    .parse()
                    .map_err(|_| format!("can't parse sequence {token}"))?,
            );
        }
    }
    let end = match (end, count) {
        (Some(e), _) => e,
        (None, Some(c)) => start + (c - 1) * stride,
        (None, None) => return Err("must specify count or end in with_sequence".into()),
    };
    if stride == 0 {
        return Err("stride must not be zero".into());
    }
    let mut out = Vec::new();
    let mut i = start;
    while (stride > 0 && i <= end) || (stride < 0 && i >= end) {
        out.push(Value::from(printf_int(&format, i)));
        i += stride;
    }
    Ok(out)
}

fn printf_int(format: &str, value: i64) -> String {
    let re = regex::Regex::new(r"%(0?)(\d*)([dxXo])").expect("static regex");
    re.replace(format, |caps: &regex::Captures| {
        let width: usize = caps[2].parse().unwrap_or(0);
        let zero = &caps[1] == "0";
        let digits = match &caps[3] {
            "x" => format!("{value:x}"),
            "X" => format!("{value:X}"),
            "o" => format!("{value:o}"),
            _ => value.to_string(),
        };
        if zero {
            format!("{digits:0>width$}")
        } else {
            format!("{digits:>width$}")
        }
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recap line matches ansible-playbook's column layout.
    #[test]
    fn recap_format() {
        let stats = Stats {
            ok: 5,
            changed: 2,
            skipped: 1,
            ..Default::default()
        };
        assert_eq!(
            stats.recap_line("localhost"),
            "localhost                  : ok=5    changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0   "
        );
    }

    /// Banners pad to 80 columns with at least three stars.
    #[test]
    fn banners() {
        assert_eq!(banner("PLAY [x]").len(), 80);
        assert!(banner(&"x".repeat(100)).ends_with(" ***"));
    }

    /// Tag selection follows Ansible's always/never/tagged rules.
    #[test]
    fn tag_selection() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tags_selected(&t(&[]), &t(&[]), &t(&[])));
        assert!(!tags_selected(&t(&["never"]), &t(&[]), &t(&[])));
        assert!(tags_selected(
            &t(&["never", "debug"]),
            &t(&["debug"]),
            &t(&[])
        ));
        assert!(tags_selected(&t(&["always"]), &t(&["web"]), &t(&[])));
        assert!(!tags_selected(&t(&["db"]), &t(&["web"]), &t(&[])));
        assert!(!tags_selected(&t(&["web"]), &t(&[]), &t(&["web"])));
        assert!(tags_selected(&t(&["always"]), &t(&[]), &t(&["web"])));
    }

    /// Loop items are labelled like Python prints them.
    #[test]
    fn item_labels() {
        assert_eq!(item_label(&Value::from("a")), "a");
        assert_eq!(item_label(&Value::from(vec![1, 2])), "[1, 2]");
        assert_eq!(
            item_label(&Value::from_pairs([
                ("key", Value::from("a")),
                ("value", Value::from(true))
            ])),
            "{'key': 'a', 'value': True}"
        );
    }

    /// Diffs list removals before additions, like difflib.
    #[test]
    fn diffs() {
        assert_eq!(
            unified_diff("a\nb\nc\n", "a\nB\nc\n", "f")[2..],
            ["@@ -1,3 +1,3 @@", " a", "-b", "+B", " c"]
        );
    }

    /// with_sequence understands the common forms.
    #[test]
    fn sequences() {
        let s = |t: &str| {
            sequence_items(&Value::from(t))
                .expect("valid")
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(s("start=1 end=3"), ["1", "2", "3"]);
        assert_eq!(s("count=2 format=web%02d"), ["web01", "web02"]);
        assert_eq!(s("4-6"), ["4", "5", "6"]);
    }
}
