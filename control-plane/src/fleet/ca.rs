//! The fleet's certificate authority, kept in `DATA_DIR/fleet/`: `ca.pem`, `ca.key`
//! (mode 0600) and the gateway's server certificate `server.pem` / `server.key`
//! (mode 0600), created on first use. The CA's fingerprint is what enrollment tokens
//! pin, so these files must survive upgrades and restarts.

use std::path::Path;

use anyhow::{Context, Result};
use dynserv_shared::pki::{self, Ca};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::secrets::write_private;

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

/// Loads the CA from the data directory, creating it (and the server certificate) on
/// first use.
pub fn load_or_create(data_dir: &Path) -> Result<FleetCa> {
    let dir = data_dir.join("fleet");
    dynserv_agent::private_fs::create_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if ca_pem.exists() && ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_pem)
            .with_context(|| format!("reading {}", ca_pem.display()))?;
        let key = std::fs::read_to_string(&ca_key)
            .with_context(|| format!("reading {}", ca_key.display()))?;
        Ca::from_pem(&cert, &key).context("loading the fleet CA")?
    } else {
        let ca = Ca::generate().context("generating the fleet CA")?;
        write_private(&ca_key, ca.key_pem().as_bytes())?;
        write_private(&ca_pem, ca.cert_pem().as_bytes())?;
        // A new CA invalidates any server certificate of an older one.
        let _ = std::fs::remove_file(dir.join("server.pem"));
        ca
    };
    let (server_pem, server_key) = (dir.join("server.pem"), dir.join("server.key"));
    if !(server_pem.exists() && server_key.exists()) {
        let (cert, key) = ca.issue_server_cert()?;
        write_private(&server_key, key.as_bytes())?;
        write_private(&server_pem, cert.as_bytes())?;
    }
    let mut server_chain = pki::certs_from_pem(&std::fs::read_to_string(&server_pem)?)?;
    server_chain.truncate(1);
    server_chain.push(ca.cert_der().clone());
    let server_key = pki::key_from_pem(&std::fs::read_to_string(&server_key)?)?;
    Ok(FleetCa {
        ca,
        server_chain,
        server_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CA is created once and the same fingerprint comes back on reload.
    #[test]
    fn created_once_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        let mode = std::fs::metadata(dir.path().join("fleet/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        second.server_config().unwrap();
    }
}
