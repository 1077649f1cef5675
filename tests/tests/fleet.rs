//! The agent fleet end to end: real `dynserv serve` and `dynserv-agent` binaries on
//! loopback. Enrollment and its refusals, jobs whose output arrives complete and in
//! order in the store and on WebSockets, also across an agent kill and a control-plane
//! restart, cancel, revocation, and the demo's local agent.

use std::time::{Duration, Instant};

use dynserv_tests::{eventually, Agent, Api, ControlPlane};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const LINES: usize = 20_000;

/// A control plane with an admin and a project named `Fleet`.
async fn setup() -> (ControlPlane, Api) {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201, "{body}");
    (cp, api)
}

/// Waits until the agent named `name` is connected; returns its id.
async fn connected_agent(api: &Api, name: &str) -> String {
    api.connected_agent(name).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn start_script(api: &Api, agent: &str, script: &str) -> String {
    let body =
        json!({"agent": agent, "kind": "script", "script": script, "interpreter": "/bin/sh"});
    let (status, created) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "queued");
    created["id"].as_str().expect("an execution id").to_string()
}

/// Checks that chunks are numbered 0.. without a gap or a repeat and returns the
/// concatenated stdout.
fn stdout_of(chunks: &[Value]) -> String {
    let mut text = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(
            chunk["seq"].as_u64(),
            Some(i as u64),
            "chunk {i} is out of order: {chunk}"
        );
        if chunk["stream"] == "stdout" {
            text.push_str(chunk["data"].as_str().unwrap_or_default());
        }
    }
    text
}

/// Checks the text is exactly `line 1` … `line n`, each once, in order.
fn assert_lines(text: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "expected {n} lines, got {}", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("line {}", i + 1), "line {} is wrong", i + 1);
    }
}

/// Reads a WebSocket to its end frame: (chunks, end).
async fn websocket_log(api: &Api, id: &str, from_seq: u64) -> (Vec<Value>, Value) {
    let mut socket = api
        .websocket(&format!(
            "/api/v1/executions/{id}/stream?from_seq={from_seq}"
        ))
        .await;
    let mut chunks = Vec::new();
    let deadline = Duration::from_secs(180);
    loop {
        let message = tokio::time::timeout(deadline, socket.next())
            .await
            .expect("the WebSocket went quiet")
            .expect("the WebSocket closed before the end frame")
            .expect("reading the WebSocket");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("a JSON frame");
            if value.get("end").is_some() {
                return (chunks, value["end"].clone());
            }
            chunks.push(value);
        }
    }
}

/// A script printing `line 1` … `line 20000`, pausing every 1000 lines so that a test
/// can interrupt it midway.
fn slow_lines_script() -> String {
    format!("i=1\nwhile [ $i -le {LINES} ]; do\n  echo \"line $i\"\n  if [ $((i % 1000)) -eq 0 ]; then sleep 0.25; fi\n  i=$((i+1))\ndone\n")
}

async fn log_of(api: &Api, id: &str) -> Vec<Value> {
    let (status, chunks) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert_eq!(status, 200);
    chunks
}

