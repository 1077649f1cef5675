//! The business side in a real headless Chromium: a sales agent files a server request
//! through the form (refused first by the browser, then by the server, with the
//! message beside the field), an admin approves it in a second browser, and the sales
//! agent's open request page follows without a reload, a toast announces it, the bell
//! counts it and the inbox links back to the request.

use std::time::Duration;

use dynserv_tests::{eventually, Browser, ControlPlane};
use serde_json::Value;

/// Scrolls the element into the middle of the viewport, then clicks it as a user would.
async fn press(browser: &Browser, css: &str) {
    browser.wait_for(css).await;
    browser
        .eval(&format!(
            "document.querySelector({css:?}).scrollIntoView({{block: 'center', behavior: 'instant'}});"
        ))
        .await;
    browser.click(css).await;
}

/// The request page's status badge, read in one script so a navigation in between
/// cannot leave a stale element behind.
async fn request_status(browser: &Browser) -> String {
    browser
        .eval("const s = document.getElementById('request-status'); return s ? s.textContent.trim() : '';")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn unread_on_bell(browser: &Browser) -> u64 {
    browser
        .attr(".ds-bell", "data-unread")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the bell has a data-unread count"))
}

/// A request walks from submission by `sales` to approval by `admin`, and the
/// requester sees it happen live: the steps, a toast, the unread badge, the inbox.
#[tokio::test]
async fn request_from_submission_to_approval() {
    let cp = ControlPlane::start_demo().await;
    let sales = Browser::start(&cp.base_url()).await;
    sales.login("sales", "sales123").await;
    assert!(sales
        .texts("[data-nav] .nav-link span")
        .await
        .iter()
        .any(|l| l == "Requests"));

    // The browser refuses an empty form before anything is sent.
    sales.goto("/requests/new").await;
    press(&sales, "#submit-request").await;
    assert_eq!(sales.path().await, "/requests/new");
    let class = sales
        .attr("#request-form", "class")
        .await
        .unwrap_or_default();
    assert!(class.contains("was-validated"), "{class}");
    let invalid = sales
        .eval("return document.querySelector('#client_name').matches(':invalid');")
        .await;
    assert_eq!(invalid, Value::Bool(true));

    // The server refuses an address the browser accepts, beside the field.
    sales.fill("#client_name", "Browser Bakery").await;
    sales.fill("#client_email", "owner@bakery").await;
    sales.fill("#purpose", "Online orders").await;
    sales
        .eval("document.getElementById('project').value = 'Nova HR';")
        .await;
    sales.fill("#server_type", "cx21").await;
    sales.fill("#location", "fsn1").await;
    sales.fill("#image", "ubuntu-22.04").await;
    sales.fill("#cpu_cores", "2").await;
    sales.fill("#ram_gb", "4").await;
    sales.fill("#monthly_budget", "9.50").await;
    press(&sales, "#submit-request").await;
    sales.wait_for("#client_email.is-invalid").await;
    let feedback = sales
        .eval("return document.querySelector('#client_email').parentElement.querySelector('.invalid-feedback').textContent;")
        .await;
    assert!(
        feedback
            .as_str()
            .unwrap_or_default()
            .contains("not a valid e-mail address"),
        "{feedback}"
    );
    let kept = sales
        .eval("return document.getElementById('client_name').value;")
        .await;
    assert_eq!(kept, Value::String("Browser Bakery".into()));

    // Fixed, it is filed and its page shows the first step.
    sales.fill("#client_email", "owner@bakery.example").await;
    sales
        .eval("document.getElementById('project').value = 'Nova HR';")
        .await;
    press(&sales, "#submit-request").await;
    sales.wait_for("#request-page").await;
    let request_path = sales.path().await;
    assert!(request_path.starts_with("/requests/"), "{request_path}");
    assert_eq!(request_status(&sales).await, "pending");
    assert_eq!(sales.all("#request-history li").await.len(), 1);
    let bell_before = unread_on_bell(&sales).await;
    // A marker that a reload would wipe.
    sales.eval("window.__stillHere = true;").await;

    // The admin approves it in another browser, from the dashboard's pending list.
    let admin = Browser::start(&cp.base_url()).await;
    admin.login("admin", "admin123").await;
    let pending = admin.text("#pending-approvals").await;
    assert!(pending.contains("Browser Bakery"), "{pending}");
    admin.goto(&request_path).await;
    admin.fill("#approve-note", "Looks good").await;
    press(&admin, "#approve-button").await;
    eventually(
        Duration::from_secs(10),
        "the admin sees it approved",
        || async { (request_status(&admin).await == "approved").then_some(()) },
    )
    .await;

    // The sales agent's page follows without a reload.
    eventually(
        Duration::from_secs(15),
        "the requester's page shows the approval",
        || async { (request_status(&sales).await == "approved").then_some(()) },
    )
    .await;
    let step = sales.text("#request-history [data-step=approve]").await;
    assert!(step.contains("admin"), "{step}");
    assert!(step.contains("Looks good"), "{step}");
    assert_eq!(
        sales.eval("return window.__stillHere === true;").await,
        Value::Bool(true),
        "the page was not reloaded"
    );

    // A toast and the bell announce it.
    let toast = eventually(Duration::from_secs(15), "a notification toast", || async {
        let text = sales
            .eval("const t = document.querySelector('[data-notification-toast]'); return t ? t.textContent : null;")
            .await;
        text.as_str().map(str::to_string)
    })
    .await;
    assert!(toast.contains("Browser Bakery approved"), "{toast}");
    eventually(Duration::from_secs(15), "the bell counts it", || async {
        (unread_on_bell(&sales).await > bell_before).then_some(())
    })
    .await;
    sales
        .screenshot(&cp.artifact("request-approved-live.png"))
        .await;

    // The inbox lists it first and links to the request, marking it read.
    sales.goto("/notifications").await;
    let first = sales.text("#inbox li [data-notification-title]").await;
    assert!(first.contains("Browser Bakery approved"), "{first}");
    press(&sales, "#inbox li [data-notification-title]").await;
    sales.wait_for("#request-page").await;
    assert_eq!(sales.path().await, request_path);
    assert_eq!(unread_on_bell(&sales).await, bell_before);
}

/// An admin marks a request deployed in the browser by typing an existing server's
/// name; the sales agent then finds the proposed subscription on the request page,
/// reviews the prefilled form (searching the server picker keeps the chosen server),
/// saves it, and reads the client's monthly statement with it.
#[tokio::test]
async fn deployed_request_to_subscription_and_statement() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("sales");
    let (status, request) = api
        .post(
            "/api/v1/requests",
            &serde_json::json!({"client_name": "Hooli", "client_email": "it@hooli.example",
                "purpose": "search", "project": "Frappe ERP", "server_type": "cx41",
                "location": "hel1", "image": "ubuntu-24.04", "margin_percent": 25}),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    let id = request["id"].as_str().unwrap().to_string();
    let (status, _) = cp
        .api_as("admin")
        .post_empty(&format!("/api/v1/requests/{id}/approve"))
        .await;
    assert_eq!(status, 200);

    let admin = Browser::start(&cp.base_url()).await;
    admin.login("admin", "admin123").await;
    admin.goto(&format!("/requests/{id}")).await;
    let offered = admin
        .eval("return Array.from(document.querySelectorAll('#project-servers option')).map(o => o.value);")
        .await;
    assert!(
        offered
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "frappe-erp-db-01"),
        "{offered}"
    );
    admin.fill("#deployed-server", "no-such-server").await;
    press(&admin, "#deployed-form button[type=submit]").await;
    admin.wait_for("#deployed-server.is-invalid").await;
    admin.fill("#deployed-server", "frappe-erp-db-01").await;
    press(&admin, "#deployed-form button[type=submit]").await;
    eventually(
        Duration::from_secs(10),
        "the request is deployed",
        || async { (request_status(&admin).await == "deployed").then_some(()) },
    )
    .await;

    let sales = Browser::start(&cp.base_url()).await;
    sales.login("sales", "sales123").await;
    sales.goto(&format!("/requests/{id}")).await;
    let price = sales.text("#proposal-price").await;
    assert_eq!(price, "EUR 23.65", "18.92 plus 25 %");
    press(&sales, "#proposal-create").await;
    sales.wait_for("#subscription-form").await;
    assert_eq!(
        sales
            .eval("return document.getElementById('monthly_cost').value;")
            .await,
        Value::String("23.65".into())
    );
    // Searching the picker hides other servers but never the chosen one.
    sales
        .fill("#server-search", "no server is called this")
        .await;
    let visible = sales
        .eval("return Array.from(document.querySelectorAll('#server_ids option')).filter(o => !o.hidden).map(o => o.textContent);")
        .await;
    let visible: Vec<&str> = visible
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(visible.len(), 1, "{visible:?}");
    assert!(visible[0].starts_with("frappe-erp-db-01"), "{visible:?}");
    press(&sales, "#save-subscription").await;
    eventually(
        Duration::from_secs(10),
        "the subscription is saved",
        || async { (sales.path().await == "/subscriptions").then_some(()) },
    )
    .await;

    let (_, request) = api.get(&format!("/api/v1/requests/{id}")).await;
    let client = request["client_id"].as_str().unwrap().to_string();
    sales.goto(&format!("/clients/{client}")).await;
    press(&sales, "#statement-link").await;
    sales.wait_for("#statement-lines").await;
    let total = sales.text("[data-total=EUR]").await;
    assert!(total.contains("Total EUR"), "{total}");
    let servers = sales.text("#statement-lines tbody").await;
    assert!(servers.contains("frappe-erp-db-01"), "{servers}");
    sales.screenshot(&cp.artifact("client-statement.png")).await;
}
