//! Executions: one record per job run on an agent (who started it, what it runs, its
//! status and exit), and its output log, stored chunk by chunk under
//! `(execution_id, seq)` by the fleet's ingestion.
//!
//! Status moves `queued → running → succeeded | failed | cancelled | timed_out`, or
//! from `queued` straight to an end (cancelled before delivery, expired, rejected).
//! Only this module changes an execution's status. Indexes: `exec_active`
//! (`agent_id/execution_id` for queued and running ones: what a connecting agent is
//! sent), `exec_by_agent` (`agent_id/execution_id`, every execution, in time order
//! since ids are UUIDv7).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::{self, Agent};
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};
use dynserv_shared::proto::{JobEnd, JobKind, JobSpec, JobStatus, OutputStream};

const ACTIVE: &str = "exec_active";
const BY_AGENT: &str = "exec_by_agent";

/// How long a job waits for an offline agent by default.
pub const DEFAULT_EXPIRY_S: u64 = 3600;
/// Longest script accepted.
pub const MAX_SCRIPT_LEN: usize = 1024 * 1024;

/// An execution's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    /// Whether the execution has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
        }
    }
}

impl From<JobStatus> for Status {
    fn from(s: JobStatus) -> Status {
        match s {
            JobStatus::Succeeded => Status::Succeeded,
            JobStatus::Failed => Status::Failed,
            JobStatus::Cancelled => Status::Cancelled,
            JobStatus::TimedOut => Status::TimedOut,
        }
    }
}

/// What an execution runs, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    Script {
        interpreter: String,
        script: String,
        env: BTreeMap<String, String>,
        working_dir: Option<String>,
    },
    Playbook {
        playbook: String,
        vars: BTreeMap<String, String>,
        check: bool,
        /// Tasks the native runtime lacks run through ansible-core on the server.
        #[serde(default)]
        ansible_fallback: bool,
    },
    // Backups, verifies, restores and updates: built by `backups` / `updates`.
    ComposeBackup {
        backup_id: String,
        compose_project: String,
        service: String,
        command: String,
        dump_path: Option<String>,
        keep: u32,
    },
    ComposeVerify {
        backup_id: String,
        compose_project: String,
        service: String,
    },
    ComposeRestore {
        backup_id: String,
        compose_project: String,
        service: String,
        command: String,
        dump_path: Option<String>,
    },
    SystemUpdate {
        update_id: String,
        check: bool,
    },
}

impl Work {
    pub fn kind(&self) -> &'static str {
        match self {
            Work::Script { .. } => "script",
            Work::Playbook { .. } => "playbook",
            Work::ComposeBackup { .. } => "compose_backup",
            Work::ComposeVerify { .. } => "compose_verify",
            Work::ComposeRestore { .. } => "compose_restore",
            Work::SystemUpdate { .. } => "system_update",
        }
    }
}

/// One job on one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub agent_id: String,
    pub project_id: String,
    pub server_id: Option<String>,
    pub work: Work,
    pub timeout_s: Option<u64>,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub summary: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// A queued execution not delivered by then fails.
    pub expires_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
}

impl Record for Execution {
    const TABLE: &'static str = "executions";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Execution {
    /// The job as sent to the agent.
    pub fn job_spec(&self) -> JobSpec {
        let kind = job_kind(&self.work);
        JobSpec {
            job_id: self.id.clone(),
            kind,
            timeout_s: self.timeout_s,
            secrets: Vec::new(),
        }
    }
}

/// The job an agent runs for a stored work: the one conversion from the store's
/// record to the wire type.
fn job_kind(work: &Work) -> JobKind {
    match work.clone() {
        Work::Script {
            interpreter,
            script,
            env,
            working_dir,
        } => JobKind::Script {
            interpreter,
            body: script,
            env,
            working_dir,
        },
        Work::Playbook {
            playbook,
            vars,
            check,
            ansible_fallback,
        } => JobKind::Playbook {
            yaml: playbook,
            vars,
            check,
            ansible_fallback,
        },
        Work::ComposeBackup {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            keep,
        } => JobKind::ComposeBackup {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            keep,
        },
        Work::ComposeVerify {
            backup_id,
            compose_project,
            service,
        } => JobKind::ComposeVerify {
            backup_id,
            compose_project,
            service,
        },
        Work::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
        } => JobKind::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
        },
        Work::SystemUpdate { check, .. } => JobKind::SystemUpdate { check },
    }
}

