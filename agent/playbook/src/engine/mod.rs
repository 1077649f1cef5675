//! The play/task engine: variables and their precedence, conditionals, loops, blocks,
//! handlers, check mode, output lines and the PLAY RECAP counters.
//!
//! The engine talks to the outside only through the output sink it is given and the
//! modules it calls, so a run can be driven from the CLI, from a control-plane job (with
//! output streamed and secrets masked) or from a test.
//!
//! Split by concern: what is printed (`output`), loop items (`loops`), run-time
//! includes (`includes`) and the built-in actions that touch the run's own state
//! (`actions`); this module holds the runner itself: plays, variables, conditionals,
//! blocks, handlers and a task's life from its keywords to its registered result.
//!
//! What does not live here: parsing (`model`), templating (`template`), what a module
//! does (`modules`).

mod actions;
mod asyncs;
mod includes;
mod loops;
mod output;
mod prompts;
pub mod report;

use crate::become_::{Become, BecomeMethod};
use crate::facts::{build_facts, FactSources};
use crate::inventory::{self, Inventory};
use crate::model::{Inherited, LoopKind, Play, Playbook, Task, TaskBody};
use crate::modules::{self, files, ModuleContext, Outcome};
use crate::roles::RoleScope;
use crate::template::{python_repr, Templar, TemplateError, OMIT};
use actions::{action_pause, template_args};
pub use asyncs::serve_async;
use minijinja::value::ValueKind;
use minijinja::Value;
use output::displayable;
pub use output::{banner, item_label, unified_diff};
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
    /// The inventory the host is played in (`-i`): which plays run (their `hosts:`
    /// patterns), `groups`, `group_names`, `hostvars` and the inventory's variables.
    /// `None`: [`Inventory::implicit`] for `inventory_hostname`, without variables.
    pub inventory: Option<Arc<Inventory>>,
    /// The program to re-execute under sudo for `become` (defaults to the current executable).
    pub become_program: Option<PathBuf>,
    /// ansible-core's `ansible` program, when tasks with modules the runtime lacks may run
    /// through it (the playbook must then be parsed with
    /// [`parse_playbook_with_ansible_fallback`](crate::model::parse_playbook_with_ansible_fallback)).
    pub ansible_fallback: Option<PathBuf>,
    /// Set from another thread to stop the run before its next task (job cancellation).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Facts gathered earlier on other hosts of the inventory (the control plane's
    /// fact cache), by host name, each without the `ansible_` prefix: the run shows
    /// them as `hostvars[host].ansible_facts` and `hostvars[host].ansible_*`. Facts of
    /// the run's own host here are ignored: it gathers its own.
    pub cached_facts: Arc<CachedFacts>,
}

/// Facts of hosts by host name ([`RunOptions::cached_facts`]).
pub type CachedFacts =
    std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>;

/// Facts a run gathered on its own host ([`RunReport::gathered_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatheredFacts {
    /// When they were gathered: the gathering's time, or, for a run that only had
    /// modules return facts, when the last of them did.
    pub gathered_at: chrono::DateTime<chrono::Utc>,
    /// The gathered facts without their `ansible_` prefix, as `ansible_facts` holds
    /// them; empty when no play gathered facts.
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// Facts modules returned (`service_facts`' `services`, `getent_passwd`, ...),
    /// also without the prefix: Ansible's fact cache keeps them with the gathered
    /// ones. Apart, so a report too large with them can leave them out.
    pub module_facts: serde_json::Map<String, serde_json::Value>,
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
            inventory: None,
            become_program: None,
            ansible_fallback: None,
            cancel: None,
            cached_facts: Arc::default(),
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
    /// Every task's name, action, status and (with `--diff`) diff, in run order.
    pub tasks: Vec<report::TaskReport>,
    /// The facts the run gathered on its host, or modules returned, and still held at
    /// its end (none when it had none, or `meta: clear_facts` dropped them).
    pub gathered_facts: Option<GatheredFacts>,
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
        tasks: std::mem::take(&mut runner.task_reports),
        gathered_facts: runner.gathered_facts(),
    }
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

