//! Data-layer benchmark: a real `dynserv serve` (release build) on a store holding a
//! year of use — by default 1,000,000 executions with 10 log lines each, 10,000
//! servers with their agents, and 200,000 audit entries.
//!
//! ```text
//! cargo build --release -p dynserv
//! cargo bench -p dynserv --bench data -- --executions 1000000 --servers 10000 --audit 200000
//! cargo bench -p dynserv --bench data -- --executions 20000 --servers 1000 --audit 5000 --baseline 2000   # smoke run
//! ```
//!
//! Measures, and prints (nothing is asserted), in this order:
//! 1. the executions list and page on a store of `--baseline` (10,000) executions
//!    with the same servers and audit, to compare with the large store;
//! 2. p50/p99 of the executions list (`GET /api/v1/executions?limit=50`, unfiltered
//!    and with each filter) and the executions page, with 1 and with `--clients` (16)
//!    concurrent clients, and `/healthz` while the many run;
//! 3. control-plane RSS before and after `--ws` (10,000) finished executions' log
//!    streams were read to their end frame;
//! 4. the servers page and the dashboard the same way (after the streams: they leave
//!    the process holding memory; one that takes over a second alone is not run with
//!    many clients);
//! 5. a fan-out to `--fanout` (20) simulated agents, idle and while the clients load
//!    `/executions` (on PostgreSQL also how often, and how long in all, the page's
//!    queries gave way to the fan-outs' in the database); live output to `--viewers`
//!    (50) WebSockets, unpaced;
//! 6. the store file's size, and what retention (`maintenance::prune_once` with its
//!    clock moved 45 days ahead, so half the executions are past it), a backup
//!    (`Store::backup_to`) and a compaction (`redb::Database::compact`, which the
//!    product does not run) make of it. `--retention-only` runs only this.
//!
//! The store is written through the library, in large transactions: users, projects,
//! scripts and agents with the domain functions, executions and audit entries with
//! `executions::seed_for_bench` / `audit::seed_for_bench`, which write exactly the
//! records, indexes and counts the domain writes but with times spread over the past
//! (88 days of executions, inside the default 90-day retention, so the server's own
//! pruner finds nothing; 360 days of audit). A seeded data directory is kept under
//! `target/bench-data/` keyed by its sizes, and each run works on a copy of it.
//!
//! `--database postgres://USER@HOST:PORT/DB` runs the same seeding (through the same
//! store API) and the same measurements with `dynserv serve` on PostgreSQL
//! (`DATABASE_URL`, `SESSION_SECRET`) instead of a redb file. The bench connects to
//! that server without TLS (meant for a throwaway cluster on loopback,
//! `scripts/test-postgres.sh start`), seeds a database named after the sizes
//! (`dynserv_bench_e…_s…_a…_v…`, kept for later runs on the same cluster), and each
//! run works on a copy of it (`CREATE DATABASE … TEMPLATE`), dropped at the end. The
//! store-size and retention step is for the redb file only; on PostgreSQL the
//! database's size is printed instead.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use common::{
    agent_client, bench_endpoint, create_database, database_exists, database_size, drop_database,
    load_average, micros, percentile, pg_settings, pg_system_identifier, rss_kib, sim_agent,
    sim_facts, sim_host_id, start_server, stream_to_viewers, target_dir, wait_connected,
    with_database, Identity, Server, BENCH_SESSION_SECRET,
};
use dynserv::agents::{self, AgentFacts};
use dynserv::audit::{self, Actor, AuditEntry};
use dynserv::executions::{self, Execution, Status, Work};
use dynserv::projects::{self, ProjectInput};
use dynserv::scripts::{self, ScriptInput};
use dynserv::secrets::Keys;
use dynserv::servers;
use dynserv::store::{Read, Store};
use dynserv::users::{self, NewUser};
use dynserv_shared::pki::{self, AgentPublicKey};
use dynserv_shared::proto::OutputStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

struct Args {
    executions: usize,
    servers: usize,
    audit: usize,
    /// Executions of the small store the list is compared with; 0 skips it.
    baseline: usize,
    clients: usize,
    /// Requests per endpoint and client count at most...
    requests: usize,
    /// ...and seconds at most.
    seconds: f64,
    ws: usize,
    fanout: usize,
    fanout_runs: usize,
    viewers: usize,
    lines: usize,
    prune: bool,
    /// Only the store's size and retention, without serving it.
    retention_only: bool,
    /// A PostgreSQL server to run on instead of redb files (`--database URL`).
    database: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        executions: 1_000_000,
        servers: 10_000,
        audit: 200_000,
        baseline: 10_000,
        clients: 16,
        requests: 400,
        seconds: 8.0,
        ws: 10_000,
        fanout: 20,
        fanout_runs: 5,
        viewers: 50,
        lines: 100_000,
        prune: true,
        retention_only: false,
        database: None,
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
        let mut value = |name: &str| -> f64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--executions" => args.executions = value("--executions") as usize,
            "--servers" => args.servers = value("--servers") as usize,
            "--audit" => args.audit = value("--audit") as usize,
            "--baseline" => args.baseline = value("--baseline") as usize,
            "--clients" => args.clients = value("--clients") as usize,
            "--requests" => args.requests = value("--requests") as usize,
            "--seconds" => args.seconds = value("--seconds"),
            "--ws" => args.ws = value("--ws") as usize,
            "--fanout" => args.fanout = value("--fanout") as usize,
            "--fanout-runs" => args.fanout_runs = value("--fanout-runs") as usize,
            "--viewers" => args.viewers = value("--viewers") as usize,
            "--lines" => args.lines = value("--lines") as usize,
            "--no-prune" => args.prune = false,
            "--retention-only" => args.retention_only = true,
            _ => {} // `cargo bench` passes --bench
        }
    }
    // The fan-out agents and the streamer are the first servers.
    args.servers = args.servers.max(args.fanout + 1);
    args
}

/// Bumped whenever what the seed writes changes, so old cached stores are not reused.
const SEED_LAYOUT: u32 = 2;
/// Executions and log chunks per seeding transaction.
const SEED_BATCH: usize = 10_000;
const PROJECTS: usize = 10;
const SCRIPTS: usize = 20;
const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];
const PASSWORD: &str = "bench-password-1";
/// How far back the executions go: inside the default retention (90 days).
const EXECUTION_DAYS: i64 = 88;
const AUDIT_DAYS: i64 = 360;

/// What a seeded data directory holds besides the store, for the bench to use.
#[derive(Serialize, Deserialize, Clone)]
struct Seeded {
    api_token: String,
    username: String,
    /// Agent ids with certificates in `agents/` (fan-out agents, then the streamer).
    real_agents: Vec<String>,
    /// Filter values that name something: an agent, its server, a project, a script.
    agent: String,
    server_id: String,
    project: String,
    script_id: String,
    script_name: String,
    /// When the seeded history ends (its newest execution).
    seeded_at: DateTime<Utc>,
    seed_seconds: f64,
    executions: usize,
    log_chunks: usize,
    audit_entries: u64,
    servers: usize,
}

