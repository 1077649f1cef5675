//! Roles: finding a role on the role search path, loading its `defaults`, `vars`,
//! `meta` dependencies, `tasks` and `handlers`, and compiling it to one
//! [`TaskBody::Role`] task with its dependencies nested first.
//!
//! Loading is part of parsing (`model`): a missing role or a broken role file is an error
//! with a position before anything runs. `include_role` loads at run time through the
//! same [`load_role`]. The variable layers a role contributes (defaults, vars, params,
//! along its dependency chain, as ansible-core's `Role.get_default_vars`/`get_vars`
//! compute them) are computed here once; the engine only stacks them in precedence order.
//!
//! What does not live here: running a role's tasks and the run-once bookkeeping
//! (`engine`), task parsing (`model`).

use super::model::{self, Dirs, Inherited, PlaybookError, Task, TaskBody};
use super::yaml::{self, Node, NodeKind, Pos};
use minijinja::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep role dependencies may nest before we call it a loop.
const MAX_DEPTH: usize = 32;

/// One loaded role, as its tasks and handlers see it.
#[derive(Debug)]
pub struct RoleScope {
    /// The role's name (shown as `TASK [name : task]`).
    pub name: String,
    /// The role's directory.
    pub path: PathBuf,
    /// What makes two loads of a role "the same role" for the run-once rule (ansible-core's
    /// `Role._get_hash_dict`: path, params, when, tags, `*_from` files, vars, include).
    pub identity: String,
    /// `allow_duplicates` (meta for `roles`, the task option for include/import_role).
    pub allow_duplicates: bool,
    /// Loaded by `import_role`/`include_role`.
    pub from_include: bool,
    /// Whether every task of the play sees this role's defaults and vars: `roles` entries
    /// and `import_role` do, `include_role` only with `public: true`.
    pub public: bool,
    /// Defaults of the dependencies, then the role's own (what the play sees).
    pub play_defaults: Vec<(String, Value)>,
    /// Defaults as the role's own tasks see them: dependencies', parents', own.
    pub defaults: Vec<(String, Value)>,
    /// `vars/` of the dependencies, then the role's own (what the play sees).
    pub exported_vars: Vec<(String, Value)>,
    /// Role vars as the role's own tasks see them: parents', dependencies', own `vars/`,
    /// then the `vars:` of the role's entry.
    pub vars: Vec<(String, Value)>,
    /// Role parameters (the entry's non-keyword keys): parents', then own.
    pub params: Vec<(String, Value)>,
}

/// Which files of a role to load instead of `main` (`tasks_from`, `vars_from`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FromFiles {
    /// `tasks_from`.
    pub tasks: Option<String>,
    /// `vars_from`.
    pub vars: Option<String>,
    /// `defaults_from`.
    pub defaults: Option<String>,
    /// `handlers_from`.
    pub handlers: Option<String>,
}

/// A request for a role: a `roles` entry, a `meta` dependency, or import/include_role.
#[derive(Debug, Clone)]
pub struct RoleRequest {
    /// The role's name or path as written.
    pub name: String,
    /// Role parameters.
    pub params: Vec<(String, Value)>,
    /// The entry's `vars`.
    pub vars: Vec<(String, Value)>,
    /// The entry's keywords (`when`, `tags`, `become`, ...), inherited by its tasks.
    pub keywords: Inherited,
    /// Alternative files.
    pub from: FromFiles,
    /// Loaded by `import_role`/`include_role` rather than `roles`/`dependencies`.
    pub from_include: bool,
    /// `public` of import/include_role (`None` = Ansible's default for the kind).
    pub public: Option<bool>,
    /// `allow_duplicates` of import/include_role (`None` = the role's meta decides).
    pub allow_duplicates: Option<bool>,
    /// Where the request is written.
    pub pos: Pos,
}

/// A compiled role.
#[derive(Debug, Clone)]
pub struct LoadedRole {
    /// A [`TaskBody::Role`] task (dependencies nested first, each with its own handlers;
    /// [`role_handlers`] collects them for the play).
    pub task: Task,
}

