//! The technician's cockpit in a real headless Chromium: the executions filter form
//! narrows the list (kept in the URL), the rollout page shows a server without an agent
//! as skipped with the reason beside a progress bar, the Agents page shows an agent
//! going offline and the executions list new jobs without a reload (live.js over
//! `GET /api/v1/events`).

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, Browser, ControlPlane};
use serde_json::{json, Value};

/// Runs a script to its end (succeeded or failed) and returns the execution's id.
async fn run_script(api: &Api, agent: &str, script: &str) -> String {
    let end = api.run_script(agent, script).await;
    assert!(
        matches!(end["status"].as_str(), Some("succeeded" | "failed")),
        "{end}"
    );
    end["id"].as_str().expect("execution id").to_string()
}

/// The ids of the executions listed on the page.
async fn listed(browser: &Browser) -> Vec<String> {
    browser
        .eval("return Array.from(document.querySelectorAll('tr[data-execution-id]')).map(r => r.dataset.executionId);")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// Waits until the page's live stream is open, then marks the document: a reload
/// would lose the mark (`window.__sameDocument`).
async fn mark_live(browser: &Browser) {
    eventually(Duration::from_secs(20), "the live stream opens", || async {
        let open = browser
            .eval("return document.documentElement.dataset.live === 'open';")
            .await;
        (open == Value::Bool(true)).then_some(())
    })
    .await;
    browser.eval("window.__sameDocument = true;").await;
}

/// Sets a form field's value by script (selects included).
async fn set_field(browser: &Browser, css: &str, value: &str) {
    browser.wait_for(css).await;
    browser
        .eval(&format!(
            "document.querySelector({css:?}).value = {value:?}; return true;"
        ))
        .await;
}

/// The filter form narrows the list by status and by server name, the filters stay in
/// the URL, and a server name that matches nothing says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_executions_filter_form_narrows_the_list() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _web = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    let _db = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "db-01");
    let web = api.connected_agent("web-01").await;
    let db = api.connected_agent("db-01").await;
    let ok = run_script(&api, web["id"].as_str().unwrap(), "echo fine\n").await;
    let failed = run_script(&api, web["id"].as_str().unwrap(), "echo broken\nexit 3\n").await;
    let other = run_script(&api, db["id"].as_str().unwrap(), "echo elsewhere\n").await;

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto("/executions").await;
    let all = listed(&browser).await;
    for id in [&ok, &failed, &other] {
        assert!(all.contains(id), "{id} listed in {all:?}");
    }
    // Each row names the server and the project, and offers Re-run.
    let row = browser
        .text(&format!("tr[data-execution-id=\"{failed}\"]"))
        .await;
    assert!(row.contains("web-01") && row.contains("Nova HR"), "{row}");
    assert!(
        browser
            .exists(&format!("tr[data-execution-id=\"{ok}\"] a[data-rerun]"))
            .await
    );

    // By status.
    set_field(&browser, "#f-status", "failed").await;
    browser
        .submit_and_wait_for_next_page("#executions-filter")
        .await;
    let url = browser.eval("return window.location.search;").await;
    assert!(
        url.as_str().unwrap_or_default().contains("status=failed"),
        "{url}"
    );
    let shown = listed(&browser).await;
    assert!(
        shown.contains(&failed) && !shown.contains(&ok) && !shown.contains(&other),
        "{shown:?}"
    );

    // By server name, with the status filter cleared.
    set_field(&browser, "#f-status", "").await;
    set_field(&browser, "#f-server", "db-01").await;
    browser
        .submit_and_wait_for_next_page("#executions-filter")
        .await;
    let shown = listed(&browser).await;
    assert!(
        shown.contains(&other) && !shown.contains(&ok) && !shown.contains(&failed),
        "{shown:?}"
    );
    assert_eq!(
        browser.attr("#f-server", "value").await.as_deref(),
        Some("db-01")
    );

    // A server nobody has: the message above an empty list.
    set_field(&browser, "#f-server", "no-such-server").await;
    browser
        .submit_and_wait_for_next_page("#executions-filter")
        .await;
    assert!(browser.exists("#executions-filter-error").await);
    assert!(listed(&browser).await.is_empty());
    browser.close().await;
}

