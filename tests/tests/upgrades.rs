//! Agent upgrades end to end (issue 16): a real `dynserv-agent` running under a restart
//! loop (the agent install's supervisor where there is no systemd) is upgraded in place
//! by the control plane over its connection, waiting for its running job (and one
//! without a supervisor re-executes itself); a binary
//! that fails its checksum is refused and the agent runs on unchanged; the API's
//! permissions and input checks.
//!
//! Two builds of the agent without building twice: the agent reports the version held
//! by a fixed-length marker in its binary (`dynserv_shared::upgrade`), so the test
//! copies the built `dynserv-agent` and rewrites the marker of the copy the agent runs
//! from to `0.0.9` ("the previous release"). The control plane serves another, unpatched
//! copy (the workspace's version) through `DYNSERV_AGENT_BINARY`. Both are the same
//! program; only the version they report differs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynserv_shared::upgrade::{find_version, patch_version};
use dynserv_tests::{agent_binary, eventually, Agent, Api, ControlPlane};
use serde_json::{json, Value};

/// The version the installed copy reports.
const OLD: &str = "0.0.9";

/// A copy of the built agent in a directory of its own, its marker set to `version`
/// when given.
fn agent_copy(dir: &Path, version: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("dynserv-agent");
    let mut bytes = std::fs::read(agent_binary()).expect("the built agent");
    if let Some(version) = version {
        assert!(
            patch_version(&mut bytes, version).unwrap() >= 1,
            "no marker to patch"
        );
    }
    std::fs::write(&path, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A control plane serving `served`, an admin, a project and an agent enrolled in it
/// that runs from an `0.0.9` copy under its restart loop. With `forget_key`, the agent
/// is made one enrolled before signing keys existed: it learns the key from its first
/// welcome.
async fn setup(work: &Path, served: &Path, forget_key: bool) -> (ControlPlane, Api, Agent, String) {
    setup_running(work, served, forget_key, true).await
}

/// [`setup`], the agent under its restart loop when `supervised`, else on its own.
async fn setup_running(
    work: &Path,
    served: &Path,
    forget_key: bool,
    supervised: bool,
) -> (ControlPlane, Api, Agent, String) {
    let cp = ControlPlane::builder()
        .env("DYNSERV_AGENT_BINARY", served.to_str().unwrap())
        .start()
        .await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Upgrades"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let token = cp.enrollment_token("Upgrades");
    let mut agent = Agent::enroll(&cp.quic_addr(), &token, "web-1");
    let installed = agent_copy(&work.join("installed"), Some(OLD));
    agent.use_binary(&installed);
    let key = agent.state_dir().join("signing-key.pub");
    assert!(key.is_file(), "no signing key kept at enrollment");
    if forget_key {
        std::fs::remove_file(&key).unwrap();
    }
    if supervised {
        agent.run_supervised();
    } else {
        agent.run();
    }
    let id = api.connected_agent("web-1").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // `connected` is the gateway's (in memory) at once; the hello's version is stored
    // by the ingestion's next commit, which a loaded machine may delay.
    let view = eventually(
        Duration::from_secs(15),
        "the agent's hello stored with its version",
        || async {
            let (_, view) = api.get(&format!("/api/v1/agents/{id}")).await;
            (view["version"] == OLD).then_some(view)
        },
    )
    .await;
    assert_eq!(view["outdated"], true, "{view}");
    eventually(
        Duration::from_secs(10),
        "the agent keeps the signing key",
        || async { key.is_file().then_some(()) },
    )
    .await;
    (cp, api, agent, id)
}

/// Polls the upgrade until `done` accepts it; fails with its last state after
/// `timeout`.
async fn upgrade_until(
    api: &Api,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(timeout, what, || async {
        let (status, upgrade) = api.get(&format!("/api/v1/agent-upgrades/{id}")).await;
        assert_eq!(status, 200, "{upgrade}");
        done(&upgrade).then_some(upgrade)
    })
    .await
}

/// Upgrades one agent through the API; the upgrade's id.
async fn upgrade_agent(api: &Api, agent_id: &str) -> String {
    let (status, created) = api
        .post(&format!("/api/v1/agents/{agent_id}/upgrade"), &json!({}))
        .await;
    assert_eq!(status, 202, "{created}");
    created["id"].as_str().unwrap().to_string()
}

/// The upgrade once it is no longer running (two minutes at most).
async fn upgrade_ended(api: &Api, upgrade_id: &str) -> Value {
    upgrade_until(
        api,
        upgrade_id,
        Duration::from_secs(120),
        "the upgrade ended",
        |u| u["status"] != "running",
    )
    .await
}

/// A supervised agent (one enrolled before signing keys, which learns the key from its
/// welcome) is upgraded in place: the upgrade waits for the job it runs, the binary is
/// replaced (the old one kept as `.prev`), the agent exits for its
/// supervisor, comes back and reports the new version, and the upgrade succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_supervised_agent_is_upgraded_in_place_after_its_job() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let new_version = find_version(&std::fs::read(&served).unwrap()).unwrap();
    assert_ne!(new_version, OLD);
    // Enrolled before signing keys existed: the key comes with the first welcome.
    let (_cp, api, agent, agent_id) = setup(work.path(), &served, true).await;
    let installed = agent.binary().to_path_buf();

    // A job runs while the upgrade arrives: it finishes first.
    let body = json!({"agent": agent_id, "kind": "script", "script": "sleep 12; echo job done", "interpreter": "/bin/sh"});
    let (status, job) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the job runs", || async {
        let (_, view) = api.get(&format!("/api/v1/executions/{job_id}")).await;
        (view["status"] == "running").then_some(())
    })
    .await;

    let upgrade_id = upgrade_agent(&api, &agent_id).await;

    let waiting = upgrade_until(
        &api,
        &upgrade_id,
        Duration::from_secs(60),
        "the agent staged the binary and waits for its job",
        |u| u["agents"][0]["status"] == "waiting_for_jobs",
    )
    .await;
    assert_eq!(waiting["agents"][0]["from"], OLD, "{waiting}");
    assert_eq!(
        waiting["agents"][0]["to"],
        new_version.as_str(),
        "{waiting}"
    );
    let (_, job_now) = api.get(&format!("/api/v1/executions/{job_id}")).await;
    assert_eq!(
        job_now["status"], "running",
        "the upgrade did not wait: {job_now}"
    );
    // Nothing replaced yet: the old binary still sits at its path.
    assert_eq!(
        find_version(&std::fs::read(&installed).unwrap()).as_deref(),
        Some(OLD)
    );

    let done = upgrade_ended(&api, &upgrade_id).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", agent.logs());
    assert_eq!(done["agents"][0]["status"], "succeeded", "{done}");
    assert!(done["agents"][0].get("error").is_none(), "{done}");

    // The job ran to its end on the old agent before the restart.
    let ended = api.execution_end(&job_id, Duration::from_secs(60)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");

    let view = api.connected_agent("web-1").await;
    assert_eq!(view["version"], new_version.as_str(), "{view}");
    assert_eq!(view["outdated"], false, "{view}");
    assert_eq!(
        find_version(&std::fs::read(&installed).unwrap()).as_deref(),
        Some(new_version.as_str())
    );
    let previous = installed.with_file_name("dynserv-agent.prev");
    assert_eq!(
        find_version(&std::fs::read(&previous).unwrap()).as_deref(),
        Some(OLD),
        "the previous binary is kept as .prev"
    );
    assert!(!installed.with_file_name("dynserv-agent.new").exists());
    // The agent exited for its supervisor to start the new binary.
    assert!(
        agent.logs().contains("agent exited with 75"),
        "{}",
        agent.logs()
    );
    // The new binary still runs jobs.
    let after = api.run_script(&agent_id, "echo after the upgrade").await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

/// Without a supervisor the agent re-executes itself in place: the same process (the
/// harness's child) comes back as the new version.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsupervised_agent_re_executes_itself_into_the_new_binary() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let new_version = find_version(&std::fs::read(&served).unwrap()).unwrap();
    let (_cp, api, mut agent, agent_id) = setup_running(work.path(), &served, false, false).await;
    let (status, created) = api
        .post("/api/v1/agents/upgrade", &json!({"agents": [agent_id]}))
        .await;
    assert_eq!(status, 202, "{created}");
    let upgrade_id = created["id"].as_str().unwrap().to_string();
    let done = upgrade_ended(&api, &upgrade_id).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", agent.logs());
    let view = api.connected_agent("web-1").await;
    assert_eq!(view["version"], new_version.as_str(), "{view}");
    assert!(
        agent.is_running(),
        "the agent process ended instead of re-executing"
    );
    assert!(
        agent.logs().contains("re-executing the agent"),
        "{}",
        agent.logs()
    );
}

