//! `GET /api/v1/executions/{id}/stream`: the live log of an execution over a
//! WebSocket. Replays the stored log from `?from_seq=N`, then follows live output,
//! then sends `{"end": {"status", "exit_code"}}` and closes. Frames are
//! `{"seq","stream","data"}`, each sequence number exactly once, in order.
//!
//! How there is no gap and no duplicate: the viewer subscribes to the hub before it
//! reads the store; it tracks the next seq it owes; live chunks below it are skipped,
//! and anything above it (a missed publication, a lagging channel) sends it back to
//! the store, which holds every published chunk since publication follows commit.
//!
//! An upgrade authenticated by the session cookie is refused (403) unless its `Origin`
//! is this server's own ([`same_origin`]), so another site's page cannot open the
//! stream with a visitor's cookie; bearer-token clients need no `Origin`.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warp::http::{HeaderMap, Method};
use warp::ws::{Message, WebSocket};
use warp::{Filter, Reply};

use super::{Req, Resp};
use crate::app::App;
use crate::error::AppError;
use crate::executions::{self, Execution};
use crate::fleet::LiveEvent;

/// Chunks read from the store per batch while replaying.
const REPLAY_BATCH: usize = 2000;

/// The WebSocket route; non-upgrade requests fall through to the router.
pub fn filter(
    app: App,
) -> impl Filter<Extract = (Resp,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let app_filter = warp::any().map(move || app.clone());
    warp::get()
        .and(warp::path!("api" / "v1" / "executions" / String / "stream"))
        .and(warp::ws())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(app_filter)
        .map(
            |id: String,
             ws: warp::ws::Ws,
             query: String,
             headers: HeaderMap,
             remote: Option<SocketAddr>,
             app: App| { upgrade(app, id, ws, query, headers, remote) },
        )
}

fn upgrade(
    app: App,
    id: String,
    ws: warp::ws::Ws,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
) -> Resp {
    let req = Req {
        method: Method::GET,
        path: format!("/api/v1/executions/{id}/stream"),
        query: serde_urlencoded::from_str(&query).unwrap_or_default(),
        headers,
        body: Default::default(),
        client_ip: remote
            .map(|r| r.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        secure: false,
    };
    let checked = (|| {
        let ctx = super::authenticate(&app, &req)?.ok_or_else(AppError::unauthenticated)?;
        // A browser sends the session cookie with a WebSocket upgrade from any site
        // (no CORS, no CSRF token): a cookie-authenticated upgrade must come from a
        // page of this server. Bearer-token clients hold no ambient credential.
        if !ctx.via_token && !same_origin(&req.headers, &app.config.public_url) {
            return Err(AppError::new(
                crate::error::Kind::Forbidden,
                "a WebSocket opened with the session cookie must come from this site's pages",
            ));
        }
        app.store
            .read(|r| Ok(executions::get_visible(r, &ctx.subject, &id)?))?;
        super::fleet_api::parse_from_seq(&req)
    })();
    match checked {
        Ok(from_seq) => ws
            .max_message_size(64 * 1024)
            .on_upgrade(move |socket| serve(app, id, from_seq, socket))
            .into_response(),
        Err(e) => super::api_error(&e),
    }
}

/// Whether the request's `Origin` is this server's own origin: the origin the browser
/// reached it at (the `Host` header, over http or https), or the configured public
/// URL's. A request without `Origin` (no browser sends one without it) is not.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(origin) = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url::Url::parse(v).ok())
    else {
        return false;
    };
    if !matches!(origin.scheme(), "http" | "https") {
        return false;
    }
    let origin = origin.origin();
    if url::Url::parse(public_url).is_ok_and(|public| public.origin() == origin) {
        return true;
    }
    let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    ["http", "https"].iter().any(|scheme| {
        url::Url::parse(&format!("{scheme}://{host}/"))
            .is_ok_and(|own| own.origin() == origin && own.host_str().is_some())
    })
}

async fn serve(app: App, id: String, from_seq: u64, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let client_gone = async {
        while let Some(Ok(message)) = rx.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    tokio::select! {
        _ = client_gone => {}
        result = follow(&app, &id, from_seq, &mut tx) => {
            if let Err(e) = result {
                tracing::debug!(execution = %id, "log stream ended: {e:#}");
            }
        }
    }
    let _ = tx.close().await;
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// Sends stored chunks from `next` on; returns the next seq owed.
async fn replay(app: &App, id: &str, mut next: u64, tx: &mut Sink) -> anyhow::Result<u64> {
    loop {
        let chunks = app
            .store
            .read(|r| executions::log(r, id, next, REPLAY_BATCH))?;
        let count = chunks.len();
        for chunk in chunks {
            next = chunk.seq + 1;
            tx.feed(Message::text(serde_json::to_string(&chunk)?))
                .await?;
        }
        tx.flush().await?;
        if count < REPLAY_BATCH {
            return Ok(next);
        }
    }
}

async fn finish(app: &App, id: &str, next: u64, tx: &mut Sink) -> anyhow::Result<()> {
    replay(app, id, next, tx).await?;
    let execution: Option<Execution> = app.store.get(id)?;
    let (status, exit_code) = execution
        .map(|e| (e.status.as_str(), e.exit_code))
        .unwrap_or(("failed", None));
    tx.send(Message::text(
        json!({"end": {"status": status, "exit_code": exit_code}}).to_string(),
    ))
    .await?;
    Ok(())
}

async fn follow(app: &App, id: &str, from_seq: u64, tx: &mut Sink) -> anyhow::Result<()> {
    let mut live = app.fleet.hub().subscribe(id);
    let mut next = replay(app, id, from_seq, tx).await?;
    let ended = app
        .store
        .get::<Execution>(id)?
        .is_none_or(|e| e.status.is_final());
    if ended {
        return finish(app, id, next, tx).await;
    }
    loop {
        // Everything already waiting goes out in one flush: fewer writes when output
        // comes fast, no delay when it comes slowly.
        let mut event = live.recv().await;
        let mut pending = 0;
        while let Ok(LiveEvent::Chunk { seq, json }) = &event {
            if *seq > next {
                tx.flush().await?;
                next = replay(app, id, next, tx).await?;
            }
            if *seq == next {
                tx.feed(Message::text(json.to_string())).await?;
                next += 1;
                pending += 1;
            }
            if pending >= 64 {
                tx.flush().await?;
                pending = 0;
            }
            event = match live.try_recv() {
                Ok(e) => Ok(e),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(RecvError::Lagged(n))
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
            };
        }
        tx.flush().await?;
        match event {
            Ok(LiveEvent::Chunk { .. }) => {}
            Ok(LiveEvent::End) => return finish(app, id, next, tx).await,
            Err(RecvError::Lagged(_)) => next = replay(app, id, next, tx).await?,
            Err(RecvError::Closed) => {
                if app
                    .store
                    .get::<Execution>(id)?
                    .is_none_or(|e| e.status.is_final())
                {
                    return finish(app, id, next, tx).await;
                }
                live = app.fleet.hub().subscribe(id);
                next = replay(app, id, next, tx).await?;
            }
        }
    }
}
