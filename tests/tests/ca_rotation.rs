//! Rotating the fleet's CA with real `dynserv serve` and `dynserv-agent` binaries over
//! QUIC: agents connected throughout get certificates of the new CA (and the bundle of
//! both) without losing their connection or a line of a running job, an agent that was
//! stopped meanwhile comes back with its old certificate and is renewed, the old CA can
//! be retired only once no agent depends on it (or by force), and a retired CA's
//! certificates are refused. Also the checks of the CA API, CLI and page.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient};
use serde_json::{json, Value};

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

/// `GET /api/v1/ca`, answered 200.
async fn cas(api: &Api) -> Vec<Value> {
    let (status, body) = api.get("/api/v1/ca").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().expect("a list of CAs").clone()
}

/// The CA `id` of a list.
fn ca<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no CA {id} in {list:?}"))
}

/// Waits until the CAs hold `old` and `new` agents' certificates.
async fn wait_for_holders(api: &Api, old_id: &str, old: u64, new_id: &str, new: u64) {
    eventually(
        Duration::from_secs(30),
        &format!("{old} agent(s) on CA {old_id}, {new} on CA {new_id}"),
        || async {
            let list = cas(api).await;
            (ca(&list, old_id)["agents"] == old && ca(&list, new_id)["agents"] == new).then_some(())
        },
    )
    .await
}

/// How many CA certificates an agent trusts (its `ca.pem`).
fn trusted_cas(agent: &Agent) -> usize {
    std::fs::read_to_string(agent.state_dir().join("ca.pem"))
        .expect("ca.pem")
        .matches("BEGIN CERTIFICATE")
        .count()
}

/// The agent's certificate file.
fn certificate_of(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state_dir().join("agent.pem")).expect("agent.pem")
}

/// How many times an agent connected (and was welcomed) since it started.
fn connections_of(agent: &Agent) -> usize {
    agent
        .logs()
        .matches("connected to the control plane at")
        .count()
}

/// The stdout lines of an execution's stored log.
async fn stdout_lines(api: &Api, id: &str) -> Vec<String> {
    let (status, chunks) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert_eq!(status, 200);
    let text: String = chunks
        .iter()
        .filter(|c| c["stream"] == "stdout")
        .map(|c| c["data"].as_str().unwrap_or_default())
        .collect();
    text.lines().map(String::from).collect()
}

/// A job runs to success on the agent named `name`.
async fn job_succeeds(api: &Api, name: &str) {
    let end = api.run_script(name, "echo ran-on-$(hostname)").await;
    assert_eq!(end["status"], "succeeded", "{end}");
}

