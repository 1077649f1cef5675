//! The QUIC gateway: accepts agent connections, enrolls agents that present no
//! certificate, serves the control stream of authenticated ones, and drives one
//! stream per job. A misbehaving agent (bad frame, stalled stream) only loses its own
//! stream or connection; every connection runs on its own tasks.
//!
//! Copies of one agent (its state directory cloned to another machine) are told apart
//! by the hello's host and instance ids ([`super::identity`]): the copy holding the
//! identity is served, every other one is refused with a long `retry_after_s`, and the
//! episode is recorded through the ingestion (audit entry and admin notification once).
//!
//! **Invariant:** a job an agent reported started is sent again only to a process on
//! the machine that started it, and only as `resume_only`: no copy of an agent starts
//! a job another copy started.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::pki::{self, AgentPublicKey};
use dynserv_shared::proto::{
    AgentControl, EnrollRequest, EnrollResponse, FromAgent, ServerControl, ToAgent,
    CA_BUNDLE_MIN_PROTOCOL, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};

use super::identity::{self, Claim, Verdict};
use super::ingest::Item;
use super::{lock, AgentConn, Fleet};
use crate::agents::{self, Agent, AgentFacts, JobHolder, LiveLoad, RefusedCopy};
use crate::executions::{self, Execution, Status};

/// Seconds between agent heartbeats.
pub const HEARTBEAT_S: u64 = 5;
/// A connection silent this long is closed (so a stopped agent shows disconnected).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// Application close code: the agent was refused or revoked.
pub const CLOSE_REVOKED: quinn::VarInt = quinn::VarInt::from_u32(403);
/// Application close code: protocol violation.
pub const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(400);
/// Application close code: replaced by a newer connection of the same agent.
pub const CLOSE_REPLACED: quinn::VarInt = quinn::VarInt::from_u32(409);
/// Longest host or instance id a hello may carry.
pub const MAX_IDENTITY_LEN: usize = 128;

/// Job starts this replica may have sent and not yet seen answered (see
/// [`StartPacing`]).
pub const STARTS_IN_FLIGHT: usize = 256;
/// How long an unanswered start holds its place among [`STARTS_IN_FLIGHT`]: an agent
/// slow to answer delays the starts behind it by this much at most.
pub const START_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Paces job starts: a job's start goes out only while fewer than the limit sent by
/// this replica wait for their agent's first answer, in the order the jobs were
/// dispatched. A fan-out to 10,000 agents used to send every start at once; the
/// answers then queued behind each other for longer than QUIC's probe timeout
/// (about 25 ms plus the round trip), so both sides sent probes and acknowledgements
/// for packets that were only late: 24 datagrams per job instead of 10, and 4.1-5.1
/// CPU seconds in the two replicas instead of 2.8-3.1 for 10,000 agents (BENCHMARKS.md,
/// "Job starts paced"). A start's place is freed by the agent's first answer or after
/// the wait, whichever comes first.
pub struct StartPacing {
    places: Arc<tokio::sync::Semaphore>,
    answer_wait: Duration,
}

impl StartPacing {
    pub fn new(in_flight: usize, answer_wait: Duration) -> StartPacing {
        StartPacing {
            places: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            answer_wait,
        }
    }
}

impl Default for StartPacing {
    fn default() -> StartPacing {
        StartPacing::new(STARTS_IN_FLIGHT, START_ANSWER_WAIT)
    }
}

/// Awaits `read` holding `place` until it completes or `wait` passes.
async fn holding<T>(
    read: impl Future<Output = T>,
    place: tokio::sync::OwnedSemaphorePermit,
    wait: Duration,
) -> T {
    tokio::pin!(read);
    tokio::select! {
        out = &mut read => out,
        () = tokio::time::sleep(wait) => {
            drop(place);
            read.await
        }
    }
}

/// Commands for a job driver.
#[derive(Debug, Clone, Copy)]
pub enum JobCommand {
    /// Tell the agent to stop the job.
    Cancel,
}

