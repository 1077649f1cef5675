//! A `dynserv serve` child process on its own temp data dir and loopback ports.
//!
//! The store is the embedded one (redb in the data dir) unless the control plane is
//! given PostgreSQL: explicitly ([`ControlPlaneBuilder::database_url`],
//! [`ControlPlaneBuilder::postgres`]), or for every control plane of the run with
//! `DYNSERV_TEST_BACKEND=postgres` (what the second pass of `scripts/test.sh` sets). Then
//! each control plane started without a database URL of its own gets a fresh
//! [`TestDatabase`] and [`TEST_SESSION_SECRET`]; [`ControlPlane::replica`] starts more
//! replicas on the same database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{
    append_log, dynserv_binary, expect_success, free_port, log_tail, terminate, Api, TestDatabase,
};

/// How long a starting control plane may take to answer `GET /healthz`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping control plane may take after SIGTERM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Hetzner API base for tests that set none: a closed loopback port, so nothing in a
/// test ever reaches the real API.
const UNREACHABLE_HETZNER: &str = "http://127.0.0.1:9/v1";

/// The variable choosing the store of every control plane the harness starts without a
/// database URL of its own: `postgres` (a fresh [`TestDatabase`] each), or unset or
/// `redb` (the embedded store in the data dir).
pub const BACKEND_VAR: &str = "DYNSERV_TEST_BACKEND";

/// The `SESSION_SECRET` of control planes the harness puts on a [`TestDatabase`]: fixed,
/// so replicas of one database share it (PostgreSQL requires one set, the same on each).
pub const TEST_SESSION_SECRET: &str =
    "dynserv-test-session-secret-4f1c9a7e2b5d8c3f6a0e9b1d7c4a2f8e";

/// Whether `DYNSERV_TEST_BACKEND` asks for PostgreSQL; panics on a value it does not know,
/// so a typo never silently tests the other backend.
fn postgres_backend_requested() -> bool {
    match std::env::var(BACKEND_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Ok("") | Err(std::env::VarError::NotPresent) => false,
        Ok(other) => panic!("{BACKEND_VAR} must be `postgres` or `redb` (or unset), not {other:?}"),
        Err(std::env::VarError::NotUnicode(value)) => {
            panic!("{BACKEND_VAR} must be `postgres` or `redb` (or unset), not {value:?}")
        }
    }
}

/// Options for [`ControlPlane`]; start with [`ControlPlane::builder`].
#[derive(Debug, Default, Clone)]
pub struct ControlPlaneBuilder {
    demo: bool,
    /// Size in MiB of a tmpfs mounted on the data dir (needs root), for full-disk tests.
    tmpfs_mib: Option<u64>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// `DATABASE_URL` for `serve` and the CLI commands.
    database_url: Option<String>,
    /// `SESSION_SECRET` for `serve` and the CLI commands.
    session_secret: Option<String>,
    /// A fresh [`TestDatabase`] whatever `DYNSERV_TEST_BACKEND` says.
    postgres: bool,
    /// The test database `database_url` points at, shared with the replicas: dropped
    /// when the last control plane on it is.
    database: Option<Arc<TestDatabase>>,
    /// Fixed ports instead of free ones picked at start.
    http_port: Option<u16>,
    quic_port: Option<u16>,
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

