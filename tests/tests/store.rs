//! The store's conformance suite (`dynserv::store::conformance`) on PostgreSQL: every
//! case the redb unit tests run, each on a fresh database of the test cluster.

use dynserv::store::conformance::CASES;
use dynserv::store::Store;
use dynserv_tests::postgres::TestDatabase;

/// Runs one conformance case on a fresh PostgreSQL database.
fn run(name: &str) {
    let (_, case) = CASES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no conformance case {name}"));
    let database = TestDatabase::create();
    let url = database.url().to_string();
    let open = move || Store::connect(&url);
    case(&open);
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            /// The conformance case of the same name, on PostgreSQL.
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        /// Every conformance case has a test here (a new case cannot be forgotten).
        #[test]
        fn every_case_runs_on_postgres() {
            let here = [$(stringify!($name)),*];
            for (name, _) in CASES {
                assert!(here.contains(name), "the conformance case {name} does not run on PostgreSQL");
            }
        }
    };
}

cases!(
    reopen_finds_everything,
    sealed_records_are_encrypted_at_rest,
    a_failed_write_keeps_nothing,
    a_change_refused_at_commit_keeps_nothing,
    a_backup_is_a_consistent_copy,
    an_insert_never_replaces_what_exists,
    index_pages_walk_both_ways_from_a_cursor,
    records_pages_walk_both_ways,
    deferring_reads_are_answered_while_a_writer_works,
    reads_and_log_tops_survive_sending,
    counters_follow_their_transactions,
    logs_append_once_and_delete_in_batches,
    concurrent_writers_never_lose_an_update,
    a_name_is_taken_once_across_handles,
    a_newer_schema_is_refused,
    a_copy_keeps_every_record,
    a_writer_reads_its_own_writes,
    a_large_transaction_commits_whole,
    reads_asked_ahead_answer_as_asked,
    a_change_sent_ahead_that_fails_keeps_nothing,
);

/// A connection the server closed while it waited in the pool is replaced when it is
/// next taken: the store calls after it work, with no error for the caller.
#[test]
fn connections_closed_by_the_server_are_replaced() {
    use dynserv::store::Read as _;
    let database = TestDatabase::create();
    let store = Store::connect(database.url()).unwrap();
    let look = || store.read(|r| r.index_get("things", "k")).unwrap();
    // Several connections in the pool: readers on several threads at once.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(look);
        }
    });
    let mut admin = database.connect();
    let others = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                  WHERE datname = $1 AND pid <> pg_backend_pid()";
    let killed = admin.query(others, &[&database.name()]).unwrap().len();
    assert!(killed >= 1, "the store kept no connection open");
    let left =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin
        .query_one(left, &[&database.name()])
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the backends did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for _ in 0..8 {
        assert_eq!(look(), None);
    }
    store.write(|w| w.index_put("things", "k", "a")).unwrap();
    assert_eq!(look().as_deref(), Some("a"));
}

