//! Server-metrics ingest benchmark: what the heartbeats of `--agents` (10,000) agents
//! cost the control plane in CPU, through the real code path of `server_metrics`
//! (each heartbeat's `Sample::of_heartbeat` and `Buffer::record`, the flusher's
//! `flush` every 5 s of simulated time: one transaction of the closed 10-second and
//! 5-minute points with their expiry entries), in process, on a fresh store.
//!
//! ```text
//! cargo bench -p dynserv --bench metrics -- --agents 10000 --minutes 10
//! cargo bench -p dynserv --bench metrics -- --agents 10000 --minutes 10 --database "$URL"
//! ```
//!
//! Prints (nothing is asserted): CPU seconds of this process per simulated minute of
//! heartbeats (user + system, from `getrusage`; on PostgreSQL the server's own CPU is
//! not in it), the wall time of the flushes (p50, max) and the points written, then
//! the cost of expiring them (the clock moved past their retention). Time is
//! simulated: heartbeats every 5 s per agent, spread over each 5 s, as fast as the
//! code takes them; the figure is the work, not a wait.
//!
//! With `--database postgres://USER@HOST:PORT/DB` the store is a fresh database next to
//! the URL's own (dropped at the end), as in the fleet bench.

mod common;

use std::time::Instant;

use anyhow::Result;
use common::{create_database, drop_database, percentile, with_database};
use dynserv::server_metrics::{self, Buffer, Sample};
use dynserv::store::Store;
use dynserv_shared::proto::Load;

struct Args {
    agents: usize,
    minutes: usize,
    database: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: 10_000,
        minutes: 10,
        database: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value =
            |name: &str| -> String { it.next().unwrap_or_else(|| panic!("{name} needs a value")) };
        match arg.as_str() {
            "--agents" => args.agents = value("--agents").parse().expect("--agents N"),
            "--minutes" => args.minutes = value("--minutes").parse().expect("--minutes N"),
            "--database" => args.database = Some(value("--database")),
            _ => {} // `cargo bench` passes --bench
        }
    }
    args
}

/// CPU seconds (user + system) this process used so far.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    let dir = tempfile::tempdir()?;
    let name = format!("dynserv_bench_metrics_{}", std::process::id());
    let store = match &args.database {
        Some(url) => {
            create_database(url, &name, None).await?;
            let url = with_database(url, &name);
            tokio::task::spawn_blocking(move || Store::connect(&url)).await??
        }
        None => Store::open(&dir.path().join("metrics.redb"))?,
    };
    println!(
        "metrics ingest: {} agents, {} simulated minutes, store {}",
        args.agents,
        args.minutes,
        store.describe()
    );
    let servers: Vec<String> = (0..args.agents)
        .map(|i| format!("0190c0de-0000-7000-8000-{i:012}"))
        .collect();
    let report = tokio::task::spawn_blocking(move || run(&store, &servers, args.minutes)).await??;
    println!("{report}");
    if let Some(url) = &args.database {
        drop_database(url, &name).await?;
    }
    Ok(())
}

fn run(store: &Store, servers: &[String], minutes: usize) -> Result<String> {
    dynserv::store::allow_blocking_here();
    let buffer = Buffer::default();
    let t0: i64 = 1_800_000_000;
    let periods = minutes * 12;
    let mut flush_us: Vec<u32> = Vec::with_capacity(periods);
    let mut written = 0usize;
    let cpu_start = cpu_seconds();
    let wall = Instant::now();
    for period in 0..periods {
        let base = t0 + period as i64 * 5;
        for (i, server) in servers.iter().enumerate() {
            // Agents' heartbeats are spread over the 5 s.
            let at = base + (i % 5) as i64;
            let load = Load {
                load: [0.1 * (i % 30) as f64, 0.2, 0.3],
                memory_total: 8 << 30,
                memory_available: (4 << 30) + (i as u64 % 1000) * 4096,
                disk_total: 80 << 30,
                disk_available: 40 << 30,
                uptime_s: 86_400,
                running_jobs: 0,
                cpu_percent: Some((i % 100) as f64),
            };
            let sample = Sample::of_heartbeat(
                &load,
                chrono::DateTime::from_timestamp(at, 0).unwrap_or_default(),
            );
            buffer.record(server, &sample);
        }
        let started = Instant::now();
        written += server_metrics::flush(store, &buffer, base + 5, false)?;
        flush_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    let cpu = cpu_seconds() - cpu_start;
    let wall = wall.elapsed().as_secs_f64();
    flush_us.sort_unstable();

    let cpu_expire_start = cpu_seconds();
    let expire_wall = Instant::now();
    let far = t0 + periods as i64 * 5 + server_metrics::COARSE.keep_secs + 2 * 86_400;
    let mut expired = 0usize;
    loop {
        let done = server_metrics::expire(store, far, 50_000)?;
        expired += done.points;
        if done.points == 0 {
            break;
        }
    }
    let expire_cpu = cpu_seconds() - cpu_expire_start;
    Ok(format!(
        "  ingest: {:.3} CPU s per minute of heartbeats ({:.1} % of one core; {} heartbeats/min), \
         {cpu:.2} CPU s and {wall:.2} s wall in all\n  \
         flushes: {} transactions, {written} points, p50 {:.1} ms, max {:.1} ms\n  \
         expiry: {expired} points in {:.2} s wall, {expire_cpu:.2} CPU s",
        cpu / minutes as f64,
        cpu / minutes as f64 / 60.0 * 100.0,
        servers.len() * 12,
        flush_us.len(),
        percentile(&flush_us, 0.5),
        percentile(&flush_us, 1.0),
        expire_wall.elapsed().as_secs_f64(),
    ))
}
