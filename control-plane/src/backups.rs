//! Backups of Docker Compose services: each project's backup recipe (compose project,
//! service, command, dump path, how many to keep, restore command), and one backup
//! record per backup run (status, duration, size, sha256, `backup_log`, `error_log`).
//!
//! A backup, verify or restore is an execution whose work is `compose_backup`,
//! `compose_verify` or `compose_restore` (see `executions::Work`); the agent runs it
//! through the Docker API. `executions` calls this module's [`ExecutionHooks`] when
//! such an execution is stored and when it ends, in the same transaction: the record
//! is created `running` with its execution, and filled from the stored log when the
//! job ends: the job's last stdout line is `DYNSERV-RESULT {json}`
//! ([`dynserv_shared::proto::RESULT_PREFIX`]). A backup is `succeeded` only when the
//! job succeeded *and* that line reports a non-empty dump with its sha256.
//!
//! Tables: `backup_recipes` (keyed by project id), `backups`; indexes
//! `backup_by_execution` (execution id → backup id, for backups, verifies and
//! restores) and, for the lists, `backup_by_project`, `backup_by_agent`,
//! `backup_by_server` and `backup_by_status` (`value/backup_id`), kept by [`save`],
//! through which every backup record is written.
//! System updates live in `updates`, schedules in `schedules`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{self, Execution, KindHooks, NewExecution, Status, Work};
use crate::listing::{self, Order, Page, Source};
use crate::policy::{self, Action, Subject};
use crate::servers::Server;
use crate::store::{Read, Record, Writer};
use dynserv_shared::proto::RESULT_PREFIX;

const BY_EXECUTION: &str = "backup_by_execution";
const BY_PROJECT: &str = "backup_by_project";
const BY_AGENT: &str = "backup_by_agent";
const BY_SERVER: &str = "backup_by_server";
const BY_STATUS: &str = "backup_by_status";
/// Failed off-site uploads waiting for their next attempt (`offsite::retry_key`).
const OFFSITE_RETRY: &str = "backup_offsite_retry";

/// Backups kept per recipe when the project sets no number.
pub const DEFAULT_KEEP: u32 = 7;
/// Longest part of a log kept in a record; the execution keeps the whole log.
const MAX_RECORD_LOG: usize = 256 * 1024;
/// The word a restore must be confirmed with.
pub const RESTORE_CONFIRMATION: &str = "RESTORE";

/// A project's backup recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    pub project_id: String,
    /// The `com.docker.compose.project` label of the database's container.
    pub compose_project: String,
    /// The `com.docker.compose.service` label.
    pub service: String,
    /// The backup command, run with `/bin/sh -c` in the container.
    pub command: String,
    /// Where the command leaves its dump in the container; its stdout is the dump
    /// when absent.
    pub dump_path: Option<String>,
    /// Backups the agent keeps.
    pub keep: u32,
    /// The restore command; it finds the dump at `restore_path` (also in
    /// `$DYNSERV_RESTORE_FILE`), or on its stdin when `restore_path` is absent.
    pub restore_command: Option<String>,
    pub restore_path: Option<String>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for Recipe {
    const TABLE: &'static str = "backup_recipes";
    fn id(&self) -> &str {
        &self.project_id
    }
}

/// A backup's status, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    Running,
    Succeeded,
    Failed,
}

impl BackupStatus {
    pub const ALL: [BackupStatus; 3] = [
        BackupStatus::Running,
        BackupStatus::Succeeded,
        BackupStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "running",
            BackupStatus::Succeeded => "succeeded",
            BackupStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<BackupStatus> {
        BackupStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// The outcome of a verify or restore of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub execution_id: String,
    pub by: String,
    pub at: DateTime<Utc>,
    /// `running`, `succeeded` or `failed`.
    pub status: BackupStatus,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where a backup's off-site copy stands, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsiteStatus {
    /// Not uploaded yet (the backup runs, or a retry waits).
    Pending,
    /// An upload job runs.
    Uploading,
    /// The storage lists the object with the size and checksum sent.
    Done,
    /// The last upload failed (`error`); retried with backoff until `MAX_ATTEMPTS`.
    Failed,
}

/// A backup's off-site copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsiteCopy {
    pub status: OffsiteStatus,
    /// The object's key in the bucket.
    pub key: String,
    /// Bytes of the (encrypted) object, once done.
    pub size: Option<u64>,
    /// The sha256 of the clear dump it holds.
    pub sha256: Option<String>,
    /// The ETag the storage lists.
    #[serde(default)]
    pub etag: Option<String>,
    /// The storage's own message of the last failure.
    pub error: Option<String>,
    /// Uploads tried so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the next retry starts, while one is due.
    #[serde(default)]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub uploaded_at: Option<DateTime<Utc>>,
    /// The copy was deleted by the off-site retention.
    #[serde(default)]
    pub pruned_at: Option<DateTime<Utc>>,
    /// The last download-and-check of the copy.
    #[serde(default)]
    pub last_verify: Option<Check>,
}

/// One backup run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub id: String,
    pub project_id: String,
    pub agent_id: String,
    pub server_id: Option<String>,
    pub execution_id: String,
    pub compose_project: String,
    pub service: String,
    pub command: String,
    pub dump_path: Option<String>,
    pub status: BackupStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Where the agent keeps the dump.
    pub path: Option<String>,
    /// The command's stdout and the agent's progress lines.
    pub backup_log: String,
    /// The command's stderr and the agent's notes.
    pub error_log: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The agent no longer keeps the dump (older than the newest `keep`).
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub last_verify: Option<Check>,
    #[serde(default)]
    pub restores: Vec<Check>,
    /// The off-site copy, when the project has off-site storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteCopy>,
}

impl Record for Backup {
    const TABLE: &'static str = "backups";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Backup {
    /// Seconds from start (or creation) to end.
    pub fn duration_s(&self) -> Option<f64> {
        let start = self.started_at.unwrap_or(self.created_at);
        self.finished_at
            .map(|f| (f - start).num_milliseconds() as f64 / 1000.0)
    }
}

/// The API view: the record plus its duration and, for pages, the status word.
pub fn view(backup: &Backup) -> serde_json::Value {
    let mut value = serde_json::to_value(backup).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("duration_s".into(), serde_json::json!(backup.duration_s()));
    }
    value
}

/// Whether a compose project or service name is usable (Compose's own rules, and
/// safe as a directory name on the agent).
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_command(field: &str, command: &str) -> AppResult<()> {
    if command.trim().is_empty() {
        return Err(AppError::invalid(field, format!("{field} is required")));
    }
    if command.len() > 16 * 1024 || command.contains('\0') {
        return Err(AppError::invalid(
            field,
            format!("{field} is too long or holds a NUL byte"),
        ));
    }
    Ok(())
}

fn check_path(field: &str, path: Option<&str>) -> AppResult<Option<String>> {
    match path.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(p)
            if p.starts_with('/') && !p.ends_with('/') && !p.contains('\0') && p.len() <= 1024 =>
        {
            Ok(Some(p.to_string()))
        }
        Some(_) => Err(AppError::invalid(
            field,
            format!("{field} must be an absolute file path inside the container"),
        )),
    }
}

/// The body of `PUT /api/v1/projects/{id}/backup-recipe` (and the recipe form).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecipeInput {
    pub compose_project: Option<String>,
    pub service: Option<String>,
    pub command: Option<String>,
    pub dump_path: Option<String>,
    pub keep: Option<u32>,
    pub restore_command: Option<String>,
    pub restore_path: Option<String>,
}

