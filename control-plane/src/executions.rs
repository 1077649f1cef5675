//! Executions: one record per job run on an agent (who started it, what it runs, its
//! status and exit), and its output log, stored chunk by chunk under
//! `(execution_id, seq)` by the fleet's ingestion.
//!
//! Status moves `queued → running → succeeded | failed | cancelled | timed_out`, or
//! from `queued` straight to an end (cancelled before delivery, expired, rejected).
//! Only this module changes an execution's status.
//!
//! Indexes (keys end with the execution id, a UUIDv7, so each index is in time order
//! and a list is one backwards walk from a cursor): `exec_active`
//! (`agent_id/id` for queued and running ones: what a connecting agent is sent),
//! `exec_all` (`id`; its value is the execution's search text, lower case, so a text
//! search reads the index alone and decodes only the executions that match),
//! `exec_by_agent`, `exec_by_server`, `exec_by_project`,
//! `exec_by_status`, `exec_by_kind`, `exec_by_script`, `exec_by_rollout`,
//! `exec_by_user` (`value/id`), and `exec_expiry` (`expires_at/id` of queued ones,
//! so the expiry sweep reads only what expired). A text search (`q`) that only few
//! names match reads `exec_by_term` (`term key/id`, one per distinct lower-case name
//! and agent name), finding the terms through `exec_term_sfx` (each suffix of each
//! term, kept in `exec_terms`); a text most executions match scans `exec_all`. Counts per status are kept
//! (`executions/STATUS`). [`query`] reads one page of a filtered list; [`prune`]
//! deletes ended executions past retention with their logs, in small batches.
//!
//! What does not live here: what a kind of work adds to its executions (a stored
//! script's secret variables, a backup's or an update's record). Each such kind
//! implements [`KindHooks`], which [`create`], [`finish`] and [`prune`] call inside
//! their own transaction; `app::install_execution_hooks` installs them once per
//! process, and until it has, creating or ending an execution is an error rather
//! than a record silently left behind. This module names none of those kinds'
//! modules.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::{self, Agent};
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};
use dynserv_shared::proto::{JobKind, JobSpec, JobStatus, OutputStream};

const ACTIVE: &str = "exec_active";
const ALL: &str = "exec_all";
const BY_AGENT: &str = "exec_by_agent";
const BY_SERVER: &str = "exec_by_server";
const BY_PROJECT: &str = "exec_by_project";
const BY_STATUS: &str = "exec_by_status";
const BY_KIND: &str = "exec_by_kind";
const BY_SCRIPT: &str = "exec_by_script";
const BY_ROLLOUT: &str = "exec_by_rollout";
const BY_USER: &str = "exec_by_user";
const EXPIRY: &str = "exec_expiry";
/// `term key/id`: the executions whose name or agent name is one search term.
const BY_TERM: &str = "exec_by_term";
/// `term key` → the term: every distinct search term of a stored execution.
const TERMS: &str = "exec_terms";
/// `suffix\u{1}term key`: each suffix of each term, so the terms containing a text
/// are the entries starting with it.
const TERM_SUFFIXES: &str = "exec_term_sfx";

/// Characters of a term's suffix kept in [`TERM_SUFFIXES`]; a longer search text is
/// looked for by scanning (it is rare, and then usually dense).
const SUFFIX_CHARS: usize = 64;
/// Characters of a term whose suffixes are indexed.
const TERM_CHARS: usize = 200;
/// A search text contained in more distinct terms than this is common enough that
/// scanning every execution's search text finds a page sooner than merging the terms.
const MAX_TERM_SOURCES: usize = 32;

/// Index entries a filtered list examines at most per page; past it the page comes
/// back short with a cursor to go on from, so a rare filter never makes one request
/// read the whole table.
pub const SCAN_BUDGET: usize = 20_000;

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

    /// Every status, in workflow order.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    /// The status a filter names, `None` for an unknown name.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
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
        /// Diff mode with the per-task report (`JobKind::Playbook::diff`): drift
        /// checks (with `check`) and their Apply. Absent in older records.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        diff: bool,
        /// Tasks the native runtime lacks run through ansible-core on the server.
        #[serde(default)]
        ansible_fallback: bool,
        /// The play's `inventory_hostname`: the server's name when the execution was
        /// created (older records: none, the agent says `localhost`).
        #[serde(default)]
        inventory_hostname: Option<String>,
        /// The stored tree of files that came with the playbook (`script_files`), as
        /// the script had them when this run was created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tree: Option<String>,
        /// The project's inventory when the execution was created: a snapshot shared
        /// by every execution of a run (`inventory::snapshot`), added to the job when
        /// it is sent. None for older records and agents without a server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory_id: Option<String>,
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
        /// Verify the off-site copy (downloaded and decrypted) rather than the dump
        /// kept on the server.
        #[serde(default)]
        offsite: bool,
    },
    ComposeRestore {
        backup_id: String,
        compose_project: String,
        service: String,
        command: String,
        dump_path: Option<String>,
        /// Restore from the off-site copy (fetched first), which also works on
        /// another server of the project.
        #[serde(default)]
        offsite: bool,
    },
    /// Uploads a kept backup's encrypted copy off site again (a retry).
    ComposeOffsiteUpload {
        backup_id: String,
        compose_project: String,
        service: String,
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
            Work::ComposeOffsiteUpload { .. } => "compose_offsite_upload",
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
    /// The stored script this runs, when it runs one.
    #[serde(default)]
    pub script_id: Option<String>,
    /// The rollout this execution is part of.
    #[serde(default)]
    pub rollout_id: Option<String>,
    /// The script's or playbook's name, or a short description of the work.
    #[serde(default)]
    pub name: String,
    /// The agent's name when the execution was created (for text search).
    #[serde(default)]
    pub agent_name: String,
    /// The output passed the per-execution limit: the rest was neither stored nor
    /// shown.
    #[serde(default)]
    pub output_truncated: bool,
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
            max_output_bytes: None,
            job_id: self.id.clone(),
            kind,
            timeout_s: self.timeout_s,
            secrets: Vec::new(),
            resume_only: false,
        }
    }

    /// Seconds from start to end, once it ended.
    pub fn duration_s(&self) -> Option<f64> {
        match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) => Some((f - s).num_milliseconds() as f64 / 1000.0),
            _ => None,
        }
    }

    /// Whether it is a drift check (a playbook in check and diff mode, see `drift`).
    pub fn is_drift_check(&self) -> bool {
        matches!(
            self.work,
            Work::Playbook {
                check: true,
                diff: true,
                ..
            }
        )
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
            diff,
            ansible_fallback,
            inventory_hostname,
            // The files and the inventory are added where jobs are read with their
            // secrets (`scripts::job_specs_with_secrets`), one copy per tree or snapshot.
            ..
        } => JobKind::Playbook {
            yaml: playbook,
            vars,
            check,
            diff,
            ansible_fallback,
            inventory_hostname,
            files: Default::default(),
            // The snapshot named by `inventory_id` joins the job when it is sent
            // (`inventory::attach_to_specs`).
            inventory: None,
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
            // Off-site targets hold secrets: `backups::add_offsite_target` adds them
            // when the job is sent, never to what is stored.
            offsite: None,
        },
        Work::ComposeVerify {
            backup_id,
            compose_project,
            service,
            ..
        } => JobKind::ComposeVerify {
            backup_id,
            compose_project,
            service,
            offsite: None,
        },
        Work::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            ..
        } => JobKind::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            offsite: None,
        },
        Work::ComposeOffsiteUpload {
            backup_id,
            compose_project,
            service,
        } => JobKind::ComposeOffsiteUpload {
            backup_id,
            compose_project,
            service,
            offsite: None,
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
    /// Diff mode with the per-task report (set by `drift` for its checks and
    /// Apply); never read from JSON.
    #[serde(skip)]
    pub diff: bool,
    /// The stored script run (set by `scripts`); never read from JSON.
    #[serde(skip)]
    pub script_id: Option<String>,
    /// The script's name (set by `scripts`); never read from JSON.
    #[serde(skip)]
    pub script_name: Option<String>,
    /// The rollout this belongs to (set by `rollouts`); never read from JSON.
    #[serde(skip)]
    pub rollout_id: Option<String>,
    /// The stored tree of a script's files (`script_files`): set from the script,
    /// never from the request.
    #[serde(skip)]
    pub tree: Option<String>,
    /// The inventory snapshot already made for a run (project id, snapshot id), so
    /// a fan-out or a rollout builds its project's inventory once; never read from
    /// JSON.
    #[serde(skip)]
    pub inventory: Option<(String, String)>,
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
    // A full disk must not fill further with new jobs' output.
    w.require_free_space()?;
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
    let hooks = installed_hooks()?;
    // A kind's hooks may replace the input: `"playbook": "<script id>"` runs a stored
    // script with its declared variables.
    let mut resolved = None;
    for hook in hooks_of(hooks, input.kind.as_deref().unwrap_or("script")) {
        if let Some(replaced) = hook.resolve(w, subject, &agent, input)? {
            resolved = Some(replaced);
            break;
        }
    }
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
                diff: input.diff,
                ansible_fallback: input.ansible_fallback.unwrap_or(false),
                inventory_hostname: Some(host_name(w, &agent)?),
                tree: input.tree.clone(),
                inventory_id: inventory_for(w, &agent, input)?,
            }
        }
        _ if input.work.is_some() => input
            .work
            .clone()
            .ok_or_else(|| AppError::invalid("kind", "no work"))?,
        other => {
            let mut work = None;
            for hook in hooks_of(hooks, other) {
                work = hook.work_from_api(w, &agent, input)?;
                if work.is_some() {
                    break;
                }
            }
            work.ok_or_else(|| {
                AppError::invalid(
                    "kind",
                    format!("unknown kind {other:?}; use script, playbook or compose_backup"),
                )
            })?
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
        name: input.script_name.clone().unwrap_or_else(|| describe(&work)),
        script_id: input.script_id.clone(),
        rollout_id: input.rollout_id.clone(),
        agent_name: agent.name.clone(),
        output_truncated: false,
        work,
    };
    w.read_ahead(&indexing_ahead(&execution))?;
    // Its id was just made: its record and index entries are new keys.
    w.insert(&execution)?;
    w.index_insert(ACTIVE, &index_key(&execution), &execution.id)?;
    index_new(w, &execution, IndexKeys::New)?;
    w.announce(crate::live::Event::executions_created(
        &execution.project_id,
    ));
    audit::record(
        w,
        actor,
        "execution.create",
        &format!("agent:{}", agent.name),
        format!("{} {}", execution.work.kind(), execution.id),
    )?;
    for hook in hooks_of(hooks, execution.work.kind()) {
        hook.created(w, &execution, input)?;
    }
    Ok(execution)
}

