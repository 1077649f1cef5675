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
