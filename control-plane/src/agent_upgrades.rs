//! Agent upgrades (issue 16): one run that replaces the `dynserv-agent` binary of
//! several agents with the one this control plane ships, in batches like a rollout.
//!
//! * **The binary.** [`agent_binary_path`] (the `dynserv-agent` file next to the
//!   `dynserv` executable, or `DYNSERV_AGENT_BINARY`); [`binary_info`] reads it once
//!   per upgrade: its version (the marker, `dynserv_shared::upgrade`), size and
//!   SHA-256, which the upgrade keeps with the fleet's signature of them. Every agent
//!   of the upgrade is sent the file as it is on disk then: one changed since fails
//!   the agent's checks instead of being installed.
//! * **Targets.** The agents chosen (by id or name, or a project's, or every outdated
//!   agent the caller may manage), each with the version it ran, a status and why it
//!   failed: `pending → sending → waiting_for_jobs → restarting → succeeded`, or
//!   `failed`, or `skipped` (already on that version). An agent whose protocol knows no
//!   upgrades (older than `UPGRADE_MIN_PROTOCOL`) fails at once with the way to upgrade
//!   it by hand; it is never sent anything.
//! * **Batches.** [`plan`] (pure) decides: wait while a batch is under way, else start
//!   the next [`SERIAL`] pending targets, else end. [`supervisor`] runs it every second
//!   on the leader (it survives restarts: the state is the record), kicks the delivery
//!   of targets that are `sending` (the replica holding the agent's connection streams
//!   the binary, `fleet::upgrade`) and fails targets that stay too long in a state.
//! * **Outcomes.** The agent's answers move its target ([`record_progress`]); the
//!   restarted agent's `UpgradeOutcome`, or a hello with the new version, ends it
//!   ([`record_outcome`], [`step`]).
//!
//! Permissions: `Action::ManageAgents` on every target's project (admins, and a
//! project's admins for its agents), decided before anything else; creating one is
//! audited in its transaction.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dynserv_shared::proto::UPGRADE_MIN_PROTOCOL;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::agents::{self, Agent};
use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};

/// Upgrades still running (`id` → `id`), which the supervisor walks.
const RUNNING: &str = "agent_upgrade_running";

/// Agents upgraded at once (a batch).
pub const SERIAL: usize = 5;

/// Most agents in one upgrade.
pub const MAX_TARGETS: usize = 1000;

/// How long a target may stay `sending` (its agent offline, or not answering) before
/// it fails.
pub const SEND_TIMEOUT: chrono::Duration = chrono::Duration::minutes(10);

/// How long a target may stay `waiting_for_jobs` (a long job on the agent) before it
/// fails.
pub const JOBS_TIMEOUT: chrono::Duration = chrono::Duration::hours(24);

/// How long a target may stay `restarting` before it fails: the agent's own trial
/// (`DYNSERV_AGENT_UPGRADE_TRIAL_S`, 120 s by default) plus its rollback and restart.
pub const RESTART_TIMEOUT: chrono::Duration = chrono::Duration::minutes(5);

/// How often a `sending` target's delivery is asked for again (after a reconnect, on
/// another replica).
const RESEND_AFTER: chrono::Duration = chrono::Duration::seconds(10);

/// Where one agent of an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Its batch has not started.
    Pending,
    /// The binary is offered or on its way (or the agent is offline for now).
    Sending,
    /// The agent checked the binary and waits for its running jobs to end.
    WaitingForJobs,
    /// The agent replaced its binary and restarts.
    Restarting,
    Succeeded,
    Failed,
    /// Already on the upgrade's version.
    Skipped,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Sending => "sending",
            TargetStatus::WaitingForJobs => "waiting_for_jobs",
            TargetStatus::Restarting => "restarting",
            TargetStatus::Succeeded => "succeeded",
            TargetStatus::Failed => "failed",
            TargetStatus::Skipped => "skipped",
        }
    }

    /// Started and not ended.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TargetStatus::Sending | TargetStatus::WaitingForJobs | TargetStatus::Restarting
        )
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TargetStatus::Succeeded | TargetStatus::Failed | TargetStatus::Skipped
        )
    }
}

