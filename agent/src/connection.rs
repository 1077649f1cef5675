//! The agent's side of the fleet protocol: enrolling once, then one QUIC connection to
//! the control plane kept up forever (exponential backoff with jitter between
//! attempts), a control stream for hello and heartbeats, and one stream per job.
//!
//! The control plane may run as several replicas: the agent keeps their addresses in
//! `agent.json` (those given at enrollment and those the control plane announced last)
//! and tries them in order ([`crate::servers`]), the one whose connection it lost last
//! at the end, with a short handshake timeout per address so a dead replica costs
//! seconds. Each welcome may carry the current replica list, which replaces the
//! announced one.
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
use crate::servers;
use crate::terminal::Terminals;
use crate::upgrade::{self, Upgrader};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dynserv-agent";

/// How long the QUIC handshake with one control-plane address may take when the agent
/// knows several: short, so that a dead replica delays the next one by seconds only.
pub const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the QUIC handshake may take when the agent knows a single address (there
/// is nothing to fail over to, so a slow link is given more time).
pub const SINGLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The handshake timeout per address for a list of `count` addresses.
fn connect_timeout(count: usize) -> Duration {
    if count > 1 {
        FAILOVER_CONNECT_TIMEOUT
    } else {
        SINGLE_CONNECT_TIMEOUT
    }
}

/// What `agent.json` in the state directory holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The id the control plane gave this agent.
    pub agent_id: String,
    /// `HOST:PORT` the agent tries first (the first of [`AgentInfo::addresses`]), kept
    /// so that an older agent, which reads only this field, can still use the file.
    #[serde(default)]
    pub server: String,
    /// `HOST:PORT` of the control plane's fleet gateways as given at enrollment
    /// (`--server`), in that order. Absent from state directories written by older
    /// agents, which hold `server` alone; [`load_identity`] then makes it the
    /// one-address list.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The replica addresses the control plane announced last (see
    /// [`servers::take_announced`]), tried before `servers`; each announcement that
    /// differs replaces them. Empty until a control plane announced any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced: Vec<String>,
    /// The agent's name.
    pub name: String,
}

impl AgentInfo {
    /// The addresses to try, in order: the announced ones, then the enrolled ones.
    pub fn addresses(&self) -> Vec<String> {
        servers::combined(&self.announced, &self.servers)
    }

    /// Replaces the announced addresses and keeps `server` the first address to try.
    fn set_announced(&mut self, announced: Vec<String>) {
        self.announced = announced;
        self.server = self.addresses().first().cloned().unwrap_or_default();
    }
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

/// Writes `contents` to `path` through a temporary file renamed over it, mode 0600.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
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
    // A control plane that vanishes (killed, its machine gone) is given up after
    // 6 s of silence, so the agent fails over to another replica within seconds.
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(6)
            .try_into()
            .expect("6 s is a valid idle timeout"),
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
    timeout: Duration,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let addr = resolve(server).await?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    let connecting = endpoint
        .connect_with(config, addr, FLEET_SERVER_NAME)
        .with_context(|| format!("connecting to {server}"))?;
    let connection = tokio::time::timeout(timeout, connecting)
        .await
        .with_context(|| format!("no answer from {server} within {} s", timeout.as_secs()))?
        .with_context(|| format!("connecting to {server}"))?;
    Ok((endpoint, connection))
}

/// A QUIC connection to the first of `servers` (in this order) that answers, and that
/// address. Fails naming every address's failure when none answers.
async fn connect_first(
    servers: &[String],
    config: &quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection, String)> {
    let timeout = connect_timeout(servers.len());
    let mut failures = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        match connect(server, config.clone(), timeout).await {
            Ok((endpoint, connection)) => return Ok((endpoint, connection, server.clone())),
            Err(e) => {
                if let Some(next) = servers.get(index + 1) {
                    tracing::info!("no control plane at {server} ({e:#}); trying {next}");
                }
                failures.push(format!("{e:#}"));
            }
        }
    }
    if failures.is_empty() {
        bail!("no control-plane address is known");
    }
    bail!("no control plane answered: {}", failures.join("; "))
}

