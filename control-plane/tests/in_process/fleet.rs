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