/// One agent of an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub agent_id: String,
    pub name: String,
    pub project_id: String,
    /// The version it ran when the upgrade was made.
    pub from: String,
    pub status: TargetStatus,
    /// Why it failed (the agent's words for a bad checksum, signature or a rollback).
    pub error: Option<String>,
    /// A note on where it stands ("waiting for 1 running job").
    pub note: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// When its status last changed.
    pub changed_at: DateTime<Utc>,
    /// When its delivery was last asked for.
    pub kicked_at: Option<DateTime<Utc>>,
}

/// The whole upgrade's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStatus {
    Running,
    /// Every agent succeeded (or was already on the version).
    Succeeded,
    /// Every agent was tried; some failed.
    Failed,
}

impl UpgradeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStatus::Running => "running",
            UpgradeStatus::Succeeded => "succeeded",
            UpgradeStatus::Failed => "failed",
        }
    }
}

/// An upgrade of agents to the binary this control plane serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentUpgrade {
    pub id: String,
    /// The version the binary reports.
    pub to: String,
    pub size: u64,
    pub sha256: String,
    /// The fleet's Ed25519 signature over version, size and SHA-256 (base64).
    pub signature: String,
    pub targets: Vec<Target>,
    pub status: UpgradeStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Record for AgentUpgrade {
    const TABLE: &'static str = "agent_upgrades";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The binary served to agents: the one agent installs upload
/// ([`crate::agent_installs::agent_binary_path`]: `DYNSERV_AGENT_BINARY` when set, else
/// the `dynserv-agent` file next to the running `dynserv`).
pub fn agent_binary_path() -> Option<PathBuf> {
    crate::agent_installs::agent_binary_path()
}

/// What an upgrade sends: the binary's version, size and SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryInfo {
    pub version: String,
    pub size: u64,
    pub sha256: String,
}

