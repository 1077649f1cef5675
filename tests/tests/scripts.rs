//! Deployment scripts end to end: the shipped samples on a fresh install, validation
//! with line and column, rollouts over several agents in batches, the failure
//! threshold, and secret variables kept out of logs and records.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane};
use serde_json::{json, Value};

const SECRET: &str = "Sup3r-S3cret-Value-42";

async fn script_id(api: &Api, name: &str) -> String {
    let (status, list) = api.get("/api/v1/scripts").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == name))
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no script {name} in {list}"))
        .to_string()
}

async fn wait_rollout(api: &Api, id: &str) -> Value {
    eventually(
        Duration::from_secs(90),
        &format!("rollout {id} ends"),
        || async {
            let (_, r) = api.get(&format!("/api/v1/rollouts/{id}")).await;
            (r["status"] != "running" && r["summary"]["running"] == 0).then_some(r)
        },
    )
    .await
}

/// A demo control plane with a second agent `web-01` in project Nova HR.
async fn two_agents() -> (ControlPlane, Api, Agent) {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let agent = Agent::start(&cp, &cp.enrollment_token("Nova HR"), "web-01");
    api.connected_agent("localhost").await;
    api.connected_agent("web-01").await;
    (cp, api, agent)
}

/// A new installation (no --demo) lists the sample playbooks of playbooks/.
#[tokio::test]
async fn samples_exist_on_a_fresh_install() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, list) = api.get("/api/v1/scripts").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for sample in [
        "hello",
        "nginx",
        "docker",
        "system-update",
        "compose-deploy",
        "db-backup",
    ] {
        assert!(names.contains(&sample), "{sample} missing from {names:?}");
    }
    let hello = script_id(&api, "hello").await;
    let (status, script) = api.get(&format!("/api/v1/scripts/{hello}")).await;
    assert_eq!(status, 200);
    assert_eq!(script["kind"], "playbook");
    assert_eq!(script["sample"], "playbooks/hello.yml");
    assert!(
        script["body"].as_str().unwrap().contains("PLAY")
            || script["body"].as_str().unwrap().contains("hosts: all")
    );
}

