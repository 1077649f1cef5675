//! The web terminal: `GET /api/v1/servers/{id}/terminal` (a WebSocket to a shell on
//! the server, through its agent: [`crate::fleet::terminal`]), the same path without
//! an upgrade (whether a terminal can be opened, as JSON, so the page can say why
//! not), and the page `GET /servers/{id}/terminal`.
//!
//! Frames: text or binary frames carry the terminal's bytes both ways (the page sends
//! what is typed, the control plane sends the shell's output as binary frames); a text
//! frame `{"resize": {"cols": C, "rows": R}}` resizes. The query may give the first
//! size (`?cols=&rows=`, else 80×24). The socket closes with a close frame whose
//! reason says why the terminal ended.
//!
//! Who may: `Action::Terminal` on the server's project (write level), and only while
//! the project allows terminals (`Project::terminal_enabled`); a cookie-authenticated
//! upgrade must come from this site's pages ([`super::ws::same_origin`]). The agent
//! must be connected to this replica (409 otherwise: terminals do not cross
//! replicas) and speak protocol 3 (409 telling to upgrade it). Opening and closing
//! are audited (`terminal.open`, `terminal.close` with the duration). A terminal is
//! closed after `DYNSERV_TERMINAL_IDLE_SECS` without input, when the page closes or
//! stops answering pings, or when the shell exits.

use std::net::SocketAddr;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use warp::http::{HeaderMap, StatusCode};
use warp::ws::{Message, WebSocket};
use warp::{Filter, Reply};

use super::{Ctx, Req, Resp};
use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult, Kind};
use crate::fleet::terminal::{Input, OpenError, Output, Terminal};
use crate::policy::{self, Action};
use crate::projects::Project;
use crate::servers;
use crate::store::Read as _;
use dynserv_shared::proto::TerminalSize;

/// The largest WebSocket message a page may send (a paste), in bytes.
pub const MAX_INPUT_MESSAGE: usize = 64 * 1024;

/// The size a terminal opens with when the query gives none.
pub const DEFAULT_SIZE: TerminalSize = TerminalSize { cols: 80, rows: 24 };

/// Where a terminal goes: the server and its agent, checked for the caller.
#[derive(Debug, Clone)]
pub struct Target {
    pub server_id: String,
    pub server_name: String,
    pub project_name: String,
    pub agent_id: String,
}

/// Decides whether the caller may open a terminal on server `server_id` now, in this
/// order: the fleet at all, the server visible, the `terminal` permission on its
/// project (403), the project's switch (403), an agent (409), the agent connected here
/// and new enough (409). Reads the store: call it on a blocking thread.
pub fn target(app: &App, ctx: &Ctx, server_id: &str) -> AppResult<Target> {
    super::fleet_api::require_fleet(ctx)?;
    Ok(app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, server_id)?;
        if !policy::can(&ctx.subject, Action::Terminal, Some(&server.project_id)) {
            return Err(AppError::new(
                Kind::Forbidden,
                "opening a terminal needs write access to the server's project",
            )
            .into());
        }
        let project: Project = r
            .get(&server.project_id)?
            .ok_or_else(|| AppError::not_found("project"))?;
        if !project.terminal_enabled {
            return Err(AppError::new(
                Kind::Forbidden,
                format!(
                    "terminals are turned off for project {}: its admins can allow them on the project's Edit page",
                    project.name
                ),
            )
            .into());
        }
        let Some(agent_id) = server.agent_id.clone() else {
            return Err(AppError::conflict(
                "this server has no agent: install one to open a terminal",
            )
            .into());
        };
        app.fleet
            .terminal_check(r, &agent_id)
            .map_err(|e| AppError::conflict(e.to_string()))?;
        Ok(Target {
            server_id: server.id.clone(),
            server_name: server.name.clone(),
            project_name: project.name.clone(),
            agent_id,
        })
    })?)
}

/// `GET /api/v1/servers/{id}/terminal` without an upgrade: `{"ready": true}` when a
/// terminal can be opened now, else the error that the upgrade would get.
pub fn check_api(app: &App, ctx: &Ctx, server_id: &str) -> AppResult<Resp> {
    let target = target(app, ctx, server_id)?;
    Ok(super::json(
        StatusCode::OK,
        &json!({"ready": true, "server": target.server_name}),
    ))
}

/// `GET /servers/{id}/terminal`: the terminal page, or why there is none. A caller
/// without the permission gets the error page.
pub fn page(app: &App, req: &Req, ctx: &Ctx, server_id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = app
        .store
        .read(|r| Ok(servers::get_visible(r, &ctx.subject, server_id)?))?;
    let (status, error) = match target(app, ctx, server_id) {
        Ok(_) => (StatusCode::OK, None),
        Err(e) if e.kind == Kind::Forbidden && !can_terminal(ctx, &server.project_id) => {
            return Err(e)
        }
        Err(e) => (e.status(), Some(e.message.clone())),
    };
    super::pages::page_with_status(
        app,
        req,
        ctx,
        status,
        "terminal",
        &format!("Terminal · {}", server.name),
        json!({
            "server": {"id": server.id, "name": server.name},
            "error": error,
            "idle_minutes": app.config.terminal_idle.as_secs().div_ceil(60),
        }),
    )
}

