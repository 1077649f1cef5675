//! The foundation at its boundaries: the JSON API and the pages for every role, CSRF on
//! every state-changing page route, bad input, the CLI while `serve` runs, and the
//! store across restarts. Every test starts the real `dynserv` binary.

use std::collections::HashMap;

use dynserv_tests::{csrf_of, Api, ControlPlane, PageClient};
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
    // Its master secret: the data dir's file, or SESSION_SECRET on PostgreSQL.
    let mut command = std::process::Command::new(dynserv_tests::dynserv_binary());
    match cp.session_secret() {
        Some(secret) => {
            command.env("SESSION_SECRET", secret);
        }
        None => {
            let secret = std::fs::read(cp.data_dir().join("secret")).unwrap();
            std::fs::write(copy_dir.join("secret"), secret).unwrap();
        }
    }
    let out = command
        .env_remove("DATABASE_URL")
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

/// Every byte the store holds: the redb file, or every record's body in PostgreSQL.
fn raw_store(cp: &ControlPlane) -> Vec<u8> {
    match cp.database_url().filter(|u| u.starts_with("postgres")) {
        Some(url) => {
            let url = url.to_string();
            // The synchronous client must not run on the test's async runtime.
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                client
                    .query("SELECT body FROM dynserv_records", &[])
                    .unwrap()
                    .iter()
                    .flat_map(|row| row.get::<_, Vec<u8>>(0))
                    .collect()
            })
            .join()
            .unwrap()
        }
        None => std::fs::read(cp.data_dir().join("dynserv.redb")).unwrap(),
    }
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
    let raw = raw_store(&cp);
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

/// One API call: method, path, JSON body.
type Route = (Method, String, Option<Value>);

/// Creates a user through the API and grants it `(project, level)`s.
async fn user_with_grants(admin: &Api, username: &str, role: &str, grants: &[(&str, &str)]) {
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": username, "password": "Tq4!pinewood-harbor-ledger", "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    for (project, level) in grants {
        let path = format!("/api/v1/projects/{}/access", project.replace(' ', "%20"));
        let (status, answer) = admin
            .post(&path, &json!({"username": username, "level": level}))
            .await;
        assert_eq!(status, 201, "{answer}");
    }
}

