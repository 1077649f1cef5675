//! Rollouts end to end: a rollout over a project lists every server, those it cannot
//! run on as skipped with the reason (no agent, a revoked agent); the rollouts list
//! with its filters and pages; Retry failed; Cancel; the Rollouts page.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient};
use serde_json::{json, Value};

async fn wait_rollout(api: &Api, id: &str) -> Value {
    eventually(
        Duration::from_secs(90),
        &format!("rollout {id} ends"),
        || async {
            let (_, r) = api.get(&format!("/api/v1/rollouts/{id}")).await;
            (r["status"] != "running" && r["summary"]["running"] == 0).then_some(r)
        },
    )
    .await
}

/// A rollout to every server of Nova HR (the demo's four servers, plus the two the
/// agents enrolled as) shows the servers without an agent and the one whose agent was
/// revoked as skipped with their reasons; the list filters and pages; Retry failed
/// runs again only where an agent can; the pages show it all.
#[tokio::test(flavor = "multi_thread")]
async fn project_rollout_skips_with_reasons_lists_and_retries() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _web = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    let _gone = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-02");
    api.connected_agent("web-01").await;
    let gone = api.connected_agent("web-02").await;
    let (status, body) = api
        .post_empty(&format!(
            "/api/v1/agents/{}/revoke",
            gone["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, servers) = api.get("/api/v1/servers?project=Nova%20HR").await;
    assert_eq!(status, 200, "{servers}");
    let server_names: Vec<String> = servers
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "deleted")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(server_names.len() >= 3, "{servers}");

    let fails = api
        .create_script("fails", "shell", "echo failing\nexit 3\n")
        .await;
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{fails}/run"),
            &json!({"targets": {"project": "Nova HR"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let first = rollout["id"].as_str().unwrap().to_string();
    let done = wait_rollout(&api, &first).await;
    let targets = done["targets"].as_array().unwrap();
    let mut names: Vec<String> = targets
        .iter()
        .map(|t| t["server"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut expected = server_names.clone();
    expected.sort();
    assert_eq!(names, expected, "every server is a target: {done}");
    let target = |name: &str| {
        targets
            .iter()
            .find(|t| t["server"] == name)
            .unwrap_or_else(|| panic!("no target {name}: {done}"))
            .clone()
    };
    assert_eq!(target("web-01")["status"], "failed", "{done}");
    assert_eq!(target("web-02")["status"], "skipped");
    assert_eq!(target("web-02")["reason"], "skipped: its agent was revoked");
    let no_agent: Vec<&Value> = targets
        .iter()
        .filter(|t| t["reason"] == "skipped: no agent")
        .collect();
    assert_eq!(no_agent.len(), server_names.len() - 2, "{done}");
    assert!(no_agent
        .iter()
        .all(|t| t["status"] == "skipped" && t["execution"].is_null()));
    assert_eq!(done["status"], "failed");
    assert_eq!(done["summary"]["total"], server_names.len());

    // Retry failed: only where an agent can run (web-01), the same script.
    let (status, retried) = api
        .post_empty(&format!("/api/v1/rollouts/{first}/retry-failed"))
        .await;
    assert_eq!(status, 201, "{retried}");
    let second = retried["id"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(retried["script"]["id"], fails.as_str());
    let servers_of = |r: &Value| -> Vec<String> {
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["server"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(servers_of(&retried), ["web-01"]);
    wait_rollout(&api, &second).await;

    // The list: newest first, filters, pages.
    let (status, list) = api.get("/api/v1/rollouts").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let walked = api.walk("/api/v1/rollouts?limit=1").await;
    assert_eq!(walked.len(), 2, "paged one by one through Link");
    let (status, body) = api.get("/api/v1/rollouts?status=bogus").await;
    assert_eq!(status, 400, "{body}");
    let (status, list) = api.get("/api/v1/rollouts?status=succeeded").await;
    assert_eq!((status, list), (200, json!([])));
    let (status, list) = api
        .get(&format!(
            "/api/v1/rollouts?script={fails}&project=Nova%20HR&status=failed"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let (status, list) = api.get("/api/v1/rollouts?project=Local").await;
    assert_eq!((status, list), (200, json!([])));

    // The pages.
    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = page.get("/rollouts?status=failed").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&first) && html.contains(&second), "{html}");
    let (status, _, html) = page.get(&format!("/rollouts/{first}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("skipped: no agent"), "{html}");
    assert!(html.contains("skipped: its agent was revoked"), "{html}");
    assert!(html.contains("rollout-retry"), "Retry failed is offered");
    assert!(
        !html.contains("rollout-cancel"),
        "an ended rollout has no Cancel"
    );
}

/// Cancel stops a running rollout: the running job is cancelled, the targets not
/// started are skipped, and a second cancel is a 409.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_rollout() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _web = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    api.connected_agent("web-01").await;
    api.connected_agent("localhost").await;
    let slow = api
        .create_script("slow", "shell", "echo started\nsleep 60\n")
        .await;
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{slow}/run"),
            &json!({"targets": {"servers": ["web-01", "localhost"]}, "serial": 1}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    let running = eventually(Duration::from_secs(30), "the first job runs", || async {
        let (_, r) = api.get(&format!("/api/v1/rollouts/{id}")).await;
        (r["targets"][0]["execution"]["status"] == "running").then_some(r)
    })
    .await;
    let execution = running["targets"][0]["execution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, cancelled) = api
        .post_empty(&format!("/api/v1/rollouts/{id}/cancel"))
        .await;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["targets"][1]["status"], "skipped");
    assert_eq!(
        cancelled["targets"][1]["reason"],
        "skipped: the rollout was cancelled"
    );
    let (status, again) = api
        .post_empty(&format!("/api/v1/rollouts/{id}/cancel"))
        .await;
    assert_eq!(status, 409, "{again}");
    eventually(
        Duration::from_secs(30),
        "the running job is cancelled",
        || async {
            let (_, e) = api.get(&format!("/api/v1/executions/{execution}")).await;
            (e["status"] == "cancelled").then_some(())
        },
    )
    .await;
    let (_, later) = api.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(
        later["status"], "cancelled",
        "the supervisor leaves it cancelled: {later}"
    );
    assert!(later["targets"][1]["execution"].is_null(), "{later}");
}

/// Re-run starts the same work on the same agent (a new execution with the same
/// output); a stored script's secret variable must be given again (422 without it),
/// and is then used; the execution page offers Re-run once the job ended.
#[tokio::test(flavor = "multi_thread")]
async fn rerun_runs_the_same_work_again() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    api.connected_agent("localhost").await;
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "localhost", "kind": "script", "script": "echo again-$WORD", "env": {"WORD": "and-again"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let first = created["id"].as_str().unwrap().to_string();
    api.execution_end(&first, Duration::from_secs(60)).await;
    let (status, rerun) = api
        .post_empty(&format!("/api/v1/executions/{first}/rerun"))
        .await;
    assert_eq!(status, 201, "{rerun}");
    let second = rerun["id"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let done = api.execution_end(&second, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(api.log_text(&second).await, "again-and-again\n");

    let playbook = "- name: secret\n  hosts: all\n  tasks:\n    - name: echo\n      command: echo got {{ token }}\n";
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "with-secret", "kind": "playbook", "body": playbook,
                    "variables": [{"name": "token", "secret": true, "required": true}]}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{}/run", script["id"].as_str().unwrap()),
            &json!({"targets": {"servers": ["localhost"]}, "vars": {"token": "first-value"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let original = rollout["targets"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.execution_end(&original, Duration::from_secs(60)).await;
    let (status, body) = api
        .post_empty(&format!("/api/v1/executions/{original}/rerun"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "vars", "{body}");
    let (status, rerun) = api
        .post(
            &format!("/api/v1/executions/{original}/rerun"),
            &json!({"vars": {"token": "second-value"}}),
        )
        .await;
    assert_eq!(status, 201, "{rerun}");
    let id = rerun["id"].as_str().unwrap().to_string();
    let done = api.execution_end(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let log = api.log_text(&id).await;
    assert!(!log.contains("second-value"), "the secret is masked: {log}");
    // `{{ token }}` undefined would fail the task: it succeeded with the value given.
    assert!(log.contains("TASK [echo]"), "{log}");

    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = page.get(&format!("/executions/{first}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("execution-rerun"), "{html}");
    let csrf = dynserv_tests::csrf_of(&html);
    let (status, location, _) = page
        .post(&format!("/executions/{first}/rerun"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    assert!(
        location.starts_with("/executions/") && !location.ends_with(&first),
        "{location}"
    );
}
