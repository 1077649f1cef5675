//! Inventories for playbook runs (issue 14): each run gets an Ansible inventory made of
//! its project's servers.
//!
//! * Hosts: every server of the project that is not `deleted`, named by its name (its
//!   `inventory_hostname`).
//! * Groups: the project itself ([`project_group`]: its name in lower case, every
//!   character Ansible does not allow in a group name turned into `_`), a server's
//!   Hetzner label `role=web` (group `web`, the value made valid the same way), and the
//!   groups an operator assigns on the server page or through the API
//!   (`server_inventory`).
//! * Variables: a server's host variables (`server_inventory.vars`) and a project's
//!   group variables (`group_vars`, keyed `project_id/group`; the group `all` holds the
//!   project's variables for every host). They are stored in plain text, not sealed:
//!   secrets belong in a script's secret variables.
//!
//! A run does not read these records when its job is sent: the inventory is built once
//! when the run is created ([`snapshot`]) and stored content-addressed in
//! `inventory_snapshots`, so a fan-out or a rollout over 10,000 servers stores one copy
//! for all of its executions (each names it by `Work::Playbook::inventory_id`), and a
//! later run over an unchanged project reuses it. A snapshot is forgotten
//! [`SNAPSHOT_KEEP_DAYS`] after its last use ([`prune_snapshots`]), longer than a queued
//! job may wait for its agent. The jobs read it at dispatch
//! ([`attach_to_specs`]), once per batch, shared between the batch's jobs.
//!
//! Facts (Ansible's fact cache): when a playbook job gathers facts on its server, the
//! agent reports them with the job's end and [`record_facts`] keeps the latest per
//! server (`server_facts`, keyed by the server's id, at most
//! `MAX_REPORTED_FACTS_BYTES`; forgotten when the server is marked deleted,
//! [`forget_facts`]). They are not part of a snapshot: [`attach_to_specs`] adds the
//! facts of the snapshot's hosts gathered in the last [`FACTS_MAX_AGE_HOURS`] when the
//! jobs are sent, so a job sees the freshest facts (those of a rollout's gather step,
//! `rollouts`) and a snapshot stays the same for an unchanged project.
//!
//! What does not live here: the inventory's format on the wire
//! (`dynserv_shared::inventory`), and how a host pattern selects hosts
//! (`dynserv_playbook::inventory`, which [`unmatched_targets`] uses to tell a rollout
//! whose plays match none of its targets before it starts).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dynserv_shared::inventory::{JobInventory, SharedInventory, Vars, MAX_INVENTORY_BYTES};
use dynserv_shared::proto::{GatheredFacts, JobKind, JobSpec, MAX_REPORTED_FACTS_BYTES};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::projects::Project;
use crate::servers::Server;
use crate::store::{IndexScan, Read, Record, Writer};

/// Operator groups of one project in use: `project_id/group` while a server is in it.
const GROUPS_INDEX: &str = "inventory_groups";
/// Snapshots by last use: `time/id`.
const SNAPSHOT_USED: &str = "inventory_snapshot_used";
/// A snapshot's entry in [`SNAPSHOT_USED`]: `id` → that key.
const SNAPSHOT_USED_KEY: &str = "inventory_snapshot_used_key";

/// Days a snapshot is kept after its last use: longer than the 30 days a queued job
/// may wait for its agent.
pub const SNAPSHOT_KEEP_DAYS: i64 = 31;
/// The most groups an operator may give one server.
pub const MAX_GROUPS_PER_SERVER: usize = 32;
/// The most bytes (as JSON) of one server's host variables.
pub const MAX_HOST_VARS_BYTES: usize = 16 * 1024;
/// The most bytes (as JSON) of one group's variables.
pub const MAX_GROUP_VARS_BYTES: usize = 64 * 1024;
/// The most groups with variables one project may have.
pub const MAX_GROUP_VARS_PER_PROJECT: usize = 500;
/// The longest group name.
pub const MAX_GROUP_NAME: usize = 64;

/// Hours a server's gathered facts are shown to other hosts: Ansible's default
/// `fact_caching_timeout` (a day). Older facts stay stored (the next gathering
/// replaces them) but no job is sent them.
pub const FACTS_MAX_AGE_HOURS: i64 = 24;

/// The Hetzner label whose value names a group (`role=web` → `web`).
pub const ROLE_LABEL: &str = "role";

/// Variables Ansible sets itself; an inventory may not set them.
const RESERVED_VARS: [&str; 12] = [
    "hostvars",
    "groups",
    "group_names",
    "inventory_hostname",
    "inventory_hostname_short",
    "inventory_dir",
    "inventory_file",
    "play_hosts",
    "ansible_play_hosts",
    "ansible_play_batch",
    "playbook_dir",
    "omit",
];

/// A server's operator-assigned groups and host variables (table `server_inventory`,
/// keyed by the server's id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInventory {
    /// The server's id.
    pub id: String,
    pub project_id: String,
    pub groups: Vec<String>,
    pub vars: Vars,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for ServerInventory {
    const TABLE: &'static str = "server_inventory";
    fn id(&self) -> &str {
        &self.id
    }
}

/// One group's variables in one project (table `group_vars`, keyed `project_id/group`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupVars {
    pub id: String,
    pub project_id: String,
    pub group: String,
    pub vars: Vars,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for GroupVars {
    const TABLE: &'static str = "group_vars";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The inventory a run got, stored once for every execution that uses it (table
/// `inventory_snapshots`, keyed by a hash of the project and the inventory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub id: String,
    pub project_id: String,
    pub created_at: DateTime<Utc>,
    pub inventory: JobInventory,
}

impl Record for InventorySnapshot {
    const TABLE: &'static str = "inventory_snapshots";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The facts last gathered on a server by a playbook job (table `server_facts`, keyed
/// by the server's id): the control plane's fact cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerFacts {
    /// The server's id.
    pub id: String,
    pub project_id: String,
    /// When the agent gathered them, by its clock.
    pub gathered_at: DateTime<Utc>,
    /// When the control plane stored them, by its clock (their age is judged by it).
    pub received_at: DateTime<Utc>,
    /// The execution whose run gathered them.
    pub execution_id: String,
    /// The facts without their `ansible_` prefix.
    pub facts: Vars,
}

