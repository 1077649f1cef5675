//! Bringing existing servers in, end to end, against a real OpenSSH server (Debian's
//! `sshd` on a loopback port, see `dynserv_tests::Sshd`): a server added by hand, the
//! project's SSH settings (sealed, only the fingerprint shown), the connection test that
//! pins the host key and refuses a changed one until it is accepted, an agent install
//! over SSH that ends with a connected agent (and changes nothing when run again), and
//! clear failures for a wrong key and an unreachable port.

use std::time::Duration;

use dynserv_tests::{eventually, keygen, Api, ControlPlane, InstalledAgent, Sshd};
use serde_json::{json, Value};

const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";

/// A control plane with an admin and a project; answers the admin's API client and the
/// project id.
async fn control_plane() -> (ControlPlane, Api, String) {
    let cp = ControlPlane::builder().start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    let api = cp.api_as("admin");
    let (status, project) = api
        .post("/api/v1/projects", &json!({"name": "Legacy"}))
        .await;
    assert_eq!(status, 201, "{project}");
    let id = project["id"].as_str().expect("project id").to_string();
    (cp, api, id)
}

/// Adds a server by hand at 127.0.0.1; answers its id.
async fn add_server(api: &Api, project: &str, name: &str) -> String {
    let (status, server) = api
        .post(
            "/api/v1/servers",
            &json!({"name": name, "project": project, "ipv4": "127.0.0.1", "notes": "racked by hand"}),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    assert_eq!(server["name"], name);
    assert_eq!(server["agent"], Value::Null, "{server}");
    server["id"].as_str().expect("server id").to_string()
}

/// Sets the project's SSH settings; answers what the API answered.
async fn set_ssh(api: &Api, project: &str, body: Value) -> (u16, Value) {
    api.put(&format!("/api/v1/projects/{project}/ssh"), &body)
        .await
}

async fn ssh_test(api: &Api, server: &str) -> Value {
    let (status, answer) = api
        .post_empty(&format!("/api/v1/servers/{server}/ssh-test"))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Waits for an install to end; answers it.
async fn install_outcome(api: &Api, id: &str) -> Value {
    eventually(
        Duration::from_secs(120),
        "the agent install ends",
        || async {
            let (status, install) = api.get(&format!("/api/v1/agent-installs/{id}")).await;
            assert_eq!(status, 200, "{install}");
            (install["status"] != "running").then_some(install)
        },
    )
    .await
}

/// The key is sealed and never returned, a key that cannot be read is refused naming
/// the field, the first test pins the host key (its fingerprint as ssh-keygen prints
/// it), a changed host key is refused with a warning until it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_pins_the_host_key_and_refuses_a_changed_one() {
    let (cp, api, project) = control_plane().await;
    let keys = tempfile::tempdir().unwrap();
    let client = keygen(keys.path(), "client", "ed25519", &[]);
    let mut sshd = Sshd::start(&[&client.public]).await;
    let server = add_server(&api, &project, "legacy-1").await;

    // Bad input: an unreadable key is a 422 naming the field; nothing is stored.
    let (status, answer) = set_ssh(
        &api,
        &project,
        json!({"username": "root", "port": sshd.port(), "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----"}),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "private_key", "{answer}");
    let (status, _) = api.get(&format!("/api/v1/projects/{project}/ssh")).await;
    assert_eq!(status, 404);

    let (status, saved) = set_ssh(
        &api,
        &project,
        json!({"username": "root", "port": sshd.port(), "private_key": client.private}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let (status, shown) = api.get(&format!("/api/v1/projects/{project}/ssh")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["username"], "root");
    assert_eq!(shown["port"], sshd.port());
    assert_eq!(shown["key_fingerprint"], client.fingerprint.as_str());
    let text = shown.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && shown.get("private_key").is_none(),
        "the key is never returned: {text}"
    );
    // Sealed at rest: the key's text is nowhere in a backup of the store (the same
    // portable file on either backend).
    let backup = cp.dir().join("ssh-backup.redb");
    let backup_text = backup.to_string_lossy().to_string();
    cp.cli_ok(&["backup", "--out", &backup_text]);
    let stored = std::fs::read(&backup).expect("the backup file");
    assert!(stored.len() > 4096, "a backup of the store");
    let body_line = client.private.lines().nth(1).expect("a key body line");
    assert!(
        !stored
            .windows(body_line.len())
            .any(|w| w == body_line.as_bytes()),
        "the private key is stored in clear"
    );

    let (_, state) = api.get(&format!("/api/v1/servers/{server}/ssh")).await;
    assert_eq!(state["status"], "never", "{state}");

    let first = ssh_test(&api, &server).await;
    assert_eq!(first["ok"], true, "{first}\n{}", sshd.log());
    let pinned = sshd.host_key_fingerprint();
    assert_eq!(first["host_key_fingerprint"], pinned.as_str());
    let (_, state) = api.get(&format!("/api/v1/servers/{server}/ssh")).await;
    assert_eq!(state["status"], "ok", "{state}");
    assert_eq!(state["host_key_fingerprint"], pinned.as_str());

    // The server comes back with another host key: refused, with a warning.
    sshd.change_host_key().await;
    let changed = sshd.host_key_fingerprint();
    assert_ne!(changed, pinned);
    let refused = ssh_test(&api, &server).await;
    assert_eq!(refused["ok"], false, "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("host key") && error.contains("changed") && error.contains(&pinned),
        "{error}"
    );
    assert_eq!(refused["host_key_fingerprint"], changed.as_str());
    let (_, state) = api.get(&format!("/api/v1/servers/{server}/ssh")).await;
    assert_eq!(state["status"], "failed", "{state}");
    assert_eq!(
        state["host_key_fingerprint"],
        pinned.as_str(),
        "the pin stays"
    );
    assert_eq!(state["offered_fingerprint"], changed.as_str());
    // Installing is refused the same way: nothing is sent to that server.
    let (status, install) = api
        .post_empty(&format!("/api/v1/servers/{server}/install-agent"))
        .await;
    assert_eq!(status, 202, "{install}");
    let install = install_outcome(&api, install["id"].as_str().unwrap()).await;
    assert_eq!(install["status"], "failed", "{install}");
    assert_eq!(install["steps"][0]["name"], "connect");
    assert!(
        install["steps"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("changed"),
        "{install}"
    );

    // An administrator accepts the new key: tests pass again.
    let (status, accepted) = api
        .post_empty(&format!("/api/v1/servers/{server}/ssh-host-key/accept"))
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["host_key_fingerprint"], changed.as_str());
    let again = ssh_test(&api, &server).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["host_key_fingerprint"], changed.as_str());

    let (_, audit) = api.get("/api/v1/audit").await;
    let audit = audit.to_string();
    for action in [
        "server.create",
        "project.ssh_update",
        "server.ssh_test",
        "server.ssh_host_key_accept",
    ] {
        assert!(audit.contains(action), "{action} is audited: {audit}");
    }
}

/// An install over SSH uploads the agent, enrolls it with a token bound to the server
/// and starts it supervised: the server shows a connected agent; running it again
/// changes nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_install_over_ssh_connects_the_server_and_a_rerun_changes_nothing() {
    let (cp, api, project) = control_plane().await;
    let keys = tempfile::tempdir().unwrap();
    // A PEM RSA key with a passphrase: the other key formats work through the same path.
    let client = keygen(
        keys.path(),
        "client",
        "rsa",
        &["-b", "2048", "-m", "PEM", "-N", "Tq4!pinewood"],
    );
    let sshd = Sshd::start(&[&client.public]).await;
    let install_dir = sshd.dir().join("agent");
    let _agent = InstalledAgent(install_dir.clone());
    // The agent enrolls under its server's name ("legacy-2"), not the host's.
    let server = add_server(&api, &project, "legacy-2").await;
    let (status, saved) = set_ssh(
        &api,
        &project,
        json!({"username": "root", "port": sshd.port(), "private_key": client.private,
               "passphrase": "Tq4!pinewood", "install_dir": install_dir}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["key_fingerprint"], client.fingerprint.as_str());

    let (status, started) = api
        .post_empty(&format!("/api/v1/servers/{server}/install-agent"))
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("install id").to_string();
    assert_eq!(started["server"], server.as_str());
    let install = install_outcome(&api, &id).await;
    assert_eq!(install["status"], "succeeded", "{install}\n{}", sshd.log());
    let names: Vec<&str> = install["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "connect",
            "inspect",
            "upload",
            "enroll",
            "start",
            "connected"
        ]
    );
    for step in install["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "succeeded", "{step}");
        assert!(step["at"].is_string(), "{step}");
    }
    assert!(
        install_dir.join("dynserv-agent").is_file() && install_dir.join("state").is_dir(),
        "the agent is installed in {}",
        install_dir.display()
    );

    let (_, shown) = api.get(&format!("/api/v1/servers/{server}")).await;
    assert_eq!(shown["agent"]["connected"], true, "{shown}");
    let (_, agents) = api.get("/api/v1/agents").await;
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["name"], "legacy-2");

    // Again, with the agent connected: nothing changes, and it says so.
    let (status, rerun) = api
        .post_empty(&format!("/api/v1/servers/{server}/install-agent"))
        .await;
    assert_eq!(status, 202, "{rerun}");
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    assert_eq!(rerun["unchanged"], true, "{rerun}");
    let message = rerun["steps"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nothing was changed"), "{message}");
    let (_, agents) = api.get("/api/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 1, "no second agent");

    let (_, audit) = api.get("/api/v1/audit").await;
    let audit = audit.to_string();
    assert!(audit.contains("server.agent_install"), "{audit}");
    assert!(audit.contains("server.agent_install_end"), "{audit}");
    // The SSH work ran on the runtime, its store calls on the blocking pool.
    let (_, metrics) = api.get_text("/metrics").await;
    let on_workers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dynserv_store_calls_on_async_workers "))
        .expect("the metric is exported");
    assert_eq!(
        on_workers.trim(),
        "0",
        "store calls ran on async workers:\n{}",
        cp.logs()
    );
}

/// A key the server does not accept and a port nobody listens on fail the test and the
/// install with reasons a person can act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_unreachable_port_fail_with_clear_reasons() {
    let (_cp, api, project) = control_plane().await;
    let keys = tempfile::tempdir().unwrap();
    let allowed = keygen(keys.path(), "allowed", "ed25519", &[]);
    let other = keygen(keys.path(), "other", "ecdsa", &["-m", "PEM"]);
    let sshd = Sshd::start(&[&allowed.public]).await;
    let server = add_server(&api, &project, "legacy-3").await;

    let (status, saved) = set_ssh(
        &api,
        &project,
        json!({"username": "root", "port": sshd.port(), "private_key": other.private}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let answer = ssh_test(&api, &server).await;
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the key") && error.contains(&other.fingerprint),
        "{error}"
    );
    // The host key was seen: it is pinned and shown even though the login failed.
    assert_eq!(answer["host_key_fingerprint"], sshd.host_key_fingerprint());

    let closed = dynserv_tests::free_tcp_port();
    let (status, _) = set_ssh(
        &api,
        &project,
        json!({"username": "root", "port": closed, "private_key": allowed.private}),
    )
    .await;
    assert_eq!(status, 200);
    let answer = ssh_test(&api, &server).await;
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot reach 127.0.0.1:{closed}")) && error.contains("refused"),
        "{error}"
    );
    let (_, state) = api.get(&format!("/api/v1/servers/{server}/ssh")).await;
    assert_eq!(state["status"], "failed");
    assert_eq!(state["last_test"]["error"], error);

    let (status, started) = api
        .post_empty(&format!("/api/v1/servers/{server}/install-agent"))
        .await;
    assert_eq!(status, 202, "{started}");
    let install = install_outcome(&api, started["id"].as_str().unwrap()).await;
    assert_eq!(install["status"], "failed", "{install}");
    let message = install["steps"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot reach"), "{install}");

    // "Every server without an agent" of the project: this one, again.
    let (status, all) = api
        .post_empty(&format!("/api/v1/projects/{project}/install-agent"))
        .await;
    assert_eq!(status, 202, "{all}");
    let started = all["installs"].as_array().expect("installs");
    assert_eq!(started.len(), 1, "{all}");
    assert_eq!(started[0]["server"], server.as_str());
    let install = install_outcome(&api, started[0]["id"].as_str().unwrap()).await;
    assert_eq!(install["status"], "failed", "{install}");

    // Without SSH settings an install is refused at once.
    let (status, _) = api.delete(&format!("/api/v1/projects/{project}/ssh")).await;
    assert_eq!(status, 200);
    let (status, refused) = api
        .post_empty(&format!("/api/v1/servers/{server}/install-agent"))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no SSH settings"),
        "{refused}"
    );
}

