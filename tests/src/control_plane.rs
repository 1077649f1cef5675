//! A `dynserv serve` child process on its own temp data dir and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{append_log, dynserv_binary, expect_success, free_port, log_tail, terminate, Api};

/// How long a starting control plane may take to answer `GET /healthz`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping control plane may take after SIGTERM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Hetzner API base for tests that set none: a closed loopback port, so nothing in a
/// test ever reaches the real API.
const UNREACHABLE_HETZNER: &str = "http://127.0.0.1:9/v1";

/// Options for [`ControlPlane`]; start with [`ControlPlane::builder`].
#[derive(Debug, Default, Clone)]
pub struct ControlPlaneBuilder {
    demo: bool,
    /// Size in MiB of a tmpfs mounted on the data dir (needs root), for full-disk tests.
    tmpfs_mib: Option<u64>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl ControlPlaneBuilder {
    /// Passes `--demo`: the seed's users, projects, servers and the local agent.
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// Sets an environment variable for `serve` and for the CLI commands run through
    /// [`ControlPlane::run_cli`] (for example `HETZNER_API_URL` for the simulator).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Puts the data dir on a tmpfs of `mib` MiB (mounted as root, unmounted when the
    /// control plane is dropped), so a test can fill the disk under the store.
    pub fn tmpfs_data_dir(mut self, mib: u64) -> Self {
        self.tmpfs_mib = Some(mib);
        self
    }

    /// Appends an extra argument to `dynserv serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the server and waits until `GET /healthz` answers 200.
    pub async fn start(self) -> ControlPlane {
        let root = tempfile::Builder::new()
            .prefix("dynserv-e2e-")
            .tempdir()
            .expect("creating the test's temp dir");
        let data_dir = root.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("creating the data dir");
        if let Some(mib) = self.tmpfs_mib {
            let mounted = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m,mode=0700"),
                    "tmpfs",
                ])
                .arg(&data_dir)
                .status();
            assert!(
                matches!(mounted, Ok(s) if s.success()),
                "mounting a {mib} MiB tmpfs on {} failed ({mounted:?}): full-disk tests run as root, as scripts/test.sh does in CI",
                data_dir.display()
            );
        }
        let mut control_plane = ControlPlane {
            binary: dynserv_binary(),
            data_dir,
            http_port: 0,
            quic_port: 0,
            options: self,
            child: None,
            starts: 0,
            root: Some(root),
        };
        control_plane.spawn_until_healthy(true).await;
        control_plane
    }
}

/// A running `dynserv serve --data-dir TMP --http 127.0.0.1:PORT --quic 127.0.0.1:PORT`.
///
/// Killed when dropped. Its stdout and stderr go to `serve.stdout.log` and
/// `serve.stderr.log` in [`ControlPlane::dir`]; a panicking test prints their tail and
/// keeps the directory.
#[derive(Debug)]
pub struct ControlPlane {
    binary: PathBuf,
    data_dir: PathBuf,
    http_port: u16,
    quic_port: u16,
    options: ControlPlaneBuilder,
    child: Option<Child>,
    starts: u32,
    root: Option<TempDir>,
}

impl ControlPlane {
    /// Options: `--demo`, environment, extra arguments.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// Starts a control plane with an empty store (no `--demo`).
    pub async fn start() -> ControlPlane {
        Self::builder().start().await
    }

