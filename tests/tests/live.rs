//! Live events (`GET /api/v1/events`, server-sent events) end to end: each viewer is
//! told only what it may see (a technician without access to a project hears nothing of
//! its agents or executions), a session holds at most eight streams, and with several
//! replicas on PostgreSQL a stream on one follows what happens on another. Runs on both
//! backends (`DYNSERV_TEST_BACKEND=postgres` in the second pass of scripts/test.sh).

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient, BACKEND_VAR};
use serde_json::{json, Value};

const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";

/// One open event stream, read frame by frame.
struct Stream {
    resp: reqwest::Response,
    buffer: String,
    /// Every event read so far: (event name, data).
    seen: Vec<(String, Value)>,
}

/// A client without the API helper's 30 s timeout: streams stay open.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// `GET /api/v1/events?topics=…` with a header (`Authorization` or `Cookie`): the
/// response, whatever its status.
async fn open(base: &str, header: (&str, &str), topics: &str) -> reqwest::Response {
    stream_client()
        .get(format!("{base}/api/v1/events?topics={topics}"))
        .header(header.0, header.1)
        .send()
        .await
        .expect("the events request is answered")
}

impl Stream {
    async fn open(api: &Api, topics: &str) -> Stream {
        let bearer = format!("Bearer {}", api.token().expect("a token"));
        let resp = open(&api.url(""), ("authorization", &bearer), topics).await;
        assert_eq!(resp.status().as_u16(), 200, "the stream opens");
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Stream {
            resp,
            buffer: String::new(),
            seen: Vec::new(),
        }
    }

