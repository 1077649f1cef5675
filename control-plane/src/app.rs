//! The application state shared by every request handler, background job and the
//! local control socket. Cheap to clone.

use std::sync::Arc;

use crate::auth::{SessionPolicy, Throttle};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::executions::KindHooks;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::secrets::Keys;
use crate::store::Store;
use crate::web::render::Render;

/// Everything a handler may need.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    pub keys: Keys,
    pub config: Arc<Config>,
    pub render: Arc<Render>,
    pub metrics: Arc<Metrics>,
    pub throttle: Arc<Throttle>,
    /// The fleet gateway handle (agents, dispatch, live output).
    pub fleet: Fleet,
    /// Live events for pages (`GET /api/v1/events`): one bounded broadcast channel,
    /// shared with the fleet, which publishes most of them.
    pub events: crate::live::Events,
    /// The replicas sharing the store, and which one leads background work.
    pub cluster: Cluster,
    /// Where HTTP handlers run (bounded, below the async runtime's priority).
    pub handlers: Arc<crate::web::HandlerPool>,
    /// The web server's time limits (header and body reads, WebSocket pings, the
    /// shutdown drain): the defaults, shortened only by tests.
    pub http_timeouts: crate::web::HttpTimeouts,
    /// What the Hetzner side keeps in memory (syncs and provisionings under way,
    /// each token's request budget): this control plane's own.
    pub hetzner: Arc<crate::hetzner::State>,
    /// What runs after a request's approval commits (the provisioner).
    pub approvals: Arc<crate::requests::ApprovalHooks>,
}

impl App {
    /// Builds the state from an opened store.
    pub fn new(store: Store, keys: Keys, config: Config) -> anyhow::Result<App> {
        install_execution_hooks();
        store.seal_with(keys.clone());
        store.set_space_floor(config.min_free_disk_bytes);
        let fleet = Fleet::new(store.clone(), &config.data_dir, config.max_job_output)?;
        fleet.set_cert_policy(crate::fleet::certs::CertPolicy::new(config.agent_cert_days));
        crate::agents::backfill_version_counts(&store)?;
        crate::agents::backfill_ca_counts(&store)?;
        let cluster = Cluster::new(&store);
        fleet.join(cluster.clone());
        let metrics = Arc::new(Metrics::default());
        fleet.register_metrics(&metrics);
        let leader = cluster.clone();
        metrics.register_gauge(
            "dynserv_cluster_leader",
            "1 while this replica runs the background work that must run once (always with one replica).",
            move || if leader.is_leader() { 1.0 } else { 0.0 },
        );
        let events = fleet.events().clone();
        metrics.register_gauge(
            "dynserv_live_streams",
            "Live event streams (GET /api/v1/events) open now.",
            move || events.open_streams() as f64,
        );
        // What transactions announce (`Writer::announce`) goes out after their commit.
        store.announce_to(fleet.events().clone());
        Ok(App {
            store,
            keys,
            config: Arc::new(config),
            render: Arc::new(Render::new()?),
            metrics,
            throttle: Arc::new(Throttle::default()),
            events: fleet.events().clone(),
            fleet,
            cluster,
            handlers: Arc::new(crate::web::HandlerPool::new()?),
            http_timeouts: crate::web::HttpTimeouts::default(),
            hetzner: Arc::default(),
            approvals: Arc::default(),
        })
    }

    /// Session lifetimes from the configuration.
    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            idle: self.config.session_idle,
            absolute: self.config.session_absolute,
        }
    }
}

/// What each kind of work adds to its executions' creation, end and retention (see
/// [`KindHooks`]); `executions` itself names none of these modules.
const EXECUTION_HOOKS: &[&dyn KindHooks] = &[
    &crate::scripts::ExecutionHooks,
    &crate::backups::ExecutionHooks,
    &crate::updates::ExecutionHooks,
];

/// Installs [`EXECUTION_HOOKS`] for this process; calling it again does nothing.
/// [`App::new`] calls it, and so does everything else that may create or end an
/// execution without an `App` (the CLI's own store access, unit tests): until it has
/// run, `executions` refuses to create or end one.
pub fn install_execution_hooks() {
    crate::executions::install_hooks(EXECUTION_HOOKS);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of work has exactly one set of hooks, so none is created or ended
    /// without its records and none is recorded twice.
    #[test]
    fn every_kind_has_one_set_of_hooks() {
        for kind in crate::executions::KINDS {
            let serving = EXECUTION_HOOKS
                .iter()
                .filter(|hook| hook.kinds().contains(&kind))
                .count();
            assert_eq!(serving, 1, "{kind}");
        }
        for hook in EXECUTION_HOOKS {
            for kind in hook.kinds() {
                assert!(crate::executions::KINDS.contains(kind), "{kind}");
            }
        }
    }
}