/// Enrollment, then a 20,000-line job: every line in order in the stored log, on a
/// WebSocket that followed it live, and on one that replays it afterwards.
#[tokio::test]
async fn twenty_thousand_lines_in_order_in_the_store_and_on_websockets() {
    let (cp, api) = setup().await;
    let token = cp.enrollment_token("Fleet");
    assert!(
        token.starts_with("dsv1.") && !token.contains('\n'),
        "{token}"
    );
    let _agent = Agent::start(&cp, &token, "web-01");
    let agent_id = connected_agent(&api, "web-01").await;

    let (_, agents) = api.get("/api/v1/agents").await;
    let agent = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == agent_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(agent["project"], "Fleet");
    assert!(agent["facts"]["cpus"].as_u64().unwrap() >= 1, "{agent}");
    assert!(
        agent["facts"]["memory_bytes"].as_u64().unwrap() > 0,
        "{agent}"
    );
    assert!(
        !agent["facts"]["kernel"].as_str().unwrap().is_empty(),
        "{agent}"
    );
    assert!(!agent["version"].as_str().unwrap().is_empty(), "{agent}");
    let (_, servers) = api.get("/api/v1/servers").await;
    let server = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web-01")
        .expect("a server for the agent");
    assert_eq!(server["project"], "Fleet");
    assert_eq!(server["agent"]["id"], agent_id.as_str(), "{server}");
    assert_eq!(
        server["agent"]["connected"], true,
        "the server shows its agent's live state: {server}"
    );

    let script = format!(
        "i=1\nwhile [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i+1)); done\necho done >&2\n"
    );
    let id = start_script(&api, "web-01", &script).await;
    let live = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move { websocket_log(&api, &id, 0).await })
    };
    let end = api.execution_end(&id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["exit_code"], 0);
    assert!(
        end["started_at"].is_string() && end["finished_at"].is_string(),
        "{end}"
    );

    let stored = log_of(&api, &id).await;
    assert_lines(&stdout_of(&stored), LINES);
    assert!(stored
        .iter()
        .any(|c| c["stream"] == "stderr" && c["data"] == "done\n"));

    let (live_chunks, live_end) = live.await.unwrap();
    assert_eq!(
        live_chunks, stored,
        "the live WebSocket saw something else than the store"
    );
    assert_eq!(live_end, json!({"status": "succeeded", "exit_code": 0}));

    let (replayed, _) = websocket_log(&api, &id, 0).await;
    assert_eq!(replayed, stored);
    let middle = stored.len() as u64 / 2;
    let (tail, _) = websocket_log(&api, &id, middle).await;
    assert_eq!(tail.as_slice(), &stored[middle as usize..]);

    let (_, tail_log) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log?from_seq={middle}"))
        .await;
    assert_eq!(tail_log.as_slice(), &stored[middle as usize..]);
}

/// An agent killed mid-job and started again delivers every line exactly once, and
/// the job's end is recorded; a viewer connected throughout sees the same.
#[tokio::test]
async fn agent_killed_mid_job_loses_and_duplicates_nothing() {
    let (cp, api) = setup().await;
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Fleet"), "kill-me");
    connected_agent(&api, "kill-me").await;
    let id = start_script(&api, "kill-me", &slow_lines_script()).await;
    let live = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move { websocket_log(&api, &id, 0).await })
    };
    eventually(Duration::from_secs(30), "some output stored", || async {
        (log_of(&api, &id).await.len() >= 2).then_some(())
    })
    .await;
    agent.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.run();

    let end = api.execution_end(&id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    let stored = log_of(&api, &id).await;
    assert_lines(&stdout_of(&stored), LINES);
    let (live_chunks, live_end) = live.await.unwrap();
    assert_eq!(live_chunks, stored);
    assert_eq!(live_end["status"], "succeeded");
}