    /// Reads until an event satisfies `wanted` (then returns it); panics when the
    /// stream ends or stays quiet for a minute.
    async fn until(&mut self, what: &str, wanted: impl Fn(&str, &Value) -> bool) -> Value {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue; // a comment (ping) or the retry hint
                }
                let value: Value = serde_json::from_str(&data).expect("event data is JSON");
                self.seen.push((name.clone(), value.clone()));
                if wanted(&name, &value) {
                    return value;
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event for a minute while waiting for {what}"))
                .expect("reading the stream")
                .unwrap_or_else(|| panic!("the stream ended while waiting for {what}"));
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Whether any event read so far mentions `needle` in its data.
    fn mentions(&self, needle: &str) -> bool {
        self.seen
            .iter()
            .any(|(_, v)| v.to_string().contains(needle))
    }
}

async fn project(api: &Api, name: &str) -> String {
    let (status, body) = api.post("/api/v1/projects", &json!({"name": name})).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("project id").to_string()
}

async fn run_to_end(api: &Api, agent: &str) -> String {
    run_script_to(api, agent, "echo live\n", "succeeded").await
}

async fn run_script_to(api: &Api, agent: &str, script: &str, end: &str) -> String {
    let done = api.run_script(agent, script).await;
    assert_eq!(done["status"], end, "{done}");
    done["id"].as_str().expect("execution id").to_string()
}

/// Events of a project reach the admin and a technician with access to it; a
/// technician without access hears nothing of the other project's agent or its
/// executions, and a sales agent may not follow the fleet at all.
#[tokio::test(flavor = "multi_thread")]
async fn events_reach_only_those_who_may_see_them() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    cp.add_user("tech", "technical", false, PASSWORD);
    cp.add_user("seller", "sales", false, PASSWORD);
    let admin = cp.api_as("admin");
    let alpha = project(&admin, "Alpha").await;
    project(&admin, "Beta").await;
    let (status, body) = admin
        .post(
            &format!("/api/v1/projects/{alpha}/access"),
            &json!({"username": "tech", "level": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let tech = cp.api_as("tech");

    let (status, body) = cp
        .api_as("seller")
        .get("/api/v1/events?topics=executions")
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = tech.get("/api/v1/events?topics=agents,gossip").await;
    assert_eq!(status, 400, "{body}");

    let mut admin_stream = Stream::open(&admin, "agents,executions").await;
    let mut tech_stream = Stream::open(&tech, "agents,executions,notifications").await;

    // Beta's agent connects and runs a job first, Alpha's after: by the time the
    // technician hears Alpha's job end, Beta's events were long published.
    let _beta_agent = Agent::start(&cp, &cp.enrollment_token("Beta"), "beta-1");
    let beta = admin.connected_agent("beta-1").await;
    let beta_id = beta["id"].as_str().unwrap().to_string();
    let beta_job = run_to_end(&admin, &beta_id).await;
    let _alpha_agent = Agent::start(&cp, &cp.enrollment_token("Alpha"), "alpha-1");
    let alpha_agent = admin.connected_agent("alpha-1").await;
    let alpha_id = alpha_agent["id"].as_str().unwrap().to_string();
    let alpha_job = run_to_end(&admin, &alpha_id).await;

    // The admin hears both projects.
    admin_stream
        .until("Beta's agent connecting (admin)", |name, v| {
            name == "agents" && v["id"] == beta_id.as_str() && v["connected"] == true
        })
        .await;
    admin_stream
        .until("Beta's job ending (admin)", |name, v| {
            name == "executions" && v["id"] == beta_job.as_str() && v["status"] == "succeeded"
        })
        .await;
    admin_stream
        .until("Alpha's job ending (admin)", |name, v| {
            name == "executions" && v["id"] == alpha_job.as_str() && v["status"] == "succeeded"
        })
        .await;

    // The technician hears Alpha's agent and job, and nothing of Beta's.
    tech_stream
        .until("Alpha's agent connecting (tech)", |name, v| {
            name == "agents" && v["id"] == alpha_id.as_str() && v["connected"] == true
        })
        .await;
    tech_stream
        .until("Alpha's job ending (tech)", |name, v| {
            name == "executions" && v["id"] == alpha_job.as_str() && v["status"] == "succeeded"
        })
        .await;
    assert!(
        !tech_stream.mentions(&beta_id) && !tech_stream.mentions(&beta_job),
        "the technician heard of Beta: {:?}",
        tech_stream.seen
    );
    assert!(tech_stream.mentions(&alpha_id));

    // A failed job notifies the technicians who see its project: Beta's reaches the
    // admin's inbox only, Alpha's the technician's too, and the stream says so.
    let mut admin_notes = Stream::open(&admin, "notifications").await;
    let beta_failed = run_script_to(&admin, &beta_id, "exit 3\n", "failed").await;
    admin_notes
        .until("the admin's inbox changing", |name, _| {
            name == "notifications"
        })
        .await;
    let alpha_failed = run_script_to(&admin, &alpha_id, "exit 4\n", "failed").await;
    tech_stream
        .until("Alpha's failed job (tech)", |name, v| {
            name == "executions" && v["id"] == alpha_failed.as_str() && v["status"] == "failed"
        })
        .await;
    let notes = tech_stream
        .seen
        .iter()
        .filter(|(name, _)| name == "notifications")
        .count();
    assert_eq!(
        notes, 1,
        "the technician's inbox changed once (Alpha's failure), not for Beta's: {:?}",
        tech_stream.seen
    );
    assert!(!tech_stream.mentions(&beta_failed));
    let (_, unread) = tech.get("/api/v1/notifications/unread").await;
    assert_eq!(unread["unread"], 1, "{unread}");
}

/// A session holds eight streams at once; the ninth is a 429 until one closes. An API
/// token of the same user counts apart.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_holds_at_most_eight_streams() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    let page = PageClient::signed_in(&cp, "admin", PASSWORD).await;
    let cookie = page.cookie_header();
    let base = cp.base_url();
    let mut open_streams = Vec::new();
    for i in 0..8 {
        let resp = open(&base, ("cookie", &cookie), "agents").await;
        assert_eq!(resp.status().as_u16(), 200, "stream {}", i + 1);
        open_streams.push(resp);
    }
    let refused = open(&base, ("cookie", &cookie), "agents").await;
    assert_eq!(refused.status().as_u16(), 429);
    let (_, metrics) = cp.api().get_text("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "dynserv_live_streams 8"),
        "{metrics}"
    );
    let body: Value = refused.json().await.expect("a JSON error");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("8"),
        "{body}"
    );

    // Another credential of the same user has places of its own.
    let api = cp.api_as("admin");
    Stream::open(&api, "executions").await;

    // Closing one frees its place (the server notices at its next write or ping).
    drop(open_streams.pop());
    eventually(Duration::from_secs(60), "a place frees up", || async {
        let resp = open(&base, ("cookie", &cookie), "agents").await;
        (resp.status().as_u16() == 200).then_some(resp)
    })
    .await;
}

/// On PostgreSQL with two replicas, a stream on A hears an agent connect to B and a
/// job run there (the events travel as cluster messages). Only with
/// `DYNSERV_TEST_BACKEND=postgres`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_on_one_replica_follows_another() {
    if std::env::var(BACKEND_VAR).as_deref() != Ok("postgres") {
        eprintln!("skipped: replicas need {BACKEND_VAR}=postgres");
        return;
    }
    let a = ControlPlane::builder().postgres().start().await;
    let b = a.replica().start().await;
    a.add_user("admin", "admin", false, PASSWORD);
    let api_a = a.api_as("admin");
    let api_b = Api::new(&b.base_url()).with_token(api_a.token().expect("a token"));
    project(&api_a, "Fleet").await;
    let mut on_a = Stream::open(&api_a, "agents,executions").await;

    let _agent = Agent::start(&b, &b.enrollment_token("Fleet"), "web-b");
    let agent = api_b.connected_agent("web-b").await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    on_a.until("the agent connecting to B", |name, v| {
        name == "agents" && v["id"] == agent_id.as_str() && v["connected"] == true
    })
    .await;
    let job = run_to_end(&api_b, &agent_id).await;
    on_a.until("the job on B ending", |name, v| {
        name == "executions" && v["id"] == job.as_str() && v["status"] == "succeeded"
    })
    .await;
}
