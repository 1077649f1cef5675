//! Drift detection (issue 18): a playbook script marked as the *desired state* of a
//! project (or some of its servers) on a cron schedule; the scheduler runs it in check
//! and diff mode on each target server, and each server × script keeps its last result
//! (`in_sync`, `drifted` with the tasks that would change and their diffs, `failed`,
//! or `never` checked). "Apply" runs the same script for real on one server and keeps
//! which tasks it changed.
//!
//! The agent reports per task (`dynserv_playbook::engine::report`) in the job's last
//! stdout line (`DYNSERV-RESULT {json}`), which [`execution_finished`] reads when a
//! check or an Apply ends, in the transaction that ends it (called by the playbook
//! kind's hooks in `scripts`). `drift.detected` and
//! `drift.resolved` are raised only when a server × script changes state
//! (`DriftResult::alerted`), never on every run.
//!
//! Tables: `desired_states` (id = the script's id), `drift_results` (id
//! `server_id:script_id`). Indexes: `drift_by_project` (`project_id/result_id`, the
//! Drift list of one project), `drift_by_script` (`script_id/server_id`),
//! `drift_by_server` (`server_id/script_id`), `drift_by_execution` (execution id →
//! result id, while a check or an Apply of it runs). Kept count
//! `drift_drifted/{project_id}` (the dashboard's figure).
//!
//! What does not live here: the cron parser and its words (`schedules`), running a job
//! (`executions`, `fleet`), who may do what (`policy`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{self, Execution, NewExecution, Status, Work};
use crate::listing::{self, Order, Page, Source};
use crate::policy::{self, Action, Subject};
use crate::schedules::{self, Cron};
use crate::scripts::{self, Script, ScriptKind};
use crate::servers::Server;
use crate::store::{Read, Record, Writer};
use dynserv_playbook::engine::report::{Report, TaskStatus};

const BY_PROJECT: &str = "drift_by_project";
const BY_SCRIPT: &str = "drift_by_script";
const BY_SERVER: &str = "drift_by_server";
const BY_EXECUTION: &str = "drift_by_execution";

/// Servers one desired state may name (`{"servers": [...]}`); a larger set is a
/// project's (`{"project"}`).
pub const MAX_TARGET_SERVERS: usize = 1000;

/// Bytes of a check's stdout kept while looking for its result line; a line longer
/// than this (never from our agent, whose report is bounded) is ignored.
const MAX_RESULT_LINE: usize = 2 * 1024 * 1024;

/// The kept count of drifted server × script pairs of a project.
pub fn drifted_counter(project_id: &str) -> String {
    format!("drift_drifted/{project_id}")
}

/// Which servers a desired state covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Targets {
    /// Every server of the project with an agent (also those enrolled later).
    Project,
    /// These servers (ids) of the project.
    Servers { server_ids: Vec<String> },
    /// The project's servers in this inventory group (the project's group, a `role`
    /// label's or one an operator assigned; see [`crate::inventory`]), decided at each
    /// check, so servers that join the group later are checked too.
    Group { group: String },
}