/// The body of `POST /api/v1/executions`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewExecution {
    pub agent: Option<String>,
    /// Fan-out: the same job on each of these agents (ids or names), created in one
    /// transaction; `agent` must then be absent.
    pub agents: Option<Vec<String>>,
    pub kind: Option<String>,
    pub script: Option<String>,
    pub interpreter: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub working_dir: Option<String>,
    pub timeout_s: Option<u64>,
    pub playbook: Option<String>,
    pub vars: Option<BTreeMap<String, serde_json::Value>>,
    pub check: Option<bool>,
    /// Let tasks the native runtime lacks run through ansible-core on the server.
    pub ansible_fallback: Option<bool>,
    /// Seconds a job waits for an offline agent before it fails.
    pub expires_s: Option<u64>,
    // Accepted for the contract's compose_backup shape; refused below until the
    // backups work lands.
    pub compose_project: Option<String>,
    pub service: Option<String>,
    pub command: Option<String>,
    pub dump_path: Option<String>,
    /// Work built by the control plane itself (backups, restores, updates); never
    /// read from JSON.
    #[serde(skip)]
    pub work: Option<Work>,
    /// Secret variables (a script's variables marked secret): never part of the
    /// stored work; kept aside by `scripts` until the job ends. Never read from JSON.
    #[serde(skip)]
    pub secrets: BTreeMap<String, String>,
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates a new execution and stores it queued. The caller dispatches it.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    input: &NewExecution,
) -> AppResult<Execution> {
    let key = input
        .agent
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AppError::invalid("agent", "agent is required (an agent id or name)"))?;
    let agent: Agent = agents::find_visible(w, subject, key).map_err(|e| {
        if e.kind == crate::error::Kind::NotFound {
            AppError::invalid(
                "agent",
                format!("no agent {:?} that you can see", crate::validate::echo(key)),
            )
        } else {
            e
        }
    })?;
    if !policy::can(subject, Action::OperateServers, Some(&agent.project_id)) {
        return Err(AppError::forbidden());
    }
    if agent.revoked_at.is_some() {
        return Err(AppError::invalid("agent", "that agent has been revoked"));
    }
    // `"playbook": "<script id>"` runs a stored script with its declared variables.
    let resolved = crate::scripts::resolve_execution(w, subject, &agent.project_id, input)?;
    let input = resolved.as_ref().unwrap_or(input);
    let kind = input.kind.as_deref().unwrap_or("script");
    let work = match kind {
        "script" => {
            let script = input.script.as_deref().unwrap_or("");
            if script.trim().is_empty() {
                return Err(AppError::invalid("script", "script is required"));
            }
            if script.len() > MAX_SCRIPT_LEN {
                return Err(AppError::invalid(
                    "script",
                    "the script is larger than 1 MiB",
                ));
            }
            if script.contains('\0') {
                return Err(AppError::invalid(
                    "script",
                    "the script must not contain NUL bytes",
                ));
            }
            let interpreter = input
                .interpreter
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("/bin/sh");
            if !interpreter.starts_with('/')
                || interpreter.len() > 200
                || interpreter.contains(['\n', '\0'])
            {
                return Err(AppError::invalid(
                    "interpreter",
                    "interpreter must be an absolute path such as /bin/bash",
                ));
            }
            let env = input.env.clone().unwrap_or_default();
            if env.len() > 200 {
                return Err(AppError::invalid("env", "at most 200 variables"));
            }
            if let Some(bad) = env.keys().find(|k| !env_name_ok(k)) {
                return Err(AppError::invalid(
                    "env",
                    format!("{bad:?} is not a valid variable name"),
                ));
            }
            if env
                .values()
                .any(|v| v.contains('\0') || v.len() > 64 * 1024)
            {
                return Err(AppError::invalid(
                    "env",
                    "a variable value is too long or holds a NUL byte",
                ));
            }
            let working_dir = input
                .working_dir
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from);
            if working_dir
                .as_deref()
                .is_some_and(|d| !d.starts_with('/') || d.contains('\0'))
            {
                return Err(AppError::invalid(
                    "working_dir",
                    "working_dir must be an absolute path",
                ));
            }
            Work::Script {
                interpreter: interpreter.to_string(),
                script: script.to_string(),
                env,
                working_dir,
            }
        }
        "playbook" => {
            let playbook = input.playbook.as_deref().unwrap_or("");
            if playbook.trim().is_empty() {
                return Err(AppError::invalid(
                    "playbook",
                    "playbook is required (YAML text)",
                ));
            }
            if playbook.len() > MAX_SCRIPT_LEN {
                return Err(AppError::invalid(
                    "playbook",
                    "the playbook is larger than 1 MiB",
                ));
            }
            let mut vars = BTreeMap::new();
            for (k, v) in input.vars.clone().unwrap_or_default() {
                if !env_name_ok(&k) {
                    return Err(AppError::invalid(
                        "vars",
                        format!("{k:?} is not a valid variable name"),
                    ));
                }
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                vars.insert(k, text);
            }
            Work::Playbook {
                playbook: playbook.to_string(),
                vars,
                check: input.check.unwrap_or(false),
                ansible_fallback: input.ansible_fallback.unwrap_or(false),
            }
        }
        _ if input.work.is_some() => input
            .work
            .clone()
            .ok_or_else(|| AppError::invalid("kind", "no work"))?,
        "compose_backup" => crate::backups::work_from_api(w, &agent, input)?,
        other => {
            return Err(AppError::invalid(
                "kind",
                format!("unknown kind {other:?}; use script, playbook or compose_backup"),
            ))
        }
    };
    if let Some(t) = input.timeout_s {
        if t == 0 || t > 7 * 24 * 3600 {
            return Err(AppError::invalid(
                "timeout_s",
                "timeout_s must be between 1 and 604800",
            ));
        }
    }
    let expires_s = input.expires_s.unwrap_or(DEFAULT_EXPIRY_S);
    if expires_s == 0 || expires_s > 30 * 24 * 3600 {
        return Err(AppError::invalid(
            "expires_s",
            "expires_s must be between 1 and 2592000",
        ));
    }
    let now = Utc::now();
    let execution = Execution {
        id: uuid::Uuid::now_v7().to_string(),
        agent_id: agent.id.clone(),
        project_id: agent.project_id.clone(),
        server_id: agent.server_id.clone(),
        work,
        timeout_s: input.timeout_s,
        status: Status::Queued,
        exit_code: None,
        summary: None,
        created_by: actor.username.clone(),
        created_at: now,
        expires_at: now + Duration::seconds(expires_s as i64),
        started_at: None,
        finished_at: None,
        cancel_requested: false,
    };
    w.put(&execution)?;
    crate::scripts::keep_execution_secrets(w, &execution.id, &input.secrets)?;
    w.index_put(ACTIVE, &index_key(&execution), &execution.id)?;
    w.index_put(BY_AGENT, &index_key(&execution), &execution.id)?;
    audit::record(
        w,
        actor,
        "execution.create",
        &format!("agent:{}", agent.name),
        format!("{} {}", execution.work.kind(), execution.id),
    )?;
    crate::backups::on_created(w, &execution)?;
    Ok(execution)
}

