//! The store, reached only through this module: one redb file (`DATA_DIR/dynserv.redb`,
//! the default) or a PostgreSQL database (`DATABASE_URL=postgres://…`, shared by several
//! replicas; see [`pg`]). Both backends stand behind the same interface, and one
//! conformance suite ([`conformance`]) runs against both.
//!
//! Domain modules describe their records with [`Record`] (a table name and an id) and
//! read or write them inside a transaction: [`Store::read`] hands out a [`Reader`],
//! [`Store::write`] a [`Writer`] whose changes commit together with immediate
//! durability, or not at all when the closure returns an error. Secondary indexes are
//! one table of `(index, key) -> id` entries; execution logs have their own table keyed
//! by `(execution_id, seq)`. Nothing outside this module names a redb or PostgreSQL type.
//!
//! Records that hold secrets declare [`Record::SEALED`]: the store encrypts them with
//! the key the application gives it ([`Store::seal_with`]), so neither the file nor a
//! backup of it holds them in clear.
//!
//! Lists read pages, never tables: [`Read::index_page`] walks one index forwards or
//! backwards from a key with a limit, and [`Writer::counter_add`] keeps counts up to
//! date in the same transaction as the change they count, so nothing recomputes them.
//!
//! Store calls block (fsync, a long scan, a slow disk). They never run on a tokio
//! worker: HTTP handlers run on the blocking pool ([`blocking`]), the fleet's writes go
//! through its ingest thread. A call made on a worker anyway is counted
//! ([`calls_on_async_workers`]) and logged with its caller, so a test can prove there
//! are none.
//!
//! A write that fails for lack of space or an I/O error marks the store unhealthy
//! ([`Store::health`]): `/healthz` answers 503 with the reason and callers get a clear
//! 503. [`Store::recover`] reopens the file once writes work again.
//!
//! What does not live here: any rule about what a record may contain (the domain
//! modules own those).

use std::cell::Cell;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::{Context, Result};
use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle,
};

pub mod conformance;
pub mod pg;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::secrets::Keys;

/// Key-value pairs about the store itself (`schema_version`).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Secondary indexes: `(index name, key) -> record id`.
const INDEX: TableDefinition<(&str, &str), &str> = TableDefinition::new("index");
/// Execution output: `(execution id, seq) -> serialized chunk`.
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("execution_logs");
/// Counts kept up to date by the writes that change them: `name -> count`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The store's page cache unless configured otherwise. redb's own default is 1 GiB,
/// which a single large job's output fills and never gives back.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The last key an index key can have: keys are compared bytewise, and no key this
/// product writes starts with these characters.
const KEY_END: &str = "\u{10FFFF}\u{10FFFF}\u{10FFFF}\u{10FFFF}";

/// The range of keys that start with `prefix`, inclusive at both ends.
pub fn prefix_range(prefix: &str) -> (String, String) {
    (prefix.to_string(), format!("{prefix}{KEY_END}"))
}

thread_local! {
    /// Set on threads where blocking store calls are expected (the blocking pool's
    /// threads running [`blocking`], the ingest thread, CLI commands).
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
    /// Set on the runtime's async worker threads ([`mark_async_worker`]).
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
    /// Set on threads whose reads give way to other work ([`defer_reads_here`]).
    static DEFERS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread's read transactions as ones that give way to the rest of
/// the process's work in the database: while another transaction is open, one query
/// of all such readers at a time is in the database (PostgreSQL, `pg::Turns`; a redb
/// reader never slows a writer). The HTTP reads lane's threads call it, so page loads
/// cannot crowd out an operator's action or an agent's report.
pub fn defer_reads_here() {
    DEFERS.with(|d| d.set(true));
}

/// Whether this thread's reads give way ([`defer_reads_here`]).
pub(crate) fn reads_defer_here() -> bool {
    DEFERS.with(Cell::get)
}

/// Marks the current thread as an async worker; the runtime calls it on its worker
/// threads (`on_thread_unpark`, which tokio calls on workers only).
pub fn mark_async_worker() {
    ASYNC_WORKER.with(|w| w.set(true));
}

static CALLS_ON_WORKERS: AtomicU64 = AtomicU64::new(0);

/// How many store calls ran on a tokio worker thread since the process started; a
/// correct control plane keeps this at zero.
pub fn calls_on_async_workers() -> u64 {
    CALLS_ON_WORKERS.load(Ordering::Relaxed)
}

/// Marks the current thread as one where store calls may block (a dedicated thread).
/// Every closure handed to the blocking pool that touches the store calls it (or runs
/// through [`blocking`]): tokio runs its workers on the blocking pool's threads, so a
/// pool thread may still carry the worker mark of an earlier life.
pub fn allow_blocking_here() {
    MAY_BLOCK.with(|m| m.set(true));
}

/// Runs `f` on tokio's blocking pool, where store calls belong, and awaits its result.
pub async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(move || {
        allow_blocking_here();
        f()
    })
    .await
    {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs `f`, which makes store calls, where only a synchronous context is at hand on
/// an async worker (a warp filter): the worker hands its other tasks off first.
pub fn block_in_place<R>(f: impl FnOnce() -> R) -> R {
    let run = || {
        let before = MAY_BLOCK.with(|m| m.replace(true));
        let value = f();
        MAY_BLOCK.with(|m| m.set(before));
        value
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(run)
    } else {
        run()
    }
}

#[track_caller]
fn note_call_site() {
    if MAY_BLOCK.with(|m| m.get()) {
        return;
    }
    if ASYNC_WORKER.with(|w| w.get()) {
        let n = CALLS_ON_WORKERS.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            tracing::warn!(
                caller = %std::panic::Location::caller(),
                "store call on an async worker thread"
            );
        }
    }
}

/// The schema version this binary writes. Each step in [`MIGRATIONS`] moves the stored
/// version up by one.
pub const SCHEMA_VERSION: u64 = 9;

/// Ordered migrations: entry `i` moves the schema from version `i` to `i + 1`. They
/// are written against [`Writer`] alone, so they run the same on both backends.
type Migration = fn(&mut Writer) -> Result<()>;
const MIGRATIONS: &[Migration] = &[
    migrate_v0_to_v1,
    crate::executions::backfill_indexes,
    crate::audit::backfill_indexes,
    crate::notifications::backfill_counts,
    crate::listing::backfill_indexes,
    crate::executions::backfill_search_text,
    crate::executions::backfill_terms,
    crate::clients::link_free_text,
    crate::subscriptions::backfill_end_indexes,
];

/// Version 1 is the first schema: it only needs its fixed tables to exist.
fn migrate_v0_to_v1(writer: &mut Writer) -> Result<()> {
    if let WriteTxn::Redb(txn) = &writer.txn {
        txn.open_table(INDEX)?;
        txn.open_table(LOGS)?;
    }
    Ok(())
}

/// A record kept in its own table, serialized as JSON and keyed by its id.
pub trait Record: Serialize + DeserializeOwned {
    /// The name of the record's table; unique across the store.
    const TABLE: &'static str;
    /// The record's primary key.
    fn id(&self) -> &str;
    /// Whether the record holds secrets and is stored encrypted.
    const SEALED: bool = false;
}

/// Some fields of a record, read from the record's table without building the rest
/// (serde skips the fields the view does not name): for pages that show a few fields
/// of a hundred records (the servers page spent a tenth of its control-plane time
/// decoding its rows' agents whole). Read only; a view is never written back.
pub trait View: DeserializeOwned {
    /// The record whose table holds the view's data.
    type Of: Record;
}

/// Reads a transaction is about to make, asked together ([`Read::read_ahead`]): on
/// PostgreSQL their queries go out pipelined, one round trip for all of them where
/// each asked when needed costs its own, and the transaction then answers those reads
/// itself. redb answers each read as cheaply when it comes and ignores this. A
/// request's sign-in (its user, grants and unread count) takes one; each round trip
/// costs the page a few thread wake-ups on both sides of the connection.
#[derive(Debug, Default)]
pub struct Ahead {
    records: Vec<(&'static str, String)>,
    counters: Vec<String>,
    scans: Vec<(&'static str, String)>,
    lists: Vec<&'static str>,
    log_tops: Vec<String>,
    entries: Vec<(&'static str, String)>,
}

impl Ahead {
    /// Records of `T` by id (what `get`/`get_many` will ask).
    pub fn records<T: Record>(mut self, ids: &[String]) -> Ahead {
        self.records
            .extend(ids.iter().map(|id| (T::TABLE, id.clone())));
        self
    }

    /// A kept count (what `counter` will ask).
    pub fn counter(mut self, name: impl Into<String>) -> Ahead {
        self.counters.push(name.into());
        self
    }

    /// The entries of an index under a key prefix (what `index_scan` will ask). Kept
    /// by read transactions only: a writer's own changes could make it stale.
    pub fn scan(mut self, index: &'static str, prefix: impl Into<String>) -> Ahead {
        self.scans.push((index, prefix.into()));
        self
    }

    /// Every record of `T` (what `list` will ask); its records then answer `get`s
    /// too. Read transactions only, like [`Ahead::scan`].
    pub fn list<T: Record>(mut self) -> Ahead {
        self.lists.push(T::TABLE);
        self
    }

    /// An index entry by its key (what `index_get` will ask).
    pub fn entry(mut self, index: &'static str, key: impl Into<String>) -> Ahead {
        self.entries.push((index, key.into()));
        self
    }

    /// Where these executions' stored logs end (what `log_has` will ask). Writers
    /// only: a reader's `log_has` asks the database.
    pub fn log_tops(mut self, execution_ids: &[String]) -> Ahead {
        self.log_tops.extend(execution_ids.iter().cloned());
        self
    }
}

fn record_table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// Where the store lives, as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A redb file.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://…`), possibly shared by several replicas.
    Postgres(String),
}

impl Location {
    /// Reads `DATABASE_URL`: `postgres://…` / `postgresql://…`, else a file path
    /// (optionally written `redb://PATH`).
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_string())
        } else {
            Location::File(PathBuf::from(text.strip_prefix("redb://").unwrap_or(text)))
        }
    }

    /// What to show a person: the file's path, or the database without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Postgres(url) => pg::redact(url),
        }
    }
}

