//! Off-site copies of Compose backups end to end: the real `dynserv serve` and
//! `dynserv-agent` binaries, a Compose project on the busybox test image, and a real
//! S3-compatible server (moto in server mode on a loopback port, with signatures
//! checked), driven through the JSON API names of CONTRACT.md. The bucket is read
//! through boto3, never through the product's own client.

use std::time::Duration;

use dynserv_tests::{Agent, Api, ComposeProject as Project, ControlPlane, S3Server};
use serde_json::{json, Value};

async fn backup_of(api: &Api, id: &str) -> Value {
    let (status, backup) = api.get(&format!("/api/v1/backups/{id}")).await;
    assert_eq!(status, 200, "{backup}");
    backup
}

async fn server_id(api: &Api, name: &str) -> String {
    api.connected_agent(name).await;
    let (_, servers) = api.get("/api/v1/servers").await;
    servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("server {name} in {servers}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A control plane with an admin, project "Ops" and a recipe for the project's `db`
/// service; answers the API and the project id.
async fn ops_project(cp: &ControlPlane, project: &Project, command: &str) -> (Api, String) {
    cp.add_user("admin", "admin", false, "Tq4!pinewood-harbor-ledger");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Ops"})).await;
    assert_eq!(status, 201, "{body}");
    let project_id = body["id"].as_str().unwrap().to_string();
    let recipe = json!({
        "compose_project": project.name(), "service": "db", "command": command,
        "restore_command": "cat > /data/db.txt && echo restored",
    });
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/backup-recipe"),
            &recipe,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (api, project_id)
}

fn settings(s3: &S3Server, secret: &str) -> Value {
    json!({"endpoint": s3.endpoint, "bucket": s3.bucket, "prefix": "nightly", "region": "us-east-1",
        "access_key": s3.access_key, "secret_key": secret})
}

/// Runs the project's backup on a server and waits for its end; answers the record.
async fn backup_on(api: &Api, server: &str) -> Value {
    let (status, created) = api
        .post_empty(&format!("/api/v1/servers/{server}/backup"))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["offsite"]["status"], "pending", "{created}");
    let end = api
        .execution_end(
            created["execution_id"].as_str().unwrap(),
            Duration::from_secs(300),
        )
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    backup_of(api, created["id"].as_str().unwrap()).await
}

/// The off-site alerts (`backup.failed`) of a backup in the caller's inbox.
async fn alerts_of(api: &Api, backup_id: &str) -> Vec<Value> {
    let (status, inbox) = api.get("/api/v1/notifications").await;
    assert_eq!(status, 200, "{inbox}");
    inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["subject"] == format!("backup:{backup_id}").as_str())
        .cloned()
        .collect()
}

