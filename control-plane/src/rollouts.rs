//! Rollouts: one run of a stored script over several servers, in batches of `serial`
//! targets (like Ansible's `serial`); a batch starts when the previous one ended, and
//! once `max_failures` targets failed the rollout stops and the targets not started
//! are marked skipped.
//!
//! The decision of what happens next is the pure [`plan`] over the targets' states;
//! [`advance`] applies it in one store transaction (reading the executions' ends,
//! creating the next batch's executions), and [`supervisor`] calls it for every
//! running rollout twice a second, so a rollout keeps going across a restart.
//! Secret variable values are kept encrypted in the rollout only until its last batch
//! started.
//!
//! The facts step: a playbook rollout over two or more servers whose plays gather
//! facts and whose playbook (or one of its files) names `hostvars` first runs
//! [`GATHER_PLAYBOOK`] on every target ([`needs_facts_step`]), and starts its first
//! batch once those jobs ended or [`FACTS_STEP_TIMEOUT_S`] passed. Their facts reach
//! the control plane with their ends (`inventory::record_facts`) and every batch's jobs
//! are sent them (`inventory::attach_to_specs`), so each host of the rollout sees the
//! others' facts as Ansible's linear strategy shows the facts of every host of the
//! play after its gathering step, also across `serial` batches.
//!
//! What does not live here: the scripts and their variables (`scripts`), the job
//! lifecycle (`executions`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agents::Agent;
use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{self, Execution, NewExecution, Status};
use crate::policy::{self, Action, Subject};
use crate::scripts::{self, Script};
use crate::store::{Read, Record, Writer};

const RUNNING: &str = "rollout_running";
/// Rollouts of a script, `script_id/rollout_id`: the script page's recent rollouts
/// are one backwards page of it.
const BY_SCRIPT: &str = "rollout_by_script";
/// Most targets in one rollout.
pub const MAX_TARGETS: usize = 500;
/// What the facts step runs on each target: a play that only gathers facts.
pub const GATHER_PLAYBOOK: &str =
    "- name: Gather facts for the rollout\n  hosts: all\n  gather_facts: true\n  tasks: []\n";
/// The longest the facts step holds a rollout's first batch back (a target whose agent
/// is offline or slow then runs with the facts known so far); also the gathering jobs'
/// timeout and expiry, so none of them outlives it by much.
pub const FACTS_STEP_TIMEOUT_S: u64 = 120;

/// Where one target of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Its batch has not started.
    Pending,
    /// Its execution is queued or running.
    Running,
    Succeeded,
    /// Its execution failed, was cancelled or timed out, or could not be created.
    Failed,
    /// The rollout stopped before its batch.
    Skipped,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Running => "running",
            TargetState::Succeeded => "succeeded",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
        }
    }
}

/// A rollout's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    /// Every target succeeded.
    Succeeded,
    /// Every target ran, some failed.
    Failed,
    /// The failure threshold was reached; the rest was skipped.
    Stopped,
    /// Cancelled by someone: running jobs were told to stop, the rest was skipped.
    Cancelled,
}

impl RolloutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Succeeded => "succeeded",
            RolloutStatus::Failed => "failed",
            RolloutStatus::Stopped => "stopped",
            RolloutStatus::Cancelled => "cancelled",
        }
    }

    /// Every status, for the list's filter.
    pub const ALL: [RolloutStatus; 5] = [
        RolloutStatus::Running,
        RolloutStatus::Succeeded,
        RolloutStatus::Failed,
        RolloutStatus::Stopped,
        RolloutStatus::Cancelled,
    ];

    pub fn parse(text: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One server of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub server_id: Option<String>,
    pub agent_id: String,
    pub project_id: String,
    pub state: TargetState,
    /// The batch it ran in, from 1.
    pub batch: Option<u32>,
    pub execution_id: Option<String>,
    /// Why it failed without an execution, or why it was skipped (no agent, agent
    /// revoked, offline past the expiry, the rollout stopped or was cancelled).
    pub error: Option<String>,
}

/// A run of a script over targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub script_id: String,
    pub script_name: String,
    pub targets: Vec<Target>,
    /// Targets per batch.
    pub serial: u32,
    /// Stop once this many targets failed; 0 for no limit.
    pub max_failures: u32,
    pub check: bool,
    /// The plain variables of the run.
    pub vars: BTreeMap<String, String>,
    /// The names of the secret variables given.
    pub secret_names: Vec<String>,
    /// The secret values, encrypted, until the last batch started.
    pub sealed_secrets: Option<String>,
    pub status: RolloutStatus,
    pub batches_started: u32,
    /// A playbook's inventory per project, made when the rollout was created, so
    /// every batch runs with the same one (`inventory::snapshot`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inventories: BTreeMap<String, String>,
    /// The facts step's executions while it runs (see the module documentation);
    /// empty once it is over, and for rollouts without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts_step: Vec<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Record for Rollout {
    const TABLE: &'static str = "rollouts";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What a rollout does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A batch is still running.
    Wait,
    /// Start these targets (indexes) as the next batch.
    Start(Vec<usize>),
    /// The rollout ends with this status; these pending targets are skipped.
    Finish {
        status: RolloutStatus,
        skip: Vec<usize>,
    },
}

