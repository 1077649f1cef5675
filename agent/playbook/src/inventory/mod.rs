//! Ansible inventories: hosts, groups and their variables, as ansible-core builds them.
//!
//! A run of this runtime plays ONE host, the local machine, under the name an inventory
//! gives it; the inventory decides which plays run (their `hosts:` patterns, `pattern`),
//! what `groups`, `group_names` and `hostvars` hold, and the inventory's variables with
//! Ansible's precedence (`vars_dirs`).
//!
//! Sources (`load`): an INI file (`ini`), a YAML/JSON file (`yml`), a directory of such
//! files, or a comma-separated host list (`web1,web2,`). Host ranges such as
//! `web[01:03]` are expanded by `ranges`.
//!
//! What does not live here: templating the variables (they are handed to the engine
//! raw and templated when used, like play vars) and running plays (`engine`).

mod ini;
pub mod pattern;
mod ranges;
mod vars_dirs;
mod yml;

use minijinja::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use vars_dirs::VarsDirs;

/// Variables in the order they were set; a later entry of the same name wins.
pub type Vars = Vec<(String, Value)>;

/// The most hosts one inventory may hold; past it loading fails (a range such as
/// `web[1:99999999]` would otherwise exhaust memory). This runtime plays one host.
pub const MAX_HOSTS: usize = 10_000;

/// The largest inventory or variables file read; a larger one is refused.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// The names Ansible gives its implicit localhost.
pub const LOCALHOST_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why an inventory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A file or directory could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// What was read.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE_BYTES`].
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// One line or entry of a file is not valid.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file is not valid as a whole (its structure, a group loop, too many hosts).
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or the source as given).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A host pattern (`--limit`, a play's `hosts`) is not valid or selects no host.
    #[error("{0}")]
    Pattern(String),
}

#[derive(Debug, Clone)]
struct Host {
    name: String,
    vars: Vars,
    /// The groups the host was added to (ancestors not included).
    groups: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    hosts: Vec<usize>,
    children: Vec<usize>,
    parents: Vec<usize>,
    vars: Vars,
    /// The longest distance from `all`, as ansible-core keeps it: deeper groups' variables win.
    depth: usize,
    /// `ansible_group_priority`: among groups of one depth, a higher priority wins.
    priority: i64,
}

const ALL: usize = 0;
const UNGROUPED: usize = 1;

/// Hosts and groups as ansible-core's `InventoryData` holds them after reconciling:
/// every group descends from `all`, a host in no group is in `ungrouped`.
#[derive(Debug, Clone)]
pub struct Inventory {
    hosts: Vec<Host>,
    groups: Vec<Group>,
    /// Names that also mean the only host (an inventory made without a source stands for
    /// this machine: `localhost`, `127.0.0.1` and its host names).
    aliases: Vec<String>,
    /// Each host's variables from every inventory layer, after [`Inventory::resolve_vars`].
    resolved: HashMap<String, Vars>,
    /// Each host's index in `hosts` by name, so that finding one does not walk them all
    /// (an inventory of 10,000 hosts is read in linear time).
    host_lookup: HashMap<String, usize>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory::new()
    }
}

impl Inventory {
    /// An empty inventory: the groups `all` and `ungrouped`, no host.
    pub fn new() -> Inventory {
        let mut inventory = Inventory {
            hosts: Vec::new(),
            groups: Vec::new(),
            aliases: Vec::new(),
            resolved: HashMap::new(),
            host_lookup: HashMap::new(),
        };
        inventory.add_group("all");
        inventory.add_group("ungrouped");
        inventory
            .add_child(ALL, UNGROUPED)
            .expect("ungrouped is a fresh child of all");
        inventory
    }

    /// The inventory of a run without `-i`: `host` alone in `ungrouped` (as
    /// `ansible-playbook -i HOST,`), also known by the names of this machine so that
    /// `hosts: localhost` or the machine's host name still reach it.
    pub fn implicit(host: &str) -> Inventory {
        let mut inventory = Inventory::new();
        inventory
            .add_host(host, Some(UNGROUPED))
            .expect("one host is within the limit");
        let nodename = crate::facts::nodename();
        let short = nodename.split('.').next().unwrap_or_default().to_string();
        inventory.aliases = LOCALHOST_NAMES.iter().map(|n| n.to_string()).collect();
        inventory.aliases.extend([nodename, short]);
        inventory.aliases.retain(|a| !a.is_empty() && a != host);
        inventory
    }

