//! The web layer: the HTTP server, the request type handlers receive, authentication
//! of each request, and the response helpers. Handlers live in `pages` (HTML forms),
//! `api` (JSON under `/api/v1`) and the fleet's own handler files; `router` wires
//! paths to them. Handlers are thin: parse, authorize with `policy::can`, call the
//! domain module, render.

pub mod alerts_api;
pub mod alerts_pages;
pub mod api;
pub mod assets;
pub mod business_api;
pub mod business_pages;
pub mod ca_api;
pub mod drift_api;
pub mod drift_pages;
pub mod fleet_api;
pub mod fleet_pages;
pub mod frames;
pub mod hetzner_api;
pub mod hetzner_pages;
pub mod inventory_api;
pub mod inventory_pages;
pub mod live_api;
pub mod multipart;
pub mod offsite_api;
pub mod offsite_pages;
pub mod ops_api;
pub mod ops_pages;
pub mod pages;
pub mod render;
pub mod router;
pub mod scripts_api;
pub mod scripts_pages;
pub mod server_page;
pub mod ssh_api;
pub mod ssh_pages;
pub mod terminal;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

use crate::app::App;
use crate::audit::Actor;
use crate::auth;
use crate::error::{AppError, AppResult, Kind};
use crate::policy::Subject;
use crate::users::User;

/// The largest request body accepted: scripts, playbooks and executions (a script or
/// playbook of up to 1 MiB as JSON, or a fan-out naming thousands of agents).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// The largest body of any other route (forms and JSON objects).
pub const MAX_FORM_BODY: usize = 256 * 1024;
/// The largest body of the login form.
pub const MAX_LOGIN_BODY: usize = 16 * 1024;

/// The body limit of a route (the README lists them).
pub fn body_limit(path: &str) -> usize {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource = match segments.as_slice() {
        ["api", "v1", resource, ..] => *resource,
        [resource, ..] => *resource,
        [] => "",
    };
    match resource {
        "login" => MAX_LOGIN_BODY,
        "scripts" | "executions" | "rollouts" | "servers" => MAX_BODY,
        _ => MAX_FORM_BODY,
    }
}

/// An HTTP response: warp's, over hyper 1. Its body is built from bytes
/// (`Resp::new(bytes.into())`), empty (`Resp::default()`), or streamed ([`streamed`]).
pub type Resp = warp::reply::Response;

/// A response whose body is sent as `chunks` arrive (chunked, unless the caller sets a
/// `content-length`), so it is never held whole in memory. The channel's bound is how
/// far the producer may run ahead of the client; an `Err` chunk cuts the response off
/// (the client sees an incomplete transfer, never a truncated "success").
pub fn streamed(mut chunks: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Resp {
    let stream = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
    warp::Reply::into_response(warp::reply::stream(stream))
}

/// One HTTP request as handlers see it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's address, after trusted proxies.
    pub client_ip: IpAddr,
    /// Whether the client reached us over TLS (directly or through a trusted proxy).
    pub secure: bool,
}

impl Req {
    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }

    /// The path's segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The body as a urlencoded form.
    pub fn form(&self) -> AppResult<Form> {
        // An upload form: its text fields (the CSRF token among them).
        if let Some(parts) = multipart::parts(self)? {
            return Ok(Form {
                pairs: multipart::text_fields(&parts),
            });
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&self.body)
            .map_err(|_| AppError::bad_request("the form could not be read"))?;
        Ok(Form { pairs })
    }

    /// The body as JSON of type `T`; unknown or malformed JSON is a 400 naming the problem.
    pub fn json<T: DeserializeOwned>(&self) -> AppResult<T> {
        if self.body.is_empty() {
            return Err(AppError::bad_request("a JSON body is required"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))
    }

    /// Whether this is a JSON API request.
    pub fn is_api(&self) -> bool {
        self.path.starts_with("/api/")
    }

    /// The actor for audit entries.
    pub fn actor(&self, user: &User) -> Actor {
        Actor {
            username: user.username.clone(),
            ip: Some(self.client_ip.to_string()),
        }
    }
}