fn can_terminal(ctx: &Ctx, project_id: &str) -> bool {
    policy::can(&ctx.subject, Action::Terminal, Some(project_id))
}

/// The WebSocket route; non-upgrade requests fall through to the router.
pub fn filter(
    app: App,
) -> impl Filter<Extract = (Resp,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let app_filter = warp::any().map(move || app.clone());
    warp::get()
        .and(warp::path!("api" / "v1" / "servers" / String / "terminal"))
        .and(warp::ws())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(super::peer_addr())
        .and(app_filter)
        .then(
            |id: String,
             ws: warp::ws::Ws,
             query: String,
             headers: HeaderMap,
             remote: Option<SocketAddr>,
             app: App| { upgrade(app, id, ws, query, headers, remote) },
        )
}

/// The first size from `?cols=&rows=`; absent values take [`DEFAULT_SIZE`]'s.
fn size_from_query(req: &Req) -> AppResult<TerminalSize> {
    let side = |name: &str, default: u16| -> AppResult<u16> {
        match req
            .query
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            None => Ok(default),
            Some(text) => text.parse::<u16>().map_err(|_| {
                AppError::new(Kind::BadRequest, format!("{name} must be a whole number"))
            }),
        }
    };
    Ok(TerminalSize {
        cols: side("cols", DEFAULT_SIZE.cols)?,
        rows: side("rows", DEFAULT_SIZE.rows)?,
    }
    .clamped())
}

async fn upgrade(
    app: App,
    id: String,
    ws: warp::ws::Ws,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
) -> Resp {
    let path = format!("/api/v1/servers/{id}/terminal");
    let req = super::upgrade_request(&app, path, &query, headers, remote);
    let checked = {
        let app = app.clone();
        crate::store::blocking(move || -> AppResult<(Target, Actor, TerminalSize)> {
            let ctx = super::authenticate(&app, &req)?.ok_or_else(AppError::unauthenticated)?;
            super::fleet_api::require_fleet(&ctx)?;
            // A browser sends the session cookie with a WebSocket upgrade from any
            // site: a cookie-authenticated upgrade must come from a page of this one.
            if !ctx.via_token && !super::ws::same_origin(&req.headers, &app.config.public_url) {
                return Err(AppError::new(
                    Kind::Forbidden,
                    "a WebSocket opened with the session cookie must come from this site's pages",
                ));
            }
            let target = target(&app, &ctx, &id)?;
            let size = size_from_query(&req)?;
            Ok((target, ctx.actor(&req), size))
        })
        .await
    };
    let (target, actor, size) = match checked {
        Ok(checked) => checked,
        Err(e) => return super::api_error(&e),
    };
    let terminal = match app.fleet.open_terminal(&target.agent_id, size).await {
        Ok(terminal) => terminal,
        Err(e) => return super::api_error(&open_error(e)),
    };
    ws.max_message_size(MAX_INPUT_MESSAGE)
        .on_upgrade(move |socket| serve(app, target, actor, terminal, socket))
        .into_response()
}

/// The HTTP answer to a terminal that could not be opened.
fn open_error(error: OpenError) -> AppError {
    match error {
        OpenError::Failed(e) => AppError::new(
            Kind::Conflict,
            format!("opening the terminal failed: {e:#}"),
        ),
        other => AppError::conflict(other.to_string()),
    }
}

/// What a page's WebSocket message asks: bytes, a resize, or nothing (pings, pongs,
/// empty text).
pub fn client_input(message: &Message) -> Option<Input> {
    if message.is_binary() {
        let bytes = message.as_bytes();
        return (!bytes.is_empty()).then(|| Input::Bytes(bytes.to_vec()));
    }
    let text = message.to_str().ok()?;
    if text.is_empty() {
        return None;
    }
    if text.starts_with("{\"resize\"") || text.starts_with("{ \"resize\"") {
        #[derive(serde::Deserialize)]
        struct Resize {
            resize: TerminalSize,
        }
        if let Ok(resize) = serde_json::from_str::<Resize>(text) {
            return Some(Input::Resize(resize.resize.clamped()));
        }
    }
    Some(Input::Bytes(text.as_bytes().to_vec()))
}

