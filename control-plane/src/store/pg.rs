//! The PostgreSQL backend: the same records, indexes, logs and counts as the redb
//! file, in five tables, shared by every replica that connects to the database.
//!
//! * **Tables.** `dynserv_records (tbl, id, body)`, `dynserv_index (name, key, id)`,
//!   `dynserv_logs (execution_id, seq, chunk)`, `dynserv_counters (name, n)`,
//!   `dynserv_meta (key, value)`. Keys are `text COLLATE "C"`, so they sort bytewise
//!   like redb's and an index page is one range scan of a primary key.
//! * **Transactions.** A reader is a `REPEATABLE READ READ ONLY` transaction (one
//!   snapshot). A writer takes `pg_advisory_xact_lock(WRITE_LOCK)` first: writers are
//!   serialized across every replica exactly as redb serializes them in one process,
//!   so a domain function that checks and then writes (a free user name, a kept count)
//!   never races another replica, and nothing has to be retried. Inside one process a
//!   writer waits for its turn before it takes a connection, so waiting writers never
//!   hold the pool, and page loads' reads give way to everything else ([`Turns`]).
//!   The primary keys make the database itself refuse a duplicate key.
//! * **Blocking.** Store calls are synchronous and run on the blocking pool. The
//!   driver is tokio-postgres (TLS by rustls), but its connections belong to no
//!   runtime: the thread that waits for an answer drives the connection itself and
//!   sleeps on its socket ([`conn`]), so a round trip costs no thread hand-off.
//! * **Errors.** A connection that cannot be made or is lost, and the database's
//!   resource and system errors, are [`super::Unavailable`]: callers answer 503 and
//!   `/healthz` says why until a write works again.
//!
//! What does not live here: the cluster's notifications and leader election
//! (`crate::cluster`), which use [`Pg::dedicated`] and [`Pg::notify`].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{apply_delta, IndexScan, RawRead, RawWrite};
use crate::runtime::OwnedRuntime;
pub use conn::blind_waits;
use conn::{Pool, Pooled};

mod conn;

/// The advisory lock every write transaction takes (`"dynserv-write"` as a number).
pub const WRITE_LOCK: i64 = 0x6479_6e73_7276_5f77;

/// Connections per replica: enough for the blocking pool's readers; writers use one
/// at a time.
const POOL_SIZE: usize = 16;
/// How long a store call waits for a free connection or a new one.
const POOL_WAIT: Duration = Duration::from_secs(30);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS dynserv_meta (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS dynserv_records (
    tbl text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE TABLE IF NOT EXISTS dynserv_index (
    name text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    id text NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS dynserv_logs (
    execution_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    chunk bytea NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
CREATE TABLE IF NOT EXISTS dynserv_counters (
    name text COLLATE "C" PRIMARY KEY,
    n bigint NOT NULL
);
"#;

/// Output chunks (up to `MAX_CHUNK_LEN` of text each) compressed with lz4 instead
/// of PostgreSQL's default pglz, which compresses several times slower: with a fast
/// job, pglz was the largest single cost of storing its output, on the path every
/// line takes to a viewer on another replica. Only on PostgreSQL 14 or later built
/// with lz4 (Debian's, the official images' and the managed services' are); any other
/// keeps pglz. Set once (the column's setting is checked first, so replicas starting
/// later take no lock on the table); chunks stored before keep their compression.
const LOG_COMPRESSION: &str = r#"
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        IF (SELECT attcompression FROM pg_attribute
            WHERE attrelid = 'dynserv_logs'::regclass AND attname = 'chunk') <> 'l' THEN
            BEGIN
                ALTER TABLE dynserv_logs ALTER COLUMN chunk SET COMPRESSION lz4;
            EXCEPTION WHEN feature_not_supported THEN
                NULL;
            END;
        END IF;
    END IF;
END
$$;
"#;

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}:***@{host}")
        }
        None => authority.to_string(),
    };
    let tail = tail.split_once('?').map_or(tail, |(path, _)| path);
    format!("{scheme}://{authority}{tail}")
}

/// How the connection is protected, from libpq's `sslmode` and `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tls {
    /// `disable`: never TLS.
    Off,
    /// `allow`, `prefer` (the default) and `require`: TLS when the server offers it
    /// (required with `require`), its certificate not checked, as libpq does without a
    /// root certificate.
    Unverified { required: bool },
    /// `verify-ca` / `verify-full`: TLS whose certificate chains to `sslrootcert`
    /// (and, with `verify-full`, names the host).
    Verified { root_cert: String, check_name: bool },
}