pub(super) fn serve(
    fleet: Fleet,
    socket: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let mut trust = fleet.inner.ca.subscribe();
    let config = endpoint_config(&trust.borrow_and_update())?;
    let local = socket.local_addr()?;
    widen_buffers(&socket);
    let runtime = quinn::default_runtime().context("no async runtime for the fleet gateway")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .context("starting the QUIC endpoint")?;
    let task = async move {
        let sweeper = tokio::spawn(sweep_expired(fleet.clone()));
        let reloader = tokio::spawn(reload_trust(fleet.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        tokio::spawn(handle_incoming(fleet.clone(), incoming));
                    }
                    None => break,
                },
                changed = trust.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    // New handshakes see the new CAs; live connections go on.
                    let fresh = trust.borrow_and_update().clone();
                    match endpoint_config(&fresh) {
                        Ok(config) => {
                            endpoint.set_server_config(Some(config));
                            tracing::info!(trusted = fresh.trusted.len(), "the fleet gateway uses the new CAs");
                        }
                        Err(e) => tracing::error!("reconfiguring the fleet gateway for new CAs: {e:#}"),
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        sweeper.abort();
        reloader.abort();
        endpoint.close(0u32.into(), b"control plane shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    };
    Ok((local, task))
}

/// How often the gateway rereads the CAs from the store, so a rotation or retirement
/// made on another replica (or by the CLI) takes effect here within this time.
pub const TRUST_RELOAD: Duration = Duration::from_secs(3);

/// How much of one stream an agent may send before the gateway has read it (quinn's
/// default is 1.25 MB). Output is the only bulk an agent sends, and what it sends
/// ahead waits in this window before the ingestion sees it: with the default, a fast
/// job's lines waited about 60 ms here alone. 256 KiB still carries 5 MB/s per job
/// over a 50 ms round trip.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;

/// The QUIC endpoint's configuration for a set of CAs.
fn endpoint_config(trust: &super::ca::FleetCa) -> Result<quinn::ServerConfig> {
    let tls = trust.server_config()?;
    let crypto =
        QuicServerConfig::try_from(tls).context("building the QUIC server configuration")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("valid idle timeout")));
    transport.max_concurrent_bidi_streams(16u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Rereads the CAs every [`TRUST_RELOAD`] (see [`Fleet::reload_trust`]).
async fn reload_trust(fleet: Fleet) {
    let mut tick = tokio::time::interval(TRUST_RELOAD);
    loop {
        tick.tick().await;
        let reloader = fleet.clone();
        match crate::store::blocking(move || reloader.reload_trust()).await {
            Ok(_) => {}
            Err(e) => tracing::warn!("rereading the fleet's CAs: {e:#}"),
        }
    }
}

/// Socket buffer size asked of the kernel for the fleet's UDP socket. A no-op job
/// fanned out to 10,000 agents brings about 30,000 small datagrams back within a
/// second or two, faster than one endpoint task drains them on a busy machine; at
/// 8 MiB the kernel still dropped about 24,000 of them (each counts about 2 KiB
/// against the buffer), and QUIC's retransmission timers then made the tail of the
/// fan-out. A queue costs only while it is full.
pub const UDP_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Widens the UDP socket's buffers: with the default (about 200 KiB) a job fanned out
/// to thousands of agents overflows the receive queue, the kernel drops datagrams and
/// QUIC waits for retransmissions. The kernel caps the size at `net.core.rmem_max` /
/// `wmem_max` unless the process may override it (`CAP_NET_ADMIN`, as quic-go does);
/// a smaller result is logged so an operator can raise those.
fn widen_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if !force_buffer(socket, libc::SO_RCVBUFFORCE) {
        let _ = sock.set_recv_buffer_size(UDP_BUFFER_BYTES);
    }
    if !force_buffer(socket, libc::SO_SNDBUFFORCE) {
        let _ = sock.set_send_buffer_size(UDP_BUFFER_BYTES);
    }
    let recv = sock.recv_buffer_size().unwrap_or(0);
    if recv < UDP_BUFFER_BYTES {
        tracing::info!(
            bytes = recv,
            "the fleet's UDP receive buffer is smaller than asked; for fleets of thousands \
             of agents raise net.core.rmem_max to {UDP_BUFFER_BYTES}"
        );
    }
}

/// Sets a buffer past the kernel's cap where the process may (`SO_RCVBUFFORCE`,
/// `SO_SNDBUFFORCE` need `CAP_NET_ADMIN`); false, changing nothing, without it.
fn force_buffer(socket: &std::net::UdpSocket, option: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    let bytes = libc::c_int::try_from(UDP_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

async fn handle_incoming(fleet: Fleet, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, "fleet handshake failed: {e}");
            return;
        }
    };
    let certificate = connection
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    let result = match certificate {
        None => enroll(&fleet, &connection).await,
        Some(cert) => serve_agent(&fleet, &connection, &cert).await,
    };
    if let Err(e) = result {
        tracing::info!(%remote, "fleet connection ended: {e:#}");
        connection.close(CLOSE_PROTOCOL, b"error");
    }
}

// ---- enrollment ----

async fn enroll(fleet: &Fleet, connection: &quinn::Connection) -> Result<()> {
    let (mut send, mut recv) =
        tokio::time::timeout(Duration::from_secs(10), connection.accept_bi())
            .await
            .context("no enrollment request within 10 s")??;
    let request: EnrollRequest =
        tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
            .await
            .context("no enrollment request within 10 s")??
            .context("the enrollment stream closed early")?;
    // Refused attempts are counted per client network (/24, /64): after too many, the
    // network waits a growing delay without the store being asked (guessing a 256-bit
    // secret is hopeless, but every attempt costs a transaction).
    let throttle_key = [crate::auth::ThrottleKey::enroll(
        connection.remote_address().ip(),
    )];
    let throttle = &fleet.inner.enroll_throttle;
    let response = match throttle.check(&throttle_key, Utc::now()) {
        Err(locked) => {
            tracing::info!(remote = %connection.remote_address(), "enrollment refused: {locked}");
            EnrollResponse::Refused {
                reason: locked.message,
            }
        }
        Ok(()) => {
            let fleet2 = fleet.clone();
            let response = crate::store::blocking(move || enroll_request(&fleet2, &request)).await;
            if matches!(response, EnrollResponse::Refused { .. }) {
                throttle.fail(&throttle_key, Utc::now());
            }
            response
        }
    };
    write_frame(&mut send, &response).await?;
    let _ = send.finish();
    // Let the agent read the answer and close; do not wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    Ok(())
}

fn enroll_request(fleet: &Fleet, request: &EnrollRequest) -> EnrollResponse {
    let refused = |reason: String| {
        tracing::info!("enrollment refused: {reason}");
        EnrollResponse::Refused { reason }
    };
    if let Err(reason) = check_protocol(request.protocol) {
        return refused(reason);
    }
    let name = match agents::check_name(&request.name) {
        Ok(n) => n,
        Err(e) => return refused(e.to_string()),
    };
    let public_key = match AgentPublicKey::parse(&request.public_key) {
        Ok(k) => k,
        Err(e) => return refused(e.to_string()),
    };
    if request.host_id.len() > MAX_IDENTITY_LEN {
        return refused(format!(
            "the host id is longer than {MAX_IDENTITY_LEN} characters"
        ));
    }
    let agent_id = uuid::Uuid::new_v4().to_string();
    let (validity, cert_expires_at) = fleet.cert_policy().validity();
    let trust = fleet.trust();
    let certificate_pem = match trust
        .issuing
        .issue_agent_cert(&agent_id, &public_key, validity)
    {
        Ok(pem) => pem,
        Err(e) => return refused(format!("cannot issue a certificate: {e}")),
    };
    let fingerprint = match pki::certs_from_pem(&certificate_pem) {
        Ok(certs) => hex::encode(pki::sha256(&certs[0])),
        Err(e) => return refused(format!("cannot issue a certificate: {e}")),
    };
    let facts = AgentFacts::from(&request.facts);
    let now = Utc::now();
    let outcome = fleet.inner.store.write(|w| {
        let token = match agents::consume_token(w, &request.secret, now)? {
            Ok(t) => t,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let new = agents::NewAgent {
            id: &agent_id,
            name: &name,
            cert_sha256: &fingerprint,
            facts,
            host_id: &request.host_id,
            protocol: request.protocol,
            cert_expires_at,
            ca_id: &trust.issuing_id,
        };
        agents::register(w, &token, new, now)
    });
    match outcome {
        Ok(Ok(agent)) => {
            tracing::info!(agent = %agent.id, name = %agent.name, "agent enrolled");
            EnrollResponse::Enrolled {
                agent_id,
                certificate_pem,
                // The serving CA first: the token pinned it.
                ca_pem: trust.bundle_pem.clone(),
                signing_key: fleet.signing_key(),
            }
        }
        Ok(Err(refusal)) => refused(refusal.to_string()),
        Err(e) => {
            tracing::error!("enrollment failed: {e:#}");
            refused("the control plane could not record the enrollment".into())
        }
    }
}

/// Whether an agent speaking fleet protocol `protocol` is served: this release's
/// protocol and the previous one are ([`MIN_PROTOCOL_VERSION`]); the refusal of any
/// other names the way out.
pub fn check_protocol(protocol: u32) -> std::result::Result<(), String> {
    let ours = dynserv_shared::VERSION;
    if protocol < MIN_PROTOCOL_VERSION {
        Err(format!(
            "this agent speaks fleet protocol {protocol}, older than this control plane \
             ({ours}) still serves (protocols {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}): \
             upgrade the agent to {ours} by hand (copy the dynserv-agent binary that ships \
             with this control plane over the old one on the server and restart the \
             dynserv-agent service, or run Install agent on the server's page); it keeps its \
             enrollment, and later upgrades can be made from the Agents page"
        ))
    } else if protocol > PROTOCOL_VERSION {
        Err(format!(
            "this agent speaks fleet protocol {protocol}, newer than this control plane \
             ({ours}, protocol {PROTOCOL_VERSION}): upgrade the control plane first"
        ))
    } else {
        Ok(())
    }
}

// ---- authenticated agents ----

/// An agent whose hello passed [`check_agent`].
struct Checked {
    agent: Agent,
    /// When the certificate it presented expires, `None` when unknown (issued before
    /// certificates had a lifetime, or the one a renewal replaced): renewed at once.
    cert_expires_at: Option<chrono::DateTime<Utc>>,
    /// The CA that issued it (`None`: unknown, the one a renewal replaced).
    cert_ca: Option<String>,
}

fn check_agent(
    fleet: &Fleet,
    agent_id: &str,
    cert_sha256: &str,
) -> Result<std::result::Result<Checked, String>> {
    let Some(mut agent) = fleet.inner.store.get::<Agent>(agent_id)? else {
        return Ok(Err("unknown agent".into()));
    };
    // An agent that stored a renewed certificate whose confirmation never arrived
    // connects with it: it becomes the current one now.
    let offered = agent
        .next_cert
        .as_ref()
        .is_some_and(|n| crate::secrets::constant_time_eq(&n.sha256, cert_sha256));
    if offered && agent.revoked_at.is_none() {
        let previous = agent.cert_sha256.clone();
        if let Some(renewed) = fleet
            .inner
            .store
            .write(|w| agents::record_renewal(w, agent_id, &previous, cert_sha256))?
        {
            agent = renewed;
        }
    }
    if agent.revoked_at.is_some() {
        return Ok(Err("this agent has been revoked".into()));
    }
    // The certificate a renewal replaced stays good until the agent connects with the
    // new one: it may have lost the connection before it stored that.
    let current = crate::secrets::constant_time_eq(&agent.cert_sha256, cert_sha256);
    let previous = agent
        .previous_cert_sha256
        .as_deref()
        .is_some_and(|p| crate::secrets::constant_time_eq(p, cert_sha256));
    if !current && !previous {
        return Ok(Err("the certificate does not belong to this agent".into()));
    }
    if current && agent.previous_cert_sha256.is_some() {
        // The agent uses its renewed certificate: the one it replaced is done with.
        agent = fleet
            .inner
            .store
            .write(|w| agents::forget_previous_cert(w, agent_id))?
            .unwrap_or(agent);
    }
    let policy = fleet.cert_policy();
    if let Some(expires_at) = agent.cert_expires_at.filter(|_| current) {
        if policy.expired(Some(expires_at)) {
            return Ok(Err(super::certs::expired_reason(expires_at)));
        }
    }
    Ok(Ok(Checked {
        cert_expires_at: agent.cert_expires_at.filter(|_| current),
        cert_ca: current.then(|| agent.cert_ca_id().to_string()),
        agent,
    }))
}

async fn serve_agent(
    fleet: &Fleet,
    connection: &quinn::Connection,
    cert: &CertificateDer<'_>,
) -> Result<()> {
    let cert_sha256 = hex::encode(pki::sha256(cert));
    let (mut send, mut recv) =
        tokio::time::timeout(Duration::from_secs(10), connection.accept_bi())
            .await
            .context("no control stream within 10 s")??;
    let hello: AgentControl = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
        .await
        .context("no hello within 10 s")??
        .context("the control stream closed before the hello")?;
    let AgentControl::Hello {
        protocol,
        agent_id,
        facts,
        host_id,
        instance_id,
    } = hello
    else {
        bail!("the first control message was not a hello");
    };
    let checked = if let Err(reason) = check_protocol(protocol) {
        Err(reason)
    } else if host_id.len() > MAX_IDENTITY_LEN || instance_id.len() > MAX_IDENTITY_LEN {
        Err(format!(
            "the hello's host or instance id is longer than {MAX_IDENTITY_LEN} characters"
        ))
    } else {
        let (checker, id, cert) = (fleet.clone(), agent_id.clone(), cert_sha256.clone());
        crate::store::blocking(move || check_agent(&checker, &id, &cert)).await?
    };
    let Checked {
        agent,
        cert_expires_at,
        cert_ca,
    } = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            tracing::info!(agent = %agent_id, "agent refused: {reason}");
            refuse(connection, &mut send, reason, None).await?;
            return Ok(());
        }
    };

    let now = Utc::now();
    let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
    let conn = Arc::new(AgentConn {
        agent_id: agent_id.clone(),
        server_id: agent.server_id.clone(),
        host_id,
        instance_id,
        protocol,
        connection: connection.clone(),
        last_seen: Mutex::new(now),
        load: Mutex::new(None),
        jobs: Mutex::new(Default::default()),
        failed_streams: Mutex::new(Default::default()),
        dispatch: dispatch_tx,
    });
    if let Verdict::Duplicate {
        holder_host_id,
        holder_connected,
    } = admit(fleet, agent.host_id.as_deref(), &conn, now)
    {
        let address = connection.remote_address().ip().to_string();
        tracing::warn!(
            agent = %agent_id,
            remote = %address,
            copy_host = %conn.host_id,
            holder_host = %holder_host_id,
            holder_connected,
            "refused a copy of an agent: another machine holds its identity"
        );
        let reason = duplicate_reason(&conn.host_id, &holder_host_id, holder_connected);
        fleet
            .inner
            .ingest
            .send(Item::Duplicate {
                agent_id: agent_id.clone(),
                copy: RefusedCopy {
                    host_id: conn.host_id.clone(),
                    hostname: facts.hostname.clone(),
                    address,
                    holder_host_id,
                    holder_connected,
                },
                at: now,
            })
            .await;
        refuse(
            connection,
            &mut send,
            reason,
            Some(agents::DUPLICATE_RETRY_S),
        )
        .await?;
        return Ok(());
    }

    fleet.record_presence(&agent_id, true).await;
    fleet.inner.events.publish(crate::live::Event::agent(
        &agent_id,
        &agent.project_id,
        true,
    ));
    let renewal = Renewal {
        presented: cert.to_vec(),
        presented_sha256: cert_sha256.clone(),
        expires_at: cert_expires_at,
        ca_id: cert_ca,
        pending: None,
    };
    let result = serve_admitted(
        fleet,
        &conn,
        facts,
        renewal,
        (&mut send, &mut recv),
        dispatch_rx,
    )
    .await;

    let (removed, gone) = {
        let mut conns = lock(&fleet.inner.conns);
        let ours = conns.get(&agent_id).is_some_and(|c| Arc::ptr_eq(c, &conn));
        if ours {
            conns.remove(&agent_id);
        }
        // No other connection of the agent took this one's place (a revocation
        // removed it already).
        (ours, !conns.contains_key(&agent_id))
    };
    if removed {
        fleet.record_presence(&agent_id, false).await;
        let seen = *lock(&conn.last_seen);
        fleet
            .inner
            .ingest
            .send(Item::Seen {
                agent_id: agent_id.clone(),
                at: seen,
            })
            .await;
    }
    if gone {
        fleet.inner.events.publish(crate::live::Event::agent(
            &agent_id,
            &agent.project_id,
            false,
        ));
    }
    tracing::info!(agent = %agent_id, "agent disconnected");
    result
}