/// The open redb file.
struct RedbFile {
    /// Closed and reopened by [`Store::recover`] after an I/O error (`None` only while
    /// it is being reopened).
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
}

#[derive(Clone)]
enum Backend {
    Redb(Arc<RedbFile>),
    Pg(Arc<pg::Pg>),
}

/// The store handle. Cheap to clone; every clone is the same file or database.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The key of sealed records; set once by the application.
    sealing: Arc<OnceLock<Keys>>,
    /// Why writes fail, while they do.
    failure: Arc<Mutex<Option<String>>>,
    /// Free bytes under the store's directory below which new work is refused.
    space_floor: Arc<AtomicU64>,
    /// Where the live events a transaction announced go once it committed.
    announcer: Arc<OnceLock<crate::live::Events>>,
    /// This process's writers, in the order they came.
    writers: Arc<WriterQueue>,
}

/// Gives this process's writers their turns in the order they asked (a ticket lock).
/// The backends serialize writers too, but let a thread that has just committed take
/// the next turn again before a waiting one wakes up: a task writing in batches so as
/// not to hold others up (the server metrics' flush) would then keep them waiting to
/// its end anyway.
#[derive(Default)]
struct WriterQueue {
    /// The next ticket to hand out, and the ticket whose turn it is.
    tickets: Mutex<(u64, u64)>,
    turn: std::sync::Condvar,
}

impl WriterQueue {
    /// Waits for this writer's turn; the turn passes on when the ticket is dropped.
    fn enter(&self) -> WriterTicket<'_> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let mine = tickets.0;
        tickets.0 += 1;
        while tickets.1 != mine {
            tickets = self.turn.wait(tickets).unwrap_or_else(|p| p.into_inner());
        }
        WriterTicket(self)
    }
}

#[cfg(test)]
mod writer_queue_tests {
    use super::WriterQueue;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A writer waits for the one before it, and writers get their turns in the
    /// order they asked, not in the order they happen to wake.
    #[test]
    fn writers_wait_and_go_in_the_order_they_came() {
        let queue = WriterQueue::default();
        let (order_tx, order_rx) = mpsc::channel();
        std::thread::scope(|s| {
            let first = queue.enter();
            for i in 0..4 {
                let (queue, order) = (&queue, order_tx.clone());
                s.spawn(move || {
                    let _turn = queue.enter();
                    order.send(i).unwrap();
                });
                // Each waits for its ticket before the next asks.
                while queue.tickets.lock().unwrap().0 != i + 2 {
                    std::thread::yield_now();
                }
            }
            assert!(
                order_rx.recv_timeout(Duration::from_millis(50)).is_err(),
                "a writer went while another held the turn"
            );
            drop(first);
            let order: Vec<u64> = (0..4).map(|_| order_rx.recv().unwrap()).collect();
            assert_eq!(order, [0, 1, 2, 3]);
        });
    }
}

/// A writer's turn in the [`WriterQueue`].
struct WriterTicket<'a>(&'a WriterQueue);

impl Drop for WriterTicket<'_> {
    fn drop(&mut self) {
        let mut tickets = self.0.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets.1 += 1;
        drop(tickets);
        self.0.turn.notify_all();
    }
}

/// New work refused because free space under the data directory is below the
/// configured floor (the store itself still writes).
#[derive(Debug, thiserror::Error)]
#[error("only {free_mib} MiB are free under {dir}, below the floor of {floor_mib} MiB: new jobs are refused until space is freed")]
pub struct LowDisk {
    pub free_mib: u64,
    pub floor_mib: u64,
    pub dir: String,
}

/// [`Writer::insert`] or [`Writer::index_insert`] of a key that exists. On
/// PostgreSQL the database finds it, at the latest at commit, as a unique violation.
#[derive(Debug, thiserror::Error)]
#[error("{what} exists already")]
pub struct Exists {
    what: String,
}

impl Exists {
    pub(super) fn record(table: &str, id: &str) -> Exists {
        Exists {
            what: format!("record {table}/{id}"),
        }
    }

    pub(super) fn index(index: &str, key: &str) -> Exists {
        Exists {
            what: format!("index entry {index}/{key}"),
        }
    }
}

/// Free bytes on the file system that holds `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A store error callers should answer as "try again later" (503): the disk is full,
/// the file cannot be written or the database cannot be reached; nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("the store cannot be written: {0}")]
pub struct Unavailable(pub String);

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "the store {} is in use by another dynserv process",
                path.display()
            ),
            other => anyhow::Error::new(other).context(format!("opening {}", path.display())),
        })
}

impl Store {
    /// Opens (or creates) the store file with the default cache size and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store file with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store> {
        // Owner-only whatever the umask: the store holds hashes and sealed secrets.
        dynserv_agent::private_fs::touch(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let db = open_database(path, cache_bytes)?;
        let store = Store::with_backend(Backend::Redb(Arc::new(RedbFile {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_path_buf(),
            cache_bytes,
        })));
        store.migrate()?;
        Ok(store)
    }