/// Splits libpq's TLS parameters off a URL, which tokio-postgres reads only in part.
fn parse_url(url: &str) -> Result<(String, Tls)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = "prefer".to_string();
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = value.to_string(),
            "sslrootcert" => root_cert = Some(percent_decode(value)),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_str() {
        "disable" => Tls::Off,
        "allow" | "prefer" => Tls::Unverified { required: false },
        "require" if root_cert.is_none() => Tls::Unverified { required: true },
        "require" | "verify-ca" | "verify-full" => Tls::Verified {
            root_cert: root_cert.with_context(|| {
                format!("DATABASE_URL: sslmode={mode} needs sslrootcert=FILE (the CA that signed the server's certificate)")
            })?,
            check_name: mode == "verify-full",
        },
        other => anyhow::bail!(
            "DATABASE_URL: sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    let mode = match &tls {
        Tls::Off => "disable",
        Tls::Unverified { required: false } => "prefer",
        _ => "require",
    };
    kept.push(match mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_connector(tls: &Tls) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS for the database")?;
    let config = match tls {
        Tls::Off | Tls::Unverified { .. } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Tls::Verified {
            root_cert,
            check_name,
        } => {
            let pem = std::fs::read_to_string(root_cert)
                .with_context(|| format!("reading sslrootcert {root_cert}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in dynserv_shared::pki::certs_from_pem(&pem)
                .with_context(|| format!("reading the certificates in {root_cert}"))?
            {
                roots
                    .add(cert)
                    .with_context(|| format!("using {root_cert} as a root certificate"))?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("building the database certificate check")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainsToRoot {
                    webpki,
                    check_name: *check_name,
                }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `sslmode=prefer/require` without a root certificate: encrypted, not authenticated
/// (what libpq does in those modes).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (the chain only) and `verify-full` (the chain and the host name).
#[derive(Debug)]
struct ChainsToRoot {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl rustls::client::danger::ServerCertVerifier for ChainsToRoot {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                if !self.check_name =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A plain sentence for an error of the database below (unreachable, lost, out of
/// resources), or `None` when it is not one (a constraint the caller broke).
pub(crate) fn storage_reason(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
        if e.is_closed() {
            return Some("the database connection was lost".into());
        }
        return match e.code() {
            None => Some(format!("the database cannot be reached: {e}")),
            Some(code) => {
                let class = &code.code()[..2];
                // 08 connection, 53 resources (disk full), 57 operator intervention
                // (shutdown), 58 system errors.
                matches!(class, "08" | "53" | "57" | "58").then(|| {
                    let message = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string());
                    format!("database error: {message}")
                })
            }
        };
    }
    None
}

/// The order in which this process's transactions use the database.
///
/// * **Writers, one at a time.** A writer waits for its turn before it takes a
///   connection, so waiting writers never hold the pool: in `Store::write`, which
///   gives this process's writers their turns in order (`super::WriterQueue`);
///   across replicas the advisory lock orders them.
/// * **Deferring reads give way.** A read transaction begun on a thread marked with
///   [`super::defer_reads_here`] (the HTTP reads lane: page loads) defers: while a
///   transaction that does not defer is open in this process (an operator's action,
///   an agent's report, a viewer's read, background work), at most
///   [`DEFERRED_AT_ONCE`] deferring queries are in the database at a time; the others
///   wait for it before they send. The database shares its CPU between its backends
///   with no regard to what they serve: sixteen clients loading a page keep four
///   backends busy, and an action's one backend got a fifth of the CPU between its
///   statements, so a 20-agent fan-out took twice its idle time. In the control plane
///   the reads lane already runs at a lower priority ([`crate::web::Lane::nice`]); this
///   carries that priority into the database.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    deferred_may_go: Condvar,
}

#[derive(Default)]
struct TurnState {
    /// Open transactions that do not defer (writers among them).
    urgent: usize,
    /// Deferring queries in the database now.
    deferred: usize,
}

/// Deferring queries in the database at once while an urgent transaction is open.
const DEFERRED_AT_ONCE: usize = 1;

static DEFERRED_WAITS: AtomicU64 = AtomicU64::new(0);
static DEFERRED_WAIT_MICROS: AtomicU64 = AtomicU64::new(0);

/// How many deferring queries ([`Turns`]: page loads') waited for their turn since
/// start, and how many seconds they waited in all: what giving way cost the pages.
pub fn deferred_waits() -> (u64, f64) {
    (
        DEFERRED_WAITS.load(Ordering::Relaxed),
        DEFERRED_WAIT_MICROS.load(Ordering::Relaxed) as f64 / 1e6,
    )
}

/// What kind of transaction holds a [`Turn`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A writer, or a reader that does not defer.
    Urgent,
    Deferring,
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transaction's turn (writers already wait for each other in `Store::write`).
    fn open(self: &Arc<Self>, kind: Kind) -> Turn {
        let mut state = self.lock();
        if kind != Kind::Deferring {
            state.urgent += 1;
        }
        Turn {
            turns: self.clone(),
            kind,
        }
    }

    /// Waits until a deferring query may go to the database.
    fn defer(self: &Arc<Self>) -> DeferredQuery {
        let mut state = self.lock();
        let mut waiting_since = None;
        while state.urgent > 0 && state.deferred >= DEFERRED_AT_ONCE {
            waiting_since.get_or_insert_with(std::time::Instant::now);
            state = self
                .deferred_may_go
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.deferred += 1;
        drop(state);
        if let Some(since) = waiting_since {
            DEFERRED_WAITS.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            DEFERRED_WAIT_MICROS.fetch_add(micros, Ordering::Relaxed);
        }
        DeferredQuery(self.clone())
    }
}

/// An open transaction's place in [`Turns`], given back when it ends.
struct Turn {
    turns: Arc<Turns>,
    kind: Kind,
}

impl Turn {
    /// Runs one query of the transaction, after its wait when it defers.
    fn query<T>(&self, run: impl FnOnce() -> T) -> T {
        let _deferred = (self.kind == Kind::Deferring).then(|| self.turns.defer());
        run()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.kind == Kind::Deferring {
            return;
        }
        let mut state = self.turns.lock();
        state.urgent -= 1;
        if state.urgent == 0 {
            self.turns.deferred_may_go.notify_all();
        }
    }
}

/// A deferring query in the database.
struct DeferredQuery(Arc<Turns>);

impl Drop for DeferredQuery {
    fn drop(&mut self) {
        self.0.lock().deferred -= 1;
        self.0.deferred_may_go.notify_one();
    }
}

/// A connected PostgreSQL backend.
pub struct Pg {
    /// Runs the cluster's listening connections ([`Pg::dedicated`]).
    runtime: OwnedRuntime,
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    turns: Arc<Turns>,
    described: String,
}

impl Pg {
    /// Connects (one connection, to fail early with a clear message) and creates the
    /// tables when missing, under the write lock.
    pub fn connect(url: &str) -> Result<Pg> {
        let described = redact(url);
        let (url, tls) = parse_url(url)?;
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            anyhow::anyhow!("DATABASE_URL {described} is not a valid PostgreSQL URL: {e}")
        })?;
        let connector = tls_connector(&tls)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dynserv-pg")
            .enable_all()
            .build()
            .context("starting the database runtime")?;
        let runtime = OwnedRuntime::new(runtime);
        let pool = Pool::new(config.clone(), connector.clone(), POOL_SIZE, POOL_WAIT);
        let pg = Pg {
            runtime,
            pool,
            config,
            tls: connector,
            turns: Arc::default(),
            described,
        };
        let conn = pg
            .pool
            .get()
            .with_context(|| format!("connecting to {}", pg.described))?;
        conn.wait(conn.client().batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); {SCHEMA} {LOG_COMPRESSION} COMMIT;"
        )))
        .with_context(|| format!("creating the store's tables in {}", pg.described))?;
        Ok(pg)
    }

    /// The database, without its password.
    pub fn describe(&self) -> String {
        format!("PostgreSQL {}", self.described)
    }

    /// The backend's runtime, where the cluster runs its listener.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// A connection of its own, outside the pool, with its messages (notifications)
    /// delivered to `messages`. Must be awaited on [`Pg::runtime`].
    pub async fn dedicated(
        &self,
        messages: tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>,
    ) -> Result<tokio_postgres::Client> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .with_context(|| format!("connecting to {}", self.described))?;
        tokio::spawn(async move {
            while let Some(message) =
                futures::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                match message {
                    Ok(message) => {
                        if messages.send(message).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "database connection lost");
                        break;
                    }
                }
            }
        });
        Ok(client)
    }

    pub(super) fn begin_read(&self) -> Result<Txn> {
        let kind = if super::reads_defer_here() {
            Kind::Deferring
        } else {
            Kind::Urgent
        };
        let turn = self.turns.open(kind);
        let conn = self.pool.get()?;
        Ok(Txn {
            conn: Some(conn),
            begin: RefCell::new(Some(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_string(),
            )),
            turn,
            pending: RefCell::default(),
            writer: false,
        })
    }

    pub(super) fn begin_write(&self) -> Result<Txn> {
        let turn = self.turns.open(Kind::Urgent);
        let conn = self.pool.get()?;
        Ok(Txn {
            conn: Some(conn),
            begin: RefCell::new(Some(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            ))),
            turn,
            pending: RefCell::default(),
            writer: true,
        })
    }
}

/// One open transaction on one pooled connection. Dropped without
/// [`Txn::commit`]/[`Txn::finish`], it rolls back.
pub(super) struct Txn {
    /// The connection, a thread drives it while it waits ([`conn`]).
    conn: Option<Pooled>,
    /// The `BEGIN` (and a writer's lock) not sent yet: it goes out pipelined with the
    /// transaction's first statement, which saves a round trip per transaction.
    begin: RefCell<Option<String>>,
    /// The transaction's turn in this process ([`Turns`]), held until it ends.
    turn: Turn,
    /// A writer's changes not sent yet, and the point reads made (see [`Pending`]).
    pending: RefCell<Pending>,
    /// A writer (else a read-only snapshot).
    writer: bool,
}

/// One key's value in a writer's [`Pending`]: read from the database (`dirty`
/// false) or written by the transaction and not sent yet (`None`: deleted).
struct Slot<T> {
    value: Option<T>,
    dirty: bool,
    /// Written by [`RawWrite::insert`]/[`RawWrite::index_insert`] and not in the
    /// database: it goes out as a plain `INSERT` (a key there already fails the
    /// transaction), and deleting it again sends nothing.
    fresh: bool,
}

impl<T> Slot<T> {
    fn read(value: Option<T>) -> Slot<T> {
        Slot {
            value,
            dirty: false,
            fresh: false,
        }
    }

    /// A value written by the transaction; a key inserted by it stays fresh.
    fn written(value: T, before: Option<&Slot<T>>) -> Slot<T> {
        Slot {
            value: Some(value),
            dirty: true,
            fresh: before.is_some_and(|s| s.fresh),
        }
    }

    /// A key removed by the transaction: one it inserted itself is simply known
    /// absent again (nothing to send).
    fn removed(before: Option<&Slot<T>>) -> Slot<T> {
        let fresh = before.is_some_and(|s| s.fresh);
        Slot {
            value: None,
            dirty: !fresh,
            fresh: false,
        }
    }
}

