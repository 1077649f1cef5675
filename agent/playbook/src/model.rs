//! Playbook structure: plays, blocks and tasks, parsed and validated from YAML nodes.
//!
//! Parsing has no I/O besides reading the files named by `import_tasks`,
//! `import_playbook` and roles (see `roles`), and none at all with
//! [`FileAccess::Deferred`]: that is how the control plane validates a playbook when a
//! technician saves it ([`check_playbook_text`]) and shows errors with line and column,
//! without ever opening a file of its own machine. Such file-based imports are resolved
//! by the agent when it runs the playbook. Everything else that must be decided before
//! the first task runs is decided here: unknown keywords, unknown modules, conflicting
//! actions, malformed loops.
//!
//! What does not live here: templating and execution (`engine`), module behaviour
//! (`modules`).

use super::yaml::{self, Node, NodeKind, Pos, YamlError};
use minijinja::Value;
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// Why a playbook is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaybookError {
    /// The YAML itself is malformed.
    #[error("syntax error while loading YAML: {0}")]
    Yaml(#[from] YamlError),
    /// The YAML is well formed but does not describe a valid playbook.
    #[error("{message} (line {}, column {})", pos.line, pos.column)]
    Invalid {
        /// What is wrong.
        message: String,
        /// Where.
        pos: Pos,
    },
    /// A task uses a module the native runtime does not implement.
    #[error("couldn't resolve module/action '{module}': the native runtime does not implement it (line {}, column {})", pos.line, pos.column)]
    UnknownModule {
        /// The module name as written.
        module: String,
        /// Where the task starts.
        pos: Pos,
    },
    /// A file the playbook refers to (`import_tasks`) could not be read.
    #[error("could not read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        message: String,
    },
}

impl PlaybookError {
    /// The position of the error, when it has one.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            PlaybookError::Yaml(e) => Some(e.pos),
            PlaybookError::Invalid { pos, .. } | PlaybookError::UnknownModule { pos, .. } => {
                Some(*pos)
            }
            PlaybookError::Io { .. } => None,
        }
    }
}

/// Where relative names in a task file start: the file's own directory (`import_tasks`)
/// and the playbook's directory (where `roles/` is searched).
#[derive(Debug, Clone, Copy)]
pub struct Dirs<'a> {
    /// The directory of the file being parsed.
    pub file_dir: &'a Path,
    /// The directory of the playbook (an imported playbook's own).
    pub playbook_dir: &'a Path,
    /// `None`: static imports (`import_tasks`, `import_role`) read their files now.
    /// `Some(flag)`: they are checked for their own syntax only, never read (the agent
    /// resolves them when it runs the playbook), and `flag` is set when one was left
    /// for then.
    pub deferred: Option<&'a Cell<bool>>,
}

/// Whether parsing reads the files a playbook names: imported playbooks, imported task
/// files and roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAccess {
    /// Read them, relative to the playbook: what the agent does when it runs one.
    Read,
    /// Never touch the filesystem: each such import is checked for its own syntax and
    /// left for the agent to resolve at run time. What the control plane uses, so that
    /// validating a script can neither read nor probe (nor hang on) its own files.
    Deferred,
}

fn invalid(message: impl Into<String>, pos: Pos) -> PlaybookError {
    PlaybookError::Invalid {
        message: message.into(),
        pos,
    }
}

/// A parsed playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// The plays in order.
    pub plays: Vec<Play>,
    /// The directory relative paths (`src`, `lookup('file')`, `vars_files`) start from.
    pub base_dir: PathBuf,
    /// The playbook file, when known (for `Origin:` lines of failed tasks).
    pub source_path: Option<PathBuf>,
}

/// One play.
#[derive(Debug, Clone)]
pub struct Play {
    /// `name`, defaulting to the hosts pattern.
    pub name: String,
    /// The `hosts` pattern.
    pub hosts: Value,
    /// `gather_facts` (`None` = default, which gathers).
    pub gather_facts: Option<Value>,
    /// Play `vars` in source order.
    pub vars: Vec<(String, Value)>,
    /// `vars_files` entries (templated at run time).
    pub vars_files: Vec<Value>,
    /// `vars_prompt` entries, each a mapping with at least `name` (templated at run time).
    pub vars_prompt: Vec<Value>,
    /// `pre_tasks`.
    pub pre_tasks: Vec<Task>,
    /// `tasks`.
    pub tasks: Vec<Task>,
    /// `post_tasks`.
    pub post_tasks: Vec<Task>,
    /// `handlers`: those of the play's roles (dependencies first), then the play's own,
    /// then those of statically imported roles.
    pub handlers: Vec<Task>,
    /// `roles`, each compiled to a [`TaskBody::Role`] task (dependencies inside).
    pub roles: Vec<Task>,
    /// Roles whose defaults and vars every task of the play sees (the `roles` entries
    /// and `import_role`s, as Ansible exposes them).
    pub public_roles: Vec<std::sync::Arc<super::roles::RoleScope>>,
    /// The directory the play's relative paths start from (an imported playbook's own).
    pub base_dir: PathBuf,
    /// Keywords inherited by every task of the play.
    pub inherited: Inherited,
    /// `force_handlers`.
    pub force_handlers: bool,
    /// Where the play starts.
    pub pos: Pos,
}

/// Keywords that blocks and plays pass down to their tasks.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    /// `become`.
    pub become_: Option<Value>,
    /// `become_user`.
    pub become_user: Option<Value>,
    /// `become_method` (only `sudo` and `su` are supported).
    pub become_method: Option<Value>,
    /// `check_mode`.
    pub check_mode: Option<Value>,
    /// `diff`.
    pub diff: Option<Value>,
    /// `ignore_errors`.
    pub ignore_errors: Option<Value>,
    /// `no_log`.
    pub no_log: Option<Value>,
    /// `environment`.
    pub environment: Option<Value>,
    /// `tags`.
    pub tags: Vec<String>,
    /// `when` conditions (AND).
    pub when: Vec<Value>,
    /// `vars`.
    pub vars: Vec<(String, Value)>,
    /// `any_errors_fatal` (accepted; a single host makes it moot).
    pub any_errors_fatal: Option<Value>,
    /// The role the tasks belong to (set by a role's wrapper and on its handlers).
    pub role: Option<std::sync::Arc<super::roles::RoleScope>>,
}

/// How a task loops.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopKind {
    /// `loop:` (no flattening).
    Loop,
    /// `with_items` (flattens one level).
    Items,
    /// `with_list`.
    List,
    /// `with_dict` (items are `{key, value}`).
    Dict,
    /// `with_indexed_items` (items are `[index, item]`).
    IndexedItems,
    /// `with_fileglob`.
    Fileglob,
    /// `with_sequence`.
    Sequence,
    /// `with_together`.
    Together,
    /// `with_nested` / `with_cartesian`.
    Nested,
    /// `with_first_found` (the first file found, searched as ansible-core's lookup).
    FirstFound,
    /// `with_lines`.
    Lines,
    /// `with_file`.
    File,
    /// `with_subelements`.
    Subelements,
}

/// The work a task does.
#[derive(Debug, Clone)]
pub enum TaskBody {
    /// A module call.
    Action {
        /// Canonical short module name (`copy`, `docker_compose_v2`).
        module: String,
        /// The name as written (`ansible.builtin.copy`), used for the default task name.
        written: String,
        /// Module arguments (a dict; free-form text is under `_raw_params`).
        args: Value,
    },
    /// `block` with optional `rescue` and `always`.
    Block {
        /// `block`.
        block: Vec<Task>,
        /// `rescue`.
        rescue: Vec<Task>,
        /// `always`.
        always: Vec<Task>,
    },
    /// A role's tasks (its dependencies first, each a nested `Role`), run at most once
    /// per play unless the role allows duplicates.
    Role {
        /// The role.
        role: std::sync::Arc<super::roles::RoleScope>,
        /// The tasks.
        tasks: Vec<Task>,
        /// The role's own handlers (its dependencies' are on their own `Role` tasks).
        handlers: Vec<Task>,
    },
}

