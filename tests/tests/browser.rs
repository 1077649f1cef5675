//! Browser tests: a real headless Chromium through chromedriver.
//!
//! Two kinds live here. The smoke test drives the real `dynserv serve`. The UI tests
//! render the page shell (`web/templates/shell.hbs`) with handlebars in strict
//! mode and serve it, with the real `web/static/` assets, from a small fixture server
//! that also plays an execution's WebSocket stream; they prove the shell's context
//! contract and every behaviour of `app.js` without depending on the control plane's
//! pages.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynserv_tests::{eventually, Browser, ControlPlane};
use futures::SinkExt;
use handlebars::Handlebars;
use serde_json::{json, Value};
use warp::Filter;

/// The login page renders with the dark theme, its assets load, and the form carries
/// the fields the contract names.
#[tokio::test]
async fn login_page_renders_dark_with_its_assets() {
    let control_plane = ControlPlane::start_demo().await;
    let browser = Browser::start(&control_plane.base_url()).await;
    browser.goto("/login").await;

    let title = browser.title().await;
    assert!(title.contains("Sign in"), "title: {title}");
    assert_eq!(
        browser.attr("html", "data-bs-theme").await.as_deref(),
        Some("dark")
    );
    for field in [
        "input[name=username]",
        "input[name=password][type=password]",
        "input[name=csrf][type=hidden]",
        "form button[type=submit]",
    ] {
        assert!(browser.exists(field).await, "the login form lacks {field}");
    }
    assert_dark_background(&browser).await;
    assert_stylesheets_loaded(&browser).await;
    browser
        .screenshot(&control_plane.artifact("login.png"))
        .await;
}

/// The demo admin logs in through the form and lands on the dashboard.
#[tokio::test]
async fn login_as_demo_admin_lands_on_the_dashboard() {
    let control_plane = ControlPlane::start_demo().await;
    let browser = Browser::start(&control_plane.base_url()).await;
    browser.login("admin", "admin123").await;
    assert_eq!(browser.path().await, "/");
    assert!(
        browser
            .exists("form[action='/logout'] input[name=csrf]")
            .await
    );
    browser
        .screenshot(&control_plane.artifact("dashboard.png"))
        .await;
}

/// The pages work under their Content-Security-Policy: the console shows no violation
/// on any page, the live log streams over the WebSocket with its ANSI colors, the
/// budget bars get their widths from app.js and the backups filter submits itself, all
/// without inline scripts, handlers or style attributes.
#[tokio::test]
async fn pages_work_under_the_content_security_policy() {
    let control_plane = ControlPlane::start_demo().await;
    let api = control_plane.api_as("admin");
    let agent = api.connected_agent("localhost").await;
    let script = "printf '\\033[31mred\\033[0m \\033[38;5;208morange\\033[0m\\n'; echo done\n";
    let (status, execution) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": agent["id"], "kind": "script", "script": script}),
        )
        .await;
    assert_eq!(status, 201, "{execution}");
    let execution_id = execution["id"].as_str().unwrap().to_string();

    let browser = Browser::start(&control_plane.base_url()).await;
    browser.login("admin", "admin123").await;
    let violations = |messages: Vec<String>| -> Vec<String> {
        messages
            .into_iter()
            .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
            .collect()
    };
    // The console is read for real: a message of the page's own comes back.
    browser.eval("console.error('csp-probe');").await;
    let probe = browser.console_messages().await;
    assert!(probe.iter().any(|m| m.contains("csp-probe")), "{probe:?}");
    for path in [
        "/",
        "/servers",
        "/projects",
        "/backups",
        "/requests",
        "/requests/new",
        "/subscriptions",
        "/agents",
        "/agents/enroll",
        "/scripts",
        "/users",
        "/users/new",
        "/audit",
        "/notifications",
        "/account",
    ] {
        browser.goto(path).await;
        let found = violations(browser.console_messages().await);
        assert!(found.is_empty(), "{path}: {found:?}");
    }

    browser.goto("/").await;
    let widths = browser
        .eval(
            "return Array.from(document.querySelectorAll('[data-width]'))\
             .map(e => e.style.width);",
        )
        .await;
    let widths = widths.as_array().cloned().unwrap_or_default();
    assert!(!widths.is_empty(), "the dashboard shows budget bars");
    assert!(
        widths
            .iter()
            .all(|w| w.as_str().is_some_and(|w| w.ends_with('%'))),
        "{widths:?}"
    );

    browser.goto(&format!("/executions/{execution_id}")).await;
    eventually(Duration::from_secs(20), "the job's output", || async {
        let lines = browser.texts(".log-viewer .log-line:not(.log-meta)").await;
        lines.iter().any(|l| l == "done").then_some(())
    })
    .await;
    let colored = browser
        .eval(
            "const spans = Array.from(document.querySelectorAll('.log-viewer .log-line span'));\
             return spans.map(s => [s.textContent, s.className, s.style.color]);",
        )
        .await;
    assert_eq!(
        colored,
        json!([["red", "ansi-fg-1", ""], ["orange", "", "rgb(255, 135, 0)"]]),
        "classes for the 16 colors, DOM styles for the 256"
    );
    let found = violations(browser.console_messages().await);
    assert!(found.is_empty(), "execution page: {found:?}");

    browser.goto("/backups").await;
    browser
        .eval(
            "const s = document.querySelector('select[data-autosubmit]');\
             s.selectedIndex = 1; s.dispatchEvent(new Event('change'));",
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the filter submits itself",
        || async {
            let url = browser.eval("return window.location.search;").await;
            url.as_str()
                .is_some_and(|q| q.contains("project="))
                .then_some(())
        },
    )
    .await;
    let found = violations(browser.console_messages().await);
    assert!(found.is_empty(), "backups filter: {found:?}");
    browser
        .screenshot(&control_plane.artifact("csp-execution.png"))
        .await;
}