/// Decides the next step from the targets' states: wait while a batch runs; stop once
/// `max_failures` (when not 0) targets failed, skipping what has not started; else
/// start the next `serial` pending targets; end when none is left.
pub fn plan(states: &[TargetState], serial: usize, max_failures: u32) -> Step {
    if states.contains(&TargetState::Running) {
        return Step::Wait;
    }
    let failures = states.iter().filter(|s| **s == TargetState::Failed).count();
    let pending: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == TargetState::Pending)
        .map(|(i, _)| i)
        .collect();
    if max_failures > 0 && failures >= max_failures as usize {
        return Step::Finish {
            status: if pending.is_empty() {
                RolloutStatus::Failed
            } else {
                RolloutStatus::Stopped
            },
            skip: pending,
        };
    }
    if !pending.is_empty() {
        return Step::Start(pending.into_iter().take(serial.max(1)).collect());
    }
    Step::Finish {
        status: if failures == 0 {
            RolloutStatus::Succeeded
        } else {
            RolloutStatus::Failed
        },
        skip: Vec::new(),
    }
}

/// Where a script runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, untagged)]
pub enum Targets {
    /// Servers (ids), or agents (ids or names).
    Servers { servers: Vec<String> },
    /// Every server with an agent in a project (id or name).
    Project { project: String },
}

/// The body of `POST /api/v1/scripts/{id}/run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    pub targets: Targets,
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Targets per batch; all at once when absent or 0.
    pub serial: Option<u32>,
    /// Stop after this many failures; no limit when absent or 0.
    pub max_failures: Option<u32>,
    #[serde(default)]
    pub check: bool,
}

fn target_of(r: &impl Read, agent: &Agent) -> anyhow::Result<Target> {
    let server = match &agent.server_id {
        Some(id) => r.get::<crate::servers::Server>(id)?,
        None => None,
    };
    Ok(Target {
        name: server
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| agent.name.clone()),
        server_id: server.map(|s| s.id),
        agent_id: agent.id.clone(),
        project_id: agent.project_id.clone(),
        state: TargetState::Pending,
        batch: None,
        execution_id: None,
        error: None,
    })
}

/// A server of the project that cannot be run on: a target skipped from the start,
/// with the reason, so it is never silently left out.
fn skipped_target(r: &impl Read, server: &crate::servers::Server) -> anyhow::Result<Target> {
    let revoked = match &server.agent_id {
        Some(id) => r.get::<Agent>(id)?.is_some_and(|a| a.revoked_at.is_some()),
        None => false,
    };
    Ok(Target {
        name: server.name.clone(),
        server_id: Some(server.id.clone()),
        agent_id: server.agent_id.clone().unwrap_or_default(),
        project_id: server.project_id.clone(),
        state: TargetState::Skipped,
        batch: None,
        execution_id: None,
        error: Some(if revoked {
            "skipped: its agent was revoked".to_string()
        } else {
            "skipped: no agent".to_string()
        }),
    })
}

/// The agents to run on, and the targets skipped from the start (the servers of a
/// project without a usable agent).
fn resolve_targets(
    r: &impl Read,
    subject: &Subject,
    targets: &Targets,
) -> AppResult<(Vec<Agent>, Vec<Target>)> {
    let mut skipped = Vec::new();
    let agents = match targets {
        Targets::Servers { servers } => {
            let mut out = Vec::new();
            for key in servers {
                // The caller's right to operate the server is decided before its
                // state (no agent) is told.
                let agent = crate::backups::agent_to_operate(r, subject, key.trim()).map_err(
                    |e| match e.kind {
                        crate::error::Kind::NotFound => AppError::invalid(
                            "targets",
                            format!(
                                "no server {:?} that you can see",
                                crate::validate::echo(key)
                            ),
                        ),
                        crate::error::Kind::Forbidden => e,
                        _ => AppError::invalid("targets", e.message),
                    },
                )?;
                out.push(agent);
            }
            out
        }
        Targets::Project { project } => {
            let p = crate::projects::find(r, project)?
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
            if !policy::can(subject, Action::OperateServers, Some(&p.id)) {
                return Err(AppError::forbidden());
            }
            let mut agents = crate::backups::agents_of_project(r, &p.id)?;
            agents.sort_by(|a, b| a.name.cmp(&b.name));
            for server in crate::servers::in_project(r, &p.id)? {
                let served = agents
                    .iter()
                    .any(|a| a.server_id.as_deref() == Some(server.id.as_str()));
                if !served && server.status != "deleted" {
                    skipped.push(skipped_target(r, &server)?);
                }
            }
            agents
        }
    };
    let mut seen = std::collections::HashSet::new();
    let agents: Vec<Agent> = agents
        .into_iter()
        .filter(|a| seen.insert(a.id.clone()))
        .collect();
    if agents.is_empty() {
        return Err(AppError::invalid(
            "targets",
            "no server with an agent to run on",
        ));
    }
    if agents.len() + skipped.len() > MAX_TARGETS {
        return Err(AppError::invalid(
            "targets",
            format!("at most {MAX_TARGETS} servers per run"),
        ));
    }
    if let Some(revoked) = agents.iter().find(|a| a.revoked_at.is_some()) {
        return Err(AppError::invalid(
            "targets",
            format!("the agent of {} has been revoked", revoked.name),
        ));
    }
    Ok((agents, skipped))
}