/// A rollout over every server of Nova HR (one with an agent) shows the servers without
/// one as skipped with the reason, and the progress bar full once it ended; its log
/// names the host by its server name.
#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_page_shows_skipped_servers_with_their_reason() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _web = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    api.connected_agent("web-01").await;
    let playbook = "- name: greet\n  hosts: all\n  tasks:\n    - name: say hello\n      debug:\n        msg: \"hello from {{ inventory_hostname }}\"\n";
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "greet", "kind": "playbook", "body": playbook}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{}/run", script["id"].as_str().unwrap()),
            &json!({"targets": {"project": "Nova HR"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    let done: Value = eventually(Duration::from_secs(90), "the rollout ends", || async {
        let (_, r) = api.get(&format!("/api/v1/rollouts/{id}")).await;
        (r["status"] != "running" && r["summary"]["running"] == 0).then_some(r)
    })
    .await;
    let targets = done["targets"].as_array().unwrap();
    let skipped: Vec<&Value> = targets
        .iter()
        .filter(|t| t["status"] == "skipped")
        .collect();
    assert!(!skipped.is_empty(), "{done}");
    let ran = targets
        .iter()
        .find(|t| t["server"] == "web-01")
        .unwrap_or_else(|| panic!("web-01 is a target: {done}"));
    assert_eq!(ran["status"], "succeeded", "{done}");
    let execution = ran["execution_id"].as_str().unwrap();
    let (status, log) = api
        .get_text(&format!("/api/v1/executions/{execution}/log?format=text"))
        .await;
    assert_eq!(status, 200);
    assert!(log.contains("ok: [web-01]"), "{log}");
    assert!(log.contains("hello from web-01"), "{log}");
    assert!(!log.contains("[localhost]"), "{log}");

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/rollouts/{id}")).await;
    browser.wait_for("#rollout-grid").await;
    let grid = browser.text("#rollout-grid").await;
    assert!(grid.contains("skipped: no agent"), "{grid}");
    let skipped_name = skipped[0]["server"].as_str().unwrap();
    assert!(grid.contains(skipped_name), "{grid}");
    // The bar: every target ended, so its parts fill it; the skipped part is wide.
    let widths = browser
        .eval("return Array.from(document.querySelectorAll('#rollout-progress [data-progress-part]')).map(p => [p.dataset.progressPart, parseFloat(p.style.width) || 0]);")
        .await;
    let parts = widths.as_array().cloned().unwrap_or_default();
    let width = |name: &str| {
        parts
            .iter()
            .find(|p| p[0] == name)
            .and_then(|p| p[1].as_f64())
            .unwrap_or(-1.0)
    };
    assert!(width("skipped") > 0.0, "{widths}");
    assert!(width("succeeded") > 0.0, "{widths}");
    let sum: f64 = ["succeeded", "failed", "skipped", "running"]
        .iter()
        .map(|p| width(p).max(0.0))
        .sum();
    assert!((sum - 100.0).abs() < 0.5, "{widths}");
    assert!(browser
        .text("#rollout-progress-text")
        .await
        .contains(&format!("{} of {}", targets.len(), targets.len())));
    browser.close().await;
}

/// The Agents page shows an agent going offline without being reloaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_page_shows_an_agent_going_offline() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "edge-01");
    let view = api.connected_agent("edge-01").await;
    let id = view["id"].as_str().unwrap().to_string();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto("/agents").await;
    let state = format!("[data-agent-state=\"{id}\"]");
    assert!(browser.text(&state).await.contains("connected"));
    mark_live(&browser).await;

    agent.stop();
    eventually(
        Duration::from_secs(60),
        "the page shows the agent disconnected",
        || async {
            let text = browser
                .eval(&format!(
                    "const n = document.querySelector({state:?}); return n ? n.textContent.trim() : '';"
                ))
                .await;
            (text.as_str() == Some("disconnected")).then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.eval("return window.__sameDocument === true;").await,
        Value::Bool(true),
        "the page was reloaded"
    );
    assert_eq!(
        browser
            .attr(&format!("{state} .status-dot"), "class")
            .await
            .as_deref()
            .map(|c| c.contains("offline")),
        Some(true)
    );
    browser.close().await;
}

/// The executions list shows a job created after it loaded, without a reload, and its
/// status as it ends; a list filtered to another status leaves it out.
#[tokio::test(flavor = "multi_thread")]
async fn the_executions_list_shows_new_jobs_as_they_are_created() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    let web = api.connected_agent("web-01").await;
    let agent_id = web["id"].as_str().unwrap().to_string();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto("/executions").await;
    mark_live(&browser).await;
    let before = listed(&browser).await;

    let id = run_script(&api, &agent_id, "echo new-row").await;
    assert!(!before.contains(&id));
    eventually(Duration::from_secs(30), "the new job is listed", || async {
        let rows = listed(&browser).await;
        let status = browser
            .eval(&format!(
                "const n = document.querySelector('tr[data-execution-id=\"{id}\"] [data-cell=\"status\"]'); return n ? n.textContent.trim() : '';"
            ))
            .await;
        (rows.first() == Some(&id) && status.as_str() == Some("succeeded")).then_some(())
    })
    .await;
    assert_eq!(
        browser.eval("return window.__sameDocument === true;").await,
        Value::Bool(true),
        "the page was reloaded"
    );

    // A list of failed jobs reads itself again, and the new successful job is not in it.
    browser.goto("/executions?status=failed").await;
    mark_live(&browser).await;
    let failed = run_script(&api, &agent_id, "exit 3").await;
    let ok = run_script(&api, &agent_id, "echo fine").await;
    eventually(
        Duration::from_secs(30),
        "the failed job is listed",
        || async { listed(&browser).await.contains(&failed).then_some(()) },
    )
    .await;
    assert!(!listed(&browser).await.contains(&ok));
    browser.close().await;
}

/// An execution page follows its job to the end without a reload: the details fill in
/// and Cancel goes away.
#[tokio::test(flavor = "multi_thread")]
async fn the_execution_page_follows_its_job_to_the_end() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    let agent = api.connected_agent("web-01").await;
    // The job waits for a file the test creates, so the page is open while it runs.
    let gate = tempfile::tempdir().expect("a temp dir");
    let flag = gate.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done\necho done\n",
        flag.display()
    );
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": agent["id"], "kind": "script", "script": script}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/executions/{id}")).await;
    browser.wait_for("#execution-cancel").await;
    mark_live(&browser).await;
    std::fs::write(&flag, b"").expect("opening the gate");

    eventually(Duration::from_secs(60), "the page shows the end", || async {
        let state = browser
            .eval("const f = document.querySelector('[data-field=\"finished_at\"]'); return [f ? f.textContent.trim() : '', !!document.getElementById('execution-cancel')];")
            .await;
        let finished = state[0].as_str().unwrap_or_default().to_string();
        (finished.ends_with("UTC") && state[1] == Value::Bool(false)).then_some(())
    })
    .await;
    assert_ne!(browser.text("[data-field=\"duration_s\"]").await, "—");
    assert_eq!(
        browser.eval("return window.__sameDocument === true;").await,
        Value::Bool(true),
        "the page was reloaded"
    );
    browser.close().await;
}