/// A control plane restarted mid-job gets every line exactly once after the agent
/// reconnects, and records the job's end.
#[tokio::test]
async fn control_plane_restarted_mid_job_loses_and_duplicates_nothing() {
    let (mut cp, api) = setup().await;
    let agent = Agent::start(&cp, &cp.enrollment_token("Fleet"), "steady");
    connected_agent(&api, "steady").await;
    let id = start_script(&api, "steady", &slow_lines_script()).await;
    eventually(Duration::from_secs(30), "some output stored", || async {
        (log_of(&api, &id).await.len() >= 2).then_some(())
    })
    .await;
    cp.restart().await;

    let end = api.execution_end(&id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    let stored = log_of(&api, &id).await;
    assert_lines(&stdout_of(&stored), LINES);
    let (replayed, replay_end) = websocket_log(&api, &id, 0).await;
    assert_eq!(replayed, stored);
    assert_eq!(replay_end["exit_code"], 0);
}

/// A token is spent by use; an expired, a forged or a used-up token is refused, and a
/// token whose CA fingerprint does not match the control plane makes the agent refuse
/// to enroll (without spending the token).
#[tokio::test]
async fn reused_expired_forged_and_mismatched_credentials_are_refused() {
    let (cp, api) = setup().await;
    let quic = cp.quic_addr();

    let token = cp.enrollment_token("Fleet");
    let (prefix, hash) = token.rsplit_once('.').unwrap();

    // The CA fingerprint does not match: the agent refuses, and the token stays good.
    let wrong_hash = format!("{prefix}.{}", "ab".repeat(32));
    assert_ne!(hash, "ab".repeat(32));
    let refused =
        Agent::try_enroll(&quic, &wrong_hash, "mismatch").expect_err("enrolled with a foreign CA");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("CA") || stderr.contains("fingerprint"),
        "{stderr}"
    );

    Agent::enroll(&quic, &token, "first");
    let reused = Agent::try_enroll(&quic, &token, "second").expect_err("a used-up token enrolled");
    assert!(
        String::from_utf8_lossy(&reused.stderr).contains("used up"),
        "{reused:?}"
    );

    let forged = format!("dsv1.{}.{hash}", "x".repeat(43));
    let out = Agent::try_enroll(&quic, &forged, "forged").expect_err("a forged token enrolled");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown"),
        "{out:?}"
    );

    let short = cp.cli_ok(&["token", "create", "--project", "Fleet", "--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = Agent::try_enroll(&quic, &short, "late").expect_err("an expired token enrolled");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );

    let multi = cp.cli_ok(&["token", "create", "--project", "Fleet", "--uses", "2"]);
    Agent::enroll(&quic, &multi, "m1");
    Agent::enroll(&quic, &multi, "m2");
    assert!(Agent::try_enroll(&quic, &multi, "m3").is_err());

    for bad in [
        vec!["token", "create", "--project", "Nope"],
        vec!["token", "create", "--project", "Fleet", "--ttl", "soon"],
    ] {
        let out = cp.run_cli(&bad);
        assert!(!out.status.success(), "{bad:?} succeeded");
    }
    let (_, agents) = api.get("/api/v1/agents").await;
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(
        names.contains(&"first") && names.contains(&"m2") && !names.contains(&"second"),
        "{names:?}"
    );
}

/// Twenty refused enrollments from one network (here one address of it) delay that
/// network for a while: even a good token is then refused with the reason, and is not
/// spent.
#[tokio::test]
async fn repeated_refused_enrollments_lock_the_address() {
    let (cp, api) = setup().await;
    let quic = cp.quic_addr();
    let token = cp.enrollment_token("Fleet");
    let (_, hash) = token.rsplit_once('.').unwrap();
    for i in 0..20u8 {
        let guess: String = std::iter::repeat_n(char::from(b'a' + i), 43).collect();
        let forged = format!("dsv1.{guess}.{hash}");
        let out = Agent::try_enroll(&quic, &forged, "guess").expect_err("a forged token enrolled");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown"),
            "attempt {i}: {out:?}"
        );
    }
    let out = Agent::try_enroll(&quic, &token, "honest").expect_err("enrolled while locked");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("too many failed enrollments from this network"),
        "{stderr}"
    );
    let (_, agents) = api.get("/api/v1/agents").await;
    assert!(
        !agents.to_string().contains("\"honest\""),
        "the locked-out attempt enrolled: {agents}"
    );
}

/// A certificate presented with another agent's identity is refused, and so is a
/// revoked agent, whose jobs cannot be started either.
#[tokio::test]
async fn forged_identity_and_revoked_agents_are_refused() {
    let (cp, api) = setup().await;
    let quic = cp.quic_addr();
    let token = cp.cli_ok(&["token", "create", "--project", "Fleet", "--uses", "2"]);
    let mut honest = Agent::enroll(&quic, &token, "honest");
    let mut thief = Agent::enroll(&quic, &token, "thief");
    // The thief claims the honest agent's id with its own (valid) certificate.
    let honest_info = std::fs::read_to_string(honest.state_dir().join("agent.json")).unwrap();
    std::fs::write(thief.state_dir().join("agent.json"), honest_info).unwrap();
    thief.run();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, agents) = api.get("/api/v1/agents").await;
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["connected"] == false),
        "{agents}"
    );

    honest.run();
    let id = connected_agent(&api, "honest").await;
    let (status, revoked) = api.post_empty(&format!("/api/v1/agents/{id}/revoke")).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], true);
    eventually(
        Duration::from_secs(15),
        "the revoked agent is disconnected",
        || async {
            let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
            (a["connected"] == false).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(
        a["connected"],
        false,
        "a revoked agent reconnected: {}",
        honest.logs()
    );
    let body = json!({"agent": id, "kind": "script", "script": "echo no"});
    let (status, _) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 422);
}

/// A stopped agent shows as disconnected within 15 seconds, and `/metrics` counts
/// connected agents.
#[tokio::test]
async fn stopped_agent_shows_disconnected_within_15_seconds() {
    let (cp, api) = setup().await;
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Fleet"), "brief");
    let id = connected_agent(&api, "brief").await;
    let (_, metrics) = api.get_text("/metrics").await;
    assert!(metrics.contains("dynserv_agents_connected 1"), "{metrics}");
    assert!(metrics.contains("dynserv_jobs_running"), "{metrics}");
    agent.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the agent shows disconnected",
        || async {
            let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
            (a["connected"] == false).then_some(())
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed.elapsed()
    );
    let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
    assert!(a["last_seen"].is_string(), "{a}");
}