/// Answers a hello with a refusal (and how long to stay away, when it will last), then
/// closes the connection once the agent has read it.
async fn refuse(
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: String,
    retry_after_s: Option<u64>,
) -> Result<()> {
    write_frame(
        send,
        &ServerControl::Refused {
            reason,
            retry_after_s,
        },
    )
    .await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
    connection.close(CLOSE_REVOKED, b"refused");
    Ok(())
}

/// What a refused copy of an agent logs: why, and what a person can do about it.
fn duplicate_reason(copy_host_id: &str, holder_host_id: &str, holder_connected: bool) -> String {
    let holder = if holder_connected {
        format!("the copy on host id {holder_host_id}, which is connected")
    } else {
        format!("host id {holder_host_id}, recorded for it")
    };
    format!(
        "duplicate agent identity: this agent's certificate is in use by {holder}; this \
         copy (host id {copy_host_id}) is not served and tries again in {} minutes. If this \
         machine was cloned from another server, stop dynserv-agent here, remove its state \
         directory and enroll it with a fresh token (`dynserv-agent enroll --server HOST:PORT \
         --token TOKEN`); if the other machine is gone, an admin can accept this one on the \
         Agents page",
        agents::DUPLICATE_RETRY_S / 60
    )
}

/// Decides whether the copy behind `conn` is served ([`identity::decide`]) and, if so,
/// makes `conn` the agent's connection, closing the one it replaces. Both happen under
/// the connections lock, so of two copies saying hello at once only one can win.
fn admit(
    fleet: &Fleet,
    recorded_host_id: Option<&str>,
    conn: &Arc<AgentConn>,
    now: chrono::DateTime<Utc>,
) -> Verdict {
    let previous = {
        let mut conns = lock(&fleet.inner.conns);
        let mut replaced = lock(&fleet.inner.replaced);
        let current = conns.get(&conn.agent_id).cloned();
        let was_replaced = replaced
            .get(&conn.agent_id)
            .is_some_and(|r| r.contains(&conn.instance_id, now));
        let verdict = identity::decide(
            recorded_host_id,
            current.as_deref().map(|c| Claim {
                host_id: &c.host_id,
                instance_id: &c.instance_id,
            }),
            was_replaced,
            Claim {
                host_id: &conn.host_id,
                instance_id: &conn.instance_id,
            },
        );
        if verdict != Verdict::Accept {
            return verdict;
        }
        conns.insert(conn.agent_id.clone(), conn.clone());
        if let Some(memory) = replaced.get_mut(&conn.agent_id) {
            memory.forget(&conn.instance_id, now);
            if memory.is_empty() {
                replaced.remove(&conn.agent_id);
            }
        }
        if let Some(previous) = &current {
            if previous.instance_id != conn.instance_id {
                replaced
                    .entry(conn.agent_id.clone())
                    .or_default()
                    .note(&previous.instance_id, now);
            }
        }
        current
    };
    if let Some(previous) = previous {
        previous
            .connection
            .close(CLOSE_REPLACED, b"replaced by a newer connection");
    }
    Verdict::Accept
}