/// Reads an agent binary once, in pieces (bounded memory whatever its size): its
/// SHA-256, its size and the version its marker holds.
pub fn binary_info(path: &Path) -> anyhow::Result<BinaryInfo> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let keep = dynserv_shared::upgrade::VERSION_MARKER_LEN;
    // Each window is the tail of the previous piece and the next piece, so a marker
    // that straddles two pieces is still whole in one window.
    let mut window: Vec<u8> = Vec::with_capacity(1024 * 1024 + keep);
    let mut piece = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    let mut versions: Vec<String> = Vec::new();
    loop {
        let n = file.read(&mut piece)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&piece[..n]);
        window.extend_from_slice(&piece[..n]);
        if let Some(v) = dynserv_shared::upgrade::find_version(&window) {
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        let tail = window.len().saturating_sub(keep - 1);
        window.drain(..tail);
    }
    let version = match versions.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!(
            "{} carries no agent version marker (not a dynserv-agent of this release?)",
            path.display()
        ),
        _ => anyhow::bail!("{} carries several agent versions", path.display()),
    };
    if size > dynserv_shared::proto::MAX_AGENT_BINARY_BYTES {
        anyhow::bail!("{} is larger than an agent binary may be", path.display());
    }
    Ok(BinaryInfo {
        version,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Which agents an upgrade is for.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These agents (ids or names).
    Agents(Vec<String>),
    /// The usable agents of a project (id or name) not on the served version.
    Project(String),
    /// Every usable agent the subject may manage that is not on the served version.
    AllOutdated,
}

/// The agents of a selection, each checked: visible (else 404 for one named) and
/// manageable by the subject (else 403).
fn resolve(
    r: &impl Read,
    subject: &Subject,
    selection: &Selection,
    to: &str,
) -> AppResult<Vec<Agent>> {
    let manageable =
        |agent: &Agent| policy::can(subject, Action::ManageAgents, Some(&agent.project_id));
    let agents = match selection {
        Selection::Agents(keys) => {
            if keys.is_empty() {
                return Err(AppError::invalid("agents", "name at least one agent"));
            }
            if keys.len() > MAX_TARGETS {
                return Err(AppError::invalid(
                    "agents",
                    format!("at most {MAX_TARGETS} agents per upgrade"),
                ));
            }
            let mut out: Vec<Agent> = Vec::new();
            for key in keys {
                let agent = agents::find_visible(r, subject, key.trim())?;
                if !manageable(&agent) {
                    return Err(AppError::forbidden());
                }
                if agent.revoked_at.is_some() {
                    return Err(AppError::invalid(
                        "agents",
                        format!("the agent {} has been revoked", agent.name),
                    ));
                }
                if !out.iter().any(|a| a.id == agent.id) {
                    out.push(agent);
                }
            }
            out
        }
        Selection::Project(key) => {
            let project = crate::projects::find(r, key.trim())?
                .filter(|p| policy::can(subject, Action::ViewProject, Some(&p.id)))
                .ok_or_else(|| AppError::not_found("project"))?;
            if !policy::can(subject, Action::ManageAgents, Some(&project.id)) {
                return Err(AppError::forbidden());
            }
            agents::of_project(r, &project.id)?
                .into_iter()
                .filter(|a| a.facts.agent_version != to)
                .collect()
        }
        Selection::AllOutdated => agents::visible(r, subject)?
            .into_iter()
            .filter(|a| a.revoked_at.is_none() && manageable(a) && a.facts.agent_version != to)
            .collect(),
    };
    if agents.len() > MAX_TARGETS {
        return Err(AppError::invalid(
            "agents",
            format!("at most {MAX_TARGETS} agents per upgrade"),
        ));
    }
    if agents.is_empty() {
        return Err(AppError::conflict(format!(
            "no agent to upgrade: every chosen agent already runs {to}"
        )));
    }
    Ok(agents)
}

/// Why an agent of `protocol` is never offered an upgrade.
pub fn protocol_refusal(protocol: u32) -> String {
    format!(
        "the agent speaks fleet protocol {protocol}, which knows no upgrades (protocol \
         {UPGRADE_MIN_PROTOCOL} does): upgrade it by hand once (copy the dynserv-agent \
         binary that ships with this control plane over the old one and restart the \
         dynserv-agent service, or run Install agent on the server's page)"
    )
}

/// Creates an upgrade of the selected agents to the binary `binary` describes, signed
/// with `signature`; audited in the same transaction. Its first batch starts at the
/// supervisor's next turn.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    selection: &Selection,
    binary: &BinaryInfo,
    signature: &str,
    now: DateTime<Utc>,
) -> AppResult<AgentUpgrade> {
    let agents = resolve(w, subject, selection, &binary.version)?;
    let targets = agents
        .iter()
        .map(|agent| {
            let (status, error) = if agent.facts.agent_version == binary.version {
                (
                    TargetStatus::Skipped,
                    Some(format!("already runs {}", binary.version)),
                )
            } else if agent.protocol != 0 && agent.protocol < UPGRADE_MIN_PROTOCOL {
                (TargetStatus::Failed, Some(protocol_refusal(agent.protocol)))
            } else {
                (TargetStatus::Pending, None)
            };
            Target {
                agent_id: agent.id.clone(),
                name: agent.name.clone(),
                project_id: agent.project_id.clone(),
                from: agent.facts.agent_version.clone(),
                status,
                error,
                note: None,
                started_at: None,
                changed_at: now,
                kicked_at: None,
            }
        })
        .collect::<Vec<_>>();
    let upgrade = AgentUpgrade {
        id: uuid::Uuid::now_v7().to_string(),
        to: binary.version.clone(),
        size: binary.size,
        sha256: binary.sha256.clone(),
        signature: signature.to_string(),
        targets,
        status: UpgradeStatus::Running,
        created_by: actor.username.clone(),
        created_at: now,
        finished_at: None,
    };
    w.put(&upgrade)?;
    w.index_put(RUNNING, &upgrade.id, &upgrade.id)?;
    let names: Vec<&str> = upgrade
        .targets
        .iter()
        .map(|t| t.name.as_str())
        .take(20)
        .collect();
    audit::record(
        w,
        actor,
        "agent.upgrade",
        &format!("agent-upgrade:{}", upgrade.id),
        format!(
            "to {} ({} agents: {}{})",
            upgrade.to,
            upgrade.targets.len(),
            names.join(", "),
            if upgrade.targets.len() > names.len() {
                ", …"
            } else {
                ""
            }
        ),
    )?;
    Ok(upgrade)
}