/// Cancel kills a running job's process group and records it as cancelled; a queued
/// job for an offline agent waits and runs when the agent connects.
#[tokio::test]
async fn cancel_and_delivery_to_an_agent_that_was_offline() {
    let (cp, api) = setup().await;
    let mut agent = Agent::enroll(&cp.quic_addr(), &cp.enrollment_token("Fleet"), "later");
    let (_, list) = api.get("/api/v1/agents").await;
    let agent_id = list[0]["id"].as_str().unwrap().to_string();
    let queued = start_script(&api, &agent_id, "echo delivered; exit 3\n").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, e) = api.get(&format!("/api/v1/executions/{queued}")).await;
    assert_eq!(e["status"], "queued");
    agent.run();
    let end = api.execution_end(&queued, Duration::from_secs(60)).await;
    assert_eq!(
        (end["status"].as_str(), end["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{end}"
    );
    assert_eq!(stdout_of(&log_of(&api, &queued).await), "delivered\n");

    let running = start_script(&api, &agent_id, "echo start\nsleep 60 &\nwait\n").await;
    eventually(Duration::from_secs(30), "the job runs", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{running}")).await;
        (e["status"] == "running").then_some(())
    })
    .await;
    let (status, _) = api
        .post_empty(&format!("/api/v1/executions/{running}/cancel"))
        .await;
    assert_eq!(status, 202);
    let end = api.execution_end(&running, Duration::from_secs(20)).await;
    assert_eq!(end["status"], "cancelled", "{end}");
    let (status, _) = api
        .post_empty(&format!("/api/v1/executions/{running}/cancel"))
        .await;
    assert_eq!(status, 409);

    for bad in [
        json!({"agent": agent_id, "kind": "script"}),
        json!({"agent": "nobody", "kind": "script", "script": "true"}),
        json!({"agent": agent_id, "kind": "weird", "script": "true"}),
        json!({"agent": agent_id, "kind": "script", "script": "true", "env": {"1BAD": "x"}}),
    ] {
        let (status, body) = api.post("/api/v1/executions", &bad).await;
        assert!(status == 400 || status == 422, "{bad} → {status} {body}");
    }
}

