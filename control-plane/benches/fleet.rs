//! Fleet benchmark: a real `dynserv serve` (release build) holding many simulated
//! agents, each with its own QUIC connection and client certificate.
//!
//! ```text
//! cargo build --release -p dynserv -p dynserv-agent
//! cargo bench -p dynserv --bench fleet -- --agents 1000 --lines 100000 --viewers 50
//! ```
//!
//! Measures, and prints (nothing is asserted):
//! 1. fan-out: one no-op job created for every agent in one request; time until every
//!    agent received it, and until every agent got the `EndAck` (its end stored);
//!    control-plane RSS with all agents connected;
//! 2. idle RSS of a real `dynserv-agent run` connected to the control plane;
//! 3. streaming: one job whose (simulated) agent emits `--lines` lines as fast as the
//!    connection takes them, watched by `--viewers` WebSockets; throughput (bytes of
//!    output per second until the last viewer has the last line) and per-line latency
//!    (from the agent writing the line to a viewer decoding it).
//!
//! The agents are created directly in the store before the server starts (enrolling
//! 10,000 agents one by one would measure fsyncs, not the fleet).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dynserv::agents::{self, AgentFacts};
use dynserv::audit::Actor;
use dynserv::projects::{self, ProjectInput};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use dynserv::users::{self, NewUser};
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::pki::{self, AgentPublicKey};
use dynserv_shared::proto::{
    AgentControl, Facts, FromAgent, JobEnd, JobStatus, Load, OutputChunk, OutputStream,
    ServerControl, ToAgent, FLEET_SERVER_NAME, PROTOCOL_VERSION,
};
use futures::StreamExt;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::{mpsc, Semaphore};

struct Args {
    agents: usize,
    lines: usize,
    viewers: usize,
    /// Output rate of the streaming job in MB/s; 0 = as fast as the connection takes.
    rate: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: 1000,
        lines: 100_000,
        viewers: 50,
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--agents" => args.agents = value("--agents"),
            "--lines" => args.lines = value("--lines"),
            "--viewers" => args.viewers = value("--viewers"),
            "--rate" => args.rate = value("--rate") as f64,
            _ => {} // `cargo bench` passes --bench
        }
    }
    args
}

