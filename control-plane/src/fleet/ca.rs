//! The fleet's certificate authorities, kept in the store as sealed records (so every
//! replica on a shared database presents the same CAs, and a store backup holds them).
//!
//! One CA is **active**: it issues every new agent certificate. A rotation
//! ([`rotate`]) makes a new one active and leaves the previous ones **retiring**: still
//! trusted for the agents' client certificates, and the oldest trusted CA (the
//! *serving* CA) still signs the gateway's own server certificate, so agents that only
//! know it (offline during the rotation) still connect. Connected agents are sent a
//! certificate of the new CA together with the bundle of every trusted CA (forced
//! renewal, `gateway::try_renewal`); an agent that stores the bundle trusts both, so
//! the server certificate can change once the old CA is **retired** ([`retire`]:
//! refused while a usable agent still holds one of its certificates, unless forced).
//! A retired CA is trusted no more and its key is erased.
//!
//! The serving CA's fingerprint is what enrollment tokens pin, so it must survive
//! upgrades, restarts and `dynserv migrate`; a token made before that CA was retired
//! no longer enrolls. Installations from before the CA lived in the store kept it in
//! `DATA_DIR/fleet/ca.pem` and `ca.key`: those are imported once, so their agents and
//! tokens stay valid. The gateway's own server certificate is issued from the serving
//! CA at every start (and every change of the trusted set) and never stored.
//!
//! Every replica reloads the set when it changes ([`reload_if_changed`], asked every
//! few seconds by the gateway and at once after a change made here).

use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use dynserv_shared::pki::{self, Ca};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::store::{Read, Record, Store, Writer};

/// The id of the CA every installation started with (and agents enrolled before
/// rotations existed hold certificates of).
pub const ORIGINAL_CA_ID: &str = "fleet";

/// Most CAs trusted at once (the active one and those retiring): a rotation beyond it
/// is refused until an older one is retired, so the trust set stays small.
pub const MAX_TRUSTED_CAS: usize = 4;

/// Where a CA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStatus {
    /// Issues new agent certificates; trusted.
    #[default]
    Active,
    /// Replaced by a rotation; still trusted until retired.
    Retiring,
    /// Trusted no more; its key is gone.
    Retired,
}

impl CaStatus {
    fn as_str(self) -> &'static str {
        match self {
            CaStatus::Active => "active",
            CaStatus::Retiring => "retiring",
            CaStatus::Retired => "retired",
        }
    }
}

/// A CA as stored (sealed: the key never lies in clear in the store).
#[derive(Serialize, Deserialize)]
struct StoredCa {
    id: String,
    cert_pem: String,
    /// Empty once retired.
    key_pem: String,
    /// Absent in records from before rotations: the one CA there was, active.
    #[serde(default)]
    status: CaStatus,
    /// `None` for a CA imported from an older installation.
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    retired_at: Option<DateTime<Utc>>,
}

impl Record for StoredCa {
    const TABLE: &'static str = "fleet_ca";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

impl StoredCa {
    fn fingerprint(&self) -> Result<String> {
        let der = pki::certs_from_pem(&self.cert_pem)?;
        Ok(hex::encode(pki::sha256(&der[0])))
    }

    fn trusted(&self) -> bool {
        self.status != CaStatus::Retired
    }