/// What an upgrade does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A batch is under way.
    Wait,
    /// Start these targets (indexes) as the next batch.
    Start(Vec<usize>),
    /// Every target ended: the upgrade ends with this status.
    Finish(UpgradeStatus),
}

/// Decides the next step from the targets' statuses: wait while any is active, start
/// the next `serial` pending ones, else finish (succeeded when none failed).
pub fn plan(statuses: &[TargetStatus], serial: usize) -> Step {
    if statuses.iter().any(|s| s.is_active()) {
        return Step::Wait;
    }
    let pending: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == TargetStatus::Pending)
        .map(|(i, _)| i)
        .take(serial.max(1))
        .collect();
    if !pending.is_empty() {
        return Step::Start(pending);
    }
    if statuses.contains(&TargetStatus::Failed) {
        Step::Finish(UpgradeStatus::Failed)
    } else {
        Step::Finish(UpgradeStatus::Succeeded)
    }
}

/// Most characters of an agent's words kept in a target's error.
const MAX_ERROR_CHARS: usize = 1000;

/// An agent's words, cut to [`MAX_ERROR_CHARS`].
fn bounded(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

fn set_status(
    target: &mut Target,
    status: TargetStatus,
    error: Option<String>,
    now: DateTime<Utc>,
) {
    target.status = status;
    target.error = error;
    target.changed_at = now;
    if status.is_final() {
        target.note = None;
    }
}

/// One turn of an upgrade (in one transaction): times out targets that stayed too
/// long, ends those whose agent said hello with the new version, plans the next batch
/// and the end. Returns the agents whose delivery must be asked for now.
pub fn step(w: &mut Writer, id: &str, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
    let Some(mut upgrade) = w.get::<AgentUpgrade>(id)? else {
        w.index_delete(RUNNING, id)?;
        return Ok(Vec::new());
    };
    if upgrade.status != UpgradeStatus::Running {
        w.index_delete(RUNNING, id)?;
        return Ok(Vec::new());
    }
    let before = serde_json::to_string(&upgrade.targets)?;
    for target in upgrade.targets.iter_mut().filter(|t| t.status.is_active()) {
        let agent = w.get::<Agent>(&target.agent_id)?;
        let Some(agent) = agent.filter(|a| a.revoked_at.is_none()) else {
            set_status(
                target,
                TargetStatus::Failed,
                Some("the agent was revoked".into()),
                now,
            );
            continue;
        };
        // A hello with the new version since the agent restarted: done, even if its
        // outcome message was lost.
        let back = target.status == TargetStatus::Restarting
            && agent.facts.agent_version == upgrade.to
            && agent
                .last_seen
                .is_some_and(|seen| seen >= target.changed_at);
        if back {
            set_status(target, TargetStatus::Succeeded, None, now);
            continue;
        }
        let waited = now - target.changed_at;
        let timed_out = match target.status {
            TargetStatus::Sending => (waited > SEND_TIMEOUT).then(|| {
                format!(
                    "the agent did not take the upgrade within {} minutes (offline?)",
                    SEND_TIMEOUT.num_minutes()
                )
            }),
            TargetStatus::WaitingForJobs => (waited > JOBS_TIMEOUT).then(|| {
                format!(
                    "the agent's jobs were still running after {} hours",
                    JOBS_TIMEOUT.num_hours()
                )
            }),
            TargetStatus::Restarting => (waited > RESTART_TIMEOUT).then(|| {
                format!(
                    "the agent did not come back with version {} within {} minutes",
                    upgrade.to,
                    RESTART_TIMEOUT.num_minutes()
                )
            }),
            _ => None,
        };
        if let Some(error) = timed_out {
            set_status(target, TargetStatus::Failed, Some(error), now);
        }
    }
    let statuses: Vec<TargetStatus> = upgrade.targets.iter().map(|t| t.status).collect();
    match plan(&statuses, SERIAL) {
        Step::Wait => {}
        Step::Start(indexes) => {
            for index in indexes {
                let target = &mut upgrade.targets[index];
                set_status(target, TargetStatus::Sending, None, now);
                target.started_at = Some(now);
            }
        }
        Step::Finish(status) => {
            upgrade.status = status;
            upgrade.finished_at = Some(now);
            w.index_delete(RUNNING, id)?;
        }
    }
    let mut kick = Vec::new();
    for target in upgrade
        .targets
        .iter_mut()
        .filter(|t| t.status == TargetStatus::Sending)
    {
        if target.kicked_at.is_none_or(|at| now - at >= RESEND_AFTER) {
            target.kicked_at = Some(now);
            kick.push(target.agent_id.clone());
        }
    }
    if upgrade.status != UpgradeStatus::Running
        || before != serde_json::to_string(&upgrade.targets)?
    {
        w.put(&upgrade)?;
    }
    Ok(kick)
}

/// What an agent said on its upgrade stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// It takes the binary; the bytes are on their way.
    Accepted,
    /// Checked and staged; it waits for this many running jobs.
    Staged { running_jobs: u32 },
    /// It replaced its binary and restarts.
    Restarting,
    /// It did not take the upgrade (the reason is the agent's).
    Failed(String),
}