/// Serves an admitted connection: welcome, hello facts, job dispatch and the control
/// stream, until the connection ends.
async fn serve_admitted(
    fleet: &Fleet,
    conn: &Arc<AgentConn>,
    facts: dynserv_shared::proto::Facts,
    mut renewal: Renewal,
    (send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
    dispatch_rx: mpsc::UnboundedReceiver<super::Dispatched>,
) -> Result<()> {
    write_frame(
        send,
        &ServerControl::Welcome {
            version: dynserv_shared::VERSION.to_string(),
            heartbeat_s: HEARTBEAT_S,
            servers: fleet.replica_addresses(),
            // Only agents that know upgrades are told the key they are checked with.
            signing_key: if conn.protocol >= dynserv_shared::proto::UPGRADE_MIN_PROTOCOL {
                fleet.signing_key()
            } else {
                String::new()
            },
            // The CAs in force, so an agent stops trusting a retired one.
            ca_pem: if conn.protocol >= CA_BUNDLE_MIN_PROTOCOL {
                fleet.trust().bundle_pem.clone()
            } else {
                String::new()
            },
        },
    )
    .await?;
    {
        let hello = agents::HelloFacts {
            facts: AgentFacts::from(&facts),
            host_id: conn.host_id.clone(),
            protocol: conn.protocol,
        };
        let now = Utc::now();
        let changed = {
            let store = fleet.inner.store.clone();
            let (agent_id, hello) = (conn.agent_id.clone(), hello.clone());
            crate::store::blocking(move || {
                store.read(|r| agents::hello_changes_anything(r, &agent_id, &hello, now))
            })
            .await
        };
        if changed.unwrap_or(true) {
            fleet
                .inner
                .ingest
                .send(Item::Hello {
                    agent_id: conn.agent_id.clone(),
                    hello,
                    at: now,
                })
                .await;
        }
    }
    tracing::info!(
        agent = %conn.agent_id,
        remote = %conn.connection.remote_address(),
        host_id = %conn.host_id,
        instance = %conn.instance_id,
        "agent connected"
    );
    let dispatcher = tokio::spawn(dispatcher(fleet.clone(), conn.clone(), dispatch_rx));
    let result = control_loop(fleet, conn, &mut renewal, send, recv).await;
    dispatcher.abort();
    result
}

/// The certificate a connection presented and its renewal under way.
struct Renewal {
    /// The presented certificate (DER): a renewal certifies its key.
    presented: Vec<u8>,
    presented_sha256: String,
    /// When it expires (`None`: unknown, renewed at once).
    expires_at: Option<chrono::DateTime<Utc>>,
    /// The CA that issued it (`None`: unknown, renewed at once).
    ca_id: Option<String>,
    /// A new certificate sent and not yet confirmed.
    pending: Option<Pending>,
}

/// A renewed certificate sent and not yet confirmed.
struct Pending {
    sha256: String,
    expires_at: chrono::DateTime<Utc>,
    ca_id: String,
}

/// Sends the agent a renewed certificate when its own is due (agents of protocol 2 and
/// later; an older one would not understand the message), or at once when another CA
/// than the active one issued it (a CA rotation: a forced renewal, with the bundle of
/// trusted CAs; agents of protocol [`CA_BUNDLE_MIN_PROTOCOL`] and later, since an older
/// one could not check a certificate of a CA it does not know). At most one is in
/// flight. Every heartbeat asks, so a rotation reaches a connected agent within
/// [`HEARTBEAT_S`] of the gateway seeing it.
async fn renew_if_due(
    fleet: &Fleet,
    conn: &AgentConn,
    renewal: &mut Renewal,
    send: &mut quinn::SendStream,
) {
    // A renewal that fails is tried again at the next heartbeat; the connection goes on
    // (a broken stream shows in the next read).
    if let Err(e) = try_renewal(fleet, conn, renewal, send).await {
        tracing::warn!(agent = %conn.agent_id, "renewing the agent's certificate: {e:#}");
    }
}

async fn try_renewal(
    fleet: &Fleet,
    conn: &AgentConn,
    renewal: &mut Renewal,
    send: &mut quinn::SendStream,
) -> Result<()> {
    let policy = fleet.cert_policy();
    if conn.protocol < 2 || renewal.pending.is_some() {
        return Ok(());
    }
    let trust = fleet.trust();
    let other_ca = renewal.ca_id.as_deref() != Some(trust.issuing_id.as_str());
    let bundle = conn.protocol >= CA_BUNDLE_MIN_PROTOCOL;
    if !bundle && other_ca && renewal.ca_id.is_some() {
        // An older agent keeps the certificate of the CA it knows: it holds that CA
        // until it is upgraded, which keeps the CA from being retired meanwhile.
        return Ok(());
    }
    if !other_ca && !policy.renewal_due(renewal.expires_at) {
        return Ok(());
    }
    let public_key = AgentPublicKey::from_certificate(&renewal.presented)
        .context("reading the key of the agent's certificate")?;
    let (validity, expires_at) = policy.validity();
    let certificate_pem = trust
        .issuing
        .issue_agent_cert(&conn.agent_id, &public_key, validity)?;
    let der = pki::certs_from_pem(&certificate_pem)?;
    let sha256 = hex::encode(pki::sha256(&der[0]));
    // Recorded before it is sent, so an agent that stores it and loses the connection
    // before confirming is still recognized by it.
    let store = fleet.inner.store.clone();
    let next = agents::NextCert {
        sha256: sha256.clone(),
        expires_at,
        ca: Some(trust.issuing_id.clone()),
    };
    let agent_id = conn.agent_id.clone();
    crate::store::blocking(move || {
        store.write(|w| agents::record_renewal_offered(w, &agent_id, next))
    })
    .await?;
    tracing::info!(
        agent = %conn.agent_id,
        expires = %expires_at,
        ca = %trust.issuing_id,
        forced = other_ca,
        "renewing the agent's certificate"
    );
    write_frame(
        send,
        &ServerControl::Certificate {
            certificate_pem,
            expires_at: expires_at.to_rfc3339(),
            ca_pem: bundle.then(|| trust.bundle_pem.clone()),
        },
    )
    .await?;
    renewal.pending = Some(Pending {
        sha256,
        expires_at,
        ca_id: trust.issuing_id.clone(),
    });
    Ok(())
}

/// The agent stored its renewed certificate: the record switches to it, keeping the
/// one it presented on this connection accepted until it connects with the new one.
async fn renewal_stored(
    fleet: &Fleet,
    conn: &AgentConn,
    renewal: &mut Renewal,
    stored_sha256: &str,
) -> Result<()> {
    let Some(Pending {
        sha256,
        expires_at,
        ca_id,
    }) = renewal.pending.take()
    else {
        bail!("the agent confirmed a certificate it was not sent");
    };
    if !crate::secrets::constant_time_eq(&sha256, stored_sha256) {
        bail!("the agent stored another certificate than the one it was sent");
    }
    let store = fleet.inner.store.clone();
    let (agent_id, presented) = (conn.agent_id.clone(), renewal.presented_sha256.clone());
    let new_sha256 = sha256.clone();
    let recorded = crate::store::blocking(move || {
        store.write(|w| agents::record_renewal(w, &agent_id, &presented, &new_sha256))
    })
    .await?;
    if recorded.is_none() {
        bail!("the renewed certificate was no longer the one on record");
    }
    tracing::info!(agent = %conn.agent_id, "the agent stored its renewed certificate");
    // The connection goes on with the old certificate, which stays accepted; the next
    // renewal is due a lifetime from now (or at the next rotation).
    renewal.expires_at = Some(expires_at);
    renewal.ca_id = Some(ca_id);
    Ok(())
}

async fn control_loop(
    fleet: &Fleet,
    conn: &AgentConn,
    renewal: &mut Renewal,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<()> {
    renew_if_due(fleet, conn, renewal, send).await;
    loop {
        let message = tokio::select! {
            m = read_frame::<AgentControl, _>(recv) => m,
            _ = conn.connection.closed() => return Ok(()),
        };
        match message? {
            None => return Ok(()),
            Some(AgentControl::Heartbeat(load)) => {
                let now = Utc::now();
                *lock(&conn.last_seen) = now;
                if let Some(server_id) = &conn.server_id {
                    fleet.samples().record(
                        server_id,
                        &crate::server_metrics::Sample::of_heartbeat(&load, now),
                    );
                }
                *lock(&conn.load) = Some(LiveLoad {
                    load: load.load,
                    memory_total: load.memory_total,
                    memory_available: load.memory_available,
                    disk_total: load.disk_total,
                    disk_available: load.disk_available,
                    uptime_s: load.uptime_s,
                    running_jobs: load.running_jobs,
                    cpu_percent: load.cpu_percent,
                });
                write_frame(send, &ServerControl::HeartbeatAck).await?;
                renew_if_due(fleet, conn, renewal, send).await;
            }
            Some(AgentControl::CertificateStored { sha256 }) => {
                renewal_stored(fleet, conn, renewal, &sha256).await?;
            }
            Some(AgentControl::UpgradeOutcome {
                upgrade_id,
                version,
                error,
            }) => {
                tracing::info!(agent = %conn.agent_id, upgrade = %upgrade_id, %version, ?error, "the agent reported how its upgrade ended");
                let store = fleet.inner.store.clone();
                let agent_id = conn.agent_id.clone();
                let recorded = crate::store::blocking(move || {
                    store.write(|w| {
                        crate::agent_upgrades::record_outcome(
                            w,
                            &upgrade_id,
                            &agent_id,
                            &version,
                            error.as_deref(),
                            Utc::now(),
                        )
                    })
                })
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(agent = %conn.agent_id, "recording an upgrade's outcome: {e:#}");
                }
            }
            Some(AgentControl::Hello { .. }) => bail!("a second hello on the control stream"),
        }
    }
}

/// Sends every queued or running execution of the agent, then each new one as it is
/// dispatched. A read the store cannot answer (the database unreachable) is tried
/// again, later and later, for as long as the connection lives: the connection ends
/// this task, and a job whose stream ended in an error (the store failing, a bad
/// frame) is resumed only through here.
async fn dispatcher(
    fleet: Fleet,
    conn: Arc<AgentConn>,
    mut rx: mpsc::UnboundedReceiver<super::Dispatched>,
) {
    let store = fleet.inner.store.clone();
    let agent_id = conn.agent_id.clone();
    let mut failures = 0;
    let active = loop {
        let (store, of_agent) = (store.clone(), agent_id.clone());
        let listed = crate::store::blocking(move || {
            store.read(|r| {
                let mut out = Vec::new();
                for execution in executions::active_of_agent(r, &of_agent)? {
                    let holder = match execution.status {
                        Status::Running => agents::job_holder(r, &execution.id)?,
                        _ => None,
                    };
                    out.push((execution, holder));
                }
                Ok(out)
            })
        })
        .await;
        match listed {
            Ok(active) => break active,
            Err(e) => {
                let wait = read_again_after(failures);
                failures += 1;
                tracing::error!(agent = %agent_id, "listing queued executions, again in {wait:?}: {e:#}");
                tokio::time::sleep(wait).await;
            }
        }
    };
    for (execution, holder) in active {
        if let Some(holder) = holder.filter(|h| runs_elsewhere(h, &conn.host_id)) {
            // Its process runs on another copy of this agent, which alone may
            // resume it.
            tracing::warn!(
                agent = %agent_id,
                execution = %execution.id,
                runs_on = %holder.host_id,
                "not sending a running job to a copy of its agent on another machine"
            );
            continue;
        }
        start_driver(&fleet, &conn, execution, None);
    }
    // Executions whose reads failed, with how many times in a row.
    let mut unread: HashMap<String, u32> = HashMap::new();
    while let Some(dispatched) = rx.recv().await {
        let (execution, spec) = match dispatched {
            // Read with its job where it was created or received: nothing to read.
            super::Dispatched::Ready(execution, spec) => (*execution, spec),
            super::Dispatched::Id(id) => {
                let (reader, read) = (store.clone(), id.clone());
                match crate::store::blocking(move || reader.get::<Execution>(&read)).await {
                    Ok(Some(execution)) => {
                        unread.remove(&id);
                        (execution, None)
                    }
                    Ok(None) => {
                        unread.remove(&id);
                        lock(&conn.failed_streams).remove(&id);
                        continue;
                    }
                    Err(e) => {
                        let failed = unread.entry(id.clone()).or_default();
                        let wait = read_again_after(*failed);
                        *failed += 1;
                        tracing::warn!(execution = %id, "reading a dispatched execution, again in {wait:?}: {e:#}");
                        dispatch_later(&conn, id, wait);
                        continue;
                    }
                }
            }
        };
        if execution.status.is_final() {
            lock(&conn.failed_streams).remove(&execution.id);
        } else {
            start_driver(&fleet, &conn, execution, spec);
        }
    }
}

/// How long a dispatcher waits before it reads again what it could not read
/// `failures` times in a row: a second, doubling, at most ten.
fn read_again_after(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(4)).min(Duration::from_secs(10))
}