/// A sales agent never touches servers (regression: recipes with their backup and
/// restore commands, schedules, costs and the deploy command answered 200 to sales,
/// `/api/v1/agents` too, and the subscription form listed every server with its cost):
/// every fleet and operations route, API and page, answers 403 to a sales agent with
/// no grant and to one holding an admin grant, before any lookup (unknown ids too),
/// while a technician still gets through.
#[tokio::test]
async fn sales_is_refused_every_fleet_and_operations_route() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    user_with_grants(
        &admin,
        "salma",
        "sales",
        &[("Nova HR", "admin"), ("Local", "admin")],
    )
    .await;
    let local = admin.connected_agent("localhost").await;
    let agent = local["id"].as_str().unwrap().to_string();
    let nova = id_of(&admin, "/api/v1/projects", "Nova HR").await;
    let server = id_of(&admin, "/api/v1/servers", "nova-hr-db-01").await;
    let (status, hello) = admin.get("/api/v1/scripts/hello").await;
    assert_eq!(status, 200, "{hello}");
    let hello = hello["id"].as_str().unwrap().to_string();
    let (status, execution) = admin
        .post(
            "/api/v1/executions",
            &json!({"agent": agent, "kind": "script", "script": "true"}),
        )
        .await;
    assert_eq!(status, 201, "{execution}");
    let execution = execution["id"].as_str().unwrap().to_string();

    let get = |path: String| (Method::GET, path, None);
    let post = |path: String, body: Value| (Method::POST, path, Some(body));
    let put = |path: String, body: Value| (Method::PUT, path, Some(body));
    // (method, path, body); the technician's status where it reads something.
    let api_routes: Vec<(Route, Option<u16>)> = vec![
        (get("/api/v1/agents".into()), Some(200)),
        (get(format!("/api/v1/agents/{agent}")), Some(200)),
        (
            post(format!("/api/v1/agents/{agent}/revoke"), json!({})),
            None,
        ),
        (get("/api/v1/enrollment-tokens".into()), Some(200)),
        (
            post(
                "/api/v1/enrollment-tokens".into(),
                json!({"project": "Nova HR"}),
            ),
            None,
        ),
        (
            (Method::DELETE, "/api/v1/enrollment-tokens/x".into(), None),
            None,
        ),
        (get("/api/v1/executions".into()), Some(200)),
        (get(format!("/api/v1/executions/{execution}")), Some(200)),
        (get(format!("/api/v1/executions/{execution}/log")), None),
        (
            post(format!("/api/v1/executions/{execution}/cancel"), json!({})),
            None,
        ),
        (
            post(
                "/api/v1/executions".into(),
                json!({"agent": agent, "kind": "script", "script": "true"}),
            ),
            None,
        ),
        (get("/api/v1/scripts".into()), Some(200)),
        (get(format!("/api/v1/scripts/{hello}")), Some(200)),
        (
            post(
                "/api/v1/scripts".into(),
                json!({"name": "x", "kind": "shell", "body": "true", "project": "Nova HR"}),
            ),
            None,
        ),
        (
            put(
                format!("/api/v1/scripts/{hello}"),
                json!({"description": "x"}),
            ),
            None,
        ),
        (
            post(
                format!("/api/v1/scripts/{hello}/run"),
                json!({"targets": {"servers": [agent]}}),
            ),
            None,
        ),
        (get("/api/v1/rollouts/x".into()), Some(404)),
        (get("/api/v1/backups".into()), Some(200)),
        (get("/api/v1/backups/x".into()), Some(404)),
        (post("/api/v1/backups/x/verify".into(), json!({})), None),
        (
            post(
                "/api/v1/backups/x/restore".into(),
                json!({"confirm": "RESTORE"}),
            ),
            None,
        ),
        (
            post(format!("/api/v1/servers/{server}/backup"), json!({})),
            None,
        ),
        (
            post(format!("/api/v1/projects/{nova}/backup"), json!({})),
            None,
        ),
        (get("/api/v1/updates".into()), Some(200)),
        (get("/api/v1/updates/x".into()), Some(404)),
        (
            post(format!("/api/v1/servers/{server}/update"), json!({})),
            None,
        ),
        (
            post(format!("/api/v1/projects/{nova}/update"), json!({})),
            None,
        ),
        (
            get(format!("/api/v1/projects/{nova}/backup-recipe")),
            Some(200),
        ),
        (
            put(
                format!("/api/v1/projects/{nova}/backup-recipe"),
                json!({"compose_project": "x", "service": "db", "command": "true"}),
            ),
            None,
        ),
        (get(format!("/api/v1/projects/{nova}/schedules")), Some(200)),
        (
            put(format!("/api/v1/projects/{nova}/schedules"), json!({})),
            None,
        ),
        (get(format!("/api/v1/projects/{nova}/costs")), Some(200)),
        (
            post(format!("/api/v1/projects/{nova}/sync"), json!({})),
            None,
        ),
        (
            post(
                format!("/api/v1/servers/{server}/power"),
                json!({"action": "reboot"}),
            ),
            None,
        ),
        (get(format!("/api/v1/servers/{server}/actions")), Some(200)),
        (
            get(format!("/api/v1/servers/{server}/actions/x")),
            Some(404),
        ),
        (get(format!("/api/v1/servers/{server}")), Some(200)),
    ];
    let tech = cp.api_as("tech");
    for username in ["sales", "salma"] {
        let api = cp.api_as(username);
        for ((method, path, body), _) in &api_routes {
            let (status, answer) = api.send(method.clone(), path, body.as_ref()).await;
            assert_eq!(status, 403, "{username} {method} {path}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
    }
    for ((method, path, body), want) in &api_routes {
        if let Some(want) = want {
            let (status, answer) = tech.send(method.clone(), path, body.as_ref()).await;
            assert_eq!(status, *want, "tech {method} {path}: {answer}");
        }
    }

    // What sales may read of a project holds no operations detail.
    let salma = cp.api_as("salma");
    let (status, project) = salma.get(&format!("/api/v1/projects/{nova}")).await;
    assert_eq!(status, 200, "{project}");
    assert!(project.get("deploy_command").is_none(), "{project}");
    let (_, projects) = salma.get("/api/v1/projects").await;
    assert!(!projects.to_string().contains("deploy.sh"), "{projects}");
    let (_, project) = tech.get(&format!("/api/v1/projects/{nova}")).await;
    assert_eq!(
        project["deploy_command"],
        "cd /home/dynamic/nova-hr-docker && ./deploy.sh"
    );
    // A subscription takes only servers sales may offer; another one reads as unknown.
    let (status, answer) = salma
        .post(
            "/api/v1/subscriptions",
            &json!({"client": "Acme", "server_ids": [server], "monthly_cost": 10.0,
                    "currency": "EUR", "starts_on": "2026-01-01", "hosting_until": "2026-12-31"}),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("server_ids")),
        "{answer}"
    );
    assert_eq!(
        answer["errors"]["server_ids"],
        format!("there is no server {server}")
    );

    let page_gets = vec![
        "/agents".to_string(),
        "/agents/enroll".into(),
        format!("/servers/{server}/run"),
        "/executions".into(),
        format!("/executions/{execution}"),
        "/scripts".into(),
        "/scripts/new".into(),
        format!("/scripts/{hello}"),
        format!("/scripts/{hello}/run"),
        "/rollouts/x".into(),
        "/backups".into(),
        "/backups/x".into(),
        format!("/projects/{nova}/operations"),
        "/updates".into(),
        "/updates/x".into(),
        "/servers".into(),
        format!("/servers/{server}"),
    ];
    let page_posts = vec![
        "/agents/enroll".to_string(),
        format!("/agents/{agent}/revoke"),
        "/agents/tokens/x/revoke".into(),
        format!("/servers/{server}/run"),
        format!("/executions/{execution}/cancel"),
        "/scripts/new".into(),
        format!("/scripts/{hello}"),
        format!("/scripts/{hello}/run"),
        "/backups/x/verify".into(),
        "/backups/x/restore".into(),
        format!("/servers/{server}/backup"),
        format!("/servers/{server}/update"),
        format!("/servers/{server}/power"),
        format!("/projects/{nova}/operations"),
        format!("/projects/{nova}/backup"),
        format!("/projects/{nova}/update"),
        format!("/projects/{nova}/sync"),
    ];
    for (username, password) in [
        ("sales", "sales123"),
        ("salma", "Tq4!pinewood-harbor-ledger"),
    ] {
        let mut page = PageClient::signed_in(&cp, username, password).await;
        for path in &page_gets {
            let (status, _, _) = page.get(path).await;
            assert_eq!(status, 403, "{username} GET {path}");
        }
        let csrf = page.csrf("/account").await;
        for path in &page_posts {
            let form = [
                ("csrf", csrf.as_str()),
                ("project", "Nova HR"),
                ("name", "x"),
                ("kind", "shell"),
                ("body", "true"),
                ("script", "true"),
                ("action", "reboot"),
                ("confirm", "RESTORE"),
            ];
            let (status, _, _) = page.post(path, &form).await;
            assert_eq!(status, 403, "{username} POST {path}");
        }
        // The project page shows no costs, deploy command or operations link, and the
        // subscription form offers no server of the fleet.
        let (status, _, html) = page.get(&format!("/projects/{nova}")).await;
        assert_eq!(status, 200);
        assert!(
            !html.contains("deploy.sh"),
            "{username}: deploy command shown"
        );
        assert!(
            !html.contains("data-budget-level"),
            "{username}: costs shown"
        );
        assert!(
            !html.contains("/operations"),
            "{username}: operations link shown"
        );
        let (status, _, html) = page.get("/subscriptions/new").await;
        assert_eq!(status, 200);
        assert!(
            !html.contains("nova-hr-db-01"),
            "{username}: a fleet server is offered"
        );
        assert!(!html.contains("/mo"), "{username}: a server cost is shown");
    }
}