impl Record for ServerFacts {
    const TABLE: &'static str = "server_facts";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Why reported facts were not kept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactsRejected {
    /// The execution has no server (an agent not attached to one): no inventory host
    /// could show them.
    #[error("the execution has no server")]
    NoServer,
    /// The server is gone or marked deleted.
    #[error("the server is deleted")]
    ServerDeleted,
    /// They take more than `MAX_REPORTED_FACTS_BYTES` as JSON.
    #[error("the facts take {0} bytes, more than {MAX_REPORTED_FACTS_BYTES}")]
    TooLarge(usize),
    /// `gathered_at` is not an RFC 3339 time.
    #[error("the facts' gathering time {0:?} is not an RFC 3339 time")]
    BadTime(String),
    /// Facts gathered later are already stored (a long job ended after a newer one).
    #[error("newer facts are stored")]
    Older,
}

/// Keeps the facts an execution's job reported as its server's latest, inside the
/// transaction that ends the execution (`server_id`: the execution's server). As
/// Ansible's fact cache does, they update the facts stored before (a run whose
/// `service_facts` alone reported `services` keeps the gathered ones, and the next
/// gathering keeps `services`), unless the two together would pass
/// `MAX_REPORTED_FACTS_BYTES`: then the report replaces them.
/// Facts that cannot be kept are refused with the reason (the caller logs it; the
/// execution's end is stored all the same).
pub fn record_facts(
    w: &mut Writer,
    server_id: Option<&str>,
    execution_id: &str,
    reported: &GatheredFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<Result<(), FactsRejected>> {
    let Some(server_id) = server_id else {
        return Ok(Err(FactsRejected::NoServer));
    };
    let size = serde_json::to_vec(&reported.facts)?.len();
    if size > MAX_REPORTED_FACTS_BYTES {
        return Ok(Err(FactsRejected::TooLarge(size)));
    }
    let Ok(gathered_at) = DateTime::parse_from_rfc3339(&reported.gathered_at) else {
        return Ok(Err(FactsRejected::BadTime(reported.gathered_at.clone())));
    };
    let gathered_at = gathered_at.with_timezone(&Utc);
    let Some(server) = w
        .get::<Server>(server_id)?
        .filter(|s| s.status != "deleted")
    else {
        return Ok(Err(FactsRejected::ServerDeleted));
    };
    let mut facts = reported.facts.clone();
    if let Some(stored) = w.get::<ServerFacts>(server_id)? {
        if stored.gathered_at > gathered_at {
            return Ok(Err(FactsRejected::Older));
        }
        if stored.project_id == server.project_id {
            let mut merged = stored.facts;
            merged.extend(facts.clone());
            if serde_json::to_vec(&merged)?.len() <= MAX_REPORTED_FACTS_BYTES {
                facts = merged;
            }
        }
    }
    w.put(&ServerFacts {
        id: server.id,
        project_id: server.project_id,
        gathered_at,
        received_at: now,
        execution_id: execution_id.to_string(),
        facts,
    })?;
    Ok(Ok(()))
}

/// The facts kept for a server (none when a record left from another project would be
/// shown: a server moved to another project starts without facts).
pub fn facts_of_server(r: &impl Read, server: &Server) -> anyhow::Result<Option<ServerFacts>> {
    Ok(r.get::<ServerFacts>(&server.id)?
        .filter(|f| f.project_id == server.project_id))
}

/// Forgets a server's facts (it was marked deleted).
pub fn forget_facts(w: &mut Writer, server_id: &str) -> anyhow::Result<()> {
    w.remove::<ServerFacts>(server_id)
}

/// Hosts whose stored facts are read at a time (one query each on PostgreSQL).
const FACTS_CHUNK: usize = 64;

/// The facts shown to the hosts of a project's inventory: each host's stored facts
/// received after `fresh_since`, in the inventory's host order, until the inventory
/// with them would pass `MAX_INVENTORY_BYTES` (that host and those after it go
/// without, as if none were known, and `facts_left_out_from` names the first of
/// them, for the agent to say so). `load` reads the stored facts of a chunk of host
/// names, so a project of thousands of servers reads only the few dozen hosts' facts
/// that fit, never every server's; pure besides `load`, so the budget is tested
/// without a store.
pub fn facts_for_hosts(
    inventory: &mut JobInventory,
    fresh_since: DateTime<Utc>,
    mut load: impl FnMut(&[String]) -> anyhow::Result<Vec<(String, ServerFacts)>>,
) -> anyhow::Result<()> {
    let mut size = serde_json::to_vec(inventory).map_or(usize::MAX, |b| b.len());
    // `"facts":{` and its closing brace, and `"facts_left_out_from":N`.
    size = size.saturating_add(10 + 36);
    let mut out = BTreeMap::new();
    let mut left_out_from = None;
    'hosts: for (chunk, names) in inventory.hosts.chunks(FACTS_CHUNK).enumerate() {
        let stored = load(names)?;
        let by_name: HashMap<&str, &ServerFacts> = stored
            .iter()
            .filter(|(_, f)| f.received_at >= fresh_since)
            .map(|(name, f)| (name.as_str(), f))
            .collect();
        for (i, host) in names.iter().enumerate() {
            let Some(facts) = by_name.get(host.as_str()) else {
                continue;
            };
            let entry = GatheredFacts {
                gathered_at: facts.gathered_at.to_rfc3339(),
                facts: facts.facts.clone(),
            };
            // The entry's JSON, its quoted name, the colon and a comma.
            let cost = serde_json::to_vec(&entry).map_or(usize::MAX, |b| b.len()) + host.len() + 4;
            if size.saturating_add(cost) > MAX_INVENTORY_BYTES {
                left_out_from = u32::try_from(chunk * FACTS_CHUNK + i).ok();
                break 'hosts;
            }
            size += cost;
            out.insert(host.clone(), entry);
        }
    }
    inventory.facts = out;
    inventory.facts_left_out_from = left_out_from;
    Ok(())
}