    /// Connects to a PostgreSQL database (`postgres://…`, libpq's `sslmode`), creates
    /// the store's tables when missing and brings the schema up to date, all under an
    /// advisory lock so replicas starting together never race.
    pub fn connect(url: &str) -> Result<Store> {
        let pg = pg::Pg::connect(url)?;
        let store = Store::with_backend(Backend::Pg(Arc::new(pg)));
        store.migrate()?;
        Ok(store)
    }

    /// Opens the store where `location` says, with `cache_bytes` of page cache for a
    /// file.
    pub fn open_location(location: &Location, cache_bytes: usize) -> Result<Store> {
        match location {
            Location::File(path) => Store::open_with_cache(path, cache_bytes),
            Location::Postgres(url) => Store::connect(url),
        }
    }

    fn with_backend(backend: Backend) -> Store {
        Store {
            backend,
            sealing: Arc::new(OnceLock::new()),
            failure: Arc::new(Mutex::new(None)),
            space_floor: Arc::new(AtomicU64::new(0)),
            announcer: Arc::new(OnceLock::new()),
            writers: Arc::default(),
        }
    }

    /// How many handles share this store's file or database (clones of it).
    pub fn handle_count(&self) -> usize {
        match &self.backend {
            Backend::Redb(file) => Arc::strong_count(file),
            Backend::Pg(pg) => Arc::strong_count(pg),
        }
    }

    /// Whether the store is a PostgreSQL database (several replicas may share it).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// The PostgreSQL side of the store, for the cluster's notifications and leader
    /// locks; `None` for a redb file.
    pub fn postgres(&self) -> Option<&pg::Pg> {
        match &self.backend {
            Backend::Pg(pg) => Some(pg),
            Backend::Redb(_) => None,
        }
    }

