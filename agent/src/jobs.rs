//! Jobs: starting them exactly once, running their processes, spooling their output
//! and ending them, independently of any connection.
//!
//! Each job lives in `STATE_DIR/jobs/<id>/`: `spec.json`, the script, `state.json`
//! (pid, start time), the output files and spool index ([`crate::spool`]), `exit`
//! (written by a tiny shell wrapper when the interpreter returns) and `end.json`. The
//! job's process runs in its own process group with its output going to files, so it
//! survives an agent restart; the next agent adopts it, keeps tailing its files and
//! ends it when the process is gone. `STATE_DIR/started` lists every job id ever
//! started, so a repeated `Start` never runs a job twice. A job's directory is
//! removed only after the control plane has stored its end.
//!
//! A state directory can be copied to another machine (a clone, a restored snapshot).
//! `state.json` names the host that started the job; a copy on another host does not
//! adopt such a job (its process runs elsewhere) and answers a `Start` for it with
//! [`StartOutcome::NotStartedHere`], as it does for a `resume_only` start of a job it
//! never started, so a copy neither runs a job again nor reports an end for it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use dynserv_shared::proto::{
    GatheredFacts, JobEnd, JobKind, JobSpec, JobStatus, OutputChunk, OutputStream, MAX_CHUNK_LEN,
    MAX_REPORTED_FACTS_BYTES,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::spool::{stream_path, Spool};

/// Runs the interpreter with the script, then records its exit code atomically in the
/// file named by `$0`. A process group kill takes the wrapper down too, so a missing
/// `exit` file means the job was killed.
const WRAPPER: &str =
    "\"$@\"\ncode=$?\numask 077\necho \"$code\" > \"$0.tmp\" && mv \"$0.tmp\" \"$0\"\n";

/// How long a cancelled or timed-out job's group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the agent remembers about a job's process.
#[derive(Debug, Serialize, Deserialize)]
struct ProcessState {
    pid: Option<i32>,
    started_at_unix: u64,
    /// The host id of the machine that started the process (absent in jobs started
    /// by agents that predate it, which count as this machine's).
    #[serde(default)]
    host_id: Option<String>,
}

/// One job known to this agent.
pub struct Job {
    /// The job (execution) id.
    pub id: String,
    dir: PathBuf,
    spool: Mutex<Spool>,
    end: Mutex<Option<JobEnd>>,
    changed: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
    /// Secret values of the job's spec, masked in every chunk read back.
    secrets: Vec<String>,
    /// Output bytes the control plane stores; past it nothing more is spooled.
    max_output: Option<u64>,
    /// A playbook's plays and those that matched no host, counted in its output for
    /// the job's summary; `None` for other kinds.
    plays: Mutex<Option<PlayCount>>,
}

/// Plays seen in a playbook job's output (`PLAY [...]` banners) and those its host
/// was not among (`skipping: no hosts matched`).
#[derive(Debug, Default, Clone, Copy)]
struct PlayCount {
    plays: u64,
    unmatched: u64,
}

impl PlayCount {
    /// Counts the banners and skips in whole lines of output.
    fn add(&mut self, output: &[u8]) {
        for line in output.split(|b| *b == b'\n') {
            if line.starts_with(b"PLAY [") {
                self.plays += 1;
            } else if line == b"skipping: no hosts matched" {
                self.unmatched += 1;
            }
        }
    }

    /// What the summary adds: nothing when every play matched.
    fn note(&self) -> Option<String> {
        match self.unmatched {
            0 => None,
            n if n >= self.plays => Some("no play matched this host".into()),
            n => Some(format!("{n} of {} plays matched no host", self.plays)),
        }
    }
}

/// Replaces every secret value in `text` by `********`.
pub fn mask_secrets(text: String, secrets: &[String]) -> String {
    let mut text = text;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "********");
        }
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Job {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that wakes when the job has new output or ended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Number of chunks so far.
    pub fn chunks(&self) -> u64 {
        lock(&self.spool).len()
    }

    /// The first chunk the control plane has not acknowledged.
    pub fn first_unacked(&self) -> u64 {
        lock(&self.spool).first_unacked()
    }

    /// Reads a chunk back from the spool.
    pub fn read_chunk(&self, seq: u64) -> Result<OutputChunk> {
        let mut chunk = lock(&self.spool).read_chunk(seq)?;
        // Output is cut at line ends, so a one-line secret never straddles two chunks.
        if !self.secrets.is_empty() {
            chunk.data = mask_secrets(chunk.data, &self.secrets);
        }
        Ok(chunk)
    }

    /// Records the control plane's acknowledgement.
    pub fn ack(&self, up_to_seq: u64) -> Result<()> {
        Ok(lock(&self.spool).ack(up_to_seq)?)
    }

    /// The job's end, once it ended.
    pub fn end(&self) -> Option<JobEnd> {
        lock(&self.end).clone()
    }

    /// Asks the job to stop; its process group is killed.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    fn note(&self, text: &str) {
        if let Err(e) = lock(&self.spool).append_system(text) {
            tracing::warn!(job = %self.id, "cannot spool a note: {e}");
        }
        self.bump();
    }

    fn finish(&self, end: JobEnd) {
        let end = JobEnd {
            chunks: self.chunks(),
            ..end
        };
        if let Ok(json) = serde_json::to_vec(&end) {
            let tmp = self.dir.join("end.json.tmp");
            if crate::private_fs::write(&tmp, json)
                .and_then(|_| std::fs::rename(&tmp, self.dir.join("end.json")))
                .is_err()
            {
                tracing::warn!(job = %self.id, "cannot record the job's end on disk");
            }
        }
        tracing::info!(job = %self.id, status = ?end.status, exit_code = ?end.exit_code, "job ended");
        *lock(&self.end) = Some(end);
        self.bump();
    }
}

