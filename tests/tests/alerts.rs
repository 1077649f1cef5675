//! Alerts end to end: the real `dynserv serve` and `dynserv-agent` on loopback, a
//! webhook receiver and an SMTP sink of the harness (`tests/src/receivers.rs`). A
//! failed job reaches the webhook (signed, checked here with HMAC-SHA256), the e-mail
//! of a technician who asked for it and the inboxes of those who see the project; the
//! address guard refuses loopback unless `DYNSERV_WEBHOOK_ALLOW` lists it, after DNS
//! resolution and after a redirect too.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient, SmtpSink, WebhookReceiver};
use hmac::{Mac, SimpleHmac};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "Tq4!pinewood-harbor-ledger";
const TECH_PASSWORD: &str = "Vr7!copper-meadow-lantern";
const SECRET: &str = "hook-secret-of-the-receiver";

/// A control plane with an admin, a technician with read access to project `Alerts`
/// and a connected agent in it.
async fn setup(cp: &ControlPlane) -> (Api, Api, Agent, String) {
    cp.add_user("admin", "admin", false, ADMIN_PASSWORD);
    cp.add_user("tech", "technical", false, TECH_PASSWORD);
    let admin = cp.api_as("admin");
    let (status, project) = admin
        .post("/api/v1/projects", &json!({"name": "Alerts"}))
        .await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["id"].as_str().expect("project id").to_string();
    let (status, body) = admin
        .post(
            &format!("/api/v1/projects/{project_id}/access"),
            &json!({"username": "tech", "level": "read"}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let agent = Agent::start(cp, &cp.enrollment_token("Alerts"), "alert-01");
    admin.connected_agent("alert-01").await;
    (admin, cp.api_as("tech"), agent, project_id)
}

/// Runs `exit 3` on the agent and waits until it failed; returns its id.
async fn failed_job(api: &Api) -> String {
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "alert-01", "kind": "script", "script": "echo boom; exit 3", "interpreter": "/bin/sh"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an execution id").to_string();
    let ended = eventually(Duration::from_secs(60), "the job ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
        (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
    })
    .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    id
}

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The deliveries of a webhook once the first has an outcome (an attempt made).
async fn attempted_deliveries(api: &Api, hook: &str) -> Vec<Value> {
    eventually(Duration::from_secs(30), "a delivery attempt", || async {
        let (status, list) = api
            .get(&format!("/api/v1/webhooks/{hook}/deliveries"))
            .await;
        assert_eq!(status, 200, "{list}");
        let list = list.as_array().cloned().unwrap_or_default();
        list.first()
            .is_some_and(|d| d["attempts"].as_u64() >= Some(1))
            .then_some(list)
    })
    .await
}

/// A failed job reaches the project's signed webhook, the e-mail of the technician who
/// chose `execution.failed` and the technician's inbox; the deliveries list shows the
/// receiver's answer. Only admins and project admins create webhooks.
#[tokio::test(flavor = "multi_thread")]
async fn failed_job_reaches_the_webhook_signed_the_smtp_sink_and_the_inbox() {
    let receiver = WebhookReceiver::start(200, "thanks");
    let sink = SmtpSink::start();
    let cp = ControlPlane::builder()
        .env("DYNSERV_SMTP_URL", &sink.url())
        .env("DYNSERV_MAIL_FROM", "dynserv <alerts@dynserv.test>")
        .env("DYNSERV_WEBHOOK_ALLOW", "127.0.0.0/8")
        .start()
        .await;
    let (admin, tech, _agent, _project) = setup(&cp).await;

    // The technician gives an address and chooses the event by e-mail.
    let (status, body) = admin
        .put("/api/v1/users/tech", &json!({"email": "tech@example.com"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = tech
        .put(
            "/api/v1/me/alerts",
            &json!({"email": ["execution.failed", "no.such"]}),
        )
        .await;
    assert_eq!(status, 422, "an unknown event is refused: {body}");
    let (status, body) = tech
        .put("/api/v1/me/alerts", &json!({"email": ["execution.failed"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        tech.get("/api/v1/me/alerts").await.1["email"],
        json!(["execution.failed"])
    );

    // A technician with read access creates no webhook; the admin does.
    let hook_body = json!({
        "url": receiver.url("/hook"),
        "events": ["execution.failed"],
        "project": "Alerts",
        "secret": SECRET,
    });
    let (status, body) = tech.post("/api/v1/webhooks", &hook_body).await;
    assert_eq!(status, 403, "{body}");
    let (status, hook) = admin.post("/api/v1/webhooks", &hook_body).await;
    assert_eq!(status, 201, "{hook}");
    assert!(
        hook.get("secret").is_none(),
        "the secret is never shown: {hook}"
    );
    assert_eq!(hook["signed"], true);
    let hook_id = hook["id"].as_str().expect("webhook id").to_string();
    let (status, listed) = admin.get("/api/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let (status, listed) = tech.get("/api/v1/webhooks").await;
    assert_eq!((status, listed), (200, json!([])));

    let execution = failed_job(&admin).await;

    // The webhook: one POST, signed over the exact body.
    let request = eventually(Duration::from_secs(30), "the webhook is called", || async {
        receiver.requests().into_iter().next()
    })
    .await;
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    let payload: Value = serde_json::from_str(&request.body).expect("a JSON body");
    assert_eq!(payload["event"], "execution.failed");
    assert_eq!(payload["subject"]["execution"], execution.as_str());
    assert_eq!(payload["subject"]["exit_code"], 3);
    assert_eq!(payload["subject"]["project"], "Alerts");
    assert!(payload["url"]
        .as_str()
        .is_some_and(|u| u.contains(&execution)));
    assert!(payload["at"].as_str().is_some());
    assert_eq!(
        request
            .headers
            .get("x-dynserv-signature")
            .map(String::as_str),
        Some(format!("sha256={}", hmac_hex(SECRET, &request.body)).as_str()),
        "the signature is the HMAC-SHA256 of the body"
    );
    assert_ne!(
        request.headers.get("x-dynserv-signature").cloned(),
        Some(format!(
            "sha256={}",
            hmac_hex("another secret", &request.body)
        )),
    );

    // The deliveries list shows the answer.
    let deliveries = attempted_deliveries(&admin, &hook_id).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["status"], "delivered");
    assert_eq!(deliveries[0]["response_status"], 200);
    assert_eq!(deliveries[0]["response_body"], "thanks");
    assert_eq!(deliveries[0]["attempts"], 1);

    // The e-mail, through the SMTP sink.
    let mail = eventually(Duration::from_secs(30), "the alert e-mail", || async {
        sink.mails().into_iter().next()
    })
    .await;
    assert!(
        mail.to.iter().any(|t| t.contains("tech@example.com")),
        "{mail:?}"
    );
    assert!(mail.from.contains("alerts@dynserv.test"), "{mail:?}");
    assert!(mail.data.contains("failed on alert-01"), "{}", mail.data);
    assert!(mail.data.contains("execution.failed"), "{}", mail.data);
    assert_eq!(sink.mails().len(), 1, "the admin did not ask for e-mail");

    // The technician's inbox (the technician did not start the job, but sees the project).
    let (status, inbox) = tech.get("/api/v1/notifications").await;
    assert_eq!(status, 200);
    let subject = format!("execution:{execution}");
    assert!(
        inbox
            .as_array()
            .is_some_and(|list| list.iter().any(|n| n["subject"] == subject.as_str())),
        "{inbox}"
    );

    // Deleting the webhook takes its deliveries along.
    let (status, _) = admin.delete(&format!("/api/v1/webhooks/{hook_id}")).await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .get(&format!("/api/v1/webhooks/{hook_id}/deliveries"))
        .await;
    assert_eq!(status, 404);
}

/// Without `DYNSERV_WEBHOOK_ALLOW`, a loopback address is refused when the webhook is
/// created, a name resolving to loopback when it is delivered; with only another
/// loopback address allowed, a redirect to 127.0.0.1 is refused. The receiver never
/// sees a request, and the delivery keeps the reason and waits for its retry.
#[tokio::test(flavor = "multi_thread")]
async fn the_address_guard_refuses_loopback_unless_allowed() {
    let receiver = WebhookReceiver::start(200, "should never be reached");
    let redirector =
        WebhookReceiver::start_on("127.0.0.2", 307, "moved", Some(&receiver.url("/inside")));
    let cp = ControlPlane::builder()
        .env("DYNSERV_WEBHOOK_ALLOW", "127.0.0.2/32")
        .start()
        .await;
    let (admin, _tech, _agent, _project) = setup(&cp).await;

    let (status, body) = admin
        .post(
            "/api/v1/webhooks",
            &json!({"url": receiver.url("/hook"), "events": ["execution.failed"]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "url", "{body}");

    let by_name = receiver.url("/hook").replace("127.0.0.1", "localhost");
    let (status, named) = admin
        .post(
            "/api/v1/webhooks",
            &json!({"url": by_name, "events": ["execution.failed"]}),
        )
        .await;
    assert_eq!(status, 201, "{named}");
    let (status, redirected) = admin
        .post(
            "/api/v1/webhooks",
            &json!({"url": redirector.url("/hook"), "events": ["execution.failed"]}),
        )
        .await;
    assert_eq!(status, 201, "{redirected}");

    failed_job(&admin).await;

    for hook in [&named, &redirected] {
        let id = hook["id"].as_str().expect("webhook id");
        let deliveries = attempted_deliveries(&admin, id).await;
        let delivery = &deliveries[0];
        assert_eq!(delivery["status"], "pending", "retried later: {delivery}");
        assert!(delivery["next_attempt_at"].is_string(), "{delivery}");
        let error = delivery["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("refused") && error.contains("127.0.0.1"),
            "{error}"
        );
    }
    assert_eq!(
        redirector.requests().len(),
        1,
        "the allowed address was reached"
    );
    assert!(receiver.requests().is_empty(), "loopback was never reached");
}

/// The pages: an admin adds a webhook through the form (a bad URL re-renders the form
/// with the message beside it), sees its deliveries page and deletes it; a technician
/// chooses e-mail alerts on the Account page and has no Webhooks page.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_and_account_pages() {
    let cp = ControlPlane::builder()
        .env("DYNSERV_WEBHOOK_ALLOW", "127.0.0.0/8")
        .start()
        .await;
    cp.add_user("admin", "admin", false, ADMIN_PASSWORD);
    cp.add_user("tech", "technical", false, TECH_PASSWORD);
    let mut admin = PageClient::signed_in(&cp, "admin", ADMIN_PASSWORD).await;

    let csrf = admin.csrf("/webhooks").await;
    let (status, _, html) = admin
        .post(
            "/webhooks",
            &[
                ("csrf", &csrf),
                ("url", "ftp://example.com/"),
                ("event:backup.failed", "on"),
            ],
        )
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(
        html.contains("must start with http:// or https://"),
        "{html}"
    );
    assert!(
        html.contains("ftp://example.com/"),
        "the form keeps what was typed"
    );

    let (status, location, _) = admin
        .post(
            "/webhooks",
            &[
                ("csrf", &csrf),
                ("url", "http://127.0.0.1:9/hook"),
                ("project", ""),
                ("event:backup.failed", "on"),
                ("event:execution.failed", "on"),
                ("secret", "s3cret"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{location}");
    assert!(location.starts_with("/webhooks/"), "{location}");
    let (status, _, html) = admin.get(&location).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("http://127.0.0.1:9/hook") && html.contains("backup.failed"));
    assert!(html.contains("No delivery yet"), "{html}");
    assert!(!html.contains("s3cret"), "the secret is never shown");
    let (status, _, html) = admin.get("/webhooks").await;
    assert_eq!(status, 200);
    assert!(html.contains(&location), "the list links to it");
    let (status, back, _) = admin
        .post(&format!("{location}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!((status, back.as_str()), (303, "/webhooks"));
    let (status, _, html) = admin.get("/webhooks").await;
    assert_eq!(status, 200);
    assert!(html.contains("No webhook yet"), "{html}");

    let mut tech = PageClient::signed_in(&cp, "tech", TECH_PASSWORD).await;
    let (status, _, _) = tech.get("/webhooks").await;
    assert_eq!(status, 403);
    let csrf = tech.csrf("/account").await;
    let (status, location, _) = tech
        .post(
            "/account/alerts",
            &[
                ("csrf", &csrf),
                ("event:execution.failed", "on"),
                ("event:update.failed", "on"),
            ],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/account"));
    let (status, _, html) = tech.get("/account").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"id="alert-execution.failed" name="event:execution.failed" checked"#),
        "{html}"
    );
    assert!(
        html.contains(r#"id="alert-backup.failed" name="event:backup.failed" >"#),
        "{html}"
    );
    let api = cp.api_as("tech");
    assert_eq!(
        api.get("/api/v1/me/alerts").await.1["email"],
        json!(["execution.failed", "update.failed"])
    );
}

/// An agent that stays away past `DYNSERV_AGENT_OFFLINE_ALERT` is reported once by
/// `agent.offline` (webhook and the inbox of those who see its project); its return
/// ends the outage, and the next outage is reported again.
#[tokio::test(flavor = "multi_thread")]
async fn agent_offline_past_the_delay_reaches_the_webhook_once_per_outage() {
    let receiver = WebhookReceiver::start(200, "ok");
    let cp = ControlPlane::builder()
        .env("DYNSERV_WEBHOOK_ALLOW", "127.0.0.0/8")
        .env("DYNSERV_AGENT_OFFLINE_ALERT", "2")
        .start()
        .await;
    let (admin, tech, mut agent, _project) = setup(&cp).await;
    let (status, hook) = admin
        .post(
            "/api/v1/webhooks",
            &json!({"url": receiver.url("/offline"), "events": ["agent.offline"], "project": "Alerts"}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let offline = |requests: Vec<dynserv_tests::ReceivedRequest>| -> Vec<Value> {
        requests
            .into_iter()
            .filter(|r| r.path == "/offline")
            .map(|r| serde_json::from_str::<Value>(&r.body).expect("a JSON body"))
            .filter(|b| b["event"] == "agent.offline")
            .collect()
    };

    agent.stop();
    let first = eventually(Duration::from_secs(60), "the offline alert", || async {
        let got = offline(receiver.requests());
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["subject"]["agent"], "alert-01", "{}", first[0]);
    assert_eq!(first[0]["subject"]["server"], "alert-01", "{}", first[0]);
    assert!(
        first[0]["subject"]["offline_since"].is_string(),
        "{}",
        first[0]
    );
    let (_, inbox) = tech.get("/api/v1/notifications").await;
    assert!(
        inbox.to_string().contains("Agent alert-01 is offline"),
        "{inbox}"
    );

    // Back, then away again: a new outage, a new alert.
    agent.run();
    admin.connected_agent("alert-01").await;
    agent.stop();
    eventually(
        Duration::from_secs(60),
        "the second outage's alert",
        || async { (offline(receiver.requests()).len() >= 2).then_some(()) },
    )
    .await;
}