/// One task (or block, or handler).
#[derive(Debug, Clone)]
pub struct Task {
    /// `name`.
    pub name: Option<String>,
    /// What it does.
    pub body: TaskBody,
    /// Keywords children inherit (for blocks) or that apply to this task.
    pub keywords: Inherited,
    /// The loop source and its kind.
    pub loop_source: Option<(LoopKind, Value)>,
    /// `loop_control`.
    pub loop_control: Option<Value>,
    /// `register`.
    pub register: Option<String>,
    /// `notify`.
    pub notify: Vec<String>,
    /// `listen` (handlers).
    pub listen: Vec<String>,
    /// `changed_when` (AND).
    pub changed_when: Option<Vec<Value>>,
    /// `failed_when` (AND... as in Ansible, a list means all must hold).
    pub failed_when: Option<Vec<Value>>,
    /// `until` (AND).
    pub until: Option<Vec<Value>>,
    /// `retries`.
    pub retries: Option<Value>,
    /// `delay`.
    pub delay: Option<Value>,
    /// `delegate_to` (only the local host is supported).
    pub delegate_to: Option<Value>,
    /// `async`: run the module in the background with this time limit in seconds.
    pub async_val: Option<Value>,
    /// `poll`: seconds between checks on a background task (0: fire and forget).
    pub poll: Option<Value>,
    /// The file the task comes from when it is not the playbook itself (`import_tasks`).
    pub file: Option<std::sync::Arc<PathBuf>>,
    /// Where the task starts.
    pub pos: Pos,
}

impl Task {
    /// The task lists nested in a block or role (none for a module call).
    pub fn children(&self) -> Vec<&[Task]> {
        match &self.body {
            TaskBody::Action { .. } => Vec::new(),
            TaskBody::Block {
                block,
                rescue,
                always,
            } => vec![block, rescue, always],
            TaskBody::Role { tasks, .. } => vec![tasks],
        }
    }

    fn children_mut(&mut self) -> Vec<&mut Vec<Task>> {
        match &mut self.body {
            TaskBody::Action { .. } => Vec::new(),
            TaskBody::Block {
                block,
                rescue,
                always,
            } => vec![block, rescue, always],
            TaskBody::Role { tasks, .. } => vec![tasks],
        }
    }

    /// The name shown in `TASK [...]` when the task has none.
    pub fn default_name(&self) -> String {
        match &self.body {
            TaskBody::Action { written, .. } => written.clone(),
            TaskBody::Block { .. } => "block".into(),
            TaskBody::Role { role, .. } => role.name.clone(),
        }
    }
}

/// Modules and actions the native runtime implements.
pub const NATIVE_MODULES: &[&str] = &[
    "command",
    "shell",
    "raw",
    "copy",
    "template",
    "file",
    "lineinfile",
    "blockinfile",
    "stat",
    "debug",
    "set_fact",
    "assert",
    "fail",
    "apt",
    "package",
    "service",
    "systemd",
    "systemd_service",
    "user",
    "group",
    "get_url",
    "cron",
    "wait_for",
    "docker_compose_v2",
    "meta",
    "ping",
    "slurp",
    "pause",
    "async_status",
    "include_vars",
    "import_tasks",
    "include_tasks",
    "include_role",
    "import_role",
    "authorized_key",
    "sysctl",
    "ufw",
    "apt_key",
    "apt_repository",
    "replace",
    "unarchive",
    "git",
    "hostname",
    "reboot",
    "pip",
    "dnf",
    "yum",
    "firewalld",
    "npm",
    "fetch",
    "set_stats",
    "mount",
    "timezone",
    "alternatives",
    "deb822_repository",
    "pamd",
    "selinux",
    "snap",
    "postgresql_user",
    "postgresql_db",
    "getent",
    "service_facts",
    "locale_gen",
    "apache2_module",
    "seport",
    "rpm_key",
    "mysql_user",
    "mysql_db",
    "docker_image",
    "docker_container",
    "seboolean",
    "composer",
    "postgresql_privs",
];

const COLLECTION_PREFIXES: &[&str] = &[
    "ansible.builtin.",
    "ansible.legacy.",
    "community.general.",
    "community.docker.",
    "ansible.posix.",
    "community.postgresql.",
    "community.mysql.",
];

/// Resolves a written module name to the runtime's canonical name.
pub fn resolve_module(written: &str) -> Option<&'static str> {
    let mut short = written;
    for prefix in COLLECTION_PREFIXES {
        if let Some(rest) = written.strip_prefix(prefix) {
            short = rest;
            break;
        }
    }
    let qualified = short != written;
    let short = match short {
        "systemd_service" => "systemd",
        "import_playbook" => return None,
        other => other,
    };
    // FQCNs must belong to the right collection.
    if qualified {
        let ok = match short {
            "docker_compose_v2" | "docker_image" | "docker_container" => {
                written.starts_with("community.docker.")
            }
            "ufw" | "npm" | "pamd" | "snap" | "timezone" | "alternatives" | "locale_gen"
            | "apache2_module" | "seport" | "composer" => written.starts_with("community.general."),
            "firewalld" | "selinux" | "mount" | "seboolean" => {
                written.starts_with("ansible.posix.")
            }
            "postgresql_user" | "postgresql_db" | "postgresql_privs" => {
                written.starts_with("community.postgresql.")
            }
            "mysql_user" | "mysql_db" => written.starts_with("community.mysql."),
            "authorized_key" | "sysctl" => {
                written.starts_with("ansible.posix.") || written.starts_with("ansible.builtin.")
            }
            _ => written.starts_with("ansible.builtin.") || written.starts_with("ansible.legacy."),
        };
        if !ok {
            return None;
        }
    }
    NATIVE_MODULES.iter().copied().find(|m| *m == short)
}

const PLAY_KEYS: &[&str] = &[
    "hosts",
    "name",
    "gather_facts",
    "gather_subset",
    "gather_timeout",
    "fact_path",
    "vars",
    "vars_files",
    "vars_prompt",
    "roles",
    "pre_tasks",
    "tasks",
    "post_tasks",
    "handlers",
    "force_handlers",
    "serial",
    "strategy",
    "order",
    "max_fail_percentage",
    "become",
    "become_user",
    "become_method",
    "become_flags",
    "become_exe",
    "connection",
    "remote_user",
    "port",
    "environment",
    "no_log",
    "ignore_errors",
    "ignore_unreachable",
    "check_mode",
    "diff",
    "any_errors_fatal",
    "run_once",
    "timeout",
    "throttle",
    "module_defaults",
    "collections",
    "tags",
    "debugger",
];

const TASK_KEYS: &[&str] = &[
    "name",
    "action",
    "local_action",
    "args",
    "async",
    "poll",
    "changed_when",
    "failed_when",
    "delay",
    "delegate_to",
    "delegate_facts",
    "loop",
    "loop_control",
    "notify",
    "register",
    "retries",
    "until",
    "when",
    "become",
    "become_user",
    "become_method",
    "become_flags",
    "become_exe",
    "check_mode",
    "collections",
    "connection",
    "debugger",
    "diff",
    "environment",
    "ignore_errors",
    "ignore_unreachable",
    "module_defaults",
    "no_log",
    "port",
    "remote_user",
    "run_once",
    "tags",
    "throttle",
    "timeout",
    "vars",
    "any_errors_fatal",
    "listen",
];

const BLOCK_KEYS: &[&str] = &[
    "block",
    "rescue",
    "always",
    "name",
    "when",
    "become",
    "become_user",
    "become_method",
    "become_flags",
    "become_exe",
    "check_mode",
    "collections",
    "connection",
    "debugger",
    "diff",
    "environment",
    "ignore_errors",
    "ignore_unreachable",
    "module_defaults",
    "no_log",
    "port",
    "remote_user",
    "run_once",
    "tags",
    "throttle",
    "timeout",
    "vars",
    "any_errors_fatal",
    "delegate_to",
    "delegate_facts",
    "notify",
];

/// Free-form modules whose string argument is a command line, not `k=v` pairs.
const FREE_FORM: &[&str] = &[
    "command",
    "shell",
    "raw",
    "meta",
    "import_tasks",
    "include_tasks",
    "include_vars",
];

/// The module name given to tasks whose module the runtime lacks; such tasks can only run
/// through ansible-core (see [`parse_playbook_with_ansible_fallback`]).
pub const ANSIBLE_FALLBACK: &str = "ansible_fallback";

