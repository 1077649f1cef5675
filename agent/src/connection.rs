//! The agent's side of the fleet protocol: enrolling once, then one QUIC connection to
//! the control plane kept up forever (exponential backoff with jitter between
//! attempts), a control stream for hello and heartbeats, and one stream per job.
//!
//! **Invariant:** the agent only ever dials out; it never listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    AgentControl, EnrollRequest, EnrollResponse, FromAgent, ServerControl, ToAgent,
    FLEET_SERVER_NAME, PROTOCOL_VERSION,
};
use dynserv_shared::{pki, token::EnrollmentToken};
use quinn::crypto::rustls::QuicClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backoff::{self, Backoff};
use crate::facts;
use crate::jobs::{Jobs, StartOutcome};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dynserv-agent";

/// What `agent.json` in the state directory holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The id the control plane gave this agent.
    pub agent_id: String,
    /// `HOST:PORT` of the control plane's fleet gateway.
    pub server: String,
    /// The agent's name.
    pub name: String,
}

/// Who this agent process is on the wire besides its certificate: the machine it runs
/// on and the process itself (see [`facts::host_id`] and [`facts::instance_id`]). A
/// copy of the state directory shares the certificate, never these.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The machine's id.
    pub host_id: String,
    /// This process's random id.
    pub instance_id: String,
}

impl Instance {
    /// This machine and a fresh instance id.
    pub fn current() -> Instance {
        Instance {
            host_id: facts::host_id(),
            instance_id: facts::instance_id(),
        }
    }
}

/// The control plane refused the hello (or dropped the agent later); `retry_after` is
/// how long it asked the agent to stay away.
#[derive(Debug, thiserror::Error)]
#[error("the control plane refused this agent: {reason}")]
pub struct Refused {
    /// The control plane's words.
    pub reason: String,
    /// How long to wait before the next attempt, when the control plane said.
    pub retry_after: Option<Duration>,
}

impl Refused {
    fn new(reason: String, retry_after_s: Option<u64>) -> Refused {
        Refused {
            reason,
            retry_after: retry_after_s.map(Duration::from_secs),
        }
    }
}

/// The agent's enrolled identity, loaded from its state directory.
pub struct Identity {
    /// `agent.json`.
    pub info: AgentInfo,
    client_config: quinn::ClientConfig,
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(4)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(12)
            .try_into()
            .expect("12 s is a valid idle timeout"),
    ));
    Arc::new(transport)
}

fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let quic = QuicClientConfig::try_from(tls).context("building the QUIC client configuration")?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

async fn resolve(server: &str) -> Result<SocketAddr> {
    let with_port = if server.parse::<SocketAddr>().is_ok()
        || server
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        server.to_string()
    } else {
        format!("{server}:{}", dynserv_shared::proto::DEFAULT_PORT)
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .with_context(|| format!("resolving {with_port}"))?;
    addrs
        .next()
        .with_context(|| format!("{with_port} has no address"))
}

async fn connect(
    server: &str,
    config: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let addr = resolve(server).await?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    let connecting = endpoint.connect_with(config, addr, FLEET_SERVER_NAME)?;
    let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .with_context(|| format!("no answer from {server} within 10 s"))?
        .with_context(|| format!("connecting to {server}"))?;
    Ok((endpoint, connection))
}

