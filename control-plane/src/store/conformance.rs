//! The store's conformance suite: what every backend must do, written once against the
//! public interface. The unit tests run it on redb files; `tests/tests/store.rs` runs
//! it on PostgreSQL databases too.
//!
//! Each case gets `open`, which opens the same (initially empty) store every time it
//! is called, so a case can reopen it or hold two handles at once, as two replicas do.

use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{IndexScan, Read as _, Record, Store, SCHEMA_VERSION};
use crate::secrets::Keys;

/// Opens the store under test (the same one on every call).
pub type Open<'a> = &'a (dyn Fn() -> Result<Store> + Sync);

/// Opens a redb file the way [`Open`] wants: a real reopen when no handle is left,
/// else another handle on the open file (redb allows one per process).
pub fn redb_opener(path: std::path::PathBuf) -> impl Fn() -> Result<Store> + Sync {
    let last: std::sync::Mutex<Option<Store>> = std::sync::Mutex::new(None);
    move || {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = last.as_ref() {
            if store.handle_count() > 1 {
                return Ok(store.clone());
            }
        }
        *last = None;
        let store = Store::open(&path)?;
        *last = Some(store.clone());
        Ok(store)
    }
}

/// One conformance case.
pub type Case = fn(Open);

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("reopen_finds_everything", reopen_finds_everything),
    (
        "sealed_records_are_encrypted_at_rest",
        sealed_records_are_encrypted_at_rest,
    ),
    ("a_failed_write_keeps_nothing", a_failed_write_keeps_nothing),
    (
        "a_change_refused_at_commit_keeps_nothing",
        a_change_refused_at_commit_keeps_nothing,
    ),
    (
        "a_backup_is_a_consistent_copy",
        a_backup_is_a_consistent_copy,
    ),
    (
        "an_insert_never_replaces_what_exists",
        an_insert_never_replaces_what_exists,
    ),
    (
        "index_pages_walk_both_ways_from_a_cursor",
        index_pages_walk_both_ways_from_a_cursor,
    ),
    ("records_pages_walk_both_ways", records_pages_walk_both_ways),
    (
        "deferring_reads_are_answered_while_a_writer_works",
        deferring_reads_are_answered_while_a_writer_works,
    ),
    (
        "reads_and_log_tops_survive_sending",
        reads_and_log_tops_survive_sending,
    ),
    (
        "counters_follow_their_transactions",
        counters_follow_their_transactions,
    ),
    (
        "logs_append_once_and_delete_in_batches",
        logs_append_once_and_delete_in_batches,
    ),
    (
        "concurrent_writers_never_lose_an_update",
        concurrent_writers_never_lose_an_update,
    ),
    (
        "a_name_is_taken_once_across_handles",
        a_name_is_taken_once_across_handles,
    ),
    ("a_newer_schema_is_refused", a_newer_schema_is_refused),
    ("a_copy_keeps_every_record", a_copy_keeps_every_record),
    (
        "a_writer_reads_its_own_writes",
        a_writer_reads_its_own_writes,
    ),
    (
        "a_large_transaction_commits_whole",
        a_large_transaction_commits_whole,
    ),
    (
        "reads_asked_ahead_answer_as_asked",
        reads_asked_ahead_answer_as_asked,
    ),
    (
        "a_change_sent_ahead_that_fails_keeps_nothing",
        a_change_sent_ahead_that_fails_keeps_nothing,
    ),
];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thing {
    id: String,
    n: u32,
}

