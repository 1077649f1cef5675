//! The WebSocket live stream in-process, and the hub's memory: a channel exists only
//! while a running execution is watched.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, eventually, gate, touch, ControlPlane, PATIENCE};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the stream of execution `id` with the admin's token.
async fn open(cp: &ControlPlane, id: &str) -> Socket {
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

/// The next JSON frame that is not the agent's own note (`stream: system`).
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("a readable frame");
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).expect("JSON");
        if frame["stream"] != "system" {
            return frame;
        }
    }
}

/// A viewer gets the stored lines, then live ones; its hub channel goes when it leaves
/// (the job still running), and an ended job streams from the store with none.
#[test]
fn stream_replays_then_follows_and_frees_its_channel() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = cp.agent("viewer-host").await;
        let gates = tempfile::tempdir().expect("a directory");
        let go = gate(gates.path(), "go");
        let end = gate(gates.path(), "end");
        let script = format!(
            "echo first\n\
             while [ ! -e {go} ]; do sleep 0.02; done\n\
             echo second\n\
             while [ ! -e {end} ]; do sleep 0.02; done\n\
             echo third\n"
        );
        let id = cp.run_script(&agent, &script).await;
        let deadline = std::time::Instant::now() + PATIENCE;
        while !cp.stored_output(&id).await.contains("first") {
            assert!(
                std::time::Instant::now() < deadline,
                "first is never stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let hub = cp.app.fleet.hub().clone();
        assert_eq!(hub.watched(), 0, "nobody watches yet");

        let mut viewer = open(&cp, &id).await;
        let replayed = next_frame(&mut viewer).await;
        assert_eq!(replayed["data"], "first\n", "{replayed}");
        eventually("the viewer holds a channel", || hub.watched() == 1).await;
        touch(&go);
        let live = next_frame(&mut viewer).await;
        assert_eq!(live["data"], "second\n", "{live}");
        assert!(
            live["seq"].as_u64() > replayed["seq"].as_u64(),
            "{replayed} {live}"
        );

        viewer.close(None).await.expect("a clean close");
        drop(viewer);
        eventually("the channel is freed", || hub.watched() == 0).await;
        let running = cp.get_json(&format!("/api/v1/executions/{id}")).await;
        assert_eq!(running["status"], "running", "{running}");

        touch(&end);
        let ended = cp.ended(&id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        let mut viewer = open(&cp, &id).await;
        let mut lines = String::new();
        let end = loop {
            let frame = next_frame(&mut viewer).await;
            assert_eq!(hub.watched(), 0, "an ended execution needs no channel");
            match frame["data"].as_str() {
                Some(data) => lines.push_str(data),
                None => break frame,
            }
        };
        assert_eq!(lines, "first\nsecond\nthird\n");
        assert_eq!(end["end"]["status"], "succeeded", "{end}");
        let _ = viewer.send(Message::Close(None)).await;
        agent.stop().await;
        cp.stop().await;
    });
}