/// Sets a project's backup recipe.
pub fn save_recipe(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    project_id: &str,
    input: &RecipeInput,
) -> AppResult<Recipe> {
    if !policy::can(subject, Action::EditProject, Some(project_id)) {
        return Err(AppError::forbidden());
    }
    let compose_project = input
        .compose_project
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_string();
    if !name_ok(&compose_project) {
        return Err(AppError::invalid("compose_project", "compose_project is required: the Compose project name (letters, digits, '-', '_', '.')"));
    }
    let service = input.service.as_deref().unwrap_or("").trim().to_string();
    if !name_ok(&service) {
        return Err(AppError::invalid(
            "service",
            "service is required: the Compose service name (letters, digits, '-', '_', '.')",
        ));
    }
    let command = input.command.as_deref().unwrap_or("").trim().to_string();
    check_command("command", &command)?;
    let keep = input.keep.unwrap_or(DEFAULT_KEEP);
    if keep == 0 || keep > 1000 {
        return Err(AppError::invalid("keep", "keep must be between 1 and 1000"));
    }
    let restore_command = input
        .restore_command
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from);
    if let Some(c) = &restore_command {
        check_command("restore_command", c)?;
    }
    let recipe = Recipe {
        project_id: project_id.to_string(),
        compose_project,
        service,
        command,
        dump_path: check_path("dump_path", input.dump_path.as_deref())?,
        keep,
        restore_command,
        restore_path: check_path("restore_path", input.restore_path.as_deref())?,
        updated_by: actor.username.clone(),
        updated_at: Utc::now(),
    };
    w.put(&recipe)?;
    audit::record(
        w,
        actor,
        "backup.recipe",
        &format!("project:{project_id}"),
        format!("{}/{}", recipe.compose_project, recipe.service),
    )?;
    Ok(recipe)
}

/// A project's recipe, if it has one.
pub fn recipe(r: &impl Read, project_id: &str) -> anyhow::Result<Option<Recipe>> {
    r.get::<Recipe>(project_id)
}

/// The work of a `compose_backup` execution from `POST /api/v1/executions`.
pub fn work_from_api(r: &impl Read, agent: &Agent, input: &NewExecution) -> AppResult<Work> {
    let compose_project = input
        .compose_project
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_string();
    if !name_ok(&compose_project) {
        return Err(AppError::invalid(
            "compose_project",
            "compose_project is required (the Compose project name)",
        ));
    }
    let service = input.service.as_deref().unwrap_or("").trim().to_string();
    if !name_ok(&service) {
        return Err(AppError::invalid(
            "service",
            "service is required (the Compose service name)",
        ));
    }
    let command = input.command.as_deref().unwrap_or("").to_string();
    check_command("command", &command)?;
    let keep = recipe(r, &agent.project_id)?
        .map(|r| r.keep)
        .unwrap_or(DEFAULT_KEEP);
    Ok(Work::ComposeBackup {
        backup_id: uuid::Uuid::now_v7().to_string(),
        compose_project,
        service,
        command,
        dump_path: check_path("dump_path", input.dump_path.as_deref())?,
        keep,
    })
}

/// What a backup, verify, restore or update execution runs, for the execution page:
/// `{"interpreter", "text"}` like a script's.
pub fn work_summary(work: &Work) -> serde_json::Value {
    let (what, text) = match work {
        Work::ComposeBackup {
            compose_project,
            service,
            command,
            dump_path,
            keep,
            ..
        } => (
            "compose backup",
            format!(
                "# {compose_project}/{service}, dump {}, keep {keep}\n{command}",
                dump_path.as_deref().unwrap_or("from stdout")
            ),
        ),
        Work::ComposeVerify {
            backup_id,
            compose_project,
            service,
            offsite,
        } => (
            "compose verify",
            if *offsite {
                format!("# {compose_project}/{service}: download and decrypt the off-site copy of backup {backup_id}, check its sha256")
            } else {
                format!("# {compose_project}/{service}: recompute the sha256 of backup {backup_id}")
            },
        ),
        Work::ComposeOffsiteUpload {
            backup_id,
            compose_project,
            service,
        } => (
            "compose off-site upload",
            format!("# {compose_project}/{service}: upload an encrypted copy of backup {backup_id} off site"),
        ),
        Work::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            offsite,
        } => (
            "compose restore",
            format!(
                "# {compose_project}/{service}: restore backup {backup_id}{} ({})\n{command}",
                if *offsite { " from its off-site copy" } else { "" },
                dump_path
                    .as_deref()
                    .map(|p| format!("copied to {p}"))
                    .unwrap_or_else(|| "on stdin".into())
            ),
        ),
        Work::SystemUpdate { check, .. } => (
            "system update",
            if *check {
                "list the packages that would be upgraded".into()
            } else {
                "upgrade every package non-interactively".into()
            },
        ),
        Work::Script {
            script,
            interpreter,
            ..
        } => ("script", format!("# {interpreter}\n{script}")),
        Work::Playbook { playbook, .. } => ("playbook", playbook.clone()),
    };
    serde_json::json!({"interpreter": what, "text": text})
}

/// Stores an execution of prepared work on an agent, through `executions` (which
/// checks the agent and the subject's right to operate it).
pub fn create_execution(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    agent_id: &str,
    work: Work,
) -> AppResult<Execution> {
    let input = NewExecution {
        agent: Some(agent_id.to_string()),
        kind: Some(work.kind().to_string()),
        work: Some(work),
        ..Default::default()
    };
    executions::create(w, actor, subject, &input)
}

