//! Drift in a real headless Chromium: an admin marks a playbook as the project's
//! desired state on its script page (the schedule shown in words), a file on the
//! agent's host is edited by hand, Check now finds the drift, the Drift page lists the
//! server as drifted, its report shows the diff like a code review (removed lines red,
//! added green, through CSS classes), and Apply, after its confirmation, puts the file
//! back. Needs Chromium (provided by `scripts/test.sh`).

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Browser, ControlPlane};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";

/// Desired state card, Check now, Drift page, report with coloured diff, Apply.
#[tokio::test]
async fn browser_drift_mark_check_report_and_apply() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let motd = dir.path().join("motd");
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Web"})).await;
    assert_eq!(status, 201, "{body}");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Web"), "web-01");
    api.connected_agent("web-01").await;
    let body = format!(
        "- name: Site\n  hosts: all\n  tasks:\n    - name: motd is managed\n      copy:\n        content: \"managed by dynserv\\n\"\n        dest: {}\n",
        motd.display()
    );
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "site", "kind": "playbook", "project": "Web", "body": body}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let script_id = script["id"].as_str().unwrap().to_string();
    std::fs::write(&motd, "edited by hand\n").unwrap();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", PASSWORD).await;
    browser.goto(&format!("/scripts/{script_id}")).await;
    browser.wait_for("#desired-state").await;
    browser.fill("#desired-schedule", "0 3 * * *").await;
    // The card is below the editor, under the fixed layout: its buttons are pressed
    // through script, and the page that answers is read through script too (an
    // element found before it loaded would be stale).
    browser
        .eval("document.querySelector('#desired-save').click(); return true;")
        .await;
    let summary = eventually(WAIT, "the desired state in words", || async {
        let text = browser
            .eval("var e = document.querySelector('#desired-summary'); return e ? e.textContent : '';")
            .await;
        text.as_str()
            .filter(|t| t.contains("every day, at 03:00 (UTC)"))
            .map(String::from)
    })
    .await;
    assert!(summary.contains("every server of Web"), "{summary}");
    browser.screenshot(&cp.artifact("drift-script.png")).await;
    browser
        .eval("document.querySelector('#drift-check-all').click(); return true;")
        .await;

    // The Drift page lists the server drifted once the check has ended.
    eventually(WAIT, "the Drift page shows the drift", || async {
        browser.goto("/drift").await;
        let status = browser
            .eval("var r = document.querySelector('#drift-table tr[data-drift-status]'); return r ? r.getAttribute('data-drift-status') : '';")
            .await;
        (status == "drifted").then_some(())
    })
    .await;
    assert!(browser.page_text().await.contains("drifted: 1 task(s)"));
    browser.screenshot(&cp.artifact("drift.png")).await;
    browser.click("#drift-table a.btn").await;
    browser.wait_for(".ds-drift-task").await;
    let removed = browser.texts(".ds-diff-del").await;
    let added = browser.texts(".ds-diff-add").await;
    assert_eq!(removed, vec!["-edited by hand"], "{removed:?}");
    assert_eq!(added, vec!["+managed by dynserv"], "{added:?}");
    // Coloured by the stylesheet, not inline: red and green backgrounds.
    let red = browser.css_value(".ds-diff-del", "background-color").await;
    let green = browser.css_value(".ds-diff-add", "background-color").await;
    assert!(red.starts_with("rgba(220, 53, 69"), "{red}");
    assert!(green.starts_with("rgba(25, 135, 84"), "{green}");
    assert!(browser.attr(".ds-diff-add", "style").await.is_none());
    browser.screenshot(&cp.artifact("drift-report.png")).await;

    // Apply asks first, then runs the script for real.
    browser.click("#drift-apply").await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-ok]")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let execution_id = eventually(WAIT, "the live log of the Apply", || async {
        let path = browser.path().await;
        path.strip_prefix("/executions/").map(String::from)
    })
    .await;
    let end = api.execution_end(&execution_id, WAIT).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "managed by dynserv\n"
    );
}