    /// What to show a person about where the store lives.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Redb(file) => file.path.display().to_string(),
            Backend::Pg(pg) => pg.describe(),
        }
    }

    fn database(file: &RedbFile) -> Result<Arc<Database>> {
        let db = match file.db.read() {
            Ok(db) => db.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        db.ok_or_else(|| {
            anyhow::Error::new(Unavailable(
                "the store is being reopened after a write error".into(),
            ))
        })
    }

    /// `Ok` while the store can be written; otherwise why not.
    pub fn health(&self) -> std::result::Result<(), String> {
        match self.failure.lock() {
            Ok(f) => f.clone().map_or(Ok(()), Err),
            Err(_) => Err("the store's health state is poisoned".into()),
        }
    }

    fn set_failure(&self, why: Option<String>) {
        if let Ok(mut f) = self.failure.lock() {
            if f.is_some() != why.is_some() {
                match &why {
                    Some(w) => tracing::error!(reason = %w, "the store cannot be written"),
                    None => tracing::info!("the store can be written again"),
                }
            }
            *f = why;
        }
    }

    /// Tries a small write; when a redb file had failed, reopens it first (redb
    /// refuses every call after an I/O error until it is reopened; a database
    /// connection is replaced by the pool by itself). Clears the failure when the
    /// write commits. Run periodically by the health task.
    pub fn recover(&self) -> Result<()> {
        if let (Err(_), Backend::Redb(file)) = (self.health(), &self.backend) {
            let mut guard = match file.db.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(open) = guard.as_ref() {
                // A call still running holds a clone; the next attempt reopens.
                if Arc::strong_count(open) > 1 {
                    anyhow::bail!("the store is busy; reopening it later");
                }
            }
            // The old handle must be closed before the file can be opened again.
            *guard = None;
            match open_database(&file.path, file.cache_bytes) {
                Ok(db) => *guard = Some(Arc::new(db)),
                Err(e) => {
                    let reason = format!("reopening the store: {e:#}");
                    drop(guard);
                    self.set_failure(Some(reason.clone()));
                    anyhow::bail!(reason);
                }
            }
        }
        self.write(|w| w.meta_put("health_probe", &chrono::Utc::now().timestamp()))
    }

    fn migrate(&self) -> Result<()> {
        self.write(|w| {
            let mut version = w.meta_get::<u64>("schema_version")?.unwrap_or(0);
            if version > SCHEMA_VERSION {
                anyhow::bail!(
                    "the store has schema version {version}, newer than this binary's {SCHEMA_VERSION}; upgrade dynserv"
                );
            }
            while version < SCHEMA_VERSION {
                let step = usize::try_from(version).unwrap_or(usize::MAX);
                MIGRATIONS[step](w)
                    .with_context(|| format!("migrating the store from version {version}"))?;
                version += 1;
                w.meta_put("schema_version", &version)?;
            }
            Ok(())
        })
    }

    /// The schema version stored.
    pub fn schema_version(&self) -> Result<u64> {
        self.read(|r| r.meta_get::<u64>("schema_version"))
            .map(|v| v.unwrap_or(0))
    }

    /// Sets the free space (bytes) below which [`Store::require_free_space`] refuses.
    pub fn set_space_floor(&self, bytes: u64) {
        self.space_floor.store(bytes, Ordering::Relaxed);
    }

    /// `Err(LowDisk)` while the file system holding the store file has less free space
    /// than the floor: callers refuse new work that would write more. A database's
    /// disk is its server's to watch; its writes fail cleanly when it is full.
    pub fn require_free_space(&self) -> Result<()> {
        let floor = self.space_floor.load(Ordering::Relaxed);
        let Backend::Redb(file) = &self.backend else {
            return Ok(());
        };
        if floor == 0 {
            return Ok(());
        }
        let dir = file.path.parent().unwrap_or(Path::new("."));
        match free_bytes(dir) {
            Some(free) if free < floor => Err(anyhow::Error::new(LowDisk {
                free_mib: free / 1024 / 1024,
                floor_mib: floor / 1024 / 1024,
                dir: dir.display().to_string(),
            })),
            _ => Ok(()),
        }
    }

    /// Gives the store the key that seals [`Record::SEALED`] records. The first key
    /// given stays.
    pub fn seal_with(&self, keys: Keys) {
        let _ = self.sealing.set(keys);
    }

    /// Where the live events that transactions announce ([`Writer::announce`]) are
    /// published after each commit; set once by the application.
    pub fn announce_to(&self, events: crate::live::Events) {
        let _ = self.announcer.set(events);
    }

    /// Runs `f` in a read transaction: a consistent snapshot.
    #[track_caller]
    pub fn read<R>(&self, f: impl FnOnce(&Reader) -> Result<R>) -> Result<R> {
        note_call_site();
        let txn = match &self.backend {
            Backend::Redb(file) => ReadTxn::Redb(Self::database(file)?.begin_read().map_err(
                |e| match storage_reason(&e.into()) {
                    Some(reason) => anyhow::Error::new(Unavailable(reason)),
                    None => anyhow::anyhow!("starting a read transaction"),
                },
            )?),
            Backend::Pg(pg) => ReadTxn::Pg(pg.begin_read()?),
        };
        let reader = Reader {
            txn,
            sealing: self.sealing.clone(),
        };
        let value = f(&reader)?;
        if let ReadTxn::Pg(txn) = reader.txn {
            txn.finish()?;
        }
        Ok(value)
    }

    /// Runs `f` in a write transaction and commits with immediate durability when it
    /// returns `Ok`; on `Err` nothing it wrote is kept. Writers are serialized (redb's
    /// single writer; on PostgreSQL one advisory lock shared by every replica), so a
    /// closure that checks a name is free and then takes it never races another; in
    /// one process they go in the order they came ([`WriterQueue`]).
    #[track_caller]
    pub fn write<R>(&self, f: impl FnOnce(&mut Writer) -> Result<R>) -> Result<R> {
        note_call_site();
        let _turn = self.writers.enter();
        let txn = match &self.backend {
            Backend::Redb(file) => {
                let db = Self::database(file)?;
                let mut txn = db
                    .begin_write()
                    .map_err(|e| self.storage_failure(e.into(), "starting a write transaction"))?;
                txn.set_durability(Durability::Immediate);
                WriteTxn::Redb(txn)
            }
            Backend::Pg(pg) => WriteTxn::Pg(
                pg.begin_write()
                    .map_err(|e| self.storage_failure(e, "starting a write transaction"))?,
            ),
        };
        let mut writer = Writer {
            txn,
            sealing: self.sealing.clone(),
            store: self.clone(),
            announced: Vec::new(),
        };
        let value = match f(&mut writer) {
            Ok(value) => value,
            Err(e) => {
                // A storage error inside the closure (a full disk while inserting)
                // is a failure of the store, not of the caller's input.
                if is_storage_error(&e) {
                    return Err(self.storage_failure(e, "writing"));
                }
                return Err(e);
            }
        };
        let announced = std::mem::take(&mut writer.announced);
        match writer.txn {
            WriteTxn::Redb(txn) => txn
                .commit()
                .map_err(|e| self.storage_failure(e.into(), "committing a write transaction"))?,
            WriteTxn::Pg(txn) => txn
                .commit()
                .map_err(|e| self.storage_failure(e, "committing a write transaction"))?,
        }
        if self.health().is_err() {
            self.set_failure(None);
        }
        // Told only now: a page never hears of a change that was rolled back.
        if let Some(events) = self.announcer.get() {
            for event in announced {
                events.publish(event);
            }
        }
        Ok(value)
    }

    fn storage_failure(&self, e: anyhow::Error, doing: &str) -> anyhow::Error {
        let reason = storage_reason(&e).unwrap_or_else(|| format!("{doing}: {e:#}"));
        self.set_failure(Some(reason.clone()));
        anyhow::Error::new(Unavailable(reason))
    }

    /// Reads one record.
    #[track_caller]
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        self.read(|r| r.get(id))
    }

    /// Reads every record of a type, in id order.
    #[track_caller]
    pub fn list<T: Record>(&self) -> Result<Vec<T>> {
        self.read(|r| r.list())
    }

    /// Writes one record in its own transaction.
    #[track_caller]
    pub fn put<T: Record>(&self, record: &T) -> Result<()> {
        self.write(|w| w.put(record))
    }

    /// Writes a consistent copy of the whole store to `out` (a new redb file), from
    /// one read snapshot, so it can run while the server keeps writing. Works the same
    /// from a PostgreSQL database.
    pub fn backup_to(&self, out: &Path) -> Result<()> {
        if out.exists() {
            anyhow::bail!("{} already exists; choose a new file", out.display());
        }
        let tmp = out.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        {
            let copy = Store::open(&tmp)?;
            self.copy_into(&copy)?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("moving the copy to {}", out.display()))?;
        Ok(())
    }

    /// Copies every record, index entry, log chunk, count and meta value into
    /// `target`, which must hold no records yet, from one read snapshot of this store,
    /// in batches (so a large store never sits in memory). Sealed records are copied
    /// as they are stored: the target needs the same master secret to read them.
    /// Verifies the counts per table afterwards and returns them.
    pub fn copy_into(&self, target: &Store) -> Result<Vec<(String, u64)>> {
        let target_tables = target.read(|r| r.raw().tables())?;
        let target_has_records = target.read(|r| {
            for table in &target_tables {
                if r.raw().count(table)? > 0 {
                    return Ok(true);
                }
            }
            Ok(r.raw().index_after(None, 1)?.len() + r.raw().logs_after(None, 1)?.len() > 0)
        })?;
        if target_has_records {
            anyhow::bail!(
                "{} already holds records; migrate into an empty store",
                target.describe()
            );
        }
        const BATCH: usize = 2000;
        let counts = self.read(|src| {
            let raw = src.raw();
            let mut counts = Vec::new();
            for table in raw.tables()? {
                let mut after: Option<String> = None;
                let mut n = 0u64;
                loop {
                    let rows = raw.records_after(&table, after.as_deref(), BATCH)?;
                    let Some((last, _)) = rows.last() else { break };
                    after = Some(last.clone());
                    n += rows.len() as u64;
                    target.write(|w| {
                        for (id, body) in &rows {
                            w.raw_mut().put(&table, id, body)?;
                        }
                        Ok(())
                    })?;
                }
                counts.push((table, n));
            }
            let mut after: Option<(String, String)> = None;
            let mut n = 0u64;
            loop {
                let rows =
                    raw.index_after(after.as_ref().map(|(i, k)| (i.as_str(), k.as_str())), BATCH)?;
                let Some((index, key, _)) = rows.last() else {
                    break;
                };
                after = Some((index.clone(), key.clone()));
                n += rows.len() as u64;
                target.write(|w| {
                    for (index, key, id) in &rows {
                        w.raw_mut().index_put(index, key, id)?;
                    }
                    Ok(())
                })?;
            }
            counts.push(("(index)".to_string(), n));
            let mut after: Option<(String, u64)> = None;
            let mut n = 0u64;
            loop {
                let rows = raw.logs_after(after.as_ref().map(|(e, s)| (e.as_str(), *s)), BATCH)?;
                let Some((execution, seq, _)) = rows.last() else {
                    break;
                };
                after = Some((execution.clone(), *seq));
                n += rows.len() as u64;
                target.write(|w| {
                    for (execution, seq, chunk) in &rows {
                        w.raw_mut().log_append(execution, *seq, chunk)?;
                    }
                    Ok(())
                })?;
            }
            counts.push(("(execution logs)".to_string(), n));
            let counters = raw.counters_all()?;
            let meta = raw.meta_all()?;
            counts.push(("(counters)".to_string(), counters.len() as u64));
            target.write(|w| {
                for (name, value) in &counters {
                    let current = w.raw().counter(name)?;
                    let delta = i64::try_from(*value).unwrap_or(i64::MAX)
                        - i64::try_from(current).unwrap_or(i64::MAX);
                    w.raw_mut().counter_add(name, delta)?;
                }
                for (key, value) in &meta {
                    w.raw_mut().meta_put(key, value)?;
                }
                Ok(())
            })?;
            Ok(counts)
        })?;
        // Verify: the target holds exactly what was copied.
        let found = target.read(|r| {
            let raw = r.raw();
            let mut found = Vec::new();
            for (table, _) in &counts {
                let n = match table.as_str() {
                    "(index)" => raw.index_count()?,
                    "(execution logs)" => raw.log_count()?,
                    "(counters)" => raw.counters_all()?.len() as u64,
                    table => raw.count(table)?,
                };
                found.push((table.clone(), n));
            }
            Ok(found)
        })?;
        for ((table, copied), (_, stored)) in counts.iter().zip(&found) {
            if copied != stored {
                anyhow::bail!(
                    "verification failed: {table}: copied {copied}, the target holds {stored}"
                );
            }
        }
        Ok(counts)
    }
}

/// Whether an error comes from the storage below (I/O, a full disk, a file redb
/// refuses after an earlier I/O error, a database that cannot be reached) rather than
/// from the caller.
fn is_storage_error(e: &anyhow::Error) -> bool {
    storage_reason(e).is_some()
}