/// The first task (in source order) whose module the runtime lacks.
pub(crate) fn first_unknown_module(tasks: &[Task]) -> Option<(String, Pos)> {
    for task in tasks {
        match &task.body {
            TaskBody::Action {
                module, written, ..
            } if module == ANSIBLE_FALLBACK => return Some((written.clone(), task.pos)),
            TaskBody::Action { .. } => {}
            TaskBody::Block { .. } | TaskBody::Role { .. } => {
                for list in task.children() {
                    if let Some(found) = first_unknown_module(list) {
                        return Some(found);
                    }
                }
            }
        }
    }
    None
}

/// Parses and validates playbook text. `base_dir` anchors relative paths. A task whose
/// module the runtime lacks is an error naming the module and its line.
pub fn parse_playbook(source: &str, base_dir: &Path) -> Result<Playbook, PlaybookError> {
    let playbook = parse_playbook_with_ansible_fallback(source, base_dir)?;
    reject_unknown_modules(&playbook)?;
    Ok(playbook)
}

/// The first task (in source order) of any play whose module the runtime lacks, as an
/// error.
fn reject_unknown_modules(playbook: &Playbook) -> Result<(), PlaybookError> {
    let mut unknown: Vec<(String, Pos)> = Vec::new();
    for play in &playbook.plays {
        for list in [
            &play.pre_tasks,
            &play.roles,
            &play.tasks,
            &play.post_tasks,
            &play.handlers,
        ] {
            unknown.extend(first_unknown_module(list));
        }
    }
    if let Some((module, pos)) = unknown
        .into_iter()
        .min_by_key(|(_, pos)| (pos.line, pos.column))
    {
        return Err(PlaybookError::UnknownModule { module, pos });
    }
    Ok(())
}

/// Like [`parse_playbook`], but tasks with modules the runtime lacks are kept (module
/// [`ANSIBLE_FALLBACK`]) so they can run through ansible-core's own module.
pub fn parse_playbook_with_ansible_fallback(
    source: &str,
    base_dir: &Path,
) -> Result<Playbook, PlaybookError> {
    Ok(Playbook {
        plays: parse_plays(source, base_dir, FileAccess::Read, 0)?,
        base_dir: base_dir.to_path_buf(),
        source_path: None,
    })
}

/// Checks playbook text as [`parse_playbook`] does, without touching the filesystem:
/// `import_playbook`, `import_tasks`, `import_role` and `roles` are checked for their
/// own syntax and taken as resolved when the agent runs the playbook (see
/// [`FileAccess::Deferred`]). A `notify` that no handler of the text answers is then
/// accepted in a play that imports files, whose handlers may be there.
pub fn check_playbook_text(source: &str) -> Result<(), PlaybookError> {
    reject_unknown_modules(&parse_text_only(source)?)
}

/// Like [`check_playbook_text`], but tasks with modules the runtime lacks are accepted
/// (they can run through ansible-core), as [`parse_playbook_with_ansible_fallback`] does.
pub fn check_playbook_text_with_ansible_fallback(source: &str) -> Result<(), PlaybookError> {
    parse_text_only(source).map(|_| ())
}

fn parse_text_only(source: &str) -> Result<Playbook, PlaybookError> {
    // The directory is never read in this mode; it only anchors names in messages.
    let base_dir = Path::new(".");
    Ok(Playbook {
        plays: parse_plays(source, base_dir, FileAccess::Deferred, 0)?,
        base_dir: base_dir.to_path_buf(),
        source_path: None,
    })
}

/// How deep `import_playbook` may nest before we call it a loop.
const MAX_IMPORT_DEPTH: usize = 16;

/// Keys an `import_playbook` entry may have.
const IMPORT_PLAYBOOK_KEYS: &[&str] = &[
    "import_playbook",
    "ansible.builtin.import_playbook",
    "name",
    "vars",
    "tags",
    "when",
];

fn parse_plays(
    source: &str,
    base_dir: &Path,
    files: FileAccess,
    depth: usize,
) -> Result<Vec<Play>, PlaybookError> {
    let root = yaml::parse_one(source)?;
    let NodeKind::Seq(entries) = &root.kind else {
        return Err(invalid(
            "A playbook must be a list of plays, got a ".to_string()
                + root.type_name()
                + " instead",
            root.pos,
        ));
    };
    let mut plays = Vec::new();
    for entry in entries {
        let import = entry
            .get("import_playbook")
            .or_else(|| entry.get("ansible.builtin.import_playbook"));
        match import {
            Some(file) => plays.extend(import_playbook(entry, file, base_dir, files, depth)?),
            None => plays.push(parse_play(entry, base_dir, files)?),
        }
    }
    Ok(plays)
}

