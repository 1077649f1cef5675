//! The application state shared by every request handler, background job and the
//! local control socket. Cheap to clone.

use std::sync::Arc;

use crate::auth::{SessionPolicy, Throttle};
use crate::cluster::Cluster;
use crate::config::Config;
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
    /// The replicas sharing the store, and which one leads background work.
    pub cluster: Cluster,
}

impl App {
    /// Builds the state from an opened store.
    pub fn new(store: Store, keys: Keys, config: Config) -> anyhow::Result<App> {
        store.seal_with(keys.clone());
        store.set_space_floor(config.min_free_disk_bytes);
        let fleet = Fleet::new(store.clone(), &config.data_dir, config.max_job_output)?;
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
        Ok(App {
            store,
            keys,
            config: Arc::new(config),
            render: Arc::new(Render::new()?),
            metrics,
            throttle: Arc::new(Throttle::default()),
            fleet,
            cluster,
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