/// Keeps `value` under `key` as inserted by the transaction and counts its `bytes`;
/// false, with nothing changed, when the transaction knows the key exists (read from
/// the database or written by it). One in the database that it never read fails the
/// transaction at commit, as the plain `INSERT`'s unique violation.
fn insert_fresh<K: std::hash::Hash + Eq, T>(
    held: &mut usize,
    map: &mut HashMap<K, Slot<T>>,
    key: K,
    value: T,
    bytes: usize,
) -> bool {
    let fresh = match map.get(&key) {
        Some(slot) if slot.value.is_some() => return false,
        // Deleted by the transaction but still in the database: written back with an
        // upsert.
        Some(slot) => !slot.dirty,
        None => true,
    };
    *held += bytes;
    map.insert(
        key,
        Slot {
            value: Some(value),
            dirty: true,
            fresh,
        },
    );
    true
}

/// A writer's changes, kept until it commits (or a range read needs them in the
/// database) and then sent as a few multi-row statements in one pipelined round
/// trip, and the point reads a transaction made, so reading a key again costs nothing.
/// Creating 10,000 executions in one request was about 150,000 round trips before; now
/// it is a few statements and one read per agent. What was read cannot change under
/// the transaction: a reader is a snapshot, a writer holds the write lock.
#[derive(Default)]
struct Pending {
    records: HashMap<(String, String), Slot<Vec<u8>>>,
    index: HashMap<(String, String), Slot<String>>,
    counters: HashMap<String, Slot<u64>>,
    meta: HashMap<String, Slot<Vec<u8>>>,
    /// Index scans and whole tables asked ahead by a read transaction
    /// ([`super::Ahead`]); a writer keeps none.
    scans: HashMap<(String, String), Vec<(String, String)>>,
    lists: HashMap<String, Vec<Vec<u8>>>,
    /// Chunks appended and not sent, each `(execution, seq)` once.
    logs: Vec<(String, u64, Vec<u8>)>,
    log_keys: HashSet<(String, u64)>,
    /// The highest seq of each execution's log in the database, once asked: a chunk
    /// above it is new without a query (chunks arrive in order).
    log_top: HashMap<String, Option<u64>>,
    /// Notifications to send at commit (`NOTIFY`), `(channel, payload)`, in order.
    notices: Vec<(&'static str, String)>,
    /// Bytes of the values held: past [`SEND_AHEAD_BYTES`] they are sent ahead.
    bytes: usize,
    /// Reads cached: past [`CACHED_READS`], reads are no longer kept.
    reads: usize,
}

/// Bytes of unsent changes a writer holds before it sends them ahead, without waiting
/// ([`Txn::send_ahead`]). A 10,000-agent fan-out writes about 22 MB: held to 16 MB and
/// sent with a wait, the database inserted for 0.65 s while the request stood still,
/// and again at commit; sent a megabyte at a time, the database inserts while the
/// request builds the next executions, and the commit waits only for the last part.
const SEND_AHEAD_BYTES: usize = 1 << 20;
/// Point reads a writer keeps (a long transaction reading a whole table keeps none
/// past it).
const CACHED_READS: usize = 50_000;
/// Rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 5_000;

impl Drop for Txn {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.begin.get_mut().is_some() {
                // Nothing was sent: the connection is as it was.
                return;
            }
            // Changes sent ahead are answered first; one that failed only means the
            // transaction had failed already.
            let _ = conn.take_failed_ahead();
            if conn.wait(conn.client().batch_execute("ROLLBACK")).is_err() {
                // A connection in an unknown state never goes back to the pool.
                conn.discard();
            }
        }
    }
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn seq_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn seq_from(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `WHERE … col >/>= $lo AND col </<= $hi ORDER BY col [DESC] LIMIT $n` for a scan.
fn range_clause(col: &str, first: usize, scan: &IndexScan) -> Option<(String, String, String)> {
    let (lower, upper) = scan.bounds()?;
    let (lo_op, lo) = match lower {
        std::ops::Bound::Included(k) => (">=", k),
        std::ops::Bound::Excluded(k) => (">", k),
        std::ops::Bound::Unbounded => (">=", ""),
    };
    let (hi_op, hi) = match upper {
        std::ops::Bound::Included(k) => ("<=", k),
        std::ops::Bound::Excluded(k) => ("<", k),
        std::ops::Bound::Unbounded => ("<=", super::KEY_END),
    };
    let order = if scan.backward { "DESC" } else { "ASC" };
    Some((
        format!(
            "{col} {lo_op} ${first} AND {col} {hi_op} ${} ORDER BY {col} {order} LIMIT ${}",
            first + 1,
            first + 2
        ),
        lo.to_string(),
        hi.to_string(),
    ))
}

impl Txn {
    fn conn(&self) -> &Pooled {
        self.conn
            .as_ref()
            .expect("a transaction holds its connection until it ends")
    }

    /// Runs `run` on the connection, after the transaction's `BEGIN` when that is
    /// still to be sent: both go out together (pipelined), in that order.
    fn on_connection<'c, T, F: Future<Output = std::result::Result<T, tokio_postgres::Error>>>(
        &'c self,
        run: impl FnOnce(&'c tokio_postgres::Client) -> F,
    ) -> Result<T> {
        let conn = self.conn();
        let client = conn.client();
        let begin = self.begin.borrow_mut().take();
        self.turn.query(|| {
            conn.wait(async {
                match &begin {
                    Some(begin) => {
                        let (began, ran) = futures::join!(client.batch_execute(begin), run(client));
                        began?;
                        ran
                    }
                    None => run(client).await,
                }
            })
        })
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        let statement = self.prepared(sql)?;
        self.on_connection(|client| client.query(&statement, params))
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.prepared(sql)?;
        self.on_connection(|client| client.execute(&statement, params))
    }

    /// A statement prepared on this connection (once per connection and text).
    fn prepared(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        self.conn().prepared(sql)
    }

    /// Sends a writer's pending changes (nothing for a reader) before a read that the
    /// cache cannot answer (a range): sent ahead, they are answered before the read.
    fn flush(&self) -> Result<()> {
        self.send_ahead()
    }

    /// Sends the pending changes without waiting for their answers
    /// ([`conn::Conn::send_ahead`]): the transaction's next query or its commit takes
    /// them, and fails with the first change that failed.
    fn send_ahead(&self) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        if pending.bytes == 0 {
            return Ok(());
        }
        let statements = self.pending_statements(&pending)?;
        let conn = self.conn();
        let client = conn.shared_client();
        let mut ahead: Vec<conn::Ahead> = Vec::with_capacity(statements.len() + 1);
        if let Some(begin) = self.begin.borrow_mut().take() {
            let client = client.clone();
            ahead.push(Box::pin(async move { client.batch_execute(&begin).await }));
        }
        for (statement, prepared) in statements {
            let client = client.clone();
            ahead.push(Box::pin(async move {
                client
                    .execute(&prepared, &statement.params())
                    .await
                    .map(|_| ())
            }));
        }
        // Handed to the connection, the changes are sent, whatever it says: one that
        // failed before them fails them too, and the transaction with them.
        let sent = self.turn.query(|| conn.send_ahead(ahead));
        pending.sent();
        sent
    }

    /// The statements that write the pending changes, each with its prepared form.
    fn pending_statements(
        &self,
        pending: &Pending,
    ) -> Result<Vec<(Statement, tokio_postgres::Statement)>> {
        pending
            .statements()
            .into_iter()
            .map(|statement| {
                let prepared = self.prepared(statement.sql)?;
                Ok((statement, prepared))
            })
            .collect()
    }

    /// Sends the pending changes and the transaction's `COMMIT` after them: both go
    /// out together and are waited for once.
    fn send_with_commit(&self) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        let statements = self.pending_statements(&pending)?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = statements
            .iter()
            .map(|(statement, _)| statement.params())
            .collect();
        let prepared: Vec<&tokio_postgres::Statement> =
            statements.iter().map(|(_, prepared)| prepared).collect();
        self.on_connection(|client| async move {
            let runs = futures::future::try_join_all(
                prepared
                    .iter()
                    .zip(&params)
                    .map(|(prepared, params)| client.execute(*prepared, params)),
            );
            let (ran, committed) = futures::join!(runs, client.batch_execute("COMMIT"));
            ran?;
            committed
        })?;
        pending.sent();
        Ok(())
    }

    /// Commits a writer's changes. What is still pending goes out with the `COMMIT`,
    /// in one round trip: should a change fail, the database ends the failed
    /// transaction at that `COMMIT` with a rollback, and the change's error is the
    /// answer. On any failure the connection stays with the transaction, whose drop
    /// rolls back (a no-op once the `COMMIT` ended it) or, failing that, discards it.
    pub(super) fn commit(mut self) -> Result<()> {
        if self.pending.get_mut().bytes == 0 && self.begin.get_mut().is_some() {
            // Nothing was sent, nothing to commit.
            self.conn.take();
            return Ok(());
        }
        // A change sent ahead failed, and the caller went on: the server would answer
        // the `COMMIT` with a rollback, which is no error to the driver.
        if let Some(failed) = self.conn().take_failed_ahead() {
            anyhow::bail!("a change of this transaction failed, nothing was committed: {failed}");
        }
        self.send_with_commit()?;
        self.conn.take();
        Ok(())
    }

    /// Ends a reader's snapshot. Its `COMMIT` is sent and not waited for: a read-only
    /// snapshot has nothing to make durable or to fail, and the connection runs it
    /// before anything its next user sends (one connection answers in order; an answer
    /// nobody waits for is read and dropped), so every read saves a round trip.
    pub(super) fn finish(mut self) -> Result<()> {
        if self.writer {
            return self.commit();
        }
        let mut conn = self.conn.take().expect("an open transaction");
        if self.begin.get_mut().is_some() {
            // Nothing was sent: the connection is as it was.
            return Ok(());
        }
        // Written, not waited for; a connection that cannot take it never goes back to
        // the pool.
        conn.send_only("COMMIT").inspect_err(|_| conn.discard())
    }
}