/// The shell renders in strict mode for the login shape and the signed-in shape of its
/// context, and refuses a context that lacks a contract key.
#[test]
fn shell_renders_every_contract_shape_in_strict_mode() {
    let templates = shell_templates("<p id=body>page body</p>");

    let login = templates
        .page(&login_context())
        .expect("login shape renders");
    assert!(login.contains(r#"data-bs-theme="dark""#));
    assert!(login.contains("<title>Sign in · Dynamic Servers</title>"));
    assert!(login.contains("<p id=body>page body</p>"));
    assert!(!login.contains("/logout"), "no logout without a user");
    assert!(!login.contains(r#"id="flash""#));

    let page = templates
        .page(&signed_in_context(3))
        .expect("signed-in shape renders");
    assert!(page.contains(r#"<form method="post" action="/logout""#));
    assert!(page.contains(r#"<input type="hidden" name="csrf" value="csrf-token-1">"#));
    assert!(page.contains(r#"href="/notifications""#));
    assert!(page.contains("data-unread-badge>3"));
    assert!(page.contains(r#"href="/servers" aria-current="page""#));
    assert!(page.contains("fa-solid fa-server"));
    assert!(
        page.contains(r#"data-message="Saved &lt;b&gt;nova&lt;/b&gt;""#),
        "flash message is escaped"
    );
    assert!(page.contains(" · manager"));

    let no_unread = templates
        .page(&signed_in_context(0))
        .expect("renders with no unread notifications");
    assert!(!no_unread.contains("data-unread-badge"));

    let mut missing = signed_in_context(0);
    missing
        .as_object_mut()
        .expect("context is an object")
        .remove("unread");
    assert!(
        templates.page(&missing).is_err(),
        "strict mode must refuse a context without `unread`"
    );
}

/// Assets, validation, live search, toasts, confirm dialogs, relative times and the
/// mobile navigation work in Chromium on the shell.
#[tokio::test]
async fn shell_behaviours_work_in_chromium() {
    let fixture = Fixture::start().await;
    let browser = Browser::start(&fixture.base_url).await;
    browser.goto("/page").await;

    // The flash message becomes a toast, its markup shown as text; an error toast made
    // through the API stays until dismissed.
    eventually(Duration::from_secs(5), "the flash toast", || async {
        let text = browser
            .eval(
                "const t = document.querySelector('.ds-toasts .toast[data-level=success]');\
                 return t ? t.textContent : '';",
            )
            .await;
        text.as_str()
            .is_some_and(|text| text.contains("Saved <b>nova</b>"))
            .then_some(())
    })
    .await;
    browser
        .eval("window.dynserv.toast('Heads up', '<i>body</i>', 'error');")
        .await;
    eventually(Duration::from_secs(5), "the error toast", || async {
        browser
            .texts(".ds-toasts .toast[data-level=danger]")
            .await
            .iter()
            .any(|text| text.contains("Heads up") && text.contains("<i>body</i>"))
            .then_some(())
    })
    .await;

    assert_eq!(browser.title().await, "Fixture · Dynamic Servers");
    assert_dark_background(&browser).await;
    assert_stylesheets_loaded(&browser).await;
    let icon_font = browser
        .eval(
            "return document.fonts.load('900 16px \"Font Awesome 6 Free\"')\
             .then(() => document.fonts.check('900 16px \"Font Awesome 6 Free\"'));",
        )
        .await;
    assert_eq!(
        icon_font,
        Value::Bool(true),
        "Font Awesome's webfont loads from /static"
    );

    // Live search: rows filter by text and by data-search, with a "no match" row.
    browser.fill("#search", "168.119").await;
    assert_eq!(visible_rows(&browser).await, vec!["nova-hr-web-01"]);
    browser.fill("#search", "frappe").await;
    assert_eq!(visible_rows(&browser).await, vec!["frappe-erp-01"]);
    browser.fill("#search", "zzz").await;
    assert_eq!(visible_rows(&browser).await, Vec::<String>::new());
    assert_eq!(
        browser.text("#servers tr.live-search-empty").await,
        "No match for \u{201c}zzz\u{201d}"
    );
    browser.fill("#search", "").await;
    browser
        .eval("window.dynserv.liveSearch(document.getElementById('search'));")
        .await;
    assert_eq!(visible_rows(&browser).await.len(), 2);

    // Relative time.
    let relative = browser
        .eval(
            "const t = document.getElementById('when');\
             t.setAttribute('datetime', new Date(Date.now() - 2 * 3600 * 1000).toISOString());\
             window.dynserv.refreshRelativeTimes(); return t.textContent;",
        )
        .await;
    assert_eq!(relative, json!("2 hours ago"));

    // Mobile: the sidebar collapses behind the toggler and opens on demand.
    browser
        .client()
        .set_window_size(400, 800)
        .await
        .expect("resizing the window");
    assert!(!is_displayed(&browser, "#ds-sidebar .nav-link").await);
    browser.click("button[data-bs-target='#ds-sidebar']").await;
    eventually(
        Duration::from_secs(5),
        "sidebar opens on mobile",
        || async {
            is_displayed(&browser, "#ds-sidebar .nav-link")
                .await
                .then_some(())
        },
    )
    .await;
    browser
        .screenshot(&fixture.artifact("shell-mobile.png"))
        .await;
    browser.click("#ds-sidebar .btn-close").await;
    browser
        .client()
        .set_window_size(1280, 900)
        .await
        .expect("resizing the window");
    browser.goto("/page").await;

    // Client-side validation: an empty required field blocks the submit and shows the
    // feedback beside it; a valid value submits.
    browser.click("#validated button[type=submit]").await;
    assert_eq!(browser.path().await, "/page");
    assert!(browser
        .attr("#validated", "class")
        .await
        .unwrap_or_default()
        .contains("was-validated"));
    assert!(is_displayed(&browser, "#validated .invalid-feedback").await);
    assert_eq!(
        browser.text("#validated .invalid-feedback").await,
        "Name needs at least 3 characters."
    );
    browser
        .screenshot(&fixture.artifact("shell-desktop.png"))
        .await;
    browser.fill("#name", "nova").await;
    browser.click("#validated button[type=submit]").await;
    wait_for_path(&browser, "/submitted").await;

    // Confirm dialog: cancelling keeps the page, the typed word unlocks the submit.
    browser.goto("/page").await;
    browser.click("#confirmed button[type=submit]").await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-input]")
        .await;
    let ok_disabled = browser
        .eval("return document.querySelector('[data-confirm-ok]').disabled;")
        .await;
    assert_eq!(ok_disabled, Value::Bool(true));
    browser
        .click(".modal.show button[data-bs-dismiss=modal].btn-outline-secondary")
        .await;
    eventually(Duration::from_secs(5), "the modal closes", || async {
        (!browser.exists(".modal").await).then_some(())
    })
    .await;
    assert_eq!(browser.path().await, "/page");
    browser.click("#confirmed button[type=submit]").await;
    browser
        .fill(".modal[data-confirm-ready] [data-confirm-input]", "DELETE")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    wait_for_path(&browser, "/deleted").await;
}

/// The log viewer renders ANSI colors safely, marks stderr, joins partial lines,
/// reconnects from the last seen seq without duplicating a line, and shows the end.
#[tokio::test]
async fn log_viewer_follows_reconnects_and_ends() {
    let fixture = Fixture::start().await;
    let browser = Browser::start(&fixture.base_url).await;
    browser.goto("/page").await;

    eventually(Duration::from_secs(15), "the execution ends", || async {
        let ended = browser
            .eval("return document.getElementById('log').dataset.ended || null;")
            .await;
        ended.as_str().map(str::to_string)
    })
    .await;

    assert_eq!(
        fixture.stream_requests(),
        vec![None, Some("4".to_string())],
        "the viewer reconnects once, from the seq after the last one it saw"
    );
    let lines = browser.texts("#log .log-line:not(.log-meta)").await;
    assert_eq!(
        lines,
        vec![
            "red plain",
            "warn <script>alert(1)</script>",
            "partial line done",
            "bold green",
            "last",
        ]
    );
    let first_line = browser
        .eval("return document.querySelector('#log .log-line').innerHTML;")
        .await;
    assert_eq!(
        first_line,
        json!("<span class=\"ansi-fg-1\">red</span> plain")
    );
    let injected = browser
        .eval("return document.querySelectorAll('#log script').length;")
        .await;
    assert_eq!(injected, json!(0), "log text is never parsed as HTML");
    let stderr_lines = browser.texts("#log .log-line.log-stderr").await;
    assert_eq!(stderr_lines, vec!["warn <script>alert(1)</script>"]);
    assert_eq!(browser.text("[data-log-count]").await, "5 lines");
    assert_eq!(browser.text("[data-exec-status]").await, "succeeded");
    assert_eq!(browser.text("[data-exec-exit]").await, "0");
    eventually(Duration::from_secs(5), "the end toast", || async {
        browser
            .texts(".ds-toasts .toast")
            .await
            .iter()
            .any(|text| text.contains("Execution succeeded") && text.contains("Exit code 0"))
            .then_some(())
    })
    .await;
    assert!(browser
        .eval("return document.querySelector('[data-log-follow]').checked;")
        .await
        .as_bool()
        .unwrap_or(false));
    browser
        .screenshot(&fixture.artifact("log-viewer.png"))
        .await;

    // Follow: new lines keep the view at the end; scrolling up pauses following and new
    // lines then leave the view where the reader put it; the end resumes it.
    let follow = browser
        .eval(
            "const viewer = window.dynserv.logViewers[0];\
             const body = document.querySelector('#log [data-log-body]');\
             const more = (from) => { for (let i = 0; i < 200; i++) \
               viewer.handle({seq: from + i, stream: 'stdout', data: 'more ' + i + '\\n'}); \
               viewer.flush(); };\
             const atEnd = () => body.scrollHeight - body.scrollTop - body.clientHeight < 24;\
             const follow = () => document.querySelector('#log [data-log-follow]').checked;\
             more(100); const followed = atEnd();\
             body.scrollTop = 0; body.dispatchEvent(new Event('scroll'));\
             const paused = !follow();\
             more(300); const stayed = body.scrollTop === 0;\
             body.scrollTop = body.scrollHeight; body.dispatchEvent(new Event('scroll'));\
             return [followed, paused, stayed, follow()];",
        )
        .await;
    assert_eq!(follow, json!([true, true, true, true]));
}

/// The log viewer keeps up with a 20,000-line job: every line shown once, stderr
/// marked, the end shown, within a time a person would wait. The job had already
/// ended when the page opened (a past execution reopened), so no toast pops up.
#[tokio::test]
async fn log_viewer_keeps_up_with_twenty_thousand_lines() {
    let fixture = Fixture::start().await;
    let browser = Browser::start(&fixture.base_url).await;
    let started = std::time::Instant::now();
    browser.goto("/big").await;
    eventually(
        Duration::from_secs(60),
        "the big execution ends",
        || async {
            let ended = browser
                .eval("return document.getElementById('log').dataset.ended || null;")
                .await;
            ended.as_str().map(str::to_string)
        },
    )
    .await;
    let elapsed = started.elapsed();
    eprintln!("20,000 lines rendered in {elapsed:?}");
    let counts = browser
        .eval(
            "const lines = document.querySelectorAll('#log .log-line:not(.log-meta)');\
             return [lines.length, document.querySelectorAll('#log .log-line.log-stderr').length,\
                     lines[0].textContent, lines[lines.length - 1].textContent,\
                     document.querySelector('[data-log-count]').textContent];",
        )
        .await;
    let stderr_lines = BIG_LOG_LINES / 7;
    // Lines are shown in arrival order: each frame's stdout part, then its stderr part,
    // so the last line is the last frame's last stderr line, 19999 = 7 x 2857.
    let last_line = "line 19999 on stderr";
    assert_eq!(
        counts,
        json!([
            BIG_LOG_LINES,
            stderr_lines,
            "line 1",
            last_line,
            "20000 lines"
        ])
    );
    assert_eq!(browser.text("[data-exec-status]").await, "failed");
    assert_eq!(browser.text("[data-exec-exit]").await, "3");
    let end_toasts = browser
        .eval(
            "return Array.from(document.querySelectorAll('.ds-toasts .toast'))\
             .filter(t => t.textContent.includes('Execution')).length;",
        )
        .await;
    assert_eq!(
        end_toasts,
        json!(0),
        "reopening a finished execution shows no end toast"
    );
    assert!(
        elapsed < Duration::from_secs(45),
        "20,000 lines took {elapsed:?} to render"
    );
}

// ---- helpers ----------------------------------------------------------------------

async fn assert_dark_background(browser: &Browser) {
    let background = browser
        .eval("return getComputedStyle(document.body).backgroundColor;")
        .await;
    let background = background.as_str().unwrap_or_default().to_string();
    let channels: Vec<u32> = background
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .take(3)
        .filter_map(|channel| channel.trim().parse().ok())
        .collect();
    assert_eq!(channels.len(), 3, "background color: {background}");
    assert!(
        channels.iter().all(|&channel| channel < 60),
        "the page background is dark, got {background}"
    );
}

async fn assert_stylesheets_loaded(browser: &Browser) {
    let loaded = browser
        .eval(
            "return Array.from(document.styleSheets)\
             .map(s => { try { return [s.href, s.cssRules.length]; } catch (e) { return [s.href, -1]; } });",
        )
        .await;
    let sheets = loaded.as_array().cloned().unwrap_or_default();
    for name in ["bootstrap.min.css", "all.min.css", "app.css"] {
        let found = sheets.iter().any(|sheet| {
            sheet[0].as_str().is_some_and(|href| href.ends_with(name))
                && sheet[1].as_i64().unwrap_or(0) > 0
        });
        assert!(found, "stylesheet {name} did not load: {loaded}");
    }
    let bootstrap_js = browser
        .eval("return typeof window.bootstrap === 'object' && typeof window.dynserv === 'object';")
        .await;
    assert_eq!(
        bootstrap_js,
        Value::Bool(true),
        "bootstrap and app.js loaded"
    );
}

async fn visible_rows(browser: &Browser) -> Vec<String> {
    browser
        .texts("#servers tbody tr:not(.live-search-hidden):not(.live-search-empty) td:first-child")
        .await
}

async fn is_displayed(browser: &Browser, css: &str) -> bool {
    match browser.all(css).await.first() {
        Some(element) => element.is_displayed().await.unwrap_or(false),
        None => false,
    }
}

async fn wait_for_path(browser: &Browser, path: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("navigation to {path}"),
        || async { (browser.path().await == path).then_some(()) },
    )
    .await;
}

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The shell as the control plane's renderer uses it (strict mode, `shell`), around a
/// page template `body`.
struct ShellTemplates {
    templates: Handlebars<'static>,
}

impl ShellTemplates {
    /// Renders the page as `Render::page` does: the body with the context, then the
    /// shell with the context and the body's HTML as `body`.
    fn page(&self, context: &Value) -> Result<String, handlebars::RenderError> {
        let body = self.templates.render("body", context)?;
        let mut shell = context.clone();
        shell["body"] = Value::String(body);
        self.templates.render("shell", &shell)
    }
}

fn shell_templates(body: &str) -> ShellTemplates {
    let mut templates = Handlebars::new();
    templates.set_strict_mode(true);
    let shell = std::fs::read_to_string(repo_path("web/templates/shell.hbs"))
        .expect("reading web/templates/shell.hbs");
    templates
        .register_template_string("shell", shell)
        .expect("the shell parses");
    templates
        .register_template_string("body", body)
        .expect("the page parses");
    ShellTemplates { templates }
}

fn login_context() -> Value {
    json!({"title": "Sign in", "user": null, "nav": [], "csrf": "csrf-login", "flash": null, "unread": 0})
}

fn signed_in_context(unread: u64) -> Value {
    json!({
        "title": "Fixture",
        "user": {"username": "sohila", "role": "technical", "is_manager": true},
        "nav": [
            {"label": "Dashboard", "href": "/", "icon": "fa-gauge-high", "active": false},
            {"label": "Servers", "href": "/servers", "icon": "fa-server", "active": true},
            {"label": "Executions", "href": "/executions", "icon": "fa-terminal", "active": false},
        ],
        "csrf": "csrf-token-1",
        "flash": {"level": "success", "message": "Saved <b>nova</b>"},
        "unread": unread,
    })
}

const FIXTURE_BODY: &str = r##"
<div class="ds-page-header">
  <h1>Fixture</h1>
  <div>Status <span class="badge text-bg-secondary" data-exec-status>queued</span>
       exit <span data-exec-exit>—</span></div>
</div>
<div class="card mb-3"><div class="card-body">
  <input id="search" class="form-control ds-search mb-2" type="search" placeholder="Search servers"
         data-live-search="#servers">
  <table id="servers" class="table table-hover">
    <thead><tr><th>Name</th><th>IPv4</th></tr></thead>
    <tbody>
      <tr data-search="nova-hr-web-01 168.119.249.64 nova hr"><td>nova-hr-web-01</td><td>(hidden ip)</td></tr>
      <tr><td>frappe-erp-01</td><td>10.0.0.2</td></tr>
    </tbody>
  </table>
  <time id="when" data-relative datetime="2026-01-01T00:00:00Z">2026-01-01</time>
</div></div>
<form id="validated" class="needs-validation mb-3" method="post" action="/submitted" novalidate>
  <div class="mb-3">
    <label class="form-label" for="name">Name</label>
    <input id="name" name="name" class="form-control" required minlength="3">
    <div class="invalid-feedback">Name needs at least 3 characters.</div>
  </div>
  <button type="submit" class="btn btn-primary">Save</button>
</form>
<form id="confirmed" class="mb-3" method="post" action="/deleted"
      data-confirm="Delete server nova-hr-web-01?" data-confirm-type="DELETE">
  <button type="submit" class="btn btn-danger">Delete</button>
</form>
<div id="log" class="log-viewer" data-stream-url="/api/v1/executions/e1/stream"
     data-log-url="/api/v1/executions/e1/log"></div>
"##;

const BIG_LOG_BODY: &str = r##"
<span class="badge" data-exec-status="failed">failed</span> <span data-exec-exit>—</span>
<div id="log" class="log-viewer" data-stream-url="/api/v1/executions/big/stream"></div>
"##;

/// Lines in the big execution: the size of the fleet issue's stress job.
const BIG_LOG_LINES: usize = 20_000;

/// A loopback web server with the real static assets, the shell-rendered fixture page,
/// two form targets and a scripted execution stream.
struct Fixture {
    base_url: String,
    stream_requests: Arc<Mutex<Vec<Option<String>>>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let page = shell_templates(FIXTURE_BODY)
            .page(&signed_in_context(2))
            .expect("fixture page renders");
        let stream_requests: Arc<Mutex<Vec<Option<String>>>> = Arc::default();

        let static_files = warp::path("static").and(warp::fs::dir(repo_path("web/static")));
        let page_route = warp::path("page")
            .and(warp::path::end())
            .map(move || warp::reply::html(page.clone()));
        let big_page = shell_templates(BIG_LOG_BODY)
            .page(&signed_in_context(0))
            .expect("big log page renders");
        let big_route = warp::path("big")
            .and(warp::path::end())
            .map(move || warp::reply::html(big_page.clone()));
        let submitted = warp::post()
            .and(warp::path("submitted"))
            .map(|| warp::reply::html("<!doctype html><title>submitted</title>ok"));
        let deleted = warp::post()
            .and(warp::path("deleted"))
            .map(|| warp::reply::html("<!doctype html><title>deleted</title>ok"));
        let requests = stream_requests.clone();
        let stream = warp::path!("api" / "v1" / "executions" / String / "stream")
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::ws())
            .map(
                move |id: String, query: HashMap<String, String>, ws: warp::ws::Ws| {
                    let big = id == "big";
                    let connection = if big {
                        0
                    } else {
                        let mut requests = requests.lock().expect("lock");
                        requests.push(query.get("from_seq").cloned());
                        requests.len()
                    };
                    ws.on_upgrade(move |socket| async move {
                        if big {
                            play_big_stream(socket).await;
                        } else {
                            play_stream(socket, connection).await;
                        }
                    })
                },
            );
        let routes = static_files
            .or(page_route)
            .or(big_route)
            .or(submitted)
            .or(deleted)
            .or(stream);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("the fixture binds a port");
        let address = listener.local_addr().expect("the fixture's address");
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        Fixture {
            base_url: format!("http://{address}"),
            stream_requests,
            dir: tempfile::Builder::new()
                .prefix("dynserv-ui-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn stream_requests(&self) -> Vec<Option<String>> {
        self.stream_requests.lock().expect("lock").clone()
    }

    fn artifact(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if dynserv_tests::keep_artifacts() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept the fixture's artifacts: {}", dir.keep().display());
        }
    }
}

/// The first connection sends three frames (the last a partial line) and drops; the
/// second replays seq 3 (which the viewer must ignore), finishes and ends.
async fn play_stream(mut socket: warp::ws::WebSocket, connection: usize) {
    let frames: Vec<Value> = if connection == 1 {
        vec![
            json!({"seq": 1, "stream": "stdout", "data": "\u{1b}[31mred\u{1b}[0m plain\n"}),
            json!({"seq": 2, "stream": "stderr", "data": "warn <script>alert(1)</script>\n"}),
            json!({"seq": 3, "stream": "stdout", "data": "partial "}),
        ]
    } else {
        vec![
            json!({"seq": 3, "stream": "stdout", "data": "partial "}),
            json!({"seq": 4, "stream": "stdout", "data": "line done\n\u{1b}[1;32mbold green\u{1b}[0m\n"}),
            json!({"seq": 5, "stream": "stdout", "data": "last\r\n"}),
            json!({"end": {"status": "succeeded", "exit_code": 0}}),
        ]
    };
    for frame in frames {
        if socket
            .send(warp::ws::Message::text(frame.to_string()))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = socket.close().await;
}

/// 20,000 lines in 2,000 frames of 10, every seventh line on stderr and every fifth in
/// color, as fast as the socket takes them; then the end.
async fn play_big_stream(mut socket: warp::ws::WebSocket) {
    let lines_per_frame = 10;
    for frame_index in 0..BIG_LOG_LINES / lines_per_frame {
        let mut stdout = String::new();
        let mut stderr = String::new();
        for line in frame_index * lines_per_frame..(frame_index + 1) * lines_per_frame {
            let number = line + 1;
            if number % 7 == 0 {
                stderr.push_str(&format!("line {number} on stderr\n"));
            } else if number % 5 == 0 {
                stdout.push_str(&format!("\u{1b}[32mline {number}\u{1b}[0m\n"));
            } else {
                stdout.push_str(&format!("line {number}\n"));
            }
        }
        let seq = frame_index * 2 + 1;
        for (offset, stream, data) in [(0, "stdout", stdout), (1, "stderr", stderr)] {
            let frame = json!({"seq": seq + offset, "stream": stream, "data": data});
            if socket
                .send(warp::ws::Message::text(frame.to_string()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let end = json!({"end": {"status": "failed", "exit_code": 3}});
    let _ = socket.send(warp::ws::Message::text(end.to_string())).await;
    let _ = socket.close().await;
}
