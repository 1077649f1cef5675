//! The lists of servers, requests, backups, system updates and agents end to end, on
//! the real binaries (CONTRACT.md "Lists"): every one reads a page at a time with
//! `limit`, an opaque `cursor` and `Link: rel="next"`, gives each record exactly once
//! in its order (servers and agents by name, the others newest first), narrows with its
//! filters, and answers 400 for an unknown filter or a value naming nothing the caller
//! can see. The pages show the same pages with their filter forms and pagers; the
//! server list's search asks the server as you type; the dashboard's figures are the
//! kept counts.

use std::time::Duration;

use dynserv_hetzner_sim::{NewServer, SimConfig, Simulator};
use dynserv_tests::{eventually, Agent, Api, Browser, ControlPlane, PageClient};
use serde_json::{json, Value};

const PASSWORD: &str = "Vb3!kP9#lists-test";
const WAIT: Duration = Duration::from_secs(60);

/// The `name` of every item, in order.
fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The `id` of every item, in order.
fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts that no id appears twice.
fn assert_unique(ids: &[String], what: &str) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "{what} listed twice: {ids:?}");
}

/// Each path answers 400 with an error naming what is wrong.
async fn assert_refused(api: &Api, cases: &[(&str, &str)]) {
    for (path, needle) in cases {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path}: {message}");
    }
}