/// The stored facts of the servers of a project named `names`, with those names.
fn stored_facts_named(
    r: &impl Read,
    project_id: &str,
    names: &[String],
) -> anyhow::Result<Vec<(String, ServerFacts)>> {
    let found: Vec<(String, String)> = names
        .iter()
        .cloned()
        .zip(crate::servers::ids_by_name(r, project_id, names)?)
        .filter_map(|(name, id)| Some((name, id?)))
        .collect();
    let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
    Ok(found
        .into_iter()
        .zip(r.get_many::<ServerFacts>(&ids)?)
        .filter_map(|((name, _), facts)| {
            let facts = facts.filter(|f| f.project_id == project_id)?;
            Some((name, facts))
        })
        .collect())
}

/// Whether `name` is a valid Ansible group name: letters, digits and `_`, not
/// starting with a digit (what ansible-core accepts without transforming it).
pub fn valid_group_name(name: &str) -> bool {
    valid_identifier(name) && name.len() <= MAX_GROUP_NAME
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A text made into a valid group name as ansible-core's `TRANSFORM_INVALID_GROUP_CHARS`
/// does (each invalid character becomes `_`), lower case, at most
/// [`MAX_GROUP_NAME`] characters; `None` when nothing is left.
pub fn group_name_from(text: &str) -> Option<String> {
    let mut name: String = text
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_GROUP_NAME)
        .collect();
    if name.trim_matches('_').is_empty() {
        return None;
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
        name.truncate(MAX_GROUP_NAME);
    }
    Some(name)
}

/// The group every server of a project is in: the project's name made a valid group
/// name ([`group_name_from`]), `project_` before it when that would be `all` or
/// `ungrouped` (or nothing is left: `project`).
pub fn project_group(project_name: &str) -> String {
    match group_name_from(project_name) {
        Some(name) if name != "all" && name != "ungrouped" => name,
        Some(name) => format!("project_{name}"),
        None => "project".to_string(),
    }
}

/// One server as the inventory sees it.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub vars: Vars,
}

/// The inventory of a project (pure): its group, each host's label and operator
/// groups, host and group variables. Hosts keep the order given.
pub fn assemble(
    project_group: &str,
    hosts: &[Host],
    group_vars: &[(String, Vars)],
) -> JobInventory {
    let mut inventory = JobInventory::default();
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (index, host) in hosts.iter().enumerate() {
        let index = index as u32;
        inventory.hosts.push(host.name.clone());
        let mut names = BTreeSet::new();
        names.insert(project_group.to_string());
        if let Some(role) = host.labels.get(ROLE_LABEL).and_then(|r| group_name_from(r)) {
            if role != "all" && role != "ungrouped" {
                names.insert(role);
            }
        }
        names.extend(host.groups.iter().cloned());
        for name in names {
            groups.entry(name).or_default().push(index);
        }
        if !host.vars.is_empty() {
            inventory
                .host_vars
                .insert(host.name.clone(), host.vars.clone());
        }
    }
    for (group, vars) in group_vars {
        if !vars.is_empty() {
            inventory.group_vars.insert(group.clone(), vars.clone());
        }
    }
    inventory.groups = groups;
    inventory
}

/// Builds a project's inventory from its records: the servers not deleted, in name
/// order, with their operator groups and variables, and the project's group variables.
pub fn build(r: &impl Read, project: &Project) -> anyhow::Result<JobInventory> {
    let ids = crate::servers::ids_in_project(r, &project.id)?;
    let servers = r.get_many::<Server>(&ids)?;
    let extras = r.get_many::<ServerInventory>(&ids)?;
    let mut hosts = Vec::with_capacity(ids.len());
    for (server, extra) in servers.into_iter().zip(extras) {
        let Some(server) = server.filter(|s| s.status != "deleted") else {
            continue;
        };
        let (groups, vars) = extra.map(|e| (e.groups, e.vars)).unwrap_or_default();
        hosts.push(Host {
            name: server.name,
            labels: server.labels,
            groups,
            vars,
        });
    }
    let group_vars: Vec<(String, Vars)> = group_vars_of(r, &project.id)?
        .into_iter()
        .map(|g| (g.group, g.vars))
        .collect();
    Ok(assemble(&project_group(&project.name), &hosts, &group_vars))
}