/// `import_playbook`: the file's plays (relative to the importing playbook), each given
/// the entry's `vars`, `tags` and `when`, as ansible-core's `PlaybookInclude` does.
fn import_playbook(
    entry: &Node,
    file: &Node,
    base_dir: &Path,
    files: FileAccess,
    depth: usize,
) -> Result<Vec<Play>, PlaybookError> {
    for (key, _) in entry.as_map().unwrap_or_default() {
        let name = key.as_str().unwrap_or_default();
        if !IMPORT_PLAYBOOK_KEYS.contains(&name) {
            return Err(invalid(
                format!("'{name}' is not a valid attribute for a PlaybookInclude"),
                key.pos,
            ));
        }
    }
    let Some(name) = file.scalar_text().filter(|n| !n.is_empty()) else {
        return Err(invalid(
            "import_playbook parameters cannot be empty",
            entry.pos,
        ));
    };
    if super::template::is_template(&name) {
        return Err(invalid(
            "import_playbook with a templated file name is not supported by the native runtime",
            file.pos,
        ));
    }
    if depth >= MAX_IMPORT_DEPTH {
        return Err(invalid(
            format!("import_playbook of '{name}' nests too deeply (an import loop?)"),
            file.pos,
        ));
    }
    let keywords = parse_inherited(entry)?;
    if files == FileAccess::Deferred {
        return Ok(Vec::new());
    }
    let path = base_dir.join(&name);
    let source = std::fs::read_to_string(&path).map_err(|e| PlaybookError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(base_dir);
    let mut plays =
        parse_plays(&source, dir, files, depth + 1).map_err(|e| super::roles::in_file(&path, e))?;
    for play in &mut plays {
        play.vars.extend(keywords.vars.iter().cloned());
        for tag in &keywords.tags {
            if !play.inherited.tags.contains(tag) {
                play.inherited.tags.push(tag.clone());
            }
        }
        let mut when = keywords.when.clone();
        when.append(&mut play.inherited.when);
        play.inherited.when = when;
    }
    Ok(plays)
}

fn parse_play(node: &Node, base_dir: &Path, files: FileAccess) -> Result<Play, PlaybookError> {
    let Some(entries) = node.as_map() else {
        return Err(invalid(
            format!("A play must be a dict, got a {}", node.type_name()),
            node.pos,
        ));
    };
    for (key, _) in entries {
        let name = key.as_str().unwrap_or_default();
        if !PLAY_KEYS.contains(&name) {
            return Err(invalid(
                format!("'{name}' is not a valid attribute for a Play"),
                key.pos,
            ));
        }
    }
    let hosts = node
        .get("hosts")
        .ok_or_else(|| invalid("the field 'hosts' is required but was not set", node.pos))?;
    let hosts_value = hosts.to_value();
    let name = match node.get("name") {
        Some(n) => n.scalar_text().unwrap_or_default(),
        None => match &hosts.kind {
            NodeKind::Seq(items) => items
                .iter()
                .filter_map(Node::scalar_text)
                .collect::<Vec<_>>()
                .join(","),
            _ => hosts.scalar_text().unwrap_or_default(),
        },
    };
    // Set when a file-based import of this play was left for run time.
    let deferred = Cell::new(false);
    let dirs = Dirs {
        file_dir: base_dir,
        playbook_dir: base_dir,
        deferred: (files == FileAccess::Deferred).then_some(&deferred),
    };
    let mut roles = Vec::new();
    let mut public_roles = Vec::new();
    match node.get("roles").map(|n| &n.kind) {
        None | Some(NodeKind::Null) => {}
        Some(NodeKind::Seq(entries)) => {
            for entry in entries {
                let request = super::roles::parse_role_entry(entry)?;
                if files == FileAccess::Deferred {
                    deferred.set(true);
                    continue;
                }
                let loaded = super::roles::load_role(&request, base_dir)?;
                if let TaskBody::Role { role, .. } = &loaded.task.body {
                    public_roles.push(std::sync::Arc::clone(role));
                }
                roles.push(loaded.task);
            }
        }
        Some(_) => {
            return Err(invalid(
                "A malformed role declaration was encountered: roles must be a list",
                node.get("roles").map(|n| n.pos).unwrap_or(node.pos),
            ))
        }
    }
    let vars_prompt = parse_vars_prompt(node)?;
    let vars_files = match node.get("vars_files") {
        None => Vec::new(),
        Some(n) => match &n.kind {
            NodeKind::Seq(items) => items.iter().map(Node::to_value).collect(),
            NodeKind::Null => Vec::new(),
            _ => vec![n.to_value()],
        },
    };
    let section = |key: &str| -> Result<Vec<Task>, PlaybookError> {
        match node.get(key) {
            None => Ok(Vec::new()),
            Some(n) => parse_task_list(n, &dirs, key == "handlers"),
        }
    };
    let pre_tasks = section("pre_tasks")?;
    let tasks = section("tasks")?;
    let post_tasks = section("post_tasks")?;
    // Ansible's order: the roles' handlers, the play's, then those of imported roles.
    let mut handlers = super::roles::role_handlers(&roles);
    handlers.extend(flatten_imported_handlers(section("handlers")?));
    for list in [&pre_tasks, &tasks, &post_tasks] {
        handlers.extend(super::roles::role_handlers(list));
        public_roles.extend(super::roles::imported_public_roles(list));
    }
    // Handlers of files left for run time are unknown here; the agent checks then.
    if !deferred.get() {
        check_notify(
            &[&pre_tasks, &roles, &tasks, &post_tasks, &handlers],
            &handlers,
        )?;
    }
    Ok(Play {
        name,
        hosts: hosts_value,
        gather_facts: node.get("gather_facts").map(Node::to_value),
        vars: parse_vars(node.get("vars"))?,
        vars_files,
        vars_prompt,
        pre_tasks,
        tasks,
        post_tasks,
        handlers,
        roles,
        public_roles,
        base_dir: base_dir.to_path_buf(),
        inherited: parse_inherited(node)?,
        force_handlers: node
            .get("force_handlers")
            .map(|n| n.kind == NodeKind::Bool(true))
            .unwrap_or(false),
        pos: node.pos,
    })
}

/// Whether a notification `name` reaches `handler`: its name, its role-qualified name
/// (`role : name`) or one of its `listen` topics.
pub fn handler_answers(handler: &Task, name: &str) -> bool {
    let Some(own) = handler.name.as_deref() else {
        return handler.listen.iter().any(|l| l == name);
    };
    own == name
        || handler.listen.iter().any(|l| l == name)
        || handler
            .keywords
            .role
            .as_ref()
            .is_some_and(|role| name == format!("{} : {own}", role.name))
}

/// Every literal `notify` target must name a handler (or a `listen` topic) of the play.
/// Handlers an `import_tasks` brought in are handlers each, as in ansible-core: the
/// import's block is dissolved when it carries no keywords of its own (an import with
/// keywords stays one block, which a notify cannot reach by name).
fn flatten_imported_handlers(handlers: Vec<Task>) -> Vec<Task> {
    let mut out = Vec::new();
    for handler in handlers {
        match handler.body {
            TaskBody::Block {
                block,
                rescue,
                always,
            } if rescue.is_empty()
                && always.is_empty()
                && handler.name.is_none()
                && handler.file.is_none()
                && is_default(&handler.keywords) =>
            {
                out.extend(flatten_imported_handlers(block));
            }
            body => out.push(Task { body, ..handler }),
        }
    }
    out
}

/// Whether a task carries no inheritable keywords.
fn is_default(keywords: &Inherited) -> bool {
    keywords.become_.is_none()
        && keywords.become_user.is_none()
        && keywords.become_method.is_none()
        && keywords.check_mode.is_none()
        && keywords.diff.is_none()
        && keywords.ignore_errors.is_none()
        && keywords.no_log.is_none()
        && keywords.environment.is_none()
        && keywords.tags.is_empty()
        && keywords.when.is_empty()
        && keywords.vars.is_empty()
        && keywords.any_errors_fatal.is_none()
        && keywords.role.is_none()
}

fn check_notify(lists: &[&Vec<Task>], handlers: &[Task]) -> Result<(), PlaybookError> {
    let known = |name: &str| handlers.iter().any(|h| handler_answers(h, name));
    fn walk(
        tasks: &[Task],
        check: &dyn Fn(&Task) -> Result<(), PlaybookError>,
    ) -> Result<(), PlaybookError> {
        for task in tasks {
            check(task)?;
            for list in task.children() {
                walk(list, check)?;
            }
        }
        Ok(())
    }
    let check = |task: &Task| -> Result<(), PlaybookError> {
        for name in &task.notify {
            if !super::template::is_template(name) && !known(name) {
                return Err(invalid(
                    format!("The requested handler '{name}' was not found in either the main handlers list nor in the listening handlers list"),
                    task.pos,
                ));
            }
        }
        Ok(())
    };
    for list in lists {
        walk(list, &check)?;
    }
    Ok(())
}

fn parse_vars(node: Option<&Node>) -> Result<Vec<(String, Value)>, PlaybookError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    match &node.kind {
        NodeKind::Null => Ok(Vec::new()),
        NodeKind::Map(entries) => Ok(entries
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_value()))
            .collect()),
        NodeKind::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(parse_vars(Some(item))?);
            }
            Ok(out)
        }
        _ => Err(invalid(
            format!(
                "Vars in a Play/Block/Task must be specified as a dictionary, got a {}",
                node.type_name()
            ),
            node.pos,
        )),
    }
}

fn string_list(node: &Node, what: &str) -> Result<Vec<String>, PlaybookError> {
    match &node.kind {
        NodeKind::Null => Ok(Vec::new()),
        NodeKind::Seq(items) => items
            .iter()
            .map(|i| {
                i.scalar_text()
                    .ok_or_else(|| invalid(format!("{what} must be a list of strings"), i.pos))
            })
            .collect(),
        _ => node.scalar_text().map(|s| vec![s]).ok_or_else(|| {
            invalid(
                format!("{what} must be a string or a list of strings"),
                node.pos,
            )
        }),
    }
}

fn conditions(node: &Node) -> Vec<Value> {
    match &node.kind {
        NodeKind::Seq(items) => items.iter().map(Node::to_value).collect(),
        NodeKind::Null => Vec::new(),
        _ => vec![node.to_value()],
    }
}

/// The keywords a play, block, task or role entry passes down.
pub fn parse_inherited(node: &Node) -> Result<Inherited, PlaybookError> {
    let value = |key: &str| node.get(key).map(Node::to_value);
    let tags = match node.get("tags") {
        Some(t) => string_list(t, "tags")?
            .into_iter()
            .flat_map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect(),
        None => Vec::new(),
    };
    Ok(Inherited {
        become_: value("become"),
        become_user: value("become_user"),
        become_method: value("become_method"),
        check_mode: value("check_mode"),
        diff: value("diff"),
        ignore_errors: value("ignore_errors"),
        no_log: value("no_log"),
        environment: value("environment"),
        tags,
        when: node.get("when").map(conditions).unwrap_or_default(),
        vars: parse_vars(node.get("vars"))?,
        any_errors_fatal: value("any_errors_fatal"),
        role: None,
    })
}

/// Parses a list of tasks (or handlers).
pub fn parse_task_list(
    node: &Node,
    dirs: &Dirs,
    handlers: bool,
) -> Result<Vec<Task>, PlaybookError> {
    match &node.kind {
        NodeKind::Null => Ok(Vec::new()),
        NodeKind::Seq(items) => {
            let mut tasks = Vec::new();
            for item in items {
                if item.kind == NodeKind::Null {
                    continue;
                }
                tasks.push(parse_task(item, dirs, handlers)?);
            }
            Ok(tasks)
        }
        _ => Err(invalid(
            format!("A list of tasks was expected, got a {}", node.type_name()),
            node.pos,
        )),
    }
}

fn loop_kind(key: &str) -> Option<LoopKind> {
    Some(match key {
        "loop" => LoopKind::Loop,
        "with_items" => LoopKind::Items,
        "with_list" => LoopKind::List,
        "with_dict" => LoopKind::Dict,
        "with_indexed_items" => LoopKind::IndexedItems,
        "with_fileglob" => LoopKind::Fileglob,
        "with_sequence" => LoopKind::Sequence,
        "with_together" => LoopKind::Together,
        "with_nested" | "with_cartesian" => LoopKind::Nested,
        "with_lines" => LoopKind::Lines,
        "with_file" => LoopKind::File,
        "with_subelements" => LoopKind::Subelements,
        "with_first_found" => LoopKind::FirstFound,
        _ => return None,
    })
}

