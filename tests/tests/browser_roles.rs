//! The foundation in a real headless Chromium: each demo role logs in and sees the
//! navigation made for it; a form with invalid input shows its message beside the
//! field, both from the browser's own validation and from the server's; live search
//! filters a list as one types.

use dynserv_tests::{Browser, ControlPlane};

/// The nav labels a page shows, in order.
async fn nav_labels(browser: &Browser) -> Vec<String> {
    browser.texts("[data-nav] .nav-link span").await
}

/// Each demo role logs in through the form and sees exactly its navigation.
#[tokio::test]
async fn each_role_sees_its_navigation() {
    let cp = ControlPlane::start_demo().await;
    let browser = Browser::start(&cp.base_url()).await;
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "admin",
            "admin123",
            &[
                "Dashboard",
                "Servers",
                "Agents",
                "Executions",
                "Projects",
                "Project access",
                "Users",
                "Audit log",
            ],
        ),
        (
            "tech",
            "tech123",
            &[
                "Dashboard",
                "Servers",
                "Agents",
                "Executions",
                "Projects",
                "Project access",
            ],
        ),
        ("sales", "sales123", &["Dashboard", "Projects"]),
        (
            "sohila",
            "sohila123",
            &["Dashboard", "Servers", "Agents", "Executions", "Projects"],
        ),
    ];
    for (username, password, expected) in cases {
        browser.login(username, password).await;
        assert_eq!(browser.path().await, "/");
        let labels = nav_labels(&browser).await;
        for want in expected {
            assert!(
                labels.iter().any(|l| l == want),
                "{username} lacks {want} in {labels:?}"
            );
        }
        for forbidden in ["Users", "Audit log", "Project access", "Servers"] {
            if !expected.contains(&forbidden) {
                assert!(
                    !labels.iter().any(|l| l == forbidden),
                    "{username} must not see {forbidden}: {labels:?}"
                );
            }
        }
        assert!(browser.text("#role-badge").await.len() > 3);
        browser
            .screenshot(&cp.artifact(&format!("dashboard-{username}.png")))
            .await;
        browser.logout().await;
        assert_eq!(browser.path().await, "/login");
    }
}

/// The new-user form refuses bad input twice over: the browser's validation shows the
/// message beside the field before anything is sent, and the server's answer (for
/// what only it can know: a taken username, an address without a dotted domain that
/// `type=email` lets through) re-renders the form once with every bad field marked
/// and its message beside it, the typed values kept.
#[tokio::test]
async fn form_errors_show_beside_the_field() {
    let cp = ControlPlane::start_demo().await;
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("admin", "admin123").await;

    browser.goto("/users/new").await;
    browser.fill("#username", "ab").await;
    browser.fill("#password", "short").await;
    browser.click("#user-form button[type=submit]").await;
    assert_eq!(
        browser.path().await,
        "/users/new",
        "the browser kept the invalid form"
    );
    assert!(
        browser.exists("#user-form.was-validated").await,
        "validation styles are on"
    );
    let shown = browser
        .eval("return getComputedStyle(document.querySelector('#password-feedback')).display;")
        .await;
    assert_ne!(
        shown, "none",
        "the password message is visible beside its field"
    );

    browser.fill("#username", "sohila").await;
    browser.fill("#full_name", "Second Sohila").await;
    browser.fill("#email", "sohila@localhost").await;
    browser.fill("#password", "long-enough-1").await;
    let passes_browser = browser
        .eval("return document.querySelector('#user-form').checkValidity();")
        .await;
    assert_eq!(
        passes_browser, true,
        "only the server can refuse these values"
    );
    browser
        .submit_and_wait_for_next_page("#user-form button[type=submit]")
        .await;
    assert_eq!(browser.path().await, "/users/new");
    assert!(browser.exists("#username.is-invalid").await);
    assert!(browser.exists("#email.is-invalid").await);
    assert!(!browser.exists("#full_name.is-invalid").await);
    let message = browser.text("#username-feedback").await;
    assert!(message.contains("username sohila is taken"), "{message}");
    let message = browser.text("#email-feedback").await;
    assert!(message.contains("not a valid e-mail address"), "{message}");
    for (css, typed) in [
        ("#username", "sohila"),
        ("#full_name", "Second Sohila"),
        ("#email", "sohila@localhost"),
    ] {
        assert_eq!(
            browser.attr(css, "value").await.as_deref(),
            Some(typed),
            "{css} keeps what was typed"
        );
    }
    browser
        .screenshot(&cp.artifact("user-form-error.png"))
        .await;
}

/// Typing into the server list's search box hides the rows that do not match.
#[tokio::test]
async fn live_search_filters_the_server_list() {
    let cp = ControlPlane::start_demo().await;
    let browser = Browser::start(&cp.base_url()).await;
    browser.login("sohila", "sohila123").await;
    browser.goto("/servers").await;
    let visible = "return [...document.querySelectorAll('#servers-table tbody tr')].filter(r => r.offsetParent !== null && !r.hasAttribute('data-no-match')).map(r => r.cells[0].innerText.trim());";
    let all = browser.eval(visible).await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    browser.fill("#server-search", "backup").await;
    let mut filtered = browser.eval(visible).await;
    for _ in 0..20 {
        if filtered.as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        filtered = browser.eval(visible).await;
    }
    assert_eq!(filtered, serde_json::json!(["nova-hr-backup-01"]));
}
