//! The fleet's Ed25519 key for agent binaries (see `dynserv_shared::upgrade`): one
//! sealed store record, like the CA, so every replica signs with the same key and a
//! store backup holds it. Created at first use. Agents learn its public half at
//! enrollment, or at their first welcome when they were enrolled before it existed
//! (that connection is already mutually authenticated by the CA), and never replace it.

use anyhow::{Context, Result};
use base64::Engine as _;
use dynserv_shared::upgrade::SigningKey;
use serde::{Deserialize, Serialize};

use crate::store::{Read as _, Record, Store};

/// The key as stored (sealed: the private key never lies in clear in the store).
#[derive(Serialize, Deserialize)]
struct StoredSigningKey {
    id: String,
    /// The PKCS#8 document, base64.
    pkcs8: String,
}

impl Record for StoredSigningKey {
    const TABLE: &'static str = "fleet_signing_key";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// The one record's id.
const KEY_ID: &str = "agent-binaries";

/// The key from the store, created in one write transaction on first use (so replicas
/// starting together end up with the same key).
pub fn load_or_create(store: &Store) -> Result<SigningKey> {
    let engine = base64::engine::general_purpose::STANDARD;
    let stored = store.write(|w| {
        if let Some(stored) = w.get::<StoredSigningKey>(KEY_ID)? {
            return Ok(stored);
        }
        let key = SigningKey::generate().context("generating the fleet's signing key")?;
        let stored = StoredSigningKey {
            id: KEY_ID.into(),
            pkcs8: engine.encode(key.pkcs8()),
        };
        w.put(&stored)?;
        Ok(stored)
    })?;
    let pkcs8 = engine
        .decode(stored.pkcs8.as_bytes())
        .context("decoding the fleet's signing key")?;
    SigningKey::from_pkcs8(&pkcs8).context("loading the fleet's signing key")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is created once, sealed, and the same key comes back.
    #[test]
    fn created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.seal_with(crate::secrets::Keys::from_master(b"master"));
        let first = load_or_create(&store).unwrap();
        let second = load_or_create(&store).unwrap();
        assert_eq!(first.public_key(), second.public_key());
    }
}