    /// Sets `DATABASE_URL` for `serve` and the CLI commands (a `postgres://…` URL, or a
    /// redb file path). A control plane given one gets no [`TestDatabase`] of its own,
    /// whatever `DYNSERV_TEST_BACKEND` says, and no session secret unless one is set.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_string());
        self
    }

    /// Sets `SESSION_SECRET` for `serve` and the CLI commands.
    pub fn session_secret(mut self, secret: &str) -> Self {
        self.session_secret = Some(secret.to_string());
        self
    }

    /// Puts the control plane on a fresh [`TestDatabase`] with [`TEST_SESSION_SECRET`],
    /// also when `DYNSERV_TEST_BACKEND` is unset (for tests of PostgreSQL itself: replicas,
    /// `migrate`).
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    /// Serves HTTP on this loopback port instead of a free one.
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// Serves the fleet gateway (QUIC) on this loopback UDP port instead of a free one.
    pub fn quic_port(mut self, port: u16) -> Self {
        self.quic_port = Some(port);
        self
    }

    /// Whether `DATABASE_URL` is given, through [`ControlPlaneBuilder::database_url`] or
    /// [`ControlPlaneBuilder::env`].
    fn has_database_url(&self) -> bool {
        self.database_url.is_some() || self.env.iter().any(|(key, _)| key == "DATABASE_URL")
    }

    /// Starts the server and waits until `GET /healthz` answers 200.
    pub async fn start(mut self) -> ControlPlane {
        if !self.has_database_url() && (self.postgres || postgres_backend_requested()) {
            let database = TestDatabase::create();
            self.database_url = Some(database.url().to_string());
            self.database = Some(Arc::new(database));
            self.session_secret
                .get_or_insert_with(|| TEST_SESSION_SECRET.to_string());
        }
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

    /// The `DATABASE_URL` this control plane runs with, when it has one (PostgreSQL, or
    /// a redb path given explicitly).
    pub fn database_url(&self) -> Option<&str> {
        self.options
            .env
            .iter()
            .rev()
            .find(|(key, _)| key == "DATABASE_URL")
            .map(|(_, value)| value.as_str())
            .or(self.options.database_url.as_deref())
    }

    /// The `SESSION_SECRET` this control plane runs with, when one is set.
    pub fn session_secret(&self) -> Option<&str> {
        self.options
            .env
            .iter()
            .rev()
            .find(|(key, _)| key == "SESSION_SECRET")
            .map(|(_, value)| value.as_str())
            .or(self.options.session_secret.as_deref())
    }

    /// Options for another replica on this control plane's PostgreSQL database: the
    /// same `DATABASE_URL`, `SESSION_SECRET` and environment, its own data dir and
    /// ports, no `--demo` and no extra arguments. The test database stays until the last
    /// control plane on it is dropped. Panics when this control plane is not on
    /// PostgreSQL.
    ///
    /// ```no_run
    /// # async fn example() {
    /// let first = dynserv_tests::ControlPlane::builder().postgres().start().await;
    /// let second = first.replica().start().await;
    /// let agent_servers = format!("{},{}", first.quic_addr(), second.quic_addr());
    /// # }
    /// ```
    pub fn replica(&self) -> ControlPlaneBuilder {
        let database_url = match self.database_url() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                url.to_string()
            }
            other => panic!(
                "replica() needs a control plane on PostgreSQL (start it with .postgres(), \
                 .database_url(\"postgres://…\") or {BACKEND_VAR}=postgres); its DATABASE_URL \
                 is {other:?}"
            ),
        };
        ControlPlaneBuilder {
            env: self.options.env.clone(),
            database_url: Some(database_url),
            session_secret: self.session_secret().map(str::to_string),
            database: self.options.database.clone(),
            ..ControlPlaneBuilder::default()
        }
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
    /// Sets an environment variable of `serve` from the next [`ControlPlane::start_again`]
    /// on (for example a faked clock, see [`crate::faked_clock`]).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.options.env.retain(|(k, _)| k != key);
        self.options.env.push((key.to_string(), value.to_string()));
    }

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
        if let Some(url) = &self.options.database_url {
            command.env("DATABASE_URL", url);
        }
        if let Some(secret) = &self.options.session_secret {
            command.env("SESSION_SECRET", secret);
        }
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

    /// Spawns `serve` and waits for `/healthz`. On a fresh start, ports not fixed by the
    /// options are picked here and picked again (up to three times) when the server
    /// could not bind them because another process took them in between.
    async fn spawn_until_healthy(&mut self, pick_ports: bool) {
        let picks_a_port = self.options.http_port.is_none() || self.options.quic_port.is_none();
        let attempts = if pick_ports && picks_a_port { 3 } else { 1 };
        for attempt in 1..=attempts {
            if pick_ports {
                self.http_port = self.options.http_port.unwrap_or_else(free_port);
                self.quic_port = self.options.quic_port.unwrap_or_else(free_port);
                while self.options.quic_port.is_none() && self.quic_port == self.http_port {
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
                    if port_taken && attempt < attempts {
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
            // Only the last control plane on a test database decides its fate; the
            // database itself is dropped after this (the process is gone by now).
            if let Some(database) = self.options.database.as_mut().and_then(Arc::get_mut) {
                database.keep();
            }
        }
    }
}