/// Validates a run and stores the rollout, running; its first batch starts in the
/// same transaction. Returns the rollout and the executions to dispatch.
pub fn create(
    app: &App,
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    script_key: &str,
    input: &RunInput,
) -> AppResult<(Rollout, Vec<Execution>)> {
    let script = scripts::get_visible(w, subject, script_key)?;
    let (agents, skipped) = resolve_targets(w, subject, &input.targets)?;
    for agent in &agents {
        if !policy::can(subject, Action::OperateServers, Some(&agent.project_id)) {
            return Err(AppError::forbidden());
        }
    }
    let vars = scripts::resolve_vars(&script.variables, &input.vars)?;
    // Every target must accept the script (its scope) before anything starts.
    for agent in &agents {
        scripts::execution_input(
            &script,
            &agent.project_id,
            &BTreeMap::new(),
            input.check,
            &NewExecution::default(),
        )
        .or_else(|e| {
            if e.field.as_deref() == Some("vars") {
                Ok(NewExecution::default())
            } else {
                Err(AppError::invalid("targets", e.message))
            }
        })?;
    }
    let mut targets = Vec::new();
    for agent in &agents {
        targets.push(target_of(w, agent)?);
    }
    let inventories = playbook_inventories(w, &script, &agents, &targets)?;
    let facts_step_wanted = needs_facts_step(w, &script, &agents)?;
    let runnable = targets.len() as u32;
    targets.extend(skipped);
    let serial = match input.serial {
        None | Some(0) => runnable,
        Some(n) => n.min(runnable),
    };
    let sealed_secrets = if vars.secret.is_empty() {
        None
    } else {
        let text = serde_json::to_string(&vars.secret).map_err(anyhow::Error::from)?;
        Some(app.keys.encrypt(&text))
    };
    let mut rollout = Rollout {
        id: uuid::Uuid::now_v7().to_string(),
        script_id: script.id.clone(),
        script_name: script.name.clone(),
        targets,
        serial,
        max_failures: input.max_failures.unwrap_or(0),
        check: input.check,
        vars: vars.plain,
        secret_names: vars.secret.keys().cloned().collect(),
        sealed_secrets,
        status: RolloutStatus::Running,
        batches_started: 0,
        inventories,
        facts_step: Vec::new(),
        created_by: actor.username.clone(),
        created_at: Utc::now(),
        finished_at: None,
    };
    let mut gathering = Vec::new();
    if facts_step_wanted {
        gathering = start_facts_step(w, actor, subject, &rollout, &agents);
        rollout.facts_step = gathering.iter().map(|e| e.id.clone()).collect();
    }
    w.put(&rollout)?;
    w.index_put(RUNNING, &rollout.id, &rollout.id)?;
    w.index_put(
        BY_SCRIPT,
        &format!("{}/{}", rollout.script_id, rollout.id),
        &rollout.id,
    )?;
    audit::record(
        w,
        actor,
        "rollout.create",
        &format!("script:{}", script.name),
        format!(
            "{} on {} servers, batches of {}",
            rollout.id,
            rollout.targets.len(),
            rollout.serial
        ),
    )?;
    let (started, _) = step(app, w, &rollout.id)?;
    let rollout = w
        .get::<Rollout>(&rollout.id)?
        .ok_or_else(|| AppError::not_found("rollout"))?;
    gathering.extend(started);
    Ok((rollout, gathering))
}

/// Whether a rollout of `script` over `agents` has a facts step: a playbook over two
/// or more servers, one of whose plays gathers facts (or may: a templated
/// `gather_facts`, an `import_playbook`), that names `hostvars` in its text or its
/// files. Only then can a host see another's facts, and other rollouts are spared a
/// job per target.
fn needs_facts_step(r: &impl Read, script: &Script, agents: &[Agent]) -> anyhow::Result<bool> {
    if script.kind != scripts::ScriptKind::Playbook
        || agents.iter().filter(|a| a.server_id.is_some()).count() < 2
        || !plays_may_gather_facts(&script.body)
    {
        return Ok(false);
    }
    if script.body.contains("hostvars") {
        return Ok(true);
    }
    Ok(scripts::files_of(r, script)?
        .iter()
        .any(|file| file.contains("hostvars")))
}

