//! Terminal benchmark: the keystroke round trip through a real `dynserv serve` and a
//! real `dynserv-agent run` on loopback.
//!
//! ```text
//! cargo build --release -p dynserv -p dynserv-agent
//! cargo bench -p dynserv --bench terminal -- --keys 2000
//! ```
//!
//! A WebSocket opens `GET /api/v1/servers/{id}/terminal`; the shell is put in raw mode
//! running `cat`, so every byte typed comes straight back. One key at a time, it
//! measures from sending the key on the WebSocket to reading it back: page → control
//! plane → QUIC → agent → PTY → `cat` → PTY → agent → QUIC → control plane → page.
//! Prints p50, p90, p99 and the maximum (nothing is asserted).
//!
//! To check that it works without a release build (a few keys, debug binaries):
//! `cargo build -p dynserv -p dynserv-agent && cargo test -p dynserv --bench terminal -- --keys 50`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{binary, load_average, percentile, start_server, wait_connected, Kill};
use dynserv::audit::Actor;
use dynserv::projects::{self, ProjectInput};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use dynserv::users::{self, NewUser};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn parse_keys() -> usize {
    let mut keys = 1000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--keys" {
            keys = it
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("--keys needs a number"));
        }
    }
    keys.max(1)
}

/// An admin with an API token, the project `Bench` and an enrollment token for it,
/// written to the store before the server starts; returns (API token, enrollment
/// token).
fn seed(data: &Path) -> Result<(String, String)> {
    let store = Store::open(&data.join("dynserv.redb"))?;
    let keys = Keys::load(data, None)?;
    store.seal_with(keys.clone());
    dynserv::fleet::ca::load_or_create(&store, data)?;
    let hash = users::hash_password("bench-password-1")?;
    let api_token = store.write(|w| {
        let input = NewUser {
            username: Some("bench".into()),
            role: Some("admin".into()),
            ..Default::default()
        };
        let user = users::create(w, &Actor::cli(), &input, Some(hash))
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let api = dynserv::auth::create_api_token(w, &Actor::cli(), &user, "bench")?;
        projects::create(
            w,
            &keys,
            &Actor::cli(),
            &ProjectInput {
                name: Some("Bench".into()),
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(api)
    })?;
    let enrollment = dynserv::agents::create_token_cli(&store, data, "Bench", Some(1), None)?;
    Ok((api_token, enrollment))
}

/// Reads frames until `wanted` came back; the bytes read.
async fn read_until(socket: &mut Socket, wanted: u8) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    while !seen.contains(&wanted) {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .context("no echo within 30 s")?
            .context("the terminal closed")??;
        match message {
            Message::Binary(bytes) => seen.extend_from_slice(&bytes),
            Message::Text(text) => seen.extend_from_slice(text.as_bytes()),
            Message::Close(frame) => bail!("the terminal closed: {frame:?}"),
            _ => {}
        }
    }
    Ok(seen)
}

/// Reads whatever comes until the terminal is quiet for `quiet`.
async fn drain(socket: &mut Socket, quiet: Duration) -> Result<()> {
    while let Ok(message) = tokio::time::timeout(quiet, socket.next()).await {
        if let Some(Message::Close(frame)) = message.transpose()? {
            bail!("the terminal closed: {frame:?}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let keys = parse_keys();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    println!("load average {}", load_average());
    let (api_token, enrollment) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || seed(&data)).await??
    };
    let server = start_server(&data, &dir.path().join("serve.log"), &[]).await?;

    let state = dir.path().join("agent");
    let enrolled = Command::new(binary("dynserv-agent"))
        .args(["enroll", "--server", &server.quic.to_string(), "--token"])
        .arg(&enrollment)
        .arg("--state-dir")
        .arg(&state)
        .args(["--name", "bench-shell"])
        .stdin(Stdio::null())
        .output()?;
    if !enrolled.status.success() {
        bail!(
            "enrolling the agent: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
    }
    let _agent = Kill(
        Command::new(binary("dynserv-agent"))
            .args(["run", "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
            .spawn()
            .context("starting the agent")?,
    );
    wait_connected(&server.base, 1).await?;

    let servers: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/servers?q=bench-shell", server.base))
        .bearer_auth(&api_token)
        .send()
        .await?
        .json()
        .await?;
    let server_id = servers
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "bench-shell"))
        .and_then(|s| s["id"].as_str())
        .context("the agent's server is not listed")?
        .to_string();

    let url = format!(
        "ws://127.0.0.1:{}/api/v1/servers/{server_id}/terminal?cols=120&rows=40",
        server.http_port
    );
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {api_token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("opening the terminal")?;
    // Raw mode, no echo, `cat`: each byte typed comes back as it is, and nothing else.
    socket.send(Message::text("stty raw -echo; cat\r")).await?;
    drain(&mut socket, Duration::from_millis(1500)).await?;

    let mut samples: Vec<u32> = Vec::with_capacity(keys);
    let started = Instant::now();
    for i in 0..keys {
        let key = b'a' + (i % 26) as u8;
        let sent = Instant::now();
        socket.send(Message::binary(vec![key])).await?;
        read_until(&mut socket, key).await?;
        samples.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    let total = started.elapsed();
    samples.sort_unstable();
    println!(
        "keystroke round trip over {keys} keys ({:.1} s): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        total.as_secs_f64(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
    let _ = socket.close(None).await;
    server.stop();
    Ok(())
}