/// A parent on the dependency chain: what its dependencies inherit.
#[derive(Debug, Clone)]
struct Frame {
    defaults: Vec<(String, Value)>,
    vars: Vec<(String, Value)>,
    entry_vars: Vec<(String, Value)>,
    params: Vec<(String, Value)>,
}

/// Keys of a role entry that are keywords; every other key is a role parameter.
const ROLE_KEYWORDS: &[&str] = &[
    "role",
    "name",
    "vars",
    "when",
    "tags",
    "become",
    "become_user",
    "become_method",
    "become_flags",
    "become_exe",
    "check_mode",
    "diff",
    "environment",
    "ignore_errors",
    "ignore_unreachable",
    "no_log",
    "any_errors_fatal",
    "collections",
    "connection",
    "debugger",
    "delegate_to",
    "delegate_facts",
    "module_defaults",
    "port",
    "remote_user",
    "run_once",
    "throttle",
    "timeout",
];

/// Options of `import_role`/`include_role`.
const ROLE_TASK_OPTIONS: &[&str] = &[
    "name",
    "role",
    "tasks_from",
    "vars_from",
    "defaults_from",
    "handlers_from",
    "public",
    "allow_duplicates",
    "rolespec_validate",
];

fn invalid(message: impl Into<String>, pos: Pos) -> PlaybookError {
    PlaybookError::Invalid {
        message: message.into(),
        pos,
    }
}

/// Parses a `roles` entry or a `meta` dependency: a name, or a dict with `role:`/`name:`.
pub fn parse_role_entry(node: &Node) -> Result<RoleRequest, PlaybookError> {
    if let Some(name) = node.scalar_text() {
        return Ok(RoleRequest {
            name,
            params: Vec::new(),
            vars: Vec::new(),
            keywords: Inherited::default(),
            from: FromFiles::default(),
            from_include: false,
            public: None,
            allow_duplicates: None,
            pos: node.pos,
        });
    }
    let Some(entries) = node.as_map() else {
        return Err(invalid(
            format!(
                "role definitions must be a name or a dict, got a {}",
                node.type_name()
            ),
            node.pos,
        ));
    };
    let name = node
        .get("role")
        .or_else(|| node.get("name"))
        .and_then(Node::scalar_text)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("role definitions must contain a role name", node.pos))?;
    let mut params = Vec::new();
    for (key, value) in entries {
        let key_text = key.scalar_text().unwrap_or_default();
        if !ROLE_KEYWORDS.contains(&key_text.as_str()) {
            params.push((key_text, value.to_value()));
        }
    }
    let mut keywords = model::parse_inherited(node)?;
    let vars = std::mem::take(&mut keywords.vars);
    Ok(RoleRequest {
        name,
        params,
        vars,
        keywords,
        from: FromFiles::default(),
        from_include: false,
        public: None,
        allow_duplicates: None,
        pos: node.pos,
    })
}

/// Builds the request of an `import_role`/`include_role` task from its (untemplated or
/// templated) arguments; the task's own keywords stay on the task.
pub fn request_from_task(
    written: &str,
    args: &Value,
    task_vars: &[(String, Value)],
    pos: Pos,
) -> Result<RoleRequest, PlaybookError> {
    let text = |key: &str| -> Option<String> {
        args.get_attr(key)
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
            .map(|v| super::modules::value_to_string(&v))
    };
    let mut bad = Vec::new();
    if let Ok(keys) = args.try_iter() {
        for key in keys {
            let key = super::modules::value_to_string(&key);
            if !ROLE_TASK_OPTIONS.contains(&key.as_str()) {
                bad.push(key);
            }
        }
    }
    if !bad.is_empty() {
        return Err(invalid(
            format!("Invalid options for {written}: {}", bad.join(",")),
            pos,
        ));
    }
    let name = text("name")
        .or_else(|| text("role"))
        .ok_or_else(|| invalid(format!("'name' is a required field for {written}."), pos))?;
    let flag = |key: &str| -> Option<bool> {
        args.get_attr(key)
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
            .and_then(|v| super::modules::parse_bool(&v))
    };
    Ok(RoleRequest {
        name,
        params: Vec::new(),
        vars: task_vars.to_vec(),
        keywords: Inherited::default(),
        from: FromFiles {
            tasks: text("tasks_from"),
            vars: text("vars_from"),
            defaults: text("defaults_from"),
            handlers: text("handlers_from"),
        },
        from_include: true,
        public: flag("public"),
        allow_duplicates: Some(flag("allow_duplicates").unwrap_or(true)),
        pos,
    })
}

