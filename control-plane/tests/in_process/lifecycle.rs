//! Fleet lifecycle at the gateway: agents of the previous protocol are served (and
//! sent nothing they do not know: no upgrade signing key), older ones are refused with the upgrade path,
//! versions and the fleet summary, certificate renewal over the connection with a
//! moved clock, and the refusal of an expired certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dynserv::fleet::certs::CertPolicy;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    AgentControl, Facts, FromAgent, JobEnd, JobStatus, Load, OutputChunk, OutputStream,
    ServerControl, ToAgent, FLEET_SERVER_NAME, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use quinn::crypto::rustls::QuicClientConfig;
use serde_json::{json, Value};

use crate::util::{self, ControlPlane, PATIENCE};

/// A raw agent connection speaking whatever protocol version a test gives it, as an
/// agent of another release would (the fleet bench's simulated agents do the same).
struct RawAgent {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _endpoint: quinn::Endpoint,
}

/// Connects with the identity enrolled in `state_dir` and says hello with `protocol`
/// and `agent_version`; returns the connection and the control plane's answer.
async fn raw_hello(
    server: SocketAddr,
    state_dir: &Path,
    agent_id: &str,
    protocol: u32,
    agent_version: &str,
) -> (RawAgent, ServerControl) {
    let read = |name: &str| std::fs::read_to_string(state_dir.join(name)).expect(name);
    let tls = dynserv_shared::pki::agent_client_config(
        &read("ca.pem"),
        &read("agent.pem"),
        &read("agent.key"),
    )
    .expect("a client configuration");
    let config = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("a QUIC client configuration"),
    ));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("an endpoint");
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(server, FLEET_SERVER_NAME)
        .expect("a connection")
        .await
        .expect("a handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("a control stream");
    let hello = AgentControl::Hello {
        protocol,
        agent_id: agent_id.to_string(),
        facts: Facts {
            hostname: "old-host".into(),
            agent_version: agent_version.into(),
            ..Default::default()
        },
        // The machine the agent was enrolled on (this one), so it is not taken for a
        // copy of the agent elsewhere.
        host_id: dynserv_agent::facts::host_id(),
        instance_id: "raw-instance".into(),
    };
    write_frame(&mut send, &hello).await.expect("the hello");
    let answer = tokio::time::timeout(PATIENCE, read_frame::<ServerControl, _>(&mut recv))
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("an answer");
    (
        RawAgent {
            connection,
            send,
            recv,
            _endpoint: endpoint,
        },
        answer,
    )
}

/// The agent's entry in `GET /api/v1/agents`.
async fn listed(cp: &ControlPlane, agent_id: &str) -> Value {
    let agents = cp.get_json("/api/v1/agents").await;
    agents
        .as_array()
        .and_then(|all| all.iter().find(|a| a["id"] == agent_id))
        .cloned()
        .unwrap_or_else(|| panic!("{agent_id} not listed: {agents}"))
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {value}"))
}

