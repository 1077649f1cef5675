//! The data layer end to end, on the real binaries: lists read one page at a time
//! with cursors, `Link: rel="next"` and filters (an unknown one is a 400); one job's
//! stored output is capped; log downloads stream as JSON lines or plain text; a full
//! disk answers 503 and `/healthz` says so until space is freed, then everything
//! recovers without a restart; new jobs are refused below the free-space floor; no
//! store call runs on an async worker; viewing finished executions leaves no live
//! channel behind.

use std::time::Duration;

use dynserv_tests::{eventually, Agent, Api, ControlPlane, PageClient};
use futures::StreamExt;
use serde_json::{json, Value};

const PASSWORD: &str = "Xq7!vR2#data-layer";

async fn setup(cp: &ControlPlane) -> Api {
    cp.add_user("admin", "admin", false, PASSWORD);
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Data"})).await;
    assert_eq!(status, 201, "{body}");
    api
}

/// `GET path` answering status, JSON body and the `rel="next"` target of `Link`.
async fn get_page(api: &Api, path: &str) -> (u16, Value, Option<String>) {
    let response = api
        .http()
        .get(api.url(path))
        .bearer_auth(api.token().unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let next = response
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.ends_with("rel=\"next\""))
        .and_then(|v| Some(v[v.find('<')? + 1..v.find('>')?].to_string()));
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body, next)
}

