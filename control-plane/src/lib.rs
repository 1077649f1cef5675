//! The dynserv control plane: web UI and JSON API, the store, people and permissions,
//! and (in `fleet`) the QUIC gateway its agents dial. `main.rs` parses arguments and
//! calls [`run`] or a one-shot command from [`control`].

pub mod agent_installs;
pub mod agent_offline;
pub mod agent_upgrades;
pub mod agents;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod drift;
pub mod error;
pub mod executions;
pub mod fleet;
pub mod hetzner;
pub mod inventory;
pub mod listing;
pub mod live;
pub mod maintenance;
pub mod metrics;
pub mod notifications;
pub mod offsite;
pub mod policy;
pub mod projects;
pub mod requests;
pub mod revenue;
pub mod rollouts;
pub mod runtime;
pub mod schedules;
pub mod script_files;
pub mod scripts;
pub mod secrets;
pub mod server_metrics;
pub mod servers;
pub mod ssh;
pub mod statements;
pub mod store;
pub mod subscriptions;
pub mod updates;
pub mod users;
pub mod validate;
pub mod web;

use std::future::Future;

use anyhow::Result;
use tokio::sync::watch;

use crate::app::App;

/// The sockets [`run`] serves on, bound by its caller: `main.rs` binds the configured
/// addresses ([`Listeners::bind`]), a test binds port 0 and starts the real control
/// plane in-process.
pub struct Listeners {
    /// HTTP: the web UI, the API and the WebSocket streams.
    pub http: std::net::TcpListener,
    /// UDP: the fleet gateway's QUIC endpoint.
    pub quic: std::net::UdpSocket,
}

impl Listeners {
    /// Binds the configured HTTP and QUIC addresses (`--http`, `--quic`).
    pub fn bind(config: &config::Config) -> Result<Listeners> {
        let http = std::net::TcpListener::bind(config.http)
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.http))?;
        let quic = std::net::UdpSocket::bind(config.quic)
            .map_err(|e| anyhow::anyhow!("listening on udp {}: {e}", config.quic))?;
        Ok(Listeners { http, quic })
    }
}

/// Runs the control plane until `shutdown` resolves: HTTP and the fleet gateway on
/// the given `listeners`, and the local control socket in the data directory. Prints
/// the URLs it serves.
pub async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // `run` may itself run on an async worker (a test spawns it): store work goes to
    // the blocking pool.
    let store = app.store.clone();
    store::blocking(move || {
        scripts::index_names_per_scope(&store)?;
        scripts::seed_samples(&store).map(|_| ())
    })
    .await?;
    let http_stop = wait_for(stop_rx.clone());
    let (http_addr, http_server) = web::serve(app.clone(), listeners.http, http_stop)?;
    let socket = control::listen(app.clone(), wait_for(stop_rx.clone()))?;
    let fleet_runtime = fleet::runtime()?;
    let (quic_addr, fleet_task) = app.fleet.serve_on(
        fleet_runtime.handle(),
        listeners.quic,
        wait_for(stop_rx.clone()),
    )?;
    // The addresses agents fail over between; with several replicas, every replica's.
    app.fleet
        .set_replica_addresses(vec![app.config.public_quic.clone()]);
    println!("dynserv {} listening", dynserv_shared::VERSION);
    println!("  web UI:   http://{http_addr}/");
    println!("  API:      http://{http_addr}/api/v1");
    println!(
        "  fleet:    quic://{} (agents dial {})",
        quic_addr, app.config.public_quic
    );
    println!("  data dir: {}", app.config.data_dir.display());
    tracing::info!(%http_addr, "serving");
    let http_task = tokio::spawn(http_server);
    let socket_task = tokio::spawn(socket);
    if app.fleet.demo_agent_wanted() {
        fleet::demo::spawn_local_agent(app.fleet.clone(), quic_addr, wait_for(stop_rx.clone()));
    }
    let announcer = app.fleet.clone();
    app.cluster.start(
        &app.store,
        std::sync::Arc::new(app.fleet.clone()),
        app.config.public_quic.clone(),
        move |addresses| announcer.set_replica_addresses(addresses),
    );
    hetzner::start(&app, || wait_for(stop_rx.clone()));
    tokio::spawn(subscriptions::renewal_job(
        app.clone(),
        wait_for(stop_rx.clone()),
    ));
    tokio::spawn(schedules::scheduler(app.clone(), wait_for(stop_rx.clone())));
    tokio::spawn(backups::offsite_worker(
        app.clone(),
        wait_for(stop_rx.clone()),
    ));
    tokio::spawn(alerts::deliverer(app.clone(), wait_for(stop_rx.clone())));
    tokio::spawn(rollouts::supervisor(app.clone(), wait_for(stop_rx.clone())));
    tokio::spawn(agent_upgrades::supervisor(
        app.clone(),
        wait_for(stop_rx.clone()),
    ));
    tokio::spawn(maintenance::pruner(app.clone(), wait_for(stop_rx.clone())));
    let metrics_task = tokio::spawn(server_metrics::flusher(
        app.clone(),
        wait_for(stop_rx.clone()),
    ));
    tokio::spawn(agent_offline::watch(app.clone(), wait_for(stop_rx.clone())));
    tokio::spawn(maintenance::health_probe(
        app.store.clone(),
        wait_for(stop_rx.clone()),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Graceful shutdown waits for the requests in flight, which a slow client can
    // stretch (a body trickling in): the wait is bounded, and aborting the server
    // task drops the connections it still holds.
    let mut http_task = http_task;
    let drain = app.http_timeouts.shutdown_drain;
    if tokio::time::timeout(drain, &mut http_task).await.is_err() {
        tracing::info!("HTTP connections still open after {drain:?}; closing them");
        http_task.abort();
        let _ = http_task.await;
    }
    let _ = socket_task.await;
    let _ = fleet_task.await;
    drop(fleet_runtime);
    // The open metric buckets are written as they stand.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), metrics_task).await;
    Ok(())
}

/// A future that resolves when the watch channel turns true.
pub async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
