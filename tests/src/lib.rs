//! Shared harness for the end-to-end tests: it starts the real `dynserv` and
//! `dynserv-agent` binaries, a headless Chromium through chromedriver, and gives the tests
//! small typed handles on them.
//!
//! What lives here: locating the built binaries, free loopback ports, [`ControlPlane`]
//! (a `dynserv serve` child process on a temp data dir), [`Api`] (a JSON client with
//! bearer tokens), [`Agent`] (an enrolled `dynserv-agent run` child), [`AptLock`] (one
//! test at a time runs apt on the machine), [`Browser`] (a WebDriver session),
//! [`TestDatabase`] (a fresh PostgreSQL database, see [`postgres`]),
//! [`WebhookReceiver`] and [`SmtpSink`] (what the alert tests receive alerts with), [`Sshd`] (a real
//! OpenSSH server on a loopback port with its own keys), and
//! [`eventually`] for polling. What does not: assertions about
//! the product; those belong in the test files under `tests/tests/`.
//!
//! The binaries are not built by `cargo test -p dynserv-tests`; build them first with
//! `cargo build --workspace` (the README's test command, `scripts/test.sh`, does).
//!
//! ```no_run
//! use dynserv_tests::{Browser, ControlPlane};
//! use serde_json::json;
//!
//! # async fn example() {
//! let cp = ControlPlane::builder().demo().start().await;
//! let admin = cp.api_as("admin");
//! let (status, me) = admin.get("/api/v1/me").await;
//! assert_eq!(status, 200, "{me}");
//! let (status, _) = admin.post("/api/v1/projects", &json!({"name": "Acme"})).await;
//! assert_eq!(status, 201);
//!
//! let browser = Browser::start(&cp.base_url()).await;
//! browser.login("admin", "admin123").await;
//! browser.screenshot(&cp.artifact("dashboard.png")).await;
//! # }
//! ```
//!
//! Every child process is killed when its handle is dropped; when a test panics (or
//! `DYNSERV_TEST_KEEP=1` is set), the handles print the tail of their logs and keep
//! their temp directory for inspection.

mod agent;
mod api;
mod apt;
mod browser;
mod compose;
mod control_plane;
mod pages;
pub mod postgres;
mod receivers;
mod s3;
mod sshd;

pub use agent::Agent;
pub use api::Api;
pub use apt::AptLock;
pub use browser::Browser;
pub use compose::{require_docker, ComposeProject, TEST_IMAGE};
pub use control_plane::{ControlPlane, ControlPlaneBuilder, BACKEND_VAR, TEST_SESSION_SECRET};
pub use pages::{csrf_of, PageClient};
pub use postgres::TestDatabase;
pub use receivers::{ReceivedMail, ReceivedRequest, SmtpSink, WebhookReceiver};
pub use s3::S3Server;
pub use sshd::{keygen, InstalledAgent, KeyPair, Sshd};

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output};
use std::time::{Duration, Instant};

/// The command that installs what the end-to-end tests need and runs them all.
pub const TEST_COMMAND: &str = "scripts/test.sh";

/// Path of a binary built by this workspace (`dynserv`, `dynserv-agent`), found next to
/// the running test executable: `target/<profile>/`, the parent of its `deps/` folder.
///
/// An environment variable named after the binary (`DYNSERV_BIN`, `DYNSERV_AGENT_BIN`)
/// overrides the lookup. Panics with the build command when the binary is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let override_var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&override_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "{name} is not built: expected it at {}. Run `cargo build --workspace` first \
             (the README's test command `{TEST_COMMAND}` does), or set {override_var}",
            path.display()
        );
    }
    path
}

/// The workspace's root folder (where `scripts/` and the test venvs live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// Path of the `dynserv` control-plane binary.
pub fn dynserv_binary() -> PathBuf {
    workspace_binary("dynserv")
}

/// Path of the `dynserv-agent` binary.
pub fn agent_binary() -> PathBuf {
    workspace_binary("dynserv-agent")
}

/// A loopback port that is free for both TCP and UDP at the time of the call.
///
/// The port is released before returning, so another process can take it in between;
/// [`ControlPlane`] retries with new ports when its server reports an address in use.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("binding a loopback TCP port");
        let port = tcp
            .local_addr()
            .expect("bound socket has an address")
            .port();
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no loopback port free for both TCP and UDP in 100 tries");
}

/// A loopback TCP port free at the time of the call.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("binding a loopback TCP port")
        .port()
}

