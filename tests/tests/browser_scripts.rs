//! Deployment scripts in a real headless Chromium: a technician finds the samples,
//! creates a playbook in the code editor (line numbers), sees a validation error with
//! line:column beside the body and the line marked in the editor, adds a variable
//! without saving first, fixes it, runs it with a secret variable on the local agent and watches the live
//! log on the rollout page, with the secret masked.

use std::time::Duration;

use dynserv_tests::{eventually, Browser, ControlPlane};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "Br0wser-Secret-77";

/// Sets the script body through the code editor that replaced its textarea (the
/// textarea follows the editor).
async fn set_body(browser: &Browser, value: &str) {
    browser.wait_for("#body[data-editor-ready]").await;
    let set = browser
        .eval(&format!(
            "var w = document.querySelector('#body').nextElementSibling; \
             if (!w || !w.CodeMirror) {{ return false; }} \
             w.CodeMirror.setValue({}); return document.querySelector('#body').value === {};",
            json!(value),
            json!(value)
        ))
        .await;
    assert_eq!(set, json!(true), "the body is not in a code editor");
}

/// Scrolls an element to the middle of the window, clear of the sticky top bar.
async fn center(browser: &Browser, css: &str) {
    browser.wait_for(css).await;
    browser
        .eval(&format!(
            "document.querySelector({}).scrollIntoView({{block: 'center', behavior: 'instant'}}); return true;",
            json!(css)
        ))
        .await;
}

/// Ticks a checkbox through script (a sticky bar may cover it on a small window).
async fn check(browser: &Browser, css: &str) {
    browser.wait_for(css).await;
    let ticked = browser
        .eval(&format!(
            "var e = document.querySelector({}); e.checked = true; return e.checked;",
            json!(css)
        ))
        .await;
    assert_eq!(ticked, json!(true), "{css}");
}

