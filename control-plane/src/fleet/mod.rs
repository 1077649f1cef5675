//! The fleet: the control plane's side of the agent protocol (see `dynserv_shared`).
//!
//! * [`ca`]: the certificate authorities in the store (the active one, those still
//!   trusted during a rotation) and the gateway's certificate.
//! * [`gateway`]: the QUIC endpoint; enrollment, authenticated connections, the
//!   control stream, and one driver task per job stream.
//! * [`identity`]: which copy of an agent (same certificate, another machine or
//!   process) is served.
//! * [`ingest`]: batched storage of output and job ends, then acks and publication.
//! * [`hub`]: live fan-out to WebSocket viewers.
//! * [`terminal`]: terminals on agents, their frames routed to and from the web side.
//! * [`signing`]: the fleet's Ed25519 key for the agent binaries it serves.
//! * [`upgrade`]: delivering an agent upgrade over the agent's connection.
//!
//! [`Fleet`] is the handle the rest of the control plane uses: dispatch an execution,
//! cancel it, ask whether an agent is connected, set the replica addresses announced
//! to agents. What lives elsewhere: agent and token
//! records and rules (`agents`), execution records and status rules (`executions`).
//!
//! **Invariant:** an output chunk is acknowledged to its agent only after the
//! transaction that stores it committed.

pub mod ca;
pub mod certs;
pub mod demo;
pub mod gateway;
pub mod hub;
pub mod identity;
pub mod ingest;
pub mod signing;
pub mod terminal;
pub mod upgrade;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::agents::LiveLoad;
use crate::executions::Execution;
use crate::metrics::Metrics;
use crate::store::Read as _;
use crate::store::Store;

pub use gateway::JobCommand;
pub use hub::{Hub, LiveEvent};

/// One live agent connection.
pub(crate) struct AgentConn {
    pub agent_id: String,
    /// The server the agent is attached to: its heartbeats' figures go to that
    /// server's metrics.
    pub server_id: Option<String>,
    /// The machine the connected copy runs on (empty from older agents).
    pub host_id: String,
    /// The connected agent process (empty from older agents).
    pub instance_id: String,
    /// The fleet protocol the agent spoke in its hello: it is sent nothing a later
    /// version added.
    pub protocol: u32,
    pub connection: quinn::Connection,
    pub last_seen: Mutex<DateTime<Utc>>,
    pub load: Mutex<Option<LiveLoad>>,
    /// Job drivers of this connection, by execution id.
    pub jobs: Mutex<HashMap<String, mpsc::UnboundedSender<JobCommand>>>,
    /// Executions whose job streams on this connection ended in an error, with how
    /// many did in a row: each is opened again later than the last.
    pub failed_streams: Mutex<HashMap<String, u32>>,
    /// Executions to deliver over this connection.
    pub dispatch: mpsc::UnboundedSender<Dispatched>,
}

/// What a connection's dispatcher is handed.
pub(crate) enum Dispatched {
    /// An execution known by id only (a catch-up): the dispatcher reads it.
    Id(String),
    /// An execution already read, with the job to send when that was read too (the
    /// secrets of a fan-out's thousands of jobs are read in one query, not one each).
    Ready(Box<Execution>, Option<Box<dynserv_shared::proto::JobSpec>>),
}

pub(crate) struct Inner {
    pub store: Store,
    pub data_dir: PathBuf,
    /// The CAs in force; replaced when the store's set changes (see
    /// [`Fleet::reload_trust`]), which the gateway watches to reconfigure its endpoint.
    pub ca: tokio::sync::watch::Sender<Arc<ca::FleetCa>>,
    pub hub: Hub,
    /// Live events for pages (agents connecting, executions changing status).
    pub events: crate::live::Events,
    pub ingest: ingest::Ingest,
    /// The most output bytes stored per execution; agents are told in each job.
    pub max_output: u64,
    pub conns: Mutex<HashMap<String, Arc<AgentConn>>>,
    /// Agent processes replaced by a newer one on their machine, by agent id. Locked
    /// only while `conns` is held (always after it), so a hello's decision and its
    /// connection's registration are one step.
    pub replaced: Mutex<HashMap<String, identity::Replaced>>,
    pub demo_agent: std::sync::atomic::AtomicBool,
    /// Refused enrollments per remote address.
    pub enroll_throttle: crate::auth::Throttle,
    /// The replicas sharing the store (set once by [`Fleet::join`]).
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// The fleet addresses of every control-plane replica, in the order agents should
    /// prefer them; announced in each welcome.
    pub replica_addresses: Mutex<Vec<String>>,
    /// Agent certificate lifetime and the clock it is judged by.
    pub certs: Mutex<certs::CertPolicy>,
    /// Heartbeat figures of the agents connected here, until they are written.
    pub samples: Arc<crate::server_metrics::Buffer>,
    /// The key agent binaries are signed with (see [`signing`]).
    pub signing: dynserv_shared::upgrade::SigningKey,
    /// Upgrade deliveries running here, as `(upgrade id, agent id)`.
    pub upgrades_in_flight: Mutex<std::collections::HashSet<(String, String)>>,
    /// How job starts go out (see [`gateway::StartPacing`]).
    pub starts: Mutex<Arc<gateway::StartPacing>>,
}