/// Parses one task, block or handler.
pub fn parse_task(node: &Node, dirs: &Dirs, handler: bool) -> Result<Task, PlaybookError> {
    let Some(entries) = node.as_map() else {
        return Err(invalid(
            format!("A task must be a dict, got a {}", node.type_name()),
            node.pos,
        ));
    };
    let name = node.get("name").and_then(Node::scalar_text);
    let is_block = node.get("block").is_some();
    let mut loop_source = None;
    let mut action: Option<(&Node, &Node)> = None;
    for (key, value) in entries {
        let Some(k) = key.as_str() else {
            return Err(invalid("task keys must be strings", key.pos));
        };
        if is_block {
            if !BLOCK_KEYS.contains(&k) {
                return Err(invalid(
                    format!("'{k}' is not a valid attribute for a Block"),
                    key.pos,
                ));
            }
            continue;
        }
        if let Some(kind) = loop_kind(k) {
            if loop_source.is_some() {
                return Err(invalid(
                    "only one of loop or with_* may be used in a task",
                    key.pos,
                ));
            }
            loop_source = Some((kind, value.to_value()));
            continue;
        }
        if let Some(lookup) = k.strip_prefix("with_") {
            return Err(invalid(
                format!("lookup '{lookup}' for {k} is not supported by the native runtime"),
                key.pos,
            ));
        }
        if TASK_KEYS.contains(&k) && k != "action" && k != "local_action" {
            continue;
        }
        if let Some((previous, _)) = action {
            return Err(invalid(
                format!(
                    "conflicting action statements: {}, {k}",
                    previous.as_str().unwrap_or_default()
                ),
                key.pos,
            ));
        }
        action = Some((key, value));
    }
    let keywords = parse_inherited(node)?;
    let notify = match node.get("notify") {
        Some(n) => string_list(n, "notify")?,
        None => Vec::new(),
    };
    let listen = match node.get("listen") {
        Some(n) if handler => string_list(n, "listen")?,
        Some(n) => return Err(invalid("'listen' is only valid for handlers", n.pos)),
        None => Vec::new(),
    };
    let body = if is_block {
        let list = |key: &str| -> Result<Vec<Task>, PlaybookError> {
            match node.get(key) {
                Some(n) => parse_task_list(n, dirs, handler),
                None => Ok(Vec::new()),
            }
        };
        TaskBody::Block {
            block: list("block")?,
            rescue: list("rescue")?,
            always: list("always")?,
        }
    } else {
        let Some((key, value)) = action else {
            return Err(invalid("no module/action detected in task.", node.pos));
        };
        let (written, args_node_value) = match key.as_str().unwrap_or_default() {
            "action" | "local_action" => split_action(value)?,
            other => (other.to_string(), value.to_value()),
        };
        // Unknown modules are recorded here and rejected by `parse_playbook`, unless the
        // caller allows running them through ansible-core.
        let module = resolve_module(&written).unwrap_or(ANSIBLE_FALLBACK);
        let mut args = normalize_args(module, &args_node_value, value.pos)?;
        if let Some(extra) = node.get("args") {
            if extra.as_map().is_none() && extra.kind != NodeKind::Null {
                return Err(invalid("args must be a dict", extra.pos));
            }
            let mut merged: Vec<(Value, Value)> = Vec::new();
            if let Ok(iter) = extra.to_value().try_iter() {
                let extra_value = extra.to_value();
                for k in iter {
                    if let Ok(v) = extra_value.get_item(&k) {
                        merged.push((k, v));
                    }
                }
            }
            if let Ok(iter) = args.try_iter() {
                for k in iter {
                    if let Ok(v) = args.get_item(&k) {
                        merged.retain(|(existing, _)| *existing != k);
                        merged.push((k, v));
                    }
                }
            }
            args = Value::from_pairs(merged);
        }
        if module == "import_tasks" {
            return import_tasks(node, &args, dirs, handler, name, keywords);
        }
        if module == "import_role" {
            return import_role(node, &written, &args, dirs, keywords, loop_source.is_some());
        }
        TaskBody::Action {
            module: module.to_string(),
            written,
            args,
        }
    };
    Ok(Task {
        name,
        body,
        keywords,
        loop_source,
        loop_control: node.get("loop_control").map(Node::to_value),
        register: node.get("register").and_then(Node::scalar_text),
        notify,
        listen,
        changed_when: node.get("changed_when").map(conditions),
        failed_when: node.get("failed_when").map(conditions),
        until: node.get("until").map(conditions),
        retries: node.get("retries").map(Node::to_value),
        delay: node.get("delay").map(Node::to_value),
        delegate_to: node.get("delegate_to").map(Node::to_value),
        async_val: node.get("async").map(Node::to_value),
        poll: node.get("poll").map(Node::to_value),
        file: None,
        pos: node.pos,
    })
}

/// `import_tasks` is static: the file's tasks become a block carrying the import's keywords.
fn import_tasks(
    node: &Node,
    args: &Value,
    dirs: &Dirs,
    handler: bool,
    name: Option<String>,
    keywords: Inherited,
) -> Result<Task, PlaybookError> {
    let file = args
        .get_attr("_raw_params")
        .ok()
        .filter(|v| !v.is_undefined())
        .or_else(|| args.get_attr("file").ok().filter(|v| !v.is_undefined()))
        .and_then(|v| v.as_str().map(String::from))
        .ok_or_else(|| invalid("import_tasks needs a file name", node.pos))?;
    // A name templated with what is known before the play runs (`playbook_dir`) is
    // resolved now, as ansible-core resolves it when it loads the play.
    let file = if super::template::is_template(&file) {
        let templar = super::template::Templar::new(dirs.playbook_dir.to_path_buf());
        let ctx = Value::from_pairs([(
            "playbook_dir",
            Value::from(dirs.playbook_dir.display().to_string()),
        )]);
        templar
            .template_str(&file, &ctx)
            .map(|v| super::modules::value_to_string(&v))
            .map_err(|_| {
                invalid(
                    "import_tasks with a templated file name is not supported (only playbook_dir is known before the play runs)",
                    node.pos,
                )
            })?
    } else {
        file
    };
    if let Some(flag) = dirs.deferred {
        flag.set(true);
        let mut task = wrapper_task(empty_block(), keywords, node.pos);
        task.name = name;
        return Ok(task);
    }
    let path = dirs.file_dir.join(&file);
    let source = std::fs::read_to_string(&path).map_err(|e| PlaybookError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let root = yaml::parse_one(&source)?;
    let inner = Dirs {
        file_dir: path.parent().unwrap_or(dirs.file_dir),
        ..*dirs
    };
    let mut tasks = parse_task_list(&root, &inner, handler)?;
    set_file(&mut tasks, &std::sync::Arc::new(path.clone()));
    let mut task = wrapper_task(
        TaskBody::Block {
            block: tasks,
            rescue: Vec::new(),
            always: Vec::new(),
        },
        keywords,
        node.pos,
    );
    task.name = name;
    Ok(task)
}

/// The body of an import left for run time: a block with no tasks.
fn empty_block() -> TaskBody {
    TaskBody::Block {
        block: Vec::new(),
        rescue: Vec::new(),
        always: Vec::new(),
    }
}

/// `import_role` is static: the role is loaded now and its task carries the import's
/// keywords (its `vars` also become the role's entry vars, as in Ansible).
fn import_role(
    node: &Node,
    written: &str,
    args: &Value,
    dirs: &Dirs,
    keywords: Inherited,
    has_loop: bool,
) -> Result<Task, PlaybookError> {
    if has_loop {
        return Err(invalid(
            format!("You cannot use loops on '{written}' statements. You should use 'include_role' instead."),
            node.pos,
        ));
    }
    let mut request = super::roles::request_from_task(written, args, &keywords.vars, node.pos)?;
    for (key, value) in [("name", &request.name)]
        .into_iter()
        .chain(request.from.tasks.iter().map(|t| ("tasks_from", t)))
    {
        if super::template::is_template(value) {
            return Err(invalid(
                format!("{written}: a templated '{key}' is not supported by the native runtime; use include_role"),
                node.pos,
            ));
        }
    }
    if let Some(flag) = dirs.deferred {
        flag.set(true);
        return Ok(wrapper_task(empty_block(), keywords, node.pos));
    }
    request.keywords = keywords;
    let loaded = super::roles::load_role(&request, dirs.playbook_dir)?;
    Ok(loaded.task)
}

/// A task that only wraps others (a role), with no module, loop or register.
pub fn wrapper_task(body: TaskBody, keywords: Inherited, pos: Pos) -> Task {
    Task {
        name: None,
        body,
        keywords,
        loop_source: None,
        loop_control: None,
        register: None,
        notify: Vec::new(),
        listen: Vec::new(),
        changed_when: None,
        failed_when: None,
        until: None,
        retries: None,
        delay: None,
        delegate_to: None,
        async_val: None,
        poll: None,
        file: None,
        pos,
    }
}

/// Records the file tasks come from (imports and includes), keeping inner imports' files.
pub fn set_file(tasks: &mut [Task], file: &std::sync::Arc<PathBuf>) {
    for task in tasks {
        if task.file.is_none() {
            task.file = Some(std::sync::Arc::clone(file));
        }
        for list in task.children_mut() {
            set_file(list, file);
        }
    }
}

/// Splits `action: copy src=a dest=b` / `action: {module: copy, src: a}`.
fn split_action(value: &Node) -> Result<(String, Value), PlaybookError> {
    match &value.kind {
        NodeKind::Str { text, .. } => {
            let trimmed = text.trim_start();
            let (module, rest) = trimmed
                .split_once(char::is_whitespace)
                .unwrap_or((trimmed, ""));
            Ok((module.to_string(), Value::from(rest.trim())))
        }
        NodeKind::Map(entries) => {
            let module = value
                .get("module")
                .and_then(Node::as_str)
                .ok_or_else(|| invalid("action dict needs a 'module' key", value.pos))?;
            let rest = entries
                .iter()
                .filter(|(k, _)| k.as_str() != Some("module"))
                .map(|(k, v)| {
                    (
                        Value::from(k.scalar_text().unwrap_or_default()),
                        v.to_value(),
                    )
                });
            Ok((module.to_string(), Value::from_pairs(rest)))
        }
        _ => Err(invalid("action must be a string or a dict", value.pos)),
    }
}

/// Turns a module's argument node into a dict; strings are `k=v` pairs or free form.
fn normalize_args(module: &str, value: &Value, pos: Pos) -> Result<Value, PlaybookError> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Map => Ok(value.clone()),
        ValueKind::None | ValueKind::Undefined => {
            Ok(Value::from_pairs(Vec::<(Value, Value)>::new()))
        }
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            let free_form = FREE_FORM.contains(&module);
            let pairs = parse_kv(text, free_form).map_err(|m| invalid(m, pos))?;
            Ok(Value::from_pairs(
                pairs.into_iter().map(|(k, v)| (Value::from(k), v)),
            ))
        }
        _ => Err(invalid(
            format!("the arguments of module '{module}' must be a dict or a string"),
            pos,
        )),
    }
}