/// Hands an execution to the connection's dispatcher again after `wait`, unless the
/// connection closed meanwhile (its next connection sends it anyway).
fn dispatch_later(conn: &Arc<AgentConn>, id: String, wait: Duration) {
    let conn = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if conn.connection.close_reason().is_none() {
            let _ = conn.dispatch.send(super::Dispatched::Id(id));
        }
    });
}

/// Whether a running job recorded on `holder` runs on another machine than the
/// connected copy's `host_id` (unknown for agents that predate host ids: then no).
fn runs_elsewhere(holder: &JobHolder, host_id: &str) -> bool {
    !host_id.is_empty() && holder.host_id != host_id
}

fn start_driver(
    fleet: &Fleet,
    conn: &Arc<AgentConn>,
    execution: Execution,
    spec: Option<Box<dynserv_shared::proto::JobSpec>>,
) {
    if execution.status == Status::Queued && execution.expires_at <= Utc::now() {
        expire(fleet, &execution);
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut jobs = lock(&conn.jobs);
        if jobs.contains_key(&execution.id) {
            return;
        }
        jobs.insert(execution.id.clone(), tx);
    }
    let fleet = fleet.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        let id = execution.id.clone();
        let opened = tokio::time::Instant::now();
        let result = drive_job(&fleet, &conn, execution, spec, rx).await;
        lock(&conn.jobs).remove(&id);
        let e = match result {
            Err(e) if conn.connection.close_reason().is_none() => e,
            ended => {
                if let Err(e) = ended {
                    tracing::info!(execution = %id, "job stream ended with its connection: {e:#}");
                }
                lock(&conn.failed_streams).remove(&id);
                return;
            }
        };
        // Whatever ended the stream (the store failing to keep the output or to read
        // the job, a malformed or unexpected frame, the agent closing the stream), the
        // agent still holds the job and its spool: the dispatcher reads the execution
        // afresh and opens a new stream unless the job ended meanwhile. Only a closed
        // connection stops that (the next one sends the job anyway). A stream that ran
        // a while counts as a fresh start.
        let wait = {
            let mut failed = lock(&conn.failed_streams);
            let failed = failed.entry(id.clone()).or_default();
            if opened.elapsed() >= STREAM_LIVED {
                *failed = 0;
            }
            let wait = read_again_after(*failed);
            *failed += 1;
            wait
        };
        if e.is::<OutputNotStored>() {
            tracing::info!(execution = %id, "job stream ended, opened again in {wait:?}: {e:#}");
        } else {
            tracing::warn!(execution = %id, "job stream ended, opened again in {wait:?}: {e:#}");
        }
        dispatch_later(&conn, id, wait);
    });
}

