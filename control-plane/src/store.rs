//! The store: one redb file, `DATA_DIR/dynserv.redb`, reached only through this module.
//!
//! Domain modules describe their records with [`Record`] (a table name and an id) and
//! read or write them inside a transaction: [`Store::read`] hands out a [`Reader`],
//! [`Store::write`] a [`Writer`] whose changes commit together with immediate
//! durability, or not at all when the closure returns an error. Secondary indexes are
//! one table of `(index, key) -> id` entries; execution logs have their own table keyed
//! by `(execution_id, seq)`. Nothing outside this module names a redb type, so another
//! backend (PostgreSQL for several replicas) can stand behind the same interface.
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
pub const SCHEMA_VERSION: u64 = 5;

/// Ordered migrations: entry `i` moves the schema from version `i` to `i + 1`.
type Migration = fn(&mut Writer) -> Result<()>;
const MIGRATIONS: &[Migration] = &[
    migrate_v0_to_v1,
    crate::executions::backfill_indexes,
    crate::audit::backfill_indexes,
    crate::notifications::backfill_counts,
    crate::listing::backfill_indexes,
];

/// Version 1 is the first schema: it only needs its fixed tables to exist.
fn migrate_v0_to_v1(writer: &mut Writer) -> Result<()> {
    writer.txn.open_table(INDEX)?;
    writer.txn.open_table(LOGS)?;
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

fn table_of<T: Record>() -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(T::TABLE)
}

