//! `async`/`poll` and `async_status`, as ansible-core's `async_wrapper` and
//! `async_status` do them.
//!
//! A task with `async: N` runs its module in the background: the runtime starts the
//! agent binary again as a supervisor (`playbook --internal-async`, in a session of its
//! own so it outlives the run), which starts the module in a worker process
//! (`playbook --internal-module`, through sudo/su for `become`) in its own process group,
//! waits at most N seconds and writes the module's result as JSON to the job file
//! `ASYNC_DIR/JID` (`ansible_async_dir`, else `ANSIBLE_ASYNC_DIR`, else
//! `~/.ansible_async`). A worker still running after N seconds has its process group
//! killed and the job file says `Timeout exceeded`.
//!
//! With `poll: M > 0` (default 15) the run checks the job file every M seconds, at most
//! N seconds long, prints `ASYNC POLL`/`ASYNC OK`/`ASYNC FAILED` lines, removes the
//! finished job's file and takes the module's result as the task's. With `poll: 0` the
//! task returns at once with `ansible_job_id`, `results_file`, `started` and
//! `finished: false` (and `changed: true`, as ansible-core reports a started job); the
//! `async_status` action reads the job file later (`mode: cleanup` removes it).
//!
//! What does not live here: the module itself (`modules`), switching user (`become_`).

use super::Runner;
use crate::become_::{Become, BecomeMethod, ModuleRequest};
use crate::filters::json_to_value;
use crate::modules::{self, ModuleContext, Outcome};
use minijinja::Value;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Actions ansible-core refuses to run in the background (action plugins without async
/// support); everything else the runtime runs as a module can.
const NO_ASYNC: &[&str] = &[
    "copy",
    "template",
    "unarchive",
    "debug",
    "set_fact",
    "assert",
    "fail",
    "include_vars",
    "pause",
    "reboot",
    "raw",
    "async_status",
    "meta",
];

/// The `async` and `poll` of one task, templated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AsyncSpec {
    /// Seconds the job may run.
    pub limit: u64,
    /// Seconds between checks; 0 is fire and forget.
    pub poll: u64,
}

/// What the supervisor process receives on stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct AsyncJob {
    /// The job id (`j<random>.<supervisor pid>`).
    pub jid: String,
    /// The job file.
    pub job_path: PathBuf,
    /// Seconds the worker may run.
    pub limit: u64,
    /// The module request the worker serves.
    pub request: ModuleRequest,
    /// The become user, if the module runs as another user.
    pub become_user: Option<String>,
    /// Whether that switch goes through `su` (else sudo/runuser).
    pub become_su: bool,
}

/// Writes a job file atomically (a `.tmp` beside it, then a rename), as async_wrapper.
fn write_job(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(&tmp, path)
}

/// The home directory of `user`, or of the current user.
fn home_of(user: Option<&str>) -> Option<PathBuf> {
    if user.is_none() {
        if let Some(home) = std::env::var_os("HOME") {
            return Some(PathBuf::from(home));
        }
    }
    // SAFETY: getpwnam/getpwuid return a pointer into static storage or null; the
    // directory is copied out at once.
    unsafe {
        let entry = match user {
            Some(name) => {
                let c_name = std::ffi::CString::new(name).ok()?;
                libc::getpwnam(c_name.as_ptr())
            }
            None => libc::getpwuid(libc::geteuid()),
        };
        if entry.is_null() || (*entry).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*entry).pw_dir);
        Some(PathBuf::from(dir.to_string_lossy().into_owned()))
    }
}

/// Expands a leading `~` as the user the module runs as.
fn expand_home(path: &str, user: Option<&str>) -> PathBuf {
    match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match home_of(user) {
            Some(home) => home.join(rest.trim_start_matches('/')),
            None => PathBuf::from(path),
        },
        _ => PathBuf::from(path),
    }
}