/// The agent of a server (or an agent id given directly) the subject may see.
pub fn agent_of_server(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Agent> {
    agent_of_server_for(r, subject, id, Action::ViewServers)
}

/// The agent of a server (or an agent id given directly) the subject may operate: 404
/// for a server it may not see, 403 for one it may not operate, and only then 409 for
/// a server without an agent, so a read-only caller learns nothing from the state.
pub fn agent_to_operate(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Agent> {
    agent_of_server_for(r, subject, id, Action::OperateServers)
}

fn agent_of_server_for(
    r: &impl Read,
    subject: &Subject,
    id: &str,
    action: Action,
) -> AppResult<Agent> {
    if let Some(server) = r.get::<Server>(id)? {
        if !policy::can(subject, Action::ViewServers, Some(&server.project_id)) {
            return Err(AppError::not_found("server"));
        }
        if !policy::can(subject, action, Some(&server.project_id)) {
            return Err(AppError::forbidden());
        }
        let agent_id = server.agent_id.clone().ok_or_else(|| {
            AppError::conflict(format!("server {} has no agent enrolled", server.name))
        })?;
        return r.get::<Agent>(&agent_id)?.ok_or_else(|| {
            AppError::conflict(format!("server {} has no agent enrolled", server.name))
        });
    }
    let agent = crate::agents::find_visible(r, subject, id).map_err(|e| {
        if e.kind == crate::error::Kind::NotFound {
            AppError::not_found("server")
        } else {
            e
        }
    })?;
    if !policy::can(subject, action, Some(&agent.project_id)) {
        return Err(AppError::forbidden());
    }
    Ok(agent)
}

/// The usable agents of a project.
pub fn agents_of_project(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<Agent>> {
    crate::agents::of_project(r, project_id)
}

/// Starts the project's backup on one agent.
pub fn start_on_agent(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    agent: &Agent,
) -> AppResult<Execution> {
    let recipe = recipe(w, &agent.project_id)?.ok_or_else(|| {
        AppError::conflict("this project has no backup recipe yet: set the Compose project, service and command first")
    })?;
    let work = Work::ComposeBackup {
        backup_id: uuid::Uuid::now_v7().to_string(),
        compose_project: recipe.compose_project,
        service: recipe.service,
        command: recipe.command,
        dump_path: recipe.dump_path,
        keep: recipe.keep,
    };
    create_execution(w, actor, subject, &agent.id, work)
}

/// Starts the project's backup on a server.
pub fn start_for_server(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    server_id: &str,
) -> AppResult<Execution> {
    let agent = agent_to_operate(w, subject, server_id)?;
    start_on_agent(w, actor, subject, &agent)
}

/// Starts the project's backup on every agent of the project.
pub fn start_for_project(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    project_id: &str,
) -> AppResult<Vec<Execution>> {
    if !policy::can(subject, Action::OperateServers, Some(project_id)) {
        return Err(AppError::forbidden());
    }
    let agents = agents_of_project(w, project_id)?;
    if agents.is_empty() {
        return Err(AppError::conflict(
            "this project has no enrolled agent to back up",
        ));
    }
    agents
        .iter()
        .map(|a| start_on_agent(w, actor, subject, a))
        .collect()
}

/// One backup the subject may see.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Backup> {
    let backup: Backup = r.get(id)?.ok_or_else(|| AppError::not_found("backup"))?;
    if !policy::can(subject, Action::ViewServers, Some(&backup.project_id)) {
        return Err(AppError::not_found("backup"));
    }
    Ok(backup)
}

/// The backup of an execution (a backup, verify or restore).
pub fn of_execution(r: &impl Read, execution_id: &str) -> anyhow::Result<Option<Backup>> {
    match r.index_get(BY_EXECUTION, execution_id)? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// What a list of backups (or system updates) is narrowed to; the fields combine. Ids
/// are resolved, and their visibility checked, by the caller.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project_id: Option<String>,
    pub server_id: Option<String>,
    pub agent_id: Option<String>,
    pub status: Option<BackupStatus>,
}

/// The index names of a list of operation records (backups, updates): each is
/// `value/record_id`.
pub(crate) struct Indexes {
    pub project: &'static str,
    pub agent: &'static str,
    pub server: &'static str,
    pub status: &'static str,
}

const INDEXES: Indexes = Indexes {
    project: BY_PROJECT,
    agent: BY_AGENT,
    server: BY_SERVER,
    status: BY_STATUS,
};

/// What a filter looks at in a record: project, agent, server, status.
pub(crate) type Facets<'a> = (&'a str, &'a str, Option<&'a str>, BackupStatus);

impl Filter {
    pub(crate) fn matches(&self, (project, agent, server, status): Facets<'_>) -> bool {
        self.project_id.as_deref().is_none_or(|p| p == project)
            && self.agent_id.as_deref().is_none_or(|a| a == agent)
            && self.server_id.as_deref().is_none_or(|s| Some(s) == server)
            && self.status.is_none_or(|s| s == status)
    }

    /// The index ranges to walk: the narrowest filter's, else one per project the
    /// subject may see (when it sees only some), else a status's, else the table.
    pub(crate) fn sources(&self, indexes: &Indexes, scope: Option<&[String]>) -> Vec<Source> {
        let pick = [
            (indexes.server, &self.server_id),
            (indexes.agent, &self.agent_id),
            (indexes.project, &self.project_id),
        ];
        for (index, value) in pick {
            if let Some(value) = value {
                return vec![Source::index(index, format!("{value}/"))];
            }
        }
        if let Some(projects) = scope {
            return projects
                .iter()
                .map(|p| Source::index(indexes.project, format!("{p}/")))
                .collect();
        }
        if let Some(status) = self.status {
            return vec![Source::index(
                indexes.status,
                format!("{}/", status.as_str()),
            )];
        }
        vec![Source::Table]
    }
}

/// One page of the backups the subject may see that match `filter`, newest first,
/// after the backup id `cursor`.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Backup>> {
    let scope = listing::project_scope(subject, Action::ViewServers);
    listing::page(
        r,
        filter.sources(&INDEXES, scope.as_deref()),
        Order::Descending,
        cursor,
        limit,
        |b: &Backup| {
            filter.matches(facets(b))
                && policy::can(subject, Action::ViewServers, Some(&b.project_id))
        },
    )
}

fn facets(b: &Backup) -> Facets<'_> {
    (&b.project_id, &b.agent_id, b.server_id.as_deref(), b.status)
}

/// The list index entries of a record with these facets: `(index, key)`.
pub(crate) fn list_keys(
    indexes: &Indexes,
    id: &str,
    facets: Facets<'_>,
) -> Vec<(&'static str, String)> {
    let (project, agent, server, status) = facets;
    let mut keys = vec![
        (indexes.project, format!("{project}/{id}")),
        (indexes.agent, format!("{agent}/{id}")),
        (indexes.status, format!("{}/{id}", status.as_str())),
    ];
    if let Some(server) = server {
        keys.push((indexes.server, format!("{server}/{id}")));
    }
    keys
}

/// Moves a record's list index entries from the keys it had to the keys it has.
pub(crate) fn move_keys(
    w: &mut Writer,
    id: &str,
    old: Vec<(&'static str, String)>,
    new: Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    for key in old.iter().filter(|k| !new.contains(k)) {
        w.index_delete(key.0, &key.1)?;
    }
    for key in new.iter().filter(|k| !old.contains(k)) {
        w.index_put(key.0, &key.1, id)?;
    }
    Ok(())
}

/// Writes a backup record: the only way one reaches the store. Its list indexes
/// follow in the same transaction.
fn save(w: &mut Writer, backup: &Backup) -> anyhow::Result<()> {
    let old: Option<Backup> = w.get(&backup.id)?;
    w.put(backup)?;
    let old_keys = old
        .as_ref()
        .map(|o| list_keys(&INDEXES, &o.id, facets(o)))
        .unwrap_or_default();
    move_keys(
        w,
        &backup.id,
        old_keys,
        list_keys(&INDEXES, &backup.id, facets(backup)),
    )?;
    let retry_at = |b: &Backup| {
        b.offsite
            .as_ref()
            .and_then(|c| c.next_retry_at)
            .map(|at| crate::offsite::retry_key(at, &b.id))
    };
    let (was, now) = (old.as_ref().and_then(retry_at), retry_at(backup));
    if was != now {
        if let Some(key) = was {
            w.index_delete(OFFSITE_RETRY, &key)?;
        }
        if let Some(key) = now {
            w.index_put(OFFSITE_RETRY, &key, &backup.id)?;
        }
    }
    Ok(())
}

/// Schema step: the list indexes of backups and system updates stored before lists
/// read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Backup> = w.list()?;
    for b in &all {
        move_keys(w, &b.id, Vec::new(), list_keys(&INDEXES, &b.id, facets(b)))?;
    }
    crate::updates::backfill_indexes(w)
}

/// Starts a verify of a kept backup.
pub fn start_verify(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    backup_id: &str,
) -> AppResult<Execution> {
    let backup = kept(w, subject, backup_id)?;
    let work = Work::ComposeVerify {
        backup_id: backup.id.clone(),
        compose_project: backup.compose_project.clone(),
        service: backup.service.clone(),
        offsite: false,
    };
    create_execution(w, actor, subject, &backup.agent_id, work)
}

/// Starts a verify of a backup's off-site copy (download, decrypt, compare the
/// sha256) on the backup's agent, or `on` another server of the project.
pub fn start_offsite_verify(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    backup_id: &str,
    on: Option<&str>,
) -> AppResult<Execution> {
    let backup = offsite_copy(w, subject, backup_id)?;
    let agent_id = agent_in_project(w, subject, &backup, on)?;
    let work = Work::ComposeVerify {
        backup_id: backup.id.clone(),
        compose_project: backup.compose_project.clone(),
        service: backup.service.clone(),
        offsite: true,
    };
    create_execution(w, actor, subject, &agent_id, work)
}

/// The agent to run on: the backup's own, or that of server (or agent) `on`, which
/// must belong to the backup's project.
fn agent_in_project(
    r: &impl Read,
    subject: &Subject,
    backup: &Backup,
    on: Option<&str>,
) -> AppResult<String> {
    match on.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(backup.agent_id.clone()),
        Some(id) => {
            let agent = agent_to_operate(r, subject, id)?;
            if agent.project_id != backup.project_id {
                return Err(AppError::invalid(
                    "server",
                    "the server must belong to the backup's project",
                ));
            }
            Ok(agent.id)
        }
    }
}

/// A backup whose off-site copy is done and kept, that the subject may operate on.
fn offsite_copy(r: &impl Read, subject: &Subject, backup_id: &str) -> AppResult<Backup> {
    let backup = get_visible(r, subject, backup_id)?;
    if !policy::can(subject, Action::OperateServers, Some(&backup.project_id)) {
        return Err(AppError::forbidden());
    }
    match &backup.offsite {
        Some(copy) if copy.status == OffsiteStatus::Done && copy.pruned_at.is_none() => Ok(backup),
        Some(copy) if copy.pruned_at.is_some() => Err(AppError::conflict(format!(
            "the off-site copy of backup {} was removed by the retention",
            backup.id
        ))),
        Some(_) => Err(AppError::conflict(format!(
            "backup {} has no finished off-site copy",
            backup.id
        ))),
        None => Err(AppError::conflict(format!(
            "backup {} has no off-site copy",
            backup.id
        ))),
    }
}

