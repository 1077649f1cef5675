//! The server page in a real headless Chromium: the agent's facts, the charts drawn
//! by the vendored Chart.js from the agent's heartbeats (the card reports how many
//! points it drew), the range buttons, the recent executions, and the project's deploy
//! command run from its button, all under the Content-Security-Policy.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Browser, ControlPlane};
use serde_json::{json, Value};

const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn server_page_draws_the_charts_and_deploys() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    let api = cp.api_as("admin");
    let (status, body) = api
        .post(
            "/api/v1/projects",
            &json!({"name": "Charts", "deploy_command": "echo deployed-by-button"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Charts"), "charts-01");
    let server = eventually(WAIT, "the agent's server is connected", || async {
        let (_, servers) = api.get("/api/v1/servers").await;
        servers.as_array().and_then(|list| {
            list.iter()
                .find(|s| s["name"] == "charts-01" && s["agent"]["connected"] == true)
                .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        })
    })
    .await;
    // Two heartbeats' worth of points, so the line has something to join.
    eventually(WAIT, "points from the heartbeats", || async {
        let (_, body) = api
            .get(&format!("/api/v1/servers/{server}/metrics?step=10"))
            .await;
        (body["points"].as_array().map_or(0, Vec::len) >= 2).then_some(())
    })
    .await;

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", PASSWORD).await;
    browser.goto(&format!("/servers/{server}")).await;

    // The facts the agent reported.
    let kernel = browser.text("[data-fact=kernel]").await;
    assert!(
        !kernel.trim().is_empty() && kernel.contains('('),
        "{kernel}"
    );
    assert!(browser.text("[data-fact=memory]").await.contains("iB"));
    assert!(!browser.text("[data-fact=uptime]").await.is_empty());

    // The four charts are drawn with the points the API answers.
    let drawn = eventually(WAIT, "the charts are drawn", || async {
        let n = browser
            .attr("#server-metrics", "data-points")
            .await
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        (n >= 2).then_some(n)
    })
    .await;
    assert!(drawn >= 2, "{drawn}");
    let charts = browser
        .eval(
            "return Array.from(document.querySelectorAll('#server-metrics canvas[data-metric]'))\
             .map(c => { const chart = window.Chart.getChart(c); \
               return {metric: c.dataset.metric, width: c.width, height: c.height, \
                       points: chart ? chart.data.datasets[0].data.filter(v => v !== null).length : 0}; });",
        )
        .await;
    let charts = charts.as_array().cloned().unwrap_or_default();
    assert_eq!(charts.len(), 4, "{charts:?}");
    for chart in &charts {
        assert!(chart["width"].as_u64() > Some(0), "{chart}");
        assert!(chart["height"].as_u64() > Some(0), "{chart}");
        let points = chart["points"].as_u64().unwrap_or(0);
        // CPU starts at the agent's first heartbeat too (it samples /proc/stat first).
        assert!(points >= 1, "{chart}");
    }

    // Another range asks again and draws again.
    // Clicked from the page's script: the button sits below the fold of the page's
    // own scrolling container, where WebDriver reports the click as intercepted.
    browser
        .eval("document.querySelector(\"[data-range-step='300']\").click();")
        .await;
    eventually(WAIT, "the day range is drawn", || async {
        let status = browser.text("[data-metrics-status]").await;
        status.contains("one per 300 s").then_some(())
    })
    .await;

    let violations: Vec<String> = browser
        .console_messages()
        .await
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");
    browser
        .eval("document.querySelector('#server-metrics').scrollIntoView();")
        .await;
    browser
        .screenshot(&cp.artifact("server-page-charts.png"))
        .await;

    // The deploy button runs the project's deploy command after a confirmation.
    browser
        .eval("document.querySelector('#deploy-button').click();")
        .await;
    browser
        .wait_for(".modal.show[data-confirm-ready] [data-confirm-ok]")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let path = eventually(WAIT, "the deploy's execution page", || async {
        let path = browser.path().await;
        path.starts_with("/executions/").then_some(path)
    })
    .await;
    let id = path.trim_start_matches("/executions/").to_string();
    let ended: Value = eventually(WAIT, "the deploy ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
        (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
    })
    .await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let (_, log) = api
        .get_text(&format!("/api/v1/executions/{id}/log?format=text"))
        .await;
    assert!(log.contains("deployed-by-button"), "{log}");

    // Back on the server page, the run is among the recent executions, with a link.
    browser.goto(&format!("/servers/{server}")).await;
    let href = browser
        .attr("#recent-executions a", "href")
        .await
        .unwrap_or_default();
    assert_eq!(href, format!("/executions/{id}"));
    browser.close().await;
}