async fn page_ok(pages: &mut PageClient, path: &str) -> String {
    let (status, _, body) = pages.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Creates a project (with a Hetzner token when given); answers its id.
async fn project(api: &Api, name: &str, token: Option<&str>) -> String {
    let mut body = json!({ "name": name });
    if let Some(token) = token {
        body["hetzner_token"] = json!(token);
    }
    let (status, created) = api.post("/api/v1/projects", &body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("project id").to_string()
}

/// Syncs a project from the simulator and waits until the outcome is recorded.
async fn sync(api: &Api, project_id: &str) {
    let path = format!("/api/v1/projects/{project_id}");
    let (_, before) = api.get(&path).await;
    let (status, body) = api.post_empty(&format!("{path}/sync")).await;
    assert_eq!(status, 202, "{body}");
    let last = eventually(WAIT, "the sync's outcome", || async {
        let (_, p) = api.get(&path).await;
        (p["last_sync"] != before["last_sync"] && !p["last_sync"].is_null())
            .then(|| p["last_sync"].clone())
    })
    .await;
    assert_eq!(last["ok"], true, "{last}");
}

/// The text of the element with `id` in a page (`<div id="ID">TEXT</div>`).
fn text_of(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page"))
        + marker.len();
    html[start..]
        .split('<')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A control plane whose projects Alpha (130 running `web-NNN` servers and two off
/// `cold-N`) and Beta (20 `db-NNN`) are synced from the simulator, with an admin and
/// a technical user `tina` who may read Beta only.
async fn fleet_of_152() -> (Simulator, ControlPlane, Api, String, String) {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("the simulator starts");
    sim.add_project("tok-alpha");
    sim.add_servers("tok-alpha", 130, "web");
    for name in ["cold-1", "cold-2"] {
        sim.add_server(
            "tok-alpha",
            NewServer {
                name: name.into(),
                status: Some("off".into()),
                ..Default::default()
            },
        )
        .expect("an off server");
    }
    sim.add_project("tok-beta");
    sim.add_servers("tok-beta", 20, "db");
    let cp = ControlPlane::builder()
        .env("HETZNER_API_URL", &sim.url())
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .start()
        .await;
    cp.add_user("admin", "admin", false, PASSWORD);
    cp.add_user("tina", "technical", false, PASSWORD);
    let admin = cp.api_as("admin");
    let alpha = project(&admin, "Alpha", Some("tok-alpha")).await;
    let beta = project(&admin, "Beta", Some("tok-beta")).await;
    sync(&admin, &alpha).await;
    sync(&admin, &beta).await;
    let (status, body) = admin
        .post(
            &format!("/api/v1/projects/{beta}/access"),
            &json!({"username": "tina", "level": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (sim, cp, admin, alpha, beta)
}

/// Servers come a page at a time by name, each once, narrowed by project, status and
/// text, only from the projects the caller may see; unknown filters and values are
/// 400s. The dashboard's figures are the kept counts and follow a server deleted at
/// Hetzner; the Servers page pages and filters the same way, and a project's page
/// links to all of its servers.
#[tokio::test]
async fn servers_page_by_name_with_filters_and_kept_counts() {
    let (sim, cp, admin, alpha, _beta) = fleet_of_152().await;
    let mut every: Vec<String> = (1..=130)
        .map(|i| format!("web-{i:03}"))
        .chain((1..=20).map(|i| format!("db-{i:03}")))
        .chain(["cold-1".to_string(), "cold-2".to_string()])
        .collect();
    every.sort();

    let all = admin.walk("/api/v1/servers?limit=40").await;
    assert_eq!(names(&all), every, "every server once, by name");
    assert_unique(&ids(&all), "servers");
    let (_, first, next) = admin.get_page("/api/v1/servers").await;
    assert_eq!(
        first.as_array().map(Vec::len),
        Some(100),
        "the default page"
    );
    assert!(next.is_some_and(|n| n.contains("cursor=")));

    let count = |path: &'static str| {
        let admin = admin.clone();
        async move { names(&admin.walk(path).await) }
    };
    assert_eq!(
        count("/api/v1/servers?project=Beta&limit=7").await,
        (1..=20).map(|i| format!("db-{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(
        count("/api/v1/servers?status=off").await,
        ["cold-1", "cold-2"]
    );
    assert_eq!(
        count("/api/v1/servers?q=WEB-12&limit=3").await,
        (120..=129).map(|i| format!("web-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        count("/api/v1/servers?project=Alpha&status=off&q=cold-2").await,
        ["cold-2"]
    );
    assert!(count("/api/v1/servers?project=Beta&status=off")
        .await
        .is_empty());
    assert_refused(
        &admin,
        &[
            ("/api/v1/servers?colour=red", "unknown filter \"colour\""),
            ("/api/v1/servers?status=exploded", "status must be one of"),
            ("/api/v1/servers?project=Nope", "project"),
            ("/api/v1/servers?limit=0", "limit"),
            ("/api/v1/servers?cursor=%25%25", "cursor"),
        ],
    )
    .await;

    // A technical user sees the projects granted to her only.
    let tina = cp.api_as("tina");
    assert_eq!(
        names(&tina.walk("/api/v1/servers?limit=6").await),
        (1..=20).map(|i| format!("db-{i:03}")).collect::<Vec<_>>()
    );
    assert!(names(&tina.walk("/api/v1/servers?q=web").await).is_empty());
    assert_refused(&tina, &[("/api/v1/servers?project=Alpha", "project")]).await;

    // The dashboard reads kept counts: 152 servers, 150 running (two are off).
    let mut pages = PageClient::signed_in(&cp, "admin", PASSWORD).await;
    let html = page_ok(&mut pages, "/").await;
    assert_eq!(text_of(&html, "stat-servers"), "152");
    assert_eq!(text_of(&html, "stat-running"), "150");
    let mut tina_pages = PageClient::signed_in(&cp, "tina", PASSWORD).await;
    let html = page_ok(&mut tina_pages, "/").await;
    assert_eq!(text_of(&html, "stat-servers"), "20");

    // Deleted at Hetzner: still listed, marked, no longer running.
    let gone = sim
        .servers("tok-alpha")
        .into_iter()
        .find(|s| s.name == "web-001")
        .expect("web-001 at the simulator");
    sim.delete_server(gone.id);
    sync(&admin, &alpha).await;
    assert_eq!(count("/api/v1/servers?status=deleted").await, ["web-001"]);
    let html = page_ok(&mut pages, "/").await;
    assert_eq!(text_of(&html, "stat-servers"), "152");
    assert_eq!(text_of(&html, "stat-running"), "149");

    // The page: filters keep their values, the pager goes on by name.
    let html = page_ok(&mut pages, "/servers?limit=20").await;
    assert!(html.contains("rel=\"next\""), "the Servers page pages");
    assert!(html.contains("Next"), "by name: first and next");
    assert!(html.contains("cold-1") && !html.contains(">web-001<"));
    let html = page_ok(&mut pages, "/servers?q=web-129&status=running").await;
    assert!(html.contains(">web-129<"), "the match is listed");
    assert!(!html.contains(">web-128<"), "others are not");
    assert!(
        html.contains("value=\"web-129\""),
        "the search keeps its text"
    );
    let (status, _, body) = pages.get("/servers?status=exploded").await;
    assert_eq!(status, 400, "{body}");
    let html = page_ok(&mut pages, &format!("/projects/{alpha}")).await;
    assert!(
        html.contains("All 132 servers of Alpha"),
        "a project's page links to all of its servers"
    );
}

/// The server list's search box asks the server as you type: it finds a server far
/// past the first page, puts the search into the address, and shows the first page
/// again when cleared.
#[tokio::test]
async fn browser_live_search_finds_servers_past_the_first_page() {
    let (_sim, cp, _admin, _alpha, _beta) = fleet_of_152().await;
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", PASSWORD).await;
    browser.goto("/servers").await;
    let visible = "return [...document.querySelectorAll('#servers-table tbody tr')]\
                   .filter(r => !r.hasAttribute('data-no-match'))\
                   .map(r => r.cells[0].innerText.trim());";
    let rows = browser.eval(visible).await;
    assert_eq!(rows.as_array().map(Vec::len), Some(100), "{rows}");
    assert!(
        !rows.to_string().contains("web-129"),
        "not on the first page"
    );

    browser.fill("#server-search", "web-129").await;
    eventually(WAIT, "the server's answer to the search", || async {
        (browser.eval(visible).await == json!(["web-129"])).then_some(())
    })
    .await;
    let search = browser.eval("return location.search;").await;
    assert_eq!(search, json!("?q=web-129"));

    browser.fill("#server-search", "").await;
    browser
        .eval(
            "const input = document.getElementById('server-search');\
             input.dispatchEvent(new Event('input', {bubbles: true}));",
        )
        .await;
    eventually(WAIT, "the first page again", || async {
        let rows = browser.eval(visible).await;
        (rows.as_array().map(Vec::len) == Some(100)).then_some(())
    })
    .await;
    browser
        .screenshot(&cp.artifact("servers-live-search.png"))
        .await;
}

/// Requests come newest first a page at a time, narrowed by status and client (name
/// or e-mail, any case); a sales agent sees only its own and cannot name another's
/// client; unknown filters and values are 400s; the page has tabs, a client filter and
/// a pager.
#[tokio::test]
async fn requests_page_newest_first_by_status_and_client() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    cp.add_user("sara", "sales", false, PASSWORD);
    cp.add_user("omar", "sales", false, PASSWORD);
    let admin = cp.api_as("admin");
    project(&admin, "Shop", None).await;
    let (sara, omar) = (cp.api_as("sara"), cp.api_as("omar"));
    let file = |api: &Api, client: &str, email: &str| {
        let api = api.clone();
        let body = json!({
            "client_name": client, "client_email": email, "purpose": "shop",
            "project": "Shop", "server_type": "cx22", "location": "fsn1",
            "image": "ubuntu-24.04",
        });
        async move {
            let (status, created) = api.post("/api/v1/requests", &body).await;
            assert_eq!(status, 201, "{created}");
            created["id"].as_str().expect("request id").to_string()
        }
    };
    let mut filed = Vec::new();
    for (api, client, email) in [
        (&sara, "Acme", "ops@acme.example"),
        (&omar, "Bolt", "it@bolt.example"),
        (&sara, "acme", "ops@acme.example"),
        (&omar, "Bolt", "it@bolt.example"),
        (&sara, "ACME", "billing@acme.example"),
    ] {
        filed.push(file(api, client, email).await);
    }
    let (status, body) = admin
        .post(
            &format!("/api/v1/requests/{}/approve", filed[0]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin
        .post(
            &format!("/api/v1/requests/{}/reject", filed[1]),
            &json!({"reason": "no budget"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let newest_first: Vec<String> = filed.iter().rev().cloned().collect();
    let pick = |positions: &[usize]| -> Vec<String> {
        positions.iter().map(|p| filed[*p].clone()).collect()
    };

    let all = ids(&admin.walk("/api/v1/requests?limit=2").await);
    assert_eq!(all, newest_first, "every request once, newest first");
    let walk = |api: &Api, path: String| {
        let api = api.clone();
        async move { ids(&api.walk(&path).await) }
    };
    for (path, expected) in [
        ("/api/v1/requests?status=pending", pick(&[4, 3, 2])),
        ("/api/v1/requests?client=acme&limit=1", pick(&[4, 2, 0])),
        ("/api/v1/requests?client=OPS@acme.example", pick(&[2, 0])),
        ("/api/v1/requests?client=Acme&status=approved", pick(&[0])),
        ("/api/v1/requests?client=bolt&status=rejected", pick(&[1])),
    ] {
        assert_eq!(walk(&admin, path.to_string()).await, expected, "{path}");
    }
    // Sales agents see their own requests only.
    assert_eq!(
        walk(&sara, "/api/v1/requests?limit=1".into()).await,
        pick(&[4, 2, 0])
    );
    assert_eq!(
        walk(&omar, "/api/v1/requests?status=pending".into()).await,
        pick(&[3])
    );
    assert_refused(
        &sara,
        &[
            ("/api/v1/requests?client=Bolt", "client"),
            ("/api/v1/requests?status=bogus", "status must be one of"),
            ("/api/v1/requests?colour=red", "unknown filter"),
        ],
    )
    .await;
    assert_refused(&admin, &[("/api/v1/requests?client=Nobody", "client")]).await;

    // The page: tabs keep the client, the pager goes on to older requests.
    let mut pages = PageClient::signed_in(&cp, "admin", PASSWORD).await;
    let html = page_ok(&mut pages, "/requests?client=acme&limit=2").await;
    assert!(html.contains("rel=\"next\""), "{html}");
    assert!(html.contains("Older"), "newest first: newest and older");
    let unescaped = html.replace("&#x3D;", "=").replace("&amp;", "&");
    assert!(
        unescaped.contains("href=\"/requests?status=pending&client=acme\""),
        "the status tabs keep the client filter"
    );
    assert!(html.contains(&filed[4]) && !html.contains(&filed[0]));
    let (status, _, _) = pages.get("/requests?status=bogus").await;
    assert_eq!(status, 400);
}

/// Waits until every backup or update of `path` has ended.
async fn all_ended(api: &Api, path: &str, count: usize) -> Vec<Value> {
    eventually(
        WAIT,
        &format!("{count} ended records at {path}"),
        || async {
            let items = api.walk(path).await;
            (items.len() == count && items.iter().all(|i| i["status"] != "running"))
                .then_some(items)
        },
    )
    .await
}

/// Backups and system updates come newest first a page at a time, narrowed by
/// server (its id, or its agent's name), project and status; agents by name, narrowed
/// by project and text; each only for those who may see the project. Unknown filters
/// and values are 400s; the pages show the same with filter forms and pagers.
#[tokio::test]
async fn backups_updates_and_agents_page_with_filters() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("nogrant", "technical", false, PASSWORD);
    let admin = cp.api_as("admin");
    // Two agents of Nova HR whose operations fail at once and touch nothing on this
    // machine: no Docker daemon where they look, and an `apt-get` first on their PATH
    // that refuses to run.
    let fake_bin = tempfile::tempdir().expect("a temp dir");
    let apt_get = fake_bin.path().join("apt-get");
    std::fs::write(
        &apt_get,
        "#!/bin/sh\necho 'apt-get is off in this test' >&2\nexit 1\n",
    )
    .expect("writing the fake apt-get");
    std::fs::set_permissions(
        &apt_get,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("making it executable");
    let path = format!(
        "{}:{}",
        fake_bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agents = Vec::new();
    for name in ["nova-hr-web-01", "nova-hr-db-01"] {
        let token = cp.enrollment_token("Nova HR");
        let mut agent = Agent::enroll(&cp.quic_addr(), &token, name);
        agent.set_env("DOCKER_HOST", "unix:///nonexistent/dynserv-lists.sock");
        agent.set_env("PATH", &path);
        agent.run();
        agents.push(agent);
    }
    let web = admin.connected_agent("nova-hr-web-01").await;
    let db = admin.connected_agent("nova-hr-db-01").await;
    let (web_server, db_server) = (
        web["server_id"].as_str().expect("a server").to_string(),
        db["server_id"].as_str().expect("a server").to_string(),
    );
    let mut backups = Vec::new();
    for server in [&web_server, &db_server, &web_server] {
        let (status, backup) = admin
            .post_empty(&format!("/api/v1/servers/{server}/backup"))
            .await;
        assert_eq!(status, 201, "{backup}");
        backups.push(backup["id"].as_str().expect("backup id").to_string());
    }
    let mut updates = Vec::new();
    for server in [&web_server, &db_server] {
        let (status, update) = admin
            .post(
                &format!("/api/v1/servers/{server}/update"),
                &json!({"check": true}),
            )
            .await;
        assert_eq!(status, 201, "{update}");
        updates.push(update["id"].as_str().expect("update id").to_string());
    }
    backups.reverse();
    updates.reverse();
    let ended = all_ended(&admin, "/api/v1/backups?limit=1", 3).await;
    assert_eq!(ids(&ended), backups, "every backup once, newest first");
    assert!(ended.iter().all(|b| b["status"] == "failed"), "{ended:?}");
    let ended = all_ended(&admin, "/api/v1/updates?limit=1", 2).await;
    assert_eq!(ids(&ended), updates, "every update once, newest first");
    assert!(
        ended.iter().all(|u| u["status"] == "failed"
            && u["error_log"]
                .as_str()
                .is_some_and(|l| l.contains("apt-get is off"))),
        "{ended:?}"
    );

    let walk = |api: &Api, path: String| {
        let api = api.clone();
        async move { ids(&api.walk(&path).await) }
    };
    let web_backups = vec![backups[0].clone(), backups[2].clone()];
    for (path, expected) in [
        (
            format!("/api/v1/backups?server={web_server}&limit=1"),
            web_backups.clone(),
        ),
        (
            "/api/v1/backups?server=nova-hr-web-01".into(),
            web_backups.clone(),
        ),
        (
            "/api/v1/backups?project=Nova%20HR&server=nova-hr-db-01".into(),
            vec![backups[1].clone()],
        ),
        (
            "/api/v1/backups?status=failed&limit=2".into(),
            backups.clone(),
        ),
        ("/api/v1/backups?status=succeeded".into(), vec![]),
        ("/api/v1/backups?project=Frappe%20ERP".into(), vec![]),
        (
            format!("/api/v1/updates?server={db_server}"),
            vec![updates[0].clone()],
        ),
        (
            "/api/v1/updates?status=failed&project=Nova%20HR".into(),
            updates.clone(),
        ),
    ] {
        assert_eq!(walk(&admin, path.clone()).await, expected, "{path}");
    }
    let sohila = cp.api_as("sohila");
    assert_eq!(walk(&sohila, "/api/v1/backups".into()).await, backups);
    let nogrant = cp.api_as("nogrant");
    assert!(walk(&nogrant, "/api/v1/backups".into()).await.is_empty());
    assert!(walk(&nogrant, "/api/v1/updates".into()).await.is_empty());
    for list in ["backups", "updates"] {
        let path = |query: &str| format!("/api/v1/{list}?{query}");
        let cases = [
            (path("status=exploded"), "status must be one of"),
            (path("server=nope"), "server"),
            (path("project=Nope"), "project"),
            (path("colour=red"), "unknown filter"),
        ];
        let cases: Vec<(&str, &str)> = cases.iter().map(|(p, n)| (p.as_str(), *n)).collect();
        assert_refused(&admin, &cases).await;
        assert_refused(
            &nogrant,
            &[(path("server=nova-hr-web-01").as_str(), "server")],
        )
        .await;
    }

    // Agents, by name.
    let every = names(&admin.walk("/api/v1/agents?limit=1").await);
    let mut sorted = every.clone();
    sorted.sort();
    assert_eq!(every, sorted, "by name");
    assert!(every.contains(&"nova-hr-db-01".to_string()), "{every:?}");
    assert_unique(&every, "agents");
    assert_eq!(
        names(&admin.walk("/api/v1/agents?project=Nova%20HR").await),
        ["nova-hr-db-01", "nova-hr-web-01"]
    );
    assert_eq!(
        names(&admin.walk("/api/v1/agents?q=WEB-01").await),
        ["nova-hr-web-01"]
    );
    assert_eq!(
        names(&sohila.walk("/api/v1/agents").await),
        ["nova-hr-db-01", "nova-hr-web-01"]
    );
    assert_refused(
        &admin,
        &[
            ("/api/v1/agents?project=Nope", "project"),
            ("/api/v1/agents?colour=red", "unknown filter"),
        ],
    )
    .await;

    // The pages.
    let mut pages = PageClient::signed_in(&cp, "admin", "admin123").await;
    let html = page_ok(&mut pages, "/backups?status=failed&limit=2").await;
    assert!(html.contains("rel=\"next\""), "the Backups page pages");
    assert!(html.contains(&backups[0]) && !html.contains(&backups[2]));
    assert!(html.contains("<option value=\"failed\" selected>"));
    let html = page_ok(&mut pages, "/updates?server=nova-hr-db-01").await;
    assert!(html.contains(&updates[0]) && !html.contains(&updates[1]));
    let html = page_ok(&mut pages, "/agents?limit=1").await;
    assert!(html.contains("rel=\"next\"") && html.contains("Next"));
    let (status, _, _) = pages.get("/backups?server=nope").await;
    assert_eq!(status, 400);
}

/// Subscriptions come by client a page at a time, each once, the owner's only for a
/// sales agent who is no manager, narrowed by status and text; a client renamed
/// moves in the order. Projects, users and scripts (small tables read whole) take
/// `limit` and `cursor` too. Unknown filters and values are 400s.
#[tokio::test]
async fn subscriptions_and_small_lists_take_limit_and_cursor() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, PASSWORD);
    let (admin, sam) = (cp.api_as("admin"), cp.api_as("sam"));
    let today = dynserv_tests::utc_today();
    let mut mine = Vec::new();
    for client in ["Zeta Corp", "alpha labs", "Midway"] {
        let (status, created) = sam
            .post(
                "/api/v1/subscriptions",
                &json!({"client": client, "monthly_cost": 10, "currency": "EUR",
                        "starts_on": today, "hosting_until": "2099-01-01"}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        mine.push(created["id"].as_str().expect("an id").to_string());
    }
    let clients = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|s| s["client"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let sams = sam.walk("/api/v1/subscriptions?limit=1").await;
    assert_eq!(clients(&sams), ["alpha labs", "Midway", "Zeta Corp"]);
    let all = admin.walk("/api/v1/subscriptions?limit=2").await;
    assert_unique(&ids(&all), "subscriptions");
    let mut by_client: Vec<String> = clients(&all).iter().map(|c| c.to_lowercase()).collect();
    let sorted = {
        let mut s = by_client.clone();
        s.sort();
        s
    };
    assert_eq!(by_client, sorted, "by client");
    assert!(all.len() > 3, "the demo's subscriptions too: {all:?}");
    assert_eq!(
        clients(&admin.walk("/api/v1/subscriptions?q=ZETA").await),
        ["Zeta Corp"]
    );
    assert!(admin
        .walk("/api/v1/subscriptions?status=expired&q=midway")
        .await
        .is_empty());
    // Renamed: it moves to its new place in the order.
    let (status, body) = sam
        .put(
            &format!("/api/v1/subscriptions/{}", mine[0]),
            &json!({"client": "Beta Works"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    by_client = clients(&sam.walk("/api/v1/subscriptions").await);
    assert_eq!(by_client, ["alpha labs", "Beta Works", "Midway"]);
    assert_refused(
        &sam,
        &[
            (
                "/api/v1/subscriptions?status=frozen",
                "status must be one of",
            ),
            ("/api/v1/subscriptions?client=x", "unknown filter"),
        ],
    )
    .await;

    // Small lists read whole still page.
    let projects = admin.walk("/api/v1/projects?limit=1").await;
    assert!(projects.len() >= 3, "{projects:?}");
    assert_unique(&ids(&projects), "projects");
    let users = admin.walk("/api/v1/users?limit=2").await;
    let usernames: Vec<String> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut sorted = usernames.clone();
    sorted.sort();
    assert_eq!(usernames, sorted, "users by username, each once");
    assert!(usernames.contains(&"sam".to_string()));
    let scripts = admin.walk("/api/v1/scripts?limit=2").await;
    assert!(scripts.len() >= 3, "the sample scripts: {scripts:?}");
    assert_unique(&ids(&scripts), "scripts");
    assert_refused(
        &admin,
        &[
            ("/api/v1/projects?colour=red", "unknown filter"),
            ("/api/v1/users?role=admin", "unknown filter"),
            ("/api/v1/scripts?kind=playbook", "unknown filter"),
        ],
    )
    .await;

    // The page pages and keeps its filters.
    let mut pages = PageClient::signed_in(&cp, "admin", "admin123").await;
    let html = page_ok(&mut pages, "/subscriptions?limit=2").await;
    assert!(html.contains("rel=\"next\"") && html.contains("Next"));
    let html = page_ok(&mut pages, "/subscriptions?q=midway").await;
    assert!(html.contains("Midway") && !html.contains("alpha labs"));
    assert!(html.contains("value=\"midway\""));
}