/// Uploads a kept backup off site again now (a failed or pending copy).
pub fn start_offsite_upload(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    backup_id: &str,
) -> AppResult<Execution> {
    let backup = kept(w, subject, backup_id)?;
    match backup.offsite.as_ref().map(|c| c.status) {
        None => {
            return Err(AppError::conflict(format!(
                "backup {} has no off-site copy to upload (the project had no off-site storage when it was made)",
                backup.id
            )))
        }
        Some(OffsiteStatus::Done) => {
            return Err(AppError::conflict(format!(
                "the off-site copy of backup {} is already done",
                backup.id
            )))
        }
        Some(OffsiteStatus::Uploading) => {
            return Err(AppError::conflict(format!(
                "the off-site copy of backup {} is being uploaded",
                backup.id
            )))
        }
        _ => {}
    }
    let work = Work::ComposeOffsiteUpload {
        backup_id: backup.id.clone(),
        compose_project: backup.compose_project.clone(),
        service: backup.service.clone(),
    };
    create_execution(w, actor, subject, &backup.agent_id, work)
}

/// Where a restore takes its dump from and where it runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreFrom {
    /// Use the off-site copy rather than the dump kept on the backup's server.
    pub offsite: bool,
    /// Restore onto this server (or agent) of the project; the backup's own when absent.
    /// Only an off-site copy can be restored elsewhere.
    pub onto: Option<String>,
}

/// Starts a restore of a kept backup; `confirmation` must be [`RESTORE_CONFIRMATION`].
pub fn start_restore(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    backup_id: &str,
    confirmation: Option<&str>,
) -> AppResult<Execution> {
    start_restore_from(
        w,
        actor,
        subject,
        backup_id,
        confirmation,
        &RestoreFrom::default(),
    )
}

/// Starts a restore of a backup from where `from` says.
pub fn start_restore_from(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    backup_id: &str,
    confirmation: Option<&str>,
    from: &RestoreFrom,
) -> AppResult<Execution> {
    let backup = if from.offsite {
        offsite_copy(w, subject, backup_id)?
    } else {
        kept(w, subject, backup_id)?
    };
    let agent_id = agent_in_project(w, subject, &backup, from.onto.as_deref())?;
    if !from.offsite && agent_id != backup.agent_id {
        return Err(AppError::invalid(
            "server",
            "only the off-site copy can be restored onto another server: the dump is kept on the server that made it",
        ));
    }
    if confirmation.map(str::trim) != Some(RESTORE_CONFIRMATION) {
        return Err(AppError::invalid("confirm", format!("type {RESTORE_CONFIRMATION} to confirm the restore: it overwrites the service's data")));
    }
    let recipe = recipe(w, &backup.project_id)?.unwrap_or_else(|| Recipe {
        project_id: backup.project_id.clone(),
        compose_project: backup.compose_project.clone(),
        service: backup.service.clone(),
        command: backup.command.clone(),
        dump_path: None,
        keep: DEFAULT_KEEP,
        restore_command: None,
        restore_path: None,
        updated_by: String::new(),
        updated_at: Utc::now(),
    });
    let command = recipe.restore_command.ok_or_else(|| {
        AppError::conflict("this project's backup recipe has no restore command yet")
    })?;
    let work = Work::ComposeRestore {
        backup_id: backup.id.clone(),
        compose_project: backup.compose_project.clone(),
        service: backup.service.clone(),
        command,
        dump_path: recipe.restore_path,
        offsite: from.offsite,
    };
    create_execution(w, actor, subject, &agent_id, work)
}

/// A kept backup the subject may operate on: 404 when it may not see it, 403 when it
/// may not operate its project, and only then 409 for one that cannot be used.
fn kept(r: &impl Read, subject: &Subject, backup_id: &str) -> AppResult<Backup> {
    let backup = get_visible(r, subject, backup_id)?;
    if !policy::can(subject, Action::OperateServers, Some(&backup.project_id)) {
        return Err(AppError::forbidden());
    }
    if backup.status != BackupStatus::Succeeded {
        return Err(AppError::conflict(format!(
            "backup {} did not succeed, so there is nothing to use",
            backup.id
        )));
    }
    if backup.removed {
        return Err(AppError::conflict(format!(
            "backup {} is no longer kept on the server",
            backup.id
        )));
    }
    Ok(backup)
}

/// Backups', verifies' and restores' part in their executions (see
/// [`executions::KindHooks`]): `POST /api/v1/executions` builds a `compose_backup`'s
/// work, and the backup's record is created with its execution and filled, in the
/// same transaction, when it ends.
pub struct ExecutionHooks;

impl KindHooks for ExecutionHooks {
    fn kinds(&self) -> &'static [&'static str] {
        &[
            "compose_backup",
            "compose_verify",
            "compose_restore",
            "compose_offsite_upload",
        ]
    }

    fn work_from_api(
        &self,
        r: &Writer,
        agent: &Agent,
        input: &NewExecution,
    ) -> AppResult<Option<Work>> {
        // Verifies and restores are started from a kept backup, never built from
        // the API's fields.
        if input.kind.as_deref() != Some("compose_backup") {
            return Ok(None);
        }
        work_from_api(r, agent, input).map(Some)
    }

    fn created(&self, w: &mut Writer, e: &Execution, _input: &NewExecution) -> anyhow::Result<()> {
        on_created(w, e)
    }

    fn finished(&self, w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
        on_finished(w, e)
    }
}

/// Creates the records of a new backup, verify or restore execution.
fn on_created(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    let check = || Check {
        execution_id: e.id.clone(),
        by: e.created_by.clone(),
        at: e.created_at,
        status: BackupStatus::Running,
        error: None,
        finished_at: None,
    };
    match &e.work {
        Work::ComposeBackup {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            ..
        } => {
            let offsite = crate::offsite::settings(w, &e.project_id)?.map(|settings| OffsiteCopy {
                status: OffsiteStatus::Pending,
                key: crate::offsite::object_key(&settings, compose_project, service, backup_id),
                size: None,
                sha256: None,
                etag: None,
                error: None,
                attempts: 0,
                next_retry_at: None,
                uploaded_at: None,
                pruned_at: None,
                last_verify: None,
            });
            let backup = Backup {
                id: backup_id.clone(),
                project_id: e.project_id.clone(),
                agent_id: e.agent_id.clone(),
                server_id: e.server_id.clone(),
                execution_id: e.id.clone(),
                compose_project: compose_project.clone(),
                service: service.clone(),
                command: command.clone(),
                dump_path: dump_path.clone(),
                status: BackupStatus::Running,
                created_by: e.created_by.clone(),
                created_at: e.created_at,
                started_at: None,
                finished_at: None,
                size: None,
                sha256: None,
                path: None,
                backup_log: String::new(),
                error_log: String::new(),
                error: None,
                removed: false,
                last_verify: None,
                restores: Vec::new(),
                offsite,
            };
            save(w, &backup)?;
            w.index_put(BY_EXECUTION, &e.id, backup_id)?;
        }
        Work::ComposeOffsiteUpload { backup_id, .. } => {
            if let Some(mut backup) = w.get::<Backup>(backup_id)? {
                if let Some(copy) = backup.offsite.as_mut() {
                    copy.status = OffsiteStatus::Uploading;
                    copy.next_retry_at = None;
                }
                save(w, &backup)?;
            }
            w.index_put(BY_EXECUTION, &e.id, backup_id)?;
        }
        Work::ComposeVerify { backup_id, .. } | Work::ComposeRestore { backup_id, .. } => {
            if let Some(mut backup) = w.get::<Backup>(backup_id)? {
                if let Work::ComposeVerify { offsite: true, .. } = e.work {
                    if let Some(copy) = backup.offsite.as_mut() {
                        copy.last_verify = Some(check());
                    }
                } else if matches!(e.work, Work::ComposeVerify { .. }) {
                    backup.last_verify = Some(check());
                } else {
                    backup.restores.push(check());
                }
                save(w, &backup)?;
            }
            w.index_put(BY_EXECUTION, &e.id, backup_id)?;
        }
        _ => {}
    }
    Ok(())
}

