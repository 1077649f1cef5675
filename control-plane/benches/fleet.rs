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
//!    control-plane RSS with all agents connected; then 200 jobs created one at a time
//!    through replica A for an agent on the last replica (the same one without
//!    replicas): time from the request until the agent has the job;
//! 2. idle RSS of a real `dynserv-agent run` connected to the control plane;
//! 3. streaming: one job whose (simulated) agent emits `--lines` lines as fast as the
//!    connection takes them, watched by `--viewers` WebSockets; throughput (bytes of
//!    output per second until the last viewer has the last line) and per-line latency
//!    (from the agent writing the line to a viewer decoding it).
//!
//! The agents are created directly in the store before the server starts (enrolling
//! 10,000 agents one by one would measure fsyncs, not the fleet).
//!
//! With `--database postgres://USER@HOST:PORT/DB` the store is a fresh database on that
//! server (created next to the URL's own, without TLS — meant for a throwaway cluster
//! on loopback, `scripts/test-postgres.sh start` — and dropped at the end), and
//! `--replicas 2` starts two `dynserv serve` on it with the same `SESSION_SECRET`:
//! ```text
//! cargo bench -p dynserv --bench fleet -- --database "$URL" --replicas 2 --agents 10000 --lines 100000 --viewers 50 --rate 20
//! ```
//! The simulated agents are spread over the replicas (agent i on replica i mod N), the
//! fan-out is created through replica A's API, and the streaming job's agent is on
//! replica A while the viewers watch on the last replica (B), so every line crosses
//! the database (stored by A, announced with `NOTIFY`, read back by B). The real
//! agent's idle RSS is measured only on a redb file (it does not depend on the store).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{
    bench_endpoint, binary, create_database, drop_database, load_average, micros, percentile,
    pg_settings, register_simulated_agents, rss_kib, seed_admin_and_project, sim_agent,
    start_server, steal_seconds, stream_to_viewers, wait_connected, with_database, Identity, Kill,
    Server, BENCH_SESSION_SECRET,
};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use tokio::sync::{mpsc, Semaphore};

/// jemalloc, as the control plane: glibc's malloc gave the viewers' frame buffers back
/// to the system and took them again, and with the latencies' first touches (see
/// `common::viewer`) page faults took a fifth of the bench's CPU while it streamed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Jobs created one by one for the dispatch latency.
const SINGLE_JOBS: usize = 200;

struct Args {
    agents: usize,
    lines: usize,
    viewers: usize,
    /// Output rate of the streaming job in MB/s; 0 = as fast as the connection takes.
    rate: f64,
    /// A PostgreSQL server to put the store on instead of a redb file.
    database: Option<String>,
    /// How many `dynserv serve` share the store (more than one needs `--database`).
    replicas: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: 1000,
        lines: 100_000,
        viewers: 50,
        rate: 0.0,
        database: None,
        replicas: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--database" {
            let url = it.next().unwrap_or_default();
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                panic!("--database needs a postgres://… URL");
            }
            args.database = Some(url);
            continue;
        }
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
            "--replicas" => args.replicas = value("--replicas"),
            _ => {} // `cargo bench` passes --bench
        }
    }
    if args.replicas == 0 || (args.replicas > 1 && args.database.is_none()) {
        panic!("--replicas N: at least 1, and more than 1 only with --database postgres://…");
    }
    args
}

/// Creates the admin, the project and `count` agents (plus one streamer) in the store:
/// the redb file in `data`, or the PostgreSQL database at `database_url`.
fn seed(
    data: &Path,
    database_url: Option<&str>,
    count: usize,
) -> Result<(String, Vec<Identity>, Identity)> {
    let (store, keys) = match database_url {
        Some(url) => (
            Store::connect(url)?,
            Keys::load(data, Some(BENCH_SESSION_SECRET))?,
        ),
        None => (
            Store::open(&data.join("dynserv.redb"))?,
            Keys::load(data, None)?,
        ),
    };
    store.seal_with(keys.clone());
    let ca = dynserv::fleet::ca::load_or_create(&store, data)?;
    let (api_token, token) = seed_admin_and_project(&store, &keys)?;
    let names: Vec<String> = (0..count)
        .map(|i| format!("sim-{i:05}"))
        .chain(["streamer".to_string()])
        .collect();
    let mut identities = register_simulated_agents(&store, &ca, &token, &names)?;
    let streamer = identities.pop().expect("the streamer");
    Ok((api_token, identities, streamer))
}