/// A submitted form.
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), Some("on" | "true" | "1" | "yes"))
    }
    /// Every field in order, as sent.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// All fields, for re-rendering a form with what the user typed.
    pub fn values(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.pairs {
            if k != "csrf" && !k.contains("password") && !k.contains("token") {
                map.entry(k.clone())
                    .or_insert_with(|| serde_json::Value::String(v.clone()));
            }
        }
        map
    }
}

/// An authenticated caller.
pub struct Ctx {
    pub user: User,
    pub subject: Subject,
    /// The session's CSRF token (empty for bearer-token callers).
    pub csrf: String,
    /// Authenticated with an API bearer token.
    pub via_token: bool,
    /// The user's unread notifications, read with their session for requests that may
    /// render the page shell (its badge); `None` for the API and bearer-token callers.
    pub unread: Option<usize>,
}

impl Ctx {
    pub fn actor(&self, req: &Req) -> Actor {
        req.actor(&self.user)
    }
}

/// Authenticates a request: bearer token, else session cookie. For cookie-authenticated
/// state-changing API calls the `X-CSRF-Token` header must carry the session's token.
pub fn authenticate(app: &App, req: &Req) -> AppResult<Option<Ctx>> {
    if let Some(value) = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            AppError::new(
                Kind::Unauthenticated,
                "the Authorization header must be 'Bearer TOKEN'",
            )
        })?;
        let (user, subject) = auth::api_token_user(&app.store, token.trim(), chrono::Utc::now())?
            .ok_or_else(|| {
            AppError::new(Kind::Unauthenticated, "invalid or revoked API token")
        })?;
        return Ok(Some(Ctx {
            user,
            subject,
            csrf: String::new(),
            via_token: true,
            unread: None,
        }));
    }
    let Some(cookie) = req.cookie(auth::SESSION_COOKIE) else {
        return Ok(None);
    };
    // The page shell shows the unread badge; API responses have no shell.
    let badge = !req.path.starts_with("/api/");
    let Some(found) = auth::session_from_cookie(
        &app.store,
        cookie,
        app.session_policy(),
        chrono::Utc::now(),
        badge,
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Ctx {
        user: found.user,
        subject: found.subject,
        csrf: found.session.csrf,
        via_token: false,
        unread: found.unread,
    }))
}

