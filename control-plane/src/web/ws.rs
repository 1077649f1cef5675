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

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warp::http::HeaderMap;
use warp::Filter;

use super::frames::{FrameReader, FrameWriter, FromViewer};
use super::{Req, Resp};
use crate::app::App;
use crate::error::AppError;
use crate::executions::{self, Execution};
use crate::fleet::LiveEvent;

/// Chunks read from the store per batch while replaying.
const REPLAY_BATCH: usize = 2000;

/// The WebSocket route; other requests (one that is not a WebSocket upgrade too) fall
/// through to the router.
pub fn filter(
    app: App,
) -> impl Filter<Extract = (Resp,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let app_filter = warp::any().map(move || app.clone());
    warp::get()
        .and(warp::path!("api" / "v1" / "executions" / String / "stream"))
        .and(warp::header::headers_cloned())
        .and_then(|id: String, headers: HeaderMap| async move {
            match super::frames::upgrade_key(&headers).map(String::from) {
                Some(key) => Ok((id, key, headers)),
                None => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(super::peer_addr())
        .and(app_filter)
        .map(
            |id: String,
             key: String,
             headers: HeaderMap,
             on_upgrade: Option<OnUpgrade>,
             query: String,
             remote: Option<SocketAddr>,
             app: App| {
                let path = format!("/api/v1/executions/{id}/stream");
                let req = super::upgrade_request(&app, path, &query, headers, remote);
                upgrade(app, id, &key, on_upgrade, req)
            },
        )
}

/// Checks the viewer may watch execution `id` and answers its upgrade request with
/// `key`; the stream is served once the connection is upgraded.
fn upgrade(app: App, id: String, key: &str, on_upgrade: Option<OnUpgrade>, req: Req) -> Resp {
    let checked = crate::store::block_in_place(|| {
        let ctx = super::authenticate(&app, &req)?.ok_or_else(AppError::unauthenticated)?;
        super::fleet_api::require_fleet(&ctx)?;
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
    });
    let from_seq = match checked {
        Ok(from_seq) => from_seq,
        Err(e) => return super::api_error(&e),
    };
    let Some(on_upgrade) = on_upgrade else {
        // The filter let only upgrades through; a connection that cannot be upgraded
        // (HTTP/2, a test server without upgrades) is told so.
        return super::api_error(&AppError::bad_request(
            "this connection cannot be upgraded to a WebSocket",
        ));
    };
    let response = super::frames::switching_protocols(key);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(app, id, from_seq, upgraded).await,
            Err(e) => tracing::debug!(execution = %id, "WebSocket upgrade failed: {e}"),
        }
    });
    response
}

/// How often a stream pings its client.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a client may stay silent (no pong, no frame) before its stream is closed.
pub const IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(60);

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

async fn serve(app: App, id: String, from_seq: u64, upgraded: Upgraded) {
    let (rx, tx) = tokio::io::split(TokioIo::new(upgraded));
    let mut rx = FrameReader::new(rx);
    let tx: Sink = std::sync::Arc::new(tokio::sync::Mutex::new(FrameWriter::new(tx)));
    let answerer = tx.clone();
    // The client's side: any frame (a pong too) shows it is alive; silence past
    // the idle limit, a close frame or an error ends the stream. A task of its own,
    // polled only when the client sends something or a ping is due, not on every
    // wake for output. Its reads are cancel-safe: a frame half read when a ping is
    // due stays in the reader's buffer. It ends with the close code to send.
    let timeouts = app.http_timeouts;
    let mut client_gone = AbortOnDrop(tokio::spawn(async move {
        let mut ping = tokio::time::interval(timeouts.ping_every);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Ok(Some(FromViewer::Alive)) => last_heard = tokio::time::Instant::now(),
                    Ok(Some(FromViewer::Ping(payload))) => {
                        last_heard = tokio::time::Instant::now();
                        if answerer.lock().await.pong(payload).await.is_err() {
                            return NORMAL_CLOSURE;
                        }
                    }
                    Ok(Some(FromViewer::Close(_)) | None) => return NORMAL_CLOSURE,
                    Err(e) => {
                        tracing::debug!("a live log viewer broke the protocol: {e:#}");
                        return PROTOCOL_ERROR;
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() >= timeouts.idle_close {
                        return NORMAL_CLOSURE;
                    }
                    if answerer.lock().await.ping().await.is_err() {
                        return NORMAL_CLOSURE;
                    }
                }
            }
        }
    }));
    let code = tokio::select! {
        code = &mut client_gone.0 => code.unwrap_or(NORMAL_CLOSURE),
        result = follow(&app, &id, from_seq, &tx) => {
            if let Err(e) = result {
                tracing::debug!(execution = %id, "log stream ended: {e:#}");
            }
            NORMAL_CLOSURE
        }
    };
    drop(client_gone);
    let _ = tx.lock().await.close(code).await;
}