/// A job stream that ended in an error after running this long is opened again as
/// soon as a first failure would be.
const STREAM_LIVED: Duration = Duration::from_secs(30);

fn expire(fleet: &Fleet, execution: &Execution) {
    let summary = "expired: the agent did not take the job in time";
    let ended = fleet
        .inner
        .store
        .write(|w| executions::finish(w, &execution.id, Status::Failed, None, summary, Utc::now()));
    if matches!(ended, Ok(true)) {
        fleet.publish_end(&execution.id, &execution.project_id, "failed");
    }
}

/// Expired executions read per sweep; the next sweep takes the rest.
const SWEEP_BATCH: usize = 1000;

/// Fails queued executions whose expiry passed and that no connected agent holds.
/// It reads the expiry index up to now, so its cost is what expired, not what waits.
async fn sweep_expired(fleet: Fleet) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let sweeper = fleet.clone();
        let swept = crate::store::blocking(move || {
            let expired = sweeper
                .inner
                .store
                .read(|r| executions::expired(r, Utc::now(), SWEEP_BATCH))?;
            for execution in expired {
                let held = lock(&sweeper.inner.conns)
                    .get(&execution.agent_id)
                    .is_some_and(|c| lock(&c.jobs).contains_key(&execution.id));
                if !held {
                    expire(&sweeper, &execution);
                }
            }
            anyhow::Ok(())
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!("sweeping expired jobs: {e:#}");
        }
    }
}