fn index_key(e: &Execution) -> String {
    format!("{}/{}", e.agent_id, e.id)
}

/// The queued and running executions of an agent, oldest first.
pub fn active_of_agent(r: &impl Read, agent_id: &str) -> anyhow::Result<Vec<Execution>> {
    let mut out = Vec::new();
    for (_, id) in r.index_scan(ACTIVE, &format!("{agent_id}/"))? {
        if let Some(e) = r.get::<Execution>(&id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Every queued and running execution.
pub fn all_active(r: &impl Read) -> anyhow::Result<Vec<Execution>> {
    let mut out = Vec::new();
    for (_, id) in r.index_scan(ACTIVE, "")? {
        if let Some(e) = r.get::<Execution>(&id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// The newest executions of an agent, newest first.
pub fn recent_of_agent(
    r: &impl Read,
    agent_id: &str,
    limit: usize,
) -> anyhow::Result<Vec<Execution>> {
    let ids = r.index_scan(BY_AGENT, &format!("{agent_id}/"))?;
    let mut out = Vec::new();
    for (_, id) in ids.iter().rev().take(limit) {
        if let Some(e) = r.get::<Execution>(id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Marks an execution running (the agent started it); no-op when it already ended.
pub fn mark_running(w: &mut Writer, id: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
    if let Some(mut e) = w.get::<Execution>(id)? {
        if e.status == Status::Queued {
            e.status = Status::Running;
            e.started_at.get_or_insert(now);
            w.put(&e)?;
        }
    }
    Ok(())
}

/// Records an execution's end; false when it had already ended.
pub fn finish(
    w: &mut Writer,
    id: &str,
    status: Status,
    exit_code: Option<i32>,
    summary: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let Some(mut e) = w.get::<Execution>(id)? else {
        return Ok(false);
    };
    if e.status.is_final() {
        return Ok(false);
    }
    e.status = status;
    e.exit_code = exit_code;
    e.summary = Some(summary.to_string());
    e.finished_at = Some(now);
    w.put(&e)?;
    crate::backups::on_finished(w, &e)?;
    crate::scripts::forget_execution_secrets(w, &e.id)?;
    w.index_delete(ACTIVE, &index_key(&e))?;
    Ok(true)
}

/// Records the end an agent reported.
pub fn finish_from_agent(
    w: &mut Writer,
    id: &str,
    end: &JobEnd,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    finish(w, id, end.status.into(), end.exit_code, &end.summary, now)
}

/// What a cancel request needs to happen next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was still queued and is now cancelled; nothing runs.
    CancelledQueued,
    /// The job runs; the agent must be told.
    TellAgent,
}

/// Asks for an execution to stop. A queued one is cancelled at once (though a copy
/// already on its way to the agent is still told to stop).
pub fn request_cancel(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    id: &str,
) -> AppResult<(Execution, CancelOutcome)> {
    let mut e = get_visible(w, subject, id)?;
    if !policy::can(subject, Action::OperateServers, Some(&e.project_id)) {
        return Err(AppError::forbidden());
    }
    if e.status.is_final() {
        return Err(AppError::conflict(format!(
            "the execution already ended ({})",
            e.status.as_str()
        )));
    }
    e.cancel_requested = true;
    w.put(&e)?;
    audit::record(w, actor, "execution.cancel", &format!("execution:{id}"), "")?;
    if e.status == Status::Queued {
        finish(
            w,
            id,
            Status::Cancelled,
            None,
            "cancelled before it started",
            Utc::now(),
        )?;
        let e = w.get::<Execution>(id)?.unwrap_or(e);
        return Ok((e, CancelOutcome::CancelledQueued));
    }
    Ok((e, CancelOutcome::TellAgent))
}

/// One execution the subject may see.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Execution> {
    let e: Execution = r.get(id)?.ok_or_else(|| AppError::not_found("execution"))?;
    if !policy::can(subject, Action::ViewServers, Some(&e.project_id)) {
        return Err(AppError::not_found("execution"));
    }
    Ok(e)
}

/// The stored form of a log chunk: one byte naming the stream, then the text.
pub fn encode_chunk(stream: OutputStream, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(match stream {
        OutputStream::Stdout => b'o',
        OutputStream::Stderr => b'e',
        OutputStream::System => b's',
    });
    out.extend_from_slice(data.as_bytes());
    out
}

/// One log line of the API: `{"seq", "stream", "data"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogChunk {
    pub seq: u64,
    pub stream: String,
    pub data: String,
}

/// Decodes a stored chunk.
pub fn decode_chunk(seq: u64, bytes: &[u8]) -> LogChunk {
    let (stream, data) = match bytes.split_first() {
        Some((b'o', rest)) => ("stdout", rest),
        Some((b'e', rest)) => ("stderr", rest),
        Some((b's', rest)) => ("system", rest),
        Some((_, rest)) => ("stdout", rest),
        None => ("stdout", &[][..]),
    };
    LogChunk {
        seq,
        stream: stream.to_string(),
        data: String::from_utf8_lossy(data).into_owned(),
    }
}

/// Stored chunks from `from_seq` on, at most `limit`.
pub fn log(r: &impl Read, id: &str, from_seq: u64, limit: usize) -> anyhow::Result<Vec<LogChunk>> {
    Ok(r.log_range(id, from_seq, limit)?
        .into_iter()
        .map(|(seq, bytes)| decode_chunk(seq, &bytes))
        .collect())
}

/// The API view of an execution.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionView {
    pub id: String,
    pub agent: String,
    pub agent_name: Option<String>,
    pub server_id: Option<String>,
    pub project_id: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub summary: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_s: Option<f64>,
    pub cancel_requested: bool,
    pub timeout_s: Option<u64>,
}

impl ExecutionView {
    pub fn new(e: &Execution, agent_name: Option<String>) -> ExecutionView {
        let duration_s = match (e.started_at, e.finished_at) {
            (Some(s), Some(f)) => Some((f - s).num_milliseconds() as f64 / 1000.0),
            _ => None,
        };
        ExecutionView {
            id: e.id.clone(),
            agent: e.agent_id.clone(),
            agent_name,
            server_id: e.server_id.clone(),
            project_id: e.project_id.clone(),
            kind: e.work.kind(),
            status: e.status.as_str(),
            exit_code: e.exit_code,
            summary: e.summary.clone(),
            created_by: e.created_by.clone(),
            created_at: e.created_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            duration_s,
            cancel_requested: e.cancel_requested,
            timeout_s: e.timeout_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored chunks decode back to their stream and text.
    #[test]
    fn chunk_encoding_round_trips() {
        for (stream, name) in [
            (OutputStream::Stdout, "stdout"),
            (OutputStream::Stderr, "stderr"),
            (OutputStream::System, "system"),
        ] {
            let bytes = encode_chunk(stream, "héllo\n");
            assert_eq!(
                decode_chunk(3, &bytes),
                LogChunk {
                    seq: 3,
                    stream: name.into(),
                    data: "héllo\n".into()
                }
            );
        }
        assert_eq!(decode_chunk(0, b"").data, "");
    }

    /// Variable names follow the shell's rules.
    #[test]
    fn env_names() {
        assert!(env_name_ok("DEPLOY_ENV"));
        assert!(env_name_ok("_x1"));
        assert!(!env_name_ok("1X"));
        assert!(!env_name_ok("A-B"));
        assert!(!env_name_ok(""));
    }
}