/// The inventory snapshot a playbook run on `agent` gets: the one the run made for
/// the agent's project, else a new one; none for an agent without a server (its play
/// sees only its own host, as before inventories).
fn inventory_for(w: &mut Writer, agent: &Agent, input: &NewExecution) -> AppResult<Option<String>> {
    if agent.server_id.is_none() {
        return Ok(None);
    }
    if let Some((project, id)) = &input.inventory {
        if project == &agent.project_id {
            return Ok(Some(id.clone()));
        }
    }
    let Some(project) = w.get::<crate::projects::Project>(&agent.project_id)? else {
        return Ok(None);
    };
    Ok(Some(crate::inventory::snapshot(w, &project)?.0))
}

/// The name a playbook run on `agent` calls its host (`inventory_hostname`, and the
/// `[host]` of its output lines): the name of the agent's server, else the agent's.
fn host_name(r: &impl Read, agent: &Agent) -> anyhow::Result<String> {
    let server = match &agent.server_id {
        Some(id) => r.get::<crate::servers::Server>(id)?,
        None => None,
    };
    Ok(server.map_or_else(|| agent.name.clone(), |s| s.name))
}

/// What one kind of work adds to the life of its executions, called inside the
/// transaction that creates, ends or prunes one, so what it writes commits or fails
/// with the execution (a backup's record is created with its execution and filled
/// when it ends, never one without the other). Each method has a default that does
/// nothing; a kind implements what it needs.
pub trait KindHooks: Sync {
    /// The kinds ([`Work::kind`], as the API names them) these hooks are called for.
    fn kinds(&self) -> &'static [&'static str];

    /// Before the input is checked: the input to use instead (a stored script named
    /// in `playbook`), or `None` to keep it. Called with the API's `kind`.
    fn resolve(
        &self,
        _r: &Writer,
        _subject: &Subject,
        _agent: &Agent,
        _input: &NewExecution,
    ) -> AppResult<Option<NewExecution>> {
        Ok(None)
    }

    /// The work of an API kind this module does not build itself (`compose_backup`),
    /// or `None` when these hooks do not build that kind from the API.
    fn work_from_api(
        &self,
        _r: &Writer,
        _agent: &Agent,
        _input: &NewExecution,
    ) -> AppResult<Option<Work>> {
        Ok(None)
    }

    /// The execution was stored (queued) from `input`. An error undoes the creation.
    fn created(
        &self,
        _w: &mut Writer,
        _execution: &Execution,
        _input: &NewExecution,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// The execution ended (its status, summary and end time are stored). An error
    /// undoes the whole transaction, which for the fleet's ingestion is a batch of
    /// many agents' output: a hook that reads what an agent reported logs its own
    /// problems instead of returning them.
    fn finished(&self, _w: &mut Writer, _execution: &Execution) -> anyhow::Result<()> {
        Ok(())
    }

    /// The ended execution was deleted by retention, with its log.
    fn pruned(&self, _w: &mut Writer, _execution: &Execution) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The hooks of every kind of work. Code, not state: the same table in every control
/// plane of a process, set once and never changed.
static HOOKS: OnceLock<&'static [&'static dyn KindHooks]> = OnceLock::new();

/// Installs the hooks of every kind of work (done by `app::install_execution_hooks`,
/// which `App::new`, the CLI and the tests call). The first table installed stays;
/// installing the same table again does nothing.
pub fn install_hooks(hooks: &'static [&'static dyn KindHooks]) {
    let _ = HOOKS.set(hooks);
}

/// The installed hooks; an error when none were, so an execution is never created or
/// ended without its kind's records.
fn installed_hooks() -> anyhow::Result<&'static [&'static dyn KindHooks]> {
    HOOKS.get().copied().ok_or_else(|| {
        anyhow::anyhow!(
            "the execution hooks are not installed (call app::install_execution_hooks first)"
        )
    })
}

/// The hooks serving `kind`.
fn hooks_of<'h>(
    hooks: &'h [&'static dyn KindHooks],
    kind: &'h str,
) -> impl Iterator<Item = &'static dyn KindHooks> + 'h {
    hooks
        .iter()
        .copied()
        .filter(move |hook| hook.kinds().contains(&kind))
}

/// What a text search (`q`) looks in: the name and the agent's name, lower case, as
/// the value of the execution's `exec_all` entry.
fn search_text(e: &Execution) -> String {
    format!(
        "{}\u{1}{}",
        e.name.to_lowercase(),
        e.agent_name.to_lowercase()
    )
}

/// The distinct search terms of an execution (its name and agent name, lower case)
/// with their keys.
fn search_terms(e: &Execution) -> Vec<(String, String)> {
    let mut terms = vec![e.name.to_lowercase()];
    let agent = e.agent_name.to_lowercase();
    if agent != terms[0] {
        terms.push(agent);
    }
    terms
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| (term_key(&t), t))
        .collect()
}

/// A term's fixed-length key: the start of its SHA-256, so any text (slashes, any
/// length) makes a well-formed index key.
fn term_key(term: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(term.as_bytes())[..8])
}

