//! Backups in a real headless Chromium: a technician sets the project's recipe on its
//! Backups & updates page, presses Backup on the server, lands on the live log, finds
//! the backup with its checksum, and restores it only after typing RESTORE. Needs
//! Docker and Chromium (both provided by `scripts/test.sh`).

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, Browser, ComposeProject, ControlPlane};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

async fn wait_end(api: &Api, id: &str) -> Value {
    eventually(WAIT, &format!("execution {id} ends"), || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
        (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
    })
    .await
}

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
    let end = wait_end(&api, &execution_id).await;
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
    let end = wait_end(&api, &restore_id).await;
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
