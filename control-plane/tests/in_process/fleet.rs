//! The fleet gateway and the ingestion in-process, with a real agent: the
//! `dynserv-agent` library's enrollment and connection code.

use serde_json::json;

use crate::util::{self, ControlPlane};

/// An agent enrolled through the gateway runs a job whose output and exit code the
/// ingestion stores.
#[test]
fn enrolled_agent_runs_a_job_and_its_output_is_stored() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = cp.agent("worker-1").await;
        let agents = cp.get_json("/api/v1/agents").await;
        let listed = agents
            .as_array()
            .and_then(|all| all.iter().find(|a| a["id"] == agent.id.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(listed["name"], "worker-1", "{agents}");
        assert_eq!(listed["connected"], true, "{agents}");

        let id = cp
            .run_script(&agent, "echo to-stdout\necho to-stderr >&2\nexit 3\n")
            .await;
        let ended = cp.ended(&id).await;
        assert_eq!(ended["status"], "failed", "{ended}");
        assert_eq!(ended["exit_code"], 3, "{ended}");
        let output = cp.stored_output(&id).await;
        assert!(output.contains("to-stdout\n"), "{output}");
        assert!(output.contains("to-stderr\n"), "{output}");
        agent.stop().await;
        cp.stop().await;
    });
}

/// A backup's record is created with its execution and filled when it ends (here
/// cancelled while queued): `App::new` installed the kinds' execution hooks.
#[test]
fn a_backup_record_follows_its_execution() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = cp.agent("db-host").await;
        let agent_id = agent.id.clone();
        agent.stop().await;
        util::eventually("the agent is gone", || cp.app.fleet.connected_count() == 0).await;
        let (status, created) = cp
            .post(
                "/api/v1/executions",
                &json!({
                    "agent": agent_id,
                    "kind": "compose_backup",
                    "compose_project": "shop",
                    "service": "db",
                    "command": "pg_dump shop",
                }),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let execution_id = created["id"].as_str().expect("an id").to_string();
        let backups = cp.get_json("/api/v1/backups").await;
        assert_eq!(backups.as_array().map(Vec::len), Some(1), "{backups}");
        assert_eq!(backups[0]["status"], "running", "{backups}");

        let (status, answer) = cp
            .post(
                &format!("/api/v1/executions/{execution_id}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        let backups = cp.get_json("/api/v1/backups").await;
        assert_eq!(backups[0]["status"], "failed", "{backups}");
        assert_eq!(backups[0]["error"], "cancelled", "{backups}");
        cp.stop().await;
    });
}

