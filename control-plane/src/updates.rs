//! System updates: one record per update run on an agent (status, the packages
//! upgraded, whether a reboot is required, the log). The agent detects apt, dnf or
//! apk and upgrades non-interactively (`dynserv-agent system-update`); its last stdout
//! line `DYNSERV-RESULT {json}` lists the packages. Records are created and filled by
//! this module's [`ExecutionHooks`], which `executions` calls in the transaction that
//! creates and ends a `system_update` execution. Table `updates`; list indexes `update_by_project`,
//! `update_by_agent`, `update_by_server` and `update_by_status` (`value/update_id`),
//! kept by [`save`], through which every update record is written.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::audit::Actor;
use crate::backups::{self, BackupStatus, Filter, Indexes};
use crate::error::{AppError, AppResult};
use crate::executions::{Execution, KindHooks, NewExecution, Status, Work};
use crate::listing::{self, Order, Page};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};

const INDEXES: Indexes = Indexes {
    project: "update_by_project",
    agent: "update_by_agent",
    server: "update_by_server",
    status: "update_by_status",
};

/// One upgraded package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
}

/// One system update run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Update {
    pub id: String,
    pub project_id: String,
    pub agent_id: String,
    pub server_id: Option<String>,
    pub execution_id: String,
    /// Only listed what would be upgraded.
    pub check: bool,
    /// `running`, `succeeded` or `failed`.
    pub status: BackupStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `apt`, `dnf` or `apk`.
    pub manager: Option<String>,
    pub packages: Vec<Package>,
    pub reboot_required: Option<bool>,
    pub log: String,
    pub error_log: String,
    pub error: Option<String>,
}

impl Record for Update {
    const TABLE: &'static str = "updates";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The API view: the record plus its duration.
pub fn view(update: &Update) -> serde_json::Value {
    let mut value = serde_json::to_value(update).unwrap_or_default();
    let start = update.started_at.unwrap_or(update.created_at);
    let duration = update
        .finished_at
        .map(|f| (f - start).num_milliseconds() as f64 / 1000.0);
    if let Some(map) = value.as_object_mut() {
        map.insert("duration_s".into(), serde_json::json!(duration));
    }
    value
}

/// Starts a system update on one agent.
pub fn start_on_agent(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    agent: &Agent,
    check: bool,
) -> AppResult<Execution> {
    let work = Work::SystemUpdate {
        update_id: uuid::Uuid::now_v7().to_string(),
        check,
    };
    backups::create_execution(w, actor, subject, &agent.id, work)
}

/// Starts a system update on a server.
pub fn start_for_server(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    server_id: &str,
    check: bool,
) -> AppResult<Execution> {
    let agent = backups::agent_to_operate(w, subject, server_id)?;
    start_on_agent(w, actor, subject, &agent, check)
}

/// Starts a system update on every agent of a project.
pub fn start_for_project(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    project_id: &str,
    check: bool,
) -> AppResult<Vec<Execution>> {
    if !policy::can(subject, Action::OperateServers, Some(project_id)) {
        return Err(AppError::forbidden());
    }
    let agents = backups::agents_of_project(w, project_id)?;
    if agents.is_empty() {
        return Err(AppError::conflict(
            "this project has no enrolled agent to update",
        ));
    }
    agents
        .iter()
        .map(|a| start_on_agent(w, actor, subject, a, check))
        .collect()
}

/// One update the subject may see.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Update> {
    let update: Update = r.get(id)?.ok_or_else(|| AppError::not_found("update"))?;
    if !policy::can(subject, Action::ViewServers, Some(&update.project_id)) {
        return Err(AppError::not_found("update"));
    }
    Ok(update)
}

/// One page of the updates the subject may see that match `filter`, newest first,
/// after the update id `cursor`.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Update>> {
    let scope = listing::project_scope(subject, Action::ViewServers);
    listing::page(
        r,
        filter.sources(&INDEXES, scope.as_deref()),
        Order::Descending,
        cursor,
        limit,
        |u: &Update| {
            filter.matches(facets(u))
                && policy::can(subject, Action::ViewServers, Some(&u.project_id))
        },
    )
}

fn facets(u: &Update) -> backups::Facets<'_> {
    (&u.project_id, &u.agent_id, u.server_id.as_deref(), u.status)
}

/// Writes an update record: the only way one reaches the store. Its list indexes
/// follow in the same transaction.
fn save(w: &mut Writer, update: &Update) -> anyhow::Result<()> {
    let old: Option<Update> = w.get(&update.id)?;
    w.put(update)?;
    let old_keys = old
        .as_ref()
        .map(|o| backups::list_keys(&INDEXES, &o.id, facets(o)))
        .unwrap_or_default();
    let new_keys = backups::list_keys(&INDEXES, &update.id, facets(update));
    backups::move_keys(w, &update.id, old_keys, new_keys)
}

/// Schema step (run by `backups::backfill_indexes`): the list indexes of updates
/// stored before lists read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Update> = w.list()?;
    for u in &all {
        let keys = backups::list_keys(&INDEXES, &u.id, facets(u));
        backups::move_keys(w, &u.id, Vec::new(), keys)?;
    }
    Ok(())
}

/// System updates' part in their executions (see [`KindHooks`]): the update's record
/// is created with its execution and filled, in the same transaction, when it ends.
pub struct ExecutionHooks;

