//! Delivering an agent upgrade over the agent's connection (protocol 4; see
//! `dynserv_agent::upgrade` for the agent's side and [`crate::agent_upgrades`] for the
//! record). The replica holding the agent's connection opens an upgrade stream, offers
//! the binary (version, size, SHA-256, the fleet's signature), streams the file from
//! disk in chunks once the agent accepts (QUIC flow control paces it, so memory stays
//! at one chunk), and records what the agent answers. One delivery per agent and
//! upgrade runs at a time on a replica; the supervisor asks again after a reconnect.
//!
//! **Invariant:** no upgrade stream is opened to an agent whose hello said a protocol
//! older than `UPGRADE_MIN_PROTOCOL`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use chrono::Utc;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    FromAgent, ToAgent, UpgradeOffer, MAX_UPGRADE_CHUNK, UPGRADE_MIN_PROTOCOL,
};
use tokio::io::AsyncReadExt;

use super::{lock, AgentConn, Fleet};
use crate::agent_upgrades::{self, AgentUpgrade, Progress};

/// How long the agent has to answer an offer, and to say it staged the binary after
/// the last chunk (it checks the signature and runs the new binary once).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

impl Fleet {
    /// Delivers upgrade `upgrade_id` to `agent_id`: here when the agent is connected
    /// here, else by the replica that holds it. Nothing happens for an agent connected
    /// nowhere (the supervisor asks again, and times the target out).
    pub fn deliver_upgrade(&self, upgrade_id: &str, agent_id: &str) {
        if !self.deliver_upgrade_here(upgrade_id, agent_id) {
            self.tell_others(crate::cluster::Message::Upgrade {
                agent: agent_id.to_string(),
                upgrade: upgrade_id.to_string(),
            });
        }
    }

    /// Starts the delivery when the agent is connected here (and none of the same
    /// upgrade runs); false when it is not here.
    pub(crate) fn deliver_upgrade_here(&self, upgrade_id: &str, agent_id: &str) -> bool {
        let conn = lock(&self.inner.conns).get(agent_id).cloned();
        let Some(conn) = conn else { return false };
        let key = (upgrade_id.to_string(), agent_id.to_string());
        if !lock(&self.inner.upgrades_in_flight).insert(key.clone()) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no runtime to deliver an agent upgrade on");
            lock(&self.inner.upgrades_in_flight).remove(&key);
            return true;
        };
        let fleet = self.clone();
        runtime.spawn(async move {
            if let Err(e) = deliver(&fleet, &conn, &key.0).await {
                tracing::info!(agent = %conn.agent_id, upgrade = %key.0, "upgrade delivery ended: {e:#}");
            }
            lock(&fleet.inner.upgrades_in_flight).remove(&key);
        });
        true
    }

    /// The fleet's signing key for agent binaries (public half, base64).
    pub fn signing_key(&self) -> String {
        self.inner.signing.public_key()
    }

    /// Signs what an upgrade announces about its binary.
    pub fn sign_binary(&self, binary: &agent_upgrades::BinaryInfo) -> String {
        self.inner
            .signing
            .sign(&dynserv_shared::upgrade::signed_message(
                &binary.version,
                binary.size,
                &binary.sha256,
            ))
    }
}

/// Writes what the agent said to the upgrade's record.
async fn record(fleet: &Fleet, upgrade_id: &str, agent_id: &str, progress: Progress) -> Result<()> {
    let store = fleet.inner.store.clone();
    let (upgrade_id, agent_id) = (upgrade_id.to_string(), agent_id.to_string());
    crate::store::blocking(move || {
        store.write(|w| {
            agent_upgrades::record_progress(w, &upgrade_id, &agent_id, &progress, Utc::now())
        })
    })
    .await?;
    Ok(())
}

