//! Several control-plane replicas on one PostgreSQL database, end to end with the real
//! binaries: a job made on one replica runs on an agent connected to another and is
//! watched live on the first; cancel from any replica; a replica killed mid-job (the
//! agent fails over, no line lost or repeated); the leader killed (another takes over
//! the background work, and a scheduled backup runs once on it); the database dropping a replica's connections mid-job (no line
//! lost or repeated); `dynserv migrate` from redb to PostgreSQL and back.

use std::time::{Duration, Instant};

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";

/// Two replicas on a fresh database, an admin and a project `Fleet`; the API of each.
async fn two_replicas() -> (ControlPlane, ControlPlane, Api, Api) {
    let a = ControlPlane::builder().postgres().start().await;
    let b = a.replica().start().await;
    a.add_user("admin", "admin", false, PASSWORD);
    // One token, made on A, works on B: sessions and tokens live in the database.
    let api_a = a.api_as("admin");
    let api_b = Api::new(&b.base_url()).with_token(api_a.token().expect("a token"));
    let (status, body) = api_b
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201, "{body}");
    (a, b, api_a, api_b)
}

async fn start_script(api: &Api, agent: &str, script: &str) -> String {
    let body =
        json!({"agent": agent, "kind": "script", "script": script, "interpreter": "/bin/sh"});
    let (status, created) = api.post("/api/v1/executions", &body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("an execution id").to_string()
}

async fn wait_status(api: &Api, id: &str, timeout: Duration, done: &[&str]) -> Value {
    eventually(timeout, &format!("execution {id} ends"), || async {
        let (_, e) = api.get(&format!("/api/v1/executions/{id}")).await;
        done.contains(&e["status"].as_str().unwrap_or_default())
            .then_some(e)
    })
    .await
}

/// `line 1` … `line n`, pausing every 500 lines.
fn lines_script(n: usize) -> String {
    format!("i=1\nwhile [ $i -le {n} ]; do\n  echo \"line $i\"\n  if [ $((i % 500)) -eq 0 ]; then sleep 0.3; fi\n  i=$((i+1))\ndone\n")
}

/// Checks chunks are numbered 0.. with no gap or repeat and stdout is exactly
/// `line 1` … `line n`.
fn assert_complete(chunks: &[Value], n: usize) {
    let mut text = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["seq"].as_u64(), Some(i as u64), "chunk {i}: {chunk}");
        if chunk["stream"] == "stdout" {
            text.push_str(chunk["data"].as_str().unwrap_or_default());
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "expected {n} lines, got {}", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("line {}", i + 1));
    }
}

/// Reads a WebSocket to its end frame: (chunks, end, the chunks' frames as sent).
async fn websocket_log(api: &Api, id: &str) -> (Vec<Value>, Value, Vec<String>) {
    let mut socket = api
        .websocket(&format!("/api/v1/executions/{id}/stream?from_seq=0"))
        .await;
    let mut chunks = Vec::new();
    let mut frames = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), socket.next())
            .await
            .expect("the WebSocket went quiet")
            .expect("the WebSocket closed before the end frame")
            .expect("reading the WebSocket");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("a JSON frame");
            if value.get("end").is_some() {
                return (chunks, value["end"].clone(), frames);
            }
            chunks.push(value);
            frames.push(text.to_string());
        }
    }
}

async fn stored_log(api: &Api, id: &str) -> Vec<Value> {
    let (status, chunks) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert_eq!(status, 200);
    chunks
}