/// `POST /api/v1/executions` with `body` on `base`; anything but 201 fails the bench,
/// saying which request (`what`) and why.
async fn create_jobs(
    client: &reqwest::Client,
    base: &str,
    api_token: &str,
    body: serde_json::Value,
    what: &str,
) -> Result<()> {
    let response = client
        .post(format!("{base}/api/v1/executions"))
        .bearer_auth(api_token)
        .json(&body)
        .send()
        .await?;
    if response.status().as_u16() != 201 {
        bail!(
            "{what} request failed: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

/// "A", "B", … for replica 0, 1, …
fn replica_name(index: usize) -> char {
    char::from(b'A' + (index % 26) as u8)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    micros();
    let dir = tempfile::tempdir()?;
    // On PostgreSQL, a fresh database for this run.
    let database = match &args.database {
        Some(url) => {
            println!(
                "on PostgreSQL {}: {}; {} replica(s)",
                dynserv::store::pg::redact(url),
                pg_settings(url).await?,
                args.replicas
            );
            let name = format!("dynserv_fleet_bench_{}", std::process::id());
            create_database(url, &name, None).await?;
            Some((url.clone(), name))
        }
        None => None,
    };
    let database_url = database
        .as_ref()
        .map(|(url, name)| with_database(url, name));
    println!("load average {}", load_average());
    let stolen_before = steal_seconds();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let seeded = Instant::now();
    let (api_token, identities, streamer) = {
        let data = data.clone();
        let count = args.agents;
        let url = database_url.clone();
        tokio::task::spawn_blocking(move || seed(&data, url.as_deref(), count)).await??
    };
    println!(
        "seeded {} agents with certificates in {:.1} s",
        identities.len(),
        seeded.elapsed().as_secs_f64()
    );

    // The replicas: one data directory each, the same store.
    let mut servers: Vec<Server> = Vec::new();
    for r in 0..args.replicas {
        let data = if r == 0 {
            data.clone()
        } else {
            dir.path().join(format!("data-{}", replica_name(r)))
        };
        std::fs::create_dir_all(&data)?;
        let env: Vec<(&str, &str)> = match &database_url {
            Some(url) => vec![
                ("DATABASE_URL", url.as_str()),
                ("SESSION_SECRET", BENCH_SESSION_SECRET),
            ],
            None => Vec::new(),
        };
        let log = dir.path().join(format!("serve-{}.log", replica_name(r)));
        servers.push(start_server(&data, &log, &env).await?);
    }
    let replicas = servers.len();
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let rss_of = |pids: &[u32]| -> Vec<(u64, u64)> { pids.iter().map(|&p| rss_kib(p)).collect() };
    let describe_rss = |rss: &[(u64, u64)], peak: bool| -> String {
        rss.iter()
            .enumerate()
            .map(|(r, (now, high))| {
                let name = if replicas > 1 {
                    format!("{} ", replica_name(r))
                } else {
                    String::new()
                };
                if peak {
                    format!("{name}{} MiB (peak {} MiB)", now / 1024, high / 1024)
                } else {
                    format!("{name}{} MiB", now / 1024)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rss_idle = rss_of(&pids);

    // Connect every simulated agent, agent i to replica i mod N. A real agent has a
    // UDP socket of its own; here one socket per 100 agents keeps the bench's receive
    // queues from overflowing in a fan-out (with 4 sockets for 10,000 agents the
    // kernel dropped about 30,000 datagrams on the bench's side alone, and QUIC's
    // retransmission timers made the tail). Each replica's reports are tagged with
    // its index.
    let endpoints: Vec<quinn::Endpoint> = (0..(args.agents / 100).clamp(4, 256))
        .map(|_| bench_endpoint())
        .collect::<Result<_>>()?;
    let (tagged_tx, mut reports) = mpsc::unbounded_channel::<(usize, common::Report)>();
    let mut report_txs = Vec::new();
    for r in 0..replicas {
        let (tx, mut rx) = mpsc::unbounded_channel::<common::Report>();
        let tagged = tagged_tx.clone();
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                if tagged.send((r, report)).is_err() {
                    break;
                }
            }
        });
        report_txs.push(tx);
    }
    drop(tagged_tx);
    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let ids: Vec<String> = identities.iter().map(|i| i.id.clone()).collect();
    let mut handles = Vec::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let replica = i % replicas;
        let server_addr = servers[replica].quic;
        let tx = report_txs[replica].clone();
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
    // Let each replica register its connections (metrics gauge).
    let client = reqwest::Client::new();
    for (r, server) in servers.iter().enumerate() {
        let here = ids.len() / replicas + usize::from(r < ids.len() % replicas);
        if let Err(e) = wait_connected(&server.base, here).await {
            println!("replica {}: {e:#}", replica_name(r));
        }
    }
    let registered_s = connecting.elapsed().as_secs_f64();
    let rss_connected = rss_of(&pids);

    if !ids.is_empty() {
        // Fan-out: one request to replica A, one job per agent.
        let base = &servers[0].base;
        let t0 = micros();
        create_jobs(
            &client,
            base,
            &api_token,
            serde_json::json!({"agents": ids, "kind": "script", "script": "true"}),
            "fan-out",
        )
        .await?;
        let created_ms = (micros() - t0) as f64 / 1000.0;
        let mut started = Vec::with_capacity(ids.len());
        let mut answered = Vec::with_capacity(ids.len());
        let mut answered_on: Vec<Vec<u32>> = vec![Vec::new(); replicas];
        let mut started_on: Vec<Vec<u32>> = vec![Vec::new(); replicas];
        // Agents whose connection dropped under load never answer; report what came.
        while answered.len() < ids.len() {
            match tokio::time::timeout(Duration::from_secs(60), reports.recv()).await {
                Ok(Some((r, (s, a)))) => {
                    started.push(((s - t0) / 1000) as u32 * 1000);
                    answered.push(((a - t0) / 1000) as u32 * 1000);
                    answered_on[r].push(((a - t0) / 1000) as u32 * 1000);
                    started_on[r].push(((s - t0) / 1000) as u32 * 1000);
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
        // Simulated agents do not reconnect: a connection that closed is an agent
        // that cannot answer any more. Say how many and why, per replica.
        let mut closed: std::collections::BTreeMap<(char, String), usize> = Default::default();
        for (i, connection) in connections.iter().enumerate() {
            if let Some(reason) = connection.close_reason() {
                *closed
                    .entry((replica_name(i % replicas), reason.to_string()))
                    .or_default() += 1;
            }
        }
        for ((replica, reason), count) in &closed {
            println!("{count} agent connections to replica {replica} closed: {reason}");
        }
        if answered.len() < ids.len() {
            // What the replicas said meanwhile (their logs go with the temp dir).
            for r in 0..replicas {
                let log = dir.path().join(format!("serve-{}.log", replica_name(r)));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let warnings: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                println!(
                    "replica {}: {} warnings and errors logged, the last ones:",
                    replica_name(r),
                    warnings.len()
                );
                for line in warnings.iter().rev().take(10).rev() {
                    println!("  {line}");
                }
            }
        }
        let rss_after = rss_of(&pids);
        println!(
            "\n## fan-out: {} agents (each its own QUIC connection and certificate){}",
            ids.len(),
            if replicas > 1 {
                format!(", spread over {replicas} replicas, created through replica A")
            } else {
                String::new()
            }
        );
        println!(
            "connect all: {connect_s:.1} s (all registered by the replicas after {registered_s:.1} s); control-plane RSS idle {}, with agents connected {}",
            describe_rss(&rss_idle, false),
            describe_rss(&rss_connected, false)
        );
        println!("create request answered (201): {created_ms:.0} ms");
        println!(
            "all received the job: {:.0} ms (p50 {:.0} ms); all answered and stored (EndAck): {:.0} ms (p50 {:.0} ms)",
            percentile(&started, 1.0),
            percentile(&started, 0.5),
            percentile(&answered, 1.0),
            percentile(&answered, 0.5)
        );
        if replicas > 1 {
            for (r, (times, starts)) in answered_on.iter_mut().zip(&mut started_on).enumerate() {
                times.sort_unstable();
                starts.sort_unstable();
                println!(
                    "  agents on replica {}: all received the job after {:.0} ms (p50 {:.0} ms); {} answered, the last after {:.0} ms (p50 {:.0} ms)",
                    replica_name(r),
                    percentile(starts, 1.0),
                    percentile(starts, 0.5),
                    times.len(),
                    percentile(times, 1.0),
                    percentile(times, 0.5)
                );
            }
        }
        println!(
            "control-plane RSS after fan-out {}",
            describe_rss(&rss_after, true)
        );

        // One job at a time created through replica A for an agent on the last
        // replica: from the create request until the agent has the job (the create's
        // commit, its NOTIFY, the other replica's dispatch, the QUIC stream).
        let target = &ids[(replicas - 1).min(ids.len() - 1)];
        let mut delivered = Vec::with_capacity(SINGLE_JOBS);
        for _ in 0..SINGLE_JOBS {
            let t0 = micros();
            create_jobs(
                &client,
                base,
                &api_token,
                serde_json::json!({"agent": target, "kind": "script", "script": "true"}),
                "job",
            )
            .await?;
            match tokio::time::timeout(Duration::from_secs(10), reports.recv()).await {
                Ok(Some((_, (started, _)))) => delivered.push((started - t0) as u32),
                _ => bail!("a single job was not answered within 10 s"),
            }
        }
        delivered.sort_unstable();
        println!(
            "{SINGLE_JOBS} single jobs created on replica A, each for an agent on replica {}: \
             received by the agent p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the request",
            replica_name(replicas - 1),
            percentile(&delivered, 0.5),
            percentile(&delivered, 0.99),
            percentile(&delivered, 1.0)
        );

        // Idle RSS of a real agent (on the redb file only: it does not depend on the
        // store, and `token create` here reads the data directory's store).
        if database.is_none() {
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
                    &servers[0].quic.to_string(),
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
    }

    // Streaming: the agent on replica A, the viewers on the last replica.
    if args.lines > 0 {
        let viewers_on = servers.last().expect("at least one replica");
        let streamed = stream_to_viewers(
            &servers[0],
            viewers_on,
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
            "\n## streaming: {} lines ({:.1} MB) to {} WebSocket viewers{}",
            args.lines,
            bytes as f64 / 1e6,
            args.viewers,
            if replicas > 1 {
                format!(
                    ", the agent on replica A, the viewers on replica {}",
                    replica_name(replicas - 1)
                )
            } else {
                String::new()
            }
        );
        println!(
            "every viewer had every line in order after {seconds:.2} s: {:.1} MB/s per viewer ({:.0} MB/s delivered in total)",
            bytes as f64 / 1e6 / seconds,
            bytes as f64 * args.viewers as f64 / 1e6 / seconds
        );
        println!(
            "the agent had written every line after {:.2} s",
            streamed.written
        );
        println!(
            "line latency agent -> viewer: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 1.0)
        );
        println!(
            "  p99 / max in each tenth of the lines, in the order written: {}",
            streamed
                .by_tenth
                .iter()
                .map(|t| format!("{:.0}/{:.0}", percentile(t, 0.99), percentile(t, 1.0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("control-plane RSS {}", describe_rss(&rss_of(&pids), true));
    }
    println!("load average {}", load_average());
    if let (Some(before), Some(after)) = (stolen_before, steal_seconds()) {
        println!(
            "CPU time stolen by the hypervisor during the run: {:.2} s",
            after - before
        );
    }
    drop(connections);
    for server in servers {
        server.stop();
    }
    if let Some((url, name)) = &database {
        drop_database(url, name).await?;
    }
    Ok(())
}