/// Whether some play of a playbook gathers facts: `gather_facts` absent (Ansible's
/// default), true, or a template; a text that does not parse as plays counts as
/// gathering (its run reports the error).
pub fn plays_may_gather_facts(playbook: &str) -> bool {
    use dynserv_playbook::yaml::NodeKind;
    let Ok(node) = dynserv_playbook::yaml::parse_one(playbook) else {
        return true;
    };
    let NodeKind::Seq(plays) = &node.kind else {
        return true;
    };
    plays.iter().any(|play| match play.get("gather_facts") {
        None => play.get("hosts").is_some() || play.get("import_playbook").is_some(),
        Some(value) => !matches!(
            value
                .to_value()
                .to_string()
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "false" | "no" | "off" | "0" | "n" | "f"
        ),
    })
}

/// Creates the facts step's executions, one per target with a server; a target whose
/// gathering cannot be created (its agent was revoked meanwhile) goes without, and its
/// own job reports why.
fn start_facts_step(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    rollout: &Rollout,
    agents: &[Agent],
) -> Vec<Execution> {
    let mut made = Vec::new();
    for agent in agents.iter().filter(|a| a.server_id.is_some()) {
        let input = NewExecution {
            agent: Some(agent.id.clone()),
            kind: Some("playbook".into()),
            playbook: Some(GATHER_PLAYBOOK.into()),
            timeout_s: Some(FACTS_STEP_TIMEOUT_S),
            expires_s: Some(FACTS_STEP_TIMEOUT_S),
            rollout_id: Some(rollout.id.clone()),
            script_name: Some("Gather facts".into()),
            inventory: rollout
                .inventories
                .get(&agent.project_id)
                .map(|id| (agent.project_id.clone(), id.clone())),
            ..Default::default()
        };
        match executions::create(w, actor, subject, &input) {
            Ok(execution) => made.push(execution),
            Err(e) => tracing::warn!(
                rollout = %rollout.id,
                agent = %agent.id,
                "no facts step for this target: {}",
                e.message
            ),
        }
    }
    made
}

/// Whether the facts step holds the rollout back: some of its executions still queued
/// or running, and its time not over.
fn facts_step_pending(
    r: &impl Read,
    rollout: &Rollout,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    if rollout.facts_step.is_empty() {
        return Ok(false);
    }
    let over = now >= rollout.created_at + chrono::Duration::seconds(FACTS_STEP_TIMEOUT_S as i64);
    if over {
        return Ok(false);
    }
    Ok(r.get_many::<Execution>(&rollout.facts_step)?
        .iter()
        .flatten()
        .any(|e| !e.status.is_final()))
}

/// For a playbook: the inventory of each target's project, made once, after checking
/// that its plays select at least one target (a 422 naming the patterns otherwise:
/// such a rollout would run and do nothing).
fn playbook_inventories(
    w: &mut Writer,
    script: &Script,
    agents: &[Agent],
    targets: &[Target],
) -> AppResult<BTreeMap<String, String>> {
    if script.kind != scripts::ScriptKind::Playbook {
        return Ok(BTreeMap::new());
    }
    let mut made: BTreeMap<String, (String, dynserv_shared::inventory::JobInventory)> =
        BTreeMap::new();
    for agent in agents.iter().filter(|a| a.server_id.is_some()) {
        if made.contains_key(&agent.project_id) {
            continue;
        }
        if let Some(project) = w.get::<crate::projects::Project>(&agent.project_id)? {
            made.insert(
                agent.project_id.clone(),
                crate::inventory::snapshot(w, &project)?,
            );
        }
    }
    let checked: Vec<(&dynserv_shared::inventory::JobInventory, &str)> = targets
        .iter()
        .filter(|t| t.server_id.is_some())
        .filter_map(|t| made.get(&t.project_id).map(|(_, i)| (i, t.name.as_str())))
        .collect();
    let unmatched = crate::inventory::unmatched_targets(&script.body, &checked)
        .map_err(|e| AppError::invalid("targets", e))?;
    if !checked.is_empty() && unmatched.len() == checked.len() {
        let patterns: Vec<String> = crate::inventory::play_patterns(&script.body)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .map(|terms| terms.join(":"))
            .collect();
        return Err(AppError::invalid(
            "targets",
            format!(
                "the playbook's plays match none of its targets (hosts: {}); check the servers' groups",
                patterns.join(", ")
            ),
        ));
    }
    Ok(made.into_iter().map(|(p, (id, _))| (p, id)).collect())
}

fn target_state_of(e: &Execution) -> TargetState {
    match e.status {
        Status::Queued | Status::Running => TargetState::Running,
        Status::Succeeded => TargetState::Succeeded,
        _ if expired_unstarted(e) => TargetState::Skipped,
        _ => TargetState::Failed,
    }
}

/// An execution that ended without starting because its agent stayed offline past
/// the expiry: its target is skipped, not failed.
fn expired_unstarted(e: &Execution) -> bool {
    e.status == Status::Failed
        && e.started_at.is_none()
        && e.summary
            .as_deref()
            .is_some_and(|s| s.starts_with("expired"))
}

