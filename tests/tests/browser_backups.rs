//! Backups in a real headless Chromium: a technician sets the project's recipe on its
//! Backups & updates page, presses Backup on the server, lands on the live log, finds
//! the backup with its checksum, and restores it only after typing RESTORE. Needs
//! Docker and Chromium (both provided by `scripts/test.sh`); the off-site one also moto.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Browser, ComposeProject, ControlPlane, S3Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Recipe form, Backup button, backup page with sha256, typed-confirmation restore.
#[tokio::test]
async fn recipe_backup_and_typed_restore_in_the_browser() {
    let project = ComposeProject::start("dsvbrowser");
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Shop"})).await;
    assert_eq!(status, 201, "{body}");
    let project_id = body["id"].as_str().unwrap().to_string();
    let _agent = Agent::start(&cp, &cp.enrollment_token("Shop"), "shop-db");
    let server_id = eventually(WAIT, "the agent's server is connected", || async {
        let (_, servers) = api.get("/api/v1/servers").await;
        servers.as_array().and_then(|list| {
            list.iter()
                .find(|s| s["name"] == "shop-db" && s["agent"]["connected"] == true)
                .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        })
    })
    .await;

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin-password-1").await;
    browser
        .goto(&format!("/projects/{project_id}/operations"))
        .await;
    browser.fill("#compose_project", project.name()).await;
    browser.fill("#service", "db").await;
    browser.fill("#command", "cat /data/db.txt").await;
    browser.fill("#restore_command", "cat > /data/db.txt").await;
    browser.fill("#backup_cron", "0 3 * * *").await;
    browser.click("#recipe-form button[type=submit]").await;
    // Read through script: the page is replaced while the form posts, and an element
    // found before that would be stale.
    eventually(WAIT, "the schedule in words", || async {
        let text = browser
            .eval("var e = document.querySelector('#backup-schedule-text'); return e ? e.textContent : '';")
            .await;
        text.as_str()
            .is_some_and(|t| t.contains("every day, at 03:00 (UTC)"))
            .then_some(())
    })
    .await;

    browser
        .screenshot(&cp.artifact("backups-project.png"))
        .await;
    browser.goto(&format!("/servers/{server_id}")).await;
    browser
        .click(&format!(
            "form[action=\"/servers/{server_id}/backup\"] button"
        ))
        .await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-ok]")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let execution_id = eventually(WAIT, "the live log of the backup", || async {
        let path = browser.path().await;
        path.strip_prefix("/executions/").map(String::from)
    })
    .await;
    let end = api.execution_end(&execution_id, WAIT).await;
    let (_, log) = api
        .get_json_lines(&format!("/api/v1/executions/{execution_id}/log"))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}\n{log:?}");
    let (_, list) = api.get("/api/v1/backups").await;
    let backup = list[0].clone();
    assert_eq!(backup["status"], "succeeded", "{backup}");
    let backup_id = backup["id"].as_str().unwrap().to_string();

    project.sh("echo 'row 2 (lost)' > /data/db.txt");
    browser.goto(&format!("/backups/{backup_id}")).await;
    assert_eq!(
        browser.text("#backup-sha256").await,
        backup["sha256"].as_str().unwrap()
    );
    browser.screenshot(&cp.artifact("backup.png")).await;
    browser.click("#restore-button").await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-input]")
        .await;
    let disabled = browser
        .eval("return document.querySelector('.modal.show [data-confirm-ok]').disabled;")
        .await;
    assert_eq!(
        disabled,
        json!(true),
        "restore allowed before typing RESTORE"
    );
    browser
        .fill(".modal[data-confirm-ready] [data-confirm-input]", "RESTORE")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let restore_id = eventually(WAIT, "the live log of the restore", || async {
        let path = browser.path().await;
        path.strip_prefix("/executions/")
            .filter(|id| *id != execution_id)
            .map(String::from)
    })
    .await;
    let end = api.execution_end(&restore_id, WAIT).await;
    let (_, log) = api
        .get_json_lines(&format!("/api/v1/executions/{restore_id}/log"))
        .await;
    assert_eq!(end["status"], "succeeded", "{end}\n{log:?}");
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");
    browser
        .screenshot(&cp.artifact("backup-restored.png"))
        .await;
    browser.close().await;
}