/// A script marked as the desired state of a project's servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredState {
    /// The script's id.
    pub id: String,
    pub project_id: String,
    pub targets: Targets,
    pub cron: String,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for DesiredState {
    const TABLE: &'static str = "desired_states";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A server × script's last drift result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatus {
    Never,
    InSync,
    Drifted,
    Failed,
}

impl DriftStatus {
    pub const ALL: [DriftStatus; 4] = [
        DriftStatus::InSync,
        DriftStatus::Drifted,
        DriftStatus::Failed,
        DriftStatus::Never,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftStatus::Never => "never",
            DriftStatus::InSync => "in_sync",
            DriftStatus::Drifted => "drifted",
            DriftStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DriftStatus> {
        DriftStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One task of a check's or an Apply's report, as stored (converted from the agent's
/// `TaskReport`, never the wire type itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftTask {
    pub name: String,
    pub action: String,
    /// `ok`, `changed`, `failed` or `skipped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The last Apply on a server × script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    pub execution_id: String,
    pub by: String,
    pub at: DateTime<Utc>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// The tasks it changed.
    pub changed_tasks: Vec<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A server × desired-state script: its last check and Apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftResult {
    /// `server_id:script_id`.
    pub id: String,
    pub server_id: String,
    pub script_id: String,
    pub project_id: String,
    pub status: DriftStatus,
    /// Tasks that would change at the last check.
    pub changed: u32,
    pub checked_at: Option<DateTime<Utc>>,
    /// The last check that ended.
    pub execution_id: Option<String>,
    /// Why the last check failed.
    pub error: Option<String>,
    /// The tasks of the last check that ended.
    pub tasks: Vec<DriftTask>,
    /// The report was cut to its bounds by the agent.
    #[serde(default)]
    pub truncated: bool,
    /// A check started and not ended yet.
    pub running: Option<String>,
    /// When the scheduler (or Check now) last started a check here.
    pub last_started_at: Option<DateTime<Utc>>,
    /// A `drift.detected` was raised and no `drift.resolved` since.
    pub alerted: bool,
    pub last_apply: Option<ApplyResult>,
}

impl Record for DriftResult {
    const TABLE: &'static str = "drift_results";
    fn id(&self) -> &str {
        &self.id
    }
}

fn result_id(server_id: &str, script_id: &str) -> String {
    format!("{server_id}:{script_id}")
}

/// Writes a result with its indexes and the project's drifted count.
fn save(w: &mut Writer, result: &DriftResult) -> anyhow::Result<()> {
    let old: Option<DriftResult> = w.get(&result.id)?;
    let was_drifted = old
        .as_ref()
        .is_some_and(|o| o.status == DriftStatus::Drifted);
    let is_drifted = result.status == DriftStatus::Drifted;
    if old.is_none() {
        w.index_put(
            BY_PROJECT,
            &format!("{}/{}", result.project_id, result.id),
            &result.id,
        )?;
        w.index_put(
            BY_SCRIPT,
            &format!("{}/{}", result.script_id, result.server_id),
            &result.id,
        )?;
        w.index_put(
            BY_SERVER,
            &format!("{}/{}", result.server_id, result.script_id),
            &result.id,
        )?;
    }
    if was_drifted != is_drifted {
        w.counter_add(
            &drifted_counter(&result.project_id),
            if is_drifted { 1 } else { -1 },
        )?;
    }
    w.put(result)
}

/// Deletes a result with its indexes and its part of the drifted count.
fn delete_result(w: &mut Writer, result: &DriftResult) -> anyhow::Result<()> {
    w.index_delete(BY_PROJECT, &format!("{}/{}", result.project_id, result.id))?;
    w.index_delete(
        BY_SCRIPT,
        &format!("{}/{}", result.script_id, result.server_id),
    )?;
    w.index_delete(
        BY_SERVER,
        &format!("{}/{}", result.server_id, result.script_id),
    )?;
    if let Some(e) = &result.running {
        w.index_delete(BY_EXECUTION, e)?;
    }
    if result.status == DriftStatus::Drifted {
        w.counter_add(&drifted_counter(&result.project_id), -1)?;
    }
    w.remove::<DriftResult>(&result.id)
}

fn new_result(server: &Server, script_id: &str) -> DriftResult {
    DriftResult {
        id: result_id(&server.id, script_id),
        server_id: server.id.clone(),
        script_id: script_id.to_string(),
        project_id: server.project_id.clone(),
        status: DriftStatus::Never,
        changed: 0,
        checked_at: None,
        execution_id: None,
        error: None,
        tasks: Vec::new(),
        truncated: false,
        running: None,
        last_started_at: None,
        alerted: false,
        last_apply: None,
    }
}

/// The body of `PUT /api/v1/scripts/{id}/desired-state` (and the script page's form).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DesiredInput {
    pub targets: TargetsInput,
    pub schedule: String,
}

/// `{"project": ID or NAME}`, `{"project", "group": NAME}` (an inventory group of the
/// project) or `{"servers": [ID or NAME, ...]}`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetsInput {
    pub project: Option<String>,
    pub servers: Option<Vec<String>>,
    #[serde(default)]
    pub group: Option<String>,
}

/// The script a subject may see, by id or name, as a playbook that can be a desired
/// state.
fn desired_script(r: &impl Read, subject: &Subject, key: &str) -> AppResult<Script> {
    let script = scripts::get_visible(r, subject, key)?;
    if script.kind != ScriptKind::Playbook {
        return Err(AppError::invalid(
            "script",
            "only a playbook can be a desired state (shell scripts have no check mode)",
        ));
    }
    Ok(script)
}

/// Marks a script as the desired state of its targets on a schedule (replacing an
/// earlier one): write access on the project. Results are created, `never` checked,
/// for the target servers known now.
pub fn set(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    script_key: &str,
    input: &DesiredInput,
    now: DateTime<Utc>,
) -> AppResult<DesiredState> {
    let script = desired_script(w, subject, script_key)?;
    // Write access first, so a reader learns nothing from the validation of the rest
    // (a script of every project is checked on the targets' project below).
    if let Some(p) = &script.project_id {
        if !policy::can(subject, Action::OperateServers, Some(p)) {
            return Err(AppError::forbidden());
        }
    }
    let cron = Cron::parse(&input.schedule)
        .map_err(|e| AppError::invalid("schedule", format!("invalid cron expression: {e}")))?;
    // The variables a run gets without being asked: the defaults. A required one
    // without a default cannot run on a schedule.
    scripts::resolve_vars(&script.variables, &Default::default()).map_err(|e| {
        AppError::invalid(
            "script",
            format!(
                "a scheduled check runs with the variables' defaults: {}",
                e.message
            ),
        )
    })?;
    let (project_id, targets) =
        match (&input.targets.project, &input.targets.servers) {
            (Some(project), None) => {
                let group = match input.targets.group.as_deref().map(str::trim) {
                    None => None,
                    Some("") => {
                        return Err(AppError::invalid("targets", "name an inventory group (for example web)"))
                    }
                    Some(g) if crate::inventory::valid_group_name(g) => Some(g.to_string()),
                    Some(g) => {
                        return Err(AppError::invalid(
                            "targets",
                            format!(
                                "{:?} is not an inventory group name (letters, digits and _, not starting with a digit)",
                                crate::validate::echo(g)
                            ),
                        ))
                    }
                };
                let project = crate::projects::find(w, project)?
                    .filter(|p| policy::can(subject, Action::ViewServers, Some(&p.id)))
                    .ok_or_else(|| {
                        AppError::invalid(
                            "targets",
                            format!(
                                "no project {:?} that you can see",
                                crate::validate::echo(project)
                            ),
                        )
                    })?;
                match group {
                    Some(group) if group != "all" => (project.id, Targets::Group { group }),
                    _ => (project.id, Targets::Project),
                }
            }
            (None, Some(servers)) => {
                if servers.is_empty() || servers.len() > MAX_TARGET_SERVERS {
                    return Err(AppError::invalid(
                        "targets",
                        format!("servers takes 1 to {MAX_TARGET_SERVERS} servers"),
                    ));
                }
                let mut project_id: Option<String> = script.project_id.clone();
                let mut ids = Vec::new();
                for key in servers {
                    let server = find_server(w, subject, project_id.as_deref(), key)?;
                    match &project_id {
                        Some(p) if *p != server.project_id => return Err(AppError::invalid(
                            "targets",
                            "the servers of a desired state belong to one project (the script's)",
                        )),
                        _ => project_id = Some(server.project_id.clone()),
                    }
                    if !ids.contains(&server.id) {
                        ids.push(server.id);
                    }
                }
                let project_id = project_id.unwrap_or_default();
                (project_id, Targets::Servers { server_ids: ids })
            }
            _ => {
                return Err(AppError::invalid(
                    "targets",
                    "targets is {\"project\": NAME}, {\"project\": NAME, \"group\": GROUP} or {\"servers\": [NAME, ...]}",
                ))
            }
        };
    if let Some(p) = &script.project_id {
        if *p != project_id {
            return Err(AppError::invalid(
                "targets",
                format!("script {} belongs to another project", script.name),
            ));
        }
    }
    if !policy::can(subject, Action::OperateServers, Some(&project_id)) {
        return Err(AppError::forbidden());
    }
    let old: Option<DesiredState> = w.get(&script.id)?;
    let state = DesiredState {
        id: script.id.clone(),
        project_id,
        targets,
        cron: cron.text().to_string(),
        updated_by: actor.username.clone(),
        updated_at: now,
    };
    w.put(&state)?;
    // Results of servers no longer covered go; new targets start `never` checked.
    let wanted: Vec<Server> = target_servers(w, &state)?;
    for result in results_of_script(w, &script.id)? {
        if !wanted.iter().any(|s| s.id == result.server_id) {
            delete_result(w, &result)?;
        }
    }
    for server in &wanted {
        if w.get::<DriftResult>(&result_id(&server.id, &script.id))?
            .is_none()
        {
            save(w, &new_result(server, &script.id))?;
        }
    }
    audit::record(
        w,
        actor,
        if old.is_some() {
            "drift.desired_state.update"
        } else {
            "drift.desired_state.set"
        },
        &format!("script:{}", script.name),
        format!("{} ({})", state.cron, describe_targets(w, &state)?),
    )?;
    Ok(state)
}

/// A server by id, or by name within `project_id` when given, that the subject sees.
fn find_server(
    r: &impl Read,
    subject: &Subject,
    project_id: Option<&str>,
    key: &str,
) -> AppResult<Server> {
    let by_id = r.get::<Server>(key)?;
    let found = match (by_id, project_id) {
        (Some(s), _) => Some(s),
        (None, Some(p)) => crate::servers::by_name(r, p, key)?,
        (None, None) => None,
    };
    found
        .filter(|s| policy::can(subject, Action::ViewServers, Some(&s.project_id)))
        .ok_or_else(|| {
            AppError::invalid(
                "targets",
                format!(
                    "no server {:?} that you can see{}",
                    crate::validate::echo(key),
                    if project_id.is_none() {
                        " (give server ids for a script of every project)"
                    } else {
                        ""
                    }
                ),
            )
        })
}

/// Stops a desired state: no more checks, and its results go. Write access.
pub fn stop(w: &mut Writer, actor: &Actor, subject: &Subject, script_key: &str) -> AppResult<()> {
    let script = scripts::get_visible(w, subject, script_key)?;
    let state: DesiredState = w
        .get(&script.id)?
        .ok_or_else(|| AppError::not_found("desired state"))?;
    if !policy::can(subject, Action::OperateServers, Some(&state.project_id)) {
        return Err(AppError::forbidden());
    }
    for result in results_of_script(w, &script.id)? {
        delete_result(w, &result)?;
    }
    w.remove::<DesiredState>(&script.id)?;
    audit::record(
        w,
        actor,
        "drift.desired_state.stop",
        &format!("script:{}", script.name),
        "",
    )?;
    Ok(())
}

/// The desired state of a script, if it is one.
pub fn of_script(r: &impl Read, script_id: &str) -> anyhow::Result<Option<DesiredState>> {
    r.get(script_id)
}

/// The servers a desired state covers now.
pub fn target_servers(r: &impl Read, state: &DesiredState) -> anyhow::Result<Vec<Server>> {
    let mut out = Vec::new();
    match &state.targets {
        Targets::Project => {
            let ids: Vec<String> = crate::agents::of_project(r, &state.project_id)?
                .into_iter()
                .filter_map(|agent| agent.server_id)
                .collect();
            out.extend(r.get_many::<Server>(&ids)?.into_iter().flatten());
        }
        Targets::Servers { server_ids } => {
            for server in r.get_many::<Server>(server_ids)?.into_iter().flatten() {
                if server.project_id == state.project_id {
                    out.push(server);
                }
            }
        }
        Targets::Group { group } => {
            let Some(project) = r.get::<crate::projects::Project>(&state.project_id)? else {
                return Ok(out);
            };
            let ids: Vec<String> = crate::agents::of_project(r, &state.project_id)?
                .into_iter()
                .filter_map(|agent| agent.server_id)
                .collect();
            let own = r.get_many::<crate::inventory::ServerInventory>(&ids)?;
            for (server, own) in r.get_many::<Server>(&ids)?.into_iter().zip(own) {
                let Some(server) = server else { continue };
                let own = own.map(|o| o.groups).unwrap_or_default();
                if crate::inventory::effective_groups(&project, &server, &own).contains(group) {
                    out.push(server);
                }
            }
        }
    }
    out.sort_by_key(|a| a.name.to_lowercase());
    Ok(out)
}

/// The targets in words: "every server of Acme" or "web-1, web-2".
pub fn describe_targets(r: &impl Read, state: &DesiredState) -> anyhow::Result<String> {
    Ok(match &state.targets {
        Targets::Project => {
            let name = r
                .get::<crate::projects::Project>(&state.project_id)?
                .map(|p| p.name)
                .unwrap_or_default();
            format!("every server of {name}")
        }
        Targets::Group { group } => {
            let name = r
                .get::<crate::projects::Project>(&state.project_id)?
                .map(|p| p.name)
                .unwrap_or_default();
            format!("the servers of {name} in group {group}")
        }
        Targets::Servers { server_ids } => {
            let names: Vec<String> = r
                .get_many::<Server>(server_ids)?
                .into_iter()
                .flatten()
                .map(|s| s.name)
                .collect();
            names.join(", ")
        }
    })
}

/// The results of a script's desired state.
pub fn results_of_script(r: &impl Read, script_id: &str) -> anyhow::Result<Vec<DriftResult>> {
    results_by(r, BY_SCRIPT, script_id)
}

/// The results of a server (one per desired-state script covering it).
pub fn results_of_server(r: &impl Read, server_id: &str) -> anyhow::Result<Vec<DriftResult>> {
    results_by(r, BY_SERVER, server_id)
}

/// The results an index lists under `owner/`.
fn results_by(r: &impl Read, index: &str, owner: &str) -> anyhow::Result<Vec<DriftResult>> {
    let ids: Vec<String> = r
        .index_scan(index, &format!("{owner}/"))?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    Ok(r.get_many::<DriftResult>(&ids)?
        .into_iter()
        .flatten()
        .collect())
}

/// One result the subject may see.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<DriftResult> {
    let result: DriftResult = r
        .get(id)?
        .ok_or_else(|| AppError::not_found("drift result"))?;
    if !policy::can(subject, Action::ViewServers, Some(&result.project_id)) {
        return Err(AppError::not_found("drift result"));
    }
    Ok(result)
}

/// The filters of the drift list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project_id: Option<String>,
    pub status: Option<DriftStatus>,
    pub script_id: Option<String>,
    pub server_id: Option<String>,
}

/// One page of the results the subject may see that match `filter`, by result id,
/// after `cursor`.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<DriftResult>> {
    let projects: Option<Vec<String>> = match &filter.project_id {
        Some(p) => Some(vec![p.clone()]),
        None => listing::project_scope(subject, Action::ViewServers),
    };
    let sources = match projects {
        Some(ids) => ids
            .into_iter()
            .map(|p| Source::index(BY_PROJECT, format!("{p}/")))
            .collect(),
        None => vec![Source::Table],
    };
    // The positions are `result id` in every source; a cursor from a project's index
    // is the same id.
    listing::page(
        r,
        sources,
        Order::Ascending,
        cursor,
        limit,
        |d: &DriftResult| {
            filter.status.is_none_or(|s| d.status == s)
                && filter.script_id.as_ref().is_none_or(|s| *s == d.script_id)
                && filter.server_id.as_ref().is_none_or(|s| *s == d.server_id)
                && policy::can(subject, Action::ViewServers, Some(&d.project_id))
        },
    )
}

