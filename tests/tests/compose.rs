//! Compose backups, verifies, restores and system updates end to end: the real
//! `dynserv serve` and `dynserv-agent` binaries, a Compose project started with the
//! machine's Compose tool on an image imported from a static busybox
//! (`packaging/test-image.sh`), driven through the JSON API names of CONTRACT.md.
//! These tests fail, never skip, when Docker is unreachable: `scripts/test.sh`
//! provides Docker, busybox-static and docker-compose.

use std::process::{Command, Stdio};
use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ComposeProject as Project, ControlPlane};
use serde_json::{json, Value};

fn sha256_of(text: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn connected_agent(api: &Api, name: &str) -> String {
    api.connected_agent(name).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn backup_of(api: &Api, id: &str) -> Value {
    let (status, backup) = api.get(&format!("/api/v1/backups/{id}")).await;
    assert_eq!(status, 200, "{backup}");
    backup
}

/// Through the control plane: a recipe, "Backup" on a server, the record with
/// status, duration, size, sha256 and logs; a failing command and a missing container
/// recorded as failed with the reason; verify; restore only after the typed
/// confirmation, bringing the data back; a system update check with its packages.
#[tokio::test]
async fn backup_verify_restore_and_update_through_the_api() {
    let project = Project::start("dsve2e");
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Ops"})).await;
    assert_eq!(status, 201, "{body}");
    let project_id = body["id"].as_str().unwrap().to_string();
    let _agent = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-01");
    connected_agent(&api, "db-01").await;
    let (_, servers) = api.get("/api/v1/servers").await;
    let server_id = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db-01")
        .expect("the agent's server")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Without a recipe, "Backup" says what is missing.
    let (status, body) = api
        .post_empty(&format!("/api/v1/servers/{server_id}/backup"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no backup recipe"),
        "{body}"
    );

    let (status, html) = api
        .get_text(&format!("/projects/{project_id}/operations"))
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("not scheduled"), "{html}");

    let recipe = json!({
        "compose_project": project.name(), "service": "db", "command": "echo 'dumping' >&2; cat /data/db.txt",
        "keep": 2, "restore_command": "cat > /data/db.txt && echo restored",
    });
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/backup-recipe"),
            &recipe,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/backup-recipe"),
            &json!({"service": "db"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, created) = api
        .post_empty(&format!("/api/v1/servers/{server_id}/backup"))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "running");
    let backup_id = created["id"].as_str().unwrap().to_string();
    let end = api
        .execution_end(
            created["execution_id"].as_str().unwrap(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let backup = backup_of(&api, &backup_id).await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert_eq!(backup["size"], 6);
    assert_eq!(backup["sha256"], sha256_of("row 1\n"));
    assert!(backup["duration_s"].as_f64().is_some(), "{backup}");
    assert!(
        backup["error_log"].as_str().unwrap().contains("dumping"),
        "{backup}"
    );
    assert!(
        backup["backup_log"]
            .as_str()
            .unwrap()
            .contains("kept: 6 bytes"),
        "{backup}"
    );
    assert!(
        !backup["backup_log"]
            .as_str()
            .unwrap()
            .contains("DYNSERV-RESULT"),
        "{backup}"
    );
    let (_, list) = api.get("/api/v1/backups").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == backup_id.as_str()),
        "{list}"
    );

    // The contract's execution shape: a failing command, then a missing container.
    let failing = json!({"agent": "db-01", "kind": "compose_backup", "compose_project": project.name(), "service": "db",
        "command": "echo 'pg_dump: connection refused' >&2; exit 3", "dump_path": "/tmp/dump.sql"});
    let (status, execution) = api.post("/api/v1/executions", &failing).await;
    assert_eq!(status, 201, "{execution}");
    let end = api
        .execution_end(execution["id"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(end["status"], "failed", "{end}");
    let (_, list) = api.get("/api/v1/backups").await;
    let failed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["execution_id"] == execution["id"])
        .expect("a record of the failed backup")
        .clone();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "the command exited with code 3");
    assert!(
        failed["error_log"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{failed}"
    );
    assert!(
        failed["size"].is_null() && failed["sha256"].is_null(),
        "{failed}"
    );

    let missing = json!({"agent": "db-01", "kind": "compose_backup", "compose_project": "dsve2e-nothing", "service": "db", "command": "true"});
    let (status, execution) = api.post("/api/v1/executions", &missing).await;
    assert_eq!(status, 201, "{execution}");
    api.execution_end(execution["id"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    let (_, list) = api.get("/api/v1/backups").await;
    let failed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["execution_id"] == execution["id"])
        .unwrap()
        .clone();
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no container of service \"db\""),
        "{failed}"
    );
    let (status, html) = api
        .get_text(&format!("/backups/{}", failed["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("no container of service"), "{html}");

    // Verify recomputes the checksum.
    let (status, verify) = api
        .post_empty(&format!("/api/v1/backups/{backup_id}/verify"))
        .await;
    assert_eq!(status, 201, "{verify}");
    assert_eq!(verify["kind"], "compose_verify");
    let end = api
        .execution_end(verify["id"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(
        backup_of(&api, &backup_id).await["last_verify"]["status"],
        "succeeded"
    );

    // Restore needs the typed confirmation, then brings the data back.
    project.sh("echo 'row 2 (lost)' > /data/db.txt");
    let (status, body) = api
        .post(
            &format!("/api/v1/backups/{backup_id}/restore"),
            &json!({"confirm": "yes"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, restore) = api
        .post(
            &format!("/api/v1/backups/{backup_id}/restore"),
            &json!({"confirm": "RESTORE"}),
        )
        .await;
    assert_eq!(status, 201, "{restore}");
    let end = api
        .execution_end(restore["id"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");
    let (_, log) = api
        .get_json_lines(&format!(
            "/api/v1/executions/{}/log",
            restore["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        log.iter()
            .any(|c| c["data"].as_str().unwrap_or_default().contains("restored")),
        "{log:?}"
    );
    assert_eq!(
        backup_of(&api, &backup_id).await["restores"][0]["status"],
        "succeeded"
    );

    // A system update in check mode lists packages and the reboot flag.
    let (status, update) = api
        .post(
            &format!("/api/v1/servers/{server_id}/update"),
            &json!({"check": true}),
        )
        .await;
    assert_eq!(status, 201, "{update}");
    let end = api
        .execution_end(
            update["execution_id"].as_str().unwrap(),
            Duration::from_secs(120),
        )
        .await;
    let (_, update) = api
        .get(&format!(
            "/api/v1/updates/{}",
            update["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(end["status"], "succeeded", "{end} {update}");
    assert_eq!(update["status"], "succeeded", "{update}");
    assert!(
        update["manager"].is_string()
            && update["packages"].is_array()
            && update["reboot_required"].is_boolean(),
        "{update}"
    );

    // Schedules in plain words with the next run.
    let (status, schedules) = api
        .put(
            &format!("/api/v1/projects/{project_id}/schedules"),
            &json!({"backup": "0 3 * * *", "update": "30 4 * * sun"}),
        )
        .await;
    assert_eq!(status, 200, "{schedules}");
    assert_eq!(
        schedules["backup"]["description"],
        "every day, at 03:00 (UTC)"
    );
    assert!(
        schedules["backup"]["next_run"]
            .as_str()
            .unwrap()
            .contains("T03:00:00"),
        "{schedules}"
    );
    assert_eq!(
        schedules["update"]["description"],
        "on Sunday, at 04:30 (UTC)"
    );
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/schedules"),
            &json!({"backup": "61 * * * *"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // "Backup" on the whole project: one backup per agent.
    let (status, started) = api
        .post_empty(&format!("/api/v1/projects/{project_id}/backup"))
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started.as_array().map(Vec::len), Some(1), "{started}");
    let end = api
        .execution_end(
            started[0]["execution_id"].as_str().unwrap(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");

    // The pages render what the API holds.
    let update_id = update["id"].as_str().unwrap().to_string();
    for (path, wants) in [
        (
            "/backups".to_string(),
            vec![backup_id.as_str(), "succeeded", "failed"],
        ),
        (
            format!("/backups/{backup_id}"),
            vec![
                backup["sha256"].as_str().unwrap(),
                "backup_log",
                "data-confirm-type=\"RESTORE\"",
            ],
        ),
        (
            format!("/projects/{project_id}/operations"),
            vec![
                "every day, at 03:00 (UTC)",
                "on Sunday, at 04:30 (UTC)",
                "Backup all servers",
            ],
        ),
        ("/updates".to_string(), vec![update_id.as_str()]),
        (format!("/updates/{update_id}"), vec!["Package manager"]),
        (
            format!("/servers/{server_id}"),
            vec![&format!("/servers/{server_id}/backup")],
        ),
    ] {
        let (status, html) = api.get_text(&path).await;
        assert_eq!(status, 200, "{path}: {html}");
        for want in wants {
            assert!(html.contains(want), "{path} lacks {want}");
        }
    }
}

/// A backup survives a kill of its agent (the job is the agent's own subcommand in its
/// own process group): after the restart it ends and is recorded with the right
/// checksum. A cancelled backup is recorded as failed, cancelled.
#[tokio::test]
async fn backup_survives_an_agent_kill_and_a_cancel_is_a_failed_backup() {
    let project = Project::start("dsvkill");
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Ops"})).await;
    assert_eq!(status, 201, "{body}");
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-02");
    connected_agent(&api, "db-02").await;

    let slow = json!({"agent": "db-02", "kind": "compose_backup", "compose_project": project.name(), "service": "db",
        "command": "echo begin >&2; sleep 4; cat /data/db.txt"});
    let (status, execution) = api.post("/api/v1/executions", &slow).await;
    assert_eq!(status, 201, "{execution}");
    let id = execution["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the backup runs", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
        (e["status"] == "running").then_some(())
    })
    .await;
    agent.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.run();
    let end = api.execution_end(&id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let (_, list) = api.get("/api/v1/backups").await;
    let backup = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["execution_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert_eq!(backup["sha256"], sha256_of("row 1\n"));
    assert!(
        backup["error_log"].as_str().unwrap().contains("begin"),
        "{backup}"
    );

    let (status, execution) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "db-02", "kind": "compose_backup",
        "compose_project": project.name(), "service": "db", "command": "echo exec-begin >&2; sleep 300"}),
        )
        .await;
    assert_eq!(status, 201, "{execution}");
    let id = execution["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the backup prints", || async {
        let (_, log) = api
            .get_json_lines(&format!("/api/v1/executions/{id}/log"))
            .await;
        log.iter()
            .any(|c| {
                c["data"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == "exec-begin")
            })
            .then_some(())
    })
    .await;
    let (status, _) = api
        .post_empty(&format!("/api/v1/executions/{id}/cancel"))
        .await;
    assert_eq!(status, 202);
    let end = api.execution_end(&id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "cancelled", "{end}");
    let (_, list) = api.get("/api/v1/backups").await;
    let backup = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["execution_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(backup["status"], "failed", "{backup}");
    assert!(
        backup["error"].as_str().unwrap().contains("cancelled"),
        "{backup}"
    );
    let gone = || !project.sh("ps").contains("sleep 300");
    for _ in 0..50 {
        if gone() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, log) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert!(
        gone(),
        "the cancelled command still runs:\n{}\n{log:?}",
        project.sh("ps")
    );
}