impl Record for Thing {
    const TABLE: &'static str = "conformance_things";
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Secret {
    id: String,
    value: String,
}

impl Record for Secret {
    const TABLE: &'static str = "conformance_secrets";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

fn thing(id: &str, n: u32) -> Thing {
    Thing { id: id.into(), n }
}

/// A reopened store finds every record, index entry and log chunk it was given.
fn reopen_finds_everything(open: Open) {
    {
        let store = open().unwrap();
        store
            .write(|w| {
                w.put(&thing("a", 1))?;
                w.put(&thing("b", 2))?;
                w.index_put("thing_by_n", "2", "b")?;
                assert!(w.log_append("x", 0, b"hello")?);
                assert!(!w.log_append("x", 0, b"again")?);
                w.log_append("x", 1, b"world")?;
                Ok(())
            })
            .unwrap();
    }
    let store = open().unwrap();
    assert_eq!(store.list::<Thing>().unwrap().len(), 2);
    assert_eq!(store.read(|r| r.count::<Thing>()).unwrap(), 2);
    assert_eq!(store.get::<Thing>("b").unwrap().unwrap().n, 2);
    assert!(store.get::<Thing>("zz").unwrap().is_none());
    store
        .read(|r| {
            assert_eq!(r.index_get("thing_by_n", "2")?.as_deref(), Some("b"));
            let logs = r.log_range("x", 0, 10)?;
            assert_eq!(logs, vec![(0, b"hello".to_vec()), (1, b"world".to_vec())]);
            assert_eq!(r.log_range("x", 1, 10)?.len(), 1);
            assert_eq!(r.log_range("x", 0, 1)?.len(), 1);
            Ok(())
        })
        .unwrap();
}

/// A sealed record is stored encrypted (neither the store nor a backup holds its
/// value), reads back with the key, and cannot be written or read without it.
fn sealed_records_are_encrypted_at_rest(open: Open) {
    let secret = Secret {
        id: "s".into(),
        value: "hunter2-very-secret".into(),
    };
    let backup_dir = tempfile::tempdir().unwrap();
    let backup = backup_dir.path().join("copy.redb");
    {
        let store = open().unwrap();
        let refused = store.put(&secret).unwrap_err();
        assert!(format!("{refused:#}").contains("no key"), "{refused:#}");
        store.seal_with(Keys::from_master(b"master"));
        store.put(&secret).unwrap();
        assert_eq!(store.get::<Secret>("s").unwrap(), Some(secret));
        let stored = store
            .read(|r| r.raw().get(Secret::TABLE, "s"))
            .unwrap()
            .unwrap();
        assert!(
            !stored.windows(7).any(|w| w == b"hunter2"),
            "the store holds the secret in clear"
        );
        store.backup_to(&backup).unwrap();
    }
    let bytes = std::fs::read(&backup).unwrap();
    assert!(
        !bytes.windows(7).any(|w| w == b"hunter2"),
        "the backup holds the secret in clear"
    );
    let store = open().unwrap();
    assert!(store.get::<Secret>("s").is_err(), "read without the key");
    store.seal_with(Keys::from_master(b"another master"));
    assert!(store.get::<Secret>("s").is_err(), "read with the wrong key");
}

/// A write closure that fails leaves nothing behind: records, index entries, logs,
/// counts.
fn a_failed_write_keeps_nothing(open: Open) {
    let store = open().unwrap();
    let result: Result<()> = store.write(|w| {
        w.put(&thing("a", 1))?;
        w.index_put("i", "k", "a")?;
        w.log_append("e", 0, b"x")?;
        w.counter_add("c", 3)?;
        anyhow::bail!("invalid")
    });
    assert!(result.is_err());
    assert!(store.get::<Thing>("a").unwrap().is_none());
    store
        .read(|r| {
            assert!(r.index_get("i", "k")?.is_none());
            assert!(r.log_range("e", 0, 9)?.is_empty());
            assert_eq!(r.counter("c")?, 0);
            Ok(())
        })
        .unwrap();
    // The store is still usable after the failed transaction.
    store.put(&thing("b", 2)).unwrap();
    assert!(store.get::<Thing>("b").unwrap().is_some());
}

/// A change the backend itself refuses when the transaction commits (PostgreSQL
/// refuses a NUL in text; redb takes it) fails the whole transaction, keeps nothing
/// of it, and leaves every connection usable.
fn a_change_refused_at_commit_keeps_nothing(open: Open) {
    let store = open().unwrap();
    let result: Result<()> = store.write(|w| {
        w.put(&thing("before", 1))?;
        w.put(&thing("nul\0id", 2))?;
        w.put(&thing("after", 3))
    });
    let kept = store.get::<Thing>("before").unwrap().is_some();
    match result {
        Err(_) => assert!(!kept, "a refused transaction keeps nothing"),
        Ok(()) => assert!(kept && store.get::<Thing>("after").unwrap().is_some()),
    }
    for n in 0..20 {
        store.put(&thing(&format!("next{n}"), n)).unwrap();
    }
    assert_eq!(
        store.get::<Thing>("next19").unwrap(),
        Some(thing("next19", 19))
    );
}

/// `insert` and `index_insert` add new keys and fail the transaction on one that
/// exists, whether it is in the store (PostgreSQL finds out at commit) or written by
/// the same transaction; a key the transaction inserted and then changed or removed
/// ends as it left it, and one it removed can be inserted again.
fn an_insert_never_replaces_what_exists(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            w.insert(&thing("a", 1))?;
            w.index_insert("i", "a", "a")?;
            assert!(w.insert(&thing("a", 2)).is_err(), "inserted twice");
            assert!(w.index_insert("i", "a", "x").is_err(), "inserted twice");
            Ok(())
        })
        .unwrap();
    let again: Result<()> = store.write(|w| {
        w.insert(&thing("b", 1))?;
        w.insert(&thing("a", 3))
    });
    assert!(again.is_err(), "a record that is in the store");
    let again: Result<()> = store.write(|w| {
        w.insert(&thing("b", 1))?;
        w.index_insert("i", "a", "y")
    });
    assert!(again.is_err(), "an index entry that is in the store");
    assert_eq!(store.get::<Thing>("a").unwrap(), Some(thing("a", 1)));
    assert!(store.get::<Thing>("b").unwrap().is_none(), "nothing kept");
    store
        .write(|w| {
            // Inserted, then changed.
            w.insert(&thing("c", 1))?;
            w.put(&thing("c", 2))?;
            w.index_insert("i", "c", "c1")?;
            w.index_put("i", "c", "c2")?;
            // Inserted, then removed.
            w.insert(&thing("d", 1))?;
            assert!(w.delete::<Thing>("d")?);
            w.index_insert("i", "d", "d")?;
            w.index_delete("i", "d")?;
            // Removed from the store, then inserted again.
            assert!(w.delete::<Thing>("a")?);
            w.insert(&thing("a", 4))?;
            w.index_delete("i", "a")?;
            w.index_insert("i", "a", "a4")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.get::<Thing>("c").unwrap(), Some(thing("c", 2)));
    assert!(store.get::<Thing>("d").unwrap().is_none());
    assert_eq!(store.get::<Thing>("a").unwrap(), Some(thing("a", 4)));
    store
        .read(|r| {
            assert_eq!(r.index_get("i", "c")?.as_deref(), Some("c2"));
            assert!(r.index_get("i", "d")?.is_none());
            assert_eq!(r.index_get("i", "a")?.as_deref(), Some("a4"));
            Ok(())
        })
        .unwrap();
}

/// A backup taken from a live store opens and holds the same records.
fn a_backup_is_a_consistent_copy(open: Open) {
    let store = open().unwrap();
    store.put(&thing("a", 7)).unwrap();
    store
        .write(|w| w.log_append("e", 3, b"x").map(|_| ()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.redb");
    store.backup_to(&out).unwrap();
    assert!(store.backup_to(&out).is_err(), "refuses to overwrite");
    let copy = Store::open(&out).unwrap();
    assert_eq!(copy.get::<Thing>("a").unwrap().unwrap().n, 7);
    assert_eq!(copy.read(|r| r.log_range("e", 0, 5)).unwrap().len(), 1);
}

fn keys(page: &[(String, String)]) -> Vec<&str> {
    page.iter().map(|(k, _)| k.as_str()).collect()
}

/// Index pages walk forwards and backwards, resume strictly after a cursor key, stay
/// inside their prefix and index, and see deletes made between pages.
fn index_pages_walk_both_ways_from_a_cursor(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            for n in 1..=7 {
                w.index_put("by_p", &format!("p/{n:03}"), &format!("id{n}"))?;
            }
            w.index_put("by_p", "q/001", "other-prefix")?;
            w.index_put("by_p2", "p/004", "other-index")?;
            w.index_put("by_o", "p/009", "index-before")?;
            // Keys that sort differently by bytes and by a language's collation.
            w.index_put("by_c", "B", "upper")?;
            w.index_put("by_c", "a", "lower")?;
            w.index_put("by_c", "é", "accent")?;
            Ok(())
        })
        .unwrap();
    let page = |scan: IndexScan| store.read(|r| r.index_page(&scan)).unwrap();
    let all = IndexScan::prefix("by_p", "p/", 100);
    let limited = |n: usize| IndexScan {
        limit: n,
        ..all.clone()
    };
    let cases: Vec<(IndexScan, Vec<&str>)> = vec![
        (
            all.clone(),
            vec![
                "p/001", "p/002", "p/003", "p/004", "p/005", "p/006", "p/007",
            ],
        ),
        (limited(3), vec!["p/001", "p/002", "p/003"]),
        (limited(3).backward(), vec!["p/007", "p/006", "p/005"]),
        (
            limited(3).after(Some("p/003".into())),
            vec!["p/004", "p/005", "p/006"],
        ),
        (
            limited(3).backward().after(Some("p/005".into())),
            vec!["p/004", "p/003", "p/002"],
        ),
        // A cursor that is no longer stored still resumes at the right place.
        (
            all.clone().after(Some("p/0045".into())),
            vec!["p/005", "p/006", "p/007"],
        ),
        (all.clone().backward().after(Some("p/001".into())), vec![]),
        (all.clone().after(Some("p/007".into())), vec![]),
        (limited(0), vec![]),
        (
            IndexScan::prefix("by_p", "", 100).backward(),
            vec![
                "q/001", "p/007", "p/006", "p/005", "p/004", "p/003", "p/002", "p/001",
            ],
        ),
        (IndexScan::prefix("by_p", "zz", 100), vec![]),
        (
            IndexScan {
                lower: "p/002".into(),
                upper: "p/004".into(),
                ..all.clone()
            }
            .backward(),
            vec!["p/004", "p/003", "p/002"],
        ),
        (IndexScan::prefix("by_c", "", 10), vec!["B", "a", "é"]),
    ];
    for (scan, expected) in cases {
        assert_eq!(keys(&page(scan.clone())), expected, "{scan:?}");
    }
    assert_eq!(
        store.read(|r| r.index_scan("by_p", "p/00")).unwrap().len(),
        7
    );
    // Deletes between two pages: the next page goes on from the cursor.
    let first = page(limited(2));
    store
        .write(|w| {
            w.index_delete("by_p", "p/003")?;
            w.index_delete("by_p", "p/002")
        })
        .unwrap();
    let cursor = first.last().map(|(k, _)| k.clone());
    let next = page(limited(2).after(cursor));
    assert_eq!(keys(&next), vec!["p/004", "p/005"]);
    assert_eq!(next[0].1, "id4");
}

/// Record tables page by id in both directions, like an index.
fn records_pages_walk_both_ways(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            for n in 1..=5 {
                w.put(&thing(&format!("t{n}"), n))?;
            }
            Ok(())
        })
        .unwrap();
    let page = |scan: IndexScan| {
        store
            .read(|r| r.records_page::<Thing>(&scan))
            .unwrap()
            .into_iter()
            .map(|t| t.n)
            .collect::<Vec<_>>()
    };
    let all = IndexScan::prefix("", "t", 2);
    assert_eq!(page(all.clone()), vec![1, 2]);
    assert_eq!(page(all.clone().after(Some("t2".into()))), vec![3, 4]);
    assert_eq!(page(all.clone().backward()), vec![5, 4]);
    assert_eq!(
        page(all.clone().backward().after(Some("t2".into()))),
        vec![1]
    );
    store
        .write(|w| w.delete::<Thing>("t3").map(|_| ()))
        .unwrap();
    assert_eq!(page(all.after(Some("t2".into()))), vec![4, 5]);
    assert!(!store.write(|w| w.delete::<Thing>("t3")).unwrap());
}