/// A small deterministic generator (splitmix64): the same sizes give the same store.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn uuid_at(at: DateTime<Utc>) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    uuid::Uuid::new_v7(ts).to_string()
}

fn agent_name(n: usize) -> String {
    format!("srv-{n:05}")
}

fn script_name(n: usize) -> String {
    const VERBS: [&str; 5] = ["deploy", "rotate", "backup", "patch", "restart"];
    const THINGS: [&str; 4] = ["web", "logs", "db", "cache"];
    format!("{}-{}-{n:02}", VERBS[n % 5], THINGS[n % 4])
}

/// Where the bench's stores live.
#[derive(Clone)]
enum Backend {
    /// redb files under `target/bench-data/`.
    Redb,
    /// Databases on the PostgreSQL server of this URL (the URL's own database is only
    /// used to create and drop the others).
    Postgres(String),
}

/// A seeded store, kept between runs.
struct Cache {
    /// `bench.json` and the real agents' certificates (`agents/`); with redb also the
    /// data directory (`data/`) holding the store.
    dir: PathBuf,
    /// The database holding the store, on PostgreSQL.
    database: Option<String>,
}

/// Where the seeded data directory (or, on PostgreSQL, what goes with the database)
/// of these sizes is kept; `kind` tells stores of different backends apart.
fn cache_dir(kind: &str, executions: usize, servers: usize, audit: usize) -> PathBuf {
    target_dir().join("bench-data").join(format!(
        "{kind}-e{executions}-s{servers}-a{audit}-v{SEED_LAYOUT}"
    ))
}

/// The seeded store of these sizes, seeding it first when it is not cached.
async fn seeded(
    backend: &Backend,
    executions: usize,
    servers: usize,
    audit: usize,
    fanout: usize,
) -> Result<(Cache, Seeded)> {
    let cache = match backend {
        Backend::Redb => Cache {
            dir: cache_dir("store", executions, servers, audit),
            database: None,
        },
        Backend::Postgres(url) => {
            // Keyed by the cluster: a new throwaway cluster has none of the databases.
            let system = pg_system_identifier(url).await?;
            Cache {
                dir: cache_dir(&format!("pg{system}"), executions, servers, audit),
                database: Some(format!(
                    "dynserv_bench_e{executions}_s{servers}_a{audit}_v{SEED_LAYOUT}"
                )),
            }
        }
    };
    let present = match (backend, &cache.database) {
        (Backend::Postgres(url), Some(name)) => database_exists(url, name).await?,
        _ => true,
    };
    if let (true, Ok(text)) = (
        present,
        std::fs::read_to_string(cache.dir.join("bench.json")),
    ) {
        let seeded: Seeded = serde_json::from_str(&text)?;
        if seeded.real_agents.len() > fanout {
            println!(
                "using the seeded store {} (seeded in {:.0} s)",
                cache.database.as_deref().map_or_else(
                    || cache.dir.display().to_string(),
                    |name| format!("in the database {name}")
                ),
                seeded.seed_seconds
            );
            return Ok((cache, seeded));
        }
    }
    let partial = cache.dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(partial.join("data"))?;
    std::fs::create_dir_all(partial.join("agents"))?;
    let target = match (backend, &cache.database) {
        (Backend::Postgres(url), Some(name)) => {
            create_database(url, name, None).await?;
            Some(with_database(url, name))
        }
        _ => None,
    };
    println!(
        "seeding {executions} executions, {servers} servers, {audit} audit entries into {}",
        cache.database.as_deref().map_or_else(
            || partial.display().to_string(),
            |name| format!("the database {name}")
        )
    );
    let began = Instant::now();
    let mut seeded = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || -> Result<Seeded> {
            let data = partial.join("data");
            let (store, keys) = match &target {
                Some(url) => (
                    Store::connect(url)?,
                    Keys::load(&data, Some(BENCH_SESSION_SECRET))?,
                ),
                None => (
                    Store::open(&data.join("dynserv.redb"))?,
                    Keys::load(&data, None)?,
                ),
            };
            store.seal_with(keys.clone());
            seed(&store, &keys, &partial, executions, servers, audit, fanout)
        })
        .await??
    };
    seeded.seed_seconds = began.elapsed().as_secs_f64();
    std::fs::write(
        partial.join("bench.json"),
        serde_json::to_vec_pretty(&seeded)?,
    )?;
    let _ = std::fs::remove_dir_all(&cache.dir);
    std::fs::rename(&partial, &cache.dir)?;
    println!("seeded in {:.0} s", seeded.seed_seconds);
    Ok((cache, seeded))
}

/// One seeded agent: what its executions copy.
struct SeedAgent {
    id: String,
    project_id: String,
    server_id: Option<String>,
}