/// Moves one rollout forward inside a transaction; returns the executions created,
/// which the caller dispatches after the commit.
/// One step of a rollout: the executions it created, and the rollout when it changed.
type Stepped = (Vec<Execution>, Option<Rollout>);

fn step(app: &App, w: &mut Writer, id: &str) -> anyhow::Result<Stepped> {
    let Some(mut rollout) = w.get::<Rollout>(id)? else {
        return Ok((Vec::new(), None));
    };
    if rollout.status != RolloutStatus::Running {
        w.index_delete(RUNNING, id)?;
        return Ok((Vec::new(), None));
    }
    let mut changed = false;
    if !rollout.facts_step.is_empty() {
        if facts_step_pending(w, &rollout, Utc::now())? {
            return Ok((Vec::new(), None));
        }
        rollout.facts_step.clear();
        changed = true;
    }
    for target in rollout.targets.iter_mut() {
        if target.state != TargetState::Running {
            continue;
        }
        let state = match &target.execution_id {
            Some(eid) => match w.get::<Execution>(eid)? {
                Some(e) => target_state_of(&e),
                None => TargetState::Failed,
            },
            None => TargetState::Failed,
        };
        if state != target.state {
            if state == TargetState::Skipped {
                target.error = Some("skipped: the agent stayed offline past the expiry".into());
            }
            target.state = state;
            changed = true;
        }
    }
    let states: Vec<TargetState> = rollout.targets.iter().map(|t| t.state).collect();
    let mut created = Vec::new();
    match plan(&states, rollout.serial as usize, rollout.max_failures) {
        Step::Wait => {}
        Step::Start(batch) => {
            changed = true;
            rollout.batches_started += 1;
            let number = rollout.batches_started;
            let script = w.get::<Script>(&rollout.script_id)?;
            let subject = match crate::users::by_username(w, &rollout.created_by)? {
                Some(user) if user.active => Some(crate::users::subject(w, &user)?),
                _ => None,
            };
            let mut given: BTreeMap<String, serde_json::Value> = rollout
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            if let Some(sealed) = &rollout.sealed_secrets {
                let secrets: BTreeMap<String, String> =
                    serde_json::from_str(&app.keys.decrypt(sealed)?)?;
                given.extend(secrets.into_iter().map(|(k, v)| (k, json!(v))));
            }
            let actor = Actor {
                username: rollout.created_by.clone(),
                ip: None,
            };
            for index in batch {
                let target = &mut rollout.targets[index];
                target.batch = Some(number);
                let made = match (&script, &subject) {
                    (None, _) => Err(AppError::conflict("the script was deleted")),
                    (_, None) => Err(AppError::conflict(
                        "the user who started the rollout is no longer active",
                    )),
                    (Some(script), Some(subject)) => {
                        let base = NewExecution {
                            agent: Some(target.agent_id.clone()),
                            rollout_id: Some(rollout.id.clone()),
                            inventory: rollout
                                .inventories
                                .get(&target.project_id)
                                .map(|id| (target.project_id.clone(), id.clone())),
                            ..Default::default()
                        };
                        scripts::execution_input(
                            script,
                            &target.project_id,
                            &given,
                            rollout.check,
                            &base,
                        )
                        .and_then(|input| executions::create(w, &actor, subject, &input))
                    }
                };
                match made {
                    Ok(execution) => {
                        target.state = TargetState::Running;
                        target.execution_id = Some(execution.id.clone());
                        created.push(execution);
                    }
                    Err(e) => {
                        target.state = TargetState::Failed;
                        target.error = Some(e.message);
                    }
                }
            }
            if !rollout
                .targets
                .iter()
                .any(|t| t.state == TargetState::Pending)
            {
                rollout.sealed_secrets = None;
            }
            // The inventories outlive this batch's jobs.
            for id in rollout.inventories.values() {
                crate::inventory::touch(w, id)?;
            }
        }
        Step::Finish { status, skip } => {
            changed = true;
            for index in skip {
                rollout.targets[index].state = TargetState::Skipped;
                rollout.targets[index].error = Some(format!(
                    "skipped: the rollout stopped after {} failures",
                    rollout.max_failures
                ));
            }
            rollout.status = status;
            rollout.finished_at = Some(Utc::now());
            rollout.sealed_secrets = None;
            w.index_delete(RUNNING, id)?;
        }
    }
    if changed {
        w.put(&rollout)?;
        return Ok((created, Some(rollout)));
    }
    Ok((created, None))
}