/// A project's group variables, by group name.
pub fn group_vars_of(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<GroupVars>> {
    r.records_page::<GroupVars>(&IndexScan::prefix(
        "",
        &format!("{project_id}/"),
        MAX_GROUP_VARS_PER_PROJECT,
    ))
}

/// The groups an operator may pick for a server of the project: those other servers
/// are in and those with variables, sorted.
pub fn group_suggestions(r: &impl Read, project: &Project) -> anyhow::Result<Vec<String>> {
    let mut names: BTreeSet<String> = r
        .index_scan(GROUPS_INDEX, &format!("{}/", project.id))?
        .into_iter()
        .filter_map(|(key, _)| key.rsplit_once('/').map(|(_, g)| g.to_string()))
        .collect();
    names.extend(group_vars_of(r, &project.id)?.into_iter().map(|g| g.group));
    names.insert(project_group(&project.name));
    names.remove("all");
    Ok(names.into_iter().collect())
}

/// A server's groups and host variables (empty when never set).
pub fn of_server(r: &impl Read, server: &Server) -> anyhow::Result<ServerInventory> {
    Ok(r.get::<ServerInventory>(&server.id)?
        .unwrap_or_else(|| ServerInventory {
            id: server.id.clone(),
            project_id: server.project_id.clone(),
            groups: Vec::new(),
            vars: Vars::new(),
            updated_by: String::new(),
            updated_at: server.created_at,
        }))
}

/// The groups a server is in when a run is created: the project's, its role label's
/// and its operator groups, sorted.
pub fn effective_groups(project: &Project, server: &Server, own: &[String]) -> Vec<String> {
    let mut names: BTreeSet<String> = own.iter().cloned().collect();
    names.insert(project_group(&project.name));
    if let Some(role) = server
        .labels
        .get(ROLE_LABEL)
        .and_then(|r| group_name_from(r))
    {
        if role != "all" && role != "ungrouped" {
            names.insert(role);
        }
    }
    names.into_iter().collect()
}

/// Variables as given: a JSON object, or YAML (or JSON) text of a mapping; an empty
/// text is no variables. Names must be valid variable names and not Ansible's own.
pub fn parse_vars(field: &str, given: &serde_json::Value, max_bytes: usize) -> AppResult<Vars> {
    let vars = match given {
        serde_json::Value::Null => Vars::new(),
        serde_json::Value::Object(map) => map.clone(),
        serde_json::Value::String(text) if text.trim().is_empty() => Vars::new(),
        serde_json::Value::String(text) => {
            let node = dynserv_playbook::yaml::parse_one(text).map_err(|e| {
                AppError::invalid(
                    field,
                    format!("not valid YAML (line {}): {}", e.pos.line, e.message),
                )
            })?;
            let value = serde_json::to_value(node.to_value())
                .map_err(|e| AppError::invalid(field, format!("not valid variables: {e}")))?;
            match value {
                serde_json::Value::Null => Vars::new(),
                serde_json::Value::Object(map) => map,
                _ => {
                    return Err(AppError::invalid(
                        field,
                        "variables must be a mapping of names to values (name: value)",
                    ))
                }
            }
        }
        _ => {
            return Err(AppError::invalid(
                field,
                "variables must be an object, or YAML text of a mapping",
            ))
        }
    };
    if let Some(bad) = vars.keys().find(|k| !valid_identifier(k) || k.len() > 128) {
        return Err(AppError::invalid(
            field,
            format!(
                "{:?} is not a valid variable name (letters, digits and _, not starting with a digit)",
                crate::validate::echo(bad)
            ),
        ));
    }
    if let Some(reserved) = vars.keys().find(|k| RESERVED_VARS.contains(&k.as_str())) {
        return Err(AppError::invalid(
            field,
            format!("{reserved} is set by Ansible itself and cannot be an inventory variable"),
        ));
    }
    let size = serde_json::to_vec(&vars).map_or(usize::MAX, |v| v.len());
    if size > max_bytes {
        return Err(AppError::invalid(
            field,
            format!("the variables take {size} bytes, more than the {max_bytes} allowed"),
        ));
    }
    Ok(vars)
}

/// Checks operator group names: valid Ansible group names, not `all` or
/// `ungrouped`, at most [`MAX_GROUPS_PER_SERVER`]; answers them sorted, each once.
pub fn parse_groups(given: &[String]) -> AppResult<Vec<String>> {
    let mut out = BTreeSet::new();
    for group in given.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
        if group == "all" || group == "ungrouped" {
            return Err(AppError::invalid(
                "groups",
                format!("{group} is Ansible's own group; every server is in it already"),
            ));
        }
        if !valid_group_name(group) {
            let hint = group_name_from(group)
                .filter(|g| valid_group_name(g))
                .map(|g| format!(" (try {g})"))
                .unwrap_or_default();
            return Err(AppError::invalid(
                "groups",
                format!(
                    "{:?} is not a valid group name: letters, digits and _, not starting with a digit{hint}",
                    crate::validate::echo(group)
                ),
            ));
        }
        out.insert(group.to_string());
    }
    if out.len() > MAX_GROUPS_PER_SERVER {
        return Err(AppError::invalid(
            "groups",
            format!("at most {MAX_GROUPS_PER_SERVER} groups per server"),
        ));
    }
    Ok(out.into_iter().collect())
}

/// Stores a server's groups and host variables, keeping the project's group index,
/// audited in the same transaction.
pub fn save_server(
    w: &mut Writer,
    actor: &Actor,
    server: &Server,
    groups: Vec<String>,
    vars: Vars,
) -> anyhow::Result<ServerInventory> {
    let before = of_server(w, server)?;
    let old: BTreeSet<&String> = before.groups.iter().collect();
    let new: BTreeSet<&String> = groups.iter().collect();
    for added in new.difference(&old) {
        let name = format!("{GROUPS_INDEX}/{}/{added}", server.project_id);
        if w.counter_add(&name, 1)? == 1 {
            w.index_put(
                GROUPS_INDEX,
                &format!("{}/{added}", server.project_id),
                added,
            )?;
        }
    }
    for removed in old.difference(&new) {
        let name = format!("{GROUPS_INDEX}/{}/{removed}", server.project_id);
        if w.counter_add(&name, -1)? == 0 {
            w.index_delete(GROUPS_INDEX, &format!("{}/{removed}", server.project_id))?;
        }
    }
    let record = ServerInventory {
        id: server.id.clone(),
        project_id: server.project_id.clone(),
        groups,
        vars,
        updated_by: actor.username.clone(),
        updated_at: Utc::now(),
    };
    w.put(&record)?;
    audit::record(
        w,
        actor,
        "server.inventory",
        &format!("server:{}", server.name),
        format!(
            "groups [{}], {} host variables",
            record.groups.join(", "),
            record.vars.len()
        ),
    )?;
    Ok(record)
}

