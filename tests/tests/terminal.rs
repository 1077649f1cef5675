//! The web terminal end to end: a real `dynserv serve` and a real `dynserv-agent` on
//! loopback. A shell through `GET /api/v1/servers/{id}/terminal` runs what is typed and
//! follows resizes; read-only users and projects with terminals turned off are refused
//! (403); an agent that announces protocol 2 (older than the previous release since
//! protocol 4) is refused at its hello with the upgrade path and never opened a
//! terminal; opening and closing are in the audit log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{AgentControl, Facts, ServerControl, FLEET_SERVER_NAME};
use dynserv_tests::{csrf_of, eventually, Agent, Api, ControlPlane, PageClient};
use futures::{SinkExt, StreamExt};
use quinn::crypto::rustls::QuicClientConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_PASSWORD: &str = "Tq4!pinewood-harbor-ledger";
const READER_PASSWORD: &str = "Vx7!marble-orchard-lantern";

/// How long any single step may take before the test gives up (not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A control plane with an admin, a project `Shells`, a reader with read access on it
/// and a running agent `shell-01`; returns the server id too.
async fn setup() -> (ControlPlane, Api, Agent, String, String) {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, ADMIN_PASSWORD);
    cp.add_user("reader", "technical", false, READER_PASSWORD);
    let admin = cp.api_as("admin");
    let (status, project) = admin
        .post("/api/v1/projects", &json!({"name": "Shells"}))
        .await;
    assert_eq!(status, 201, "{project}");
    assert_eq!(project["terminal_enabled"], true, "{project}");
    let project_id = project["id"].as_str().expect("a project id").to_string();
    let (status, body) = admin
        .post(
            &format!("/api/v1/projects/{project_id}/access"),
            &json!({"username": "reader", "level": "read"}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let agent = Agent::start(&cp, &cp.enrollment_token("Shells"), "shell-01");
    admin.connected_agent("shell-01").await;
    let server_id = server_id(&admin, "shell-01").await;
    (cp, admin, agent, project_id, server_id)
}

async fn server_id(api: &Api, name: &str) -> String {
    let (status, servers) = api.get(&format!("/api/v1/servers?q={name}")).await;
    assert_eq!(status, 200, "{servers}");
    servers
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no server {name}: {servers}"))
        .to_string()
}

/// Opens the terminal WebSocket with `api`'s token: the socket, or the refusal's
/// status and body.
async fn open(api: &Api, server_id: &str, query: &str) -> Result<Socket, (u16, String)> {
    let url = api
        .url(&format!("/api/v1/servers/{server_id}/terminal{query}"))
        .replacen("http://", "ws://", 1);
    let mut request = url.as_str().into_client_request().expect("a WebSocket URL");
    if let Some(token) = api.token() {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("connecting {url}: {e}"),
    }
}

/// The refusal of a terminal that must not open: its status and body.
async fn refused(api: &Api, server_id: &str) -> (u16, String) {
    match open(api, server_id, "").await {
        Ok(_) => panic!("a terminal opened that must be refused"),
        Err(refusal) => refusal,
    }
}

/// Reads the terminal's output until it contains `wanted`; returns everything read.
async fn read_until(socket: &mut Socket, wanted: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(wanted) {
        let next = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} in the terminal; it showed {seen:?}"));
        let Some(message) = next else {
            panic!("the terminal closed before {wanted:?}; it showed {seen:?}");
        };
        let message = message.expect("reading the terminal");
        match message {
            Message::Binary(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Message::Text(text) => seen.push_str(&text),
            Message::Close(frame) => panic!("the terminal closed ({frame:?}); it showed {seen:?}"),
            _ => {}
        }
    }
    seen
}

async fn audit_actions(api: &Api) -> Vec<Value> {
    let (status, entries) = api.get("/api/v1/audit?q=terminal.").await;
    assert_eq!(status, 200, "{entries}");
    entries.as_array().cloned().unwrap_or_default()
}

/// A shell on the agent's server: a typed command runs and its answer comes back, a
/// resize reaches the shell, and opening and closing (with the duration) are audited.
#[tokio::test]
async fn a_terminal_runs_what_is_typed() {
    let (_cp, admin, _agent, _project, server) = setup().await;
    let (status, ready) = admin
        .get(&format!("/api/v1/servers/{server}/terminal"))
        .await;
    assert_eq!((status, &ready["ready"]), (200, &json!(true)), "{ready}");

    let mut socket = open(&admin, &server, "?cols=80&rows=24")
        .await
        .expect("a terminal");
    socket
        .send(Message::text("echo hello-$((6*7))\r"))
        .await
        .unwrap();
    read_until(&mut socket, "hello-42").await;

    socket
        .send(Message::text(r#"{"resize": {"cols": 101, "rows": 33}}"#))
        .await
        .unwrap();
    // Binary frames are input too.
    socket
        .send(Message::binary(b"stty size\r".to_vec()))
        .await
        .unwrap();
    read_until(&mut socket, "33 101").await;

    socket.send(Message::Close(None)).await.unwrap();
    let entries = eventually(PATIENCE, "the terminal's close is audited", || async {
        let entries = audit_actions(&admin).await;
        entries
            .iter()
            .any(|e| e["action"] == "terminal.close")
            .then_some(entries)
    })
    .await;
    let open = entries
        .iter()
        .find(|e| e["action"] == "terminal.open")
        .unwrap_or_else(|| panic!("no terminal.open: {entries:?}"));
    assert_eq!(open["target"], "server:shell-01", "{open}");
    assert_eq!(open["actor"], "admin", "{open}");
    let close = entries
        .iter()
        .find(|e| e["action"] == "terminal.close")
        .expect("a terminal.close");
    let detail = close["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("after ") && detail.ends_with(" s: the page closed"),
        "{close}"
    );
}

/// The shell exiting ends the terminal: the socket closes with the shell's exit as
/// its reason.
#[tokio::test]
async fn the_shell_exiting_closes_the_terminal() {
    let (_cp, admin, _agent, _project, server) = setup().await;
    let mut socket = open(&admin, &server, "").await.expect("a terminal");
    socket.send(Message::text("exit 3\r")).await.unwrap();
    let reason = loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the terminal closes")
            .expect("a close frame before the end")
            .expect("reading the terminal");
        if let Message::Close(frame) = message {
            break frame.map(|f| f.reason.to_string()).unwrap_or_default();
        }
    };
    assert_eq!(reason, "the shell exited with code 3");
}

/// A reader (read access only) may not open a terminal, and neither may anyone on a
/// project whose admins turned terminals off; the page says why.
#[tokio::test]
async fn terminals_need_write_access_and_the_project_switch() {
    let (cp, admin, _agent, project, server) = setup().await;
    let reader = cp.api_as("reader");
    // The reader sees the server…
    assert_eq!(
        reader.get(&format!("/api/v1/servers/{server}")).await.0,
        200
    );
    // …and gets no terminal.
    let (status, body) = refused(&reader, &server).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = reader
        .get(&format!("/api/v1/servers/{server}/terminal"))
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, updated) = admin
        .put(
            &format!("/api/v1/projects/{project}"),
            &json!({"terminal_enabled": false}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["terminal_enabled"], false, "{updated}");
    let (status, body) = refused(&admin, &server).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("terminals are turned off"), "{body}");

    // Turned on again, it opens.
    let (status, _) = admin
        .put(
            &format!("/api/v1/projects/{project}"),
            &json!({"terminal_enabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    let mut socket = open(&admin, &server, "").await.expect("a terminal");
    socket
        .send(Message::text("echo on-$((1+1))\r"))
        .await
        .unwrap();
    read_until(&mut socket, "on-2").await;
}

/// An agent connection whose hello says `protocol`, with the identity enrolled in
/// `state_dir`, kept alive by QUIC keep-alives.
async fn raw_agent(
    server: &str,
    state_dir: &Path,
    agent_id: &str,
    protocol: u32,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    ServerControl,
) {
    let read = |name: &str| std::fs::read_to_string(state_dir.join(name)).expect(name);
    let tls = dynserv_shared::pki::agent_client_config(
        &read("ca.pem"),
        &read("agent.pem"),
        &read("agent.key"),
    )
    .expect("a client configuration");
    let mut config = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("a QUIC client configuration"),
    ));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    config.transport_config(Arc::new(transport));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("an endpoint");
    endpoint.set_default_client_config(config);
    let address = tokio::net::lookup_host(server)
        .await
        .expect("the gateway's address")
        .next()
        .expect("an address");
    let connection = endpoint
        .connect(address, FLEET_SERVER_NAME)
        .expect("a connection")
        .await
        .expect("a handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("a control stream");
    let hello = AgentControl::Hello {
        protocol,
        agent_id: agent_id.to_string(),
        facts: Facts {
            hostname: "old-host".into(),
            agent_version: "0.0.9".into(),
            ..Default::default()
        },
        // The machine the agent was enrolled on (this one).
        host_id: dynserv_agent::facts::host_id(),
        instance_id: "raw-instance".into(),
    };
    write_frame(&mut send, &hello).await.expect("the hello");
    let answer = tokio::time::timeout(PATIENCE, read_frame::<ServerControl, _>(&mut recv))
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("an answer");
    (endpoint, connection, send, recv, answer)
}

/// An agent that announces protocol 2 is no longer served since protocol 4 (only the
/// previous protocol, 3, is): its hello is refused with words that say to upgrade the
/// agent, it is never opened a terminal (the WebSocket is refused with 409), and no
/// stream reaches it.
#[tokio::test]
async fn an_agent_of_protocol_2_is_refused_and_never_opened_a_terminal() {
    let (cp, admin, mut agent, _project, server) = setup().await;
    let agent_id = admin.connected_agent("shell-01").await["id"]
        .as_str()
        .expect("an agent id")
        .to_string();
    agent.stop();
    eventually(PATIENCE, "the agent is gone", || async {
        let (_, agents) = admin.get("/api/v1/agents").await;
        agents
            .as_array()?
            .iter()
            .any(|a| a["id"] == agent_id.as_str() && a["connected"] == false)
            .then_some(())
    })
    .await;
    let (_endpoint, connection, _send, _recv, answer) =
        raw_agent(&cp.quic_addr(), agent.state_dir(), &agent_id, 2).await;
    let ServerControl::Refused { reason, .. } = &answer else {
        panic!("protocol 2 was served: {answer:?}");
    };
    assert!(reason.contains("protocol 2"), "{reason}");
    assert!(reason.contains("upgrade the agent"), "{reason}");

    let (status, body) = refused(&admin, &server).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = admin
        .get(&format!("/api/v1/servers/{server}/terminal"))
        .await;
    assert_eq!(status, 409, "{body}");
    // The agent was opened no stream (a terminal would have been the first).
    let accepted = tokio::time::timeout(Duration::from_millis(200), connection.accept_bi()).await;
    assert!(
        !matches!(accepted, Ok(Ok(_))),
        "the old agent was opened a stream"
    );
    connection.close(0u32.into(), b"done");
}

/// Two replicas on one PostgreSQL database: the replica the agent is connected to
/// opens its terminal; the other answers 409 and says why (terminals do not cross
/// replicas).
#[tokio::test]
async fn a_terminal_opens_only_on_the_agents_replica() {
    let a = ControlPlane::builder().postgres().start().await;
    let b = a.replica().start().await;
    a.add_user("admin", "admin", false, ADMIN_PASSWORD);
    let api_a = a.api_as("admin");
    let api_b = Api::new(&b.base_url()).with_token(api_a.token().expect("a token"));
    let (status, body) = api_a
        .post("/api/v1/projects", &json!({"name": "Shells"}))
        .await;
    assert_eq!(status, 201, "{body}");
    // Enrolled with A's address only, so it stays on A.
    let _agent = Agent::start(&a, &a.enrollment_token("Shells"), "shell-01");
    api_a.connected_agent("shell-01").await;
    let server = server_id(&api_a, "shell-01").await;

    let refusal = eventually(PATIENCE, "replica B knows where the agent is", || async {
        let (status, body) = api_b
            .get(&format!("/api/v1/servers/{server}/terminal"))
            .await;
        let said = body["error"].as_str().unwrap_or_default().to_string();
        (status == 409 && said.contains("another replica")).then_some(said)
    })
    .await;
    assert!(
        refusal.contains("replica the agent is connected to"),
        "{refusal}"
    );
    let (status, body) = refused(&api_b, &server).await;
    assert_eq!(status, 409, "{body}");

    let mut socket = open(&api_a, &server, "").await.expect("a terminal on A");
    socket
        .send(Message::text("echo a-$((2+3))\r"))
        .await
        .unwrap();
    read_until(&mut socket, "a-5").await;
}

/// A page of another site cannot open a terminal with a visitor's session cookie: a
/// cookie-authenticated upgrade needs this server's own `Origin`. The terminal page
/// itself carries the Content-Security-Policy and no inline script or style.
#[tokio::test]
async fn cookie_terminals_need_this_sites_origin() {
    let (cp, _admin, _agent, _project, server) = setup().await;
    let page = PageClient::signed_in(&cp, "admin", ADMIN_PASSWORD).await;
    let url = format!(
        "{}/api/v1/servers/{server}/terminal",
        cp.base_url().replacen("http://", "ws://", 1)
    );
    let upgrade = |origin: Option<String>| {
        let (url, cookie) = (url.clone(), page.cookie_header());
        async move {
            let mut request = url.as_str().into_client_request().unwrap();
            request
                .headers_mut()
                .insert("cookie", cookie.parse().unwrap());
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("origin", origin.parse().unwrap());
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
    assert_eq!(upgrade(Some("http://evil.example".into())).await, 403);
    assert_eq!(upgrade(None).await, 403);
    assert_eq!(upgrade(Some(cp.base_url())).await, 101, "this site's page");

    let resp = reqwest::Client::new()
        .get(format!("{}/servers/{server}/terminal", cp.base_url()))
        .header("cookie", page.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|csp| csp.contains("script-src 'self'") && csp.contains("style-src 'self'")));
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("data-terminal-url="),
        "no terminal on the page"
    );
    for forbidden in ["<script>", " onclick=", " style=\""] {
        assert!(
            !html.contains(forbidden),
            "the terminal page holds {forbidden}"
        );
    }
}

/// The project form carries the switch: on for a new project, and a project admin who
/// unticks it on the Edit page turns terminals off (the terminal page then says so).
#[tokio::test]
async fn the_project_form_turns_terminals_off() {
    let (cp, admin, _agent, project, server) = setup().await;
    let mut page = PageClient::signed_in(&cp, "admin", ADMIN_PASSWORD).await;
    let (status, _, html) = page.get("/projects/new").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"id="terminal_enabled" name="terminal_enabled" checked"#),
        "a new project's switch is not on"
    );
    let edit = format!("/projects/{project}/edit");
    let (status, _, html) = page.get(&edit).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"name="terminal_enabled" checked"#),
        "not on"
    );
    let csrf = csrf_of(&html);
    let (status, location, body) = page
        .post(
            &edit,
            &[
                ("csrf", csrf.as_str()),
                ("name", "Shells"),
                ("description", ""),
                ("budget_monthly", ""),
                ("deploy_command", ""),
            ],
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location, format!("/projects/{project}"));
    let (_, shown) = admin.get(&format!("/api/v1/projects/{project}")).await;
    assert_eq!(shown["terminal_enabled"], false, "{shown}");
    let (_, _, html) = page.get(&edit).await;
    assert!(
        !html.contains(r#"name="terminal_enabled" checked"#),
        "still on"
    );
    let (status, _, html) = page.get(&format!("/servers/{server}/terminal")).await;
    assert_eq!(status, 403);
    assert!(
        html.contains("terminals are turned off for project Shells"),
        "{html}"
    );
    assert!(
        !html.contains("data-terminal-url="),
        "a terminal on a refused page"
    );
    let (_, audit) = admin.get("/api/v1/audit?q=project.update").await;
    assert!(
        audit.to_string().contains("terminals turned off"),
        "{audit}"
    );
}
