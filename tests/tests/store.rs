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