/// Stores (or, with no variables, removes) one group's variables, audited in the
/// same transaction.
pub fn save_group_vars(
    w: &mut Writer,
    actor: &Actor,
    project: &Project,
    group: &str,
    vars: Vars,
) -> AppResult<GroupVars> {
    if group != "all" && !valid_group_name(group) {
        return Err(AppError::invalid(
            "group",
            "not a valid group name: letters, digits and _, not starting with a digit",
        ));
    }
    let id = format!("{}/{group}", project.id);
    let exists = w.get::<GroupVars>(&id)?.is_some();
    if !exists
        && !vars.is_empty()
        && group_vars_of(w, &project.id)?.len() >= MAX_GROUP_VARS_PER_PROJECT
    {
        return Err(AppError::invalid(
            "group",
            format!("at most {MAX_GROUP_VARS_PER_PROJECT} groups with variables per project"),
        ));
    }
    let record = GroupVars {
        id: id.clone(),
        project_id: project.id.clone(),
        group: group.to_string(),
        vars,
        updated_by: actor.username.clone(),
        updated_at: Utc::now(),
    };
    if record.vars.is_empty() {
        w.remove::<GroupVars>(&id)?;
    } else {
        w.put(&record)?;
    }
    audit::record(
        w,
        actor,
        "project.group_vars",
        &format!("project:{}", project.name),
        format!("group {group}: {} variables", record.vars.len()),
    )?;
    Ok(record)
}

/// One group's variables (empty when none are set).
pub fn group_vars(r: &impl Read, project_id: &str, group: &str) -> anyhow::Result<Vars> {
    Ok(r.get::<GroupVars>(&format!("{project_id}/{group}"))?
        .map(|g| g.vars)
        .unwrap_or_default())
}

/// The inventory a run in `project` gets now: built from the records, stored once by
/// its content (an unchanged project's runs share one snapshot) and marked used now.
/// Refused when it is larger than a job may carry.
pub fn snapshot(w: &mut Writer, project: &Project) -> AppResult<(String, JobInventory)> {
    let inventory = build(w, project)?;
    let bytes = serde_json::to_vec(&inventory).map_err(anyhow::Error::from)?;
    if bytes.len() > MAX_INVENTORY_BYTES {
        return Err(AppError::invalid(
            "inventory",
            format!(
                "the project's inventory takes {} bytes, more than the {MAX_INVENTORY_BYTES} a job can carry: shorten host and group variables",
                bytes.len()
            ),
        ));
    }
    let mut hash = sha2::Sha256::new();
    hash.update(project.id.as_bytes());
    hash.update([0]);
    hash.update(&bytes);
    let id = hex::encode(&hash.finalize()[..16]);
    let now = Utc::now();
    let previous = w.index_get(SNAPSHOT_USED_KEY, &id)?;
    match &previous {
        Some(key) => w.index_delete(SNAPSHOT_USED, key)?,
        None => w.put(&InventorySnapshot {
            id: id.clone(),
            project_id: project.id.clone(),
            created_at: now,
            inventory: inventory.clone(),
        })?,
    }
    let key = format!("{}/{id}", now.format("%Y%m%dT%H%M%S%.6fZ"));
    w.index_put(SNAPSHOT_USED, &key, &id)?;
    w.index_put(SNAPSHOT_USED_KEY, &id, &key)?;
    Ok((id, inventory))
}

