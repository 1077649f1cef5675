//! The web layer: the HTTP server, the request type handlers receive, authentication
//! of each request, and the response helpers. Handlers live in `pages` (HTML forms),
//! `api` (JSON under `/api/v1`) and the fleet's own handler files; `router` wires
//! paths to them. Handlers are thin: parse, authorize with `policy::can`, call the
//! domain module, render.

pub mod api;
pub mod assets;
pub mod business_api;
pub mod business_pages;
pub mod fleet_api;
pub mod fleet_pages;
pub mod hetzner_api;
pub mod hetzner_pages;
pub mod ops_api;
pub mod ops_pages;
pub mod pages;
pub mod render;
pub mod router;
pub mod scripts_api;
pub mod scripts_pages;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use warp::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use warp::hyper::Body;
use warp::Filter;

use crate::app::App;
use crate::audit::Actor;
use crate::auth;
use crate::error::{AppError, AppResult, Kind};
use crate::policy::Subject;
use crate::users::User;

/// The largest request body accepted (forms, JSON, playbooks).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// An HTTP response.
pub type Resp = Response<Body>;

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
        let user = app
            .store
            .read(|r| auth::user_from_api_token(r, token.trim()))?
            .ok_or_else(|| AppError::new(Kind::Unauthenticated, "invalid or revoked API token"))?;
        let subject = app.store.read(|r| crate::users::subject(r, &user))?;
        return Ok(Some(Ctx {
            user,
            subject,
            csrf: String::new(),
            via_token: true,
        }));
    }
    let Some(cookie) = req.cookie(auth::SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some((session, user)) =
        auth::session_from_cookie(&app.store, cookie, app.session_policy(), chrono::Utc::now())?
    else {
        return Ok(None);
    };
    let subject = app.store.read(|r| crate::users::subject(r, &user))?;
    Ok(Some(Ctx {
        user,
        subject,
        csrf: session.csrf,
        via_token: false,
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

// ---- responses ----

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|_| b"{\"error\":\"serialization failed\"}".to_vec());
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>, content_type: &'static str) -> Resp {
    let mut resp = Response::new(Body::from(body.into()));
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
    let mut resp = Response::new(Body::empty());
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
    let ws_route = ws::filter(app.clone());
    let app_filter = warp::any().map(move || app.clone());
    let main = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
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
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(mut buf) => {
                if bytes.len() + buf.remaining() > MAX_BODY {
                    let err = AppError::new(
                        Kind::BadRequest,
                        format!(
                            "the request body is larger than {} MiB",
                            MAX_BODY / 1024 / 1024
                        ),
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
    let mut resp = router::dispatch(&app, &req).await;
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

/// Serves HTTP on `addr` until `shutdown` resolves; returns the bound address and the
/// server future.
pub fn bind(
    app: App,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)> {
    let routes = filter(app);
    warp::serve(routes)
        .try_bind_with_graceful_shutdown(addr, shutdown)
        .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))
}