/// The outcome of a `Start` request.
pub enum StartOutcome {
    /// The job was new and now runs.
    Started(Arc<Job>),
    /// The job had been started before (running, or ended but not yet acknowledged).
    Resumed(Arc<Job>),
    /// The job ran and was completely delivered before; it will not run again.
    AlreadyDone,
    /// The job is not this agent's: another copy of it (sharing its state directory's
    /// identity) started it, so it is neither started nor ended here. Says why.
    NotStartedHere(String),
}

struct Inner {
    started: HashSet<String>,
    live: HashMap<String, Arc<Job>>,
    /// Jobs whose directories came from another host with a copy of the state
    /// directory; their processes run there.
    foreign: HashSet<String>,
}

/// Every job of this agent. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    root: PathBuf,
    started_path: PathBuf,
    /// This machine's host id, recorded with every job started here.
    host_id: String,
    inner: Arc<Mutex<Inner>>,
}

/// Whether `id` is safe as a directory name.
fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Jobs {
    /// Opens the job state under `state_dir` and adopts every job that was running or
    /// undelivered when the previous agent on this host (`host_id`) stopped. Must be
    /// called inside a tokio runtime (adopted jobs get a task).
    pub fn open(state_dir: &Path, host_id: &str) -> Result<Jobs> {
        let root = state_dir.join("jobs");
        // Specs hold secret values and outputs hold what jobs print: owner-only.
        crate::private_fs::ensure_dir(&root)
            .with_context(|| format!("creating {}", root.display()))?;
        let started_path = state_dir.join("started");
        let started: HashSet<String> = std::fs::read_to_string(&started_path)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let jobs = Jobs {
            root: root.clone(),
            started_path,
            host_id: host_id.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                started,
                live: HashMap::new(),
                foreign: HashSet::new(),
            })),
        };
        for entry in std::fs::read_dir(&root)?.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Err(e) = jobs.adopt(&id) {
                tracing::warn!(job = %id, "cannot adopt a job from the previous run: {e:#}");
            }
        }
        Ok(jobs)
    }

    /// Jobs still running.
    pub fn running(&self) -> u32 {
        lock(&self.inner)
            .live
            .values()
            .filter(|j| j.end().is_none())
            .count() as u32
    }

    fn new_job(&self, id: &str, dir: PathBuf, spec: &JobSpec) -> Result<Arc<Job>> {
        let spool = Spool::open(&dir)?;
        let end = std::fs::read(dir.join("end.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Arc::new(Job {
            id: id.to_string(),
            dir,
            spool: Mutex::new(spool),
            end: Mutex::new(end),
            changed: watch::channel(0).0,
            cancel: watch::channel(false).0,
            secrets: spec.secrets.clone(),
            max_output: spec.max_output_bytes,
            plays: Mutex::new(
                matches!(spec.kind, JobKind::Playbook { .. }).then(PlayCount::default),
            ),
        }))
    }

    fn adopt(&self, id: &str) -> Result<()> {
        let dir = self.root.join(id);
        if !valid_job_id(id) || !dir.join("spec.json").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        let spec: JobSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
        let state: ProcessState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
            .unwrap_or(ProcessState {
                pid: None,
                started_at_unix: now_unix(),
                host_id: None,
            });
        let alive_here = state.pid.is_some_and(|pid| process_alive(pid, &dir));
        let started_elsewhere = state
            .host_id
            .as_deref()
            .is_some_and(|h| !h.is_empty() && h != self.host_id);
        if started_elsewhere && !alive_here {
            // The directory is a copy: the job's process runs (or ran) on the host that
            // started it, which alone reports it. It is left as it is.
            tracing::warn!(
                job = %id,
                started_on = state.host_id.as_deref().unwrap_or_default(),
                "a job in the state directory was started on another host (the directory \
                 was copied from it); not adopting it"
            );
            let mut inner = lock(&self.inner);
            inner.started.insert(id.to_string());
            inner.foreign.insert(id.to_string());
            return Ok(());
        }
        let job = self.new_job(id, dir.clone(), &spec)?;
        {
            let mut inner = lock(&self.inner);
            inner.started.insert(id.to_string());
            inner.live.insert(id.to_string(), job.clone());
        }
        if job.end().is_some() {
            return Ok(());
        }
        let process = match state.pid {
            Some(pid) if alive_here => {
                job.note("[dynserv-agent restarted; following the running job again]\n");
                Process::Adopted(pid)
            }
            _ => Process::Gone,
        };
        let deadline = spec
            .timeout_s
            .map(|t| deadline_from(state.started_at_unix, t));
        tokio::spawn(supervise(job, process, deadline));
        Ok(())
    }

    /// Starts a job, or finds the one already started under that id.
    pub fn start_or_resume(&self, spec: &JobSpec) -> Result<StartOutcome> {
        if !valid_job_id(&spec.job_id) {
            anyhow::bail!("invalid job id {:?}", spec.job_id);
        }
        let mut inner = lock(&self.inner);
        if let Some(job) = inner.live.get(&spec.job_id) {
            return Ok(StartOutcome::Resumed(job.clone()));
        }
        if inner.foreign.contains(&spec.job_id) {
            return Ok(StartOutcome::NotStartedHere(format!(
                "job {} was started on another machine, from which this agent's state \
                 directory was copied; it runs there, not here",
                spec.job_id
            )));
        }
        if inner.started.contains(&spec.job_id) {
            return Ok(StartOutcome::AlreadyDone);
        }
        if spec.resume_only {
            return Ok(StartOutcome::NotStartedHere(format!(
                "this copy of the agent never started job {}: another copy sharing its \
                 identity did",
                spec.job_id
            )));
        }
        // Remember the id durably before anything runs: a crash after this point
        // means the job may be lost, never that it runs twice.
        let mut started = crate::private_fs::open_append(&self.started_path)?;
        started.write_all(format!("{}\n", spec.job_id).as_bytes())?;
        started.sync_all()?;
        inner.started.insert(spec.job_id.clone());

        let dir = self.root.join(&spec.job_id);
        crate::private_fs::ensure_dir(&dir)?;
        crate::private_fs::write(&dir.join("spec.json"), serde_json::to_vec(spec)?)?;
        let job = self.new_job(&spec.job_id, dir.clone(), spec)?;
        inner.live.insert(spec.job_id.clone(), job.clone());
        drop(inner);

        if let Some(note) = facts_left_out_note(spec) {
            job.note(&note);
        }
        let started_at = now_unix();
        let process = match spawn(spec, &dir) {
            Ok(child) => {
                let state = ProcessState {
                    pid: child.id().map(|p| p as i32),
                    started_at_unix: started_at,
                    host_id: Some(self.host_id.clone()),
                };
                crate::private_fs::write(&dir.join("state.json"), serde_json::to_vec(&state)?)?;
                Process::Child(child)
            }
            Err(e) => {
                job.note(&format!("[could not start the job: {e:#}]\n"));
                Process::Gone
            }
        };
        tracing::info!(job = %spec.job_id, "job started");
        let deadline = spec.timeout_s.map(|t| deadline_from(started_at, t));
        tokio::spawn(supervise(job.clone(), process, deadline));
        Ok(StartOutcome::Started(job))
    }

    /// Forgets a job whose end the control plane stored: its directory goes, its id
    /// stays in the started list.
    pub fn forget(&self, id: &str) {
        lock(&self.inner).live.remove(id);
        let _ = std::fs::remove_dir_all(self.root.join(id));
    }
}

