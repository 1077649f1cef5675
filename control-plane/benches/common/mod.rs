//! What the benchmarks share: starting a real `dynserv serve` from `target/release`,
//! reading its RSS, simulated agents (each its own QUIC connection and client
//! certificate), the streaming agent and the WebSocket viewer, and percentiles.
//!
//! Each bench uses a part of this module; the rest is dead code to that bench.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    AgentControl, Facts, FromAgent, JobEnd, JobStatus, Load, OutputChunk, OutputStream,
    ServerControl, ToAgent, FLEET_SERVER_NAME, PROTOCOL_VERSION,
};
use futures::StreamExt;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::mpsc;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Registers an agent (with its server) for each of `names` through `token`, each with
/// a key, a certificate issued by `ca` and a client configuration of its own, a
/// thousand per transaction; returns their identities in the order of `names`.
pub fn register_simulated_agents(
    store: &dynserv::store::Store,
    ca: &dynserv::fleet::ca::FleetCa,
    token: &dynserv::agents::EnrollmentTokenRecord,
    names: &[String],
) -> Result<Vec<Identity>> {
    use dynserv::agents::{self, AgentFacts};
    use dynserv_shared::pki::{self, AgentPublicKey};
    let mut identities = Vec::with_capacity(names.len());
    for batch in names.chunks(1000) {
        let mut made = Vec::new();
        for name in batch {
            let key = pki::generate_agent_key()?;
            let public = AgentPublicKey::parse(&pki::public_key_text(&key))?;
            let (validity, _) = dynserv::fleet::certs::CertPolicy::default().validity();
            let cert = ca.ca.issue_agent_cert(name, &public, validity)?;
            let fingerprint = hex::encode(pki::sha256(&pki::certs_from_pem(&cert)?[0]));
            let config = agent_client(ca.ca.cert_pem(), &cert, &key.serialize_pem())?;
            made.push((name.clone(), fingerprint, config));
        }
        store.write(|w| {
            for (name, fingerprint, _) in &made {
                let host_id = sim_host_id(name);
                let new = agents::NewAgent {
                    id: name,
                    name,
                    cert_sha256: fingerprint,
                    facts: AgentFacts::from(&sim_facts()),
                    host_id: &host_id,
                    protocol: PROTOCOL_VERSION,
                    cert_expires_at: dynserv::fleet::certs::CertPolicy::default().validity().1,
                    ca_id: dynserv::fleet::ca::ORIGINAL_CA_ID,
                };
                agents::register(w, token, new, chrono::Utc::now())?
                    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            }
            Ok(())
        })?;
        identities.extend(
            made.into_iter()
                .map(|(id, _, config)| Identity { id, config }),
        );
    }
    Ok(identities)
}