/// Checks the CSRF token of a state-changing request made with a session cookie.
pub fn check_csrf(req: &Req, ctx: &Ctx, form: Option<&Form>) -> AppResult<()> {
    if ctx.via_token {
        return Ok(());
    }
    let sent = form
        .and_then(|f| f.get("csrf"))
        .or_else(|| {
            req.headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    if sent.is_empty() || !crate::secrets::constant_time_eq(sent, &ctx.csrf) {
        return Err(AppError::new(
            Kind::Forbidden,
            "the form is out of date or its CSRF token is missing; reload the page and try again",
        ));
    }
    Ok(())
}

// ---- lists ----

/// The default and the largest page of a list (CONTRACT.md "Lists").
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// Where a list page starts and how long it is: `?limit=N&cursor=C`.
#[derive(Debug, Clone)]
pub struct Paging {
    pub limit: usize,
    /// The decoded cursor (the id the previous page ended at).
    pub cursor: Option<String>,
}

impl Req {
    /// `?limit` and `?cursor`; a bad value is a 400 naming it.
    pub fn paging(&self) -> AppResult<Paging> {
        self.paging_with(DEFAULT_PAGE)
    }

    /// Like [`Req::paging`] with another default length (pages show fewer rows).
    pub fn paging_with(&self, default: usize) -> AppResult<Paging> {
        let limit = match self.query("limit").filter(|s| !s.is_empty()) {
            None => default,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    AppError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE}"
                    ))
                })?,
        };
        let cursor =
            match self.query("cursor").filter(|s| !s.is_empty()) {
                None => None,
                Some(text) => Some(decode_cursor(text).ok_or_else(|| {
                    AppError::bad_request("cursor is not one this server gave out")
                })?),
            };
        Ok(Paging { limit, cursor })
    }

    /// Refuses query parameters that are not among `known` (plus `limit` and
    /// `cursor`): an unknown filter is a 400, never silently ignored.
    pub fn only_filters(&self, known: &[&str]) -> AppResult<()> {
        let mut unknown: Vec<&str> = self
            .query
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k) && !matches!(*k, "limit" | "cursor"))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(name) => Err(AppError::bad_request(format!(
                "unknown filter {:?}; this list takes {}",
                name.chars().take(40).collect::<String>(),
                known.join(", ")
            ))),
        }
    }

    /// A time filter (`since`, `until`): RFC 3339, or a plain date (the page's date
    /// fields) meaning the start of that day (UTC) for `since` and its end for
    /// `until`. A bad value is a 400 naming it.
    pub fn time_filter(&self, name: &str) -> AppResult<Option<chrono::DateTime<chrono::Utc>>> {
        let Some(text) = self.query(name).map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(Some(t.with_timezone(&chrono::Utc)));
        }
        if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            let time = if name == "until" {
                chrono::NaiveTime::from_hms_milli_opt(23, 59, 59, 999)
            } else {
                Some(chrono::NaiveTime::MIN)
            };
            if let Some(time) = time {
                return Ok(Some(day.and_time(time).and_utc()));
            }
        }
        Err(AppError::bad_request(format!(
            "{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z or a date such as 2026-01-31"
        )))
    }

    /// A text filter: `None` when absent or empty.
    pub fn text_filter(&self, name: &str) -> Option<String> {
        self.query(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(200).collect())
    }

    /// The query's pairs but the cursor, in a stable order.
    fn query_without_cursor(&self) -> Vec<(&str, &str)> {
        let mut pairs: Vec<(&str, &str)> = self
            .query
            .iter()
            .filter(|(k, _)| k.as_str() != "cursor")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.sort();
        pairs
    }

    /// This list's first page with the same filters.
    pub fn first_page_url(&self) -> String {
        match serde_urlencoded::to_string(self.query_without_cursor()) {
            Ok(q) if !q.is_empty() => format!("{}?{q}", self.path),
            _ => self.path.clone(),
        }
    }

    /// The pager's part of a list page's context: `paged`, `first_url`, `next_url`.
    pub fn pager(&self, paging: &Paging, next: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "paged": paging.cursor.is_some(),
            "first_url": self.first_page_url(),
            "next_url": next.map(|n| self.next_page_url(n)).unwrap_or_default(),
        })
    }

    /// This request's URL with `cursor` set to the next page's.
    pub fn next_page_url(&self, next: &str) -> String {
        let mut pairs = self.query_without_cursor();
        let cursor = encode_cursor(next);
        pairs.push(("cursor", &cursor));
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{}?{query}", self.path)
    }
}

/// A 400 for a filter value that names nothing the caller can see.
pub fn unknown_filter(name: &str, value: &str) -> AppError {
    AppError::bad_request(format!(
        "{name}: no {name} {:?} that you can see",
        value.chars().take(80).collect::<String>()
    ))
}

/// `?project=` (an id or a name) as the id of a project whose servers the caller may
/// see; `None` when absent, a 400 when it names no such project.
pub fn project_filter(
    r: &impl crate::store::Read,
    req: &Req,
    ctx: &Ctx,
) -> AppResult<Option<String>> {
    let Some(project) = req.text_filter("project") else {
        return Ok(None);
    };
    let found = crate::projects::find(r, &project)?
        .filter(|p| {
            crate::policy::can(
                &ctx.subject,
                crate::policy::Action::ViewServers,
                Some(&p.id),
            )
        })
        .ok_or_else(|| unknown_filter("project", &project))?;
    Ok(Some(found.id))
}