/// Reads an element's text through script (an element found before a page load would
/// be stale); empty when it does not exist.
async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .eval(&format!(
            "var e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Create, see the line:column error, fix, run on `localhost`, watch the live log.
#[tokio::test]
async fn create_validate_run_and_watch_a_script() {
    let cp = ControlPlane::start_demo().await;
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;

    // The nav leads to the list, which holds the samples and searches live.
    browser.goto("/").await;
    browser
        .click("nav a[href=\"/scripts\"], a.nav-link[href=\"/scripts\"]")
        .await;
    browser
        .wait_for("#scripts-table tr[data-script-name=\"hello\"]")
        .await;
    browser.fill("#script-search", "nginx").await;
    eventually(WAIT, "the live search hides hello", || async {
        let hidden = browser
            .eval("var r = document.querySelector('tr[data-script-name=\"hello\"]'); return r.offsetParent === null;")
            .await;
        (hidden == json!(true)).then_some(())
    })
    .await;

    // A playbook with an unknown module on line 4.
    browser.goto("/scripts/new").await;
    browser.fill("#name", "browser-hello").await;
    // The body is a code editor with line numbers.
    set_body(
        &browser,
        "- name: browser\n  hosts: all\n  tasks:\n    - name: broken\n      not_a_real_module:\n        x: 1\n",
    )
    .await;
    assert_eq!(
        browser.texts("#script-form .CodeMirror-linenumber").await[..6],
        ["1", "2", "3", "4", "5", "6"]
    );
    browser.fill("input[name=var_0_name]", "api_key").await;
    check(&browser, "input[name=var_0_secret]").await;
    check(&browser, "input[name=var_0_required]").await;
    center(&browser, "#save-script").await;
    browser.submit_and_wait_for_next_page("#save-script").await;
    let error = text_of(&browser, "#body-error").await;
    assert!(error.contains("4:"), "no line:column in {error:?}");
    assert!(error.contains("not_a_real_module"), "{error}");
    assert_eq!(
        browser
            .attr("#body-error-position", "data-line")
            .await
            .as_deref(),
        Some("4")
    );
    // The editor marks line 4.
    browser.wait_for("#body[data-editor-ready]").await;
    assert_eq!(
        text_of(
            &browser,
            ".CodeMirror .ds-error-line .CodeMirror-linenumber"
        )
        .await,
        "4"
    );
    // What was typed survives the error, the secret flag too.
    assert_eq!(
        browser
            .attr("input[name=var_0_name]", "value")
            .await
            .as_deref(),
        Some("api_key")
    );

    // A variable is added without saving first.
    let rows = browser.all("#variables-table tbody tr").await.len();
    center(&browser, "#add-variable").await;
    browser.click("#add-variable").await;
    assert_eq!(
        browser.all("#variables-table tbody tr").await.len(),
        rows + 1
    );
    let added = format!("input[name=var_{rows}_name]");
    browser.fill(&added, "region").await;
    browser
        .fill(&format!("input[name=var_{rows}_default]"), "eu-central")
        .await;

    // Fixed, it saves and offers Run.
    set_body(
        &browser,
        "- name: browser\n  hosts: all\n  tasks:\n    - name: greet\n      debug:\n        msg: \"hello from the browser, key {{ api_key }}\"\n",
    )
    .await;
    center(&browser, "#save-script").await;
    browser.submit_and_wait_for_next_page("#save-script").await;
    assert!(
        !browser.exists("#body-error").await,
        "{}",
        browser.page_text().await
    );
    assert!(
        browser.exists("input[value=\"region\"]").await,
        "the added variable was not saved"
    );
    let script_path = browser.path().await;
    center(&browser, "#run-script").await;
    browser.click("#run-script").await;
    browser.wait_for("#run-form").await;
    assert_eq!(
        browser.attr("#var_api_key", "type").await.as_deref(),
        Some("password")
    );
    browser.fill("#var_api_key", SECRET).await;
    check(
        &browser,
        "#server-list input[data-server-name=\"localhost\"]",
    )
    .await;
    center(&browser, "#start-run").await;
    browser.submit_and_wait_for_next_page("#start-run").await;
    assert!(
        browser.path().await.starts_with("/rollouts/"),
        "{}",
        browser.page_text().await
    );

    // One live log for the server, the grid's summary, the secret masked.
    eventually(WAIT, "the live log shows the play", || async {
        let log = text_of(&browser, "[data-log-for] .log-viewer").await;
        log.contains("hello from the browser").then_some(())
    })
    .await;
    eventually(WAIT, "the grid says succeeded", || async {
        let state = text_of(&browser, "#rollout-grid [data-cell=state]").await;
        let succeeded = text_of(&browser, "[data-count=succeeded]").await;
        (state.trim() == "succeeded" && succeeded.trim() == "1").then_some(())
    })
    .await;
    let log = text_of(&browser, "[data-log-for] .log-viewer").await;
    assert!(log.contains("key ********"), "{log}");
    assert!(!browser.page_text().await.contains(SECRET));
    browser.screenshot(&cp.artifact("rollout.png")).await;
    // The script's page lists the run.
    browser.goto(&script_path).await;
    browser.wait_for("a[href^=\"/rollouts/\"]").await;
    browser.close().await;
}

/// A playbook's files in the browser: the Files card lists them, a file opens in the
/// code editor with YAML highlighting, an edit that does not validate comes back with
/// the message and the text typed, a fix saves, and New file adds one.
#[tokio::test]
async fn a_playbooks_files_are_edited_in_the_code_editor() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "with-files", "kind": "playbook",
                    "body": "- hosts: all\n  roles: [web]\n",
                    "files": [{"path": "roles/web/tasks/main.yml", "content": "- name: hi\n  debug:\n    msg: hi\n"}]}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let id = script["id"].as_str().unwrap().to_string();
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/scripts/{id}")).await;
    center(&browser, "#file-list a").await;
    assert_eq!(
        browser.text("#file-list a").await.trim(),
        "roles/web/tasks/main.yml"
    );
    browser.click("#file-list a").await;
    browser.wait_for("#content[data-editor-ready]").await;
    let mode = browser
        .eval("return document.querySelector('#content').nextElementSibling.CodeMirror.getOption('mode');")
        .await;
    assert_eq!(mode, json!("yaml"));
    let set = |value: &'static str| {
        let browser = &browser;
        async move {
            browser.wait_for("#content[data-editor-ready]").await;
            browser
                .eval(&format!(
                    "document.querySelector('#content').nextElementSibling.CodeMirror.setValue({}); return true;",
                    json!(value)
                ))
                .await;
        }
    };
    set("- name: [broken\n").await;
    center(&browser, "#save-file").await;
    browser.submit_and_wait_for_next_page("#save-file").await;
    browser.wait_for("#file-error").await;
    assert!(
        text_of(&browser, "#file-error")
            .await
            .contains("roles/web/tasks/main.yml"),
        "the error names the file"
    );
    let kept = browser
        .eval("return document.querySelector('#content').value;")
        .await;
    assert_eq!(kept, json!("- name: [broken\n"), "what was typed is kept");
    set("- name: fixed\n  debug:\n    msg: fixed\n").await;
    center(&browser, "#save-file").await;
    browser.submit_and_wait_for_next_page("#save-file").await;
    eventually(WAIT, "the fix is saved", || async {
        let (_, files) = api.get(&format!("/api/v1/scripts/{id}/files")).await;
        (files[0]["content"] == "- name: fixed\n  debug:\n    msg: fixed\n").then_some(())
    })
    .await;

    // New file from the card.
    browser.goto(&format!("/scripts/{id}")).await;
    center(&browser, "#new-file").await;
    browser.click("#new-file").await;
    browser.wait_for("#content[data-editor-ready]").await;
    browser.fill("#path", "templates/motd.j2").await;
    set("Hello {{ inventory_hostname }}\n").await;
    center(&browser, "#save-file").await;
    browser.submit_and_wait_for_next_page("#save-file").await;
    browser.wait_for("#file-list").await;
    let listed = browser.texts("#file-list a").await;
    assert_eq!(listed, ["roles/web/tasks/main.yml", "templates/motd.j2"]);
    // The refused save answered 422 on purpose; nothing else may complain (scripts,
    // the content security policy).
    let console: Vec<String> = browser
        .console_messages()
        .await
        .into_iter()
        .filter(|m| !m.contains("status of 422"))
        .collect();
    assert!(console.is_empty(), "console errors: {console:?}");
    browser.close().await;
}
