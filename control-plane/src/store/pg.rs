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
//!   hold the pool. The primary keys make the database itself refuse a duplicate key.
//! * **Blocking.** Store calls are synchronous and run on the blocking pool. The
//!   driver (tokio-postgres, pooled by deadpool-postgres, TLS by rustls) runs its
//!   connections on a small runtime of its own; a store call hands its queries to a
//!   connection and waits, so it never needs the caller's runtime.
//! * **Errors.** A connection that cannot be made or is lost, and the database's
//!   resource and system errors, are [`super::Unavailable`]: callers answer 503 and
//!   `/healthz` says why until a write works again.
//!
//! What does not live here: the cluster's notifications and leader election
//! (`crate::cluster`), which use [`Pg::dedicated`] and [`Pg::notify`].

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{apply_delta, IndexScan, RawRead, RawWrite, Unavailable};

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
    if let Some(e) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
        return Some(format!("no database connection: {e}"));
    }
    None
}

/// Lets one writer of this process at a time take a connection (a binary semaphore
/// whose permit a transaction can own).
#[derive(Default)]
struct WriteGate {
    busy: Mutex<bool>,
    freed: Condvar,
}

impl WriteGate {
    fn enter(self: &Arc<Self>) -> GatePass {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy = true;
        GatePass(self.clone())
    }
}

struct GatePass(Arc<WriteGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.freed.notify_one();
    }
}

/// A connected PostgreSQL backend.
pub struct Pg {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// Runs the connections (and the cluster's listener); shut down with the store.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    gate: Arc<WriteGate>,
    described: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Waits for a future that needs no runtime of its own (a query handed to a
/// connection that runs on the backend's runtime).
fn wait<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
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
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .context("setting up the database connection pool")?;
        let pg = Pg {
            pool,
            config,
            tls: connector,
            runtime: Some(runtime),
            handle,
            gate: Arc::new(WriteGate::default()),
            described,
        };
        let client = pg
            .client()
            .with_context(|| format!("connecting to {}", pg.described))?;
        wait(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); {SCHEMA} COMMIT;"
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
        &self.handle
    }

    fn client(&self) -> Result<Object> {
        let pool = self.pool.clone();
        let got = wait(self.handle.spawn(async move { pool.get().await }))
            .context("the database runtime stopped")?;
        got.map_err(|e| anyhow::Error::new(Unavailable(format!("no database connection: {e}"))))
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
        let client = self.client()?;
        wait(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))?;
        Ok(Txn {
            client: Some(client),
            _pass: None,
        })
    }

    pub(super) fn begin_write(&self) -> Result<Txn> {
        let pass = self.gate.enter();
        let client = self.client()?;
        wait(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
        )))?;
        Ok(Txn {
            client: Some(client),
            _pass: Some(pass),
        })
    }
}

/// One open transaction on one pooled connection. Dropped without
/// [`Txn::commit`]/[`Txn::finish`], it rolls back.
pub(super) struct Txn {
    client: Option<Object>,
    /// A writer's turn in this process, held until the transaction ends.
    _pass: Option<GatePass>,
}

impl Drop for Txn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if wait(client.batch_execute("ROLLBACK")).is_err() {
                // A connection in an unknown state never goes back to the pool.
                let _ = Object::take(client);
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
    fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a transaction holds its connection until it ends")
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client();
        wait(async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .map_err(anyhow::Error::new)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let client = self.client();
        wait(async {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, params).await
        })
        .map_err(anyhow::Error::new)
    }

    /// Commits a writer's changes.
    pub(super) fn commit(mut self) -> Result<()> {
        let client = self.client.take().expect("an open transaction");
        match wait(client.batch_execute("COMMIT")) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = Object::take(client);
                Err(e.into())
            }
        }
    }

    /// Ends a reader's snapshot.
    pub(super) fn finish(self) -> Result<()> {
        self.commit()
    }
}