/// Keys that free-form modules accept inside their command string.
const RAW_PARAMS: &[&str] = &[
    "creates",
    "removes",
    "chdir",
    "executable",
    "warn",
    "stdin",
    "stdin_add_newline",
    "strip_empty_ends",
    "expand_argument_vars",
];

/// Splits a string on whitespace, keeping quoted parts and `{{ }}` expressions together.
pub fn split_args(text: &str) -> Vec<String> {
    // A port of ansible-core's `parsing/splitter.py::split_args`: split on spaces line by
    // line, glue quoted strings and Jinja blocks back together, and keep each line's
    // newline (and runs of spaces) on the token before it, so `join_args` gives back
    // the original text of a multi-line `shell: |` script.
    fn quote_state(token: &str, mut quote: Option<char>) -> Option<char> {
        let mut previous = None;
        for c in token.chars() {
            if (c == '"' || c == '\'') && previous != Some('\\') {
                match quote {
                    Some(q) if q == c => quote = None,
                    Some(_) => {}
                    None => quote = Some(c),
                }
            }
            previous = Some(c);
        }
        quote
    }
    fn block_depth(token: &str, depth: usize, open: &str, close: &str) -> usize {
        let (opened, closed) = (token.matches(open).count(), token.matches(close).count());
        if opened == closed {
            depth
        } else {
            (depth + opened).saturating_sub(closed)
        }
    }
    let mut params: Vec<String> = Vec::new();
    if text.is_empty() {
        return params;
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let mut quote: Option<char> = None;
    let (mut print_depth, mut block, mut comment) = (0usize, 0usize, 0usize);
    for (line_index, line) in lines.iter().enumerate() {
        let mut continuation = false;
        for (index, token) in line.split(' ').enumerate() {
            if token.is_empty() && index != 0 {
                match params.last_mut() {
                    Some(last) => last.push(' '),
                    None => params.push(" ".into()),
                }
                continue;
            }
            if token == "\\" && quote.is_none() {
                continuation = true;
                continue;
            }
            let was_inside_quotes = quote.is_some();
            quote = quote_state(token, quote);
            let inside_quotes = quote.is_some();
            let in_jinja = print_depth > 0 || block > 0 || comment > 0;
            let mut appended = false;
            if inside_quotes && !was_inside_quotes && !in_jinja {
                params.push(token.to_string());
                appended = true;
            } else if in_jinja || inside_quotes || was_inside_quotes {
                let spacer = if index == 0 { "" } else { " " };
                match params.last_mut() {
                    Some(last) => {
                        last.push_str(spacer);
                        last.push_str(token);
                    }
                    None => params.push(token.to_string()),
                }
                appended = true;
            }
            for (depth, open, close) in [
                (&mut print_depth, "{{", "}}"),
                (&mut block, "{%", "%}"),
                (&mut comment, "{#", "#}"),
            ] {
                let before = *depth;
                *depth = block_depth(token, before, open, close);
                if *depth != before && !appended {
                    params.push(token.to_string());
                    appended = true;
                }
            }
            let in_jinja = print_depth > 0 || block > 0 || comment > 0;
            if !in_jinja && quote.is_none() && !appended && !token.is_empty() {
                params.push(token.to_string());
            }
        }
        if lines.len() > 1 && line_index != lines.len() - 1 && !continuation {
            match params.last_mut() {
                Some(last) => last.push('\n'),
                None => params.push("\n".into()),
            }
        }
    }
    params
}

/// Ansible's `join_args`: the inverse of [`split_args`], keeping newlines and spacing.
fn join_args(params: &[String]) -> String {
    let mut out = String::new();
    for param in params {
        if !(out.is_empty() || out.ends_with('\n')) {
            out.push(' ');
        }
        out.push_str(param);
    }
    out
}

fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    if bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'\'')
        && bytes[bytes.len() - 1] == bytes[0]
    {
        return s[1..s.len() - 1].to_string();
    }
    s.to_string()
}

/// Decodes Python escape sequences (`\\n`, `\\t`, `\\xNN`, `\\uNNNN`, ...) in `k=v` values,
/// like Ansible's `_decode_escapes`.
fn decode_escapes(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_string();
    }
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Option<char> {
            let digits: String = (0..n).filter_map(|_| chars.next()).collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
        };
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some('\\') => out.push('\\'),
            Some('\'') => out.push('\''),
            Some('"') => out.push('"'),
            Some('x') => out.extend(hex(&mut chars, 2)),
            Some('u') => out.extend(hex(&mut chars, 4)),
            Some('U') => out.extend(hex(&mut chars, 8)),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Ansible's `parse_kv`: `a=1 b="two words"`; with `free_form`, other words form `_raw_params`.