impl RawRead for Txn {
    fn get(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let key = (table.to_string(), id.to_string());
        if let Some(slot) = self.cached(|p| p.records.get(&key).map(|s| s.value.clone())) {
            return Ok(slot);
        }
        let rows = self.query(
            "SELECT body FROM dynserv_records WHERE tbl = $1 AND id = $2",
            &[&table, &id],
        )?;
        let value: Option<Vec<u8>> = rows.first().map(|r| r.get(0));
        self.remember(|p| &mut p.records, key, &value);
        Ok(value)
    }

    fn get_many(&self, table: &str, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut asked: Vec<&str> = Vec::new();
        for id in ids {
            let key = (table.to_string(), id.to_string());
            match self.cached(|p| p.records.get(&key).map(|s| s.value.clone())) {
                Some(value) => {
                    found.insert(id.to_string(), value);
                }
                None => asked.push(id),
            }
        }
        if !asked.is_empty() {
            let rows = self.query(GET_MANY, &[&table, &asked])?;
            for row in rows {
                found.insert(row.get(0), Some(row.get(1)));
            }
            for id in asked {
                let value = found.get(id).cloned().flatten();
                self.remember(
                    |p| &mut p.records,
                    (table.to_string(), id.to_string()),
                    &value,
                );
            }
        }
        Ok(ids
            .iter()
            .map(|id| found.get(*id).cloned().flatten())
            .collect())
    }

    fn prefetch(&self, table: &str, ids: &[&str]) -> Result<()> {
        self.get_many(table, ids).map(|_| ())
    }

    fn prefetch_tables(&self, wanted: &[(&str, Vec<&str>)]) -> Result<()> {
        let records: Vec<(&str, &str)> = wanted
            .iter()
            .flat_map(|(table, ids)| ids.iter().map(move |id| (*table, *id)))
            .collect();
        self.ask_ahead(Asked {
            records: &records,
            ..Asked::default()
        })
    }

    fn prefetch_counters(&self, names: &[&str]) -> Result<()> {
        self.ask_ahead(Asked {
            counters: names,
            ..Asked::default()
        })
    }