/// Drives one job stream: sends the job, stores what comes back through the
/// ingestion, acknowledges what is stored, forwards cancels, and confirms the end.
async fn drive_job(
    fleet: &Fleet,
    conn: &AgentConn,
    execution: Execution,
    spec: Option<Box<dynserv_shared::proto::JobSpec>>,
    mut commands: mpsc::UnboundedReceiver<JobCommand>,
) -> Result<()> {
    let execution_id: Arc<str> = Arc::from(execution.id.as_str());
    let mut spec = match spec {
        Some(spec) => *spec,
        None => {
            let (store, execution) = (fleet.inner.store.clone(), execution.clone());
            crate::store::blocking(move || {
                crate::scripts::job_spec_with_secrets(&store, &execution)
            })
            .await?
        }
    };
    let needed = spec.kind.min_protocol();
    if needed > conn.protocol {
        // An older agent would reject a kind it does not know, or worse, misread it:
        // the job fails here, saying what to do.
        let summary = format!(
            "the agent speaks fleet protocol {}, this kind of job needs protocol {needed}: \
             upgrade the agent (Agents page, Upgrade)",
            conn.protocol
        );
        let (store, id) = (fleet.inner.store.clone(), execution.id.clone());
        let ended = crate::store::blocking(move || {
            store.write(|w| executions::finish(w, &id, Status::Failed, None, &summary, Utc::now()))
        })
        .await?;
        if ended {
            fleet.publish_end(&execution.id, &execution.project_id, "failed");
        }
        return Ok(());
    }
    let (mut send, mut recv) = conn
        .connection
        .open_bi()
        .await
        .context("opening a job stream")?;
    // The stream is opened first: with the agent's streams all taken by running jobs
    // that waits for one to end, and must not hold a place meanwhile.
    let pacing = lock(&fleet.inner.starts).clone();
    let mut place = pacing.places.clone().acquire_owned().await.ok();
    // A job the agent reported started is only resumed: a copy of the agent that did
    // not start it must not start it again.
    spec.resume_only = execution.status == Status::Running;
    spec.max_output_bytes = Some(fleet.inner.max_output);
    write_frame(&mut send, &ToAgent::Start(Box::new(spec))).await?;
    if execution.cancel_requested {
        write_frame(&mut send, &ToAgent::Cancel).await?;
    }

    // Frames from the agent are read on their own task so a half-read frame is never
    // dropped by the select below.
    let (frames_tx, mut frames) = mpsc::channel::<Result<FromAgent, String>>(JOB_FRAMES_AHEAD);
    let reader = tokio::spawn(async move {
        loop {
            let read = read_frame::<FromAgent, _>(&mut recv);
            let frame = match place.take() {
                Some(place) => holding(read, place, pacing.answer_wait).await,
                None => read.await,
            };
            let stop = !matches!(frame, Ok(Some(_)));
            let message = match frame {
                Ok(Some(m)) => Ok(m),
                Ok(None) => Err("the agent closed the job stream".to_string()),
                Err(e) => Err(e.to_string()),
            };
            if frames_tx.send(message).await.is_err() || stop {
                break;
            }
        }
    });
    let result = job_loop(
        fleet,
        conn,
        &execution_id,
        &mut send,
        &mut frames,
        &mut commands,
    )
    .await;
    reader.abort();
    result
}