struct Runner<'a> {
    playbook: &'a Playbook,
    options: &'a RunOptions,
    sink: &'a mut dyn FnMut(&str),
    templar: Arc<Templar>,
    stats: Stats,
    facts: Option<Vec<(String, Value)>>,
    /// When `facts` were gathered.
    facts_gathered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Facts modules returned (`getent_group`, `services`, ...), as the module named
    /// them: each is a variable of its own and a key of `ansible_facts` (without an
    /// `ansible_` prefix), like Ansible's fact cache with injected facts.
    module_facts: Vec<(String, Value)>,
    /// When a module last returned facts.
    module_facts_at: Option<chrono::DateTime<chrono::Utc>>,
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
    /// The inventory the host is played in.
    inventory: Arc<Inventory>,
    /// `groups`, computed once from the inventory.
    groups: Value,
    /// `hostvars` of the inventory's other hosts, each templated in its own context.
    other_hostvars: Arc<Vec<(String, Value)>>,
    /// Whether a play matched the host (only then does the recap list it).
    processed: bool,
    /// The running task's `async`/`poll` and job directory while its module runs.
    current_async: Option<(asyncs::AsyncSpec, PathBuf)>,
    /// The tags an include inherits from its blocks and play (its own select only it).
    include_parent_tags: Vec<String>,
    /// The report of each task run so far ([`RunReport::tasks`]).
    task_reports: Vec<report::TaskReport>,
    /// The diff lines the running task printed (masked), for its report.
    task_diff: Vec<String>,
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
        let inventory = options
            .inventory
            .clone()
            .unwrap_or_else(|| Arc::new(Inventory::implicit(&options.inventory_hostname)));
        let templar = Templar::new(playbook.base_dir.clone());
        let groups = groups_value(&inventory);
        let other_hostvars = Arc::new(other_hostvars(
            &inventory,
            &options.inventory_hostname,
            &groups,
            &options.cached_facts,
            &templar,
        ));
        Runner {
            playbook,
            options,
            sink,
            templar,
            stats: Stats::default(),
            facts: None,
            facts_gathered_at: None,
            module_facts: Vec::new(),
            module_facts_at: None,
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
            inventory,
            groups,
            other_hostvars,
            processed: false,
            current_async: None,
            include_parent_tags: Vec::new(),
            task_reports: Vec::new(),
            task_diff: Vec::new(),
        }
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
            Value::from(inventory::short_name(&host)),
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
        vars.insert("groups".into(), self.groups.clone());
        vars.insert(
            "group_names".into(),
            Value::from(self.inventory.group_names(&host)),
        );
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
        // The facts injected as variables (`ansible_*`, INJECT_FACTS_AS_VARS), placed
        // in the stack below after the inventory's variables, where ansible-core's
        // VariableManager puts host facts.
        let mut fact_dict: Vec<(String, Value)> = Vec::new();
        let mut fact_vars: Vec<(String, Value)> = Vec::new();
        if let Some(facts) = &self.facts {
            fact_dict.extend(facts.iter().cloned());
            for (k, v) in facts {
                fact_vars.push((format!("ansible_{k}"), v.clone()));
            }
        }
        for (k, v) in &self.module_facts {
            let bare = k.strip_prefix("ansible_").unwrap_or(k);
            match fact_dict.iter_mut().find(|(name, _)| name == bare) {
                Some(slot) => slot.1 = v.clone(),
                None => fact_dict.push((bare.to_string(), v.clone())),
            }
            fact_vars.push((k.clone(), v.clone()));
        }
        vars.insert("ansible_facts".into(), Value::from_pairs(fact_dict));
        // Precedence, low to high, as ansible-core's VariableManager stacks it: the play's
        // roles' defaults, the task's role's defaults, the inventory's variables (group
        // and host vars, already layered), host facts, play vars and vars_files, the
        // play's roles' vars, the task's role's vars, block/task vars, set_fact and
        // registered vars, role params, then loop variables (and extra vars below).
        let role = scope.role.as_deref();
        let play_defaults = self.play_roles.iter().flat_map(|r| r.play_defaults.iter());
        let play_role_vars = self.play_roles.iter().flat_map(|r| r.exported_vars.iter());
        let none: &[(String, Value)] = &[];
        for (k, v) in play_defaults
            .chain(role.map_or(none, |r| &r.defaults).iter())
            .chain(self.inventory.vars_of(&host).iter())
            .chain(fact_vars.iter())
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
        self.templar
            .context_with_hostvars(vars, Arc::clone(&self.other_hostvars))
    }

    fn set_host_var(&mut self, name: &str, value: Value) {
        self.host_vars.retain(|(k, _)| k != name);
        self.host_vars.push((name.to_string(), value));
    }

    /// Whether the play's `hosts` pattern selects this host in the inventory.
    fn host_matches(&self, play: &Play) -> Result<bool, String> {
        let ctx = self.context(&Inherited::default(), &[]);
        let hosts = self
            .templar
            .template(&play.hosts, &ctx)
            .map_err(|e| e.to_string())?;
        let terms = inventory::pattern::terms(&hosts);
        if terms.is_empty() {
            return Err("Hosts list cannot be empty. Please check your playbook".into());
        }
        let selected =
            inventory::pattern::select(&self.inventory, &terms).map_err(|e| e.to_string())?;
        Ok(selected.iter().any(|h| h == self.host()))
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
        match self.host_matches(play) {
            Ok(true) => self.processed = true,
            Ok(false) => {
                self.emit("skipping: no hosts matched");
                return;
            }
            Err(message) => {
                self.emit(&format!("ERROR! {message}"));
                self.host_failed = true;
                return;
            }
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
        if let Err(message) = self.prompt_vars(play) {
            self.emit(&format!("ERROR! {message}"));
            self.host_failed = true;
            return;
        }
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
            self.facts_gathered_at = Some(chrono::Utc::now());
        }
    }

    /// The facts gathered on this host and those modules returned, as JSON, for the
    /// run's report (what the agent tells the control plane's fact cache).
    fn gathered_facts(&self) -> Option<GatheredFacts> {
        fn as_json<'a>(
            pairs: impl Iterator<Item = (&'a str, &'a Value)>,
        ) -> serde_json::Map<String, serde_json::Value> {
            pairs
                .filter_map(|(k, v)| Some((k.to_string(), serde_json::to_value(v).ok()?)))
                .collect()
        }
        let facts = self
            .facts
            .as_ref()
            .map(|facts| as_json(facts.iter().map(|(k, v)| (k.as_str(), v))));
        // Bare, as `ansible_facts` shows them (`context` does the same).
        let module_facts = as_json(
            self.module_facts
                .iter()
                .map(|(k, v)| (k.strip_prefix("ansible_").unwrap_or(k), v)),
        );
        let gathered_at = match &facts {
            Some(_) => self.facts_gathered_at?,
            None if module_facts.is_empty() => return None,
            None => self.module_facts_at?,
        };
        Some(GatheredFacts {
            gathered_at,
            facts: facts.unwrap_or_default(),
            module_facts,
        })
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
                crate::yaml::parse_one(&text).map_err(|e| format!("{}: {e}", path.display()))?;
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
                if module == "include_tasks" || module == "include_role" {
                    self.include_parent_tags = scope.tags.clone();
                }
                let module = if module == crate::model::ANSIBLE_FALLBACK {
                    format!("{}:{written}", crate::model::ANSIBLE_FALLBACK)
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
        let title = if !crate::template::is_template(&raw) {
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

    fn run_action_task(
        &mut self,
        task: &Task,
        scope: &Inherited,
        module: &str,
        args: &Value,
        handler: bool,
    ) {
        let title = self.task_title(task, scope);
        self.task_diff.clear();
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
            let items = match self.loop_items(scope, kind, source, &ctx0, module) {
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
        self.report_task(&title, module, &outcome, no_log);
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
        let json = crate::filters::python_json(&displayable(&outcome, false));
        self.emit(&format!("fatal: [{host}]: FAILED! => {json}"));
        let title = task.name.clone().unwrap_or_else(|| task.default_name());
        self.report_task(&title, &task.default_name(), &outcome, true);
        self.mark_failed(task, &title, &outcome);
    }

    /// Adds the task that just ended to the run's report, with the diff it printed
    /// (none for a `no_log` task, as its printed result is censored).
    fn report_task(&mut self, title: &str, action: &str, outcome: &Outcome, no_log: bool) {
        let status = if outcome.is_failed() {
            report::TaskStatus::Failed
        } else if outcome.skipped() {
            report::TaskStatus::Skipped
        } else if outcome.changed() {
            report::TaskStatus::Changed
        } else {
            report::TaskStatus::Ok
        };
        let lines = std::mem::take(&mut self.task_diff);
        let diff = (!no_log && !lines.is_empty()).then(|| {
            let mut text = lines.join("\n");
            text.push('\n');
            text
        });
        self.task_reports.push(report::TaskReport {
            name: title.to_string(),
            action: action.to_string(),
            status,
            diff,
        });
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
                // ansible-core 2.19 fails a non-boolean `when` with its own words only.
                Err(e @ TemplateError::NotBoolean { .. }) => {
                    return Outcome::failed(format!("Task failed: {e}"));
                }
                Err(e) => {
                    return Outcome::failed(format!(
                        "The conditional check '{}' failed. The error was: {e}",
                        modules::value_to_string(condition)
                    ));
                }
            }
        }
        if let Err(message) = check_connection_variables(&self.templar, &ctx) {
            return Outcome::failed(message);
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
        let async_spec = match self.async_spec(task, &ctx) {
            Ok(spec) => spec,
            Err(message) => return Outcome::failed(message),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut outcome = self.execute(scope, module, args, &ctx, async_spec);
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

    /// Templates arguments and runs the action or module (in the background with
    /// `async`).
    fn execute(
        &mut self,
        scope: &Inherited,
        module: &str,
        args: &Value,
        ctx: &Value,
        async_spec: Option<asyncs::AsyncSpec>,
    ) -> Outcome {
        if async_spec.is_some() {
            if let Some(refusal) = Self::refuse_async(module) {
                return refusal;
            }
        }
        let outcome = self.execute_now(scope, module, args, ctx, async_spec);
        match self.current_async.take() {
            Some((spec, dir))
                if spec.poll > 0
                    && !outcome.is_failed()
                    && !outcome.skipped()
                    && outcome.get("ansible_job_id").is_some() =>
            {
                self.poll_async(spec, &dir, &outcome)
            }
            _ => outcome,
        }
    }

    fn execute_now(
        &mut self,
        scope: &Inherited,
        module: &str,
        args: &Value,
        ctx: &Value,
        async_spec: Option<asyncs::AsyncSpec>,
    ) -> Outcome {
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
        let become_ = match self.become_target(scope, ctx) {
            Ok(target) => target,
            Err(e) => return Outcome::failed(e),
        };
        if matches!(module, "package" | "service") && self.facts.is_none() {
            self.gather_facts();
        }
        if let Some(spec) = async_spec {
            self.current_async = Some((spec, self.async_dir(ctx, become_.as_ref())));
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
            // fetch is an action on Ansible's controller: it needs the host's name and
            // the playbook's directory (for a relative dest).
            "fetch" => {
                let args = files::with_arg(
                    &templated,
                    "_inventory_hostname",
                    Value::from(self.host().to_string()),
                );
                let args = files::with_arg(
                    &args,
                    "_playbook_dir",
                    Value::from(self.playbook.base_dir.display().to_string()),
                );
                self.run_module(module, &args, &mctx, become_.as_ref())
            }
            "pause" => action_pause(&templated, check),
            "async_status" => self.action_async_status(&templated, ctx, become_.as_ref()),
            "template" => self.action_template(scope, &templated, ctx, &mctx, become_.as_ref()),
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
                self.run_module(module, &args, &mctx, become_.as_ref())
            }
            _ if module.starts_with(crate::model::ANSIBLE_FALLBACK) => {
                let written = module.split_once(':').map(|(_, w)| w).unwrap_or_default();
                match &self.options.ansible_fallback {
                    Some(program) => crate::fallback::run_ansible_module(program, written, &templated, &mctx, become_.as_ref().map(|b| b.user.as_str())),
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
                        self.run_module("apt", &args, &mctx, become_.as_ref())
                    }
                    "dnf" | "yum" | "dnf5" => {
                        let args = strip_key(&templated, "use");
                        self.run_module("dnf", &args, &mctx, become_.as_ref())
                    }
                    other => Outcome::failed(format!(
                        "package: the package manager '{other}' is not supported by the native runtime (apt, dnf, yum)"
                    )),
                }
            }
            _ => {
                let outcome = self.run_module(module, &templated, &mctx, become_.as_ref());
                self.absorb_module_facts(&outcome);
                outcome
            }
        }
    }

    /// Keeps the facts a module returned (getent, service_facts) for the rest of the
    /// run, as Ansible adds a result's `ansible_facts` to the host's facts.
    fn absorb_module_facts(&mut self, outcome: &Outcome) {
        if outcome.is_failed() {
            return;
        }
        let Some(facts) = outcome.get("ansible_facts") else {
            return;
        };
        let Ok(keys) = facts.try_iter() else {
            return;
        };
        for key in keys {
            let (Some(name), Ok(value)) = (key.as_str(), facts.get_item(&key)) else {
                continue;
            };
            match self.module_facts.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => self.module_facts.push((name.to_string(), value)),
            }
            self.module_facts_at = Some(chrono::Utc::now());
        }
    }

    /// Whom the task runs as and how, or `None` to run as the current user.
    fn become_target(&self, scope: &Inherited, ctx: &Value) -> Result<Option<Become>, String> {
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
        let method = match &scope.become_method {
            Some(method) => BecomeMethod::parse(&modules::value_to_string(method))?,
            None => BecomeMethod::Sudo,
        };
        if user == self.current_user {
            Ok(None)
        } else {
            Ok(Some(Become { user, method }))
        }
    }

    fn run_module(
        &self,
        module: &str,
        args: &Value,
        mctx: &ModuleContext,
        become_: Option<&Become>,
    ) -> Outcome {
        if let Some((spec, dir)) = &self.current_async {
            return self.launch_async(*spec, dir, module, args, mctx, become_);
        }
        match become_ {
            None => modules::run_module(module, args, mctx),
            Some(target) => crate::become_::run_module_as(
                self.options.become_program.as_deref(),
                target,
                module,
                args,
                mctx,
            ),
        }
    }
}

