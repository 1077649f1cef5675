//! The master secret and what is derived from it: the key that encrypts secrets at
//! rest (Hetzner tokens, enrollment secrets kept for re-display are never stored) and
//! the key that signs anonymous CSRF tokens. `SESSION_SECRET` wins when set; otherwise a
//! random secret is generated once and kept in `DATA_DIR/secret` with mode 0600.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Keys derived from the master secret.
#[derive(Clone)]
pub struct Keys {
    encryption: [u8; 32],
    signing: [u8; 32],
}

impl Keys {
    /// Loads the master secret (env value first, then the file, else generates the file).
    pub fn load(data_dir: &Path, env_secret: Option<&str>) -> Result<Keys> {
        let master = match env_secret.filter(|s| !s.is_empty()) {
            Some(secret) => secret.as_bytes().to_vec(),
            None => load_or_create_secret_file(&data_dir.join("secret"))?,
        };
        Ok(Keys::from_master(&master))
    }

    /// Derives the keys from master secret bytes.
    pub fn from_master(master: &[u8]) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(b"dynserv/v1"), master);
        let mut encryption = [0u8; 32];
        let mut signing = [0u8; 32];
        hk.expand(b"encryption", &mut encryption)
            .expect("32 bytes is a valid hkdf length");
        hk.expand(b"signing", &mut signing)
            .expect("32 bytes is a valid hkdf length");
        Keys {
            encryption,
            signing,
        }
    }

    /// Encrypts a secret for storage: `v1.<base64 nonce||ciphertext>`.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let cipher = XChaCha20Poly1305::new((&self.encryption).into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("encryption with a valid key cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        format!("v1.{}", B64.encode(blob))
    }

    /// Decrypts what [`Keys::encrypt`] produced.
    pub fn decrypt(&self, stored: &str) -> Result<String> {
        let blob = stored
            .strip_prefix("v1.")
            .and_then(|b| B64.decode(b).ok())
            .filter(|b| b.len() > 24)
            .context("a stored secret is not in the expected format")?;
        let cipher = XChaCha20Poly1305::new((&self.encryption).into());
        let plaintext = cipher
            .decrypt(XNonce::from_slice(&blob[..24]), &blob[24..])
            .map_err(|_| {
                anyhow::anyhow!("a stored secret does not decrypt: was the master secret changed?")
            })?;
        String::from_utf8(plaintext).context("a stored secret is not text")
    }

    /// A keyed MAC of `message`, hex encoded (HMAC-SHA256).
    pub fn sign(&self, message: &str) -> String {
        hmac_sha256(&self.signing, message.as_bytes())
    }
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> String {
    let mut inner_key = [0x36u8; 64];
    let mut outer_key = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        inner_key[i] ^= b;
        outer_key[i] ^= b;
    }
    let inner = Sha256::new()
        .chain_update(inner_key)
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(outer_key)
            .chain_update(inner)
            .finalize(),
    )
}

/// SHA-256 of a high-entropy secret (API tokens, session ids, enrollment secrets),
/// hex encoded: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `bytes` random bytes, URL-safe base64 encoded.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    B64.encode(buf)
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn load_or_create_secret_file(path: &Path) -> Result<Vec<u8>> {
    if let Ok(existing) = std::fs::read(path) {
        if existing.len() >= 32 {
            return Ok(existing);
        }
    }
    let secret = random_token(48);
    write_private(path, secret.as_bytes())?;
    Ok(secret.into_bytes())
}

/// Writes a file only its owner can read (mode 0600), replacing it atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encrypted secrets round-trip, and another master secret cannot read them.
    #[test]
    fn encrypt_round_trip() {
        let keys = Keys::from_master(b"one");
        let stored = keys.encrypt("hetzner-token");
        assert!(!stored.contains("hetzner"));
        assert_eq!(keys.decrypt(&stored).unwrap(), "hetzner-token");
        assert!(Keys::from_master(b"two").decrypt(&stored).is_err());
    }

    /// The MAC is deterministic and depends on the key.
    #[test]
    fn sign_is_stable_and_keyed() {
        let a = Keys::from_master(b"k");
        assert_eq!(a.sign("x"), a.sign("x"));
        assert_ne!(a.sign("x"), Keys::from_master(b"j").sign("x"));
    }

    /// The generated secret file is private and reused.
    #[test]
    fn secret_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Keys::load(dir.path(), None).unwrap();
        assert_eq!(a.sign("m"), b.sign("m"));
    }
}