/// The stored output of an execution: (stdout, stderr and agent notes), each capped
/// to its last [`MAX_RECORD_LOG`] bytes, and the parsed result line.
pub fn read_log(
    r: &impl Read,
    execution_id: &str,
) -> anyhow::Result<(String, String, Option<serde_json::Value>)> {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut from = 0u64;
    loop {
        let chunks = executions::log(r, execution_id, from, 4096)?;
        let Some(last) = chunks.last() else { break };
        from = last.seq + 1;
        for c in &chunks {
            let target = if c.stream == "stdout" {
                &mut stdout
            } else {
                &mut stderr
            };
            target.push_str(&c.data);
            if target.len() > 2 * MAX_RECORD_LOG {
                let cut = target.len() - MAX_RECORD_LOG;
                let cut = (cut..target.len())
                    .find(|i| target.is_char_boundary(*i))
                    .unwrap_or(0);
                target.drain(..cut);
            }
        }
    }
    let (stdout, result) = split_result(&stdout);
    let tail = |s: &str| -> String {
        if s.len() <= MAX_RECORD_LOG {
            return s.to_string();
        }
        let cut = (s.len() - MAX_RECORD_LOG..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("[… earlier output in the execution's log]\n{}", &s[cut..])
    };
    Ok((tail(&stdout), tail(&stderr), result))
}

/// Splits the `DYNSERV-RESULT` line off a job's stdout.
pub fn split_result(stdout: &str) -> (String, Option<serde_json::Value>) {
    let mut result = None;
    let mut kept = String::with_capacity(stdout.len());
    for line in stdout.split_inclusive('\n') {
        match line.strip_prefix(RESULT_PREFIX) {
            Some(json) => result = serde_json::from_str(json.trim_end()).ok().or(result),
            None => kept.push_str(line),
        }
    }
    (kept, result)
}

fn error_of(e: &Execution, result: Option<&serde_json::Value>) -> String {
    if let Some(err) = result.and_then(|r| r.get("error")).and_then(|v| v.as_str()) {
        return err.to_string();
    }
    match e.status {
        Status::Cancelled => "cancelled".into(),
        Status::TimedOut => "stopped after its timeout".into(),
        _ => e.summary.clone().unwrap_or_else(|| "the job failed".into()),
    }
}

/// Fills the records of an ended backup, verify or restore execution from its stored
/// log. Called by `executions::finish` in its transaction, which also stores agents'
/// output: a problem here is logged, never allowed to fail that batch (the agent would
/// resend it forever).
fn on_finished(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    if let Err(err) = fill_records(w, e) {
        tracing::error!(execution = %e.id, "recording the end of a {} failed: {err:#}", e.work.kind());
    }
    Ok(())
}

fn fill_records(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    match &e.work {
        Work::ComposeBackup { backup_id, .. } => {
            let Some(mut backup) = w.get::<Backup>(backup_id)? else {
                return Ok(());
            };
            let (out, err, result) = read_log(w, &e.id)?;
            backup.backup_log = out;
            backup.error_log = err;
            backup.started_at = e.started_at;
            backup.finished_at = e.finished_at;
            let r = result.as_ref();
            let size = r
                .and_then(|r| r.get("size"))
                .and_then(|v| v.as_u64())
                .filter(|s| *s > 0);
            let sha256 = r
                .and_then(|r| r.get("sha256"))
                .and_then(|v| v.as_str())
                .filter(|s| s.len() == 64)
                .map(String::from);
            let ok = r.and_then(|r| r.get("ok")).and_then(|v| v.as_bool()) == Some(true);
            if e.status == Status::Succeeded && ok && size.is_some() && sha256.is_some() {
                backup.status = BackupStatus::Succeeded;
                backup.size = size;
                backup.sha256 = sha256;
                backup.path = r
                    .and_then(|r| r.get("path"))
                    .and_then(|v| v.as_str())
                    .map(String::from);
                // The agent pruned older backups of the same service.
                let removed: Vec<String> = r
                    .and_then(|r| r.get("removed"))
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                for old_id in removed {
                    if let Some(mut old) = w.get::<Backup>(&old_id)? {
                        if old.agent_id == backup.agent_id {
                            old.removed = true;
                            save(w, &old)?;
                        }
                    }
                }
            } else {
                backup.status = BackupStatus::Failed;
                backup.error = Some(if e.status == Status::Succeeded {
                    "the job ended without reporting a dump".to_string()
                } else {
                    error_of(e, r)
                });
                // With off-site storage, the copy that cannot be made raises it below.
                if backup.offsite.is_none() {
                    alert_backup_failed(
                        w,
                        &backup,
                        &format!(
                            "Backup of {}/{} failed",
                            backup.compose_project, backup.service
                        ),
                        &format!(
                            "backup.failed: {}",
                            backup.error.as_deref().unwrap_or_default()
                        ),
                    )?;
                }
            }
            if backup.offsite.is_some() {
                let outcome = if backup.status == BackupStatus::Succeeded {
                    r.and_then(|r| r.get("offsite")).cloned().unwrap_or_else(|| {
                        serde_json::json!({"ok": false, "error": "the agent uploaded nothing: the project's off-site storage was removed before the job was sent, or the agent is too old to upload"})
                    })
                } else {
                    serde_json::json!({"ok": false, "error": "the backup failed, so there was nothing to upload", "final": true})
                };
                record_upload(
                    w,
                    &mut backup,
                    &outcome,
                    e.finished_at.unwrap_or_else(Utc::now),
                )?;
            }
            save(w, &backup)?;
        }
        Work::ComposeOffsiteUpload { backup_id, .. } => {
            let Some(mut backup) = w.get::<Backup>(backup_id)? else {
                return Ok(());
            };
            let (_, _, result) = read_log(w, &e.id)?;
            let outcome = result
                .as_ref()
                .and_then(|r| r.get("offsite"))
                .cloned()
                .unwrap_or_else(
                    || serde_json::json!({"ok": false, "error": error_of(e, result.as_ref())}),
                );
            let outcome = if e.status == Status::Succeeded {
                outcome
            } else {
                let mut failed = outcome;
                failed["ok"] = serde_json::json!(false);
                if failed.get("error").is_none() {
                    failed["error"] = serde_json::json!(error_of(e, result.as_ref()));
                }
                failed
            };
            record_upload(
                w,
                &mut backup,
                &outcome,
                e.finished_at.unwrap_or_else(Utc::now),
            )?;
            save(w, &backup)?;
        }
        Work::ComposeVerify { backup_id, .. } | Work::ComposeRestore { backup_id, .. } => {
            let Some(mut backup) = w.get::<Backup>(backup_id)? else {
                return Ok(());
            };
            let (_, _, result) = read_log(w, &e.id)?;
            let ok = e.status == Status::Succeeded
                && result
                    .as_ref()
                    .and_then(|r| r.get("ok"))
                    .and_then(|v| v.as_bool())
                    == Some(true);
            let finish = |check: &mut Check| {
                check.status = if ok {
                    BackupStatus::Succeeded
                } else {
                    BackupStatus::Failed
                };
                check.error = (!ok).then(|| error_of(e, result.as_ref()));
                check.finished_at = e.finished_at;
            };
            if let Work::ComposeVerify { offsite: true, .. } = e.work {
                if let Some(check) = backup
                    .offsite
                    .as_mut()
                    .and_then(|c| c.last_verify.as_mut())
                    .filter(|c| c.execution_id == e.id)
                {
                    finish(check);
                }
            } else if matches!(e.work, Work::ComposeVerify { .. }) {
                if let Some(check) = backup
                    .last_verify
                    .as_mut()
                    .filter(|c| c.execution_id == e.id)
                {
                    finish(check);
                }
                // A dump that is gone from the server is no longer kept.
                if !ok && error_of(e, result.as_ref()).contains("not kept on this server") {
                    backup.removed = true;
                }
            } else if let Some(check) = backup.restores.iter_mut().find(|c| c.execution_id == e.id)
            {
                finish(check);
            }
            save(w, &backup)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynserv_shared::proto::OutputStream;

    /// Stores a queued backup execution (and so its record) on agent `a1`.
    fn queued_backup(w: &mut Writer, id: &str) -> Execution {
        let now = Utc::now();
        let e = Execution {
            id: id.into(),
            agent_id: "a1".into(),
            project_id: "p1".into(),
            server_id: None,
            work: Work::ComposeBackup {
                backup_id: format!("b-{id}"),
                compose_project: "shop".into(),
                service: "db".into(),
                command: "pg_dump".into(),
                dump_path: None,
                keep: 3,
            },
            timeout_s: None,
            status: Status::Running,
            exit_code: None,
            summary: None,
            created_by: "admin".into(),
            created_at: now,
            expires_at: now,
            started_at: Some(now),
            finished_at: None,
            cancel_requested: false,
            script_id: None,
            rollout_id: None,
            name: String::new(),
            agent_name: String::new(),
            output_truncated: false,
        };
        w.put(&e).unwrap();
        on_created(w, &e).unwrap();
        e
    }

    /// A job that exits 0 without reporting a dump is a failed backup; one that reports
    /// size and sha256 succeeded with them; a failing one keeps its reason and stderr.
    #[test]
    fn never_done_without_a_dump() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let sha = "a".repeat(64);
        let cases = [
            ("e1", Status::Succeeded, "done\n".to_string(), BackupStatus::Failed),
            (
                "e2",
                Status::Succeeded,
                format!("[dynserv] kept\n{RESULT_PREFIX}{{\"ok\":true,\"size\":5,\"sha256\":\"{sha}\"}}\n"),
                BackupStatus::Succeeded,
            ),
            (
                "e3",
                Status::Failed,
                format!("{RESULT_PREFIX}{{\"ok\":false,\"error\":\"the command exited with code 3\"}}\n"),
                BackupStatus::Failed,
            ),
        ];
        for (id, status, stdout, expected) in cases {
            store
                .write(|w| {
                    queued_backup(w, id);
                    w.log_append(
                        id,
                        0,
                        &executions::encode_chunk(OutputStream::Stdout, &stdout),
                    )?;
                    w.log_append(
                        id,
                        1,
                        &executions::encode_chunk(OutputStream::Stderr, "warn\n"),
                    )?;
                    executions::finish(w, id, status, Some(0), "exit", Utc::now())?;
                    Ok(())
                })
                .unwrap();
            let backup: Backup = store.read(|r| r.get(&format!("b-{id}"))).unwrap().unwrap();
            assert_eq!(backup.status, expected, "{id}: {backup:?}");
            assert_eq!(backup.error_log, "warn\n");
            assert!(!backup.backup_log.contains(RESULT_PREFIX));
            match id {
                "e1" => assert_eq!(
                    backup.error.as_deref(),
                    Some("the job ended without reporting a dump")
                ),
                "e2" => assert_eq!(
                    (backup.size, backup.sha256.as_deref()),
                    (Some(5), Some(sha.as_str()))
                ),
                _ => assert_eq!(
                    backup.error.as_deref(),
                    Some("the command exited with code 3")
                ),
            }
        }
    }

    /// Backup lists read through their indexes: a backup leaves the `running` list
    /// when its job ends and joins its outcome's; project, agent and visibility
    /// narrow the list.
    #[test]
    fn lists_follow_the_status_of_a_backup() {
        crate::app::install_execution_hooks();
        use crate::policy::{Level, Role};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                queued_backup(w, "e1");
                queued_backup(w, "e2");
                executions::finish(w, "e1", Status::Failed, Some(3), "exit", Utc::now())?;
                Ok(())
            })
            .unwrap();
        let subject = |role: Role, grant: Option<&str>| Subject {
            user_id: "u".into(),
            username: "u".into(),
            role,
            is_manager: false,
            grants: grant
                .map(|p| (p.to_string(), Level::Read))
                .into_iter()
                .collect(),
        };
        let admin = subject(Role::Admin, None);
        let ids = |who: &Subject, filter: Filter| -> Vec<String> {
            store
                .read(|r| query(r, who, &filter, None, 10))
                .unwrap()
                .items
                .into_iter()
                .map(|b| b.id)
                .collect()
        };
        let with_status = |status| Filter {
            status: Some(status),
            ..Default::default()
        };
        assert_eq!(ids(&admin, with_status(BackupStatus::Running)), ["b-e2"]);
        assert_eq!(ids(&admin, with_status(BackupStatus::Failed)), ["b-e1"]);
        assert!(ids(&admin, with_status(BackupStatus::Succeeded)).is_empty());
        let of = |project: &str, agent: &str| Filter {
            project_id: Some(project.into()),
            agent_id: Some(agent.into()),
            ..Default::default()
        };
        assert_eq!(ids(&admin, of("p1", "a1")), ["b-e2", "b-e1"]);
        assert!(ids(&admin, of("p1", "a2")).is_empty());
        let granted = subject(Role::Technical, Some("p1"));
        assert_eq!(ids(&granted, Filter::default()), ["b-e2", "b-e1"]);
        let elsewhere = subject(Role::Technical, Some("p2"));
        assert!(ids(&elsewhere, Filter::default()).is_empty());
    }

    /// An off-site upload that fails leaves the copy `failed` with the storage's words
    /// and a retry due a minute later; the worker's pass starts it only once due (as an
    /// `uploading` upload job, once); a second failure waits twice as long; a report
    /// that does not match the backup's key and sha256 is never `done`; a matching one is.
    #[test]
    fn failed_uploads_are_retried_with_backoff_and_done_only_when_listed() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        store.seal_with(crate::secrets::Keys::from_master(b"test"));
        let now = Utc::now();
        let sha = "b".repeat(64);
        let settings = crate::offsite::ProjectOffsite {
            id: "p1".into(),
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "bucket".into(),
            prefix: "nightly/".into(),
            region: "us-east-1".into(),
            access_key: "ak".into(),
            secret_key: "sk".into(),
            encryption_key: "a2V5".into(),
            retention: Default::default(),
            updated_at: now,
            updated_by: "admin".into(),
            inherited: false,
        };
        let log_and_finish = |w: &mut Writer, id: &str, line: String, status: Status| {
            w.log_append(
                id,
                0,
                &executions::encode_chunk(OutputStream::Stdout, &line),
            )?;
            executions::finish(w, id, status, Some(0), "exit", now)?;
            anyhow::Ok(())
        };
        store
            .write(|w| {
                w.put(&settings)?;
                w.put(&crate::agents::Agent {
                    enrolled_at: now,
                    ..crate::agents::Agent::sample("a1", "db-01", "p1")
                })?;
                crate::agents::backfill_indexes(w)?;
                queued_backup(w, "e1");
                let line = format!("{RESULT_PREFIX}{{\"ok\":true,\"size\":5,\"sha256\":\"{sha}\",\"offsite\":{{\"ok\":false,\"key\":\"k\",\"error\":\"the storage answered SignatureDoesNotMatch\"}}}}\n");
                log_and_finish(w, "e1", line, Status::Succeeded)
            })
            .unwrap();
        let backup = |store: &crate::store::Store| -> Backup {
            store.read(|r| r.get("b-e1")).unwrap().unwrap()
        };
        let b = backup(&store);
        assert_eq!(b.status, BackupStatus::Succeeded);
        let copy = b.offsite.clone().expect("an off-site copy");
        assert!(copy.key.starts_with("nightly/p1/shop/db/b-e1"), "{copy:?}");
        assert_eq!(copy.status, OffsiteStatus::Failed);
        assert_eq!(
            copy.error.as_deref(),
            Some("the storage answered SignatureDoesNotMatch")
        );
        assert_eq!(copy.attempts, 1);
        let due = copy.next_retry_at.expect("a retry");
        assert_eq!((due - now).num_seconds(), 60);

        let pass = |at: DateTime<Utc>| store.write(|w| start_due_retries(w, at)).unwrap();
        let due = |at: DateTime<Utc>| store.read(|r| retry_due(r, at)).unwrap();
        assert!(!due(now + chrono::Duration::seconds(30)));
        assert!(due(now + chrono::Duration::seconds(61)));
        assert!(pass(now + chrono::Duration::seconds(30)).is_empty());
        let started = pass(now + chrono::Duration::seconds(61));
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].work.kind(), "compose_offsite_upload");
        assert_eq!(
            backup(&store).offsite.unwrap().status,
            OffsiteStatus::Uploading
        );
        assert!(
            pass(now + chrono::Duration::seconds(600)).is_empty(),
            "only once"
        );

        // It fails again: twice the wait.
        let retry = started[0].id.clone();
        store
            .write(|w| {
                log_and_finish(w, &retry, format!("{RESULT_PREFIX}{{\"ok\":false,\"error\":\"connection refused\",\"offsite\":{{\"ok\":false,\"key\":\"k\",\"error\":\"connection refused\"}}}}\n"), Status::Failed)
            })
            .unwrap();
        let copy = backup(&store).offsite.unwrap();
        assert_eq!((copy.status, copy.attempts), (OffsiteStatus::Failed, 2));
        assert_eq!((copy.next_retry_at.unwrap() - now).num_seconds(), 120);

        // A report for another key is not this copy.
        let key = copy.key.clone();
        let started = pass(now + chrono::Duration::seconds(121));
        let retry = started[0].id.clone();
        store
            .write(|w| {
                log_and_finish(w, &retry, format!("{RESULT_PREFIX}{{\"ok\":true,\"offsite\":{{\"ok\":true,\"key\":\"elsewhere\",\"size\":99,\"sha256\":\"{sha}\"}}}}\n"), Status::Succeeded)
            })
            .unwrap();
        let copy = backup(&store).offsite.unwrap();
        assert_eq!(copy.status, OffsiteStatus::Failed, "{copy:?}");
        let started = pass(now + chrono::Duration::seconds(3600));
        let retry = started[0].id.clone();
        store
            .write(|w| {
                log_and_finish(w, &retry, format!("{RESULT_PREFIX}{{\"ok\":true,\"offsite\":{{\"ok\":true,\"key\":\"{key}\",\"size\":99,\"sha256\":\"{sha}\"}}}}\n"), Status::Succeeded)
            })
            .unwrap();
        let copy = backup(&store).offsite.unwrap();
        assert_eq!(
            (copy.status, copy.size, copy.attempts),
            (OffsiteStatus::Done, Some(99), 4)
        );
        assert!(copy.next_retry_at.is_none() && copy.error.is_none());
    }

    /// The result line is taken off the log and parsed; other lines stay.
    #[test]
    fn result_line_is_split_off() {
        let (log, result) =
            split_result("[dynserv] running\nrow\nDYNSERV-RESULT {\"ok\":true,\"size\":3}\n");
        assert_eq!(log, "[dynserv] running\nrow\n");
        assert_eq!(result.unwrap()["size"], 3);
        assert_eq!(split_result("no result\n").1, None);
    }

    /// Compose names follow Compose's rules and cannot climb directories.
    #[test]
    fn compose_names() {
        assert!(name_ok("nova-hr-docker"));
        assert!(name_ok("db_1"));
        assert!(!name_ok(".."));
        assert!(!name_ok("a/b"));
        assert!(!name_ok(""));
    }
}

