//! The business side at its boundaries, on the real `dynserv` binary with the demo
//! seed: the server request workflow and its permissions over the JSON API (409 for a
//! move the workflow forbids, 422 naming the field), notifications, subscriptions,
//! revenue kept per currency, and the pages for every role.

use dynserv_tests::{csrf_of, Api, ControlPlane, PageClient};
use serde_json::{json, Value};

/// The `data-unread` count of the shell's bell.
fn unread_badge(html: &str) -> u64 {
    let start = html.find("data-unread=\"").expect("the shell has a bell") + 13;
    html[start..].split('"').next().unwrap().parse().unwrap()
}

fn request_body(client: &str, project: &str, budget: f64) -> Value {
    json!({
        "client_name": client,
        "client_email": "ops@client.example",
        "purpose": "web shop",
        "project": project,
        "server_type": "cx21",
        "location": "fsn1",
        "image": "ubuntu-22.04",
        "cpu_cores": 2,
        "ram_gb": 4,
        "disk_gb": 40,
        "monthly_budget": budget,
        "notes": "needs backups",
    })
}

async fn file_request(api: &Api, client: &str, project: &str, budget: f64) -> String {
    let (status, body) = api
        .post("/api/v1/requests", &request_body(client, project, budget))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "pending");
    body["id"].as_str().unwrap().to_string()
}

async fn unread_titles(api: &Api) -> Vec<String> {
    let (status, list) = api.get("/api/v1/notifications?unread=1").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap().to_string())
        .collect()
}

/// A request walks pending → approved → deployed (by hand: the demo projects have no
/// Hetzner token); each step is in its history, forbidden moves answer 409 with the
/// reason, non-admins 403, and the requester is notified with a link to the request.
#[tokio::test]
async fn request_workflow_and_permissions() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    let sales = cp.api_as("sales");
    let tech = cp.api_as("tech");
    let sohila = cp.api_as("sohila");

    let id = file_request(&sales, "Acme Shop", "Nova HR", 6.0).await;
    let path = format!("/api/v1/requests/{id}");
    let (status, request) = sales.get(&path).await;
    assert_eq!(status, 200);
    assert_eq!(request["project"], "Nova HR");
    assert_eq!(request["history"][0]["by"], "sales");
    assert_eq!(request["cpu_cores"], 2);
    assert!(unread_titles(&admin)
        .await
        .iter()
        .any(|t| t.contains("New server request from sales for Acme Shop")));

    // Who may see and move it.
    let (status, list) = sales.get("/api/v1/requests").await;
    assert_eq!(status, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == id.as_str()));
    assert_eq!(tech.get("/api/v1/requests").await.0, 403);
    assert_eq!(tech.get(&path).await.0, 403);
    assert_eq!(
        sohila
            .post("/api/v1/requests", &request_body("X", "Nova HR", 1.0))
            .await
            .0,
        403
    );
    let (status, body) = sales.post(&format!("{path}/approve"), &json!({})).await;
    assert_eq!(status, 403, "sales cannot approve: {body}");
    assert_eq!(
        tech.post(&format!("{path}/reject"), &json!({"reason": "no"}))
            .await
            .0,
        403
    );

    // Approve with a note; a second approval and a rejection now conflict.
    let (status, approved) = admin
        .post(&format!("{path}/approve"), &json!({"note": "go ahead"}))
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["history"][1]["note"], "go ahead");
    assert_eq!(approved["history"][1]["by"], "admin");
    let (status, body) = admin.post_empty(&format!("{path}/approve")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("approved request cannot be approved"));
    let (status, body) = admin
        .post(&format!("{path}/reject"), &json!({"reason": "late"}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = admin.post_empty(&format!("{path}/retry")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Hetzner token"));

    // The requester hears of it, with a link to the request.
    let (_, inbox) = sales.get("/api/v1/notifications").await;
    let news = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["title"].as_str().unwrap().contains("Acme Shop approved"))
        .cloned()
        .unwrap_or_else(|| panic!("no approval notification in {inbox}"));
    assert_eq!(news["link"], format!("/requests/{id}"));
    assert_eq!(news["read"], false);
    assert!(news["body"].as_str().unwrap().contains("go ahead"));
    let about = |titles: Vec<String>| {
        titles
            .into_iter()
            .filter(|t| t.contains("Acme Shop"))
            .count()
    };
    assert_eq!(about(unread_titles(&sales).await), 1);

    // Marking read: only one's own.
    let news_id = news["id"].as_str().unwrap();
    assert_eq!(
        admin
            .post_empty(&format!("/api/v1/notifications/{news_id}/read"))
            .await
            .0,
        404
    );
    let (status, read) = sales
        .post_empty(&format!("/api/v1/notifications/{news_id}/read"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(read["read"], true);
    assert_eq!(about(unread_titles(&sales).await), 0);
    let (status, body) = sales.post_empty("/api/v1/notifications/read_all").await;
    assert_eq!(status, 200);
    assert!(body["marked"].as_u64().is_some(), "{body}");
    let (_, unread) = sales.get("/api/v1/notifications/unread").await;
    assert_eq!(unread["unread"], 0);

    // By hand to deployed; then nothing moves it any more.
    let (status, deployed) = admin
        .post(&format!("{path}/deployed"), &json!({"note": "installed"}))
        .await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["status"], "deployed");
    let actions: Vec<&str> = deployed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["submit", "approve", "mark_deployed"]);
    assert_eq!(admin.post_empty(&format!("{path}/deployed")).await.0, 409);
    let (status, audit) = admin.get("/api/v1/audit?q=request.").await;
    assert_eq!(status, 200);
    assert!(audit.as_array().unwrap().len() >= 3);
    assert!(unread_titles(&sales)
        .await
        .iter()
        .any(|t| t.contains("Acme Shop marked deployed")));

    // Filter by status.
    let (_, deployed_list) = admin.get("/api/v1/requests?status=deployed").await;
    assert!(deployed_list
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "deployed"));
    // An unknown filter value is a 400 (CONTRACT.md "Lists"), never ignored.
    assert_eq!(admin.get("/api/v1/requests?status=bogus").await.0, 400);
    assert_eq!(admin.get("/api/v1/requests/nope").await.0, 404);
    assert_eq!(
        admin.post_empty("/api/v1/requests/nope/approve").await.0,
        404
    );
}