/// In the browser: a server added with the form, the project's SSH settings form
/// (fingerprint shown, key never), "Test connection" with its status, and "Install
/// agent" whose steps the install page follows live to a connected agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_install_steps_are_followed_live() {
    let (cp, api, project) = control_plane().await;
    let keys = tempfile::tempdir().unwrap();
    let client = keygen(keys.path(), "client", "ecdsa", &[]);
    let sshd = Sshd::start(&[&client.public]).await;
    let install_dir = sshd.dir().join("agent");
    let _agent = InstalledAgent(install_dir.clone());

    let browser = dynserv_tests::Browser::start(&cp.base_url()).await;
    browser.login("admin", PASSWORD).await;
    browser.goto("/servers/new").await;
    browser.fill("#name", "legacy-web").await;
    browser
        .eval(&format!(
            "document.querySelector('#project').value = '{project}';"
        ))
        .await;
    browser.fill("#ipv4", "127.0.0.1").await;
    browser
        .submit_and_wait_for_next_page("#server-new-submit")
        .await;
    let server = browser
        .path()
        .await
        .strip_prefix("/servers/")
        .expect("the new server's page")
        .to_string();
    assert_eq!(browser.text("#ssh-status").await, "never tested");

    browser.goto(&format!("/projects/{project}/ssh")).await;
    browser.fill("#username", "root").await;
    browser.fill("#port", &sshd.port().to_string()).await;
    browser.fill("#private_key", &client.private).await;
    browser
        .fill("#install_dir", &install_dir.to_string_lossy())
        .await;
    browser
        .submit_and_wait_for_next_page("#ssh-settings-save")
        .await;
    assert_eq!(
        browser.path().await,
        format!("/projects/{project}"),
        "saving the SSH settings led elsewhere: {}",
        browser.page_text().await
    );
    assert!(
        browser
            .text("#ssh-fingerprint")
            .await
            .contains(&client.fingerprint),
        "{}",
        browser.page_text().await
    );
    assert!(!browser.page_text().await.contains("PRIVATE KEY"));

    browser.goto(&format!("/servers/{server}")).await;
    browser.submit_and_wait_for_next_page("#ssh-test").await;
    assert_eq!(
        browser.text("#ssh-status").await,
        "ok",
        "{}",
        browser.page_text().await
    );
    assert_eq!(
        browser.text("#ssh-host-key").await,
        sshd.host_key_fingerprint()
    );
    browser.screenshot(&cp.artifact("server-ssh.png")).await;

    browser.click("#install-agent").await;
    browser
        .wait_for(".modal[data-confirm-ready] [data-confirm-ok]")
        .await;
    browser.click(".modal.show [data-confirm-ok]").await;
    let install = eventually(Duration::from_secs(30), "the install page", || async {
        let path = browser.path().await;
        path.strip_prefix("/agent-installs/").map(String::from)
    })
    .await;
    // The page follows the steps by itself (no reload) until the agent connected.
    eventually(Duration::from_secs(120), "the steps end on the page", || async {
        let state = browser
            .eval("var e = document.querySelector('[data-install-step=\"connected\"]'); return e ? e.getAttribute('data-state') : '';")
            .await;
        (state == "succeeded").then_some(())
    })
    .await;
    assert_eq!(browser.text("#install-status").await, "succeeded");
    assert_eq!(
        browser.path().await,
        format!("/agent-installs/{install}"),
        "no reload to another page"
    );
    browser.screenshot(&cp.artifact("agent-install.png")).await;
    let (_, shown) = api.get(&format!("/api/v1/servers/{server}")).await;
    assert_eq!(shown["agent"]["connected"], true, "{shown}");
}