/// The API view of a result (the contract's names first).
pub fn view(
    r: &impl Read,
    result: &DriftResult,
    with_tasks: bool,
) -> anyhow::Result<serde_json::Value> {
    let server = r.get::<Server>(&result.server_id)?;
    let script = r.get::<Script>(&result.script_id)?;
    let project = r
        .get::<crate::projects::Project>(&result.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    let mut value = serde_json::json!({
        "id": result.id,
        "server": result.server_id,
        "server_name": server.map(|s| s.name).unwrap_or_default(),
        "script": result.script_id,
        "script_name": script.map(|s| s.name).unwrap_or_default(),
        "project": result.project_id,
        "project_name": project,
        "status": result.status.as_str(),
        "changed": result.changed,
        "checked_at": result.checked_at,
        "execution": result.execution_id,
        "error": result.error,
        "running": result.running,
        "last_apply": result.last_apply,
    });
    if with_tasks {
        value["tasks"] = serde_json::to_value(&result.tasks)?;
        value["truncated"] = result.truncated.into();
    }
    Ok(value)
}

/// The view of a desired state: targets, schedule in words, next run.
pub fn state_view(
    r: &impl Read,
    state: &DesiredState,
    now: DateTime<Utc>,
) -> anyhow::Result<serde_json::Value> {
    let cron = Cron::parse(&state.cron).ok();
    let targets = match &state.targets {
        Targets::Project => serde_json::json!({"project": state.project_id}),
        Targets::Servers { server_ids } => serde_json::json!({"servers": server_ids}),
        Targets::Group { group } => {
            serde_json::json!({"project": state.project_id, "group": group})
        }
    };
    Ok(serde_json::json!({
        "script": state.id,
        "project": state.project_id,
        "targets": targets,
        "targets_text": describe_targets(r, state)?,
        "schedule": state.cron,
        "description": cron.as_ref().map(Cron::describe),
        "next_run": cron.and_then(|c| c.next_after(now)),
        "updated_by": state.updated_by,
        "updated_at": state.updated_at,
    }))
}

/// The inventory snapshot a run's checks share (project id, snapshot id): the first
/// check of a project makes it, the others name it, so a check of a thousand servers
/// builds the project's inventory once.
type SharedInventory = Option<(String, String)>;

/// Starts a check of `script_id` on one server's agent (check and diff mode).
#[allow(clippy::too_many_arguments)]
fn start_check(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    script: &Script,
    server: &Server,
    agent: &Agent,
    now: DateTime<Utc>,
    inventory: &mut SharedInventory,
) -> AppResult<Execution> {
    let base = NewExecution {
        agent: Some(agent.id.clone()),
        diff: true,
        inventory: inventory
            .clone()
            .filter(|(project, _)| *project == server.project_id),
        ..Default::default()
    };
    let input =
        scripts::execution_input(script, &server.project_id, &Default::default(), true, &base)?;
    let execution = executions::create(w, actor, subject, &input)?;
    if let Work::Playbook {
        inventory_id: Some(id),
        ..
    } = &execution.work
    {
        *inventory = Some((execution.project_id.clone(), id.clone()));
    }
    let id = result_id(&server.id, &script.id);
    let mut result = w
        .get::<DriftResult>(&id)?
        .unwrap_or_else(|| new_result(server, &script.id));
    // An earlier check still running is recorded too when it ends.
    result.running = Some(execution.id.clone());
    result.last_started_at = Some(now);
    save(w, &result)?;
    w.index_put(BY_EXECUTION, &execution.id, &id)?;
    Ok(execution)
}

/// The agent of a server, when it has one that is not revoked.
fn agent_of(r: &impl Read, server: &Server) -> anyhow::Result<Option<Agent>> {
    Ok(match &server.agent_id {
        Some(id) => r.get::<Agent>(id)?.filter(|a| a.revoked_at.is_none()),
        None => None,
    })
}

/// Check now: a check of the script on every target server with an agent (or on
/// one, `server_id`). Write access. Answers the executions to dispatch.
pub fn check_now(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    script_key: &str,
    server_id: Option<&str>,
) -> AppResult<Vec<Execution>> {
    let script = desired_script(w, subject, script_key)?;
    let state: DesiredState = w
        .get(&script.id)?
        .ok_or_else(|| AppError::conflict("this script is not a desired state: mark it first"))?;
    if !policy::can(subject, Action::OperateServers, Some(&state.project_id)) {
        return Err(AppError::forbidden());
    }
    let now = Utc::now();
    let mut started = Vec::new();
    let mut inventory = None;
    for server in target_servers(w, &state)? {
        if server_id.is_some_and(|id| id != server.id) {
            continue;
        }
        if let Some(agent) = agent_of(w, &server)? {
            started.push(start_check(
                w,
                actor,
                subject,
                &script,
                &server,
                &agent,
                now,
                &mut inventory,
            )?);
        }
    }
    if started.is_empty() {
        return Err(AppError::conflict(
            "no target server of this desired state has an agent to check",
        ));
    }
    audit::record(
        w,
        actor,
        "drift.check",
        &format!("script:{}", script.name),
        format!("{} server(s)", started.len()),
    )?;
    Ok(started)
}

/// Apply: runs the desired-state script for real on the server of a result (diff mode,
/// so its report says which tasks changed). Write access.
pub fn apply(w: &mut Writer, actor: &Actor, subject: &Subject, id: &str) -> AppResult<Execution> {
    let mut result = get_visible(w, subject, id)?;
    if !policy::can(subject, Action::OperateServers, Some(&result.project_id)) {
        return Err(AppError::forbidden());
    }
    let script = desired_script(w, subject, &result.script_id)?;
    let server: Server = w
        .get(&result.server_id)?
        .ok_or_else(|| AppError::not_found("server"))?;
    let agent = agent_of(w, &server)?.ok_or_else(|| {
        AppError::conflict(format!("server {} has no agent enrolled", server.name))
    })?;
    let base = NewExecution {
        agent: Some(agent.id.clone()),
        diff: true,
        ..Default::default()
    };
    let input = scripts::execution_input(
        &script,
        &server.project_id,
        &Default::default(),
        false,
        &base,
    )?;
    let execution = executions::create(w, actor, subject, &input)?;
    result.last_apply = Some(ApplyResult {
        execution_id: execution.id.clone(),
        by: actor.username.clone(),
        at: execution.created_at,
        status: "running".into(),
        changed_tasks: Vec::new(),
        finished_at: None,
    });
    save(w, &result)?;
    w.index_put(BY_EXECUTION, &execution.id, &result.id)?;
    audit::record(
        w,
        actor,
        "drift.apply",
        &format!("server:{}", server.name),
        format!("{} ({})", script.name, execution.id),
    )?;
    Ok(execution)
}

/// One pass of the drift scheduler at `now`: a check on each target server, with a
/// connected agent, whose desired state is due (the rule of [`schedules::due`], per
/// server × script, so an agent offline through several scheduled times is checked
/// once when it is back). Answers the executions to dispatch.
pub fn tick(
    w: &mut Writer,
    now: DateTime<Utc>,
    connected: &dyn Fn(&Writer, &str) -> bool,
) -> anyhow::Result<Vec<Execution>> {
    let actor = Actor {
        username: "scheduler".into(),
        ip: None,
    };
    let subject = schedules::scheduler_subject();
    let mut started = Vec::new();
    for state in w.list::<DesiredState>()? {
        let Ok(cron) = Cron::parse(&state.cron) else {
            continue;
        };
        let Some(script) = w.get::<Script>(&state.id)? else {
            continue;
        };
        let mut inventory = None;
        let servers = target_servers(w, &state)?;
        // What the pass reads per server, read together (one query each on PostgreSQL).
        let agent_ids: Vec<String> = servers.iter().filter_map(|s| s.agent_id.clone()).collect();
        w.prefetch::<Agent>(&agent_ids)?;
        let result_ids: Vec<String> = servers
            .iter()
            .map(|s| result_id(&s.id, &script.id))
            .collect();
        w.prefetch::<DriftResult>(&result_ids)?;
        for server in servers {
            let Some(agent) = agent_of(w, &server)? else {
                continue;
            };
            if !connected(w, &agent.id) {
                continue;
            }
            let last = w
                .get::<DriftResult>(&result_id(&server.id, &script.id))?
                .and_then(|r| r.last_started_at);
            if !schedules::due(&cron, last, state.updated_at, now) {
                continue;
            }
            match start_check(
                w,
                &actor,
                &subject,
                &script,
                &server,
                &agent,
                now,
                &mut inventory,
            ) {
                Ok(e) => started.push(e),
                Err(e) => {
                    tracing::warn!(script = %script.id, server = %server.id, "scheduled drift check could not start: {e}");
                    // Counted as run, so a broken script does not retry every tick.
                    let id = result_id(&server.id, &script.id);
                    let mut result = w
                        .get::<DriftResult>(&id)?
                        .unwrap_or_else(|| new_result(&server, &script.id));
                    result.last_started_at = Some(now);
                    save(w, &result)?;
                }
            }
        }
    }
    Ok(started)
}

/// The report line of an ended execution's stdout, if it has one.
fn read_report(r: &impl Read, execution_id: &str) -> anyhow::Result<Option<Report>> {
    let prefix = dynserv_shared::proto::RESULT_PREFIX;
    let mut tail = String::new();
    let mut from = 0u64;
    loop {
        let chunks = executions::log(r, execution_id, from, 1024)?;
        let Some(last) = chunks.last() else { break };
        from = last.seq + 1;
        for c in chunks.iter().filter(|c| c.stream == "stdout") {
            tail.push_str(&c.data);
            // Keep only what may still be (the start of) the result line.
            match tail.rfind(prefix) {
                Some(at) if at == 0 || tail.as_bytes()[at - 1] == b'\n' => {
                    tail.drain(..at);
                }
                _ => match tail.rfind('\n') {
                    Some(nl) => {
                        tail.drain(..=nl);
                    }
                    None if tail.len() > MAX_RESULT_LINE => tail.clear(),
                    None => {}
                },
            }
            if tail.len() > MAX_RESULT_LINE {
                tail.clear();
            }
        }
    }
    let Some(json) = tail.strip_prefix(prefix) else {
        return Ok(None);
    };
    let line = json.lines().next().unwrap_or("");
    Ok(serde_json::from_str::<Report>(line).ok())
}

fn status_text(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Ok => "ok",
        TaskStatus::Changed => "changed",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
    }
}