/// A cursor as clients see it: opaque, URL-safe.
pub fn encode_cursor(position: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

fn decode_cursor(text: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .ok()?;
    let position = String::from_utf8(bytes).ok()?;
    (position.len() <= 200 && !position.chars().any(char::is_control)).then_some(position)
}

/// A JSON list response with `Link: <…>; rel="next"` while more remain.
pub fn json_page(req: &Req, items: &impl serde::Serialize, next: Option<&str>) -> Resp {
    let mut resp = json(StatusCode::OK, items);
    if let Some(next) = next {
        if let Ok(v) =
            HeaderValue::from_str(&format!("<{}>; rel=\"next\"", req.next_page_url(next)))
        {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
}

// ---- responses ----

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|_| b"{\"error\":\"serialization failed\"}".to_vec());
    let mut resp = Resp::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>, content_type: &'static str) -> Resp {
    let body: String = body.into();
    let mut resp = Resp::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp
}

/// Characters of a flash message kept; a longer one is cut with `…`.
pub const MAX_FLASH_CHARS: usize = 300;
/// Bytes of the flash cookie's encoded value at most (browsers keep 4 KiB per cookie).
pub const MAX_FLASH_COOKIE: usize = 2048;

/// A flash message's cookie value: `level|message` percent-encoded, the message cut to
/// [`MAX_FLASH_CHARS`] characters and then, for text that encodes long, until the
/// value fits [`MAX_FLASH_COOKIE`] bytes, so no input is ever echoed unbounded.
fn flash_cookie_value(level: &str, message: &str) -> String {
    let mut kept: String = message.chars().take(MAX_FLASH_CHARS).collect();
    let mut cut = kept.len() < message.len();
    loop {
        let shown = if cut {
            format!("{kept}…")
        } else {
            kept.clone()
        };
        let value = urlencode(&format!("{level}|{shown}"));
        if value.len() <= MAX_FLASH_COOKIE || kept.is_empty() {
            return value;
        }
        kept.pop();
        cut = true;
    }
}

/// A 303 redirect (after a form post), optionally carrying a flash message.
pub fn redirect(location: &str, flash: Option<(&str, &str)>) -> Resp {
    let mut resp = Resp::default();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert("location", v);
    }
    if let Some((level, message)) = flash {
        let value = format!(
            "dsv_flash={}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax",
            flash_cookie_value(level, message)
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append("set-cookie", v);
        }
    }
    resp
}

/// Percent-encodes a value for a cookie or query string.
pub fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)])
        .map(|s| s[2..].to_string())
        .unwrap_or_default()
}

/// An API error as JSON.
pub fn api_error(err: &AppError) -> Resp {
    json(err.status(), &err.to_json())
}

/// Builds the warp filter: every request goes through [`router::dispatch`], with the
/// body read up to [`MAX_BODY`]. WebSocket routes are matched first.
pub fn filter(
    app: App,
) -> impl Filter<Extract = (Resp,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static
{
    let ws_route = ws::filter(app.clone())
        .or(terminal::filter(app.clone()))
        .unify();
    let app_filter = warp::any().map(move || app.clone());
    let main = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(peer_addr())
        .and(warp::body::stream())
        .and(app_filter)
        .then(
            |method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             remote: Option<SocketAddr>,
             body,
             app: App| async move {
                let resp = handle(
                    app.clone(),
                    method,
                    path.as_str().to_string(),
                    query,
                    headers,
                    remote,
                    body,
                )
                .await;
                app.metrics.http_request(resp.status().as_u16());
                resp
            },
        )
        .recover(|_| async {
            Ok::<Resp, Infallible>(text(StatusCode::BAD_REQUEST, "bad request", "text/plain"))
        })
        .unify();
    ws_route.or(main).unify()
}

/// How much of a refused body is read and thrown away before answering 413.
const MAX_DISCARDED_BODY: usize = 16 * 1024 * 1024;

/// Reads and drops the rest of a body too large to accept, up to
/// [`MAX_DISCARDED_BODY`] in all or until `deadline`. Answering while the client is
/// still sending would close the socket with unread data, which resets the
/// connection: the client would see "connection reset" instead of the 413 that says
/// why. Past the cap the connection is closed anyway (hyper cannot reuse it).
async fn discard_rest(
    body: &mut (impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin),
    mut received: usize,
    deadline: tokio::time::Instant,
) {
    while received <= MAX_DISCARDED_BODY {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(buf))) => received += buf.remaining(),
            _ => return,
        }
    }
}