/// Enrolls this machine: proves the token's secret to the control plane at `server`
/// (which must present the CA pinned by the token), and stores the key, the issued
/// certificate and the CA in `state_dir` with mode 0600. Returns the agent id.
pub async fn enroll(
    server: &str,
    token: &str,
    state_dir: &Path,
    name: Option<&str>,
) -> Result<String> {
    let token = EnrollmentToken::parse(token)?;
    if state_dir.join("agent.pem").exists() {
        bail!(
            "{} already holds an enrolled agent; remove it to enroll again",
            state_dir.display()
        );
    }
    crate::private_fs::create_dir(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let key = pki::generate_agent_key()?;
    let facts = facts::collect();
    let name = name
        .map(String::from)
        .unwrap_or_else(|| facts.hostname.clone());
    let config = quic_client_config(pki::enroll_client_config(token.ca_sha256)?)?;
    let (endpoint, connection) = connect(server, config).await?;
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .context("opening the enrollment stream")?;
    let request = EnrollRequest {
        protocol: PROTOCOL_VERSION,
        secret: token.secret.clone(),
        name: name.clone(),
        public_key: pki::public_key_text(&key),
        facts,
        host_id: facts::host_id(),
    };
    write_frame(&mut send, &request)
        .await
        .context("sending the enrollment request")?;
    let _ = send.finish();
    let response: EnrollResponse =
        tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv))
            .await
            .context("the control plane did not answer the enrollment request")?
            .context("reading the enrollment answer")?
            .context("the control plane closed the enrollment stream without an answer")?;
    connection.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    match response {
        EnrollResponse::Refused { reason } => bail!("enrollment refused: {reason}"),
        EnrollResponse::Enrolled {
            agent_id,
            certificate_pem,
            ca_pem,
        } => {
            let ca = pki::certs_from_pem(&ca_pem)?;
            if pki::sha256(&ca[0]) != token.ca_sha256 {
                bail!("the control plane sent a CA that does not match the token's fingerprint");
            }
            write_private(&state_dir.join("agent.key"), key.serialize_pem().as_bytes())?;
            write_private(&state_dir.join("ca.pem"), ca_pem.as_bytes())?;
            let info = AgentInfo {
                agent_id: agent_id.clone(),
                server: server.to_string(),
                name,
            };
            write_private(
                &state_dir.join("agent.json"),
                &serde_json::to_vec_pretty(&info)?,
            )?;
            // The certificate goes last: its presence is what marks the state
            // directory as enrolled.
            write_private(&state_dir.join("agent.pem"), certificate_pem.as_bytes())?;
            Ok(agent_id)
        }
    }
}

/// Loads the identity written by [`enroll`].
pub fn load_identity(state_dir: &Path) -> Result<Identity> {
    let read = |name: &str| -> Result<String> {
        let path = state_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (has this machine been enrolled? run `dynserv-agent enroll` first)",
                path.display()
            )
        })
    };
    let info: AgentInfo =
        serde_json::from_str(&read("agent.json")?).context("parsing agent.json")?;
    let tls = pki::agent_client_config(&read("ca.pem")?, &read("agent.pem")?, &read("agent.key")?)?;
    Ok(Identity {
        info,
        client_config: quic_client_config(tls)?,
    })
}

/// Connects and serves jobs until `shutdown` resolves; reconnects forever.
pub async fn run(
    state_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let identity = load_identity(&state_dir)?;
    let instance = Instance::current();
    let jobs = Jobs::open(&state_dir, &instance.host_id)?;
    tracing::info!(
        agent = %identity.info.agent_id,
        server = %identity.info.server,
        host_id = %instance.host_id,
        instance = %instance.instance_id,
        "dynserv-agent running"
    );
    let forever = async {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        loop {
            let mut welcomed = false;
            let mut asked_to_wait = None;
            match session(&identity, &instance, &jobs, &mut welcomed).await {
                Ok(()) => tracing::info!("connection to the control plane closed"),
                Err(e) => {
                    asked_to_wait = e.downcast_ref::<Refused>().and_then(|r| r.retry_after);
                    tracing::warn!("connection to the control plane: {e:#}");
                }
            }
            if welcomed {
                backoff.reset();
            }
            // A refusal that will last (another copy holds this agent's identity) is
            // not retried at the usual pace: the control plane says how long to wait.
            let delay = match asked_to_wait {
                Some(after) => backoff::retry_after(after, rand::random::<f64>()),
                None => backoff.next_delay(rand::random::<f64>()),
            };
            tracing::info!("reconnecting in {} ms", delay.as_millis());
            tokio::time::sleep(delay).await;
        }
    };
    tokio::select! {
        _ = forever => Ok(()),
        _ = shutdown => Ok(()),
    }
}