/// Reads a job file the way ansible-core's `async_status` module and action do, merged
/// into one result.
pub(super) fn job_status(dir: &Path, jid: &str, cleanup: bool) -> Outcome {
    let path = dir.join(jid);
    let path_text = path.display().to_string();
    let mut result = Outcome::new()
        .with("started", false)
        .with("finished", false)
        .with("stdout", "")
        .with("stderr", "")
        .with("stdout_lines", Value::from(Vec::<Value>::new()))
        .with("stderr_lines", Value::from(Vec::<Value>::new()))
        .with("ansible_job_id", jid);
    if cleanup {
        result.set("erased", path_text.clone());
    } else {
        result.set("results_file", path_text.clone());
        result.set("started", true);
    }
    if !path.exists() {
        result.set("failed", true);
        result.set("msg", "could not find job");
        result.set("started", true);
        result.set("finished", true);
        return result;
    }
    if cleanup {
        if let Err(e) = std::fs::remove_file(&path) {
            result.set("failed", true);
            result.set("msg", format!("could not remove {path_text}: {e}"));
        }
        return result;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let data = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => map,
        _ if text.trim().is_empty() => {
            // Not written yet: the job is running.
            result.set("started", true);
            result.set("finished", false);
            return result;
        }
        _ => {
            result.set("failed", true);
            result.set("msg", format!("Could not parse job output: {text}"));
            result.set("started", true);
            result.set("finished", true);
            return result;
        }
    };
    let mut data = data;
    if !data.contains_key("started") {
        data.insert("finished".into(), serde_json::Value::Bool(true));
        data.insert("ansible_job_id".into(), jid.into());
    } else if !data.contains_key("finished") {
        data.insert("finished".into(), serde_json::Value::Bool(false));
    }
    // The action base splits stdout/stderr into lines when the module did not.
    let split: Vec<&str> = ["stdout", "stderr"]
        .into_iter()
        .filter(|s| data.contains_key(*s) && !data.contains_key(&format!("{s}_lines")))
        .collect();
    for (key, value) in &data {
        result.set(key, json_to_value(value));
    }
    for stream in split {
        let text = result
            .get(stream)
            .map(modules::value_to_string)
            .unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(Value::from).collect();
        result.set(&format!("{stream}_lines"), Value::from(lines));
    }
    // Old wrappers wrote 0/1; ansible-core reports booleans.
    for key in ["started", "finished"] {
        let truthy = result.get(key).map(|v| v.is_true()).unwrap_or(false);
        result.set(key, truthy);
    }
    result
}

