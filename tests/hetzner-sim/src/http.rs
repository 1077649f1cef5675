//! The simulator's HTTP side: `/v1/...` answers in the real API's JSON, `/_sim/...`
//! lets a test or a person steer it (add servers, inject faults, read the request log).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use serde_json::{json, Value};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::boot::Booter;
use crate::state::{
    self, action_json, matches_selector, pagination, pricing_json, server_json, server_type_json,
    ApiError, Fault, FaultKind, LoggedRequest, NewServer, RateHeaders, State, RATE_LIMIT_PER_HOUR,
};

/// Shared state of a running simulator.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub booter: Booter,
}

type Resp = warp::reply::Response;

fn reply(status: u16, body: &Value) -> Resp {
    let mut resp = Resp::new(body.to_string().into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

fn error(e: &ApiError) -> Resp {
    reply(e.status, &e.body())
}

/// Answers one request.
pub fn handle(
    shared: &Shared,
    method: Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Resp {
    if let Some(rest) = path.strip_prefix("/_sim/") {
        return control(shared, &method, rest, &body);
    }
    let params: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let now = Utc::now();
    let mut guard = match shared.state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let state = &mut *guard;
    state.advance(now);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let refused = || {
        error(&ApiError::new(
            429,
            "rate_limit_exceeded",
            "limit of 3600 requests per hour reached",
        ))
    };
    let (mut resp, rate) = if let Some(kind) = state.take_fault(method.as_str(), path) {
        let full = state
            .projects
            .get_mut(&token)
            .map(|p| p.rate.headers(now))
            .unwrap_or(RateHeaders {
                limit: RATE_LIMIT_PER_HOUR,
                remaining: RATE_LIMIT_PER_HOUR,
                reset: now.timestamp(),
            });
        match kind {
            FaultKind::RateLimit { reset_secs } => {
                // An empty bucket is full again after an hour, whatever the limit.
                let reset = now.timestamp() + i64::from(reset_secs.unwrap_or(3600));
                let rate = RateHeaders {
                    limit: full.limit,
                    remaining: 0,
                    reset,
                };
                (refused(), rate)
            }
            FaultKind::Error {
                status,
                code,
                message,
            } => (error(&ApiError::new(status, &code, message)), full),
            FaultKind::ErrorAfterProcessing {
                status,
                code,
                message,
            } => {
                if state.projects.contains_key(&token) {
                    let _ = api(shared, state, &token, &method, path, &params, &body);
                }
                (error(&ApiError::new(status, &code, message)), full)
            }
        }
    } else if !state.projects.contains_key(&token) {
        (
            error(&ApiError::new(
                401,
                "unauthorized",
                "unable to authenticate",
            )),
            RateHeaders {
                limit: RATE_LIMIT_PER_HOUR,
                remaining: RATE_LIMIT_PER_HOUR,
                reset: now.timestamp(),
            },
        )
    } else {
        let taken = state
            .projects
            .get_mut(&token)
            .is_some_and(|p| p.rate.take(now));
        let resp = if taken {
            match api(shared, state, &token, &method, path, &params, &body) {
                Ok((status, value)) => reply(status, &value),
                Err(e) => error(&e),
            }
        } else {
            refused()
        };
        let rate = state
            .projects
            .get_mut(&token)
            .map(|p| p.rate.headers(now))
            .unwrap_or(RateHeaders {
                limit: RATE_LIMIT_PER_HOUR,
                remaining: 0,
                reset: now.timestamp(),
            });
        (resp, rate)
    };
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(rate.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(rate.reset));
    state.log.push(LoggedRequest {
        at: now,
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        status: resp.status().as_u16(),
    });
    resp
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::new(400, "invalid_input", "invalid input in field 'id'"))
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("{what} not found"))
}

#[allow(clippy::too_many_arguments)]
fn api(
    shared: &Shared,
    state: &mut State,
    token: &str,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    body: &Bytes,
) -> Result<(u16, Value), ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let now = Utc::now();
    match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "servers"]) => {
            let page: usize = params
                .get("page")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(1);
            let per_page: usize = params
                .get("per_page")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(25)
                .min(50);
            let project = &state.projects[token];
            let selected: Vec<&state::SimServer> = project
                .servers
                .values()
                .filter(|s| params.get("name").is_none_or(|n| &s.name == n))
                .filter(|s| {
                    state.ignore_label_selector
                        || params
                            .get("label_selector")
                            .is_none_or(|sel| matches_selector(&s.labels, sel))
                })
                .collect();
            let servers: Vec<Value> = selected
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|s| server_json(s))
                .collect();
            Ok((
                200,
                json!({"servers": servers, "meta": pagination(page, per_page, selected.len())}),
            ))
        }
        (&Method::POST, ["v1", "servers"]) => {
            let input: Value = serde_json::from_slice(body)
                .map_err(|_| ApiError::new(400, "json_error", "invalid JSON in request body"))?;
            let field = |name: &str| input.get(name).and_then(Value::as_str).map(String::from);
            let name = field("name").ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_input",
                    "invalid input in field 'name': is missing",
                )
            })?;
            let server_type = field("server_type").ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_input",
                    "invalid input in field 'server_type': is missing",
                )
            })?;
            let image = field("image").ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_input",
                    "invalid input in field 'image': is missing",
                )
            })?;
            let labels = input
                .get("labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            let user_data = field("user_data");
            let id = state.add_server(
                token,
                &NewServer {
                    name,
                    server_type: Some(server_type),
                    location: field("location"),
                    image: Some(image),
                    labels,
                    status: Some("initializing".into()),
                    user_data: user_data.clone(),
                },
            )?;
            let create = state.start_action("create_server", id, Some("running"), now);
            let start = state.start_action("start_server", id, Some("running"), now);
            let server = &state.projects[token].servers[&id];
            let body = json!({
                "server": server_json(server),
                "action": action_json(&state.actions[&create], now),
                "next_actions": [action_json(&state.actions[&start], now)],
                "root_password": null,
            });
            if let Some(user_data) = user_data {
                shared
                    .booter
                    .boot(id, server.name.clone(), user_data, state.action_duration);
            }
            Ok((201, body))
        }
        (&Method::GET, ["v1", "servers", id]) => {
            let id = parse_id(id)?;
            let server = state.projects[token]
                .servers
                .get(&id)
                .ok_or_else(|| not_found("server"))?;
            Ok((200, json!({"server": server_json(server)})))
        }
        (&Method::DELETE, ["v1", "servers", id]) => {
            let id = parse_id(id)?;
            let project = state
                .projects
                .get_mut(token)
                .ok_or_else(|| not_found("server"))?;
            project
                .servers
                .remove(&id)
                .ok_or_else(|| not_found("server"))?;
            let action = state.start_action("delete_server", id, None, now);
            Ok((
                200,
                json!({"action": action_json(&state.actions[&action], now)}),
            ))
        }
        (&Method::POST, ["v1", "servers", id, "actions", action]) => {
            let id = parse_id(id)?;
            let (command, target) = match *action {
                "poweron" => ("start_server", "running"),
                "poweroff" => ("stop_server", "off"),
                "shutdown" => ("shutdown_server", "off"),
                "reboot" => ("reboot_server", "running"),
                "reset" => ("reset_server", "running"),
                _ => return Err(not_found("action")),
            };
            let server = state
                .server_mut(token, id)
                .ok_or_else(|| not_found("server"))?;
            if server.locked {
                return Err(ApiError::new(
                    423,
                    "locked",
                    "server is locked: another action is running",
                ));
            }
            let action_id = state.start_action(command, id, Some(target), now);
            Ok((
                201,
                json!({"action": action_json(&state.actions[&action_id], now)}),
            ))
        }
        (&Method::GET, ["v1", "actions", id]) => {
            let id = parse_id(id)?;
            let owned = |server_id: i64| state.projects[token].servers.contains_key(&server_id);
            let action = state
                .actions
                .get(&id)
                .filter(|a| owned(a.server_id) || a.command == "delete_server")
                .ok_or_else(|| not_found("action"))?;
            Ok((200, json!({"action": action_json(action, now)})))
        }
        (&Method::GET, ["v1", "server_types"]) => {
            let types: Vec<Value> = state::SERVER_TYPES
                .iter()
                .filter(|t| params.get("name").is_none_or(|n| t.name == n))
                .map(server_type_json)
                .collect();
            let total = types.len();
            Ok((
                200,
                json!({"server_types": types, "meta": pagination(1, 50, total)}),
            ))
        }
        (&Method::GET, ["v1", "pricing"]) => Ok((200, pricing_json())),
        _ => Err(not_found("endpoint")),
    }
}