/// Re-running work whose stored script has a secret variable asks for it again in a
/// form whose POST carries the CSRF token (and is refused without it).
#[tokio::test(flavor = "multi_thread")]
async fn the_rerun_form_asks_for_secret_variables() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    api.connected_agent("web-01").await;
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
            &json!({"targets": {"servers": ["web-01"]}, "vars": {"token": "first-value"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let original = rollout["targets"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(60), "the run ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{original}")).await;
        (e["status"] == "succeeded").then_some(())
    })
    .await;

    let mut page = dynserv_tests::PageClient::signed_in(&cp, "admin", "admin123").await;
    // The execution page links to the form instead of posting at once.
    let (status, _, html) = page.get(&format!("/executions/{original}")).await;
    assert_eq!(status, 200);
    // Its status badge has the status's colour before any script runs.
    assert!(
        html.contains(r#"<span class="badge text-bg-success" data-exec-status="succeeded">"#),
        "{html}"
    );
    assert!(
        html.contains(&format!("href=\"/executions/{original}/rerun\"")),
        "{html}"
    );
    let (status, _, form) = page.get(&format!("/executions/{original}/rerun")).await;
    assert_eq!(status, 200);
    assert!(form.contains("name=\"secret.token\""), "{form}");
    let csrf = dynserv_tests::csrf_of(&form);
    let path = format!("/executions/{original}/rerun");
    let (status, _, _) = page.post(&path, &[("secret.token", "x")]).await;
    assert_eq!(status, 403, "no CSRF token, no re-run");
    let (status, _, again) = page.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(status, 422);
    assert!(
        again.contains("rerun-error") && again.contains("token"),
        "{again}"
    );
    let (status, location, _) = page
        .post(&path, &[("csrf", &csrf), ("secret.token", "second-value")])
        .await;
    assert_eq!(status, 303);
    let new_id = location
        .strip_prefix("/executions/")
        .unwrap_or_else(|| panic!("to the new execution: {location}"))
        .to_string();
    assert_ne!(new_id, original);
    let done: Value = eventually(Duration::from_secs(60), "the re-run ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{new_id}")).await;
        (e["status"] != "queued" && e["status"] != "running").then_some(e)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
}