/// The close codes a stream ends with (RFC 6455, 7.4.1).
const NORMAL_CLOSURE: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;

/// A task aborted when its handle is dropped: the client's side of a stream ends with
/// the stream, however the stream's task ends (dropped at shutdown too).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Sink =
    std::sync::Arc<tokio::sync::Mutex<FrameWriter<tokio::io::WriteHalf<TokioIo<Upgraded>>>>>;

/// Reads stored chunks from `from` on, on the blocking pool (never on this worker),
/// as the messages live viewers get ([`crate::fleet::hub::chunk_message`]): `(seq,
/// message)`, the message empty for a chunk that shows nothing.
async fn stored_chunks(app: &App, id: &str, from: u64) -> anyhow::Result<Vec<(u64, Bytes)>> {
    let store = app.store.clone();
    let id = id.to_string();
    crate::store::blocking(move || {
        store.read(|r| {
            executions::log(r, &id, from, REPLAY_BATCH)?
                .iter()
                .map(|c| {
                    Ok((
                        c.seq,
                        crate::fleet::hub::chunk_message(c.seq, &c.stream, &c.data)?,
                    ))
                })
                .collect()
        })
    })
    .await
}

/// Reads the execution on the blocking pool.
async fn stored_execution(app: &App, id: &str) -> anyhow::Result<Option<Execution>> {
    let store = app.store.clone();
    let id = id.to_string();
    crate::store::blocking(move || store.get::<Execution>(&id)).await
}

/// Sends stored chunks from `next` on; returns the next seq owed.
async fn replay(app: &App, id: &str, mut next: u64, tx: &Sink) -> anyhow::Result<u64> {
    loop {
        let chunks = stored_chunks(app, id, next).await?;
        let count = chunks.len();
        let mut sink = tx.lock().await;
        for (seq, message) in chunks {
            next = seq + 1;
            // A chunk that held only the internal result line shows nothing.
            if !message.is_empty() {
                sink.feed_text(message).await?;
            }
        }
        sink.flush().await?;
        if count < REPLAY_BATCH {
            return Ok(next);
        }
    }
}

async fn finish(app: &App, id: &str, next: u64, tx: &Sink) -> anyhow::Result<()> {
    replay(app, id, next, tx).await?;
    let execution = stored_execution(app, id).await?;
    let (status, exit_code) = execution
        .map(|e| (e.status.as_str(), e.exit_code))
        .unwrap_or(("failed", None));
    let mut sink = tx.lock().await;
    sink.feed_text(Bytes::from(
        json!({"end": {"status": status, "exit_code": exit_code}}).to_string(),
    ))
    .await?;
    sink.flush().await?;
    Ok(())
}

async fn follow(app: &App, id: &str, from_seq: u64, tx: &Sink) -> anyhow::Result<()> {
    // A finished execution is served from the store alone: no live channel.
    if stored_execution(app, id)
        .await?
        .is_none_or(|e| e.status.is_final())
    {
        return finish(app, id, from_seq, tx).await;
    }
    let mut subscription = app.fleet.hub().subscribe(id);
    let mut next = replay(app, id, from_seq, tx).await?;
    if stored_execution(app, id)
        .await?
        .is_none_or(|e| e.status.is_final())
    {
        drop(subscription);
        return finish(app, id, next, tx).await;
    }
    loop {
        // Everything already waiting goes out in one flush: fewer writes when output
        // comes fast, no delay when it comes slowly.
        let live = subscription.receiver();
        let mut event = live.recv().await;
        let mut sink = tx.lock().await;
        while let Ok(LiveEvent::Chunk { seq, message }) = &event {
            if *seq > next {
                sink.flush().await?;
                drop(sink);
                next = replay(app, id, next, tx).await?;
                sink = tx.lock().await;
            }
            if *seq == next {
                // An empty text is a chunk with nothing to show (the result line).
                if !message.is_empty() {
                    sink.feed_text(message.clone()).await?;
                }
                next += 1;
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
        sink.flush().await?;
        drop(sink);
        match event {
            Ok(LiveEvent::Chunk { .. }) => {}
            Ok(LiveEvent::End) => {
                drop(subscription);
                return finish(app, id, next, tx).await;
            }
            Err(RecvError::Lagged(_)) => next = replay(app, id, next, tx).await?,
            Err(RecvError::Closed) => {
                if stored_execution(app, id)
                    .await?
                    .is_none_or(|e| e.status.is_final())
                {
                    drop(subscription);
                    return finish(app, id, next, tx).await;
                }
                subscription = app.fleet.hub().subscribe(id);
                next = replay(app, id, next, tx).await?;
            }
        }
    }
}
