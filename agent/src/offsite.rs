//! Off-site copies of backups in S3-compatible storage (AWS S3, Hetzner Object Storage,
//! MinIO, Backblaze B2, …), through the Apache Arrow project's `object_store` (reqwest
//! over rustls with ring).
//!
//! A dump leaves the server only encrypted: XChaCha20-Poly1305 in the STREAM
//! construction (big-endian 32-bit counter, `chacha20poly1305::aead::stream`) with the
//! project's backup key, which the control plane keeps sealed and sends inside the job.
//! The object is `MAGIC`, a random 19-byte nonce prefix, then each [`PLAIN_CHUNK`] of
//! the dump sealed with its 16-byte tag; the last chunk is sealed as the last, so a
//! truncated object never decrypts.
//!
//! An upload streams: the kept dump is read in [`PLAIN_CHUNK`] pieces, sealed and
//! handed to a multipart upload of [`part_size`] parts with at most
//! [`PARTS_IN_FLIGHT`] under way, so memory stays a few parts whatever the dump's size.
//! It counts as done only once the storage lists the object ([`ObjectStore::head`])
//! with the size sent and the multipart ETag computed from the bytes sent (the MD5 of
//! each part's MD5, `-N`); a storage whose ETags are not MD5s is checked by downloading
//! and decrypting the object instead. Verify and restore stream the object back through
//! the decryption into a hash (and a file), never holding it whole.
//!
//! The control plane uses [`probe`] (its "Test" button), [`list`] and [`delete`]
//! (retention) with the same client.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use dynserv_shared::proto::OffsiteTarget;
use futures::StreamExt;
use md5::Md5;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};