/// The embedded database. Cheap to clone; every clone is the same file.
#[derive(Clone)]
pub struct Store {
    /// The open file; closed and reopened by [`Store::recover`] after an I/O error
    /// (`None` only while it is being reopened).
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: PathBuf,
    cache_bytes: usize,
    /// The key of sealed records; set once by the application.
    sealing: Arc<OnceLock<Keys>>,
    /// Why writes fail, while they do.
    failure: Arc<Mutex<Option<String>>>,
    /// Free bytes under the store's directory below which new work is refused.
    space_floor: Arc<AtomicU64>,
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

/// A store error callers should answer as "try again later" (503): the disk is full
/// or the file cannot be written; nothing was written.
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
        let store = Store {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path: path.to_path_buf(),
            cache_bytes,
            sealing: Arc::new(OnceLock::new()),
            failure: Arc::new(Mutex::new(None)),
            space_floor: Arc::new(AtomicU64::new(0)),
        };
        store.migrate()?;
        Ok(store)
    }

    fn database(&self) -> Result<Arc<Database>> {
        let db = match self.db.read() {
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

    /// Tries a small write; when the store had failed, reopens the file first (redb
    /// refuses every call after an I/O error until it is reopened). Clears the
    /// failure when the write commits. Run periodically by the health task.
    pub fn recover(&self) -> Result<()> {
        if self.health().is_err() {
            let mut guard = match self.db.write() {
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
            match open_database(&self.path, self.cache_bytes) {
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

    /// Sets the free space (bytes) below which [`Store::require_free_space`] refuses.
    pub fn set_space_floor(&self, bytes: u64) {
        self.space_floor.store(bytes, Ordering::Relaxed);
    }

    /// `Err(LowDisk)` while the file system holding the store has less free space
    /// than the floor: callers refuse new work that would write more.
    pub fn require_free_space(&self) -> Result<()> {
        let floor = self.space_floor.load(Ordering::Relaxed);
        if floor == 0 {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
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

    /// Runs `f` in a read transaction: a consistent snapshot.
    #[track_caller]
    pub fn read<R>(&self, f: impl FnOnce(&Reader) -> Result<R>) -> Result<R> {
        note_call_site();
        let txn = self
            .database()?
            .begin_read()
            .map_err(|e| match storage_reason(&e.into()) {
                Some(reason) => anyhow::Error::new(Unavailable(reason)),
                None => anyhow::anyhow!("starting a read transaction"),
            })?;
        f(&Reader {
            txn,
            sealing: self.sealing.clone(),
        })
    }

    /// Runs `f` in a write transaction and commits with immediate durability when it
    /// returns `Ok`; on `Err` nothing it wrote is kept.
    #[track_caller]
    pub fn write<R>(&self, f: impl FnOnce(&mut Writer) -> Result<R>) -> Result<R> {
        note_call_site();
        let db = self.database()?;
        let mut txn = db
            .begin_write()
            .map_err(|e| self.storage_failure(e.into(), "starting a write transaction"))?;
        txn.set_durability(Durability::Immediate);
        let mut writer = Writer {
            txn,
            sealing: self.sealing.clone(),
            store: self.clone(),
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
        writer
            .txn
            .commit()
            .map_err(|e| self.storage_failure(e.into(), "committing a write transaction"))?;
        if self.health().is_err() {
            self.set_failure(None);
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
    /// one read snapshot, so it can run while the server keeps writing.
    pub fn backup_to(&self, out: &Path) -> Result<()> {
        if out.exists() {
            anyhow::bail!("{} already exists; choose a new file", out.display());
        }
        let tmp = out.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        dynserv_agent::private_fs::touch(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let copy = Database::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let src = self.database()?.begin_read()?;
        let mut dst = copy.begin_write()?;
        dst.set_durability(Durability::Immediate);
        for handle in src.list_tables()? {
            let name = handle.name().to_string();
            match name.as_str() {
                "index" => copy_table(&src, &mut dst, INDEX)?,
                "execution_logs" => copy_table(&src, &mut dst, LOGS)?,
                "counters" => copy_table(&src, &mut dst, COUNTERS)?,
                _ => copy_table(
                    &src,
                    &mut dst,
                    TableDefinition::<&str, &[u8]>::new(name.as_str()),
                )?,
            }
        }
        dst.commit()?;
        drop(copy);
        std::fs::rename(&tmp, out)
            .with_context(|| format!("moving the copy to {}", out.display()))?;
        Ok(())
    }
}

/// Whether an error comes from the storage below (I/O, a full disk, a file redb
/// refuses after an earlier I/O error) rather than from the caller.
fn is_storage_error(e: &anyhow::Error) -> bool {
    storage_reason(e).is_some()
}

/// A plain sentence for a storage error, or `None` when it is not one.
fn storage_reason(e: &anyhow::Error) -> Option<String> {
    for cause in e.chain() {
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
        let text = cause.to_string();
        if text.contains("No space left on device") || text.contains("os error 28") {
            return Some("no space left on the device that holds the store".into());
        }
        if text.contains("Previous I/O error") {
            return Some("an earlier write failed (I/O error); reopening the store".into());
        }
        if let Some(u) = cause.downcast_ref::<Unavailable>() {
            return Some(u.0.clone());
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

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    dst: &mut redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let from = src.open_table(def)?;
    let mut to = dst.open_table(def)?;
    for entry in from.iter()? {
        let (k, v) = entry?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Prefix of sealed records as stored (what [`Keys::encrypt`] writes).
const SEALED_PREFIX: &[u8] = b"v1.";

fn decode<T: Record>(sealing: &OnceLock<Keys>, bytes: &[u8]) -> Result<T> {
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

/// Read access inside a transaction.
pub struct Reader {
    txn: redb::ReadTransaction,
    sealing: Arc<OnceLock<Keys>>,
}

/// Read and write access inside a transaction that commits as one.
pub struct Writer {
    txn: redb::WriteTransaction,
    sealing: Arc<OnceLock<Keys>>,
    /// The store this transaction belongs to (for its free-space floor).
    store: Store,
}

/// Reads shared by [`Reader`] and [`Writer`], so domain code that only reads can take
/// either.
pub trait Read {
    /// One record by id.
    fn get<T: Record>(&self, id: &str) -> Result<Option<T>>;
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

macro_rules! impl_read {
    ($ty:ty) => {
        impl Read for $ty {
            fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
                let table = match self.txn.open_table(table_of::<T>()) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let found = table
                    .get(id)?
                    .map(|v| decode::<T>(&self.sealing, v.value()));
                found.transpose()
            }

            fn list<T: Record>(&self) -> Result<Vec<T>> {
                let table = match self.txn.open_table(table_of::<T>()) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for entry in table.iter()? {
                    let (_, v) = entry?;
                    out.push(decode::<T>(&self.sealing, v.value())?);
                }
                Ok(out)
            }

            fn count<T: Record>(&self) -> Result<u64> {
                match self.txn.open_table(table_of::<T>()) {
                    Ok(t) => Ok(t.len()?),
                    Err(TableError::TableDoesNotExist(_)) => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }

            fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>> {
                let table = match self.txn.open_table(INDEX) {
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
                let mut out = Vec::with_capacity(scan.limit.min(1024));
                let mut push = |entry: std::result::Result<
                    (
                        redb::AccessGuard<'_, (&str, &str)>,
                        redb::AccessGuard<'_, &str>,
                    ),
                    redb::StorageError,
                >|
                 -> Result<bool> {
                    let (k, v) = entry?;
                    out.push((k.value().1.to_string(), v.value().to_string()));
                    Ok(out.len() < scan.limit)
                };
                if scan.limit == 0 {
                    return Ok(Vec::new());
                }
                if scan.backward {
                    for entry in range.rev() {
                        if !push(entry)? {
                            break;
                        }
                    }
                } else {
                    for entry in range {
                        if !push(entry)? {
                            break;
                        }
                    }
                }
                Ok(out)
            }

            fn records_page<T: Record>(&self, scan: &IndexScan) -> Result<Vec<T>> {
                let table = match self.txn.open_table(table_of::<T>()) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let Some(bounds) = scan.bounds() else {
                    return Ok(Vec::new());
                };
                if scan.limit == 0 {
                    return Ok(Vec::new());
                }
                let range = table.range::<&str>(bounds)?;
                let mut out = Vec::with_capacity(scan.limit.min(1024));
                let entries: Box<dyn Iterator<Item = _>> = if scan.backward {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                for entry in entries {
                    let (_, v) = entry?;
                    out.push(decode::<T>(&self.sealing, v.value())?);
                    if out.len() >= scan.limit {
                        break;
                    }
                }
                Ok(out)
            }

            fn counter(&self, name: &str) -> Result<u64> {
                let table = match self.txn.open_table(COUNTERS) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                };
                let value = table.get(name)?.map(|v| v.value()).unwrap_or(0);
                Ok(value)
            }

            fn index_get(&self, index: &str, key: &str) -> Result<Option<String>> {
                let table = match self.txn.open_table(INDEX) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let found = table.get((index, key))?.map(|v| v.value().to_string());
                Ok(found)
            }

            fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>> {
                let table = match self.txn.open_table(INDEX) {
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
                let table = match self.txn.open_table(LOGS) {
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
        let mut table = self.txn.open_table(table_of::<T>())?;
        table.insert(record.id(), bytes.as_slice())?;
        Ok(())
    }

    /// Removes a record; true when it existed.
    pub fn delete<T: Record>(&mut self, id: &str) -> Result<bool> {
        let mut table = self.txn.open_table(table_of::<T>())?;
        let existed = table.remove(id)?.is_some();
        Ok(existed)
    }

    /// Points an index key at a record id.
    pub fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        let mut table = self.txn.open_table(INDEX)?;
        table.insert((index, key), id)?;
        Ok(())
    }

    /// Removes an index key.
    pub fn index_delete(&mut self, index: &str, key: &str) -> Result<()> {
        let mut table = self.txn.open_table(INDEX)?;
        table.remove((index, key))?;
        Ok(())
    }

    /// Stores one log chunk unless that sequence number is already stored; true when
    /// it was new. Dedup by sequence number is what makes resends after a reconnect
    /// harmless.
    pub fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool> {
        let mut table = self.txn.open_table(LOGS)?;
        if table.get((execution_id, seq))?.is_some() {
            return Ok(false);
        }
        table.insert((execution_id, seq), chunk)?;
        Ok(true)
    }

    /// Adds `delta` (which may be negative) to a kept count, never below zero, and
    /// returns the new value. A count that reaches zero is removed.
    pub fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64> {
        let mut table = self.txn.open_table(COUNTERS)?;
        let current = table.get(name)?.map(|v| v.value()).unwrap_or(0);
        let next = if delta >= 0 {
            current.saturating_add(delta.unsigned_abs())
        } else {
            current.saturating_sub(delta.unsigned_abs())
        };
        if next == 0 {
            table.remove(name)?;
        } else {
            table.insert(name, next)?;
        }
        Ok(next)
    }

    /// Deletes up to `limit` stored chunks of an execution's log, oldest first;
    /// returns how many it deleted (fewer than `limit`: the log is gone). Small
    /// batches keep each transaction short.
    pub fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize> {
        let mut table = self.txn.open_table(LOGS)?;
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

    /// The highest stored sequence number of an execution's log.
    pub fn log_last_seq(&self, execution_id: &str) -> Result<Option<u64>> {
        let table = self.txn.open_table(LOGS)?;
        let last = table
            .range((execution_id, 0)..=(execution_id, u64::MAX))?
            .next_back()
            .transpose()?
            .map(|(k, _)| k.value().1);
        Ok(last)
    }

    fn meta_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let table = self.txn.open_table(META)?;
        let value = table.get(key)?.map(|v| v.value().to_vec());
        value
            .map(|v| serde_json::from_slice(&v).context("decoding a meta value"))
            .transpose()
    }

    fn meta_put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        let mut table = self.txn.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: String,
        n: u32,
    }
    impl Record for Thing {
        const TABLE: &'static str = "things";
        fn id(&self) -> &str {
            &self.id
        }
    }

    /// A reopened store finds every record, index entry and log chunk it was given.
    #[test]
    fn reopen_finds_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|w| {
                    w.put(&Thing {
                        id: "a".into(),
                        n: 1,
                    })?;
                    w.put(&Thing {
                        id: "b".into(),
                        n: 2,
                    })?;
                    w.index_put("thing_by_n", "2", "b")?;
                    assert!(w.log_append("x", 0, b"hello")?);
                    assert!(!w.log_append("x", 0, b"again")?);
                    w.log_append("x", 1, b"world")?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list::<Thing>().unwrap().len(), 2);
        assert_eq!(store.get::<Thing>("b").unwrap().unwrap().n, 2);
        store
            .read(|r| {
                assert_eq!(r.index_get("thing_by_n", "2")?.as_deref(), Some("b"));
                let logs = r.log_range("x", 0, 10)?;
                assert_eq!(logs, vec![(0, b"hello".to_vec()), (1, b"world".to_vec())]);
                Ok(())
            })
            .unwrap();
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Secret {
        id: String,
        value: String,
    }
    impl Record for Secret {
        const TABLE: &'static str = "secrets_test";
        const SEALED: bool = true;
        fn id(&self) -> &str {
            &self.id
        }
    }

    /// A sealed record is stored encrypted (the file and a backup never hold its
    /// value), reads back with the key, and cannot be written or read without it.
    #[test]
    fn sealed_records_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let secret = Secret {
            id: "s".into(),
            value: "hunter2-very-secret".into(),
        };
        {
            let store = Store::open(&path).unwrap();
            let refused = store.put(&secret).unwrap_err();
            assert!(format!("{refused:#}").contains("no key"), "{refused:#}");
            store.seal_with(Keys::from_master(b"master"));
            store.put(&secret).unwrap();
            assert_eq!(store.get::<Secret>("s").unwrap(), Some(secret));
            store.backup_to(&dir.path().join("copy.redb")).unwrap();
        }
        for file in ["s.redb", "copy.redb"] {
            let bytes = std::fs::read(dir.path().join(file)).unwrap();
            assert!(
                !bytes.windows(b"hunter2".len()).any(|w| w == b"hunter2"),
                "{file} holds the secret in clear"
            );
        }
        let store = Store::open(&path).unwrap();
        assert!(store.get::<Secret>("s").is_err(), "read without the key");
        store.seal_with(Keys::from_master(b"another master"));
        assert!(store.get::<Secret>("s").is_err(), "read with the wrong key");
    }

    /// A write closure that fails leaves nothing behind.
    #[test]
    fn failed_write_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let result: Result<()> = store.write(|w| {
            w.put(&Thing {
                id: "a".into(),
                n: 1,
            })?;
            anyhow::bail!("invalid")
        });
        assert!(result.is_err());
        assert!(store.get::<Thing>("a").unwrap().is_none());
    }

    /// A backup taken from a live store opens and holds the same records.
    #[test]
    fn backup_is_a_consistent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .put(&Thing {
                id: "a".into(),
                n: 7,
            })
            .unwrap();
        store
            .write(|w| w.log_append("e", 3, b"x").map(|_| ()))
            .unwrap();
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

    /// Index pages walk forwards and backwards, resume strictly after a cursor key,
    /// stay inside their prefix and index, and see deletes made between pages.
    #[test]
    fn index_pages_walk_both_ways_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                for n in 1..=7 {
                    w.index_put("by_p", &format!("p/{n:03}"), &format!("id{n}"))?;
                }
                w.index_put("by_p", "q/001", "other-prefix")?;
                w.index_put("by_p2", "p/004", "other-index")?;
                w.index_put("by_o", "p/009", "index-before")?;
                Ok(())
            })
            .unwrap();
        let page = |scan: IndexScan| store.read(|r| r.index_page(&scan)).unwrap();
        let all = IndexScan::prefix("by_p", "p/", 100);
        // (scan, expected keys)
        let cases: Vec<(IndexScan, Vec<&str>)> = vec![
            (
                all.clone(),
                vec![
                    "p/001", "p/002", "p/003", "p/004", "p/005", "p/006", "p/007",
                ],
            ),
            (
                IndexScan {
                    limit: 3,
                    ..all.clone()
                },
                vec!["p/001", "p/002", "p/003"],
            ),
            (
                IndexScan {
                    limit: 3,
                    ..all.clone()
                }
                .backward(),
                vec!["p/007", "p/006", "p/005"],
            ),
            (
                IndexScan {
                    limit: 3,
                    ..all.clone()
                }
                .after(Some("p/003".into())),
                vec!["p/004", "p/005", "p/006"],
            ),
            (
                IndexScan {
                    limit: 3,
                    ..all.clone()
                }
                .backward()
                .after(Some("p/005".into())),
                vec!["p/004", "p/003", "p/002"],
            ),
            // A cursor that is no longer stored still resumes at the right place.
            (
                all.clone().after(Some("p/0045".into())),
                vec!["p/005", "p/006", "p/007"],
            ),
            (all.clone().backward().after(Some("p/001".into())), vec![]),
            (all.clone().after(Some("p/007".into())), vec![]),
            (
                IndexScan {
                    limit: 0,
                    ..all.clone()
                },
                vec![],
            ),
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
        ];
        for (scan, expected) in cases {
            assert_eq!(keys(&page(scan.clone())), expected, "{scan:?}");
        }
        // Deletes between two pages: the next page goes on from the cursor.
        let first = page(IndexScan {
            limit: 2,
            ..all.clone()
        });
        store
            .write(|w| {
                w.index_delete("by_p", "p/003")?;
                w.index_delete("by_p", "p/002")
            })
            .unwrap();
        let cursor = first.last().map(|(k, _)| k.clone());
        let next = page(
            IndexScan {
                limit: 2,
                ..all.clone()
            }
            .after(cursor),
        );
        assert_eq!(keys(&next), vec!["p/004", "p/005"]);
        assert_eq!(next[0].1, "id4");
    }

    /// Kept counts add and subtract in the writer's transaction, never go below
    /// zero, and vanish with a failed transaction.
    #[test]
    fn counters_follow_their_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
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

    /// Log chunks are deleted in batches of the size asked for.
    #[test]
    fn logs_delete_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                for seq in 0..5 {
                    w.log_append("e", seq, b"x")?;
                }
                w.log_append("f", 0, b"y")?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 3);
        assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 2);
        assert_eq!(store.write(|w| w.log_delete("e", 3)).unwrap(), 0);
        assert_eq!(store.read(|r| r.log_range("f", 0, 9)).unwrap().len(), 1);
    }
}
