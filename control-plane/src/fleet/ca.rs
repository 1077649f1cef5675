//! The fleet's certificate authority, kept in the store as one sealed record (so every
//! replica on a shared database presents the same CA, and a store backup holds it).
//! The CA's fingerprint is what enrollment tokens pin, so it must survive upgrades,
//! restarts and `dynserv migrate`. Installations from before the CA lived in the store
//! kept it in `DATA_DIR/fleet/ca.pem` and `ca.key`: those are imported once, so their
//! agents and tokens stay valid. The gateway's own server certificate is issued from
//! the CA at every start and never stored.

use std::path::Path;

use anyhow::{Context, Result};
use dynserv_shared::pki::{self, Ca};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::store::{Read as _, Record, Store};

/// The CA as stored (sealed: the key never lies in clear in the store).
#[derive(Serialize, Deserialize)]
struct StoredCa {
    id: String,
    cert_pem: String,
    key_pem: String,
}

impl Record for StoredCa {
    const TABLE: &'static str = "fleet_ca";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// The one record's id.
const CA_ID: &str = "fleet";

/// The CA and the gateway's certificate chain.
pub struct FleetCa {
    /// The certificate authority.
    pub ca: Ca,
    /// The gateway's certificate followed by the CA certificate.
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The gateway's key.
    pub server_key: PrivateKeyDer<'static>,
}

impl FleetCa {
    /// The gateway's rustls configuration.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        Ok(self
            .ca
            .server_config(self.server_chain.clone(), self.server_key.clone_key())?)
    }
}

/// The CA from the store; on first use, imported from the data directory's files of
/// an older installation or generated. One write transaction decides, so replicas
/// starting together on one database end up with the same CA.
pub fn load_ca(store: &Store, data_dir: &Path) -> Result<Ca> {
    let stored = store.write(|w| {
        if let Some(stored) = w.get::<StoredCa>(CA_ID)? {
            return Ok(stored);
        }
        let dir = data_dir.join("fleet");
        let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (cert_pem, key_pem) = if ca_pem.exists() && ca_key.exists() {
            let cert = std::fs::read_to_string(&ca_pem)
                .with_context(|| format!("reading {}", ca_pem.display()))?;
            let key = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("reading {}", ca_key.display()))?;
            tracing::info!(dir = %dir.display(), "moving the fleet CA into the store");
            (cert, key)
        } else {
            let ca = Ca::generate().context("generating the fleet CA")?;
            (ca.cert_pem().to_string(), ca.key_pem())
        };
        let stored = StoredCa {
            id: CA_ID.into(),
            cert_pem,
            key_pem,
        };
        w.put(&stored)?;
        Ok(stored)
    })?;
    Ca::from_pem(&stored.cert_pem, &stored.key_pem).context("loading the fleet CA")
}

/// Loads the CA (see [`load_ca`]) and issues the gateway's certificate.
pub fn load_or_create(store: &Store, data_dir: &Path) -> Result<FleetCa> {
    let ca = load_ca(store, data_dir)?;
    let (cert, key) = ca.issue_server_cert()?;
    let mut server_chain = pki::certs_from_pem(&cert)?;
    server_chain.truncate(1);
    server_chain.push(ca.cert_der().clone());
    let server_key = pki::key_from_pem(&key)?;
    Ok(FleetCa {
        ca,
        server_chain,
        server_key,
    })
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
}