/// Settings with a Test that writes, reads back and deletes a probe; a backup whose
/// encrypted copy is in the bucket (its bytes are not the dump's) with the size listed
/// and the dump's sha256; verify of the copy on a second agent; restore from the copy
/// onto that second agent after the typed confirmation; retention pruning.
#[tokio::test]
async fn backups_go_off_site_encrypted_and_come_back_on_another_server() {
    let s3 = S3Server::start("dynserv-offsite");
    let project = Project::start("dsvoff");
    let cp = ControlPlane::start().await;
    let (api, project_id) = ops_project(&cp, &project, "cat /data/db.txt").await;
    let _first = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-01");
    let _second = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-02");
    let first = server_id(&api, "db-01").await;
    let second = server_id(&api, "db-02").await;

    // Settings: validated field by field; the secret is never answered.
    let path = format!("/api/v1/projects/{project_id}/offsite");
    let (status, _) = api.get(&path).await;
    assert_eq!(status, 404);
    let mut bad = settings(&s3, &s3.secret_key);
    bad["bucket"] = json!("No_Such Bucket");
    bad["endpoint"] = json!("ftp://example");
    let (status, body) = api.put(&path, &bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["errors"]["bucket"].is_string() && body["errors"]["endpoint"].is_string(),
        "{body}"
    );
    let (status, saved) = api.put(&path, &settings(&s3, &s3.secret_key)).await;
    assert_eq!(status, 200, "{saved}");
    let (status, got) = api.get(&path).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["bucket"], s3.bucket.as_str());
    assert_eq!(got["prefix"], "nightly/");
    assert!(!got.to_string().contains(&s3.secret_key), "{got}");
    let (status, test) = api.post_empty(&format!("{path}/test")).await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["ok"], true, "{test}");
    assert!(
        s3.list("").is_empty(),
        "the probe was deleted: {:?}",
        s3.list("")
    );

    // A backup: kept on the server and, encrypted, in the bucket.
    let backup = backup_on(&api, &first).await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    let offsite = &backup["offsite"];
    assert_eq!(offsite["status"], "done", "{backup}");
    assert_eq!(offsite["sha256"], backup["sha256"], "{backup}");
    let key = offsite["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("nightly/{project_id}/")), "{key}");
    let listed = s3.list("nightly/");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], key);
    assert_eq!(listed[0]["size"], offsite["size"]);
    let bytes = s3.get(key);
    assert_eq!(bytes.len() as u64, offsite["size"].as_u64().unwrap());
    assert!(bytes.starts_with(b"DSVOFF1\n"), "the dsv header");
    assert!(
        !bytes.windows(5).any(|w| w == b"row 1"),
        "the storage holds the dump in clear"
    );
    let backup_id = backup["id"].as_str().unwrap().to_string();
    // The secret never reached the job's log.
    let (_, log) = api
        .get_text(&format!(
            "/api/v1/executions/{}/log?format=text",
            backup["execution_id"].as_str().unwrap()
        ))
        .await;
    assert!(!log.contains(&s3.secret_key), "{log}");
    assert!(log.contains("checked by etag"), "{log}");

    // Verify downloads and decrypts the copy, here on the other server.
    let (status, verify) = api
        .post(
            &format!("/api/v1/backups/{backup_id}/offsite/verify"),
            &json!({"server": second}),
        )
        .await;
    assert_eq!(status, 201, "{verify}");
    let end = api
        .execution_end(verify["id"].as_str().unwrap(), Duration::from_secs(300))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(
        backup_of(&api, &backup_id).await["offsite"]["last_verify"]["status"],
        "succeeded"
    );

    // Restore from the copy onto the replacement server, after the typed confirmation.
    project.sh("echo 'row 2 (lost)' > /data/db.txt");
    let restore_path = format!("/api/v1/backups/{backup_id}/offsite/restore");
    let (status, body) = api
        .post(&restore_path, &json!({"server": second, "confirm": "yes"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, restore) = api
        .post(
            &restore_path,
            &json!({"server": second, "confirm": "RESTORE"}),
        )
        .await;
    assert_eq!(status, 201, "{restore}");
    assert_eq!(restore["agent_name"], "db-02", "{restore}");
    let end = api
        .execution_end(restore["id"].as_str().unwrap(), Duration::from_secs(300))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");
    let (_, log) = api
        .get_text(&format!(
            "/api/v1/executions/{}/log?format=text",
            restore["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        log.contains("downloading and decrypting the off-site copy"),
        "{log}"
    );

    // The pages show it.
    let (status, html) = api.get_text(&format!("/backups/{backup_id}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("Off-site copy") && html.contains(key),
        "{html}"
    );
    let (status, html) = api.get_text("/backups").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(">done</span>"),
        "the list shows the off-site status: {html}"
    );
    let (status, html) = api
        .get_text(&format!("/projects/{project_id}/operations"))
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("off-site done"), "{html}");
    let (status, html) = api.get_text(&format!("/projects/{project_id}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("offsite-panel") && !html.contains(&s3.secret_key),
        "{html}"
    );
    let (status, html) = api
        .get_text(&format!("/projects/{project_id}/offsite"))
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("offsite-settings-form") && html.contains(&s3.access_key),
        "{html}"
    );
    assert!(
        !html.contains(&s3.secret_key),
        "the form never shows the secret: {html}"
    );

    // Retention: with one daily copy kept, pruning deletes the older copy and says so
    // on its record.
    let newer = backup_on(&api, &first).await;
    assert_eq!(newer["offsite"]["status"], "done", "{newer}");
    assert_eq!(s3.list("nightly/").len(), 2);
    let mut keep_one = settings(&s3, "");
    keep_one["keep_daily"] = json!(1);
    keep_one["keep_weekly"] = json!(0);
    keep_one["keep_monthly"] = json!(0);
    let (status, body) = api.put(&path, &keep_one).await;
    assert_eq!(status, 200, "{body}");
    let (status, pruned) = api.post_empty(&format!("{path}/prune")).await;
    assert_eq!(status, 200, "{pruned}");
    assert_eq!(pruned["deleted"], json!([key]), "{pruned}");
    let listed = s3.list("nightly/");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], newer["offsite"]["key"]);
    let old = backup_of(&api, &backup_id).await;
    assert!(old["offsite"]["pruned_at"].is_string(), "{old}");
    let (status, body) = api
        .post(&restore_path, &json!({"confirm": "RESTORE"}))
        .await;
    assert_eq!(status, 409, "{body}");
}

