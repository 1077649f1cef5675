//! Several replicas on one PostgreSQL database: what one replica tells the others, and
//! which one leads the background work that must run once.
//!
//! * **Messages.** A replica that cannot do something itself because the agent is
//!   connected elsewhere (deliver a job, cancel it, close a revoked agent's
//!   connection) or that stored output another replica's viewers may be watching,
//!   sends a [`Message`] with PostgreSQL `NOTIFY` on one channel; every replica
//!   `LISTEN`s and acts on what concerns it. Output messages carry only the sequence
//!   numbers stored; a replica with viewers of that execution reads those chunks from
//!   the store once and publishes them to its hub, so viewers see them in order with no
//!   gap or duplicate (the hub's viewers skip what they already sent and re-read the
//!   store over a gap). NOTIFY is delivered after the sender's transaction commits and
//!   in order, so a receiver always finds what a message announces.
//! * **Leader.** Schedules, Hetzner sync and provisioning, renewals, rollouts and
//!   retention run on the replica that holds the session advisory lock
//!   [`LEADER_LOCK`]. Another replica tries every [`LEADER_RETRY`]; the lock goes with
//!   the leader's database session, which PostgreSQL ends when the process dies (TCP
//!   keepalives bound how long a vanished machine holds it), so a new leader takes
//!   over within about 15 s. Each piece of background work asks [`Cluster::is_leader`]
//!   at every tick and reads its state from the store, so a new leader carries on
//!   where the old one stopped and nothing runs twice.
//! * **Replicas.** Each replica records its fleet address every few seconds; agents
//!   are told the live replicas' addresses at each connection, so the list can change
//!   without re-enrolling anyone.
//!
//! With the redb file there is one replica: it always leads and sends nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::store::{Read, Record, Store};

/// The `NOTIFY` channel every replica listens on.
pub const CHANNEL: &str = "dynserv_cluster";
/// The session advisory lock the leader holds (`"dynserv-leader"` as a number).
pub const LEADER_LOCK: i64 = 0x6479_6e73_6c65_6164;
/// How often a replica that does not lead tries to take the lock, and how often the
/// leader checks it still holds its session.
pub const LEADER_RETRY: Duration = Duration::from_secs(4);

/// Drives the work listed in the index `running` (rollouts, agent upgrades): every
/// `period`, while this replica leads, `advance` runs on the blocking pool for each
/// listed id, until `stop` resolves. `what` names the work in warnings.
pub async fn drive_running(
    app: crate::app::App,
    running: &'static str,
    what: &'static str,
    period: Duration,
    stop: impl std::future::Future<Output = ()>,
    advance: fn(&crate::app::App, &str) -> anyhow::Result<()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(period) => {}
        }
        // With several replicas, the leader alone drives them.
        if !app.cluster.is_leader() {
            continue;
        }
        let app = app.clone();
        crate::store::blocking(move || {
            let ids = match app.store.read(|r| r.index_scan(running, "")) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!("listing the running {what}s: {e:#}");
                    return;
                }
            };
            for (_, id) in ids {
                if let Err(e) = advance(&app, &id) {
                    tracing::warn!(id = %id, "advancing a {what}: {e:#}");
                }
            }
        })
        .await;
    }
}
/// How often a replica records that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A replica not heard from for this long is left out of the agents' address list.
const REPLICA_STALE_S: i64 = 30;
/// Most messages sent in one statement.
const SEND_BATCH: usize = 500;
/// Most messages received handed to the receiver at once.
const RECEIVE_BATCH: usize = 5_000;

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Message {
    /// Deliver a new execution to an agent connected here.
    Dispatch { agent: String, execution: String },
    /// Cancel an execution an agent connected here runs.
    Cancel { agent: String, execution: String },
    /// Output of an execution with sequence numbers `first..=last` was stored.
    Output {
        execution: String,
        first: u64,
        last: u64,
    },
    /// An execution ended.
    End { execution: String },
    /// Close an agent's connection (revoked).
    Disconnect { agent: String },
    /// Close an agent's connection unless it comes from `host` (another host was
    /// accepted as the agent's).
    DisconnectOtherHost { agent: String, host: String },
    /// A live event for the pages watching this replica (`live`).
    Live { event: crate::live::Event },
    /// Deliver an agent upgrade to an agent connected here (`fleet::upgrade`).
    Upgrade { agent: String, upgrade: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending replica.
    o: String,
    #[serde(flatten)]
    m: Message,
}

/// A replica as recorded in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// The address agents dial.
    pub public_quic: String,
    pub last_seen: DateTime<Utc>,
}