/// A read-only user hears 403 before anything about the state or the input
/// (regression: a server without an agent answered 409, a bad value 422, before the
/// missing permission was told).
#[tokio::test]
async fn read_only_users_hear_403_first() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    // rita reads Nova HR and operates Django Projects, so "on at least one project"
    // passes and the per-server decisions are what answers.
    user_with_grants(
        &admin,
        "rita",
        "technical",
        &[("Nova HR", "read"), ("Django Projects", "write")],
    )
    .await;
    let rita = cp.api_as("rita");
    let nova = id_of(&admin, "/api/v1/projects", "Nova HR").await;
    // Demo servers of Nova HR have no agent.
    let server = id_of(&admin, "/api/v1/servers", "nova-hr-db-01").await;
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            format!("/api/v1/servers/{server}/backup"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/servers/{server}/update"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/scripts/hello/run".into(),
            Some(json!({"targets": {"servers": [server]}})),
        ),
        (
            Method::POST,
            "/api/v1/scripts/hello/run".into(),
            Some(json!({"targets": {"project": "Nova HR"}})),
        ),
        (
            Method::POST,
            format!("/api/v1/servers/{server}/power"),
            Some(json!({"action": "explode"})),
        ),
        (
            Method::POST,
            format!("/api/v1/projects/{nova}/access"),
            Some(json!({"username": "nobody", "level": "god"})),
        ),
        (
            Method::PUT,
            format!("/api/v1/projects/{nova}"),
            Some(json!({"budget_monthly": -5})),
        ),
        (
            Method::PUT,
            format!("/api/v1/projects/{nova}/schedules"),
            Some(json!({})),
        ),
        (
            Method::PUT,
            format!("/api/v1/projects/{nova}/backup-recipe"),
            Some(json!({"compose_project": ""})),
        ),
        (Method::POST, "/api/v1/users/nobody/apitokens".into(), None),
        (Method::GET, "/api/v1/users/nobody/tokens".into(), None),
    ];
    for (method, path, body) in &cases {
        let (status, answer) = rita.send(method.clone(), path, body.as_ref()).await;
        assert_eq!(status, 403, "rita {method} {path}: {answer}");
    }
}