    /// Reads an inventory source as `-i` takes it: a file, a directory of files, or a
    /// comma-separated host list.
    pub fn load(source: &str) -> Result<Inventory, InventoryError> {
        let path = Path::new(source);
        let mut inventory = Inventory::new();
        if path.is_dir() {
            for file in directory_sources(path)? {
                read_source_file(&mut inventory, &file)?;
            }
        } else if path.exists() || !source.contains(',') {
            read_source_file(&mut inventory, path)?;
        } else {
            inventory.add_host_list(source)?;
        }
        inventory
            .reconcile()
            .map_err(|message| invalid(source, message))?;
        Ok(inventory)
    }

    /// Reads a YAML (or JSON) inventory given as text, touching no file: how the
    /// control plane checks a play's `hosts:` against the inventory a run will get.
    /// `name` stands for the source in messages.
    pub fn from_yaml_text(text: &str, name: &str) -> Result<Inventory, InventoryError> {
        let mut inventory = Inventory::new();
        yml::parse_into(&mut inventory, text, name)?;
        inventory
            .reconcile()
            .map_err(|message| invalid(name, message))?;
        Ok(inventory)
    }

    /// The hosts' names in the order they were first seen.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str())
    }

    /// Whether `name` is a host of this inventory.
    pub fn contains_host(&self, name: &str) -> bool {
        self.host_index(name).is_some()
    }

    /// Other names of the only host (see [`Inventory::implicit`]); empty for a loaded inventory.
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// `group_names` for `host`: its groups and their ancestors, sorted, without `all`
    /// (empty for a host outside the inventory).
    pub fn group_names(&self, host: &str) -> Vec<String> {
        let Some(index) = self.host_index(host) else {
            return Vec::new();
        };
        let mut names: Vec<String> = self
            .groups_of_host(index)
            .into_iter()
            .filter(|g| *g != ALL)
            .map(|g| self.groups[g].name.clone())
            .collect();
        names.sort();
        names
    }

    /// `groups`: every group with its hosts and those of its descendants, in
    /// inventory order.
    pub fn groups_map(&self) -> Vec<(String, Vec<String>)> {
        (0..self.groups.len())
            .map(|g| {
                let hosts = self.hosts_of_group(g);
                let names = hosts.iter().map(|h| self.hosts[*h].name.clone()).collect();
                (self.groups[g].name.clone(), names)
            })
            .collect()
    }

    /// The hosts of the group called `name` (with its descendants'), if there is one.
    pub fn group_hosts(&self, name: &str) -> Option<Vec<&str>> {
        let g = self.group_index(name)?;
        Some(
            self.hosts_of_group(g)
                .into_iter()
                .map(|h| self.hosts[h].name.as_str())
                .collect(),
        )
    }

    /// The names of every group, in the order they were created.
    pub fn group_names_all(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// `host`'s variables from the inventory and the `group_vars/`/`host_vars/`
    /// directories, in Ansible's precedence, after [`Inventory::resolve_vars`].
    pub fn vars_of(&self, host: &str) -> &[(String, Value)] {
        self.resolved.get(host).map(Vec::as_slice).unwrap_or(&[])
    }

    fn host_index(&self, name: &str) -> Option<usize> {
        self.host_lookup.get(name).copied()
    }

    fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// Adds a group unless it exists; returns its index.
    fn add_group(&mut self, name: &str) -> usize {
        if let Some(index) = self.group_index(name) {
            return index;
        }
        self.groups.push(Group {
            name: name.to_string(),
            hosts: Vec::new(),
            children: Vec::new(),
            parents: Vec::new(),
            vars: Vec::new(),
            depth: 0,
            priority: 1,
        });
        self.groups.len() - 1
    }

    /// Adds a host unless it exists, and puts it in `group`; returns its index.
    fn add_host(&mut self, name: &str, group: Option<usize>) -> Result<usize, String> {
        if name.is_empty() {
            return Err("invalid empty host name".into());
        }
        let index = match self.host_index(name) {
            Some(index) => index,
            None => {
                if self.hosts.len() >= MAX_HOSTS {
                    return Err(format!(
                        "more than {MAX_HOSTS} hosts: this runtime plays one host; split the inventory"
                    ));
                }
                self.hosts.push(Host {
                    name: name.to_string(),
                    vars: Vec::new(),
                    groups: Vec::new(),
                });
                self.host_lookup
                    .insert(name.to_string(), self.hosts.len() - 1);
                self.hosts.len() - 1
            }
        };
        if let Some(g) = group {
            // The host's own list of groups is short; the group's may hold every host.
            if !self.hosts[index].groups.contains(&g) {
                self.groups[g].hosts.push(index);
                self.hosts[index].groups.push(g);
            }
        }
        Ok(index)
    }

    fn remove_host_from(&mut self, group: usize, host: usize) {
        self.groups[group].hosts.retain(|h| *h != host);
        self.hosts[host].groups.retain(|g| *g != group);
    }

    /// Makes `child` a child group of `parent`, refusing loops; keeps depths as
    /// ansible-core does (a child is deeper than each of its parents).
    fn add_child(&mut self, parent: usize, child: usize) -> Result<(), String> {
        if self.groups[parent].children.contains(&child) {
            return Ok(());
        }
        if parent == child || self.ancestors(parent).contains(&child) {
            return Err(format!(
                "Adding group '{}' as child to '{}' creates a recursive dependency loop.",
                self.groups[child].name, self.groups[parent].name
            ));
        }
        self.groups[parent].children.push(child);
        self.groups[child].parents.push(parent);
        self.deepen(child, self.groups[parent].depth + 1);
        Ok(())
    }

    /// Raises `group`'s depth to at least `depth`, and its descendants' below it.
    fn deepen(&mut self, group: usize, depth: usize) {
        let mut pending = vec![(group, depth)];
        while let Some((g, depth)) = pending.pop() {
            if self.groups[g].depth >= depth {
                continue;
            }
            self.groups[g].depth = depth;
            pending.extend(self.groups[g].children.iter().map(|c| (*c, depth + 1)));
        }
    }

    fn set_group_var(&mut self, group: usize, name: &str, value: Value) -> Result<(), String> {
        if name == "ansible_group_priority" {
            let priority = value_as_int(&value)
                .ok_or_else(|| format!("ansible_group_priority must be an integer, not {value}"))?;
            self.groups[group].priority = priority;
            return Ok(());
        }
        set_var(&mut self.groups[group].vars, name, value);
        Ok(())
    }

    fn set_host_var(&mut self, host: usize, name: &str, value: Value) {
        set_var(&mut self.hosts[host].vars, name, value);
    }

    /// Adds the hosts of a `-i a,b,` list to `ungrouped`.
    fn add_host_list(&mut self, list: &str) -> Result<(), InventoryError> {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (host, port) = ranges::split_port(name);
            let index = self
                .add_host(host, Some(UNGROUPED))
                .map_err(|message| invalid(list, message))?;
            if let Some(port) = port {
                self.set_host_var(index, "ansible_port", Value::from(port));
            }
        }
        Ok(())
    }

    /// ansible-core's `reconcile_inventory`: groups without a parent become children of
    /// `all`; a host in no group joins `ungrouped`, one in another group leaves it.
    fn reconcile(&mut self) -> Result<(), String> {
        for g in 0..self.groups.len() {
            if g != ALL && self.groups[g].parents.is_empty() {
                self.add_child(ALL, g)?;
            }
        }
        for h in 0..self.hosts.len() {
            let groups = self.groups_of_host(h);
            if groups.contains(&UNGROUPED) {
                if groups.iter().any(|g| *g != ALL && *g != UNGROUPED) {
                    self.remove_host_from(UNGROUPED, h);
                }
            } else if groups.iter().all(|g| *g == ALL) {
                self.add_host(&self.hosts[h].name.clone(), Some(UNGROUPED))?;
            }
        }
        Ok(())
    }

    /// The ancestors of `group` (not itself).
    fn ancestors(&self, group: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        let mut pending = self.groups[group].parents.clone();
        while let Some(g) = pending.pop() {
            if !seen.contains(&g) {
                seen.push(g);
                pending.extend(self.groups[g].parents.iter().copied());
            }
        }
        seen
    }

    /// The groups of `host` with all their ancestors.
    fn groups_of_host(&self, host: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for g in &self.hosts[host].groups {
            for group in self.ancestors(*g).into_iter().chain([*g]) {
                if !out.contains(&group) {
                    out.push(group);
                }
            }
        }
        out
    }

    /// The hosts of `group` and its descendants, walked breadth first from the group
    /// itself, as ansible-core's `Group.get_hosts`.
    fn hosts_of_group(&self, group: usize) -> Vec<usize> {
        let mut order = vec![group];
        let mut next = 0;
        while next < order.len() {
            for child in &self.groups[order[next]].children {
                if !order.contains(child) {
                    order.push(*child);
                }
            }
            next += 1;
        }
        let mut hosts = Vec::new();
        let mut seen = vec![false; self.hosts.len()];
        for g in order {
            for h in &self.groups[g].hosts {
                if !seen[*h] {
                    seen[*h] = true;
                    hosts.push(*h);
                }
            }
        }
        hosts
    }

    /// The host's groups other than `all`, in the order their variables apply
    /// (ansible-core's `sort_groups`: depth, then priority, then name).
    fn sorted_groups_of_host(&self, host: usize) -> Vec<usize> {
        let mut groups: Vec<usize> = self
            .groups_of_host(host)
            .into_iter()
            .filter(|g| *g != ALL)
            .collect();
        groups.sort_by(|a, b| {
            let key = |g: &usize| {
                let group = &self.groups[*g];
                (group.depth, group.priority, group.name.clone())
            };
            key(a).cmp(&key(b))
        });
        groups
    }

    /// Computes every host's variables (and those of `extra_host`, a host outside the
    /// inventory such as the implicit localhost, which sees only `all`'s) from the
    /// inventory and the `group_vars/`/`host_vars/` directories in `dirs`.
    pub fn resolve_vars(
        &mut self,
        dirs: &VarsDirs,
        extra_host: Option<&str>,
    ) -> Result<(), InventoryError> {
        let mut reader = vars_dirs::Reader::default();
        let mut resolved = HashMap::new();
        for h in 0..self.hosts.len() {
            let vars = self.layered_vars(dirs, &mut reader, Some(h), &self.hosts[h].name)?;
            resolved.insert(self.hosts[h].name.clone(), vars);
        }
        if let Some(name) = extra_host.filter(|n| !self.contains_host(n)) {
            let vars = self.layered_vars(dirs, &mut reader, None, name)?;
            resolved.insert(name.to_string(), vars);
        }
        self.resolved = resolved;
        Ok(())
    }

    /// One host's variables, low to high as ansible-core's `VariableManager` stacks
    /// them by default: `all`'s inventory vars, the other groups' inventory vars,
    /// `group_vars/all` beside the inventory then beside the playbook, the other
    /// groups' `group_vars/` likewise, the host's inventory vars, then `host_vars/`
    /// beside the inventory and beside the playbook.
    fn layered_vars(
        &self,
        dirs: &VarsDirs,
        reader: &mut vars_dirs::Reader,
        host: Option<usize>,
        name: &str,
    ) -> Result<Vars, InventoryError> {
        let groups = host.map_or_else(Vec::new, |h| self.sorted_groups_of_host(h));
        let group_names: Vec<&str> = groups
            .iter()
            .map(|g| self.groups[*g].name.as_str())
            .collect();
        let mut vars = self.groups[ALL].vars.clone();
        for g in &groups {
            merge_vars(&mut vars, &self.groups[*g].vars);
        }
        for stage in [&dirs.inventory, &dirs.playbook] {
            merge_vars(&mut vars, &reader.group_vars(stage, &["all"])?);
        }
        for stage in [&dirs.inventory, &dirs.playbook] {
            merge_vars(&mut vars, &reader.group_vars(stage, &group_names)?);
        }
        if let Some(h) = host {
            merge_vars(&mut vars, &self.hosts[h].vars);
        }
        for stage in [&dirs.inventory, &dirs.playbook] {
            merge_vars(&mut vars, &reader.host_vars(stage, name)?);
        }
        Ok(vars)
    }
}