/// Creates the admin `bench` (password `bench-password-1`) with an API token, the
/// project `Bench` and an enrollment token for it; returns the API token and the
/// enrollment token's record.
pub fn seed_admin_and_project(
    store: &dynserv::store::Store,
    keys: &dynserv::secrets::Keys,
) -> Result<(String, dynserv::agents::EnrollmentTokenRecord)> {
    use dynserv::audit::Actor;
    use dynserv::projects::{self, ProjectInput};
    use dynserv::users::{self, NewUser};
    let hash = users::hash_password("bench-password-1")?;
    let seeded = store.write(|w| {
        let input = NewUser {
            username: Some("bench".into()),
            role: Some("admin".into()),
            ..Default::default()
        };
        let user = users::create(w, &Actor::cli(), &input, Some(hash))
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let api = dynserv::auth::create_api_token(w, &Actor::cli(), &user, "bench")?;
        let project = projects::create(
            w,
            keys,
            &Actor::cli(),
            &ProjectInput {
                name: Some("Bench".into()),
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
        let (token, _) = dynserv::agents::create_token(
            w,
            &Actor::cli(),
            &project,
            10_000,
            chrono::Duration::hours(1),
            chrono::Utc::now(),
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok((api, token))
    })?;
    Ok(seeded)
}

/// Microseconds since the bench started (the first call).
pub fn micros() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A binary of the release build, next to the bench executable.
pub fn binary(name: &str) -> PathBuf {
    // target/release/deps/BENCH-HASH -> target/release/NAME
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p {}",
        path.display(),
        name
    );
    path
}

/// The `target/` directory the bench runs from.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("target/release/deps/BENCH")
        .to_path_buf()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `(VmRSS, VmHWM)` of a process in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The 1-, 5- and 15-minute load averages of the machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time the hypervisor ran other guests while this VM's CPUs wanted to run
/// (`steal` in `/proc/stat`), in seconds since boot; `None` where there is no such file.
/// A run on a VM whose host is busy is slower for reasons outside the machine: the
/// benches print how much was stolen while they ran, so such a run says so.
pub fn steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // cpu user nice system idle iowait irq softirq steal …
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// The unit of the CPU times in `/proc` (`USER_HZ`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// A value of a sorted sample in ms (samples are µs).
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A child process killed when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `dynserv serve`.
pub struct Server {
    pub process: Kill,
    pub base: String,
    pub http_port: u16,
    pub quic: SocketAddr,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Stops the server (SIGKILL: the store is crash-safe) and waits for it to exit.
    pub fn stop(self) {
        drop(self.process);
    }
}

/// Starts `dynserv serve` on `data` (release build) with its log in `log` and waits
/// until `/healthz` answers.
pub async fn start_server(data: &Path, log: &Path, env: &[(&str, &str)]) -> Result<Server> {
    let (http, quic) = (free_port(), free_port());
    let log = std::fs::File::create(log)?;
    let mut command = Command::new(binary("dynserv"));
    command
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--http",
            &format!("127.0.0.1:{http}"),
            "--quic",
            &format!("127.0.0.1:{quic}"),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    let process = Kill(command.spawn().context("starting dynserv")?);
    let base = format!("http://127.0.0.1:{http}");
    wait_healthy(&base).await?;
    Ok(Server {
        process,
        base,
        http_port: http,
        quic: format!("127.0.0.1:{quic}").parse()?,
    })
}

pub async fn wait_healthy(base: &str) -> Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("dynserv did not become healthy")
}

/// Waits until the control plane counts `count` connected agents (its metrics gauge).
pub async fn wait_connected(base: &str, count: usize) -> Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let connected = metrics
            .lines()
            .find_map(|l| l.strip_prefix("dynserv_agents_connected "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if connected as usize >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("fewer than {count} agents connected after 60 s")
}

/// One simulated agent's identity.
pub struct Identity {
    pub id: String,
    pub config: quinn::ClientConfig,
}

/// The QUIC client configuration of a simulated agent holding `cert_pem`/`key_pem`
/// issued by the control plane's CA (`ca_pem`).
pub fn agent_client(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<quinn::ClientConfig> {
    let tls = dynserv_shared::pki::agent_client_config(ca_pem, cert_pem, key_pem)?;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(4)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

pub fn sim_facts() -> Facts {
    Facts {
        hostname: "sim".into(),
        agent_version: "bench".into(),
        ..Default::default()
    }
}

/// The host id a simulated agent reports: every one is a machine of its own.
pub fn sim_host_id(agent_id: &str) -> String {
    format!("bench-host-{agent_id}")
}

/// What a simulated agent reports per job: when it got the start, when the end was
/// acknowledged (both in µs since the bench started).
pub type Report = (u64, u64);

/// What a simulated agent prints for a job (its whole stdout), given the job.
pub type Answer = Arc<dyn Fn(&dynserv_shared::proto::JobSpec) -> String + Send + Sync>;

/// Connects one simulated agent and serves no-op jobs until the connection ends.
pub async fn sim_agent(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    identity: Identity,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<quinn::Connection> {
    sim_agent_answering(
        endpoint,
        server,
        identity,
        reports,
        Arc::new(|_| "ok\n".into()),
    )
    .await
}

/// [`sim_agent`] whose jobs print what `answer` says (one chunk) and succeed.
pub async fn sim_agent_answering(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    identity: Identity,
    reports: mpsc::UnboundedSender<Report>,
    answer: Answer,
) -> Result<quinn::Connection> {
    let connection = endpoint
        .connect_with(identity.config, server, FLEET_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = AgentControl::Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: identity.id.clone(),
        facts: sim_facts(),
        host_id: sim_host_id(&identity.id),
        instance_id: String::new(),
    };
    write_frame(&mut send, &hello).await?;
    match read_frame::<ServerControl, _>(&mut recv).await? {
        Some(ServerControl::Welcome { .. }) => {}
        other => bail!("{}: not welcomed: {other:?}", identity.id),
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if write_frame(&mut send, &AgentControl::Heartbeat(Load::default()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(_)) = read_frame::<ServerControl, _>(&mut recv).await {}
    });
    let jobs = connection.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = jobs.accept_bi().await {
            let reports = reports.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(Some(ToAgent::Start(spec))) = read_frame::<ToAgent, _>(&mut recv).await
                else {
                    return;
                };
                let started = micros();
                let chunk = OutputChunk {
                    seq: 0,
                    stream: OutputStream::Stdout,
                    data: answer(&spec),
                };
                let end = JobEnd {
                    status: JobStatus::Succeeded,
                    exit_code: Some(0),
                    summary: "exit code 0".into(),
                    chunks: 1,
                    facts: None,
                };
                for message in [
                    FromAgent::Started { resumed: false },
                    FromAgent::Output(chunk),
                    FromAgent::End(end),
                ] {
                    if write_frame(&mut send, &message).await.is_err() {
                        return;
                    }
                }
                while let Ok(Some(message)) = read_frame::<ToAgent, _>(&mut recv).await {
                    if message == ToAgent::EndAck {
                        let _ = reports.send((started, micros()));
                        return;
                    }
                }
            });
        }
    });
    Ok(connection)
}

/// The streaming agent: on start, waits for `go`, then sends `lines` lines in chunks
/// of whole lines, each line carrying the µs it was written at; `rate` in MB/s, 0 for
/// as fast as the connection takes them.
pub async fn streamer_agent(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    identity: Identity,
    lines: usize,
    rate: f64,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Result<(quinn::Connection, tokio::task::JoinHandle<Result<u64>>)> {
    // Every line carries its number in six digits, which the viewers check.
    if lines > 999_999 {
        bail!("--lines {lines}: the streamer numbers its lines with six digits, so at most 999999");
    }
    let connection = endpoint
        .connect_with(identity.config, server, FLEET_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = AgentControl::Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: identity.id.clone(),
        facts: sim_facts(),
        host_id: sim_host_id(&identity.id),
        instance_id: String::new(),
    };
    write_frame(&mut send, &hello).await?;
    read_frame::<ServerControl, _>(&mut recv).await?;
    tokio::spawn(async move {
        let _keep = send;
        while let Ok(Some(_)) = read_frame::<ServerControl, _>(&mut recv).await {}
    });
    let jobs = connection.clone();
    let task = tokio::spawn(async move {
        let (mut send, mut recv) = jobs.accept_bi().await?;
        let Some(ToAgent::Start(_)) = read_frame::<ToAgent, _>(&mut recv).await? else {
            bail!("no start")
        };
        write_frame(&mut send, &FromAgent::Started { resumed: false }).await?;
        let _ = go.await;
        tokio::spawn(async move {
            while let Ok(Some(_)) = read_frame::<ToAgent, _>(&mut recv).await {}
        });
        let pad = "x".repeat(60);
        let mut bytes = 0u64;
        let mut seq = 0;
        let mut line = 0;
        let begun = Instant::now();
        while line < lines {
            let mut data = String::with_capacity(32 * 1024);
            while line < lines && data.len() < 30 * 1024 {
                line += 1;
                data.push_str(&format!("line {line:06} t={:014} {pad}\n", micros()));
            }
            bytes += data.len() as u64;
            write_frame(
                &mut send,
                &FromAgent::Output(OutputChunk {
                    seq,
                    stream: OutputStream::Stdout,
                    data,
                }),
            )
            .await?;
            seq += 1;
            if rate > 0.0 {
                let due = Duration::from_secs_f64(bytes as f64 / (rate * 1e6));
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let end = JobEnd {
            status: JobStatus::Succeeded,
            exit_code: Some(0),
            summary: "exit code 0".into(),
            chunks: seq,
            facts: None,
        };
        write_frame(&mut send, &FromAgent::End(end)).await?;
        Ok(bytes)
    });
    Ok((connection, task))
}

/// A WebSocket frame as the viewers need it.
#[derive(serde::Deserialize)]
pub struct Frame {
    pub data: Option<String>,
    pub end: Option<serde_json::Value>,
}

/// Opens an execution's log stream with a bearer token.
pub async fn open_stream(
    url: &str,
    token: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    // Reads of at most 32 KiB (a frame of output, about): before every read
    // tungstenite zeroes the room it reads into, 128 KiB by default, which was a tenth
    // of the bench's CPU with 50 viewers (a browser does no such thing).
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(32 * 1024);
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false).await?;
    Ok(socket)
}

/// The number written in ASCII digits (all of `digits`, `None` if one is not a digit),
/// read eight digits at a time: the viewers read two numbers of every line, five
/// million lines per stream with 50 viewers, and one digit at a time that was a sixth
/// of the machine's CPU, on the cores of the control plane they measure.
fn decimal(digits: &[u8]) -> Option<u64> {
    const ZEROS: u64 = u64::from_le_bytes([b'0'; 8]);
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let mut n = 0u64;
    for part in digits.chunks(8) {
        // Zeros in front keep the value; the first digit lands in the lowest byte.
        let mut word = [b'0'; 8];
        word[8 - part.len()..].copy_from_slice(part);
        let x = u64::from_le_bytes(word);
        // Every byte in 0x30..=0x39: its high half is 3, and adding 6 keeps it 3.
        if x & HIGH != ZEROS || x.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
            return None;
        }
        // Pairs of digits, then fours, then all eight.
        let mut v = x - ZEROS;
        v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v.wrapping_mul(10_000) + (v >> 32)) & 0xFFFF_FFFF;
        n = n * 10u64.pow(part.len() as u32) + v;
    }
    Some(n)
}

/// The output lines of a live-log frame `{"seq":N,"stream":"…","data":"…"}` as they
/// stand in its JSON text (separated by the two characters `\n`), or `None` for a
/// frame of another shape (the end frame). The viewers read the streamer's lines, which
/// hold no other escapes, straight from the text: 50 viewers share the 2 cores with the
/// control plane they measure, and decoding every frame into an owned string took most
/// of their time.
pub fn frame_lines(text: &str) -> Option<FrameLines<'_>> {
    let bytes = text.as_bytes();
    // Searched with memmem, not a window compared byte by byte: when the keys stood
    // after the 30 KB of data (replica B's frames, until they took A's shape), that
    // search took a fifth of the machine's CPU.
    if !bytes.starts_with(b"{") || memchr::memmem::find(bytes, b"\"seq\":").is_none() {
        return None;
    }
    const DATA: &[u8] = b"\"data\":\"";
    let start = memchr::memmem::find(bytes, DATA)? + DATA.len();
    // The streamer's lines hold no quote, so the next one closes the data.
    let end = start + memchr::memchr(b'"', &bytes[start..])?;
    Some(FrameLines {
        data: &bytes[start..end],
        stride: None,
    })
}

