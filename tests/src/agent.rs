//! An enrolled `dynserv-agent run` child process with its own state dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{agent_binary, append_log, expect_success, log_tail, terminate, ControlPlane};

/// How long a stopping agent may take after SIGTERM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A `dynserv-agent` enrolled with `--state-dir DIR --name NAME` and, once
/// [`Agent::run`] was called, running `dynserv-agent run --state-dir DIR`.
///
/// Killed when dropped. Output goes to `agent.stdout.log` / `agent.stderr.log` beside
/// the state dir; a panicking test prints their tail and keeps the directory.
#[derive(Debug)]
pub struct Agent {
    binary: PathBuf,
    name: String,
    server: String,
    state_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Whether `child` is a restart loop in a process group of its own (see
    /// [`Agent::run_supervised`]): stopping it signals the whole group.
    supervised: bool,
    root: Option<TempDir>,
}

impl Agent {
    /// Enrolls an agent named `name` with the control plane's fleet gateway using
    /// `token`, then starts `dynserv-agent run`. Panics when enrollment fails.
    pub fn start(control_plane: &ControlPlane, token: &str, name: &str) -> Agent {
        let mut agent = Agent::enroll(&control_plane.quic_addr(), token, name);
        agent.run();
        agent
    }

    /// `dynserv-agent enroll --server SERVER --token TOKEN --state-dir DIR --name NAME`
    /// in a fresh state dir; panics when it fails. The agent is not started.
    pub fn enroll(server: &str, token: &str, name: &str) -> Agent {
        match Agent::try_enroll(server, token, name) {
            Ok(agent) => agent,
            Err(output) => {
                expect_success(&format!("dynserv-agent enroll --name {name}"), &output);
                unreachable!("expect_success panics on a failed command")
            }
        }
    }

    /// Like [`Agent::enroll`] with environment variables set for `enroll` and every
    /// later `run` (for example `DYNSERV_AGENT_HOST_ID`, to play a given machine).
    pub fn enroll_with_env(server: &str, token: &str, name: &str, env: &[(&str, &str)]) -> Agent {
        match Agent::try_enroll_with_env(server, token, name, env) {
            Ok(agent) => agent,
            Err(output) => {
                expect_success(&format!("dynserv-agent enroll --name {name}"), &output);
                unreachable!("expect_success panics on a failed command")
            }
        }
    }

    /// Like [`Agent::enroll`], handing back the command's output when enrollment fails
    /// (for tests of refused credentials).
    pub fn try_enroll(server: &str, token: &str, name: &str) -> Result<Agent, Output> {
        Agent::try_enroll_with_env(server, token, name, &[])
    }

