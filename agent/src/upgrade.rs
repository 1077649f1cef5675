//! Upgrades of the agent's own binary (protocol 4), from the control plane over the
//! agent's authenticated connection.
//!
//! 1. **Download.** The control plane opens an upgrade stream with
//!    [`ToAgent::Upgrade`] (version, size, SHA-256, Ed25519 signature). The agent
//!    refuses at once what it cannot take (no signing key known, too large, another
//!    upgrade under way), else answers [`FromAgent::UpgradeAccepted`] and writes the
//!    chunks that follow to `BINARY.new` beside its own binary, hashing as it goes.
//! 2. **Checks.** Size, SHA-256, and the signature over version, size and SHA-256
//!    with the control plane's key the agent keeps in `STATE_DIR/signing-key.pub`
//!    (learned at enrollment, or, for agents enrolled before signing keys existed,
//!    from the first welcome of their mutually authenticated connection: trust on
//!    first use of a channel that already authenticates the control plane by its CA;
//!    a key once kept is never replaced). Then `BINARY.new version` must run and print
//!    the offered version. Any failure: `BINARY.new` is removed,
//!    [`FromAgent::UpgradeFailed`] says why, and the agent runs on unchanged.
//! 3. **Wait for jobs.** [`FromAgent::UpgradeStaged`]; `STATE_DIR/upgrade.json`
//!    records the upgrade; the agent waits until no job runs (a running job finishes
//!    first).
//! 4. **Swap.** The current binary is hard-linked as `BINARY.prev` (the previous one
//!    kept), `BINARY.new` renamed over `BINARY` (atomic: there is always a binary at
//!    that path), `upgrade.json` says `applied`, [`FromAgent::UpgradeRestarting`].
//! 5. **Restart.** Under a supervisor (systemd sets `INVOCATION_ID`; the agent
//!    install's restart loop sets `DYNSERV_AGENT_SUPERVISED`) the process exits with
//!    [`RESTART_EXIT_CODE`] and is started again; without one it re-executes itself in
//!    place (same pid, same arguments).
//! 6. **Trial.** The new process finds `upgrade.json` `applied` with its own version:
//!    once welcomed by the control plane it sends [`AgentControl::UpgradeOutcome`]
//!    (success) and forgets the upgrade. Should it not be welcomed within the trial
//!    time ([`trial_timeout`]), it renames `BINARY.prev` back over `BINARY`, records
//!    why in `upgrade.json` (`rolled_back`) and restarts: the previous version then
//!    reports the failure. A binary that cannot even start is caught by step 2's run.
//!
//! [`ToAgent::Upgrade`]: dynserv_shared::proto::ToAgent::Upgrade
//! [`FromAgent::UpgradeAccepted`]: dynserv_shared::proto::FromAgent::UpgradeAccepted
//! [`FromAgent::UpgradeFailed`]: dynserv_shared::proto::FromAgent::UpgradeFailed
//! [`FromAgent::UpgradeStaged`]: dynserv_shared::proto::FromAgent::UpgradeStaged
//! [`FromAgent::UpgradeRestarting`]: dynserv_shared::proto::FromAgent::UpgradeRestarting
//! [`AgentControl::UpgradeOutcome`]: dynserv_shared::proto::AgentControl::UpgradeOutcome

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    AgentControl, FromAgent, ToAgent, UpgradeOffer, MAX_AGENT_BINARY_BYTES, MAX_UPGRADE_CHUNK,
};
use dynserv_shared::upgrade::{signed_message, verify, UpgradeError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::jobs::Jobs;

/// The exit code of an agent that restarts into a new binary under a supervisor
/// (`EX_TEMPFAIL`): systemd's `Restart=always` and the agent install's loop start it
/// again.
pub const RESTART_EXIT_CODE: u8 = 75;

/// Default seconds a new version has to be welcomed by the control plane before it is
/// rolled back; `DYNSERV_AGENT_UPGRADE_TRIAL_S` sets another.
pub const DEFAULT_TRIAL_S: u64 = 120;

/// How long the agent waits for the next chunk of a binary.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `BINARY.new version` may take.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The file in the state directory that holds the control plane's signing key.
pub const SIGNING_KEY_FILE: &str = "signing-key.pub";

/// The file in the state directory that follows an upgrade across the restart.
const MARKER_FILE: &str = "upgrade.json";

/// How long a new version has to be welcomed before it is rolled back.
pub fn trial_timeout() -> Duration {
    let seconds = std::env::var("DYNSERV_AGENT_UPGRADE_TRIAL_S")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_TRIAL_S);
    Duration::from_secs(seconds)
}