    fn load(&self) -> Result<Ca> {
        Ca::from_pem(&self.cert_pem, &self.key_pem)
            .with_context(|| format!("loading the fleet CA {}", self.id))
    }
}

/// Every CA record, oldest first (the imported original, whose creation is unknown,
/// before all others).
fn records(r: &impl Read) -> Result<Vec<StoredCa>> {
    let mut all: Vec<StoredCa> = r.list()?;
    all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(all)
}

/// What identifies a trust set: each CA's id and status, oldest first.
fn generation(records: &[StoredCa]) -> String {
    records
        .iter()
        .map(|ca| format!("{}:{}", ca.id, ca.status.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The CAs as the gateway uses them: who issues, who signs its certificate, who is
/// trusted.
pub struct FleetCa {
    /// The serving CA: the oldest trusted one. It signs the gateway's certificate and
    /// its fingerprint is what new enrollment tokens pin.
    pub ca: Ca,
    /// The active CA, which issues agent certificates.
    pub issuing: Ca,
    /// The active CA's id.
    pub issuing_id: String,
    /// Every trusted CA certificate (serving first).
    pub trusted: Vec<CertificateDer<'static>>,
    /// The same as PEM: the bundle agents are given.
    pub bundle_pem: String,
    /// The gateway's certificate followed by the serving CA certificate.
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The gateway's key.
    pub server_key: PrivateKeyDer<'static>,
    generation: String,
}

impl FleetCa {
    /// The gateway's rustls configuration: presents the serving CA's chain, accepts
    /// client certificates of every trusted CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        Ok(pki::gateway_server_config(
            &self.trusted,
            self.server_chain.clone(),
            self.server_key.clone_key(),
        )?)
    }

    /// Whether more than one CA is trusted (a rotation is under way).
    pub fn rotating(&self) -> bool {
        self.trusted.len() > 1
    }

    fn build(records: &[StoredCa]) -> Result<FleetCa> {
        let trusted: Vec<&StoredCa> = records.iter().filter(|ca| ca.trusted()).collect();
        let serving = trusted
            .first()
            .context("the store holds no trusted fleet CA")?;
        let active = trusted
            .iter()
            .find(|ca| ca.status == CaStatus::Active)
            .context("the store holds no active fleet CA")?;
        let ca = serving.load()?;
        let issuing = active.load()?;
        let mut certs = Vec::new();
        let mut bundle_pem = String::new();
        for stored in &trusted {
            certs.push(pki::certs_from_pem(&stored.cert_pem)?.remove(0));
            bundle_pem.push_str(stored.cert_pem.trim_end());
            bundle_pem.push('\n');
        }
        let (cert, key) = ca.issue_server_cert()?;
        let mut server_chain = pki::certs_from_pem(&cert)?;
        server_chain.truncate(1);
        server_chain.push(ca.cert_der().clone());
        let server_key = pki::key_from_pem(&key)?;
        Ok(FleetCa {
            ca,
            issuing,
            issuing_id: active.id.clone(),
            trusted: certs,
            bundle_pem,
            server_chain,
            server_key,
            generation: generation(records),
        })
    }
}

/// The CA records, creating the first on first use: imported from the data
/// directory's files of an older installation, or generated. One write transaction
/// decides, so replicas starting together on one database end up with the same CA.
fn ensure(store: &Store, data_dir: &Path) -> Result<Vec<StoredCa>> {
    let existing = store.read(records)?;
    if !existing.is_empty() {
        return Ok(existing);
    }
    store.write(|w| {
        let existing = records(w)?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        let dir = data_dir.join("fleet");
        let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (cert_pem, key_pem, created_at) = if ca_pem.exists() && ca_key.exists() {
            let cert = std::fs::read_to_string(&ca_pem)
                .with_context(|| format!("reading {}", ca_pem.display()))?;
            let key = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("reading {}", ca_key.display()))?;
            tracing::info!(dir = %dir.display(), "moving the fleet CA into the store");
            (cert, key, None)
        } else {
            let ca = Ca::generate().context("generating the fleet CA")?;
            (ca.cert_pem().to_string(), ca.key_pem(), Some(Utc::now()))
        };
        let stored = StoredCa {
            id: ORIGINAL_CA_ID.into(),
            cert_pem,
            key_pem,
            status: CaStatus::Active,
            created_at,
            retired_at: None,
        };
        w.put(&stored)?;
        Ok(vec![stored])
    })
}

/// The serving CA (see [`FleetCa::ca`]), created on first use (see [`load_or_create`]).
pub fn load_ca(store: &Store, data_dir: &Path) -> Result<Ca> {
    Ok(load_or_create(store, data_dir)?.ca)
}

/// Loads the CAs (creating the first on first use) and issues the gateway's
/// certificate.
pub fn load_or_create(store: &Store, data_dir: &Path) -> Result<FleetCa> {
    FleetCa::build(&ensure(store, data_dir)?)
}

/// The CAs as stored now when they differ from `current` (a rotation or retirement
/// made here, on another replica or by the CLI); `None` when nothing changed.
pub fn reload_if_changed(store: &Store, current: &FleetCa) -> Result<Option<FleetCa>> {
    let now = store.read(records)?;
    if generation(&now) == current.generation {
        return Ok(None);
    }
    FleetCa::build(&now).map(Some)
}

/// A CA as the API, the page and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct CaView {
    pub id: String,
    /// SHA-256 (hex) of its certificate: what enrollment tokens pin.
    pub fingerprint: String,
    /// `active`, `retiring` or `retired`.
    pub status: &'static str,
    /// `None` for a CA imported from an older installation.
    pub created_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    /// Usable (not revoked) agents whose current certificate it issued.
    pub agents: u64,
    /// Whether it signs the gateway's certificate (the oldest trusted CA).
    pub serving: bool,
}

