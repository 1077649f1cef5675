//! Drift detection end to end (issue 18): the real `dynserv serve` (on a clock the
//! test moves forward with libfaketime's timestamp file) and a real `dynserv-agent`.
//! A playbook that writes a file is marked as the project's desired state; the file is
//! edited by hand; the next scheduled check reports the drift with its diff and fires
//! one `drift.detected` webhook; Apply puts the file back; the next check is in sync
//! and fires one `drift.resolved`. Plus the API's errors and permissions.

use std::path::Path;
use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, WebhookReceiver};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "Tq4!pinewood-harbor-ledger";
const SALES_PASSWORD: &str = "Mx8!saffron-willow-beacon";
const TECH_PASSWORD: &str = "Vr7!copper-meadow-lantern";

/// libfaketime, from Debian's `faketime` package (the README's test command installs it).
const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The control plane's clock: an offset in seconds written to libfaketime's timestamp
/// file, which the process reads again at most once a second.
struct Clock {
    file: std::path::PathBuf,
}

impl Clock {
    fn new(dir: &Path) -> Clock {
        assert!(
            Path::new(FAKETIME_LIBRARY).is_file(),
            "{FAKETIME_LIBRARY} is missing (Debian package faketime): run scripts/test.sh"
        );
        let clock = Clock {
            file: dir.join("faketime"),
        };
        clock.set(0);
        clock
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", FAKETIME_LIBRARY.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
            ("FAKETIME_CACHE_DURATION", "1".to_string()),
        ]
    }

    /// Moves the control plane's wall clock to `seconds` ahead of real time.
    fn set(&self, seconds: u64) {
        std::fs::write(&self.file, format!("+{seconds}\n")).expect("writing the faketime file");
    }
}

/// The playbook: one file with a known content, in a directory of the test's.
fn playbook(file: &Path) -> String {
    format!(
        "- name: Site\n  hosts: all\n  tasks:\n    - name: motd is managed\n      copy:\n        content: \"managed by dynserv\\n\"\n        dest: {}\n    - name: a harmless check\n      command: /bin/true\n      changed_when: false\n",
        file.display()
    )
}

/// The drift results of project `Drift` once `ready` accepts the first one.
async fn wait_result(api: &Api, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), what, || async {
        let (status, list) = api.get("/api/v1/drift?project=Drift").await;
        assert_eq!(status, 200, "{list}");
        list.as_array()?.first().filter(|r| ready(r)).cloned()
    })
    .await
}

/// The webhook deliveries received for `event`.
fn received(receiver: &WebhookReceiver, event: &str) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter(|body| body["event"] == event)
        .collect()
}