/// Seeds `store` (sealed with `keys`); the real agents' certificates and the CA's go
/// to `dir/agents/`.
fn seed(
    store: &Store,
    keys: &Keys,
    dir: &Path,
    executions: usize,
    server_count: usize,
    audit_count: usize,
    fanout: usize,
) -> Result<Seeded> {
    let ca = dynserv::fleet::ca::load_or_create(store, &dir.join("data"))?;
    std::fs::write(dir.join("agents").join("ca.pem"), ca.ca.cert_pem())?;
    let hash = users::hash_password(PASSWORD)?;
    let mut rng = Rng(0x5EED ^ executions as u64);
    let app_error = |e: dynserv::error::AppError| anyhow::anyhow!(e.message);

    // People, projects with an enrollment token each, scripts.
    let (api_token, project_list, tokens, script_list) = store.write(|w| {
        let admin = users::create(
            w,
            &Actor::cli(),
            &NewUser {
                username: Some("bench".into()),
                role: Some("admin".into()),
                ..Default::default()
            },
            Some(hash.clone()),
        )
        .map_err(app_error)?;
        for person in PEOPLE {
            users::create(
                w,
                &Actor::cli(),
                &NewUser {
                    username: Some(person.into()),
                    role: Some("technical".into()),
                    ..Default::default()
                },
                Some(hash.clone()),
            )
            .map_err(app_error)?;
        }
        let api_token = dynserv::auth::create_api_token(w, &Actor::cli(), &admin, "bench")?;
        let subject = users::subject(w, &admin)?;
        let mut project_list = Vec::new();
        let mut tokens = Vec::new();
        for p in 0..PROJECTS {
            let project = projects::create(
                w,
                keys,
                &Actor::cli(),
                &ProjectInput {
                    name: Some(format!("Project {p:02}")),
                    budget_monthly: Some(5000.0),
                    ..Default::default()
                },
            )
            .map_err(app_error)?;
            let (token, _) = agents::create_token(
                w,
                &Actor::cli(),
                &project,
                10_000,
                chrono::Duration::hours(1),
                Utc::now(),
            )
            .map_err(app_error)?;
            tokens.push(token);
            project_list.push(project);
        }
        let mut script_list = Vec::new();
        for s in 0..SCRIPTS {
            let script = scripts::create(
                w,
                &Actor::cli(),
                &subject,
                &ScriptInput {
                    name: Some(script_name(s)),
                    kind: Some("shell".into()),
                    body: Some(format!("#!/bin/sh\nset -e\necho {}\n", script_name(s))),
                    ..Default::default()
                },
            )
            .map_err(app_error)?;
            script_list.push(script);
        }
        Ok((api_token, project_list, tokens, script_list))
    })?;

    // Agents, each with its server; the first `fanout + 1` with a real certificate
    // (the fan-out agents and the streamer), the others with a made-up fingerprint
    // (they never connect).
    let mut seed_agents: Vec<SeedAgent> = Vec::with_capacity(server_count);
    let mut real_agents = Vec::new();
    let now = Utc::now();
    for batch_start in (0..server_count).step_by(1000) {
        let batch_end = (batch_start + 1000).min(server_count);
        let mut certs = Vec::new();
        for n in batch_start..batch_end {
            let name = agent_name(n);
            if n <= fanout {
                let key = pki::generate_agent_key()?;
                let public = AgentPublicKey::parse(&pki::public_key_text(&key))?;
                let (validity, _) = dynserv::fleet::certs::CertPolicy::default().validity();
                let cert = ca.ca.issue_agent_cert(&name, &public, validity)?;
                let fingerprint = hex::encode(pki::sha256(&pki::certs_from_pem(&cert)?[0]));
                std::fs::write(dir.join("agents").join(format!("{name}.crt")), &cert)?;
                std::fs::write(
                    dir.join("agents").join(format!("{name}.key")),
                    key.serialize_pem(),
                )?;
                real_agents.push(name.clone());
                certs.push(fingerprint);
            } else {
                certs.push(hex::encode(pki::sha256(name.as_bytes())));
            }
        }
        let made = store.write(|w| {
            let mut made = Vec::new();
            for (n, fingerprint) in (batch_start..batch_end).zip(&certs) {
                let name = agent_name(n);
                let host_id = sim_host_id(&name);
                let new = agents::NewAgent {
                    id: &name,
                    name: &name,
                    cert_sha256: fingerprint,
                    facts: AgentFacts::from(&sim_facts()),
                    host_id: &host_id,
                    protocol: dynserv_shared::proto::PROTOCOL_VERSION,
                    cert_expires_at: dynserv::fleet::certs::CertPolicy::default().validity().1,
                    ca_id: dynserv::fleet::ca::ORIGINAL_CA_ID,
                };
                let agent = agents::register(w, &tokens[n % PROJECTS], new, now)?
                    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
                // What a Hetzner sync adds to an enrolled server.
                if let Some(server_id) = &agent.server_id {
                    if let Some(mut server) = w.get::<servers::Server>(server_id)? {
                        server.status = if n % 10 == 9 { "off" } else { "running" }.into();
                        server.server_type = Some(["cx22", "cx32", "cpx41"][n % 3].into());
                        server.location = Some(["fsn1", "nbg1", "hel1"][n % 3].into());
                        server.image = Some("debian-12".into());
                        server.ipv4 =
                            Some(format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256));
                        server.monthly_cost = Some([4.51, 7.49, 28.55][n % 3]);
                        servers::save(w, &server)?;
                    }
                }
                made.push(SeedAgent {
                    id: agent.id,
                    project_id: agent.project_id,
                    server_id: agent.server_id,
                });
            }
            Ok(made)
        })?;
        seed_agents.extend(made);
    }
    println!("  {} agents and servers", seed_agents.len());

    // Executions, oldest first, spread evenly over EXECUTION_DAYS up to now.
    let seeded_at = Utc::now();
    let first = seeded_at - chrono::Duration::days(EXECUTION_DAYS);
    let step_ms = (EXECUTION_DAYS * 86_400_000) as f64 / executions.max(1) as f64;
    let mut log_chunks = 0;
    let mut done = 0;
    let began = Instant::now();
    while done < executions {
        let end = (done + SEED_BATCH).min(executions);
        let batch: Vec<(Execution, Vec<String>)> = (done..end)
            .map(|i| {
                let jitter = rng.below(step_ms.max(1.0) as usize) as i64;
                let created =
                    first + chrono::Duration::milliseconds((i as f64 * step_ms) as i64 + jitter);
                seeded_execution(&mut rng, created, &seed_agents, &script_list)
            })
            .collect();
        store.write(|w| {
            for (e, lines) in &batch {
                let output: Vec<(OutputStream, &str)> = lines
                    .iter()
                    .map(|l| (OutputStream::Stdout, l.as_str()))
                    .collect();
                executions::seed_for_bench(w, e, &output)?;
            }
            Ok(())
        })?;
        log_chunks += batch.iter().map(|(_, l)| l.len()).sum::<usize>();
        done = end;
        if done % 100_000 == 0 || done == executions {
            println!(
                "  {done} executions ({:.0} s)",
                began.elapsed().as_secs_f64()
            );
        }
    }

    // Audit entries over AUDIT_DAYS: the domain calls above wrote some already.
    let written = store.read(|r| r.count::<AuditEntry>())?;
    let filler = audit_count.saturating_sub(written as usize);
    let first = seeded_at - chrono::Duration::days(AUDIT_DAYS);
    let step_ms = (AUDIT_DAYS * 86_400_000) as f64 / filler.max(1) as f64;
    let mut done = 0;
    while done < filler {
        let end = (done + 2 * SEED_BATCH).min(filler);
        store.write(|w| {
            for i in done..end {
                let at = first + chrono::Duration::milliseconds((i as f64 * step_ms) as i64);
                audit::seed_for_bench(w, &seeded_audit(&mut rng, at, server_count))?;
            }
            Ok(())
        })?;
        done = end;
    }
    let audit_entries = store.read(|r| r.count::<AuditEntry>())?;
    println!("  {audit_entries} audit entries");

    let sample = 123 % server_count;
    Ok(Seeded {
        api_token,
        username: "bench".into(),
        real_agents,
        agent: agent_name(sample),
        server_id: seed_agents[sample].server_id.clone().unwrap_or_default(),
        project: project_list[3 % PROJECTS].name.clone(),
        script_id: script_list[5].id.clone(),
        script_name: script_list[5].name.clone(),
        seeded_at,
        seed_seconds: 0.0,
        executions,
        log_chunks,
        audit_entries,
        servers: seed_agents.len(),
    })
}