/// The headline: a rotation with agents connected throughout. The connected agent gets
/// a certificate of the new CA and the two-CA bundle on its one connection while a job
/// streams, and the job's every line arrives; an agent stopped during the rotation
/// reconnects with its old certificate and is renewed; retiring the old CA is refused
/// while an agent still depends on it, then forced, after which that agent (holding
/// only an old-CA certificate) is refused; agents restarted after the retirement verify
/// the new CA's server certificate through their bundle, run jobs, and drop the retired
/// CA from their bundle.
#[tokio::test]
async fn a_rotation_with_agents_connected_throughout() {
    let (cp, api) = setup().await;
    let mut steady = Agent::start(&cp, &cp.enrollment_token("Fleet"), "steady");
    let mut away = Agent::start(&cp, &cp.enrollment_token("Fleet"), "away");
    let mut stale = Agent::enroll(&cp.quic_addr(), &cp.enrollment_token("Fleet"), "stale");
    api.connected_agent("steady").await;
    api.connected_agent("away").await;
    away.stop();

    let before = cas(&api).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let old_id = before[0]["id"].as_str().expect("an id").to_string();
    assert_eq!(before[0]["status"], "active");
    assert_eq!(before[0]["serving"], true);
    assert_eq!(before[0]["agents"], 3, "{before:?}");
    assert_eq!(trusted_cas(&steady), 1);
    let first_certificate = certificate_of(&steady);

    // A job that streams for a while, across the rotation.
    let script = "for i in $(seq 1 40); do echo line-$i; sleep 0.25; done";
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "steady", "kind": "script", "script": script}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let job = created["id"].as_str().expect("an execution id").to_string();
    eventually(Duration::from_secs(20), "the job runs", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{job}")).await;
        (e["status"] == "running").then_some(())
    })
    .await;

    // The CLI reaches the running server (the control socket) and prints the new id.
    let new_id = cp.cli_ok(&["ca", "rotate"]).trim().to_string();
    assert!(!new_id.is_empty() && new_id != old_id, "{new_id:?}");
    let during = cas(&api).await;
    assert_eq!(ca(&during, &old_id)["status"], "retiring");
    assert_eq!(ca(&during, &old_id)["serving"], true, "{during:?}");
    assert_eq!(ca(&during, &new_id)["status"], "active");

    // The connected agent is renewed promptly: the new CA's certificate and the
    // bundle, on the connection it had.
    wait_for_holders(&api, &old_id, 2, &new_id, 1).await;
    assert_ne!(certificate_of(&steady), first_certificate);
    assert_eq!(trusted_cas(&steady), 2, "{}", steady.logs());
    let end = api.execution_end(&job, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let expected: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(stdout_lines(&api, &job).await, expected);
    assert_eq!(connections_of(&steady), 1, "{}", steady.logs());
    job_succeeds(&api, "steady").await;

    // Two agents still hold certificates of the old CA: retiring it is refused.
    let retire = format!("/api/v1/ca/{old_id}/retire");
    let (status, body) = api.post_empty(&retire).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("2 agent(s)"),
        "{body}"
    );

    // The agent that was away connects with its old certificate (the old CA still
    // signs the gateway's certificate) and is renewed.
    away.run();
    api.connected_agent("away").await;
    wait_for_holders(&api, &old_id, 1, &new_id, 2).await;
    assert_eq!(trusted_cas(&away), 2, "{}", away.logs());
    job_succeeds(&api, "away").await;

    // One agent (never back) still depends on the old CA: refused, then forced.
    let (status, body) = api.post(&retire, &json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.post(&retire, &json!({"force": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "retired");
    let after = cas(&api).await;
    assert_eq!(ca(&after, &old_id)["status"], "retired");
    assert_eq!(ca(&after, &new_id)["status"], "active");
    assert_eq!(ca(&after, &new_id)["serving"], true, "{after:?}");

    // An agent holding only a certificate of the retired CA is refused by the
    // gateway: it is given the bundle, so it does trust the gateway's new certificate.
    std::fs::copy(
        steady.state_dir().join("ca.pem"),
        stale.state_dir().join("ca.pem"),
    )
    .expect("copying the bundle");
    stale.run();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, agents) = api.get("/api/v1/agents").await;
    let stale_view = agents
        .as_array()
        .and_then(|all| all.iter().find(|a| a["name"] == "stale"))
        .cloned()
        .expect("the stale agent is listed");
    assert_eq!(stale_view["connected"], false, "{stale_view}");
    assert!(stale.is_running(), "it keeps trying: {}", stale.logs());
    assert_eq!(connections_of(&stale), 0, "{}", stale.logs());

    // Agents restarted now meet the new CA's server certificate, which they trust
    // through their bundle, and present their new certificates.
    steady.restart();
    away.restart();
    eventually(Duration::from_secs(30), "steady reconnected", || async {
        (connections_of(&steady) >= 2).then_some(())
    })
    .await;
    api.connected_agent("steady").await;
    api.connected_agent("away").await;
    job_succeeds(&api, "steady").await;
    job_succeeds(&api, "away").await;
    // Their welcome carried the CAs in force: they trust the retired one no more.
    assert_eq!(trusted_cas(&steady), 1, "{}", steady.logs());
    assert_eq!(trusted_cas(&away), 1, "{}", away.logs());

    // Each step was audited.
    for action in ["ca.rotate", "ca.retire"] {
        let (status, entries) = api.get(&format!("/api/v1/audit?action={action}")).await;
        assert_eq!(status, 200, "{entries}");
        assert_eq!(
            entries.as_array().map(Vec::len),
            Some(1),
            "{action}: {entries}"
        );
    }
    steady.stop();
    away.stop();
    stale.stop();
}

/// The CA API answers admins only, says 4xx with a JSON error for bad input and for
/// moves it forbids; the CLI prints one line and exits non-zero on a bad id; the Agents
/// page shows the CAs to an admin with a CSRF-protected Rotate form, and not to others.
#[tokio::test]
async fn the_ca_api_cli_and_page_check_who_asks_and_what() {
    let (cp, api) = setup().await;
    cp.add_user("tech", "technical", true, "tech-password-1");
    let tech = cp.api_as("tech");
    let (status, body) = tech.get("/api/v1/ca").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = tech.post_empty("/api/v1/ca/rotate").await;
    assert_eq!(status, 403, "{body}");

    let list = cas(&api).await;
    assert_eq!(list.len(), 1);
    let original = list[0]["id"].as_str().expect("an id").to_string();
    assert_eq!(list[0]["fingerprint"].as_str().map(str::len), Some(64));

    let (status, body) = api.post("/api/v1/ca/rotate", &json!({"bogus": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = api.post_empty("/api/v1/ca/nope/retire").await;
    assert_eq!(status, 404, "{body}");
    let (status, created) = api.post_empty("/api/v1/ca/rotate").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "active");
    let new_id = created["id"].as_str().expect("an id").to_string();
    let (status, body) = api.post_empty(&format!("/api/v1/ca/{new_id}/retire")).await;
    assert_eq!(status, 409, "the active CA: {body}");
    let (status, body) = api
        .post(
            &format!("/api/v1/ca/{original}/retire"),
            &json!({"force": "yes"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.get("/api/v1/ca?status=active").await;
    assert_eq!(status, 400, "an unknown filter: {body}");

    let listed = cp.cli_ok(&["ca", "list"]);
    assert!(
        listed.contains(&original) && listed.contains(&new_id),
        "{listed}"
    );
    let refused = cp.run_cli(&["ca", "retire", "nope"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("dynserv: "), "{stderr}");
    let refused = cp.run_cli(&["ca", "retire", &new_id]);
    assert!(!refused.status.success());
    // No agent holds a certificate of the original CA: it retires without force.
    let retired = cp.cli_ok(&["ca", "retire", &original]);
    assert!(retired.contains(&original), "{retired}");
    let (status, body) = api
        .post_empty(&format!("/api/v1/ca/{original}/retire"))
        .await;
    assert_eq!(status, 409, "retired already: {body}");

    // The page: admins see the CAs and a Rotate form that needs the CSRF token.
    let mut admin = PageClient::signed_in(&cp, "admin", "admin-password-1").await;
    let (status, _, html) = admin.get("/agents").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"ca-rotate\""), "the Rotate form");
    assert!(html.contains(&format!("data-ca-id=\"{new_id}\"")));
    let (status, _, _) = admin.post("/agents/ca/rotate", &[]).await;
    assert_eq!(status, 403, "no CSRF token");
    let csrf = admin.csrf("/agents").await;
    let (status, location, _) = admin.post("/agents/ca/rotate", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_str()), (303, "/agents#fleet-cas"));
    assert_eq!(cas(&api).await.len(), 3);
    let mut other = PageClient::signed_in(&cp, "tech", "tech-password-1").await;
    let (status, _, html) = other.get("/agents").await;
    assert_eq!(status, 200);
    assert!(!html.contains("ca-rotate"));
}

/// Across replicas on one PostgreSQL database: a rotation made on replica A reaches an
/// agent connected to replica B (B rereads the CAs from the store, no restart) and it
/// is renewed there; after the old CA is retired on A, B refuses an old-CA certificate
/// and serves the new CA's certificate to the renewed agent when it reconnects.
#[tokio::test]
async fn a_rotation_on_one_replica_reaches_agents_of_another() {
    let a = ControlPlane::builder().postgres().start().await;
    let b = a.replica().start().await;
    a.add_user("admin", "admin", false, "admin-password-1");
    let api = a.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut on_b = Agent::enroll(&b.quic_addr(), &a.enrollment_token("Fleet"), "on-b");
    on_b.run();
    let mut stale = Agent::enroll(&b.quic_addr(), &a.enrollment_token("Fleet"), "stale-b");
    api.connected_agent("on-b").await;
    let old_id = cas(&api).await[0]["id"]
        .as_str()
        .expect("an id")
        .to_string();

    let (status, created) = api.post_empty("/api/v1/ca/rotate").await;
    assert_eq!(status, 201, "{created}");
    let new_id = created["id"].as_str().expect("an id").to_string();
    wait_for_holders(&api, &old_id, 1, &new_id, 1).await;
    assert_eq!(trusted_cas(&on_b), 2, "{}", on_b.logs());
    assert_eq!(connections_of(&on_b), 1, "{}", on_b.logs());

    let (status, body) = api
        .post(
            &format!("/api/v1/ca/{old_id}/retire"),
            &json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // B takes the retirement from the store within its reload period.
    tokio::time::sleep(Duration::from_secs(5)).await;
    std::fs::copy(
        on_b.state_dir().join("ca.pem"),
        stale.state_dir().join("ca.pem"),
    )
    .expect("copying the bundle");
    stale.run();
    on_b.restart();
    eventually(Duration::from_secs(30), "on-b reconnected to B", || async {
        (connections_of(&on_b) >= 2).then_some(())
    })
    .await;
    job_succeeds(&api, "on-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections_of(&stale), 0, "{}", stale.logs());
    on_b.stop();
    stale.stop();
}