/// The host a run plays: the one `limit` selects, else the inventory's only host,
/// else `localhost`. A limit selecting no host, or more than one, is an error: this
/// runtime plays one host, the local machine.
pub fn run_host(inventory: &Inventory, limit: Option<&str>) -> Result<String, InventoryError> {
    let Some(limit) = limit.filter(|l| !pattern::split(l).is_empty()) else {
        let mut hosts = inventory.host_names();
        return Ok(match (hosts.next(), hosts.next()) {
            (Some(only), None) => only.to_string(),
            _ => "localhost".to_string(),
        });
    };
    let terms = pattern::limit_terms(limit)?;
    let selected: Vec<String> = pattern::select(inventory, &terms)?
        .into_iter()
        .filter(|h| inventory.contains_host(h))
        .collect();
    match selected.as_slice() {
        [] => Err(InventoryError::Pattern(
            "Specified inventory, host pattern and/or --limit leaves us with no hosts to target."
                .into(),
        )),
        [one] => Ok(one.clone()),
        many => Err(InventoryError::Pattern(format!(
            "--limit {limit} selects {} hosts ({}): this runtime plays one host, the local machine; limit it to one",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// The files of an inventory directory, sorted, without hidden files, backups and the
/// extensions ansible-core ignores, nor `group_vars`/`host_vars`.
fn directory_sources(dir: &Path) -> Result<Vec<PathBuf>, InventoryError> {
    const IGNORED: [&str; 12] = [
        ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg",
        ".retry",
    ];
    let entries = std::fs::read_dir(dir).map_err(|source| InventoryError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && !IGNORED.iter().any(|ext| name.ends_with(ext))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one inventory file into `inventory`: YAML for `.yml`/`.yaml`/`.json`, INI for
/// other extensions, and for a name without one YAML when it reads as a mapping.
fn read_source_file(inventory: &mut Inventory, path: &Path) -> Result<(), InventoryError> {
    let text = read_bounded(path)?;
    let shown = path.display().to_string();
    let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match extension.as_deref() {
        Some("yml" | "yaml" | "json") => yml::parse_into(inventory, &text, &shown)?,
        Some(_) => ini::parse_into(inventory, &text, &shown)?,
        None => match yml::as_yaml_inventory(&text) {
            Some(node) => yml::read_root(inventory, &node, &shown)?,
            None => ini::parse_into(inventory, &text, &shown)?,
        },
    }
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    for host in &mut inventory.hosts {
        if !host.vars.iter().any(|(k, _)| k == "inventory_file") {
            host.vars.insert(
                0,
                (
                    "inventory_dir".into(),
                    Value::from(dir.display().to_string()),
                ),
            );
            host.vars.insert(
                0,
                (
                    "inventory_file".into(),
                    Value::from(file.display().to_string()),
                ),
            );
        }
    }
    Ok(())
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as text.
fn read_bounded(path: &Path) -> Result<String, InventoryError> {
    let shown = path.display().to_string();
    let read_error = |source| InventoryError::Read {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_FILE_BYTES {
        return Err(InventoryError::TooLarge { path: shown });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

fn invalid(path: &str, message: impl Into<String>) -> InventoryError {
    InventoryError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Sets `name` in `vars`, replacing an earlier value.
fn set_var(vars: &mut Vars, name: &str, value: Value) {
    match vars.iter_mut().find(|(k, _)| k == name) {
        Some(entry) => entry.1 = value,
        None => vars.push((name.to_string(), value)),
    }
}

/// Lays `upper` over `vars` (Ansible's default `hash_behaviour=replace`).
fn merge_vars(vars: &mut Vars, upper: &[(String, Value)]) {
    for (name, value) in upper {
        set_var(vars, name, value.clone());
    }
}

fn value_as_int(value: &Value) -> Option<i64> {
    i64::try_from(value.clone())
        .ok()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `inventory_hostname_short`: the name up to its first dot, an IP address whole.
pub fn short_name(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_string();
    }
    host.split('.').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests;