/// The directories searched for a role, in Ansible's order: `roles/` beside the
/// playbook, `ANSIBLE_ROLES_PATH` (or its defaults), the parent role's directory (for
/// dependencies), then the playbook's directory itself.
pub fn role_search_path(playbook_dir: &Path, parent_roles_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = vec![playbook_dir.join("roles")];
    match std::env::var("ANSIBLE_ROLES_PATH") {
        Ok(configured) if !configured.trim().is_empty() => {
            for entry in configured.split(':').filter(|e| !e.is_empty()) {
                let entry = match entry.strip_prefix("~/") {
                    Some(rest) => std::env::var_os("HOME")
                        .map(|home| PathBuf::from(home).join(rest))
                        .unwrap_or_else(|| PathBuf::from(entry)),
                    None => PathBuf::from(entry),
                };
                paths.push(if entry.is_relative() {
                    playbook_dir.join(entry)
                } else {
                    entry
                });
            }
        }
        _ => {
            if let Some(home) = std::env::var_os("HOME") {
                paths.push(PathBuf::from(home).join(".ansible/roles"));
            }
            paths.push(PathBuf::from("/usr/share/ansible/roles"));
            paths.push(PathBuf::from("/etc/ansible/roles"));
        }
    }
    if let Some(parent) = parent_roles_dir {
        paths.push(parent.to_path_buf());
    }
    paths.push(playbook_dir.to_path_buf());
    paths
}

/// Finds a role's directory, or Ansible's "the role 'x' was not found in ..." error.
/// Removes `.` and resolves `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn find_role(
    request: &RoleRequest,
    playbook_dir: &Path,
    parent_roles_dir: Option<&Path>,
) -> Result<(String, PathBuf), PlaybookError> {
    if super::template::is_template(&request.name) {
        return Err(invalid(
            format!(
                "the role name '{}' is templated, which the native runtime does not support",
                request.name
            ),
            request.pos,
        ));
    }
    let searched = role_search_path(playbook_dir, parent_roles_dir);
    for dir in &searched {
        // Lexically, as ansible-core's unfrackpath: `roles/../../` names the playbook
        // directory's parent even when `roles/` does not exist.
        let candidate = normalize(&dir.join(&request.name));
        if candidate.is_dir() {
            return Ok((request.name.clone(), candidate));
        }
    }
    let as_path = Path::new(&request.name);
    let as_path = if as_path.is_relative() {
        playbook_dir.join(as_path)
    } else {
        as_path.to_path_buf()
    };
    if as_path.is_dir() {
        let name = as_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| request.name.clone());
        return Ok((name, as_path));
    }
    let searched: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    Err(invalid(
        format!(
            "the role '{}' was not found in {}",
            request.name,
            searched.join(":")
        ),
        request.pos,
    ))
}

/// The file of a role's `subdir` to load: `main` (or `<subdir>_from`) with or without a
/// YAML extension; a missing `_from` file is an error, a missing `main` is not.
fn role_file(
    role_path: &Path,
    subdir: &str,
    from: Option<&str>,
    pos: Pos,
) -> Result<Option<PathBuf>, PlaybookError> {
    let base = role_path.join(subdir).join(from.unwrap_or("main"));
    let text = base.display().to_string();
    for candidate in [
        base.clone(),
        PathBuf::from(format!("{text}.yml")),
        PathBuf::from(format!("{text}.yaml")),
        PathBuf::from(format!("{text}.json")),
    ] {
        if candidate.is_file() {
            return Ok(Some(candidate));
        }
    }
    match from {
        Some(name) => Err(invalid(
            format!("Could not find specified file in role: {subdir}/{name}"),
            pos,
        )),
        None => Ok(None),
    }
}

/// Reads and parses a role file; errors name the file.
fn read_yaml(path: &Path) -> Result<Node, PlaybookError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlaybookError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    yaml::parse_one(&text).map_err(|e| in_file(path, PlaybookError::Yaml(e)))
}