static EPOCH: OnceLock<Instant> = OnceLock::new();
fn micros() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn binary(name: &str) -> PathBuf {
    // target/release/deps/fleet-HASH -> target/release/NAME
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p dynserv -p dynserv-agent",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> (u64, u64) {
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

/// One simulated agent's identity.
struct Identity {
    id: String,
    config: quinn::ClientConfig,
}

fn sim_facts() -> Facts {
    Facts {
        hostname: "sim".into(),
        agent_version: "bench".into(),
        ..Default::default()
    }
}

/// Creates the admin, the project and `count` agents (plus one streamer) in the store.
fn seed(data: &Path, count: usize) -> Result<(String, Vec<Identity>, Identity)> {
    let store = Store::open(&data.join("dynserv.redb"))?;
    let keys = Keys::load(data, None)?;
    let ca = dynserv::fleet::ca::load_or_create(data)?;
    let hash = users::hash_password("bench-password-1")?;
    let (api_token, token) = store.write(|w| {
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
            &keys,
            &Actor::cli(),
            &ProjectInput {
                name: Some("Bench".into()),
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
        let (token, _) = agents::create_token(
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
    let mut identities = Vec::with_capacity(count + 1);
    let names: Vec<String> = (0..count)
        .map(|i| format!("sim-{i:05}"))
        .chain(["streamer".to_string()])
        .collect();
    for batch in names.chunks(1000) {
        let mut made = Vec::new();
        for name in batch {
            let key = pki::generate_agent_key()?;
            let public = AgentPublicKey::parse(&pki::public_key_text(&key))?;
            let cert = ca.ca.issue_agent_cert(name, &public)?;
            let fingerprint = hex::encode(pki::sha256(&pki::certs_from_pem(&cert)?[0]));
            let tls = pki::agent_client_config(ca.ca.cert_pem(), &cert, &key.serialize_pem())?;
            let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(Duration::from_secs(4)));
            config.transport_config(Arc::new(transport));
            made.push((name.clone(), fingerprint, config));
        }
        store.write(|w| {
            for (name, fingerprint, _) in &made {
                let facts = AgentFacts::from(&sim_facts());
                let host_id = format!("bench-host-{name}");
                let new = agents::NewAgent {
                    id: name,
                    name,
                    cert_sha256: fingerprint,
                    facts,
                    host_id: &host_id,
                };
                agents::register(w, &token, new, chrono::Utc::now())?
                    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            }
            Ok(())
        })?;
        identities.extend(
            made.into_iter()
                .map(|(id, _, config)| Identity { id, config }),
        );
    }
    let streamer = identities.pop().expect("the streamer");
    Ok((api_token, identities, streamer))
}

/// What a simulated agent reports per job: when it got the start, when the end was
/// acknowledged (both in µs since EPOCH).
type Report = (u64, u64);

/// Connects one simulated agent and serves no-op jobs until the connection ends.
async fn sim_agent(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    identity: Identity,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<quinn::Connection> {
    let connection = endpoint
        .connect_with(identity.config, server, FLEET_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = AgentControl::Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: identity.id.clone(),
        facts: sim_facts(),
        // Every simulated agent is a machine of its own, running one process.
        host_id: format!("bench-host-{}", identity.id),
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
            tokio::spawn(async move {
                let Ok(Some(ToAgent::Start(_))) = read_frame::<ToAgent, _>(&mut recv).await else {
                    return;
                };
                let started = micros();
                let chunk = OutputChunk {
                    seq: 0,
                    stream: OutputStream::Stdout,
                    data: "ok\n".into(),
                };
                let end = JobEnd {
                    status: JobStatus::Succeeded,
                    exit_code: Some(0),
                    summary: "exit code 0".into(),
                    chunks: 1,
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
/// of whole lines, each line carrying the µs it was written at.
async fn streamer_agent(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    identity: Identity,
    lines: usize,
    rate: f64,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Result<(quinn::Connection, tokio::task::JoinHandle<Result<u64>>)> {
    let connection = endpoint
        .connect_with(identity.config, server, FLEET_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = AgentControl::Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: identity.id.clone(),
        facts: sim_facts(),
        // Every simulated agent is a machine of its own, running one process.
        host_id: format!("bench-host-{}", identity.id),
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
        };
        write_frame(&mut send, &FromAgent::End(end)).await?;
        Ok(bytes)
    });
    Ok((connection, task))
}

/// A WebSocket frame as the viewer needs it.
#[derive(serde::Deserialize)]
struct Frame {
    data: Option<String>,
    end: Option<serde_json::Value>,
}

/// One WebSocket viewer: per-line latencies (µs) and the time its end frame came.
async fn viewer(url: String, token: String, lines: usize) -> Result<(Vec<u32>, u64)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let mut latencies = Vec::with_capacity(lines);
    let mut expected_line = 1;
    while let Some(message) = socket.next().await {
        let message = message?;
        let text = match message {
            tokio_tungstenite::tungstenite::Message::Text(t) => t,
            _ => continue,
        };
        let value: Frame = serde_json::from_str(&text)?;
        if value.end.is_some() {
            if expected_line != lines + 1 {
                bail!("viewer saw {} lines, expected {lines}", expected_line - 1);
            }
            return Ok((latencies, micros()));
        }
        let now = micros();
        for l in value.data.as_deref().unwrap_or_default().lines() {
            let number: usize = l[5..11].parse()?;
            if number != expected_line {
                bail!("viewer got line {number}, expected {expected_line}");
            }
            expected_line += 1;
            let sent: u64 = l[14..28].parse()?;
            latencies.push(now.saturating_sub(sent) as u32);
        }
    }
    bail!("the WebSocket closed before the end frame")
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A client endpoint for simulated agents, with wide UDP buffers like the control
/// plane's (a few endpoints carry thousands of connections).
fn bench_endpoint() -> Result<quinn::Endpoint> {
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

async fn wait_healthy(base: &str) -> Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("dynserv did not become healthy")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    micros();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let seeded = Instant::now();
    let (api_token, identities, streamer) = {
        let data = data.clone();
        let count = args.agents;
        tokio::task::spawn_blocking(move || seed(&data, count)).await??
    };
    println!(
        "seeded {} agents with certificates in {:.1} s",
        identities.len(),
        seeded.elapsed().as_secs_f64()
    );

    let (http, quic) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let server = Kill(
        Command::new(binary("dynserv"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args([
                "--http",
                &format!("127.0.0.1:{http}"),
                "--quic",
                &format!("127.0.0.1:{quic}"),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dynserv")?,
    );
    let pid = server.0.id();
    let base = format!("http://127.0.0.1:{http}");
    wait_healthy(&base).await?;
    let server_addr: SocketAddr = format!("127.0.0.1:{quic}").parse()?;
    let (rss_idle, _) = rss_kib(pid);

    // Connect every simulated agent (a few endpoints share the load of the bench side).
    let endpoints: Vec<quinn::Endpoint> =
        (0..4).map(|_| bench_endpoint()).collect::<Result<_>>()?;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let ids: Vec<String> = identities.iter().map(|i| i.id.clone()).collect();
    let mut handles = Vec::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let tx = report_tx.clone();
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            sim_agent(endpoint, server_addr, identity, tx).await
        }));
    }
    let mut connections = Vec::new();
    for h in handles {
        connections.push(h.await??);
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    // Let the control plane register every connection (metrics gauge).
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
        if connected as usize >= ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_connected, _) = rss_kib(pid);

    if !ids.is_empty() {
        // Fan-out: one request, one job per agent.
        let t0 = micros();
        let response = client
            .post(format!("{base}/api/v1/executions"))
            .bearer_auth(&api_token)
            .json(&serde_json::json!({"agents": ids, "kind": "script", "script": "true"}))
            .send()
            .await?;
        if response.status().as_u16() != 201 {
            bail!(
                "fan-out request failed: {} {}",
                response.status(),
                response.text().await?
            );
        }
        let created_ms = (micros() - t0) as f64 / 1000.0;
        let mut started = Vec::with_capacity(ids.len());
        let mut answered = Vec::with_capacity(ids.len());
        // Agents whose connection dropped under load never answer; report what came.
        while answered.len() < ids.len() {
            match tokio::time::timeout(Duration::from_secs(60), reports.recv()).await {
                Ok(Some((s, a))) => {
                    started.push(((s - t0) / 1000) as u32 * 1000);
                    answered.push(((a - t0) / 1000) as u32 * 1000);
                }
                _ => {
                    println!(
                        "only {} of {} agents answered (60 s without a new answer)",
                        answered.len(),
                        ids.len()
                    );
                    break;
                }
            }
        }
        started.sort_unstable();
        answered.sort_unstable();
        let (rss_after, rss_peak) = rss_kib(pid);
        println!(
            "\n## fan-out: {} agents (each its own QUIC connection and certificate)",
            ids.len()
        );
        println!("connect all: {connect_s:.1} s; control-plane RSS idle {} MiB, with agents connected {} MiB", rss_idle / 1024, rss_connected / 1024);
        println!("create request answered (201): {created_ms:.0} ms");
        println!(
        "all received the job: {:.0} ms (p50 {:.0} ms); all answered and stored (EndAck): {:.0} ms (p50 {:.0} ms)",
        percentile(&started, 1.0),
        percentile(&started, 0.5),
        percentile(&answered, 1.0),
        percentile(&answered, 0.5)
    );
        println!(
            "control-plane RSS after fan-out {} MiB, peak {} MiB",
            rss_after / 1024,
            rss_peak / 1024
        );

        // Idle RSS of a real agent.
        let token = Command::new(binary("dynserv"))
            .args(["token", "create", "--project", "Bench", "--data-dir"])
            .arg(&data)
            .output()?;
        let token = String::from_utf8(token.stdout)?.trim().to_string();
        let state = dir.path().join("agent");
        let enrolled = Command::new(binary("dynserv-agent"))
            .args([
                "enroll",
                "--server",
                &format!("127.0.0.1:{quic}"),
                "--token",
                &token,
                "--name",
                "real",
                "--state-dir",
            ])
            .arg(&state)
            .output()?;
        if enrolled.status.success() {
            let agent = Kill(
                Command::new(binary("dynserv-agent"))
                    .args(["run", "--state-dir"])
                    .arg(&state)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
            tokio::time::sleep(Duration::from_secs(12)).await;
            let (rss, peak) = rss_kib(agent.0.id());
            println!("\n## agent idle RSS (dynserv-agent run, connected, 12 s idle): {:.1} MiB (peak {:.1} MiB)", rss as f64 / 1024.0, peak as f64 / 1024.0);
        } else {
            println!(
                "\n## agent idle RSS: enrollment failed: {}",
                String::from_utf8_lossy(&enrolled.stderr)
            );
        }
    }

    // Streaming to viewers.
    if args.lines > 0 {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        let (_stream_conn, stream_task) = streamer_agent(
            endpoints[0].clone(),
            server_addr,
            streamer,
            args.lines,
            args.rate,
            go_rx,
        )
        .await?;
        let response = client
            .post(format!("{base}/api/v1/executions"))
            .bearer_auth(&api_token)
            .json(&serde_json::json!({"agent": "streamer", "kind": "script", "script": "stream"}))
            .send()
            .await?;
        let created: serde_json::Value = response.json().await?;
        let id = created["id"]
            .as_str()
            .context("an execution id")?
            .to_string();
        let mut viewers = Vec::new();
        for _ in 0..args.viewers {
            let url = format!("ws://127.0.0.1:{http}/api/v1/executions/{id}/stream?from_seq=0");
            viewers.push(tokio::spawn(viewer(url, api_token.clone(), args.lines)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t_go = micros();
        let _ = go_tx.send(());
        let bytes = stream_task.await??;
        let mut all = Vec::new();
        let mut last_done = 0;
        for v in viewers {
            let (latencies, done) = v.await??;
            last_done = last_done.max(done);
            all.extend(latencies);
        }
        all.sort_unstable();
        let seconds = (last_done - t_go) as f64 / 1e6;
        println!(
            "\n## streaming: {} lines ({:.1} MB) to {} WebSocket viewers",
            args.lines,
            bytes as f64 / 1e6,
            args.viewers
        );
        println!(
            "every viewer had every line in order after {seconds:.2} s: {:.1} MB/s per viewer ({:.0} MB/s delivered in total)",
            bytes as f64 / 1e6 / seconds,
            bytes as f64 * args.viewers as f64 / 1e6 / seconds
        );
        println!(
            "line latency agent -> viewer: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 1.0)
        );
        let (rss, peak) = rss_kib(pid);
        println!(
            "control-plane RSS {} MiB, peak {} MiB",
            rss / 1024,
            peak / 1024
        );
    }
    drop(connections);
    drop(server);
    Ok(())
}