/// Kept counts add and subtract in the writer's transaction, never go below zero, and
/// vanish with a failed transaction.
fn counters_follow_their_transactions(open: Open) {
    let store = open().unwrap();
    store.write(|w| w.counter_add("n", 5).map(|_| ())).unwrap();
    store.write(|w| w.counter_add("n", -2).map(|_| ())).unwrap();
    let failed: Result<()> = store.write(|w| {
        w.counter_add("n", 100)?;
        anyhow::bail!("no")
    });
    assert!(failed.is_err());
    assert_eq!(store.read(|r| r.counter("n")).unwrap(), 3);
    store
        .write(|w| w.counter_add("n", -10).map(|_| ()))
        .unwrap();
    assert_eq!(store.read(|r| r.counter("n")).unwrap(), 0);
    assert_eq!(store.read(|r| r.counter("never")).unwrap(), 0);
}

/// A chunk is stored once per sequence number; logs are deleted in batches of the
/// size asked for, and the last sequence number follows.
fn logs_append_once_and_delete_in_batches(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            for seq in 0..5 {
                w.log_append("e", seq, b"x")?;
            }
            w.log_append("f", 0, b"y")?;
            assert_eq!(w.log_last_seq("e")?, Some(4));
            assert_eq!(w.log_last_seq("none")?, None);
            Ok(())
        })
        .unwrap();
    assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 3);
    assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 2);
    assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 0);
    assert_eq!(store.read(|r| r.log_range("f", 0, 9)).unwrap().len(), 1);
    // A large chunk round-trips unchanged.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    store
        .write(|w| w.log_append("g", 7, &big).map(|_| ()))
        .unwrap();
    assert_eq!(store.read(|r| r.log_range("g", 0, 1)).unwrap()[0].1, big);
}