/// A wrong secret and a stopped storage server: the Test and the backup's copy fail
/// with the storage's (or the network's) own words, the local backup still succeeds,
/// each failure raises a `backup.failed` alert and schedules a retry; once the storage
/// is back, uploading again makes the copy done.
#[tokio::test]
async fn offsite_failures_say_why_alert_and_are_retried() {
    let mut s3 = S3Server::start("dynserv-failures");
    let project = Project::start("dsvofffail");
    let cp = ControlPlane::start().await;
    let (api, project_id) = ops_project(&cp, &project, "cat /data/db.txt").await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-01");
    let server = server_id(&api, "db-01").await;
    let path = format!("/api/v1/projects/{project_id}/offsite");

    // A wrong secret: refused by the storage, in its words.
    let (status, body) = api.put(&path, &settings(&s3, "not-the-secret")).await;
    assert_eq!(status, 200, "{body}");
    let (_, test) = api.post_empty(&format!("{path}/test")).await;
    assert_eq!(test["ok"], false, "{test}");
    assert!(
        test["error"]
            .as_str()
            .unwrap()
            .contains("SignatureDoesNotMatch"),
        "{test}"
    );
    let backup = backup_on(&api, &server).await;
    assert_eq!(
        backup["status"], "succeeded",
        "the local backup stands: {backup}"
    );
    let offsite = &backup["offsite"];
    assert_eq!(offsite["status"], "failed", "{backup}");
    let error = offsite["error"].as_str().unwrap();
    assert!(error.contains("SignatureDoesNotMatch"), "{error}");
    assert!(
        offsite["next_retry_at"].is_string(),
        "a retry is scheduled: {backup}"
    );
    assert_eq!(offsite["attempts"], 1);
    let backup_id = backup["id"].as_str().unwrap().to_string();
    let alerts = alerts_of(&api, &backup_id).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0]["body"]
            .as_str()
            .unwrap()
            .contains("backup.failed"),
        "{alerts:?}"
    );
    assert!(s3.list("").is_empty());

    // The right secret, but the storage is down: refused connections, said so.
    let (status, body) = api.put(&path, &settings(&s3, &s3.secret_key)).await;
    assert_eq!(status, 200, "{body}");
    s3.stop();
    let (_, test) = api.post_empty(&format!("{path}/test")).await;
    assert_eq!(test["ok"], false, "{test}");
    let (status, upload) = api
        .post_empty(&format!("/api/v1/backups/{backup_id}/offsite/upload"))
        .await;
    assert_eq!(status, 201, "{upload}");
    assert_eq!(
        backup_of(&api, &backup_id).await["offsite"]["status"],
        "uploading"
    );
    let end = api
        .execution_end(upload["id"].as_str().unwrap(), Duration::from_secs(300))
        .await;
    assert_eq!(end["status"], "failed", "{end}");
    let failed = backup_of(&api, &backup_id).await;
    assert_eq!(failed["offsite"]["status"], "failed", "{failed}");
    let error = failed["offsite"]["error"].as_str().unwrap();
    assert!(
        error.to_lowercase().contains("connection refused")
            || error.contains("error sending request"),
        "{error}"
    );
    assert_eq!(failed["offsite"]["attempts"], 2);
    assert_eq!(alerts_of(&api, &backup_id).await.len(), 2);

    // The storage is back (a fresh server: new key, empty bucket): uploading again
    // makes the copy done, and it is in the bucket.
    s3.start_again();
    let (status, body) = api.put(&path, &settings(&s3, &s3.secret_key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, upload) = api
        .post_empty(&format!("/api/v1/backups/{backup_id}/offsite/upload"))
        .await;
    assert_eq!(status, 201, "{upload}");
    let end = api
        .execution_end(upload["id"].as_str().unwrap(), Duration::from_secs(300))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let done = backup_of(&api, &backup_id).await;
    assert_eq!(done["offsite"]["status"], "done", "{done}");
    assert!(done["offsite"]["next_retry_at"].is_null(), "{done}");
    let listed = s3.list("");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["size"], done["offsite"]["size"]);
    let (status, body) = api
        .post_empty(&format!("/api/v1/backups/{backup_id}/offsite/upload"))
        .await;
    assert_eq!(status, 409, "a done copy is not uploaded again: {body}");
}