/// Moves an agent's target on what it said; a target that already ended (or another
/// upgrade's) is left alone. Returns whether anything changed.
pub fn record_progress(
    w: &mut Writer,
    upgrade_id: &str,
    agent_id: &str,
    progress: &Progress,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let Some(mut upgrade) = w.get::<AgentUpgrade>(upgrade_id)? else {
        return Ok(false);
    };
    let Some(target) = upgrade
        .targets
        .iter_mut()
        .find(|t| t.agent_id == agent_id && t.status.is_active())
    else {
        return Ok(false);
    };
    match progress {
        Progress::Accepted => target.note = Some("receiving the binary".into()),
        Progress::Staged { running_jobs } => {
            set_status(target, TargetStatus::WaitingForJobs, None, now);
            target.note = Some(match running_jobs {
                0 => "checked; applying".to_string(),
                1 => "checked; waiting for 1 running job".to_string(),
                n => format!("checked; waiting for {n} running jobs"),
            });
        }
        Progress::Restarting => {
            set_status(target, TargetStatus::Restarting, None, now);
            target.note = Some("restarting into the new binary".into());
        }
        Progress::Failed(reason) => {
            set_status(target, TargetStatus::Failed, Some(bounded(reason)), now);
        }
    }
    w.put(&upgrade)?;
    Ok(true)
}