/// A job created on replica A for an agent connected to replica B is delivered at
/// once, a viewer on A follows its output live with every line once and in order, in
/// the very frames a viewer on B gets, A sees the agent as connected, and a cancel
/// sent from A stops a job on B.
#[tokio::test]
async fn a_job_made_on_one_replica_runs_on_an_agent_of_another_and_is_watched_live() {
    let (a, b, api_a, api_b) = two_replicas().await;
    let token = a.enrollment_token("Fleet");
    let agent = Agent::start(&b, &token, "web-b");
    let agent_id = api_a.connected_agent("web-b").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let started = Instant::now();
    let id = start_script(&api_a, &agent_id, &lines_script(3000)).await;
    // Delivered through NOTIFY, not a poll: the agent starts it quickly.
    wait_status(
        &api_a,
        &id,
        Duration::from_secs(10),
        &["running", "succeeded"],
    )
    .await;
    let delivered = started.elapsed();
    let ((live, end, frames_a), (live_b, _, frames_b)) =
        tokio::join!(websocket_log(&api_a, &id), websocket_log(&api_b, &id));
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    assert_complete(&live, 3000);
    assert_complete(&live_b, 3000);
    // A's viewer gets what B stored through the database, B's from B's own
    // ingestion: the same frames, byte for byte (a browser or a script reading them
    // cannot tell which replica it watches).
    assert_eq!(frames_a.len(), frames_b.len());
    for (seq, (on_a, on_b)) in frames_a.iter().zip(&frames_b).enumerate() {
        assert!(
            on_a == on_b,
            "frame {seq} differs between the replicas: A {on_a:.80} …, B {on_b:.80} …"
        );
    }
    assert_complete(&stored_log(&api_a, &id).await, 3000);
    assert!(
        delivered < Duration::from_secs(3),
        "the job took {delivered:?} to reach the agent"
    );

    let long = start_script(&api_a, &agent_id, "echo started; sleep 120").await;
    wait_status(&api_a, &long, Duration::from_secs(10), &["running"]).await;
    let (status, body) = api_a
        .post_empty(&format!("/api/v1/executions/{long}/cancel"))
        .await;
    assert!(status < 300, "{status} {body}");
    let ended = wait_status(
        &api_a,
        &long,
        Duration::from_secs(20),
        &["cancelled", "failed", "succeeded"],
    )
    .await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    drop(b);
}

/// The replica an agent is connected to is killed (-9) in the middle of a job: the
/// agent fails over to the other replica within seconds, the job completes there, and
/// the stored log holds every line exactly once, in order.
#[tokio::test]
async fn a_replica_killed_mid_job_loses_no_line() {
    let (a, mut b, api_a, _api_b) = two_replicas().await;
    let token = a.enrollment_token("Fleet");
    let servers = format!("{},{}", b.quic_addr(), a.quic_addr());
    let mut agent = Agent::enroll(&servers, &token, "web-f");
    agent.run();
    let agent_id = api_a.connected_agent("web-f").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = start_script(&api_a, &agent_id, &lines_script(6000)).await;
    eventually(Duration::from_secs(20), "some output is stored", || async {
        (stored_log(&api_a, &id).await.len() > 3).then_some(())
    })
    .await;
    b.kill();
    let killed = Instant::now();
    let end = wait_status(
        &api_a,
        &id,
        Duration::from_secs(90),
        &["succeeded", "failed", "cancelled"],
    )
    .await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    assert_complete(&stored_log(&api_a, &id).await, 6000);
    // And the agent is served by A now.
    let (_, agents) = api_a.get("/api/v1/agents").await;
    let row = agents
        .as_array()
        .and_then(|list| list.iter().find(|r| r["id"] == agent_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["connected"], true, "{row}");
    assert!(killed.elapsed() < Duration::from_secs(90));
}

/// A control plane on PostgreSQL with one agent, `name`, printing `lines` lines in a
/// job that has stored some of them already.
async fn printing_on_postgres(name: &str, lines: usize) -> (ControlPlane, Api, Agent, String) {
    let a = ControlPlane::builder().postgres().start().await;
    a.add_user("admin", "admin", false, PASSWORD);
    let api = a.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let agent = Agent::start(&a, &a.enrollment_token("Fleet"), name);
    let agent_id = api.connected_agent(name).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = start_script(&api, &agent_id, &lines_script(lines)).await;
    eventually(Duration::from_secs(20), "some output is stored", || async {
        (stored_log(&api, &id).await.len() > 3).then_some(())
    })
    .await;
    (a, api, agent, id)
}

/// Waits for the job to succeed, with every one of its `lines` lines stored once.
async fn succeeds_with_every_line(api: &Api, agent: &Agent, id: &str, lines: usize) {
    let end = wait_status(
        api,
        id,
        Duration::from_secs(90),
        &["succeeded", "failed", "cancelled"],
    )
    .await;
    assert_eq!(end["status"], "succeeded", "{end}\n{}", agent.logs());
    assert_complete(&stored_log(api, id).await, lines);
}

/// The database drops the control plane's connections, again and again, while a job
/// prints: batches of output whose transaction failed are never acknowledged past
/// (the job stream is opened again and the agent resends from its spool), so the job
/// ends with every line stored exactly once, in order.
#[tokio::test]
async fn dropped_database_connections_mid_job_lose_no_line() {
    let (a, api, agent, id) = printing_on_postgres("web-d", 6000).await;
    let url = a.database_url().expect("a database URL").to_string();
    let dropped = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connecting");
        let mut dropped = 0;
        for _ in 0..40 {
            dropped += client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .expect("terminating the control plane's connections")
                .len();
            std::thread::sleep(Duration::from_millis(60));
        }
        dropped
    })
    .await
    .unwrap();
    assert!(dropped > 0, "no connection was dropped");
    succeeds_with_every_line(&api, &agent, &id, 6000).await;
}