fn deadline_from(started_at_unix: u64, timeout_s: u64) -> Instant {
    let elapsed = now_unix().saturating_sub(started_at_unix);
    let now = Instant::now();
    // The timeout is the peer's number: one past what the clock holds means "never"
    // in practice (a century), not an overflow panic.
    let left = Duration::from_secs(timeout_s.saturating_sub(elapsed));
    now.checked_add(left)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Whether `pid` is still the job's live process (not a zombie, not a reused pid).
fn process_alive(pid: i32, dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if state == Some('Z') || state == Some('X') {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}

fn spawn(spec: &JobSpec, dir: &Path) -> Result<tokio::process::Child> {
    let exit_path = dir.join("exit");
    let mut argv: Vec<String> = Vec::new();
    let mut env = Vec::new();
    let mut working_dir = dir.to_path_buf();
    match &spec.kind {
        JobKind::Script {
            interpreter,
            body,
            env: vars,
            working_dir: wd,
        } => {
            let script = dir.join("script");
            crate::private_fs::write(&script, body)?;
            argv.extend(interpreter.split_whitespace().map(String::from));
            if argv.is_empty() {
                argv.push("/bin/sh".into());
            }
            argv.push(script.to_string_lossy().into_owned());
            env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            if let Some(wd) = wd.as_deref().filter(|w| !w.is_empty()) {
                working_dir = PathBuf::from(wd);
            }
        }
        JobKind::Playbook {
            yaml,
            vars,
            check,
            diff,
            ansible_fallback,
            inventory_hostname,
            files,
            inventory,
        } => {
            // A playbook with files runs from a tree of its own, so that no file of
            // it can take the name of one of the job's (exit, vars.json, output).
            let file = if files.is_empty() {
                dir.join("playbook.yml")
            } else {
                let tree = dir.join("tree");
                write_tree(&tree, files)?;
                working_dir = tree.clone();
                tree.join(dynserv_shared::tree::PLAYBOOK_FILE)
            };
            crate::private_fs::write(&file, yaml)?;
            let exe = crate::compose::own_binary()?;
            argv.push(exe.to_string_lossy().into_owned());
            argv.push("playbook".into());
            argv.push(file.to_string_lossy().into_owned());
            if *check {
                argv.push("--check".into());
            }
            // Diff mode ends the output with the run's per-task report, which the
            // control plane splits off (`DYNSERV-RESULT`).
            if *diff {
                argv.push("--diff".into());
                argv.push("--result-line".into());
            }
            if *ansible_fallback {
                argv.push("--ansible-fallback".into());
            }
            // The server's name for `inventory_hostname` and the `[host]` labels; one
            // argument with `=`, so a name can never read as another flag.
            let host = inventory_hostname
                .as_deref()
                .map(str::trim)
                .filter(|h| !h.is_empty() && !h.contains(['\n', '\0']));
            // With the project's inventory the play runs as that host of it (`-i`,
            // `--limit`); the file is private like the variables.
            // A host missing from it (a server deleted at Hetzner whose agent still
            // runs) plays alone, as before inventories.
            match (host, inventory) {
                (Some(host), Some(inventory)) if inventory.0.hosts.iter().any(|h| h == host) => {
                    let file = dir.join("inventory.json");
                    crate::private_fs::write(
                        &file,
                        serde_json::to_vec(&inventory.0.to_ansible())?,
                    )?;
                    argv.push(format!("--inventory={}", file.display()));
                    argv.push(format!("--limit={host}"));
                    // The other hosts' facts the control plane knows, for their
                    // `hostvars` (an inventory file has no place for facts).
                    if !inventory.0.facts.is_empty() {
                        let file = dir.join(FACTS_CACHE_FILE);
                        crate::private_fs::write(&file, serde_json::to_vec(&inventory.0.facts)?)?;
                        argv.push(format!("--facts-cache={}", file.display()));
                    }
                }
                (Some(host), _) => argv.push(format!("--inventory-hostname={host}")),
                (None, _) => {}
            }
            // The facts the run gathers on this host go back to the control plane
            // with the job's end (`JobEnd::facts`).
            argv.push(format!(
                "--facts-out={}",
                dir.join(GATHERED_FACTS_FILE).display()
            ));
            // The variables go in a private file, not on the command line where any
            // local user could read them (they may hold secrets).
            if !vars.is_empty() {
                let vars_file = dir.join("vars.json");
                let mut file = crate::private_fs::create(&vars_file)?;
                file.write_all(&serde_json::to_vec(vars)?)?;
                argv.push("-e".into());
                argv.push(format!("@{}", vars_file.display()));
            }
        }
        // Backups, restores and updates run as the agent's own subcommands.
        other => argv.extend(crate::compose::job_argv(other, dir)?),
    }
    let stdout = crate::private_fs::create(&stream_path(dir, OutputStream::Stdout))?;
    let stderr = crate::private_fs::create(&stream_path(dir, OutputStream::Stderr))?;
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg(&exit_path)
        .args(&argv)
        .current_dir(&working_dir)
        .envs(env)
        .env("DYNSERV_JOB_ID", &spec.job_id)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    command
        .spawn()
        .with_context(|| format!("running {}", argv.join(" ")))
}

/// The file of a playbook job's directory the run writes the facts it gathered to
/// (`--facts-out`).
const GATHERED_FACTS_FILE: &str = "gathered-facts.json";

/// The file of a playbook job's directory holding the other hosts' facts
/// (`--facts-cache`).
const FACTS_CACHE_FILE: &str = "facts-cache.json";

/// The facts a playbook job gathered, and those its modules returned, for its end:
/// none when it had none, the gathered ones alone (with a warning) when the modules'
/// would take the report past what the control plane keeps, and none (with a warning)
/// when even those are too large or do not read back, which costs other hosts their
/// `hostvars` facts, never the job.
fn gathered_facts(dir: &Path) -> Option<Box<GatheredFacts>> {
    /// What `dynserv-agent playbook --facts-out` writes.
    #[derive(serde::Deserialize)]
    struct Written {
        gathered_at: String,
        facts: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        module_facts: serde_json::Map<String, serde_json::Value>,
    }
    let path = dir.join(GATHERED_FACTS_FILE);
    // Both parts as JSON, at most twice the limit with their keys.
    let size = std::fs::metadata(&path).ok()?.len();
    if size > 2 * MAX_REPORTED_FACTS_BYTES as u64 {
        tracing::warn!(
            "the facts take {size} bytes, more than the {MAX_REPORTED_FACTS_BYTES} reported: not reported"
        );
        return None;
    }
    let written = match std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(serde_json::from_slice::<Written>(&bytes)?))
    {
        Ok(written) => written,
        Err(e) => {
            tracing::warn!("cannot read the gathered facts back: {e:#}");
            return None;
        }
    };
    let fits = |facts: &serde_json::Map<String, serde_json::Value>| {
        serde_json::to_vec(facts).map_or(usize::MAX, |b| b.len()) <= MAX_REPORTED_FACTS_BYTES
    };
    let mut facts = written.facts.clone();
    facts.extend(written.module_facts.clone());
    if !fits(&facts) {
        if written.facts.is_empty() || !fits(&written.facts) {
            tracing::warn!(
                "the facts take more than the {MAX_REPORTED_FACTS_BYTES} bytes reported: not reported"
            );
            return None;
        }
        let names: Vec<&String> = written.module_facts.keys().collect();
        tracing::warn!(
            "the facts modules returned ({names:?}) would take the report past {MAX_REPORTED_FACTS_BYTES} bytes: only the gathered facts are reported"
        );
        facts = written.facts;
    }
    Some(Box::new(GatheredFacts {
        gathered_at: written.gathered_at,
        facts,
    }))
}

/// The line a playbook job that reads `hostvars` starts with when the control plane
/// could not send every host's facts (the inventory with them would pass its bound).
fn facts_left_out_note(spec: &JobSpec) -> Option<String> {
    let JobKind::Playbook {
        yaml,
        files,
        inventory: Some(inventory),
        ..
    } = &spec.kind
    else {
        return None;
    };
    let inventory = &inventory.0;
    let from = inventory.facts_left_out_from? as usize;
    let first = inventory.hosts.get(from)?;
    let reads_hostvars = yaml.contains("hostvars") || files.iter().any(|f| f.contains("hostvars"));
    if !reads_hostvars {
        return None;
    }
    let whose = match inventory.hosts.len() - from - 1 {
        0 => first.clone(),
        1 => format!("{first} and the host after it in the inventory"),
        n => format!("{first} and the {n} hosts after it in the inventory"),
    };
    Some(format!(
        "[the facts of {whose} were left out of this job: with them its inventory would pass {} KiB, so their hostvars have no ansible_facts]\n",
        dynserv_shared::inventory::MAX_INVENTORY_BYTES / 1024
    ))
}

/// Writes a playbook's files under `root`, each path checked again here (the control
/// plane checked it on save): nothing is ever written outside `root`.
fn write_tree(root: &Path, files: &dynserv_shared::tree::Files) -> Result<()> {
    crate::private_fs::create_dir(root)?;
    for file in files.iter() {
        dynserv_shared::tree::check_path(&file.path)
            .map_err(|e| anyhow::anyhow!("the playbook's file {:?}: {e}", file.path))?;
        let bytes = file
            .bytes()
            .with_context(|| format!("the playbook's file {:?} is not valid base64", file.path))?;
        let path = root.join(&file.path);
        if let Some(parent) = path.parent() {
            crate::private_fs::create_dir(parent)?;
        }
        crate::private_fs::write(&path, bytes)
            .with_context(|| format!("writing the playbook's file {}", file.path))?;
    }
    Ok(())
}

enum Process {
    Child(tokio::process::Child),
    Adopted(i32),
    Gone,
}

impl Process {
    fn pid(&self) -> Option<i32> {
        match self {
            Process::Child(c) => c.id().map(|p| p as i32),
            Process::Adopted(pid) => Some(*pid),
            Process::Gone => None,
        }
    }

    fn exited(&mut self, dir: &Path) -> bool {
        match self {
            Process::Child(child) => !matches!(child.try_wait(), Ok(None)),
            Process::Adopted(pid) => !process_alive(*pid, dir),
            Process::Gone => true,
        }
    }
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is
    // involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Tails one output file into the spool.
struct Tail {
    stream: OutputStream,
    last_size: u64,
    /// Past the output limit: the file offset up to which output was skipped (not
    /// spooled, its disk space given back).
    skipped_to: u64,
}

impl Tail {
    /// Moves new bytes of the file into numbered chunks. Whole lines go out at once;
    /// a partial line waits until the file stops growing for a tick (or `last`), and a
    /// line longer than a chunk is cut at a character boundary. True when anything
    /// was spooled.
    fn pump(&mut self, job: &Job, last: bool) -> std::io::Result<bool> {
        let path = stream_path(&job.dir, self.stream);
        let Ok(file) = File::open(&path) else {
            return Ok(false);
        };
        let size = file.metadata()?.len();
        let stable = size == self.last_size;
        self.last_size = size;
        let mut spool = lock(&job.spool);
        let mut offset = spool.offset(self.stream).max(self.skipped_to);
        let mut any = false;
        let mut buf = vec![0u8; MAX_CHUNK_LEN];
        while offset < size {
            // Strictly past the limit: the chunk that crosses it still goes out, so
            // the control plane sees the crossing and marks the log truncated.
            if job.max_output.is_some_and(|max| spool.bytes() > max) {
                // Past the limit the control plane stores nothing more: the job goes
                // on, its output is not spooled and its file space is given back.
                free_range(&path, offset, size);
                self.skipped_to = size;
                break;
            }
            let want = ((size - offset) as usize).min(MAX_CHUNK_LEN);
            let got = file.read_at(&mut buf[..want], offset)?;
            if got == 0 {
                break;
            }
            let window = &buf[..got];
            let cut = match window.iter().rposition(|b| *b == b'\n') {
                Some(pos) => pos + 1,
                None if got == MAX_CHUNK_LEN => match std::str::from_utf8(window) {
                    Ok(_) => got,
                    Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                    Err(_) => got,
                },
                None if last || stable => got,
                None => break,
            };
            spool.append(self.stream, offset, offset + cut as u64)?;
            if self.stream == OutputStream::Stdout {
                if let Some(count) = lock(&job.plays).as_mut() {
                    count.add(&window[..cut]);
                }
            }
            offset += cut as u64;
            any = true;
        }
        drop(spool);
        if any {
            job.bump();
        }
        Ok(any)
    }
}

/// Gives the disk space of `[start, end)` of an output file back to the file system
/// (the file keeps its size, so offsets stay valid; the range reads as zeros).
fn free_range(path: &Path, start: u64, end: u64) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return;
    };
    // SAFETY: a valid open descriptor; punching a hole only changes allocation.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        tracing::debug!(path = %path.display(), "punching a hole: {}", std::io::Error::last_os_error());
    }
}