/// Bad input is refused: 422 naming the field (every bad field when there are
/// several), 400 for unknown or malformed JSON; a rejection needs a reason.
#[tokio::test]
async fn request_input_is_validated() {
    let cp = ControlPlane::start_demo().await;
    let sales = cp.api_as("sales");
    let admin = cp.api_as("admin");
    let cases = [
        ("client_name", json!("")),
        ("client_email", json!("not-an-address")),
        ("purpose", json!("   ")),
        ("project", json!("No Such Project")),
        ("server_type", json!("cx 21")),
        ("location", json!("")),
        ("cpu_cores", json!(0)),
        ("monthly_budget", json!(-5)),
    ];
    for (field, value) in cases {
        let mut body = request_body("Acme", "Nova HR", 5.0);
        body[field] = value;
        let (status, answer) = sales.post("/api/v1/requests", &body).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    // Three bad fields at once are all named: `field` and `error` the first (as
    // before), `errors` every one with its message.
    let mut body = request_body("Acme", "Nova HR", 5.0);
    body["client_email"] = json!("ops@acme");
    body["project"] = json!("No Such Project");
    body["cpu_cores"] = json!(0);
    let (status, answer) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "client_email", "{answer}");
    assert_eq!(
        answer["error"], "Client email is not a valid e-mail address",
        "{answer}"
    );
    assert_eq!(
        answer["errors"],
        json!({
            "client_email": "Client email is not a valid e-mail address",
            "project": "there is no project named No Such Project",
            "cpu_cores": "Cpu cores must be between 1 and 512",
        }),
        "{answer}"
    );
    let mut unknown = request_body("Acme", "Nova HR", 5.0);
    unknown["colour"] = json!("blue");
    assert_eq!(sales.post("/api/v1/requests", &unknown).await.0, 400);
    let (status, _) = sales
        .send_raw(
            reqwest::Method::POST,
            "/api/v1/requests",
            "application/json",
            "{not json",
        )
        .await;
    assert_eq!(status, 400);

    let id = file_request(&sales, "Acme", "Nova HR", 5.0).await;
    let (status, body) = admin
        .post(&format!("/api/v1/requests/{id}/reject"), &json!({}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "reason");
    let (status, body) = admin
        .post(
            &format!("/api/v1/requests/{id}/reject"),
            &json!({"reason": "no budget"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["history"][1]["note"], "no budget");
}

/// An admin may not approve their own request (409 with the reason); another admin
/// may. Approval over the project's budget carries a warning.
#[tokio::test]
async fn own_requests_and_budget_warning() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("boss", "admin", false, "boss-password-1");
    let admin = cp.api_as("admin");
    let boss = cp.api_as("boss");

    let own = file_request(&admin, "Own Co", "Nova HR", 1.0).await;
    let (status, body) = admin
        .post_empty(&format!("/api/v1/requests/{own}/approve"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("your own request"));
    let (status, body) = boss
        .post_empty(&format!("/api/v1/requests/{own}/approve"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["budget_warning"],
        Value::Null,
        "1 EUR fits Nova HR's budget"
    );

    // Django Projects: budget 40, servers 5.83 + 3.29; a 35 EUR server is too much.
    let sales = cp.api_as("sales");
    let big = file_request(&sales, "Big Co", "Django Projects", 35.0).await;
    let (status, body) = admin
        .post_empty(&format!("/api/v1/requests/{big}/approve"))
        .await;
    assert_eq!(status, 200, "{body}");
    let warning = body["budget_warning"].as_str().expect("a budget warning");
    assert!(warning.contains("Django Projects"), "{warning}");
    assert!(warning.contains("€44.12"), "{warning}");
    let (_, inbox) = sales.get("/api/v1/notifications?unread=1").await;
    assert!(
        inbox
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["body"].as_str().unwrap().contains("over its budget")),
        "{inbox}"
    );
}

/// Subscriptions belong to their sales agent; revenue is per currency, never
/// converted, with the Hetzner cost and margin per client; technical users see no
/// revenue; the CSV export is a download.
#[tokio::test]
async fn subscriptions_and_revenue() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, "sam-password-1");
    let sales = cp.api_as("sales");
    let sam = cp.api_as("sam");
    let admin = cp.api_as("admin");
    let tech = cp.api_as("tech");

    assert_eq!(
        tech.get("/api/v1/revenue").await.0,
        403,
        "technical cannot see revenue"
    );
    assert_eq!(cp.api_as("sohila").get("/api/v1/revenue").await.0, 403);
    assert_eq!(tech.get("/api/v1/subscriptions").await.0, 403);

    // The renewal job runs at start-up: the demo subscription that ends in 20 days
    // and does not renew has been announced to its owner and the admins.
    for api in [&sales, &admin] {
        dynserv_tests::eventually(
            std::time::Duration::from_secs(10),
            "the renewal job's 30-day reminder",
            || async {
                let (_, inbox) = api.get("/api/v1/notifications").await;
                inbox.as_array()?.iter().find(|n| {
                    n["title"] == "Subscription of Blue Nile Pharmacy ends in 20 days"
                        && n["link"]
                            .as_str()
                            .is_some_and(|l| l.starts_with("/subscriptions/"))
                })?;
                Some(())
            },
        )
        .await;
    }

    let (status, before) = sales.get("/api/v1/revenue").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["mrr"]["EUR"], 150.0);
    assert_eq!(before["mrr"]["USD"], 30.0);
    assert_eq!(before["by_month"].as_array().unwrap().len(), 12);

    let (_, servers) = admin.get("/api/v1/servers").await;
    let db = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nova-hr-db-01")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let today = dynserv_tests::utc_today();
    let mut body = json!({
        "client": "Initech", "server_ids": [db], "monthly_cost": 45.5, "currency": "usd",
        "starts_on": today, "hosting_until": "2099-12-31", "auto_renew": false,
        "renewal_months": 12,
    });
    // A sales agent puts on a subscription only servers it may offer (those of its
    // deployed requests); a fleet server reads as unknown. An admin attaches any.
    let (status, refused) = sales.post("/api/v1/subscriptions", &body).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("server_ids")),
        "{refused}"
    );
    body["sales_agent"] = json!("sales");
    let (status, created) = admin.post("/api/v1/subscriptions", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["currency"], "USD");
    assert_eq!(created["sales_agent"], "sales");
    let sub_id = created["id"].as_str().unwrap().to_string();

    let (_, after) = sales.get("/api/v1/revenue").await;
    assert_eq!(after["mrr"]["USD"], 75.5, "30 + 45.50 USD, kept apart");
    assert_eq!(
        after["mrr"]["EUR"], 150.0,
        "EUR untouched: nothing converted"
    );
    let initech = after["by_client"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "Initech")
        .unwrap()
        .clone();
    assert_eq!(initech["hetzner_cost_eur"], 18.92);
    assert_eq!(initech["margin"], json!({"EUR": -18.92, "USD": 45.5}));

    // Another sales agent sees and changes only their own.
    assert_eq!(
        sam.get(&format!("/api/v1/subscriptions/{sub_id}")).await.0,
        403
    );
    assert_eq!(
        sam.put(
            &format!("/api/v1/subscriptions/{sub_id}"),
            &json!({"monthly_cost": 1})
        )
        .await
        .0,
        403
    );
    let (_, sams) = sam.get("/api/v1/revenue").await;
    assert_eq!(sams["mrr"], json!({}));
    let (status, body) = sam
        .post(
            "/api/v1/subscriptions",
            &json!({"client": "X", "monthly_cost": 1, "currency": "EUR", "starts_on": today,
                    "hosting_until": "2099-01-01", "sales_agent": "sales"}),
        )
        .await;
    assert_eq!(status, 403, "only managers assign others: {body}");
    let (_, all) = admin.get("/api/v1/revenue").await;
    assert_eq!(all["mrr"]["USD"], 75.5);

    // Updates and their validation.
    let (status, updated) = sales
        .put(
            &format!("/api/v1/subscriptions/{sub_id}"),
            &json!({"monthly_cost": 50, "auto_renew": true, "renewal_months": 6}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["monthly_cost"], 50.0);
    assert_eq!(updated["auto_renew"], true);
    for (field, body) in [
        ("currency", json!({"currency": "euro"})),
        ("hosting_until", json!({"hosting_until": "2000-01-01"})),
        ("starts_on", json!({"starts_on": "31/12/2026"})),
        ("renewal_months", json!({"renewal_months": 0})),
        ("server_ids", json!({"server_ids": ["nope"]})),
        ("monthly_cost", json!({"monthly_cost": -1})),
    ] {
        let (status, answer) = sales
            .put(&format!("/api/v1/subscriptions/{sub_id}"), &body)
            .await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert_eq!(answer["field"], field);
    }
    let (status, answer) = sales
        .post("/api/v1/subscriptions", &json!({"client": "Y"}))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("monthly_cost"))
    );

    // CSV export.
    let (status, csv) = sales
        .get_text("/api/v1/revenue?format=csv&table=clients")
        .await;
    assert_eq!(status, 200);
    assert!(
        csv.starts_with("client,currency,mrr,hetzner_cost_eur,margin\n"),
        "{csv}"
    );
    assert!(csv.contains("Initech,EUR,0.00,18.92,-18.92\n"), "{csv}");
    assert!(csv.contains("Initech,USD,50.00,,50.00\n"), "{csv}");
    assert_eq!(
        sales
            .get_text("/api/v1/revenue?format=csv&table=nope")
            .await
            .0,
        422
    );
}

