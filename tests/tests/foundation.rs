//! The foundation at its boundaries: the JSON API and the pages for every role, CSRF on
//! every state-changing page route, bad input, the CLI while `serve` runs, and the
//! store across restarts. Every test starts the real `dynserv` binary.

use std::collections::HashMap;

use dynserv_tests::{Api, ControlPlane, PageClient};
use reqwest::Method;
use serde_json::{json, Value};

async fn id_of(api: &Api, path: &str, name: &str) -> String {
    let (status, list) = api.get(path).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {path}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every API route answers each demo role with the expected status code.
#[tokio::test]
async fn api_route_role_matrix() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    let roles = [
        ("admin", cp.api_as("admin")),
        ("tech", cp.api_as("tech")),
        ("sales", cp.api_as("sales")),
        ("sohila", cp.api_as("sohila")),
    ];
    let nova = id_of(&admin, "/api/v1/projects", "Nova HR").await;
    let frappe = id_of(&admin, "/api/v1/projects", "Frappe ERP").await;
    let nova_server = id_of(&admin, "/api/v1/servers", "nova-hr-db-01").await;
    let frappe_server = id_of(&admin, "/api/v1/servers", "frappe-erp-db-01").await;
    // (method, path, body, [admin, tech, sales, sohila])
    let cases: Vec<(Method, String, Option<Value>, [u16; 4])> = vec![
        (Method::GET, "/api/v1/me".into(), None, [200, 200, 200, 200]),
        (
            Method::GET,
            "/api/v1/servers".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/v1/servers/{nova_server}"),
            None,
            [200, 200, 403, 200],
        ),
        (
            Method::GET,
            format!("/api/v1/servers/{frappe_server}"),
            None,
            [200, 200, 403, 403],
        ),
        (
            Method::GET,
            "/api/v1/servers/no-such-server".into(),
            None,
            [404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/api/v1/projects".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/v1/projects/{frappe}"),
            None,
            [200, 200, 200, 403],
        ),
        (
            Method::POST,
            "/api/v1/projects".into(),
            Some(json!({"name": "Matrix"})),
            [201, 403, 403, 403],
        ),
        (
            Method::PUT,
            format!("/api/v1/projects/{nova}"),
            Some(json!({"budget_monthly": 130.0})),
            [200, 200, 403, 403],
        ),
        (
            Method::POST,
            format!("/api/v1/projects/{nova}/access"),
            Some(json!({"username": "sales", "level": "read"})),
            [201, 201, 403, 403],
        ),
        (
            Method::DELETE,
            format!("/api/v1/projects/{nova}/access/sales"),
            None,
            [200, 404, 403, 403],
        ),
        (
            Method::GET,
            "/api/v1/users".into(),
            None,
            [200, 403, 403, 403],
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(
                json!({"username": "matrixuser", "password": "orchid-tundra-pass-42", "role": "sales"}),
            ),
            [201, 403, 403, 403],
        ),
        (
            Method::GET,
            "/api/v1/audit".into(),
            None,
            [200, 403, 403, 403],
        ),
        (
            Method::GET,
            "/api/v1/nothing-here".into(),
            None,
            [404, 404, 404, 404],
        ),
    ];
    for (method, path, body, expected) in &cases {
        for ((role, api), want) in roles.iter().zip(expected) {
            let (status, answer) = api.send(method.clone(), path, body.as_ref()).await;
            assert_eq!(status, *want, "{role} {method} {path}: {answer}");
            assert!(
                answer.is_object() || answer.is_array(),
                "{role} {method} {path} answers JSON: {answer}"
            );
            if status >= 400 {
                assert!(
                    answer["error"].is_string(),
                    "{role} {method} {path}: errors are {{\"error\": …}}: {answer}"
                );
            }
        }
    }
    let anonymous = cp.api();
    let (status, answer) = anonymous.get("/api/v1/servers").await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = anonymous.with_token("dsa_forged").get("/api/v1/me").await;
    assert_eq!(status, 401);
}