/// The lines of one frame's data (see [`frame_lines`]).
pub struct FrameLines<'a> {
    data: &'a [u8],
    /// The length of the first line with its `\n`: the streamer writes lines of one
    /// length, so the next break is looked for there first, and searched for (SIMD
    /// memchr) only when it is not. Finding every break byte by byte took a third of
    /// the machine's CPU with 50 viewers, more than the control plane they measure.
    stride: Option<usize>,
}

impl<'a> Iterator for FrameLines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.data.is_empty() {
                return None;
            }
            let at = match self.stride {
                Some(stride) if self.data.get(stride - 2) == Some(&b'\\') => stride - 2,
                _ => memchr::memchr(b'\\', self.data).unwrap_or(self.data.len()),
            };
            let line = &self.data[..at];
            // Past the backslash and the `n` it escapes.
            self.data = self.data.get(at + 2..).unwrap_or_default();
            if self.stride.is_none() {
                self.stride = Some(at + 2);
            }
            if !line.is_empty() {
                return Some(line);
            }
        }
    }
}

/// One WebSocket viewer of the streaming agent's job: per-line latencies (µs) and
/// the time its end frame came.
pub async fn viewer(url: String, token: String, lines: usize) -> Result<(Vec<u32>, u64)> {
    let mut socket = open_stream(&url, &token).await?;
    // Every page of the latencies touched now, before the output starts: touched
    // during it, their page faults (400 KB per viewer) were the bench's own cost on
    // the cores the control plane is measured on.
    let mut latencies = vec![u32::MAX; lines];
    latencies.clear();
    let mut expected_line = 1;
    while let Some(message) = socket.next().await {
        let text = match message? {
            tokio_tungstenite::tungstenite::Message::Text(t) => t,
            _ => continue,
        };
        let Some(data) = frame_lines(&text) else {
            let value: Frame = serde_json::from_str(&text)?;
            if value.end.is_none() {
                bail!("a frame that is neither output nor the end: {text}");
            }
            if expected_line != lines + 1 {
                bail!("viewer saw {} lines, expected {lines}", expected_line - 1);
            }
            return Ok((latencies, micros()));
        };
        let now = micros();
        // Every line is checked, byte-wise.
        for l in data {
            let (Some(number), Some(sent)) = (
                l.get(5..11).and_then(decimal),
                l.get(14..28).and_then(decimal),
            ) else {
                bail!(
                    "a line not written by the streamer: {:?}",
                    String::from_utf8_lossy(l)
                );
            };
            if number != expected_line as u64 {
                bail!("viewer got line {number}, expected {expected_line}");
            }
            expected_line += 1;
            latencies.push(now.saturating_sub(sent) as u32);
        }
    }
    bail!("the WebSocket closed before the end frame")
}