/// The pages answer each role as the policy says; the request form re-renders with
/// the error beside its field; the bell shows the real unread count.
#[tokio::test]
async fn business_pages_for_each_role() {
    let cp = ControlPlane::start_demo().await;
    let sales_api = cp.api_as("sales");
    let id = file_request(&sales_api, "Page Co", "Nova HR", 5.0).await;
    let (_, subs) = sales_api.get("/api/v1/subscriptions").await;
    let sub_id = subs[0]["id"].as_str().unwrap().to_string();

    let request_page = format!("/requests/{id}");
    let sub_page = format!("/subscriptions/{sub_id}");
    // (path, [admin, tech, sales, sohila])
    let matrix: Vec<(&str, [u16; 4])> = vec![
        ("/", [200, 200, 200, 200]),
        ("/requests", [200, 403, 200, 403]),
        ("/requests/new", [200, 403, 200, 403]),
        (&request_page, [200, 403, 200, 403]),
        ("/notifications", [200, 200, 200, 200]),
        ("/subscriptions", [200, 403, 200, 403]),
        ("/subscriptions/new", [200, 403, 200, 403]),
        (&sub_page, [200, 403, 200, 403]),
        ("/revenue", [200, 403, 200, 403]),
        ("/revenue/clients.csv", [200, 403, 200, 403]),
    ];
    let users = [
        ("admin", "admin123"),
        ("tech", "tech123"),
        ("sales", "sales123"),
        ("sohila", "sohila123"),
    ];
    for (i, (username, password)) in users.iter().enumerate() {
        let mut client = PageClient::signed_in(&cp, username, password).await;
        for (path, expected) in &matrix {
            let (status, _, body) = client.get(path).await;
            assert_eq!(status, expected[i], "{username} GET {path}: {body}");
        }
        let (_, _, dashboard) = client.get("/").await;
        let (_, unread) = cp
            .api_as(username)
            .get("/api/v1/notifications/unread")
            .await;
        assert_eq!(
            unread_badge(&dashboard),
            unread["unread"].as_u64().unwrap(),
            "{username}'s bell shows the real unread count"
        );
    }

    // The sales dashboard shows real figures; the admin's the pending approvals.
    let mut sales = PageClient::signed_in(&cp, "sales", "sales123").await;
    let (_, _, dashboard) = sales.get("/").await;
    assert!(
        dashboard.contains("150.00 EUR"),
        "sales MRR on the dashboard"
    );
    assert!(
        dashboard.contains("Blue Nile Pharmacy"),
        "expiring subscription"
    );
    let (_, _, list) = sales.get("/subscriptions").await;
    assert!(
        list.contains("EGP 2500.00 · EUR 150.00 · USD 30.00"),
        "MRR per currency above the subscriptions"
    );
    let mut admin = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (_, _, dashboard) = admin.get("/").await;
    assert!(
        dashboard.contains("Page Co"),
        "pending approval on the admin dashboard"
    );
    let renewals = dashboard
        .split("id=\"renewals-due\"")
        .nth(1)
        .expect("renewals due on the admin dashboard");
    assert!(
        renewals[..renewals.find("</ul>").unwrap()].contains("Blue Nile Pharmacy"),
        "the subscription ending in 20 days, with its sales agent: {renewals}"
    );
    let (_, _, revenue) = admin.get("/revenue").await;
    assert!(
        revenue.contains("<svg class=\"ds-chart\""),
        "server-rendered chart"
    );
    assert!(revenue.contains("2500.00 EGP"));
    // A client paying in EGP: its EUR server cost beside the margin, not a red loss.
    let egp_row = revenue
        .split("<tr>")
        .find(|row| row.contains("EGP 2500.00") && row.contains("of servers"))
        .unwrap_or_else(|| panic!("the EGP client's row: {revenue}"));
    assert!(egp_row.contains("EGP 2500.00, less EUR"), "{egp_row}");
    assert!(!egp_row.contains("text-danger"), "{egp_row}");

    // The form: a server-side error beside its field, then a success.
    let csrf = sales.csrf("/requests/new").await;
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("client_name", "Form Co"),
        ("client_email", "nope"),
        ("purpose", "shop"),
        ("project", "Nova HR"),
        ("server_type", "cx21"),
        ("location", "fsn1"),
        ("image", "ubuntu-22.04"),
        ("cpu_cores", "2"),
        ("ram_gb", ""),
        ("disk_gb", ""),
        ("monthly_budget", "7.5"),
        ("notes", ""),
    ];
    let (status, _, html) = sales.post("/requests/new", &form).await;
    assert_eq!(status, 422);
    assert!(html.contains("id=\"client_email\""));
    assert!(
        html.contains("is-invalid\" id=\"client_email\""),
        "error beside the field"
    );
    assert!(html.contains("Client email is not a valid e-mail address"));
    assert!(
        html.contains("value=\"Form Co\""),
        "what the user typed is kept"
    );
    form[2] = ("client_email", "ops@form.example");
    let (status, location, _) = sales.post("/requests/new", &form).await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/requests/"), "{location}");

    // Moves from the page: a missing reason is shown beside the field; a forbidden
    // move comes back with the reason.
    let csrf = admin.csrf(&location).await;
    let (status, _, html) = admin
        .post(
            &format!("{location}/reject"),
            &[("csrf", &csrf), ("reason", "")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        html.contains("A rejection needs a reason") || html.contains("a rejection needs a reason")
    );
    let (status, back, _) = admin
        .post(
            &format!("{location}/approve"),
            &[("csrf", &csrf), ("note", "ok")],
        )
        .await;
    assert_eq!((status, back.as_str()), (303, location.as_str()));
    let (_, _, html) = admin.get(&location).await;
    assert!(html.contains("data-step=\"approve\""));
    let (status, _, _) = sales
        .post(&format!("{location}/approve"), &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(status, 403, "sales cannot approve from the page either");
    let (status, _, _) = admin
        .post(&format!("{location}/approve"), &[("csrf", "wrong")])
        .await;
    assert_eq!(status, 403, "CSRF checked");

    // The inbox: open marks read and goes to the request.
    let (_, inbox) = sales_api.get("/api/v1/notifications?unread=1").await;
    let newest = inbox[0].clone();
    assert!(newest["title"]
        .as_str()
        .unwrap()
        .contains("Form Co approved"));
    let (status, target, _) = sales
        .get(&format!(
            "/notifications/{}",
            newest["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((status, target.as_str()), (303, location.as_str()));
    let csrf = sales.csrf("/notifications").await;
    let (status, _, _) = sales
        .post("/notifications/read_all", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    let (_, _, html) = sales.get("/").await;
    assert_eq!(unread_badge(&html), 0);
}

/// A subscription's lifecycle over the API and the page: pause stops its revenue and
/// resume brings it back; a cancellation needs a reason, waits for its effective date
/// (no reminders, revenue until then) or takes effect at once; every move the status
/// forbids is a 409; each change is audited and told to the sales agent; only those
/// who see every agent's revenue delete one.
#[tokio::test]
async fn subscription_lifecycle() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, "sam-password-1");
    let sales = cp.api_as("sales");
    let admin = cp.api_as("admin");
    let today = dynserv_tests::utc_today();
    let (status, created) = sales
        .post(
            "/api/v1/subscriptions",
            &json!({"client": "Initech", "monthly_cost": 40, "currency": "USD",
                    "starts_on": today, "hosting_until": "2099-12-31", "auto_renew": true,
                    "renewal_months": 1}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = |what: &str| format!("/api/v1/subscriptions/{id}/{what}");
    let usd = |revenue: &Value| revenue["mrr"]["USD"].as_f64().unwrap_or(0.0);
    assert_eq!(usd(&sales.get("/api/v1/revenue").await.1), 70.0);

    // Pause and resume.
    let (status, paused) = sales.post_empty(&path("pause")).await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (200, Some("paused")),
        "{paused}"
    );
    assert_eq!(
        usd(&sales.get("/api/v1/revenue").await.1),
        30.0,
        "paused earns nothing"
    );
    assert_eq!(
        sales.post_empty(&path("pause")).await.0,
        409,
        "already paused"
    );
    let (status, resumed) = sales.post(&path("resume"), &json!({})).await;
    assert_eq!(
        (status, resumed["status"].as_str()),
        (200, Some("active")),
        "{resumed}"
    );
    assert_eq!(
        resumed["hosting_until"], "2099-12-31",
        "paused for no whole day"
    );
    assert_eq!(sales.post_empty(&path("resume")).await.0, 409, "not paused");

    // A cancellation is refused without a reason or before the start; others' are 403.
    let (status, refused) = sales.post(&path("cancel"), &json!({"reason": " "})).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("reason")),
        "{refused}"
    );
    let (status, refused) = sales
        .post(
            &path("cancel"),
            &json!({"reason": "moving", "effective_on": "2000-01-01"}),
        )
        .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("effective_on")),
        "{refused}"
    );
    let (status, refused) = sales.post(&path("cancel"), &json!({"why": "x"})).await;
    assert_eq!(status, 400, "unknown field: {refused}");
    assert_eq!(
        cp.api_as("sam")
            .post(&path("cancel"), &json!({"reason": "x"}))
            .await
            .0,
        403
    );
    assert_eq!(sales.post_empty(&path("explode")).await.0, 404);

    // Cancelled from a later date: still active and earning until then.
    let (status, pending) = sales
        .post(
            &path("cancel"),
            &json!({"reason": "moving to a bigger provider", "effective_on": "2099-01-01"}),
        )
        .await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["status"], "active");
    assert_eq!(pending["cancellation"]["effective_on"], "2099-01-01");
    assert_eq!(pending["cancellation"]["by"], "sales");
    assert_eq!(usd(&sales.get("/api/v1/revenue").await.1), 70.0);
    let mut page = PageClient::signed_in(&cp, "sales", "sales123").await;
    let (_, _, list) = page.get("/subscriptions").await;
    assert!(list.contains("cancelled from 2099-01-01"), "{list}");

    // The page: a cancellation without a reason re-renders with the message; with one
    // it takes effect today.
    let sub_page = format!("/subscriptions/{id}");
    let csrf = page.csrf(&sub_page).await;
    let (status, _, html) = page
        .post(
            &format!("{sub_page}/cancel"),
            &[("csrf", &csrf), ("reason", ""), ("effective_on", "")],
        )
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("say why the client cancels"), "{html}");
    let (status, location, _) = page
        .post(
            &format!("{sub_page}/cancel"),
            &[
                ("csrf", &csrf),
                ("reason", "closing down"),
                ("effective_on", &today),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, sub_page.as_str()));
    let (_, now) = sales.get(&format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(now["status"], "cancelled", "{now}");
    assert_eq!(now["ended_on"], today.as_str());
    assert_eq!(usd(&sales.get("/api/v1/revenue").await.1), 30.0);
    for what in ["cancel", "pause", "resume", "end"] {
        assert_eq!(
            sales.post(&path(what), &json!({"reason": "x"})).await.0,
            409,
            "{what}"
        );
    }
    let actions: Vec<&str> = now["lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "resume", "cancel", "cancel"]);

    // Told to the sales agent, audited.
    let (_, inbox) = sales.get("/api/v1/notifications").await;
    let titles: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["title"].as_str())
        .collect();
    for title in ["paused", "resumed", "cancelled"] {
        assert!(
            titles.contains(&format!("Subscription of Initech {title}").as_str()),
            "{titles:?}"
        );
    }
    let (_, audit) = admin.get("/api/v1/audit?action=subscription.cancel").await;
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");

    // Ending one; deleting is for managers and admins.
    let (_, second) = sales
        .post(
            "/api/v1/subscriptions",
            &json!({"client": "Globex", "monthly_cost": 5, "currency": "EUR",
                    "starts_on": today, "hosting_until": "2099-12-31"}),
        )
        .await;
    let second = second["id"].as_str().unwrap().to_string();
    let (status, ended) = sales
        .post(&format!("/api/v1/subscriptions/{second}/end"), &json!({}))
        .await;
    assert_eq!(
        (status, ended["status"].as_str()),
        (200, Some("ended")),
        "{ended}"
    );
    assert_eq!(
        sales
            .delete(&format!("/api/v1/subscriptions/{second}"))
            .await
            .0,
        403
    );
    assert_eq!(
        admin
            .delete(&format!("/api/v1/subscriptions/{second}"))
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .get(&format!("/api/v1/subscriptions/{second}"))
            .await
            .0,
        404
    );
    assert_eq!(
        admin
            .delete(&format!("/api/v1/subscriptions/{second}"))
            .await
            .0,
        404
    );
    let (_, audit) = admin.get("/api/v1/audit?action=subscription.delete").await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
}