/// The suffix-index keys of a term: each suffix (at most [`SUFFIX_CHARS`]
/// characters of it) starting in its first [`TERM_CHARS`] characters.
fn suffix_keys(term: &str, key: &str) -> Vec<String> {
    let starts: Vec<usize> = term
        .char_indices()
        .map(|(i, _)| i)
        .take(TERM_CHARS)
        .collect();
    let mut out: Vec<String> = starts
        .into_iter()
        .map(|i| {
            let suffix: String = term[i..].chars().take(SUFFIX_CHARS).collect();
            format!("{suffix}\u{1}{key}")
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Adds an execution to its terms' lists, and a term seen for the first time to the
/// dictionary with its suffixes.
fn index_terms(w: &mut Writer, e: &Execution, keys: IndexKeys) -> anyhow::Result<()> {
    for (key, term) in search_terms(e) {
        keys.put(w, BY_TERM, &format!("{key}/{}", e.id), &e.id)?;
        add_term(w, &key, &term)?;
    }
    Ok(())
}

/// Puts a term in the dictionary with its suffixes, unless it is there.
fn add_term(w: &mut Writer, key: &str, term: &str) -> anyhow::Result<()> {
    if w.index_get(TERMS, key)?.is_none() {
        w.index_put(TERMS, key, term)?;
        for suffix in suffix_keys(term, key) {
            w.index_put(TERM_SUFFIXES, &suffix, key)?;
        }
    }
    Ok(())
}

/// Puts a name executions will carry (an agent's, when it enrolls) in the term
/// dictionary before its first execution: a fan-out to thousands of new agents then
/// writes no terms and suffixes of their names in its own transaction (on a fresh
/// fleet of 10,000 that was 100,000 of its 250,000 index rows). Retention forgets the
/// term again with the last execution that has it.
pub fn know_term(w: &mut Writer, name: &str) -> anyhow::Result<()> {
    let term = name.to_lowercase();
    if term.is_empty() {
        return Ok(());
    }
    add_term(w, &term_key(&term), &term)
}

/// Removes an execution from its terms' lists, and a term no execution has any more
/// from the dictionary.
fn unindex_terms(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    for (key, term) in search_terms(e) {
        w.index_delete(BY_TERM, &format!("{key}/{}", e.id))?;
        let rest = w.index_page(&crate::store::IndexScan::prefix(
            BY_TERM,
            &format!("{key}/"),
            1,
        ))?;
        if rest.is_empty() && w.index_get(TERMS, &key)?.is_some() {
            w.index_delete(TERMS, &key)?;
            for suffix in suffix_keys(&term, &key) {
                w.index_delete(TERM_SUFFIXES, &suffix)?;
            }
        }
    }
    Ok(())
}

/// Reads, in one query where the backend can, whether the agent names of
/// executions about to be created are known terms (a fan-out creates thousands at
/// once; the name they share is read once and then known to the transaction).
pub fn prefetch_terms(w: &Writer, agent_names: &[String]) -> anyhow::Result<()> {
    let mut keys: Vec<String> = agent_names
        .iter()
        .map(|n| term_key(&n.to_lowercase()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    w.prefetch_index(TERMS, &keys)
}

/// The keys of the terms that contain `needle` (lower case), when they are few
/// enough to walk their lists; `None` when the text is too long or too common.
fn terms_containing(r: &impl Read, needle: &str) -> anyhow::Result<Option<Vec<String>>> {
    if needle.is_empty() || needle.chars().count() > SUFFIX_CHARS {
        return Ok(None);
    }
    // Suffixes of one term repeat a key (a needle found twice in it): read a few
    // times the terms wanted.
    let read = MAX_TERM_SOURCES * 8;
    let page = r.index_page(&crate::store::IndexScan::prefix(
        TERM_SUFFIXES,
        needle,
        read,
    ))?;
    let mut keys: Vec<String> = page.into_iter().map(|(_, key)| key).collect();
    let complete = keys.len() < read;
    keys.sort_unstable();
    keys.dedup();
    Ok((complete && keys.len() <= MAX_TERM_SOURCES).then_some(keys))
}

fn index_key(e: &Execution) -> String {
    format!("{}/{}", e.agent_id, e.id)
}

fn expiry_key(e: &Execution) -> String {
    format!("{}/{}", e.expires_at.format("%Y-%m-%dT%H:%M:%S%.6fZ"), e.id)
}

/// The list indexes of an execution: `(index, key)`, all ending with its id.
fn list_index_keys(e: &Execution) -> Vec<(&'static str, String)> {
    let mut keys = vec![
        (ALL, e.id.clone()),
        (BY_AGENT, index_key(e)),
        (BY_PROJECT, format!("{}/{}", e.project_id, e.id)),
        (BY_STATUS, format!("{}/{}", e.status.as_str(), e.id)),
        (BY_KIND, format!("{}/{}", e.work.kind(), e.id)),
        (BY_USER, format!("{}/{}", e.created_by, e.id)),
    ];
    if let Some(server) = &e.server_id {
        keys.push((BY_SERVER, format!("{server}/{}", e.id)));
    }
    if let Some(script) = &e.script_id {
        keys.push((BY_SCRIPT, format!("{script}/{}", e.id)));
    }
    if let Some(rollout) = &e.rollout_id {
        keys.push((BY_ROLLOUT, format!("{rollout}/{}", e.id)));
    }
    keys
}

fn status_counter(status: Status) -> String {
    format!("executions/{}", status.as_str())
}

/// Whether the index keys of an execution are known to be new (it was just created),
/// or may be there already (a schema step or a seed writing them again).
#[derive(Clone, Copy)]
enum IndexKeys {
    New,
    MaybeThere,
}

impl IndexKeys {
    fn put(self, w: &mut Writer, index: &str, key: &str, id: &str) -> anyhow::Result<()> {
        match self {
            IndexKeys::New => w.index_insert(index, key, id),
            IndexKeys::MaybeThere => w.index_put(index, key, id),
        }
    }
}

/// Writes the list indexes and counts of a new execution.
fn index_new(w: &mut Writer, e: &Execution, keys: IndexKeys) -> anyhow::Result<()> {
    for (index, key) in list_index_keys(e) {
        if index == ALL {
            keys.put(w, index, &key, &search_text(e))?;
        } else {
            keys.put(w, index, &key, &e.id)?;
        }
    }
    index_terms(w, e, keys)?;
    if e.status == Status::Queued {
        keys.put(w, EXPIRY, &expiry_key(e), &e.id)?;
    }
    w.counter_add("executions", 1)?;
    w.counter_add(&status_counter(e.status), 1)?;
    Ok(())
}

/// Adds to `ahead` the counts creating executions changes, for a transaction that
/// reads its targets first: they come with them.
pub fn creation_ahead(ahead: crate::store::Ahead) -> crate::store::Ahead {
    ahead
        .counter("executions")
        .counter(status_counter(Status::Queued))
}

/// What indexing a new execution reads, asked together: whether its search terms are
/// in the dictionary, and the counts it moves. Nothing in a fan-out's transaction past
/// its first execution (it read its agents' names' terms, `prefetch_terms`, and the
/// counts, `creation_ahead`, with its agents).
fn indexing_ahead(e: &Execution) -> crate::store::Ahead {
    search_terms(e).into_iter().fold(
        creation_ahead(crate::store::Ahead::default()),
        |ahead, (key, _)| ahead.entry(TERMS, key),
    )
}

/// Moves an execution's status indexes and counts from `from` to its status now.
fn reindex_status(w: &mut Writer, e: &Execution, from: Status) -> anyhow::Result<()> {
    if from == e.status {
        return Ok(());
    }
    w.index_delete(BY_STATUS, &format!("{}/{}", from.as_str(), e.id))?;
    w.index_put(BY_STATUS, &format!("{}/{}", e.status.as_str(), e.id), &e.id)?;
    if from == Status::Queued {
        w.index_delete(EXPIRY, &expiry_key(e))?;
    }
    w.counter_add(&status_counter(from), -1)?;
    w.counter_add(&status_counter(e.status), 1)?;
    Ok(())
}

/// Removes every index entry and count of an execution (retention).
fn unindex(w: &mut Writer, e: &Execution) -> anyhow::Result<()> {
    for (index, key) in list_index_keys(e) {
        w.index_delete(index, &key)?;
    }
    unindex_terms(w, e)?;
    w.index_delete(ACTIVE, &index_key(e))?;
    w.index_delete(EXPIRY, &expiry_key(e))?;
    w.counter_add("executions", -1)?;
    w.counter_add(&status_counter(e.status), -1)?;
    Ok(())
}

/// A short description of work that is not a named script.
fn describe(work: &Work) -> String {
    fn first_line(text: &str) -> String {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("#!") && *l != "---")
            .unwrap_or("");
        let mut out: String = line.chars().take(80).collect();
        if line.chars().count() > 80 {
            out.push('…');
        }
        out
    }
    match work {
        Work::Script { script, .. } => first_line(script),
        Work::Playbook { playbook, .. } => {
            let named = playbook.lines().find_map(|l| {
                let l = l.trim_start().trim_start_matches("- ").trim_start();
                l.strip_prefix("name:")
                    .map(|n| n.trim().trim_matches(['"', '\'']).to_string())
            });
            named
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "playbook".into())
        }
        Work::ComposeBackup {
            compose_project,
            service,
            ..
        } => {
            format!("backup of {compose_project}/{service}")
        }
        Work::ComposeVerify {
            compose_project,
            service,
            ..
        } => {
            format!("verify of a {compose_project}/{service} backup")
        }
        Work::ComposeRestore {
            compose_project,
            service,
            ..
        } => {
            format!("restore of {compose_project}/{service}")
        }
        Work::ComposeOffsiteUpload {
            compose_project,
            service,
            ..
        } => {
            format!("off-site upload of a {compose_project}/{service} backup")
        }
        Work::SystemUpdate { check: true, .. } => "update check".into(),
        Work::SystemUpdate { check: false, .. } => "system update".into(),
    }
}

/// Stores an execution that has already ended, with its output, as the product
/// would have left it after `create`, `mark_running`, the ingestion of each chunk
/// (`admit_output`, then the chunk) and `finish`: the record, every list index and
/// kept count, the log chunks and their byte count. Nothing else calls it: it lets
/// the data-layer benchmark (`benches/data.rs`) and load tests write a year of
/// history with the ids and times it carries, in large transactions, in minutes.
/// The execution must have ended (the active and expiry indexes are not written).
pub fn seed_for_bench(
    w: &mut Writer,
    e: &Execution,
    output: &[(OutputStream, &str)],
) -> anyhow::Result<()> {
    if !e.status.is_final() {
        anyhow::bail!(
            "seed_for_bench stores ended executions only, not {}",
            e.status.as_str()
        );
    }
    w.put(e)?;
    index_new(w, e, IndexKeys::MaybeThere)?;
    let mut bytes = 0u64;
    for (seq, (stream, data)) in (0u64..).zip(output) {
        w.log_append(&e.id, seq, &encode_chunk(*stream, data))?;
        bytes += data.len() as u64;
    }
    if bytes > 0 {
        w.counter_add(
            &log_bytes_counter(&e.id),
            i64::try_from(bytes).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}

/// Kept counts of executions: all of them, and per status.
pub fn counts(r: &impl Read) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    out.insert("all", r.counter("executions")?);
    for status in Status::ALL {
        out.insert(status.as_str(), r.counter(&status_counter(status))?);
    }
    Ok(out)
}

/// Schema step: the search text as the value of each `exec_all` entry (it held the
/// id), so a text search reads the index alone.
pub fn backfill_search_text(w: &mut Writer) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let scan = crate::store::IndexScan::prefix(ALL, "", 1000).after(after.clone());
        let page = w.index_page(&scan)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, _) in &page {
            if let Some(e) = w.get::<Execution>(id)? {
                w.index_put(ALL, id, &search_text(&e))?;
            }
        }
        if page.len() < 1000 {
            break;
        }
    }
    Ok(())
}

/// Schema step: the term lists and dictionary a text search reads, for executions
/// stored before they were kept.
pub fn backfill_terms(w: &mut Writer) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let scan = crate::store::IndexScan::prefix(ALL, "", 1000).after(after.clone());
        let page = w.index_page(&scan)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
        for e in w.get_many::<Execution>(&ids)?.into_iter().flatten() {
            index_terms(w, &e, IndexKeys::MaybeThere)?;
        }
        if page.len() < 1000 {
            break;
        }
    }
    Ok(())
}

