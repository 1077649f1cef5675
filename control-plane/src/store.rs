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
//! What does not live here: any rule about what a record may contain (the domain
//! modules own those).

use std::path::Path;
use std::sync::{Arc, OnceLock};

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

/// The schema version this binary writes. Each step in [`MIGRATIONS`] moves the stored
/// version up by one.
pub const SCHEMA_VERSION: u64 = 1;

/// Ordered migrations: entry `i` moves the schema from version `i` to `i + 1`.
type Migration = fn(&mut Writer) -> Result<()>;
const MIGRATIONS: &[Migration] = &[migrate_v0_to_v1];

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
    db: Arc<Database>,
    /// The key of sealed records; set once by the application.
    sealing: Arc<OnceLock<Keys>>,
}

impl Store {
    /// Opens (or creates) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        // Owner-only whatever the umask: the store holds hashes and sealed secrets.
        dynserv_agent::private_fs::touch(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "the store {} is in use by another dynserv process",
                path.display()
            ),
            other => anyhow::Error::new(other).context(format!("opening {}", path.display())),
        })?;
        let store = Store {
            db: Arc::new(db),
            sealing: Arc::new(OnceLock::new()),
        };
        store.migrate()?;
        Ok(store)
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
                MIGRATIONS[version as usize](w)
                    .with_context(|| format!("migrating the store from version {version}"))?;
                version += 1;
                w.meta_put("schema_version", &version)?;
            }
            Ok(())
        })
    }

    /// Gives the store the key that seals [`Record::SEALED`] records. The first key
    /// given stays.
    pub fn seal_with(&self, keys: Keys) {
        let _ = self.sealing.set(keys);
    }

    /// Runs `f` in a read transaction: a consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&Reader) -> Result<R>) -> Result<R> {
        let txn = self
            .db
            .begin_read()
            .context("starting a read transaction")?;
        f(&Reader {
            txn,
            sealing: self.sealing.clone(),
        })
    }

    /// Runs `f` in a write transaction and commits with immediate durability when it
    /// returns `Ok`; on `Err` nothing it wrote is kept.
    pub fn write<R>(&self, f: impl FnOnce(&mut Writer) -> Result<R>) -> Result<R> {
        let mut txn = self
            .db
            .begin_write()
            .context("starting a write transaction")?;
        txn.set_durability(Durability::Immediate);
        let mut writer = Writer {
            txn,
            sealing: self.sealing.clone(),
        };
        let value = f(&mut writer)?;
        writer
            .txn
            .commit()
            .context("committing a write transaction")?;
        Ok(value)
    }

    /// Reads one record.
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        self.read(|r| r.get(id))
    }

    /// Reads every record of a type, in id order.
    pub fn list<T: Record>(&self) -> Result<Vec<T>> {
        self.read(|r| r.list())
    }

    /// Writes one record in its own transaction.
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
        let src = self.db.begin_read()?;
        let mut dst = copy.begin_write()?;
        dst.set_durability(Durability::Immediate);
        for handle in src.list_tables()? {
            let name = handle.name().to_string();
            match name.as_str() {
                "index" => copy_table(&src, &mut dst, INDEX)?,
                "execution_logs" => copy_table(&src, &mut dst, LOGS)?,
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
}