/// Moves one rollout forward and dispatches what it started. A batch whose targets
/// all failed to start is followed at once by the next step.
pub fn advance(app: &App, id: &str) -> anyhow::Result<()> {
    for _ in 0..MAX_TARGETS + 2 {
        let (created, changed) = app.store.write(|w| step(app, w, id))?;
        for execution in &created {
            app.fleet.dispatch(execution);
        }
        if let Some(rollout) = &changed {
            app.fleet
                .events()
                .publish(crate::live::Event::rollout(rollout));
        }
        let again = app.store.read(|r| {
            Ok(r.get::<Rollout>(id)?.is_some_and(|ro| {
                ro.status == RolloutStatus::Running
                    && !ro.targets.iter().any(|t| t.state == TargetState::Running)
            }))
        })?;
        if !again {
            break;
        }
    }
    Ok(())
}

/// Advances every running rollout twice a second until `stop` resolves.
pub async fn supervisor(app: App, stop: impl Future<Output = ()>) {
    crate::cluster::drive_running(
        app,
        RUNNING,
        "rollout",
        Duration::from_millis(500),
        stop,
        advance,
    )
    .await
}

/// One rollout the subject may see: one of its targets' projects must be visible.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Rollout> {
    let rollout: Rollout = r.get(id)?.ok_or_else(|| AppError::not_found("rollout"))?;
    if !rollout
        .targets
        .iter()
        .any(|t| policy::can(subject, Action::ViewServers, Some(&t.project_id)))
    {
        return Err(AppError::not_found("rollout"));
    }
    Ok(rollout)
}

/// The newest rollouts of a script the subject may see, read through
/// `rollout_by_script`.
pub fn recent_of_script(
    r: &impl Read,
    subject: &Subject,
    script_id: &str,
    limit: usize,
) -> anyhow::Result<Vec<Rollout>> {
    let page = crate::listing::page(
        r,
        vec![crate::listing::Source::index(
            BY_SCRIPT,
            format!("{script_id}/"),
        )],
        crate::listing::Order::Descending,
        None,
        limit,
        |ro: &Rollout| {
            ro.targets
                .iter()
                .any(|t| policy::can(subject, Action::ViewServers, Some(&t.project_id)))
        },
    )?;
    Ok(page.items)
}

/// What the rollouts list is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<RolloutStatus>,
    pub script_id: Option<String>,
    /// Only rollouts with a target in this project.
    pub project_id: Option<String>,
}

/// One page of the rollouts the subject may see, newest first (ids are UUIDv7, so the
/// table itself is the time order), after the id `cursor`; a script filter walks that
/// script's index instead.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<crate::listing::Page<Rollout>> {
    let source = match &filter.script_id {
        Some(script) => crate::listing::Source::index(BY_SCRIPT, format!("{script}/")),
        None => crate::listing::Source::Table,
    };
    crate::listing::page(
        r,
        vec![source],
        crate::listing::Order::Descending,
        cursor,
        limit,
        |ro: &Rollout| {
            filter.status.is_none_or(|s| ro.status == s)
                && filter
                    .project_id
                    .as_ref()
                    .is_none_or(|p| ro.targets.iter().any(|t| &t.project_id == p))
                && ro
                    .targets
                    .iter()
                    .any(|t| policy::can(subject, Action::ViewServers, Some(&t.project_id)))
        },
    )
}

/// Whether the subject may operate every project the rollout runs in (cancel, retry).
fn may_operate(subject: &Subject, rollout: &Rollout) -> bool {
    rollout
        .targets
        .iter()
        .all(|t| policy::can(subject, Action::OperateServers, Some(&t.project_id)))
}