/// Schema step: indexes and counts for executions stored before lists read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Execution> = w.list()?;
    for mut e in all {
        if e.name.is_empty() {
            e.name = describe(&e.work);
            if let Some(agent) = w.get::<Agent>(&e.agent_id)? {
                e.agent_name = agent.name;
            }
            w.put(&e)?;
        }
        index_new(w, &e, IndexKeys::MaybeThere)?;
    }
    Ok(())
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

/// What a list of executions is narrowed to; every field is optional and they
/// combine. Ids are resolved (and their visibility checked) by the caller.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub agent_id: Option<String>,
    pub server_id: Option<String>,
    pub project_id: Option<String>,
    pub kind: Option<&'static str>,
    pub script_id: Option<String>,
    pub rollout_id: Option<String>,
    pub started_by: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Text in the name or the target (agent name), case-insensitive.
    pub text: Option<String>,
}

/// The kinds an execution can have, as filters name them.
pub const KINDS: [&str; 7] = [
    "script",
    "playbook",
    "compose_backup",
    "compose_verify",
    "compose_restore",
    "compose_offsite_upload",
    "system_update",
];

impl Filter {
    fn matches(&self, e: &Execution) -> bool {
        self.status.is_none_or(|s| e.status == s)
            && self.agent_id.as_ref().is_none_or(|a| &e.agent_id == a)
            && self
                .server_id
                .as_ref()
                .is_none_or(|s| e.server_id.as_ref() == Some(s))
            && self.project_id.as_ref().is_none_or(|p| &e.project_id == p)
            && self.kind.is_none_or(|k| e.work.kind() == k)
            && self
                .script_id
                .as_ref()
                .is_none_or(|s| e.script_id.as_ref() == Some(s))
            && self
                .rollout_id
                .as_ref()
                .is_none_or(|r| e.rollout_id.as_ref() == Some(r))
            && self.started_by.as_ref().is_none_or(|u| &e.created_by == u)
            && self.since.is_none_or(|t| e.created_at >= t)
            && self.until.is_none_or(|t| e.created_at <= t)
            && self.text.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                e.name.to_lowercase().contains(&q) || e.agent_name.to_lowercase().contains(&q)
            })
    }

    /// The equality filters that have their own index, most selective first.
    fn equalities(&self) -> [(&'static str, &Option<String>); 6] {
        [
            (BY_AGENT, &self.agent_id),
            (BY_ROLLOUT, &self.rollout_id),
            (BY_SCRIPT, &self.script_id),
            (BY_SERVER, &self.server_id),
            (BY_PROJECT, &self.project_id),
            (BY_USER, &self.started_by),
        ]
    }

    /// The indexes to walk: the most selective equality filter's, or the lists of
    /// the few terms a search text is found in, or one per visible project for a
    /// subject that sees only some, or all executions.
    fn sources(
        &self,
        visible_projects: Option<&[String]>,
        terms: Option<&[String]>,
    ) -> Vec<(&'static str, String)> {
        for (index, value) in self.equalities() {
            if let Some(value) = value {
                return vec![(index, format!("{value}/"))];
            }
        }
        if let Some(terms) = terms {
            return terms
                .iter()
                .map(|key| (BY_TERM, format!("{key}/")))
                .collect();
        }
        if let Some(projects) = visible_projects {
            return projects
                .iter()
                .map(|p| (BY_PROJECT, format!("{p}/")))
                .collect();
        }
        if let Some(status) = self.status {
            return vec![(BY_STATUS, format!("{}/", status.as_str()))];
        }
        if let Some(kind) = self.kind {
            return vec![(BY_KIND, format!("{kind}/"))];
        }
        vec![(ALL, String::new())]
    }
}

/// The smallest UUIDv7 text of the millisecond `at` (a lower bound for ids made
/// then or later).
pub fn id_floor(at: DateTime<Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xFFFF)
}

/// One page of a list, newest first, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One backwards walk over one index, refilled a batch at a time.
struct Source {
    scan: crate::store::IndexScan,
    prefix_len: usize,
    /// `(id, search text)`; the text only from `exec_all`.
    buffer: std::collections::VecDeque<(String, Option<String>)>,
    done: bool,
}

impl Source {
    fn head(&mut self, r: &impl Read) -> anyhow::Result<Option<&String>> {
        if self.buffer.is_empty() && !self.done {
            let page = r.index_page(&self.scan)?;
            self.done = page.len() < self.scan.limit;
            // The first batch is about the page's size; later ones grow, for the
            // filters that skip most of what they scan.
            self.scan.limit = (self.scan.limit * 2).min(crate::listing::BATCH);
            if let Some((key, _)) = page.last() {
                self.scan.after = Some(key.clone());
            }
            let texts = self.scan.index == ALL;
            self.buffer = page
                .into_iter()
                .map(|(key, value)| (key[self.prefix_len..].to_string(), texts.then_some(value)))
                .collect();
        }
        Ok(self.buffer.front().map(|(id, _)| id))
    }
}