/// API tokens are listed (never their secret) with when they were last used, revoked
/// by their owner or an admin and by a password reset unless asked not to, on the API
/// and the pages, every revocation audited (regression: nothing revoked a token; one
/// still worked after a password reset).
#[tokio::test]
async fn api_tokens_are_listed_and_revoked() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    let first = cp.api_token("sales");
    let sales = cp.api().with_token(&first);
    let (status, created) = sales
        .post("/api/v1/users/sales/apitokens", &json!({"name": "ci"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let second = cp.api().with_token(created["token"].as_str().unwrap());

    let (status, list) = sales.get("/api/v1/tokens").await;
    assert_eq!(status, 200, "{list}");
    let tokens = list.as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{list}");
    assert_eq!(tokens[0]["name"], "ci", "newest first: {list}");
    for token in tokens {
        let keys: Vec<&str> = token
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{token}");
        for key in ["id", "name", "created_at", "last_used_at"] {
            assert!(keys.contains(&key), "{token}");
        }
    }
    assert!(
        !list.to_string().contains(&first),
        "the secret is never listed"
    );
    let used = tokens
        .iter()
        .find(|t| t["name"] == "cli")
        .unwrap_or_else(|| panic!("the CLI token in {list}"));
    assert!(used["last_used_at"].is_string(), "{used}");
    // Within the minute, further use writes nothing new.
    let (_, again) = sales.get("/api/v1/tokens").await;
    let used_again = again
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == used["id"])
        .unwrap();
    assert_eq!(used_again["last_used_at"], used["last_used_at"]);

    // Another user's token reads as unknown; its owner and an admin revoke it.
    let ci_id = tokens[0]["id"].as_str().unwrap().to_string();
    let tech = cp.api_as("tech");
    let (status, _) = tech.delete(&format!("/api/v1/tokens/{ci_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = tech.get("/api/v1/users/sales/tokens").await;
    assert_eq!(status, 403);
    let (status, revoked) = sales.delete(&format!("/api/v1/tokens/{ci_id}")).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["name"], "ci");
    let (status, _) = second.get("/api/v1/me").await;
    assert_eq!(status, 401, "a revoked token stops working");
    let (status, _) = sales.delete(&format!("/api/v1/tokens/{ci_id}")).await;
    assert_eq!(status, 404);
    let (status, list) = admin.get("/api/v1/users/sales/tokens").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // A password reset revokes the user's tokens unless told not to.
    let (status, answer) = admin
        .put(
            "/api/v1/users/sales",
            &json!({"password": "another-pass-1", "revoke_tokens": false}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sales.get("/api/v1/me").await.0, 200, "kept on request");
    let (status, answer) = admin
        .put(
            "/api/v1/users/sales",
            &json!({"password": "another-pass-2"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked_tokens"], 1, "{answer}");
    assert_eq!(sales.get("/api/v1/me").await.0, 401, "revoked by the reset");

    // The pages: the account page revokes one's own; the admin's user page anyone's,
    // and its password reset revokes them all with the box ticked (the default).
    let mut page = PageClient::signed_in(&cp, "sales", "another-pass-2").await;
    let csrf = page.csrf("/account").await;
    let (status, _, _) = page
        .post("/account/apitoken", &[("csrf", &csrf), ("name", "web")])
        .await;
    assert_eq!(status, 200);
    let (_, mine) = cp.api_as("sales").get("/api/v1/tokens").await;
    let web = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "web")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, html) = page.get("/account").await;
    assert!(
        html.contains(&format!("/account/tokens/{web}/revoke")),
        "{html}"
    );
    let (status, location, _) = page
        .post(&format!("/account/tokens/{web}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!((status, location.as_str()), (303, "/account"));
    let (_, mine) = admin.get("/api/v1/users/sales/tokens").await;
    assert!(!mine.to_string().contains(&web), "{mine}");

    let kept = cp.api_token("sales");
    let (_, list) = admin.get("/api/v1/users/sales/tokens").await;
    let kept_id = list[0]["id"].as_str().unwrap().to_string();
    let (_, users) = admin.get("/api/v1/users").await;
    let sales_id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "sales")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut admin_page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = admin_page.get(&format!("/users/{sales_id}/edit")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!("/users/{sales_id}/tokens/{kept_id}/revoke")),
        "{html}"
    );
    assert!(
        html.contains("name=\"revoke_tokens\" checked"),
        "ticked by default"
    );
    let csrf = csrf_of(&html);
    let (status, _, _) = admin_page
        .post(
            &format!("/users/{sales_id}/tokens/{kept_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(cp.api().with_token(&kept).get("/api/v1/me").await.0, 401);
    let survivor = cp.api_token("sales");
    let (status, _, html) = admin_page
        .post(
            &format!("/users/{sales_id}/edit"),
            &[
                ("csrf", &csrf),
                ("role", "sales"),
                ("active", "on"),
                ("full_name", "Salma Sales"),
                ("email", ""),
                ("password", "from-the-page-1"),
                ("revoke_tokens", "on"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{html}");
    assert_eq!(
        cp.api().with_token(&survivor).get("/api/v1/me").await.0,
        401
    );

    let (_, audit) = admin.get("/api/v1/audit?q=apitoken.revoke").await;
    assert!(audit.as_array().unwrap().len() >= 4, "{audit}");
}