/// A plain sentence for a storage error, or `None` when it is not one.
fn storage_reason(e: &anyhow::Error) -> Option<String> {
    for cause in e.chain() {
        if let Some(u) = cause.downcast_ref::<Unavailable>() {
            return Some(u.0.clone());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io_reason(io));
        }
        let storage = cause
            .downcast_ref::<redb::StorageError>()
            .or_else(|| match cause.downcast_ref::<redb::CommitError>() {
                Some(redb::CommitError::Storage(s)) => Some(s),
                _ => None,
            })
            .or_else(|| match cause.downcast_ref::<redb::TransactionError>() {
                Some(redb::TransactionError::Storage(s)) => Some(s),
                _ => None,
            })
            .or_else(|| match cause.downcast_ref::<redb::TableError>() {
                Some(redb::TableError::Storage(s)) => Some(s),
                _ => None,
            });
        if let Some(storage) = storage {
            return Some(match storage {
                redb::StorageError::Io(io) => io_reason(io),
                redb::StorageError::PreviousIo => {
                    "an earlier write failed (I/O error); reopening the store".into()
                }
                other => format!("storage error: {other}"),
            });
        }
        if let Some(reason) = pg::storage_reason(cause) {
            return Some(reason);
        }
        let text = cause.to_string();
        if text.contains("No space left on device") || text.contains("os error 28") {
            return Some("no space left on the device that holds the store".into());
        }
        if text.contains("Previous I/O error") {
            return Some("an earlier write failed (I/O error); reopening the store".into());
        }
    }
    None
}

fn io_reason(io: &std::io::Error) -> String {
    if io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull {
        "no space left on the device that holds the store".into()
    } else {
        format!("I/O error: {io}")
    }
}

/// Prefix of sealed records as stored (what [`Keys::encrypt`] writes).
const SEALED_PREFIX: &[u8] = b"v1.";

fn decode<T: Record>(sealing: &OnceLock<Keys>, bytes: &[u8]) -> Result<T> {
    decode_as::<T, T>(sealing, bytes)
}

/// Decodes a record of `T`'s table as `V` (`T` itself or a [`View`] of it).
fn decode_as<T: Record, V: DeserializeOwned>(sealing: &OnceLock<Keys>, bytes: &[u8]) -> Result<V> {
    let table = T::TABLE;
    if T::SEALED && bytes.starts_with(SEALED_PREFIX) {
        let keys = sealing
            .get()
            .with_context(|| format!("{table} records are sealed and the store has no key"))?;
        let text = std::str::from_utf8(bytes)
            .ok()
            .with_context(|| format!("a sealed record of {table} is not text"))?;
        let json = keys.decrypt(text)?;
        return serde_json::from_str(&json)
            .with_context(|| format!("decoding a record of {table}"));
    }
    // Plain JSON; also a sealed type's records written before it was sealed.
    serde_json::from_slice(bytes).with_context(|| format!("decoding a record of {table}"))
}

fn encode<T: Record>(sealing: &OnceLock<Keys>, record: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_string(record)?;
    if !T::SEALED {
        return Ok(json.into_bytes());
    }
    let keys = sealing
        .get()
        .with_context(|| format!("{} records are sealed and the store has no key", T::TABLE))?;
    Ok(keys.encrypt(&json).into_bytes())
}

// One lives per read transaction, on the stack: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum ReadTxn {
    Redb(redb::ReadTransaction),
    Pg(pg::Txn),
}

// One lives per write transaction, on the stack: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum WriteTxn {
    Redb(redb::WriteTransaction),
    Pg(pg::Txn),
}

/// Read access inside a transaction.
pub struct Reader {
    txn: ReadTxn,
    sealing: Arc<OnceLock<Keys>>,
}

/// Read and write access inside a transaction that commits as one.
pub struct Writer {
    txn: WriteTxn,
    sealing: Arc<OnceLock<Keys>>,
    /// The store this transaction belongs to (for its free-space floor).
    store: Store,
    /// Live events to publish once this transaction committed.
    announced: Vec<crate::live::Event>,
}

impl Reader {
    fn raw(&self) -> &dyn RawRead {
        match &self.txn {
            ReadTxn::Redb(txn) => txn,
            ReadTxn::Pg(txn) => txn,
        }
    }

    fn meta_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.raw()
            .meta_get(key)?
            .map(|v| serde_json::from_slice(&v).context("decoding a meta value"))
            .transpose()
    }
}

impl Writer {
    /// Publishes a live event for pages once this transaction commits (never when it
    /// is rolled back).
    pub fn announce(&mut self, event: crate::live::Event) {
        if !self.announced.contains(&event) {
            self.announced.push(event);
        }
    }

    /// Sends `payload` to the other processes listening on `channel` as this
    /// transaction commits, in the commit itself (PostgreSQL's `NOTIFY`: delivered
    /// with the commit, never for a transaction rolled back, in the order asked).
    /// Nothing on redb, where no other process shares the store.
    pub fn notify(&mut self, channel: &'static str, payload: String) -> Result<()> {
        self.raw_mut().notify(channel, payload)
    }
}

impl Writer {
    fn raw(&self) -> &dyn RawRead {
        match &self.txn {
            WriteTxn::Redb(txn) => txn,
            WriteTxn::Pg(txn) => txn,
        }
    }

    fn raw_mut(&mut self) -> &mut dyn RawWrite {
        match &mut self.txn {
            WriteTxn::Redb(txn) => txn,
            WriteTxn::Pg(txn) => txn,
        }
    }
}

