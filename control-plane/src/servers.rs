//! Servers: one record per machine we manage, whether it came from a Hetzner sync, an
//! enrolled agent, or both (then it is one server with both views: `hetzner_id` and
//! `agent_id`).
//!
//! Every write of a server goes through [`save`], which keeps its indexes and counts
//! in the same transaction:
//!
//! * `server_by_name` (`project_id/name`, lower case): finds a project's server by
//!   name;
//! * `server_order` (`position`), `server_by_project` (`project_id/position`) and
//!   `server_by_status` (`status/position`), where the position is the name and id
//!   (`listing::name_position`): lists read one page by name through them
//!   ([`query`]);
//! * kept counts per project and in all: servers, running ones and the monthly cost
//!   of those not deleted (in millionths, so sums are exact), which the dashboard and
//!   the budgets read instead of every server ([`project_counts`], [`total_counts`]).
//!
//! Servers are never removed: one gone at Hetzner is marked `deleted`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::listing::{self, Order, Page, Source};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};
use crate::validate;

const BY_NAME: &str = "server_by_name";
const ORDER: &str = "server_order";
const BY_PROJECT: &str = "server_by_project";
const BY_STATUS: &str = "server_by_status";

/// The statuses a server can have: Hetzner's (`running`, `off`, …), `deleted` when it
/// is gone at Hetzner, `unknown` for a server known only through its agent. Filters
/// accept these and nothing else.
pub const STATUSES: [&str; 10] = [
    "running",
    "off",
    "initializing",
    "starting",
    "stopping",
    "rebuilding",
    "migrating",
    "deleting",
    "deleted",
    "unknown",
];

/// A managed server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub project_id: String,
    /// Hetzner's status (`running`, `off`, …), `deleted` when gone at Hetzner, or
    /// `unknown` for a server known only through its agent.
    pub status: String,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub image: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Free text about a server added by hand (where it runs, who looks after it).
    #[serde(default)]
    pub notes: Option<String>,
    pub hetzner_id: Option<i64>,
    pub agent_id: Option<String>,
    pub monthly_cost: Option<f64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Record for Server {
    const TABLE: &'static str = "servers";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What it takes to register a server by hand (or from the demo seed).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub name: Option<String>,
    pub project: Option<String>,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub image: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub status: Option<String>,
    pub monthly_cost: Option<f64>,
    pub notes: Option<String>,
}

fn name_key(project_id: &str, name: &str) -> String {
    format!("{project_id}/{}", name.to_lowercase())
}

/// Finds a server of a project by name.
pub fn by_name(r: &impl Read, project_id: &str, name: &str) -> anyhow::Result<Option<Server>> {
    match r.index_get(BY_NAME, &name_key(project_id, name))? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// Validates and registers a server in a project.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    project_id: &str,
    input: &NewServer,
) -> AppResult<Server> {
    let name = validate::required("name", input.name.as_deref(), 63)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(AppError::invalid(
            "name",
            "name may hold letters, digits, '-' and '.' only",
        ));
    }
    if let Some(ip) = input.ipv4.as_deref().filter(|s| !s.is_empty()) {
        ip.parse::<std::net::Ipv4Addr>()
            .map_err(|_| AppError::invalid("ipv4", "ipv4 is not an IPv4 address"))?;
    }
    if let Some(ip) = input.ipv6.as_deref().filter(|s| !s.is_empty()) {
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| AppError::invalid("ipv6", "ipv6 is not an IPv6 address"))?;
    }
    if by_name(w, project_id, &name)?.is_some() {
        return Err(AppError::invalid(
            "name",
            format!("the project already has a server named {name}"),
        ));
    }
    let status = match input.status.as_deref().map(str::trim) {
        None | Some("") => "unknown".to_string(),
        Some(s) if STATUSES.contains(&s) => s.to_string(),
        Some(_) => {
            return Err(AppError::invalid(
                "status",
                format!("status must be one of {}", STATUSES.join(", ")),
            ))
        }
    };
    let now = chrono::Utc::now();
    let server = Server {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        project_id: project_id.to_string(),
        status,
        server_type: validate::optional("server_type", input.server_type.as_deref(), 40)?,
        location: validate::optional("location", input.location.as_deref(), 40)?,
        image: validate::optional("image", input.image.as_deref(), 80)?,
        ipv4: validate::optional("ipv4", input.ipv4.as_deref(), 15)?,
        ipv6: validate::optional("ipv6", input.ipv6.as_deref(), 45)?,
        labels: Default::default(),
        notes: validate::text("notes", input.notes.as_deref(), 2000)?,
        hetzner_id: None,
        agent_id: None,
        monthly_cost: validate::money("monthly_cost", input.monthly_cost)?,
        created_at: now,
        updated_at: now,
    };
    save(w, &server)?;
    audit::record(w, actor, "server.create", &format!("server:{name}"), "")?;
    Ok(server)
}