/// sohila, a technical agent with write access to Nova HR only, sees exactly the four
/// Nova HR servers in lists, search and the API, and 403 on any other server.
#[tokio::test]
async fn sohila_sees_only_nova_hr() {
    let cp = ControlPlane::start_demo().await;
    let sohila = cp.api_as("sohila");
    let (status, list) = sohila.get("/api/v1/servers").await;
    assert_eq!(status, 200);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "nova-hr-api-01",
            "nova-hr-backup-01",
            "nova-hr-db-01",
            "nova-hr-web-01"
        ]
    );
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nova-hr-web-01")
        .unwrap();
    assert_eq!(web["ipv4"], "168.119.249.64");
    assert_eq!(web["server_type"], "cx21");
    assert_eq!(web["project"], "Nova HR");
    let (_, found) = sohila.get("/api/v1/servers?q=db").await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let (_, me) = sohila.get("/api/v1/me").await;
    assert_eq!(
        me["projects"],
        json!([{"id": me["projects"][0]["id"], "name": "Nova HR", "level": "write"}])
    );
    // The demo's Nova HR has its database backup recipe, which sohila may read.
    let nova = me["projects"][0]["id"].as_str().unwrap();
    let (status, recipe) = sohila
        .get(&format!("/api/v1/projects/{nova}/backup-recipe"))
        .await;
    assert_eq!(status, 200, "{recipe}");
    assert_eq!(recipe["compose_project"], "nova-hr-docker", "{recipe}");
    assert_eq!(recipe["service"], "db", "{recipe}");

    let mut page = PageClient::new(&cp);
    assert_eq!(page.login("sohila", "sohila123").await, 303);
    let (status, _, html) = page.get("/servers").await;
    assert_eq!(status, 200);
    assert!(html.contains("nova-hr-backup-01"));
    assert!(
        !html.contains("frappe-erp"),
        "another project's server leaked into the list"
    );
    let (_, _, html) = page.get("/servers?q=api").await;
    assert!(html.contains("nova-hr-api-01") && !html.contains("nova-hr-db-01"));
    let frappe_server = id_of(&cp.api_as("admin"), "/api/v1/servers", "frappe-erp-app-01").await;
    let (status, _, _) = page.get(&format!("/servers/{frappe_server}")).await;
    assert_eq!(status, 403);
}

/// Pages answer each role as the navigation promises: a page outside the role is 403,
/// and an anonymous visitor is sent to the login page.
#[tokio::test]
async fn page_route_role_matrix() {
    let cp = ControlPlane::start_demo().await;
    let nova = id_of(&cp.api_as("admin"), "/api/v1/projects", "Nova HR").await;
    let pages: Vec<(String, [u16; 4])> = vec![
        ("/".into(), [200, 200, 200, 200]),
        ("/servers".into(), [200, 200, 403, 200]),
        ("/projects".into(), [200, 200, 200, 200]),
        (format!("/projects/{nova}"), [200, 200, 200, 200]),
        (format!("/projects/{nova}/edit"), [200, 200, 403, 403]),
        ("/projects/new".into(), [200, 403, 403, 403]),
        ("/access".into(), [200, 200, 403, 403]),
        ("/users".into(), [200, 403, 403, 403]),
        ("/users/new".into(), [200, 403, 403, 403]),
        ("/audit".into(), [200, 403, 403, 403]),
        ("/account".into(), [200, 200, 200, 200]),
        ("/no-such-page".into(), [404, 404, 404, 404]),
    ];
    let users = [
        ("admin", "admin123"),
        ("tech", "tech123"),
        ("sales", "sales123"),
        ("sohila", "sohila123"),
    ];
    for (i, (username, password)) in users.iter().enumerate() {
        let mut client = PageClient::new(&cp);
        assert_eq!(
            client.login(username, password).await,
            303,
            "{username} logs in"
        );
        for (path, expected) in &pages {
            let (status, _, html) = client.get(path).await;
            assert_eq!(status, expected[i], "{username} GET {path}");
            assert!(
                html.contains("<html"),
                "{username} GET {path} renders a page"
            );
        }
        // The navigation shows only what the role may open.
        let (_, _, html) = client.get("/").await;
        let has = |href: &str| html.contains(&format!("href=\"{href}\""));
        assert_eq!(
            has("/users"),
            *username == "admin",
            "{username}: Users in nav"
        );
        assert_eq!(
            has("/audit"),
            *username == "admin",
            "{username}: Audit in nav"
        );
        assert_eq!(
            has("/servers"),
            *username != "sales",
            "{username}: Servers in nav"
        );
    }
    let mut anonymous = PageClient::new(&cp);
    let (status, _, _) = anonymous.get("/users").await;
    assert_eq!(status, 303);
}