    fn read_ahead(&self, ahead: &super::Ahead) -> Result<()> {
        fn keys<'a>(named: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
            named
                .iter()
                .map(|(name, key)| (*name, key.as_str()))
                .collect()
        }
        fn names(names: &[String]) -> Vec<&str> {
            names.iter().map(String::as_str).collect()
        }
        self.ask_ahead(Asked {
            records: &keys(&ahead.records),
            counters: &names(&ahead.counters),
            scans: &keys(&ahead.scans),
            lists: &ahead.lists,
            log_tops: &names(&ahead.log_tops),
            entries: &keys(&ahead.entries),
        })
    }

    fn prefetch_index(&self, index: &str, keys: &[&str]) -> Result<()> {
        let entries: Vec<(&str, &str)> = keys.iter().map(|key| (index, *key)).collect();
        self.ask_ahead(Asked {
            entries: &entries,
            ..Asked::default()
        })
    }

    fn log_has(&self, execution_id: &str, seq: u64) -> Result<bool> {
        let pending = &self.pending;
        if !self.writer {
            let rows = self.query(
                "SELECT 1 FROM dynserv_logs WHERE execution_id = $1 AND seq = $2",
                &[&execution_id, &seq_of(seq)],
            )?;
            return Ok(!rows.is_empty());
        }
        let key = (execution_id.to_string(), seq);
        let top = {
            let p = pending.borrow();
            if p.log_keys.contains(&key) {
                return Ok(true);
            }
            p.log_top.get(execution_id).copied()
        };
        let top = match top {
            Some(top) => top,
            None => {
                let rows = self.query(
                    "SELECT max(seq) FROM dynserv_logs WHERE execution_id = $1",
                    &[&execution_id],
                )?;
                let top = rows
                    .first()
                    .and_then(|r| r.get::<_, Option<i64>>(0))
                    .map(seq_from);
                pending
                    .borrow_mut()
                    .log_top
                    .insert(execution_id.to_string(), top);
                top
            }
        };
        if top.is_none_or(|top| seq > top) {
            return Ok(false);
        }
        let rows = self.query(
            "SELECT 1 FROM dynserv_logs WHERE execution_id = $1 AND seq = $2",
            &[&execution_id, &seq_of(seq)],
        )?;
        Ok(!rows.is_empty())
    }

    fn list(&self, table: &str) -> Result<Vec<Vec<u8>>> {
        if !self.writer {
            if let Some(bodies) = self.cached(|p| p.lists.get(table).cloned()) {
                return Ok(bodies);
            }
        }
        self.flush()?;
        let rows = self.query(
            "SELECT body FROM dynserv_records WHERE tbl = $1 ORDER BY id",
            &[&table],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn count(&self, table: &str) -> Result<u64> {
        self.flush()?;
        let rows = self.query(
            "SELECT count(*) FROM dynserv_records WHERE tbl = $1",
            &[&table],
        )?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn records_page(&self, table: &str, scan: &IndexScan) -> Result<Vec<Vec<u8>>> {
        self.flush()?;
        let Some((clause, lo, hi)) = range_clause("id", 2, scan) else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT body FROM dynserv_records WHERE tbl = $1 AND {clause}");
        let rows = self.query(&sql, &[&table, &lo, &hi, &limit_of(scan.limit)])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn index_get(&self, index: &str, key: &str) -> Result<Option<String>> {
        let entry = (index.to_string(), key.to_string());
        if let Some(slot) = self.cached(|p| p.index.get(&entry).map(|s| s.value.clone())) {
            return Ok(slot);
        }
        let rows = self.query(
            "SELECT id FROM dynserv_index WHERE name = $1 AND key = $2",
            &[&index, &key],
        )?;
        let value: Option<String> = rows.first().map(|r| r.get(0));
        self.remember(|p| &mut p.index, entry, &value);
        Ok(value)
    }

    fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>> {
        // Only a reader keeps scans asked ahead: a writer would build the key for nothing.
        if !self.writer {
            let asked = (index.to_string(), prefix.to_string());
            if let Some(entries) = self.cached(|p| p.scans.get(&asked).cloned()) {
                return Ok(entries);
            }
        }
        self.flush()?;
        let (lo, hi) = super::prefix_range(prefix);
        let rows = self.query(
            "SELECT key, id FROM dynserv_index WHERE name = $1 AND key >= $2 AND key <= $3 ORDER BY key",
            &[&index, &lo, &hi],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(key, _)| key.starts_with(prefix))
            .collect())
    }

    fn index_page(&self, scan: &IndexScan) -> Result<Vec<(String, String)>> {
        self.flush()?;
        let Some((clause, lo, hi)) = range_clause("key", 2, scan) else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT key, id FROM dynserv_index WHERE name = $1 AND {clause}");
        let rows = self.query(&sql, &[&scan.index, &lo, &hi, &limit_of(scan.limit)])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn log_range(
        &self,
        execution_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.flush()?;
        let rows = self.query(
            "SELECT seq, chunk FROM dynserv_logs WHERE execution_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            &[&execution_id, &seq_of(from_seq), &limit_of(limit)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (seq_from(r.get(0)), r.get(1)))
            .collect())
    }

    fn log_last_seq(&self, execution_id: &str) -> Result<Option<u64>> {
        self.flush()?;
        let rows = self.query(
            "SELECT seq FROM dynserv_logs WHERE execution_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&execution_id],
        )?;
        Ok(rows.first().map(|r| seq_from(r.get(0))))
    }

    fn counter(&self, name: &str) -> Result<u64> {
        if let Some(slot) = self.cached(|p| p.counters.get(name).map(|s| s.value)) {
            return Ok(slot.unwrap_or(0));
        }
        let rows = self.query("SELECT n FROM dynserv_counters WHERE name = $1", &[&name])?;
        let value: Option<u64> = rows.first().map(|r| seq_from(r.get(0)));
        self.remember(|p| &mut p.counters, name.to_string(), &value);
        Ok(value.unwrap_or(0))
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(slot) = self.cached(|p| p.meta.get(key).map(|s| s.value.clone())) {
            return Ok(slot);
        }
        let rows = self.query("SELECT value FROM dynserv_meta WHERE key = $1", &[&key])?;
        let value: Option<Vec<u8>> = rows.first().map(|r| r.get(0));
        self.remember(|p| &mut p.meta, key.to_string(), &value);
        Ok(value)
    }

    fn tables(&self) -> Result<Vec<String>> {
        self.flush()?;
        let rows = self.query("SELECT DISTINCT tbl FROM dynserv_records ORDER BY tbl", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn records_after(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.flush()?;
        let rows = match after {
            Some(id) => self.query(
                "SELECT id, body FROM dynserv_records WHERE tbl = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&table, &id, &limit_of(limit)],
            )?,
            None => self.query(
                "SELECT id, body FROM dynserv_records WHERE tbl = $1 ORDER BY id LIMIT $2",
                &[&table, &limit_of(limit)],
            )?,
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn index_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>> {
        self.flush()?;
        let rows = match after {
            Some((index, key)) => self.query(
                "SELECT name, key, id FROM dynserv_index WHERE (name, key) > ($1, $2) ORDER BY name, key LIMIT $3",
                &[&index, &key, &limit_of(limit)],
            )?,
            None => self.query(
                "SELECT name, key, id FROM dynserv_index ORDER BY name, key LIMIT $1",
                &[&limit_of(limit)],
            )?,
        };
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn logs_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>> {
        self.flush()?;
        let rows = match after {
            Some((execution, seq)) => self.query(
                "SELECT execution_id, seq, chunk FROM dynserv_logs WHERE (execution_id, seq) > ($1, $2) ORDER BY execution_id, seq LIMIT $3",
                &[&execution, &seq_of(seq), &limit_of(limit)],
            )?,
            None => self.query(
                "SELECT execution_id, seq, chunk FROM dynserv_logs ORDER BY execution_id, seq LIMIT $1",
                &[&limit_of(limit)],
            )?,
        };
        Ok(rows
            .iter()
            .map(|r| (r.get(0), seq_from(r.get(1)), r.get(2)))
            .collect())
    }

    fn index_count(&self) -> Result<u64> {
        self.flush()?;
        let rows = self.query("SELECT count(*) FROM dynserv_index", &[])?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn log_count(&self) -> Result<u64> {
        self.flush()?;
        let rows = self.query("SELECT count(*) FROM dynserv_logs", &[])?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn counters_all(&self) -> Result<Vec<(String, u64)>> {
        self.flush()?;
        let rows = self.query("SELECT name, n FROM dynserv_counters ORDER BY name", &[])?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), seq_from(r.get(1))))
            .collect())
    }

    fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.flush()?;
        let rows = self.query("SELECT key, value FROM dynserv_meta ORDER BY key", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl RawWrite for Txn {
    fn put(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()> {
        self.change(|p| {
            p.bytes += table.len() + id.len() + body.len();
            let key = (table.to_string(), id.to_string());
            let slot = Slot::written(body.to_vec(), p.records.get(&key));
            p.records.insert(key, slot);
        })
    }

    fn insert(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()> {
        let mut inserted = false;
        self.change(|p| {
            let key = (table.to_string(), id.to_string());
            let bytes = table.len() + id.len() + body.len();
            inserted = insert_fresh(&mut p.bytes, &mut p.records, key, body.to_vec(), bytes);
        })?;
        anyhow::ensure!(inserted, super::Exists::record(table, id));
        Ok(())
    }

    fn delete(&mut self, table: &str, id: &str) -> Result<bool> {
        let existed = self.get(table, id)?.is_some();
        if existed {
            self.remove(table, id)?;
        }
        Ok(existed)
    }

    fn remove(&mut self, table: &str, id: &str) -> Result<()> {
        self.change(|p| {
            p.bytes += table.len() + id.len();
            let key = (table.to_string(), id.to_string());
            let slot = Slot::removed(p.records.get(&key));
            p.records.insert(key, slot);
        })
    }

    fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        self.change(|p| {
            p.bytes += index.len() + key.len() + id.len();
            let entry = (index.to_string(), key.to_string());
            let slot = Slot::written(id.to_string(), p.index.get(&entry));
            p.index.insert(entry, slot);
        })
    }

    fn index_insert(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        let mut inserted = false;
        self.change(|p| {
            let entry = (index.to_string(), key.to_string());
            let bytes = index.len() + key.len() + id.len();
            inserted = insert_fresh(&mut p.bytes, &mut p.index, entry, id.to_string(), bytes);
        })?;
        anyhow::ensure!(inserted, super::Exists::index(index, key));
        Ok(())
    }

    fn index_delete(&mut self, index: &str, key: &str) -> Result<()> {
        self.change(|p| {
            p.bytes += index.len() + key.len();
            let entry = (index.to_string(), key.to_string());
            let slot = Slot::removed(p.index.get(&entry));
            p.index.insert(entry, slot);
        })
    }

    fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool> {
        if self.log_has(execution_id, seq)? {
            return Ok(false);
        }
        self.change(|p| {
            p.bytes += execution_id.len() + chunk.len() + 8;
            p.log_keys.insert((execution_id.to_string(), seq));
            p.logs.push((execution_id.to_string(), seq, chunk.to_vec()));
        })?;
        Ok(true)
    }

    fn notify(&mut self, channel: &'static str, payload: String) -> Result<()> {
        self.change(|p| {
            p.bytes += channel.len() + payload.len();
            p.notices.push((channel, payload));
        })
    }

    fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize> {
        self.flush()?;
        let n = self.execute(
            "DELETE FROM dynserv_logs WHERE execution_id = $1 AND seq IN
             (SELECT seq FROM dynserv_logs WHERE execution_id = $1 ORDER BY seq LIMIT $2)",
            &[&execution_id, &limit_of(limit)],
        )?;
        self.pending.borrow_mut().log_top.remove(execution_id);
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64> {
        let next = apply_delta(self.counter(name)?, delta);
        self.change(|p| {
            p.bytes += name.len() + 8;
            p.counters.insert(
                name.to_string(),
                Slot {
                    value: (next != 0).then_some(next),
                    dirty: true,
                    fresh: false,
                },
            );
        })?;
        Ok(next)
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.change(|p| {
            p.bytes += key.len() + value.len();
            p.meta
                .insert(key.to_string(), Slot::written(value.to_vec(), None));
        })
    }
}

/// What [`Txn::ask_ahead`] asks: the parts of a [`super::Ahead`], borrowed (the
/// single-kind prefetches lend one part each).
#[derive(Default)]
struct Asked<'a> {
    records: &'a [(&'a str, &'a str)],
    counters: &'a [&'a str],
    scans: &'a [(&'a str, &'a str)],
    lists: &'a [&'a str],
    log_tops: &'a [&'a str],
    entries: &'a [(&'a str, &'a str)],
}

impl Txn {
    /// The reads of [`super::Ahead`] the cache cannot answer, as pipelined queries on
    /// the connection, waited for once; their answers are then kept. A writer asks
    /// only point reads (its cache holds its unsent changes, so a key it wrote is
    /// never asked); scans and lists are for read transactions, log ends for writers.
    fn ask_ahead(&self, asked: Asked<'_>) -> Result<()> {
        let Asked {
            records,
            counters,
            scans,
            lists,
            log_tops,
            entries,
        } = asked;
        let (mut tables, mut ids): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        for (table, id) in records {
            let key = (table.to_string(), id.to_string());
            if self.cached(|p| p.records.get(&key).map(|_| ())).is_none() {
                tables.push(table);
                ids.push(id);
            }
        }
        let counters: Vec<&str> = counters
            .iter()
            .copied()
            .filter(|n| self.cached(|p| p.counters.get(*n).map(|_| ())).is_none())
            .collect();
        let reader = !self.writer;
        let scans: Vec<(&str, &str, String, String)> = scans
            .iter()
            .filter(|(index, prefix)| {
                let asked = (index.to_string(), prefix.to_string());
                reader && self.cached(|p| p.scans.get(&asked).map(|_| ())).is_none()
            })
            .map(|(index, prefix)| {
                let (lo, hi) = super::prefix_range(prefix);
                (*index, *prefix, lo, hi)
            })
            .collect();
        let lists: Vec<&str> = lists
            .iter()
            .copied()
            .filter(|t| reader && self.cached(|p| p.lists.get(*t).map(|_| ())).is_none())
            .collect();
        let log_tops: Vec<&str> = {
            let p = self.pending.borrow();
            log_tops
                .iter()
                .copied()
                .filter(|id| self.writer && !p.log_top.contains_key(*id))
                .collect()
        };
        // Index entries by index, those the cache cannot answer.
        let mut entries_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (index, key) in entries {
            let entry = (index.to_string(), key.to_string());
            if self.cached(|p| p.index.get(&entry).map(|_| ())).is_none() {
                entries_of.entry(index).or_default().push(key);
            }
        }
        let mut queries: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !ids.is_empty() {
            queries.push((AHEAD_RECORDS, vec![&tables, &ids]));
        }
        if !counters.is_empty() {
            queries.push((AHEAD_COUNTERS, vec![&counters]));
        }
        for (index, _, lo, hi) in &scans {
            queries.push((
                "SELECT key, id FROM dynserv_index WHERE name = $1 AND key >= $2 AND key <= $3 ORDER BY key",
                vec![index, lo, hi],
            ));
        }
        for table in &lists {
            queries.push((
                "SELECT id, body FROM dynserv_records WHERE tbl = $1 ORDER BY id",
                vec![table],
            ));
        }
        if !log_tops.is_empty() {
            queries.push((AHEAD_LOG_TOPS, vec![&log_tops]));
        }
        for (index, keys) in &entries_of {
            queries.push((AHEAD_INDEX, vec![index, keys]));
        }
        if queries.is_empty() {
            return Ok(());
        }
        let prepared = queries
            .iter()
            .map(|(sql, _)| self.prepared(sql))
            .collect::<Result<Vec<_>>>()?;
        let mut answers = self
            .on_connection(|client| {
                futures::future::try_join_all(
                    prepared
                        .iter()
                        .zip(&queries)
                        .map(|(statement, (_, params))| client.query(statement, params)),
                )
            })?
            .into_iter();
        if !ids.is_empty() {
            let mut found: HashMap<(String, String), Vec<u8>> = answers
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            for (table, id) in tables.into_iter().zip(ids) {
                let key = (table.to_string(), id.to_string());
                let value = found.remove(&key);
                self.remember(|p| &mut p.records, key, &value);
            }
        }
        if !counters.is_empty() {
            let found: HashMap<String, u64> = answers
                .next()
                .unwrap_or_default()
                .iter()
                .map(|r| (r.get::<_, String>(0), seq_from(r.get(1))))
                .collect();
            for name in counters {
                let value = found.get(name).copied();
                self.remember(|p| &mut p.counters, name.to_string(), &value);
            }
        }
        for (index, prefix, _, _) in scans {
            let entries: Vec<(String, String)> = answers
                .next()
                .unwrap_or_default()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .filter(|(key, _)| key.starts_with(prefix))
                .collect();
            self.pending
                .borrow_mut()
                .scans
                .insert((index.to_string(), prefix.to_string()), entries);
        }
        for table in lists {
            let rows = answers.next().unwrap_or_default();
            let mut bodies = Vec::with_capacity(rows.len());
            for row in rows {
                let (id, body): (String, Vec<u8>) = (row.get(0), row.get(1));
                self.remember(
                    |p| &mut p.records,
                    (table.to_string(), id),
                    &Some(body.clone()),
                );
                bodies.push(body);
            }
            self.pending
                .borrow_mut()
                .lists
                .insert(table.to_string(), bodies);
        }
        if !log_tops.is_empty() {
            let found: HashMap<String, u64> = answers
                .next()
                .unwrap_or_default()
                .iter()
                .filter_map(|r| {
                    Some((r.get::<_, String>(0), seq_from(r.get::<_, Option<i64>>(1)?)))
                })
                .collect();
            let mut p = self.pending.borrow_mut();
            for id in log_tops {
                p.log_top.insert(id.to_string(), found.get(id).copied());
            }
        }
        for (index, keys) in entries_of {
            let found: HashMap<String, String> = answers
                .next()
                .unwrap_or_default()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            for key in keys {
                let value = found.get(key).cloned();
                self.remember(
                    |p| &mut p.index,
                    (index.to_string(), key.to_string()),
                    &value,
                );
            }
        }
        Ok(())
    }

    /// What the writer's cache holds for a key: `Some(value)` when it knows
    /// (`Some(None)`: no such key), `None` when the database must be asked.
    fn cached<T>(&self, look: impl FnOnce(&Pending) -> Option<T>) -> Option<T> {
        look(&self.pending.borrow())
    }

    /// Keeps a value read from the database, while the cache has room.
    fn remember<K: std::hash::Hash + Eq, T: Clone>(
        &self,
        map: impl FnOnce(&mut Pending) -> &mut HashMap<K, Slot<T>>,
        key: K,
        value: &Option<T>,
    ) {
        let mut p = self.pending.borrow_mut();
        if p.reads < CACHED_READS {
            p.reads += 1;
            map(&mut p)
                .entry(key)
                .or_insert_with(|| Slot::read(value.clone()));
        }
    }

    /// Records a change in a writer's pending set; sends the set when it grew large.
    fn change(&self, apply: impl FnOnce(&mut Pending)) -> Result<()> {
        anyhow::ensure!(self.writer, "a read transaction cannot write");
        let full = {
            let mut p = self.pending.borrow_mut();
            apply(&mut p);
            p.bytes > SEND_AHEAD_BYTES
        };
        if full {
            self.send_ahead()?;
        }
        Ok(())
    }
}

/// One multi-row statement of a flush: its SQL and the columns it binds as arrays.
struct Statement {
    sql: &'static str,
    columns: Vec<Column>,
}

enum Column {
    Text(Vec<String>),
    Bytes(Vec<Vec<u8>>),
    Int(Vec<i64>),
}

impl Column {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::Bytes(v) => v,
            Column::Int(v) => v,
        }
    }
}

impl Statement {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.columns.iter().map(Column::as_sql).collect()
    }
}

/// What every pooled connection sets when it opens. Every statement of the store finds
/// its rows through a prefix of a primary key, so an index path always exists; but
/// PostgreSQL's costs chose sequential scans for tables that its statistics, or a
/// generic plan it cached while they were small, took for a few rows, and kept them
/// while a fan-out added thousands: the lateral probe of [`BY_KEYS`] became one scan
/// of the whole table per key (900 counters asked of 6,600, 400 ms under the write
/// turn). With sequential scans priced out, a table's size no longer decides; where no
/// index serves, PostgreSQL still scans. Set per session, so nothing changes for other
/// users of the database.
pub const SESSION_SETUP: &str = "SET enable_seqscan = off";

/// The statements that read or delete rows by a list of keys. Each probes the
/// primary key once per key whatever the planner's statistics say: written as
/// `key = ANY($n)`, PostgreSQL planned, from statistics taken while a table was small,
/// scans that compared every row with every key asked (an ingestion batch of a
/// 10,000-agent fan-out read its counters in up to 230 ms, under the write turn). The
/// `LIMIT 1` keeps the planner from turning a lateral probe into a join over the
/// whole table. `tests/tests/store.rs` checks their plans on stale statistics and
/// from plans cached while the tables were small.
pub const BY_KEYS: [&str; 8] = [
    GET_MANY,
    AHEAD_RECORDS,
    AHEAD_COUNTERS,
    AHEAD_INDEX,
    AHEAD_LOG_TOPS,
    DELETE_RECORDS,
    DELETE_INDEX,
    DELETE_COUNTERS,
];

/// A transaction's notifications, in the order asked: PostgreSQL delivers them to the
/// listeners when the transaction commits, and drops them when it rolls back.
const NOTIFY: &str = "SELECT pg_notify(t.c, t.p)
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t (c, p, n) ORDER BY t.n";
const GET_MANY: &str = "SELECT w.id, r.body FROM unnest($2::text[]) AS w (id)
     CROSS JOIN LATERAL (SELECT body FROM dynserv_records
         WHERE tbl = $1 AND id = w.id LIMIT 1) r";
const AHEAD_RECORDS: &str = "SELECT w.tbl, w.id, r.body
     FROM unnest($1::text[], $2::text[]) AS w (tbl, id)
     CROSS JOIN LATERAL (SELECT body FROM dynserv_records
         WHERE tbl = w.tbl AND id = w.id LIMIT 1) r";
const AHEAD_COUNTERS: &str = "SELECT w.name, c.n FROM unnest($1::text[]) AS w (name)
     CROSS JOIN LATERAL (SELECT n FROM dynserv_counters WHERE name = w.name LIMIT 1) c";
const AHEAD_INDEX: &str = "SELECT w.key, i.id FROM unnest($2::text[]) AS w (key)
     CROSS JOIN LATERAL (SELECT id FROM dynserv_index
         WHERE name = $1 AND key = w.key LIMIT 1) i";
/// The top of each log from the end of its index: grouped, `max(seq)` read every chunk
/// of the logs asked (each ingestion batch of a long job read its whole log again).
const AHEAD_LOG_TOPS: &str = "SELECT w.id,
     (SELECT max(seq) FROM dynserv_logs WHERE execution_id = w.id)
     FROM unnest($1::text[]) AS w (id)";
const INSERT_RECORDS: &str = "INSERT INTO dynserv_records (tbl, id, body)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])";
const UPSERT_RECORDS: &str = "INSERT INTO dynserv_records (tbl, id, body)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
     ON CONFLICT (tbl, id) DO UPDATE SET body = excluded.body";
/// Deletes find each row by its key alone and then delete by row address: as a join
/// of the keys with the table, PostgreSQL read and hashed the whole table whenever
/// the keys were many and the table not yet huge (3,000 keys in a table of 300,000
/// rows: 124 ms instead of 25, under the write lock).
const DELETE_RECORDS: &str = "DELETE FROM dynserv_records WHERE ctid = ANY (ARRAY(
     SELECT (SELECT r.ctid FROM dynserv_records r WHERE r.tbl = gone.tbl AND r.id = gone.id)
     FROM unnest($1::text[], $2::text[]) AS gone (tbl, id)))";
const INSERT_INDEX: &str = "INSERT INTO dynserv_index (name, key, id)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[])";
const UPSERT_INDEX: &str = "INSERT INTO dynserv_index (name, key, id)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
     ON CONFLICT (name, key) DO UPDATE SET id = excluded.id";
const DELETE_INDEX: &str = "DELETE FROM dynserv_index WHERE ctid = ANY (ARRAY(
     SELECT (SELECT i.ctid FROM dynserv_index i WHERE i.name = gone.name AND i.key = gone.key)
     FROM unnest($1::text[], $2::text[]) AS gone (name, key)))";