/// The database refuses the control plane for several seconds while a job prints
/// (every connection dropped, none allowed): the job's stream ends, its resend cannot
/// read the execution, and the dispatcher keeps trying while the agent stays
/// connected, so the job resumes once the database is back and ends with every line
/// stored once, in order. It used to wait for the agent's next reconnect, which a
/// healthy connection never makes.
#[tokio::test]
async fn a_database_outage_mid_job_is_waited_out() {
    let (a, api, agent, id) = printing_on_postgres("web-o", 20_000).await;
    let url = a.database_url().expect("a database URL").to_string();
    tokio::task::spawn_blocking(move || {
        // From another database: a database cannot refuse connections to itself.
        let mut config: postgres::Config = url.parse().expect("a PostgreSQL URL");
        let database = config.get_dbname().expect("a database name").to_string();
        let mut client = config
            .dbname("postgres")
            .connect(postgres::NoTls)
            .expect("connecting");
        let allow = |client: &mut postgres::Client, allowed: bool| {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS {allowed}"
                ))
                .expect("changing whether the database allows connections");
        };
        allow(&mut client, false);
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&database],
                )
                .expect("terminating the control plane's connections");
            std::thread::sleep(Duration::from_millis(200));
        }
        allow(&mut client, true);
    })
    .await
    .unwrap();
    succeeds_with_every_line(&api, &agent, &id, 20_000).await;
}