/// Ends an agent's target on the outcome its restarted process reported: succeeded
/// when it runs the upgrade's version without an error, else failed with the error.
pub fn record_outcome(
    w: &mut Writer,
    upgrade_id: &str,
    agent_id: &str,
    version: &str,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let Some(mut upgrade) = w.get::<AgentUpgrade>(upgrade_id)? else {
        return Ok(false);
    };
    let to = upgrade.to.clone();
    let Some(target) = upgrade
        .targets
        .iter_mut()
        .find(|t| t.agent_id == agent_id && !t.status.is_final())
    else {
        return Ok(false);
    };
    match error {
        None if version == to => set_status(target, TargetStatus::Succeeded, None, now),
        None => set_status(
            target,
            TargetStatus::Failed,
            Some(format!(
                "the agent came back with version {version}, not {to}"
            )),
            now,
        ),
        Some(error) => set_status(target, TargetStatus::Failed, Some(bounded(error)), now),
    }
    w.put(&upgrade)?;
    Ok(true)
}

/// Moves every running upgrade on once a second while this replica leads, until
/// `stop` resolves.
pub async fn supervisor(app: App, stop: impl Future<Output = ()>) {
    crate::cluster::drive_running(
        app,
        RUNNING,
        "agent upgrade",
        Duration::from_secs(1),
        stop,
        advance,
    )
    .await
}

/// One step of one upgrade, then its binary sent to the agents the step started.
fn advance(app: &App, id: &str) -> anyhow::Result<()> {
    let kick = app.store.write(|w| step(w, id, Utc::now()))?;
    for agent_id in kick {
        app.fleet.deliver_upgrade(id, &agent_id);
    }
    Ok(())
}

/// One upgrade the subject may see: one of its agents' projects must be visible.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<AgentUpgrade> {
    let upgrade: AgentUpgrade = r
        .get(id)?
        .ok_or_else(|| AppError::not_found("agent upgrade"))?;
    if !upgrade
        .targets
        .iter()
        .any(|t| policy::can(subject, Action::ViewServers, Some(&t.project_id)))
    {
        return Err(AppError::not_found("agent upgrade"));
    }
    Ok(upgrade)
}