/// Cancels a running rollout: targets not started are skipped, running jobs are asked
/// to stop. Returns the rollout and the cancelled executions with what the fleet must
/// still be told; 409 once it has ended.
pub fn cancel(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
) -> AppResult<(Rollout, Vec<(Execution, executions::CancelOutcome)>)> {
    let mut rollout = get_visible(w, subject, id)?;
    if !may_operate(subject, &rollout) {
        return Err(AppError::forbidden());
    }
    if rollout.status != RolloutStatus::Running {
        return Err(AppError::conflict(format!(
            "the rollout already ended ({})",
            rollout.status.as_str()
        )));
    }
    let mut cancelled = Vec::new();
    for target in rollout.targets.iter_mut() {
        match target.state {
            TargetState::Pending => {
                target.state = TargetState::Skipped;
                target.error = Some("skipped: the rollout was cancelled".into());
            }
            TargetState::Running => {
                if let Some(eid) = &target.execution_id {
                    match executions::request_cancel(w, actor, subject, eid) {
                        Ok(done) => cancelled.push(done),
                        // It ended meanwhile: the next look records how.
                        Err(e) if e.kind == crate::error::Kind::Conflict => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            _ => {}
        }
    }
    // The facts step's gatherings serve only this rollout.
    for eid in std::mem::take(&mut rollout.facts_step) {
        match executions::request_cancel(w, actor, subject, &eid) {
            Ok(done) => cancelled.push(done),
            Err(e) if e.kind == crate::error::Kind::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    rollout.status = RolloutStatus::Cancelled;
    rollout.finished_at = Some(Utc::now());
    rollout.sealed_secrets = None;
    w.put(&rollout)?;
    w.index_delete(RUNNING, id)?;
    audit::record(
        w,
        actor,
        "rollout.cancel",
        &format!("script:{}", rollout.script_name),
        rollout.id.clone(),
    )?;
    Ok((rollout, cancelled))
}

/// The body of `POST /api/v1/rollouts/{id}/retry-failed`: the secret variables again
/// when the rollout had any.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// A new rollout of the same script, settings and variables over the targets of an
/// ended rollout that failed or were skipped and have an agent now.
pub fn retry_failed(
    app: &App,
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
    retry: &RetryInput,
) -> AppResult<(Rollout, Vec<Execution>)> {
    let rollout = get_visible(w, subject, id)?;
    if !may_operate(subject, &rollout) {
        return Err(AppError::forbidden());
    }
    if rollout.status == RolloutStatus::Running {
        return Err(AppError::conflict(
            "the rollout is still running: cancel it or wait for its end",
        ));
    }
    let mut servers = Vec::new();
    for t in &rollout.targets {
        if !matches!(t.state, TargetState::Failed | TargetState::Skipped) {
            continue;
        }
        // The server's agent now (it may have one since), else the one it had.
        let agent = match &t.server_id {
            Some(sid) => w
                .get::<crate::servers::Server>(sid)?
                .and_then(|s| s.agent_id),
            None => None,
        }
        .unwrap_or_else(|| t.agent_id.clone());
        let usable = !agent.is_empty()
            && w.get::<Agent>(&agent)?
                .is_some_and(|a| a.revoked_at.is_none());
        if usable && !servers.contains(&agent) {
            servers.push(agent);
        }
    }
    if servers.is_empty() {
        return Err(AppError::conflict(
            "no failed or skipped target has an agent to run on",
        ));
    }
    let missing: Vec<&String> = rollout
        .secret_names
        .iter()
        .filter(|name| !retry.vars.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(AppError::invalid(
            "vars",
            format!(
                "give the secret variables again: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut vars: BTreeMap<String, serde_json::Value> = rollout
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    vars.extend(retry.vars.clone());
    let input = RunInput {
        targets: Targets::Servers { servers },
        vars,
        serial: Some(rollout.serial),
        max_failures: Some(rollout.max_failures),
        check: rollout.check,
    };
    create(app, w, actor, subject, &rollout.script_id, &input)
}

/// Schema step (run by `listing::backfill_indexes`): the script index of rollouts
/// stored before it existed.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Rollout> = w.list()?;
    for rollout in &all {
        w.index_put(
            BY_SCRIPT,
            &format!("{}/{}", rollout.script_id, rollout.id),
            &rollout.id,
        )?;
    }
    Ok(())
}

/// The API view: the rollout, a summary, and each target with its execution.
pub fn view(
    r: &impl Read,
    subject: &Subject,
    rollout: &Rollout,
) -> anyhow::Result<serde_json::Value> {
    let mut targets = Vec::new();
    let mut executions = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &rollout.targets {
        let visible = policy::can(subject, Action::ViewServers, Some(&t.project_id));
        let execution = match (&t.execution_id, visible) {
            (Some(eid), true) => r.get::<Execution>(eid)?,
            _ => None,
        };
        let execution_view = match &execution {
            Some(e) => {
                let v = crate::web::fleet_api::execution_view(r, e)?;
                executions.push(serde_json::to_value(&v)?);
                Some(v)
            }
            None => None,
        };
        // The grid shows the execution's own status while the rollout has not yet
        // looked at it.
        let state = match &execution {
            Some(e) if t.state == TargetState::Running => target_state_of(e),
            _ => t.state,
        };
        *counts.entry(state.as_str()).or_default() += 1;
        targets.push(json!({
            "server": t.name,
            "status": state.as_str(),
            "reason": t.error,
            "project_id": t.project_id,
            "name": t.name,
            "server_id": t.server_id,
            "agent_id": t.agent_id,
            "state": state.as_str(),
            "batch": t.batch,
            "error": t.error,
            "execution_id": t.execution_id,
            "execution": execution_view,
        }));
    }
    // Targets that reached an end (succeeded, failed or skipped), for the progress bar.
    let done: usize = ["succeeded", "failed", "skipped"]
        .iter()
        .map(|k| counts.get(k).copied().unwrap_or(0))
        .sum();
    let total = rollout.targets.len();
    let summary = json!({
        "total": total,
        "done": done,
        "done_percent": (done * 100).checked_div(total).unwrap_or(100),
        "pending": counts.get("pending").copied().unwrap_or(0),
        "running": counts.get("running").copied().unwrap_or(0),
        "succeeded": counts.get("succeeded").copied().unwrap_or(0),
        "failed": counts.get("failed").copied().unwrap_or(0),
        "skipped": counts.get("skipped").copied().unwrap_or(0),
    });
    Ok(json!({
        "id": rollout.id,
        "script": {"id": rollout.script_id, "name": rollout.script_name},
        "status": rollout.status.as_str(),
        "serial": rollout.serial,
        "max_failures": rollout.max_failures,
        "check": rollout.check,
        "vars": rollout.vars,
        "secret_vars": rollout.secret_names,
        "batches_started": rollout.batches_started,
        "gathering_facts": rollout.status == RolloutStatus::Running && !rollout.facts_step.is_empty(),
        "created_by": rollout.created_by,
        "created_at": rollout.created_at,
        "finished_at": rollout.finished_at,
        "summary": summary,
        "targets": targets,
        "executions": executions,
    }))
}

#[cfg(test)]
mod tests {
    use super::TargetState::{
        Failed as F, Pending as P, Running as R, Skipped as S, Succeeded as Ok_,
    };
    use super::*;

    fn check(states: &[TargetState], serial: usize, max_failures: u32, expected: Step) {
        assert_eq!(plan(states, serial, max_failures), expected, "{states:?}");
    }

    /// A playbook gathers facts unless every play turns gathering off; templated
    /// values, imports and text that does not parse count as gathering.
    #[test]
    fn plays_gather_facts_unless_every_play_says_no() {
        for (playbook, gathers) in [
            ("- hosts: all\n  tasks: []\n", true),
            ("- hosts: all\n  gather_facts: false\n  tasks: []\n", false),
            (
                "- hosts: all\n  gather_facts: no\n- hosts: web\n  gather_facts: 'False'\n",
                false,
            ),
            (
                "- hosts: all\n  gather_facts: false\n- hosts: web\n  gather_facts: true\n",
                true,
            ),
            ("- hosts: all\n  gather_facts: \"{{ want }}\"\n", true),
            ("- import_playbook: other.yml\n", true),
            ("- hosts: [unclosed\n", true),
        ] {
            assert_eq!(plays_may_gather_facts(playbook), gathers, "{playbook}");
        }
        assert!(plays_may_gather_facts(GATHER_PLAYBOOK));
    }

    /// Batches of `serial` start in order, one after the other.
    #[test]
    fn batches_in_order() {
        check(&[P, P, P, P, P], 2, 0, Step::Start(vec![0, 1]));
        check(&[R, R, P, P, P], 2, 0, Step::Wait);
        check(&[Ok_, R, P, P, P], 2, 0, Step::Wait);
        check(&[Ok_, Ok_, P, P, P], 2, 0, Step::Start(vec![2, 3]));
        check(&[Ok_, Ok_, Ok_, Ok_, P], 2, 0, Step::Start(vec![4]));
        check(
            &[Ok_, Ok_, Ok_, Ok_, Ok_],
            2,
            0,
            Step::Finish {
                status: RolloutStatus::Succeeded,
                skip: vec![],
            },
        );
        // serial 0 behaves as 1, never as "nothing".
        check(&[P, P], 0, 0, Step::Start(vec![0]));
    }

    /// Without a threshold every target runs; failures make the rollout failed.
    #[test]
    fn failures_without_threshold() {
        check(&[F, P], 1, 0, Step::Start(vec![1]));
        check(
            &[F, Ok_],
            1,
            0,
            Step::Finish {
                status: RolloutStatus::Failed,
                skip: vec![],
            },
        );
    }

    /// Reaching max_failures stops the rollout once the running batch ended and marks
    /// every pending target skipped.
    #[test]
    fn stop_after_n_failures() {
        check(&[F, R, P, P], 2, 1, Step::Wait);
        check(
            &[F, Ok_, P, P],
            2,
            1,
            Step::Finish {
                status: RolloutStatus::Stopped,
                skip: vec![2, 3],
            },
        );
        check(&[F, Ok_, P, P], 2, 2, Step::Start(vec![2, 3]));
        check(
            &[F, F, P],
            1,
            2,
            Step::Finish {
                status: RolloutStatus::Stopped,
                skip: vec![2],
            },
        );
        // The threshold reached by the last batch: nothing to skip, the run failed.
        check(
            &[Ok_, F],
            1,
            1,
            Step::Finish {
                status: RolloutStatus::Failed,
                skip: vec![],
            },
        );
        // Skipped targets never start again.
        check(
            &[F, S, S],
            1,
            1,
            Step::Finish {
                status: RolloutStatus::Failed,
                skip: vec![],
            },
        );
    }

    /// The run body accepts servers or a project as targets.
    #[test]
    fn run_input_targets() {
        let input: RunInput = serde_json::from_value(json!({
            "targets": {"servers": ["a", "b"]}, "serial": 1, "max_failures": 1
        }))
        .unwrap();
        assert!(matches!(input.targets, Targets::Servers { ref servers } if servers.len() == 2));
        let input: RunInput =
            serde_json::from_value(json!({"targets": {"project": "Local"}})).unwrap();
        assert!(matches!(input.targets, Targets::Project { .. }));
        assert!(serde_json::from_value::<RunInput>(json!({"targets": {}})).is_err());
    }
}