impl Runner<'_> {
    /// The templated `async`/`poll` of a task, or `None` when it does not run in the
    /// background (`async` absent or 0).
    pub(super) fn async_spec(
        &self,
        task: &crate::model::Task,
        ctx: &Value,
    ) -> Result<Option<AsyncSpec>, String> {
        let number = |value: &Option<Value>, what: &str| -> Result<Option<u64>, String> {
            let Some(value) = value else { return Ok(None) };
            let rendered = self
                .templar
                .template(value, ctx)
                .map_err(|e| e.to_string())?;
            let text = modules::value_to_string(&rendered);
            text.trim()
                .parse::<i64>()
                .map(|n| Some(n.max(0) as u64))
                .map_err(|_| format!("the field '{what}' has an invalid value ({text}), and could not be converted to int"))
        };
        let limit = number(&task.async_val, "async")?.unwrap_or(0);
        if limit == 0 {
            return Ok(None);
        }
        let poll = number(&task.poll, "poll")?.unwrap_or(15);
        Ok(Some(AsyncSpec { limit, poll }))
    }

    /// The directory of job files as the module's user sees it.
    pub(super) fn async_dir(&self, ctx: &Value, become_: Option<&Become>) -> PathBuf {
        let configured = ctx
            .get_attr("ansible_async_dir")
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
            .and_then(|v| self.templar.template(&v, ctx).ok())
            .map(|v| modules::value_to_string(&v))
            .or_else(|| std::env::var("ANSIBLE_ASYNC_DIR").ok())
            .unwrap_or_else(|| "~/.ansible_async".into());
        expand_home(&configured, become_.map(|b| b.user.as_str()))
    }

    /// Refuses the actions ansible-core cannot run in the background.
    pub(super) fn refuse_async(module: &str) -> Option<Outcome> {
        NO_ASYNC
            .contains(&module)
            .then(|| Outcome::failed(format!("This action ({module}) does not support async.")))
    }

    /// Starts a module in the background and returns what ansible-core's launch returns.
    pub(super) fn launch_async(
        &self,
        spec: AsyncSpec,
        dir: &Path,
        module: &str,
        args: &Value,
        mctx: &ModuleContext,
        become_: Option<&Become>,
    ) -> Outcome {
        let program = match self
            .options
            .become_program
            .clone()
            .map(Ok)
            .unwrap_or_else(std::env::current_exe)
        {
            Ok(p) => p,
            Err(e) => {
                return Outcome::failed(format!("async: cannot locate the agent binary: {e}"))
            }
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Outcome::failed(format!(
                "could not create directory: {} - {e}",
                dir.display()
            ));
        }
        let mut command = Command::new(&program);
        command
            .args(["playbook", "--internal-async"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; it detaches the supervisor from the run's
        // session and process group so that it outlives the run, as async_wrapper does.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Outcome::failed(format!("async: could not start the job: {e}")),
        };
        let jid = format!(
            "j{}.{}",
            rand::random::<u64>() % 999_999_999_999,
            child.id()
        );
        let job_path = dir.join(&jid);
        let started =
            serde_json::json!({"started": true, "finished": false, "ansible_job_id": jid});
        if let Err(e) = write_job(&job_path, &started) {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::failed(format!(
                "could not write the job file {}: {e}",
                job_path.display()
            ));
        }
        let job = AsyncJob {
            jid: jid.clone(),
            job_path: job_path.clone(),
            limit: spec.limit,
            request: ModuleRequest {
                module: module.to_string(),
                args: serde_json::to_value(args).unwrap_or_default(),
                check: mctx.check,
                diff: mctx.diff,
                environment: mctx.environment.clone(),
                facts: serde_json::to_value(&mctx.facts).unwrap_or_default(),
            },
            become_user: become_.map(|b| b.user.clone()),
            become_su: become_.is_some_and(|b| b.method == BecomeMethod::Su),
        };
        if let Some(mut stdin) = child.stdin.take() {
            let body = serde_json::to_vec(&job).unwrap_or_default();
            let _ = stdin.write_all(&body);
        }
        // The supervisor lives on by itself; a thread reaps it when it ends first.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Outcome::new()
            .with("failed", false)
            .with("started", true)
            .with("finished", false)
            .with("ansible_job_id", jid)
            .with("results_file", job_path.display().to_string())
            .with("changed", true)
    }

    /// Polls a started job every `spec.poll` seconds for at most `spec.limit` seconds, as
    /// ansible-core's task executor: the module's result once the job is done (its file
    /// removed), else a failure naming the time limit.
    pub(super) fn poll_async(
        &mut self,
        spec: AsyncSpec,
        dir: &Path,
        launched: &Outcome,
    ) -> Outcome {
        let host = self.host().to_string();
        let jid = launched
            .get("ansible_job_id")
            .map(modules::value_to_string)
            .unwrap_or_default();
        let mut time_left = spec.limit as i64;
        let mut last = launched.clone();
        let mut finished = false;
        while time_left > 0 {
            std::thread::sleep(Duration::from_secs(spec.poll));
            if self.cancelled() {
                break;
            }
            last = job_status(dir, &jid, false);
            let is = |key: &str| last.get(key).map(|v| v.is_true()).unwrap_or(false);
            if is("finished") || is("failed") || is("skipped") {
                finished = is("finished");
                break;
            }
            time_left -= spec.poll as i64;
            let started = python_bool(&last, "started");
            let done = python_bool(&last, "finished");
            self.emit(&format!(
                "ASYNC POLL on {host}: jid={jid} started={started} finished={done}"
            ));
        }
        let outcome = if finished {
            let _ = job_status(dir, &jid, true);
            last
        } else {
            Outcome::failed(format!(
                "async task did not complete within the requested time - {}s",
                spec.limit
            ))
            .with("async_result", last.to_value())
        };
        if outcome.is_failed() {
            self.emit(&format!("ASYNC FAILED on {host}: jid={jid}"));
        } else {
            self.emit(&format!("ASYNC OK on {host}: jid={jid}"));
        }
        outcome
    }

    /// The `async_status` action: a job's state (`mode: status`) or its removal
    /// (`mode: cleanup`).
    pub(super) fn action_async_status(
        &self,
        args: &Value,
        ctx: &Value,
        become_: Option<&Become>,
    ) -> Outcome {
        let text = |key: &str| {
            args.get_attr(key)
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_none())
                .map(|v| modules::value_to_string(&v))
        };
        let Some(jid) = text("jid") else {
            return Outcome::failed("missing required arguments: jid");
        };
        let cleanup = match text("mode").as_deref() {
            None | Some("status") => false,
            Some("cleanup") => true,
            Some(other) => {
                return Outcome::failed(format!(
                    "value of mode must be one of: status, cleanup, got: {other}"
                ))
            }
        };
        job_status(&self.async_dir(ctx, become_), &jid, cleanup)
    }
}