/// Writes a server: the only way a server reaches the store. Its indexes and the
/// kept counts follow in the same transaction (a rename, a move to another project, a
/// new status or cost moves exactly the entries and counts it changes).
pub fn save(w: &mut Writer, server: &Server) -> anyhow::Result<()> {
    let old: Option<Server> = w.get(&server.id)?;
    w.put(server)?;
    // A deleted server's gathered facts go with it (no inventory shows it any more).
    if server.status == "deleted" && old.as_ref().is_none_or(|o| o.status != "deleted") {
        crate::inventory::forget_facts(w, &server.id)?;
    }
    reindex(w, old.as_ref(), server)
}

/// Moves the index entries and counts of a server from what `old` had to what `new`
/// has (`old` is `None` for a new server, or when indexing stored ones afresh).
fn reindex(w: &mut Writer, old: Option<&Server>, new: &Server) -> anyhow::Result<()> {
    let old_keys = old.map(list_keys).unwrap_or_default();
    let new_keys = list_keys(new);
    for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        w.index_delete(key.0, &key.1)?;
    }
    for key in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        w.index_put(key.0, &key.1, &new.id)?;
    }

    // The name index points at the server of that name; a server marked deleted
    // takes a name only while no other server holds it (Hetzner may reuse the name
    // of a server it deleted for a new one).
    let new_name = name_key(&new.project_id, &new.name);
    if let Some(old) = old {
        let old_name = name_key(&old.project_id, &old.name);
        if old_name != new_name && w.index_get(BY_NAME, &old_name)?.as_deref() == Some(&old.id) {
            w.index_delete(BY_NAME, &old_name)?;
        }
    }
    let holder = w.index_get(BY_NAME, &new_name)?;
    let take = match holder.as_deref() {
        None => true,
        Some(id) if id == new.id => false,
        Some(_) => new.status != "deleted",
    };
    if take {
        w.index_put(BY_NAME, &new_name, &new.id)?;
    }

    let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
    for (name, n) in old.map(counted).unwrap_or_default() {
        *deltas.entry(name).or_default() -= n;
    }
    for (name, n) in counted(new) {
        *deltas.entry(name).or_default() += n;
    }
    for (name, delta) in deltas {
        if delta != 0 {
            w.counter_add(&name, delta)?;
        }
    }
    Ok(())
}

/// The list index entries of a server: `(index, key)`.
fn list_keys(s: &Server) -> Vec<(&'static str, String)> {
    let position = listing::name_position(&s.name, &s.id);
    vec![
        (BY_PROJECT, format!("{}/{position}", s.project_id)),
        (BY_STATUS, format!("{}/{position}", s.status)),
        (ORDER, position),
    ]
}

const ALL_COUNT: &str = "servers";
const RUNNING_COUNT: &str = "servers/running";

fn project_count(project_id: &str) -> String {
    format!("servers/project/{project_id}")
}
fn project_running_count(project_id: &str) -> String {
    format!("servers/project/{project_id}/running")
}
fn project_cost_count(project_id: &str) -> String {
    format!("servers/project/{project_id}/cost_micros")
}