/// A 200 MB dump goes off site through the agent with its memory under 50 MiB (the
/// peak resident size the backup's process reports), and the copy is listed whole.
#[tokio::test]
async fn a_200_mb_dump_streams_off_site_in_bounded_memory() {
    let s3 = S3Server::start("dynserv-large");
    let project = Project::start("dsvofflarge");
    let cp = ControlPlane::start().await;
    let (api, project_id) = ops_project(
        &cp,
        &project,
        "dd if=/dev/urandom bs=1048576 count=200 2>/dev/null",
    )
    .await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-01");
    let server = server_id(&api, "db-01").await;
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/offsite"),
            &settings(&s3, &s3.secret_key),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = backup_on(&api, &server).await;
    assert_eq!(backup["size"], 200 * 1024 * 1024, "{backup}");
    assert_eq!(backup["offsite"]["status"], "done", "{backup}");
    let listed = s3.list("");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["size"], backup["offsite"]["size"]);
    assert!(listed[0]["size"].as_u64().unwrap() > 200 * 1024 * 1024);
    let (_, log) = api
        .get_text(&format!(
            "/api/v1/executions/{}/log?format=text",
            backup["execution_id"].as_str().unwrap()
        ))
        .await;
    let peak: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("[dynserv] peak memory of this backup: "))
        .and_then(|kib| kib.trim_end_matches(" KiB").parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no peak memory line in the log: {log}"));
    eprintln!(
        "peak resident memory of the 200 MB backup and upload: {} KiB",
        peak / 1024
    );
    assert!(
        peak < 50 * 1024 * 1024,
        "the agent's backup held {peak} bytes"
    );
}

/// A default storage serves the projects without their own: only those who may create
/// projects set it, its secret is never answered, a project's backup goes there under
/// the project's own derived key, and that key stays when the project takes settings of
/// its own, so the copy made before still verifies.
#[tokio::test]
async fn a_default_storage_serves_projects_without_their_own() {
    let s3 = S3Server::start("dynserv-default");
    let project = Project::start("dsvoffdefault");
    let cp = ControlPlane::start().await;
    let (api, project_id) = ops_project(&cp, &project, "cat /data/db.txt").await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Ops"), "db-01");
    let server = server_id(&api, "db-01").await;
    cp.add_user("tech", "technical", false, "Tq4!pinewood-harbor-ledger");
    let (status, _) = cp
        .api_as("tech")
        .put("/api/v1/offsite", &settings(&s3, &s3.secret_key))
        .await;
    assert_eq!(status, 403);

    let mut default = settings(&s3, &s3.secret_key);
    default["prefix"] = json!("shared");
    let (status, body) = api.put("/api/v1/offsite", &default).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(&s3.secret_key), "{body}");
    let (status, test) = api.post_empty("/api/v1/offsite/test").await;
    assert_eq!((status, &test["ok"]), (200, &json!(true)), "{test}");
    let (status, used) = api
        .get(&format!("/api/v1/projects/{project_id}/offsite"))
        .await;
    assert_eq!(status, 200, "{used}");
    assert_eq!(used["default"], true, "{used}");

    let backup = backup_on(&api, &server).await;
    assert_eq!(backup["offsite"]["status"], "done", "{backup}");
    let key = backup["offsite"]["key"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("shared/{project_id}/")), "{key}");
    let backup_id = backup["id"].as_str().unwrap().to_string();

    // The project takes its own settings (the same storage, another prefix): its key
    // stays, so the copy made under the default still decrypts.
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/offsite"),
            &settings(&s3, &s3.secret_key),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["default"], false, "{body}");
    let (status, verify) = api
        .post_empty(&format!("/api/v1/backups/{backup_id}/offsite/verify"))
        .await;
    assert_eq!(status, 201, "{verify}");
    let end = api
        .execution_end(verify["id"].as_str().unwrap(), Duration::from_secs(300))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}");
}