impl KindHooks for ExecutionHooks {
    fn kinds(&self) -> &'static [&'static str] {
        &["system_update"]
    }

    fn created(&self, w: &mut Writer, e: &Execution, _input: &NewExecution) -> anyhow::Result<()> {
        on_created(w, e)
    }

    /// The end is stored in the transaction that also stores agents' output: a
    /// problem here is logged, never allowed to fail that batch (the agent would
    /// resend it forever).
    fn finished(&self, w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
        if let Err(err) = on_finished(w, e) {
            tracing::error!(execution = %e.id, "recording the end of a {} failed: {err:#}", e.work.kind());
        }
        Ok(())
    }
}

/// Creates the record of a new update execution.
fn on_created(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    let Work::SystemUpdate { update_id, check } = &e.work else {
        return Ok(());
    };
    let update = Update {
        id: update_id.clone(),
        project_id: e.project_id.clone(),
        agent_id: e.agent_id.clone(),
        server_id: e.server_id.clone(),
        execution_id: e.id.clone(),
        check: *check,
        status: BackupStatus::Running,
        created_by: e.created_by.clone(),
        created_at: e.created_at,
        started_at: None,
        finished_at: None,
        manager: None,
        packages: Vec::new(),
        reboot_required: None,
        log: String::new(),
        error_log: String::new(),
        error: None,
    };
    save(w, &update)
}

/// Fills an update's record from its ended execution's log.
fn on_finished(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    let Work::SystemUpdate { update_id, .. } = &e.work else {
        return Ok(());
    };
    let Some(mut update) = w.get::<Update>(update_id)? else {
        return Ok(());
    };
    let (log, error_log, result) = backups::read_log(w, &e.id)?;
    update.log = log;
    update.error_log = error_log;
    update.started_at = e.started_at;
    update.finished_at = e.finished_at;
    let r = result.as_ref();
    update.manager = r
        .and_then(|r| r.get("manager"))
        .and_then(|v| v.as_str())
        .map(String::from);
    update.packages = r
        .and_then(|r| r.get("upgraded"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    update.reboot_required = r
        .and_then(|r| r.get("reboot_required"))
        .and_then(|v| v.as_bool());
    let ok = r.and_then(|r| r.get("ok")).and_then(|v| v.as_bool()) == Some(true);
    if e.status == Status::Succeeded && ok {
        update.status = BackupStatus::Succeeded;
    } else {
        update.status = BackupStatus::Failed;
        update.error = Some(
            r.and_then(|r| r.get("error"))
                .and_then(|v| v.as_str())
                .map(String::from)
                .or_else(|| e.summary.clone())
                .unwrap_or_else(|| "the update failed".into()),
        );
        let recipients = crate::alerts::failure_recipients(w, &update.project_id)?;
        crate::alerts::raise(
            w,
            &recipients,
            &crate::alerts::Alert {
                event: "update.failed",
                project_id: Some(update.project_id.clone()),
                subject: serde_json::json!({
                    "update": update.id,
                    "server": update.server_id,
                    "agent": e.agent_name,
                    "execution": e.id,
                    "error": update.error,
                }),
                message: crate::notifications::Message {
                    title: format!("System update on {} failed", e.agent_name),
                    body: update.error.clone().unwrap_or_default(),
                    link: Some(format!("/updates/{}", update.id)),
                    level: "danger",
                    subject: format!("update:{}", update.id),
                },
            },
        )?;
    }
    save(w, &update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executions;
    use dynserv_shared::proto::{OutputStream, RESULT_PREFIX};

    /// The update record takes the package manager, the packages and the reboot flag
    /// from the job's result line, and the log without it.
    #[test]
    fn record_is_filled_from_the_result_line() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let now = Utc::now();
        let e = Execution {
            id: "e1".into(),
            agent_id: "a1".into(),
            project_id: "p1".into(),
            server_id: None,
            work: Work::SystemUpdate {
                update_id: "u1".into(),
                check: false,
            },
            timeout_s: None,
            status: Status::Running,
            exit_code: None,
            summary: None,
            created_by: "scheduler".into(),
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
        let stdout = format!(
            "$ apt-get -y upgrade\n{RESULT_PREFIX}{{\"ok\":true,\"manager\":\"apt\",\"upgraded\":[{{\"name\":\"libssl3\",\"from\":\"3.0.11\",\"to\":\"3.0.13\"}}],\"reboot_required\":true}}\n"
        );
        store
            .write(|w| {
                w.put(&e)?;
                on_created(w, &e)?;
                w.log_append(
                    "e1",
                    0,
                    &executions::encode_chunk(OutputStream::Stdout, &stdout),
                )?;
                executions::finish(
                    w,
                    "e1",
                    Status::Succeeded,
                    Some(0),
                    "exit code 0",
                    Utc::now(),
                )?;
                Ok(())
            })
            .unwrap();
        let update: Update = store.read(|r| r.get("u1")).unwrap().unwrap();
        assert_eq!(update.status, BackupStatus::Succeeded);
        assert_eq!(update.manager.as_deref(), Some("apt"));
        assert_eq!(
            update.packages,
            vec![Package {
                name: "libssl3".into(),
                from: Some("3.0.11".into()),
                to: "3.0.13".into()
            }]
        );
        assert_eq!(update.reboot_required, Some(true));
        assert_eq!(update.log, "$ apt-get -y upgrade\n");
    }
}