async fn deliver(fleet: &Fleet, conn: &Arc<AgentConn>, upgrade_id: &str) -> Result<()> {
    let agent_id = conn.agent_id.clone();
    if conn.protocol < UPGRADE_MIN_PROTOCOL {
        let refusal = agent_upgrades::protocol_refusal(conn.protocol);
        return record(fleet, upgrade_id, &agent_id, Progress::Failed(refusal)).await;
    }
    let upgrade = {
        let (store, id) = (fleet.inner.store.clone(), upgrade_id.to_string());
        crate::store::blocking(move || store.get::<AgentUpgrade>(&id)).await?
    };
    let Some(upgrade) = upgrade else {
        return Ok(());
    };
    let active = upgrade
        .targets
        .iter()
        .any(|t| t.agent_id == agent_id && t.status == agent_upgrades::TargetStatus::Sending);
    if !active {
        return Ok(());
    }
    let Some(path) = agent_upgrades::agent_binary_path() else {
        let reason = "this control plane no longer finds the agent binary it serves".to_string();
        return record(fleet, upgrade_id, &agent_id, Progress::Failed(reason)).await;
    };
    let (mut send, mut recv) = conn
        .connection
        .open_bi()
        .await
        .context("opening an upgrade stream")?;
    let offer = UpgradeOffer {
        upgrade_id: upgrade.id.clone(),
        version: upgrade.to.clone(),
        size: upgrade.size,
        sha256: upgrade.sha256.clone(),
        signature: upgrade.signature.clone(),
    };
    tracing::info!(agent = %agent_id, upgrade = %upgrade.id, to = %upgrade.to, "offering an agent upgrade");
    write_frame(&mut send, &ToAgent::Upgrade(offer)).await?;
    loop {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<FromAgent, _>(&mut recv))
            .await
            .context("the agent did not answer the upgrade in time")??;
        let progress = match answer {
            None => return Ok(()),
            Some(FromAgent::UpgradeAccepted) => {
                record(fleet, upgrade_id, &agent_id, Progress::Accepted).await?;
                send_binary(&mut send, &path, upgrade.size).await?;
                continue;
            }
            Some(FromAgent::UpgradeStaged { running_jobs }) => Progress::Staged { running_jobs },
            Some(FromAgent::UpgradeRestarting) => Progress::Restarting,
            Some(FromAgent::UpgradeFailed { reason }) => Progress::Failed(reason),
            Some(other) => bail!("the agent answered an upgrade with {other:?}"),
        };
        let done = matches!(progress, Progress::Restarting | Progress::Failed(_));
        let staged = matches!(progress, Progress::Staged { .. });
        record(fleet, upgrade_id, &agent_id, progress).await?;
        if done {
            return Ok(());
        }
        if staged {
            // Waiting for the agent's jobs may take long: no answer timeout now.
            let next = read_frame::<FromAgent, _>(&mut recv).await?;
            let progress = match next {
                None => return Ok(()),
                Some(FromAgent::UpgradeRestarting) => Progress::Restarting,
                Some(FromAgent::UpgradeFailed { reason }) => Progress::Failed(reason),
                Some(other) => bail!("the agent answered an upgrade with {other:?}"),
            };
            return record(fleet, upgrade_id, &agent_id, progress).await;
        }
    }
}

/// Streams the file in chunks of at most [`MAX_UPGRADE_CHUNK`] bytes, `size` bytes in
/// all at most (the agent checks what arrives against the offer).
async fn send_binary(
    send: &mut quinn::SendStream,
    path: &std::path::Path,
    size: u64,
) -> Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut buffer = vec![0u8; MAX_UPGRADE_CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        let n = n.min(usize::try_from(size - sent).unwrap_or(usize::MAX));
        write_frame(
            send,
            &ToAgent::UpgradeChunk {
                data: engine.encode(&buffer[..n]),
            },
        )
        .await?;
        sent += n as u64;
    }
    if sent < size {
        // The file shrank since the upgrade was made: the agent will say so.
        let _ = send.finish();
    }
    Ok(())
}