/// A file edited by hand on the server: the next scheduled check (the control plane's
/// clock moved past the hour) reports the drift with its diff and one webhook; Check
/// now while still drifted sends none; Apply fixes the file and says which task it
/// changed; the next scheduled check is in sync and sends one `drift.resolved`.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_is_detected_applied_and_resolved_with_one_webhook_each() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let clock = Clock::new(dir.path());
    let receiver = WebhookReceiver::start(200, "thanks");
    let mut builder = ControlPlane::builder().env("DYNSERV_WEBHOOK_ALLOW", "127.0.0.0/8");
    for (key, value) in clock.env() {
        builder = builder.env(key, &value);
    }
    let cp = builder.start().await;
    cp.add_user("admin", "admin", false, ADMIN_PASSWORD);
    let admin = cp.api_as("admin");
    let (status, project) = admin
        .post("/api/v1/projects", &json!({"name": "Drift"}))
        .await;
    assert_eq!(status, 201, "{project}");
    let _agent = Agent::start(&cp, &cp.enrollment_token("Drift"), "drift-01");
    admin.connected_agent("drift-01").await;

    let motd = dir.path().join("motd");
    let (status, script) = admin
        .post(
            "/api/v1/scripts",
            &json!({"name": "site", "kind": "playbook", "project": "Drift", "body": playbook(&motd)}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let script_id = script["id"].as_str().expect("script id").to_string();

    // Run it once for real: the file is as the playbook wants it.
    let (status, created) = admin
        .post(
            "/api/v1/executions",
            &json!({"agent": "drift-01", "kind": "playbook", "playbook": script_id}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let ended = admin.execution_end(&id, Duration::from_secs(60)).await;
    assert_eq!(
        ended["status"],
        "succeeded",
        "{}",
        admin.log_text(&id).await
    );
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "managed by dynserv\n"
    );

    // The webhook, then the desired state: hourly.
    let (status, hook) = admin
        .post(
            "/api/v1/webhooks",
            &json!({"url": receiver.url("/hook"), "events": ["drift.detected", "drift.resolved"], "project": "Drift"}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let (status, state) = admin
        .put(
            &format!("/api/v1/scripts/{script_id}/desired-state"),
            &json!({"targets": {"project": "Drift"}, "schedule": "0 * * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(
        state["description"],
        "every day, every hour at minute 0 (UTC)"
    );
    let never = wait_result(&admin, "the server is listed", |r| r["status"] == "never").await;
    assert_eq!(never["script"], script_id.as_str());

    // Someone edits the file by hand.
    std::fs::write(&motd, "edited by hand\n").unwrap();

    // An hour later (on the control plane's clock) the scheduled check runs.
    clock.set(3700);
    let drifted = wait_result(&admin, "the scheduled check reports drift", |r| {
        r["status"] == "drifted"
    })
    .await;
    assert_eq!(drifted["changed"], 1, "{drifted}");
    let result_id = drifted["id"].as_str().unwrap().to_string();
    let check_id = drifted["execution"].as_str().unwrap().to_string();
    let (_, check) = admin.get(&format!("/api/v1/executions/{check_id}")).await;
    assert_eq!(check["drift_check"], true, "{check}");
    assert!(
        !admin.log_text(&check_id).await.contains("DYNSERV-RESULT"),
        "the report line is never shown in the log"
    );
    let (status, report) = admin.get(&format!("/api/v1/drift/{result_id}")).await;
    assert_eq!(status, 200, "{report}");
    let task = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["status"] == "changed")
        .cloned()
        .expect("a changed task");
    assert_eq!(task["name"], "motd is managed");
    let diff = task["diff"].as_str().unwrap();
    assert!(diff.contains("-edited by hand"), "{diff}");
    assert!(diff.contains("+managed by dynserv"), "{diff}");
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "edited by hand\n",
        "a check changes nothing"
    );
    let detected = eventually(
        Duration::from_secs(30),
        "drift.detected is delivered",
        || async {
            let got = received(&receiver, "drift.detected");
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(detected[0]["subject"]["server_name"], "drift-01");
    assert_eq!(
        detected[0]["subject"]["changed_tasks"],
        json!(["motd is managed"])
    );

    // Check now while still drifted: a new check, no new alert.
    let (status, started) = admin
        .post_empty(&format!("/api/v1/scripts/{script_id}/drift-check"))
        .await;
    assert_eq!(status, 202, "{started}");
    let second = started["id"].as_str().unwrap().to_string();
    wait_result(&admin, "the second check ends", |r| {
        r["execution"] == second.as_str() && r["status"] == "drifted"
    })
    .await;

    // Apply puts the file back and says which task changed.
    let (status, applied) = admin
        .post_empty(&format!("/api/v1/drift/{result_id}/apply"))
        .await;
    assert_eq!(status, 202, "{applied}");
    let apply_id = applied["id"].as_str().unwrap().to_string();
    let ended = admin
        .execution_end(&apply_id, Duration::from_secs(60))
        .await;
    assert_eq!(
        ended["status"],
        "succeeded",
        "{}",
        admin.log_text(&apply_id).await
    );
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "managed by dynserv\n"
    );
    let (_, report) = admin.get(&format!("/api/v1/drift/{result_id}")).await;
    assert_eq!(report["last_apply"]["status"], "succeeded", "{report}");
    assert_eq!(
        report["last_apply"]["changed_tasks"],
        json!(["motd is managed"])
    );

    // The next scheduled check: in sync, one drift.resolved.
    clock.set(3700 + 3600);
    let in_sync = wait_result(&admin, "the next check is in sync", |r| {
        r["status"] == "in_sync"
    })
    .await;
    assert_eq!(in_sync["changed"], 0);
    eventually(
        Duration::from_secs(30),
        "drift.resolved is delivered",
        || async { (!received(&receiver, "drift.resolved").is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(
        received(&receiver, "drift.detected").len(),
        1,
        "one detected"
    );
    assert_eq!(
        received(&receiver, "drift.resolved").len(),
        1,
        "one resolved"
    );
}

/// The API's errors: a bad cron is a 422 naming `schedule`, a shell script is no
/// desired state, an unknown filter or status is a 400, a sales agent is refused, a
/// reader marks nothing, and DELETE stops a desired state (its results go).
#[tokio::test(flavor = "multi_thread")]
async fn desired_state_api_errors_and_permissions() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, ADMIN_PASSWORD);
    cp.add_user("sales", "sales", false, SALES_PASSWORD);
    cp.add_user("tech", "technical", false, TECH_PASSWORD);
    let admin = cp.api_as("admin");
    let sales = cp.api_as("sales");
    let tech = cp.api_as("tech");
    let (status, project) = admin
        .post("/api/v1/projects", &json!({"name": "Drift"}))
        .await;
    assert_eq!(status, 201, "{project}");
    let (status, script) = admin
        .post(
            "/api/v1/scripts",
            &json!({"name": "site", "kind": "playbook", "project": "Drift",
                "body": "- hosts: all\n  tasks:\n    - debug: msg=hi\n"}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let id = script["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/scripts/{id}/desired-state");

    let (status, body) = admin
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "schedule": "61 * * * *"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "schedule", "{body}");
    let (status, body) = admin
        .put(&path, &json!({"targets": {}, "schedule": "@hourly"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "cron": "@hourly"}),
        )
        .await;
    assert_eq!(status, 400, "unknown field: {body}");
    let (status, shell) = admin
        .post(
            "/api/v1/scripts",
            &json!({"name": "sh", "kind": "shell", "project": "Drift", "body": "true"}),
        )
        .await;
    assert_eq!(status, 201, "{shell}");
    let (status, body) = admin
        .put(
            &format!(
                "/api/v1/scripts/{}/desired-state",
                shell["id"].as_str().unwrap()
            ),
            &json!({"targets": {"project": "Drift"}, "schedule": "@hourly"}),
        )
        .await;
    assert_eq!(status, 422, "a shell script: {body}");

    let (status, state) = admin
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "schedule": "30 2 * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["description"], "every day, at 02:30 (UTC)");
    // An inventory group of the project: a bad or empty name is a 422 naming targets.
    for bad in ["9web", "web-servers", ""] {
        let (status, body) = admin
            .put(
                &path,
                &json!({"targets": {"project": "Drift", "group": bad}, "schedule": "30 2 * * *"}),
            )
            .await;
        assert_eq!(status, 422, "group {bad:?}: {body}");
        assert_eq!(body["field"], "targets", "{body}");
    }
    let (status, grouped) = admin
        .put(
            &path,
            &json!({"targets": {"project": "Drift", "group": "web"}, "schedule": "30 2 * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{grouped}");
    assert_eq!(grouped["targets"]["group"], "web", "{grouped}");
    let (status, state) = admin
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "schedule": "30 2 * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert!(state["targets"].get("group").is_none(), "{state}");
    let (status, got) = admin.get(&path).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["schedule"], "30 2 * * *");

    let (status, body) = admin.get("/api/v1/drift?status=bogus").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin.get("/api/v1/drift?colour=red").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin.get("/api/v1/drift?project=nope").await;
    assert_eq!(status, 400, "{body}");
    let (status, list) = admin.get("/api/v1/drift?status=drifted").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list, json!([]));
    // No agent in the project: nothing to check.
    let (status, body) = admin
        .post_empty(&format!("/api/v1/scripts/{id}/drift-check"))
        .await;
    assert_eq!(status, 409, "{body}");

    // A sales agent sees no drift and marks nothing.
    let (status, body) = sales.get("/api/v1/drift").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = sales
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "schedule": "@hourly"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = sales.delete(&path).await;
    assert_eq!(status, 403, "{body}");
    // A technician with read access sees the drift but marks nothing, whatever the
    // body holds (the permission is decided before the values are checked).
    let (status, body) = admin
        .post(
            &format!(
                "/api/v1/projects/{}/access",
                project["id"].as_str().unwrap()
            ),
            &json!({"username": "tech", "level": "read"}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, list) = tech.get("/api/v1/drift").await;
    assert_eq!(status, 200, "{list}");
    let (status, body) = tech
        .put(
            &path,
            &json!({"targets": {"project": "Drift"}, "schedule": "61 * * * *"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = admin.delete(&path).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = admin.get(&path).await;
    assert_eq!(status, 404);
}