/// The first bytes of every encrypted copy (format version 1).
pub const MAGIC: &[u8; 8] = b"DSVOFF1\n";
/// Random bytes of the STREAM nonce prefix (24-byte XChaCha nonce less the 5-byte
/// counter and last-block flag).
const NONCE_PREFIX: usize = 19;
/// Bytes before the first sealed chunk.
pub const HEADER: usize = MAGIC.len() + NONCE_PREFIX;
/// Clear bytes per sealed chunk.
pub const PLAIN_CHUNK: usize = 64 * 1024;
/// The authentication tag added to each chunk.
const TAG: usize = 16;
/// The smallest part of a multipart upload (S3 refuses smaller parts but the last).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// Most parts of one upload S3 accepts; parts grow past [`MIN_PART`] to stay under it.
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once. With the part being filled, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) × part_size` bytes.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Time allowed to open a connection to the storage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one request (a part of [`MIN_PART`] bytes on a slow uplink).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an off-site operation failed, in the storage's own words where it answered.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    /// The settings cannot make a client (bad endpoint URL, …).
    #[error("invalid off-site settings: {0}")]
    Settings(String),
    /// The storage refused or did not answer; the message is the storage's (or the
    /// network's) own.
    #[error("{doing}: {message}")]
    Storage {
        /// What we were doing (`uploading part 3 of …`).
        doing: String,
        /// The storage's answer or the network error.
        message: String,
    },
    /// The storage lists the object differently from what was sent.
    #[error(
        "the storage lists {key} as {found}, expected {expected}: the copy is not the one uploaded"
    )]
    Mismatch {
        /// The object key.
        key: String,
        /// What was listed.
        found: String,
        /// What was sent.
        expected: String,
    },
    /// The object does not decrypt with the project's key, or its dump's checksum differs.
    #[error("{0}")]
    BadCopy(String),
}

fn storage_error(doing: impl Into<String>, e: object_store::Error) -> OffsiteError {
    // The storage's XML answer is in the error's text, the network's reason (refused,
    // timed out, no route) in its sources; keep both, readable and bounded, with the
    // storage's own code and message first.
    let mut text = format!("{e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].trim().to_string())
    };
    if let (Some(code), Some(said)) = (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        text = format!("the storage answered {code}: {said} ({text})");
    }
    let mut message: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.len() > 1500 {
        let cut = (0..=1500)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    OffsiteError::Storage {
        doing: doing.into(),
        message,
    }
}

/// A client for the target's bucket.
pub fn open(target: &OffsiteTarget) -> Result<AmazonS3, OffsiteError> {
    let endpoint = target.endpoint.trim_end_matches('/');
    let client = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_allow_http(endpoint.starts_with("http://"));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
    };
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(&target.bucket)
        .with_region(if target.region.is_empty() {
            "us-east-1"
        } else {
            &target.region
        })
        .with_access_key_id(&target.access_key)
        .with_secret_access_key(&target.secret_key)
        .with_virtual_hosted_style_request(false)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_client_options(client)
        .with_retry(retry)
        .build()
        .map_err(|e| OffsiteError::Settings(e.to_string()))
}

fn cipher(target: &OffsiteTarget) -> Result<XChaCha20Poly1305, OffsiteError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(target.encryption_key.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| OffsiteError::Settings("the project's backup key is not 32 bytes".into()))?;
    XChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| OffsiteError::Settings("the project's backup key is unusable".into()))
}

/// The size of the encrypted copy of a dump of `clear` bytes.
pub fn encrypted_size(clear: u64) -> u64 {
    let chunks = clear.div_ceil(PLAIN_CHUNK as u64).max(1);
    HEADER as u64 + clear + chunks * TAG as u64
}

/// The part size of an upload of `size` bytes: [`MIN_PART`], or more for huge dumps.
pub fn part_size(size: u64) -> usize {
    let needed = size.div_ceil(MAX_PARTS);
    let mib = 1024 * 1024;
    needed.div_ceil(mib).saturating_mul(mib).max(MIN_PART) as usize
}

/// The multipart ETag S3 computes: the MD5 of the parts' MD5s, then `-` and the
/// number of parts.
struct PartHashes {
    part_size: usize,
    current: Md5,
    in_current: usize,
    digests: Vec<u8>,
    parts: usize,
}

impl PartHashes {
    fn new(part_size: usize) -> PartHashes {
        PartHashes {
            part_size,
            current: Md5::new(),
            in_current: 0,
            digests: Vec::new(),
            parts: 0,
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.part_size - self.in_current;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_current += take;
            bytes = &bytes[take..];
            if self.in_current == self.part_size {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let digest = std::mem::replace(&mut self.current, Md5::new()).finalize();
        self.digests.extend_from_slice(&digest);
        self.parts += 1;
        self.in_current = 0;
    }

    fn etag(mut self) -> String {
        if self.in_current > 0 || self.parts == 0 {
            self.close_part();
        }
        format!("{}-{}", hex::encode(Md5::digest(&self.digests)), self.parts)
    }
}

/// An ETag as S3 computes it for a multipart upload (32 hex digits, `-N`).
fn is_multipart_md5(etag: &str) -> bool {
    etag.split_once('-').is_some_and(|(hash, parts)| {
        hash.len() == 32
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
            && parts.parse::<u32>().is_ok()
    })
}

/// What an upload left in the storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    /// The object key.
    pub key: String,
    /// Bytes of the object (encrypted).
    pub size: u64,
    /// The object's ETag as listed.
    pub etag: String,
    /// How the listing was checked: `etag` (size and multipart MD5) or `download`
    /// (size, then the object decrypted and its dump's sha256 compared).
    pub checked_by: &'static str,
}

/// Reads as much as fits in `buf` (less only at the end of the file).
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encrypts the dump at `path` (whose clear sha256 is `sha256`) on the fly and uploads
/// it to `target.key` by multipart upload; answers once the storage lists the object
/// with the size and checksum sent. A failed upload is aborted (its parts deleted).
pub async fn upload_file(
    target: &OffsiteTarget,
    path: &Path,
    sha256: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Uploaded> {
    let store = open(target)?;
    upload_to(&store, target, path, sha256, progress).await
}

/// [`upload_file`] into a given store (tests use an in-memory one).
pub async fn upload_to(
    store: &dyn ObjectStore,
    target: &OffsiteTarget,
    path: &Path,
    sha256: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Uploaded> {
    let aead = cipher(target)?;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let clear = file.metadata()?.len();
    let size = encrypted_size(clear);
    let part = part_size(size);
    let object = ObjectPath::from(target.key.as_str());
    let upload = store
        .put_multipart(&object)
        .await
        .map_err(|e| storage_error(format!("starting the upload of {}", target.key), e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut hashes = PartHashes::new(part);
    let mut sent = 0u64;
    let mut nonce = [0u8; NONCE_PREFIX];
    rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
    let header: Vec<u8> = MAGIC.iter().chain(nonce.iter()).copied().collect();
    hashes.update(&header);
    writer.write(&header);
    sent += header.len() as u64;
    let mut encryptor = Some(EncryptorBE32::from_aead(aead, nonce.as_ref().into()));
    let mut current = vec![0u8; PLAIN_CHUNK];
    let mut next = vec![0u8; PLAIN_CHUNK];
    let mut filled = read_full(&mut file, &mut current)?;
    let total_parts = size.div_ceil(part as u64);
    let mut reported = 0u64;
    let outcome: Result<()> = async {
        loop {
            let more = read_full(&mut file, &mut next)?;
            let sealed = match (more, encryptor.take()) {
                (0, Some(last)) => last.encrypt_last(&current[..filled]),
                (_, Some(mut next_one)) => {
                    let sealed = next_one.encrypt_next(&current[..filled]);
                    encryptor = Some(next_one);
                    sealed
                }
                (_, None) => anyhow::bail!("the dump was encrypted past its end"),
            }
            .map_err(|_| anyhow::anyhow!("encrypting the dump failed"))?;
            hashes.update(&sealed);
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| storage_error(format!("uploading {}", target.key), e))?;
            writer.write(&sealed);
            sent += sealed.len() as u64;
            let parts_full = sent / part as u64;
            if parts_full > reported {
                reported = parts_full;
                progress(&format!(
                    "off-site: {parts_full} of {total_parts} parts handed to the upload ({sent} of {size} bytes)"
                ));
            }
            if more == 0 {
                break;
            }
            std::mem::swap(&mut current, &mut next);
            filled = more;
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .finish()
        .await
        .map_err(|e| storage_error(format!("completing the upload of {}", target.key), e))?;
    if sent != size {
        anyhow::bail!(
            "sent {sent} bytes where {size} were expected (the dump changed while it was uploaded)"
        );
    }
    let expected_etag = hashes.etag();
    let listed = store
        .head(&object)
        .await
        .map_err(|e| storage_error(format!("listing {} after the upload", target.key), e))?;
    if listed.size != size {
        return Err(OffsiteError::Mismatch {
            key: target.key.clone(),
            found: format!("{} bytes", listed.size),
            expected: format!("{size} bytes"),
        }
        .into());
    }
    let etag = listed
        .e_tag
        .clone()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let checked_by = if is_multipart_md5(&etag) && etag == expected_etag {
        "etag"
    } else {
        // This storage's ETags are not the MD5s of the parts (another scheme, or
        // server-side encryption with KMS): read the copy back and check it instead.
        progress(&format!(
            "off-site: the storage lists ETag {etag}, not the parts' MD5 {expected_etag}; reading the copy back to check it"
        ));
        let mut with_sha = target.clone();
        with_sha.sha256 = Some(sha256.to_string());
        let (clear_size, found) = download_from(store, &with_sha, &mut |_| Ok(())).await?;
        if clear_size != clear || found != sha256 {
            return Err(OffsiteError::BadCopy(format!(
                "the copy read back holds {clear_size} bytes with sha256 {found}, the dump {clear} bytes with sha256 {sha256}"
            ))
            .into());
        }
        "download"
    };
    Ok(Uploaded {
        key: target.key.clone(),
        size,
        etag,
        checked_by,
    })
}

/// Downloads and decrypts `target.key`, handing each clear piece to `sink`; answers
/// the dump's size and hex sha256, after checking it against `target.sha256` when
/// given.
pub async fn download(
    target: &OffsiteTarget,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, String)> {
    let store = open(target)?;
    download_from(&store, target, sink).await
}

/// [`download`] from a given store (tests use an in-memory one).
pub async fn download_from(
    store: &dyn ObjectStore,
    target: &OffsiteTarget,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, String)> {
    let aead = cipher(target)?;
    let object = ObjectPath::from(target.key.as_str());
    let got = store
        .get(&object)
        .await
        .map_err(|e| storage_error(format!("downloading {}", target.key), e))?;
    let mut stream = got.into_stream();
    let sealed_chunk = PLAIN_CHUNK + TAG;
    let mut buf: Vec<u8> = Vec::with_capacity(sealed_chunk * 2);
    let mut decryptor: Option<DecryptorBE32<XChaCha20Poly1305>> = None;
    let mut aead = Some(aead);
    let mut hasher = Sha256::new();
    let mut clear = 0u64;
    let bad = |what: &str| {
        OffsiteError::BadCopy(format!(
            "the off-site copy {} {what} (damaged, truncated, or sealed with another project's key)",
            target.key
        ))
    };
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| storage_error(format!("downloading {}", target.key), e))?;
        buf.extend_from_slice(&piece);
        if decryptor.is_none() && buf.len() >= HEADER {
            if &buf[..MAGIC.len()] != MAGIC {
                return Err(bad("is not a dynserv encrypted backup").into());
            }
            let nonce: [u8; NONCE_PREFIX] = buf[MAGIC.len()..HEADER]
                .try_into()
                .map_err(|_| bad("has a short header"))?;
            let Some(aead) = aead.take() else {
                return Err(bad("has two headers").into());
            };
            decryptor = Some(DecryptorBE32::from_aead(aead, nonce.as_ref().into()));
            buf.drain(..HEADER);
        }
        if let Some(dec) = decryptor.as_mut() {
            // A full chunk followed by more bytes is not the last one.
            let mut start = 0;
            while buf.len() - start > sealed_chunk {
                let plain = dec
                    .decrypt_next(&buf[start..start + sealed_chunk])
                    .map_err(|_| bad("does not decrypt"))?;
                hasher.update(&plain);
                clear += plain.len() as u64;
                sink(&plain)?;
                start += sealed_chunk;
            }
            buf.drain(..start);
        }
    }
    let Some(dec) = decryptor else {
        return Err(bad("is shorter than its header").into());
    };
    let plain = dec
        .decrypt_last(&buf[..])
        .map_err(|_| bad("does not decrypt to its end"))?;
    hasher.update(&plain);
    clear += plain.len() as u64;
    sink(&plain)?;
    let sha256 = hex::encode(hasher.finalize());
    if let Some(expected) = &target.sha256 {
        if *expected != sha256 {
            return Err(OffsiteError::BadCopy(format!(
                "the off-site copy {} decrypts to a dump with sha256 {sha256}, recorded {expected}",
                target.key
            ))
            .into());
        }
    }
    Ok((clear, sha256))
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Every object under `prefix` (a key prefix ending in `/`, or empty).
pub async fn list(target: &OffsiteTarget, prefix: &str) -> Result<Vec<Listed>, OffsiteError> {
    let store = open(target)?;
    let prefix = ObjectPath::from(prefix.trim_end_matches('/'));
    let mut stream = store.list(Some(&prefix));
    let mut out = Vec::new();
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(|e| storage_error("listing the bucket", e))?;
        out.push(Listed {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        });
    }
    Ok(out)
}

/// Deletes one object.
pub async fn delete(target: &OffsiteTarget, key: &str) -> Result<(), OffsiteError> {
    let store = open(target)?;
    store
        .delete(&ObjectPath::from(key))
        .await
        .map_err(|e| storage_error(format!("deleting {key}"), e))
}

/// The object's size and ETag as the storage lists it, `None` when it has none.
pub async fn head(target: &OffsiteTarget) -> Result<Option<(u64, String)>, OffsiteError> {
    let store = open(target)?;
    match store.head(&ObjectPath::from(target.key.as_str())).await {
        Ok(meta) => Ok(Some((
            meta.size,
            meta.e_tag.unwrap_or_default().trim_matches('"').to_string(),
        ))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage_error(format!("listing {}", target.key), e)),
    }
}

/// The "Test" of off-site settings: writes a probe object at `target.key`, reads it
/// back, compares and deletes it. Answers the first failure in the storage's words.
pub async fn probe(target: &OffsiteTarget) -> Result<(), OffsiteError> {
    let store = open(target)?;
    let object = ObjectPath::from(target.key.as_str());
    let mut body = vec![0u8; 64];
    rand::Rng::fill(&mut rand::thread_rng(), &mut body[..]);
    store
        .put(&object, body.clone().into())
        .await
        .map_err(|e| storage_error(format!("writing the probe object {}", target.key), e))?;
    let read = async { store.get(&object).await?.bytes().await }
        .await
        .map_err(|e| storage_error(format!("reading back the probe object {}", target.key), e));
    let deleted = store
        .delete(&object)
        .await
        .map_err(|e| storage_error(format!("deleting the probe object {}", target.key), e));
    let read = read?;
    if read.as_ref() != body.as_slice() {
        return Err(OffsiteError::BadCopy(format!(
            "the probe object {} read back differs from what was written",
            target.key
        )));
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes the uploader promises are the sizes it sends: every chunk carries one
    /// tag, an exact multiple of the chunk size has no empty tail chunk.
    #[test]
    fn encrypted_sizes() {
        assert_eq!(encrypted_size(0), HEADER as u64 + 16);
        assert_eq!(encrypted_size(1), HEADER as u64 + 17);
        assert_eq!(
            encrypted_size(PLAIN_CHUNK as u64),
            (HEADER + PLAIN_CHUNK + 16) as u64
        );
        assert_eq!(
            encrypted_size(PLAIN_CHUNK as u64 + 1),
            (HEADER + PLAIN_CHUNK + 1 + 32) as u64
        );
    }

    /// Parts stay at 8 MiB until a dump would need more than 9,000 of them.
    #[test]
    fn part_sizes() {
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(200 << 20), 8 << 20);
        let huge = 200u64 << 30;
        assert!(huge.div_ceil(part_size(huge) as u64) <= MAX_PARTS);
    }

    fn target(key: &str) -> OffsiteTarget {
        OffsiteTarget {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            key: key.into(),
            encryption_key: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            sha256: None,
        }
    }

    /// A dump goes into the store sealed (its bytes nowhere in clear, the size promised)
    /// and comes back whole; a store whose ETags are not MD5s is checked by reading the
    /// copy back. A truncated copy, a flipped byte and another key never decrypt.
    #[tokio::test]
    async fn sealed_round_trip_and_tampering() {
        use object_store::memory::InMemory;
        let dir = tempfile::tempdir().unwrap();
        for size in [1usize, PLAIN_CHUNK, 3 * PLAIN_CHUNK + 17] {
            let clear: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join("dump");
            std::fs::write(&path, &clear).unwrap();
            let sha = hex::encode(Sha256::digest(&clear));
            let store = InMemory::new();
            let t = target("p/x.dump.dsv");
            let done = upload_to(&store, &t, &path, &sha, &mut |_| {})
                .await
                .unwrap();
            assert_eq!(done.size, encrypted_size(size as u64));
            assert_eq!(done.checked_by, "download");
            let object = ObjectPath::from("p/x.dump.dsv");
            let sealed = store.get(&object).await.unwrap().bytes().await.unwrap();
            assert_eq!(sealed.len() as u64, done.size);
            // No 64 clear bytes in a row reach the storage.
            if size >= 64 {
                assert!(!sealed.windows(64).any(|w| w == &clear[..64]));
            }
            let mut back = Vec::new();
            let mut with_sha = t.clone();
            with_sha.sha256 = Some(sha.clone());
            let (n, got) = download_from(&store, &with_sha, &mut |p| {
                back.extend_from_slice(p);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!((n as usize, &got), (size, &sha));
            assert_eq!(back, clear);
            // Truncated by one chunk's worth, or a byte flipped: refused.
            let cut = sealed.slice(..sealed.len() - TAG - 1);
            let flipped = {
                let mut v = sealed.to_vec();
                let i = HEADER + 3;
                v[i] ^= 1;
                bytes::Bytes::from(v)
            };
            for bad in [cut, flipped] {
                store.put(&object, bad.into()).await.unwrap();
                let err = download_from(&store, &t, &mut |_| Ok(()))
                    .await
                    .unwrap_err();
                assert!(format!("{err:#}").contains("off-site copy"), "{err:#}");
            }
            store.put(&object, sealed.into()).await.unwrap();
            let mut other = t.clone();
            other.encryption_key = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
            assert!(download_from(&store, &other, &mut |_| Ok(()))
                .await
                .is_err());
        }
    }

    /// The multipart ETag is S3's: MD5 of the concatenated part MD5s, `-N`.
    #[test]
    fn multipart_etag() {
        let mut h = PartHashes::new(4);
        h.update(b"abcdef");
        let mut parts = Vec::new();
        parts.extend_from_slice(&Md5::digest(b"abcd"));
        parts.extend_from_slice(&Md5::digest(b"ef"));
        assert_eq!(h.etag(), format!("{}-2", hex::encode(Md5::digest(&parts))));
        assert!(is_multipart_md5("0123456789abcdef0123456789abcdef-2"));
        assert!(!is_multipart_md5("0123456789abcdef0123456789abcdef"));
    }
}