/// Follows `Link: rel="next"` from `path`; answers every item's id in order.
async fn walk(api: &Api, path: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(path) = next {
        let (status, body, link) = get_page(api, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        ids.extend(
            body.as_array()
                .unwrap_or_else(|| panic!("{path} answers an array: {body}"))
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        next = link;
    }
    ids
}

/// Executions, audit entries and notifications come a page at a time, newest first,
/// with a `Link` to the next page while more remain and every record exactly once;
/// filters narrow them; unknown filters and values, bad limits and cursors are 400s
/// naming the problem; the executions page renders its filters and pager.
#[tokio::test]
async fn lists_page_with_cursors_and_refuse_unknown_filters() {
    let cp = ControlPlane::start().await;
    let api = setup(&cp).await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Data"), "pager-01");
    api.connected_agent("pager-01").await;
    let mut made = Vec::new();
    for n in 0..7 {
        let script = if n == 3 {
            "echo boom; exit 3".to_string()
        } else {
            format!("echo run {n}")
        };
        made.push(
            api.run_script("pager-01", &script).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    made.reverse();

    assert_eq!(walk(&api, "/api/v1/executions?limit=3").await, made);
    assert_eq!(walk(&api, "/api/v1/executions?limit=1").await, made);
    let (_, first, next) = get_page(&api, "/api/v1/executions?limit=3").await;
    assert_eq!(first.as_array().unwrap().len(), 3);
    assert!(next.unwrap().contains("cursor="));
    let (_, all, next) = get_page(&api, "/api/v1/executions").await;
    assert_eq!(all.as_array().unwrap().len(), 7);
    assert!(next.is_none(), "no Link on the last page");
    assert_eq!(all[0]["name"], "echo run 6", "{}", all[0]);
    assert_eq!(all[0]["project"].as_str().map(str::len), Some(36));
    assert_eq!(all[0]["output_truncated"], false);

    let count = |path: &'static str| {
        let api = api.clone();
        async move { walk(&api, path).await.len() }
    };
    assert_eq!(count("/api/v1/executions?status=failed").await, 1);
    assert_eq!(
        count("/api/v1/executions?status=succeeded&limit=2").await,
        6
    );
    assert_eq!(
        count("/api/v1/executions?agent=pager-01&kind=script").await,
        7
    );
    assert_eq!(
        count("/api/v1/executions?project=Data&started_by=admin").await,
        7
    );
    assert_eq!(count("/api/v1/executions?started_by=nobody").await, 0);
    assert_eq!(count("/api/v1/executions?q=RUN%205").await, 1);
    assert_eq!(
        count("/api/v1/executions?since=2999-01-01T00:00:00Z").await,
        0
    );
    assert_eq!(count("/api/v1/executions?until=2000-01-01").await, 0);
    assert_eq!(
        count("/api/v1/executions?since=2000-01-01&kind=playbook").await,
        0
    );

    for (path, needle) in [
        (
            "/api/v1/executions?status=finished",
            "status must be one of",
        ),
        ("/api/v1/executions?colour=red", "unknown filter \"colour\""),
        ("/api/v1/executions?agent=nobody", "agent"),
        ("/api/v1/executions?project=Nope", "project"),
        ("/api/v1/executions?kind=shell", "kind must be one of"),
        ("/api/v1/executions?since=yesterday", "RFC 3339"),
        ("/api/v1/executions?limit=0", "limit"),
        ("/api/v1/executions?limit=5000", "limit"),
        ("/api/v1/executions?cursor=%25%25%25", "cursor"),
        ("/api/v1/audit?who=admin", "unknown filter"),
        ("/api/v1/notifications?unread=maybe", "unread"),
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path}: {message}");
    }

    // The audit log: pages, and filters by actor, action and subject.
    let audit = walk(&api, "/api/v1/audit?limit=2").await;
    assert!(audit.len() >= 9, "{audit:?}");
    let mut unique = audit.clone();
    unique.dedup();
    assert_eq!(unique.len(), audit.len());
    let (_, creates, _) = get_page(&api, "/api/v1/audit?action=execution.create&actor=admin").await;
    assert_eq!(creates.as_array().unwrap().len(), 7, "{creates}");
    let (_, project, _) =
        get_page(&api, "/api/v1/audit?subject=project:Data&since=2000-01-01").await;
    assert!(
        project
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["target"] == "project:Data"),
        "{project}"
    );

    // The page: the filter form keeps its values and the pager links on.
    let mut pages = PageClient::signed_in(&cp, "admin", PASSWORD).await;
    let html = page_ok(&mut pages, "/executions?status=failed").await;
    assert!(
        html.contains("echo boom; exit 3"),
        "the failed run is listed"
    );
    assert!(
        !html.contains("echo run 5"),
        "succeeded runs are filtered out"
    );
    let html = page_ok(&mut pages, "/executions?limit=2").await;
    assert!(html.contains("rel=\"next\""), "a pager links to older runs");
    let html = page_ok(&mut pages, "/audit?action=execution.create&limit=3").await;
    assert!(html.contains("Older"), "the audit log pages");
}

/// A job printing past `DYNSERV_MAX_JOB_OUTPUT` goes on to its end; what was stored
/// stops at the limit with a marker line, the execution says `output_truncated`; the
/// text download is a plain attachment without ANSI codes or the result line.
#[tokio::test]
async fn output_past_the_limit_is_cut_with_a_marker_and_the_job_goes_on() {
    let cp = ControlPlane::builder()
        .env("DYNSERV_MAX_JOB_OUTPUT", "65536")
        .start()
        .await;
    let api = setup(&cp).await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Data"), "chatty-01");
    api.connected_agent("chatty-01").await;

    let small = api.run_script("chatty-01",
        "printf '\\033[1;32mgreen\\033[0m text\\n'; echo 'DYNSERV-RESULT {\"ok\":true}'; echo after",
    )
    .await;
    let id = small["id"].as_str().unwrap();
    let (status, text) = api
        .get_text(&format!("/api/v1/executions/{id}/log?format=text"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(text, "green text\nafter\n");
    let response = api
        .http()
        .get(api.url(&format!("/api/v1/executions/{id}/log?format=text")))
        .bearer_auth(api.token().unwrap())
        .send()
        .await
        .unwrap();
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"execution-{id}.log\"")
    );
    let (_, lines) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    assert!(lines
        .iter()
        .all(|l| !l["data"].as_str().unwrap().contains("DYNSERV-RESULT")));

    let big = api.run_script("chatty-01",
        "i=0; while [ $i -lt 4000 ]; do echo \"line $i of a long and chatty job\"; i=$((i+1)); done; echo finished > done.txt; exit 0",
    )
    .await;
    assert_eq!(big["status"], "succeeded", "the job went on: {big}");
    assert_eq!(big["output_truncated"], true, "{big}");
    let id = big["id"].as_str().unwrap();
    let (_, chunks) = api
        .get_json_lines(&format!("/api/v1/executions/{id}/log"))
        .await;
    let stored: usize = chunks
        .iter()
        .map(|c| c["data"].as_str().unwrap().len())
        .sum();
    let last = chunks.last().unwrap();
    assert_eq!(last["stream"], "system", "{last}");
    assert!(
        last["data"]
            .as_str()
            .unwrap()
            .contains("output limit of 64 KiB"),
        "{last}"
    );
    assert!(
        stored <= 65536 + 200,
        "stored {stored} bytes past a 64 KiB limit"
    );
    assert!(!chunks
        .iter()
        .any(|c| c["data"].as_str().unwrap().contains("line 3999")));
}

/// A full disk under the data dir: a write answers 503 with a clear message and
/// keeps nothing, `/healthz` answers 503 with the reason, and once space is freed the
/// store reopens by itself: `/healthz` is 200 and writes work, without a restart.
#[tokio::test]
async fn full_disk_answers_503_and_recovers_when_space_is_freed() {
    let cp = ControlPlane::builder()
        .tmpfs_data_dir(24)
        .env("DYNSERV_MIN_FREE_DISK_MB", "0")
        .start()
        .await;
    let api = setup(&cp).await;
    let filler = cp.data_dir().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0x5a_u8; 1 << 20];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);

    // Writes fail until the store notices; each answer is a clear 503, never a 500.
    let refused = eventually(Duration::from_secs(30), "a write is refused", || async {
        let name = format!("p-{}", rand_suffix());
        let (status, body) = api.post("/api/v1/projects", &json!({"name": name})).await;
        assert!(matches!(status, 201 | 503), "{status} {body}");
        (status == 503).then_some(body)
    })
    .await;
    let message = refused["error"].as_str().unwrap();
    assert!(message.contains("no space left"), "{message}");
    let (status, health) = api.get_text("/healthz").await;
    assert_eq!(status, 503, "{health}");
    assert!(health.contains("no space left"), "{health}");
    // Reads still work.
    let (status, _) = api.get("/api/v1/projects").await;
    assert_eq!(status, 200);

    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(30), "/healthz is ok again", || async {
        let (status, _) = api.get_text("/healthz").await;
        (status == 200).then_some(())
    })
    .await;
    let (status, body) = api
        .post("/api/v1/projects", &json!({"name": "After the storm"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        cp.logs().contains("the store can be written again"),
        "{}",
        cp.logs()
    );
}

/// Below the free-space floor new jobs are refused with the reason (503); the store
/// itself still writes.
#[tokio::test]
async fn new_jobs_are_refused_below_the_free_space_floor() {
    // A floor far above what any test machine has free.
    let cp = ControlPlane::builder()
        .env("DYNSERV_MIN_FREE_DISK_MB", "1000000000")
        .start()
        .await;
    let api = setup(&cp).await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Data"), "floor-01");
    api.connected_agent("floor-01").await;
    let (status, body) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "floor-01", "script": "echo hi"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("new jobs are refused"),
        "{body}"
    );
    let (status, _) = api.get_text("/healthz").await;
    assert_eq!(status, 200, "the store itself is fine");
}

