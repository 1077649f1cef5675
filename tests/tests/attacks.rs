//! Regression tests for the defects found by attacking the product (issue 11): each
//! test is named after what broke and drives the real `dynserv` over HTTP, the CLI or
//! the file system the way the attack did.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use dynserv_tests::{dynserv_binary, ControlPlane, PageClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test address")
}

/// The `value` of the login form's hidden `next` field.
fn next_field(html: &str) -> String {
    let key = "name=\"next\" value=\"";
    let start = html.find(key).expect("the login form has a next field") + key.len();
    html[start..].split('"').next().unwrap_or("").to_string()
}

/// Wrong passwords for `admin` from one network no longer lock `admin` out for
/// everyone: the right password from another network signs in at once, while the
/// guessing network (any address of its /24) waits.
#[tokio::test]
async fn failed_logins_from_one_network_do_not_lock_the_user_out_elsewhere() {
    let cp = ControlPlane::start_demo().await;
    let mut attacker = PageClient::from_address(&cp, ip("127.0.0.2"));
    for attempt in 0..8 {
        let status = attacker.login("admin", "not-the-password").await;
        assert!(
            status == 401 || status == 429,
            "attempt {attempt}: {status}"
        );
    }
    assert_eq!(
        attacker.login("admin", "admin123").await,
        429,
        "the guessing address waits"
    );
    let mut neighbour = PageClient::from_address(&cp, ip("127.0.0.77"));
    assert_eq!(
        neighbour.login("admin", "admin123").await,
        429,
        "the same /24 is one network"
    );
    let mut elsewhere = PageClient::from_address(&cp, ip("127.0.1.2"));
    assert_eq!(
        elsewhere.login("admin", "admin123").await,
        303,
        "admin signs in from another network"
    );
}

/// Sixty wrong logins from sixty addresses of one /24 used to go through unthrottled
/// (the per-address count saw one try per address); the network is now counted as one
/// and delayed after its free failures, without delaying other networks.
#[tokio::test]
async fn sixty_addresses_of_one_network_are_throttled_together() {
    let cp = ControlPlane::start_demo().await;
    let mut delayed = 0;
    for i in 2..62 {
        let mut client = PageClient::from_address(&cp, ip(&format!("127.0.0.{i}")));
        match client.login(&format!("guess{i}"), "not-the-password").await {
            401 => {}
            429 => delayed += 1,
            other => panic!("try {i}: status {other}"),
        }
    }
    assert_eq!(
        delayed,
        60 - 20,
        "the network's tries past its 20 free ones wait"
    );
    let mut elsewhere = PageClient::from_address(&cp, ip("127.0.1.9"));
    assert_eq!(elsewhere.login("tech", "tech123").await, 303);
}

