//! Server metrics end to end: a real `dynserv serve` and `dynserv-agent` on loopback.
//! The agent's heartbeats become points of `GET /api/v1/servers/{id}/metrics` (load,
//! CPU, memory, disk), which are stored (they are still there after a restart of the
//! control plane), and the endpoint checks its caller and its values.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane};
use serde_json::{json, Value};

const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";
const WAIT: Duration = Duration::from_secs(60);

/// The id of the server the agent `name` is attached to, once it is connected.
async fn connected_server(api: &Api, name: &str) -> String {
    eventually(WAIT, "the agent's server is connected", || async {
        let (_, servers) = api.get("/api/v1/servers").await;
        servers.as_array().and_then(|list| {
            list.iter()
                .find(|s| s["name"] == name && s["agent"]["connected"] == true)
                .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        })
    })
    .await
}

/// The points of the last hour once `enough` accepts them.
async fn points_until(api: &Api, server: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(WAIT, "metric points", || async {
        let (status, body) = api
            .get(&format!("/api/v1/servers/{server}/metrics?step=10"))
            .await;
        assert_eq!(status, 200, "{body}");
        let points = body["points"].as_array().cloned().unwrap_or_default();
        enough(&points).then_some(points)
    })
    .await
}

/// A real agent's heartbeats produce points with every figure (CPU from the second
/// reading of /proc/stat on), the points are written to the store (a restart keeps
/// them), and the answer is ordered and bounded by `since`.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_become_stored_points() {
    let mut cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    let api = cp.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Metrics"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut agent = Agent::start(&cp, &cp.enrollment_token("Metrics"), "metrics-01");
    let server = connected_server(&api, "metrics-01").await;

    let points = points_until(&api, &server, |p| {
        p.iter().any(|p| p["cpu_percent"].is_number())
    })
    .await;
    let point = points
        .iter()
        .find(|p| p["cpu_percent"].is_number())
        .unwrap();
    for key in [
        "at",
        "load1",
        "cpu_percent",
        "mem_used",
        "mem_total",
        "disk_used",
        "disk_total",
    ] {
        assert!(point.get(key).is_some(), "{key} in {point}");
    }
    assert!(point["mem_total"].as_u64().unwrap() > 0, "{point}");
    assert!(point["mem_used"].as_u64().unwrap() <= point["mem_total"].as_u64().unwrap());
    assert!(point["disk_total"].as_u64().unwrap() > 0, "{point}");
    let cpu = point["cpu_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu), "{point}");
    let times: Vec<&str> = points.iter().map(|p| p["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(times, sorted, "oldest first, one point per step");

    // Two 10 s buckets closed, so at least one point was flushed; a restart (which
    // also writes the open buckets) keeps them.
    points_until(&api, &server, |p| p.len() >= 3).await;
    agent.stop();
    cp.restart().await;
    let api = cp.api_as("admin");
    let (status, body) = api
        .get(&format!("/api/v1/servers/{server}/metrics?step=10"))
        .await;
    assert_eq!(status, 200, "{body}");
    let kept = body["points"].as_array().cloned().unwrap_or_default();
    assert!(kept.len() >= 3, "the points are stored: {body}");

    // A range that starts after the first point leaves it out (and nothing older).
    let first = kept[0]["at"].as_str().unwrap().to_string();
    let (status, body) = api
        .get(&format!(
            "/api/v1/servers/{server}/metrics?since={}&step=10",
            unix_of(&first) + 10
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let later = body["points"].as_array().cloned().unwrap_or_default();
    assert_eq!(later.len(), kept.len() - 1, "{body}");
    assert!(
        later
            .iter()
            .all(|p| p["at"].as_str().unwrap() > first.as_str()),
        "{body}"
    );

    // A coarser step averages: fewer points.
    let (status, body) = api
        .get(&format!("/api/v1/servers/{server}/metrics?step=3600"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["points"].as_array().unwrap().len() <= 2, "{body}");
}

/// Unix seconds `delta` from now.
fn chrono_like_now_plus(delta: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + delta
}

/// Unix seconds of an RFC 3339 time the API wrote (`2026-12-04T05:00:50Z`).
fn unix_of(at: &str) -> i64 {
    let (date, time) = at.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t[0] * 3_600 + t[1] * 60 + t[2]
}

/// Bad values are 400s naming the problem; the endpoint needs read access to the
/// server's project (a technician without it, and sales, hear 403) and a server that
/// exists (404).
#[tokio::test(flavor = "multi_thread")]
async fn metrics_checks_values_and_permissions() {
    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, PASSWORD);
    cp.add_user("tech", "technical", false, "Vr7!copper-meadow-lantern");
    cp.add_user("sally", "sales", false, "Wx9!amber-orchard-compass");
    let api = cp.api_as("admin");
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "Guarded"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, server) = api
        .post(
            "/api/v1/servers",
            &json!({"name": "guarded-01", "project": "Guarded", "ipv4": "192.0.2.10"}),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap();
    let url = format!("/api/v1/servers/{id}/metrics");

    let (status, body) = api.get(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"], json!([]));
    let now = chrono_like_now_plus(0);
    for (query, needle) in [
        ("?step=5", "step"),
        ("?step=abc", "step"),
        ("?step=100000", "step"),
        ("?since=yesterday", "since"),
        (&*format!("?since={}", now + 60), "since"),
        (&*format!("?since={}", now - 40 * 86_400), "31 days"),
        (
            &*format!("?since={}&step=10", now - 86_400),
            "at most 1000 points",
        ),
        ("?from=1", "unknown filter"),
    ] {
        let (status, body) = api.get(&format!("{url}{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(needle),
            "{query}: {body}"
        );
    }
    let (status, _) = api
        .get(&format!("{url}?since=2026-01-01T00:00:00Z&step=abc"))
        .await;
    assert_eq!(status, 400);

    let (status, body) = cp.api_as("tech").get(&url).await;
    assert_eq!(status, 403, "no access to the project: {body}");
    let (status, body) = cp.api_as("sally").get(&url).await;
    assert_eq!(status, 403, "sales never reach the fleet: {body}");
    let (status, body) = api
        .get("/api/v1/servers/00000000-0000-0000-0000-000000000000/metrics")
        .await;
    assert_eq!(status, 404, "{body}");
}

/// The store side on PostgreSQL (the redb side is the unit tests'): buffered points
/// are written in one transaction, read back as a range, and expired through the
/// expiry index once their retention is over, younger ones kept.
#[test]
fn points_are_written_read_and_expired_on_postgres() {
    use dynserv::server_metrics::{self, Buffer, Range, Sample, FINE};
    use dynserv::store::Store;

    let database = dynserv_tests::postgres::TestDatabase::create();
    let store = Store::connect(database.url()).expect("the test database");
    let buffer = Buffer::default();
    let t0: i64 = 1_800_000_000; // a whole hour
    let sample = |at: i64| Sample {
        at,
        load1: 1.0,
        cpu_percent: Some(25.0),
        mem_used: 100,
        mem_total: 200,
        disk_used: 10,
        disk_total: 20,
    };
    // Two hours of 10 s points for s1, the first for s2.
    for i in 0..720 {
        buffer.record("s1", &sample(t0 + i * 10));
        if i < 360 {
            buffer.record("s2", &sample(t0 + i * 10));
        }
        if i % 90 == 89 {
            server_metrics::flush(&store, &buffer, t0 + i * 10 + 10, false).unwrap();
        }
    }
    let count = |server: &str| {
        let range = Range {
            since: t0,
            until: t0 + 7_200,
            step: 10,
            window: 0,
        };
        store
            .read(|r| server_metrics::query(r, &Buffer::default(), server, &range))
            .unwrap()
            .len()
    };
    assert_eq!((count("s1"), count("s2")), (720, 360));
    let due = t0 + 3_600 + FINE.keep_secs;
    assert_eq!(
        server_metrics::expire(&store, due - 1, 100_000)
            .unwrap()
            .points,
        0
    );
    let expired = server_metrics::expire(&store, due, 100_000).unwrap();
    assert_eq!(expired.points, 720, "{expired:?}");
    assert_eq!((count("s1"), count("s2")), (360, 0));
}