/// `True`/`False` as Python prints a boolean field.
fn python_bool(outcome: &Outcome, key: &str) -> &'static str {
    if outcome.get(key).map(|v| v.is_true()).unwrap_or(false) {
        "True"
    } else {
        "False"
    }
}

/// The supervisor (`playbook --internal-async`): runs the job's module in a worker
/// process, kills the worker's process group when the time limit passes, and writes the
/// result to the job file. Returns the process exit code.
pub fn serve_async(input: &str) -> i32 {
    let job = match serde_json::from_str::<AsyncJob>(input) {
        Ok(job) => job,
        Err(_) => return 1,
    };
    let result = run_worker(&job);
    match write_job(&job.job_path, &result) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn run_worker(job: &AsyncJob) -> serde_json::Value {
    let failure =
        |msg: String| serde_json::json!({"failed": true, "msg": msg, "ansible_job_id": job.jid});
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return failure(format!("cannot locate the agent binary: {e}")),
    };
    let mut command = match (&job.become_user, job.become_su) {
        (Some(user), su) => {
            let target = Become {
                user: user.clone(),
                method: if su {
                    BecomeMethod::Su
                } else {
                    BecomeMethod::Sudo
                },
            };
            match crate::become_::switch_user_command(&target, &program) {
                Ok(command) => command,
                Err(message) => return failure(message),
            }
        }
        (None, _) => {
            let mut command = Command::new(&program);
            command.args(["playbook", "--internal-module"]);
            command
        }
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return failure(format!("could not start the module: {e}")),
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(&job.request).unwrap_or_default());
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(job.limit);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: killpg on the worker's own process group (it is its leader).
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
                let _ = child.wait();
                return serde_json::json!({"msg": "Timeout exceeded", "failed": true, "child_pid": pid});
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return failure(format!("waiting for the module failed: {e}")),
        }
    }
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(out.trim()) {
        Ok(mut value @ serde_json::Value::Object(_)) => {
            if !err.trim().is_empty() && value.get("stderr").is_none() {
                value["stderr"] = err.into();
            }
            value
        }
        _ => serde_json::json!({
            "failed": true,
            "data": out,
            "stderr": err,
            "msg": "the module's output could not be read",
            "ansible_job_id": job.jid,
        }),
    }
}