/// Millionths of a monthly cost, the unit the kept sums use (exact, and fine enough
/// for any price Hetzner gives).
fn micros(cost: f64) -> i64 {
    if cost.is_finite() && cost > 0.0 {
        (cost * 1e6).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// What a server adds to the kept counts: `(counter, amount)`.
fn counted(s: &Server) -> Vec<(String, i64)> {
    let mut out = vec![
        (ALL_COUNT.to_string(), 1),
        (project_count(&s.project_id), 1),
    ];
    if s.status == "running" {
        out.push((RUNNING_COUNT.to_string(), 1));
        out.push((project_running_count(&s.project_id), 1));
    }
    if s.status != "deleted" {
        let cost = micros(s.monthly_cost.unwrap_or(0.0));
        if cost > 0 {
            out.push((project_cost_count(&s.project_id), cost));
        }
    }
    out
}

/// Kept figures of a set of servers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Every server, also those marked deleted.
    pub servers: u64,
    /// Those whose status is `running`.
    pub running: u64,
    /// The monthly cost of those not deleted.
    pub monthly_cost: f64,
}

/// A project's kept figures: read, never recomputed.
/// Reads the kept figures of these projects ahead (one query on PostgreSQL), for a
/// page that shows them for every project.
pub fn prefetch_project_counts(r: &impl Read, project_ids: &[&str]) -> anyhow::Result<()> {
    let names: Vec<String> = project_ids
        .iter()
        .flat_map(|p| {
            [
                project_cost_count(p),
                project_count(p),
                project_running_count(p),
            ]
        })
        .collect();
    r.prefetch_counters(&names)
}

pub fn project_counts(r: &impl Read, project_id: &str) -> anyhow::Result<Counts> {
    let cost = r.counter(&project_cost_count(project_id))?;
    Ok(Counts {
        servers: r.counter(&project_count(project_id))?,
        running: r.counter(&project_running_count(project_id))?,
        monthly_cost: cost as f64 / 1e6,
    })
}

/// The kept figures of every server (their cost is per project only).
pub fn total_counts(r: &impl Read) -> anyhow::Result<Counts> {
    Ok(Counts {
        servers: r.counter(ALL_COUNT)?,
        running: r.counter(RUNNING_COUNT)?,
        monthly_cost: 0.0,
    })
}

/// The figures of the servers a subject may see: the kept counts in all for those
/// who see every project, else the sum over the projects they see.
pub fn visible_counts(r: &impl Read, subject: &Subject) -> anyhow::Result<Counts> {
    match listing::project_scope(subject, Action::ViewServers) {
        None => total_counts(r),
        Some(projects) => {
            let ids: Vec<&str> = projects.iter().map(String::as_str).collect();
            prefetch_project_counts(r, &ids)?;
            let mut sum = Counts::default();
            for project_id in projects {
                let c = project_counts(r, &project_id)?;
                sum.servers += c.servers;
                sum.running += c.running;
                sum.monthly_cost += c.monthly_cost;
            }
            Ok(sum)
        }
    }
}

/// What the project's servers cost per month, without deleted ones: a kept sum.
pub fn project_cost(r: &impl Read, project_id: &str) -> anyhow::Result<f64> {
    Ok(project_counts(r, project_id)?.monthly_cost)
}

/// Every server of one project, by name: for the work that needs the whole project
/// (a Hetzner sync); its cost is the project's size, never the fleet's.
pub fn in_project(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<Server>> {
    let mut out = Vec::new();
    for (_, id) in r.index_scan(BY_PROJECT, &format!("{project_id}/"))? {
        if let Some(server) = r.get::<Server>(&id)? {
            out.push(server);
        }
    }
    Ok(out)
}

/// The ids of every server of one project, by name (deleted ones too): for the work
/// that reads them together (a run's inventory).
/// The ids of a project's servers named `names`, in that order (`None` for a name no
/// server has), in one read of the name index.
pub fn ids_by_name(
    r: &impl Read,
    project_id: &str,
    names: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let keys: Vec<String> = names.iter().map(|n| name_key(project_id, n)).collect();
    r.prefetch_index(BY_NAME, &keys)?;
    keys.iter().map(|k| r.index_get(BY_NAME, k)).collect()
}

pub fn ids_in_project(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<String>> {
    Ok(r.index_scan(BY_PROJECT, &format!("{project_id}/"))?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// What a list of servers is narrowed to; the fields combine. The project is resolved
/// (and its visibility checked) by the caller.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project_id: Option<String>,
    /// One of [`STATUSES`].
    pub status: Option<String>,
    /// Text in what [`search_text`] covers, case-insensitive.
    pub text: Option<String>,
}

impl Filter {
    fn matches(&self, s: &Server, needle: Option<&str>) -> bool {
        self.project_id.as_ref().is_none_or(|p| &s.project_id == p)
            && self.status.as_ref().is_none_or(|st| &s.status == st)
            && needle.is_none_or(|q| search_text(s).contains(q))
    }

    /// The index ranges to walk: the project's, else one per project the subject may
    /// see (when it sees only some), else a status's, else every server.
    fn sources(&self, scope: Option<&[String]>) -> Vec<Source> {
        if let Some(project) = &self.project_id {
            return vec![Source::index(BY_PROJECT, format!("{project}/"))];
        }
        if let Some(projects) = scope {
            return projects
                .iter()
                .map(|p| Source::index(BY_PROJECT, format!("{p}/")))
                .collect();
        }
        if let Some(status) = &self.status {
            return vec![Source::index(BY_STATUS, format!("{status}/"))];
        }
        vec![Source::index(ORDER, "")]
    }
}

/// One page of the servers the subject may see that match `filter`, by name, after
/// the position `cursor` (see [`crate::listing`]): the page and the cursor of the next.
/// A text filter examines at most [`listing::SCAN_BUDGET`] servers per page.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Server>> {
    let scope = listing::project_scope(subject, Action::ViewServers);
    let needle = filter
        .text
        .as_deref()
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty());
    listing::page(
        r,
        filter.sources(scope.as_deref()),
        Order::Ascending,
        cursor,
        limit,
        |s: &Server| {
            filter.matches(s, needle.as_deref())
                && policy::can(subject, Action::ViewServers, Some(&s.project_id))
        },
    )
}

/// The text a search matches a server against.
pub fn search_text(s: &Server) -> String {
    [
        Some(s.name.as_str()),
        s.ipv4.as_deref(),
        s.ipv6.as_deref(),
        s.server_type.as_deref(),
        s.location.as_deref(),
        Some(s.status.as_str()),
    ]
    .iter()
    .flatten()
    .copied()
    .collect::<Vec<_>>()
    .join(" ")
    .to_lowercase()
}

/// One server the subject may see; 404 for unknown, 403 for another project's.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Server> {
    let server: Server = r.get(id)?.ok_or_else(|| AppError::not_found("server"))?;
    if !policy::can(subject, Action::ViewServers, Some(&server.project_id)) {
        return Err(AppError::forbidden());
    }
    Ok(server)
}

/// A server the subject may see, by id or by name (case-insensitive; within
/// `project_id` when given). A name that several visible servers share is a 422 asking
/// for the project or the id; deleted servers are found by id only.
pub fn find_visible(
    r: &impl Read,
    subject: &Subject,
    key: &str,
    project_id: Option<&str>,
) -> AppResult<Server> {
    if let Some(server) = r.get::<Server>(key)? {
        if policy::can(subject, Action::ViewServers, Some(&server.project_id)) {
            return Ok(server);
        }
        return Err(AppError::not_found("server"));
    }
    let wanted = key.trim().to_lowercase();
    if wanted.is_empty() {
        return Err(AppError::not_found("server"));
    }
    let candidates: Vec<Server> = match project_id {
        Some(project) => by_name(r, project, &wanted)?.into_iter().collect(),
        None => {
            // The positions `name id` in the name order: only servers of that name.
            let prefix: String = wanted.chars().take(listing::NAME_KEY_CHARS).collect();
            let mut found = Vec::new();
            for (_, id) in r.index_scan(ORDER, &format!("{prefix} "))? {
                if let Some(server) = r.get::<Server>(&id)? {
                    found.push(server);
                }
            }
            found
        }
    };
    let mut matches: Vec<Server> = candidates
        .into_iter()
        .filter(|s| {
            s.name.to_lowercase() == wanted
                && s.status != "deleted"
                && policy::can(subject, Action::ViewServers, Some(&s.project_id))
        })
        .collect();
    match matches.len() {
        0 => Err(AppError::not_found("server")),
        1 => Ok(matches.remove(0)),
        _ => Err(AppError::invalid(
            "server",
            format!("several servers are named {wanted}; choose the project or use the server id"),
        )),
    }
}

/// Schema step: the list indexes and kept counts of servers stored before lists read
/// pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Server> = w.list()?;
    for server in &all {
        reindex(w, None, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Level, Role};
    use crate::store::Store;

    fn server(id: &str, name: &str, project: &str, status: &str, cost: Option<f64>) -> Server {
        let now = chrono::Utc::now();
        Server {
            id: id.into(),
            name: name.into(),
            project_id: project.into(),
            status: status.into(),
            server_type: Some("cx22".into()),
            location: Some("fsn1".into()),
            image: None,
            ipv4: Some(format!("10.0.0.{}", id.len())),
            ipv6: None,
            labels: Default::default(),
            notes: None,
            hetzner_id: None,
            agent_id: None,
            monthly_cost: cost,
            created_at: now,
            updated_at: now,
        }
    }

    fn subject(role: Role, grants: &[&str]) -> Subject {
        Subject {
            user_id: "u".into(),
            username: "u".into(),
            role,
            is_manager: false,
            grants: grants
                .iter()
                .map(|p| (p.to_string(), Level::Read))
                .collect(),
        }
    }

    fn admin() -> Subject {
        subject(Role::Admin, &[])
    }

    fn names(store: &Store, subject: &Subject, filter: &Filter) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .read(|r| query(r, subject, filter, cursor.as_deref(), 2))
                .unwrap();
            out.extend(page.items.into_iter().map(|s| s.name));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return out,
            }
        }
    }

    fn filter(project: Option<&str>, status: Option<&str>, text: Option<&str>) -> Filter {
        Filter {
            project_id: project.map(String::from),
            status: status.map(String::from),
            text: text.map(String::from),
        }
    }

    /// Index entries `(index:key, id)` and kept counts `(name, count)`.
    type Picture = (Vec<(String, String)>, Vec<(String, u64)>);

    /// Every index entry and kept count, as one comparable picture of the store.
    fn picture(store: &Store) -> Picture {
        store
            .read(|r| {
                let mut entries = Vec::new();
                for index in [BY_NAME, ORDER, BY_PROJECT, BY_STATUS] {
                    for (key, id) in r.index_scan(index, "")? {
                        entries.push((format!("{index}:{key}"), id));
                    }
                }
                let mut counts = Vec::new();
                let all: Vec<Server> = r.list()?;
                let mut projects: Vec<&str> = all.iter().map(|s| s.project_id.as_str()).collect();
                projects.extend(["p1", "p2"]);
                projects.sort();
                projects.dedup();
                counts.push((ALL_COUNT.to_string(), r.counter(ALL_COUNT)?));
                counts.push((RUNNING_COUNT.to_string(), r.counter(RUNNING_COUNT)?));
                for p in projects {
                    for name in [
                        project_count(p),
                        project_running_count(p),
                        project_cost_count(p),
                    ] {
                        counts.push((name.clone(), r.counter(&name)?));
                    }
                }
                Ok((entries, counts))
            })
            .unwrap()
    }

    /// Creating, renaming, moving to another project, changing status and cost, and
    /// marking deleted keep every index entry and kept count exactly what indexing the
    /// stored servers afresh gives, and lists read through them find each server
    /// where it is now.
    #[test]
    fn indexes_and_counts_follow_every_change_of_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let save_all = |servers: &[Server]| {
            store
                .write(|w| {
                    for s in servers {
                        save(w, s)?;
                    }
                    Ok(())
                })
                .unwrap();
        };
        let mut web = server("s-web", "web", "p1", "running", Some(4.51));
        let mut db = server("s-db", "db", "p1", "off", Some(10.0));
        let api = server("s-api", "api", "p2", "running", Some(0.333333));
        save_all(&[web.clone(), db.clone(), api.clone()]);
        let counts = store.read(|r| project_counts(r, "p1")).unwrap();
        assert_eq!(
            (counts.servers, counts.running, counts.monthly_cost),
            (2, 1, 14.51)
        );
        assert_eq!(store.read(total_counts).unwrap().servers, 3, "all servers");
        assert_eq!(
            names(&store, &admin(), &Filter::default()),
            ["api", "db", "web"]
        );

        // Rename: the list order and the name lookup follow.
        web.name = "zeta".into();
        save_all(&[web.clone()]);
        assert_eq!(
            names(&store, &admin(), &Filter::default()),
            ["api", "db", "zeta"]
        );
        assert!(store.read(|r| by_name(r, "p1", "web")).unwrap().is_none());
        assert_eq!(
            store
                .read(|r| by_name(r, "p1", "ZETA"))
                .unwrap()
                .map(|s| s.id),
            Some("s-web".to_string())
        );

        // Move to another project: its list, counts and cost move with it.
        web.project_id = "p2".into();
        save_all(&[web.clone()]);
        assert_eq!(
            names(&store, &admin(), &filter(Some("p2"), None, None)),
            ["api", "zeta"]
        );
        assert_eq!(
            names(&store, &admin(), &filter(Some("p1"), None, None)),
            ["db"]
        );
        let (p1, p2) = store
            .read(|r| Ok((project_counts(r, "p1")?, project_counts(r, "p2")?)))
            .unwrap();
        assert_eq!((p1.servers, p1.running, p1.monthly_cost), (1, 0, 10.0));
        assert_eq!((p2.servers, p2.running), (2, 2));
        assert!(
            (p2.monthly_cost - 4.843333).abs() < 1e-9,
            "{}",
            p2.monthly_cost
        );

        // Status and cost: running counts and the status list follow; a deleted
        // server stays listed but costs nothing.
        db.status = "running".into();
        db.monthly_cost = Some(12.5);
        save_all(&[db.clone()]);
        assert_eq!(
            names(&store, &admin(), &filter(None, Some("running"), None)),
            ["api", "db", "zeta"]
        );
        assert_eq!(
            names(&store, &admin(), &filter(None, Some("off"), None)),
            Vec::<String>::new()
        );
        db.status = "deleted".into();
        save_all(&[db.clone()]);
        let p1 = store.read(|r| project_counts(r, "p1")).unwrap();
        assert_eq!((p1.servers, p1.running, p1.monthly_cost), (1, 0, 0.0));
        assert_eq!(store.read(total_counts).unwrap().running, 2);
        assert_eq!(
            names(&store, &admin(), &filter(None, Some("deleted"), None)),
            ["db"]
        );

        // Saving a server unchanged changes nothing.
        let before = picture(&store);
        save_all(&[web.clone(), db.clone(), api.clone()]);
        assert_eq!(picture(&store), before);

        // Indexing the stored servers afresh gives the very same entries and counts.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(&fresh_dir.path().join("s.redb")).unwrap();
        fresh
            .write(|w| {
                for s in [&web, &db, &api] {
                    w.put(s)?;
                }
                backfill_indexes(w)
            })
            .unwrap();
        assert_eq!(picture(&fresh), before);
    }

    /// A server marked deleted never takes its name from a live server that reuses
    /// it; renaming away frees the name only when the server held it.
    #[test]
    fn the_name_index_points_at_the_live_server() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let gone = server("old", "web", "p1", "deleted", None);
        let live = server("new", "web", "p1", "running", None);
        store
            .write(|w| {
                save(w, &gone)?;
                save(w, &live)?;
                save(w, &gone)
            })
            .unwrap();
        let found = store.read(|r| by_name(r, "p1", "web")).unwrap();
        assert_eq!(found.map(|s| s.id).as_deref(), Some("new"));
        let mut renamed = gone.clone();
        renamed.name = "web-old".into();
        store.write(|w| save(w, &renamed)).unwrap();
        let found = store.read(|r| by_name(r, "p1", "web")).unwrap();
        assert_eq!(found.map(|s| s.id).as_deref(), Some("new"));
    }

    /// Lists show only the projects a subject may see, and narrow by project, status
    /// and text (name, addresses, type, location).
    #[test]
    fn lists_filter_by_visibility_project_status_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                save(w, &server("a1", "alpha", "p1", "running", None))?;
                save(w, &server("b22", "beta", "p2", "off", None))?;
                save(w, &server("c333", "gamma", "p1", "off", None))?;
                save(w, &server("d4444", "delta", "p3", "running", None))
            })
            .unwrap();
        let tech = subject(Role::Technical, &["p1", "p3"]);
        let sales = subject(Role::Sales, &["p1"]);
        let admin = admin();
        let cases: Vec<(&Subject, Filter, Vec<&str>)> = vec![
            (&tech, Filter::default(), vec!["alpha", "delta", "gamma"]),
            (&tech, filter(None, Some("off"), None), vec!["gamma"]),
            (&tech, filter(Some("p1"), None, Some("GAM")), vec!["gamma"]),
            (&tech, filter(None, None, Some("10.0.0.5")), vec!["delta"]),
            (&sales, Filter::default(), vec![]),
            (
                &admin,
                filter(None, Some("off"), None),
                vec!["beta", "gamma"],
            ),
            (
                &admin,
                filter(None, None, Some("fsn1 ")),
                vec!["alpha", "beta", "delta", "gamma"],
            ),
        ];
        for (subject, filter, expected) in cases {
            assert_eq!(names(&store, subject, &filter), expected, "{filter:?}");
        }
        let tech_counts = store.read(|r| visible_counts(r, &tech)).unwrap();
        assert_eq!((tech_counts.servers, tech_counts.running), (3, 2));
    }
}