/// An agent of the previous release (protocol one older) is welcomed, runs a job, shows
/// its version as outdated in the list and the summary, and is never opened a terminal,
/// which its protocol does not know (the refusal says to upgrade it); a hello older
/// still is refused with a reason that names the upgrade path.
#[test]
fn previous_protocol_is_served_and_older_ones_are_refused() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let current = cp.agent("current-1").await;
        let view = listed(&cp, &current.id).await;
        assert_eq!(view["version"], dynserv_shared::VERSION, "{view}");
        assert_eq!(view["outdated"], false, "{view}");
        assert_eq!(view["protocol"], PROTOCOL_VERSION, "{view}");
        let expires = time(&view["cert_expires_at"]);
        let days = (expires - Utc::now()).num_days();
        assert!((90..=91).contains(&days), "{view}");

        // The previous release's agent, enrolled earlier (its state directory is kept).
        let old = cp.agent("old-1").await;
        let old_id = old.id.clone();
        let state = old.stop_keeping_state().await;
        // Enrolled with protocol 4, it learned the key upgrades are signed with.
        assert!(
            state.path().join("signing-key.pub").is_file(),
            "no signing key kept at enrollment"
        );
        util::eventually("the old agent is gone", || {
            cp.app.fleet.connected_count() == 1
        })
        .await;
        assert_eq!(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION - 1);

        let (mut raw, answer) = raw_hello(
            cp.quic,
            state.path(),
            &old_id,
            MIN_PROTOCOL_VERSION,
            "0.0.9",
        )
        .await;
        assert!(
            matches!(answer, ServerControl::Welcome { .. }),
            "{answer:?}"
        );
        // It is sent jobs it knows and runs them.
        let jobs = raw.connection.clone();
        let job = tokio::spawn(async move {
            let (mut send, mut recv) = jobs.accept_bi().await.expect("a job stream");
            let Some(ToAgent::Start(spec)) = read_frame::<ToAgent, _>(&mut recv).await.unwrap()
            else {
                panic!("not a start");
            };
            for message in [
                FromAgent::Started { resumed: false },
                FromAgent::Output(OutputChunk {
                    seq: 0,
                    stream: OutputStream::Stdout,
                    data: "from the old agent\n".into(),
                }),
                FromAgent::End(JobEnd {
                    status: JobStatus::Succeeded,
                    exit_code: Some(0),
                    summary: "exit code 0".into(),
                    chunks: 1,
                    facts: None,
                }),
            ] {
                write_frame(&mut send, &message).await.unwrap();
            }
            while let Ok(Some(message)) = read_frame::<ToAgent, _>(&mut recv).await {
                if message == ToAgent::EndAck {
                    break;
                }
            }
            spec.job_id
        });
        let (status, created) = cp
            .post(
                "/api/v1/executions",
                &json!({"agent": old_id, "kind": "script", "script": "echo hi"}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let ended = cp.ended(created["id"].as_str().unwrap()).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        assert_eq!(job.await.unwrap(), created["id"].as_str().unwrap());
        assert_eq!(
            cp.stored_output(created["id"].as_str().unwrap()).await,
            "from the old agent\n"
        );

        // Protocol 3 knows no upgrades: its welcome carries no signing key (and no
        // upgrade stream is ever opened to it: `agent_upgrades` fails such a target at
        // once, `fleet::upgrade` checks the connection's protocol again).
        assert!(
            matches!(&answer, ServerControl::Welcome { signing_key, .. } if signing_key.is_empty()),
            "{answer:?}"
        );
        // Heartbeats are answered, and nothing else comes.
        for _ in 0..2 {
            write_frame(&mut raw.send, &AgentControl::Heartbeat(Load::default()))
                .await
                .unwrap();
            let answer =
                tokio::time::timeout(PATIENCE, read_frame::<ServerControl, _>(&mut raw.recv))
                    .await
                    .expect("an answer in time")
                    .unwrap();
            assert_eq!(answer, Some(ServerControl::HeartbeatAck));
        }
        let view = listed(&cp, &old_id).await;
        assert_eq!(view["version"], "0.0.9", "{view}");
        assert_eq!(view["outdated"], true, "{view}");
        assert_eq!(view["protocol"], MIN_PROTOCOL_VERSION, "{view}");
        let summary = cp.get_json("/api/v1/agent-versions").await;
        assert_eq!(
            summary["text"],
            format!("1 of 2 on {}", dynserv_shared::VERSION),
            "{summary}"
        );
        assert_eq!(summary["outdated"], 1, "{summary}");
        let (status, page) = cp.get("/agents").await;
        assert_eq!(status, 200);
        assert!(
            page.contains(&format!("1 of 2 on {}", dynserv_shared::VERSION)),
            "no summary on the Agents page"
        );
        assert!(
            page.contains("Older than the control plane"),
            "no outdated mark on the Agents page"
        );
        assert!(
            page.contains(&format!("action=\"/agents/{old_id}/upgrade\"")),
            "no Upgrade button for the outdated agent"
        );
        assert!(
            page.contains("Upgrade all outdated"),
            "no Upgrade all outdated on the Agents page"
        );

        // An upgrade of the protocol-3 agent fails at once with the way to upgrade it
        // by hand, and nothing is sent to it. The control plane serves a stand-in
        // binary with a version marker (nothing reaches an agent here).
        let served = state.path().join("served-agent");
        let mut bytes = b"stand-in agent binary ".to_vec();
        bytes.extend_from_slice(&dynserv_shared::upgrade::version_marker("9.9.9"));
        std::fs::write(&served, &bytes).unwrap();
        std::env::set_var("DYNSERV_AGENT_BINARY", &served);
        let (status, created) = cp
            .post(&format!("/api/v1/agents/{old_id}/upgrade"), &json!({}))
            .await;
        assert_eq!(status, 202, "{created}");
        let upgrade_id = created["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + PATIENCE;
        let upgrade = loop {
            let upgrade = cp
                .get_json(&format!("/api/v1/agent-upgrades/{upgrade_id}"))
                .await;
            if upgrade["status"] != "running" {
                break upgrade;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the upgrade never ended: {upgrade}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(upgrade["status"], "failed", "{upgrade}");
        assert_eq!(upgrade["agents"][0]["to"], "9.9.9", "{upgrade}");
        let error = upgrade["agents"][0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("protocol 3") && error.contains("by hand"),
            "{upgrade}"
        );
        let opened =
            tokio::time::timeout(Duration::from_millis(500), raw.connection.accept_bi()).await;
        assert!(
            opened.is_err(),
            "a stream was opened to the protocol-3 agent"
        );
        let (status, page) = cp.get(&format!("/agent-upgrades/{upgrade_id}")).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("knows no upgrades"), "{page}");
        assert!(page.contains("/static/agent_upgrade.js"), "{page}");
        raw.connection.close(0u32.into(), b"done");

        // Older than the previous release: refused, with the way out.
        let (_raw, answer) = raw_hello(
            cp.quic,
            state.path(),
            &old_id,
            MIN_PROTOCOL_VERSION - 1,
            "0.0.1",
        )
        .await;
        let ServerControl::Refused { reason, .. } = answer else {
            panic!("not refused: {answer:?}");
        };
        assert!(reason.contains("upgrade the agent"), "{reason}");
        assert!(reason.contains(dynserv_shared::VERSION), "{reason}");
        // Newer than this control plane: refused too, naming the control plane.
        let (_raw, answer) = raw_hello(
            cp.quic,
            state.path(),
            &old_id,
            PROTOCOL_VERSION + 1,
            "9.0.0",
        )
        .await;
        let ServerControl::Refused { reason, .. } = answer else {
            panic!("not refused: {answer:?}");
        };
        assert!(reason.contains("upgrade the control plane"), "{reason}");
        current.stop().await;
        cp.stop().await;
    });
}

/// With two thirds of its lifetime gone (by a moved clock), a connected agent is sent a
/// new certificate over its connection, stores it and reconnects with it; once the
/// clock passes that certificate's expiry, the agent is refused and told to enroll
/// again with a new token.
#[test]
fn certificates_renew_over_the_connection_and_expired_ones_are_refused() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = cp.agent("renewing-1").await;
        let agent_id = agent.id.clone();
        let first = time(&listed(&cp, &agent_id).await["cert_expires_at"]);
        let pem_before = std::fs::read_to_string(agent.state_dir().join("agent.pem")).unwrap();

        let later = Utc::now() + chrono::Duration::days(61);
        cp.app
            .fleet
            .set_cert_policy(CertPolicy::new(90).with_clock(Arc::new(move || later)));
        // The next heartbeat (every 5 s) finds it due.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let renewed = loop {
            let view = listed(&cp, &agent_id).await;
            let expires = time(&view["cert_expires_at"]);
            if expires > first {
                break expires;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never renewed: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!((renewed - later).num_days() >= 90, "{renewed}");
        let pem_after = std::fs::read_to_string(agent.state_dir().join("agent.pem")).unwrap();
        assert_ne!(
            pem_before, pem_after,
            "the agent did not store the new certificate"
        );
        assert_eq!(listed(&cp, &agent_id).await["connected"], true);

        // A restarted agent connects with the new certificate.
        let state = agent.stop_keeping_state().await;
        util::eventually("the agent is gone", || cp.app.fleet.connected_count() == 0).await;
        let agent = cp.run_agent(agent_id.clone(), state).await;
        assert_eq!(listed(&cp, &agent_id).await["connected"], true);
        let state = agent.stop_keeping_state().await;
        util::eventually("the agent is gone", || cp.app.fleet.connected_count() == 0).await;
        // Once the new certificate is in use, the one it replaced is refused.
        let old_state = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "agent.key", "agent.json"] {
            std::fs::copy(state.path().join(name), old_state.path().join(name)).unwrap();
        }
        std::fs::write(old_state.path().join("agent.pem"), &pem_before).unwrap();
        let (_raw, answer) =
            raw_hello(cp.quic, old_state.path(), &agent_id, PROTOCOL_VERSION, "x").await;
        let ServerControl::Refused { reason, .. } = answer else {
            panic!("the replaced certificate was accepted: {answer:?}");
        };
        assert!(reason.contains("does not belong"), "{reason}");

        // Offline past the expiry: refused, and told to enroll again with a new token.
        let much_later = renewed + chrono::Duration::days(1);
        cp.app
            .fleet
            .set_cert_policy(CertPolicy::new(90).with_clock(Arc::new(move || much_later)));
        let (_raw, answer) =
            raw_hello(cp.quic, state.path(), &agent_id, PROTOCOL_VERSION, "x").await;
        let ServerControl::Refused { reason, .. } = answer else {
            panic!("not refused: {answer:?}");
        };
        assert!(reason.contains("expired"), "{reason}");
        assert!(reason.contains("new token"), "{reason}");
        cp.stop().await;
    });
}