/// Where an upgrade stands, as `upgrade.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    /// Downloaded and checked, waiting for jobs; not applied.
    Staged,
    /// The binary was replaced; the new version is on trial.
    Applied,
    /// The new version failed its trial and the previous binary is back.
    RolledBack,
}

/// `upgrade.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    upgrade_id: String,
    from: String,
    to: String,
    stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What the agent reports after a welcome: how an upgrade ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub upgrade_id: String,
    pub version: String,
    pub error: Option<String>,
}

impl Outcome {
    /// The control message that reports it.
    pub fn message(&self) -> AgentControl {
        AgentControl::UpgradeOutcome {
            upgrade_id: self.upgrade_id.clone(),
            version: self.version.clone(),
            error: self.error.clone(),
        }
    }
}

/// The agent's upgrades. Cheap to clone.
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    /// The agent's own binary, as it was at start (before any rename).
    binary: PathBuf,
    version: String,
    jobs: Jobs,
    /// The upgrade under way in this process, by id, and whether it is staged.
    busy: Mutex<Option<(String, bool)>>,
    /// What to report after the next welcome.
    report: Mutex<Option<Outcome>>,
    /// The new version on trial must be welcomed before this instant.
    trial_until: Mutex<Option<tokio::time::Instant>>,
    /// Set when the agent must restart (into a new binary, or back to the old one).
    restart: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upgrader {
    /// The upgrader of an agent whose binary is `binary`, running `version`; reads
    /// `upgrade.json` left by the process before (see the module's steps 5 and 6).
    pub fn open(state_dir: &Path, binary: PathBuf, version: &str, jobs: Jobs) -> Upgrader {
        let (restart, _) = watch::channel(false);
        let upgrader = Upgrader {
            inner: Arc::new(Inner {
                state_dir: state_dir.to_path_buf(),
                binary,
                version: version.to_string(),
                jobs,
                busy: Mutex::new(None),
                report: Mutex::new(None),
                trial_until: Mutex::new(None),
                restart,
            }),
        };
        upgrader.resume();
        upgrader
    }

    fn marker_path(&self) -> PathBuf {
        self.inner.state_dir.join(MARKER_FILE)
    }

    fn read_marker(&self) -> Option<Marker> {
        let text = std::fs::read(self.marker_path()).ok()?;
        match serde_json::from_slice(&text) {
            Ok(marker) => Some(marker),
            Err(e) => {
                tracing::warn!("ignoring an unreadable {MARKER_FILE}: {e}");
                let _ = std::fs::remove_file(self.marker_path());
                None
            }
        }
    }

    fn write_marker(&self, marker: &Marker) -> Result<()> {
        crate::connection::write_private(&self.marker_path(), &serde_json::to_vec(marker)?)
    }

    /// Picks up an upgrade the previous process left (module steps 5 and 6).
    fn resume(&self) {
        let Some(marker) = self.read_marker() else {
            return;
        };
        let ours = &self.inner.version;
        let outcome = |error: Option<String>| Outcome {
            upgrade_id: marker.upgrade_id.clone(),
            version: ours.clone(),
            error,
        };
        let report = match marker.stage {
            Stage::Staged => {
                let _ = std::fs::remove_file(sibling(&self.inner.binary, "new"));
                outcome(Some(
                    "the agent restarted before it applied the upgrade; it runs the previous \
                     version"
                        .into(),
                ))
            }
            Stage::Applied if *ours == marker.to => {
                let trial = trial_timeout();
                tracing::info!(
                    from = %marker.from,
                    to = %marker.to,
                    "running the upgraded binary; it is rolled back unless the control plane \
                     welcomes it within {} s",
                    trial.as_secs()
                );
                *lock(&self.inner.trial_until) = Some(tokio::time::Instant::now() + trial);
                outcome(None)
            }
            Stage::Applied => outcome(Some(format!(
                "the agent restarted as version {ours}, not {}",
                marker.to
            ))),
            Stage::RolledBack => outcome(Some(
                marker
                    .error
                    .clone()
                    .unwrap_or_else(|| "the upgrade was rolled back".into()),
            )),
        };
        *lock(&self.inner.report) = Some(report);
    }

    /// The outcome to report after a welcome, if any.
    pub fn pending_report(&self) -> Option<Outcome> {
        lock(&self.inner.report).clone()
    }

    /// The control plane welcomed this process: a new version's trial is over.
    pub fn welcomed(&self) {
        if lock(&self.inner.trial_until).take().is_some() {
            tracing::info!("the upgraded agent was welcomed by the control plane");
        }
    }

    /// The outcome was sent: the upgrade is over.
    pub fn reported(&self, outcome: &Outcome) {
        let mut report = lock(&self.inner.report);
        if report.as_ref() == Some(outcome) {
            *report = None;
            if let Err(e) = std::fs::remove_file(self.marker_path()) {
                tracing::warn!("removing {MARKER_FILE}: {e}");
            }
        }
    }

    /// Resolves when the agent must restart (module steps 5 and 6).
    pub async fn restart_requested(&self) {
        let mut rx = self.inner.restart.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Resolves when the version on trial was not welcomed in time, after rolling it
    /// back (module step 6); never when there is no trial.
    pub async fn trial_failed(&self) {
        let Some(until) = *lock(&self.inner.trial_until) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(until).await;
        if lock(&self.inner.trial_until).is_none() {
            return std::future::pending().await;
        }
        let error = format!(
            "version {} was not welcomed by the control plane within {} s of its start; \
             rolled back to the previous binary",
            self.inner.version,
            trial_timeout().as_secs()
        );
        tracing::error!("{error}");
        if let Err(e) = self.roll_back(&error) {
            tracing::error!("rolling back the upgrade: {e:#}");
            // Without the previous binary there is nothing better than running on.
            std::future::pending::<()>().await;
        }
    }

    fn roll_back(&self, error: &str) -> Result<()> {
        let Some(mut marker) = self.read_marker() else {
            bail!("no upgrade to roll back");
        };
        let previous = sibling(&self.inner.binary, "prev");
        std::fs::rename(&previous, &self.inner.binary).with_context(|| {
            format!(
                "renaming {} back to {}",
                previous.display(),
                self.inner.binary.display()
            )
        })?;
        marker.stage = Stage::RolledBack;
        marker.error = Some(error.to_string());
        self.write_marker(&marker)?;
        *lock(&self.inner.trial_until) = None;
        self.inner.restart.send_replace(true);
        Ok(())
    }

    /// Serves an upgrade stream whose first message was `offer` (module steps 1–5).
    pub async fn serve(
        &self,
        offer: UpgradeOffer,
        send: &mut quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<()> {
        // Decided under the lock, acted on after it (the guard never lives across an
        // await).
        let under_way: Option<(String, bool)> = {
            let mut busy = lock(&self.inner.busy);
            let current = busy.clone();
            if current.is_none() {
                *busy = Some((offer.upgrade_id.clone(), false));
            }
            current
        };
        match under_way {
            Some((id, true)) if id == offer.upgrade_id => {
                // The control plane asks again (after a reconnect): it is staged.
                let running_jobs = self.inner.jobs.running();
                write_frame(send, &FromAgent::UpgradeStaged { running_jobs }).await?;
                let _ = send.finish();
                return Ok(());
            }
            Some((id, _)) => {
                let reason = format!("another upgrade ({id}) is under way on this agent");
                return fail(send, reason).await;
            }
            None => {}
        }
        let result = self.download_and_apply(&offer, send, recv).await;
        if let Err(reason) = &result {
            *lock(&self.inner.busy) = None;
            let _ = std::fs::remove_file(sibling(&self.inner.binary, "new"));
            tracing::warn!(upgrade = %offer.upgrade_id, "upgrade refused: {reason}");
            return fail(send, reason.clone()).await;
        }
        Ok(())
    }

    /// Steps 1–5; an `Err` is the reason the upgrade did not happen.
    async fn download_and_apply(
        &self,
        offer: &UpgradeOffer,
        send: &mut quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> std::result::Result<(), String> {
        let key =
            std::fs::read_to_string(self.inner.state_dir.join(SIGNING_KEY_FILE)).map_err(|_| {
                "this agent knows no signing key of the control plane yet (it learns it at \
                 enrollment or at its first welcome from a control plane that has one)"
                    .to_string()
            })?;
        if offer.size == 0 || offer.size > MAX_AGENT_BINARY_BYTES {
            return Err(format!(
                "an agent binary of {} bytes is refused (at most {MAX_AGENT_BINARY_BYTES})",
                offer.size
            ));
        }
        let staged = sibling(&self.inner.binary, "new");
        let mut file = open_executable(&staged)
            .await
            .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
        write_frame(send, &FromAgent::UpgradeAccepted)
            .await
            .map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let engine = base64::engine::general_purpose::STANDARD;
        while received < offer.size {
            let message = tokio::time::timeout(CHUNK_TIMEOUT, read_frame::<ToAgent, _>(&mut recv))
                .await
                .map_err(|_| {
                    format!(
                        "no chunk of the binary within {} s",
                        CHUNK_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("reading the binary: {e}"))?;
            let data = match message {
                Some(ToAgent::UpgradeChunk { data }) => data,
                Some(_) => {
                    return Err("the control plane sent something else than the binary".into())
                }
                None => {
                    return Err(UpgradeError::SizeMismatch {
                        expected: offer.size,
                        received,
                    }
                    .to_string())
                }
            };
            let bytes = engine
                .decode(data.as_bytes())
                .map_err(|_| "a chunk of the binary is not base64".to_string())?;
            if bytes.len() > MAX_UPGRADE_CHUNK {
                return Err("a chunk of the binary is larger than allowed".into());
            }
            received += bytes.len() as u64;
            if received > offer.size {
                return Err(UpgradeError::SizeMismatch {
                    expected: offer.size,
                    received,
                }
                .to_string());
            }
            hasher.update(&bytes);
            file.write_all(&bytes)
                .await
                .map_err(|e| format!("writing {}: {e}", staged.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("writing {}: {e}", staged.display()))?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        check_download(&key, offer, received, &sha256).map_err(|e| e.to_string())?;
        self_test(&staged, &offer.version).await?;
        let marker = Marker {
            upgrade_id: offer.upgrade_id.clone(),
            from: self.inner.version.clone(),
            to: offer.version.clone(),
            stage: Stage::Staged,
            error: None,
        };
        self.write_marker(&marker).map_err(|e| format!("{e:#}"))?;
        *lock(&self.inner.busy) = Some((offer.upgrade_id.clone(), true));
        let running_jobs = self.inner.jobs.running();
        tracing::info!(
            upgrade = %offer.upgrade_id,
            to = %offer.version,
            running_jobs,
            "upgrade checked and staged; applying it once no job runs"
        );
        // From here on the upgrade goes on even if the stream or the connection ends:
        // the outcome is reported by the next process.
        let _ = write_frame(send, &FromAgent::UpgradeStaged { running_jobs }).await;
        while self.inner.jobs.running() > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Err(e) = self.swap(marker) {
            // Nothing was replaced: the marker says staged, the next start reports it.
            let reason = format!("replacing the binary: {e:#}");
            let _ = std::fs::remove_file(self.marker_path());
            return Err(reason);
        }
        let _ = write_frame(send, &FromAgent::UpgradeRestarting).await;
        let _ = send.finish();
        // Let the message leave before the connection goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.inner.restart.send_replace(true);
        Ok(())
    }

    /// Step 4: `BINARY` → `BINARY.prev` (a hard link, so the path never lacks a
    /// binary), `BINARY.new` → `BINARY`, then the marker says applied.
    fn swap(&self, mut marker: Marker) -> Result<()> {
        let binary = &self.inner.binary;
        let previous = sibling(binary, "prev");
        let staged = sibling(binary, "new");
        let _ = std::fs::remove_file(&previous);
        std::fs::hard_link(binary, &previous)
            .or_else(|_| std::fs::copy(binary, &previous).map(|_| ()))
            .with_context(|| format!("keeping {} as {}", binary.display(), previous.display()))?;
        marker.stage = Stage::Applied;
        self.write_marker(&marker)?;
        if let Err(e) = std::fs::rename(&staged, binary) {
            marker.stage = Stage::Staged;
            let _ = self.write_marker(&marker);
            return Err(e).with_context(|| format!("renaming {}", staged.display()));
        }
        if let Some(dir) = binary.parent() {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        tracing::info!(binary = %binary.display(), to = %marker.to, "binary replaced; restarting");
        Ok(())
    }
}

/// Checks what arrived against the offer: size, SHA-256, then the signature with the
/// trusted `key` over the version, size and SHA-256 (pure; the module's step 2).
pub fn check_download(
    key: &str,
    offer: &UpgradeOffer,
    received: u64,
    sha256: &str,
) -> std::result::Result<(), UpgradeError> {
    if received != offer.size {
        return Err(UpgradeError::SizeMismatch {
            expected: offer.size,
            received,
        });
    }
    if !sha256.eq_ignore_ascii_case(offer.sha256.trim()) {
        return Err(UpgradeError::ChecksumMismatch {
            expected: offer.sha256.clone(),
            received: sha256.to_string(),
        });
    }
    verify(
        key,
        &signed_message(&offer.version, offer.size, sha256),
        &offer.signature,
    )
}

/// `BINARY.new version` must run and print the offered version.
async fn self_test(staged: &Path, version: &str) -> std::result::Result<(), String> {
    let run = tokio::process::Command::new(staged)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SELF_TEST_TIMEOUT, run)
        .await
        .map_err(|_| "the new binary did not answer `version` in time".to_string())?
        .map_err(|e| format!("the new binary does not start: {e}"))?;
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || printed != version {
        return Err(format!(
            "the new binary does not run as version {version} (`version` printed {:?}, {})",
            crate::version::shorten(&printed),
            output.status
        ));
    }
    Ok(())
}

async fn fail(send: &mut quinn::SendStream, reason: String) -> Result<()> {
    write_frame(send, &FromAgent::UpgradeFailed { reason }).await?;
    let _ = send.finish();
    Ok(())
}

/// `BINARY.EXT` beside `binary`.
pub fn sibling(binary: &Path, extension: &str) -> PathBuf {
    let mut name = binary.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(extension);
    binary.with_file_name(name)
}

async fn open_executable(path: &Path) -> std::io::Result<tokio::fs::File> {
    let _ = tokio::fs::remove_file(path).await;
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .await
}

/// The agent's own binary now (at start, before any upgrade renamed it).
pub fn own_binary() -> Result<PathBuf> {
    let path = std::env::current_exe().context("finding the agent's own binary")?;
    // After the binary was replaced, Linux names the running image "PATH (deleted)".
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    })
}

/// Whether a supervisor starts the agent again when it exits (systemd sets
/// `INVOCATION_ID`; the agent install's restart loop sets `DYNSERV_AGENT_SUPERVISED`).
pub fn supervised() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
        || std::env::var_os("DYNSERV_AGENT_SUPERVISED").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Restarts the agent into `binary` (module step 5): exits with
/// [`RESTART_EXIT_CODE`] under a supervisor, else re-executes `binary` with this
/// process's arguments. Returns only when the re-execution failed.
pub fn restart(binary: &Path) -> std::io::Error {
    if supervised() {
        tracing::info!("exiting for the supervisor to start the new binary");
        std::process::exit(RESTART_EXIT_CODE.into());
    }
    use std::os::unix::process::CommandExt as _;
    tracing::info!(binary = %binary.display(), "re-executing the agent");
    std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynserv_shared::upgrade::SigningKey;

    fn offer(key: &SigningKey, bytes: &[u8], version: &str) -> UpgradeOffer {
        let sha256 = hex::encode(Sha256::digest(bytes));
        UpgradeOffer {
            upgrade_id: "u1".into(),
            version: version.into(),
            size: bytes.len() as u64,
            signature: key.sign(&signed_message(version, bytes.len() as u64, &sha256)),
            sha256,
        }
    }

    /// A download passes only with the announced size and checksum and a signature by
    /// the trusted key; each failure names what is wrong.
    #[test]
    fn downloads_are_checked() {
        let key = SigningKey::generate().unwrap();
        let bytes = b"the new agent";
        let good = offer(&key, bytes, "0.2.0");
        let sha = hex::encode(Sha256::digest(bytes));
        check_download(&key.public_key(), &good, bytes.len() as u64, &sha).unwrap();
        let short = check_download(&key.public_key(), &good, 3, &sha).unwrap_err();
        assert!(short.to_string().contains("size mismatch"), "{short}");
        let other = hex::encode(Sha256::digest(b"something else"));
        let bad = check_download(&key.public_key(), &good, bytes.len() as u64, &other).unwrap_err();
        assert!(bad.to_string().contains("sha256 mismatch"), "{bad}");
        let stranger = SigningKey::generate().unwrap();
        assert_eq!(
            check_download(&stranger.public_key(), &good, bytes.len() as u64, &sha),
            Err(UpgradeError::BadSignature)
        );
        // A signature for another version does not carry over.
        let relabelled = UpgradeOffer {
            version: "9.9.9".into(),
            ..good
        };
        assert_eq!(
            check_download(&key.public_key(), &relabelled, bytes.len() as u64, &sha),
            Err(UpgradeError::BadSignature)
        );
    }

    /// A new version that is not welcomed in time puts the previous binary back,
    /// records why and asks for a restart; the previous version then reports the
    /// failure after its welcome, and the report is forgotten once sent. A version
    /// that is welcomed in time reports success instead.
    #[tokio::test(start_paused = true)]
    async fn an_unwelcomed_version_is_rolled_back_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        crate::private_fs::create_dir(&state).unwrap();
        let binary = dir.path().join("dynserv-agent");
        std::fs::write(&binary, b"new binary").unwrap();
        std::fs::write(sibling(&binary, "prev"), b"old binary").unwrap();
        let marker = Marker {
            upgrade_id: "u1".into(),
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            stage: Stage::Applied,
            error: None,
        };
        let jobs = Jobs::open(&state, "host").unwrap();
        std::fs::write(
            state.join(MARKER_FILE),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();

        // The new version starts on trial and is never welcomed.
        let new = Upgrader::open(&state, binary.clone(), "0.2.0", jobs.clone());
        tokio::time::timeout(trial_timeout() + Duration::from_secs(1), new.trial_failed())
            .await
            .expect("the trial ends");
        tokio::time::timeout(Duration::from_secs(1), new.restart_requested())
            .await
            .expect("a restart is asked for");
        assert_eq!(std::fs::read(&binary).unwrap(), b"old binary");
        assert!(!sibling(&binary, "prev").exists());

        // The previous version comes back and reports why.
        let old = Upgrader::open(&state, binary.clone(), "0.1.0", jobs.clone());
        let report = old.pending_report().expect("a report");
        assert_eq!(report.version, "0.1.0");
        let error = report.error.clone().unwrap_or_default();
        assert!(
            error.contains("not welcomed") && error.contains("rolled back"),
            "{error}"
        );
        old.reported(&report);
        assert!(old.pending_report().is_none());
        assert!(!state.join(MARKER_FILE).exists());

        // A version welcomed in time reports success and has no trial left.
        let marker = Marker {
            stage: Stage::Applied,
            ..marker
        };
        std::fs::write(
            state.join(MARKER_FILE),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        let welcomed = Upgrader::open(&state, binary.clone(), "0.2.0", jobs);
        welcomed.welcomed();
        let ended = tokio::time::timeout(trial_timeout() * 2, welcomed.trial_failed()).await;
        assert!(ended.is_err(), "a welcomed version was rolled back");
        let report = welcomed.pending_report().expect("a report");
        assert_eq!((report.version.as_str(), report.error), ("0.2.0", None));
    }

    /// Siblings of the binary keep its whole name.
    #[test]
    fn siblings_sit_beside_the_binary() {
        let binary = Path::new("/usr/local/bin/dynserv-agent");
        assert_eq!(
            sibling(binary, "prev"),
            Path::new("/usr/local/bin/dynserv-agent.prev")
        );
        assert_eq!(
            sibling(binary, "new"),
            Path::new("/usr/local/bin/dynserv-agent.new")
        );
    }
}