async fn handle(
    app: App,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    mut body: impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Resp {
    let mut bytes = Vec::new();
    let limit = body_limit(&path);
    let body_read = app.http_timeouts.body_read;
    let deadline = tokio::time::Instant::now() + body_read;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                let err = AppError::new(
                    Kind::BadRequest,
                    format!(
                        "the request body did not arrive within {} s",
                        body_read.as_secs()
                    ),
                );
                return json(StatusCode::REQUEST_TIMEOUT, &err.to_json());
            }
        };
        match chunk {
            Ok(mut buf) => {
                if bytes.len() + buf.remaining() > limit {
                    let received = bytes.len() + buf.remaining();
                    drop(bytes);
                    discard_rest(&mut body, received, deadline).await;
                    let err = AppError::new(
                        Kind::BadRequest,
                        format!("the request body is larger than {} KiB", limit / 1024),
                    );
                    return json(StatusCode::PAYLOAD_TOO_LARGE, &err.to_json());
                }
                while buf.has_remaining() {
                    let chunk = buf.chunk();
                    bytes.extend_from_slice(chunk);
                    let n = chunk.len();
                    buf.advance(n);
                }
            }
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                    "text/plain",
                )
            }
        }
    }
    let (client_ip, secure) = client_address(&app, remote, &headers);
    let req = Req {
        method,
        path: percent_decode(&path),
        query: serde_urlencoded::from_str(&query).unwrap_or_default(),
        headers,
        body: Bytes::from(bytes),
        client_ip,
        secure,
    };
    let mut resp = if req.method == Method::GET && req.path == "/healthz" {
        // Answered here, on the async side, from the store's health state: never
        // queued behind slow requests on the blocking pool.
        healthz(&app)
    } else {
        // Handlers read and write the store, which blocks: they run on the blocking
        // pool, so a slow request never holds up a tokio worker (and with it
        // `/healthz`, other pages or the fleet gateway).
        let pool = app.handlers.clone();
        match pool
            .run(Lane::of(&req.method), move || {
                tokio::runtime::Handle::current().block_on(router::dispatch(&app, &req))
            })
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!("a request handler failed: {e}");
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "internal error; the details are in the server log"}),
                )
            }
        }
    };
    let h = resp.headers_mut();
    h.entry("x-content-type-options")
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry("x-frame-options")
        .or_insert(HeaderValue::from_static("DENY"));
    h.entry("referrer-policy")
        .or_insert(HeaderValue::from_static("same-origin"));
    let html = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.entry("content-security-policy")
            .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    }
    resp
}

/// `GET /healthz`: `200 ok` while the store can be written, else 503 with why.
pub fn healthz(app: &App) -> Resp {
    match app.store.health() {
        Ok(()) => text(StatusCode::OK, "ok", "text/plain"),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unavailable: {reason}"),
            "text/plain",
        ),
    }
}

/// The Content-Security-Policy of every HTML page: scripts, styles, images and
/// connections from this origin only (images also as `data:` URLs, which Bootstrap's
/// stylesheet uses for its icons), no inline script, style or event handler, no
/// framing, no `<base>`, forms posting here only. Pages keep their scripts in
/// `web/static/*.js` and their dynamic styles are set through the DOM.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// Decodes `%XX` escapes of a path (a project named "Nova HR" is `/Nova%20HR`);
/// invalid escapes and non-UTF-8 results are kept as they were.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && path.is_char_boundary(i + 1)
            && path.is_char_boundary(i + 3)
        {
            if let Ok(byte) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

/// The request a WebSocket upgrade on `path` is checked as (authentication, the
/// client's address and scheme as [`client_address`] tells them).
fn upgrade_request(
    app: &App,
    path: String,
    query: &str,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
) -> Req {
    let (client_ip, secure) = client_address(app, remote, &headers);
    Req {
        method: Method::GET,
        path,
        query: serde_urlencoded::from_str(query).unwrap_or_default(),
        headers,
        body: Default::default(),
        client_ip,
        secure,
    }
}

/// The client address and scheme, believing `X-Forwarded-For` / `-Proto` only from
/// configured trusted proxies.
fn client_address(app: &App, remote: Option<SocketAddr>, headers: &HeaderMap) -> (IpAddr, bool) {
    let peer = remote
        .map(|r| r.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let trusted = |ip: IpAddr| {
        app.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(ip))
    };
    if !trusted(peer) {
        return (peer, false);
    }
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // The rightmost address not itself a trusted proxy is the client.
    let client = forwarded
        .iter()
        .rev()
        .find(|ip| !trusted(**ip))
        .copied()
        .unwrap_or(peer);
    (client, secure)
}

/// How long a client may take to send a request's headers (the first request's, and
/// each next one's on a kept-alive connection); past it hyper closes the connection, so
/// a slow client cannot hold one open forever.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a client may take to send a request's body; past it the answer is 408.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long shutdown waits for the requests in flight to be answered; past it the
/// connections still open are dropped and `run` returns.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The web server's time limits. `dynserv` runs with [`HttpTimeouts::default`] (the
/// constants above and in [`ws`]); the in-process tests shorten them through
/// `App::http_timeouts` so that what happens past each limit is tested in a second.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// [`HEADER_READ_TIMEOUT`].
    pub header_read: std::time::Duration,
    /// [`BODY_READ_TIMEOUT`].
    pub body_read: std::time::Duration,
    /// [`ws::PING_EVERY`].
    pub ping_every: std::time::Duration,
    /// [`ws::IDLE_CLOSE`].
    pub idle_close: std::time::Duration,
    /// [`SHUTDOWN_DRAIN`].
    pub shutdown_drain: std::time::Duration,
}