/// Watches a job's process to its end: tails its output, enforces its timeout, kills
/// its group on cancel, and records how it ended.
async fn supervise(job: Arc<Job>, mut process: Process, deadline: Option<Instant>) {
    let mut tails = [
        Tail {
            stream: OutputStream::Stdout,
            last_size: u64::MAX,
            skipped_to: 0,
        },
        Tail {
            stream: OutputStream::Stderr,
            last_size: u64::MAX,
            skipped_to: 0,
        },
    ];
    let mut cancel_rx = job.cancel.subscribe();
    let mut stopping: Option<(JobStatus, Instant)> = None;
    let mut killed = false;
    let mut child_signal: Option<i32> = None;
    loop {
        let exited = process.exited(&job.dir);
        let mut progressed = false;
        for tail in &mut tails {
            match tail.pump(&job, exited) {
                Ok(p) => progressed |= p,
                Err(e) => tracing::warn!(job = %job.id, "reading job output: {e}"),
            }
        }
        if exited {
            if let Process::Child(child) = &mut process {
                if let Ok(Some(status)) = child.try_wait() {
                    use std::os::unix::process::ExitStatusExt;
                    child_signal = status.signal();
                }
            }
            break;
        }
        let pid = process.pid();
        if stopping.is_none() {
            let reason = if *cancel_rx.borrow() {
                Some((
                    JobStatus::Cancelled,
                    "[cancel requested: stopping the job's process group]\n".to_string(),
                ))
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Some((
                    JobStatus::TimedOut,
                    "[timeout reached: stopping the job's process group]\n".to_string(),
                ))
            } else {
                None
            };
            if let Some((status, note)) = reason {
                job.note(&note);
                if let Some(pid) = pid {
                    kill_group(pid, libc::SIGTERM);
                }
                stopping = Some((status, Instant::now() + KILL_GRACE));
            }
        }
        if let Some((_, kill_at)) = stopping {
            if !killed && Instant::now() >= kill_at {
                if let Some(pid) = pid {
                    kill_group(pid, libc::SIGKILL);
                }
                killed = true;
            }
        }
        let pause = if progressed {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(20)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel_rx.changed(), if stopping.is_none() => {}
        }
    }
    // The process group may have left children behind; they belong to the job.
    if let Some(pid) = process.pid() {
        kill_group(pid, libc::SIGKILL);
    }
    let exit_code = std::fs::read_to_string(job.dir.join("exit"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let end = match (stopping.map(|s| s.0), exit_code) {
        (Some(JobStatus::Cancelled), code) => JobEnd {
            status: JobStatus::Cancelled,
            exit_code: code,
            summary: "cancelled".into(),
            chunks: 0,
            facts: None,
        },
        (Some(status), code) => JobEnd {
            status,
            exit_code: code,
            summary: "killed after its timeout".into(),
            chunks: 0,
            facts: None,
        },
        (None, Some(0)) => JobEnd {
            status: JobStatus::Succeeded,
            exit_code: Some(0),
            summary: "exit code 0".into(),
            chunks: 0,
            facts: None,
        },
        (None, Some(code)) => JobEnd {
            status: JobStatus::Failed,
            exit_code: Some(code),
            summary: format!("exit code {code}"),
            chunks: 0,
            facts: None,
        },
        (None, None) => {
            let summary = match child_signal {
                Some(sig) => format!("killed by signal {sig}"),
                None => "the job's process ended without an exit code".to_string(),
            };
            job.note(&format!("[{summary}]\n"));
            JobEnd {
                status: JobStatus::Failed,
                exit_code: None,
                summary,
                chunks: 0,
                facts: None,
            }
        }
    };
    // A play that skipped this host says so in the summary, not only in the log.
    let note = lock(&job.plays).and_then(|count| count.note());
    let end = match note {
        Some(note) => JobEnd {
            summary: format!("{}; {note}", end.summary),
            ..end
        },
        None => end,
    };
    // Reading a file: off the async workers.
    let dir = job.dir.clone();
    let facts = tokio::task::spawn_blocking(move || gathered_facts(&dir))
        .await
        .ok()
        .flatten();
    let end = JobEnd { facts, ..end };
    job.finish(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A playbook that reads `hostvars` is told whose facts the control plane left out;
    /// one that does not, or whose inventory carried every host's, is not.
    #[test]
    fn left_out_facts_are_noted_for_playbooks_that_read_hostvars() {
        let spec = |yaml: &str, from: Option<u32>| JobSpec {
            max_output_bytes: None,
            job_id: "j1".into(),
            kind: JobKind::Playbook {
                yaml: yaml.into(),
                vars: Default::default(),
                check: false,
                diff: false,
                ansible_fallback: false,
                inventory_hostname: Some("web-1".into()),
                files: Default::default(),
                inventory: Some(dynserv_shared::inventory::SharedInventory(Arc::new(
                    dynserv_shared::inventory::JobInventory {
                        hosts: vec!["web-1".into(), "web-2".into(), "web-3".into()],
                        facts_left_out_from: from,
                        ..Default::default()
                    },
                ))),
            },
            timeout_s: None,
            secrets: Vec::new(),
            resume_only: false,
        };
        let reads = "- hosts: all\n  tasks:\n    - debug: var=hostvars['web-3']\n";
        let note = facts_left_out_note(&spec(reads, Some(1))).expect("a note");
        assert!(
            note.contains("web-2 and the host after it") && note.contains("448 KiB"),
            "{note}"
        );
        assert_eq!(facts_left_out_note(&spec(reads, None)), None);
        assert_eq!(
            facts_left_out_note(&spec("- hosts: all\n  tasks: []\n", Some(1))),
            None
        );
    }

    /// The report joins the gathered facts and the modules' facts; modules' facts that
    /// would pass the limit are left out, and gathered facts past it are not reported.
    #[test]
    fn gathered_facts_join_the_modules_facts_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let write = |facts: serde_json::Value, module_facts: serde_json::Value| {
            let body = serde_json::json!({
                "gathered_at": "2026-12-05T10:00:00+00:00",
                "facts": facts,
                "module_facts": module_facts,
            });
            std::fs::write(dir.path().join(GATHERED_FACTS_FILE), body.to_string()).unwrap();
        };
        assert!(gathered_facts(dir.path()).is_none(), "no file, no facts");
        write(
            serde_json::json!({"hostname": "web-1"}),
            serde_json::json!({"services": {"ssh.service": {"state": "running"}}}),
        );
        let report = gathered_facts(dir.path()).expect("reported");
        assert_eq!(report.facts["hostname"], "web-1");
        assert_eq!(report.facts["services"]["ssh.service"]["state"], "running");
        let big = "x".repeat(MAX_REPORTED_FACTS_BYTES);
        write(
            serde_json::json!({"hostname": "web-1"}),
            serde_json::json!({ "services": big }),
        );
        let report = gathered_facts(dir.path()).expect("the gathered ones alone");
        assert_eq!(report.facts.keys().collect::<Vec<_>>(), ["hostname"]);
        write(
            serde_json::json!({}),
            serde_json::json!({ "services": big }),
        );
        assert!(gathered_facts(dir.path()).is_none());
        write(serde_json::json!({ "blob": big }), serde_json::json!({}));
        assert!(gathered_facts(dir.path()).is_none());
    }

    /// The host id of the machine the tests play.
    const HOST: &str = "host-a";

    /// A playbook's summary names the plays that did not select its host, and says
    /// nothing when every play did.
    #[test]
    fn play_count_notes_unmatched_plays() {
        let mut count = PlayCount::default();
        count.add(b"PLAY [web] ****\nskipping: no hosts matched\n\nPLAY [all] ***\nok: [x]\n");
        count.add(b"PLAY RECAP ****\nx : ok=1\n");
        assert_eq!(
            count.note().as_deref(),
            Some("1 of 2 plays matched no host")
        );
        let mut none = PlayCount::default();
        none.add(b"PLAY [web] ***\nskipping: no hosts matched\n");
        assert_eq!(none.note().as_deref(), Some("no play matched this host"));
        let mut all = PlayCount::default();
        all.add(b"PLAY [all] ***\nok: [x]\n");
        assert_eq!(all.note(), None);
    }

    /// A timeout too large for the clock is a far deadline, never an overflow panic.
    #[test]
    fn huge_timeouts_are_a_far_deadline() {
        let far = deadline_from(now_unix(), u64::MAX);
        assert!(far > Instant::now() + Duration::from_secs(365 * 24 * 3600));
        assert!(deadline_from(0, 5) <= Instant::now());
    }

    fn script(id: &str, body: &str, timeout_s: Option<u64>) -> JobSpec {
        JobSpec {
            job_id: id.into(),
            kind: JobKind::Script {
                interpreter: "/bin/sh".into(),
                body: body.into(),
                env: BTreeMap::from([("GREETING".into(), "hi".into())]),
                working_dir: None,
            },
            timeout_s,
            secrets: Vec::new(),
            resume_only: false,
            max_output_bytes: None,
        }
    }

    /// The playbook runtime's report line uses the wire protocol's result prefix, so
    /// the control plane splits it off like every other job's result.
    #[test]
    fn the_report_line_is_the_result_line() {
        assert_eq!(
            crate::playbook::engine::report::RESULT_LINE_PREFIX,
            dynserv_shared::proto::RESULT_PREFIX
        );
    }

    /// Every occurrence of every secret is masked; empty secrets mask nothing.
    #[test]
    fn secrets_are_masked() {
        let secrets = vec!["hunter2".to_string(), String::new()];
        assert_eq!(
            mask_secrets("pw=hunter2 again hunter2\n".into(), &secrets),
            "pw=******** again ********\n"
        );
        assert_eq!(mask_secrets("nothing".into(), &secrets), "nothing");
    }

    async fn wait_end(job: &Job) -> JobEnd {
        let mut rx = job.subscribe();
        loop {
            if let Some(end) = job.end() {
                return end;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    fn output(job: &Job, stream: OutputStream) -> String {
        (0..job.chunks())
            .map(|s| job.read_chunk(s).unwrap())
            .filter(|c| c.stream == stream)
            .map(|c| c.data)
            .collect()
    }

    /// Past the job's output limit the agent spools nothing more and gives the output
    /// file's space back; the job itself runs to its end.
    #[tokio::test]
    async fn output_past_the_limit_is_not_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), HOST).unwrap();
        let spec = JobSpec {
            max_output_bytes: Some(64 * 1024),
            ..script(
                "big",
                "i=0; while [ $i -lt 20 ]; do head -c 65536 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done; exit 0\n",
                None,
            )
        };
        let StartOutcome::Started(job) = jobs.start_or_resume(&spec).unwrap() else {
            panic!("not started")
        };
        let end = wait_end(&job).await;
        assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
        let spooled = lock(&job.spool).bytes();
        assert!(
            spooled <= 64 * 1024 + MAX_CHUNK_LEN as u64,
            "spooled {spooled} bytes past a 64 KiB limit"
        );
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(stream_path(&job.dir, OutputStream::Stdout)).unwrap();
        assert!(meta.len() > 1_000_000, "the job wrote all its output");
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "the skipped output still takes {} bytes on disk",
            meta.blocks() * 512
        );
    }

    /// A script runs once with its env; a repeat start resumes, a forgotten one is done.
    #[tokio::test]
    async fn runs_once_with_env_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), HOST).unwrap();
        let spec = script("j1", "echo $GREETING; echo err >&2; exit 3\n", None);
        let StartOutcome::Started(job) = jobs.start_or_resume(&spec).unwrap() else {
            panic!("not started")
        };
        let end = wait_end(&job).await;
        assert_eq!((end.status, end.exit_code), (JobStatus::Failed, Some(3)));
        assert_eq!(output(&job, OutputStream::Stdout), "hi\n");
        assert_eq!(output(&job, OutputStream::Stderr), "err\n");
        assert!(matches!(
            jobs.start_or_resume(&spec).unwrap(),
            StartOutcome::Resumed(_)
        ));
        jobs.forget("j1");
        assert!(matches!(
            jobs.start_or_resume(&spec).unwrap(),
            StartOutcome::AlreadyDone
        ));
        let reopened = Jobs::open(dir.path(), HOST).unwrap();
        assert!(matches!(
            reopened.start_or_resume(&spec).unwrap(),
            StartOutcome::AlreadyDone
        ));
    }

    /// With umask 000 the state dir, `jobs/`, the job's directory and every file in it
    /// (the spec with its secret values, the script, the output, the spool's index) are
    /// still owner-only, while the job runs and after it ended.
    #[tokio::test]
    async fn job_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        // SAFETY: umask changes only this process's file creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        let jobs = Jobs::open(&state, HOST).unwrap();
        let mut spec = script("private", "echo $GREETING; sleep 1\n", None);
        spec.secrets = vec!["hunter2".into()];
        let StartOutcome::Started(job) = jobs.start_or_resume(&spec).unwrap() else {
            panic!("not started")
        };
        let check = |when: &str| {
            let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o777;
            let dir = state.join("jobs/private");
            for d in [state.clone(), state.join("jobs"), dir.clone()] {
                assert_eq!(mode(&d), 0o700, "{when}: {}", d.display());
            }
            assert_eq!(mode(&state.join("started")), 0o600, "{when}: started");
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                assert_eq!(
                    mode(&entry.path()),
                    0o600,
                    "{when}: {}",
                    entry.path().display()
                );
            }
            for name in ["spec.json", "script", "stdout", "stderr", "index"] {
                assert!(dir.join(name).exists(), "{when}: {name}");
            }
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        check("running");
        let end = wait_end(&job).await;
        unsafe { libc::umask(old) };
        assert_eq!(end.status, JobStatus::Succeeded);
        check("ended");
    }

    /// Timeout kills the whole process group, including a background child.
    #[tokio::test]
    async fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), HOST).unwrap();
        let marker = dir.path().join("child.pid");
        let body = format!("sleep 60 & echo $! > {}\nwait\n", marker.display());
        let StartOutcome::Started(job) =
            jobs.start_or_resume(&script("j2", &body, Some(1))).unwrap()
        else {
            panic!()
        };
        let end = wait_end(&job).await;
        assert_eq!(end.status, JobStatus::TimedOut);
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "background child survived: {stat}"
        );
    }

    /// Cancel stops a running job and records it as cancelled.
    #[tokio::test]
    async fn cancel_stops_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), HOST).unwrap();
        let StartOutcome::Started(job) = jobs
            .start_or_resume(&script("j3", "echo start; sleep 30\n", None))
            .unwrap()
        else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        job.cancel();
        let end = wait_end(&job).await;
        assert_eq!(end.status, JobStatus::Cancelled);
        assert_eq!(output(&job, OutputStream::Stdout), "start\n");
    }

    /// A job whose agent went away is adopted by the next agent and its output is
    /// numbered on without a gap or a repeat.
    #[test]
    fn adopted_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let body = "for i in 1 2 3; do echo line$i; sleep 0.3; done\n";
        // The first agent starts the job, then its runtime (and every task) goes away
        // while the job's process keeps running.
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let jobs = Jobs::open(dir.path(), HOST).unwrap();
                let StartOutcome::Started(job) =
                    jobs.start_or_resume(&script("j4", body, None)).unwrap()
                else {
                    panic!()
                };
                tokio::time::sleep(Duration::from_millis(150)).await;
                assert!(job.chunks() >= 1);
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let again = Jobs::open(dir.path(), HOST).unwrap();
            let StartOutcome::Resumed(adopted) =
                again.start_or_resume(&script("j4", body, None)).unwrap()
            else {
                panic!()
            };
            let end = wait_end(&adopted).await;
            assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
            assert_eq!(
                output(&adopted, OutputStream::Stdout),
                "line1\nline2\nline3\n"
            );
        });
    }

    /// A repeated start marked `resume_only` resumes a job this agent started, but
    /// never starts one it did not: nothing runs and nothing is recorded.
    #[tokio::test]
    async fn resume_only_never_starts_a_job() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), HOST).unwrap();
        let marker = dir.path().join("ran");
        let body = format!("echo once >> {}\n", marker.display());
        let again = JobSpec {
            resume_only: true,
            ..script("j5", &body, None)
        };
        assert!(matches!(
            jobs.start_or_resume(&again).unwrap(),
            StartOutcome::NotStartedHere(_)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists(), "a resume-only start ran the job");
        let StartOutcome::Started(job) = jobs.start_or_resume(&script("j5", &body, None)).unwrap()
        else {
            panic!("a first start did not start the job")
        };
        wait_end(&job).await;
        assert!(matches!(
            jobs.start_or_resume(&again).unwrap(),
            StartOutcome::Resumed(_)
        ));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
    }

    /// A state directory copied to another host does not adopt the jobs of the host it
    /// came from (neither running them nor reporting an end for them), unless the
    /// job's process runs right here; the original host still adopts them.
    #[test]
    fn a_copied_state_dir_leaves_the_original_hosts_jobs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let jobs = Jobs::open(dir.path(), HOST).unwrap();
            let StartOutcome::Started(done) = jobs
                .start_or_resume(&script("j6", "echo done\n", None))
                .unwrap()
            else {
                panic!()
            };
            wait_end(&done).await;
            let StartOutcome::Started(_) = jobs
                .start_or_resume(&script("j7", "sleep 30\n", None))
                .unwrap()
            else {
                panic!()
            };
        });
        drop(rt);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let copy = Jobs::open(dir.path(), "host-b").unwrap();
            let again = JobSpec {
                resume_only: true,
                ..script("j6", "echo done\n", None)
            };
            match copy.start_or_resume(&again).unwrap() {
                StartOutcome::NotStartedHere(reason) => {
                    assert!(reason.contains("another machine"), "{reason}")
                }
                _ => panic!("the copy took a job of the host it was copied from"),
            }
            // Without `resume_only` too: the copy never runs it.
            assert!(matches!(
                copy.start_or_resume(&script("j6", "echo done\n", None))
                    .unwrap(),
                StartOutcome::NotStartedHere(_)
            ));
            assert!(
                dir.path().join("jobs/j6/end.json").exists(),
                "left as it was"
            );
            // j7's process runs on this very machine: whatever the host id says, it
            // is followed (and stopped here).
            let StartOutcome::Resumed(running) = copy
                .start_or_resume(&script("j7", "sleep 30\n", None))
                .unwrap()
            else {
                panic!("a job whose process runs here was not adopted")
            };
            running.cancel();
            wait_end(&running).await;

            let original = Jobs::open(dir.path(), HOST).unwrap();
            assert!(matches!(
                original.start_or_resume(&again).unwrap(),
                StartOutcome::Resumed(_)
            ));
        });
    }
}