impl Record for Replica {
    const TABLE: &'static str = "replicas";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Which replica an agent is connected to, while it is (written only when replicas
/// share the store). It counts only while that replica's heartbeat is fresh, so a
/// replica that died leaves no agent looking connected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    /// The agent's id.
    pub id: String,
    pub replica: String,
    pub since: DateTime<Utc>,
}

impl Record for Presence {
    const TABLE: &'static str = "agent_presence";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What a replica does with the others' messages (the fleet implements it).
pub trait Receiver: Send + Sync + 'static {
    /// Acts on one message from another replica.
    fn receive(&self, message: Message);
    /// Acts on messages that arrived together, in order (a receiver may read the
    /// store once for several of them).
    fn receive_all(&self, messages: Vec<Message>) {
        for message in messages {
            self.receive(message);
        }
    }
    /// Catches up on what messages may have been missed while not listening (after
    /// the listener's connection was lost): jobs waiting for agents connected here.
    fn resync(&self);
}

struct Inner {
    replica_id: String,
    shared: bool,
    leader: watch::Sender<bool>,
    outbox: OnceLock<mpsc::UnboundedSender<String>>,
    started: AtomicBool,
    /// The other replicas whose heartbeat is fresh, from the last heartbeat.
    live: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// This replica's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// The cluster of a store: one replica on a redb file (always the leader), a
    /// replica among others on PostgreSQL (not the leader until [`Cluster::start`]
    /// takes the lock).
    pub fn new(store: &Store) -> Cluster {
        let shared = store.is_shared();
        Cluster {
            inner: Arc::new(Inner {
                replica_id: uuid::Uuid::new_v4().to_string(),
                shared,
                leader: watch::channel(!shared).0,
                outbox: OnceLock::new(),
                started: AtomicBool::new(false),
                live: Default::default(),
            }),
        }
    }

    /// This replica's id (new at every start).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Whether other replicas may share the store.
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// Whether this replica runs the work that must run once.
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// Follows leadership changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.inner.leader.subscribe()
    }

    /// Tells the other replicas; nothing with one replica. Never blocks: messages
    /// wait in a queue the sender task drains.
    pub fn send(&self, message: Message) {
        let Some(outbox) = self.inner.outbox.get() else {
            return;
        };
        if let Ok(text) = self.envelope(message) {
            let _ = outbox.send(text);
        }
    }

    /// Tells the other replicas as the transaction of `w` commits, in its commit
    /// (never when it rolls back); nothing with one replica. For what must reach them
    /// fast: [`Cluster::send`] queues for the sender task, a thread hop and a round
    /// trip of its own after the commit, and a replica streaming output to another's
    /// viewers kept its announcements waiting there up to 20 ms while both cores were
    /// busy.
    pub fn send_at_commit(&self, w: &mut crate::store::Writer, message: Message) -> Result<()> {
        if self.inner.outbox.get().is_none() {
            return Ok(());
        }
        w.notify(CHANNEL, self.envelope(message)?)
    }

    /// A message from this replica as the others read it (`NOTIFY`'s payload).
    fn envelope(&self, message: Message) -> serde_json::Result<String> {
        serde_json::to_string(&Envelope {
            o: self.inner.replica_id.clone(),
            m: message,
        })
    }

    /// Starts the replica's cluster tasks on the database's runtime: the listener,
    /// the sender, the leader election and the heartbeat. `public_quic` is what agents
    /// dial here; `addresses` is given the live replicas' addresses (this one first)
    /// after every heartbeat. Does nothing with one replica or when already started.
    pub fn start(
        &self,
        store: &Store,
        receiver: Arc<dyn Receiver>,
        public_quic: String,
        addresses: impl Fn(Vec<String>) + Send + Sync + 'static,
    ) {
        let Some(pg) = store.postgres() else { return };
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let runtime = pg.runtime().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.inner.outbox.set(tx);
        runtime.spawn(sender(store.clone(), rx));
        runtime.spawn(listener(
            store.clone(),
            self.inner.replica_id.clone(),
            receiver,
        ));
        runtime.spawn(leader(store.clone(), self.clone()));
        runtime.spawn(heartbeat(
            store.clone(),
            self.clone(),
            public_quic,
            addresses,
        ));
    }

    /// Records that an agent is connected here (replicas sharing the store only).
    pub fn record_presence(&self, store: &Store, agent_id: &str) -> Result<()> {
        if !self.inner.shared {
            return Ok(());
        }
        store.put(&Presence {
            id: agent_id.to_string(),
            replica: self.inner.replica_id.clone(),
            since: Utc::now(),
        })
    }

    /// Records that an agent left this replica (unless another one holds it now).
    pub fn clear_presence(&self, store: &Store, agent_id: &str) -> Result<()> {
        if !self.inner.shared {
            return Ok(());
        }
        store.write(|w| {
            if w.get::<Presence>(agent_id)?
                .is_some_and(|p| p.replica == self.inner.replica_id)
            {
                w.delete::<Presence>(agent_id)?;
            }
            Ok(())
        })
    }

    /// Since when an agent is connected to another live replica, if it is. Reads
    /// through the caller's transaction: a second one opened inside it would need a
    /// second database connection, and callers that each hold one while waiting for
    /// another can take the whole pool.
    pub fn connected_elsewhere(&self, r: &impl Read, agent_id: &str) -> Option<DateTime<Utc>> {
        if !self.inner.shared {
            return None;
        }
        let presence = r.get::<Presence>(agent_id).ok().flatten()?;
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        live.contains(&presence.replica).then_some(presence.since)
    }

    fn set_live(&self, replicas: std::collections::HashSet<String>) {
        *self.inner.live.lock().unwrap_or_else(|p| p.into_inner()) = replicas;
    }

    fn set_leader(&self, leading: bool) {
        if self.is_leader() != leading {
            if leading {
                tracing::info!(replica = %self.inner.replica_id, "this replica leads the background work now");
            } else {
                tracing::warn!(replica = %self.inner.replica_id, "this replica no longer leads the background work");
            }
            let _ = self.inner.leader.send(leading);
        }
    }
}