/// A client endpoint for simulated agents, with wide UDP buffers like the control
/// plane's (a few endpoints carry thousands of connections).
pub fn bench_endpoint() -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let sock = socket2::SockRef::from(&socket);
    sock.set_recv_buffer_size(dynserv::fleet::gateway::UDP_BUFFER_BYTES)?;
    sock.set_send_buffer_size(dynserv::fleet::gateway::UDP_BUFFER_BYTES)?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime,
    )?)
}

/// What streaming to viewers measured.
pub struct Streamed {
    pub bytes: u64,
    /// From `go` until the last viewer had the end frame.
    pub seconds: f64,
    /// From `go` until the agent had written its last line (and the end).
    pub written: f64,
    /// Per-line latencies of every viewer, sorted (µs).
    pub latencies: Vec<u32>,
    /// The lines in ten equal parts, in the order written: each part's latencies
    /// over every viewer, sorted (µs), to tell a slow start from spikes later on.
    pub by_tenth: Vec<Vec<u32>>,
}

/// One job on `streamer` emitting `lines` lines, watched by `viewers` WebSockets
/// opened before it starts writing. The streamer connects to `server`, which creates
/// the job; the viewers watch on `viewers_on` (the same server, or another replica on
/// the same database).
#[allow(clippy::too_many_arguments)]
pub async fn stream_to_viewers(
    server: &Server,
    viewers_on: &Server,
    endpoint: &quinn::Endpoint,
    streamer: Identity,
    api_token: &str,
    lines: usize,
    viewers: usize,
    rate: f64,
) -> Result<Streamed> {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let agent_id = streamer.id.clone();
    let (_connection, stream_task) =
        streamer_agent(endpoint.clone(), server.quic, streamer, lines, rate, go_rx).await?;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/executions", server.base))
        .bearer_auth(api_token)
        .json(&serde_json::json!({"agent": agent_id, "kind": "script", "script": "stream"}))
        .send()
        .await?;
    let created: serde_json::Value = response.json().await?;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("an execution id in {created}"))?
        .to_string();
    let mut tasks = Vec::new();
    for _ in 0..viewers {
        let url = format!(
            "ws://127.0.0.1:{}/api/v1/executions/{id}/stream?from_seq=0",
            viewers_on.http_port
        );
        tasks.push(tokio::spawn(viewer(url, api_token.to_string(), lines)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_go = micros();
    let _ = go_tx.send(());
    let bytes = stream_task.await??;
    let written = (micros() - t_go) as f64 / 1e6;
    let mut latencies = Vec::new();
    let mut by_tenth = vec![Vec::new(); 10];
    let mut last_done = 0;
    for task in tasks {
        let (seen, done) = task.await??;
        last_done = last_done.max(done);
        // `seen` is in line order (the viewer checks every line's number).
        for (i, latency) in seen.iter().enumerate() {
            by_tenth[i * 10 / seen.len()].push(*latency);
        }
        latencies.extend(seen);
    }
    latencies.sort_unstable();
    for tenth in &mut by_tenth {
        tenth.sort_unstable();
    }
    Ok(Streamed {
        bytes,
        seconds: (last_done - t_go) as f64 / 1e6,
        written,
        latencies,
        by_tenth,
    })
}

/// The `SESSION_SECRET` of the benches' control planes on PostgreSQL (every replica
/// gets the same one; the seeding seals with it too).
pub const BENCH_SESSION_SECRET: &str = "dynserv-bench-session-secret-not-for-production";

/// `url` naming the database `name` instead of its own (the rest kept: user, host,
/// port, parameters).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{name}{query}")
}

/// A connection of the bench's own to a PostgreSQL server (to create and drop
/// databases and read settings), without TLS: the benches run against a throwaway
/// cluster on loopback (`scripts/test-postgres.sh start`).
pub async fn pg_admin(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", dynserv::store::pg::redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether the database `name` exists on the server of `url`.
pub async fn database_exists(url: &str, name: &str) -> Result<bool> {
    let client = pg_admin(url).await?;
    let rows = client
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?;
    Ok(!rows.is_empty())
}

/// Creates the database `name` (empty, or a copy of `template`), dropping one of that
/// name first. A template still in use by a closing connection is retried for a while.
pub async fn create_database(url: &str, name: &str, template: Option<&str>) -> Result<()> {
    let client = pg_admin(url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    let sql = match template {
        Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
        None => format!("CREATE DATABASE \"{name}\""),
    };
    let mut tries = 0;
    loop {
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 50 && e.to_string().contains("being accessed by other users") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating the database {name}")),
        }
    }
}

/// Drops the database `name` (closing its connections).
pub async fn drop_database(url: &str, name: &str) -> Result<()> {
    pg_admin(url)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping the database {name}"))
}

/// The cluster's system identifier: different for every `initdb`, so a cache of what
/// was seeded into one cluster is never taken for another's.
pub async fn pg_system_identifier(url: &str) -> Result<i64> {
    let client = pg_admin(url).await?;
    let row = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?;
    Ok(row.get(0))
}

/// The server's version and the settings that decide what a commit costs and how much
/// it caches, to print beside the figures.
pub async fn pg_settings(url: &str) -> Result<String> {
    let client = pg_admin(url).await?;
    let mut out = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "shared_buffers",
        "max_connections",
    ] {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
        out.push(format!("{name}={}", row.get::<_, String>(0)));
    }
    Ok(out.join(", "))
}

/// The size of the database `name` in bytes.
pub async fn database_size(url: &str, name: &str) -> Result<u64> {
    let client = pg_admin(url).await?;
    let row = client
        .query_one("SELECT pg_database_size($1)", &[&name])
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