// ---- off-site copies ----

/// Records the outcome of an upload (the `offsite` part of a backup's or an upload
/// job's result line) in the backup's off-site copy: `done` only when the agent reports
/// that the storage lists the object with the size it sent for the dump's sha256;
/// otherwise `failed` with the storage's message, a `backup.failed` alert and, while
/// attempts remain (and the dump is kept), a retry after a doubling wait.
fn record_upload(
    w: &mut Writer,
    backup: &mut Backup,
    outcome: &serde_json::Value,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(copy) = backup.offsite.as_mut() else {
        return Ok(());
    };
    copy.attempts += 1;
    copy.next_retry_at = None;
    let ok = outcome.get("ok").and_then(|v| v.as_bool()) == Some(true);
    let size = outcome
        .get("size")
        .and_then(|v| v.as_u64())
        .filter(|s| *s > 0);
    let sha256 = outcome.get("sha256").and_then(|v| v.as_str());
    let key = outcome.get("key").and_then(|v| v.as_str());
    let consistent =
        key == Some(copy.key.as_str()) && sha256.is_some() && sha256 == backup.sha256.as_deref();
    if ok && size.is_some() && consistent {
        copy.status = OffsiteStatus::Done;
        copy.size = size;
        copy.sha256 = sha256.map(String::from);
        copy.etag = outcome
            .get("etag")
            .and_then(|v| v.as_str())
            .map(String::from);
        copy.error = None;
        copy.uploaded_at = Some(now);
        return Ok(());
    }
    let error = if ok {
        "the agent reported an upload that does not match this backup (key, size or sha256)"
            .to_string()
    } else {
        outcome
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("the upload failed")
            .to_string()
    };
    copy.status = OffsiteStatus::Failed;
    copy.error = Some(error.clone());
    // Nothing to retry without a kept dump or without storage to send it to.
    let last = outcome.get("final").and_then(|v| v.as_bool()) == Some(true)
        || backup.status != BackupStatus::Succeeded
        || backup.removed
        || crate::offsite::settings(w, &backup.project_id)?.is_none();
    if !last {
        copy.next_retry_at = crate::offsite::next_retry(copy.attempts, now);
    }
    let retry = match copy.next_retry_at {
        Some(at) => format!("retried at {}", at.format("%H:%M:%S UTC")),
        None if last => "not retried".to_string(),
        None => format!("not retried after {} attempts", copy.attempts),
    };
    alert_backup_failed(
        w,
        backup,
        &format!(
            "Off-site copy of the {}/{} backup failed",
            backup.compose_project, backup.service
        ),
        &format!("backup.failed: {error} ({retry})"),
    )
}

