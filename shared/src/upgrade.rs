//! Agent upgrades: what both sides agree on besides the messages (see
//! [`crate::proto::UpgradeOffer`]).
//!
//! * **The version marker.** An agent binary carries its version in a fixed-length
//!   marker, [`VERSION_MARKER_LEN`] bytes: [`VERSION_MARKER_PREFIX`], the version, then
//!   NUL bytes. The agent reads its reported version from its own marker at run time,
//!   and the control plane reads the version of the binary it serves from the file's
//!   marker ([`find_version`]) without running it. Because the marker has a fixed
//!   length, a binary's version can be changed by rewriting those bytes in place: the
//!   end-to-end tests make "a second build" of the agent that reports another version
//!   this way ([`patch_version`]), and it is otherwise the very same program.
//! * **The signature.** The control plane signs every binary it serves with an Ed25519
//!   key of its own ([`SigningKey`]); the message signed is [`signed_message`] (the
//!   version, the size and the SHA-256), so neither the bytes nor what they claim to be
//!   can be changed without the agent noticing ([`verify`]). Agents learn the public
//!   key at enrollment, or (agents enrolled before signing keys existed) once from the
//!   welcome of their authenticated connection, and keep the first one they learned.

use base64::Engine as _;
use ring::signature::{self, KeyPair as _};

/// The start of an agent binary's version marker.
pub const VERSION_MARKER_PREFIX: &[u8; 22] = b"DYNSERV-AGENT-VERSION:";

/// The length of the whole marker: the prefix, the version and NUL padding.
pub const VERSION_MARKER_LEN: usize = 64;

/// The longest version a marker holds.
pub const MAX_MARKER_VERSION_LEN: usize = VERSION_MARKER_LEN - VERSION_MARKER_PREFIX.len();

/// The marker for `version` (for the agent's own `static`); panics at compile time
/// when the version is too long.
pub const fn version_marker(version: &str) -> [u8; VERSION_MARKER_LEN] {
    let mut marker = [0u8; VERSION_MARKER_LEN];
    let prefix = VERSION_MARKER_PREFIX;
    let bytes = version.as_bytes();
    assert!(bytes.len() <= MAX_MARKER_VERSION_LEN, "version too long");
    let mut i = 0;
    while i < prefix.len() {
        marker[i] = prefix[i];
        i += 1;
    }
    let mut j = 0;
    while j < bytes.len() {
        marker[prefix.len() + j] = bytes[j];
        j += 1;
    }
    marker
}

/// Whether `byte` may be part of a version in a marker.
fn version_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'+' | b'_')
}