/// A binary that changed after the upgrade was made fails the agent's checksum: the
/// agent keeps running its version, nothing is replaced, and the upgrade says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_binary_with_a_bad_checksum_is_refused_and_the_agent_runs_on() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let (_cp, api, mut agent, agent_id) = setup(work.path(), &served, false).await;
    let installed = agent.binary().to_path_buf();
    let installed_bytes = std::fs::read(&installed).unwrap();

    // Offline while the upgrade is made, so the binary can change before it is sent.
    agent.stop();
    eventually(Duration::from_secs(30), "the agent is offline", || async {
        let (_, view) = api.get(&format!("/api/v1/agents/{agent_id}")).await;
        (view["connected"] == false).then_some(())
    })
    .await;
    let (status, created) = api
        .post("/api/v1/agents/upgrade", &json!({"agents": ["web-1"]}))
        .await;
    assert_eq!(status, 202, "{created}");
    let upgrade_id = created["id"].as_str().unwrap().to_string();
    let sending = upgrade_until(
        &api,
        &upgrade_id,
        Duration::from_secs(30),
        "the batch started",
        |u| u["agents"][0]["status"] == "sending",
    )
    .await;
    assert_eq!(sending["status"], "running");

    // The served file is damaged in the middle (same size, other bytes).
    let mut bytes = std::fs::read(&served).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0xff;
    }
    std::fs::write(&served, &bytes).unwrap();

    agent.run_supervised();
    let failed = upgrade_ended(&api, &upgrade_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["agents"][0]["status"], "failed", "{failed}");
    let error = failed["agents"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("sha256 mismatch"), "{failed}");

    let view = api.connected_agent("web-1").await;
    assert_eq!(view["version"], OLD, "{view}");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        installed_bytes,
        "the binary was not touched"
    );
    assert!(!installed.with_file_name("dynserv-agent.new").exists());
    assert!(!installed.with_file_name("dynserv-agent.prev").exists());
    assert!(
        !agent.logs().contains("agent exited with"),
        "{}",
        agent.logs()
    );
    let after = api.run_script(&agent_id, "echo still here").await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