const INSERT_LOGS: &str = "INSERT INTO dynserv_logs (execution_id, seq, chunk)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])
     ON CONFLICT (execution_id, seq) DO NOTHING";
const UPSERT_COUNTERS: &str = "INSERT INTO dynserv_counters (name, n)
     SELECT * FROM unnest($1::text[], $2::int8[])
     ON CONFLICT (name) DO UPDATE SET n = excluded.n";
const DELETE_COUNTERS: &str = "DELETE FROM dynserv_counters WHERE ctid = ANY (ARRAY(
     SELECT (SELECT c.ctid FROM dynserv_counters c WHERE c.name = gone.name)
     FROM unnest($1::text[]) AS gone (name)))";
const UPSERT_META: &str = "INSERT INTO dynserv_meta (key, value)
     SELECT * FROM unnest($1::text[], $2::bytea[])
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The statements for the changed keys of a table keyed by two texts (records by
/// table and id, index entries by index and key): plain inserts of the keys the
/// transaction inserted, upserts of the other live values, with `values` making their
/// column, and deletes of the removed keys.
fn keyed_statements<T: Clone>(
    out: &mut Vec<Statement>,
    map: &HashMap<(String, String), Slot<T>>,
    [insert, upsert, delete]: [&'static str; 3],
    values: fn(Vec<T>) -> Column,
) {
    let mut new = Vec::new();
    let mut live = Vec::new();
    let mut gone = Vec::new();
    for (key, slot) in map.iter().filter(|(_, s)| s.dirty) {
        match &slot.value {
            Some(value) if slot.fresh => new.push((key, value)),
            Some(value) => live.push((key, value)),
            None => gone.push(key),
        }
    }
    // In key order: consecutive rows land on the same pages of the primary key's
    // B-tree (a fan-out's index entries, in hash order, touched a different page each).
    new.sort_unstable_by(|a, b| a.0.cmp(b.0));
    live.sort_unstable_by(|a, b| a.0.cmp(b.0));
    gone.sort_unstable();
    for (sql, rows) in [(insert, &new), (upsert, &live)] {
        for part in rows.chunks(ROWS_PER_STATEMENT) {
            out.push(Statement {
                sql,
                columns: vec![
                    Column::Text(part.iter().map(|((a, _), _)| a.clone()).collect()),
                    Column::Text(part.iter().map(|((_, b), _)| b.clone()).collect()),
                    values(part.iter().map(|(_, v)| (*v).clone()).collect()),
                ],
            });
        }
    }
    for part in gone.chunks(ROWS_PER_STATEMENT) {
        out.push(Statement {
            sql: delete,
            columns: vec![
                Column::Text(part.iter().map(|(a, _)| a.clone()).collect()),
                Column::Text(part.iter().map(|(_, b)| b.clone()).collect()),
            ],
        });
    }
}

impl Pending {
    /// The statements that write every pending change, at most
    /// [`ROWS_PER_STATEMENT`] rows each. Each key appears once, with its last value,
    /// so the statements do not depend on one another and can run pipelined.
    fn statements(&self) -> Vec<Statement> {
        let mut out = Vec::new();
        keyed_statements(
            &mut out,
            &self.records,
            [INSERT_RECORDS, UPSERT_RECORDS, DELETE_RECORDS],
            Column::Bytes,
        );
        keyed_statements(
            &mut out,
            &self.index,
            [INSERT_INDEX, UPSERT_INDEX, DELETE_INDEX],
            Column::Text,
        );
        let mut push = |sql: &'static str, columns: Vec<Column>| {
            out.push(Statement { sql, columns });
        };
        for part in self.logs.chunks(ROWS_PER_STATEMENT) {
            push(
                INSERT_LOGS,
                vec![
                    Column::Text(part.iter().map(|(e, _, _)| e.clone()).collect()),
                    Column::Int(part.iter().map(|(_, s, _)| seq_of(*s)).collect()),
                    Column::Bytes(part.iter().map(|(_, _, c)| c.clone()).collect()),
                ],
            );
        }
        let counters: Vec<(&String, Option<u64>)> = self
            .counters
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, s)| (k, s.value))
            .collect();
        let (kept, gone): (Vec<_>, Vec<_>) = counters.into_iter().partition(|(_, v)| v.is_some());
        if !kept.is_empty() {
            push(
                UPSERT_COUNTERS,
                vec![
                    Column::Text(kept.iter().map(|(k, _)| (*k).clone()).collect()),
                    Column::Int(kept.iter().map(|(_, v)| seq_of(v.unwrap_or(0))).collect()),
                ],
            );
        }
        if !gone.is_empty() {
            push(
                DELETE_COUNTERS,
                vec![Column::Text(
                    gone.iter().map(|(k, _)| (*k).clone()).collect(),
                )],
            );
        }
        let meta: Vec<(&String, &Vec<u8>)> = self
            .meta
            .iter()
            .filter(|(_, s)| s.dirty)
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k, v)))
            .collect();
        if !meta.is_empty() {
            push(
                UPSERT_META,
                vec![
                    Column::Text(meta.iter().map(|(k, _)| (*k).clone()).collect()),
                    Column::Bytes(meta.iter().map(|(_, v)| (*v).clone()).collect()),
                ],
            );
        }
        if !self.notices.is_empty() {
            push(
                NOTIFY,
                vec![
                    Column::Text(self.notices.iter().map(|(c, _)| c.to_string()).collect()),
                    Column::Text(self.notices.iter().map(|(_, p)| p.clone()).collect()),
                ],
            );
        }
        out
    }

    /// After the changes reached the database: forget them, keeping the reads and what
    /// the log tops learned.
    fn sent(&mut self) {
        for (execution, seq, _) in &self.logs {
            if let Some(top) = self.log_top.get_mut(execution) {
                *top = Some(top.map_or(*seq, |t| t.max(*seq)));
            }
        }
        // What was read stays known (a fan-out reads its 10,000 agents ahead once, and
        // losing them here cost a round trip each for the rest of the transaction);
        // records and index entries written are in the database now and are asked
        // again if needed, so the cache stays within CACHED_READS. Counts and settings
        // are few, and the next change of one needs its value: they stay known as
        // written (a fan-out moves the same counts with every execution, and asking
        // them again after each part sent ahead would wait for that part).
        self.records.retain(|_, s| !s.dirty);
        self.index.retain(|_, s| !s.dirty);
        for slot in self.counters.values_mut() {
            *slot = Slot::read(slot.value);
        }
        for slot in self.meta.values_mut() {
            *slot = Slot::read(slot.value.take());
        }
        self.logs.clear();
        self.log_keys.clear();
        self.notices.clear();
        self.bytes = 0;
        self.reads = self.records.len() + self.index.len() + self.counters.len() + self.meta.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `f` is still waiting after 50 ms (it is then left to finish).
    fn waits<'s>(scope: &'s std::thread::Scope<'s, '_>, f: impl FnOnce() + Send + 's) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        scope.spawn(move || {
            f();
            let _ = done.send(());
        });
        finished.recv_timeout(Duration::from_millis(50)).is_err()
    }

    /// Deferring queries go all at once while nothing urgent is
    /// open, and [`DEFERRED_AT_ONCE`] at a time while something is, the next one as
    /// soon as a query ends or the last urgent transaction does.
    #[test]
    fn deferring_queries_give_way_to_urgent_transactions() {
        let turns = Arc::new(Turns::default());
        let deferring = turns.open(Kind::Deferring);
        let all: Vec<_> = (0..4).map(|_| turns.defer()).collect();
        drop(all);
        let before = deferred_waits().0;
        std::thread::scope(|scope| {
            let writer = turns.open(Kind::Urgent);
            let first: Vec<_> = (0..DEFERRED_AT_ONCE).map(|_| turns.defer()).collect();
            let t = turns.clone();
            assert!(waits(scope, move || drop(t.defer())));
            drop(first);
            let t = turns.clone();
            assert!(!waits(scope, move || drop(t.defer())));
            let first: Vec<_> = (0..DEFERRED_AT_ONCE).map(|_| turns.defer()).collect();
            let reader = turns.open(Kind::Urgent);
            drop(writer);
            let t = turns.clone();
            assert!(
                waits(scope, move || drop(t.defer())),
                "a reader is urgent too"
            );
            drop(reader);
            let t = turns.clone();
            assert!(!waits(scope, move || drop(t.defer())));
            drop(first);
        });
        drop(deferring);
        assert!(deferred_waits().0 >= before + 2, "the waits are counted");
        let state = turns.lock();
        assert_eq!((state.urgent, state.deferred), (0, 0));
    }

    /// Passwords never reach messages; TLS parameters are read as libpq reads them.
    #[test]
    fn urls_are_redacted_and_tls_modes_parsed() {
        assert_eq!(
            redact("postgres://dyn:s3cret@db.example:5432/dynserv?sslmode=require"),
            "postgres://dyn:***@db.example:5432/dynserv"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        let cases = [
            (
                "postgres://h/d",
                Tls::Unverified { required: false },
                "sslmode=prefer",
            ),
            (
                "postgres://h/d?sslmode=disable",
                Tls::Off,
                "sslmode=disable",
            ),
            (
                "postgres://h/d?sslmode=require&application_name=x",
                Tls::Unverified { required: true },
                "application_name=x&sslmode=require",
            ),
            (
                "postgres://h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
                Tls::Verified {
                    root_cert: "/etc/ca.pem".into(),
                    check_name: true,
                },
                "sslmode=require",
            ),
        ];
        for (url, tls, query) in cases {
            let (rewritten, parsed) = parse_url(url).unwrap();
            assert_eq!(parsed, tls, "{url}");
            assert!(
                rewritten.ends_with(&format!("?{query}")),
                "{url} -> {rewritten}"
            );
        }
        for bad in [
            "postgres://h/d?sslmode=verify-ca",
            "postgres://h/d?sslmode=sometimes",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