impl Default for HttpTimeouts {
    fn default() -> HttpTimeouts {
        HttpTimeouts {
            header_read: HEADER_READ_TIMEOUT,
            body_read: BODY_READ_TIMEOUT,
            ping_every: ws::PING_EVERY,
            idle_close: ws::IDLE_CLOSE,
            shutdown_drain: SHUTDOWN_DRAIN,
        }
    }
}

/// The client's address as the listener saw it, put into each request's extensions by
/// [`serve`] (warp's own address filter only works with warp's own server).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address of a request, from [`PeerAddr`].
pub fn peer_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|p| p.0))
}

/// Serves HTTP/1.1 on an already bound `listener` until `shutdown` resolves; returns its
/// address and the server future. Our own connection loop over hyper 1 (warp's server
/// sets no header read timeout and hides the peer address from other servers), each
/// connection with the header read timeout, [`PeerAddr`] and WebSocket upgrades. On
/// `shutdown` the listener closes, idle connections close, and the future resolves once
/// the requests in flight are answered; dropping the future (the caller's drain cap)
/// drops every connection still open. Must be called inside a tokio runtime.
pub fn serve(
    app: App,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)> {
    use anyhow::Context;
    listener
        .set_nonblocking(true)
        .context("making the HTTP listener non-blocking")?;
    let listener =
        tokio::net::TcpListener::from_std(listener).context("serving the HTTP listener")?;
    let bound = listener
        .local_addr()
        .context("reading the HTTP listener's address")?;
    let header_read = app.http_timeouts.header_read;
    let service = hyper_util::service::TowerToHyperService::new(warp::service(filter(app)));
    Ok((
        bound,
        accept_connections(listener, service, header_read, shutdown),
    ))
}

/// Accepts connections until `shutdown`, then lets the open ones finish gracefully.
/// The connections are tasks of a set owned by this future: dropping it ends them all.
async fn accept_connections<S>(
    listener: tokio::net::TcpListener,
    service: S,
    header_read: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<
            warp::http::Request<hyper::body::Incoming>,
            Response = Resp,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Finished connections are reaped as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small writes (WebSocket frames, short answers) go out at once.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        stream,
                        PeerAddr(peer),
                        service.clone(),
                        header_read,
                        closing_seen.clone(),
                    ));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Most likely out of file descriptors: wait for some to close
                    // instead of spinning (what hyper 0.14's listener did).
                    tracing::error!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection; once `closing` turns true it finishes the request in flight
/// (an idle connection closes at once) and ends.
async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    peer: PeerAddr,
    service: S,
    header_read: std::time::Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: hyper::service::Service<
            warp::http::Request<hyper::body::Incoming>,
            Response = Resp,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = hyper::service::service_fn(
        move |mut request: warp::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer);
            service.call(request)
        },
    );
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut closing_started = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = closing.wait_for(|closing| *closing), if !closing_started => {
                closing_started = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.0, "HTTP connection ended: {e}");
    }
}

