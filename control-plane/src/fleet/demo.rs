//! The local agent of `dynserv serve --demo`: the sibling binary `dynserv-agent`
//! (next to `dynserv`), enrolled once as `localhost` in project `Local` with a token
//! the control plane creates itself, state in `DATA_DIR/local-agent`, run as a child
//! process for as long as the control plane runs. A missing binary is a warning, not
//! an error: the rest of the demo works without it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use chrono::{Duration, Utc};

use super::Fleet;
use crate::agents;
use crate::audit::Actor;
use crate::projects;

/// The project and name of the demo's local agent.
pub const LOCAL_PROJECT: &str = "Local";
/// The local agent's name.
pub const LOCAL_AGENT: &str = "localhost";

fn agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let sibling = exe.parent()?.join("dynserv-agent");
    sibling.is_file().then_some(sibling)
}

/// Starts the local agent in the background (enrolling it first if needed); it is
/// stopped when `shutdown` resolves. `quic` is the gateway's bound address.
pub fn spawn_local_agent(
    fleet: Fleet,
    quic: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Some(binary) = agent_binary() else {
        tracing::warn!(
            "dynserv-agent was not found next to dynserv; the demo runs without a local agent"
        );
        return;
    };
    tokio::spawn(async move {
        let mut child = match start(&fleet, &binary, quic).await {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!("the demo's local agent could not start: {e:#}");
                return;
            }
        };
        tokio::select! {
            _ = shutdown => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child's pid; no memory involved.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                let _ = tokio::time::timeout(std::time::Duration::from_secs(3), child.wait()).await;
                let _ = child.kill().await;
            }
            status = child.wait() => tracing::warn!("the demo's local agent exited: {status:?}"),
        }
    });
}

async fn start(
    fleet: &Fleet,
    binary: &std::path::Path,
    quic: SocketAddr,
) -> Result<tokio::process::Child> {
    let state_dir = fleet.data_dir().join("local-agent");
    let port = quic.port();
    let host = if quic.ip().is_unspecified() || quic.ip().is_loopback() {
        "127.0.0.1".to_string()
    } else {
        quic.ip().to_string()
    };
    let server = format!("{host}:{port}");
    let enrolled = state_dir.join("agent.pem").exists() && {
        // A local agent the store no longer knows (a fresh store over an old data
        // directory) enrolls again.
        let info = std::fs::read_to_string(state_dir.join("agent.json")).unwrap_or_default();
        let id = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["agent_id"].as_str().map(String::from));
        id.is_some_and(|id| {
            crate::store::block_in_place(|| fleet.store().get::<agents::Agent>(&id))
                .ok()
                .flatten()
                .is_some_and(|a| a.revoked_at.is_none())
        })
    };
    if !enrolled {
        let _ = std::fs::remove_dir_all(&state_dir);
        let secret = crate::store::block_in_place(|| {
            fleet.store().write(|w| {
                let project = projects::find(w, LOCAL_PROJECT)?
                    .with_context(|| format!("the demo has no project {LOCAL_PROJECT}"))?;
                let (_, secret) = agents::create_token(
                    w,
                    &Actor::system(),
                    &project,
                    1,
                    Duration::minutes(10),
                    Utc::now(),
                )
                .map_err(|e| anyhow::anyhow!(e.message))?;
                Ok(secret)
            })
        })?;
        let token = fleet.token_text(&secret);
        let output = tokio::process::Command::new(binary)
            .args([
                "enroll",
                "--server",
                &server,
                "--token",
                &token,
                "--name",
                LOCAL_AGENT,
                "--state-dir",
            ])
            .arg(&state_dir)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running dynserv-agent enroll")?;
        if !output.status.success() {
            bail!(
                "dynserv-agent enroll failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        tracing::info!(
            "the demo's local agent is enrolled as {LOCAL_AGENT} in project {LOCAL_PROJECT}"
        );
    }
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("run")
        .arg("--state-dir")
        .arg(&state_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: prctl only sets a flag of the child process between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.spawn().context("starting dynserv-agent run")
}