fn views(r: &impl Read, records: &[StoredCa]) -> Result<Vec<CaView>> {
    let serving = records
        .iter()
        .find(|ca| ca.trusted())
        .map(|ca| ca.id.clone());
    records
        .iter()
        .map(|ca| {
            Ok(CaView {
                id: ca.id.clone(),
                fingerprint: ca.fingerprint()?,
                status: ca.status.as_str(),
                created_at: ca.created_at,
                retired_at: ca.retired_at,
                agents: crate::agents::holding_ca(r, &ca.id)?,
                serving: serving.as_deref() == Some(ca.id.as_str()),
            })
        })
        .collect()
}

/// Every CA, oldest first, with how many agents still hold a certificate of each.
pub fn list(r: &impl Read) -> Result<Vec<CaView>> {
    views(r, &records(r)?)
}

/// The id a new CA is stored under: the start of its fingerprint.
fn new_id(ca: &Ca) -> String {
    hex::encode(&ca.fingerprint()[..8])
}

/// Rotates the CA: a new CA becomes the active one (issuing every certificate from now
/// on), the previous active one is retiring (still trusted). Refused (409) while
/// [`MAX_TRUSTED_CAS`] are trusted already. Audited. Returns the new CA.
pub fn rotate(w: &mut Writer, actor: &Actor, now: DateTime<Utc>) -> AppResult<CaView> {
    let mut all = records(w)?;
    if all.is_empty() {
        return Err(AppError::conflict(
            "the fleet CA does not exist yet: start `dynserv serve` once",
        ));
    }
    let trusted = all.iter().filter(|ca| ca.trusted()).count();
    if trusted >= MAX_TRUSTED_CAS {
        return Err(AppError::conflict(format!(
            "{trusted} CAs are trusted already (at most {MAX_TRUSTED_CAS}): retire an older \
             one first"
        )));
    }
    let ca = Ca::generate().context("generating a fleet CA")?;
    let id = new_id(&ca);
    let mut previous = Vec::new();
    for stored in all.iter_mut().filter(|ca| ca.status == CaStatus::Active) {
        stored.status = CaStatus::Retiring;
        w.put(&*stored)?;
        previous.push(stored.id.clone());
    }
    let stored = StoredCa {
        id: id.clone(),
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem(),
        status: CaStatus::Active,
        created_at: Some(now),
        retired_at: None,
    };
    w.put(&stored)?;
    all.push(stored);
    audit::record(
        w,
        actor,
        "ca.rotate",
        &format!("ca:{id}"),
        format!(
            "new active CA {id}; {} trusted until retired",
            previous.join(", ")
        ),
    )?;
    let view = views(w, &all)?
        .into_iter()
        .find(|v| v.id == id)
        .context("the new CA is missing")?;
    Ok(view)
}

/// Finds a CA by id or full fingerprint.
fn find(all: &[StoredCa], key: &str) -> AppResult<usize> {
    let key = key.trim().to_ascii_lowercase();
    all.iter()
        .position(|ca| ca.id == key || ca.fingerprint().is_ok_and(|f| f == key))
        .ok_or_else(|| AppError::not_found("CA"))
}