async fn session(
    identity: &Identity,
    instance: &Instance,
    jobs: &Jobs,
    welcomed: &mut bool,
) -> Result<()> {
    let (_endpoint, connection) =
        connect(&identity.info.server, identity.client_config.clone()).await?;
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .context("opening the control stream")?;
    let hello = AgentControl::Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: identity.info.agent_id.clone(),
        facts: facts::collect(),
        host_id: instance.host_id.clone(),
        instance_id: instance.instance_id.clone(),
    };
    write_frame(&mut send, &hello).await?;
    let heartbeat_s = match tokio::time::timeout(
        Duration::from_secs(15),
        read_frame::<ServerControl, _>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(ServerControl::Welcome { heartbeat_s, .. }))) => heartbeat_s.clamp(1, 60),
        Ok(Ok(Some(ServerControl::Refused {
            reason,
            retry_after_s,
        }))) => return Err(Refused::new(reason, retry_after_s).into()),
        Ok(Ok(_)) => bail!("the control plane answered the hello with something else"),
        Ok(Err(e)) => return Err(e).context("reading the answer to the hello"),
        Err(_) => bail!("no answer to the hello within 15 s"),
    };
    *welcomed = true;
    tracing::info!("connected to the control plane");
    let heartbeats = async {
        let mut tick = tokio::time::interval(Duration::from_secs(heartbeat_s));
        tick.tick().await;
        loop {
            tick.tick().await;
            write_frame(
                &mut send,
                &AgentControl::Heartbeat(facts::load(jobs.running())),
            )
            .await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let control_reader = async {
        loop {
            match read_frame::<ServerControl, _>(&mut recv).await? {
                Some(ServerControl::Refused {
                    reason,
                    retry_after_s,
                }) => return Err(Refused::new(reason, retry_after_s).into()),
                Some(_) => {}
                None => return Ok(()),
            }
        }
    };
    let job_streams = async {
        loop {
            let (send, recv) = connection.accept_bi().await?;
            tokio::spawn(serve_job_stream(jobs.clone(), send, recv));
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = heartbeats => r,
        r = control_reader => r,
        r = job_streams => r,
    }
}

/// Serves one job stream: starts or resumes the job, sends every unacknowledged chunk
/// and then new ones as they are spooled, then the end; records acks and cancels.
async fn serve_job_stream(jobs: Jobs, mut send: quinn::SendStream, recv: quinn::RecvStream) {
    if let Err(e) = serve_job_stream_inner(&jobs, &mut send, recv).await {
        tracing::debug!("job stream ended: {e:#}");
    }
}

async fn serve_job_stream_inner(
    jobs: &Jobs,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let spec = match read_frame::<ToAgent, _>(&mut recv).await? {
        Some(ToAgent::Start(spec)) => spec,
        _ => bail!("a job stream must begin with a start"),
    };
    let (job, resumed) = match jobs.start_or_resume(&spec) {
        Ok(StartOutcome::Started(job)) => (job, false),
        Ok(StartOutcome::Resumed(job)) => (job, true),
        Ok(StartOutcome::AlreadyDone) => {
            let reason = "this agent already ran that job and delivered its end".to_string();
            write_frame(
                send,
                &FromAgent::Rejected {
                    reason,
                    not_started_here: false,
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
        Ok(StartOutcome::NotStartedHere(reason)) => {
            tracing::warn!(job = %spec.job_id, "not resuming a job: {reason}");
            write_frame(
                send,
                &FromAgent::Rejected {
                    reason,
                    not_started_here: true,
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
        Err(e) => {
            write_frame(
                send,
                &FromAgent::Rejected {
                    reason: format!("{e:#}"),
                    not_started_here: false,
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    write_frame(send, &FromAgent::Started { resumed }).await?;

    // Frames from the control plane arrive on their own task, so that reading never
    // races with writing (a half-read frame is never dropped).
    let (tx, mut rx) = mpsc::channel::<ToAgent>(64);
    let reader = tokio::spawn(async move {
        loop {
            match read_frame::<ToAgent, _>(&mut recv).await {
                Ok(Some(msg)) => {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("bad frame from the control plane: {e}");
                    break;
                }
            }
        }
    });
    let result = pump_job(jobs, &job, send, &mut rx).await;
    reader.abort();
    result
}

async fn pump_job(
    jobs: &Jobs,
    job: &Arc<crate::jobs::Job>,
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<ToAgent>,
) -> Result<()> {
    let mut changes = job.subscribe();
    let mut next = job.first_unacked();
    let mut end_sent = false;
    loop {
        changes.borrow_and_update();
        let available = job.chunks();
        while next < available {
            let chunk = job.read_chunk(next)?;
            write_frame(send, &FromAgent::Output(chunk)).await?;
            next += 1;
            // Acks and cancels keep flowing during a long backlog.
            while let Ok(msg) = rx.try_recv() {
                if handle_control(jobs, job, msg)? {
                    return Ok(());
                }
            }
        }
        if !end_sent {
            if let Some(end) = job.end() {
                if next >= end.chunks {
                    write_frame(send, &FromAgent::End(end)).await?;
                    end_sent = true;
                }
            }
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    if handle_control(jobs, job, msg)? {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies one message from the control plane; true when the stream is done.
fn handle_control(jobs: &Jobs, job: &crate::jobs::Job, msg: ToAgent) -> Result<bool> {
    match msg {
        ToAgent::Ack { up_to_seq } => job.ack(up_to_seq)?,
        ToAgent::Cancel => job.cancel(),
        ToAgent::EndAck => {
            jobs.forget(&job.id);
            return Ok(true);
        }
        ToAgent::Start(_) => {}
    }
    Ok(false)
}