/// Many server lists at once, more than a replica has database connections, all
/// answer promptly and show the agent on the other replica as connected (the check
/// used to read in a second transaction inside the list's: every handler held one
/// connection and waited for another until the pool's 30 s timeout).
#[tokio::test]
async fn concurrent_server_lists_do_not_exhaust_the_connection_pool() {
    let (a, b, api_a, _api_b) = two_replicas().await;
    let token = a.enrollment_token("Fleet");
    let _agent = Agent::start(&b, &token, "web-b");
    let agent_id = api_a.connected_agent("web-b").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let answers =
        futures::future::join_all((0..48).map(|_| api_a.get("/api/v1/servers?limit=10"))).await;
    let took = started.elapsed();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let row = body
            .as_array()
            .and_then(|rows| rows.iter().find(|s| s["name"] == "web-b"))
            .unwrap_or_else(|| panic!("web-b in {body}"));
        assert_eq!(row["agent"]["connected"], true, "{row}");
    }
    assert!(
        took < Duration::from_secs(15),
        "48 server lists took {took:?}"
    );
    // The Servers page's rows, which read no agent record, show it connected too.
    let mut page = PageClient::signed_in(&a, "admin", PASSWORD).await;
    let (status, _, html) = page.get("/servers?q=web-b").await;
    assert_eq!(status, 200, "{html}");
    let cell = html
        .split(&format!("data-agent-state=\"{agent_id}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("web-b's agent on the Servers page: {html}"));
    let cell = &cell[..cell.find("</td>").unwrap_or(cell.len())];
    assert!(
        cell.contains("status-dot online") && cell.contains("connected"),
        "{cell}"
    );
    // Every store call of those lists slept on its socket, never blind (`conn::drive`).
    for cp in [&a, &b] {
        let metrics = reqwest::get(format!("{}/metrics", cp.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l == "dynserv_store_pg_blind_waits 0"),
            "{metrics}"
        );
        // What giving way to actions cost the pages is shown (`pg::Turns`).
        for name in [
            "dynserv_store_pg_deferred_waits",
            "dynserv_store_pg_deferred_wait_seconds",
        ] {
            assert!(
                metrics.lines().any(|l| l
                    .strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some()),
                "{name}: {metrics}"
            );
        }
    }
}

async fn leads(cp: &ControlPlane) -> bool {
    let Ok(response) = reqwest::get(format!("{}/metrics", cp.base_url())).await else {
        return false;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines().any(|l| l.trim() == "dynserv_cluster_leader 1")
}

/// Exactly one replica leads the background work; when it is killed, the other takes
/// over within 15 s.
#[tokio::test]
async fn a_killed_leader_is_replaced_within_fifteen_seconds() {
    let (mut a, mut b, _api_a, _api_b) = two_replicas().await;
    let (a_leads, b_leads) = eventually(Duration::from_secs(20), "one replica leads", || async {
        let (x, y) = (leads(&a).await, leads(&b).await);
        (x || y).then_some((x, y))
    })
    .await;
    assert!(!(a_leads && b_leads), "both replicas lead");
    let (leader, other) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the other replica leads",
        || async { leads(other).await.then_some(()) },
    )
    .await;
    assert!(
        killed.elapsed() <= Duration::from_secs(15),
        "took {:?}",
        killed.elapsed()
    );
}

/// The backup records of project `project_id`, oldest first.
async fn backups_of(api: &Api, project_id: &str) -> Vec<Value> {
    let (status, list) = api
        .get(&format!("/api/v1/backups?project={project_id}"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut list = list.as_array().cloned().unwrap_or_default();
    list.sort_by(|x, y| x["created_at"].as_str().cmp(&y["created_at"].as_str()));
    list
}

/// A backup scheduled every minute runs once per minute with two replicas; when the
/// leader is killed after a run, the next run happens once, on the other replica, and
/// reaches the agent.
#[tokio::test]
async fn a_scheduled_backup_runs_once_after_the_leader_is_killed() {
    let (mut a, mut b, api_a, api_b) = two_replicas().await;
    let (_, projects) = api_a.get("/api/v1/projects").await;
    let project_id = projects
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "Fleet"))
        .and_then(|p| p["id"].as_str())
        .expect("the project Fleet")
        .to_string();
    let token = a.enrollment_token("Fleet");
    let mut agent = Agent::enroll(
        &format!("{},{}", a.quic_addr(), b.quic_addr()),
        &token,
        "db-s",
    );
    agent.run();
    api_a.connected_agent("db-s").await;
    // No such Compose project runs here: each backup fails on the agent, and still
    // counts as the one run of its scheduled time.
    let recipe = json!({"compose_project": "shop", "service": "db", "command": "pg_dump shop"});
    let (status, body) = api_a
        .put(
            &format!("/api/v1/projects/{project_id}/backup-recipe"),
            &recipe,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_b
        .put(
            &format!("/api/v1/projects/{project_id}/schedules"),
            &json!({"backup": "* * * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The first run: the first scheduler tick (every 15 s) after the next minute.
    let before = eventually(
        Duration::from_secs(100),
        "the first scheduled backup",
        || async {
            let runs = backups_of(&api_a, &project_id).await;
            (!runs.is_empty()).then_some(runs.len())
        },
    )
    .await;
    let (leader, api) = if leads(&a).await {
        (&mut a, &api_b)
    } else {
        (&mut b, &api_a)
    };
    leader.kill();

    eventually(
        Duration::from_secs(100),
        "the next scheduled backup",
        || async { (backups_of(api, &project_id).await.len() > before).then_some(()) },
    )
    .await;
    // One more tick: nothing runs a scheduled minute twice.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let runs = backups_of(api, &project_id).await;
    let minutes: std::collections::BTreeSet<&str> = runs
        .iter()
        .map(|r| &r["created_at"].as_str().unwrap_or_default()[..16])
        .collect();
    assert_eq!(
        minutes.len(),
        runs.len(),
        "a scheduled minute ran twice: {runs:#?}"
    );
    for run in &runs {
        let id = run["execution_id"].as_str().expect("an execution");
        let end = wait_status(api, id, Duration::from_secs(30), &["succeeded", "failed"]).await;
        assert!(
            end["started_at"].is_string(),
            "never reached the agent: {end}\n{}",
            agent.logs()
        );
    }
}

/// `dynserv migrate` moves an installation from its redb file into an empty
/// PostgreSQL database and back to a new redb file, and every record comes along:
/// people, projects, agents, executions with their logs, and the fleet CA (an agent
/// enrolled before the move still connects after it).
#[tokio::test]
async fn migrate_round_trip_keeps_every_record() {
    let mut redb = ControlPlane::builder()
        .session_secret("migrate-secret-0123456789abcdef")
        .start()
        .await;
    redb.add_user("admin", "admin", false, PASSWORD);
    let api = redb.api_as("admin");
    let token_text = api.token().unwrap().to_string();
    let (status, _) = api
        .post("/api/v1/projects", &json!({"name": "Fleet"}))
        .await;
    assert_eq!(status, 201);
    let enroll = redb.enrollment_token("Fleet");
    let mut agent = Agent::start(&redb, &enroll, "web-m");
    let agent_id = api.connected_agent("web-m").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = start_script(&api, &agent_id, &lines_script(700)).await;
    wait_status(&api, &id, Duration::from_secs(60), &["succeeded"]).await;
    let (_, users_before) = api.get("/api/v1/users").await;
    let (_, executions_before) = api.get("/api/v1/executions").await;
    agent.stop();
    redb.stop();

    let database = dynserv_tests::postgres::TestDatabase::create();
    let out = redb.cli_ok(&["migrate", "--to", database.url()]);
    assert!(out.contains("verified"), "{out}");

    // The PostgreSQL installation serves the same records and the same fleet CA.
    let pg = ControlPlane::builder()
        .database_url(database.url())
        .session_secret("migrate-secret-0123456789abcdef")
        .quic_port(
            redb.quic_addr()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap(),
        )
        .start()
        .await;
    let api_pg = Api::new(&pg.base_url()).with_token(&token_text);
    assert_eq!(api_pg.get("/api/v1/users").await.1, users_before);
    assert_eq!(api_pg.get("/api/v1/executions").await.1, executions_before);
    assert_complete(&stored_log(&api_pg, &id).await, 700);
    agent.run();
    api_pg.connected_agent("web-m").await;

    // And back into a new redb file.
    let back = pg.dir().join("back.redb");
    let out = pg.cli_ok(&["migrate", "--to", back.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    let again = pg.run_cli(&["migrate", "--to", back.to_str().unwrap()]);
    assert!(
        !again.status.success(),
        "a second migrate into the same file is refused"
    );
    let redb_again = ControlPlane::builder()
        .database_url(back.to_str().unwrap())
        .session_secret("migrate-secret-0123456789abcdef")
        .start()
        .await;
    let api_back = Api::new(&redb_again.base_url()).with_token(&token_text);
    assert_eq!(api_back.get("/api/v1/users").await.1, users_before);
    assert_eq!(
        api_back.get("/api/v1/executions").await.1,
        executions_before
    );
    assert_complete(&stored_log(&api_back, &id).await, 700);
}