/// Sends queued messages, many per statement, on a connection of its own.
async fn sender(store: Store, mut rx: mpsc::UnboundedReceiver<String>) {
    let Some(pg) = store.postgres() else { return };
    let mut pending: Vec<String> = Vec::new();
    loop {
        let (messages_tx, _messages) = mpsc::unbounded_channel();
        let client = match pg.dedicated(messages_tx).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("cluster sender: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(first) => pending.push(first),
                    None => return,
                }
                while pending.len() < SEND_BATCH {
                    match rx.try_recv() {
                        Ok(next) => pending.push(next),
                        Err(_) => break,
                    }
                }
            }
            let sent = client
                .execute(
                    "SELECT pg_notify($1, payload) FROM unnest($2::text[]) WITH ORDINALITY AS t(payload, n) ORDER BY n",
                    &[&CHANNEL, &pending],
                )
                .await;
            match sent {
                Ok(_) => pending.clear(),
                Err(e) => {
                    // Kept and sent again on a new connection.
                    tracing::warn!("cluster sender: {e:#}");
                    break;
                }
            }
        }
    }
}

/// Listens for the other replicas' messages and hands them to `receiver`, in order.
async fn listener(store: Store, me: String, receiver: Arc<dyn Receiver>) {
    let Some(pg) = store.postgres() else { return };
    loop {
        let (messages_tx, mut messages) = mpsc::unbounded_channel();
        let client = match pg.dedicated(messages_tx).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("cluster listener: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!("cluster listener: {e:#}");
            continue;
        }
        let catching_up = receiver.clone();
        let _ = crate::store::blocking(move || catching_up.resync()).await;
        while let Some(first) = messages.recv().await {
            // What arrived meanwhile is acted on together (a fan-out sends thousands).
            let mut arrived = vec![first];
            while arrived.len() < RECEIVE_BATCH {
                match messages.try_recv() {
                    Ok(next) => arrived.push(next),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(arrived.len());
            for message in arrived {
                let tokio_postgres::AsyncMessage::Notification(note) = message else {
                    continue;
                };
                let Ok(envelope) = serde_json::from_str::<Envelope>(note.payload()) else {
                    tracing::warn!("cluster listener: a message it cannot read");
                    continue;
                };
                if envelope.o != me {
                    batch.push(envelope.m);
                }
            }
            if batch.is_empty() {
                continue;
            }
            let receiver = receiver.clone();
            // The receiver may read the store: off the runtime's workers, one batch
            // at a time and in order so an execution's output stays in order.
            let _ = crate::store::blocking(move || receiver.receive_all(batch)).await;
        }
        drop(client);
        tracing::warn!("cluster listener: connection lost; listening again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes and holds the leader lock on a session of its own.
async fn leader(store: Store, cluster: Cluster) {
    let Some(pg) = store.postgres() else { return };
    loop {
        let (messages_tx, _messages) = mpsc::unbounded_channel();
        let client = match pg.dedicated(messages_tx).await {
            Ok(client) => client,
            Err(e) => {
                cluster.set_leader(false);
                tracing::warn!("leader election: {e:#}");
                tokio::time::sleep(LEADER_RETRY).await;
                continue;
            }
        };
        // A vanished machine's session (and lock) ends after about 11 s of silence.
        let _ = client
            .batch_execute(
                "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3",
            )
            .await;
        loop {
            let held = if cluster.is_leader() {
                tokio::time::timeout(LEADER_RETRY, client.query_one("SELECT 1", &[]))
                    .await
                    .is_ok_and(|r| r.is_ok())
            } else {
                match tokio::time::timeout(
                    LEADER_RETRY,
                    client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
                )
                .await
                {
                    Ok(Ok(row)) => row.get::<_, bool>(0),
                    _ => {
                        cluster.set_leader(false);
                        break;
                    }
                }
            };
            if cluster.is_leader() && !held {
                cluster.set_leader(false);
                break;
            }
            cluster.set_leader(held);
            tokio::time::sleep(LEADER_RETRY).await;
        }
        // The session is dropped with its lock; a new one starts over.
        drop(client);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Records this replica as alive and hands the live replicas' addresses on.
async fn heartbeat(
    store: Store,
    cluster: Cluster,
    public_quic: String,
    addresses: impl Fn(Vec<String>) + Send + Sync + 'static,
) {
    let addresses = Arc::new(addresses);
    let me = cluster.replica_id().to_string();
    loop {
        let store = store.clone();
        let me = me.clone();
        let cluster = cluster.clone();
        let public_quic = public_quic.clone();
        let addresses = addresses.clone();
        let beat = tokio::task::spawn_blocking(move || -> Result<()> {
            crate::store::allow_blocking_here();
            let now = Utc::now();
            let live = store.write(|w| {
                w.put(&Replica {
                    id: me.clone(),
                    public_quic: public_quic.clone(),
                    last_seen: now,
                })?;
                let mut live = Vec::new();
                let mut ids = std::collections::HashSet::new();
                for replica in w.list::<Replica>()? {
                    let age = (now - replica.last_seen).num_seconds();
                    if age > 24 * 3600 {
                        w.delete::<Replica>(&replica.id)?;
                    } else if age <= REPLICA_STALE_S && replica.id != me {
                        ids.insert(replica.id.clone());
                        live.push(replica.public_quic);
                    }
                }
                cluster.set_live(ids);
                Ok(live)
            })?;
            let mut list = vec![public_quic];
            for address in live {
                if !list.contains(&address) {
                    list.push(address);
                }
            }
            addresses(list);
            Ok(())
        })
        .await;
        match beat {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("replica heartbeat: {e:#}"),
            Err(e) => tracing::warn!("replica heartbeat: {e}"),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// The live replicas as recorded (for the API and tests).
pub fn replicas(store: &Store) -> Result<Vec<Replica>> {
    store
        .read(|r| r.list::<Replica>())
        .context("reading the replicas")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages keep their shape on the wire: a tag and short fields.
    #[test]
    fn messages_round_trip() {
        let envelope = Envelope {
            o: "r1".into(),
            m: Message::Output {
                execution: "e".into(),
                first: 3,
                last: 9,
            },
        };
        let text = serde_json::to_string(&envelope).unwrap();
        assert_eq!(
            text,
            r#"{"o":"r1","k":"output","execution":"e","first":3,"last":9}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.m, envelope.m);
    }

    /// On a redb file the one replica leads and sends nothing.
    #[test]
    fn a_single_replica_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cluster = Cluster::new(&store);
        assert!(cluster.is_leader());
        assert!(!cluster.is_shared());
        cluster.send(Message::End {
            execution: "e".into(),
        });
    }
}