/// A job stream that ends in an error while the agent stays connected (here the agent
/// answers the start with a frame that is not a message) is opened again on the same
/// connection, and the job then runs to its end. It used to wait for the agent's next
/// reconnect, which a healthy connection never makes: the execution stayed queued.
#[test]
fn a_job_stream_ended_by_a_bad_frame_is_opened_again() {
    use dynserv_shared::frame::{read_frame, write_frame};
    use dynserv_shared::proto::{FromAgent, JobEnd, JobStatus, OutputChunk, OutputStream, ToAgent};

    util::run(async {
        let cp = ControlPlane::start().await;
        let agent = HandAgent::connect(&cp, "flaky").await;
        let id = agent.give_job(&cp).await;

        // The first stream: a frame whose body is not JSON.
        let (mut send, _recv) = agent.next_start(&id).await;
        send.write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'])
            .await
            .expect("the bad frame");

        // The second stream, on the same connection (no reconnect): the job sent again.
        let (mut send, mut recv) = agent.next_start(&id).await;
        let end = JobEnd {
            status: JobStatus::Succeeded,
            exit_code: Some(0),
            summary: "exit code 0".into(),
            chunks: 1,
            facts: None,
        };
        for message in [
            FromAgent::Started { resumed: false },
            FromAgent::Output(OutputChunk {
                seq: 0,
                stream: OutputStream::Stdout,
                data: "hi\n".into(),
            }),
            FromAgent::End(end),
        ] {
            write_frame(&mut send, &message).await.expect("a frame");
        }
        loop {
            match read_frame::<ToAgent, _>(&mut recv).await {
                Ok(Some(ToAgent::EndAck)) => break,
                Ok(Some(_)) => {}
                other => panic!("no end acknowledged: {other:?}"),
            }
        }
        let ended = cp.ended(&id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        assert_eq!(cp.stored_output(&id).await, "hi\n");
        agent.connection.close(0u32.into(), b"done");
        cp.stop().await;
    });
}

/// An agent spoken to frame by frame: the real one's identity, enrolled and welcomed,
/// sending no heartbeats (keep-alives hold the connection open instead).
struct HandAgent {
    id: String,
    connection: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
    _endpoint: quinn::Endpoint,
    _state: tempfile::TempDir,
}

impl HandAgent {
    async fn connect(cp: &ControlPlane, name: &str) -> HandAgent {
        use dynserv_shared::frame::{read_frame, write_frame};
        use dynserv_shared::proto::{
            AgentControl, Facts, ServerControl, FLEET_SERVER_NAME, PROTOCOL_VERSION,
        };

        let (id, state) = cp.enrolled(name).await;
        let read = |file: &str| std::fs::read_to_string(state.path().join(file)).expect(file);
        let tls = dynserv_shared::pki::agent_client_config(
            &read("ca.pem"),
            &read("agent.pem"),
            &read("agent.key"),
        )
        .expect("the agent's TLS configuration");
        let mut config = quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC configuration"),
        ));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
        config.transport_config(std::sync::Arc::new(transport));
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("an endpoint");
        let connection = endpoint
            .connect_with(config, cp.quic, FLEET_SERVER_NAME)
            .expect("connecting")
            .await
            .expect("a connection");
        let (mut send, mut recv) = connection.open_bi().await.expect("the control stream");
        // This machine, as enrolled (another would be refused as a copy).
        let instance = dynserv_agent::connection::Instance::current();
        let hello = AgentControl::Hello {
            protocol: PROTOCOL_VERSION,
            agent_id: id.clone(),
            facts: Facts {
                hostname: name.into(),
                ..Default::default()
            },
            host_id: instance.host_id,
            instance_id: instance.instance_id,
        };
        write_frame(&mut send, &hello).await.expect("the hello");
        let welcome = read_frame::<ServerControl, _>(&mut recv).await;
        assert!(
            matches!(welcome, Ok(Some(ServerControl::Welcome { .. }))),
            "{welcome:?}"
        );
        HandAgent {
            id,
            connection,
            _control: (send, recv),
            _endpoint: endpoint,
            _state: state,
        }
    }

    /// Creates a script job for this agent through the API: its execution id.
    async fn give_job(&self, cp: &ControlPlane) -> String {
        let (status, created) = cp
            .post(
                "/api/v1/executions",
                &json!({"agent": self.id, "kind": "script", "script": "true"}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().expect("an id").to_string()
    }

    /// The next job stream, after its start for `execution` was read.
    async fn next_start(&self, execution: &str) -> (quinn::SendStream, quinn::RecvStream) {
        use dynserv_shared::frame::read_frame;
        use dynserv_shared::proto::ToAgent;

        let (send, mut recv) = tokio::time::timeout(util::PATIENCE, self.connection.accept_bi())
            .await
            .expect("a job stream within the patience")
            .expect("a job stream");
        match read_frame::<ToAgent, _>(&mut recv).await {
            Ok(Some(ToAgent::Start(spec))) => assert_eq!(spec.job_id, execution),
            other => panic!("not a start: {other:?}"),
        }
        (send, recv)
    }
}

/// Job starts are paced (`StartPacing`): with one place, a second agent's start waits
/// while the first agent has not answered its own and goes out as soon as it does;
/// an agent that never answers holds the place only for the answer wait.
#[test]
fn job_starts_wait_for_a_place_among_the_unanswered() {
    use dynserv_shared::frame::write_frame;
    use dynserv_shared::proto::FromAgent;
    use std::time::{Duration, Instant};

    util::run(async {
        let cp = ControlPlane::start().await;
        cp.app.fleet.pace_starts(1, Duration::from_secs(600));
        let first = HandAgent::connect(&cp, "first").await;
        let second = HandAgent::connect(&cp, "second").await;

        let job = first.give_job(&cp).await;
        let (mut answer, _first_stream) = first.next_start(&job).await;
        let waiting = second.give_job(&cp).await;
        let early =
            tokio::time::timeout(Duration::from_millis(500), second.connection.accept_bi()).await;
        assert!(
            early.is_err(),
            "the second start went out while the first was unanswered"
        );
        write_frame(&mut answer, &FromAgent::Started { resumed: false })
            .await
            .expect("the answer");
        let (mut answer, _second_stream) = second.next_start(&waiting).await;
        write_frame(&mut answer, &FromAgent::Started { resumed: false })
            .await
            .expect("the answer");

        cp.app.fleet.pace_starts(1, Duration::from_millis(300));
        let silent = first.give_job(&cp).await;
        let _silent_stream = first.next_start(&silent).await;
        let unanswered_since = Instant::now();
        let waiting = second.give_job(&cp).await;
        let _stream = second.next_start(&waiting).await;
        let waited = unanswered_since.elapsed();
        assert!(
            waited >= Duration::from_millis(200),
            "the second start went out {waited:?} after the first, unanswered, one"
        );
        cp.stop().await;
    });
}