fn tasks_of(report: &Report) -> Vec<DriftTask> {
    report
        .tasks
        .iter()
        .map(|t| DriftTask {
            name: t.name.clone(),
            action: t.action.clone(),
            status: status_text(t.status).to_string(),
            diff: t.diff.clone(),
        })
        .collect()
}

/// Records the end of a check or an Apply.
fn on_finished(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    let Some(id) = w.index_get(BY_EXECUTION, &e.id)? else {
        return Ok(());
    };
    w.index_delete(BY_EXECUTION, &e.id)?;
    let Some(mut result) = w.get::<DriftResult>(&id)? else {
        return Ok(());
    };
    let report = read_report(w, &e.id)?;
    let now = e.finished_at.unwrap_or_else(Utc::now);
    let check = matches!(e.work, Work::Playbook { check: true, .. });
    if !check {
        if let Some(apply) = result
            .last_apply
            .as_mut()
            .filter(|a| a.execution_id == e.id)
        {
            apply.status = if e.status == Status::Succeeded {
                "succeeded"
            } else {
                "failed"
            }
            .into();
            apply.finished_at = Some(now);
            apply.changed_tasks = report
                .as_ref()
                .map(|r| {
                    r.tasks
                        .iter()
                        .filter(|t| t.status == TaskStatus::Changed)
                        .map(|t| t.name.clone())
                        .collect()
                })
                .unwrap_or_default();
        }
        return save(w, &result);
    }
    if result.running.as_deref() == Some(e.id.as_str()) {
        result.running = None;
    }
    let before = result.status;
    result.checked_at = Some(now);
    result.execution_id = Some(e.id.clone());
    match (&report, e.status) {
        (Some(report), Status::Succeeded) if !report.failed => {
            result.tasks = tasks_of(report);
            result.truncated = report.truncated;
            result.changed = report.changed;
            result.error = None;
            result.status = if report.changed > 0 {
                DriftStatus::Drifted
            } else {
                DriftStatus::InSync
            };
        }
        _ => {
            result.tasks = report.as_ref().map(tasks_of).unwrap_or_default();
            result.truncated = report.as_ref().is_some_and(|r| r.truncated);
            result.changed = report.as_ref().map_or(0, |r| r.changed);
            result.status = DriftStatus::Failed;
            result.error = Some(match e.status {
                Status::Succeeded => "the check reported no result (an older agent?)".into(),
                _ => e
                    .summary
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        format!("the check {}", e.status.as_str().replace('_', " "))
                    }),
            });
        }
    }
    // Alerts only on a change of state: drifted after not being so, and back in
    // sync after an alerted drift (a failed check in between changes neither).
    let event = match result.status {
        DriftStatus::Drifted if !result.alerted => {
            result.alerted = true;
            Some("drift.detected")
        }
        DriftStatus::InSync if result.alerted => {
            result.alerted = false;
            Some("drift.resolved")
        }
        _ => None,
    };
    save(w, &result)?;
    if let Some(event) = event {
        if let Err(err) = raise(w, &result, event, before) {
            tracing::error!(execution = %e.id, "raising {event}: {err:#}");
        }
    }
    Ok(())
}

