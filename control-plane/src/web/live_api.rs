//! `GET /api/v1/events?topics=agents,executions,rollouts,notifications`: the live
//! events of `live` as server-sent events, each passed on only when the viewer may see
//! it (`live::Event::visible_to`, through `policy::can`).
//!
//! A stream sends `event: TOPIC` / `data: {"id", ...}` frames, `event: resync` when it
//! fell behind (the page reads its data again), a `: ping` comment every
//! [`PING_EVERY`], and ends after [`STREAM_LIFETIME`] (the browser's `EventSource`
//! connects again, with the session checked anew). A session holds at most
//! [`live::MAX_STREAMS_PER_SESSION`] streams; the next one is a 429.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use warp::http::HeaderValue;

use super::fleet_api::require_fleet;
use super::{Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult, Kind};
use crate::live::{self, Topic};

/// How often a stream sends a comment, so proxies and the browser keep it open.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// How long one stream lasts before the browser is asked to connect again.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// The topics a request asks for: `topics` (comma-separated), else every topic the
/// caller may follow. An unknown topic is a 400 naming it.
fn topics(req: &Req, ctx: &Ctx) -> AppResult<Vec<Topic>> {
    let Some(text) = req.text_filter("topics") else {
        let fleet = crate::policy::can(&ctx.subject, crate::policy::Action::UseFleet, None);
        return Ok(Topic::ALL
            .into_iter()
            .filter(|t| fleet || !t.is_fleet())
            .collect());
    };
    let mut wanted = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let topic = Topic::parse(name).ok_or_else(|| {
            AppError::bad_request(format!(
                "topics: {:?} is not a topic; use agents, executions, rollouts or notifications",
                crate::validate::echo(name)
            ))
        })?;
        if !wanted.contains(&topic) {
            wanted.push(topic);
        }
    }
    if wanted.is_empty() {
        return Err(AppError::bad_request("topics: name at least one topic"));
    }
    Ok(wanted)
}

/// What counts a caller's streams: its session (cookie) or API token, hashed.
fn session_key(req: &Req, ctx: &Ctx) -> String {
    let secret = match ctx.via_token {
        true => req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        false => req.cookie(crate::auth::SESSION_COOKIE).unwrap_or_default(),
    };
    crate::secrets::hash_secret(&format!("{}\n{secret}", ctx.user.id))
}

/// `GET /api/v1/events`.
pub fn events(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    req.only_filters(&["topics"])?;
    let topics = topics(req, ctx)?;
    if topics.iter().any(|t| t.is_fleet()) {
        require_fleet(ctx)?;
    }
    let guard = app
        .events
        .open_stream(&session_key(req, ctx))
        .ok_or_else(|| {
            AppError::new(
                Kind::TooManyRequests,
                format!(
                    "this session has {} event streams open already; close a page first",
                    live::MAX_STREAMS_PER_SESSION
                ),
            )
        })?;
    let mut events = app.events.subscribe();
    let subject = ctx.subject.clone();
    let (tx, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    // The stream waits on the channel, never on the store: it runs as a task on the
    // handlers' runtime, and ends when the client leaves (the body is dropped).
    tokio::spawn(async move {
        let _guard = guard;
        let start = tokio::time::Instant::now();
        let deadline = start + STREAM_LIFETIME;
        let mut ping = tokio::time::interval_at(start + PING_EVERY, PING_EVERY);
        let mut text = String::from("retry: 3000\n: connected\n\n");
        loop {
            if tx
                .send(Ok(Bytes::from(std::mem::take(&mut text))))
                .await
                .is_err()
            {
                return;
            }
            text = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
                _ = ping.tick() => ": ping\n\n".to_string(),
                got = next_visible(&mut events, &topics, &subject) => match got {
                    Some(frame) => frame,
                    None => return,
                },
            };
        }
    });
    let mut resp = super::streamed(body);
    let headers = resp.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The next frame for this viewer: an event of its topics that it may see, or a
/// `resync` after it fell behind; `None` once the channel closed.
async fn next_visible(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<live::Event>>,
    topics: &[Topic],
    subject: &crate::policy::Subject,
) -> Option<String> {
    loop {
        match events.recv().await {
            Ok(event) => {
                if topics.contains(&event.topic) && event.visible_to(subject) {
                    return Some(format!(
                        "event: {}\ndata: {}\n\n",
                        event.topic.as_str(),
                        event.data
                    ));
                }
            }
            Err(RecvError::Lagged(_)) => return Some("event: resync\ndata: {}\n\n".into()),
            Err(RecvError::Closed) => return None,
        }
    }
}