/// Every state-changing page route refuses a missing or a wrong CSRF token, and
/// changes nothing when it does.
#[tokio::test]
async fn page_routes_refuse_missing_or_wrong_csrf() {
    let cp = ControlPlane::start_demo().await;
    let admin_api = cp.api_as("admin");
    let nova = id_of(&admin_api, "/api/v1/projects", "Nova HR").await;
    let (_, users) = admin_api.get("/api/v1/users").await;
    let sales_id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "sales")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = PageClient::new(&cp);
    assert_eq!(client.login("admin", "admin123").await, 303);
    let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/projects/new".into(), vec![("name", "Csrf Project")]),
        (
            format!("/projects/{nova}/edit"),
            vec![("name", "Renamed"), ("description", "x")],
        ),
        (
            "/access/grant".into(),
            vec![
                ("project_id", &nova),
                ("username", "sales"),
                ("level", "admin"),
            ],
        ),
        (
            "/access/revoke".into(),
            vec![("project_id", &nova), ("username", "sohila")],
        ),
        (
            "/users/new".into(),
            vec![
                ("username", "csrfuser"),
                ("password", "orchid-tundra-pass-42"),
                ("role", "admin"),
            ],
        ),
        (
            format!("/users/{sales_id}/edit"),
            vec![("role", "admin"), ("active", "on")],
        ),
        ("/account/apitoken".into(), vec![("name", "stolen")]),
        ("/logout".into(), vec![]),
    ];
    for (path, fields) in &posts {
        for csrf in [None, Some("wrong-token")] {
            let mut form = fields.clone();
            if let Some(token) = csrf {
                form.push(("csrf", token));
            }
            let (status, _, _) = client.post(path, &form).await;
            assert_eq!(status, 403, "POST {path} with csrf {csrf:?}");
        }
    }
    // Nothing changed, and the session is still alive (logout was refused too).
    let (status, _, html) = client.get("/").await;
    assert_eq!(status, 200);
    assert!(html.contains("admin"));
    let (_, projects) = admin_api.get("/api/v1/projects").await;
    let names: Vec<&str> = projects
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Nova HR")
            && !names.contains(&"Csrf Project")
            && !names.contains(&"Renamed")
    );
    let (_, me) = cp.api_as("sohila").get("/api/v1/me").await;
    assert_eq!(
        me["projects"].as_array().unwrap().len(),
        1,
        "sohila's grant survived"
    );
    let (_, me) = cp.api_as("sales").get("/api/v1/me").await;
    assert_eq!(me["role"], "sales");
    // The login form has its own token.
    let mut fresh = PageClient::new(&cp);
    fresh.get("/login").await;
    let (status, _, html) = fresh
        .post(
            "/login",
            &[
                ("username", "admin"),
                ("password", "admin123"),
                ("csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(status, 403, "{html}");
    // A cookie-authenticated API write needs the X-CSRF-Token header.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/projects", cp.base_url()))
        .header("cookie", client.cookie_header())
        .json(&json!({"name": "Via cookie"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

/// A form with invalid values re-renders with the message beside the field and what
/// was typed; the API answers 400 for malformed JSON, 422 naming the field for bad
/// values, 413 for a huge body, and nothing half-written remains.
#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    let (status, answer) = admin
        .send_raw(
            Method::POST,
            "/api/v1/projects",
            "application/json",
            "{\"name\": ",
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = admin
        .post("/api/v1/projects", &json!({"name": "X", "colour": "red"}))
        .await;
    assert_eq!(status, 400, "unknown field: {answer}");
    let (status, answer) = admin
        .post(
            "/api/v1/projects",
            &json!({"name": "Budgeted", "budget_monthly": -5}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("budget_monthly")),
        "{answer}"
    );
    let (status, answer) = admin
        .post("/api/v1/projects", &json!({"name": "y".repeat(81)}))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("name")),
        "{answer}"
    );
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": "Bad Name", "password": "orchid-tundra-pass-42", "role": "sales"}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("username")),
        "{answer}"
    );
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": "okname", "password": "short", "role": "sales"}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("password")),
        "{answer}"
    );
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": "okname", "password": "orchid-tundra-pass-42", "role": "king"}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("role")),
        "{answer}"
    );
    // Every bad field at once: `field` and `error` name the first, `errors` all.
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": "sohila", "password": "short", "role": "king"}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "username", "{answer}");
    assert_eq!(answer["error"], "username sohila is taken", "{answer}");
    assert_eq!(
        answer["errors"],
        json!({
            "username": "username sohila is taken",
            "role": "role must be admin, technical or sales",
            "password": "password must have at least 8 characters",
        }),
        "{answer}"
    );
    let (status, answer) = admin
        .post(
            "/api/v1/projects/Nova%20HR/access",
            &json!({"username": "sales", "level": "owner"}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("level")),
        "{answer}"
    );
    let huge = format!("{{\"name\": \"{}\"}}", "z".repeat(3 * 1024 * 1024));
    let (status, _) = admin
        .send_raw(Method::POST, "/api/v1/projects", "application/json", &huge)
        .await;
    assert_eq!(status, 413);
    let (_, users) = admin.get("/api/v1/users").await;
    assert!(
        !users.to_string().contains("okname"),
        "no half-written user"
    );
    let (_, projects) = admin.get("/api/v1/projects").await;
    assert_eq!(
        projects.as_array().unwrap().len(),
        4,
        "no half-written project: {projects}"
    );

    let mut client = PageClient::new(&cp);
    client.login("admin", "admin123").await;
    let csrf = client.csrf("/users/new").await;
    let (status, _, html) = client
        .post(
            "/users/new",
            &[
                ("csrf", &csrf),
                ("username", "ok-user"),
                ("full_name", "Typed Name"),
                ("email", "not-an-email"),
                ("password", "orchid-tundra-pass-42"),
                ("role", "technical"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        html.contains("is not a valid e-mail address"),
        "message beside the field"
    );
    assert!(
        html.contains("value=\"Typed Name\""),
        "what was typed is kept"
    );
    let csrf = client.csrf("/projects/new").await;
    let (status, _, html) = client
        .post(
            "/projects/new",
            &[
                ("csrf", &csrf),
                ("name", "Nova HR"),
                ("budget_monthly", "12"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("a project named Nova HR exists"));
    // A budget that is not a number is reported with the taken name, on one page.
    let csrf = client.csrf("/projects/new").await;
    let (status, _, html) = client
        .post(
            "/projects/new",
            &[
                ("csrf", &csrf),
                ("name", "Nova HR"),
                ("budget_monthly", "lots"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("a project named Nova HR exists"), "{html}");
    assert!(html.contains("Budget monthly must be a number"), "{html}");
}

/// The CLI works while `serve` runs: users, API tokens (only the token on stdout),
/// one-line errors with a non-zero exit, and a consistent backup of the live store.
#[tokio::test]
async fn cli_works_while_serving() {
    let cp = ControlPlane::start_demo().await;
    let out = cp.run_cli_with_stdin(
        &[
            "user",
            "add",
            "--username",
            "nadia",
            "--role",
            "technical",
            "--manager",
            "--password-stdin",
        ],
        "nadia-pass-1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = cp.cli_ok(&["apitoken", "create", "--username", "nadia"]);
    assert!(
        token.starts_with("dsa_") && !token.contains(char::is_whitespace),
        "only the token: {token:?}"
    );
    let (status, me) = cp.api().with_token(&token).get("/api/v1/me").await;
    assert_eq!(
        (status, me["is_manager"].as_bool()),
        (200, Some(true)),
        "{me}"
    );

    for bad in [
        vec!["user", "add", "--username", "nadia", "--role", "technical"],
        vec!["user", "add", "--username", "x y", "--role", "technical"],
        vec!["user", "add", "--username", "omar", "--role", "king"],
        vec!["apitoken", "create", "--username", "nobody"],
    ] {
        let out = cp.run_cli(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} must fail");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{bad:?}: one line: {stderr}"
        );
        assert!(stderr.starts_with("dynserv: "), "{stderr}");
    }

    let copy_dir = cp.dir().join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let out_file = copy_dir.join("dynserv.redb");
    let answer = cp.cli_ok(&["backup", "--out", out_file.to_str().unwrap()]);
    assert!(answer.contains("wrote"), "{answer}");
    let again = cp.run_cli(&["backup", "--out", out_file.to_str().unwrap()]);
    assert!(!again.status.success(), "refuses to overwrite a file");
    // The copy is a complete store: with no server on it, commands open it directly.
    let secret = std::fs::read(cp.data_dir().join("secret")).unwrap();
    std::fs::write(copy_dir.join("secret"), secret).unwrap();
    let out = std::process::Command::new(dynserv_tests::dynserv_binary())
        .args([
            "--data-dir",
            copy_dir.to_str().unwrap(),
            "apitoken",
            "create",
            "--username",
            "nadia",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the copy holds nadia: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What was written survives a restart: users, projects, grants, tokens, audit.
#[tokio::test]
async fn store_survives_restart() {
    let mut cp = ControlPlane::start_demo().await;
    let token = cp.api_token("admin");
    let admin = cp.api().with_token(&token);
    let (status, _) = admin
        .post(
            "/api/v1/projects",
            &json!({"name": "Durable", "budget_monthly": 10.5, "hetzner_token": "secret-token-1"}),
        )
        .await;
    assert_eq!(status, 201);
    cp.restart().await;
    let admin = cp.api().with_token(&token);
    let (status, project) = admin.get("/api/v1/projects/Durable").await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["budget_monthly"], 10.5);
    assert_eq!(project["has_hetzner_token"], true);
    assert!(
        !project.to_string().contains("secret-token-1"),
        "the token is never returned"
    );
    let raw = std::fs::read(cp.data_dir().join("dynserv.redb")).unwrap();
    assert!(
        !raw.windows(14).any(|w| w == b"secret-token-1"),
        "the Hetzner token is encrypted at rest"
    );
    let (_, audit) = admin.get("/api/v1/audit?q=project.create").await;
    assert!(audit.to_string().contains("Durable"));
}

/// Repeated failed logins lock the account for a while, even for the right password;
/// deactivated users and reset passwords end sessions and tokens.
#[tokio::test]
async fn logins_are_throttled_and_deactivation_locks_out() {
    let cp = ControlPlane::start_demo().await;
    let mut client = PageClient::new(&cp);
    for _ in 0..5 {
        assert_eq!(client.login("tech", "wrong-password").await, 401);
    }
    let csrf = client.csrf("/login").await;
    let (status, _, html) = client
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "tech"),
                ("password", "tech123"),
            ],
        )
        .await;
    assert_eq!(status, 429);
    assert!(html.contains("too many failed logins"));

    let admin = cp.api_as("admin");
    let sales_token = cp.api_token("sales");
    let mut sales_page = PageClient::new(&cp);
    assert_eq!(sales_page.login("sales", "sales123").await, 303);
    let (status, user) = admin
        .put("/api/v1/users/sales", &json!({"active": false}))
        .await;
    assert_eq!(
        (status, user["active"].as_bool()),
        (200, Some(false)),
        "{user}"
    );
    let (status, _) = cp.api().with_token(&sales_token).get("/api/v1/me").await;
    assert_eq!(status, 401, "a deactivated user's token stops working");
    let (status, _, _) = sales_page.get("/").await;
    assert_eq!(status, 303, "a deactivated user's session ends");
    assert_eq!(PageClient::new(&cp).login("sales", "sales123").await, 401);
    let (status, _) = admin
        .put(
            "/api/v1/users/sales",
            &json!({"active": true, "password": "new-sales-pass"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        PageClient::new(&cp).login("sales", "new-sales-pass").await,
        303
    );
    let (status, answer) = admin
        .put("/api/v1/users/admin", &json!({"active": false}))
        .await;
    assert_eq!(
        status, 422,
        "an admin cannot deactivate themselves: {answer}"
    );
}

/// `/healthz`, `/metrics` and the static assets are served without a session, and
/// X-Forwarded-For is believed only from a trusted proxy.
#[tokio::test]
async fn health_metrics_assets_and_proxies() {
    let cp = ControlPlane::builder()
        .demo()
        .env("DYNSERV_TRUSTED_PROXIES", "127.0.0.1")
        .start()
        .await;
    let api = cp.api();
    assert_eq!(api.get_text("/healthz").await, (200, "ok".to_string()));
    let (status, metrics) = api.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("dynserv_http_requests_total"), "{metrics}");
    for asset in [
        "/static/app.css",
        "/static/app.js",
        "/static/vendor/bootstrap/bootstrap.min.css",
        "/static/vendor/bootstrap/bootstrap.bundle.min.js",
        "/static/vendor/fontawesome/css/all.min.css",
    ] {
        let (status, body) = api.get_text(asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 100, "{asset}");
    }
    let mut client = PageClient::new(&cp);
    let csrf = client.csrf("/login").await;
    let resp = client
        .http()
        .post(format!("{}/login", cp.base_url()))
        .header("cookie", client.cookie_header())
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "admin"),
            ("password", "admin123"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("dsv_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Secure"),
        "{cookie}"
    );
    let (_, audit) = cp
        .api_as("admin")
        .get("/api/v1/audit?q=session.login")
        .await;
    assert_eq!(audit[0]["ip"], "203.0.113.9", "{audit}");
}

/// The `<form method="post">` actions of a page (a form without an action posts to the
/// page itself), and the same-origin page links it has.
fn forms_and_links(path: &str, html: &str) -> (Vec<String>, Vec<String>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        Some(tag[start..].split('"').next()?.replace("&amp;", "&"))
    };
    let mut forms = Vec::new();
    for piece in html.split("<form").skip(1) {
        let tag = piece.split('>').next().unwrap_or("");
        if attr(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
            forms.push(attr(tag, "action").unwrap_or_else(|| path.to_string()));
        }
    }
    let mut links = Vec::new();
    for piece in html.split("href=\"/").skip(1) {
        let link = format!("/{}", piece.split('"').next().unwrap_or(""));
        let skip = ["/static", "/download", "/api/", "/logout"]
            .iter()
            .any(|p| link.starts_with(p))
            || link.contains('#')
            || link.ends_with(".csv");
        if !skip {
            links.push(link.replace("&amp;", "&"));
        }
    }
    (forms, links)
}

/// Every form any page shows an admin (found by following the pages' own links, so a
/// new page is covered without listing it here) is refused without the CSRF token or
/// with a wrong one.
#[tokio::test]
async fn every_page_form_refuses_missing_or_wrong_csrf() {
    let cp = ControlPlane::start_demo().await;
    let mut client = PageClient::new(&cp);
    assert_eq!(client.login("admin", "admin123").await, 303);
    let mut queue = vec!["/".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    let mut actions = std::collections::BTreeSet::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 200 {
            continue;
        }
        let (status, _, html) = client.get(&path).await;
        assert!(status < 500, "GET {path} answered {status}");
        if status != 200 {
            continue;
        }
        let (forms, links) = forms_and_links(&path, &html);
        actions.extend(forms);
        // Follow at most a few links of each list, so the crawl stays small.
        let mut per_prefix: HashMap<String, usize> = HashMap::new();
        for link in links {
            let prefix: String = link.split('/').take(2).collect::<Vec<_>>().join("/");
            let count = per_prefix.entry(prefix).or_default();
            *count += 1;
            if *count <= 4 && !seen.contains(&link) {
                queue.push(link);
            }
        }
    }
    eprintln!("crawled {} pages; form actions: {actions:?}", seen.len());
    assert!(
        actions.len() >= 8,
        "the crawl found too few forms: {actions:?}"
    );
    actions.remove("/login");
    for action in &actions {
        for csrf in [None, Some("wrong-token")] {
            let mut form: Vec<(&str, &str)> = vec![("name", "x"), ("confirm", "x")];
            if let Some(token) = csrf {
                form.push(("csrf", token));
            }
            let (status, _, _) = client.post(action, &form).await;
            assert_eq!(status, 403, "POST {action} with csrf {csrf:?}");
        }
    }
    let (status, _, _) = client.get("/").await;
    assert_eq!(status, 200, "the session survived (logout was refused too)");
}