/// `groups`: every group of the inventory with its hosts.
fn groups_value(inventory: &Inventory) -> Value {
    Value::from_pairs(
        inventory
            .groups_map()
            .into_iter()
            .map(|(group, hosts)| (group, Value::from(hosts))),
    )
}

/// `hostvars` of every inventory host but `current`: its inventory variables and
/// magic names, and the facts cached for it (`ansible_facts`, and each as an
/// `ansible_*` variable over the inventory's variables, as for the own host),
/// templated lazily in its own context as Ansible does.
fn other_hostvars(
    inventory: &Inventory,
    current: &str,
    groups: &Value,
    cached_facts: &CachedFacts,
    templar: &Arc<Templar>,
) -> Vec<(String, Value)> {
    inventory
        .host_names()
        .filter(|host| *host != current)
        .map(|host| {
            let mut vars: HashMap<String, Value> = HashMap::new();
            vars.insert("inventory_hostname".into(), Value::from(host));
            vars.insert(
                "inventory_hostname_short".into(),
                Value::from(inventory::short_name(host)),
            );
            vars.insert(
                "group_names".into(),
                Value::from(inventory.group_names(host)),
            );
            vars.insert("groups".into(), groups.clone());
            for (name, value) in inventory.vars_of(host) {
                vars.insert(name.clone(), value.clone());
            }
            // A host without cached facts has an empty `ansible_facts`, as in Ansible.
            let facts = cached_facts.get(host);
            for (name, value) in facts.into_iter().flatten() {
                vars.insert(
                    format!("ansible_{name}"),
                    crate::filters::json_to_value(value),
                );
            }
            vars.insert(
                "ansible_facts".into(),
                facts.map_or_else(
                    || Value::from_pairs(Vec::<(String, Value)>::new()),
                    |f| crate::filters::json_to_value(&serde_json::Value::Object(f.clone())),
                ),
            );
            (host.to_string(), templar.context(vars))
        })
        .collect()
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

/// Ansible's connection and become variables with the play keyword each one sets, in
/// the order Ansible's play context reads them.
const CONNECTION_VARIABLES: &[(&str, &str)] = &[
    ("ansible_connection", "connection"),
    ("ansible_host", "remote_addr"),
    ("ansible_ssh_host", "remote_addr"),
    ("ansible_port", "port"),
    ("ansible_ssh_port", "port"),
    ("ansible_user", "remote_user"),
    ("ansible_ssh_user", "remote_user"),
    ("ansible_password", "password"),
    ("ansible_ssh_pass", "password"),
    ("ansible_ssh_private_key_file", "private_key_file"),
    ("ansible_private_key_file", "private_key_file"),
    ("ansible_shell_executable", "executable"),
    ("ansible_become", "become"),
    ("ansible_become_method", "become_method"),
    ("ansible_become_user", "become_user"),
    ("ansible_become_password", "become_pass"),
    ("ansible_become_pass", "become_pass"),
    ("ansible_become_exe", "become_exe"),
    ("ansible_become_flags", "become_flags"),
];

/// Templates the connection and become variables a task would use, failing as Ansible
/// does ("Error processing keyword 'become_pass': 'x' is undefined") when one of them
/// cannot be templated, whether or not the task uses it.
fn check_connection_variables(templar: &Templar, ctx: &Value) -> Result<(), String> {
    for (variable, keyword) in CONNECTION_VARIABLES {
        let defined = ctx.get_attr(variable).is_ok_and(|v| !v.is_undefined());
        if !defined {
            continue;
        }
        if let Err(error) = templar.template_str(&format!("{{{{ {variable} }}}}"), ctx) {
            return Err(format!("Error processing keyword '{keyword}': {error}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection variable whose template is undefined fails with Ansible's keyword
    /// message; literal and absent ones pass.
    #[test]
    fn undefined_connection_variables_fail() {
        let templar = Templar::new(std::path::PathBuf::from("/"));
        let check = |pairs: &[(&str, &str)]| {
            let vars = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect();
            check_connection_variables(&templar, &templar.context(vars))
        };
        assert_eq!(check(&[("ansible_user", "deploy")]), Ok(()));
        assert_eq!(
            check(&[("ansible_become_password", "{{ undefined_var }}")]),
            Err("Error processing keyword 'become_pass': 'undefined_var' is undefined".into())
        );
        assert_eq!(
            check(&[("ansible_user", "{{ nope }}")]),
            Err("Error processing keyword 'remote_user': 'nope' is undefined".into())
        );
    }

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
}