/// Prefixes an error from a role file (or an imported playbook) with the file's path,
/// so its line means something.
pub(super) fn in_file(path: &Path, error: PlaybookError) -> PlaybookError {
    match error {
        PlaybookError::Invalid { message, pos } => PlaybookError::Invalid {
            message: format!("{}: {message}", path.display()),
            pos,
        },
        PlaybookError::Yaml(e) => PlaybookError::Invalid {
            message: format!(
                "{}: syntax error while loading YAML: {}",
                path.display(),
                e.message
            ),
            pos: e.pos,
        },
        other => other,
    }
}

fn load_vars_file(
    role: &str,
    role_path: &Path,
    subdir: &str,
    from: Option<&str>,
    pos: Pos,
) -> Result<Vec<(String, Value)>, PlaybookError> {
    let Some(path) = role_file(role_path, subdir, from, pos)? else {
        return Ok(Vec::new());
    };
    let node = read_yaml(&path)?;
    match &node.kind {
        NodeKind::Null => Ok(Vec::new()),
        NodeKind::Map(entries) => Ok(entries
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_value()))
            .collect()),
        _ => Err(invalid(
            format!(
                "The {subdir}/{} file for role '{role}' must contain a dictionary of variables",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            pos,
        )),
    }
}

fn load_task_file(
    role_path: &Path,
    subdir: &str,
    from: Option<&str>,
    playbook_dir: &Path,
    handlers: bool,
    pos: Pos,
) -> Result<Vec<Task>, PlaybookError> {
    let Some(path) = role_file(role_path, subdir, from, pos)? else {
        return Ok(Vec::new());
    };
    let node = read_yaml(&path)?;
    let dirs = Dirs {
        file_dir: path.parent().unwrap_or(role_path),
        playbook_dir,
        deferred: None,
    };
    let mut tasks =
        model::parse_task_list(&node, &dirs, handlers).map_err(|e| in_file(&path, e))?;
    model::set_file(&mut tasks, &Arc::new(path.clone()));
    Ok(tasks)
}

fn combine(layers: &[&[(String, Value)]]) -> Vec<(String, Value)> {
    layers.iter().flat_map(|l| l.iter().cloned()).collect()
}

/// Loads and compiles a role (and, recursively, its `meta` dependencies).
pub fn load_role(request: &RoleRequest, playbook_dir: &Path) -> Result<LoadedRole, PlaybookError> {
    load_with_chain(request, playbook_dir, None, &[])
}