/// Writes `agent.json` (a temp file renamed over it, mode 0600), off the async thread.
/// Replaces `agent.pem` with a renewed certificate (atomically, mode 0600), after
/// checking that it certifies this agent's own key and that a CA the agent trusts
/// signed it: the CA bundle sent with it when there is one (a CA rotation), else the
/// agent's `ca.pem`. A bundle is stored as `ca.pem` first, so the agent trusts the
/// new CA before it presents a certificate of it, and keeps trusting the old one, which
/// still signs the control plane's server certificate until it is retired. Returns the
/// certificate's SHA-256 (hex).
async fn store_renewed_certificate(
    state_dir: &Path,
    certificate_pem: &str,
    bundle: Option<&str>,
) -> Result<String> {
    let state_dir = state_dir.to_path_buf();
    let certificate_pem = certificate_pem.to_string();
    let bundle = bundle.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let ca_path = state_dir.join("ca.pem");
        let kept = std::fs::read_to_string(&ca_path)?;
        let ca_pem = bundle.clone().unwrap_or_else(|| kept.clone());
        let key_pem = std::fs::read_to_string(state_dir.join("agent.key"))?;
        let der = pki::certs_from_pem(&certificate_pem)?;
        let first = der.first().context("the renewed certificate is empty")?;
        let ours = pki::AgentPublicKey::parse(&pki::public_key_text(
            &rcgen::KeyPair::from_pem(&key_pem).context("reading agent.key")?,
        ))?;
        if pki::AgentPublicKey::from_certificate(first)?.text() != ours.text() {
            bail!("the renewed certificate is not for this agent's key");
        }
        pki::verify_agent_cert(&ca_pem, first)
            .context("the renewed certificate is not signed by a CA this agent trusts")?;
        pki::agent_client_config(&ca_pem, &certificate_pem, &key_pem)?;
        if let Some(bundle) = bundle.filter(|b| b.trim() != kept.trim()) {
            write_private(&ca_path, bundle.as_bytes())?;
            tracing::info!(
                cas = pki::certs_from_pem(&bundle).map(|c| c.len()).unwrap_or(0),
                "stored the control plane's CA bundle"
            );
        }
        write_private(&state_dir.join("agent.pem"), certificate_pem.as_bytes())?;
        Ok(hex::encode(pki::sha256(first)))
    })
    .await
    .context("storing the certificate")?
}