/// What each backend does, on bytes and strings: the typed [`Read`] and [`Writer`]
/// methods are written once on top of it.
pub(crate) trait RawRead {
    fn get(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>>;
    /// Several records at once, in the order of `ids` (`None` where missing): one
    /// query on PostgreSQL instead of one round trip per record.
    fn get_many(&self, table: &str, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        ids.iter().map(|id| self.get(table, id)).collect()
    }
    /// Reads these records ahead where that saves round trips (PostgreSQL: one query,
    /// then the transaction answers their `get`s itself); nothing on redb.
    fn prefetch(&self, _table: &str, _ids: &[&str]) -> Result<()> {
        Ok(())
    }
    /// [`RawRead::prefetch`] for records of several tables at once (PostgreSQL: one
    /// query for all of them).
    fn prefetch_tables(&self, wanted: &[(&str, Vec<&str>)]) -> Result<()> {
        for (table, ids) in wanted {
            self.prefetch(table, ids)?;
        }
        Ok(())
    }
    /// [`RawRead::prefetch`] for kept counts.
    fn prefetch_counters(&self, _names: &[&str]) -> Result<()> {
        Ok(())
    }
    /// See [`Ahead`]; nothing on redb.
    fn read_ahead(&self, _ahead: &Ahead) -> Result<()> {
        Ok(())
    }
    /// [`RawRead::prefetch`] for index entries (their `index_get`).
    fn prefetch_index(&self, _index: &str, _keys: &[&str]) -> Result<()> {
        Ok(())
    }
    /// Whether the chunk `seq` of an execution's log is stored.
    fn log_has(&self, execution_id: &str, seq: u64) -> Result<bool> {
        Ok(self
            .log_range(execution_id, seq, 1)?
            .first()
            .is_some_and(|(s, _)| *s == seq))
    }
    fn list(&self, table: &str) -> Result<Vec<Vec<u8>>>;
    fn count(&self, table: &str) -> Result<u64>;
    fn records_page(&self, table: &str, scan: &IndexScan) -> Result<Vec<Vec<u8>>>;
    fn index_get(&self, index: &str, key: &str) -> Result<Option<String>>;
    fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>>;
    fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>>;
    fn log_range(
        &self,
        execution_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>>;
    fn log_last_seq(&self, execution_id: &str) -> Result<Option<u64>>;
    fn counter(&self, name: &str) -> Result<u64>;
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The names of the record tables.
    fn tables(&self) -> Result<Vec<String>>;
    /// Up to `limit` `(id, body)` of a table after the id `after`, in id order.
    fn records_after(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// Up to `limit` `(index, key, id)` after `(index, key)`, in order.
    fn index_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>>;
    /// Up to `limit` `(execution, seq, chunk)` after `(execution, seq)`, in order.
    fn logs_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>>;
    fn index_count(&self) -> Result<u64>;
    fn log_count(&self) -> Result<u64>;
    fn counters_all(&self) -> Result<Vec<(String, u64)>>;
    fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>>;
}

pub(crate) trait RawWrite: RawRead {
    fn put(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()>;
    /// [`RawWrite::put`] of a record that must not exist: an error if it does.
    fn insert(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()>;
    fn delete(&mut self, table: &str, id: &str) -> Result<bool>;
    /// Removes a record if it exists, without saying whether it did (on PostgreSQL
    /// that costs no read).
    fn remove(&mut self, table: &str, id: &str) -> Result<()> {
        self.delete(table, id).map(|_| ())
    }
    fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()>;
    /// [`RawWrite::index_put`] of a key that must not exist: an error if it does.
    fn index_insert(&mut self, index: &str, key: &str, id: &str) -> Result<()>;
    fn index_delete(&mut self, index: &str, key: &str) -> Result<()>;
    fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool>;
    fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize>;
    fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64>;
    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<()>;
    /// Tells the database's listeners on `channel` when the transaction commits
    /// (PostgreSQL's `NOTIFY`); nothing on redb, which no other process shares.
    fn notify(&mut self, _channel: &'static str, _payload: String) -> Result<()> {
        Ok(())
    }
}

/// Reads shared by [`Reader`] and [`Writer`], so domain code that only reads can take
/// either.
pub trait Read {
    /// One record by id.
    fn get<T: Record>(&self, id: &str) -> Result<Option<T>>;
    /// A [`View`] of one record by id.
    fn get_view<V: View>(&self, id: &str) -> Result<Option<V>>;
    /// Several records by id, in the order given (`None` where missing): one query on
    /// PostgreSQL, where a page of records read one by one costs a round trip each.
    fn get_many<T: Record>(&self, ids: &[String]) -> Result<Vec<Option<T>>>;
    /// Whether the chunk `seq` of an execution's log is stored.
    fn log_has(&self, execution_id: &str, seq: u64) -> Result<bool>;
    /// Reads these records ahead when the backend gains by it (on PostgreSQL one query
    /// instead of a round trip per `get`; on redb nothing, a `get` there is cheap):
    /// for a page that reads several records per row.
    fn prefetch<T: Record>(&self, ids: &[String]) -> Result<()>;
    /// [`Read::prefetch`] for records of several tables, `(Record::TABLE, ids)` each:
    /// one query on PostgreSQL where one per table costs a round trip each.
    fn prefetch_tables(&self, wanted: &[(&str, &[String])]) -> Result<()>;
    /// [`Read::prefetch`] for kept counts (a dashboard reading three per project).
    fn prefetch_counters(&self, names: &[String]) -> Result<()>;
    /// Asks reads of several kinds ahead, together: see [`Ahead`].
    fn read_ahead(&self, ahead: &Ahead) -> Result<()>;
    /// [`Read::prefetch`] for index entries: what `index_get` will ask of `index`.
    fn prefetch_index(&self, index: &str, keys: &[String]) -> Result<()>;
    /// Every record of a type, in id order.
    fn list<T: Record>(&self) -> Result<Vec<T>>;
    /// The id an index entry points at.
    fn index_get(&self, index: &str, key: &str) -> Result<Option<String>>;
    /// Every `(key, id)` of an index whose key starts with `prefix`, in key order.
    fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>>;
    /// Stored log chunks of an execution from `from_seq` on, at most `limit`.
    fn log_range(
        &self,
        execution_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Number of records of a type.
    fn count<T: Record>(&self) -> Result<u64>;
    /// One page of an index, read through its order: see [`IndexScan`].
    fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>>;
    /// A count kept by [`Writer::counter_add`]; zero when never counted.
    fn counter(&self, name: &str) -> Result<u64>;
    /// One page of a record table in id order, bounded like an index page (the
    /// scan's `index` is ignored): for tables keyed by time-ordered ids.
    fn records_page<T: Record>(&self, scan: &IndexScan) -> Result<Vec<T>>;
}

macro_rules! impl_read {
    ($ty:ty) => {
        impl Read for $ty {
            fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
                self.raw()
                    .get(T::TABLE, id)?
                    .map(|bytes| decode::<T>(&self.sealing, &bytes))
                    .transpose()
            }

            fn get_view<V: View>(&self, id: &str) -> Result<Option<V>> {
                self.raw()
                    .get(V::Of::TABLE, id)?
                    .map(|bytes| decode_as::<V::Of, V>(&self.sealing, &bytes))
                    .transpose()
            }

            fn get_many<T: Record>(&self, ids: &[String]) -> Result<Vec<Option<T>>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.raw()
                    .get_many(T::TABLE, &ids)?
                    .into_iter()
                    .map(|bytes| bytes.map(|b| decode::<T>(&self.sealing, &b)).transpose())
                    .collect()
            }

            fn log_has(&self, execution_id: &str, seq: u64) -> Result<bool> {
                self.raw().log_has(execution_id, seq)
            }

            fn prefetch_tables(&self, wanted: &[(&str, &[String])]) -> Result<()> {
                let wanted: Vec<(&str, Vec<&str>)> = wanted
                    .iter()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(table, ids)| (*table, ids.iter().map(String::as_str).collect()))
                    .collect();
                if wanted.is_empty() {
                    return Ok(());
                }
                self.raw().prefetch_tables(&wanted)
            }

            fn read_ahead(&self, ahead: &Ahead) -> Result<()> {
                self.raw().read_ahead(ahead)
            }

            fn prefetch_counters(&self, names: &[String]) -> Result<()> {
                if names.is_empty() {
                    return Ok(());
                }
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                self.raw().prefetch_counters(&names)
            }

            fn prefetch_index(&self, index: &str, keys: &[String]) -> Result<()> {
                if keys.is_empty() {
                    return Ok(());
                }
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.raw().prefetch_index(index, &keys)
            }

            fn prefetch<T: Record>(&self, ids: &[String]) -> Result<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.raw().prefetch(T::TABLE, &ids)
            }

            fn list<T: Record>(&self) -> Result<Vec<T>> {
                self.raw()
                    .list(T::TABLE)?
                    .iter()
                    .map(|bytes| decode::<T>(&self.sealing, bytes))
                    .collect()
            }

            fn count<T: Record>(&self) -> Result<u64> {
                self.raw().count(T::TABLE)
            }

            fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>> {
                if scan.limit == 0 || scan.bounds().is_none() {
                    return Ok(Vec::new());
                }
                self.raw().index_page(scan)
            }

            fn records_page<T: Record>(&self, scan: &IndexScan) -> Result<Vec<T>> {
                if scan.limit == 0 || scan.bounds().is_none() {
                    return Ok(Vec::new());
                }
                self.raw()
                    .records_page(T::TABLE, scan)?
                    .iter()
                    .map(|bytes| decode::<T>(&self.sealing, bytes))
                    .collect()
            }

            fn counter(&self, name: &str) -> Result<u64> {
                self.raw().counter(name)
            }

            fn index_get(&self, index: &str, key: &str) -> Result<Option<String>> {
                self.raw().index_get(index, key)
            }

            fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>> {
                self.raw().index_scan(index, prefix)
            }

            fn log_range(
                &self,
                execution_id: &str,
                from_seq: u64,
                limit: usize,
            ) -> Result<Vec<(u64, Vec<u8>)>> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                self.raw().log_range(execution_id, from_seq, limit)
            }
        }
    };
}

impl_read!(Reader);
impl_read!(Writer);

impl Writer {
    /// See [`Store::require_free_space`]: domain code refuses new work with it.
    pub fn require_free_space(&self) -> Result<()> {
        self.store.require_free_space()
    }