/// After API calls, pages, a job and its live stream, no store call ran on a tokio
/// worker; and streams of finished executions leave no live channel behind.
#[tokio::test]
async fn store_calls_stay_off_async_workers_and_finished_streams_hold_nothing() {
    let cp = ControlPlane::start().await;
    let api = setup(&cp).await;
    let _agent = Agent::start(&cp, &cp.enrollment_token("Data"), "calm-01");
    api.connected_agent("calm-01").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            api.run_script("calm-01", &format!("echo {n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for round in 0..20 {
        let id = &ids[round % ids.len()];
        let mut socket = api
            .websocket(&format!("/api/v1/executions/{id}/stream"))
            .await;
        while let Some(Ok(message)) = socket.next().await {
            if message.to_text().is_ok_and(|t| t.contains("\"end\"")) {
                break;
            }
        }
    }
    let mut pages = PageClient::signed_in(&cp, "admin", PASSWORD).await;
    for path in ["/", "/executions", "/servers", "/audit", "/agents"] {
        page_ok(&mut pages, path).await;
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let (_, metrics) = api.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "dynserv_live_channels"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "dynserv_store_healthy"), 1.0);
    assert_eq!(
        metric(&metrics, "dynserv_store_calls_on_async_workers"),
        0.0,
        "store calls ran on async workers:\n{}",
        cp.logs()
    );
}

async fn page_ok(pages: &mut PageClient, path: &str) -> String {
    let (status, _, body) = pages.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