/// Keeps the CA bundle a welcome carried as `ca.pem` when it differs from the one kept
/// (a CA was added by a rotation or retired since) and the agent's own certificate
/// verifies against it, so the agent never strands itself with a bundle that leaves
/// out its certificate's CA. The connection is mutually authenticated with the CAs the
/// agent trusted already, so this is the control plane it trusts. Failures are logged:
/// the kept bundle stays.
async fn learn_ca_bundle(state_dir: &Path, bundle: &str) {
    if bundle.trim().is_empty() {
        return;
    }
    let state_dir = state_dir.to_path_buf();
    let bundle = bundle.to_string();
    let learned = tokio::task::spawn_blocking(move || -> Result<Option<usize>> {
        let ca_path = state_dir.join("ca.pem");
        let kept = std::fs::read_to_string(&ca_path).context("reading ca.pem")?;
        if kept.trim() == bundle.trim() {
            return Ok(None);
        }
        let cas = pki::certs_from_pem(&bundle)?.len();
        let certificate_pem =
            std::fs::read_to_string(state_dir.join("agent.pem")).context("reading agent.pem")?;
        let certificate = pki::certs_from_pem(&certificate_pem)?.remove(0);
        pki::verify_agent_cert(&bundle, &certificate)
            .context("this agent's certificate does not verify against the announced CAs")?;
        write_private(&ca_path, bundle.as_bytes())?;
        Ok(Some(cas))
    })
    .await;
    match learned {
        Ok(Ok(Some(cas))) => tracing::info!(cas, "stored the control plane's CA bundle"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!("keeping the CA bundle: {e:#}"),
        Err(e) => tracing::warn!("keeping the CA bundle: {e}"),
    }
}

/// Keeps the control plane's signing key a welcome carried when the agent has none yet
/// (agents enrolled before signing keys existed): the connection is mutually
/// authenticated, its server certificate checked against the CA pinned at enrollment,
/// so this is the control plane the agent trusts already. A key once kept is never
/// replaced by a welcome.
async fn learn_signing_key(state_dir: &Path, signing_key: &str) {
    if signing_key.is_empty() {
        return;
    }
    let path = state_dir.join(upgrade::SIGNING_KEY_FILE);
    let key = signing_key.to_string();
    let learned = tokio::task::spawn_blocking(move || -> Result<bool> {
        match std::fs::read_to_string(&path) {
            Ok(kept) => {
                if kept.trim() != key.trim() {
                    tracing::warn!(
                        "the control plane announced another signing key than the one this agent \
                         keeps; keeping the old one (upgrades signed with the new key are refused)"
                    );
                }
                Ok(false)
            }
            Err(_) => {
                write_private(&path, key.as_bytes())?;
                Ok(true)
            }
        }
    })
    .await;
    match learned {
        Ok(Ok(true)) => tracing::info!("learned the control plane's signing key for upgrades"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!("storing the control plane's signing key: {e:#}"),
        Err(e) => tracing::warn!("storing the control plane's signing key: {e}"),
    }
}

async fn store_info(state_dir: &Path, info: &AgentInfo) -> Result<()> {
    let path = state_dir.join("agent.json");
    let contents = serde_json::to_vec_pretty(info)?;
    tokio::task::spawn_blocking(move || write_private(&path, &contents))
        .await
        .context("writing agent.json")?
}

/// Enrolls this machine: proves the token's secret to the first control plane of
/// `servers` that answers (which must present the CA pinned by the token), and stores
/// the key, the issued certificate, the CA and the address list in `state_dir` with
/// mode 0600. Returns the agent id.
pub async fn enroll(
    servers: &[String],
    token: &str,
    state_dir: &Path,
    name: Option<&str>,
) -> Result<String> {
    let token = EnrollmentToken::parse(token)?;
    if servers.is_empty() {
        bail!("no control-plane address given");
    }
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
    let (endpoint, connection, server) = connect_first(servers, &config).await?;
    tracing::info!("enrolling with the control plane at {server}");
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
            signing_key,
        } => {
            let ca = pki::certs_from_pem(&ca_pem)?;
            if !ca.iter().any(|c| pki::sha256(c) == token.ca_sha256) {
                bail!("the control plane sent a CA that does not match the token's fingerprint");
            }
            write_private(&state_dir.join("agent.key"), key.serialize_pem().as_bytes())?;
            write_private(&state_dir.join("ca.pem"), ca_pem.as_bytes())?;
            if !signing_key.is_empty() {
                write_private(
                    &state_dir.join(upgrade::SIGNING_KEY_FILE),
                    signing_key.as_bytes(),
                )?;
            }
            let info = AgentInfo {
                agent_id: agent_id.clone(),
                server: servers[0].clone(),
                servers: servers.to_vec(),
                announced: Vec::new(),
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

/// Parses `agent.json`; a file from an agent that predates address lists (only
/// `server`) gives the one-address list.
fn parse_info(text: &str) -> Result<AgentInfo> {
    let mut info: AgentInfo = serde_json::from_str(text).context("parsing agent.json")?;
    if info.servers.is_empty() {
        if info.server.is_empty() {
            bail!("agent.json names no control-plane address; enroll again");
        }
        info.servers = vec![info.server.clone()];
    }
    Ok(info)
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
    let info = parse_info(&read("agent.json")?)
        .with_context(|| format!("reading {}", state_dir.join("agent.json").display()))?;
    let tls = pki::agent_client_config(&read("ca.pem")?, &read("agent.pem")?, &read("agent.key")?)?;
    Ok(Identity {
        info,
        client_config: quic_client_config(tls)?,
    })
}

/// Why [`run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` resolved.
    Shutdown,
    /// The agent must restart into this binary: an upgrade replaced it, or rolled it
    /// back (see [`crate::upgrade`]).
    Restart(PathBuf),
}

/// Connects and serves jobs until `shutdown` resolves or an upgrade asks for a restart;
/// reconnects forever, failing over between the control plane's addresses.
pub async fn run(
    state_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Ended> {
    let identity = load_identity(&state_dir)?;
    let instance = Instance::current();
    let jobs = Jobs::open(&state_dir, &instance.host_id)?;
    let terminals = Terminals::from_env();
    let binary = upgrade::own_binary()?;
    let upgrader = Upgrader::open(
        &state_dir,
        binary.clone(),
        crate::version::version(),
        jobs.clone(),
    );
    tracing::info!(
        agent = %identity.info.agent_id,
        servers = %identity.info.addresses().join(","),
        host_id = %instance.host_id,
        instance = %instance.instance_id,
        "dynserv-agent running"
    );
    let forever = async {
        let mut info = identity.info.clone();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        // The address whose connection ended last: tried after the others next time.
        let mut lost_last: Option<String> = None;
        loop {
            let mut welcomed = false;
            let mut asked_to_wait = None;
            let addresses = info.addresses();
            let lost_index = lost_last
                .as_deref()
                .and_then(|lost| addresses.iter().position(|s| s == lost));
            let order: Vec<String> = servers::attempt_order(&addresses, lost_index)
                .into_iter()
                .map(String::from)
                .collect();
            // Read again each time: a renewal may have replaced the certificate.
            let client_config = match load_identity(&state_dir) {
                Ok(fresh) => fresh.client_config,
                Err(e) => {
                    tracing::warn!("reloading the certificate: {e:#}");
                    identity.client_config.clone()
                }
            };
            match connect_first(&order, &client_config).await {
                Ok((_endpoint, connection, server)) => {
                    let place = Place {
                        state_dir: &state_dir,
                        server: &server,
                        terminals: &terminals,
                        upgrader: &upgrader,
                    };
                    let ended = session(
                        &identity,
                        &instance,
                        &jobs,
                        place,
                        &mut info,
                        connection,
                        &mut welcomed,
                    )
                    .await;
                    match ended {
                        Ok(()) => {
                            tracing::info!("connection to the control plane at {server} closed")
                        }
                        Err(e) => {
                            asked_to_wait = e.downcast_ref::<Refused>().and_then(|r| r.retry_after);
                            tracing::warn!("connection to the control plane at {server}: {e:#}");
                        }
                    }
                    lost_last = Some(server);
                }
                Err(e) => tracing::warn!("{e:#}"),
            }
            // After a connection that worked, the first delay is short (well under a
            // second, jittered so a fleet that lost one replica does not reach the
            // next all in the same instant) and the others are tried first.
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
        _ = forever => Ok(Ended::Shutdown),
        _ = shutdown => Ok(Ended::Shutdown),
        _ = upgrader.restart_requested() => Ok(Ended::Restart(binary)),
        _ = upgrader.trial_failed() => Ok(Ended::Restart(binary)),
    }
}

/// Where a session runs: the state directory (for `agent.json`), the address the
/// connection was made to and the agent's terminals.
#[derive(Clone, Copy)]
struct Place<'a> {
    state_dir: &'a Path,
    server: &'a str,
    /// The terminals running on this agent, counted against its limit.
    terminals: &'a Terminals,
    /// Upgrades of the agent's binary.
    upgrader: &'a Upgrader,
}

/// Takes in the replica list a welcome announced (see [`servers::take_announced`])
/// when it differs from the one `info` holds, storing it in `agent.json`.
async fn take_announced(
    place: Place<'_>,
    info: &mut AgentInfo,
    announced: &[String],
    remote: std::net::IpAddr,
) {
    let Some(announced) = servers::take_announced(announced, place.server, remote) else {
        return;
    };
    if announced == info.announced {
        return;
    }
    tracing::info!(
        "the control plane announced its addresses: {} (were {})",
        announced.join(","),
        info.announced.join(",")
    );
    info.set_announced(announced);
    // Used from now on even when it cannot be stored: the control plane said so.
    if let Err(e) = store_info(place.state_dir, info).await {
        tracing::warn!("storing the control plane's addresses: {e:#}");
    }
}

async fn session(
    identity: &Identity,
    instance: &Instance,
    jobs: &Jobs,
    place: Place<'_>,
    info: &mut AgentInfo,
    connection: quinn::Connection,
    welcomed: &mut bool,
) -> Result<()> {
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
    let (heartbeat_s, announced, signing_key, ca_pem) = match tokio::time::timeout(
        Duration::from_secs(15),
        read_frame::<ServerControl, _>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(ServerControl::Welcome {
            heartbeat_s,
            servers,
            signing_key,
            ca_pem,
            ..
        }))) => (heartbeat_s.clamp(1, 60), servers, signing_key, ca_pem),
        Ok(Ok(Some(ServerControl::Refused {
            reason,
            retry_after_s,
        }))) => return Err(Refused::new(reason, retry_after_s).into()),
        Ok(Ok(_)) => bail!("the control plane answered the hello with something else"),
        Ok(Err(e)) => return Err(e).context("reading the answer to the hello"),
        Err(_) => bail!("no answer to the hello within 15 s"),
    };
    *welcomed = true;
    place.upgrader.welcomed();
    tracing::info!("connected to the control plane at {}", place.server);
    take_announced(place, info, &announced, connection.remote_address().ip()).await;
    learn_signing_key(place.state_dir, &signing_key).await;
    learn_ca_bundle(place.state_dir, &ca_pem).await;
    if let Some(outcome) = place.upgrader.pending_report() {
        write_frame(&mut send, &outcome.message()).await?;
        tracing::info!(upgrade = %outcome.upgrade_id, error = ?outcome.error, "reported how the upgrade ended");
        place.upgrader.reported(&outcome);
    }
    // Heartbeats and answers to the control plane share the control stream.
    let send = tokio::sync::Mutex::new(send);
    let heartbeats = async {
        let mut tick = tokio::time::interval(Duration::from_secs(heartbeat_s));
        tick.tick().await;
        // A first reading, so the first heartbeat already carries CPU use.
        let mut cpu = facts::CpuSampler::default();
        cpu.sample();
        loop {
            tick.tick().await;
            let heartbeat = AgentControl::Heartbeat(facts::load(jobs.running(), &mut cpu));
            write_frame(&mut *send.lock().await, &heartbeat).await?;
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
                Some(ServerControl::Certificate {
                    certificate_pem,
                    expires_at,
                    ca_pem,
                }) => {
                    let sha256 = store_renewed_certificate(
                        place.state_dir,
                        &certificate_pem,
                        ca_pem.as_deref(),
                    )
                    .await
                    .context("storing the renewed certificate")?;
                    tracing::info!(%expires_at, "stored a renewed certificate");
                    let stored = AgentControl::CertificateStored { sha256 };
                    write_frame(&mut *send.lock().await, &stored).await?;
                }
                Some(_) => {}
                None => return Ok(()),
            }
        }
    };
    let job_streams = async {
        loop {
            let (send, recv) = connection.accept_bi().await?;
            tokio::spawn(serve_stream(
                jobs.clone(),
                place.terminals.clone(),
                place.upgrader.clone(),
                send,
                recv,
            ));
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

/// Serves one stream the control plane opened: a job stream (its first message is
/// `Start`), a terminal (`TerminalOpen`, see [`crate::terminal`]) or an upgrade
/// (`Upgrade`, see [`crate::upgrade`]).
async fn serve_stream(
    jobs: Jobs,
    terminals: Terminals,
    upgrader: Upgrader,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match read_frame::<ToAgent, _>(&mut recv).await {
        Ok(Some(ToAgent::Start(spec))) => serve_job_stream(&jobs, spec, &mut send, recv).await,
        Ok(Some(ToAgent::TerminalOpen(size))) => {
            crate::terminal::serve(&terminals, size, &mut send, recv).await
        }
        Ok(Some(ToAgent::Upgrade(offer))) => upgrader.serve(offer, &mut send, recv).await,
        Ok(_) => Err(anyhow::anyhow!(
            "a stream must begin with a start, a terminal open or an upgrade"
        )),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        tracing::debug!("stream ended: {e:#}");
    }
}

/// Serves one job stream: starts or resumes the job, sends every unacknowledged chunk
/// and then new ones as they are spooled, then the end; records acks and cancels.
async fn serve_job_stream(
    jobs: &Jobs,
    spec: Box<dynserv_shared::proto::JobSpec>,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
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
        // Another stream's messages; a job stream never carries them.
        ToAgent::Start(_)
        | ToAgent::TerminalOpen(_)
        | ToAgent::TerminalInput { .. }
        | ToAgent::TerminalResize(_)
        | ToAgent::TerminalClose
        | ToAgent::Upgrade(_)
        | ToAgent::UpgradeChunk { .. } => {}
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory written before address lists (only `server`) loads as a
    /// one-address list; one with an announced list round-trips and still names the
    /// first address to try in `server` for older agents; a file with no address at
    /// all is refused.
    #[test]
    fn agent_json_of_older_agents_still_loads() {
        let old = r#"{"agent_id":"a1","server":"cp1:4433","name":"web1"}"#;
        let info = parse_info(old).unwrap();
        assert_eq!(info.servers, vec!["cp1:4433".to_string()]);
        assert_eq!((info.agent_id.as_str(), info.name.as_str()), ("a1", "web1"));

        assert!(!serde_json::to_string(&info).unwrap().contains("announced"));

        let mut info = info;
        info.set_announced(vec!["cp2:4433".into(), "cp1:4433".into()]);
        let text = serde_json::to_string(&info).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["server"], "cp2:4433");
        assert_eq!(value["servers"], serde_json::json!(["cp1:4433"]));
        assert_eq!(
            value["announced"],
            serde_json::json!(["cp2:4433", "cp1:4433"])
        );
        let again = parse_info(&text).unwrap();
        assert_eq!(
            again.addresses(),
            vec!["cp2:4433".to_string(), "cp1:4433".to_string()]
        );

        let error = parse_info(r#"{"agent_id":"a1","name":"web1"}"#).unwrap_err();
        assert!(
            format!("{error:#}").contains("no control-plane address"),
            "{error:#}"
        );
    }
}