/// A new version that is not welcomed by the control plane within its trial (here the
/// control plane is down when it starts) is rolled back by the agent itself: the
/// previous binary is back at its path, the agent runs it, and once the control plane
/// is back the upgrade fails with the reason; the job that ran meanwhile is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_not_welcomed_in_its_trial_is_rolled_back() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let new_version = find_version(&std::fs::read(&served).unwrap()).unwrap();
    let (mut cp, api, mut agent, agent_id) = setup(work.path(), &served, false).await;
    let installed = agent.binary().to_path_buf();
    let version_at = |path: &Path| find_version(&std::fs::read(path).unwrap_or_default());
    agent.stop();
    agent.set_env("DYNSERV_AGENT_UPGRADE_TRIAL_S", "3");
    agent.run_supervised();
    api.connected_agent("web-1").await;

    // A job holds the swap back while the control plane goes away (long enough for the
    // binary to arrive and be checked first).
    let body = json!({"agent": agent_id, "kind": "script", "script": "sleep 25; echo job done", "interpreter": "/bin/sh"});
    let (status, job) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    let upgrade_id = upgrade_agent(&api, &agent_id).await;
    upgrade_until(
        &api,
        &upgrade_id,
        Duration::from_secs(60),
        "the agent staged the binary and waits for its job",
        |u| u["agents"][0]["status"] == "waiting_for_jobs",
    )
    .await;
    cp.stop();

    // The job ends, the binary is swapped, the new version finds no control plane
    // within 3 s and puts the previous binary back.
    eventually(
        Duration::from_secs(60),
        "the new binary is installed",
        || {
            let swapped = version_at(&installed).as_deref() == Some(new_version.as_str());
            let rolled = agent.logs().contains("rolled back");
            async move { (swapped || rolled).then_some(()) }
        },
    )
    .await;
    eventually(Duration::from_secs(60), "the agent rolls it back", || {
        let back = version_at(&installed).as_deref() == Some(OLD);
        async move { back.then_some(()) }
    })
    .await;

    cp.start_again().await;
    let failed = upgrade_ended(&api, &upgrade_id).await;
    assert_eq!(
        failed["agents"][0]["status"],
        "failed",
        "{failed}\n{}",
        agent.logs()
    );
    let error = failed["agents"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("was not welcomed") && error.contains("rolled back"),
        "{failed}"
    );
    let view = eventually(
        Duration::from_secs(30),
        "the old version reconnects",
        || async {
            let (_, view) = api.get(&format!("/api/v1/agents/{agent_id}")).await;
            (view["connected"] == true && view["version"] == OLD).then_some(view)
        },
    )
    .await;
    assert_eq!(view["outdated"], true, "{view}");
    let ended = api.execution_end(&job_id, Duration::from_secs(60)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let after = api
        .run_script(&agent_id, "echo back on the old version")
        .await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

/// Several replicas: an upgrade made on replica A reaches an agent connected to
/// replica B (B holds the connection and sends the binary it serves), and A follows it
/// to its end and sees the new version.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_made_on_one_replica_reaches_an_agent_of_another() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let new_version = find_version(&std::fs::read(&served).unwrap()).unwrap();
    let a = ControlPlane::builder()
        .postgres()
        .env("DYNSERV_AGENT_BINARY", served.to_str().unwrap())
        .start()
        .await;
    let b = a.replica().start().await;
    a.add_user("admin", "admin", false, "admin-password-1");
    let api_a = a.api_as("admin");
    let (status, body) = api_a
        .post("/api/v1/projects", &json!({"name": "Upgrades"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut agent = Agent::enroll(&b.quic_addr(), &a.enrollment_token("Upgrades"), "web-b");
    agent.use_binary(&agent_copy(&work.path().join("installed"), Some(OLD)));
    agent.run_supervised();
    let agent_id = eventually(Duration::from_secs(30), "the old version on B", || async {
        let (_, list) = api_a.get("/api/v1/agents?q=web-b").await;
        let view = list.as_array().and_then(|l| l.first()).cloned()?;
        (view["connected"] == true && view["version"] == OLD)
            .then(|| view["id"].as_str().unwrap().to_string())
    })
    .await;

    let upgrade_id = upgrade_agent(&api_a, &agent_id).await;
    let done = upgrade_ended(&api_a, &upgrade_id).await;
    assert_eq!(
        done["status"],
        "succeeded",
        "{done}\n{}\n{}",
        agent.logs(),
        b.logs()
    );
    let view = eventually(
        Duration::from_secs(30),
        "A sees the new version",
        || async {
            let (_, view) = api_a.get(&format!("/api/v1/agents/{agent_id}")).await;
            (view["version"] == new_version.as_str() && view["connected"] == true).then_some(view)
        },
    )
    .await;
    assert_eq!(view["outdated"], false, "{view}");
}

/// The upgrade endpoints: a sales agent hears 403, an unknown agent or upgrade 404,
/// a malformed or ambiguous body 400, a technician without admin on the project 403.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_api_checks_permissions_and_input() {
    let work = tempfile::tempdir().unwrap();
    let served = agent_copy(&work.path().join("served"), None);
    let (cp, api, _agent, agent_id) = setup(work.path(), &served, false).await;
    cp.add_user("sam", "sales", false, "sales-password-1");
    cp.add_user("tess", "technical", false, "tech-password-1");
    let (status, body) = api
        .post(
            "/api/v1/projects/Upgrades/access",
            &json!({"username": "tess", "level": "write"}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");

    let sales = cp.api_as("sam");
    for (path, body) in [
        (format!("/api/v1/agents/{agent_id}/upgrade"), json!({})),
        (
            "/api/v1/agents/upgrade".to_string(),
            json!({"agents": [agent_id]}),
        ),
    ] {
        let (status, answer) = sales.post(&path, &body).await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
    let (status, _) = sales.get("/api/v1/agent-upgrades/nope").await;
    assert_eq!(status, 403);

    // Write access is not enough: upgrading is the project admins' (ManageAgents).
    let tech = cp.api_as("tess");
    let (status, answer) = tech
        .post(&format!("/api/v1/agents/{agent_id}/upgrade"), &json!({}))
        .await;
    assert_eq!(status, 403, "{answer}");

    let (status, answer) = api
        .post("/api/v1/agents/no-such-agent/upgrade", &json!({}))
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = api
        .post(
            "/api/v1/agents/upgrade",
            &json!({"agents": ["no-such-agent"]}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = api.get("/api/v1/agent-upgrades/no-such-upgrade").await;
    assert_eq!(status, 404, "{answer}");

    for bad in [
        json!({}),
        json!({"agents": [agent_id], "project": "Upgrades"}),
        json!({"agents": "web-1"}),
        json!({"agent": ["web-1"]}),
    ] {
        let (status, answer) = api.post("/api/v1/agents/upgrade", &bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, answer) = api
        .post(
            &format!("/api/v1/agents/{agent_id}/upgrade"),
            &json!({"force": true}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // A project's upgrade is made for its outdated agents and audited.
    let (status, created) = api
        .post("/api/v1/agents/upgrade", &json!({"project": "Upgrades"}))
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, upgrade) = api.get(&format!("/api/v1/agent-upgrades/{id}")).await;
    assert_eq!(status, 200, "{upgrade}");
    assert_eq!(
        upgrade["agents"][0]["agent"],
        agent_id.as_str(),
        "{upgrade}"
    );
    assert_eq!(upgrade["agents"][0]["from"], OLD, "{upgrade}");
    let (status, audit) = api.get("/api/v1/audit?action=agent.upgrade").await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.to_string().contains(&format!("agent-upgrade:{id}")),
        "{audit}"
    );
}