/// Off-site storage in the browser: the project page's form (the secret never shown
/// again), its Test button, a backup whose copy is done, and a restore of that copy
/// onto another server of the project after typing RESTORE.
#[tokio::test]
async fn offsite_settings_test_and_restore_onto_another_server_in_the_browser() {
    let s3 = S3Server::start("dynserv-browser");
    let project = ComposeProject::start("dsvbrowseroff");
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "Tq4!pinewood-harbor-ledger");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Shop"})).await;
    assert_eq!(status, 201, "{body}");
    let project_id = body["id"].as_str().unwrap().to_string();
    let recipe = json!({"compose_project": project.name(), "service": "db",
        "command": "cat /data/db.txt", "restore_command": "cat > /data/db.txt"});
    let (status, body) = api
        .put(
            &format!("/api/v1/projects/{project_id}/backup-recipe"),
            &recipe,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let _first = Agent::start(&cp, &cp.enrollment_token("Shop"), "shop-db");
    let _second = Agent::start(&cp, &cp.enrollment_token("Shop"), "shop-db-2");
    let first = api.connected_agent("shop-db").await;
    let second = api.connected_agent("shop-db-2").await;

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "Tq4!pinewood-harbor-ledger").await;
    browser.goto(&format!("/projects/{project_id}")).await;
    browser.click("#offsite-edit").await;
    browser.wait_for("#offsite-settings-form").await;
    browser.fill("#endpoint", &s3.endpoint).await;
    browser.fill("#bucket", &s3.bucket).await;
    browser.fill("#prefix", "shop").await;
    browser.fill("#access_key", &s3.access_key).await;
    browser.fill("#secret_key", &s3.secret_key).await;
    browser.screenshot(&cp.artifact("offsite-form.png")).await;
    browser.click("#offsite-settings-save").await;
    eventually(WAIT, "the project page with the off-site panel", || async {
        let text = browser
            .eval(
                "var e = document.querySelector('#offsite-bucket'); return e ? e.textContent : '';",
            )
            .await;
        text.as_str()
            .is_some_and(|t| t.contains(&s3.bucket))
            .then_some(())
    })
    .await;
    assert!(!browser.page_text().await.contains(&s3.secret_key));
    browser.click("#offsite-test").await;
    // Read through script: the page is replaced while the form posts.
    eventually(WAIT, "the Test's outcome", || async {
        let text = browser
            .eval("return document.body ? document.body.innerText : '';")
            .await;
        text.as_str()
            .is_some_and(|t| t.contains("Off-site storage works"))
            .then_some(())
    })
    .await;
    browser.screenshot(&cp.artifact("offsite-tested.png")).await;

    let (_, servers) = api.get("/api/v1/servers").await;
    let server_of = |agent: &Value| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["agent"]["id"] == agent["id"])
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, created) = api
        .post_empty(&format!("/api/v1/servers/{}/backup", server_of(&first)))
        .await;
    assert_eq!(status, 201, "{created}");
    api.execution_end(created["execution_id"].as_str().unwrap(), WAIT)
        .await;
    let backup_id = created["id"].as_str().unwrap().to_string();

    project.sh("echo 'row 2 (lost)' > /data/db.txt");
    browser.goto(&format!("/backups/{backup_id}")).await;
    assert_eq!(browser.text("#offsite-status").await, "done");
    browser
        .eval(&format!(
            "document.querySelector('#offsite-restore-server').value = '{}'; \
             document.querySelector('#offsite-restore-button').scrollIntoView({{block: 'center', behavior: 'instant'}}); \
             return true;",
            second["id"].as_str().unwrap()
        ))
        .await;
    browser.screenshot(&cp.artifact("offsite-backup.png")).await;
    browser.click("#offsite-restore-button").await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-input]")
        .await;
    browser
        .fill(".modal[data-confirm-ready] [data-confirm-input]", "RESTORE")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let restore_id = eventually(WAIT, "the live log of the restore", || async {
        browser
            .path()
            .await
            .strip_prefix("/executions/")
            .map(String::from)
    })
    .await;
    let end = api.execution_end(&restore_id, WAIT).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["agent_name"], "shop-db-2", "{end}");
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");
    browser.close().await;
}
