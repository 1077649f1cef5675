//! PostgreSQL for the tests: a server to make databases in ([`admin_url`]) and a fresh,
//! uniquely named database per test ([`TestDatabase`]) that is dropped afterwards.
//!
//! The server is the one `scripts/test.sh` starts for the whole run and names in
//! `DYNSERV_TEST_DATABASE_URL` (a superuser URL). When that variable is unset (a test run
//! by hand), the first call starts a private throwaway cluster for this test process with
//! `scripts/test-postgres.sh start` (the same cluster `scripts/test.sh` starts: Debian's
//! `postgresql` binaries, the `postgres` user, 127.0.0.1 only, a free port). It is
//! stopped when the process ends: an `atexit` handler runs `scripts/test-postgres.sh
//! stop` on a normal exit (a failing test exits through `exit` too), and the watcher
//! that `start --watch PID` leaves in a session of its own stops it within a second
//! when the process is killed instead (a nextest timeout), even in the middle of
//! starting it.
//!
//! The client here is synchronous (the `postgres` crate). It runs its own small runtime,
//! which must not be started from inside an async task: [`TestDatabase`] does its work
//! on a separate thread, so it can be made and dropped anywhere; [`TestDatabase::connect`]
//! is for synchronous code (a `#[test]`, or `tokio::task::spawn_blocking`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The variable naming a PostgreSQL superuser URL the tests may create databases with.
pub const DATABASE_URL_VAR: &str = "DYNSERV_TEST_DATABASE_URL";

/// The superuser URL of the PostgreSQL the tests use: `DYNSERV_TEST_DATABASE_URL` when
/// set, else a private cluster started once for this process (see the module doc).
///
/// Panics naming what to install when there is no PostgreSQL to start.
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => start_private_cluster(),
    })
    .clone()
}

/// A database created for one test, dropped (`DROP DATABASE … WITH (FORCE)`, which
/// ends the sessions still in it) when this handle is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
    kept: bool,
}

impl TestDatabase {
    /// Creates a fresh, empty database with a name no other test uses.
    pub fn create() -> TestDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = admin_url();
        // The process id and a counter make it unique among running tests; the clock
        // also against a database left behind by a killed process of the same id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "dynserv_test_{}_{}_{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let statement = format!("CREATE DATABASE \"{name}\"");
        if let Err(e) = run_admin_statement(&admin_url, &statement) {
            panic!("creating test database {name} on {admin_url} failed: {e}");
        }
        TestDatabase {
            url: url_with_database(&admin_url, &name),
            name,
            admin_url,
            kept: false,
        }
    }

    /// The database's `postgres://…` URL, for `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A synchronous client connected to this database. Call it from synchronous code
    /// only (see the module doc).
    pub fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.url))
    }

    /// Keeps the database when this handle is dropped (to look at it after a failing
    /// test), and says so on stderr. A private cluster goes at exit all the same, so
    /// there this only says how to keep one.
    pub fn keep(&mut self) {
        if self.kept {
            return;
        }
        if PRIVATE_CLUSTER_DIR.get().is_some() {
            eprintln!(
                "the test's database {} goes with this process's private PostgreSQL; \
                 set {DATABASE_URL_VAR} to a server of your own to keep it",
                self.url
            );
            return;
        }
        eprintln!("kept the test's database: {}", self.url);
        self.kept = true;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Never panic in drop: the test may be unwinding already.
        if let Err(e) = run_admin_statement(&self.admin_url, &statement) {
            eprintln!("dropping test database {} failed: {e}", self.name);
        }
    }
}

/// Runs one statement as the superuser, on a thread of its own so that the client's
/// runtime never nests in the caller's.
fn run_admin_statement(admin_url: &str, statement: &str) -> Result<(), postgres::Error> {
    let admin_url = admin_url.to_string();
    let statement = statement.to_string();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin_url, postgres::NoTls)?;
        client.batch_execute(&statement)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `url` with its database (the path) replaced by `database`; user, password, host,
/// port and query parameters (`sslmode`, …) stay.
fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `scripts/test-postgres.sh`, the one definition of the throwaway cluster.
fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("test-postgres.sh")
}

/// The data directory of this process's private cluster, for the exit handler.
static PRIVATE_CLUSTER_DIR: OnceLock<String> = OnceLock::new();

/// Starts this process's private cluster and arranges its stop (see the module doc);
/// returns its superuser URL.
fn start_private_cluster() -> String {
    let script = cluster_script();
    // `--watch`: the script's watcher stops the cluster once this process is gone, also
    // when it is killed (a nextest timeout) rather than exiting.
    let output = Command::new(&script)
        .arg("start")
        .arg("--watch")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} start: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        panic!(
            "the tests need PostgreSQL and found none: install Debian's `postgresql` package \
             (apt-get install postgresql; {} does), or set {DATABASE_URL_VAR} to the \
             superuser URL of a running server ({})",
            crate::TEST_COMMAND,
            stderr.trim()
        );
    }
    if !output.status.success() {
        panic!(
            "starting a private PostgreSQL for the tests ({} start) failed with {}:\n{stderr}",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{} start printed no {key}:\n{stdout}", script.display()))
    };
    let url = value(DATABASE_URL_VAR);
    let dir = value("DYNSERV_TEST_PG_DIR");
    eprintln!("started a private PostgreSQL for this test process at {url} (data in {dir}, stopped at exit)");
    let _ = PRIVATE_CLUSTER_DIR.set(dir);
    // SAFETY: atexit only records a function pointer. The handler is an `extern "C"`
    // function that cannot unwind: it only runs a process and ignores the outcome.
    unsafe {
        libc::atexit(stop_private_cluster_at_exit);
    }
    url
}

/// Exit handler: stops the private cluster and removes its directory.
extern "C" fn stop_private_cluster_at_exit() {
    if let Some(dir) = PRIVATE_CLUSTER_DIR.get() {
        let _ = Command::new(cluster_script())
            .arg("stop")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replacing the database keeps credentials, host, port and parameters.
    #[test]
    fn url_with_database_replaces_only_the_path() {
        let check = |url: &str, expected: &str| assert_eq!(url_with_database(url, "t1"), expected);
        check(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/t1",
        );
        check(
            "postgres://u:p@db/app?sslmode=require",
            "postgres://u:p@db/t1?sslmode=require",
        );
        check("postgresql://u@db:6543", "postgresql://u@db:6543/t1");
        check(
            "postgres://u@db?sslmode=disable",
            "postgres://u@db/t1?sslmode=disable",
        );
    }
}