/// Writers from many threads and from two handles on the same store (two replicas)
/// never lose an update: each reads a count and writes it back plus one.
fn concurrent_writers_never_lose_an_update(open: Open) {
    let stores = [open().unwrap(), open().unwrap()];
    let threads = 8;
    let rounds = 25;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let store = stores[t % 2].clone();
            scope.spawn(move || {
                for _ in 0..rounds {
                    store
                        .write(|w| {
                            let n = w.get::<Thing>("count")?.map_or(0, |t| t.n);
                            w.put(&thing("count", n + 1))
                        })
                        .unwrap();
                }
            });
        }
    });
    let total = stores[0].get::<Thing>("count").unwrap().unwrap().n;
    assert_eq!(total as usize, threads * rounds);
}

/// Reads from threads whose reads give way ([`super::defer_reads_here`], page loads)
/// are still answered, each from its snapshot, while a writer of the same process
/// holds its transaction open: they wait their turn, never for the writer to end.
fn deferring_reads_are_answered_while_a_writer_works(open: Open) {
    let store = open().unwrap();
    store.write(|w| w.put(&thing("a", 1))).unwrap();
    let (began, writer_may_end) = (
        std::sync::Barrier::new(2),
        std::sync::atomic::AtomicBool::new(false),
    );
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            store.write(|w| {
                w.put(&thing("a", 2))?;
                w.counter_add("things", 1)?;
                began.wait();
                while !writer_may_end.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            })
        });
        began.wait();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    super::defer_reads_here();
                    (0..20)
                        .map(|_| {
                            store.read(|r| {
                                let a = r.get::<Thing>("a")?.map(|t| t.n);
                                Ok((a, r.counter("things")?))
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        for reader in readers {
            let seen = reader.join().unwrap().unwrap();
            assert!(seen.iter().all(|s| *s == (Some(1), 0)), "{seen:?}");
        }
        writer_may_end.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.join().unwrap().unwrap();
    });
    assert_eq!(store.get::<Thing>("a").unwrap().unwrap().n, 2);
}

/// Two handles racing to take one name: exactly one takes it, as a unique user name
/// must be taken once across replicas.
fn a_name_is_taken_once_across_handles(open: Open) {
    let stores = Arc::new([open().unwrap(), open().unwrap()]);
    let winners: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let store = stores[t % 2].clone();
                scope.spawn(move || {
                    store
                        .write(|w| {
                            if w.index_get("users_by_name", "ada")?.is_some() {
                                anyhow::bail!("the name is taken");
                            }
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            w.put(&thing(&format!("user{t}"), 0))?;
                            w.index_put("users_by_name", "ada", &format!("user{t}"))
                        })
                        .is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    assert_eq!(stores[0].list::<Thing>().unwrap().len(), 1);
}

/// A store written by a newer binary (a higher schema version) is refused with a
/// message that says so, and is left as it was.
fn a_newer_schema_is_refused(open: Open) {
    {
        let store = open().unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store
            .write(|w| w.meta_put("schema_version", &(SCHEMA_VERSION + 1)))
            .unwrap();
    }
    let message = match open() {
        Ok(_) => panic!("a store with a newer schema was opened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(message.contains("newer than this binary"), "{message}");
}

/// Copying a store into an empty one keeps every record, index entry, log chunk and
/// count (what `dynserv migrate` does), and refuses a target that holds records.
fn a_copy_keeps_every_record(open: Open) {
    let store = open().unwrap();
    store.seal_with(Keys::from_master(b"master"));
    store
        .write(|w| {
            for n in 0..2500 {
                w.put(&thing(&format!("t{n:05}"), n))?;
                w.index_put("by_n", &format!("{n:05}"), &format!("t{n:05}"))?;
            }
            for seq in 0..2100 {
                w.log_append("e1", seq, format!("line {seq}").as_bytes())?;
            }
            w.put(&Secret {
                id: "s".into(),
                value: "sealed".into(),
            })?;
            w.counter_add("things", 2500)?;
            Ok(())
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = Store::open(&dir.path().join("target.redb")).unwrap();
    let counts = store.copy_into(&target).unwrap();
    let count_of = |table: &str| {
        counts
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    assert_eq!(count_of(Thing::TABLE), 2500);
    assert_eq!(count_of("(index)"), 2500);
    assert_eq!(count_of("(execution logs)"), 2100);
    target.seal_with(Keys::from_master(b"master"));
    assert_eq!(target.get::<Thing>("t01234").unwrap().unwrap().n, 1234);
    assert_eq!(target.get::<Secret>("s").unwrap().unwrap().value, "sealed");
    assert_eq!(target.read(|r| r.counter("things")).unwrap(), 2500);
    assert_eq!(
        target.read(|r| r.log_range("e1", 2099, 5)).unwrap()[0].1,
        b"line 2099"
    );
    assert_eq!(target.schema_version().unwrap(), SCHEMA_VERSION);
    let again = store.copy_into(&target).unwrap_err();
    assert!(
        format!("{again:#}").contains("already holds records"),
        "{again:#}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every conformance case passes on a redb file.
    #[test]
    fn redb_passes_every_case() {
        for (name, case) in CASES {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            let open = redb_opener(path);
            eprintln!("case {name}");
            case(&open);
        }
    }
}

/// Reads asked ahead together ([`crate::store::Ahead`]) answer exactly what each read
/// asked alone answers, missing keys included; a writer that asked ahead still reads
/// its own later writes, in point reads, scans, lists and where logs end.
fn reads_asked_ahead_answer_as_asked(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            for (id, n) in [("a1", 1), ("a2", 2), ("a3", 3)] {
                w.put(&thing(id, n))?;
                w.index_put("ahead", &format!("p/{id}"), id)?;
            }
            w.index_put("ahead", "q/a1", "a1")?;
            w.counter_add("ahead", 7)?;
            w.log_append("log-a", 0, b"a")?;
            w.log_append("log-a", 1, b"b")?;
            Ok(())
        })
        .unwrap();
    let ids = ["a1".to_string(), "gone".to_string()];
    let logs = ["log-a".to_string(), "log-none".to_string()];
    let ahead = || {
        crate::store::Ahead::default()
            .records::<Thing>(&ids)
            .counter("ahead")
            .counter("never")
            .scan("ahead", "p/")
            .scan("ahead", "none/")
            .list::<Thing>()
            .log_tops(&logs)
            .entry("ahead", "q/a1")
            .entry("ahead", "q/none")
    };
    // Every read the ahead names, and one record its list holds.
    let read_all = |r: &crate::store::Reader| {
        Ok((
            r.get_many::<Thing>(&ids)?,
            r.counter("ahead")?,
            r.counter("never")?,
            r.index_scan("ahead", "p/")?,
            r.index_scan("ahead", "none/")?,
            r.list::<Thing>()?,
            r.get::<Thing>("a3")?,
            r.index_get("ahead", "q/a1")?,
            r.index_get("ahead", "q/none")?,
        ))
    };
    let alone = store.read(read_all).unwrap();
    let asked = store
        .read(|r| {
            r.read_ahead(&ahead())?;
            read_all(r)
        })
        .unwrap();
    assert_eq!(asked, alone);
    assert_eq!(asked.0, vec![Some(thing("a1", 1)), None]);
    assert_eq!(asked.1, 7);
    assert_eq!(keys(&asked.3), ["p/a1", "p/a2", "p/a3"]);
    assert_eq!(asked.5.len(), 3);
    assert_eq!(asked.7.as_deref(), Some("a1"));
    assert_eq!(asked.8, None);
    store
        .write(|w| {
            w.read_ahead(&ahead())?;
            w.put(&thing("a4", 4))?;
            w.index_put("ahead", "p/a4", "a4")?;
            w.counter_add("ahead", 1)?;
            assert!(w.delete::<Thing>("a1")?);
            assert_eq!(w.get::<Thing>("a1")?, None);
            assert_eq!(w.counter("ahead")?, 8);
            assert_eq!(
                keys(&w.index_scan("ahead", "p/")?),
                ["p/a1", "p/a2", "p/a3", "p/a4"]
            );
            let listed: Vec<String> = w.list::<Thing>()?.into_iter().map(|t| t.id).collect();
            assert_eq!(listed, ["a2", "a3", "a4"]);
            assert_eq!(w.index_get("ahead", "q/a1")?.as_deref(), Some("a1"));
            w.index_put("ahead", "q/none", "a4")?;
            assert_eq!(w.index_get("ahead", "q/none")?.as_deref(), Some("a4"));
            assert!(w.log_has("log-a", 1)?);
            assert!(!w.log_has("log-a", 2)?);
            assert!(!w.log_has("log-none", 0)?);
            assert!(!w.log_append("log-a", 1, b"again")?);
            assert!(w.log_append("log-a", 2, b"c")?);
            assert!(w.log_append("log-none", 0, b"d")?);
            assert!(w.log_has("log-a", 2)?);
            assert!(w.log_has("log-none", 0)?);
            Ok(())
        })
        .unwrap();
    store
        .read(|r| {
            assert_eq!(r.log_range("log-a", 0, 9)?.len(), 3);
            assert_eq!(r.log_range("log-none", 0, 9)?.len(), 1);
            Ok(())
        })
        .unwrap();
}

/// Inside one write transaction every read sees what the transaction wrote before
/// it, by key and by range (on PostgreSQL the writes are held and sent in batches),
/// and what it replaced or deleted is gone; a record read several times, or with
/// others in one `get_many`, is the same.
fn a_writer_reads_its_own_writes(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            w.put(&thing("k1", 1))?;
            w.put(&thing("k2", 2))?;
            w.index_put("own", "a/k1", "k1")?;
            w.index_put("own", "a/k2", "k2")?;
            w.counter_add("own", 2)?;
            w.log_append("own", 0, b"zero")?;
            Ok(())
        })
        .unwrap();
    store
        .write(|w| {
            // Point reads of committed data, then of this transaction's changes.
            assert_eq!(w.get::<Thing>("k1")?, Some(thing("k1", 1)));
            w.put(&thing("k1", 10))?;
            assert_eq!(w.get::<Thing>("k1")?, Some(thing("k1", 10)));
            assert!(w.delete::<Thing>("k2")?);
            assert!(
                !w.delete::<Thing>("k2")?,
                "deleted already in this transaction"
            );
            assert_eq!(w.get::<Thing>("k2")?, None);
            w.put(&thing("k3", 3))?;
            w.remove::<Thing>("k3")?;
            w.remove::<Thing>("never")?;
            assert_eq!(w.get::<Thing>("k3")?, None);
            let many =
                w.get_many::<Thing>(&["k3".into(), "k1".into(), "zz".into(), "k1".into()])?;
            assert_eq!(
                many,
                vec![None, Some(thing("k1", 10)), None, Some(thing("k1", 10))]
            );
            // Counters: each add sees the one before.
            assert_eq!(w.counter_add("own", 3)?, 5);
            assert_eq!(w.counter_add("own", -5)?, 0);
            assert_eq!(w.counter("own")?, 0);
            assert_eq!(w.counter_add("own", 7)?, 7);
            // Indexes, by key and by range.
            w.index_delete("own", "a/k2")?;
            w.index_put("own", "a/k4", "k4")?;
            assert_eq!(w.index_get("own", "a/k2")?, None);
            assert_eq!(w.index_get("own", "a/k4")?.as_deref(), Some("k4"));
            assert_eq!(
                keys(&w.index_scan("own", "a/")?),
                vec!["a/k1", "a/k4"],
                "a range read sees the writes before it"
            );
            // Logs: a chunk appended here is known, the committed one too.
            assert!(w.log_has("own", 0)?);
            assert!(!w.log_has("own", 1)?);
            assert!(w.log_append("own", 1, b"one")?);
            assert!(!w.log_append("own", 1, b"again")?);
            assert!(!w.log_append("own", 0, b"again")?);
            assert!(w.log_has("own", 1)?);
            assert_eq!(w.log_last_seq("own")?, Some(1));
            assert!(w.log_append("own", 2, b"two")?);
            assert_eq!(w.log_range("own", 0, 9)?.len(), 3);
            // After that range read sent the changes, they still read the same.
            assert!(!w.log_append("own", 2, b"again")?);
            assert_eq!(w.get::<Thing>("k1")?, Some(thing("k1", 10)));
            assert_eq!(w.counter("own")?, 7);
            assert_eq!(w.count::<Thing>()?, 1);
            Ok(())
        })
        .unwrap();
    store
        .read(|r| {
            assert_eq!(r.get::<Thing>("k1")?, Some(thing("k1", 10)));
            assert_eq!(r.get::<Thing>("k2")?, None);
            assert_eq!(r.counter("own")?, 7);
            assert_eq!(keys(&r.index_scan("own", "a/")?), vec!["a/k1", "a/k4"]);
            let logs = r.log_range("own", 0, 9)?;
            let texts: Vec<&[u8]> = logs.iter().map(|(_, c)| c.as_slice()).collect();
            assert_eq!(texts, vec![&b"zero"[..], b"one", b"two"]);
            r.prefetch::<Thing>(&["k1".into(), "k2".into()])?;
            r.prefetch_counters(&["own".into(), "none".into()])?;
            assert_eq!(r.get::<Thing>("k1")?, Some(thing("k1", 10)));
            Ok(())
        })
        .unwrap();
    // Several tables read ahead together answer as reading each does, missing ones
    // and repeated ids included.
    store
        .read(|r| {
            let ids: Vec<String> = vec!["k4".into(), "k1".into(), "k2".into(), "k1".into()];
            let none: Vec<String> = Vec::new();
            r.prefetch_tables(&[
                (Thing::TABLE, &ids),
                (Secret::TABLE, &["k1".to_string()]),
                ("empty", &none),
            ])?;
            assert_eq!(r.get::<Thing>("k1")?, Some(thing("k1", 10)));
            assert_eq!(r.get::<Thing>("k2")?, None);
            assert_eq!(r.get::<Thing>("k4")?, None);
            assert_eq!(r.get::<Secret>("k1")?, None);
            assert_eq!(r.counter("none")?, 0);
            Ok(())
        })
        .unwrap();
}

/// A writer's reads stay right across the sending of its changes (a range read sends
/// them on PostgreSQL, which keeps what it read and asks again for what it wrote): a
/// record read ahead and changed afterwards, an index entry read as missing and then
/// written; where logs end, read ahead for several executions, answers `log_has` and
/// `log_append` as asking one by one does.
fn reads_and_log_tops_survive_sending(open: Open) {
    let store = open().unwrap();
    store
        .write(|w| {
            w.put(&thing("r1", 1))?;
            w.log_append("l1", 0, b"a")?;
            w.log_append("l1", 1, b"b")?;
            Ok(())
        })
        .unwrap();
    store
        .write(|w| {
            w.prefetch::<Thing>(&["r1".into(), "r2".into()])?;
            assert_eq!(w.index_get("kept", "x")?, None);
            w.read_ahead(&crate::store::Ahead::default().log_tops(&["l1".into(), "l2".into()]))?;
            w.put(&thing("w1", 5))?;
            assert!(w.index_scan("kept", "")?.is_empty(), "sends the changes");
            assert_eq!(w.get::<Thing>("r1")?, Some(thing("r1", 1)));
            assert_eq!(w.get::<Thing>("r2")?, None);
            assert_eq!(w.get::<Thing>("w1")?, Some(thing("w1", 5)));
            w.put(&thing("r1", 2))?;
            w.index_put("kept", "x", "r1")?;
            assert_eq!(w.get::<Thing>("r1")?, Some(thing("r1", 2)));
            assert_eq!(w.index_get("kept", "x")?.as_deref(), Some("r1"));
            assert!(w.log_has("l1", 1)?);
            assert!(!w.log_has("l1", 2)?);
            assert!(!w.log_has("l2", 0)?);
            assert!(!w.log_append("l1", 0, b"again")?);
            assert!(w.log_append("l2", 0, b"c")?);
            assert_eq!(w.index_scan("kept", "")?.len(), 1, "sends them again");
            assert_eq!(w.get::<Thing>("r1")?, Some(thing("r1", 2)));
            assert_eq!(w.index_get("kept", "x")?.as_deref(), Some("r1"));
            assert!(w.log_has("l2", 0)?);
            assert!(!w.log_append("l2", 0, b"again")?);
            Ok(())
        })
        .unwrap();
    store
        .read(|r| {
            assert_eq!(r.get::<Thing>("r1")?, Some(thing("r1", 2)));
            assert_eq!(r.get::<Thing>("w1")?, Some(thing("w1", 5)));
            assert_eq!(r.log_range("l1", 0, 9)?.len(), 2);
            assert_eq!(r.log_range("l2", 0, 9)?.len(), 1);
            Ok(())
        })
        .unwrap();
}

/// A transaction larger than what a backend holds before sending (tens of thousands
/// of rows, tens of megabytes) commits whole, or not at all when it fails.
fn a_large_transaction_commits_whole(open: Open) {
    let store = open().unwrap();
    let body = "x".repeat(1000);
    let many = 30_000u32;
    let failed: Result<()> = store.write(|w| {
        for n in 0..many {
            w.put(&Secretless {
                id: format!("big{n:06}"),
                body: body.clone(),
            })?;
        }
        anyhow::bail!("changed my mind")
    });
    assert!(failed.is_err());
    assert_eq!(store.read(|r| r.count::<Secretless>()).unwrap(), 0);
    store
        .write(|w| {
            for n in 0..many {
                w.put(&Secretless {
                    id: format!("big{n:06}"),
                    body: body.clone(),
                })?;
                w.index_put("big", &format!("{n:06}"), &format!("big{n:06}"))?;
                w.counter_add("big", 1)?;
            }
            Ok(())
        })
        .unwrap();
    store
        .read(|r| {
            assert_eq!(r.count::<Secretless>()?, u64::from(many));
            assert_eq!(r.counter("big")?, u64::from(many));
            let last = r.index_page(&IndexScan::prefix("big", "", 1).backward())?;
            assert_eq!(keys(&last), vec![format!("{:06}", many - 1).as_str()]);
            Ok(())
        })
        .unwrap();
}

/// A change that fails once the transaction has sent it ahead (PostgreSQL sends a
/// large transaction's changes while it goes on, and learns of a failure later) fails
/// the transaction with that change's own error and keeps nothing; a caller that goes
/// on past the failure cannot commit what came after it; the connections stay usable.
fn a_change_sent_ahead_that_fails_keeps_nothing(open: Open) {
    let store = open().unwrap();
    store.put(&thing("taken", 1)).unwrap();
    let body = "x".repeat(1000);
    let put_many = |w: &mut crate::store::Writer, from: u32| -> Result<()> {
        for n in from..from + 5_000 {
            w.put(&Secretless {
                id: format!("ahead{n:06}"),
                body: body.clone(),
            })?;
            w.counter_add("ahead", 1)?;
        }
        Ok(())
    };
    let failed = store
        .write(|w| {
            w.insert(&thing("taken", 2))?;
            put_many(w, 0)?;
            assert_eq!(w.get::<Thing>("elsewhere")?, None);
            put_many(w, 5_000)
        })
        .unwrap_err();
    if store.postgres().is_some() {
        assert!(
            format!("{failed:#}").contains("duplicate key"),
            "the insert's own error: {failed:#}"
        );
    }
    // Every error ignored: the transaction cannot commit anything after the failure
    // (PostgreSQL), or the failed insert alone is left out (redb fails it at once).
    let ignored = store.write(|w| {
        let _ = w.insert(&thing("taken", 3));
        let _ = put_many(w, 0);
        let _ = put_many(w, 5_000);
        // A range read sends what is left: nothing goes with the commit but itself.
        let _ = w.index_scan("elsewhere", "");
        Ok(())
    });
    let count = store.read(|r| r.count::<Secretless>()).unwrap();
    match ignored {
        Err(e) => assert_eq!(count, 0, "a failed transaction keeps nothing: {e:#}"),
        Ok(()) => assert_eq!(count, 10_000),
    }
    assert_eq!(
        store.get::<Thing>("taken").unwrap(),
        Some(thing("taken", 1))
    );
    for n in 0..20 {
        store.put(&thing(&format!("next{n}"), n)).unwrap();
    }
    assert_eq!(
        store.get::<Thing>("next19").unwrap(),
        Some(thing("next19", 19))
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Secretless {
    id: String,
    body: String,
}

impl Record for Secretless {
    const TABLE: &'static str = "conformance_big";
    fn id(&self) -> &str {
        &self.id
    }
}