/// The API's view of an upgrade: per agent `{"agent", "name", "from", "to", "status",
/// "error"?, "note"?}`, the agents of projects the subject cannot see left out.
pub fn view(upgrade: &AgentUpgrade, subject: &Subject) -> serde_json::Value {
    let agents: Vec<serde_json::Value> = upgrade
        .targets
        .iter()
        .filter(|t| policy::can(subject, Action::ViewServers, Some(&t.project_id)))
        .map(|t| {
            let mut value = serde_json::json!({
                "agent": t.agent_id,
                "name": t.name,
                "from": t.from,
                "to": upgrade.to,
                "status": t.status.as_str(),
                "started_at": t.started_at,
                "changed_at": t.changed_at,
            });
            if let Some(error) = &t.error {
                value["error"] = serde_json::json!(error);
            }
            if let Some(note) = &t.note {
                value["note"] = serde_json::json!(note);
            }
            value
        })
        .collect();
    serde_json::json!({
        "id": upgrade.id,
        "to": upgrade.to,
        "sha256": upgrade.sha256,
        "size": upgrade.size,
        "status": upgrade.status.as_str(),
        "created_by": upgrade.created_by,
        "created_at": upgrade.created_at,
        "finished_at": upgrade.finished_at,
        "agents": agents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(statuses: &[TargetStatus], serial: usize, expected: Step) {
        assert_eq!(plan(statuses, serial), expected, "{statuses:?}");
    }

    /// Batches start `serial` agents at a time, only once the previous batch ended;
    /// the upgrade ends succeeded unless an agent failed.
    #[test]
    fn batches_in_order() {
        use TargetStatus::*;
        check(&[Pending, Pending, Pending], 2, Step::Start(vec![0, 1]));
        check(&[Sending, Succeeded, Pending], 2, Step::Wait);
        check(&[WaitingForJobs, Pending], 1, Step::Wait);
        check(&[Restarting, Pending], 1, Step::Wait);
        check(&[Succeeded, Failed, Pending], 2, Step::Start(vec![2]));
        check(
            &[Succeeded, Skipped],
            2,
            Step::Finish(UpgradeStatus::Succeeded),
        );
        check(&[Succeeded, Failed], 2, Step::Finish(UpgradeStatus::Failed));
        check(&[Pending], 0, Step::Start(vec![0]));
    }

    /// An upgrade never offers anything to an agent whose protocol knows no upgrades
    /// (its target fails at once, saying how to upgrade it by hand), skips one already
    /// on the version, and starts the others in batches; creating it is audited.
    #[test]
    fn old_protocols_fail_at_once_and_current_versions_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        store.seal_with(crate::secrets::Keys::from_master(b"test"));
        let admin = Subject {
            user_id: "u".into(),
            username: "admin".into(),
            role: policy::Role::Admin,
            is_manager: false,
            grants: Default::default(),
        };
        let mut old = Agent::sample("a-old", "old", "p");
        old.protocol = 3;
        old.facts.agent_version = "0.0.9".into();
        let mut same = Agent::sample("a-same", "same", "p");
        same.protocol = 4;
        same.facts.agent_version = "0.2.0".into();
        let mut due = Agent::sample("a-due", "due", "p");
        due.protocol = 4;
        due.facts.agent_version = "0.1.0".into();
        let binary = BinaryInfo {
            version: "0.2.0".into(),
            size: 10,
            sha256: "ab".repeat(32),
        };
        let now = Utc::now();
        let upgrade = store
            .write(|w| {
                for agent in [&old, &same, &due] {
                    w.put(agent)?;
                }
                let selection =
                    Selection::Agents(vec!["a-old".into(), "a-same".into(), "a-due".into()]);
                Ok(create(
                    w,
                    &Actor::system(),
                    &admin,
                    &selection,
                    &binary,
                    "sig",
                    now,
                )?)
            })
            .unwrap();
        let status = |id: &str| {
            let t = upgrade.targets.iter().find(|t| t.agent_id == id).unwrap();
            (t.status, t.error.clone().unwrap_or_default())
        };
        let (s, e) = status("a-old");
        assert_eq!(s, TargetStatus::Failed);
        assert!(e.contains("protocol 3") && e.contains("by hand"), "{e}");
        assert_eq!(status("a-same").0, TargetStatus::Skipped);
        assert_eq!(status("a-due").0, TargetStatus::Pending);
        let kicked = store.write(|w| step(w, &upgrade.id, now)).unwrap();
        assert_eq!(kicked, vec!["a-due".to_string()]);
        // Asked again only after a while.
        assert!(store
            .write(|w| step(w, &upgrade.id, now))
            .unwrap()
            .is_empty());
        // The restarted agent's outcome ends the target and the upgrade.
        store
            .write(|w| record_outcome(w, &upgrade.id, "a-due", "0.2.0", None, now))
            .unwrap();
        store.write(|w| step(w, &upgrade.id, now)).unwrap();
        let ended: AgentUpgrade = store.get(&upgrade.id).unwrap().unwrap();
        assert_eq!(
            ended.status,
            UpgradeStatus::Failed,
            "one agent could not be upgraded"
        );
        assert_eq!(
            ended
                .targets
                .iter()
                .find(|t| t.agent_id == "a-due")
                .unwrap()
                .status,
            TargetStatus::Succeeded
        );
    }

    /// A binary's version, size and checksum are read from the file, also when its
    /// marker straddles two of the pieces it is read in.
    #[test]
    fn binary_info_reads_marker_across_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynserv-agent");
        let mut bytes = vec![7u8; 1024 * 1024 - 10];
        bytes.extend_from_slice(&dynserv_shared::upgrade::version_marker("1.2.3"));
        bytes.extend_from_slice(&[9u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let info = binary_info(&path).unwrap();
        assert_eq!(info.version, "1.2.3");
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
        std::fs::write(&path, b"not an agent").unwrap();
        assert!(binary_info(&path).is_err());
    }
}