/// The `backup.failed` alert: to the admins, the technicians who see the project and
/// whoever started the backup, linking to it; and to the webhooks and e-mails that
/// want it.
fn alert_backup_failed(
    w: &mut Writer,
    backup: &Backup,
    title: &str,
    body: &str,
) -> anyhow::Result<()> {
    let mut users = crate::alerts::failure_recipients(w, &backup.project_id)?;
    if let Some(id) = crate::notifications::user_id_of(w, &backup.created_by)? {
        users.push(id);
    }
    crate::alerts::raise(
        w,
        &users,
        &crate::alerts::Alert {
            event: "backup.failed",
            project_id: Some(backup.project_id.clone()),
            subject: serde_json::json!({
                "backup": backup.id,
                "server": backup.server_id,
                "compose_project": backup.compose_project,
                "service": backup.service,
                "error": backup.error,
            }),
            message: crate::notifications::Message {
                title: title.to_string(),
                body: body.to_string(),
                link: Some(format!("/backups/{}", backup.id)),
                level: "danger",
                subject: format!("backup:{}", backup.id),
            },
        },
    )
}

/// Adds the off-site target (with its secrets, which the agent masks in its output)
/// to the job of a backup, off-site upload, off-site verify or off-site restore, as it
/// is sent. A backup whose project has no off-site storage any more goes without one,
/// and its copy is then recorded failed, never skipped.
pub fn add_offsite_target(
    r: &impl Read,
    execution: &Execution,
    spec: &mut dynserv_shared::proto::JobSpec,
) -> anyhow::Result<()> {
    use dynserv_shared::proto::JobKind;
    let (backup_id, wanted) = match &execution.work {
        Work::ComposeBackup { backup_id, .. } | Work::ComposeOffsiteUpload { backup_id, .. } => {
            (backup_id, true)
        }
        Work::ComposeVerify {
            backup_id, offsite, ..
        }
        | Work::ComposeRestore {
            backup_id, offsite, ..
        } => (backup_id, *offsite),
        _ => return Ok(()),
    };
    if !wanted {
        return Ok(());
    }
    let Some(backup) = r.get::<Backup>(backup_id)? else {
        return Ok(());
    };
    let Some(settings) = crate::offsite::settings(r, &backup.project_id)? else {
        return Ok(());
    };
    let Some(copy) = &backup.offsite else {
        return Ok(());
    };
    let target = crate::offsite::target(&settings, &copy.key, backup.sha256.as_deref());
    spec.secrets.push(target.secret_key.clone());
    spec.secrets.push(target.encryption_key.clone());
    match &mut spec.kind {
        JobKind::ComposeBackup { offsite, .. }
        | JobKind::ComposeOffsiteUpload { offsite, .. }
        | JobKind::ComposeVerify { offsite, .. }
        | JobKind::ComposeRestore { offsite, .. } => *offsite = Some(target),
        _ => {}
    }
    Ok(())
}