/// Clients as records: made on the API (name unique whatever its case, fields
/// checked), found by name when a request or subscription names them, or picked by
/// id; the client's answer lists what the caller may see of its requests,
/// subscriptions, servers and revenue; the demo's free-text clients are records; the
/// pages list, search and edit them.
#[tokio::test]
async fn clients_as_records() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, "sam-password-1");
    let sales = cp.api_as("sales");
    let sam = cp.api_as("sam");
    assert_eq!(cp.api_as("tech").get("/api/v1/clients").await.0, 403);

    let (status, client) = sales
        .post(
            "/api/v1/clients",
            &json!({"name": "Initech", "email": "it@initech.example", "vat_id": "DE123456789",
                    "address": "1 Main St\nSpringfield", "company": "Initech LLC"}),
        )
        .await;
    assert_eq!(status, 201, "{client}");
    let id = client["id"].as_str().unwrap().to_string();
    let (status, dup) = sales
        .post("/api/v1/clients", &json!({"name": "INITECH", "email": "x"}))
        .await;
    assert_eq!(status, 422, "{dup}");
    assert_eq!(dup["field"], "name");
    assert_eq!(
        sales.post("/api/v1/clients", &json!({"nme": "x"})).await.0,
        400
    );

    // A request by name finds the record; one by id takes its name and e-mail.
    let mut body = json!({
        "client_name": "initech", "client_email": "buyer@initech.example", "purpose": "shop",
        "project": "Nova HR", "server_type": "cx22", "location": "fsn1", "image": "ubuntu-24.04",
    });
    let (status, by_name) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(status, 201, "{by_name}");
    assert_eq!(by_name["client_id"], id.as_str());
    body.as_object_mut().unwrap().remove("client_name");
    body.as_object_mut().unwrap().remove("client_email");
    body["client_id"] = json!(id);
    let (status, by_id) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(status, 201, "{by_id}");
    assert_eq!(by_id["client_name"], "Initech");
    assert_eq!(by_id["client_email"], "it@initech.example");
    body["client_id"] = json!("no-such-client");
    let (status, refused) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("client_id")),
        "{refused}"
    );

    let today = dynserv_tests::utc_today();
    let (status, sub) = sales
        .post(
            "/api/v1/subscriptions",
            &json!({"client_id": id, "monthly_cost": 99, "currency": "USD",
                    "starts_on": today, "hosting_until": "2099-12-31"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["client"], "Initech");
    // A new name makes a new client.
    let (_, other) = sam
        .post(
            "/api/v1/subscriptions",
            &json!({"client": "Vandelay Industries", "monthly_cost": 5, "currency": "EUR",
                    "starts_on": today, "hosting_until": "2099-12-31"}),
        )
        .await;
    let vandelay = other["client_id"].as_str().expect("a client made by name");

    let (status, full) = sales.get(&format!("/api/v1/clients/{id}")).await;
    assert_eq!(status, 200, "{full}");
    assert_eq!(full["vat_id"], "DE123456789");
    assert_eq!(full["requests"].as_array().unwrap().len(), 2);
    assert_eq!(full["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(full["revenue"]["mrr"], json!({"USD": 99.0}));
    // Another sales agent sees the client, not someone else's requests or revenue.
    let (_, seen_by_sam) = sam.get(&format!("/api/v1/clients/{id}")).await;
    assert_eq!(seen_by_sam["requests"], json!([]));
    assert_eq!(seen_by_sam["subscriptions"], json!([]));
    let (_, v) = sam.get(&format!("/api/v1/clients/{vandelay}")).await;
    assert_eq!(v["name"], "Vandelay Industries");

    let (status, found) = sales.get("/api/v1/clients?q=springfield").await;
    assert_eq!(
        (status, found.as_array().unwrap().len()),
        (200, 0),
        "address is not searched"
    );
    let (_, found) = sales.get("/api/v1/clients?q=de1234").await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(sales.get("/api/v1/clients?colour=red").await.0, 400);
    let (_, all) = sales.get("/api/v1/clients?limit=200").await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"Blue Nile Pharmacy"),
        "the demo's clients: {names:?}"
    );
    let (status, renamed) = sales
        .put(
            &format!("/api/v1/clients/{id}"),
            &json!({"name": "Initech Global", "company": ""}),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["company"], Value::Null);
    // Its subscriptions take the new name (and list under it); requests keep theirs.
    assert!(renamed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["client"] == "Initech Global"));
    let (_, listed) = sales.get("/api/v1/subscriptions?q=initech%20global").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(renamed["requests"][0]["client_name"], "Initech");

    // The pages.
    let mut page = PageClient::signed_in(&cp, "sales", "sales123").await;
    let (status, _, list) = page.get("/clients?q=initech").await;
    assert_eq!(status, 200);
    assert!(list.contains(&format!("href=\"/clients/{id}\"")), "{list}");
    let (status, _, html) = page.get(&format!("/clients/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("99.00") && html.contains("USD"),
        "revenue on the page: {html}"
    );
    let csrf = page.csrf("/clients/new").await;
    let (status, _, html) = page
        .post(
            "/clients/new",
            &[("csrf", &csrf), ("name", "initech global"), ("email", "")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        html.contains("there is already a client named Initech Global"),
        "{html}"
    );
    let (status, location, _) = page
        .post(
            "/clients/new",
            &[
                ("csrf", &csrf),
                ("name", "Hooli"),
                ("email", "x@hooli.example"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/clients/"), "{location}");
    let mut tech = PageClient::signed_in(&cp, "tech", "tech123").await;
    assert_eq!(tech.get("/clients").await.0, 403);
}

/// Days in the month of `day` (`YYYY-MM-DD`).
fn days_in_month(day: &str) -> u32 {
    let year: u32 = day[..4].parse().unwrap();
    match day[5..7].parse::<u32>().unwrap() {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A request the admin marks deployed by hand linking an existing server proposes the
/// client's subscription (the server's cost plus the agreed margin); the sales agent
/// makes it from the proposal on the API or the page, once only; bad servers and
/// another agent's request are refused by field.
#[tokio::test]
async fn deployed_request_proposes_its_subscription() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, "sam-password-1");
    let (admin, sales, sam) = (cp.api_as("admin"), cp.api_as("sales"), cp.api_as("sam"));
    let mut body = request_body("Globex", "Frappe ERP", 30.0);
    body["margin_percent"] = json!(50);
    let (status, request) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(status, 201, "{request}");
    assert_eq!(request["margin_percent"], 50.0);
    let id = request["id"].as_str().unwrap().to_string();
    body["margin_percent"] = json!(5000);
    let (status, refused) = sales.post("/api/v1/requests", &body).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("margin_percent"))
    );
    let path = format!("/api/v1/requests/{id}");
    let (status, refused) = admin
        .post(
            &format!("{path}/approve"),
            &json!({"server": "frappe-erp-db-01"}),
        )
        .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("server")),
        "{refused}"
    );
    assert_eq!(admin.post_empty(&format!("{path}/approve")).await.0, 200);
    let (_, before) = sales.get(&path).await;
    assert!(before["proposed_subscription"].is_null(), "{before}");

    // A server of another project, or none, links nothing and deploys nothing.
    for bad in ["django-api-01", "no-such-server"] {
        let (status, refused) = admin
            .post(&format!("{path}/deployed"), &json!({"server": bad}))
            .await;
        assert_eq!(
            (status, refused["field"].as_str()),
            (422, Some("server")),
            "{bad}: {refused}"
        );
    }
    let (_, still) = sales.get(&path).await;
    assert_eq!(
        (still["status"].as_str(), &still["server_id"]),
        (Some("approved"), &Value::Null)
    );
    let (status, deployed) = admin
        .post(
            &format!("{path}/deployed"),
            &json!({"server": "FRAPPE-ERP-DB-01", "note": "by hand"}),
        )
        .await;
    assert_eq!(status, 200, "{deployed}");
    let server_id = deployed["server_id"]
        .as_str()
        .expect("the server is linked")
        .to_string();

    let (_, request) = sales.get(&path).await;
    let proposal = &request["proposed_subscription"];
    assert_eq!(
        proposal["monthly_cost"], 28.38,
        "18.92 plus 50 %: {proposal}"
    );
    assert_eq!(proposal["currency"], "EUR");
    assert_eq!(proposal["server_ids"], json!([server_id]));
    assert_eq!(proposal["client_id"], request["client_id"]);
    assert_eq!(proposal["auto_renew"], true);

    // The page shows it and prefills the form from it.
    let mut page = PageClient::signed_in(&cp, "sales", "sales123").await;
    let (_, _, html) = page.get(&format!("/requests/{id}")).await;
    assert!(html.contains("id=\"proposal-card\""), "{html}");
    let (status, _, form) = page.get(&format!("/subscriptions/new?request={id}")).await;
    assert_eq!(status, 200);
    assert!(
        form.contains(&format!("name=\"request_id\" value=\"{id}\"")),
        "{form}"
    );
    assert!(form.contains("value=\"28.38\""), "{form}");
    assert!(
        form.contains(&format!("<option value=\"{server_id}\" selected>")),
        "{form}"
    );

    // Another sales agent cannot make a subscription from it.
    let today = dynserv_tests::utc_today();
    let sub_body = json!({"request_id": id, "monthly_cost": 28.38, "currency": "EUR",
                          "starts_on": today, "hosting_until": "2099-12-31", "auto_renew": true});
    let (status, refused) = sam.post("/api/v1/subscriptions", &sub_body).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("request_id")),
        "{refused}"
    );

    // The page form makes it; the request then links to it and proposes nothing more.
    let csrf = csrf_of(&form);
    let (status, location, _) = page
        .post(
            "/subscriptions/new",
            &[
                ("csrf", &csrf),
                ("request_id", &id),
                ("client", "Globex"),
                ("monthly_cost", "28.38"),
                ("currency", "EUR"),
                ("starts_on", &today),
                ("hosting_until", "2099-12-31"),
                ("auto_renew", "on"),
                ("renewal_months", "12"),
                ("server_ids", &server_id),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/subscriptions"));
    let (_, request) = sales.get(&path).await;
    let sub_id = request["subscription_id"]
        .as_str()
        .expect("linked")
        .to_string();
    assert!(request["proposed_subscription"].is_null(), "{request}");
    let (_, sub) = sales.get(&format!("/api/v1/subscriptions/{sub_id}")).await;
    assert_eq!(
        (sub["request_id"].as_str(), sub["client"].as_str()),
        (Some(id.as_str()), Some("Globex"))
    );
    assert_eq!(sub["server_ids"], json!([server_id]));
    let (status, again) = sales.post("/api/v1/subscriptions", &sub_body).await;
    assert_eq!(status, 409, "{again}");
    let (status, location, _) = page.get(&format!("/subscriptions/new?request={id}")).await;
    assert_eq!((status, location), (303, format!("/requests/{id}")));
}

/// A client's monthly statement charges each subscription for the days it ran that
/// month, totals per currency, names the servers, and comes as a page and as CSV; a
/// sales agent's statement holds only their own subscriptions.
#[tokio::test]
async fn monthly_statement_per_client() {
    let cp = ControlPlane::start_demo().await;
    cp.add_user("sam", "sales", false, "sam-password-1");
    let (sales, sam) = (cp.api_as("sales"), cp.api_as("sam"));
    let today = dynserv_tests::utc_today();
    let month = &today[..7];
    let (status, client) = sales
        .post(
            "/api/v1/clients",
            &json!({"name": "Umbrella", "email": "it@umbrella.example", "vat_id": "GB999"}),
        )
        .await;
    assert_eq!(status, 201, "{client}");
    let id = client["id"].as_str().unwrap().to_string();
    // The admin puts a fleet server on the sales agent's subscriptions.
    let admin = cp.api_as("admin");
    let (_, servers) = admin.get("/api/v1/servers?q=django-portal-01").await;
    let server_id = servers[0]["id"].as_str().unwrap().to_string();
    let subscribe = |cost: f64, currency: &str, starts: &str| {
        json!({"client_id": id, "monthly_cost": cost, "currency": currency, "starts_on": starts,
               "hosting_until": "2099-12-31", "server_ids": [server_id.clone()],
               "sales_agent": "sales"})
    };
    let month_start = format!("{month}-01");
    let (s1, whole) = admin
        .post(
            "/api/v1/subscriptions",
            &subscribe(62.0, "EUR", &month_start),
        )
        .await;
    let (s2, today_on) = admin
        .post("/api/v1/subscriptions", &subscribe(3100.0, "EGP", &today))
        .await;
    assert_eq!((s1, s2), (201, 201), "{whole} {today_on}");

    let (status, statement) = sales
        .get(&format!("/api/v1/clients/{id}/statement?month={month}"))
        .await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(statement["month"], month);
    let dim = days_in_month(&today);
    let day: u32 = today[8..].parse().unwrap();
    let lines = statement["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{statement}");
    let line = |sub: &Value| {
        lines
            .iter()
            .find(|l| l["subscription"] == sub["id"])
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            line(&whole)["days"].as_u64(),
            line(&whole)["amount"].as_f64()
        ),
        (Some(dim.into()), Some(62.0))
    );
    let part = line(&today_on);
    let days = dim - day + 1;
    let expected = (3100.0 * f64::from(days) / f64::from(dim) * 100.0).round() / 100.0;
    assert_eq!(part["days"].as_u64(), Some(days.into()), "{part}");
    assert!(
        (part["amount"].as_f64().unwrap() - expected).abs() < 0.001,
        "{part} vs {expected}"
    );
    assert_eq!(statement["totals"]["EUR"], 62.0);
    assert_eq!(part["servers"][0]["name"], "django-portal-01");

    let (status, csv) = sales
        .get_text(&format!(
            "/api/v1/clients/{id}/statement?month={month}&format=csv"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("client,month,subscription,"), "{csv}");
    assert!(
        csv.contains(&format!("Umbrella,{month},total,,,,,,EUR,62.00,")),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count(),
        5,
        "header, two lines, two totals: {csv}"
    );
    for bad in ["month=2026-13", "month=last", "format=pdf", "sort=amount"] {
        let (status, body) = sales
            .get(&format!("/api/v1/clients/{id}/statement?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(sales.get("/api/v1/clients/no-such/statement").await.0, 404);
    assert_eq!(
        cp.api_as("tech")
            .get(&format!("/api/v1/clients/{id}/statement"))
            .await
            .0,
        403
    );
    // Another sales agent sees the client but none of these subscriptions.
    let (_, theirs) = sam.get(&format!("/api/v1/clients/{id}/statement")).await;
    assert_eq!(theirs["lines"], json!([]), "{theirs}");

    let mut page = PageClient::signed_in(&cp, "sales", "sales123").await;
    let (status, _, html) = page
        .get(&format!("/clients/{id}/statement?month={month}"))
        .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("id=\"statement-lines\"") && html.contains("GB999"),
        "{html}"
    );
    assert!(html.contains(&format!(
        "data-subscription=\"{}\"",
        whole["id"].as_str().unwrap()
    )));
    assert!(html.contains("data-total=\"EGP\""), "{html}");
    let (_, _, empty) = page
        .get(&format!("/clients/{id}/statement?month=2001-01"))
        .await;
    assert!(empty.contains("id=\"statement-empty\""), "{empty}");
    let (status, _, download) = page
        .get(&format!("/clients/{id}/statement.csv?month={month}"))
        .await;
    assert_eq!((status, download), (200, csv));
    let (_, _, client_page) = page.get(&format!("/clients/{id}")).await;
    assert!(client_page.contains(&format!("href=\"/clients/{id}/statement\"")));

    // Subscriptions sort by end date, soonest first, over pages too.
    let walked = admin.walk("/api/v1/subscriptions?sort=end&limit=2").await;
    let ends: Vec<&str> = walked
        .iter()
        .map(|s| s["hosting_until"].as_str().unwrap())
        .collect();
    assert!(
        ends.len() >= 4 && ends.windows(2).all(|w| w[0] <= w[1]),
        "{ends:?}"
    );
    assert_eq!(admin.get("/api/v1/subscriptions?sort=price").await.0, 400);
    let (status, _, list) = page.get("/subscriptions?sort=end").await;
    assert_eq!(status, 200);
    assert!(list.contains("<option value=\"end\" selected>"), "{list}");
}