/// Where request handlers run: the blocking threads of runtimes of their own, below
/// the async runtime's CPU priority, in two lanes. A burst of heavy pages then queues
/// here instead of taking every core from the tokio workers, so `/healthz`, WebSocket
/// streams and the fleet gateway stay responsive, and memory held by requests in
/// flight is bounded.
///
/// * [`Lane::Reads`] (GET and HEAD): at most two per core, at nice 10; their store
///   reads give way to the rest of the process's work in the database
///   ([`crate::store::defer_reads_here`]).
/// * [`Lane::Actions`] (every other method: a job started, a form saved, a sign-in):
///   at most one per core (two at least), at nice 5. An operator's action never waits
///   behind colleagues' page loads: with one queue, a fan-out's request waited behind
///   16 clients' pages for four times its own duration.
pub struct HandlerPool {
    reads: crate::runtime::OwnedRuntime,
    actions: crate::runtime::OwnedRuntime,
}

/// The queue a request waits in (see [`HandlerPool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Reads,
    Actions,
}

impl Lane {
    /// GET and HEAD read; every other method acts.
    pub fn of(method: &Method) -> Lane {
        if method == Method::GET || method == Method::HEAD {
            Lane::Reads
        } else {
            Lane::Actions
        }
    }

    /// How many handlers of the lane run at once on a machine with `cores` cores.
    pub fn threads(self, cores: usize) -> usize {
        match self {
            Lane::Reads => (cores * 2).max(4),
            Lane::Actions => cores.max(2),
        }
    }

    /// The lane's CPU priority (nice).
    pub fn nice(self) -> i32 {
        match self {
            Lane::Reads => 10,
            Lane::Actions => 5,
        }
    }
}

impl HandlerPool {
    /// Starts the pool's threads (lazily, as requests come).
    pub fn new() -> anyhow::Result<HandlerPool> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let lane = |lane: Lane, name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(lane.threads(cores))
                .thread_name(name)
                .on_thread_start(move || {
                    crate::store::allow_blocking_here();
                    if lane == Lane::Reads {
                        crate::store::defer_reads_here();
                    }
                    lower_thread_priority(lane.nice());
                })
                .enable_all()
                .build()
                .map(crate::runtime::OwnedRuntime::new)
        };
        Ok(HandlerPool {
            reads: lane(Lane::Reads, "dynserv-web")?,
            actions: lane(Lane::Actions, "dynserv-act")?,
        })
    }

    /// Runs a handler in its lane and waits for it.
    pub async fn run<R: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        let runtime = match lane {
            Lane::Reads => &self.reads,
            Lane::Actions => &self.actions,
        };
        runtime.handle().spawn_blocking(f).await
    }
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: per thread).
fn lower_thread_priority(nice: i32) {
    // SAFETY: setpriority on the calling thread's own id has no memory effects.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

#[cfg(test)]
mod pool_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::Lane;

    /// Handlers run below the async runtime's priority, each lane at its own, and no
    /// more of them at once than the lane's bound, however many requests arrive
    /// together; a full reads lane does not hold up an action.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlers_are_bounded_and_run_at_a_lower_priority() {
        let pool = Arc::new(super::HandlerPool::new().unwrap());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for lane in [Lane::Reads, Lane::Actions] {
            let nice = pool
                .run(lane, || unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                })
                .await
                .unwrap();
            assert_eq!(nice, lane.nice(), "{lane:?}");
            let bound = lane.threads(cores);
            let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let tasks: Vec<_> = (0..bound * 4)
                .map(|_| {
                    let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                    tokio::spawn(async move {
                        pool.run(lane, move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                        .unwrap()
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let most = most.load(Ordering::SeqCst);
            assert!(
                most <= bound,
                "{lane:?}: {most} handlers ran at once, bound {bound}"
            );
            assert!(most > 1, "{lane:?}: handlers ran one at a time");
        }
        assert_eq!(Lane::of(&warp::http::Method::GET), Lane::Reads);
        assert_eq!(Lane::of(&warp::http::Method::POST), Lane::Actions);
        // Reads queued past their bound: an action still starts at once (in one queue
        // it would wait a second).
        let reads: Vec<_> = (0..Lane::Reads.threads(cores) + 1)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(Lane::Reads, || {
                        std::thread::sleep(std::time::Duration::from_secs(1))
                    })
                    .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let asked = std::time::Instant::now();
        pool.run(Lane::Actions, || ()).await.unwrap();
        assert!(
            asked.elapsed() < std::time::Duration::from_millis(500),
            "an action waited {:?} behind page loads",
            asked.elapsed()
        );
        for read in reads {
            read.await.unwrap().unwrap();
        }
    }
}