/// One page of the executions the subject may see that match `filter`, newest
/// first, starting after the execution id `cursor`. Reads at most the page and
/// [`SCAN_BUDGET`] index entries, whatever the size of the table.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Execution>> {
    let visible = crate::listing::project_scope(subject, Action::ViewServers);
    let upper_id = match (cursor, filter.until) {
        (Some(c), _) => Some(c.to_string()),
        // Ids of the `until` millisecond and before: everything below the next one.
        (None, Some(until)) => Some(id_floor(until + Duration::milliseconds(1))),
        (None, None) => None,
    };
    let lower_id = filter.since.map(id_floor).unwrap_or_default();
    let needle = filter.text.as_ref().map(|q| q.to_lowercase());
    let terms = match &needle {
        Some(q) if filter.equalities().iter().all(|(_, v)| v.is_none()) => terms_containing(r, q)?,
        _ => None,
    };
    let mut sources: Vec<Source> = filter
        .sources(visible.as_deref(), terms.as_deref())
        .into_iter()
        .map(|(index, prefix)| {
            let first = crate::listing::first_batch(limit);
            let mut scan = crate::store::IndexScan::prefix(index, &prefix, first).backward();
            scan.lower = format!("{prefix}{lower_id}");
            scan.after = upper_id.as_ref().map(|id| format!("{prefix}{id}"));
            Source {
                scan,
                prefix_len: prefix.len(),
                buffer: Default::default(),
                done: false,
            }
        })
        .collect();
    let mut items = Vec::new();
    let mut examined = 0usize;
    let mut last_examined: Option<String> = None;
    loop {
        // The next entries in order, up to as many candidates as the page still
        // needs; their records are then read together (one query on PostgreSQL).
        let want = limit.saturating_sub(items.len()).max(1);
        let mut candidates: Vec<String> = Vec::new();
        let mut exhausted = false;
        while candidates.len() < want && examined < SCAN_BUDGET {
            // The newest id at the head of any source comes next.
            let mut best: Option<(usize, String)> = None;
            for (n, source) in sources.iter_mut().enumerate() {
                if let Some(id) = source.head(r)? {
                    if best.as_ref().is_none_or(|(_, b)| id > b) {
                        best = Some((n, id.clone()));
                    }
                }
            }
            let Some((n, id)) = best else {
                exhausted = true;
                break;
            };
            let text = sources[n].buffer.pop_front().and_then(|(_, text)| text);
            examined += 1;
            // A text search over all executions decides from the index entry first
            // and decodes only the executions whose text matches.
            let may_match = match (&needle, &text) {
                (Some(q), Some(text)) => text.contains(q.as_str()),
                _ => true,
            };
            if may_match {
                candidates.push(id.clone());
            }
            last_examined = Some(id);
        }
        for e in r.get_many::<Execution>(&candidates)?.into_iter().flatten() {
            if filter.matches(&e) && policy::can(subject, Action::ViewServers, Some(&e.project_id))
            {
                items.push(e);
            }
        }
        if exhausted {
            return Ok(Page { items, next: None });
        }
        if items.len() >= limit || examined >= SCAN_BUDGET {
            // More may remain: the next page starts after the last id examined.
            let more = sources
                .iter_mut()
                .try_fold(false, |more, s| anyhow::Ok(more || s.head(r)?.is_some()))?;
            return Ok(Page {
                items,
                next: if more { last_examined } else { None },
            });
        }
    }
}