    /// Starts a control plane with `--demo`.
    pub async fn start_demo() -> ControlPlane {
        Self::builder().demo().start().await
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `127.0.0.1:PORT` of the web server.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// `127.0.0.1:PORT` of the fleet gateway (QUIC), what agents dial.
    pub fn quic_addr(&self) -> String {
        format!("127.0.0.1:{}", self.quic_port)
    }

    /// The `--data-dir` of this control plane.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The test's temp directory: holds `data/`, the logs, and whatever the test writes
    /// there through [`ControlPlane::artifact`].
    pub fn dir(&self) -> &Path {
        self.data_dir
            .parent()
            .expect("the data dir lives in the test's temp dir")
    }

    /// A path for a test artifact (a screenshot, a downloaded file) in the temp dir,
    /// kept with the logs when the test fails.
    pub fn artifact(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Runs `dynserv --data-dir DIR ARGS…` to completion, with this control plane's
    /// environment; works while `serve` runs.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        self.run_cli_with_stdin(args, "")
    }

    /// Like [`ControlPlane::run_cli`], writing `stdin` to the command's standard input
    /// (for `--password-stdin`).
    pub fn run_cli_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut command = self.command();
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning dynserv {args:?}: {e}"));
        let mut input = child.stdin.take().expect("stdin is piped");
        let stdin_text = stdin.to_string();
        // Write from a thread: a command that does not read stdin must not block us.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(stdin_text.as_bytes());
        });
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for dynserv {args:?}: {e}"));
        let _ = writer.join();
        output
    }

    /// Runs a CLI command that must succeed and returns its trimmed stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("dynserv {}", args.join(" ")), &self.run_cli(args))
    }

    /// `dynserv user add`: creates a user with a password (through `--password-stdin`).
    pub fn add_user(&self, username: &str, role: &str, is_manager: bool, password: &str) {
        let mut args = vec![
            "user",
            "add",
            "--username",
            username,
            "--role",
            role,
            "--password-stdin",
        ];
        if is_manager {
            args.push("--manager");
        }
        let output = self.run_cli_with_stdin(&args, &format!("{password}\n"));
        expect_success(&format!("dynserv user add {username}"), &output);
    }

    /// `dynserv apitoken create --username U`: a fresh API bearer token.
    pub fn api_token(&self, username: &str) -> String {
        self.cli_ok(&["apitoken", "create", "--username", username])
    }

    /// `dynserv token create --project NAME`: a fresh enrollment token `dsv1.…`.
    pub fn enrollment_token(&self, project: &str) -> String {
        self.cli_ok(&["token", "create", "--project", project])
    }

    /// An API client without credentials.
    pub fn api(&self) -> Api {
        Api::new(&self.base_url())
    }

    /// An API client carrying a fresh bearer token of `username`.
    pub fn api_as(&self, username: &str) -> Api {
        self.api().with_token(&self.api_token(username))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and starts it again on the
    /// same data dir and ports; returns once `/healthz` answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.start_again().await;
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, SHUTDOWN_GRACE);
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::kill_now(&mut child);
        }
    }

    /// Starts a stopped or killed server again on the same data dir and ports.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again needs a stopped server: call stop() or kill() first"
        );
        self.spawn_until_healthy(false).await;
    }

    /// Starts a stopped or killed server again on the same data dir and HTTP port, with
    /// its fleet gateway (QUIC) on `quic_port` from now on: a replica that comes back
    /// on another address, for failover tests.
    pub async fn start_again_on_quic_port(&mut self, quic_port: u16) {
        assert!(
            self.child.is_none(),
            "start_again_on_quic_port needs a stopped server: call stop() or kill() first"
        );
        self.quic_port = quic_port;
        self.spawn_until_healthy(false).await;
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The tail of the server's stdout and stderr logs.
    pub fn logs(&self) -> String {
        format!(
            "--- dynserv serve stdout ({}) ---\n{}\n--- dynserv serve stderr ({}) ---\n{}",
            self.stdout_log().display(),
            log_tail(&self.stdout_log(), 200),
            self.stderr_log().display(),
            log_tail(&self.stderr_log(), 200)
        )
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir().join("serve.stdout.log")
    }

    fn stderr_log(&self) -> PathBuf {
        self.dir().join("serve.stderr.log")
    }

    /// A `dynserv` command with this control plane's environment and nothing from the
    /// developer's shell that would change the product's behaviour.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for key in crate::PRODUCT_ENV {
            command.env_remove(key);
        }
        command.env("HETZNER_API_URL", UNREACHABLE_HETZNER);
        // Plain text in the log files, which the harness prints on failure.
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        command
    }

    /// Spawns `serve` and waits for `/healthz`. On a fresh start, ports are picked here
    /// and picked again (up to three times) when the server could not bind them because
    /// another process took them in between.
    async fn spawn_until_healthy(&mut self, pick_ports: bool) {
        let attempts = if pick_ports { 3 } else { 1 };
        for attempt in 1..=attempts {
            if pick_ports {
                self.http_port = free_port();
                self.quic_port = free_port();
                while self.quic_port == self.http_port {
                    self.quic_port = free_port();
                }
            }
            self.starts += 1;
            let mut command = self.command();
            command
                .arg("serve")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--http")
                .arg(self.http_addr())
                .arg("--quic")
                .arg(self.quic_addr());
            if self.options.demo {
                command.arg("--demo");
            }
            command
                .args(&self.options.args)
                .stdin(Stdio::null())
                .stdout(append_log(&self.stdout_log()))
                .stderr(append_log(&self.stderr_log()));
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
            self.child = Some(child);
            match self.wait_healthy().await {
                Ok(()) => return,
                Err(exit) => {
                    self.child = None;
                    let stderr = log_tail(&self.stderr_log(), 50);
                    let port_taken = stderr.contains("in use") || stderr.contains("AddrInUse");
                    if pick_ports && port_taken && attempt < attempts {
                        continue;
                    }
                    panic!(
                        "dynserv serve (start #{}) exited with {exit} before answering \
                         /healthz\n{}",
                        self.starts,
                        self.logs()
                    );
                }
            }
        }
    }

    /// Waits for `GET /healthz` to answer 200. Returns the exit status as text when the
    /// process died first; panics on timeout.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("building an HTTP client");
        let url = format!("{}/healthz", self.base_url());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(status.to_string());
                }
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    // Another test's server may have taken our port between free_port
                    // and the spawn: then ours fails to bind and exits at once. Only a
                    // child still alive a moment after the answer is the one answering.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    if let Some(child) = self.child.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(status.to_string());
                        }
                    }
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "dynserv serve did not answer 200 on {url} within {STARTUP_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::kill_now(&mut child);
        }
        if self.options.tmpfs_mib.is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.data_dir)
                .status();
        }
        if crate::keep_artifacts() {
            eprintln!("{}", self.logs());
            if let Some(root) = self.root.take() {
                eprintln!("kept the test's temp dir: {}", root.keep().display());
            }
        }
    }
}