/// Output of one job (KiB) queued for the store and not yet applied. A job printing
/// faster than the store takes it used to queue everything it sent (9 MB in a tenth of
/// a second, up to the ingestion queue's 16,384 chunks) in the control plane's memory,
/// and every viewer waited behind that backlog; with a budget of two ingestion batches
/// (one being committed, the next filling) the backlog stays in the agent's spool and
/// a line reaches viewers about as soon as the agent can send it. 512 KiB.
const JOB_OUTPUT_BUDGET_KIB: u32 = (2 * super::ingest::MAX_BATCH_BYTES / 1024) as u32;

/// Frames read ahead of the job loop on a job stream.
const JOB_FRAMES_AHEAD: usize = 4;

/// A job stream ends with this when the store failed to keep some of its output or
/// its end: nothing past what was stored is acknowledged, and the job is sent again
/// (`start_driver`), so the agent resends it from its spool on a new stream.
#[derive(Debug, thiserror::Error)]
#[error("the store failed to keep the job's output: the job stream is opened again")]
struct OutputNotStored;

async fn job_loop(
    fleet: &Fleet,
    conn: &AgentConn,
    execution_id: &Arc<str>,
    send: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<Result<FromAgent, String>>,
    commands: &mut mpsc::UnboundedReceiver<JobCommand>,
) -> Result<()> {
    let ingest = &fleet.inner.ingest;
    let budget = Arc::new(tokio::sync::Semaphore::new(JOB_OUTPUT_BUDGET_KIB as usize));
    let (acked_tx, mut acked_rx) = watch::channel(super::ingest::Acked::default());
    let mut next_seq: Option<u64> = None;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => bail!("{e}"),
                    None => return Ok(()),
                };
                match frame {
                    FromAgent::Started { resumed } => {
                        tracing::debug!(execution = %execution_id, resumed, "job started");
                        let holder = JobHolder {
                            id: execution_id.to_string(),
                            agent_id: conn.agent_id.clone(),
                            host_id: conn.host_id.clone(),
                            instance_id: conn.instance_id.clone(),
                            since: Utc::now(),
                        };
                        let holder = (!holder.host_id.is_empty()).then_some(holder);
                        let driver = lock(&conn.jobs).get(execution_id.as_ref()).cloned();
                        ingest.send(Item::Started { execution_id: execution_id.clone(), holder, driver }).await;
                    }
                    FromAgent::Rejected { reason, not_started_here: true } => {
                        // Another copy of the agent runs the job; it stays running
                        // until that copy reports it.
                        tracing::warn!(
                            agent = %conn.agent_id,
                            execution = %execution_id,
                            "the agent did not start this job, so it is left to the copy that did: {reason}"
                        );
                        return Ok(());
                    }
                    FromAgent::Rejected { reason, .. } => {
                        let (done_tx, done_rx) = oneshot::channel();
                        ingest.send(Item::End {
                            execution_id: execution_id.clone(),
                            status: Status::Failed,
                            exit_code: None,
                            summary: format!("the agent refused the job: {reason}"),
                            facts: None,
                            acked: None,
                            done: Some(done_tx),
                        }).await;
                        let _ = done_rx.await;
                        return Ok(());
                    }
                    FromAgent::Output(chunk) => {
                        if next_seq.is_some_and(|n| chunk.seq > n) {
                            bail!("the agent skipped output chunks (got {} after {:?})", chunk.seq, next_seq);
                        }
                        next_seq = Some(chunk.seq + 1);
                        // Wait while the job's output already queued for the store
                        // fills its budget: QUIC's flow control then holds the agent
                        // back, and the rest waits in its spool on disk.
                        let share = u32::try_from(chunk.data.len().div_ceil(1024))
                            .unwrap_or(u32::MAX)
                            .clamp(1, JOB_OUTPUT_BUDGET_KIB);
                        let budget = budget.clone().acquire_many_owned(share).await.ok();
                        ingest.send(Item::Chunk { execution_id: execution_id.clone(), chunk, acked: acked_tx.clone(), budget }).await;
                    }
                    FromAgent::End(end) => {
                        let (done_tx, done_rx) = oneshot::channel();
                        ingest.send(Item::End {
                            execution_id: execution_id.clone(),
                            status: end.status.into(),
                            exit_code: end.exit_code,
                            summary: end.summary,
                            facts: end.facts,
                            acked: Some(acked_tx.clone()),
                            done: Some(done_tx),
                        }).await;
                        if done_rx.await == Ok(true) {
                            write_frame(send, &ToAgent::EndAck).await?;
                            let _ = send.finish();
                            return Ok(());
                        }
                        // Not stored: the agent keeps the job and its spool, and a new
                        // stream has it send the end (and what was lost) again.
                        return Err(OutputNotStored.into());
                    }
                    FromAgent::TerminalOpened { .. }
                    | FromAgent::TerminalOutput { .. }
                    | FromAgent::TerminalClosed { .. } => {
                        bail!("the agent sent a terminal message on a job stream");
                    }
                    FromAgent::UpgradeAccepted
                    | FromAgent::UpgradeStaged { .. }
                    | FromAgent::UpgradeRestarting
                    | FromAgent::UpgradeFailed { .. } => {
                        bail!("the agent sent an upgrade message on a job stream");
                    }
                }
            }
            changed = acked_rx.changed() => {
                if changed.is_ok() {
                    let acked = *acked_rx.borrow_and_update();
                    if acked.failed {
                        return Err(OutputNotStored.into());
                    }
                    if let Some(up_to_seq) = acked.up_to {
                        write_frame(send, &ToAgent::Ack { up_to_seq }).await?;
                    }
                }
            }
            Some(command) = commands.recv() => match command {
                JobCommand::Cancel => write_frame(send, &ToAgent::Cancel).await?,
            },
        }
    }
}