/// Output chunks are compressed with lz4, not pglz (much slower to compress, on the
/// path of every line to a viewer on another replica): the column is set when the
/// store opens a database, a second store on it (another replica) keeps it, and a
/// chunk stored through the store reads back whole.
#[test]
fn output_chunks_are_compressed_with_lz4() {
    use dynserv::store::Read as _;
    let database = TestDatabase::create();
    let store = Store::connect(database.url()).unwrap();
    let again = Store::connect(database.url()).unwrap();
    let text: Vec<u8> = (0..4_000)
        .flat_map(|i| format!("line {i:06} of a job's output\n").into_bytes())
        .collect();
    store
        .write(|w| w.log_append("e", 0, &text).map(|_| ()))
        .unwrap();
    let mut admin = database.connect();
    let column: i8 = admin
        .query_one(
            "SELECT attcompression FROM pg_attribute \
             WHERE attrelid = 'dynserv_logs'::regclass AND attname = 'chunk'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(column as u8, b'l', "the chunk column's compression");
    let stored: Option<String> = admin
        .query_one(
            "SELECT pg_column_compression(chunk) FROM dynserv_logs WHERE execution_id = 'e'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored.as_deref(), Some("lz4"));
    assert_eq!(again.read(|r| r.log_range("e", 0, 1)).unwrap()[0].1, text);
}

/// A writer's notifications (`Writer::notify`: how a replica tells the others what it
/// stored, for their viewers) reach the listeners with its commit, in the order asked,
/// also from a transaction that changes nothing else, and never from one rolled back.
#[test]
fn notifications_go_out_with_the_commit_and_never_after_a_rollback() {
    use dynserv::store::Read as _;
    use postgres::fallible_iterator::FallibleIterator as _;
    let database = TestDatabase::create();
    let store = Store::connect(database.url()).unwrap();
    let mut listener = database.connect();
    listener.batch_execute("LISTEN dynserv_test").unwrap();
    let failed: anyhow::Result<()> = store.write(|w| {
        w.notify("dynserv_test", "rolled back".into())?;
        w.log_append("e", 0, b"kept?")?;
        anyhow::bail!("the caller's own error")
    });
    assert!(failed.is_err());
    store
        .write(|w| {
            w.notify("dynserv_test", "first".into())?;
            w.log_append("e", 0, b"output")?;
            w.notify("dynserv_test", "second".into())
        })
        .unwrap();
    store
        .write(|w| w.notify("dynserv_test", "third".into()))
        .unwrap();
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut arriving = notifications.timeout_iter(std::time::Duration::from_secs(1));
    while let Some(note) = arriving.next().unwrap() {
        got.push(note.payload().to_string());
    }
    assert_eq!(got, ["first", "second", "third"]);
    assert_eq!(store.read(|r| r.log_range("e", 0, 2)).unwrap().len(), 1);
}

/// Reads and deletes by a list of keys (`dynserv::store::pg::BY_KEYS`) probe the
/// primary key once per key, in a session set up as the store sets up its own
/// (`SESSION_SETUP`), even when the planner's statistics were taken while the tables
/// were nearly empty and thousands of rows came since (a fleet's first fan-out): no
/// statement scans a table or filters its rows against the keys asked, whether its
/// plan is made for the keys given or was made generic and cached while the tables
/// were small.
#[test]
fn reads_by_keys_probe_the_index_whatever_the_statistics() {
    use dynserv::store::pg::{BY_KEYS, SESSION_SETUP};
    let database = TestDatabase::create();
    // The schema.
    drop(Store::connect(database.url()).unwrap());
    let mut admin = database.connect();
    admin.batch_execute(SESSION_SETUP).unwrap();
    let fill = |from: i32, to: i32| {
        format!(
            "INSERT INTO dynserv_records SELECT 'things', 'k' || i, '\\x00' FROM generate_series({from}, {to}) i;
             INSERT INTO dynserv_index SELECT 'things', 'k' || i, 'k' || i FROM generate_series({from}, {to}) i;
             INSERT INTO dynserv_counters SELECT 'k' || i, i FROM generate_series({from}, {to}) i;
             INSERT INTO dynserv_logs SELECT 'k' || i, 0, '\\x00' FROM generate_series({from}, {to}) i;"
        )
    };
    for table in [
        "dynserv_records",
        "dynserv_index",
        "dynserv_counters",
        "dynserv_logs",
    ] {
        admin
            .batch_execute(&format!(
                "ALTER TABLE {table} SET (autovacuum_enabled = false)"
            ))
            .unwrap();
    }
    admin.batch_execute(&fill(1, 10)).unwrap();
    admin.batch_execute("ANALYZE").unwrap();
    let keys: Vec<String> = (1..=5_000).map(|i| format!("'k{}'", i * 6)).collect();
    let keys = format!("ARRAY[{}]::text[]", keys.join(","));
    // Each statement prepared while the tables are small; its arguments by type.
    let mut calls = Vec::new();
    for (i, sql) in BY_KEYS.iter().enumerate() {
        admin
            .batch_execute(&format!("PREPARE q{i} AS {sql}"))
            .unwrap();
        let types: String = admin
            .query_one(
                "SELECT parameter_types::text FROM pg_prepared_statements WHERE name = $1",
                &[&format!("q{i}")],
            )
            .unwrap()
            .get(0);
        let args: Vec<&str> = types
            .trim_matches(['{', '}'])
            .split(',')
            .map(|t| {
                if t.ends_with("[]") {
                    keys.as_str()
                } else {
                    "'things'"
                }
            })
            .collect();
        calls.push((sql, format!("EXPLAIN EXECUTE q{i}({})", args.join(","))));
    }
    let plan_of = |admin: &mut postgres::Client, mode: &str, call: &str| {
        admin
            .batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .unwrap();
        let lines: Vec<String> = admin
            .query(call, &[])
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
        lines.join("\n")
    };
    // Generic plans made now, on the small tables, and cached.
    for (_, call) in &calls {
        plan_of(&mut admin, "force_generic_plan", call);
    }
    admin.batch_execute(&fill(11, 30_000)).unwrap();
    for (sql, call) in &calls {
        for (mode, plan) in [
            (
                "the cached generic plan",
                plan_of(&mut admin, "force_generic_plan", call),
            ),
            (
                "a custom plan",
                plan_of(&mut admin, "force_custom_plan", call),
            ),
        ] {
            assert!(
                !plan.contains("Seq Scan on dynserv_") && !plan.contains("Filter:"),
                "{sql}\nwith {mode} is planned as\n{plan}"
            );
        }
    }
}