/// The version a whole marker holds: non-empty, made of version characters, then only
/// NUL bytes; `None` for anything else.
pub fn marker_version(marker: &[u8]) -> Option<&str> {
    if marker.len() != VERSION_MARKER_LEN || !marker.starts_with(VERSION_MARKER_PREFIX) {
        return None;
    }
    let rest = &marker[VERSION_MARKER_PREFIX.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (version, padding) = rest.split_at(end);
    if version.is_empty() || !version.iter().all(|b| version_byte(*b)) {
        return None;
    }
    if padding.iter().any(|b| *b != 0) {
        return None;
    }
    std::str::from_utf8(version).ok()
}

/// Offsets of the well-formed markers in `binary`.
fn marker_offsets(binary: &[u8]) -> Vec<usize> {
    let prefix = VERSION_MARKER_PREFIX;
    let mut found = Vec::new();
    let mut at = 0;
    while at + VERSION_MARKER_LEN <= binary.len() {
        let Some(pos) = binary[at..]
            .windows(prefix.len())
            .position(|w| w == prefix)
            .map(|p| p + at)
        else {
            break;
        };
        if pos + VERSION_MARKER_LEN <= binary.len()
            && marker_version(&binary[pos..pos + VERSION_MARKER_LEN]).is_some()
        {
            found.push(pos);
        }
        at = pos + 1;
    }
    found
}

/// The version an agent binary reports: the one its well-formed marker holds. `None`
/// when it has none (a build from before markers, or not an agent at all), or when
/// several disagree.
pub fn find_version(binary: &[u8]) -> Option<String> {
    let mut versions = marker_offsets(binary)
        .into_iter()
        .filter_map(|at| marker_version(&binary[at..at + VERSION_MARKER_LEN]))
        .map(str::to_string)
        .collect::<Vec<_>>();
    versions.dedup();
    match versions.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Rewrites every version marker in `binary` to say `version` (same length, NUL
/// padded); returns how many it rewrote. For tests that need a second build of the
/// agent reporting another version.
pub fn patch_version(binary: &mut [u8], version: &str) -> Result<usize, UpgradeError> {
    if version.is_empty()
        || version.len() > MAX_MARKER_VERSION_LEN
        || !version.bytes().all(version_byte)
    {
        return Err(UpgradeError::BadVersion(version.to_string()));
    }
    let marker = {
        let mut m = [0u8; VERSION_MARKER_LEN];
        m[..VERSION_MARKER_PREFIX.len()].copy_from_slice(VERSION_MARKER_PREFIX);
        m[VERSION_MARKER_PREFIX.len()..VERSION_MARKER_PREFIX.len() + version.len()]
            .copy_from_slice(version.as_bytes());
        m
    };
    let offsets = marker_offsets(binary);
    for at in &offsets {
        binary[*at..*at + VERSION_MARKER_LEN].copy_from_slice(&marker);
    }
    Ok(offsets.len())
}

/// What goes wrong with an upgrade's binary.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UpgradeError {
    /// A version a marker cannot hold.
    #[error("{0:?} is not a version a marker can hold")]
    BadVersion(String),
    /// The bytes received do not have the announced SHA-256.
    #[error("sha256 mismatch: expected {expected}, received {received}")]
    ChecksumMismatch {
        /// What the offer announced.
        expected: String,
        /// What the bytes hash to.
        received: String,
    },
    /// The bytes received are not as long as announced.
    #[error("size mismatch: expected {expected} bytes, received {received}")]
    SizeMismatch {
        /// What the offer announced.
        expected: u64,
        /// What arrived.
        received: u64,
    },
    /// The signature does not verify with the trusted key.
    #[error("the signature does not verify with the control plane's signing key")]
    BadSignature,
    /// A key or signature that is not valid base64 of the right length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Generating or loading a signing key failed.
    #[error("the signing key: {0}")]
    Key(String),
}

/// The bytes an upgrade's signature covers: the version the binary reports, its size
/// and its SHA-256 (hex, lower case).
pub fn signed_message(version: &str, size: u64, sha256_hex: &str) -> Vec<u8> {
    format!("dynserv-agent-binary/v1\nversion={version}\nsize={size}\nsha256={sha256_hex}\n")
        .into_bytes()
}

/// Checks `signature` (base64) over `message` with the Ed25519 `public_key` (base64 of
/// its 32 bytes).
pub fn verify(public_key: &str, message: &[u8], signature: &str) -> Result<(), UpgradeError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(public_key.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or(UpgradeError::Malformed("signing key"))?;
    let signature = engine
        .decode(signature.trim())
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or(UpgradeError::Malformed("signature"))?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &key)
        .verify(message, &signature)
        .map_err(|_| UpgradeError::BadSignature)
}

/// The control plane's Ed25519 key for agent binaries.
pub struct SigningKey {
    pair: signature::Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, UpgradeError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| UpgradeError::Key(e.to_string()))?;
        SigningKey::from_pkcs8(pkcs8.as_ref())
    }

    /// The key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, UpgradeError> {
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| UpgradeError::Key(e.to_string()))?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The PKCS#8 document, for storing the key (sealed).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as agents keep it: base64 (standard) of its 32 bytes.
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// The signature of `message`, base64 (standard).
    pub fn sign(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.sign(message).as_ref())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marker is found in surrounding bytes, read back, and rewritten in place to
    /// another version of any length that fits; a look-alike without NUL padding is
    /// not a marker.
    #[test]
    fn markers_are_found_and_patched() {
        let marker = version_marker("0.3.0");
        let mut binary = b"junk DYNSERV-AGENT-VERSION:not a marker".to_vec();
        binary.extend_from_slice(&marker);
        binary.extend_from_slice(b"more junk");
        assert_eq!(find_version(&binary).as_deref(), Some("0.3.0"));
        assert_eq!(patch_version(&mut binary, "0.3.1-test").unwrap(), 1);
        assert_eq!(find_version(&binary).as_deref(), Some("0.3.1-test"));
        assert_eq!(patch_version(&mut binary, "0.3.0").unwrap(), 1);
        assert_eq!(find_version(&binary).as_deref(), Some("0.3.0"));
        assert!(patch_version(&mut binary, "bad version").is_err());
        assert_eq!(find_version(b"no marker at all"), None);
        // Two markers that disagree name no version.
        let mut two = version_marker("1.0.0").to_vec();
        two.extend_from_slice(&version_marker("2.0.0"));
        assert_eq!(find_version(&two), None);
    }

    /// A signature verifies with its key only over the message it signed: another
    /// size, checksum or version, a flipped signature byte and another key all fail.
    #[test]
    fn signatures_cover_version_size_and_checksum() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let message = signed_message("0.3.1", 42, "ab".repeat(32).as_str());
        let signature = key.sign(&message);
        verify(&key.public_key(), &message, &signature).unwrap();
        for other in [
            signed_message("0.3.2", 42, "ab".repeat(32).as_str()),
            signed_message("0.3.1", 43, "ab".repeat(32).as_str()),
            signed_message("0.3.1", 42, "cd".repeat(32).as_str()),
        ] {
            assert_eq!(
                verify(&key.public_key(), &other, &signature),
                Err(UpgradeError::BadSignature)
            );
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let mut raw = engine.decode(&signature).unwrap();
        raw[0] ^= 1;
        assert_eq!(
            verify(&key.public_key(), &message, &engine.encode(&raw)),
            Err(UpgradeError::BadSignature)
        );
        let stranger = SigningKey::generate().unwrap();
        assert_eq!(
            verify(&stranger.public_key(), &message, &signature),
            Err(UpgradeError::BadSignature)
        );
        assert_eq!(
            verify("not base64", &message, &signature),
            Err(UpgradeError::Malformed("signing key"))
        );
    }
}