impl RawRead for Txn {
    fn get(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.query(
            "SELECT body FROM dynserv_records WHERE tbl = $1 AND id = $2",
            &[&table, &id],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn list(&self, table: &str) -> Result<Vec<Vec<u8>>> {
        let rows = self.query(
            "SELECT body FROM dynserv_records WHERE tbl = $1 ORDER BY id",
            &[&table],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn count(&self, table: &str) -> Result<u64> {
        let rows = self.query(
            "SELECT count(*) FROM dynserv_records WHERE tbl = $1",
            &[&table],
        )?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn records_page(&self, table: &str, scan: &IndexScan) -> Result<Vec<Vec<u8>>> {
        let Some((clause, lo, hi)) = range_clause("id", 2, scan) else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT body FROM dynserv_records WHERE tbl = $1 AND {clause}");
        let rows = self.query(&sql, &[&table, &lo, &hi, &limit_of(scan.limit)])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn index_get(&self, index: &str, key: &str) -> Result<Option<String>> {
        let rows = self.query(
            "SELECT id FROM dynserv_index WHERE name = $1 AND key = $2",
            &[&index, &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn index_scan(&self, index: &str, prefix: &str) -> Result<Vec<(String, String)>> {
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
        let rows = self.query(
            "SELECT seq FROM dynserv_logs WHERE execution_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&execution_id],
        )?;
        Ok(rows.first().map(|r| seq_from(r.get(0))))
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let rows = self.query("SELECT n FROM dynserv_counters WHERE name = $1", &[&name])?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.query("SELECT value FROM dynserv_meta WHERE key = $1", &[&key])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn tables(&self) -> Result<Vec<String>> {
        let rows = self.query("SELECT DISTINCT tbl FROM dynserv_records ORDER BY tbl", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn records_after(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
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
        let rows = self.query("SELECT count(*) FROM dynserv_index", &[])?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn log_count(&self) -> Result<u64> {
        let rows = self.query("SELECT count(*) FROM dynserv_logs", &[])?;
        Ok(rows.first().map_or(0, |r| seq_from(r.get(0))))
    }

    fn counters_all(&self) -> Result<Vec<(String, u64)>> {
        let rows = self.query("SELECT name, n FROM dynserv_counters ORDER BY name", &[])?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), seq_from(r.get(1))))
            .collect())
    }

    fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self.query("SELECT key, value FROM dynserv_meta ORDER BY key", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl RawWrite for Txn {
    fn put(&mut self, table: &str, id: &str, body: &[u8]) -> Result<()> {
        self.execute(
            "INSERT INTO dynserv_records (tbl, id, body) VALUES ($1, $2, $3)
             ON CONFLICT (tbl, id) DO UPDATE SET body = excluded.body",
            &[&table, &id, &body],
        )?;
        Ok(())
    }

    fn delete(&mut self, table: &str, id: &str) -> Result<bool> {
        let n = self.execute(
            "DELETE FROM dynserv_records WHERE tbl = $1 AND id = $2",
            &[&table, &id],
        )?;
        Ok(n > 0)
    }

    fn index_put(&mut self, index: &str, key: &str, id: &str) -> Result<()> {
        self.execute(
            "INSERT INTO dynserv_index (name, key, id) VALUES ($1, $2, $3)
             ON CONFLICT (name, key) DO UPDATE SET id = excluded.id",
            &[&index, &key, &id],
        )?;
        Ok(())
    }

    fn index_delete(&mut self, index: &str, key: &str) -> Result<()> {
        self.execute(
            "DELETE FROM dynserv_index WHERE name = $1 AND key = $2",
            &[&index, &key],
        )?;
        Ok(())
    }

    fn log_append(&mut self, execution_id: &str, seq: u64, chunk: &[u8]) -> Result<bool> {
        let n = self.execute(
            "INSERT INTO dynserv_logs (execution_id, seq, chunk) VALUES ($1, $2, $3)
             ON CONFLICT (execution_id, seq) DO NOTHING",
            &[&execution_id, &seq_of(seq), &chunk],
        )?;
        Ok(n > 0)
    }

    fn log_delete(&mut self, execution_id: &str, limit: usize) -> Result<usize> {
        let n = self.execute(
            "DELETE FROM dynserv_logs WHERE execution_id = $1 AND seq IN
             (SELECT seq FROM dynserv_logs WHERE execution_id = $1 ORDER BY seq LIMIT $2)",
            &[&execution_id, &limit_of(limit)],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn counter_add(&mut self, name: &str, delta: i64) -> Result<u64> {
        let next = apply_delta(self.counter(name)?, delta);
        if next == 0 {
            self.execute("DELETE FROM dynserv_counters WHERE name = $1", &[&name])?;
        } else {
            self.execute(
                "INSERT INTO dynserv_counters (name, n) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET n = excluded.n",
                &[&name, &seq_of(next)],
            )?;
        }
        Ok(next)
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.execute(
            "INSERT INTO dynserv_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