    /// Inserts or replaces a record.
    pub fn put<T: Record>(&mut self, record: &T) -> Result<()> {
        let bytes = encode(&self.sealing, record)?;
        self.raw_mut().put(T::TABLE, record.id(), &bytes)
    }

    /// Stores a new record: an error (and so a failed transaction) if one with its id
    /// exists. For records whose id was just made (a UUIDv7): on PostgreSQL a plain
    /// insert is about a third cheaper than [`Writer::put`]'s upsert, which counts in
    /// a fan-out that creates 10,000 executions with their audit entries.
    pub fn insert<T: Record>(&mut self, record: &T) -> Result<()> {
        let bytes = encode(&self.sealing, record)?;
        self.raw_mut().insert(T::TABLE, record.id(), &bytes)
    }

    /// Removes a record; true when it existed.
    pub fn delete<T: Record>(&mut self, id: &str) -> Result<bool> {
        self.raw_mut().delete(T::TABLE, id)
    }

    /// Removes a record if it exists; cheaper than [`Writer::delete`] on PostgreSQL
    /// when the caller does not need to know whether it did.
    pub fn remove<T: Record>(&mut self, id: &str) -> Result<()> {
        self.raw_mut().remove(T::TABLE, id)
    }

    /// Points an index key at a record id.
    pub fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        self.raw_mut().index_put(index, key, id)
    }

    /// Adds an index key that must not exist (one that names a record just made): an
    /// error if it does. Cheaper than [`Writer::index_put`] on PostgreSQL, as
    /// [`Writer::insert`] is.
    pub fn index_insert(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        self.raw_mut().index_insert(index, key, id)
    }

    /// Removes an index key.
    pub fn index_delete(&mut self, index: &str, key: &str) -> Result<()> {
        self.raw_mut().index_delete(index, key)
    }

    /// Stores one log chunk unless that sequence number is already stored; true when
    /// it was new. Dedup by sequence number is what makes resends after a reconnect
    /// harmless.
    pub fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool> {
        self.raw_mut().log_append(execution_id, seq, chunk)
    }

    /// Adds `delta` (which may be negative) to a kept count, never below zero, and
    /// returns the new value. A count that reaches zero is removed.
    pub fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64> {
        self.raw_mut().counter_add(name, delta)
    }

    /// Deletes up to `limit` stored chunks of an execution's log, oldest first;
    /// returns how many it deleted (fewer than `limit`: the log is gone). Small
    /// batches keep each transaction short.
    pub fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize> {
        self.raw_mut().log_delete(execution_id, limit)
    }

    /// The highest stored sequence number of an execution's log.
    pub fn log_last_seq(&self, execution_id: &str) -> Result<Option<u64>> {
        self.raw().log_last_seq(execution_id)
    }

    fn meta_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.raw()
            .meta_get(key)?
            .map(|v| serde_json::from_slice(&v).context("decoding a meta value"))
            .transpose()
    }

    pub(crate) fn meta_put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.raw_mut().meta_put(key, &bytes)
    }
}

/// One page of one index: the `(key, id)` entries whose keys lie in
/// `[lower, upper]`, walked forwards (ascending keys) or backwards, starting strictly
/// after the key `after` (the last key of the previous page) when given, at most
/// `limit` entries. The cost is the page, never the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexScan {
    pub index: String,
    pub lower: String,
    pub upper: String,
    pub backward: bool,
    pub after: Option<String>,
    pub limit: usize,
}

impl IndexScan {
    /// Every key of `index` that starts with `prefix`, forwards, at most `limit`.
    pub fn prefix(index: &str, prefix: &str, limit: usize) -> IndexScan {
        let (lower, upper) = prefix_range(prefix);
        IndexScan {
            index: index.to_string(),
            lower,
            upper,
            backward: false,
            after: None,
            limit,
        }
    }

    /// The same scan walking backwards (newest first for time-ordered keys).
    pub fn backward(mut self) -> IndexScan {
        self.backward = true;
        self
    }

    /// Resumes after `key` (exclusive).
    pub fn after(mut self, key: Option<String>) -> IndexScan {
        self.after = key;
        self
    }

    /// The bounds actually walked, `None` when the range is empty.
    fn bounds(&self) -> Option<(Bound<&str>, Bound<&str>)> {
        let mut lower = Bound::Included(self.lower.as_str());
        let mut upper = Bound::Included(self.upper.as_str());
        if let Some(after) = self.after.as_deref() {
            if self.backward {
                if after <= self.upper.as_str() {
                    upper = Bound::Excluded(after);
                }
            } else if after >= self.lower.as_str() {
                lower = Bound::Excluded(after);
            }
        }
        let (lo, lo_open) = match lower {
            Bound::Included(k) => (k, false),
            Bound::Excluded(k) => (k, true),
            Bound::Unbounded => ("", false),
        };
        let (hi, hi_open) = match upper {
            Bound::Included(k) => (k, false),
            Bound::Excluded(k) => (k, true),
            Bound::Unbounded => (KEY_END, false),
        };
        if lo > hi || (lo == hi && (lo_open || hi_open)) {
            return None;
        }
        Some((lower, upper))
    }
}

/// The fixed tables of a redb file; every other table holds records.
const FIXED_TABLES: [&str; 4] = ["meta", "index", "execution_logs", "counters"];