/// Marks a snapshot used now (a rollout's later batch), so it outlives its jobs.
pub fn touch(w: &mut Writer, id: &str) -> anyhow::Result<()> {
    let Some(previous) = w.index_get(SNAPSHOT_USED_KEY, id)? else {
        return Ok(());
    };
    w.index_delete(SNAPSHOT_USED, &previous)?;
    let key = format!("{}/{id}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
    w.index_put(SNAPSHOT_USED, &key, id)?;
    w.index_put(SNAPSHOT_USED_KEY, id, &key)
}

/// Forgets at most `limit` snapshots last used before `now` minus
/// [`SNAPSHOT_KEEP_DAYS`]; answers how many.
pub fn prune_snapshots(w: &mut Writer, now: DateTime<Utc>, limit: usize) -> anyhow::Result<usize> {
    let cutoff = (now - Duration::days(SNAPSHOT_KEEP_DAYS))
        .format("%Y%m%dT%H%M%S%.6fZ")
        .to_string();
    let mut pruned = 0;
    for (key, id) in w.index_page(&IndexScan::prefix(SNAPSHOT_USED, "", limit))? {
        if key.as_str() >= cutoff.as_str() {
            break;
        }
        w.remove::<InventorySnapshot>(&id)?;
        w.index_delete(SNAPSHOT_USED, &key)?;
        w.index_delete(SNAPSHOT_USED_KEY, &id)?;
        pruned += 1;
    }
    Ok(pruned)
}

/// Adds their inventories to the jobs of playbook executions (by their stored
/// `inventory_id`), each snapshot read once, with the facts its hosts have now
/// ([`facts_for_hosts`]), and shared by the jobs that use it. A job
/// whose snapshot is gone is sent without one (logged): its play then sees only
/// its own host.
pub fn attach_to_specs(
    r: &impl Read,
    executions: &[crate::executions::Execution],
    specs: &mut [JobSpec],
) -> anyhow::Result<()> {
    let wanted: Vec<String> = executions
        .iter()
        .filter_map(|e| match &e.work {
            crate::executions::Work::Playbook { inventory_id, .. } => inventory_id.clone(),
            _ => None,
        })
        .collect::<HashSet<String>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let fresh_since = Utc::now() - Duration::hours(FACTS_MAX_AGE_HOURS);
    let mut found: HashMap<String, SharedInventory> = HashMap::new();
    for (id, snapshot) in wanted
        .iter()
        .cloned()
        .zip(r.get_many::<InventorySnapshot>(&wanted)?)
    {
        let Some(snapshot) = snapshot else { continue };
        let mut inventory = snapshot.inventory;
        facts_for_hosts(&mut inventory, fresh_since, |names| {
            stored_facts_named(r, &snapshot.project_id, names)
        })?;
        found.insert(id, SharedInventory(Arc::new(inventory)));
    }
    for (execution, spec) in executions.iter().zip(specs.iter_mut()) {
        let crate::executions::Work::Playbook {
            inventory_id: Some(id),
            ..
        } = &execution.work
        else {
            continue;
        };
        if let JobKind::Playbook { inventory, .. } = &mut spec.kind {
            match found.get(id) {
                Some(shared) => *inventory = Some(shared.clone()),
                None => tracing::warn!(
                    execution = %execution.id,
                    "the inventory snapshot {id} is gone; the job goes without it"
                ),
            }
        }
    }
    Ok(())
}

/// The `hosts:` terms of each play of a playbook, `None` for a play that cannot be
/// judged before it runs (templated hosts, an `import_playbook`), or when the text
/// does not parse (its validation reports that).
pub fn play_patterns(playbook: &str) -> Option<Vec<Option<Vec<String>>>> {
    let node = dynserv_playbook::yaml::parse_one(playbook).ok()?;
    let dynserv_playbook::yaml::NodeKind::Seq(plays) = &node.kind else {
        return None;
    };
    Some(
        plays
            .iter()
            .map(|play| {
                let hosts = play.get("hosts")?;
                let value = hosts.to_value();
                let terms = dynserv_playbook::inventory::pattern::terms(&value);
                if terms.iter().any(|t| t.contains("{{") || t.contains("{%")) {
                    return None;
                }
                Some(terms)
            })
            .collect(),
    )
}

/// The hosts of `inventory` that at least one play selects; `None` when some play
/// cannot be judged before it runs (then every host may be).
pub fn selected_hosts(
    inventory: &JobInventory,
    plays: &[Option<Vec<String>>],
) -> Result<Option<HashSet<String>>, String> {
    let text = inventory.to_ansible().to_string();
    let parsed = dynserv_playbook::inventory::Inventory::from_yaml_text(&text, "inventory")
        .map_err(|e| e.to_string())?;
    let mut selected = HashSet::new();
    for play in plays {
        let Some(terms) = play else {
            return Ok(None);
        };
        for host in dynserv_playbook::inventory::pattern::select(&parsed, terms)
            .map_err(|e| e.to_string())?
        {
            selected.insert(host);
        }
    }
    Ok(Some(selected))
}

/// Of `targets` (each a project's inventory and a host name in it), the names no play
/// of `playbook` selects; empty when every target has a play or the plays cannot be
/// judged before they run. Each inventory is read once.
pub fn unmatched_targets(
    playbook: &str,
    targets: &[(&JobInventory, &str)],
) -> Result<Vec<String>, String> {
    let Some(plays) = play_patterns(playbook) else {
        return Ok(Vec::new());
    };
    let mut by_inventory: HashMap<*const JobInventory, Option<HashSet<String>>> = HashMap::new();
    let mut unmatched = Vec::new();
    for (inventory, host) in targets {
        let key = *inventory as *const JobInventory;
        if let std::collections::hash_map::Entry::Vacant(entry) = by_inventory.entry(key) {
            entry.insert(selected_hosts(inventory, &plays)?);
        }
        match by_inventory.get(&key).and_then(|s| s.as_ref()) {
            Some(selected) if !selected.contains(*host) => unmatched.push(host.to_string()),
            _ => {}
        }
    }
    Ok(unmatched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn stored_facts(
        name: &str,
        received_at: &str,
        facts: serde_json::Value,
    ) -> (String, ServerFacts) {
        (
            name.to_string(),
            ServerFacts {
                id: format!("id-{name}"),
                project_id: "p1".into(),
                gathered_at: at(received_at),
                received_at: at(received_at),
                execution_id: "e1".into(),
                facts: facts.as_object().unwrap().clone(),
            },
        )
    }

    /// A `load` for [`facts_for_hosts`] that answers from `stored`.
    fn loader(
        stored: &[(String, ServerFacts)],
    ) -> impl FnMut(&[String]) -> anyhow::Result<Vec<(String, ServerFacts)>> + '_ {
        move |names| {
            Ok(stored
                .iter()
                .filter(|(n, _)| names.contains(n))
                .cloned()
                .collect())
        }
    }

    /// The inventory's hosts get their stored facts received since the cut-off, the
    /// stale and unknown ones none, and hosts past the inventory's byte bound none.
    #[test]
    fn facts_for_hosts_keeps_fresh_facts_within_the_bound() {
        let inventory = JobInventory {
            hosts: vec![
                "web-1".into(),
                "web-2".into(),
                "db-1".into(),
                "new-1".into(),
            ],
            ..Default::default()
        };
        let stored = [
            stored_facts("web-1", "2026-12-05T10:00:00Z", json!({"hostname": "w1"})),
            stored_facts("web-2", "2026-12-03T10:00:00Z", json!({"hostname": "w2"})),
            stored_facts("db-1", "2026-12-05T09:00:00Z", json!({"hostname": "d1"})),
            stored_facts("gone", "2026-12-05T09:00:00Z", json!({"hostname": "g"})),
        ];
        let mut with = inventory.clone();
        facts_for_hosts(&mut with, at("2026-12-04T10:00:00Z"), loader(&stored)).unwrap();
        assert_eq!(with.facts.keys().collect::<Vec<_>>(), ["db-1", "web-1"]);
        assert_eq!(with.facts["web-1"].facts["hostname"], "w1");
        assert_eq!(with.facts["web-1"].gathered_at, "2026-12-05T10:00:00+00:00");
        assert_eq!(with.facts_left_out_from, None, "all fit");
        assert!(serde_json::to_vec(&with).unwrap().len() <= MAX_INVENTORY_BYTES);

        // Facts of 40 KB each: the bound takes ten or so, in host order, and names
        // the first host left out.
        let big = "x".repeat(40 * 1024);
        let many: Vec<(String, ServerFacts)> = (0..30)
            .map(|i| {
                stored_facts(
                    &format!("h{i:02}"),
                    "2026-12-05T10:00:00Z",
                    json!({"blob": big}),
                )
            })
            .collect();
        let mut with = JobInventory {
            hosts: many.iter().map(|(n, _)| n.clone()).collect(),
            ..Default::default()
        };
        facts_for_hosts(&mut with, at("2026-12-04T10:00:00Z"), loader(&many)).unwrap();
        let kept = with.facts.len();
        assert!((9..=11).contains(&kept), "{kept}");
        assert!(with.facts.contains_key("h00") && !with.facts.contains_key("h29"));
        assert_eq!(with.facts_left_out_from, Some(kept as u32));
        assert!(serde_json::to_vec(&with).unwrap().len() <= MAX_INVENTORY_BYTES);
    }

    /// Reported facts are kept per server, the newest gathering wins, bad or oversized
    /// reports and those of executions without a live server are refused, and a
    /// server marked deleted loses its facts.
    #[test]
    fn record_facts_keeps_the_latest_per_server_until_the_server_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let now = at("2026-12-05T10:00:00Z");
        let mut server: Server = serde_json::from_value(json!({
            "id": "s1", "name": "web-1", "project_id": "p1", "status": "running",
            "server_type": null, "location": null, "image": null, "ipv4": null,
            "ipv6": null, "hetzner_id": null, "agent_id": "a1",
            "monthly_cost": null, "labels": {}, "created_at": now, "updated_at": now}))
        .unwrap();
        let report = |gathered_at: &str, hostname: &str| GatheredFacts {
            gathered_at: gathered_at.into(),
            facts: json!({"hostname": hostname}).as_object().unwrap().clone(),
        };
        store
            .write(|w| {
                crate::servers::save(w, &server)?;
                let keep = |w: &mut Writer, server: Option<&str>, r: &GatheredFacts| {
                    record_facts(w, server, "e1", r, now)
                };
                assert_eq!(
                    keep(w, None, &report("2026-12-05T09:00:00Z", "a"))?,
                    Err(FactsRejected::NoServer)
                );
                assert_eq!(
                    keep(w, Some("s9"), &report("2026-12-05T09:00:00Z", "a"))?,
                    Err(FactsRejected::ServerDeleted)
                );
                assert_eq!(
                    keep(w, Some("s1"), &report("yesterday", "a"))?,
                    Err(FactsRejected::BadTime("yesterday".into()))
                );
                let huge = GatheredFacts {
                    gathered_at: "2026-12-05T09:00:00Z".into(),
                    facts: json!({"blob": "x".repeat(MAX_REPORTED_FACTS_BYTES)})
                        .as_object()
                        .unwrap()
                        .clone(),
                };
                assert!(matches!(
                    keep(w, Some("s1"), &huge)?,
                    Err(FactsRejected::TooLarge(_))
                ));
                assert_eq!(w.get::<ServerFacts>("s1")?.map(|f| f.id), None);
                keep(w, Some("s1"), &report("2026-12-05T09:30:00Z", "new"))?.unwrap();
                assert_eq!(
                    keep(w, Some("s1"), &report("2026-12-05T09:00:00Z", "old"))?,
                    Err(FactsRejected::Older)
                );
                let kept = w.get::<ServerFacts>("s1")?.expect("kept");
                assert_eq!(kept.facts["hostname"], "new");
                assert_eq!((kept.project_id.as_str(), kept.received_at), ("p1", now));
                // A module's facts (a run without gathering) join those stored, and the
                // next gathering keeps them, as in Ansible's fact cache.
                let services = GatheredFacts {
                    gathered_at: "2026-12-05T09:40:00Z".into(),
                    facts: json!({"services": {"ssh.service": {"state": "running"}}})
                        .as_object()
                        .unwrap()
                        .clone(),
                };
                keep(w, Some("s1"), &services)?.unwrap();
                keep(w, Some("s1"), &report("2026-12-05T09:50:00Z", "newer"))?.unwrap();
                let kept = w.get::<ServerFacts>("s1")?.expect("kept");
                assert_eq!(kept.facts["hostname"], "newer");
                assert_eq!(kept.facts["services"]["ssh.service"]["state"], "running");
                // What would pass the limit together replaces what was stored.
                let big = GatheredFacts {
                    gathered_at: "2026-12-05T09:55:00Z".into(),
                    facts: json!({"blob": "x".repeat(MAX_REPORTED_FACTS_BYTES - 20)})
                        .as_object()
                        .unwrap()
                        .clone(),
                };
                keep(w, Some("s1"), &big)?.unwrap();
                let kept = w.get::<ServerFacts>("s1")?.expect("kept");
                assert_eq!(kept.facts.keys().collect::<Vec<_>>(), ["blob"]);
                keep(w, Some("s1"), &report("2026-12-05T09:58:00Z", "new"))?.unwrap();
                let named = ["web-1".to_string(), "nobody".to_string()];
                let found = stored_facts_named(w, "p1", &named)?;
                assert_eq!(found.len(), 1);
                assert_eq!(
                    (found[0].0.as_str(), found[0].1.id.as_str()),
                    ("web-1", "s1")
                );
                assert!(stored_facts_named(w, "p2", &named)?.is_empty());
                Ok(())
            })
            .unwrap();
        server.status = "deleted".into();
        store
            .write(|w| {
                crate::servers::save(w, &server)?;
                assert!(w.get::<ServerFacts>("s1")?.is_none());
                Ok(())
            })
            .unwrap();
    }

    fn host(name: &str, role: Option<&str>, groups: &[&str], vars: serde_json::Value) -> Host {
        Host {
            name: name.into(),
            labels: role
                .map(|r| BTreeMap::from([(ROLE_LABEL.to_string(), r.to_string())]))
                .unwrap_or_default(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            vars: vars.as_object().cloned().unwrap_or_default(),
        }
    }

    /// Project names, labels and odd texts become valid group names as Ansible
    /// transforms them.
    #[test]
    fn group_names_are_made_valid() {
        for (given, expected) in [
            ("Nova HR", "nova_hr"),
            ("web", "web"),
            ("web-server", "web_server"),
            ("2024 shop", "_2024_shop"),
            ("All", "project_all"),
            ("ungrouped", "project_ungrouped"),
            ("---", "project"),
        ] {
            assert_eq!(project_group(given), expected, "{given}");
        }
        assert!(valid_group_name("web_1"));
        assert!(!valid_group_name("web-1"));
        assert!(!valid_group_name("1web"));
        assert!(!valid_group_name(""));
    }

    /// Every host is in the project's group, its role label's group and its operator
    /// groups; only hosts and groups with variables carry them.
    #[test]
    fn assemble_puts_hosts_in_project_label_and_operator_groups() {
        let hosts = [
            host("web-1", None, &["web"], json!({"port": 8080})),
            host("web-2", Some("web"), &[], json!({})),
            host("db-1", Some("db-primary"), &["backup"], json!({})),
        ];
        let inventory = assemble(
            "shop",
            &hosts,
            &[
                (
                    "web".into(),
                    json!({"port": 80}).as_object().unwrap().clone(),
                ),
                ("empty".into(), Vars::new()),
            ],
        );
        assert_eq!(inventory.hosts, ["web-1", "web-2", "db-1"]);
        let groups: Vec<(&str, &[u32])> = inventory
            .groups
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            groups,
            [
                ("backup", &[2][..]),
                ("db_primary", &[2][..]),
                ("shop", &[0, 1, 2][..]),
                ("web", &[0, 1][..]),
            ]
        );
        assert_eq!(inventory.host_vars.keys().collect::<Vec<_>>(), ["web-1"]);
        assert_eq!(inventory.group_vars.keys().collect::<Vec<_>>(), ["web"]);
    }

    /// Plays select hosts as Ansible's patterns do (groups, `!`, `&`, wildcards), and
    /// the targets no play selects are named.
    #[test]
    fn unmatched_targets_follow_ansible_patterns() {
        let hosts = [
            host("web-1", None, &["web"], json!({})),
            host("web-2", Some("web"), &["canary"], json!({})),
            host("db-1", Some("db"), &[], json!({})),
        ];
        let inventory = assemble("shop", &hosts, &[]);
        let targets: Vec<(&JobInventory, &str)> = inventory
            .hosts
            .iter()
            .map(|h| (&inventory, h.as_str()))
            .collect();
        let check = |playbook: &str| unmatched_targets(playbook, &targets).unwrap();
        assert_eq!(check("- hosts: web\n  tasks: []\n"), ["db-1"]);
        assert_eq!(
            check("- hosts: web:!canary\n  tasks: []\n"),
            ["web-2", "db-1"]
        );
        assert_eq!(
            check("- hosts: shop:&db\n  tasks: []\n"),
            ["web-1", "web-2"]
        );
        assert_eq!(check("- hosts: 'web-*'\n  tasks: []\n"), ["db-1"]);
        assert_eq!(
            check("- hosts: web\n  tasks: []\n- hosts: db\n  tasks: []\n"),
            Vec::<String>::new()
        );
        assert_eq!(check("- hosts: all\n  tasks: []\n"), Vec::<String>::new());
        assert_eq!(
            check("- hosts: nothing\n  tasks: []\n"),
            ["web-1", "web-2", "db-1"]
        );
        // Templated hosts are judged when the play runs, not before.
        assert_eq!(
            check("- hosts: \"{{ target }}\"\n  tasks: []\n"),
            Vec::<String>::new()
        );
    }

    /// Variables come as objects or YAML mappings; bad names, Ansible's own names,
    /// non-mappings and oversized ones are refused.
    #[test]
    fn parse_vars_validates() {
        let ok = parse_vars("vars", &json!("port: 80\nname: web\n"), 1024).unwrap();
        assert_eq!(
            serde_json::Value::Object(ok),
            json!({"port": 80, "name": "web"})
        );
        assert!(parse_vars("vars", &json!(""), 1024).unwrap().is_empty());
        for bad in [
            json!("- a\n- b\n"),
            json!("a: [unclosed"),
            json!({"bad-name": 1}),
            json!({"hostvars": 1}),
            json!(42),
            json!({"big": "x".repeat(2000)}),
        ] {
            assert!(parse_vars("vars", &bad, 1024).is_err(), "{bad}");
        }
    }

    /// Group names for servers: Ansible's own groups and invalid names are refused,
    /// the rest sorted and each once.
    #[test]
    fn parse_groups_validates() {
        assert_eq!(
            parse_groups(&["web".into(), " db ".into(), "web".into(), "".into()]).unwrap(),
            ["db", "web"]
        );
        for bad in ["all", "ungrouped", "web-1", "9x", "a b"] {
            assert!(parse_groups(&[bad.into()]).is_err(), "{bad}");
        }
    }

    /// The wire size of a 10,000-server project stays well under the frame limit.
    #[test]
    fn ten_thousand_servers_fit_a_frame() {
        let hosts: Vec<Host> = (0..10_000)
            .map(|i| {
                host(
                    &format!("web-{i:05}"),
                    Some(if i % 2 == 0 { "web" } else { "db" }),
                    &[],
                    json!({}),
                )
            })
            .collect();
        let inventory = assemble("nova_hr", &hosts, &[]);
        let wire = serde_json::to_vec(&inventory).unwrap().len();
        let ansible = inventory.to_ansible().to_string().len();
        eprintln!("10,000 servers: {wire} bytes on the wire, {ansible} as Ansible JSON");
        assert!(wire < MAX_INVENTORY_BYTES / 2, "{wire}");
        // A rollout's check over all of them: half are in `web`.
        let targets: Vec<(&JobInventory, &str)> = inventory
            .hosts
            .iter()
            .map(|h| (&inventory, h.as_str()))
            .collect();
        let started = std::time::Instant::now();
        let unmatched = unmatched_targets("- hosts: web\n  tasks: []\n", &targets).unwrap();
        eprintln!(
            "10,000 targets checked against `hosts: web` in {:?}",
            started.elapsed()
        );
        assert_eq!(unmatched.len(), 5_000);
    }
}
