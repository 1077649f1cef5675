//! Background upkeep of the store: the health probe, which notices a store that
//! cannot be written and reopens it once it can, and the retention pruner, which
//! deletes ended executions with their logs, old audit entries and old read
//! notifications in small batches so writers never wait on it.
//!
//! What does not live here: how each kind of record is pruned (its own module owns
//! that: [`executions::prune`], [`audit::prune`], [`notifications::prune`]).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::app::App;
use crate::config::Config;
use crate::store::Store;
use crate::{audit, executions, notifications};

/// Read notifications are kept this long.
pub const NOTIFICATION_RETENTION_DAYS: i64 = 90;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(15 * 60);
/// Records one pruner pass deletes at most per kind; the next pass goes on.
const PRUNE_MAX_PER_PASS: usize = 50_000;

/// What one pruner pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub executions: usize,
    pub log_chunks: usize,
    pub audit_entries: usize,
    pub notifications: usize,
    pub script_trees: usize,
    /// Run inventories no longer used (`inventory::prune_snapshots`).
    pub inventory_snapshots: usize,
}

/// One retention pass as of `now` (injected, so tests need no clock).
pub fn prune_once(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<PruneReport> {
    let mut report = PruneReport::default();
    if let Some(keep) = config.retention {
        let pruned = executions::prune(store, now - keep, PRUNE_MAX_PER_PASS)?;
        report.executions = pruned.executions;
        report.log_chunks = pruned.log_chunks;
        // A script's files outlive every execution that ran them by a week.
        report.script_trees = crate::script_files::prune(
            store,
            now,
            keep + chrono::Duration::days(7),
            PRUNE_MAX_PER_PASS,
        )?;
    }
    if let Some(keep) = config.audit_retention {
        report.audit_entries = audit::prune(store, now - keep, PRUNE_MAX_PER_PASS)?;
    }
    let keep = chrono::Duration::days(NOTIFICATION_RETENTION_DAYS);
    report.notifications = notifications::prune(store, now - keep, PRUNE_MAX_PER_PASS)?;
    // Snapshots are large: a few hundred per transaction.
    report.inventory_snapshots = store.write(|w| crate::inventory::prune_snapshots(w, now, 500))?;
    Ok(report)
}

/// Runs the pruner every [`PRUNE_EVERY`] (the first pass a minute after start) until
/// `stop` resolves.
pub async fn pruner(app: App, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        PRUNE_EVERY,
    );
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        // With several replicas, one prunes (see `cluster`).
        if !app.cluster.is_leader() {
            continue;
        }
        let store = app.store.clone();
        let config = app.config.clone();
        match crate::store::blocking(move || prune_once(&store, &config, Utc::now())).await {
            Ok(report) if report != PruneReport::default() => {
                tracing::info!(?report, "retention: pruned old records")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("retention pass failed: {e:#}"),
        }
    }
}

/// How often the store's health is probed while it is healthy, and while it is not.
const PROBE_HEALTHY: Duration = Duration::from_secs(10);
const PROBE_FAILING: Duration = Duration::from_secs(2);

/// Probes the store with a small write until `stop` resolves: a store that cannot be
/// written shows in `/healthz` even without traffic, and one that failed is reopened
/// as soon as writes work again.
pub async fn health_probe(store: Store, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let wait = if store.health().is_ok() {
            PROBE_HEALTHY
        } else {
            PROBE_FAILING
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let probe = store.clone();
        if let Err(e) = crate::store::blocking(move || probe.recover()).await {
            tracing::debug!("store health probe: {e:#}");
        }
    }
}