macro_rules! impl_redb_read {
    ($ty:ty) => {
        impl RawRead for $ty {
            fn get(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
                let table = match self.open_table(record_table(table)) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let found = table.get(id)?.map(|v| v.value().to_vec());
                Ok(found)
            }

            fn list(&self, table: &str) -> Result<Vec<Vec<u8>>> {
                let table = match self.open_table(record_table(table)) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.iter()? {
                    let (_, v) = entry?;
                    out.push(v.value().to_vec());
                }
                Ok(out)
            }

            fn count(&self, table: &str) -> Result<u64> {
                match self.open_table(record_table(table)) {
                    Ok(t) => Ok(t.len()?),
                    Err(TableError::TableDoesNotExist(_)) => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }

            fn records_page(&self, table: &str, scan: &IndexScan) -> Result<Vec<Vec<u8>>> {
                let table = match self.open_table(record_table(table)) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let Some(bounds) = scan.bounds() else {
                    return Ok(Vec::new());
                };
                let range = table.range::<&str>(bounds)?;
                let mut out = Vec::with_capacity(scan.limit.min(1024));
                let entries: Box<dyn Iterator<Item = _>> = if scan.backward {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                for entry in entries {
                    let (_, v) = entry?;
                    out.push(v.value().to_vec());
                    if out.len() >= scan.limit {
                        break;
                    }
                }
                Ok(out)
            }

            fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>> {
                let table = match self.open_table(INDEX) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let Some((lower, upper)) = scan.bounds() else {
                    return Ok(Vec::new());
                };
                let index = scan.index.as_str();
                fn wrap<'k>(index: &'k str, b: Bound<&'k str>) -> Bound<(&'k str, &'k str)> {
                    match b {
                        Bound::Included(k) => Bound::Included((index, k)),
                        Bound::Excluded(k) => Bound::Excluded((index, k)),
                        Bound::Unbounded => Bound::Unbounded,
                    }
                }
                let range =
                    table.range::<(&str, &str)>((wrap(index, lower), wrap(index, upper)))?;
                let entries: Box<dyn Iterator<Item = _>> = if scan.backward {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                let mut out = Vec::with_capacity(scan.limit.min(1024));
                for entry in entries {
                    let (k, v) = entry?;
                    out.push((k.value().1.to_string(), v.value().to_string()));
                    if out.len() >= scan.limit {
                        break;
                    }
                }
                Ok(out)
            }

            fn counter(&self, name: &str) -> Result<u64> {
                let table = match self.open_table(COUNTERS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                };
                let value = table.get(name)?.map(|v| v.value()).unwrap_or(0);
                Ok(value)
            }

            fn index_get(&self, index: &str, key: &str) -> Result<Option<String>> {
                let table = match self.open_table(INDEX) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let found = table.get((index, key))?.map(|v| v.value().to_string());
                Ok(found)
            }

            fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>> {
                let table = match self.open_table(INDEX) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.range((index, prefix)..)? {
                    let (k, v) = entry?;
                    let (name, key) = k.value();
                    if name != index || !key.starts_with(prefix) {
                        break;
                    }
                    out.push((key.to_string(), v.value().to_string()));
                }
                Ok(out)
            }

            fn log_range(
                &self,
                execution_id: &str,
                from_seq: u64,
                limit: usize,
            ) -> Result<Vec<(u64, Vec<u8>)>> {
                let table = match self.open_table(LOGS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.range((execution_id, from_seq)..=(execution_id, u64::MAX))? {
                    let (k, v) = entry?;
                    out.push((k.value().1, v.value().to_vec()));
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(out)
            }

            fn log_last_seq(&self, execution_id: &str) -> Result<Option<u64>> {
                let table = match self.open_table(LOGS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let last = table
                    .range((execution_id, 0)..=(execution_id, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                Ok(last)
            }

            fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
                let table = match self.open_table(META) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let value = table.get(key)?.map(|v| v.value().to_vec());
                Ok(value)
            }

            fn tables(&self) -> Result<Vec<String>> {
                let mut out = Vec::new();
                for handle in self.list_tables()? {
                    let name = handle.name().to_string();
                    if !FIXED_TABLES.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
                out.sort();
                Ok(out)
            }

            fn records_after(
                &self,
                table: &str,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<(String, Vec<u8>)>> {
                let table = match self.open_table(record_table(table)) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let lower = match after {
                    Some(id) => Bound::Excluded(id),
                    None => Bound::Unbounded,
                };
                let mut out = Vec::new();
                for entry in table.range::<&str>((lower, Bound::Unbounded))?.take(limit) {
                    let (k, v) = entry?;
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            }

            fn index_after(
                &self,
                after: Option<(&str, &str)>,
                limit: usize,
            ) -> Result<Vec<(String, String, String)>> {
                let table = match self.open_table(INDEX) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let lower = match after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                let mut out = Vec::new();
                for entry in table
                    .range::<(&str, &str)>((lower, Bound::Unbounded))?
                    .take(limit)
                {
                    let (k, v) = entry?;
                    let (index, key) = k.value();
                    out.push((index.to_string(), key.to_string(), v.value().to_string()));
                }
                Ok(out)
            }

            fn logs_after(
                &self,
                after: Option<(&str, u64)>,
                limit: usize,
            ) -> Result<Vec<(String, u64, Vec<u8>)>> {
                let table = match self.open_table(LOGS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let lower = match after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                let mut out = Vec::new();
                for entry in table
                    .range::<(&str, u64)>((lower, Bound::Unbounded))?
                    .take(limit)
                {
                    let (k, v) = entry?;
                    let (execution, seq) = k.value();
                    out.push((execution.to_string(), seq, v.value().to_vec()));
                }
                Ok(out)
            }

            fn index_count(&self) -> Result<u64> {
                match self.open_table(INDEX) {
                    Ok(t) => Ok(t.len()?),
                    Err(TableError::TableDoesNotExist(_)) => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }

            fn log_count(&self) -> Result<u64> {
                match self.open_table(LOGS) {
                    Ok(t) => Ok(t.len()?),
                    Err(TableError::TableDoesNotExist(_)) => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }

            fn counters_all(&self) -> Result<Vec<(String, u64)>> {
                let table = match self.open_table(COUNTERS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    out.push((k.value().to_string(), v.value()));
                }
                Ok(out)
            }

            fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
                let table = match self.open_table(META) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            }
        }
    };
}

impl_redb_read!(redb::ReadTransaction);
impl_redb_read!(redb::WriteTransaction);

impl RawWrite for redb::WriteTransaction {
    fn put(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()> {
        let mut table = self.open_table(record_table(table))?;
        table.insert(id, body)?;
        Ok(())
    }

    fn insert(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()> {
        let name = table;
        let mut table = self.open_table(record_table(table))?;
        if table.get(id)?.is_some() {
            return Err(Exists::record(name, id).into());
        }
        table.insert(id, body)?;
        Ok(())
    }

    fn delete(&mut self, table: &str, id: &str) -> Result<bool> {
        let mut table = self.open_table(record_table(table))?;
        let existed = table.remove(id)?.is_some();
        Ok(existed)
    }

    fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        let mut table = self.open_table(INDEX)?;
        table.insert((index, key), id)?;
        Ok(())
    }

    fn index_insert(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        let mut table = self.open_table(INDEX)?;
        if table.get((index, key))?.is_some() {
            return Err(Exists::index(index, key).into());
        }
        table.insert((index, key), id)?;
        Ok(())
    }

    fn index_delete(&mut self, index: &str, key: &str) -> Result<()> {
        let mut table = self.open_table(INDEX)?;
        table.remove((index, key))?;
        Ok(())
    }

    fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool> {
        let mut table = self.open_table(LOGS)?;
        if table.get((execution_id, seq))?.is_some() {
            return Ok(false);
        }
        table.insert((execution_id, seq), chunk)?;
        Ok(true)
    }

    fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize> {
        let mut table = self.open_table(LOGS)?;
        let seqs: Vec<u64> = table
            .range((execution_id, 0)..=(execution_id, u64::MAX))?
            .take(limit)
            .map(|entry| entry.map(|(k, _)| k.value().1))
            .collect::<std::result::Result<_, _>>()?;
        for seq in &seqs {
            table.remove((execution_id, *seq))?;
        }
        Ok(seqs.len())
    }

    fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64> {
        let mut table = self.open_table(COUNTERS)?;
        let current = table.get(name)?.map(|v| v.value()).unwrap_or(0);
        let next = apply_delta(current, delta);
        if next == 0 {
            table.remove(name)?;
        } else {
            table.insert(name, next)?;
        }
        Ok(next)
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut table = self.open_table(META)?;
        table.insert(key, value)?;
        Ok(())
    }
}

/// `current + delta`, saturating at zero and at the top.
fn apply_delta(current: u64, delta: i64) -> u64 {
    if delta >= 0 {
        current.saturating_add(delta.unsigned_abs())
    } else {
        current.saturating_sub(delta.unsigned_abs())
    }
}