fn load_with_chain(
    request: &RoleRequest,
    playbook_dir: &Path,
    parent_roles_dir: Option<&Path>,
    chain: &[Frame],
) -> Result<LoadedRole, PlaybookError> {
    if chain.len() > MAX_DEPTH {
        return Err(invalid(
            "A recursion loop was detected with the roles specified. Make sure child roles do not have dependencies on parent roles",
            request.pos,
        ));
    }
    let (name, path) = find_role(request, playbook_dir, parent_roles_dir)?;
    let pos = request.pos;
    let own_vars = load_vars_file(&name, &path, "vars", request.from.vars.as_deref(), pos)?;
    let own_defaults = load_vars_file(
        &name,
        &path,
        "defaults",
        request.from.defaults.as_deref(),
        pos,
    )?;
    let mut allow_duplicates = false;
    let mut dependencies = Vec::new();
    if let Some(meta_path) = role_file(&path, "meta", None, pos)? {
        let meta = read_yaml(&meta_path)?;
        if let Some(flag) = meta.get("allow_duplicates") {
            allow_duplicates = flag.kind == NodeKind::Bool(true);
        }
        if let Some(deps) = meta.get("dependencies") {
            match &deps.kind {
                NodeKind::Null => {}
                NodeKind::Seq(items) => {
                    for item in items {
                        dependencies
                            .push(parse_role_entry(item).map_err(|e| in_file(&meta_path, e))?);
                    }
                }
                _ => {
                    return Err(in_file(
                        &meta_path,
                        invalid("dependencies must be a list of roles", deps.pos),
                    ))
                }
            }
        }
    }
    let frame = Frame {
        defaults: own_defaults.clone(),
        vars: own_vars.clone(),
        entry_vars: request.vars.clone(),
        params: request.params.clone(),
    };
    let mut child_chain = chain.to_vec();
    child_chain.push(frame);
    let roles_dir = path.parent().map(Path::to_path_buf);
    let mut dependency_tasks = Vec::new();
    let mut dependency_defaults = Vec::new();
    let mut dependency_vars = Vec::new();
    for dependency in &dependencies {
        // Dependencies are errors at the entry in meta/main.yml, but the position alone
        // would point into the wrong file; name the file.
        let loaded = load_with_chain(dependency, playbook_dir, roles_dir.as_deref(), &child_chain)
            .map_err(|e| match &e {
                PlaybookError::Invalid { message, .. } if message.starts_with("the role '") => {
                    in_file(&path.join("meta/main.yml"), e)
                }
                _ => e,
            })?;
        if let TaskBody::Role { role, .. } = &loaded.task.body {
            dependency_defaults.extend(role.play_defaults.iter().cloned());
            dependency_vars.extend(role.exported_vars.iter().cloned());
        }
        dependency_tasks.push(loaded.task);
    }
    let parents_defaults: Vec<(String, Value)> = chain
        .iter()
        .flat_map(|f| f.defaults.iter().cloned())
        .collect();
    let parents_vars: Vec<(String, Value)> = chain
        .iter()
        .flat_map(|f| f.entry_vars.iter().chain(f.vars.iter()).cloned())
        .collect();
    let parents_params: Vec<(String, Value)> = chain
        .iter()
        .flat_map(|f| f.params.iter().cloned())
        .collect();
    let identity = format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        path.display(),
        request.params,
        request.keywords.when,
        request.keywords.tags,
        request.from,
        request.vars,
        request.from_include
    );
    let scope = Arc::new(RoleScope {
        name: name.clone(),
        path: path.clone(),
        identity,
        allow_duplicates: request.allow_duplicates.unwrap_or(allow_duplicates),
        from_include: request.from_include,
        public: request.public.unwrap_or(true),
        play_defaults: combine(&[&dependency_defaults, &own_defaults]),
        defaults: combine(&[&dependency_defaults, &parents_defaults, &own_defaults]),
        exported_vars: combine(&[&dependency_vars, &own_vars]),
        vars: combine(&[&parents_vars, &dependency_vars, &own_vars, &request.vars]),
        params: combine(&[&parents_params, &request.params]),
    });
    let own_tasks = load_task_file(
        &path,
        "tasks",
        request.from.tasks.as_deref(),
        playbook_dir,
        false,
        pos,
    )?;
    let mut handlers = load_task_file(
        &path,
        "handlers",
        request.from.handlers.as_deref(),
        playbook_dir,
        true,
        pos,
    )?;
    for handler in &mut handlers {
        handler.keywords.role = Some(Arc::clone(&scope));
    }
    let mut tasks = dependency_tasks;
    tasks.extend(own_tasks);
    let mut keywords = request.keywords.clone();
    keywords.role = Some(Arc::clone(&scope));
    Ok(LoadedRole {
        task: model::wrapper_task(
            TaskBody::Role {
                role: scope,
                tasks,
                handlers,
            },
            keywords,
            pos,
        ),
    })
}

/// The handlers roles add to a play, in Ansible's order: for each role task found in
/// `tasks` (depth first), its dependencies' handlers, then its own.
pub fn role_handlers(tasks: &[Task]) -> Vec<Task> {
    let mut out = Vec::new();
    for task in tasks {
        for list in task.children() {
            out.extend(role_handlers(list));
        }
        if let TaskBody::Role { handlers, .. } = &task.body {
            out.extend(handlers.iter().cloned());
        }
    }
    out
}

/// Roles imported with `import_role` somewhere in `tasks` that are public.
pub fn imported_public_roles(tasks: &[Task]) -> Vec<Arc<RoleScope>> {
    let mut out = Vec::new();
    for task in tasks {
        if let TaskBody::Role { role, .. } = &task.body {
            if role.public && role.from_include {
                out.push(Arc::clone(role));
            }
        }
        for list in task.children() {
            out.extend(imported_public_roles(list));
        }
    }
    out
}