/// Queued executions whose expiry passed by `now`, oldest expiry first, at most
/// `limit`: the sweep reads only these, however many jobs wait.
pub fn expired(r: &impl Read, now: DateTime<Utc>, limit: usize) -> anyhow::Result<Vec<Execution>> {
    let mut scan = crate::store::IndexScan::prefix(EXPIRY, "", limit);
    scan.upper = format!("{}/", now.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    let mut out = Vec::new();
    for (_, id) in r.index_page(&scan)? {
        if let Some(e) = r.get::<Execution>(&id)? {
            if e.status == Status::Queued && e.expires_at <= now {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub executions: usize,
    pub log_chunks: usize,
}

/// Log chunks deleted per transaction while pruning.
const PRUNE_CHUNKS_PER_BATCH: usize = 2_000;

/// Deletes, oldest first, up to `max` ended executions created before `cutoff`,
/// with their logs, in transactions of at most [`PRUNE_CHUNKS_PER_BATCH`] chunks so
/// writers never wait long. Queued and running executions are never pruned. Backup
/// and update records keep their own summary.
pub fn prune(
    store: &crate::store::Store,
    cutoff: DateTime<Utc>,
    max: usize,
) -> anyhow::Result<Pruned> {
    let hooks = installed_hooks()?;
    let mut pruned = Pruned::default();
    let mut after: Option<String> = None;
    let upper = id_floor(cutoff);
    while pruned.executions < max {
        let candidates: Vec<Execution> = store.read(|r| {
            let mut scan = crate::store::IndexScan::prefix(ALL, "", 64).after(after.clone());
            scan.upper = upper.clone();
            let mut out = Vec::new();
            for (id, _) in r.index_page(&scan)? {
                if let Some(e) = r.get::<Execution>(&id)? {
                    out.push(e);
                }
            }
            Ok(out)
        })?;
        if candidates.is_empty() {
            break;
        }
        after = candidates.last().map(|e| e.id.clone());
        for e in candidates {
            if !e.status.is_final() || e.created_at >= cutoff || pruned.executions >= max {
                continue;
            }
            loop {
                let deleted = store.write(|w| w.log_delete(&e.id, PRUNE_CHUNKS_PER_BATCH))?;
                pruned.log_chunks += deleted;
                if deleted < PRUNE_CHUNKS_PER_BATCH {
                    break;
                }
            }
            store.write(|w| {
                if w.delete::<Execution>(&e.id)? {
                    unindex(w, &e)?;
                    w.counter_add(&log_bytes_counter(&e.id), -(i64::MAX))?;
                    for hook in hooks_of(hooks, e.work.kind()) {
                        hook.pruned(w, &e)?;
                    }
                }
                Ok(())
            })?;
            pruned.executions += 1;
        }
    }
    Ok(pruned)
}

fn log_bytes_counter(execution_id: &str) -> String {
    format!("log_bytes/{execution_id}")
}

/// Adds to `ahead` what a batch of agents' reports reads besides its records: for the
/// executions with output, what [`admit_output`] and `log_has` ask of each (their
/// stored bytes and where their logs end), and, when some start or end
/// (`status_changes`), the count of each status. The batch then asks everything in one
/// round trip, where the output counts, the log ends and each status moved took one
/// each.
pub fn reports_ahead(
    mut ahead: crate::store::Ahead,
    with_output: &[String],
    status_changes: bool,
) -> crate::store::Ahead {
    for id in with_output {
        ahead = ahead.counter(log_bytes_counter(id));
    }
    ahead = ahead.log_tops(with_output);
    if status_changes {
        for status in Status::ALL {
            ahead = ahead.counter(status_counter(status));
        }
    }
    ahead
}

/// What happens to one chunk of output under the per-execution limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputAdmission {
    /// Store it.
    Store,
    /// This chunk crosses the limit: store the marker instead, and mark the
    /// execution truncated.
    Truncate { marker: String },
    /// The limit was reached earlier: drop it (it is still acknowledged).
    Drop,
}

/// Decides whether a chunk of `len` bytes fits the execution's stored output and
/// counts it. `max_bytes` is `DYNSERV_MAX_JOB_OUTPUT`.
pub fn admit_output(
    w: &mut Writer,
    execution_id: &str,
    len: usize,
    max_bytes: u64,
) -> anyhow::Result<OutputAdmission> {
    let counter = log_bytes_counter(execution_id);
    let stored = w.counter(&counter)?;
    if stored >= max_bytes {
        return Ok(OutputAdmission::Drop);
    }
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    if stored.saturating_add(len) > max_bytes {
        w.counter_add(
            &counter,
            i64::try_from(max_bytes - stored).unwrap_or(i64::MAX),
        )?;
        if let Some(mut e) = w.get::<Execution>(execution_id)? {
            e.output_truncated = true;
            w.put(&e)?;
        }
        return Ok(OutputAdmission::Truncate {
            marker: format!(
                "[dynserv] output limit of {} reached: the job goes on, but no more of its output is stored or shown\n",
                human_bytes(max_bytes)
            ),
        });
    }
    w.counter_add(&counter, i64::try_from(len).unwrap_or(i64::MAX))?;
    Ok(OutputAdmission::Store)
}

fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / 1024 / 1024)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// Whether a line is the job's internal result line, which no log view shows.
pub fn is_result_line(line: &str) -> bool {
    line.starts_with(dynserv_shared::proto::RESULT_PREFIX)
}

/// A chunk's text as log views show it: without the internal result line.
pub fn display_text(data: &str) -> std::borrow::Cow<'_, str> {
    if !data.contains(dynserv_shared::proto::RESULT_PREFIX) {
        return std::borrow::Cow::Borrowed(data);
    }
    std::borrow::Cow::Owned(
        data.split_inclusive('\n')
            .filter(|line| !is_result_line(line))
            .collect(),
    )
}

/// Marks an execution running (the agent started it); no-op when it already ended.
/// The execution as it is now, `None` when there is none.
pub fn mark_running(
    w: &mut Writer,
    id: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Execution>> {
    let Some(mut e) = w.get::<Execution>(id)? else {
        return Ok(None);
    };
    if e.status == Status::Queued {
        e.status = Status::Running;
        e.started_at.get_or_insert(now);
        w.put(&e)?;
        reindex_status(w, &e, Status::Queued)?;
    }
    Ok(Some(e))
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
    let Some(e) = w.get::<Execution>(id)? else {
        return Ok(false);
    };
    Ok(finish_read(w, e, status, exit_code, summary, now)?.is_some())
}

/// Records the end an agent reported. A job that ended before its start was stored
/// gets its start time too. The execution as it ended, `None` when it had already
/// ended (or there is none).
pub fn finish_reported(
    w: &mut Writer,
    id: &str,
    status: Status,
    exit_code: Option<i32>,
    summary: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Execution>> {
    let Some(mut e) = w.get::<Execution>(id)? else {
        return Ok(None);
    };
    // Nothing is written when it had already ended (`finish_read`).
    e.started_at.get_or_insert(now);
    finish_read(w, e, status, exit_code, summary, now)
}

/// [`finish`] of an execution the caller has read: one decoding of its record per
/// end, which counts when the fleet's ingestion ends thousands in one transaction.
fn finish_read(
    w: &mut Writer,
    mut e: Execution,
    status: Status,
    exit_code: Option<i32>,
    summary: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Execution>> {
    let hooks = installed_hooks()?;
    if e.status.is_final() {
        return Ok(None);
    }
    let from = e.status;
    e.status = status;
    e.exit_code = exit_code;
    e.summary = Some(summary.to_string());
    e.finished_at = Some(now);
    w.put(&e)?;
    reindex_status(w, &e, from)?;
    for hook in hooks_of(hooks, e.work.kind()) {
        hook.finished(w, &e)?;
    }
    crate::agents::forget_job_holder(w, &e.id)?;
    w.index_delete(ACTIVE, &index_key(&e))?;
    Ok(Some(e))
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

/// A live chunk as viewers get it, the same shape as [`LogChunk`], serialized once
/// for all of them without copying its text.
#[derive(Serialize)]
pub struct LiveChunk<'a> {
    pub seq: u64,
    pub stream: &'a str,
    pub data: &'a str,
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
    /// The contract's names: `agent`, `server`, `project`, `name`, `rollout`.
    pub server: Option<String>,
    pub project: String,
    pub name: String,
    pub script: Option<String>,
    pub rollout: Option<String>,
    pub output_truncated: bool,
    /// A drift check (a playbook in check and diff mode, see `drift`): lists label it.
    pub drift_check: bool,
}

impl ExecutionView {
    pub fn new(e: &Execution, agent_name: Option<String>) -> ExecutionView {
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
            duration_s: e.duration_s(),
            cancel_requested: e.cancel_requested,
            timeout_s: e.timeout_s,
            server: e.server_id.clone(),
            project: e.project_id.clone(),
            name: e.name.clone(),
            script: e.script_id.clone(),
            rollout: e.rollout_id.clone(),
            output_truncated: e.output_truncated,
            drift_check: e.is_drift_check(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    use crate::policy::{Level, Role};
    use crate::store::Store;

    fn subject(role: Role, grants: &[(&str, Level)]) -> Subject {
        Subject {
            user_id: "u".into(),
            username: "u".into(),
            role,
            is_manager: false,
            grants: grants.iter().map(|(p, l)| (p.to_string(), *l)).collect(),
        }
    }

    /// An execution as `create` would store it, `minutes_ago` old.
    fn stored(
        w: &mut Writer,
        n: u32,
        project: &str,
        status: Status,
        minutes_ago: i64,
    ) -> Execution {
        let e = sample(
            n,
            project,
            status,
            Utc::now() - Duration::minutes(minutes_ago),
        );
        w.put(&e).unwrap();
        if !e.status.is_final() {
            w.index_put(ACTIVE, &index_key(&e), &e.id).unwrap();
        }
        index_new(w, &e, IndexKeys::MaybeThere).unwrap();
        e
    }

    /// Execution number `n`, created `at`.
    pub(crate) fn sample(n: u32, project: &str, status: Status, at: DateTime<Utc>) -> Execution {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64,
            at.timestamp_subsec_nanos(),
        );
        Execution {
            id: uuid::Uuid::new_v7(ts).to_string(),
            agent_id: format!("agent-{}", n % 2),
            project_id: project.into(),
            server_id: Some(format!("server-{}", n % 2)),
            work: Work::Script {
                interpreter: "/bin/sh".into(),
                script: format!("echo job {n}"),
                env: BTreeMap::new(),
                working_dir: None,
            },
            timeout_s: None,
            status,
            exit_code: None,
            summary: None,
            created_by: if n.is_multiple_of(3) {
                "sohila"
            } else {
                "admin"
            }
            .into(),
            created_at: at,
            expires_at: at + Duration::hours(1),
            started_at: None,
            finished_at: None,
            cancel_requested: false,
            script_id: None,
            rollout_id: None,
            name: format!("job {n}"),
            agent_name: format!("web-{}", n % 2),
            output_truncated: false,
        }
    }

    /// Pages every execution matching `filter`, `limit` at a time; returns the job
    /// numbers in the order seen.
    fn walk(store: &Store, who: &Subject, filter: &Filter, limit: usize) -> Vec<String> {
        walk_showing(store, who, filter, limit, |e| e.name.clone())
    }

    /// [`walk`], naming each execution seen by `show`.
    fn walk_showing(
        store: &Store,
        who: &Subject,
        filter: &Filter,
        limit: usize,
        show: impl Fn(&Execution) -> String,
    ) -> Vec<String> {
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page = store
                .read(|r| query(r, who, filter, cursor.as_deref(), limit))
                .unwrap();
            assert!(page.items.len() <= limit);
            seen.extend(page.items.iter().map(&show));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return seen,
            }
        }
    }

    /// Every filter, alone and combined, pages newest first through the right
    /// executions with no duplicate or gap, for admins and for a technician who sees
    /// one project; the kept counts follow status changes.
    #[test]
    fn filtered_pages_walk_the_right_executions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let all: Vec<Execution> = store
            .write(|w| {
                Ok((0..30)
                    .map(|n| {
                        let status = if n % 5 == 0 {
                            Status::Queued
                        } else {
                            Status::Succeeded
                        };
                        let project = if n % 4 == 0 { "p2" } else { "p1" };
                        stored(w, n, project, status, 60 - i64::from(n))
                    })
                    .collect())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        let tech = subject(Role::Technical, &[("p1", Level::Read)]);
        let expect = |who: &Subject, keep: &dyn Fn(&Execution) -> bool| -> Vec<String> {
            let mut v: Vec<&Execution> = all
                .iter()
                .filter(|e| keep(e))
                .filter(|e| policy::can(who, Action::ViewServers, Some(&e.project_id)))
                .collect();
            v.sort_by(|a, b| b.id.cmp(&a.id));
            v.iter().map(|e| e.name.clone()).collect()
        };
        let since = all[10].created_at;
        let until = all[20].created_at;
        type Keep = Box<dyn Fn(&Execution) -> bool>;
        let cases: Vec<(Filter, Keep)> = vec![
            (Filter::default(), Box::new(|_| true)),
            (
                Filter {
                    status: Some(Status::Queued),
                    ..Default::default()
                },
                Box::new(|e| e.status == Status::Queued),
            ),
            (
                Filter {
                    agent_id: Some("agent-1".into()),
                    ..Default::default()
                },
                Box::new(|e| e.agent_id == "agent-1"),
            ),
            (
                Filter {
                    server_id: Some("server-0".into()),
                    ..Default::default()
                },
                Box::new(|e| e.server_id.as_deref() == Some("server-0")),
            ),
            (
                Filter {
                    project_id: Some("p2".into()),
                    ..Default::default()
                },
                Box::new(|e| e.project_id == "p2"),
            ),
            (
                Filter {
                    kind: Some("script"),
                    ..Default::default()
                },
                Box::new(|_| true),
            ),
            (
                Filter {
                    kind: Some("playbook"),
                    ..Default::default()
                },
                Box::new(|_| false),
            ),
            (
                Filter {
                    started_by: Some("sohila".into()),
                    ..Default::default()
                },
                Box::new(|e| e.created_by == "sohila"),
            ),
            (
                Filter {
                    since: Some(since),
                    ..Default::default()
                },
                Box::new(move |e| e.created_at >= since),
            ),
            (
                Filter {
                    until: Some(until),
                    ..Default::default()
                },
                Box::new(move |e| e.created_at <= until),
            ),
            (
                Filter {
                    text: Some("WEB-1".into()),
                    ..Default::default()
                },
                Box::new(|e| e.agent_name == "web-1"),
            ),
            (
                Filter {
                    text: Some("job 2".into()),
                    ..Default::default()
                },
                Box::new(|e| e.name.starts_with("job 2")),
            ),
            (
                Filter {
                    status: Some(Status::Succeeded),
                    agent_id: Some("agent-0".into()),
                    since: Some(since),
                    until: Some(until),
                    ..Default::default()
                },
                Box::new(move |e| {
                    e.status == Status::Succeeded
                        && e.agent_id == "agent-0"
                        && e.created_at >= since
                        && e.created_at <= until
                }),
            ),
        ];
        for (filter, keep) in &cases {
            for who in [&admin, &tech] {
                let want = expect(who, keep.as_ref());
                for limit in [1, 4, 100] {
                    assert_eq!(
                        walk(&store, who, filter, limit),
                        want,
                        "{filter:?} limit {limit} as {:?}",
                        who.role
                    );
                }
            }
        }
        // Counts are kept, and follow the status index.
        let kept = store.read(counts).unwrap();
        assert_eq!(kept["all"], 30);
        assert_eq!(kept["queued"], 6);
        let queued = all
            .iter()
            .find(|e| e.status == Status::Queued)
            .unwrap()
            .id
            .clone();
        store
            .write(|w| mark_running(w, &queued, Utc::now()))
            .unwrap();
        let kept = store.read(counts).unwrap();
        assert_eq!((kept["queued"], kept["running"]), (5, 1));
        let running = Filter {
            status: Some(Status::Running),
            ..Default::default()
        };
        assert_eq!(walk(&store, &admin, &running, 10).len(), 1);
    }

    /// An end an agent reports before its start was stored (both in one ingestion
    /// batch, or the start lost) moves the execution from queued to its end in one
    /// step: it gets its start time, the counts and the status index follow, and a
    /// second report of the end changes nothing.
    #[test]
    fn an_end_reported_before_its_start_ends_a_queued_execution() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let queued = store
            .write(|w| Ok(stored(w, 1, "p", Status::Queued, 1)))
            .unwrap();
        let now = Utc::now();
        let ended = store
            .write(|w| finish_reported(w, &queued.id, Status::Succeeded, Some(0), "exit 0", now))
            .unwrap()
            .expect("the queued execution ends");
        assert_eq!(ended.status, Status::Succeeded);
        assert_eq!(
            (ended.started_at, ended.finished_at),
            (Some(now), Some(now))
        );
        let kept: Execution = store.get(&queued.id).unwrap().unwrap();
        assert_eq!(kept.started_at, Some(now));
        assert_eq!(kept.summary.as_deref(), Some("exit 0"));
        let kept = store.read(counts).unwrap();
        assert_eq!(
            (kept["queued"], kept["running"], kept["succeeded"]),
            (0, 0, 1)
        );
        let admin = subject(Role::Admin, &[]);
        for (status, found) in [(Status::Running, 0), (Status::Succeeded, 1)] {
            let filter = Filter {
                status: Some(status),
                ..Default::default()
            };
            assert_eq!(walk(&store, &admin, &filter, 10).len(), found, "{status:?}");
        }
        let again = store
            .write(|w| finish_reported(w, &queued.id, Status::Failed, Some(1), "again", now))
            .unwrap();
        assert!(again.is_none());
        let kept: Execution = store.get(&queued.id).unwrap().unwrap();
        assert_eq!(kept.status, Status::Succeeded);
    }

    /// A page examines at most the scan budget: a filter no execution matches comes
    /// back empty with a cursor to go on from rather than reading everything.
    #[test]
    fn rare_filters_stop_at_the_scan_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                for n in 0..(SCAN_BUDGET as u32 + 10) {
                    stored(w, n, "p1", Status::Succeeded, 1);
                }
                Ok(())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        // Every execution runs on an agent named "web-…", none failed.
        let nothing = Filter {
            text: Some("WEB-".into()),
            status: Some(Status::Failed),
            ..Default::default()
        };
        let page = store
            .read(|r| query(r, &admin, &nothing, None, 50))
            .unwrap();
        assert!(page.items.is_empty());
        let next = page.next.expect("a cursor to go on from");
        let rest = store
            .read(|r| query(r, &admin, &nothing, Some(&next), 50))
            .unwrap();
        assert!(rest.items.is_empty() && rest.next.is_none());
    }

    /// Retention deletes ended executions past the cutoff with their logs, indexes
    /// and counts; queued and running ones and newer ones stay.
    #[test]
    fn prune_deletes_old_ended_executions_and_their_logs() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (old_done, old_running, new_done) = store
            .write(|w| {
                let a = stored(w, 1, "p1", Status::Failed, 60 * 24 * 100);
                let b = stored(w, 2, "p1", Status::Running, 60 * 24 * 100);
                let c = stored(w, 3, "p1", Status::Succeeded, 60);
                for e in [&a, &b, &c] {
                    for seq in 0..5000 {
                        w.log_append(&e.id, seq, b"ohello")?;
                    }
                }
                Ok((a, b, c))
            })
            .unwrap();
        let cutoff = Utc::now() - Duration::days(90);
        let pruned = prune(&store, cutoff, 100).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                executions: 1,
                log_chunks: 5000
            }
        );
        store
            .read(|r| {
                assert!(r.get::<Execution>(&old_done.id)?.is_none());
                assert!(r.log_range(&old_done.id, 0, 1)?.is_empty());
                assert!(r.get::<Execution>(&old_running.id)?.is_some());
                assert_eq!(r.log_range(&new_done.id, 0, 9999)?.len(), 5000);
                assert_eq!(r.counter("executions")?, 2);
                assert_eq!(r.counter("executions/failed")?, 0);
                Ok(())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        assert_eq!(
            walk(&store, &admin, &Filter::default(), 10),
            vec!["job 3", "job 2"]
        );
        assert_eq!(prune(&store, cutoff, 100).unwrap(), Pruned::default());
    }

    /// A text search reads the search text kept in `exec_all` and finds, case
    /// insensitively, executions by name or agent name; a store from before that
    /// text was kept gets it from the schema step.
    #[test]
    fn text_search_reads_the_index_and_old_stores_get_their_text() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let now = Utc::now();
        store
            .write(|w| {
                for n in 1..=6 {
                    let e = sample(
                        n,
                        "p1",
                        Status::Succeeded,
                        now - Duration::minutes(i64::from(n)),
                    );
                    seed_for_bench(w, &e, &[])?;
                }
                Ok(())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        let search = |q: &str| Filter {
            text: Some(q.into()),
            ..Default::default()
        };
        assert_eq!(walk(&store, &admin, &search("JOB 3"), 10), vec!["job 3"]);
        assert_eq!(
            walk(&store, &admin, &search("Web-1"), 2),
            vec!["job 1", "job 3", "job 5"]
        );
        assert!(walk(&store, &admin, &search("nothing"), 10).is_empty());
        // As an older store held it: the id as the value.
        store
            .write(|w| {
                for (id, _) in w.index_page(&crate::store::IndexScan::prefix(ALL, "", 100))? {
                    w.index_put(ALL, &id, &id)?;
                }
                backfill_search_text(w)
            })
            .unwrap();
        assert_eq!(walk(&store, &admin, &search("job 3"), 10), vec!["job 3"]);
    }

    /// An agent's name known ahead is one term, found by a search once the agent has
    /// run something, and not written again by its executions.
    #[test]
    fn a_name_known_ahead_is_one_term() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.write(|w| know_term(w, "Web-7")).unwrap();
        store
            .read(|r| {
                assert_eq!(terms_containing(r, "eb-7")?.map(|t| t.len()), Some(1));
                Ok(())
            })
            .unwrap();
        let mut e = sample(1, "p1", Status::Succeeded, Utc::now());
        e.agent_name = "web-7".into();
        e.name = "Deploy".into();
        store.write(|w| seed_for_bench(w, &e, &[])).unwrap();
        store
            .read(|r| {
                assert_eq!(r.index_scan(TERMS, "")?.len(), 2, "web-7 and deploy");
                Ok(())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        let found = walk_showing(
            &store,
            &admin,
            &Filter {
                text: Some("EB-7".into()),
                ..Default::default()
            },
            10,
            |e| e.id.clone(),
        );
        assert_eq!(found, vec![e.id.clone()]);
    }

    /// A text few names contain is found through those terms' lists, page by page
    /// with no gap or duplicate, without scanning the other executions; a text most
    /// names contain falls back to the scan and finds the same; pruning the last
    /// execution of a term forgets the term; the schema step gives an older store
    /// its terms.
    #[test]
    fn rare_text_walks_the_term_lists() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let now = Utc::now();
        // 300 executions on 100 agents ("db-000" … "db-099"), named after 3 scripts.
        store
            .write(|w| {
                for n in 0..300u32 {
                    let mut e = sample(
                        n,
                        "p1",
                        Status::Succeeded,
                        now - Duration::minutes(i64::from(n)),
                    );
                    e.agent_name = format!("DB-{:03}", n % 100);
                    e.name = format!("Deploy/{}", ["alpha", "beta", "gamma"][(n % 3) as usize]);
                    seed_for_bench(w, &e, &[])?;
                }
                Ok(())
            })
            .unwrap();
        let admin = subject(Role::Admin, &[]);
        let search = |q: &str| Filter {
            text: Some(q.into()),
            ..Default::default()
        };
        let agents_of = |q: &str, limit: usize| {
            walk_showing(&store, &admin, &search(q), limit, |e| {
                format!("{} {}", e.agent_name, e.name)
            })
        };
        // Only the agent name "db-042" contains "b-042".
        store
            .read(|r| {
                assert_eq!(terms_containing(r, "b-042")?.map(|t| t.len()), Some(1));
                assert_eq!(terms_containing(r, "eploy/")?.map(|t| t.len()), Some(3));
                // 100 agent names contain "db-": too many to merge.
                assert_eq!(terms_containing(r, "db-")?, None);
                assert_eq!(terms_containing(r, "nowhere")?, Some(vec![]));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            agents_of("B-042", 2),
            vec![
                "DB-042 Deploy/alpha",
                "DB-042 Deploy/beta",
                "DB-042 Deploy/gamma"
            ]
        );
        // "y/be" is in one script name; the other terms' executions are not read.
        let beta = agents_of("y/be", 7);
        assert_eq!(beta.len(), 100);
        assert!(beta.iter().all(|s| s.ends_with("Deploy/beta")));
        // Through the scan: the same executions, newest first.
        let scanned = agents_of("db-0", 50);
        assert_eq!(scanned.len(), 300);
        assert_eq!(scanned[0], "DB-000 Deploy/alpha");
        assert!(agents_of("nowhere", 10).is_empty());
        // Retention forgets a term once its last execution is gone: "db-060" ran
        // 60, 160 and 260 minutes ago.
        prune(&store, now - Duration::minutes(250), 1000).unwrap();
        assert_eq!(
            agents_of("db-060", 10),
            vec!["DB-060 Deploy/alpha", "DB-060 Deploy/beta"]
        );
        store
            .read(|r| {
                assert_eq!(r.index_scan(TERMS, "")?.len(), 100 + 3);
                Ok(())
            })
            .unwrap();
        // Only the executions of the last 50 minutes stay: agents db-000 … db-050.
        prune(&store, now - Duration::seconds(50 * 60 + 30), 1000).unwrap();
        assert_eq!(agents_of("db-060", 10), Vec::<String>::new());
        store
            .read(|r| {
                assert_eq!(terms_containing(r, "db-060")?, Some(vec![]));
                assert_eq!(r.index_scan(TERMS, "")?.len(), 51 + 3);
                assert_eq!(
                    r.index_scan(TERM_SUFFIXES, "")?.len(),
                    r.index_scan(TERMS, "")?
                        .iter()
                        .map(|(key, term)| suffix_keys(term, key).len())
                        .sum::<usize>()
                );
                Ok(())
            })
            .unwrap();
        // An older store without term lists gets them from the schema step.
        store
            .write(|w| {
                for index in [BY_TERM, TERMS, TERM_SUFFIXES] {
                    for (key, _) in w.index_scan(index, "")? {
                        w.index_delete(index, &key)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        assert!(agents_of("db-042", 10).is_empty());
        store.write(backfill_terms).unwrap();
        assert_eq!(agents_of("db-042", 10), vec!["DB-042 Deploy/alpha"]);
    }

    /// An execution seeded for a benchmark is stored as the product leaves an ended
    /// one: listed by each filter, counted, its log readable and counted, and pruned
    /// without a trace; one that has not ended is refused.
    #[test]
    fn seeded_executions_look_like_ended_ones() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut e = sample(1, "p1", Status::Failed, Utc::now() - Duration::days(100));
        e.script_id = Some("s1".into());
        let old = e.created_at;
        let output = [
            (OutputStream::Stdout, "one\n"),
            (OutputStream::Stderr, "two\n"),
        ];
        store.write(|w| seed_for_bench(w, &e, &output)).unwrap();
        let admin = subject(Role::Admin, &[]);
        for filter in [
            Filter::default(),
            Filter {
                status: Some(Status::Failed),
                ..Default::default()
            },
            Filter {
                agent_id: Some(e.agent_id.clone()),
                ..Default::default()
            },
            Filter {
                server_id: e.server_id.clone(),
                ..Default::default()
            },
            Filter {
                project_id: Some("p1".into()),
                ..Default::default()
            },
            Filter {
                kind: Some("script"),
                ..Default::default()
            },
            Filter {
                script_id: Some("s1".into()),
                ..Default::default()
            },
            Filter {
                started_by: Some(e.created_by.clone()),
                ..Default::default()
            },
            Filter {
                since: Some(old - Duration::hours(1)),
                until: Some(old + Duration::hours(1)),
                ..Default::default()
            },
        ] {
            assert_eq!(
                walk(&store, &admin, &filter, 10),
                vec![e.name.clone()],
                "{filter:?}"
            );
        }
        store
            .read(|r| {
                assert_eq!(counts(r)?["all"], 1);
                assert_eq!(counts(r)?["failed"], 1);
                assert_eq!(r.counter(&log_bytes_counter(&e.id))?, 8);
                let log = log(r, &e.id, 0, 10)?;
                assert_eq!(
                    log.iter().map(|c| c.data.as_str()).collect::<Vec<_>>(),
                    ["one\n", "two\n"]
                );
                assert_eq!(log[1].stream, "stderr");
                assert!(active_of_agent(r, &e.agent_id)?.is_empty());
                Ok(())
            })
            .unwrap();
        let pruned = prune(&store, Utc::now() - Duration::days(90), 10).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                executions: 1,
                log_chunks: 2
            }
        );
        store
            .read(|r| {
                assert_eq!(counts(r)?["all"], 0);
                assert_eq!(r.counter(&log_bytes_counter(&e.id))?, 0);
                assert!(r
                    .index_page(&crate::store::IndexScan::prefix(BY_SCRIPT, "", 10))?
                    .is_empty());
                Ok(())
            })
            .unwrap();
        let mut running = e.clone();
        running.status = Status::Running;
        assert!(store.write(|w| seed_for_bench(w, &running, &[])).is_err());
    }

    /// Output is stored up to the limit; the chunk that crosses it becomes the
    /// marker and marks the execution truncated; later chunks are dropped.
    #[test]
    fn output_past_the_limit_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let e = store
            .write(|w| Ok(stored(w, 1, "p1", Status::Running, 1)))
            .unwrap();
        let admitted: Vec<OutputAdmission> = store
            .write(|w| {
                [600, 400, 100, 10]
                    .into_iter()
                    .map(|len| admit_output(w, &e.id, len, 1024))
                    .collect()
            })
            .unwrap();
        assert_eq!(admitted[0], OutputAdmission::Store);
        assert_eq!(admitted[1], OutputAdmission::Store);
        assert!(
            matches!(&admitted[2], OutputAdmission::Truncate { marker } if marker.contains("1 KiB"))
        );
        assert_eq!(admitted[3], OutputAdmission::Drop);
        assert!(
            store
                .get::<Execution>(&e.id)
                .unwrap()
                .unwrap()
                .output_truncated
        );
    }

    /// The expiry sweep reads only queued executions whose expiry passed.
    #[test]
    fn expired_reads_only_what_expired() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (late, _fresh, _running) = store
            .write(|w| {
                Ok((
                    stored(w, 1, "p1", Status::Queued, 120),
                    stored(w, 2, "p1", Status::Queued, 1),
                    stored(w, 3, "p1", Status::Running, 120),
                ))
            })
            .unwrap();
        let found = store.read(|r| expired(r, Utc::now(), 100)).unwrap();
        assert_eq!(
            found.iter().map(|e| &e.id).collect::<Vec<_>>(),
            vec![&late.id]
        );
        store
            .write(|w| finish(w, &late.id, Status::Failed, None, "expired", Utc::now()).map(|_| ()))
            .unwrap();
        assert!(store
            .read(|r| expired(r, Utc::now(), 100))
            .unwrap()
            .is_empty());
    }

    /// Log views never show the internal result line.
    #[test]
    fn result_lines_are_hidden() {
        let text = format!(
            "row 1\n{}{{\"ok\":true}}\nrow 2\n",
            dynserv_shared::proto::RESULT_PREFIX
        );
        assert_eq!(display_text(&text), "row 1\nrow 2\n");
        assert_eq!(display_text("plain\n"), "plain\n");
    }
}