/// Retires a retiring CA: it is trusted no more and its key is erased. Refused (409)
/// for the active CA, one already retired, and, unless `force`, while usable agents
/// still hold a certificate it issued (they could no longer connect). Audited.
pub fn retire(
    w: &mut Writer,
    actor: &Actor,
    key: &str,
    force: bool,
    now: DateTime<Utc>,
) -> AppResult<CaView> {
    let mut all = records(w)?;
    let at = find(&all, key)?;
    let id = all[at].id.clone();
    match all[at].status {
        CaStatus::Active => {
            return Err(AppError::conflict(format!(
                "CA {id} is the active CA: rotate first, then retire it"
            )))
        }
        CaStatus::Retired => return Err(AppError::conflict(format!("CA {id} is retired already"))),
        CaStatus::Retiring => {}
    }
    let holding = crate::agents::holding_ca(w, &id)?;
    if holding > 0 && !force {
        return Err(AppError::conflict(format!(
            "{holding} agent(s) still hold a certificate of CA {id} and could not connect once \
             it is retired: wait until they have connected and renewed, revoke them, or retire \
             it with force"
        )));
    }
    let stored = &mut all[at];
    stored.status = CaStatus::Retired;
    stored.retired_at = Some(now);
    stored.key_pem.clear();
    w.put(&*stored)?;
    let detail = match holding {
        0 => "no agent held a certificate of it".to_string(),
        n => format!("forced: {n} agent(s) still held a certificate of it"),
    };
    audit::record(w, actor, "ca.retire", &format!("ca:{id}"), detail)?;
    let view = views(w, &all)?
        .into_iter()
        .find(|v| v.id == id)
        .context("the retired CA is missing")?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Keys;

    fn store(dir: &Path) -> Store {
        let store = Store::open(&dir.join("s.redb")).unwrap();
        store.seal_with(Keys::from_master(b"master"));
        store
    }

    /// The CA is created once, sealed in the store, and the same fingerprint comes
    /// back on reload.
    #[test]
    fn created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let first = load_or_create(&store, dir.path()).unwrap();
        let second = load_or_create(&store, dir.path()).unwrap();
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        second.server_config().unwrap();
        assert!(
            !dir.path().join("fleet").exists(),
            "nothing is written beside the store"
        );
    }

    /// A CA kept in the data directory by an older version is imported, so its
    /// enrolled agents and tokens stay valid.
    #[test]
    fn an_older_installations_ca_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let old = Ca::generate().unwrap();
        std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
        std::fs::write(dir.path().join("fleet/ca.pem"), old.cert_pem().as_bytes()).unwrap();
        std::fs::write(dir.path().join("fleet/ca.key"), old.key_pem()).unwrap();
        let store = store(dir.path());
        let loaded = load_or_create(&store, dir.path()).unwrap();
        assert_eq!(loaded.ca.fingerprint(), old.fingerprint());
        std::fs::remove_dir_all(dir.path().join("fleet")).unwrap();
        let again = load_or_create(&store, dir.path()).unwrap();
        assert_eq!(again.ca.fingerprint(), old.fingerprint());
    }

    /// A rotation makes a new CA issue while the old one keeps signing the gateway's
    /// certificate and stays trusted; retiring the old one makes the new one serve
    /// alone, and a reload sees each change. The active CA and a retired one cannot be
    /// retired, and the trusted set is bounded.
    #[test]
    fn rotation_then_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let before = load_or_create(&store, dir.path()).unwrap();
        assert!(reload_if_changed(&store, &before).unwrap().is_none());
        let new = store
            .write(|w| Ok(rotate(w, &Actor::cli(), Utc::now())?))
            .unwrap();
        let during = reload_if_changed(&store, &before)
            .unwrap()
            .expect("changed");
        assert_eq!(during.ca.fingerprint(), before.ca.fingerprint());
        assert_eq!(hex::encode(during.issuing.fingerprint()), new.fingerprint);
        assert_eq!(during.issuing_id, new.id);
        assert_eq!(during.trusted.len(), 2);
        assert!(during.rotating());
        assert_eq!(pki::certs_from_pem(&during.bundle_pem).unwrap().len(), 2);

        let refused = store.write(|w| Ok(retire(w, &Actor::cli(), &new.id, true, Utc::now())?));
        assert!(format!("{:#}", refused.unwrap_err()).contains("active CA"));
        let missing = store.write(|w| Ok(retire(w, &Actor::cli(), "nope", false, Utc::now())?));
        assert!(missing.is_err());

        let retired = store
            .write(|w| Ok(retire(w, &Actor::cli(), ORIGINAL_CA_ID, false, Utc::now())?))
            .unwrap();
        assert_eq!(retired.status, "retired");
        let after = reload_if_changed(&store, &during)
            .unwrap()
            .expect("changed");
        assert_eq!(hex::encode(after.ca.fingerprint()), new.fingerprint);
        assert_eq!(after.trusted.len(), 1);
        let again =
            store.write(|w| Ok(retire(w, &Actor::cli(), ORIGINAL_CA_ID, true, Utc::now())?));
        assert!(format!("{:#}", again.unwrap_err()).contains("retired already"));

        for _ in 1..MAX_TRUSTED_CAS {
            store
                .write(|w| Ok(rotate(w, &Actor::cli(), Utc::now())?))
                .unwrap();
        }
        let full = store.write(|w| Ok(rotate(w, &Actor::cli(), Utc::now())?));
        assert!(format!("{:#}", full.unwrap_err()).contains("retire an older one"));
        let listed = store.read(list).unwrap();
        assert_eq!(listed.len(), MAX_TRUSTED_CAS + 1);
        assert_eq!(listed.iter().filter(|c| c.status == "active").count(), 1);
    }
}
