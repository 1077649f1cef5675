//! The web terminal in a real headless Chromium: from the server page's Terminal
//! button, xterm.js opens a shell on the demo's local agent; what is typed runs and
//! its answer shows in the terminal's DOM, with no Content-Security-Policy violation.

use std::time::Duration;

use dynserv_tests::{eventually, Browser, ControlPlane};

const WAIT: Duration = Duration::from_secs(60);

/// The text of the terminal's rows as the page holds them (xterm's screen-reader
/// tree); empty before it exists.
async fn terminal_text(browser: &Browser) -> String {
    browser
        .eval("var e = document.querySelector('#terminal .xterm-accessibility-tree'); return e ? e.textContent : '';")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Terminal button → terminal page → `echo hello-$((6*7))` shows `hello-42`.
#[tokio::test]
async fn a_terminal_page_runs_echo() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    admin.connected_agent("localhost").await;
    let (status, servers) = admin.get("/api/v1/servers?q=localhost").await;
    assert_eq!(status, 200, "{servers}");
    let server = servers
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "localhost"))
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no localhost server: {servers}"))
        .to_string();

    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;
    browser.goto(&format!("/servers/{server}")).await;
    browser.click("#open-terminal").await;
    browser.wait_for("#terminal[data-state=\"open\"]").await;
    let input = browser.wait_for("#terminal .xterm-helper-textarea").await;
    // \u{E007} is WebDriver's Enter key.
    input
        .send_keys("echo hello-$((6*7))\u{E007}")
        .await
        .expect("typing into the terminal");
    eventually(WAIT, "the answer shows in the terminal", || async {
        let text = terminal_text(&browser).await;
        text.contains("hello-42").then_some(())
    })
    .await;

    let console = browser.console_messages().await;
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("SEVERE")),
        "{console:?}"
    );
    browser.screenshot(&cp.artifact("terminal.png")).await;
    browser.close().await;
}