/// A loopback UDP port free at the time of the call.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|socket| socket.local_addr())
        .expect("binding a loopback UDP port")
        .port()
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that value; panics
/// after `timeout` naming `what` was awaited.
///
/// ```no_run
/// # async fn example(api: dynserv_tests::Api) {
/// use std::time::Duration;
/// let agent = dynserv_tests::eventually(Duration::from_secs(15), "agent connected", || async {
///     let (_, agents) = api.get("/api/v1/agents").await;
///     agents.as_array()?.iter().find(|a| a["connected"] == true).cloned()
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Today's date in UTC as `YYYY-MM-DD`: the control plane and the tests share the
/// machine's clock, so this is the control plane's today.
pub fn utc_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Asserts a finished command succeeded and returns its trimmed stdout; on failure the
/// panic shows the command's description, exit status, stdout and stderr.
pub fn expect_success(what: &str, output: &Output) -> String {
    if !output.status.success() {
        panic!(
            "{what} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The last `max_lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    match std::fs::File::open(path) {
        Ok(file) => {
            let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
            let start = lines.len().saturating_sub(max_lines);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The environment that runs a process on a clock `offset` ahead (libfaketime's syntax:
/// `+70d`), wall clock only: timers and timeouts (the monotonic clock) keep real time.
/// Needs Debian's `faketime` package, which the README's test command installs.
pub fn faked_clock(offset: &str) -> Vec<(&'static str, String)> {
    const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(LIBRARY).is_file(),
        "{LIBRARY} is missing (Debian package faketime): run the README's test command \
         `{TEST_COMMAND}`, which installs it"
    );
    vec![
        ("LD_PRELOAD", LIBRARY.to_string()),
        ("FAKETIME", offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ]
}

/// Whether a handle being dropped keeps its temp dir and prints its logs: when the test
/// is failing (panicking), or always with `DYNSERV_TEST_KEEP=1` (to look at screenshots
/// and logs of a passing test).
pub fn keep_artifacts() -> bool {
    std::thread::panicking() || std::env::var_os("DYNSERV_TEST_KEEP").is_some_and(|v| v == "1")
}

/// Sends SIGTERM to a child and waits up to `grace` for it to exit, then SIGKILLs it.
/// Returns its exit status when it was still there to be reaped.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped (try_wait above returned None), so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// SIGKILLs a child and reaps it.
pub(crate) fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Opens a log file for a child's stdout or stderr, appending so that restarts of the
/// same process keep one history.
pub(crate) fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening log file {}: {e}", path.display()))
}

/// Environment variables of the product that must not leak from the developer's shell
/// into a test's processes.
pub(crate) const PRODUCT_ENV: &[&str] = &[
    "DYNSERV_DATA_DIR",
    "DYNSERV_TRUSTED_PROXIES",
    "DYNSERV_HTTP",
    "DYNSERV_QUIC",
    "DYNSERV_CONFIG",
    "DYNSERV_PUBLIC_URL",
    "DYNSERV_PUBLIC_QUIC",
    "DYNSERV_AGENT_STATE_DIR",
    "DYNSERV_ENROLL_TOKEN",
    "DYNSERV_AGENT_HOST_ID",
    "DYNSERV_AGENT_BINARY",
    "DYNSERV_AGENT_SUPERVISED",
    "DYNSERV_AGENT_UPGRADE_TRIAL_S",
    "SESSION_SECRET",
    "DATABASE_URL",
    "HETZNER_API_TOKEN",
    "HETZNER_API_URL",
    "DYNSERV_HETZNER_SYNC_SECS",
    "DYNSERV_PROVISION_BOOT_SECS",
    "DYNSERV_PROVISION_ENROLL_SECS",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A port from free_port can be bound for both TCP and UDP right after.
    #[test]
    fn free_port_is_free_for_tcp_and_udp() {
        let port = free_port();
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        TcpListener::bind(address).expect("tcp bind");
        UdpSocket::bind(address).expect("udp bind");
    }

    /// log_tail keeps only the last lines.
    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "one\ntwo\nthree\n").expect("write");
        assert_eq!(log_tail(&path, 2), "two\nthree");
        assert!(log_tail(&dir.path().join("missing"), 2).starts_with("(cannot read"));
    }

    /// eventually returns the first Some.
    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "third call", || {
            calls += 1;
            let current = calls;
            async move { (current == 3).then_some(current) }
        })
        .await;
        assert_eq!(value, 3);
    }
}