/// How often the off-site worker looks for due retries and prunes.
const OFFSITE_TICK: Duration = Duration::from_secs(10);
/// How often each project's off-site copies are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Whether a failed upload's retry is due at `now`.
fn retry_due(r: &impl Read, now: DateTime<Utc>) -> anyhow::Result<bool> {
    let first = r.index_page(&crate::store::IndexScan::prefix(OFFSITE_RETRY, "", 1))?;
    Ok(first
        .first()
        .is_some_and(|(key, _)| *key <= crate::offsite::retry_key(now, "~")))
}

/// Starts the uploads whose retry is due (at most a batch per pass). Answers the
/// executions to dispatch.
pub fn start_due_retries(w: &mut Writer, now: DateTime<Utc>) -> anyhow::Result<Vec<Execution>> {
    let actor = Actor {
        username: "offsite".into(),
        ip: None,
    };
    let subject = crate::schedules::scheduler_subject();
    let due = w.index_page(&crate::store::IndexScan::prefix(OFFSITE_RETRY, "", 50))?;
    let limit = crate::offsite::retry_key(now, "~");
    let mut started = Vec::new();
    for (key, backup_id) in due {
        if key > limit {
            break;
        }
        let Some(mut backup) = w.get::<Backup>(&backup_id)? else {
            w.index_delete(OFFSITE_RETRY, &key)?;
            continue;
        };
        match start_offsite_upload(w, &actor, &subject, &backup_id) {
            Ok(e) => started.push(e),
            Err(e) => {
                // Nothing left to upload (the dump was pruned, the agent removed):
                // the copy stays failed, with why, and is not retried again.
                if let Some(copy) = backup.offsite.as_mut() {
                    copy.next_retry_at = None;
                    copy.error = Some(format!(
                        "{}; the retry could not start: {}",
                        copy.error.clone().unwrap_or_default(),
                        e.message
                    ));
                }
                save(w, &backup)?;
            }
        }
    }
    Ok(started)
}

/// The off-site worker: on the leader, starts due retries every [`OFFSITE_TICK`] and
/// prunes each project's copies every [`PRUNE_EVERY`].
pub async fn offsite_worker(
    app: crate::app::App,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(OFFSITE_TICK) => {}
        }
        if !app.cluster.is_leader() {
            continue;
        }
        let store = app.store.clone();
        let due = move || -> anyhow::Result<Vec<Execution>> {
            // A read first: most passes find nothing due and need no write.
            let now = Utc::now();
            if !store.read(|r| retry_due(r, now))? {
                return Ok(Vec::new());
            }
            store.write(|w| start_due_retries(w, now))
        };
        match crate::store::blocking(due).await {
            Ok(started) => {
                for e in &started {
                    app.fleet.dispatch(e);
                }
            }
            Err(e) => tracing::error!("off-site retries: {e:#}"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            if let Err(e) = prune_all(&app).await {
                tracing::error!("off-site retention: {e:#}");
            }
        }
    }
}

/// What one pruning pass of a project did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub deleted: Vec<String>,
    pub kept: usize,
    pub errors: Vec<String>,
}

/// The backup id an off-site object's key ends with.
fn backup_id_of_key(key: &str) -> String {
    key.rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".dump.dsv")
        .to_string()
}

/// Prunes every project's off-site copies.
pub async fn prune_all(app: &crate::app::App) -> anyhow::Result<()> {
    // Each project's own storage, or the default one it uses.
    let store = app.store.clone();
    let all: Vec<crate::offsite::ProjectOffsite> = crate::store::blocking(move || {
        store.read(|r| {
            let mut all = Vec::new();
            for project in crate::projects::all(r)? {
                all.extend(crate::offsite::settings(r, &project.id)?);
            }
            Ok(all)
        })
    })
    .await?;
    for settings in all {
        let pruned = prune_project(app, &settings, Utc::now()).await;
        if !pruned.deleted.is_empty() || !pruned.errors.is_empty() {
            tracing::info!(project = %settings.id, deleted = pruned.deleted.len(), kept = pruned.kept, errors = ?pruned.errors, "off-site retention");
        }
    }
    Ok(())
}

/// Applies a project's retention to its off-site copies: lists the objects under the
/// project's prefix, keeps what [`crate::offsite::to_prune`] keeps, deletes the rest
/// and marks their backups' copies pruned. Objects are dated by the backup they hold
/// (its id is a UUIDv7), or by the storage's date for any other name.
pub async fn prune_project(
    app: &crate::app::App,
    settings: &crate::offsite::ProjectOffsite,
    now: DateTime<Utc>,
) -> Pruned {
    let mut pruned = Pruned::default();
    let target = crate::offsite::target(settings, "", None);
    let listed = match dynserv_agent::offsite::list(
        &target,
        &crate::offsite::project_prefix(settings),
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            pruned.errors.push(e.to_string());
            return pruned;
        }
    };
    let copies: Vec<(String, DateTime<Utc>)> = listed
        .iter()
        .filter(|o| o.key.ends_with(".dump.dsv"))
        .map(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            let id = name.trim_end_matches(".dump.dsv");
            let made = uuid::Uuid::parse_str(id)
                .ok()
                .and_then(|u| u.get_timestamp())
                .map(|t| t.to_unix())
                .and_then(|(secs, nanos)| DateTime::<Utc>::from_timestamp(secs as i64, nanos))
                .unwrap_or(o.last_modified);
            (o.key.clone(), made)
        })
        .collect();
    let doomed = crate::offsite::to_prune(&copies, settings.retention);
    pruned.kept = copies.len() - doomed.len();
    // A copy whose upload is under way again is left for the next pass.
    let store = app.store.clone();
    let ids: Vec<String> = doomed.iter().map(|k| backup_id_of_key(k)).collect();
    let busy: Vec<String> = crate::store::blocking(move || {
        store.read(|r| {
            let mut busy = Vec::new();
            for id in ids {
                if let Some(b) = r.get::<Backup>(&id)? {
                    if b.offsite
                        .as_ref()
                        .is_some_and(|c| c.status == OffsiteStatus::Uploading)
                    {
                        busy.push(id);
                    }
                }
            }
            Ok(busy)
        })
    })
    .await
    .unwrap_or_default();
    for key in doomed {
        if busy.contains(&backup_id_of_key(&key)) {
            pruned.kept += 1;
            continue;
        }
        match dynserv_agent::offsite::delete(&target, &key).await {
            Ok(()) => {
                let backup_id = backup_id_of_key(&key);
                let store = app.store.clone();
                let marked = crate::store::blocking(move || {
                    store.write(|w| {
                        if let Some(mut b) = w.get::<Backup>(&backup_id)? {
                            if let Some(copy) = b.offsite.as_mut() {
                                copy.pruned_at = Some(now);
                                save(w, &b)?;
                            }
                        }
                        Ok(())
                    })
                })
                .await;
                if let Err(e) = marked {
                    pruned.errors.push(format!("{e:#}"));
                }
                pruned.deleted.push(key);
            }
            Err(e) => pruned.errors.push(e.to_string()),
        }
    }
    pruned
}
