//! Hetzner Cloud end to end: the real `dynserv` against the Hetzner simulator
//! (`tests/hetzner-sim`, run in-process): sync with paging and a rate limit in the
//! middle, waiting for `RateLimit-Reset`, slowing down on a low `RateLimit-Remaining`,
//! an invalid token, power actions (also across a restart), budget warnings, the
//! agent download, provisioning (also across a restart), and the default
//! `HETZNER_API_TOKEN` treated like a project's own.

use std::time::Duration;

use dynserv_hetzner_sim::{
    BootConfig, Fault, FaultKind, LoggedRequest, NewServer, SimConfig, Simulator,
};
use dynserv_tests::{eventually, Agent, Api, Browser, ControlPlane, PageClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn simulator(boot_dir: Option<&std::path::Path>) -> Simulator {
    Simulator::start(SimConfig {
        action_duration: Duration::from_millis(600),
        boot: BootConfig {
            work_dir: boot_dir.map(|d| d.to_path_buf()),
            agent_binary: None,
        },
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

async fn control_plane(sim: &Simulator) -> ControlPlane {
    ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        // Only on-demand syncs: the tests count requests.
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .start()
        .await
}

/// Creates a project with a Hetzner token and a budget; answers its id.
async fn project(api: &Api, name: &str, token: &str, budget: Option<f64>) -> String {
    let mut body = json!({"name": name, "hetzner_token": token});
    if let Some(b) = budget {
        body["budget_monthly"] = json!(b);
    }
    let (status, created) = api.post("/api/v1/projects", &body).await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created.get("hetzner_token").is_none(),
        "the token is never returned"
    );
    created["id"].as_str().expect("project id").to_string()
}

/// Asks for a sync (202) and waits until its outcome is recorded; answers `last_sync`.
async fn sync(api: &Api, project_id: &str) -> Value {
    let before = start_sync(api, project_id).await;
    sync_outcome(api, project_id, &before).await
}

/// Asks for a sync (202) and returns the project's `last_sync` from before it.
async fn start_sync(api: &Api, project_id: &str) -> Value {
    let (_, before) = api.get(&format!("/api/v1/projects/{project_id}")).await;
    let (status, body) = api
        .post_empty(&format!("/api/v1/projects/{project_id}/sync"))
        .await;
    assert_eq!(status, 202, "{body}");
    before["last_sync"].clone()
}

/// Waits for a `last_sync` other than `before` and returns it.
async fn sync_outcome(api: &Api, project_id: &str, before: &Value) -> Value {
    eventually(WAIT, "the sync's outcome", || async {
        let (_, p) = api.get(&format!("/api/v1/projects/{project_id}")).await;
        (p["last_sync"] != *before && !p["last_sync"].is_null()).then(|| p["last_sync"].clone())
    })
    .await
}

async fn servers_of(api: &Api, project_name: &str) -> Vec<Value> {
    // One page holds every server of these tests (the default page is 100).
    let (status, list) = api
        .get(&format!(
            "/api/v1/servers?project={}&limit=1000",
            project_name.replace(' ', "%20")
        ))
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array().expect("a list").to_vec()
}

/// 120 servers arrive over three pages of 50 although Hetzner answers one page with
/// 429; deleted servers are marked, not dropped; a server we already knew by name (and
/// one whose agent enrolled first) stays one server.
#[tokio::test]
async fn sync_pages_through_120_servers_and_a_rate_limit() {
    let sim = simulator(None).await;
    sim.add_project("tok-big");
    sim.add_servers("tok-big", 120, "web");
    sim.inject(Fault {
        skip: 1,
        times: 1,
        path_prefix: Some("/v1/servers".into()),
        method: None,
        kind: FaultKind::RateLimit {
            reset_secs: Some(1),
        },
    });
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Bigco", "tok-big", None).await;
    // web-010 runs our agent before Hetzner's view arrives.
    let token = cp.enrollment_token("Bigco");
    let _agent = Agent::start(&cp, &token, "web-010");
    eventually(WAIT, "the agent's server", || async {
        let servers = servers_of(&admin, "Bigco").await;
        servers
            .iter()
            .any(|s| s["name"] == "web-010" && s["agent"].is_object())
            .then_some(())
    })
    .await;
    let (_, page) = admin.get_text(&format!("/projects/{id}")).await;
    assert!(
        page.contains("data-sync-button"),
        "the project page offers Sync"
    );
    let last = sync(&admin, &id).await;
    assert_eq!(last["ok"], true, "{last}");

    let servers = servers_of(&admin, "Bigco").await;
    assert_eq!(servers.len(), 120);
    let both = servers.iter().find(|s| s["name"] == "web-010").unwrap();
    assert!(both["hetzner_id"].is_i64(), "{both}");
    assert!(both["agent"].is_object(), "{both}");
    let web7 = servers
        .iter()
        .find(|s| s["name"] == "web-007")
        .expect("web-007");
    let at_sim = sim
        .servers("tok-big")
        .into_iter()
        .find(|s| s.name == "web-007")
        .expect("at the simulator");
    assert_eq!(web7["status"], "running");
    assert_eq!(web7["server_type"], at_sim.server_type.as_str());
    assert_eq!(web7["location"], at_sim.location.as_str());
    assert_eq!(
        (at_sim.server_type.as_str(), at_sim.location.as_str()),
        ("cpx31", "ash")
    );
    assert_eq!(web7["hetzner_id"], at_sim.id);
    assert_eq!(
        web7["ipv4"],
        format!("198.18.{}.{}", at_sim.id / 256 % 256, at_sim.id % 256)
    );
    assert!(web7["ipv6"].as_str().unwrap().starts_with("2001:db8:"));
    assert_eq!(web7["labels"]["index"], "7");
    // cpx31 in Ashburn: 14.10 net, 16.78 gross a month (Falkenstein would be 15.59).
    assert_eq!(web7["monthly_cost"], 16.78);
    assert!(web7["created_at"].as_str().is_some());

    let pages: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/servers")
        .collect();
    assert!(
        pages.iter().all(|r| r.query.contains("per_page=50")),
        "{pages:?}"
    );
    assert_eq!(pages.iter().filter(|r| r.status == 429).count(), 1);
    assert_eq!(pages.iter().filter(|r| r.status == 200).count(), 3);

    // Deleted at Hetzner: marked, kept. A new one appears.
    let gone = sim.servers("tok-big")[0].clone();
    sim.delete_server(gone.id);
    sim.add_server(
        "tok-big",
        NewServer {
            name: "db-1".into(),
            server_type: Some("ccx13".into()),
            location: Some("nbg1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let servers = servers_of(&admin, "Bigco").await;
    assert_eq!(servers.len(), 121);
    let marked = servers.iter().find(|s| s["name"] == gone.name).unwrap();
    assert_eq!(marked["status"], "deleted");
    assert!(servers.iter().any(|s| s["name"] == "db-1"));

    // The demo's nova-hr-web-01 is known by name before Nova HR gets a token.
    sim.add_project("tok-nova");
    sim.add_server(
        "tok-nova",
        NewServer {
            name: "nova-hr-web-01".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, nova) = admin.get("/api/v1/projects/Nova%20HR").await;
    let nova_id = nova["id"].as_str().unwrap().to_string();
    let (status, body) = admin
        .put(
            &format!("/api/v1/projects/{nova_id}"),
            &json!({"hetzner_token": "tok-nova"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sync(&admin, &nova_id).await["ok"], true);
    let nova_servers = servers_of(&admin, "Nova HR").await;
    let named: Vec<_> = nova_servers
        .iter()
        .filter(|s| s["name"] == "nova-hr-web-01")
        .collect();
    assert_eq!(named.len(), 1, "{nova_servers:?}");
    assert!(named[0]["hetzner_id"].is_i64());
}

/// A token Hetzner refuses: the sync fails with Hetzner's own message, in the API and
/// on the project page.
#[tokio::test]
async fn invalid_token_shows_hetzners_message() {
    let sim = simulator(None).await;
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Wrongco", "not-a-real-token", None).await;
    let last = sync(&admin, &id).await;
    assert_eq!(last["ok"], false, "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("unable to authenticate"), "{error}");
    let (status, page) = admin.get_text(&format!("/projects/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("unable to authenticate"), "{page}");
    assert!(page.contains("data-last-sync=\"failed\""));
    // Nothing was retried: a refused token is final.
    assert_eq!(sim.requests().iter().filter(|r| r.status == 401).count(), 1);
}

/// Power off and on: 202 with Hetzner's action id, the action reaches success and the
/// server's status follows; read-only users may not, a locked server answers with
/// Hetzner's message.
#[tokio::test]
async fn power_actions_reach_success() {
    let sim = simulator(None).await;
    sim.add_project("tok-power");
    let ids = sim.add_servers("tok-power", 2, "app");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Powerco", "tok-power", None).await;
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let servers = servers_of(&admin, "Powerco").await;
    let server = servers.iter().find(|s| s["hetzner_id"] == ids[0]).unwrap();
    let server_id = server["id"].as_str().unwrap();

    let (status, body) = admin
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "poweroff"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let action_id = body["action_id"].as_i64().expect("action_id");
    let (status, running) = admin
        .get(&format!("/api/v1/servers/{server_id}/actions/{action_id}"))
        .await;
    assert_eq!(status, 200, "{running}");
    assert_eq!(running["command"], "stop_server");
    eventually(WAIT, "the poweroff action succeeds", || async {
        let (_, a) = admin
            .get(&format!("/api/v1/servers/{server_id}/actions/{action_id}"))
            .await;
        (a["status"] == "success").then_some(())
    })
    .await;
    eventually(WAIT, "the server is off", || async {
        let (_, s) = admin.get(&format!("/api/v1/servers/{server_id}")).await;
        (s["status"] == "off").then_some(())
    })
    .await;
    let (status, page) = admin.get_text(&format!("/servers/{server_id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-confirm="), "power forms ask first");
    assert!(page.contains(&format!("data-action-id=\"{action_id}\"")));

    // A technical user with read access may look, not press.
    cp.add_user("tess", "technical", false, "tess-password-1");
    let (status, body) = admin
        .post(
            &format!("/api/v1/projects/{id}/access"),
            &json!({"username": "tess", "level": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let tess = cp.api_as("tess");
    let (status, _) = tess
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "poweron"}),
        )
        .await;
    assert_eq!(status, 403);
    admin
        .post(
            &format!("/api/v1/projects/{id}/access"),
            &json!({"username": "tess", "level": "write"}),
        )
        .await;
    let (status, body) = tess
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "poweron"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(WAIT, "the server runs again", || async {
        let (_, s) = admin.get(&format!("/api/v1/servers/{server_id}")).await;
        (s["status"] == "running").then_some(())
    })
    .await;

    let (status, body) = admin
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "explode"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    sim.set_locked(ids[0], true);
    let (status, body) = admin
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "reboot"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("locked"), "{body}");
}

/// Costs against the budget: one warning at 80 % and one at 100 % per month, shown
/// on the project page, with this month in the trend.
#[tokio::test]
async fn budget_warnings_once_per_threshold() {
    let sim = simulator(None).await;
    sim.add_project("tok-budget");
    let two = NewServer {
        server_type: Some("cx22".into()),
        location: Some("fsn1".into()),
        ..Default::default()
    };
    for name in ["b-1", "b-2"] {
        sim.add_server(
            "tok-budget",
            NewServer {
                name: name.into(),
                ..two.clone()
            },
        )
        .unwrap();
    }
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    // cx22 in fsn1 is 4.51 a month: two are 9.02 of 10 (90 %).
    let id = project(&admin, "Budgetco", "tok-budget", Some(10.0)).await;
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let (status, costs) = admin.get(&format!("/api/v1/projects/{id}/costs")).await;
    assert_eq!(status, 200, "{costs}");
    assert_eq!(costs["cost"], 9.02);
    assert_eq!(costs["percent"], 90.0);
    assert_eq!(costs["level"], "warning");
    assert_eq!(costs["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(costs["alerts"][0]["threshold"], 80);
    assert_eq!(costs["trend"].as_array().unwrap().len(), 1);

    let warnings = |admin: Api| async move {
        let (_, entries) = admin.get("/api/v1/audit?q=budget.warning").await;
        entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["target"] == "project:Budgetco")
            .count()
    };
    assert_eq!(warnings(admin.clone()).await, 1);
    assert_eq!(sync(&admin, &id).await["ok"], true);
    assert_eq!(warnings(admin.clone()).await, 1, "80 % is told once");

    sim.add_server(
        "tok-budget",
        NewServer {
            name: "b-3".into(),
            ..two.clone()
        },
    )
    .unwrap();
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let (_, costs) = admin.get(&format!("/api/v1/projects/{id}/costs")).await;
    assert_eq!(costs["level"], "danger");
    assert_eq!(costs["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(warnings(admin.clone()).await, 2);
    assert_eq!(sync(&admin, &id).await["ok"], true);
    assert_eq!(warnings(admin.clone()).await, 2, "100 % is told once");

    // Admins are told once per threshold.
    let (status, inbox) = admin.get("/api/v1/notifications").await;
    assert_eq!(status, 200, "{inbox}");
    let told: Vec<_> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["title"].as_str().unwrap_or("").starts_with("Budgetco"))
        .collect();
    assert_eq!(told.len(), 2, "{inbox}");
    let (status, page) = admin.get_text(&format!("/projects/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-budget-warning=\"100\""), "{page}");
    assert!(page.contains("data-cost-trend"));

    // A project whose cost jumps past both thresholds at once is told once, as over
    // budget (regression: the 80 % notice came too, naming a share long passed).
    sim.add_project("tok-jump");
    for name in ["j-1", "j-2"] {
        sim.add_server(
            "tok-jump",
            NewServer {
                name: name.into(),
                ..two.clone()
            },
        )
        .unwrap();
    }
    let jump = project(&admin, "Jumpco", "tok-jump", Some(5.0)).await;
    assert_eq!(sync(&admin, &jump).await["ok"], true);
    let (_, costs) = admin.get(&format!("/api/v1/projects/{jump}/costs")).await;
    assert_eq!(costs["alerts"].as_array().unwrap().len(), 2, "{costs}");
    let (_, inbox) = admin.get("/api/v1/notifications").await;
    let told: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["title"].as_str())
        .filter(|t| t.starts_with("Jumpco"))
        .collect();
    assert_eq!(told, ["Jumpco is over budget"], "{inbox}");
}

/// New servers fetch the agent from the control plane: the download is the agent
/// binary next to `dynserv`, without credentials.
#[tokio::test]
async fn agent_download_serves_the_agent_binary() {
    let sim = simulator(None).await;
    let cp = control_plane(&sim).await;
    let response = cp
        .api()
        .http()
        .get(format!("{}/download/dynserv-agent", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap();
    let expected = std::fs::read(dynserv_tests::agent_binary()).unwrap();
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes == expected);
}

/// Files a request as the demo's sales agent and has the demo's admin approve it;
/// answers the request id.
async fn approved_request(cp: &ControlPlane, project: &str, client: &str) -> String {
    let sales = cp.api_as("sales");
    let (status, created) = sales
        .post(
            "/api/v1/requests",
            &json!({
                "client_name": client, "client_email": "ops@client.example",
                "purpose": "web shop", "project": project, "server_type": "cx22",
                "location": "fsn1", "image": "ubuntu-24.04", "monthly_budget": 5.0,
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("request id").to_string();
    let (status, body) = cp
        .api_as("admin")
        .post(&format!("/api/v1/requests/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    id
}

async fn request_status(api: &Api, id: &str, wanted: &str) -> Value {
    eventually(
        Duration::from_secs(90),
        &format!("request {wanted}"),
        || async {
            let (_, r) = api.get(&format!("/api/v1/requests/{id}")).await;
            (r["status"] == wanted).then_some(r)
        },
    )
    .await
}

/// The whole loop: approval creates the server at Hetzner with cloud-init that
/// downloads the agent from the control plane and enrolls it with a one-time token;
/// the request ends deployed and its server is one record with both views.
#[tokio::test]
async fn browser_approval_provisions_until_the_agent_enrolls() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-prov");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let project_id = project(&admin, "Provco", "tok-prov", None).await;
    let id = approved_request(&cp, "Provco", "Acme Shop").await;
    let request = request_status(&admin, &id, "deployed").await;

    let at_sim = sim.servers("tok-prov");
    assert_eq!(at_sim.len(), 1, "{at_sim:?}");
    let created = &at_sim[0];
    assert_eq!(created.server_type, "cx22");
    assert_eq!(created.location, "fsn1");
    assert_eq!(created.image, "ubuntu-24.04");
    assert_eq!(created.labels["dynserv-request"], id);
    let user_data = created.user_data.as_deref().unwrap();
    assert!(user_data.starts_with("#cloud-config"));
    assert!(user_data.contains(&format!("{}/download/dynserv-agent", cp.base_url())));
    assert!(user_data.contains("DYNSERV_ENROLL_TOKEN=dsv1."));
    assert!(sim
        .boot_log(created.id)
        .iter()
        .any(|l| l.starts_with("downloading")));
    assert_eq!(sim.created_count(), 1);

    let (status, steps) = admin
        .get(&format!("/api/v1/requests/{id}/provisioning"))
        .await;
    assert_eq!(status, 200, "{steps}");
    let states: Vec<_> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("creating", "done"),
            ("booting", "done"),
            ("agent enrolled", "done"),
            ("deployed", "done")
        ]
    );
    let servers: Vec<_> = servers_of(&admin, "Provco").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["hetzner_id"], created.id);
    assert!(servers[0]["agent"].is_object(), "{}", servers[0]);
    assert_eq!(request["server_id"], servers[0]["id"]);
    let (status, page) = admin.get_text(&format!("/requests/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("data-provision-step=\"agent enrolled\" data-state=\"done\""),
        "{page}"
    );
    let (_, project_page) = admin.get_text(&format!("/projects/{project_id}")).await;
    assert!(project_page.contains(&created.name));
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/requests/{id}")).await;
    browser
        .wait_for("[data-provision-step=\"deployed\"][data-state=\"done\"]")
        .await;
    browser
        .screenshot(&cp.artifact("hetzner-request.png"))
        .await;
    browser.close().await;
}

/// Hetzner creates the server but the answer is lost: the request fails with
/// Hetzner's message, and the retry finds the server by its label instead of
/// creating a second one.
#[tokio::test]
async fn retry_after_a_lost_answer_creates_nothing_twice() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-retry");
    sim.inject(Fault {
        skip: 0,
        times: 1,
        path_prefix: Some("/v1/servers".into()),
        method: Some("POST".into()),
        kind: FaultKind::ErrorAfterProcessing {
            status: 504,
            code: "timeout".into(),
            message: "the request timed out".into(),
        },
    });
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    project(&admin, "Retryco", "tok-retry", None).await;
    let id = approved_request(&cp, "Retryco", "Beta Labs").await;
    let failed = request_status(&admin, &id, "failed").await;
    let reason = failed["history"].as_array().unwrap().last().unwrap()["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("the request timed out"), "{failed}");

    let (status, body) = admin
        .post(&format!("/api/v1/requests/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    request_status(&admin, &id, "deployed").await;
    let posts = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/servers")
        .count();
    assert_eq!(posts, 1, "one create in all");
    assert_eq!(sim.servers("tok-retry").len(), 1);
    let servers = servers_of(&admin, "Retryco").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(servers[0]["hetzner_id"].is_i64());
    assert!(servers[0]["agent"].is_object());
}

/// An API that answers every server to the `dynserv-request` label query: the
/// provisioning checks the label, adopts nothing unrelated and creates the request's
/// own server (regression: the first server listed was taken over).
#[tokio::test]
async fn label_lookup_never_adopts_an_unrelated_server() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-labels");
    let unrelated = sim
        .add_server(
            "tok-labels",
            NewServer {
                name: "someone-elses-db".into(),
                ..Default::default()
            },
        )
        .expect("an unrelated server");
    sim.set_ignore_label_selector(true);
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    project(&admin, "Labelco", "tok-labels", None).await;
    let id = approved_request(&cp, "Labelco", "Gamma Works").await;
    request_status(&admin, &id, "deployed").await;
    let at_sim = sim.servers("tok-labels");
    assert_eq!(
        at_sim.len(),
        2,
        "the request's own server was created: {at_sim:?}"
    );
    let created = at_sim
        .iter()
        .find(|s| s.id != unrelated)
        .expect("the created server");
    assert_eq!(created.labels["dynserv-request"], id);
    let (_, steps) = admin
        .get(&format!("/api/v1/requests/{id}/provisioning"))
        .await;
    assert_eq!(steps["hetzner_id"], created.id, "{steps}");
    let servers = servers_of(&admin, "Labelco").await;
    let provisioned: Vec<_> = servers.iter().filter(|s| s["agent"].is_object()).collect();
    assert_eq!(provisioned.len(), 1, "{servers:?}");
    assert_eq!(provisioned[0]["hetzner_id"], created.id);
    assert!(
        servers.iter().all(|s| s["hetzner_id"] != unrelated),
        "the unrelated server was not adopted: {servers:?}"
    );
}

/// A server that boots but whose agent never enrolls: booting is done once Hetzner
/// says running, and the failed step is "agent enrolled", the one that failed.
#[tokio::test]
async fn the_failed_step_is_the_one_that_failed() {
    // No boot directory: the simulator's servers run, but nothing enrolls.
    let sim = simulator(None).await;
    sim.add_project("tok-noagent");
    let cp = ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .env("DYNSERV_PROVISION_ENROLL_SECS", "3")
        .start()
        .await;
    let admin = cp.api_as("admin");
    project(&admin, "Noagentco", "tok-noagent", None).await;
    let id = approved_request(&cp, "Noagentco", "Delta Farms").await;
    request_status(&admin, &id, "failed").await;
    let (_, steps) = admin
        .get(&format!("/api/v1/requests/{id}/provisioning"))
        .await;
    let states: Vec<_> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("creating", "done"),
            ("booting", "done"),
            ("agent enrolled", "failed"),
            ("deployed", "pending")
        ],
        "{steps}"
    );
    assert!(
        steps["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not enroll"),
        "{steps}"
    );
}

/// A retry never stays on a server that is not the request's: the server remembered
/// from the failed attempt was renamed and lost the request's label (reused for
/// something else), so the retry detaches it and creates the request's own.
#[tokio::test]
async fn retry_detaches_a_server_without_the_request_label() {
    let sim = simulator(None).await;
    sim.add_project("tok-detach");
    let cp = ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .env("DYNSERV_PROVISION_ENROLL_SECS", "2")
        .start()
        .await;
    let admin = cp.api_as("admin");
    project(&admin, "Detachco", "tok-detach", None).await;
    let id = approved_request(&cp, "Detachco", "Zeta Mills").await;
    let failed = request_status(&admin, &id, "failed").await;
    let first = sim.servers("tok-detach");
    assert_eq!(first.len(), 1, "{first:?}");
    let wrong = first[0].id;
    assert!(failed["server_id"].is_string(), "{failed}");
    sim.edit_server(wrong, "reused-for-something-else", Default::default());

    let (status, body) = admin
        .post(&format!("/api/v1/requests/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, steps) = eventually(WAIT, "the retry leaves the unlabelled server", || async {
        let (_, steps) = admin
            .get(&format!("/api/v1/requests/{id}/provisioning"))
            .await;
        (steps["hetzner_id"].is_i64() && steps["hetzner_id"] != wrong).then_some(((), steps))
    })
    .await;
    let history = steps["history"].to_string();
    assert!(history.contains("detached"), "{history}");
    let at_sim = sim.servers("tok-detach");
    assert_eq!(at_sim.len(), 2, "{at_sim:?}");
    let own = at_sim.iter().find(|s| s.id != wrong).unwrap();
    assert_eq!(own.labels["dynserv-request"], id);
    assert_eq!(steps["hetzner_id"], own.id);
}

/// Approving prices the request at Hetzner's monthly price of its server type (read
/// by the last sync), not only at the budget the request states: both the project's
/// budget and the request's own are checked against it.
#[tokio::test]
async fn approval_checks_the_budget_against_hetzners_price() {
    let sim = simulator(None).await;
    sim.add_project("tok-price");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    // A budget the stated €1 fits in, but cx22's real price does not.
    let project_id = project(&admin, "Priceco", "tok-price", Some(2.0)).await;
    let synced = sync(&admin, &project_id).await;
    assert_eq!(synced["ok"], true, "{synced}");
    let (status, created) = cp
        .api_as("sales")
        .post(
            "/api/v1/requests",
            &json!({
                "client_name": "Theta", "client_email": "ops@client.example",
                "purpose": "web shop", "project": "Priceco", "server_type": "cx22",
                "location": "fsn1", "image": "ubuntu-24.04", "monthly_budget": 1.0,
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, approved) = admin
        .post(&format!("/api/v1/requests/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{approved}");
    let warning = approved["budget_warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("cx22 in fsn1 costs €")
            && warning.contains("more than the request's €1.00"),
        "{approved}"
    );
    assert!(warning.contains("over its budget of €2.00"), "{warning}");
}

/// The requester's page, opened while the request is pending, follows the approval
/// live: the provisioning steps appear and finish, and the server link replaces
/// "none yet", without a reload.
#[tokio::test]
async fn browser_requesters_page_follows_provisioning_live() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-live");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    project(&admin, "Liveco", "tok-live", None).await;
    let sales = cp.api_as("sales");
    let (status, created) = sales
        .post(
            "/api/v1/requests",
            &json!({
                "client_name": "Epsilon", "client_email": "ops@client.example",
                "purpose": "web shop", "project": "Liveco", "server_type": "cx22",
                "location": "fsn1", "image": "ubuntu-24.04", "monthly_budget": 5.0,
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("sales", "sales123").await;
    browser.goto(&format!("/requests/{id}")).await;
    assert_eq!(browser.text("#request-server").await, "none yet");
    let hidden = browser
        .eval("return document.getElementById('provisioning').hidden;")
        .await;
    assert_eq!(hidden, json!(true), "no steps before the approval");

    let (status, body) = admin
        .post(&format!("/api/v1/requests/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(90), "the deployed step on the page", || async {
        let state = browser
            .eval("var e = document.querySelector('[data-provision-step=\"deployed\"]'); return e ? e.getAttribute('data-state') : '';")
            .await;
        (state == "done").then_some(())
    })
    .await;
    eventually(WAIT, "the server link", || async {
        let text = browser
            .eval("var e = document.querySelector('#request-server a'); return e ? e.textContent : '';")
            .await;
        (text == "open the server").then_some(())
    })
    .await;
    let hidden = browser
        .eval("return document.getElementById('provisioning').hidden;")
        .await;
    assert_eq!(hidden, json!(false));
    browser.close().await;
}

/// In the browser: Sync on the project page brings the servers and the budget panel;
/// power off asks to type the server's name, then the action appears and succeeds.
#[tokio::test]
async fn browser_sync_and_power_off_with_confirmation() {
    let sim = simulator(None).await;
    sim.add_project("tok-ui");
    sim.add_servers("tok-ui", 3, "ui");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "UIco", "tok-ui", Some(12.0)).await;
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/projects/{id}")).await;
    // Wait for the form's answer before navigating again: a goto straight after the
    // click can cancel the POST before the browser sends it.
    browser
        .submit_and_wait_for_next_page("[data-sync-button]")
        .await;
    eventually(WAIT, "the page shows a good sync", || async {
        browser.goto(&format!("/projects/{id}")).await;
        browser
            .exists("[data-last-sync=\"ok\"]")
            .await
            .then_some(())
    })
    .await;
    assert!(browser.exists("[data-budget-warning=\"100\"]").await);
    assert!(browser.page_text().await.contains("ui-003"));
    browser
        .screenshot(&cp.artifact("hetzner-project.png"))
        .await;

    let servers = servers_of(&admin, "UIco").await;
    let server = servers.iter().find(|s| s["name"] == "ui-001").unwrap();
    browser
        .goto(&format!("/servers/{}", server["id"].as_str().unwrap()))
        .await;
    browser.click("form[data-confirm-type] button").await;
    browser
        .wait_for("[data-confirm-ready] [data-confirm-input]")
        .await;
    browser.fill("[data-confirm-input]", "ui-001").await;
    browser.click("[data-confirm-ok]").await;
    eventually(WAIT, "the power off succeeded", || async {
        browser
            .exists("[data-action-status=\"success\"]")
            .await
            .then_some(())
    })
    .await;
    browser.screenshot(&cp.artifact("hetzner-server.png")).await;
    let (_, after) = admin
        .get(&format!(
            "/api/v1/servers/{}",
            server["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(after["status"], "off");
    browser.close().await;
}

/// A server type Hetzner does not know fails the request with Hetzner's own message.
#[tokio::test]
async fn unknown_server_type_fails_with_hetzners_message() {
    let sim = simulator(None).await;
    sim.add_project("tok-type");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    project(&admin, "Typeco", "tok-type", None).await;
    let sales = cp.api_as("sales");
    let (status, created) = sales
        .post(
            "/api/v1/requests",
            &json!({
                "client_name": "Gamma", "client_email": "it@gamma.example",
                "purpose": "api", "project": "Typeco", "server_type": "cx999",
                "location": "fsn1", "image": "ubuntu-24.04",
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, body) = admin
        .post(&format!("/api/v1/requests/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let failed = request_status(&admin, &id, "failed").await;
    let note = failed["history"].as_array().unwrap().last().unwrap()["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains("unknown server type \"cx999\""), "{failed}");
    let (_, steps) = admin
        .get(&format!("/api/v1/requests/{id}/provisioning"))
        .await;
    assert_eq!(steps["step"], "failed");
    assert_eq!(steps["steps"][0]["state"], "failed");
    assert!(sim.servers("tok-type").is_empty());
}

/// Sync also runs on its own: with a 10 s interval every project with a token is
/// synced without anyone pressing Sync, one after the other.
#[tokio::test]
async fn scheduled_sync_reaches_every_project() {
    let sim = simulator(None).await;
    sim.add_project("tok-s1");
    sim.add_project("tok-s2");
    sim.add_servers("tok-s1", 2, "one");
    sim.add_servers("tok-s2", 3, "two");
    let cp = ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        .env("DYNSERV_HETZNER_SYNC_SECS", "10")
        .start()
        .await;
    let admin = cp.api_as("admin");
    let first = project(&admin, "Sched One", "tok-s1", None).await;
    let second = project(&admin, "Sched Two", "tok-s2", None).await;
    for (id, count, name) in [(first, 2, "Sched One"), (second, 3, "Sched Two")] {
        eventually(Duration::from_secs(60), "a scheduled sync", || async {
            let (_, p) = admin.get(&format!("/api/v1/projects/{id}")).await;
            (p["last_sync"]["ok"] == true).then_some(())
        })
        .await;
        assert_eq!(servers_of(&admin, name).await.len(), count);
    }
    let posts = sim.requests().iter().filter(|r| r.method != "GET").count();
    assert_eq!(posts, 0, "nothing but reads");
}

/// The sync's requests of `GET /v1/servers` and `GET /v1/pricing`, in order.
fn sync_requests(sim: &Simulator) -> Vec<LoggedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && (r.path == "/v1/servers" || r.path == "/v1/pricing"))
        .collect()
}

/// A 429 whose `RateLimit-Reset` is three seconds ahead: the client asks again only
/// once that second has come (a plain backoff would be back within half a second),
/// and the sync still succeeds.
#[tokio::test]
async fn rate_limit_retry_waits_for_the_reset() {
    let sim = simulator(None).await;
    sim.add_project("tok-reset");
    sim.add_servers("tok-reset", 3, "r");
    sim.inject(Fault {
        skip: 0,
        times: 1,
        path_prefix: Some("/v1/servers".into()),
        method: Some("GET".into()),
        kind: FaultKind::RateLimit {
            reset_secs: Some(3),
        },
    });
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Resetco", "tok-reset", None).await;
    let mut page = PageClient::new(&cp);
    assert_eq!(page.login("admin", "admin123").await, 303);
    let before = start_sync(&admin, &id).await;
    // While the sync waits out the reset (three seconds), the project page says a sync
    // is under way.
    let mut shown = false;
    for _ in 0..20 {
        let (_, _, html) = page.get(&format!("/projects/{id}")).await;
        if html.contains("data-sync-running") {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown, "the project page never showed the sync running");
    let last = sync_outcome(&admin, &id, &before).await;
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(servers_of(&admin, "Resetco").await.len(), 3);
    let (_, _, html) = page.get(&format!("/projects/{id}")).await;
    assert!(
        !html.contains("data-sync-running"),
        "the sync still shown as running"
    );

    let requests = sync_requests(&sim);
    let refused = requests
        .iter()
        .position(|r| r.status == 429)
        .expect("the 429 was answered");
    // The simulator's reset: three seconds after the second the 429 was answered in.
    let reset_ms = (requests[refused].at.timestamp() + 3) * 1000;
    let retry = &requests[refused + 1];
    assert_eq!(retry.path, "/v1/servers");
    assert_eq!(retry.status, 200);
    assert!(
        retry.at.timestamp_millis() >= reset_ms,
        "the retry came {} ms before RateLimit-Reset",
        reset_ms - retry.at.timestamp_millis()
    );
    // Not much later either: the wait is the reset plus at most a second of jitter
    // (and the second the emptied budget takes to give one request back).
    assert!(
        retry.at.timestamp_millis() - reset_ms < 2_500,
        "the retry came {} ms after RateLimit-Reset",
        retry.at.timestamp_millis() - reset_ms
    );
}

/// With the token's hourly budget nearly spent (by other clients of the token), a
/// sync that went at full speed before now spaces its requests a second apart, the
/// rate the budget refills at, and never meets a 429.
#[tokio::test]
async fn sync_slows_down_when_the_budget_runs_low() {
    let sim = simulator(None).await;
    sim.add_project("tok-low");
    sim.add_servers("tok-low", 120, "low");
    let cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Lowco", "tok-low", None).await;

    let gaps = |requests: &[LoggedRequest]| -> Vec<i64> {
        requests
            .windows(2)
            .map(|w| (w[1].at - w[0].at).num_milliseconds())
            .collect()
    };
    // Plenty left: three pages and the pricing go at once.
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let fast = sync_requests(&sim);
    assert_eq!(fast.len(), 4, "{fast:?}");
    assert!(gaps(&fast).iter().all(|g| *g < 500), "{:?}", gaps(&fast));

    // 40 left of 3600: below the tenth the syncs leave to people.
    sim.set_rate_limit("tok-low", 3600, 40);
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let slow: Vec<LoggedRequest> = sync_requests(&sim).into_iter().skip(4).collect();
    assert_eq!(slow.len(), 4, "{slow:?}");
    assert!(slow.iter().all(|r| r.status == 200), "{slow:?}");
    // The first answer tells the client; from then on one request a second.
    let slow_gaps = gaps(&slow);
    assert!(
        slow_gaps[1..].iter().all(|g| *g >= 900),
        "requests after the first answer should be a second apart: {slow_gaps:?}"
    );
    assert_eq!(servers_of(&admin, "Lowco").await.len(), 120);
}

/// A power action still running when the control plane stops is followed again after
/// the restart: it reaches success and the server's status follows.
#[tokio::test]
async fn power_action_is_followed_again_after_a_restart() {
    let sim = simulator(None).await;
    sim.add_project("tok-restart");
    let ids = sim.add_servers("tok-restart", 1, "slow");
    let mut cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    let id = project(&admin, "Restartco", "tok-restart", None).await;
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let server = servers_of(&admin, "Restartco").await;
    let server_id = server[0]["id"].as_str().unwrap().to_string();
    assert_eq!(server[0]["hetzner_id"], ids[0]);

    // Hetzner takes its time over this one.
    sim.set_action_duration(Duration::from_secs(8));
    let (status, body) = admin
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "poweroff"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let action_id = body["action_id"].as_i64().expect("action_id");
    let action_url = format!("/api/v1/servers/{server_id}/actions/{action_id}");

    cp.restart().await;
    let admin = cp.api_as("admin");
    let (_, before) = admin.get(&action_url).await;
    assert_eq!(before["status"], "running", "{before}");
    let (_, s) = admin.get(&format!("/api/v1/servers/{server_id}")).await;
    assert_eq!(s["status"], "running", "not off before Hetzner says so");

    eventually(WAIT, "the action succeeds after the restart", || async {
        let (_, a) = admin.get(&action_url).await;
        (a["status"] == "success").then_some(a)
    })
    .await;
    eventually(WAIT, "the server is off", || async {
        let (_, s) = admin.get(&format!("/api/v1/servers/{server_id}")).await;
        (s["status"] == "off").then_some(())
    })
    .await;
    assert_eq!(sim.servers("tok-restart")[0].status, "off");
    let (_, page) = admin.get_text(&format!("/servers/{server_id}")).await;
    assert!(
        page.contains(&format!("data-action-id=\"{action_id}\"")),
        "{page}"
    );
}

/// A request still booting when the control plane stops is followed on after the
/// restart: the same server (nothing created twice) ends deployed, and its history
/// says it was followed again rather than tried anew.
#[tokio::test]
async fn provisioning_is_followed_again_after_a_restart() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-reboot");
    // The new server takes eight seconds to boot.
    sim.set_action_duration(Duration::from_secs(8));
    let mut cp = control_plane(&sim).await;
    let admin = cp.api_as("admin");
    project(&admin, "Rebootco", "tok-reboot", None).await;
    let id = approved_request(&cp, "Rebootco", "Slow Boot").await;
    eventually(WAIT, "the request is booting", || async {
        let (_, p) = admin
            .get(&format!("/api/v1/requests/{id}/provisioning"))
            .await;
        (p["step"] == "booting").then_some(())
    })
    .await;

    cp.restart().await;
    let admin = cp.api_as("admin");
    request_status(&admin, &id, "deployed").await;
    assert_eq!(sim.created_count(), 1, "one server in all");
    let (_, p) = admin
        .get(&format!("/api/v1/requests/{id}/provisioning"))
        .await;
    assert_eq!(p["attempts"], 1, "{p}");
    assert_eq!(p["step"], "deployed", "{p}");
    let notes: Vec<&str> = p["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["note"].as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("after a restart")),
        "{notes:?}"
    );
    let servers = servers_of(&admin, "Rebootco").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(servers[0]["agent"].is_object(), "{}", servers[0]);
}

/// A project without a token of its own, with `HETZNER_API_TOKEN` set: it syncs, its
/// servers power off, and an approved request is provisioned at Hetzner, so the admin
/// may not mark it deployed by hand, and no page calls the project tokenless.
#[tokio::test]
async fn the_default_token_counts_everywhere() {
    let boot = tempfile::tempdir().unwrap();
    let sim = simulator(Some(boot.path())).await;
    sim.add_project("tok-global");
    let ids = sim.add_servers("tok-global", 2, "glob");
    let cp = ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        .env("HETZNER_API_TOKEN", "tok-global")
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .start()
        .await;
    let admin = cp.api_as("admin");
    let (status, created) = admin
        .post("/api/v1/projects", &json!({"name": "Globalco"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // Sync.
    assert_eq!(sync(&admin, &id).await["ok"], true);
    let servers = servers_of(&admin, "Globalco").await;
    assert_eq!(servers.len(), 2, "{servers:?}");
    let (_, page) = admin.get_text(&format!("/projects/{id}")).await;
    assert!(page.contains("data-sync-button"), "the page offers Sync");

    // Power.
    let server = servers.iter().find(|s| s["hetzner_id"] == ids[0]).unwrap();
    let server_id = server["id"].as_str().unwrap();
    let (status, body) = admin
        .post(
            &format!("/api/v1/servers/{server_id}/power"),
            &json!({"action": "poweroff"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(WAIT, "the server is off", || async {
        let (_, s) = admin.get(&format!("/api/v1/servers/{server_id}")).await;
        (s["status"] == "off").then_some(())
    })
    .await;

    // Provisioning.
    let request = approved_request(&cp, "Globalco", "Default Token Ltd").await;
    let (status, body) = admin
        .post(&format!("/api/v1/requests/{request}/deployed"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("has a Hetzner token"),
        "{body}"
    );
    let (_, page) = admin.get_text(&format!("/requests/{request}")).await;
    assert!(!page.contains("no Hetzner token"), "{page}");
    request_status(&admin, &request, "deployed").await;
    let created = sim
        .servers("tok-global")
        .into_iter()
        .filter(|s| s.labels.get("dynserv-request") == Some(&request))
        .count();
    assert_eq!(created, 1);
}