/// A huge enrollment-token lifetime panicked the handler ("TimeDelta::days out of
/// bounds") and the connection closed with no answer, in the API, the form and the
/// CLI; it is now a 422 naming `ttl` (the CLI: one line naming `--ttl`), and the server
/// keeps serving.
#[tokio::test]
async fn huge_token_ttl_is_a_422_not_a_panic() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    for ttl in [
        "200000000000d",
        "9223372036854775807s",
        "99999999999999999999999h",
    ] {
        let (status, answer) = admin
            .post(
                "/api/v1/enrollment-tokens",
                &json!({"project": "Nova HR", "ttl": ttl}),
            )
            .await;
        assert_eq!(status, 422, "{ttl}: {answer}");
        assert_eq!(answer["field"], "ttl", "{ttl}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("between 1 s and 366 days")),
            "{answer}"
        );
    }

    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let csrf = page.csrf("/agents/enroll").await;
    let (status, _, html) = page
        .post(
            "/agents/enroll",
            &[
                ("csrf", &csrf),
                ("project", "Nova HR"),
                ("uses", "1"),
                ("ttl", "200000000000d"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("between 1 s and 366 days"), "{html}");

    let out = cp.run_cli(&[
        "token",
        "create",
        "--project",
        "Nova HR",
        "--ttl",
        "9223372036854775807s",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--ttl") && stderr.contains("between"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let (status, _) = admin.get("/api/v1/me").await;
    assert_eq!(status, 200, "the server still answers");
}

/// `next=/\HOST/` and `next=/<TAB>/HOST/` passed the prefix check and sent the browser
/// to another origin after login; `next` is now parsed as a URL and only this site's
/// paths survive, on the form and on the redirect.
#[tokio::test]
async fn login_next_never_leaves_this_origin() {
    let cp = ControlPlane::start_demo().await;
    let port = cp.http_addr().rsplit(':').next().unwrap().to_string();
    let attacks = [
        (
            format!("/\\127.0.0.2:{port}/"),
            format!("%2F%5C127.0.0.2%3A{port}%2F"),
        ),
        (
            format!("/\t/127.0.0.2:{port}/"),
            format!("%2F%09%2F127.0.0.2%3A{port}%2F"),
        ),
        (
            format!("//127.0.0.2:{port}/"),
            format!("%2F%2F127.0.0.2%3A{port}%2F"),
        ),
    ];
    for (next, encoded) in &attacks {
        let mut client = PageClient::new(&cp);
        let (status, _, html) = client.get(&format!("/login?next={encoded}")).await;
        assert_eq!(status, 200);
        assert_eq!(next_field(&html), "/", "{next:?}");
        let csrf = client.csrf("/login").await;
        let (status, location, _) = client
            .post(
                "/login",
                &[
                    ("csrf", csrf.as_str()),
                    ("username", "admin"),
                    ("password", "admin123"),
                    ("next", next.as_str()),
                ],
            )
            .await;
        assert_eq!((status, location.as_str()), (303, "/"), "{next:?}");
    }
    let mut client = PageClient::new(&cp);
    let csrf = client.csrf("/login").await;
    let (status, location, _) = client
        .post(
            "/login",
            &[
                ("csrf", csrf.as_str()),
                ("username", "admin"),
                ("password", "admin123"),
                ("next", "/servers?q=web"),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/servers?q=web"));
}

/// `password`, `12345678`, eight spaces and the username itself were accepted as new
/// passwords; the CLI, the API and the form now refuse them with one message, while
/// the demo's known passwords keep signing in.
#[tokio::test]
async fn weak_passwords_are_refused_everywhere() {
    let cp = ControlPlane::start_demo().await;
    for (username, password) in [
        ("nadia", "password"),
        ("nadia", "12345678"),
        ("nadia", "        "),
        ("nadia.karim", "nadia.karim"),
    ] {
        let out = cp.run_cli_with_stdin(
            &[
                "user",
                "add",
                "--username",
                username,
                "--role",
                "technical",
                "--password-stdin",
            ],
            &format!("{password}\n"),
        );
        assert!(!out.status.success(), "{password:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("too easy to guess") || stderr.contains("at least 8"),
            "{password:?}: {stderr}"
        );
    }

    let admin = cp.api_as("admin");
    for (username, password) in [
        ("omar", "password"),
        ("omar", "12345678"),
        ("omar", "        "),
        ("omar.farouk", "omar.farouk"),
    ] {
        let (status, answer) = admin
            .post(
                "/api/v1/users",
                &json!({"username": username, "password": password, "role": "sales"}),
            )
            .await;
        assert_eq!(status, 422, "{password:?}: {answer}");
        assert_eq!(answer["field"], "password", "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("password")),
            "{answer}"
        );
    }
    let (status, answer) = admin
        .put("/api/v1/users/sales", &json!({"password": "sales123"}))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("password")),
        "{answer}"
    );
    let (status, answer) = admin
        .post(
            "/api/v1/users",
            &json!({"username": "omar", "password": "violet-anchor-lunar-91", "role": "sales"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let csrf = page.csrf("/users/new").await;
    let (status, _, html) = page
        .post(
            "/users/new",
            &[
                ("csrf", &csrf),
                ("username", "farida"),
                ("password", "12345678"),
                ("role", "technical"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("too easy to guess"), "{html}");
    for (user, password) in [
        ("tech", "tech123"),
        ("sales", "sales123"),
        ("sohila", "sohila123"),
    ] {
        assert_eq!(
            PageClient::new(&cp).login(user, password).await,
            303,
            "the demo's {user} keeps signing in"
        );
    }
}

/// NUL bytes in free text, the right-to-left override in names (project, script,
/// client) and other control characters in single-line fields were stored; they are
/// refused naming the field, while multi-line text keeps its newlines and tabs.
#[tokio::test]
async fn nul_bytes_and_bidi_overrides_are_refused() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    let refused = |answer: &Value, field: &str| {
        answer["field"] == field || answer["errors"].get(field).is_some()
    };
    for (path, body, field) in [
        (
            "/api/v1/projects",
            json!({"name": "Acme", "description": "a\u{0}b"}),
            "description",
        ),
        (
            "/api/v1/projects",
            json!({"name": "Acme\u{202E}gpj.exe"}),
            "name",
        ),
        (
            "/api/v1/projects",
            json!({"name": "Acme\u{2066}x\u{2069}"}),
            "name",
        ),
        ("/api/v1/projects", json!({"name": "Acme\tTabs"}), "name"),
        (
            "/api/v1/scripts",
            json!({"name": "deploy\u{202E}hs.exe", "kind": "shell", "body": "echo hi\n"}),
            "name",
        ),
        (
            "/api/v1/scripts",
            json!({"name": "nul", "kind": "shell", "body": "echo hi\n", "description": "x\u{0}"}),
            "description",
        ),
        (
            "/api/v1/users",
            json!({"username": "hana", "password": "violet-anchor-lunar-91", "role": "sales", "full_name": "Hana\u{0}"}),
            "full_name",
        ),
    ] {
        let (status, answer) = admin.post(path, &body).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert!(refused(&answer, field), "{path} {body}: {answer}");
    }
    let sales = cp.api_as("sales");
    let request = json!({
        "client_name": "Acme\u{202E}", "client_email": "ops@acme.example", "purpose": "web",
        "project": "Nova HR", "server_type": "cx22", "location": "nbg1",
        "image": "ubuntu-24.04", "notes": "rack 4\u{0}",
    });
    let (status, answer) = sales.post("/api/v1/requests", &request).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        refused(&answer, "client_name") && refused(&answer, "notes"),
        "{answer}"
    );
    let subscription = json!({
        "client": "Acme\u{202D}", "monthly_cost": 10.0, "currency": "EUR",
        "starts_on": "2026-01-01", "hosting_until": "2026-12-31",
    });
    let (status, answer) = sales.post("/api/v1/subscriptions", &subscription).await;
    assert_eq!(status, 422, "{answer}");
    assert!(refused(&answer, "client"), "{answer}");

    let (status, project) = admin
        .post(
            "/api/v1/projects",
            &json!({"name": "Acme", "description": "line one\nline two\twith a tab"}),
        )
        .await;
    assert_eq!(status, 201, "{project}");
    assert_eq!(project["description"], "line one\nline two\twith a tab");
}

/// A 100 kB username came back as a 100 kB flash cookie; the flash quotes a bounded
/// part of the input and its cookie stays small.
#[tokio::test]
async fn flash_messages_never_echo_unbounded_input() {
    let cp = ControlPlane::start_demo().await;
    let (_, project) = cp.api_as("admin").get("/api/v1/projects/Nova%20HR").await;
    let project_id = project["id"]
        .as_str()
        .expect("the project's id")
        .to_string();
    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let csrf = page.csrf("/access").await;
    let huge = "x".repeat(100_000);
    let (status, location, _) = page
        .post(
            "/access/grant",
            &[
                ("csrf", csrf.as_str()),
                ("project_id", project_id.as_str()),
                ("username", huge.as_str()),
                ("level", "read"),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/access"));
    let cookie = page
        .cookie("dsv_flash")
        .expect("a flash cookie")
        .to_string();
    assert!(
        cookie.len() <= 2048,
        "flash cookie of {} bytes",
        cookie.len()
    );
    let (status, _, html) = page.get("/access").await;
    assert_eq!(status, 200);
    assert!(html.contains("no user named xxx"), "the flash is shown");
    assert!(!html.contains(&"x".repeat(1000)), "the input is cut");
}

/// Every HTML page carries the Content-Security-Policy that forbids inline scripts and
/// styles, framing and foreign form targets; the pages hold no inline script, event
/// handler or style attribute it would block.
#[tokio::test]
async fn html_pages_carry_a_content_security_policy() {
    let cp = ControlPlane::start_demo().await;
    let expected = "default-src 'self'; script-src 'self'; style-src 'self'; \
                    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                    base-uri 'none'; form-action 'self'";
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = PageClient::signed_in(&cp, "admin", "admin123").await;
    for path in [
        "/login",
        "/",
        "/servers",
        "/projects",
        "/backups",
        "/requests",
        "/agents/enroll",
        "/users/new",
        "/no-such-page",
    ] {
        let resp = http
            .get(format!("{}{path}", cp.base_url()))
            .header("cookie", page.cookie_header())
            .send()
            .await
            .unwrap();
        let csp = resp
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        assert_eq!(csp.as_deref(), Some(expected), "{path}");
        let html = resp.text().await.unwrap();
        for forbidden in ["<script>", " onchange=", " onclick=", " style=\""] {
            assert!(!html.contains(forbidden), "{path} holds {forbidden}");
        }
    }
    let (status, _) = cp.api_as("admin").get_text("/api/v1/me").await;
    assert_eq!(status, 200);
}

/// A page of another site could open an execution's live log with the visitor's
/// session cookie; a cookie-authenticated upgrade is now refused (403) unless its
/// `Origin` is this server's, and bearer-token clients without `Origin` keep working.
#[tokio::test]
async fn cookie_websockets_from_another_origin_are_refused() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    admin.connected_agent("localhost").await;
    let (status, execution) = admin
        .post(
            "/api/v1/executions",
            &json!({"agent": "localhost", "kind": "script", "script": "echo hi\n"}),
        )
        .await;
    assert_eq!(status, 201, "{execution}");
    let id = execution["id"].as_str().unwrap().to_string();
    let page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let url = format!(
        "{}/api/v1/executions/{id}/stream",
        cp.base_url().replacen("http://", "ws://", 1)
    );
    let upgrade = |origin: Option<String>, cookie: Option<String>, token: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = url.as_str().into_client_request().unwrap();
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("origin", origin.parse().unwrap());
            }
            if let Some(cookie) = cookie {
                request
                    .headers_mut()
                    .insert("cookie", cookie.parse().unwrap());
            }
            if let Some(token) = token {
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok((_, response)) => response.status().as_u16(),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    response.status().as_u16()
                }
                Err(e) => panic!("upgrade failed: {e}"),
            }
        }
    };
    let cookie = Some(page.cookie_header());
    assert_eq!(
        upgrade(Some("http://evil.example".into()), cookie.clone(), None).await,
        403
    );
    assert_eq!(
        upgrade(Some("http://127.0.0.2:1".into()), cookie.clone(), None).await,
        403
    );
    assert_eq!(upgrade(None, cookie.clone(), None).await, 403);
    assert_eq!(
        upgrade(Some(cp.base_url()), cookie.clone(), None).await,
        101,
        "this server's own pages"
    );
    let token = cp.api_token("admin");
    assert_eq!(upgrade(None, None, Some(token.clone())).await, 101);
    assert_eq!(
        upgrade(Some("http://elsewhere.example".into()), None, Some(token)).await,
        101,
        "a bearer token is no ambient credential"
    );
}

/// With umask 000 the data directory, the store, the master secret and a backup were
/// created readable by everyone; they are now 0700 and 0600.
#[tokio::test]
async fn store_and_backups_are_private_whatever_the_umask() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fresh/data");
    let out_dir = root.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let backup = out_dir.join("copy.redb");
    let script = format!(
        "umask 000 && exec \"$0\" --data-dir '{}' backup --out '{}'",
        data.display(),
        backup.display()
    );
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .arg(dynserv_binary())
        .env_remove("SESSION_SECRET")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(data.parent().unwrap()), 0o700, "a parent it created");
    assert_eq!(mode(&data.join("dynserv.redb")), 0o600, "the store");
    assert_eq!(mode(&backup), 0o600, "the backup");
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        let path = entry.path();
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), expected, "{}", path.display());
    }
}