/// Saving an invalid playbook answers 422 with the line and column of the error; a
/// valid one is stored and can be changed.
#[tokio::test]
async fn invalid_playbook_is_refused_with_line_and_column() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let bad = "- name: bad\n  hosts: all\n  tasks:\n    - name: nope\n      no_such_module_xyz:\n        a: 1\n";
    let (status, body) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "bad", "kind": "playbook", "body": bad}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "body");
    assert_eq!(body["line"], 4, "{body}");
    assert!(body["column"].as_u64().unwrap() >= 1, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no_such_module_xyz"),
        "{body}"
    );

    let good = "- name: good\n  hosts: all\n  tasks:\n    - debug:\n        msg: hi\n";
    let (status, created) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "good", "kind": "playbook", "body": good,
                    "variables": [{"name": "who", "default": "world", "description": "whom to greet"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, body) = api
        .put(
            &format!("/api/v1/scripts/{id}"),
            &json!({"body": "- hosts: all\n  tasks: [\n"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["line"].as_u64().unwrap() >= 2, "{body}");
    let (status, body) = api
        .put(
            &format!("/api/v1/scripts/{id}"),
            &json!({"description": "greets"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["description"], "greets");
    assert_eq!(body["variables"][0]["default"], "world");
    // A secret variable cannot keep a stored default.
    let (status, body) = api
        .put(
            &format!("/api/v1/scripts/{id}"),
            &json!({"variables": [{"name": "pw", "default": "x", "secret": true}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // Names are unique.
    let (status, _) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "GOOD", "kind": "shell", "body": "true"}),
        )
        .await;
    assert_eq!(status, 422);
}

/// The hello sample on two agents in batches of one: the second batch starts after the
/// first ended, both succeed, and the summary says so.
#[tokio::test]
async fn hello_on_two_agents_in_batches_of_one() {
    let (_cp, api, _agent) = two_agents().await;
    let hello = script_id(&api, "hello").await;
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{hello}/run"),
            &json!({"targets": {"servers": ["localhost", "web-01"]}, "serial": 1,
                    "vars": {"greeting": "Bonjour"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    assert_eq!(rollout["status"], "running");
    assert_eq!(
        rollout["executions"].as_array().unwrap().len(),
        1,
        "{rollout}"
    );
    assert_eq!(rollout["summary"]["pending"], 1, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    let done = wait_rollout(&api, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["summary"]["succeeded"], 2, "{done}");
    let targets = done["targets"].as_array().unwrap();
    assert_eq!(targets[0]["batch"], 1);
    assert_eq!(targets[1]["batch"], 2);
    let first = &targets[0]["execution"];
    let second = &targets[1]["execution"];
    assert_eq!(first["exit_code"], 0);
    assert_eq!(second["exit_code"], 0);
    assert!(
        second["created_at"].as_str().unwrap() >= first["finished_at"].as_str().unwrap(),
        "the second batch started before the first ended: {done}"
    );
    for target in targets {
        let log = api.log_text(target["execution_id"].as_str().unwrap()).await;
        assert!(log.contains("Bonjour from"), "{log}");
        assert!(log.contains("PLAY RECAP"), "{log}");
    }
}

/// A secret variable's value appears neither in the stored log nor in the execution
/// or rollout records, for a playbook run and for a shell script given by script id.
#[tokio::test]
async fn secret_values_are_masked() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    api.connected_agent("localhost").await;
    let playbook = "- name: secret\n  hosts: all\n  tasks:\n    - name: show\n      debug:\n        msg: \"pw is {{ db_password }}\"\n    - name: echo\n      command: echo got {{ db_password }}\n";
    let (status, created) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "with-secret", "kind": "playbook", "body": playbook,
                    "variables": [{"name": "db_password", "secret": true, "required": true}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // Sales people have no business with scripts: refused before any lookup.
    let (status, _) = cp.api_as("sales").get("/api/v1/scripts").await;
    assert_eq!(status, 403);
    let (status, _) = cp
        .api_as("sales")
        .get(&format!("/api/v1/scripts/{id}"))
        .await;
    assert_eq!(status, 403);

    // A required secret must be given.
    let (status, body) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"servers": ["localhost"]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"project": "Local"}, "vars": {"db_password": SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    assert!(!rollout.to_string().contains(SECRET));
    let done = wait_rollout(&api, rollout["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(!done.to_string().contains(SECRET));
    let execution_id = done["targets"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = api.log_text(&execution_id).await;
    assert!(log.contains("pw is ********"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    let (_, record) = api.get(&format!("/api/v1/executions/{execution_id}")).await;
    assert!(!record.to_string().contains(SECRET), "{record}");

    // A shell script run through POST /api/v1/executions by script id: the secret is
    // an environment variable, masked in the output too.
    let (status, shell) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "shell-secret", "kind": "shell", "body": "echo \"token=$API_TOKEN\"\necho \"who=$WHO\"\n",
                    "variables": [{"name": "API_TOKEN", "secret": true}, {"name": "WHO", "default": "ops"}]}),
        )
        .await;
    assert_eq!(status, 201, "{shell}");
    let (status, exec) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "localhost", "kind": "playbook", "playbook": shell["id"], "vars": {"API_TOKEN": SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{exec}");
    let exec_id = exec["id"].as_str().unwrap().to_string();
    let end = eventually(Duration::from_secs(30), "the shell script ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{exec_id}")).await;
        (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
    })
    .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert!(!end.to_string().contains(SECRET));
    let log = api.log_text(&exec_id).await;
    assert!(log.contains("token=********"), "{log}");
    assert!(log.contains("who=ops"), "{log}");
    assert!(!log.contains(SECRET), "{log}");

    // The playbook sample by id through the same endpoint.
    let hello = script_id(&api, "hello").await;
    let (status, exec) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "localhost", "kind": "playbook", "playbook": hello, "check": true}),
        )
        .await;
    assert_eq!(status, 201, "{exec}");
    assert_eq!(exec["kind"], "playbook");
}

/// With max_failures 1 and batches of one, the first failure stops the rollout and the
/// other server is skipped without running.
#[tokio::test]
async fn max_failures_stops_and_skips_the_rest() {
    let (cp, api, _agent) = two_agents().await;
    let (status, created) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "fails", "kind": "shell", "body": "echo failing\nexit 3\n"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"servers": ["localhost", "web-01"]}, "serial": 1, "max_failures": 1}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let done = wait_rollout(&api, rollout["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "stopped", "{done}");
    assert_eq!(done["summary"]["failed"], 1, "{done}");
    assert_eq!(done["summary"]["skipped"], 1, "{done}");
    let targets = done["targets"].as_array().unwrap();
    assert_eq!(targets[0]["state"], "failed");
    assert_eq!(targets[0]["execution"]["exit_code"], 3);
    assert_eq!(targets[1]["state"], "skipped");
    assert!(targets[1]["execution_id"].is_null(), "{done}");

    // Without a threshold both run and the rollout is failed.
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"servers": ["localhost", "web-01"]}, "serial": 2}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    assert_eq!(rollout["executions"].as_array().unwrap().len(), 2);
    let done = wait_rollout(&api, rollout["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["summary"]["failed"], 2, "{done}");

    // A technician with write access to Nova HR keeps scripts for that project only,
    // and runs them only there.
    let sohila = cp.api_as("sohila");
    let (status, body) = sohila
        .post(
            "/api/v1/scripts",
            &json!({"name": "everywhere", "kind": "shell", "body": "true"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, nova) = sohila
        .post(
            "/api/v1/scripts",
            &json!({"name": "nova-only", "kind": "shell", "body": "echo nova", "project": "Nova HR"}),
        )
        .await;
    assert_eq!(status, 201, "{nova}");
    let nova_id = nova["id"].as_str().unwrap();
    let (status, body) = sohila
        .post(
            &format!("/api/v1/scripts/{nova_id}/run"),
            &json!({"targets": {"servers": ["localhost"]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/v1/scripts/{nova_id}/run"),
            &json!({"targets": {"servers": ["localhost", "web-01"]}}),
        )
        .await;
    assert_eq!(status, 422, "a Nova HR script ran on Local: {body}");
    let (status, rollout) = sohila
        .post(
            &format!("/api/v1/scripts/{nova_id}/run"),
            &json!({"targets": {"project": "Nova HR"}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let done = wait_rollout(&sohila, rollout["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

/// A playbook using a module the native runtime lacks is refused on save unless the
/// script allows ansible-core; allowed, it runs on the agent with that one task going
/// through ansible-core (found on the agent's PATH) and its result registered.
#[tokio::test]
async fn unknown_module_runs_through_ansible_when_the_script_allows_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv_bin = root.join(".venv-ansible/bin");
    assert!(
        venv_bin.join("ansible").is_file(),
        "ansible-core is missing in {}; run scripts/test.sh",
        venv_bin.display()
    );
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cp = ControlPlane::builder()
        .demo()
        .env("PATH", &path)
        .env(
            "ANSIBLE_PYTHON_INTERPRETER",
            &venv_bin.join("python").display().to_string(),
        )
        .start()
        .await;
    let api = cp.api_as("admin");
    api.connected_agent("localhost").await;
    let dir = cp.artifact("find-me");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a.txt", "b.txt", "c.log"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    let playbook = format!(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: find is not native\n      ansible.builtin.find:\n        paths: {}\n        patterns: '*.txt'\n      register: found\n    - debug:\n        msg: \"matched {{{{ found.matched }}}} files\"\n",
        dir.display()
    );
    let (status, refused) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "finder", "kind": "playbook", "body": playbook}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("ansible.builtin.find"),
        "{refused}"
    );
    let (status, created) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "finder", "kind": "playbook", "body": playbook, "allow_ansible_fallback": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"servers": ["localhost"]}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let done = wait_rollout(&api, rollout["id"].as_str().unwrap()).await;
    let execution_id = done["targets"][0]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = api.log_text(&execution_id).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{log}");
    assert!(log.contains("matched 2 files"), "{log}");
}

/// While a job waits for an offline agent, its secret variable is kept sealed: neither
/// the store file nor a `dynserv backup` of it holds the value in clear. When the agent
/// comes back it still receives the value (its output shows it masked).
#[tokio::test]
async fn secrets_of_a_waiting_job_are_sealed_at_rest() {
    let (cp, api, mut agent) = two_agents().await;
    let (status, shell) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "sealed-secret", "kind": "shell", "body": "echo \"token=$API_TOKEN\"\n",
                    "variables": [{"name": "API_TOKEN", "secret": true}]}),
        )
        .await;
    assert_eq!(status, 201, "{shell}");
    agent.stop();
    let (status, exec) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "web-01", "kind": "playbook", "playbook": shell["id"],
                    "vars": {"API_TOKEN": SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{exec}");
    let exec_id = exec["id"].as_str().unwrap().to_string();
    assert_eq!(exec["status"], "queued", "{exec}");

    let backup = cp.artifact("sealed.redb");
    cp.cli_ok(&["backup", "--out", backup.to_str().unwrap()]);
    for file in [cp.data_dir().join("dynserv.redb"), backup] {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret in clear",
            file.display()
        );
    }

    agent.restart();
    let end = eventually(Duration::from_secs(30), "the waiting job ends", || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{exec_id}")).await;
        (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
    })
    .await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let log = api.log_text(&exec_id).await;
    assert!(log.contains("token=********"), "{log}");
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.display().to_string()).expect("no NUL in the path");
    // SAFETY: mkfifo only reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Saving a script never reads the control plane's own files (regression: saving
/// `import_tasks: /etc/passwd` answered "got a str", a missing file "could not read",
/// which told whether a file exists and what it holds, and a FIFO hung the save): every
/// such path is accepted at once, through the API and the editor page alike, and the
/// agent resolves the import when it runs the playbook.
#[tokio::test]
async fn saving_never_reads_control_plane_files() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let fifo = cp.dir().join("import.fifo");
    mkfifo(&fifo);
    let tasks = cp.dir().join("imported-tasks.yml");
    std::fs::write(&tasks, "- debug:\n    msg: imported-at-run-time\n").unwrap();
    let paths = [
        "/etc/passwd".to_string(),
        "/no/such/tasks.yml".to_string(),
        fifo.display().to_string(),
        tasks.display().to_string(),
    ];
    let mut answers = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let body = format!("- hosts: all\n  tasks:\n    - import_tasks: {path}\n");
        let create = json!({"name": format!("import-{i}"), "kind": "playbook", "body": body});
        let request = api.post("/api/v1/scripts", &create);
        let (status, answer) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap_or_else(|_| panic!("saving an import of {path} did not answer in 10 s"));
        assert_eq!(status, 201, "{path}: {answer}");
        assert!(!answer.to_string().contains("root:"), "{answer}");
        answers.push(status);
        // Changing the body goes through the same check.
        let path = format!("/api/v1/scripts/{}", answer["id"].as_str().unwrap());
        let change = json!({"body": body});
        let request = api.put(&path, &change);
        let (status, answer) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap_or_else(|_| panic!("updating an import of {path} did not answer in 10 s"));
        assert_eq!(status, 200, "{path}: {answer}");
    }

    let mut page = dynserv_tests::PageClient::signed_in(&cp, "admin", "admin123").await;
    let csrf = page.csrf("/scripts/new").await;
    let body = format!(
        "- hosts: all\n  tasks:\n    - import_tasks: {}\n",
        fifo.display()
    );
    let form = [
        ("csrf", csrf.as_str()),
        ("name", "import-from-page"),
        ("kind", "playbook"),
        ("body", body.as_str()),
        ("interpreter", "/bin/sh"),
        ("project", ""),
    ];
    let (status, location, html) =
        tokio::time::timeout(Duration::from_secs(10), page.post("/scripts/new", &form))
            .await
            .expect("the editor saved an import of a FIFO within 10 s");
    assert_eq!(status, 303, "{html}");
    assert!(location.starts_with("/scripts/"), "{location}");

    // The agent reads the imported file when it runs the playbook.
    api.connected_agent("localhost").await;
    let id = script_id(&api, "import-3").await;
    let (status, rollout) = api
        .post(
            &format!("/api/v1/scripts/{id}/run"),
            &json!({"targets": {"servers": ["localhost"]}}),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let rollout = wait_rollout(&api, rollout["id"].as_str().unwrap()).await;
    assert_eq!(rollout["status"], "succeeded", "{rollout}");
    let execution = rollout["targets"][0]["execution_id"].as_str().unwrap();
    let log = api.log_text(execution).await;
    assert!(log.contains("imported-at-run-time"), "{log}");
}

/// Script names are unique per project, and authorization comes before any lookup or
/// validation (regression: names were unique across all projects and checked before
/// the permission, so a technician learnt another project's script names; a read-only
/// user heard 422 where 403 was due). `?project=` filters the list; an unknown project
/// is 400.
#[tokio::test]
async fn script_names_are_unique_per_project() {
    let cp = ControlPlane::start_demo().await;
    let admin = cp.api_as("admin");
    // fred writes on Frappe ERP only; rita reads Nova HR and writes Frappe ERP.
    for (user, grants) in [
        ("fred", vec![("Frappe ERP", "write")]),
        ("rita", vec![("Nova HR", "read"), ("Frappe ERP", "write")]),
    ] {
        let (status, answer) = admin
            .post(
                "/api/v1/users",
                &json!({"username": user, "password": "Tq4!pinewood-harbor-ledger", "role": "technical"}),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
        for (project, level) in grants {
            let (status, answer) = admin
                .post(
                    &format!("/api/v1/projects/{}/access", project.replace(' ', "%20")),
                    &json!({"username": user, "level": level}),
                )
                .await;
            assert_eq!(status, 201, "{answer}");
        }
    }
    let fred = cp.api_as("fred");
    let rita = cp.api_as("rita");
    let script = |name: &str, project: &str| json!({"name": name, "kind": "shell", "body": "echo deploy\n", "project": project});
    let (status, nova_deploy) = admin
        .post("/api/v1/scripts", &script("deploy", "Nova HR"))
        .await;
    assert_eq!(status, 201, "{nova_deploy}");

    // Another project may have its own `deploy`.
    let (status, frappe_deploy) = fred
        .post("/api/v1/scripts", &script("deploy", "Frappe ERP"))
        .await;
    assert_eq!(
        status, 201,
        "another project's name is free: {frappe_deploy}"
    );
    let (status, answer) = fred
        .post("/api/v1/scripts", &script("Deploy", "Frappe ERP"))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("name")),
        "{answer}"
    );

    // A project fred may not see answers like one that does not exist.
    let (status, hidden) = fred
        .post("/api/v1/scripts", &script("deploy", "Nova HR"))
        .await;
    let (status_missing, missing) = fred
        .post("/api/v1/scripts", &script("deploy", "No Such Project"))
        .await;
    assert_eq!((status, status_missing), (422, 422), "{hidden} {missing}");
    assert_eq!(
        hidden["error"].as_str().unwrap().replace("Nova HR", "X"),
        missing["error"]
            .as_str()
            .unwrap()
            .replace("No Such Project", "X")
    );

    // A read-only user hears 403 before any validation: a taken name, a broken kind.
    let (status, answer) = rita
        .post("/api/v1/scripts", &script("deploy", "Nova HR"))
        .await;
    assert_eq!(status, 403, "{answer}");
    let mut broken = script("fresh", "Nova HR");
    broken["kind"] = json!("nonsense");
    let (status, answer) = rita.post("/api/v1/scripts", &broken).await;
    assert_eq!(status, 403, "{answer}");
    let nova_id = nova_deploy["id"].as_str().unwrap();
    let (status, answer) = rita
        .put(&format!("/api/v1/scripts/{nova_id}"), &json!({"body": ""}))
        .await;
    assert_eq!(status, 403, "{answer}");

    // `?project=` filters: the project's scripts and the global ones.
    let names = |list: &Value| -> Vec<(String, Value)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["project"].clone(),
                )
            })
            .collect()
    };
    let (status, list) = admin.get("/api/v1/scripts?project=Frappe%20ERP").await;
    assert_eq!(status, 200, "{list}");
    let listed = names(&list);
    assert!(
        listed.contains(&("deploy".into(), json!("Frappe ERP"))),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&("deploy".into(), json!("Nova HR"))),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("hello".into(), Value::Null)),
        "{listed:?}"
    );
    let (status, answer) = admin.get("/api/v1/scripts?project=nope").await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = fred.get("/api/v1/scripts?project=Nova%20HR").await;
    assert_eq!(
        status, 400,
        "a project fred may not see is unknown to him: {answer}"
    );

    // By name: fred sees his own deploy; an admin seeing both is asked for the id.
    let (status, answer) = fred.get("/api/v1/scripts/deploy").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], frappe_deploy["id"]);
    let (status, answer) = admin.get("/api/v1/scripts/deploy").await;
    assert_eq!(status, 422, "{answer}");
}
