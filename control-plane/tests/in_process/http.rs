//! The HTTP server's own limits, with its timeouts shortened: slow headers and slow
//! bodies are cut off, WebSocket streams ping and close on a silent client, shutdown
//! waits for requests in flight only so long, the client's address comes from the
//! connection unless a trusted proxy names it, downloads stream chunked, and every
//! answer carries the security headers.

use std::time::{Duration, Instant};

use dynserv::web::HttpTimeouts;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, eventually, gate, touch, ControlPlane, Tuning, PATIENCE};

/// A second for each limit, so that passing one takes a test about that long.
fn short_timeouts() -> HttpTimeouts {
    HttpTimeouts {
        header_read: Duration::from_secs(1),
        body_read: Duration::from_secs(1),
        ping_every: Duration::from_millis(200),
        idle_close: Duration::from_secs(1),
        shutdown_drain: Duration::from_secs(1),
    }
}

/// Reads what the server sends until it closes the connection (a reset counts as
/// closed); fails the test if it is still open after [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&answer).into_owned(),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Connects and sends the headers of `POST /api/v1/projects` with the admin's token
/// for a body of `body.len()` bytes, and the body's first `sent` bytes.
async fn start_upload(cp: &ControlPlane, body: &[u8], sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(cp.http_addr)
        .await
        .expect("a connection");
    let head = format!(
        "POST /api/v1/projects HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cp.http_addr,
        cp.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("a write");
    stream.write_all(&body[..sent]).await.expect("a write");
    stream
}

/// A client that stops in the middle of its headers, or connects and sends nothing, is
/// disconnected once the header read timeout passes, with no answer, while other
/// clients are served.
#[test]
fn a_client_stalling_in_its_headers_is_cut_off() {
    util::run(async {
        let cp = ControlPlane::start_with(Tuning {
            timeouts: short_timeouts(),
            ..Default::default()
        })
        .await;
        let mut slow = TcpStream::connect(cp.http_addr)
            .await
            .expect("a connection");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: here\r\n")
            .await
            .expect("a write");
        let mut silent = TcpStream::connect(cp.http_addr)
            .await
            .expect("a connection");
        let started = Instant::now();
        let (status, body) = cp.get("/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let answer = read_until_closed(&mut slow).await;
        assert_eq!(answer, "", "a half-sent request gets no answer");
        assert_eq!(read_until_closed(&mut silent).await, "");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "cut off after {:?}, before the timeout",
            started.elapsed()
        );
        cp.stop().await;
    });
}

/// A body that stops arriving is answered 408 with a JSON error once the body read
/// timeout passes, and nothing of it is stored.
#[test]
fn a_body_stalling_past_the_limit_is_a_408() {
    util::run(async {
        let cp = ControlPlane::start_with(Tuning {
            timeouts: short_timeouts(),
            ..Default::default()
        })
        .await;
        let body = json!({"name": "Half Sent"}).to_string();
        let mut upload = start_upload(&cp, body.as_bytes(), 5).await;
        let answer = read_until_closed(&mut upload).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let (_, json) = answer.split_once("\r\n\r\n").expect("a head and a body");
        let error: Value = serde_json::from_str(json).expect("a JSON error");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("did not arrive within 1 s")),
            "{error}"
        );
        let projects = cp.get_json("/api/v1/projects").await;
        assert!(
            !projects.to_string().contains("Half Sent"),
            "nothing stored: {projects}"
        );
        cp.stop().await;
    });
}

/// On shutdown a request in flight that completes within the drain is answered, one
/// that never completes is cut off when the drain ends, and `run` returns then.
#[test]
fn shutdown_answers_requests_in_flight_within_the_drain_only() {
    util::run(async {
        let cp = ControlPlane::start_with(Tuning {
            timeouts: HttpTimeouts {
                body_read: Duration::from_secs(60),
                ..short_timeouts()
            },
            ..Default::default()
        })
        .await;
        let finishing_body = json!({"name": "Finished In Time"}).to_string();
        let mut finishing = start_upload(&cp, finishing_body.as_bytes(), 5).await;
        let stalled_body = json!({"name": "Never Finished"}).to_string();
        let mut stalled = start_upload(&cp, stalled_body.as_bytes(), 5).await;
        let mut idle = TcpStream::connect(cp.http_addr)
            .await
            .expect("a connection");
        // Both requests are in flight (their handlers wait for the bodies).
        tokio::time::sleep(Duration::from_millis(200)).await;

        let started = Instant::now();
        let finish = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            finishing
                .write_all(&finishing_body.as_bytes()[5..])
                .await
                .expect("a write");
            read_until_closed(&mut finishing).await
        };
        let (answered, ()) = tokio::join!(finish, cp.stop());
        let stopped_after = started.elapsed();
        assert!(answered.starts_with("HTTP/1.1 201"), "{answered}");
        assert!(
            stopped_after >= Duration::from_millis(900),
            "run returned after {stopped_after:?}, without waiting for the stalled request"
        );
        assert!(
            stopped_after < Duration::from_secs(4),
            "run returned only after {stopped_after:?}"
        );
        assert_eq!(read_until_closed(&mut stalled).await, "");
        assert_eq!(read_until_closed(&mut idle).await, "");
    });
}

