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

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{
    agent_client, bench_endpoint, binary, micros, percentile, rss_kib, sim_agent, sim_facts,
    sim_host_id, start_server, stream_to_viewers, wait_connected, Identity, Kill,
};
use dynserv::agents::{self, AgentFacts};
use dynserv::audit::Actor;
use dynserv::projects::{self, ProjectInput};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use dynserv::users::{self, NewUser};
use dynserv_shared::pki::{self, AgentPublicKey};
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

/// Creates the admin, the project and `count` agents (plus one streamer) in the store.
fn seed(data: &Path, count: usize) -> Result<(String, Vec<Identity>, Identity)> {
    let store = Store::open(&data.join("dynserv.redb"))?;
    let keys = Keys::load(data, None)?;
    store.seal_with(keys.clone());
    let ca = dynserv::fleet::ca::load_or_create(&store, data)?;
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
            let config = agent_client(ca.ca.cert_pem(), &cert, &key.serialize_pem())?;
            made.push((name.clone(), fingerprint, config));
        }
        store.write(|w| {
            for (name, fingerprint, _) in &made {
                let facts = AgentFacts::from(&sim_facts());
                let host_id = sim_host_id(name);
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

    let server = start_server(&data, &dir.path().join("serve.log"), &[]).await?;
    let pid = server.pid();
    let base = server.base.clone();
    let server_addr = server.quic;
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
    if let Err(e) = wait_connected(&base, ids.len()).await {
        println!("{e:#}");
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
                &server_addr.to_string(),
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
        let streamed = stream_to_viewers(
            &server,
            &endpoints[0],
            streamer,
            &api_token,
            args.lines,
            args.viewers,
            args.rate,
        )
        .await?;
        let (bytes, seconds, all) = (streamed.bytes, streamed.seconds, streamed.latencies);
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
    server.stop();
    Ok(())
}