pub fn parse_kv(text: &str, free_form: bool) -> Result<Vec<(String, Value)>, String> {
    let mut pairs = Vec::new();
    let mut raw = Vec::new();
    for token in split_args(text) {
        let eq = token.find('=').filter(|i| {
            let key = token[..*i].trim();
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match eq {
            Some(i) if !free_form || RAW_PARAMS.contains(&token[..i].trim()) => {
                let key = token[..i].trim().to_string();
                let value = decode_escapes(&unquote(token[i + 1..].trim()));
                pairs.push((key, Value::from(value)));
            }
            _ if free_form => raw.push(token),
            _ => {
                return Err(format!(
                    "this module requires key=value arguments, got '{token}'"
                ))
            }
        }
    }
    if free_form && !raw.is_empty() {
        pairs.push(("_raw_params".to_string(), Value::from(join_args(&raw))));
    }
    Ok(pairs)
}

/// The play's `vars_prompt`: a list of mappings, each naming its variable.
fn parse_vars_prompt(play: &Node) -> Result<Vec<Value>, PlaybookError> {
    let Some(node) = play.get("vars_prompt") else {
        return Ok(Vec::new());
    };
    let items = match &node.kind {
        NodeKind::Null => return Ok(Vec::new()),
        NodeKind::Seq(items) => items,
        _ => {
            return Err(invalid(
                "'vars_prompt' must be a list of mappings",
                node.pos,
            ))
        }
    };
    for item in items {
        if item.get("name").is_none() {
            return Err(invalid(
                "Invalid vars_prompt data structure, missing 'name' key",
                item.pos,
            ));
        }
    }
    Ok(items.iter().map(Node::to_value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<Playbook, PlaybookError> {
        parse_playbook(source, Path::new("/tmp"))
    }

    fn check_error(source: &str, expected: &str) {
        let err = parse(source).expect_err("must be invalid");
        assert_eq!(err.to_string(), expected, "{source}");
    }

    /// Unknown modules are rejected before anything runs, naming the module and line.
    #[test]
    fn unknown_module_names_module_and_line() {
        check_error(
            "- hosts: localhost\n  tasks:\n    - debug: msg=hi\n    - name: nope\n      frobnicate: {x: 1}\n",
            "couldn't resolve module/action 'frobnicate': the native runtime does not implement it (line 4, column 7)",
        );
    }

    /// Invalid play keys, conflicting actions and missing actions are errors with positions.
    #[test]
    fn structural_errors() {
        check_error(
            "- hosts: all\n  sudo: yes\n",
            "'sudo' is not a valid attribute for a Play (line 2, column 3)",
        );
        check_error(
            "- hosts: all\n  tasks:\n    - debug: msg=a\n      command: ls\n",
            "conflicting action statements: debug, command (line 4, column 7)",
        );
        check_error(
            "- hosts: all\n  tasks:\n    - name: x\n",
            "no module/action detected in task. (line 3, column 7)",
        );
        check_error(
            "- name: x\n",
            "the field 'hosts' is required but was not set (line 1, column 3)",
        );
    }

    /// `k=v` strings and free-form commands are split like Ansible's parse_kv.
    #[test]
    fn kv_arguments() {
        let pairs = parse_kv("src=a dest='/b c' mode=0644", false).expect("valid");
        assert_eq!(pairs[1], ("dest".to_string(), Value::from("/b c")));
        let pairs = parse_kv("content=\"a\\nb\" dest=x", false).expect("valid");
        assert_eq!(pairs[0], ("content".to_string(), Value::from("a\nb")));
        let pairs = parse_kv("echo {{ a }} > /tmp/x creates=/tmp/x", true).expect("valid");
        assert_eq!(pairs[0], ("creates".to_string(), Value::from("/tmp/x")));
        assert_eq!(
            pairs[1],
            (
                "_raw_params".to_string(),
                Value::from("echo {{ a }} > /tmp/x")
            )
        );
    }

    /// A multi-line free-form script keeps its newlines and spacing (regression: the
    /// lines of `shell: |` were joined with spaces, so `set -e` swallowed the script).
    #[test]
    fn free_form_scripts_keep_their_lines() {
        let script = "set -e\ngit init -q  src\n\necho \"a  b\"\nls\n";
        let pairs = parse_kv(script, true).expect("valid");
        assert_eq!(
            pairs,
            vec![("_raw_params".to_string(), Value::from(script))]
        );
        let pairs = parse_kv("echo one\ncreates=/tmp/x\necho two", true).expect("valid");
        assert_eq!(pairs[0], ("creates".to_string(), Value::from("/tmp/x")));
        assert_eq!(
            pairs[1],
            ("_raw_params".to_string(), Value::from("echo one\necho two"))
        );
    }

    /// FQCNs resolve to native modules only within the right collection.
    #[test]
    fn module_resolution() {
        assert_eq!(resolve_module("ansible.builtin.copy"), Some("copy"));
        assert_eq!(
            resolve_module("community.docker.docker_compose_v2"),
            Some("docker_compose_v2")
        );
        assert_eq!(
            resolve_module("ansible.builtin.systemd_service"),
            Some("systemd")
        );
        assert_eq!(resolve_module("community.docker.copy"), None);
        for (written, native) in [
            ("ansible.posix.firewalld", Some("firewalld")),
            ("ansible.posix.mount", Some("mount")),
            ("community.general.npm", Some("npm")),
            ("community.general.pamd", Some("pamd")),
            (
                "community.postgresql.postgresql_user",
                Some("postgresql_user"),
            ),
            (
                "ansible.builtin.deb822_repository",
                Some("deb822_repository"),
            ),
            ("ansible.builtin.fetch", Some("fetch")),
            ("community.general.locale_gen", Some("locale_gen")),
            ("community.mysql.mysql_user", Some("mysql_user")),
            ("community.docker.docker_image", Some("docker_image")),
            ("ansible.builtin.getent", Some("getent")),
            ("community.general.mysql_db", None),
            ("community.general.firewalld", None),
            ("ansible.builtin.npm", None),
        ] {
            assert_eq!(resolve_module(written), native, "{written}");
        }
    }

    /// A notify without a matching handler is rejected before anything runs.
    #[test]
    fn unknown_handler_is_an_error() {
        check_error(
            "- hosts: all\n  tasks:\n    - command: 'true'\n      notify: restart web\n  handlers:\n    - name: restart app\n      debug: msg=x\n",
            "The requested handler 'restart web' was not found in either the main handlers list nor in the listening handlers list (line 3, column 7)",
        );
    }

    /// Writes `files` (relative path, content) under a fresh directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, content).expect("write");
        }
        dir
    }

    fn parse_in(dir: &tempfile::TempDir, source: &str) -> Result<Playbook, PlaybookError> {
        parse_playbook(source, dir.path())
    }

    /// What the public corpus needed at parse time: a role named by a relative path
    /// (`../../` from a role's own tests/), import_tasks with `{{ playbook_dir }}` in the
    /// file name, handlers imported from a file answering notify, and
    /// `systemd_service` without a collection prefix.
    #[test]
    fn corpus_parse_forms() {
        let dir = tree(&[
            (
                "tasks/main.yml",
                "- name: role task\n  systemd_service: name=x\n",
            ),
            ("tests/pre.yml", "- name: pre\n  debug: msg=pre\n"),
            ("tests/handlers.yml", "- name: restart x\n  debug: msg=x\n"),
        ]);
        let tests = dir.path().join("tests");
        let source = "- hosts: all\n  pre_tasks:\n    - import_tasks: \"{{ playbook_dir }}/pre.yml\"\n  roles:\n    - ../../\n  tasks:\n    - command: 'true'\n      notify: restart x\n  handlers:\n    - import_tasks: handlers.yml\n";
        let playbook = parse_playbook(source, &tests).expect("the corpus forms parse");
        let play = &playbook.plays[0];
        assert_eq!(play.handlers.len(), 1, "the imported handler is a handler");
        assert_eq!(play.handlers[0].name.as_deref(), Some("restart x"));
        let TaskBody::Block { block, .. } = &play.pre_tasks[0].body else {
            panic!("import_tasks is a block");
        };
        assert_eq!(block[0].name.as_deref(), Some("pre"));
        let TaskBody::Role { role, tasks, .. } = &play.roles[0].body else {
            panic!("the role entry is a role");
        };
        assert_eq!(role.path, dir.path().to_path_buf());
        assert!(
            matches!(&tasks[0].body, TaskBody::Action { module, .. } if module == "systemd"),
            "{:?}",
            tasks[0].body
        );
    }

    /// A missing role is Ansible's "not found" error, naming the role, the searched
    /// directories (roles/ beside the playbook first) and the entry's position.
    #[test]
    fn missing_role_names_role_paths_and_position() {
        let dir = tree(&[]);
        let base = dir.path().display().to_string();
        for source in [
            "- hosts: all\n  roles:\n    - web\n".to_string(),
            "- hosts: all\n  roles:\n    - role: web\n      vars: {a: 1}\n".to_string(),
            "- hosts: all\n  tasks:\n    - import_role:\n        name: web\n".to_string(),
        ] {
            let err = parse_in(&dir, &source).expect_err("missing role");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("the role 'web' was not found in {base}/roles:")),
                "{text}"
            );
            assert!(
                text.ends_with(&format!(":{base} (line 3, column 7)")),
                "{text}"
            );
        }
    }

    /// Bad role requests are errors with positions: unknown include/import_role options,
    /// a missing tasks_from file, a role without a name, loops on import_role.
    #[test]
    fn bad_role_requests() {
        let dir = tree(&[("roles/web/tasks/main.yml", "- debug: msg=x\n")]);
        let check = |source: &str, expected: &str| {
            let err = parse_in(&dir, source).expect_err("invalid");
            assert_eq!(err.to_string(), expected, "{source}");
        };
        check(
            "- hosts: all\n  tasks:\n    - import_role: {name: web, bogus: 1}\n",
            "Invalid options for import_role: bogus (line 3, column 7)",
        );
        check(
            "- hosts: all\n  tasks:\n    - import_role: {name: web, tasks_from: nope}\n",
            "Could not find specified file in role: tasks/nope (line 3, column 7)",
        );
        check(
            "- hosts: all\n  roles:\n    - vars: {a: 1}\n",
            "role definitions must contain a role name (line 3, column 7)",
        );
        check(
            "- hosts: all\n  tasks:\n    - import_role: name=web\n      loop: [1]\n",
            "You cannot use loops on 'import_role' statements. You should use 'include_role' instead. (line 3, column 7)",
        );
    }

    /// Roles compile dependencies first, add their handlers to the play (notifiable as
    /// `role : name`), and a broken role file is reported with its path.
    #[test]
    fn roles_compile_with_dependencies_and_handlers() {
        let dir = tree(&[
            (
                "roles/base/tasks/main.yml",
                "- name: base task\n  debug: msg=b\n",
            ),
            ("roles/web/meta/main.yml", "dependencies:\n  - base\n"),
            (
                "roles/web/tasks/main.yml",
                "- command: 'true'\n  notify: \"web : restart\"\n",
            ),
            (
                "roles/web/handlers/main.yml",
                "- name: restart\n  debug: msg=r\n",
            ),
            (
                "roles/bad/tasks/main.yml",
                "- name: x\n  sudo: yes\n  debug: msg=x\n",
            ),
        ]);
        let pb = parse_in(&dir, "- hosts: all\n  roles: [web]\n").expect("valid");
        let play = &pb.plays[0];
        assert_eq!(play.handlers.len(), 1);
        assert_eq!(
            play.handlers[0]
                .keywords
                .role
                .as_ref()
                .map(|r| r.name.as_str()),
            Some("web")
        );
        let TaskBody::Role { role, tasks, .. } = &play.roles[0].body else {
            panic!("expected a role")
        };
        assert_eq!(role.name, "web");
        assert!(matches!(&tasks[0].body, TaskBody::Role { role, .. } if role.name == "base"));
        let err = parse_in(&dir, "- hosts: all\n  roles: [bad]\n").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            format!(
                "{}/roles/bad/tasks/main.yml: conflicting action statements: sudo, debug (line 3, column 3)",
                dir.path().display()
            )
        );
    }

    /// import_playbook brings in the file's plays with the entry's vars; a missing file
    /// and unknown keys are errors.
    #[test]
    fn import_playbook_parses_plays() {
        let dir = tree(&[(
            "other.yml",
            "- name: second\n  hosts: all\n  vars: {a: 1}\n  tasks:\n    - debug: msg=x\n",
        )]);
        let pb = parse_in(
            &dir,
            "- hosts: all\n  tasks: []\n- import_playbook: other.yml\n  vars: {b: 2}\n",
        )
        .expect("valid");
        assert_eq!(pb.plays.len(), 2);
        assert_eq!(pb.plays[1].name, "second");
        assert_eq!(pb.plays[1].vars.len(), 2);
        assert!(matches!(
            parse_in(&dir, "- import_playbook: missing.yml\n"),
            Err(PlaybookError::Io { .. })
        ));
        let err =
            parse_in(&dir, "- import_playbook: other.yml\n  hosts: all\n").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "'hosts' is not a valid attribute for a PlaybookInclude (line 2, column 3)"
        );
    }

    /// Blocks nest and keep their sections.
    #[test]
    fn blocks_parse() {
        let pb = parse(
            "- hosts: localhost\n  tasks:\n    - block:\n        - command: 'false'\n      rescue:\n        - debug: msg=r\n      always:\n        - debug: msg=a\n",
        )
        .expect("valid");
        let TaskBody::Block {
            block,
            rescue,
            always,
        } = &pb.plays[0].tasks[0].body
        else {
            panic!("expected a block")
        };
        assert_eq!((block.len(), rescue.len(), always.len()), (1, 1, 1));
    }

    /// Runs `check` on another thread and fails when it takes more than five seconds
    /// (a read of a FIFO blocks until a writer comes).
    fn within_seconds<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(check());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("checking the text finished within five seconds")
    }

    /// Checking text (what the control plane does on save) never opens a file
    /// (regression: `import_tasks: /etc/passwd` answered "got a str", a missing file
    /// "could not read", so a technician learnt which files exist and what they hold,
    /// and a FIFO hung the save). Every file-based import is accepted as resolved at run
    /// time, whatever is or is not at its path, while its own syntax is still checked.
    #[test]
    fn checking_text_never_reads_files() {
        let dir = tree(&[("broken.yml", "this is: [not a task list\n")]);
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.display().to_string()).expect("no NUL");
        // SAFETY: mkfifo only reads the NUL-terminated path it is given.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let broken = dir.path().join("broken.yml").display().to_string();
        let fifo = fifo.display().to_string();
        for path in [
            "/etc/passwd".to_string(),
            "/no/such/file.yml".to_string(),
            fifo.clone(),
            broken.clone(),
        ] {
            for source in [
                format!("- hosts: all\n  tasks:\n    - import_tasks: {path}\n"),
                format!("- hosts: all\n  tasks:\n    - ansible.builtin.import_tasks:\n        file: {path}\n"),
                format!("- import_playbook: {path}\n"),
                format!("- hosts: all\n  roles:\n    - {path}\n"),
                format!("- hosts: all\n  tasks:\n    - import_role:\n        name: {path}\n"),
            ] {
                let text = source.clone();
                let answer = within_seconds(move || check_playbook_text(&text));
                assert_eq!(answer, Ok(()), "{source}");
                let text = source.clone();
                let answer =
                    within_seconds(move || check_playbook_text_with_ansible_fallback(&text));
                assert_eq!(answer, Ok(()), "{source}");
            }
        }
        // Running reads the files as before: the broken task file's YAML is reported.
        let err = parse_in(
            &dir,
            "- hosts: all\n  tasks:\n    - import_tasks: broken.yml\n",
        )
        .expect_err("the agent reads the file when it runs the playbook");
        assert!(matches!(err, PlaybookError::Yaml(_)), "{err}");

        // The imports' own syntax is still checked.
        let err =
            check_playbook_text("- hosts: all\n  tasks:\n    - import_tasks: \"{{ f }}.yml\"\n")
                .expect_err("templated import");
        assert!(err.to_string().contains("templated file name"), "{err}");
        let err = check_playbook_text("- import_playbook: other.yml\n  bogus: 1\n")
            .expect_err("bad import_playbook key");
        assert!(
            err.to_string().contains("'bogus' is not a valid attribute"),
            "{err}"
        );
        let err = check_playbook_text("- hosts: all\n  tasks:\n    - nope_module: {}\n")
            .expect_err("unknown module");
        assert!(matches!(err, PlaybookError::UnknownModule { .. }), "{err}");
        assert_eq!(
            check_playbook_text_with_ansible_fallback(
                "- hosts: all\n  tasks:\n    - nope_module: {}\n"
            ),
            Ok(())
        );
        // A notify no handler of the text answers is an error unless the play imports a
        // file, whose handlers are only known when the agent reads it.
        let notify = "- hosts: all\n  tasks:\n    - command: 'true'\n      notify: restart web\n";
        assert!(check_playbook_text(notify).is_err());
        let with_role = format!("{notify}  roles:\n    - web\n");
        assert_eq!(check_playbook_text(&with_role), Ok(()));
    }
}