/// The `drift.detected` / `drift.resolved` alert of a result.
fn raise(
    w: &mut Writer,
    result: &DriftResult,
    event: &'static str,
    before: DriftStatus,
) -> anyhow::Result<()> {
    let recipients = crate::alerts::failure_recipients(w, &result.project_id)?;
    let server = w
        .get::<Server>(&result.server_id)?
        .map(|s| s.name)
        .unwrap_or_default();
    let script = w
        .get::<Script>(&result.script_id)?
        .map(|s| s.name)
        .unwrap_or_default();
    let project = w
        .get::<crate::projects::Project>(&result.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    let changed_tasks: Vec<&str> = result
        .tasks
        .iter()
        .filter(|t| t.status == "changed")
        .map(|t| t.name.as_str())
        .collect();
    let (title, body, level) = if event == "drift.detected" {
        (
            format!("{server} drifted from {script}"),
            format!(
                "{} task(s) of {script} would change on {server} in {project}: {}",
                result.changed,
                changed_tasks.join(", ")
            ),
            "warning",
        )
    } else {
        (
            format!("{server} is in sync with {script} again"),
            format!("{script} would change nothing on {server} in {project}"),
            "success",
        )
    };
    crate::alerts::raise(
        w,
        &recipients,
        &crate::alerts::Alert {
            event,
            project_id: Some(result.project_id.clone()),
            subject: serde_json::json!({
                "server": result.server_id,
                "server_name": server,
                "script": result.script_id,
                "script_name": script,
                "project": project,
                "status": result.status.as_str(),
                "previous": before.as_str(),
                "changed": result.changed,
                "changed_tasks": changed_tasks,
                "execution": result.execution_id,
            }),
            message: crate::notifications::Message {
                title,
                body,
                link: Some(format!("/drift/{}", result.id)),
                level,
                subject: format!("drift:{}", result.id),
            },
        },
    )
}

/// A playbook execution ended: when it is a check or an Apply of a desired state, its
/// result is recorded (called by `scripts::ExecutionHooks`, the playbook kind's hooks,
/// in the transaction that ends it). A batch of the fleet's ingestion: a problem is
/// logged, never the reason the batch is undone.
pub fn execution_finished(w: &mut Writer, e: &Execution) {
    if let Err(err) = on_finished(w, e) {
        tracing::error!(execution = %e.id, "recording a drift check's end: {err:#}");
    }
}

/// A playbook execution was pruned: its entry goes if it still had one.
pub fn execution_pruned(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    w.index_delete(BY_EXECUTION, &e.id)
}

/// The drifted count of each of these projects (the dashboard).
pub fn drifted_counts(r: &impl Read, project_ids: &[String]) -> anyhow::Result<Vec<u64>> {
    let names: Vec<String> = project_ids.iter().map(|p| drifted_counter(p)).collect();
    r.prefetch_counters(&names)?;
    names.iter().map(|n| r.counter(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The drift scheduler with an injected clock and a real store: an hourly desired
    /// state is checked once per hour per connected server, not while its agent is
    /// offline, once when it is back, and a check's end records drifted then in sync
    /// with one alert per change of state.
    /// A group target covers the project's servers in that inventory group as it is at
    /// each check: by `role` label, by an operator's group, and the project's group.
    #[test]
    fn group_targets_follow_the_inventory() {
        use crate::agents::Agent;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let since = at("2026-11-20T12:00:00Z");
        store
            .write(|w| {
                w.put(&serde_json::from_value::<crate::projects::Project>(
                    serde_json::json!({"id": "p1", "name": "Acme", "description": null,
                        "budget_monthly": null, "hetzner_token_enc": null, "last_sync": null,
                        "deploy_command": null, "created_at": since}),
                )?)?;
                for (id, name, labels) in [
                    ("s1", "web-1", serde_json::json!({"role": "web"})),
                    ("s2", "db-1", serde_json::json!({})),
                ] {
                    let server: Server = serde_json::from_value(serde_json::json!({
                        "id": id, "name": name, "project_id": "p1", "status": "running",
                        "server_type": null, "location": null, "image": null, "ipv4": null,
                        "ipv6": null, "hetzner_id": null, "agent_id": format!("a-{id}"),
                        "monthly_cost": null, "labels": labels,
                        "created_at": since, "updated_at": since}))?;
                    crate::servers::save(w, &server)?;
                    w.put(&Agent {
                        enrolled_at: since,
                        server_id: Some(id.into()),
                        ..Agent::sample(&format!("a-{id}"), name, "p1")
                    })?;
                }
                w.put(&crate::inventory::ServerInventory {
                    id: "s2".into(),
                    project_id: "p1".into(),
                    groups: vec!["db".into()],
                    vars: Default::default(),
                    updated_by: "admin".into(),
                    updated_at: since,
                })?;
                crate::agents::backfill_indexes(w)
            })
            .unwrap();
        let servers_in = |group: &str| -> Vec<String> {
            let state = DesiredState {
                id: "sc1".into(),
                project_id: "p1".into(),
                targets: Targets::Group {
                    group: group.into(),
                },
                cron: "0 * * * *".into(),
                updated_by: "admin".into(),
                updated_at: since,
            };
            store
                .read(|r| target_servers(r, &state))
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(servers_in("web"), ["web-1"]);
        assert_eq!(servers_in("db"), ["db-1"]);
        assert_eq!(servers_in("acme"), ["db-1", "web-1"]);
        assert!(servers_in("mail").is_empty());
    }

    #[test]
    fn tick_checks_once_per_scheduled_time_and_alerts_on_changes_only() {
        use crate::agents::Agent;
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let since = at("2026-11-20T12:00:00Z");
        store
            .write(|w| {
                let record = |v: serde_json::Value| v;
                w.put(&serde_json::from_value::<crate::projects::Project>(record(
                    serde_json::json!({"id": "p1", "name": "Acme", "description": null,
                        "budget_monthly": null, "hetzner_token_enc": null, "last_sync": null,
                        "deploy_command": null, "created_at": since}),
                ))?)?;
                let server: Server = serde_json::from_value(serde_json::json!({
                    "id": "s1", "name": "web-1", "project_id": "p1", "status": "unknown",
                    "server_type": null, "location": null, "image": null, "ipv4": null,
                    "ipv6": null, "hetzner_id": null, "agent_id": "a1", "monthly_cost": null,
                    "created_at": since, "updated_at": since}))?;
                crate::servers::save(w, &server)?;
                w.put(&Agent {
                    enrolled_at: since,
                    server_id: Some("s1".into()),
                    ..Agent::sample("a1", "web-1", "p1")
                })?;
                crate::agents::backfill_indexes(w)?;
                w.put(&serde_json::from_value::<Script>(serde_json::json!({
                    "id": "sc1", "name": "site", "description": "", "kind": "playbook",
                    "body": "- hosts: all\n  tasks:\n    - copy: {content: managed, dest: /tmp/x}\n",
                    "interpreter": "/bin/sh", "variables": [], "project_id": "p1",
                    "sample": null, "created_by": "admin", "created_at": since,
                    "updated_by": "admin", "updated_at": since}))?)?;
                w.put(&DesiredState {
                    id: "sc1".into(),
                    project_id: "p1".into(),
                    targets: Targets::Project,
                    cron: "0 * * * *".into(),
                    updated_by: "admin".into(),
                    updated_at: since,
                })
            })
            .unwrap();
        let run = |now: &str, online: bool| -> Vec<Execution> {
            let connected = move |_: &Writer, _: &str| online;
            store.write(|w| tick(w, at(now), &connected)).unwrap()
        };
        assert!(run("2026-11-20T12:30:00Z", true).is_empty());
        let first = run("2026-11-20T13:00:05Z", true);
        assert_eq!(first.len(), 1);
        assert!(matches!(
            first[0].work,
            Work::Playbook {
                check: true,
                diff: true,
                ..
            }
        ));
        assert!(run("2026-11-20T13:20:00Z", true).is_empty(), "once an hour");
        assert!(run("2026-11-20T14:00:05Z", false).is_empty(), "offline");
        assert!(run("2026-11-20T15:00:05Z", false).is_empty(), "offline");
        let back = run("2026-11-20T15:10:00Z", true);
        assert_eq!(back.len(), 1, "once when back");

        // The first check ends drifted, the second in sync: one alert each.
        let end = |e: &Execution, changed: bool| {
            let line = format!(
                "{}{}\n",
                dynserv_shared::proto::RESULT_PREFIX,
                serde_json::json!({"failed": false, "changed": u32::from(changed), "tasks": [
                    {"name": "motd", "action": "copy", "status": if changed {"changed"} else {"ok"},
                     "diff": if changed {"--- before: /etc/motd\n+++ after: /etc/motd\n@@ -1 +1 @@\n-hand\n+managed\n"} else {""}}
                ]})
            );
            store
                .write(|w| {
                    w.log_append(
                        &e.id,
                        0,
                        &executions::encode_chunk(
                            dynserv_shared::proto::OutputStream::Stdout,
                            &line,
                        ),
                    )?;
                    executions::finish(w, &e.id, Status::Succeeded, Some(0), "", Utc::now())
                })
                .unwrap();
        };
        end(&first[0], true);
        let result: DriftResult = store.get("s1:sc1").unwrap().unwrap();
        assert_eq!(result.status, DriftStatus::Drifted);
        assert_eq!(result.changed, 1);
        assert!(result.tasks[0]
            .diff
            .as_deref()
            .unwrap()
            .contains("+managed"));
        let counts = store.read(|r| drifted_counts(r, &["p1".into()])).unwrap();
        assert_eq!(counts, vec![1]);
        end(&back[0], false);
        let result: DriftResult = store.get("s1:sc1").unwrap().unwrap();
        assert_eq!(result.status, DriftStatus::InSync);
        let counts = store.read(|r| drifted_counts(r, &["p1".into()])).unwrap();
        assert_eq!(counts, vec![0]);
    }
}