    fn try_enroll_with_env(
        server: &str,
        token: &str,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent, Output> {
        let root = Agent::temp_root(name);
        let agent = Agent {
            binary: agent_binary(),
            name: name.to_string(),
            server: server.to_string(),
            state_dir: root.path().join("state"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            supervised: false,
            root: Some(root),
        };
        let output = agent.enroll_again(token);
        if output.status.success() {
            Ok(agent)
        } else {
            Err(output)
        }
    }

    /// Runs `enroll` once more on this agent's state dir with `token`, and returns the
    /// command's output whatever it is (for reuse and re-enrollment tests).
    pub fn enroll_again(&self, token: &str) -> Output {
        self.command()
            .arg("enroll")
            .arg("--server")
            .arg(&self.server)
            .arg("--token")
            .arg(token)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--name")
            .arg(&self.name)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawning {} enroll: {e}", self.binary.display()))
    }

    fn temp_root(name: &str) -> TempDir {
        tempfile::Builder::new()
            .prefix(&format!("dynserv-agent-{name}-"))
            .tempdir()
            .expect("creating the agent's temp dir")
    }

    /// A copy of this agent's state directory as it is now, as a clone of its server
    /// or a restored snapshot would have it, with `env` (instead of this agent's) for
    /// its `run`: for example another `DYNSERV_AGENT_HOST_ID`, to play another machine.
    /// The copy is not started.
    pub fn copy_state(&self, env: &[(&str, &str)]) -> Agent {
        let root = Agent::temp_root(&format!("{}-copy", self.name));
        let state_dir = root.path().join("state");
        copy_dir(&self.state_dir, &state_dir)
            .unwrap_or_else(|e| panic!("copying {}: {e}", self.state_dir.display()));
        Agent {
            binary: self.binary.clone(),
            name: self.name.clone(),
            server: self.server.clone(),
            state_dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            supervised: false,
            root: Some(root),
        }
    }

    /// Runs later `run`s from `binary` instead of the workspace's `dynserv-agent` (a
    /// copy an upgrade may replace in place).
    pub fn use_binary(&mut self, binary: &Path) {
        self.binary = binary.to_path_buf();
    }

    /// The binary `run` starts.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts `dynserv-agent run --state-dir DIR` under a restart loop, as the agent
    /// install's supervisor runs it where there is no systemd: `sh` runs the agent
    /// again half a second after it exits (logging `agent exited with N`), with
    /// `DYNSERV_AGENT_SUPERVISED=1` so that the agent exits to restart. The loop and
    /// the agent get a process group of their own, which stopping ends.
    pub fn run_supervised(&mut self) {
        if self.is_running() {
            return;
        }
        let mut command = self.command();
        command.env("DYNSERV_AGENT_SUPERVISED", "1");
        let child = command.spawn_supervisor(&self.binary, &self.state_dir);
        self.child = Some(child);
        self.supervised = true;
    }

    /// Signals the process group of a supervised agent.
    fn signal_group(&self, signal: i32) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the group is the one
            // our own child leads (process_group(0)).
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }

    /// Sets an environment variable for later [`Agent::run`] calls.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts `dynserv-agent run --state-dir DIR` (no-op when already running).
    pub fn run(&mut self) {
        if self.is_running() {
            return;
        }
        let child = self
            .command()
            .arg("run")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(append_log(&self.dir().join("agent.stdout.log")))
            .stderr(append_log(&self.dir().join("agent.stderr.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} run: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Stops the agent gracefully (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if self.supervised {
            self.signal_group(libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            self.signal_group(libc::SIGKILL);
            self.supervised = false;
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, SHUTDOWN_GRACE);
        }
    }

    /// Kills the agent at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&mut self) {
        if self.supervised {
            self.signal_group(libc::SIGKILL);
            self.supervised = false;
        }
        if let Some(mut child) = self.child.take() {
            crate::kill_now(&mut child);
        }
    }

    /// Stops the agent and runs it again on the same state dir.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Whether `dynserv-agent run` is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The name given at enrollment.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The tail of the agent's logs.
    pub fn logs(&self) -> String {
        let dir = self.dir();
        format!(
            "--- dynserv-agent {} stdout ---\n{}\n--- dynserv-agent {} stderr ---\n{}",
            self.name,
            log_tail(&dir.join("agent.stdout.log"), 200),
            self.name,
            log_tail(&dir.join("agent.stderr.log"), 200)
        )
    }

    fn dir(&self) -> &Path {
        self.state_dir
            .parent()
            .expect("the state dir lives in the agent's temp dir")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for key in crate::PRODUCT_ENV {
            command.env_remove(key);
        }
        // Plain text in the log files, which the harness prints on failure.
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }
}

/// Copies a directory tree (files keep their permissions).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let copied = match entry.file_type() {
            Ok(kind) if kind.is_dir() => copy_dir(&entry.path(), &target),
            Ok(_) => std::fs::copy(entry.path(), &target).map(drop),
            Err(e) => Err(e),
        };
        // A running agent writes its files atomically (a temporary file renamed over
        // the old one): a temporary file listed a moment ago may be gone now, as it
        // would be from a snapshot of a live disk. Every other error is real.
        match copied {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !entry.path().exists() => {}
            other => other.map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", entry.path().display()))
            })?,
        }
    }
    Ok(())
}

/// Starting `sh` with the agent's restart loop.
trait SpawnSupervisor {
    fn spawn_supervisor(&mut self, binary: &Path, state_dir: &Path) -> Child;
}

impl SpawnSupervisor for Command {
    /// Turns a command made for the agent into `sh -c LOOP BINARY STATE_DIR` with its
    /// environment and spawns it.
    fn spawn_supervisor(&mut self, binary: &Path, state_dir: &Path) -> Child {
        let mut shell = Command::new("/bin/sh");
        for (key, value) in self.get_envs() {
            match value {
                Some(value) => shell.env(key, value),
                None => shell.env_remove(key),
            };
        }
        use std::os::unix::process::CommandExt as _;
        shell
            .process_group(0)
            .stdin(Stdio::null())
            .arg("-c")
            .arg(
                "while :; do \"$0\" run --state-dir \"$1\"; echo \"agent exited with $?\" >&2; \
                 sleep 0.5; done",
            )
            .arg(binary)
            .arg(state_dir);
        // The logs the agent's own command would have written to.
        let logs = state_dir
            .parent()
            .expect("the state dir lives in the agent's temp dir");
        shell
            .stdout(append_log(&logs.join("agent.stdout.log")))
            .stderr(append_log(&logs.join("agent.stderr.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the agent's restart loop: {e}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.supervised {
            self.signal_group(libc::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            crate::kill_now(&mut child);
        }
        if crate::keep_artifacts() {
            eprintln!("{}", self.logs());
            if let Some(root) = self.root.take() {
                eprintln!("kept the agent's temp dir: {}", root.keep().display());
            }
        }
    }
}
