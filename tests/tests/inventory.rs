//! Run inventories end to end (issue 14): a project synced from the Hetzner simulator
//! with a `role=web` label on one server, an operator group on another, group and
//! host variables through the API; real agents run a `hosts: web` playbook and only
//! the web servers play it, with `group_names`, `groups`, `hostvars` and the
//! variables' precedence as Ansible has them; a server outside the pattern says so in
//! its summary; a rollout whose plays match none of its targets is refused; bad input
//! is a 4xx; the server page's groups form.

use std::time::Duration;

use dynserv_hetzner_sim::{NewServer, SimConfig, Simulator};
use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A demo control plane on a Hetzner simulator of its own (no background sync: each
/// test drives the servers itself).
async fn on_simulator() -> (Simulator, ControlPlane) {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("the simulator");
    let cp = ControlPlane::builder()
        .demo()
        .env("HETZNER_API_URL", &sim.url())
        .env("DYNSERV_HETZNER_SYNC_SECS", "0")
        .start()
        .await;
    (sim, cp)
}

/// The project "Shop" with web-a, web-b (label `role=web`) and db-a (`role=db`) synced
/// from the simulator, an agent on each (with `DYNSERV_TEST_SITE=site-NAME` in its
/// environment, a fact that tells the agents of this one machine apart); answers the
/// project's id and the servers' ids by name.
async fn shop(
    sim: &Simulator,
    cp: &ControlPlane,
    api: &Api,
) -> (String, Vec<(String, String)>, Vec<Agent>) {
    sim.add_project("tok-shop");
    for (name, role) in [
        ("web-a", None),
        ("web-b", Some("web")),
        ("db-a", Some("db")),
    ] {
        sim.add_server(
            "tok-shop",
            NewServer {
                name: name.into(),
                labels: role
                    .map(|r| [("role".to_string(), r.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            },
        )
        .expect("a server at the simulator");
    }
    let (status, project) = api
        .post(
            "/api/v1/projects",
            &json!({"name": "Shop", "hetzner_token": "tok-shop"}),
        )
        .await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["id"].as_str().unwrap().to_string();
    let (status, body) = api
        .post_empty(&format!("/api/v1/projects/{project_id}/sync"))
        .await;
    assert_eq!(status, 202, "{body}");
    let servers: Vec<(String, String)> = eventually(WAIT, "the three servers synced", || async {
        let (_, list) = api.get("/api/v1/servers?project=Shop").await;
        let found: Vec<(String, String)> = list
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (found.len() == 3).then_some(found)
    })
    .await;
    let mut agents = Vec::new();
    for name in ["web-a", "web-b", "db-a"] {
        let site = format!("site-{name}");
        let mut agent = Agent::enroll_with_env(
            &cp.quic_addr(),
            &cp.enrollment_token("Shop"),
            name,
            &[("DYNSERV_TEST_SITE", &site)],
        );
        agent.run();
        agents.push(agent);
    }
    for name in ["web-a", "web-b", "db-a"] {
        let agent = api.connected_agent(name).await;
        assert!(
            agent["server_id"].is_string(),
            "{name} joined its server: {agent}"
        );
    }
    (project_id, servers, agents)
}

fn id_of<'a>(servers: &'a [(String, String)], name: &str) -> &'a str {
    &servers
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no server {name}: {servers:?}"))
        .1
}

async fn log_text(api: &Api, execution: &str) -> String {
    let (status, text) = api
        .get_text(&format!("/api/v1/executions/{execution}/log?format=text"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// Runs a stored script over `targets`: the answer's status and body.
async fn run_over(api: &Api, script: &str, run: Value) -> (u16, Value) {
    api.post(&format!("/api/v1/scripts/{script}/run"), &run)
        .await
}

/// A rollout of a new stored playbook, started with `run` (its targets and options):
/// its id.
async fn rollout_of(api: &Api, name: &str, body: &str, run: Value) -> String {
    let script = api.create_script(name, "playbook", body).await;
    let (status, rollout) = run_over(api, &script, run).await;
    assert_eq!(status, 201, "{rollout}");
    rollout["id"].as_str().expect("a rollout id").to_string()
}

/// Waits for a rollout to end: its view.
async fn rollout_end(api: &Api, id: &str) -> Value {
    eventually(WAIT, &format!("rollout {id} ends"), || async {
        let (_, view) = api.get(&format!("/api/v1/rollouts/{id}")).await;
        (view["status"] != "running").then_some(view)
    })
    .await
}

const PLAYBOOK: &str = r#"- name: web tier
  hosts: web
  gather_facts: false
  tasks:
    - debug:
        msg: "RESULT {{ inventory_hostname }} in={{ group_names | join(',') }} web={{ groups['web'] | sort | join(',') }} port={{ http_port }} greeting={{ greeting }} env={{ env_name }} b_port={{ hostvars['web-b'].http_port }}"
"#;

/// Only the servers a play's `hosts: web` selects (one by its label, one by an
/// operator group) run it, seeing the inventory's groups, variables by Ansible's
/// precedence and the other hosts' variables; the third says in its summary that no
/// play matched it; the project's inventory is readable as Ansible's YAML/JSON.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_patterns_select_servers_by_label_and_operator_groups() {
    let (sim, cp) = on_simulator().await;
    let api = cp.api_as("admin");
    let (project_id, servers, _agents) = shop(&sim, &cp, &api).await;
    let web_a = id_of(&servers, "web-a");
    let web_b = id_of(&servers, "web-b");

    // web-a joins `web` by hand, with a host variable over the group's.
    let (status, view) = api
        .put(
            &format!("/api/v1/servers/{web_a}/inventory"),
            &json!({"groups": ["web"], "vars": {"greeting": "host-a"}}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["groups"], json!(["web"]));
    assert_eq!(view["effective_groups"], json!(["shop", "web"]));
    assert_eq!(view["project_group"], "shop");
    // web-b's variables as YAML text; group variables for `web` and `all`.
    let (status, view) = api
        .put(
            &format!("/api/v1/servers/{web_b}/inventory"),
            &json!({"vars": "http_port: 8081\n"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["effective_groups"],
        json!(["shop", "web"]),
        "the label's group"
    );
    assert_eq!(view["vars"], json!({"http_port": 8081}));
    for (group, vars) in [
        ("web", json!({"http_port": 80, "greeting": "group-web"})),
        ("all", json!({"env_name": "prod", "http_port": 1})),
    ] {
        let (status, body) = api
            .put(
                &format!("/api/v1/projects/{project_id}/groups/{group}/vars"),
                &json!({"vars": vars}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, got) = api
        .get(&format!("/api/v1/projects/{project_id}/groups/web/vars"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["vars"]["greeting"], "group-web");

    // The inventory a run gets, as Ansible's structure.
    let (status, inventory) = api
        .get(&format!("/api/v1/projects/{project_id}/inventory"))
        .await;
    assert_eq!(status, 200, "{inventory}");
    let children = &inventory["all"]["children"];
    let mut web: Vec<&String> = children["web"]["hosts"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    web.sort();
    assert_eq!(web, ["web-a", "web-b"], "{inventory}");
    assert_eq!(children["db"]["hosts"], json!({"db-a": null}));
    assert_eq!(children["shop"]["hosts"].as_object().unwrap().len(), 3);
    assert_eq!(inventory["all"]["vars"]["env_name"], "prod");
    assert_eq!(
        inventory["all"]["hosts"]["web-b"],
        json!({"http_port": 8081})
    );
    let (status, yaml) = api
        .get_text(&format!(
            "/api/v1/projects/{project_id}/inventory?format=yaml"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(
        yaml.contains("web-b:") && yaml.contains("env_name: prod"),
        "{yaml}"
    );

    // One fan-out over the three agents.
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agents": ["web-a", "web-b", "db-a"], "kind": "playbook", "playbook": PLAYBOOK}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let mut ended = std::collections::BTreeMap::new();
    for e in created["executions"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        let end = api.execution_end(id, WAIT).await;
        let name = end["agent_name"].as_str().unwrap_or_default().to_string();
        let log = log_text(&api, id).await;
        ended.insert(name, (end, log));
    }
    let (a, a_log) = &ended["web-a"];
    assert_eq!(a["status"], "succeeded", "{a}\n{a_log}");
    assert!(
        a_log.contains(
            "RESULT web-a in=shop,web web=web-a,web-b port=80 greeting=host-a env=prod b_port=8081"
        ),
        "{a_log}"
    );
    let (b, b_log) = &ended["web-b"];
    assert_eq!(b["status"], "succeeded", "{b}\n{b_log}");
    assert!(
        b_log.contains("RESULT web-b in=shop,web web=web-a,web-b port=8081 greeting=group-web env=prod b_port=8081"),
        "{b_log}"
    );
    let (db, db_log) = &ended["db-a"];
    assert_eq!(db["status"], "succeeded", "{db}\n{db_log}");
    assert!(db_log.contains("skipping: no hosts matched"), "{db_log}");
    assert!(!db_log.contains("RESULT"), "{db_log}");
    assert!(
        db["summary"]
            .as_str()
            .is_some_and(|s| s.contains("no play matched this host")),
        "{db}"
    );
}

/// Bad group names and variables are 422 naming the field, unknown fields and bad
/// JSON 400, a read-only or sales caller 403; a rollout whose plays match none of its
/// targets is refused with the reason before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_rollouts_that_match_nothing_are_422() {
    let (sim, cp) = on_simulator().await;
    let api = cp.api_as("admin");
    let (project_id, servers, _agents) = shop(&sim, &cp, &api).await;
    let web_a = id_of(&servers, "web-a");
    let path = format!("/api/v1/servers/{web_a}/inventory");
    for (body, field) in [
        (json!({"groups": ["web-servers"]}), "groups"),
        (json!({"groups": ["all"]}), "groups"),
        (json!({"groups": ["9lives"]}), "groups"),
        (json!({"vars": "- a\n- b\n"}), "vars"),
        (json!({"vars": "a: [unclosed"}), "vars"),
        (json!({"vars": {"bad-name": 1}}), "vars"),
        (json!({"vars": {"hostvars": 1}}), "vars"),
        (json!({"vars": 5}), "vars"),
    ] {
        let (status, answer) = api.put(&path, &body).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["field"], field, "{body} → {answer}");
    }
    let (status, answer) = api
        .put(&path, &json!({"groups": [], "colour": "red"}))
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = api
        .put(
            &format!("/api/v1/projects/{project_id}/groups/web-x/vars"),
            &json!({"vars": {"a": 1}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // Nothing was stored by the refused calls.
    let (_, view) = api.get(&path).await;
    assert_eq!(view["groups"], json!([]), "{view}");
    assert_eq!(view["vars"], json!({}), "{view}");
    // Sales agents never touch servers.
    let (status, _) = cp.api_as("sales").get(&path).await;
    assert_eq!(status, 403);
    let (status, _) = cp
        .api_as("sales")
        .put(&path, &json!({"groups": ["web"]}))
        .await;
    assert_eq!(status, 403);

    // A stored playbook whose only play targets a group no server is in.
    let script = api
        .create_script(
            "nowhere",
            "playbook",
            "- hosts: dbservers\n  gather_facts: false\n  tasks:\n    - debug: msg=hi\n",
        )
        .await;
    let (status, refused) = run_over(&api, &script, json!({"targets": {"project": "Shop"}})).await;
    assert_eq!(status, 422, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("match none of its targets") && message.contains("dbservers"),
        "{refused}"
    );
    let (_, rollouts) = api.get("/api/v1/rollouts").await;
    assert_eq!(
        rollouts.as_array().map(Vec::len),
        Some(0),
        "nothing started: {rollouts}"
    );
    // Once db-a is in `dbservers`, the same rollout runs there only.
    let (status, body) = api
        .put(
            &format!("/api/v1/servers/{}/inventory", id_of(&servers, "db-a")),
            &json!({"groups": ["dbservers"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, rollout) = run_over(&api, &script, json!({"targets": {"project": "Shop"}})).await;
    assert_eq!(status, 201, "{rollout}");
}

/// The server page shows the Inventory card; its form adds a group (suggested from
/// the project's), re-renders a bad name with the message (422), removes a group and
/// saves host variables as YAML.
#[tokio::test(flavor = "multi_thread")]
async fn server_page_groups_form() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let (_, list) = api.get("/api/v1/servers?project=Nova%20HR").await;
    let servers = list.as_array().expect("servers");
    let first = servers[0]["id"].as_str().unwrap().to_string();
    let second = servers[1]["id"].as_str().unwrap().to_string();
    let (status, body) = api
        .put(
            &format!("/api/v1/servers/{second}/inventory"),
            &json!({"groups": ["webservers"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = page.get(&format!("/servers/{first}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"inventory-card\""), "{html}");
    assert!(
        html.contains("<option value=\"webservers\">"),
        "the project's groups are suggested"
    );
    assert!(html.contains("nova_hr"), "the project's group is shown");
    let csrf = dynserv_tests::csrf_of(&html);
    let action = format!("/servers/{first}/inventory");

    let (status, _, html) = page
        .post(
            &action,
            &[("csrf", &csrf), ("action", "add"), ("group", "web servers")],
        )
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("is not a valid group name"), "{html}");
    assert!(html.contains("try web_servers"), "{html}");

    let (status, location, _) = page
        .post(
            &action,
            &[("csrf", &csrf), ("action", "add"), ("group", "webservers")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("/servers/{first}"));
    let (status, location, _) = page
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("action", "vars"),
                ("vars", "http_port: 8080\n"),
            ],
        )
        .await;
    assert_eq!(
        (status, location.as_str()),
        (303, format!("/servers/{first}").as_str())
    );
    let (_, view) = api.get(&format!("/api/v1/servers/{first}/inventory")).await;
    assert_eq!(view["groups"], json!(["webservers"]), "{view}");
    assert_eq!(view["vars"], json!({"http_port": 8080}), "{view}");
    let (_, _, html) = page.get(&format!("/servers/{first}")).await;
    assert!(html.contains("data-group=\"webservers\""), "{html}");
    assert!(html.contains("http_port: 8080"), "{html}");

    let (status, _, html) = page
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("action", "vars"),
                ("vars", "- not\n- a mapping\n"),
            ],
        )
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("must be a mapping"), "{html}");
    let (status, _, _) = page
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("action", "remove"),
                ("group", "webservers"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let (_, view) = api.get(&format!("/api/v1/servers/{first}/inventory")).await;
    assert_eq!(view["groups"], json!([]), "{view}");

    // A group's variables page.
    let project = servers[0]["project_id"]
        .as_str()
        .or(servers[0]["project"]["id"].as_str())
        .expect("the server's project id")
        .to_string();
    let group_page = format!("/projects/{project}/groups/webservers");
    let (status, _, html) = page.get(&group_page).await;
    assert_eq!(status, 200, "{html}");
    let (status, location, _) = page
        .post(&group_page, &[("csrf", &csrf), ("vars", "http_port: 80\n")])
        .await;
    assert_eq!(status, 303, "{location}");
    let (status, _, html) = page
        .post(&group_page, &[("csrf", &csrf), ("vars", "bad-name: 1\n")])
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("not a valid variable name"), "{html}");
}

const PEERS_PLAYBOOK: &str = r#"- hosts: all
  tasks:
    - debug:
        msg: "PEER {{ inventory_hostname }} other={{ other }} site={{ hostvars[other].ansible_env.DYNSERV_TEST_SITE }} hostname={{ hostvars[other].ansible_hostname }} facts_hostname={{ hostvars[other].ansible_facts.hostname }} own_site={{ ansible_env.DYNSERV_TEST_SITE }} db_facts={{ hostvars['db-a'].ansible_facts | length }}"
      vars:
        other: "{{ 'web-b' if inventory_hostname == 'web-a' else 'web-a' }}"
"#;

/// A rollout over two servers of a playbook that reads `hostvars[other]` facts first
/// gathers facts on both (the facts step), so each host sees the other's gathered
/// facts (`ansible_env`, `ansible_hostname`, `ansible_facts.*`) on its first run; a
/// server of the inventory that never gathered facts has an empty `ansible_facts`.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_shows_each_host_the_others_gathered_facts() {
    let (sim, cp) = on_simulator().await;
    let api = cp.api_as("admin");
    let (_project_id, servers, _agents) = shop(&sim, &cp, &api).await;
    let rollout_id = rollout_of(
        &api,
        "peers",
        PEERS_PLAYBOOK,
        json!({"targets": {"servers": [id_of(&servers, "web-a"), id_of(&servers, "web-b")]}, "serial": 1}),
    )
    .await;
    let done = rollout_end(&api, &rollout_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["gathering_facts"], false, "{done}");
    // Two gatherings and two runs, all in the rollout's list.
    let (_, executions) = api
        .get(&format!("/api/v1/executions?rollout={rollout_id}"))
        .await;
    let executions = executions.as_array().expect("executions");
    assert_eq!(executions.len(), 4, "{executions:?}");
    let gatherings = executions
        .iter()
        .filter(|e| e["name"] == "Gather facts")
        .count();
    assert_eq!(gatherings, 2, "{executions:?}");

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_string();
    for target in done["targets"].as_array().expect("targets") {
        let name = target["server"].as_str().unwrap();
        let other = if name == "web-a" { "web-b" } else { "web-a" };
        let execution = target["execution_id"].as_str().expect("an execution");
        let log = log_text(&api, execution).await;
        let expected = format!(
            "PEER {name} other={other} site=site-{other} hostname={hostname} facts_hostname={hostname} own_site=site-{name} db_facts=0"
        );
        assert!(log.contains(&expected), "{expected}\n{log}");
    }

    // The facts kept for web-a: the API and the server page show them, and facts a
    // module returns in a run that gathers none join them (Ansible's fact cache).
    let web_a = id_of(&servers, "web-a");
    let (status, kept) = api.get(&format!("/api/v1/servers/{web_a}/facts")).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["facts"]["hostname"], hostname.as_str(), "{kept}");
    assert!(kept["facts"].get("getent_passwd").is_none(), "{kept}");
    let run_id = rollout_of(
        &api,
        "who",
        GETENT_PLAYBOOK,
        json!({"targets": {"servers": [web_a]}}),
    )
    .await;
    let ran = rollout_end(&api, &run_id).await;
    assert_eq!(ran["status"], "succeeded", "{ran}");
    let kept = eventually(WAIT, "the module's facts were kept", || async {
        let (_, kept) = api.get(&format!("/api/v1/servers/{web_a}/facts")).await;
        kept["facts"].get("getent_passwd").is_some().then_some(kept)
    })
    .await;
    assert_eq!(kept["facts"]["hostname"], hostname.as_str(), "{kept}");
    assert!(kept["facts"]["getent_passwd"]["root"].is_array(), "{kept}");

    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = page.get(&format!("/servers/{web_a}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"playbook-facts\""), "{html}");
    assert!(html.contains("getent_passwd"), "every fact is in the JSON");
    assert!(
        html.contains("{\n  &quot;"),
        "the JSON keeps its own indentation (not the partial's)"
    );
    // Sales agents see no fleet, and no facts.
    let (status, body) = cp
        .api_as("sales")
        .get(&format!("/api/v1/servers/{web_a}/facts"))
        .await;
    assert!(status == 403 || status == 404, "{status} {body}");
    let (status, body) = api
        .get(&format!(
            "/api/v1/servers/{}/facts",
            id_of(&servers, "db-a")
        ))
        .await;
    assert_eq!(status, 404, "db-a never gathered: {body}");
}

const GETENT_PLAYBOOK: &str =
    "- hosts: all\n  gather_facts: false\n  tasks:\n    - getent: database=passwd key=root\n";

/// The facts step holds a rollout's first batch back while a target's gathering has
/// not run (its agent is offline), and cancelling the rollout cancels the gatherings
/// too.
#[tokio::test(flavor = "multi_thread")]
async fn the_facts_step_waits_for_offline_targets_and_cancels_with_the_rollout() {
    let (sim, cp) = on_simulator().await;
    let api = cp.api_as("admin");
    let (_project_id, servers, mut agents) = shop(&sim, &cp, &api).await;
    agents[2].stop();
    eventually(WAIT, "db-a's agent is offline", || async {
        let (_, list) = api.get("/api/v1/agents").await;
        list.as_array()?
            .iter()
            .any(|a| a["name"] == "db-a" && a["connected"] == false)
            .then_some(())
    })
    .await;
    let rollout_id = rollout_of(
        &api,
        "peers",
        PEERS_PLAYBOOK,
        json!({"targets": {"servers": [id_of(&servers, "web-a"), id_of(&servers, "db-a")]}}),
    )
    .await;
    let executions_of_rollout = || async {
        let (_, list) = api
            .get(&format!("/api/v1/executions?rollout={rollout_id}"))
            .await;
        list.as_array().cloned().unwrap_or_default()
    };
    // web-a gathered; db-a's gathering waits for its agent, and so does the batch.
    eventually(WAIT, "web-a's gathering ended", || async {
        executions_of_rollout()
            .await
            .iter()
            .any(|e| e["agent_name"] == "web-a" && e["status"] == "succeeded")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, view) = api.get(&format!("/api/v1/rollouts/{rollout_id}")).await;
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["gathering_facts"], true, "{view}");
    assert_eq!(view["batches_started"], 0, "{view}");
    let listed = executions_of_rollout().await;
    assert_eq!(listed.len(), 2, "only the gatherings: {listed:?}");
    assert!(
        listed.iter().all(|e| e["name"] == "Gather facts"),
        "{listed:?}"
    );

    let (status, body) = api
        .post_empty(&format!("/api/v1/rollouts/{rollout_id}/cancel"))
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, view) = api.get(&format!("/api/v1/rollouts/{rollout_id}")).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["gathering_facts"], false, "{view}");
    let db_gathering = executions_of_rollout()
        .await
        .into_iter()
        .find(|e| e["agent_name"] == "db-a")
        .expect("db-a's gathering");
    assert_eq!(db_gathering["status"], "cancelled", "{db_gathering}");
}