/// A close frame's reason: at most 123 bytes (the WebSocket limit), cut at a
/// character boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// "42 s", "3 min 5 s", "2 h 1 min".
fn duration_text(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// The detail of a `terminal.close` entry: how long it was open (also in seconds,
/// for searching and sorting by eye), then why it closed.
fn close_detail(seconds: u64, reason: &str) -> String {
    if seconds < 60 {
        format!("after {seconds} s: {reason}")
    } else {
        format!("after {} ({seconds} s): {reason}", duration_text(seconds))
    }
}

async fn record(app: &App, actor: &Actor, action: &'static str, target: &Target, detail: String) {
    let (store, actor, subject) = (
        app.store.clone(),
        actor.clone(),
        format!("server:{}", target.server_name),
    );
    let recorded = crate::store::blocking(move || {
        store.write(|w| audit::record(w, &actor, action, &subject, detail))
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!("recording {action}: {e:#}");
    }
}

async fn serve(app: App, target: Target, actor: Actor, terminal: Terminal, socket: WebSocket) {
    let opened = Instant::now();
    record(
        &app,
        &actor,
        "terminal.open",
        &target,
        format!("project {}, shell {}", target.project_name, terminal.shell),
    )
    .await;
    tracing::info!(server = %target.server_id, agent = %target.agent_id, user = %actor.username, "terminal opened");
    let reason = pump(&app, terminal, socket).await;
    let seconds = opened.elapsed().as_secs();
    tracing::info!(server = %target.server_id, user = %actor.username, seconds, "terminal closed: {reason}");
    record(
        &app,
        &actor,
        "terminal.close",
        &target,
        close_detail(seconds, &reason),
    )
    .await;
}

/// Moves frames between the page and the terminal until one side ends; returns why.
/// Input waits for room towards the agent without stopping output from flowing the
/// other way (a paste into a shell that prints a lot cannot lock both directions).
async fn pump(app: &App, mut terminal: Terminal, socket: WebSocket) -> String {
    let (mut tx, mut rx) = socket.split();
    let timeouts = app.http_timeouts;
    let idle = app.config.terminal_idle;
    let mut tick = tokio::time::interval(timeouts.ping_every.min(idle));
    tick.tick().await;
    let mut last_heard = Instant::now();
    let mut last_input = Instant::now();
    let mut pending: Option<Input> = None;
    let reason = loop {
        tokio::select! {
            output = terminal.output.recv() => match output {
                Some(Output::Bytes(bytes)) => {
                    if tx.send(Message::binary(bytes)).await.is_err() {
                        break "the page closed".to_string();
                    }
                }
                Some(Output::Closed { reason }) => break reason,
                None => break "the terminal ended".to_string(),
            },
            permit = terminal.input.reserve(), if pending.is_some() => match permit {
                Ok(permit) => {
                    if let Some(input) = pending.take() {
                        permit.send(input);
                    }
                }
                Err(_) => break "the terminal ended".to_string(),
            },
            message = rx.next(), if pending.is_none() => match message {
                Some(Ok(message)) if message.is_close() => break "the page closed".to_string(),
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    if let Some(input) = client_input(&message) {
                        last_input = last_heard;
                        pending = Some(input);
                    }
                }
                _ => break "the page closed".to_string(),
            },
            _ = tick.tick() => {
                if last_input.elapsed() >= idle {
                    break format!("closed after {} without input", duration_text(idle.as_secs()));
                }
                if last_heard.elapsed() >= timeouts.idle_close {
                    break "the page stopped answering".to_string();
                }
                if tx.send(Message::ping(Vec::new())).await.is_err() {
                    break "the page closed".to_string();
                }
            }
        }
    };
    // Dropping the terminal's input closes it on the agent.
    drop(terminal);
    let _ = tx
        .send(Message::close_with(1000u16, close_reason(&reason)))
        .await;
    let _ = tx.close().await;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text and binary frames are bytes, a resize frame resizes (clamped), and empty
    /// frames, pings and pongs are nothing.
    #[test]
    fn page_frames_are_read_as_documented() {
        assert_eq!(
            client_input(&Message::text("ls\r")),
            Some(Input::Bytes(b"ls\r".to_vec()))
        );
        assert_eq!(
            client_input(&Message::binary(vec![3u8])),
            Some(Input::Bytes(vec![3]))
        );
        assert_eq!(
            client_input(&Message::text(r#"{"resize": {"cols": 132, "rows": 43}}"#)),
            Some(Input::Resize(TerminalSize {
                cols: 132,
                rows: 43
            }))
        );
        assert_eq!(
            client_input(&Message::text(r#"{"resize": {"cols": 0, "rows": 9999}}"#)),
            Some(Input::Resize(TerminalSize {
                cols: 1,
                rows: 1000
            }))
        );
        // Not a well-formed resize: typed text like any other.
        assert_eq!(
            client_input(&Message::text(r#"{"resize": 1}"#)),
            Some(Input::Bytes(br#"{"resize": 1}"#.to_vec()))
        );
        assert_eq!(client_input(&Message::text("")), None);
        assert_eq!(client_input(&Message::ping(vec![1])), None);
        assert_eq!(client_input(&Message::pong(vec![1])), None);
    }

    /// Close reasons fit a close frame, whatever the text.
    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(close_reason("closed"), "closed");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(&cut));
        assert_eq!(duration_text(42), "42 s");
        assert_eq!(duration_text(185), "3 min 5 s");
        assert_eq!(duration_text(7260), "2 h 1 min");
        assert_eq!(
            close_detail(5, "the page closed"),
            "after 5 s: the page closed"
        );
        assert_eq!(
            close_detail(185, "the page closed"),
            "after 3 min 5 s (185 s): the page closed"
        );
    }
}