/// The fleet handle. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fleet {
    /// Loads (or creates) the CA in the store and starts the ingestion thread. Binds
    /// nothing: see [`Fleet::bind`].
    /// `max_output` is the most output bytes stored per execution.
    pub fn new(store: Store, data_dir: &Path, max_output: u64) -> Result<Fleet> {
        let ca = ca::load_or_create(&store, data_dir)?;
        let signing = signing::load_or_create(&store)?;
        let hub = Hub::default();
        let events = crate::live::Events::new();
        let ingest = ingest::Ingest::spawn(store.clone(), hub.clone(), events.clone(), max_output);
        Ok(Fleet {
            inner: Arc::new(Inner {
                store,
                data_dir: data_dir.to_path_buf(),
                ca: tokio::sync::watch::channel(Arc::new(ca)).0,
                hub,
                events,
                ingest,
                max_output,
                conns: Mutex::new(HashMap::new()),
                replaced: Mutex::new(HashMap::new()),
                demo_agent: Default::default(),
                enroll_throttle: Default::default(),
                cluster: Default::default(),
                replica_addresses: Mutex::new(Vec::new()),
                certs: Mutex::new(certs::CertPolicy::default()),
                samples: Default::default(),
                signing,
                upgrades_in_flight: Default::default(),
                starts: Default::default(),
            }),
        })
    }

    /// Serves agents on `socket` on the threads of `runtime`: the QUIC endpoint, its
    /// connections and every task they spawn run there, not among the web's tasks.
    pub fn serve_on(
        &self,
        runtime: &tokio::runtime::Handle,
        socket: std::net::UdpSocket,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        // The endpoint's driver is spawned where it is created.
        let _inside = runtime.enter();
        let (addr, task) = gateway::serve(self.clone(), socket, shutdown)?;
        Ok((addr, runtime.spawn(task)))
    }

    /// Sets how long agent certificates live and the clock they are judged by (tests
    /// move it forward to see renewals and expiries).
    pub fn set_cert_policy(&self, policy: certs::CertPolicy) {
        *lock(&self.inner.certs) = policy;
    }

    /// Paces job starts with `in_flight` places, each held at most `answer_wait` (see
    /// [`gateway::StartPacing`]; tests use a small limit). Starts sent from now on
    /// count against the new limit.
    pub fn pace_starts(&self, in_flight: usize, answer_wait: Duration) {
        *lock(&self.inner.starts) = Arc::new(gateway::StartPacing::new(in_flight, answer_wait));
    }

    /// The agent certificate policy in force.
    pub fn cert_policy(&self) -> certs::CertPolicy {
        lock(&self.inner.certs).clone()
    }

    /// Asks `run` to start the demo's local agent once the gateway listens.
    pub fn want_demo_agent(&self) {
        self.inner
            .demo_agent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the demo's local agent should run.
    pub fn demo_agent_wanted(&self) -> bool {
        self.inner
            .demo_agent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers the fleet's gauges (`dynserv_agents_connected`, `dynserv_jobs_running`, …)
    /// and the store's.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let fleet = self.clone();
        metrics.register_gauge(
            "dynserv_agents_connected",
            "Agents connected to the fleet gateway now.",
            move || fleet.connected_count() as f64,
        );
        let fleet = self.clone();
        metrics.register_gauge(
            "dynserv_jobs_running",
            "Executions running on agents now.",
            move || fleet.running_count() as f64,
        );
        let fleet = self.clone();
        metrics.register_gauge(
            "dynserv_live_channels",
            "Executions with a live output channel (running and watched) now.",
            move || fleet.hub().watched() as f64,
        );
        metrics.register_gauge(
            "dynserv_store_calls_on_async_workers",
            "Store calls made on a tokio worker thread since start; always 0 unless there is a bug.",
            || crate::store::calls_on_async_workers() as f64,
        );
        metrics.register_gauge(
            "dynserv_store_pg_blind_waits",
            "Times since start a PostgreSQL store call had nothing to wait for on its socket and looked again after 10 ms; always 0 unless there is a bug.",
            || crate::store::pg::blind_waits() as f64,
        );
        metrics.register_gauge(
            "dynserv_store_pg_deferred_waits",
            "Page loads' PostgreSQL queries that waited since start for this replica's other work in the database (an action, an agent's report) to let them go.",
            || crate::store::pg::deferred_waits().0 as f64,
        );
        metrics.register_gauge(
            "dynserv_store_pg_deferred_wait_seconds",
            "Seconds page loads' PostgreSQL queries waited in all since start for this replica's other work in the database.",
            || crate::store::pg::deferred_waits().1,
        );
        let store = self.inner.store.clone();
        metrics.register_gauge(
            "dynserv_store_healthy",
            "1 while the store can be written, 0 while it cannot.",
            move || if store.health().is_ok() { 1.0 } else { 0.0 },
        );
    }

    /// The store the fleet writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The heartbeat figures of the agents connected here, not yet written (see
    /// [`crate::server_metrics`]).
    pub fn samples(&self) -> &Arc<crate::server_metrics::Buffer> {
        &self.inner.samples
    }

    /// The live fan-out hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The live events of pages.
    pub fn events(&self) -> &crate::live::Events {
        &self.inner.events
    }

    /// The data directory (for the demo agent's state).
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// SHA-256 of the serving CA's certificate, as enrollment tokens carry it.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.trust().ca.fingerprint()
    }

    /// The CAs in force now.
    pub fn trust(&self) -> Arc<ca::FleetCa> {
        self.inner.ca.borrow().clone()
    }

    /// Rereads the CAs from the store and, when they changed (a rotation or a
    /// retirement made here, on another replica or by the CLI), puts the new set in
    /// force: the gateway presents the new serving CA's certificate and trusts the new
    /// set from its next handshake, and renewals issue from the new active CA. Returns
    /// whether anything changed. Reads the store: call it off the async workers.
    pub fn reload_trust(&self) -> Result<bool> {
        let current = self.trust();
        match ca::reload_if_changed(&self.inner.store, &current)? {
            Some(fresh) => {
                tracing::info!(
                    active = %fresh.issuing_id,
                    trusted = fresh.trusted.len(),
                    "the fleet's CAs changed"
                );
                self.inner.ca.send_replace(Arc::new(fresh));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The full enrollment token for a secret.
    pub fn token_text(&self, secret: &str) -> String {
        crate::agents::token_text(secret, self.ca_fingerprint())
    }

    /// Sets the control plane's replica addresses (`HOST:PORT` that agents dial), in
    /// the order agents should prefer them. Every later welcome carries them, and the
    /// agents keep them as their list of addresses to fail over between. An empty
    /// list announces nothing: agents keep the list they have.
    pub fn set_replica_addresses(&self, addresses: Vec<String>) {
        *lock(&self.inner.replica_addresses) = addresses;
    }

    /// The replica addresses announced to agents (see
    /// [`Fleet::set_replica_addresses`]).
    pub fn replica_addresses(&self) -> Vec<String> {
        lock(&self.inner.replica_addresses).clone()
    }

    /// Agents connected now.
    pub fn connected_count(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Executions whose status is running: the kept count, not a scan.
    pub fn running_count(&self) -> usize {
        self.inner
            .store
            .read(|r| r.counter("executions/running"))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .unwrap_or(0)
    }

    /// Reads ahead what [`Fleet::live`] will ask `r` about these agents: where those
    /// not connected here are connected (one query for a page of agents on
    /// PostgreSQL, instead of one per row).
    pub fn prefetch_live(
        &self,
        r: &impl crate::store::Read,
        agent_ids: &[String],
    ) -> anyhow::Result<()> {
        if !self.inner.cluster.get().is_some_and(|c| c.is_shared()) {
            return Ok(());
        }
        let elsewhere: Vec<String> = {
            let conns = lock(&self.inner.conns);
            agent_ids
                .iter()
                .filter(|id| !conns.contains_key(id.as_str()))
                .cloned()
                .collect()
        };
        r.prefetch::<crate::cluster::Presence>(&elsewhere)
    }

    /// When a connected agent was last heard from and its last heartbeat figures;
    /// `None` when it is not connected. An agent connected to another replica is
    /// looked up through `r`, the caller's transaction (see
    /// [`crate::cluster::Cluster::connected_elsewhere`]).
    pub fn live(
        &self,
        r: &impl crate::store::Read,
        agent_id: &str,
    ) -> Option<(DateTime<Utc>, Option<LiveLoad>)> {
        let conn = lock(&self.inner.conns).get(agent_id).cloned();
        let Some(conn) = conn else {
            // Connected to another replica: it is live, its figures are there.
            let since = self.inner.cluster.get()?.connected_elsewhere(r, agent_id)?;
            return Some((since, None));
        };
        let seen = *lock(&conn.last_seen);
        let load = lock(&conn.load).clone();
        Some((seen, load))
    }

    /// Records where an agent is connected, for the other replicas.
    pub(crate) async fn record_presence(&self, agent_id: &str, present: bool) {
        let Some(cluster) = self.inner.cluster.get().filter(|c| c.is_shared()).cloned() else {
            return;
        };
        let (store, id) = (self.inner.store.clone(), agent_id.to_string());
        let recorded = crate::store::blocking(move || {
            if present {
                cluster.record_presence(&store, &id)
            } else {
                cluster.clear_presence(&store, &id)
            }
        })
        .await;
        if let Err(e) = recorded {
            tracing::warn!(agent = %agent_id, "recording where the agent is connected: {e:#}");
        }
    }

    /// Delivers a new execution to its agent if it is connected; otherwise it waits in
    /// the store and goes out when the agent connects.
    pub fn dispatch(&self, execution: &Execution) {
        self.dispatch_ready(execution.clone(), None);
    }

    /// [`Fleet::dispatch`] for executions whose jobs were read with them (a fan-out:
    /// see [`crate::scripts::job_specs_with_secrets`]), in the same order.
    pub fn dispatch_many(
        &self,
        executions: Vec<Execution>,
        specs: Vec<dynserv_shared::proto::JobSpec>,
    ) {
        for (execution, spec) in executions.into_iter().zip(specs) {
            self.dispatch_ready(execution, Some(Box::new(spec)));
        }
    }

    fn dispatch_ready(
        &self,
        execution: Execution,
        spec: Option<Box<dynserv_shared::proto::JobSpec>>,
    ) {
        let conn = lock(&self.inner.conns).get(&execution.agent_id).cloned();
        match conn {
            Some(conn) => {
                let _ = conn
                    .dispatch
                    .send(Dispatched::Ready(Box::new(execution), spec));
            }
            None => self.tell_others(crate::cluster::Message::Dispatch {
                agent: execution.agent_id,
                execution: execution.id,
            }),
        }
    }

    /// Delivers executions other replicas created for agents connected here: read
    /// together with their jobs, one query each on PostgreSQL however many there are.
    fn dispatch_from_others(&self, wanted: Vec<(String, String)>) {
        let here: Vec<(Arc<AgentConn>, String)> = {
            let conns = lock(&self.inner.conns);
            wanted
                .into_iter()
                .filter_map(|(agent, execution)| conns.get(&agent).map(|c| (c.clone(), execution)))
                .collect()
        };
        if here.is_empty() {
            return;
        }
        let ids: Vec<String> = here.iter().map(|(_, id)| id.clone()).collect();
        let read = self.inner.store.read(|r| {
            let found: Vec<Execution> = r
                .get_many::<Execution>(&ids)?
                .into_iter()
                .flatten()
                .collect();
            let specs = crate::scripts::job_specs_with_secrets(r, &found)?;
            Ok(found.into_iter().zip(specs).collect::<Vec<_>>())
        });
        match read {
            Ok(found) => {
                let mut by_id: HashMap<String, (Execution, dynserv_shared::proto::JobSpec)> = found
                    .into_iter()
                    .map(|(e, s)| (e.id.clone(), (e, s)))
                    .collect();
                for (conn, id) in here {
                    if let Some((execution, spec)) = by_id.remove(&id) {
                        let _ = conn
                            .dispatch
                            .send(Dispatched::Ready(Box::new(execution), Some(Box::new(spec))));
                    }
                }
            }
            Err(e) => {
                tracing::warn!("reading executions another replica dispatched: {e:#}");
                // The dispatchers read them one by one instead.
                for (conn, id) in here {
                    let _ = conn.dispatch.send(Dispatched::Id(id));
                }
            }
        }
    }

    /// Joins the replicas sharing the store: what this replica cannot do itself (an
    /// agent connected elsewhere) and what it stores goes to them, and what they send
    /// is acted on here.
    pub fn join(&self, cluster: crate::cluster::Cluster) {
        self.inner.hub.set_cluster(cluster.clone());
        self.inner.events.join(cluster.clone());
        let _ = self.inner.cluster.set(cluster);
    }

    fn tell_others(&self, message: crate::cluster::Message) {
        if let Some(cluster) = self.inner.cluster.get() {
            cluster.send(message);
        }
    }

    /// Tells the agent running an execution to stop it. An agent offline now learns
    /// it when the job is sent again at its next connection.
    pub fn cancel(&self, execution: &Execution) {
        if !self.cancel_here(&execution.agent_id, &execution.id) {
            self.tell_others(crate::cluster::Message::Cancel {
                agent: execution.agent_id.clone(),
                execution: execution.id.clone(),
            });
        }
    }

    /// Cancels a job an agent connected here runs; false when it is not here.
    fn cancel_here(&self, agent_id: &str, execution_id: &str) -> bool {
        let conn = lock(&self.inner.conns).get(agent_id).cloned();
        let Some(conn) = conn else { return false };
        if let Some(job) = lock(&conn.jobs).get(execution_id) {
            let _ = job.send(JobCommand::Cancel);
        }
        true
    }

    /// Announces to viewers that an execution of `project_id` ended outside the
    /// agent's stream (a queued job cancelled or expired, a job failed here): its log
    /// viewers and the pages that list it.
    pub fn publish_end(&self, execution_id: &str, project_id: &str, status: &str) {
        self.inner
            .hub
            .publish_stored(execution_id, &[LiveEvent::End]);
        self.inner.events.publish(crate::live::Event::execution(
            execution_id,
            project_id,
            status,
        ));
    }

    /// Closes an agent's connection unless it comes from the machine `host_id` (after
    /// an admin accepted that machine as the agent's: the previous one is refused from
    /// its next hello on).
    pub fn disconnect_other_host(&self, agent_id: &str, host_id: &str) {
        self.disconnect_other_host_here(agent_id, host_id);
        self.tell_others(crate::cluster::Message::DisconnectOtherHost {
            agent: agent_id.to_string(),
            host: host_id.to_string(),
        });
    }

    fn disconnect_other_host_here(&self, agent_id: &str, host_id: &str) {
        let mut conns = lock(&self.inner.conns);
        if conns.get(agent_id).is_some_and(|c| c.host_id != host_id) {
            if let Some(conn) = conns.remove(agent_id) {
                conn.connection.close(
                    gateway::CLOSE_REPLACED,
                    b"another host holds this agent now",
                );
            }
        }
    }

    /// Closes an agent's connection (after it was revoked).
    pub fn disconnect(&self, agent_id: &str) {
        self.disconnect_here(agent_id);
        self.tell_others(crate::cluster::Message::Disconnect {
            agent: agent_id.to_string(),
        });
    }

    fn disconnect_here(&self, agent_id: &str) {
        let conn = lock(&self.inner.conns).remove(agent_id);
        if let Some(conn) = conn {
            conn.connection.close(gateway::CLOSE_REVOKED, b"revoked");
        }
    }
}

impl crate::cluster::Receiver for Fleet {
    /// Hands every queued execution of the agents connected here to their
    /// connections (a driver already running for one is not started twice).
    fn resync(&self) {
        let conns: Vec<Arc<AgentConn>> = lock(&self.inner.conns).values().cloned().collect();
        for conn in conns {
            let queued = self
                .inner
                .store
                .read(|r| crate::executions::active_of_agent(r, &conn.agent_id));
            match queued {
                Ok(list) => {
                    for execution in list
                        .into_iter()
                        .filter(|e| e.status == crate::executions::Status::Queued)
                    {
                        let _ = conn
                            .dispatch
                            .send(Dispatched::Ready(Box::new(execution), None));
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %conn.agent_id, "catching up on queued jobs: {e:#}")
                }
            }
        }
    }

    /// Acts on messages in order; the executions of consecutive dispatches are read
    /// together.
    fn receive_all(&self, messages: Vec<crate::cluster::Message>) {
        use crate::cluster::Message;
        let mut dispatches = Vec::new();
        let mut messages = messages.into_iter().peekable();
        while let Some(message) = messages.next() {
            let message = match message {
                Message::Dispatch { agent, execution } => {
                    dispatches.push((agent, execution));
                    continue;
                }
                // Output announced in several messages that arrived together is read
                // from the store in one go: one round trip instead of one each.
                Message::Output {
                    execution,
                    first,
                    mut last,
                } => {
                    while let Some(Message::Output {
                        execution: next,
                        first: next_first,
                        last: next_last,
                    }) = messages.peek()
                    {
                        if *next != execution
                            || *next_first < first
                            || *next_first > last.saturating_add(1)
                        {
                            break;
                        }
                        last = last.max(*next_last);
                        messages.next();
                    }
                    Message::Output {
                        execution,
                        first,
                        last,
                    }
                }
                other => other,
            };
            if !dispatches.is_empty() {
                self.dispatch_from_others(std::mem::take(&mut dispatches));
            }
            self.receive(message);
        }
        if !dispatches.is_empty() {
            self.dispatch_from_others(dispatches);
        }
    }

    /// Acts on another replica's message: what concerns an agent connected here, and
    /// output this replica's viewers watch (read once from the store, published in
    /// order). Runs on a blocking thread.
    fn receive(&self, message: crate::cluster::Message) {
        use crate::cluster::Message;
        match message {
            Message::Dispatch { agent, execution } => {
                self.dispatch_from_others(vec![(agent, execution)]);
            }
            Message::Cancel { agent, execution } => {
                self.cancel_here(&agent, &execution);
            }
            Message::Disconnect { agent } => self.disconnect_here(&agent),
            Message::DisconnectOtherHost { agent, host } => {
                self.disconnect_other_host_here(&agent, &host)
            }
            Message::End { execution } => {
                self.inner.hub.publish(&execution, [LiveEvent::End]);
            }
            Message::Live { event } => self.inner.events.publish_here(event),
            Message::Upgrade { agent, upgrade } => {
                self.deliver_upgrade_here(&upgrade, &agent);
            }
            Message::Output {
                execution,
                first,
                last,
            } => {
                if !self.inner.hub.is_watched(&execution) {
                    return;
                }
                let count = usize::try_from(last.saturating_sub(first) + 1).unwrap_or(usize::MAX);
                let chunks = self
                    .inner
                    .store
                    .read(|r| crate::executions::log(r, &execution, first, count.min(100_000)));
                let events = chunks.and_then(|chunks| {
                    chunks
                        .iter()
                        .map(|c| Ok(LiveEvent::chunk(c.seq, &c.stream, &c.data)?))
                        .collect::<anyhow::Result<Vec<_>>>()
                });
                match events {
                    Ok(events) => self.inner.hub.publish(&execution, events),
                    Err(e) => {
                        tracing::warn!(%execution, "reading output another replica stored: {e:#}")
                    }
                }
            }
        }
    }
}

/// The fleet gateway's own async runtime ([`Fleet::serve_on`]): as many workers as
/// cores, named `dynserv-fleet`. On the web's runtime, the gateway's tasks waited in one
/// queue with every WebSocket stream and page: 50 viewers of a fast job got 50 turns
/// for each of the agent connection's, so output piled up in front of them (and a
/// fan-out waited behind page loads). With threads of its own, the kernel shares the
/// cores between the fleet and the web instead.
pub fn runtime() -> Result<crate::runtime::OwnedRuntime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("dynserv-fleet")
        // Store calls belong on the blocking pool here too (counted otherwise).
        .on_thread_unpark(crate::store::mark_async_worker)
        .enable_all()
        .build()?;
    Ok(crate::runtime::OwnedRuntime::new(runtime))
}
