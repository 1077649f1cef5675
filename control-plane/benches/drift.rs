//! Drift benchmark: one drift check of a 30-task playbook on many simulated agents,
//! against a real `dynserv serve` (release build).
//!
//! ```text
//! cargo build --release -p dynserv -p dynserv-agent
//! cargo bench -p dynserv --bench drift -- --agents 1000 --drifted 5
//! ```
//!
//! Each simulated agent (its own QUIC connection and client certificate, see
//! `common::sim_agent_answering`) answers the check job with the output a real agent
//! prints: 30 task lines and the `DYNSERV-RESULT` report of 30 tasks, `--drifted` % of
//! agents with two changed tasks and their diffs. Measures, and prints (nothing is
//! asserted):
//! * wall time from `POST /api/v1/scripts/{id}/drift-check` until every agent got the
//!   `EndAck` of its check (the end stored, and with it the drift result, which the
//!   execution's end writes in its transaction);
//! * the control plane's CPU time over that span (user + system, from
//!   `/proc/PID/stat`), and its RSS;
//! * then, once, that the stored results add up (`GET /api/v1/drift`, walked).
//!
//! The agents are created directly in the store before the server starts.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{
    bench_endpoint, clock_ticks_per_second, load_average, micros, register_simulated_agents,
    rss_kib, seed_admin_and_project, sim_agent_answering, start_server, wait_connected, Answer,
    Identity,
};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

/// Tasks of the benchmark's playbook.
const TASKS: usize = 30;

struct Args {
    agents: usize,
    /// Percent of agents that report drift.
    drifted: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: 1000,
        drifted: 5,
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
            "--drifted" => args.drifted = value("--drifted"),
            _ => {} // `cargo bench` passes --bench
        }
    }
    args
}

/// The 30-task playbook: files, lines and a command per task.
fn playbook() -> String {
    let mut text = String::from("- name: Bench site\n  hosts: all\n  tasks:\n");
    for i in 0..TASKS {
        text.push_str(&format!(
            "    - name: config {i:02}\n      copy:\n        content: \"setting {i}\\n\"\n        dest: /etc/bench/{i:02}.conf\n"
        ));
    }
    text
}

/// What a simulated agent prints for a check: the task lines, the recap and the
/// report line, two tasks changed (with diffs) when `drifted`.
fn check_output(host: &str, drifted: bool) -> String {
    let mut out = String::from("\nPLAY [Bench site] ****\n");
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let changed = drifted && i < 2;
        out.push_str(&format!("\nTASK [config {i:02}] ****\n"));
        let diff = changed.then(|| {
            format!(
                "--- before: /etc/bench/{i:02}.conf\n+++ after: /etc/bench/{i:02}.conf\n@@ -1 +1 @@\n-edited by hand\n+setting {i}\n"
            )
        });
        if let Some(d) = &diff {
            out.push_str(d);
        }
        out.push_str(&format!(
            "{}: [{host}]\n",
            if changed { "changed" } else { "ok" }
        ));
        tasks.push(json!({
            "name": format!("config {i:02}"),
            "action": "copy",
            "status": if changed { "changed" } else { "ok" },
            "diff": diff,
        }));
    }
    let changed = if drifted { 2 } else { 0 };
    out.push_str(&format!(
        "\nPLAY RECAP ****\n{host} : ok={TASKS} changed={changed} unreachable=0 failed=0\n"
    ));
    let report = json!({"failed": false, "changed": changed, "tasks": tasks});
    out.push_str(&format!(
        "{}{report}\n",
        dynserv_shared::proto::RESULT_PREFIX
    ));
    out
}

/// Creates the admin (with an API token), project `Bench` and `count` agents, each
/// with its server, in the redb store in `data`.
fn seed(data: &Path, count: usize) -> Result<(String, Vec<Identity>)> {
    let store = Store::open(&data.join("dynserv.redb"))?;
    let keys = Keys::load(data, None)?;
    store.seal_with(keys.clone());
    let ca = dynserv::fleet::ca::load_or_create(&store, data)?;
    let (api_token, token) = seed_admin_and_project(&store, &keys)?;
    let names: Vec<String> = (0..count).map(|i| format!("sim-{i:05}")).collect();
    let identities = register_simulated_agents(&store, &ca, &token, &names)?;
    Ok((api_token, identities))
}