/// `serve --demo` enrolls a local agent named `localhost` in project `Local` that runs
/// scripts.
#[tokio::test]
async fn demo_enrolls_a_local_agent() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let id = connected_agent(&api, "localhost").await;
    let (_, agent) = api.get(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(agent["project"], "Local");
    let exec = start_script(&api, "localhost", "echo hello from the demo\n").await;
    let end = api.execution_end(&exec, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(
        stdout_of(&log_of(&api, &exec).await),
        "hello from the demo\n"
    );
}

/// A cookie-keeping client for the pages that never follows redirects.
struct Pages {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Pages {
    async fn login(cp: &ControlPlane, username: &str, password: &str) -> Pages {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut pages = Pages {
            base: cp.base_url(),
            http,
            cookies: Vec::new(),
        };
        let csrf = pages.csrf("/login").await;
        let (status, _) = pages
            .post(
                "/login",
                &[
                    ("csrf", &csrf),
                    ("username", username),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(status, 303, "login as {username}");
        pages
    }

    fn keep(&mut self, resp: &reqwest::Response) {
        for value in resp.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.retain(|(name, _)| name != k);
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
    }

    fn cookie(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie())
            .send()
            .await
            .unwrap();
        self.keep(&resp);
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// POST a form; answers the status and the Location (or the body when none).
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep(&resp);
        let status = resp.status().as_u16();
        match resp.headers().get("location") {
            Some(location) => (status, location.to_str().unwrap().to_string()),
            None => (status, resp.text().await.unwrap()),
        }
    }

    async fn csrf(&mut self, path: &str) -> String {
        let (status, html) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {html}");
        let marker = "name=\"csrf\" value=\"";
        let start = html.find(marker).expect("a csrf field") + marker.len();
        html[start..].split('"').next().unwrap().to_string()
    }
}

/// The fleet pages: agents, enrollment token (shown once), the run form of a server
/// that opens the execution page with its live log, cancel, and no access for people
/// outside the project.
#[tokio::test]
async fn fleet_pages_work_for_an_admin_and_hide_other_projects() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    connected_agent(&api, "localhost").await;
    let mut admin = Pages::login(&cp, "admin", "admin123").await;

    let (status, html) = admin.get("/agents").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("localhost") && html.contains("connected"),
        "{html}"
    );

    let csrf = admin.csrf("/agents/enroll").await;
    let (status, html) = admin
        .post(
            "/agents/enroll",
            &[
                ("csrf", &csrf),
                ("project", "Local"),
                ("uses", "2"),
                ("ttl", "1h"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("dsv1.") && html.contains("dynserv-agent enroll --server"),
        "{html}"
    );
    let (status, html) = admin
        .post(
            "/agents/enroll",
            &[
                ("csrf", &csrf),
                ("project", "Local"),
                ("uses", "2"),
                ("ttl", "soon"),
            ],
        )
        .await;
    assert_eq!(status, 422, "an invalid form is re-rendered with 422");
    assert!(
        html.contains("is-invalid") && !html.contains("dsv1."),
        "{html}"
    );

    let (_, servers) = api.get("/api/v1/servers").await;
    let server = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "localhost")
        .expect("the local server")
        .clone();
    let server_id = server["id"].as_str().unwrap();
    let run = format!("/servers/{server_id}/run");
    let csrf = admin.csrf(&run).await;
    let (status, html) = admin
        .post(
            &run,
            &[("csrf", &csrf), ("script", ""), ("interpreter", "/bin/sh")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("is-invalid"), "{html}");
    let (status, location) = admin
        .post(
            &run,
            &[
                ("csrf", &csrf),
                ("script", "echo \"from the page $WHO\"\n"),
                ("interpreter", "/bin/sh"),
                ("env", "WHO=admin"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{location}");
    let id = location
        .strip_prefix("/executions/")
        .expect("redirect to the execution")
        .to_string();
    let end = api.execution_end(&id, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded");
    assert_eq!(stdout_of(&log_of(&api, &id).await), "from the page admin\n");
    let (status, html) = admin.get(&location).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("log-viewer") && html.contains(&format!("/api/v1/executions/{id}/stream")),
        "{html}"
    );
    let (status, html) = admin.get("/executions").await;
    assert_eq!(status, 200);
    assert!(html.contains(&id));
    let csrf = admin.csrf(&location).await;
    let (status, _) = admin
        .post(&format!("{location}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(
        status, 303,
        "cancelling an ended job redirects with a message"
    );

    let mut sohila = Pages::login(&cp, "sohila", "sohila123").await;
    let (status, _) = sohila.get(&location).await;
    assert_eq!(status, 404);
    let (status, html) = sohila.get("/agents").await;
    assert_eq!(status, 200);
    assert!(
        !html.contains("localhost"),
        "sohila sees the Local project's agent"
    );
    let sohila_api = cp.api_as("sohila");
    let (status, _) = sohila_api.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 404);
    let body = json!({"agent": "localhost", "kind": "script", "script": "id"});
    let (status, _) = sohila_api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 422, "sohila may not even name the Local agent");
}

/// An agent started with a relative `--state-dir` (as a newcomer types it, and as the
/// demo's `./data/local-agent` is) runs jobs: they run in another working directory,
/// where the relative path would not find the job's exit-code file.
#[tokio::test]
async fn an_agent_with_a_relative_state_dir_runs_jobs() {
    let (cp, api) = setup().await;
    let cwd = tempfile::tempdir().unwrap();
    let agent = |args: &[&str]| {
        let mut command = std::process::Command::new(dynserv_tests::agent_binary());
        command
            .args(args)
            .current_dir(cwd.path())
            .stdin(std::process::Stdio::null());
        command
    };
    let token = cp.enrollment_token("Fleet");
    let enrolled = agent(&[
        "enroll",
        "--server",
        &cp.quic_addr(),
        "--token",
        &token,
        "--state-dir",
        "state",
        "--name",
        "relative",
    ])
    .output()
    .unwrap();
    assert!(enrolled.status.success(), "{enrolled:?}");
    let mut running = agent(&["run", "--state-dir", "state"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent_id = connected_agent(&api, "relative").await;
    let id = start_script(&api, &agent_id, "cd /tmp && echo from-elsewhere").await;
    let end = api.execution_end(&id, Duration::from_secs(30)).await;
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["exit_code"], 0, "{end}");
}

/// The variable that tells an agent which machine it plays.
const HOST_ID_ENV: &str = "DYNSERV_AGENT_HOST_ID";

/// How many times an agent connected (and was welcomed) since it started.
fn connections_of(agent: &Agent) -> usize {
    agent
        .logs()
        .matches("connected to the control plane")
        .count()
}

/// The waits an agent logged before reconnecting, in milliseconds.
fn reconnect_waits_ms(agent: &Agent) -> Vec<u64> {
    agent
        .logs()
        .lines()
        .filter_map(|line| line.split("reconnecting in ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// The lines a job appended to a file shared by every copy of an agent.
fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A copy of an enrolled agent's state directory on another machine (a cloned server)
/// is refused with the reason in its log and waits minutes before it tries again; the
/// original keeps its one connection and a job runs once, there. The agent shows the
/// duplicate in the API and on its page, and one audit entry and one admin
/// notification tell about it however often the copy tries. Once the original machine
/// is gone, an admin accepts the copy's machine and it serves the agent.
#[tokio::test]
async fn a_cloned_agent_is_refused_and_a_job_runs_once() {
    let (cp, api) = setup().await;
    let mut original = Agent::enroll_with_env(
        &cp.quic_addr(),
        &cp.enrollment_token("Fleet"),
        "cloned",
        &[(HOST_ID_ENV, "host-original")],
    );
    original.run();
    let id = connected_agent(&api, "cloned").await;
    let mut clone = original.copy_state(&[(HOST_ID_ENV, "host-clone")]);
    clone.run();

    eventually(
        Duration::from_secs(30),
        "the copy logs its refusal and its wait",
        || {
            let refused = clone.logs().contains("duplicate agent identity");
            let waited = !reconnect_waits_ms(&clone).is_empty();
            async move { (refused && waited).then_some(()) }
        },
    )
    .await;
    let logs = clone.logs();
    assert!(
        logs.contains("the control plane refused this agent: duplicate agent identity")
            && logs.contains("host id host-original"),
        "{logs}"
    );
    // Minutes (300 s less at most 20 % jitter), not the usual sub-second retry.
    assert!(
        reconnect_waits_ms(&clone).iter().all(|ms| *ms >= 240_000),
        "{logs}"
    );

    let agent = eventually(
        Duration::from_secs(15),
        "the agent shows the duplicate",
        || async {
            let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
            (!a["duplicate"].is_null()).then_some(a)
        },
    )
    .await;
    assert_eq!(agent["duplicate"]["host_id"], "host-clone", "{agent}");
    assert_eq!(agent["duplicate"]["address"], "127.0.0.1", "{agent}");
    assert!(agent["duplicate"]["seen_at"].is_string(), "{agent}");
    assert_eq!(agent["host_id"], "host-original", "{agent}");
    assert_eq!(agent["connected"], true, "{agent}");

    // A job runs once: every copy that ran it would append its own job directory.
    let shared = tempfile::tempdir().unwrap();
    let ran = shared.path().join("ran");
    let job = start_script(&api, &id, &format!("pwd >> {}\n", ran.display())).await;
    let end = api.execution_end(&job, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded", "{end}");

    // The copy tries again at once (restarted): refused again, announced once.
    clone.restart();
    eventually(
        Duration::from_secs(30),
        "the restarted copy is refused again",
        || {
            let refusals = clone.logs().matches("duplicate agent identity").count();
            async move { (refusals >= 2).then_some(()) }
        },
    )
    .await;
    // No flapping: over a few seconds the original keeps the connection it made first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(connections_of(&original), 1, "{}", original.logs());
    assert_eq!(connections_of(&clone), 0, "{}", clone.logs());
    let lines = lines_of(&ran);
    assert_eq!(
        lines.len(),
        1,
        "the job ran {} times: {lines:?}",
        lines.len()
    );
    let original_dir = original.state_dir().to_string_lossy().into_owned();
    assert!(lines[0].starts_with(&original_dir), "{lines:?}");

    let (status, audit) = api.get("/api/v1/audit?q=agent.duplicate").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], "agent:cloned", "{audit}");
    let (_, inbox) = api.get("/api/v1/notifications").await;
    let about: Vec<&Value> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["subject"] == format!("agent:{id}"))
        .collect();
    assert_eq!(about.len(), 1, "{inbox}");
    assert_eq!(about[0]["level"], "danger", "{inbox}");

    let mut pages = Pages::login(&cp, "admin", "admin-password-1").await;
    let (status, html) = pages.get("/agents").await;
    assert_eq!(status, 200);
    for expected in [
        "duplicate identity",
        "host-clone",
        "rm -rf /var/lib/dynserv-agent",
        "dynserv-agent enroll --server",
        "Accept this host as the agent",
    ] {
        assert!(
            html.contains(expected),
            "the agents page lacks {expected:?}"
        );
    }

    // The original machine is gone; the admin accepts the copy's machine instead.
    original.stop();
    let csrf = pages.csrf("/agents").await;
    let (status, location) = pages
        .post(&format!("/agents/{id}/accept-host"), &[("csrf", &csrf)])
        .await;
    assert_eq!((status, location.as_str()), (303, "/agents"));
    clone.restart();
    let agent = eventually(
        Duration::from_secs(30),
        "the accepted copy connects",
        || async {
            let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
            (a["connected"] == true).then_some(a)
        },
    )
    .await;
    assert_eq!(agent["host_id"], "host-clone", "{agent}");
    assert!(agent["duplicate"].is_null(), "{agent}");
    let job = start_script(&api, &id, &format!("pwd >> {}\n", ran.display())).await;
    let end = api.execution_end(&job, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let lines = lines_of(&ran);
    let clone_dir = clone.state_dir().to_string_lossy().into_owned();
    assert!(
        lines.len() == 2 && lines[1].starts_with(&clone_dir),
        "{lines:?}"
    );
    let (_, audit) = api.get("/api/v1/audit?q=agent.accept_host").await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
}

/// Two processes on one machine share an agent's state (a copy taken before a job
/// started, run beside the original): the newer one takes over, the original is
/// refused when it comes back, and the job the original started is neither started
/// again nor failed by the copy. Once the copy is gone, the original (restarted)
/// delivers the job completely; it ran exactly once.
#[tokio::test]
async fn a_second_process_with_the_same_identity_never_runs_a_job_twice() {
    let (cp, api) = setup().await;
    let machine = [(HOST_ID_ENV, "one-machine")];
    let mut original = Agent::enroll_with_env(
        &cp.quic_addr(),
        &cp.enrollment_token("Fleet"),
        "twin",
        &machine,
    );
    original.run();
    let id = connected_agent(&api, "twin").await;
    let mut copy = original.copy_state(&machine);

    let shared = tempfile::tempdir().unwrap();
    let ran = shared.path().join("ran");
    let script = format!("pwd >> {}\nsleep 6\necho finished\n", ran.display());
    let job = start_script(&api, &id, &script).await;
    eventually(Duration::from_secs(30), "the job runs", || {
        let started = lines_of(&ran).len() == 1;
        async move { started.then_some(()) }
    })
    .await;

    copy.run();
    eventually(
        Duration::from_secs(30),
        "the original is refused when it comes back, and the copy declines the job",
        || {
            let refused = original.logs().contains("duplicate agent identity");
            let declined = copy.logs().contains("not resuming a job");
            async move { (refused && declined).then_some(()) }
        },
    )
    .await;
    let agent = eventually(
        Duration::from_secs(15),
        "the agent shows the duplicate",
        || async {
            let (_, a) = api.get(&format!("/api/v1/agents/{id}")).await;
            (!a["duplicate"].is_null()).then_some(a)
        },
    )
    .await;
    assert_eq!(agent["duplicate"]["host_id"], "one-machine", "{agent}");
    // Long enough for the script to finish wherever it ran.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, execution) = api.get(&format!("/api/v1/executions/{job}")).await;
    assert_eq!(
        execution["status"],
        "running",
        "{execution}\n{}",
        copy.logs()
    );
    assert_eq!(lines_of(&ran).len(), 1, "{:?}", lines_of(&ran));

    copy.stop();
    original.restart();
    let end = api.execution_end(&job, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", original.logs());
    assert_eq!(stdout_of(&log_of(&api, &job).await), "finished\n");
    let lines = lines_of(&ran);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let original_dir = original.state_dir().to_string_lossy().into_owned();
    assert!(lines[0].starts_with(&original_dir), "{lines:?}");
}

/// Enrollment tokens are listed (never their secret) and revoked on the API and the
/// Agents page, a revoked token enrolls nothing, and each revocation is audited
/// (regression: enrollment tokens could only expire).
#[tokio::test]
async fn enrollment_tokens_are_listed_and_revoked() {
    let (cp, api) = setup().await;
    let quic = cp.quic_addr();
    let (status, created) = api
        .post(
            "/api/v1/enrollment-tokens",
            &json!({"project": "Fleet", "uses": 3}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["token"].as_str().unwrap().to_string();
    let (status, list) = api.get("/api/v1/enrollment-tokens").await;
    assert_eq!(status, 200, "{list}");
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {list}"));
    assert_eq!(listed["project"], "Fleet");
    assert_eq!(listed["uses_left"], 3);
    assert_eq!(listed["created_by"], "admin");
    assert!(listed["expires_at"].is_string(), "{listed}");
    let secret_part = secret.split('.').nth(1).unwrap();
    assert!(
        !list.to_string().contains(secret_part),
        "the secret is never listed"
    );

    // Only those who manage agents see or revoke tokens.
    cp.add_user("viewer", "technical", false, "viewer-password-1");
    let viewer = cp.api_as("viewer");
    let (status, _) = api
        .post(
            "/api/v1/projects/Fleet/access",
            &json!({"username": "viewer", "level": "write"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(viewer.get("/api/v1/enrollment-tokens").await.0, 403);
    assert_eq!(
        viewer
            .delete(&format!("/api/v1/enrollment-tokens/{id}"))
            .await
            .0,
        403
    );

    let (status, revoked) = api.delete(&format!("/api/v1/enrollment-tokens/{id}")).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], true, "{revoked}");
    let (status, _) = api.delete(&format!("/api/v1/enrollment-tokens/{id}")).await;
    assert_eq!(status, 409);
    let (_, list) = api.get("/api/v1/enrollment-tokens").await;
    assert!(!list.to_string().contains(&id), "{list}");
    let refused = Agent::try_enroll(&quic, &secret, "late").expect_err("a revoked token enrolled");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{refused:?}"
    );

    // The Agents page lists the live tokens with a revoke button that works.
    let other = cp.enrollment_token("Fleet");
    let (_, list) = api.get("/api/v1/enrollment-tokens").await;
    let other_id = list[0]["id"].as_str().unwrap().to_string();
    let mut page = dynserv_tests::PageClient::signed_in(&cp, "admin", "admin-password-1").await;
    let (status, _, html) = page.get("/agents").await;
    assert_eq!(status, 200);
    let action = format!("/agents/tokens/{other_id}/revoke");
    assert!(html.contains(&action), "{html}");
    let csrf = dynserv_tests::csrf_of(&html);
    let (status, location, _) = page.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_str()), (303, "/agents"));
    assert!(Agent::try_enroll(&quic, &other, "later").is_err());

    let (_, audit) = api.get("/api/v1/audit?q=agent.token_revoke").await;
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");
}

/// Certificate renewal on an injected clock: both sides are moved 70 days ahead
/// (libfaketime), past two thirds of the agent certificate's 90-day lifetime. At its
/// next connection the agent gets a new certificate over that connection, with no
/// operator action; it reconnects with it, and jobs run.
#[tokio::test]
async fn an_agent_certificate_renews_itself_two_thirds_into_its_lifetime() {
    let (mut cp, api) = setup().await;
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Fleet"), "aging");
    let id = connected_agent(&api, "aging").await;
    let (_, view) = api.get(&format!("/api/v1/agents/{id}")).await;
    let first = view["cert_expires_at"]
        .as_str()
        .expect("an expiry")
        .to_string();

    agent.stop();
    cp.stop();
    for (key, value) in dynserv_tests::faked_clock("+70d") {
        cp.set_env(key, &value);
        agent.set_env(key, &value);
    }
    cp.start_again().await;
    agent.run();
    let renewed = eventually(
        Duration::from_secs(60),
        "the certificate is renewed",
        || async {
            let (_, view) = api.get(&format!("/api/v1/agents/{id}")).await;
            let now = view["cert_expires_at"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (now > first).then_some(now)
        },
    )
    .await;
    // Issued on the faked clock: about 70 days later than the first one.
    assert!(renewed[..7] > first[..7], "{first} -> {renewed}");

    // The agent comes back with its new certificate, and works.
    agent.restart();
    connected_agent(&api, "aging").await;
    let done = api.run_script(&id, "echo renewed").await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", agent.logs());
    assert!(
        !agent.logs().contains("certificate expired"),
        "{}",
        agent.logs()
    );
}
