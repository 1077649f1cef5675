//! Agents and several control-plane addresses, end to end with the real binaries on
//! loopback: enrolling with a list whose first address is dead, failing over to
//! another address when the control plane moves there, and keeping the replica list a
//! control plane announces in the agent's state directory.

use std::path::Path;
use std::time::{Duration, Instant};

use dynserv_tests::{eventually, free_port, free_udp_port, Agent, Api, ControlPlane};
use serde_json::{json, Value};

/// A control plane started with `builder`, with an admin and a project named `Fleet`.
async fn setup(builder: dynserv_tests::ControlPlaneBuilder) -> (ControlPlane, Api) {
    let cp = builder.start().await;
    cp.add_user("admin", "admin", false, "Tq4!pinewood-harbor-ledger");
    let api = cp.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201, "{body}");
    (cp, api)
}

/// Runs `echo WORD` on the agent named `agent` and checks it succeeds with that output.
async fn job_runs(api: &Api, agent: &Agent, word: &str) {
    let body = json!({"agent": agent.name(), "kind": "script", "script": format!("echo {word}"), "interpreter": "/bin/sh"});
    let (status, created) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an execution id").to_string();
    let end = eventually(
        Duration::from_secs(30),
        &format!("execution {id} ends"),
        || async {
            let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
            (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
        },
    )
    .await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    let (status, chunks) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert_eq!(status, 200);
    let stdout: String = chunks
        .iter()
        .filter(|c| c["stream"] == "stdout")
        .filter_map(|c| c["data"].as_str())
        .collect();
    assert_eq!(stdout.trim(), word);
}

/// The agent's `agent.json`.
fn agent_json(state_dir: &Path) -> Value {
    let path = state_dir.join("agent.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("agent.json is JSON")
}

/// A list of strings in the agent's `agent.json`: `servers` (given at enrollment) or
/// `announced` (by the control plane; empty when absent).
fn stored_list(state_dir: &Path, field: &str) -> Vec<String> {
    let value = agent_json(state_dir)[field].clone();
    if value.is_null() {
        return Vec::new();
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("agent.json {field}: {e}"))
}

/// The mode bits of a file.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

/// Enrolling with a list whose first address answers nothing succeeds with the next
/// one, the state directory keeps both addresses (owner-only), and the agent runs a job.
#[tokio::test]
async fn enroll_skips_a_dead_address_and_keeps_the_list() {
    let (cp, api) = setup(ControlPlane::builder()).await;
    let dead = format!("127.0.0.1:{}", free_udp_port());
    let live = cp.quic_addr();
    let mut agent = Agent::enroll(
        &format!("{dead} , {live}"),
        &cp.enrollment_token("Fleet"),
        "listed",
    );
    assert_eq!(
        stored_list(agent.state_dir(), "servers"),
        vec![dead.clone(), live.clone()]
    );
    // Older agents read only `server`: it names the first address.
    assert_eq!(agent_json(agent.state_dir())["server"], dead.as_str());
    assert_eq!(mode(&agent.state_dir().join("agent.json")), 0o600);

    agent.run();
    api.connected_agent("listed").await;
    job_runs(&api, &agent, "listed-ok").await;
    assert!(
        agent
            .logs()
            .contains(&format!("connected to the control plane at {live}")),
        "{}",
        agent.logs()
    );
}

/// A `--server` list with an empty entry is refused with one line naming it, and no
/// state is written.
#[tokio::test]
async fn enroll_refuses_an_empty_entry_in_the_list() {
    let (cp, _api) = setup(ControlPlane::builder()).await;
    let list = format!("{},,127.0.0.1:1", cp.quic_addr());
    let refused = Agent::try_enroll(&list, &cp.enrollment_token("Fleet"), "blank")
        .expect_err("enrolled with an empty entry in the list");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("entry 2") && stderr.contains("empty"),
        "{stderr}"
    );
}

/// An agent enrolled with `A,B` whose control plane comes back on B (same data dir)
/// reconnects to B within seconds, stores the list B announces (keeping A and B from
/// its enrollment), and runs a job created after the move.
#[tokio::test]
async fn agent_fails_over_to_the_next_address() {
    let (mut cp, api) = setup(ControlPlane::builder()).await;
    let a = cp.quic_addr();
    let b_port = free_port();
    let b = format!("127.0.0.1:{b_port}");
    let mut agent = Agent::enroll(&format!("{a},{b}"), &cp.enrollment_token("Fleet"), "roamer");
    agent.run();
    api.connected_agent("roamer").await;
    job_runs(&api, &agent, "before-the-move").await;
    // The control plane at A announces A alone (its public address); B stays known
    // from the enrollment.
    eventually(
        Duration::from_secs(10),
        "A's announcement stored",
        || async { (stored_list(agent.state_dir(), "announced") == vec![a.clone()]).then_some(()) },
    )
    .await;

    cp.stop();
    cp.start_again_on_quic_port(b_port).await;
    let healthy = Instant::now();
    let reconnected = format!("connected to the control plane at {b}");
    eventually(
        Duration::from_secs(30),
        "the agent connected to B",
        || async { agent.logs().contains(&reconnected).then_some(()) },
    )
    .await;
    let took = healthy.elapsed();
    // B was tried first after the loss: A, lost last, comes after it (only a first
    // address that fails is reported as "no control plane at … ; trying …").
    let skipped_a = format!("no control plane at {a}");
    assert!(!agent.logs().contains(&skipped_a), "{}", agent.logs());
    assert!(
        took <= Duration::from_secs(10),
        "the agent took {took:?} to reach B after it started\n{}",
        agent.logs()
    );
    api.connected_agent("roamer").await;
    job_runs(&api, &agent, "after-the-move").await;
    eventually(
        Duration::from_secs(10),
        "B's announcement stored",
        || async { (stored_list(agent.state_dir(), "announced") == vec![b.clone()]).then_some(()) },
    )
    .await;
    assert_eq!(
        stored_list(agent.state_dir(), "servers"),
        vec![a, b.clone()]
    );
    assert_eq!(agent_json(agent.state_dir())["server"], b.as_str());
    assert_eq!(mode(&agent.state_dir().join("agent.json")), 0o600);
}

/// The replica list a control plane announces is stored in the state directory, also
/// one written by an older agent (a single `server`); the address the agent connected
/// to stays after it, and an agent started again (whose first address, the announced
/// one, answers nothing) still connects and runs jobs.
#[tokio::test]
async fn announced_replica_list_is_stored() {
    let announced = format!("127.0.0.1:{}", free_udp_port());
    let (cp, api) = setup(ControlPlane::builder().env("DYNSERV_PUBLIC_QUIC", &announced)).await;
    let live = cp.quic_addr();
    let mut agent = Agent::enroll(&live, &cp.enrollment_token("Fleet"), "told");
    // The state directory as an agent from before address lists wrote it.
    let mut old = agent_json(agent.state_dir());
    old.as_object_mut().expect("an object").remove("servers");
    assert_eq!(old["server"], live.as_str());
    std::fs::write(agent.state_dir().join("agent.json"), old.to_string()).unwrap();

    agent.run();
    api.connected_agent("told").await;
    eventually(
        Duration::from_secs(10),
        "the announced list stored",
        || async {
            let stored = stored_list(agent.state_dir(), "announced");
            (stored == vec![announced.clone(), live.clone()]).then_some(())
        },
    )
    .await;
    assert_eq!(
        stored_list(agent.state_dir(), "servers"),
        vec![live.clone()]
    );
    assert_eq!(agent_json(agent.state_dir())["server"], announced.as_str());
    assert_eq!(mode(&agent.state_dir().join("agent.json")), 0o600);

    agent.restart();
    eventually(
        Duration::from_secs(20),
        "the restarted agent connected",
        || async {
            (agent
                .logs()
                .matches(&format!("connected to the control plane at {live}"))
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    job_runs(&api, &agent, "still-reachable").await;
}