/// User + system CPU seconds of a process so far (`/proc/PID/stat`, clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `)` + state.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

async fn api(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let value = response.json().await.unwrap_or(Value::Null);
    Ok((status, value))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    micros();
    println!("load average {}", load_average());
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let seeded = Instant::now();
    let (token, identities) = {
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

    // Connect every simulated agent; one in `100 / drifted` reports drift.
    let every = 100usize
        .checked_div(args.drifted)
        .map_or(usize::MAX, |n| n.max(1));
    let endpoints: Vec<quinn::Endpoint> =
        (0..4).map(|_| bench_endpoint()).collect::<Result<_>>()?;
    let (report_tx, mut reports) = mpsc::unbounded_channel::<common::Report>();
    let gate = Arc::new(Semaphore::new(64));
    let mut handles = Vec::new();
    let address = server.quic;
    for (i, identity) in identities.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let tx = report_tx.clone();
        let gate = gate.clone();
        let host = identity.id.clone();
        let drifted = i % every == 0;
        let answer: Answer = Arc::new(move |_| check_output(&host, drifted));
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            sim_agent_answering(endpoint, address, identity, tx, answer).await
        }));
    }
    let mut connections = Vec::new();
    for h in handles {
        connections.push(h.await??);
    }
    drop(report_tx);
    wait_connected(&server.base, args.agents).await?;
    println!("{} agents connected", args.agents);

    // The script and its desired state (a yearly schedule: only Check now runs it).
    let client = reqwest::Client::new();
    let (status, script) = api(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/scripts", server.base),
        &token,
        Some(json!({"name": "bench site", "kind": "playbook", "project": "Bench", "body": playbook()})),
    )
    .await?;
    if status != 201 {
        bail!("creating the script: {status} {script}");
    }
    let script_id = script["id"].as_str().unwrap_or_default().to_string();
    let (status, body) = api(
        &client,
        reqwest::Method::PUT,
        format!("{}/api/v1/scripts/{script_id}/desired-state", server.base),
        &token,
        Some(json!({"targets": {"project": "Bench"}, "schedule": "0 0 1 1 *"})),
    )
    .await?;
    if status != 200 {
        bail!("marking the desired state: {status} {body}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // One check of every server.
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let (status, body) = api(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/scripts/{script_id}/drift-check", server.base),
        &token,
        None,
    )
    .await?;
    if status != 202 {
        bail!("starting the check: {status} {body}");
    }
    let created_s = started.elapsed().as_secs_f64();
    let mut stored = 0usize;
    while stored < args.agents {
        match tokio::time::timeout(Duration::from_secs(300), reports.recv()).await {
            Ok(Some(_)) => stored += 1,
            _ => bail!("only {stored} of {} checks ended", args.agents),
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid) - cpu_before;
    let (rss, peak) = rss_kib(pid);
    println!(
        "one drift check of a {TASKS}-task playbook on {} agents: created in {created_s:.2} s, \
         every result stored after {wall_s:.2} s; control-plane CPU {cpu_s:.2} s \
         ({:.0} % of one core over the span); RSS {} MiB (peak {} MiB)",
        args.agents,
        cpu_s / wall_s * 100.0,
        rss / 1024,
        peak / 1024
    );

    // The results add up.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut url = format!("{}/api/v1/drift?project=Bench&limit=1000", server.base);
    loop {
        let response = client.get(&url).bearer_auth(&token).send().await?;
        let next = response
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split_once('<'))
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(u, _)| u.to_string());
        let page: Vec<Value> = response.json().await?;
        for r in &page {
            *counts
                .entry(r["status"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        match next {
            Some(n) if n.starts_with("http") => url = n,
            Some(n) => url = format!("{}{n}", server.base),
            None => break,
        }
    }
    println!("stored results: {counts:?}");
    drop(connections);
    server.stop();
    Ok(())
}