/// One ended execution created at `created` on a random agent, with 10 lines of
/// output: mostly shell scripts (30 % of them stored scripts), 20 % playbooks; 90 %
/// succeed.
fn seeded_execution(
    rng: &mut Rng,
    created: DateTime<Utc>,
    agents: &[SeedAgent],
    script_list: &[scripts::Script],
) -> (Execution, Vec<String>) {
    let agent_index = rng.below(agents.len());
    let agent = &agents[agent_index];
    let roll = rng.below(100);
    let (work, name, script_id) = if roll < 20 {
        let name = format!(
            "configure {}",
            ["nginx", "postgres", "users", "firewall"][roll % 4]
        );
        let playbook = format!("- name: {name}\n  hosts: all\n  tasks:\n    - name: packages\n      apt:\n        name: [curl, htop]\n");
        let work = Work::Playbook {
            playbook,
            vars: BTreeMap::new(),
            check: false,
            diff: false,
            ansible_fallback: false,
            inventory_hostname: None,
            tree: None,
            inventory_id: None,
        };
        (work, name, None)
    } else if roll < 44 {
        let script = &script_list[rng.below(script_list.len())];
        let work = Work::Script {
            interpreter: "/bin/sh".into(),
            script: script.body.clone(),
            env: BTreeMap::new(),
            working_dir: None,
        };
        (work, script.name.clone(), Some(script.id.clone()))
    } else {
        let line = [
            "apt-get update && apt-get -y upgrade",
            "systemctl restart nginx",
            "df -h /",
            "journalctl --vacuum-time=7d",
        ][roll % 4];
        let work = Work::Script {
            interpreter: "/bin/sh".into(),
            script: format!("{line}\n"),
            env: BTreeMap::new(),
            working_dir: None,
        };
        (work, line.to_string(), None)
    };
    let status_roll = rng.below(100);
    let (status, exit_code) = match status_roll {
        0..=89 => (Status::Succeeded, Some(0)),
        90..=96 => (Status::Failed, Some(1)),
        97..=98 => (Status::Cancelled, None),
        _ => (Status::TimedOut, None),
    };
    let started = created + chrono::Duration::milliseconds(300 + rng.below(2000) as i64);
    let finished = started + chrono::Duration::milliseconds(500 + rng.below(120_000) as i64);
    let id = uuid_at(created);
    let agent_label = agent_name(agent_index);
    let lines = (1..=10)
        .map(|k| {
            format!(
                "[{}] {name}: step {k} of 10 on {agent_label}: ok\n",
                (started + chrono::Duration::milliseconds(k * 40)).format("%H:%M:%S%.3f")
            )
        })
        .collect();
    let e = Execution {
        id,
        agent_id: agent.id.clone(),
        project_id: agent.project_id.clone(),
        server_id: agent.server_id.clone(),
        work,
        timeout_s: None,
        status,
        exit_code,
        summary: Some(match exit_code {
            Some(code) => format!("exit code {code}"),
            None => status.as_str().replace('_', " "),
        }),
        created_by: PEOPLE[rng.below(PEOPLE.len())].into(),
        created_at: created,
        expires_at: created + chrono::Duration::hours(1),
        started_at: Some(started),
        finished_at: Some(finished),
        cancel_requested: status == Status::Cancelled,
        script_id,
        rollout_id: None,
        name,
        agent_name: agent_label,
        output_truncated: false,
    };
    (e, lines)
}

fn seeded_audit(rng: &mut Rng, at: DateTime<Utc>, servers: usize) -> AuditEntry {
    let person = PEOPLE[rng.below(PEOPLE.len())];
    let agent = agent_name(rng.below(servers));
    let (action, target, detail) = match rng.below(10) {
        0..=5 => (
            "execution.create",
            format!("agent:{agent}"),
            "script".to_string(),
        ),
        6 => ("user.login", format!("user:{person}"), String::new()),
        7 => (
            "server.power",
            format!("server:{agent}"),
            "reboot".to_string(),
        ),
        8 => (
            "script.update",
            format!("script:{}", script_name(rng.below(SCRIPTS))),
            "body".to_string(),
        ),
        _ => (
            "project.update",
            format!("project:Project {:02}", rng.below(PROJECTS)),
            "budget".to_string(),
        ),
    };
    AuditEntry {
        id: uuid_at(at),
        at,
        actor: person.into(),
        action: action.into(),
        target,
        detail,
        ip: Some("192.0.2.10".into()),
    }
}

/// Copies a data directory (the store file and the keys beside it).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// How a request proves who it is.
#[derive(Clone)]
enum Auth {
    Bearer(String),
    Cookie(String),
    None,
}

/// Signs in through the login form (as a browser does) and returns the cookie
/// header of the session.
async fn login(base: &str, username: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookies_of = |resp: &reqwest::Response| -> Vec<String> {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(String::from)
            .collect()
    };
    let form = http.get(format!("{base}/login")).send().await?;
    let pre = cookies_of(&form).join("; ");
    let html = form.text().await?;
    let key = "name=\"csrf\" value=\"";
    let start = html.find(key).context("the login form has a csrf field")? + key.len();
    let csrf = html[start..].split('"').next().unwrap_or("").to_string();
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", &pre)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", username),
            ("password", PASSWORD),
        ])
        .send()
        .await?;
    if resp.status().as_u16() != 303 {
        bail!("login answered {}", resp.status());
    }
    let session = cookies_of(&resp)
        .into_iter()
        .find(|c| c.starts_with(dynserv::auth::SESSION_COOKIE))
        .context("a session cookie")?;
    Ok(session)
}

/// One GET; its latency in µs and the body's length. Anything but 200 is an error.
async fn get(client: &reqwest::Client, url: &str, auth: &Auth) -> Result<(u32, usize)> {
    let began = Instant::now();
    let request = client.get(url);
    let request = match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Cookie(cookie) => request.header("cookie", cookie),
        Auth::None => request,
    };
    let resp = request.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let micros = began.elapsed().as_micros() as u32;
    if status.as_u16() != 200 {
        bail!(
            "GET {url}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok((micros, body.len()))
}

/// Latencies (µs, sorted) of `clients` clients requesting `url` in a loop until
/// `requests` were made in all or `seconds` passed; the body length of the last.
async fn load(
    client: &reqwest::Client,
    url: &str,
    auth: &Auth,
    clients: usize,
    requests: usize,
    seconds: f64,
) -> Result<(Vec<u32>, usize)> {
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, auth, issued) = (
            client.clone(),
            url.to_string(),
            auth.clone(),
            issued.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut size = 0;
            while issued.fetch_add(1, Ordering::Relaxed) < requests
                && (Instant::now() < deadline || (clients == 1 && seen.len() < MIN_REQUESTS))
            {
                let (latency, len) = get(&client, &url, &auth).await?;
                seen.push(latency);
                size = len;
            }
            anyhow::Ok((seen, size))
        }));
    }
    let mut all = Vec::new();
    let mut size = 0;
    for task in tasks {
        let (seen, len) = task.await??;
        all.extend(seen);
        size = size.max(len);
    }
    all.sort_unstable();
    Ok((all, size))
}