/// The audit log records the connection's address: a direct client's own (here
/// 127.0.0.2), whatever `X-Forwarded-For` it sends, and the address a trusted proxy
/// forwards for.
#[test]
fn the_client_address_comes_from_the_connection_or_a_trusted_proxy() {
    util::run(async {
        let cp = ControlPlane::start_with(Tuning {
            trusted_proxies: Some("127.0.0.3/32".into()),
            ..Default::default()
        })
        .await;
        for (from, name, expected) in [
            ([127, 0, 0, 2], "Direct Client", "127.0.0.2"),
            ([127, 0, 0, 3], "Through The Proxy", "203.0.113.9"),
        ] {
            let client = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from(from))
                .build()
                .expect("an HTTP client");
            let response = client
                .post(format!("{}/api/v1/projects", cp.base))
                .bearer_auth(&cp.token)
                .header("x-forwarded-for", "203.0.113.9")
                .json(&json!({"name": name}))
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 201, "{name}");
            let audit = cp
                .get_json("/api/v1/audit?action=project.create&limit=1")
                .await;
            assert_eq!(audit[0]["ip"], expected, "{name}: {audit}");
        }
        cp.stop().await;
    });
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the stream of execution `id` with the admin's token.
async fn open_stream(cp: &ControlPlane, id: &str) -> Socket {
    let url = format!(
        "{}/api/v1/executions/{id}/stream",
        cp.base.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().expect("a WebSocket request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", cp.token).parse().expect("a header"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the stream opens");
    socket
}

/// A running execution's stream pings its viewer; a viewer that answers (the client
/// library pongs while it reads) stays past the idle limit and gets the end, a silent
/// one is closed at the idle limit.
#[test]
fn streams_ping_and_close_on_a_silent_client() {
    util::run(async {
        let cp = ControlPlane::start_with(Tuning {
            timeouts: short_timeouts(),
            ..Default::default()
        })
        .await;
        let agent = cp.agent("pinged-host").await;
        let gates = tempfile::tempdir().expect("a directory");
        let end = gate(gates.path(), "end");
        let id = cp
            .run_script(
                &agent,
                &format!("echo first\nwhile [ ! -e {end} ]; do sleep 0.02; done\necho last\n"),
            )
            .await;
        let hub = cp.app.fleet.hub().clone();
        let mut reading = open_stream(&cp, &id).await;
        let mut silent = open_stream(&cp, &id).await;
        eventually("the viewers hold the execution's channel", || {
            hub.watched() == 1
        })
        .await;

        // The reading viewer, for twice the idle limit: pings, and no close.
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(message) = tokio::time::timeout_at(until, reading.next()).await {
            match message {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Text(_))) => {}
                other => panic!("the answering viewer's stream ended: {other:?}"),
            }
        }
        assert!(
            pings >= 5,
            "{pings} pings in 2 s, one expected every 200 ms"
        );

        // The silent viewer read nothing, so it answered nothing: closed.
        let mut closed = false;
        while let Some(message) = tokio::time::timeout(PATIENCE, silent.next())
            .await
            .expect("the silent viewer's stream ends in time")
        {
            match message {
                Ok(Message::Close(_)) | Err(_) => closed = true,
                Ok(_) => {}
            }
        }
        assert!(closed, "the silent viewer's stream ended without a close");

        touch(&end);
        let end = loop {
            let message = tokio::time::timeout(PATIENCE, reading.next())
                .await
                .expect("a frame in time")
                .expect("the stream is open")
                .expect("a readable frame");
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame.get("end").is_some() {
                    break frame;
                }
            }
        };
        assert_eq!(end["end"]["status"], "succeeded", "{end}");
        eventually("the channel is freed", || hub.watched() == 0).await;
        agent.stop().await;
        cp.stop().await;
    });
}

/// The log download is sent chunked as the store is read (no `Content-Length`, so it
/// is never built whole first), in both formats.
#[test]
fn the_log_download_is_streamed_chunked() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = cp.agent("logged-host").await;
        let id = cp
            .run_script(&agent, "for i in 1 2 3; do echo \"line $i\"; done\n")
            .await;
        let ended = cp.ended(&id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        for format in ["jsonl", "text"] {
            let response = cp
                .http
                .get(format!(
                    "{}/api/v1/executions/{id}/log?format={format}",
                    cp.base
                ))
                .bearer_auth(&cp.token)
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 200, "{format}");
            let headers = response.headers().clone();
            assert_eq!(headers["transfer-encoding"], "chunked", "{format}");
            assert!(headers.get("content-length").is_none(), "{format}");
            let body = response.text().await.expect("a body");
            assert!(body.contains("line 3"), "{format}: {body}");
        }
        agent.stop().await;
        cp.stop().await;
    });
}

/// Every answer carries `nosniff`, `DENY` framing and the same-origin referrer policy;
/// HTML pages also the Content-Security-Policy, other answers not.
#[test]
fn answers_carry_the_security_headers() {
    util::run(async {
        let cp = ControlPlane::start().await;
        for (path, html) in [
            ("/login", true),
            ("/api/v1/me", false),
            ("/static/app.css", false),
            ("/static/missing.css", false),
            ("/healthz", false),
        ] {
            let response = cp
                .http
                .get(format!("{}{path}", cp.base))
                .bearer_auth(&cp.token)
                .send()
                .await
                .expect("an answer");
            let headers = response.headers();
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(headers["x-frame-options"], "DENY", "{path}");
            assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
            assert_eq!(
                headers.get("content-security-policy").is_some(),
                html,
                "{path}"
            );
        }
        cp.stop().await;
    });
}
