//! The PostgreSQL test harness itself (src/postgres.rs): databases are fresh, separate
//! and gone after their handle is dropped.

use dynserv_tests::postgres::admin_url;
use dynserv_tests::TestDatabase;

/// Whether a database of that name exists on the test server.
fn database_exists(name: &str) -> bool {
    let mut admin =
        postgres::Client::connect(&admin_url(), postgres::NoTls).expect("admin connection");
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .expect("querying pg_database")
        .is_some()
}

/// Two test databases are distinct and empty: a row written in one is not seen in the
/// other, and dropping a handle drops its database, even with a session still open.
#[test]
fn test_databases_are_separate_and_dropped() {
    let first = TestDatabase::create();
    let second = TestDatabase::create();
    assert_ne!(first.name(), second.name());
    assert_ne!(first.url(), second.url());
    assert!(first.url().starts_with("postgres://"), "{}", first.url());
    assert!(
        first.url().ends_with(&format!("/{}", first.name())),
        "{}",
        first.url()
    );

    let mut one = first.connect();
    one.batch_execute("CREATE TABLE marker (value text); INSERT INTO marker VALUES ('first')")
        .expect("writing in the first database");
    let rows = one
        .query("SELECT value FROM marker", &[])
        .expect("reading it back");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "first");

    let mut two = second.connect();
    let seen = two
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'marker'", &[])
        .expect("looking for the table in the second database");
    assert!(
        seen.is_none(),
        "the second database sees the first one's table"
    );

    let first_name = first.name().to_string();
    assert!(database_exists(&first_name));
    // `one` is still connected: the drop must end that session, not fail on it.
    drop(first);
    assert!(
        !database_exists(&first_name),
        "{first_name} still exists after its drop"
    );
    assert!(
        one.query("SELECT 1", &[]).is_err(),
        "a session in the dropped database is still usable"
    );
    assert!(database_exists(second.name()));
}

/// A test database can be made and dropped from inside an async test (the synchronous
/// client's runtime must not nest in the test's).
#[tokio::test]
async fn test_database_works_inside_a_runtime() {
    let database = TestDatabase::create();
    let name = database.name().to_string();
    let exists = tokio::task::spawn_blocking({
        let name = name.clone();
        move || database_exists(&name)
    })
    .await
    .expect("spawn_blocking");
    assert!(exists);
    drop(database);
    let exists = tokio::task::spawn_blocking(move || database_exists(&name))
        .await
        .expect("spawn_blocking");
    assert!(!exists);
}

/// Without DYNSERV_TEST_DATABASE_URL, a test process starts its own cluster and stops
/// it (directory removed, port closed) when it exits.
#[test]
fn private_cluster_is_stopped_at_exit() {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--exact",
            "test_databases_are_separate_and_dropped",
            "--nocapture",
        ])
        .env_remove(dynserv_tests::postgres::DATABASE_URL_VAR)
        .output()
        .expect("running this test binary again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child test failed:\n{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.starts_with("started a private PostgreSQL"))
        .unwrap_or_else(|| panic!("the child started no private cluster:\n{stderr}"));
    let dir = line
        .split("(data in ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no data dir in: {line}"));
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in: {line}"));
    assert!(
        !std::path::Path::new(dir).exists(),
        "{dir} is still there after the child exited"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the private cluster still listens on {port}"
    );
}

/// The harness's store options reach `serve`: DATABASE_URL (here a redb file elsewhere)
/// replaces DATA_DIR/dynserv.redb, SESSION_SECRET replaces the generated secret file,
/// and fixed HTTP and QUIC ports are the ones served.
#[tokio::test]
async fn control_plane_database_secret_and_port_options_reach_serve() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let store = elsewhere.path().join("store.redb");
    let store_text = store.to_str().expect("utf-8 temp path");
    let http_port = dynserv_tests::free_port();
    let mut quic_port = dynserv_tests::free_port();
    while quic_port == http_port {
        quic_port = dynserv_tests::free_port();
    }
    let control_plane = dynserv_tests::ControlPlane::builder()
        .database_url(store_text)
        .session_secret(dynserv_tests::TEST_SESSION_SECRET)
        .http_port(http_port)
        .quic_port(quic_port)
        .start()
        .await;

    assert_eq!(
        control_plane.base_url(),
        format!("http://127.0.0.1:{http_port}")
    );
    assert_eq!(control_plane.quic_addr(), format!("127.0.0.1:{quic_port}"));
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", quic_port)).is_err(),
        "nothing holds the fixed QUIC port {quic_port}"
    );
    assert_eq!(control_plane.database_url(), Some(store_text));
    assert_eq!(
        control_plane.session_secret(),
        Some(dynserv_tests::TEST_SESSION_SECRET)
    );
    assert!(
        store.is_file(),
        "serve did not open the store at {store_text}"
    );
    assert!(!control_plane.data_dir().join("dynserv.redb").exists());
    assert!(!control_plane.data_dir().join("secret").exists());
}