/// `/healthz` polled every 10 ms until `stop` is set; latencies in µs.
fn probe_health(base: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u32>> {
    let url = format!("{base}/healthz");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((latency, _)) = get(&client, &url, &Auth::None).await {
                seen.push(latency);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

/// Past this 1-client median an endpoint is not run with many clients.
const SLOW_MS: f64 = 1000.0;
/// Requests the 1-client run makes at least, however slow they are.
const MIN_REQUESTS: usize = 3;

/// One measured endpoint.
struct Measured {
    name: String,
    one: Vec<u32>,
    many: Vec<u32>,
    size: usize,
}

impl Measured {
    fn row(&self) -> String {
        format!(
            "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} | {:.0} KiB |",
            self.name,
            percentile(&self.one, 0.5),
            percentile(&self.one, 0.99),
            percentile(&self.many, 0.5),
            percentile(&self.many, 0.99),
            self.one.len(),
            self.many.len(),
            self.size as f64 / 1024.0
        )
    }
}

/// Measures each `(name, path, auth)` with 1 and with `args.clients` clients;
/// `/healthz` is probed while the many clients run.
async fn measure(
    server: &Server,
    args: &Args,
    endpoints: &[(String, String, Auth)],
) -> Result<(Vec<Measured>, Vec<u32>)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut out = Vec::new();
    let mut health = Vec::new();
    for (name, path, auth) in endpoints {
        let url = format!("{}{path}", server.base);
        // Warm up (first use of the page's records, the template), briefly.
        let warming = Instant::now();
        for _ in 0..3 {
            get(&client, &url, auth).await?;
            if warming.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let (one, size) = load(&client, &url, auth, 1, args.requests, args.seconds).await?;
        // A page that takes seconds alone would only measure a queue with many
        // clients, and each of them holds its memory: it is measured with one.
        if percentile(&one, 0.5) > SLOW_MS {
            println!(
                "| {name} | {:.0} / {:.0} | not run: one request alone takes over {SLOW_MS} ms | {} / 0 | {:.0} KiB |",
                percentile(&one, 0.5),
                percentile(&one, 0.99),
                one.len(),
                size as f64 / 1024.0
            );
            out.push(Measured {
                name: name.clone(),
                one,
                many: Vec::new(),
                size,
            });
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let probe = probe_health(&server.base, stop.clone());
        let (many, _) = load(
            &client,
            &url,
            auth,
            args.clients,
            args.requests,
            args.seconds,
        )
        .await?;
        stop.store(true, Ordering::Relaxed);
        let mut probed = probe.await?;
        probed.sort_unstable();
        let measured = Measured {
            name: name.clone(),
            one,
            many,
            size,
        };
        println!(
            "{}  (healthz p99 {:.1} ms)",
            measured.row(),
            percentile(&probed, 0.99)
        );
        health.extend(probed);
        out.push(measured);
    }
    health.sort_unstable();
    Ok((out, health))
}

fn table_head(clients: usize) {
    println!("| endpoint | 1 client p50 / p99 (ms) | {clients} clients p50 / p99 (ms) | requests | body |");
    println!("| --- | --- | --- | --- | --- |");
}

/// The endpoints of the list comparison (large store against the baseline).
fn list_endpoints(token: &str, cookie: &str) -> Vec<(String, String, Auth)> {
    vec![
        (
            "GET /api/v1/executions?limit=50".into(),
            "/api/v1/executions?limit=50".into(),
            Auth::Bearer(token.into()),
        ),
        (
            "page /executions".into(),
            "/executions".into(),
            Auth::Cookie(cookie.into()),
        ),
    ]
}

fn execution_endpoints(seeded: &Seeded, token: &str, cookie: &str) -> Vec<(String, String, Auth)> {
    let bearer = Auth::Bearer(token.into());
    let day = |days: i64| {
        (seeded.seeded_at - chrono::Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let filters: Vec<(&str, String)> = vec![
        ("status", "failed".into()),
        ("server", seeded.server_id.clone()),
        ("agent", seeded.agent.clone()),
        ("project", seeded.project.replace(' ', "%20")),
        ("kind", "playbook".into()),
        ("script", seeded.script_id.clone()),
        ("started_by", "alice".into()),
        ("since", day(45)),
        ("until", day(44)),
        ("since&until", format!("{}&until={}", day(45), day(44))),
        ("q", seeded.script_name.clone()),
        ("q", seeded.agent.clone()),
    ];
    let mut out = list_endpoints(token, cookie);
    for (name, value) in filters {
        let (label, query) = match name {
            "since&until" => ("since+until (1 day)".to_string(), format!("since={value}")),
            _ => (format!("{name}={value}"), format!("{name}={value}")),
        };
        out.push((
            format!("GET /api/v1/executions?limit=50&{label}"),
            format!("/api/v1/executions?limit=50&{query}"),
            bearer.clone(),
        ));
    }
    out.push((
        "page /executions?status=failed".into(),
        "/executions?status=failed".into(),
        Auth::Cookie(cookie.into()),
    ));
    out
}

/// The pages that read every server (and the dashboard, every execution too).
fn page_endpoints(cookie: &str) -> Vec<(String, String, Auth)> {
    ["/servers", "/"]
        .into_iter()
        .map(|path| {
            let name = match path {
                "/" => "page / (dashboard)".to_string(),
                other => format!("page {other}"),
            };
            (name, path.to_string(), Auth::Cookie(cookie.into()))
        })
        .collect()
}

fn print_health(args: &Args, what: &str, health: &[u32]) {
    println!(
        "/healthz while {} clients loaded {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes)",
        args.clients,
        percentile(health, 0.5),
        percentile(health, 0.99),
        percentile(health, 1.0),
        health.len()
    );
}

/// Ids of up to `count` executions, newest first, read through the API's pages.
async fn execution_ids(server: &Server, token: &str, count: usize) -> Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < count {
        let mut url = format!("{}/api/v1/executions?limit=1000", server.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client.get(&url).bearer_auth(token).send().await?;
        // The next page is in the `link` header: `<URL?...&cursor=C>; rel="next"`.
        let next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("cursor=").nth(1))
            .and_then(|v| v.split(['&', '>']).next())
            .map(String::from);
        let items: Vec<serde_json::Value> = resp.json().await?;
        ids.extend(
            items
                .iter()
                .filter_map(|e| e["id"].as_str().map(String::from)),
        );
        match next {
            Some(next) if !items.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    ids.truncate(count);
    Ok(ids)
}

/// Opens each execution's log stream and reads it to its end frame, `parallel` at a
/// time; returns how many lines came in all.
async fn read_streams(
    server: &Server,
    token: &str,
    ids: &[String],
    parallel: usize,
) -> Result<usize> {
    let lines = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let url = format!(
                "ws://127.0.0.1:{}/api/v1/executions/{id}/stream",
                server.http_port
            );
            let token = token.to_string();
            async move {
                let mut socket = common::open_stream(&url, &token).await?;
                let mut lines = 0;
                while let Some(message) = socket.next().await {
                    let tokio_tungstenite::tungstenite::Message::Text(text) = message? else {
                        continue;
                    };
                    let frame: common::Frame = serde_json::from_str(&text)?;
                    if frame.end.is_some() {
                        return anyhow::Ok(lines);
                    }
                    lines += frame.data.as_deref().unwrap_or_default().lines().count();
                }
                bail!("the stream of {id} closed before its end frame")
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    lines.into_iter().sum()
}

/// Connects the fan-out agents; their reports come on the returned channel.
async fn connect_fanout(
    server: &Server,
    cache: &Path,
    ca: &str,
    names: &[String],
) -> Result<(
    Vec<quinn::Connection>,
    tokio::sync::mpsc::UnboundedReceiver<common::Report>,
    quinn::Endpoint,
)> {
    let endpoint = bench_endpoint()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut connections = Vec::new();
    for name in names {
        let identity = identity(cache, ca, name)?;
        connections.push(sim_agent(endpoint.clone(), server.quic, identity, tx.clone()).await?);
    }
    wait_connected(&server.base, names.len()).await?;
    Ok((connections, rx, endpoint))
}

/// The fleet CA's certificate of a seeded store: written beside the agents' since the
/// CA lives in the store; stores seeded before that kept it in `data/fleet/`.
fn ca_pem(cache: &Path) -> Result<String> {
    let beside = cache.join("agents").join("ca.pem");
    let old = cache.join("data").join("fleet").join("ca.pem");
    std::fs::read_to_string(&beside)
        .or_else(|_| std::fs::read_to_string(&old))
        .with_context(|| format!("reading {} (or {})", beside.display(), old.display()))
}

fn identity(cache: &Path, ca: &str, name: &str) -> Result<Identity> {
    let cert = std::fs::read_to_string(cache.join("agents").join(format!("{name}.crt")))?;
    let key = std::fs::read_to_string(cache.join("agents").join(format!("{name}.key")))?;
    Ok(Identity {
        id: name.to_string(),
        config: agent_client(ca, &cert, &key)?,
    })
}

/// One fan-out: ms until the request was answered, until the last agent read its
/// job, and until every agent's end was stored (its `EndAck`).
async fn fan_out(
    server: &Server,
    token: &str,
    names: &[String],
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<common::Report>,
) -> Result<(f64, f64, f64)> {
    let t0 = micros();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/executions", server.base))
        .bearer_auth(token)
        .json(&serde_json::json!({"agents": names, "kind": "script", "script": "true"}))
        .send()
        .await?;
    if response.status().as_u16() != 201 {
        bail!("fan-out: {} {}", response.status(), response.text().await?);
    }
    let created = (micros() - t0) as f64 / 1000.0;
    let (mut last_start, mut last) = (0, 0);
    for _ in names {
        let (started, acked) = tokio::time::timeout(Duration::from_secs(60), reports.recv())
            .await
            .context("an agent did not answer within 60 s")?
            .context("the agents' report channel closed")?;
        last_start = last_start.max(started);
        last = last.max(acked);
    }
    let ms = |at: u64| at.saturating_sub(t0) as f64 / 1000.0;
    Ok((created, ms(last_start), ms(last)))
}

/// The control plane's count of page-load queries that waited for other work in the
/// database, and their seconds in all (`/metrics`; PostgreSQL only, always 0 on redb).
async fn deferred_waits(base: &str) -> Result<Option<(f64, f64)>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Ok(value("dynserv_store_pg_deferred_waits")
        .zip(value("dynserv_store_pg_deferred_wait_seconds")))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// What the retention step found.
struct Retention {
    before: Usage,
    disk_prune_ms_per_execution: f64,
    report: dynserv::maintenance::PruneReport,
    prune_seconds: f64,
    after_prune: Usage,
    backup: u64,
    backup_seconds: f64,
    file_after_compact: u64,
    compact_seconds: f64,
}

/// How a redb file's bytes are used.
struct Usage {
    file: u64,
    /// Pages reachable from the tables (the rest of the file is free pages).
    allocated: u64,
    /// Keys, values and metadata in them (the rest of those pages is slack).
    stored: u64,
}

impl Usage {
    fn of(path: &Path) -> Result<Usage> {
        let file = std::fs::metadata(path)?.len();
        let db = redb::Database::open(path)?;
        let txn = db.begin_write()?;
        let stats = txn.stats()?;
        let usage = Usage {
            file,
            allocated: stats.allocated_pages() * stats.page_size() as u64,
            stored: stats.stored_bytes() + stats.metadata_bytes(),
        };
        txn.abort()?;
        Ok(usage)
    }

    fn describe(&self) -> String {
        format!(
            "file {:.0} MiB: {:.0} MiB in allocated pages, holding {:.0} MiB of keys, values and metadata",
            mib(self.file),
            mib(self.allocated),
            mib(self.stored)
        )
    }
}

/// Retention on the run's copy of the store: times a few prunes where the store is
/// (disk), then moves it to /dev/shm (fsync costs nothing there; pruning half a
/// million executions one commit each would take over an hour on this disk) and
/// runs the product's pruner until it has nothing left, with its clock 45 days
/// ahead; then compacts it.
fn retention(data: &Path) -> Result<Retention> {
    let path = data.join("dynserv.redb");
    let before = Usage::of(&path)?;
    let file_before = before.file;
    let config = dynserv::config::Config::resolve(data, &Default::default())?;
    let ahead = Utc::now() + chrono::Duration::days(45);
    let keep = config.retention.context("retention is configured")?;
    let store = Store::open(&path)?;
    // Pruning calls each kind of work's hooks, as `serve` does.
    dynserv::app::install_execution_hooks();
    let sample = 200;
    let began = Instant::now();
    let pruned = executions::prune(&store, ahead - keep, sample)?;
    let disk_prune_ms_per_execution =
        began.elapsed().as_secs_f64() * 1000.0 / pruned.executions.max(1) as f64;
    drop(store);

    let shm = Path::new("/dev/shm").join(format!("dynserv-bench-{}", std::process::id()));
    let free = dynserv::store::free_bytes(Path::new("/dev/shm")).unwrap_or(0);
    let work = if free > file_before * 2 {
        std::fs::create_dir_all(&shm)?;
        std::fs::copy(&path, shm.join("dynserv.redb"))?;
        std::fs::remove_file(&path)?;
        shm.join("dynserv.redb")
    } else {
        println!("(not enough room in /dev/shm: pruning on disk)");
        path.clone()
    };
    let store = Store::open(&work)?;
    let began = Instant::now();
    let mut report = dynserv::maintenance::PruneReport::default();
    loop {
        let pass = dynserv::maintenance::prune_once(&store, &config, ahead)?;
        if pass == Default::default() {
            break;
        }
        report.executions += pass.executions;
        report.log_chunks += pass.log_chunks;
        report.audit_entries += pass.audit_entries;
        report.notifications += pass.notifications;
    }
    report.executions += pruned.executions;
    report.log_chunks += pruned.log_chunks;
    let prune_seconds = began.elapsed().as_secs_f64();
    // What an offline copy of the live data (`dynserv backup`) weighs.
    let copy = work.with_file_name("backup.redb");
    let began = Instant::now();
    store.backup_to(&copy)?;
    let backup_seconds = began.elapsed().as_secs_f64();
    let backup = std::fs::metadata(&copy)?.len();
    std::fs::remove_file(&copy)?;
    drop(store);
    let after_prune = Usage::of(&work)?;
    let began = Instant::now();
    {
        let mut db = redb::Database::open(&work)?;
        // Compacts until no page can move any more.
        db.compact()?;
    }
    let compact_seconds = began.elapsed().as_secs_f64();
    let file_after_compact = std::fs::metadata(&work)?.len();
    if work != path {
        let _ = std::fs::remove_dir_all(&shm);
    }
    Ok(Retention {
        before,
        disk_prune_ms_per_execution,
        report,
        prune_seconds,
        after_prune,
        backup,
        backup_seconds,
        file_after_compact,
        compact_seconds,
    })
}

fn print_retention(r: &Retention) {
    println!("\n## store size and retention");
    println!("before: {}", r.before.describe());
    println!(
        "pruning on disk: {:.1} ms per execution (2 commits each)",
        r.disk_prune_ms_per_execution
    );
    println!(
        "retention with the clock 45 days ahead (executions past 90 days, audit past 365): pruned {} executions, {} log chunks, {} audit entries in {:.0} s (on /dev/shm)",
        r.report.executions, r.report.log_chunks, r.report.audit_entries, r.prune_seconds
    );
    println!("after pruning: {}", r.after_prune.describe());
    println!(
        "a backup of it (Store::backup_to, as `dynserv backup`): {:.0} MiB in {:.0} s; the file after redb's compact(): {:.0} MiB ({:.0} s)",
        mib(r.backup),
        r.backup_seconds,
        mib(r.file_after_compact),
        r.compact_seconds
    );
}

/// A copy of a seeded store for one run: a directory with the data directory
/// `dynserv serve` runs in (with redb, holding the copy of the store) and its log,
/// removed when dropped; on PostgreSQL also a copy of the seeded database, dropped by
/// [`RunCopy::finish`].
struct RunCopy {
    dir: PathBuf,
    /// The server's URL and the copy's name, on PostgreSQL.
    database: Option<(String, String)>,
}

impl Drop for RunCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RunCopy {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts `dynserv serve` on the copy.
    async fn serve(&self) -> Result<Server> {
        let env = match &self.database {
            Some((url, name)) => vec![
                ("DATABASE_URL", with_database(url, name)),
                ("SESSION_SECRET", BENCH_SESSION_SECRET.to_string()),
            ],
            None => Vec::new(),
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_server(&self.data(), &self.dir.join("serve.log"), &env).await
    }

    /// Drops the copy of the database, printing its size first (the directory goes
    /// when the copy is dropped).
    async fn finish(mut self) -> Result<()> {
        if let Some((url, name)) = self.database.take() {
            println!(
                "the run's database at the end: {:.0} MiB (pg_database_size)",
                mib(database_size(&url, &name).await?)
            );
            drop_database(&url, &name).await?;
        }
        Ok(())
    }
}

async fn run_copy(backend: &Backend, cache: &Cache, label: &str) -> Result<RunCopy> {
    let dir = target_dir()
        .join("bench-data")
        .join(format!("run-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let began = Instant::now();
    let database = match (backend, &cache.database) {
        (Backend::Postgres(url), Some(seeded)) => {
            std::fs::create_dir_all(dir.join("data"))?;
            let name = format!("dynserv_bench_run_{label}_{}", std::process::id());
            create_database(url, &name, Some(seeded)).await?;
            println!(
                "seeded database {seeded}: {:.0} MiB (pg_database_size)",
                mib(database_size(url, seeded).await?)
            );
            Some((url.clone(), name))
        }
        _ => {
            copy_dir(&cache.dir.join("data"), &dir.join("data"))?;
            let file = cache.dir.join("data").join("dynserv.redb");
            println!(
                "seeded store {}: {:.0} MiB",
                file.display(),
                mib(std::fs::metadata(&file)?.len())
            );
            None
        }
    };
    println!(
        "copied the store for this run in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Ok(RunCopy { dir, database })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    micros();
    println!(
        "data bench: {} executions, {} servers, {} audit entries; load average {}",
        args.executions,
        args.servers,
        args.audit,
        load_average()
    );
    let fanout = args.fanout;
    let backend = match &args.database {
        Some(url) => {
            println!(
                "on PostgreSQL {}: {}",
                dynserv::store::pg::redact(url),
                pg_settings(url).await?
            );
            Backend::Postgres(url.clone())
        }
        None => Backend::Redb,
    };
    if args.retention_only {
        if args.database.is_some() {
            bail!("--retention-only measures the redb file: run it without --database");
        }
        let (cache, _) =
            seeded(&backend, args.executions, args.servers, args.audit, fanout).await?;
        let copy = run_copy(&backend, &cache, "retention").await?;
        let data = copy.data();
        print_retention(&tokio::task::spawn_blocking(move || retention(&data)).await??);
        return Ok(());
    }

    // The baseline store first: its figures are compared at the end.
    let mut baseline = None;
    if args.baseline > 0 && args.baseline != args.executions {
        let (cache, seeded) =
            seeded(&backend, args.baseline, args.servers, args.audit, fanout).await?;
        let copy = run_copy(&backend, &cache, "baseline").await?;
        let server = copy.serve().await?;
        let cookie = login(&server.base, &seeded.username).await?;
        println!("\n## baseline: {} executions", seeded.executions);
        table_head(args.clients);
        let (measured, _) =
            measure(&server, &args, &list_endpoints(&seeded.api_token, &cookie)).await?;
        server.stop();
        copy.finish().await?;
        baseline = Some(measured);
    }

    let (cache, seeded) =
        seeded(&backend, args.executions, args.servers, args.audit, fanout).await?;
    let copy = run_copy(&backend, &cache, "main").await?;
    let data = copy.data();
    let server = copy.serve().await?;
    let pid = server.pid();
    let token = seeded.api_token.clone();
    let cookie = login(&server.base, &seeded.username).await?;
    let (rss_start, _) = rss_kib(pid);
    println!(
        "\n## {} executions ({} log chunks), {} servers, {} audit entries; control-plane RSS at start {:.0} MiB; load average {}",
        seeded.executions,
        seeded.log_chunks,
        seeded.servers,
        seeded.audit_entries,
        rss_start as f64 / 1024.0,
        load_average()
    );
    table_head(args.clients);
    let (measured, health) = measure(
        &server,
        &args,
        &execution_endpoints(&seeded, &token, &cookie),
    )
    .await?;
    print_health(&args, "the executions list and page", &health);

    if let Some(small) = &baseline {
        println!(
            "\n## the same list at {} and at {} executions",
            args.baseline, seeded.executions
        );
        for (b, m) in small.iter().zip(&measured) {
            let ratio = |p: f64, clients_many: bool| {
                let (x, y) = if clients_many {
                    (&m.many, &b.many)
                } else {
                    (&m.one, &b.one)
                };
                percentile(x, p) / percentile(y, p).max(0.001)
            };
            println!(
                "{}: 1 client p50 {:.1} vs {:.1} ms ({:.2}x), p99 {:.2}x; {} clients p50 {:.2}x, p99 {:.2}x",
                m.name,
                percentile(&m.one, 0.5),
                percentile(&b.one, 0.5),
                ratio(0.5, false),
                ratio(0.99, false),
                args.clients,
                ratio(0.5, true),
                ratio(0.99, true)
            );
        }
    }

    // RSS around reading many finished executions' streams.
    if args.ws > 0 {
        // Two disjoint sets: the first warms the process up (the stream handlers'
        // threads, their allocator arenas and socket buffers, which any server grows
        // once); the second, other executions, shows whether viewing more of them
        // keeps growing it.
        let mut ids = execution_ids(&server, &token, 2 * args.ws).await?;
        let warm_up = ids.split_off(ids.len() / 2);
        let (cold, _) = rss_kib(pid);
        read_streams(&server, &token, &warm_up, 64).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (before, _) = rss_kib(pid);
        println!(
            "\nwarm-up: {} other finished executions' streams read first: RSS {:.1} -> {:.1} MiB",
            warm_up.len(),
            cold as f64 / 1024.0,
            before as f64 / 1024.0
        );
        let began = Instant::now();
        let lines = read_streams(&server, &token, &ids, 64).await?;
        let took = began.elapsed().as_secs_f64();
        let (during, peak) = rss_kib(pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (after, _) = rss_kib(pid);
        println!(
            "\n## {} finished executions' log streams read to their end ({lines} lines, 64 at a time, {took:.1} s)",
            ids.len()
        );
        println!(
            "control-plane RSS before {:.1} MiB, right after {:.1} MiB, 5 s later {:.1} MiB ({:+.1} %), peak so far {:.1} MiB",
            before as f64 / 1024.0,
            during as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 / before as f64 - 1.0) * 100.0,
            peak as f64 / 1024.0
        );
    }

    // The pages that read whole tables, after the streams: they leave the process
    // holding memory it had to allocate for them.
    println!("\n## pages that read every server (the dashboard: every execution too)");
    table_head(args.clients);
    let (_, health) = measure(&server, &args, &page_endpoints(&cookie)).await?;
    print_health(&args, "the servers page and the dashboard", &health);
    let (rss, peak) = rss_kib(pid);
    println!(
        "control-plane RSS after them {:.0} MiB, peak {:.0} MiB",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );

    // A fan-out, idle and while clients load the executions page.
    if args.fanout > 0 {
        let names: Vec<String> = seeded.real_agents[..args.fanout].to_vec();
        let ca = ca_pem(&cache.dir)?;
        let (connections, mut reports, endpoint) =
            connect_fanout(&server, &cache.dir, &ca, &names).await?;
        let mut idle = Vec::new();
        for _ in 0..args.fanout_runs {
            idle.push(fan_out(&server, &token, &names, &mut reports).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let on_postgres = args.database.is_some();
        let waits_before = if on_postgres {
            deferred_waits(&server.base).await?
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut loaders = Vec::new();
        let client = reqwest::Client::new();
        for _ in 0..args.clients {
            let (client, stop) = (client.clone(), stop.clone());
            let url = format!("{}/executions", server.base);
            let auth = Auth::Cookie(cookie.clone());
            loaders.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(get(&client, &url, &auth).await?.0);
                }
                anyhow::Ok(seen)
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut loaded = Vec::new();
        for _ in 0..args.fanout_runs {
            loaded.push(fan_out(&server, &token, &names, &mut reports).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut page = Vec::new();
        for l in loaders {
            page.extend(l.await??);
        }
        page.sort_unstable();
        let mut idle_done: Vec<f64> = idle.iter().map(|r| r.2).collect();
        let mut loaded_done: Vec<f64> = loaded.iter().map(|r| r.2).collect();
        let mut idle_created: Vec<f64> = idle.iter().map(|r| r.0).collect();
        let mut loaded_created: Vec<f64> = loaded.iter().map(|r| r.0).collect();
        let mut idle_started: Vec<f64> = idle.iter().map(|r| r.1).collect();
        let mut loaded_started: Vec<f64> = loaded.iter().map(|r| r.1).collect();
        let (i, l) = (median(&mut idle_done), median(&mut loaded_done));
        println!(
            "\n## fan-out to {} agents, end to end (request until every end stored), median of {}",
            names.len(),
            args.fanout_runs
        );
        println!(
            "idle: {i:.0} ms (created {:.0} ms); while {} clients load /executions: {l:.0} ms (created {:.0} ms): {:.2}x; runs idle {:?} ms, loaded {:?} ms",
            median(&mut idle_created),
            args.clients,
            median(&mut loaded_created),
            l / i.max(0.001),
            idle_done.iter().map(|v| v.round()).collect::<Vec<_>>(),
            loaded_done.iter().map(|v| v.round()).collect::<Vec<_>>(),
        );
        let runs = |r: &[(f64, f64, f64)]| {
            r.iter()
                .map(|(c, s, d)| format!("{c:.0}/{s:.0}/{d:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "every agent had its job after (median): idle {:.0} ms, loaded {:.0} ms; each run's created/had its job/ended (ms): idle {}; loaded {}",
            median(&mut idle_started),
            median(&mut loaded_started),
            runs(&idle),
            runs(&loaded),
        );
        println!(
            "the page meanwhile: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
            percentile(&page, 0.5),
            percentile(&page, 0.99),
            page.len()
        );
        if let Some(before) = waits_before {
            let after = deferred_waits(&server.base)
                .await?
                .context("/metrics without the deferred waits")?;
            println!(
                "the page's queries that gave way to the fan-outs in the database: {} waits, {:.1} ms in all",
                after.0 - before.0,
                (after.1 - before.1) * 1000.0
            );
        }
        if args.lines > 0 {
            let streamer = identity(&cache.dir, &ca, &seeded.real_agents[args.fanout])?;
            let streamed = stream_to_viewers(
                &server,
                &server,
                &endpoint,
                streamer,
                &token,
                args.lines,
                args.viewers,
                0.0,
            )
            .await?;
            println!(
                "\n## live output: {} lines ({:.1} MB) to {} WebSocket viewers, unpaced",
                args.lines,
                streamed.bytes as f64 / 1e6,
                args.viewers
            );
            println!(
                "every viewer had every line after {:.2} s: {:.1} MB/s per viewer; line latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                streamed.seconds,
                streamed.bytes as f64 / 1e6 / streamed.seconds,
                percentile(&streamed.latencies, 0.5),
                percentile(&streamed.latencies, 0.99),
                percentile(&streamed.latencies, 1.0)
            );
        }
        drop(connections);
    }
    let (rss_end, peak) = rss_kib(pid);
    println!(
        "\ncontrol-plane RSS at the end {:.0} MiB, peak {:.0} MiB; load average {}",
        rss_end as f64 / 1024.0,
        peak as f64 / 1024.0,
        load_average()
    );
    server.stop();

    if args.prune && args.database.is_none() {
        let r = tokio::task::spawn_blocking(move || retention(&data)).await??;
        print_retention(&r);
    }
    copy.finish().await?;
    Ok(())
}