/// `/_sim/...`: steering for tests and people.
fn control(shared: &Shared, method: &Method, rest: &str, body: &Bytes) -> Resp {
    let mut state = match shared.state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result: Result<Value, ApiError> = (|| match (method, segments.as_slice()) {
        (&Method::POST, ["projects", token]) => {
            state.projects.entry(token.to_string()).or_default();
            Ok(json!({"token": token}))
        }
        (&Method::POST, ["projects", token, "rate_limit"]) => {
            #[derive(serde::Deserialize)]
            struct Input {
                limit: Option<u32>,
                remaining: u32,
            }
            let input: Input = serde_json::from_slice(body)
                .map_err(|e| ApiError::new(400, "json_error", e.to_string()))?;
            let project = state.projects.entry(token.to_string()).or_default();
            project.rate.set(
                input.limit.unwrap_or(RATE_LIMIT_PER_HOUR),
                input.remaining,
                Utc::now(),
            );
            Ok(json!({"token": token, "remaining": input.remaining}))
        }
        (&Method::POST, ["projects", token, "servers"]) => {
            let input: NewServer = serde_json::from_slice(body)
                .map_err(|e| ApiError::new(400, "json_error", e.to_string()))?;
            let id = state.add_server(token, &input)?;
            Ok(json!({"id": id}))
        }
        (&Method::DELETE, ["servers", id]) => {
            let id = parse_id(id)?;
            for p in state.projects.values_mut() {
                p.servers.remove(&id);
            }
            Ok(json!({"deleted": id}))
        }
        (&Method::POST, ["servers", id, "lock"]) => {
            let id = parse_id(id)?;
            for p in state.projects.values_mut() {
                if let Some(s) = p.servers.get_mut(&id) {
                    s.locked = !s.locked;
                }
            }
            Ok(json!({"toggled": id}))
        }
        (&Method::POST, ["faults"]) => {
            let fault: Fault = serde_json::from_slice(body)
                .map_err(|e| ApiError::new(400, "json_error", e.to_string()))?;
            state.faults.push_back(fault);
            Ok(json!({"queued": state.faults.len()}))
        }
        (&Method::GET, ["requests"]) => Ok(serde_json::to_value(&state.log).unwrap_or_default()),
        (&Method::GET, ["servers"]) => {
            let all: Vec<&state::SimServer> = state
                .projects
                .values()
                .flat_map(|p| p.servers.values())
                .collect();
            Ok(serde_json::to_value(all).unwrap_or_default())
        }
        _ => Err(not_found("control endpoint")),
    })();
    match result {
        Ok(v) => reply(200, &v),
        Err(e) => error(&e),
    }
}
