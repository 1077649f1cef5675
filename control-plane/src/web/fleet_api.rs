//! JSON API of the fleet: agents, enrollment tokens and executions (names in
//! CONTRACT.md). Thin: parse, authorize with `policy::can`, call `agents` /
//! `executions`, tell the fleet, answer JSON.

use serde::Deserialize;
use serde_json::json;
use warp::http::{HeaderValue, Response, StatusCode};
use warp::hyper::Body;

use super::{json as reply, Ctx, Req, Resp};
use crate::agents::{self, Agent, AgentView};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::executions::{self, CancelOutcome, Execution, ExecutionView, NewExecution};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::store::Read;

/// Largest number of log chunks one `log` answer holds.
const MAX_LOG_CHUNKS: usize = 200_000;

/// The view of an agent with its live state.
pub fn agent_view(app: &App, r: &impl Read, agent: &Agent) -> anyhow::Result<AgentView> {
    let project = r
        .get::<Project>(&agent.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    Ok(agents::view(agent, &project, app.fleet.live(&agent.id)))
}

/// The view of an execution with its agent's name.
pub fn execution_view(r: &impl Read, execution: &Execution) -> anyhow::Result<ExecutionView> {
    let name = r.get::<Agent>(&execution.agent_id)?.map(|a| a.name);
    Ok(ExecutionView::new(execution, name))
}

/// The agent part of a server's JSON, as CONTRACT.md has it: `{"id", "connected",
/// "last_seen"}` (plus `name`, `version`, `revoked`), or null without an agent. For
/// `api::server_json` and the server pages.
pub fn server_agent_json(
    app: &App,
    r: &impl Read,
    server: &crate::servers::Server,
) -> anyhow::Result<serde_json::Value> {
    let Some(agent_id) = &server.agent_id else {
        return Ok(serde_json::Value::Null);
    };
    let agent = r.get::<Agent>(agent_id)?;
    let live = app.fleet.live(agent_id);
    let last_seen = live
        .as_ref()
        .map(|(seen, _)| *seen)
        .or(agent.as_ref().and_then(|a| a.last_seen));
    Ok(json!({
        "id": agent_id,
        "name": agent.as_ref().map(|a| a.name.clone()),
        "connected": live.is_some(),
        "last_seen": last_seen,
        "version": agent.as_ref().map(|a| a.facts.agent_version.clone()),
        "revoked": agent.as_ref().is_some_and(|a| a.revoked_at.is_some()),
    }))
}

/// `GET /api/v1/agents`.
pub fn agents_list(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let views = app.store.read(|r| {
        agents::visible(r, &ctx.subject)?
            .iter()
            .map(|a| agent_view(app, r, a))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(reply(StatusCode::OK, &views))
}

/// `GET /api/v1/agents/{id}`.
pub fn agent(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let view = app.store.read(|r| {
        let agent = agents::find_visible(r, &ctx.subject, id)?;
        agent_view(app, r, &agent)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `POST /api/v1/agents/{id}/revoke`.
pub fn revoke_agent(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let agent = app
        .store
        .write(|w| Ok(agents::revoke(w, &ctx.actor(req), &ctx.subject, id)?))?;
    app.fleet.disconnect(&agent.id);
    let view = app.store.read(|r| agent_view(app, r, &agent))?;
    Ok(reply(StatusCode::OK, &view))
}

/// The body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub project: Option<String>,
    pub uses: Option<u32>,
    /// A duration like `30m`, `24h`, `7d`.
    pub ttl: Option<String>,
}

/// Creates an enrollment token for a project; shared by the API and the page.
pub fn create_token(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    input: &NewToken,
) -> AppResult<serde_json::Value> {
    let key = input
        .project
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AppError::invalid("project", "project is required"))?;
    let ttl = match input
        .ttl
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(text) => agents::parse_ttl(text).map_err(|e| AppError::invalid("ttl", e))?,
        None => chrono::Duration::hours(agents::DEFAULT_TOKEN_TTL_HOURS),
    };
    let (record, secret, project) = app.store.write(|w| {
        let project = projects::find(w, key)?
            .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
            .ok_or_else(|| {
                AppError::invalid(
                    "project",
                    format!("no project {:?}", crate::validate::echo(key)),
                )
            })?;
        if !policy::can(&ctx.subject, Action::ManageAgents, Some(&project.id)) {
            return Err(AppError::forbidden().into());
        }
        let (record, secret) = agents::create_token(
            w,
            &ctx.actor(req),
            &project,
            input.uses.unwrap_or(1),
            ttl,
            chrono::Utc::now(),
        )?;
        Ok((record, secret, project))
    })?;
    let token = app.fleet.token_text(&secret);
    let server = app.config.public_quic.clone();
    Ok(json!({
        "id": record.id,
        "token": token,
        "project": project.name,
        "project_id": project.id,
        "uses": record.max_uses,
        "expires_at": record.expires_at,
        "server": server,
        "command": format!("dynserv-agent enroll --server {server} --token {token} && dynserv-agent run"),
    }))
}

/// `POST /api/v1/enrollment-tokens`.
pub fn create_token_api(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let input: NewToken = req.json()?;
    let created = create_token(app, req, ctx, &input)?;
    Ok(reply(StatusCode::CREATED, &created))
}

/// Creates and dispatches an execution; shared by the API and the page.
pub fn start_execution(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    input: &NewExecution,
) -> AppResult<Execution> {
    let execution = app
        .store
        .write(|w| Ok(executions::create(w, &ctx.actor(req), &ctx.subject, input)?))?;
    app.fleet.dispatch(&execution);
    Ok(execution)
}

/// Most agents one fan-out request may name.
const MAX_FAN_OUT: usize = 20_000;

/// `POST /api/v1/executions`. With `"agents": [...]` instead of `"agent"`, the same
/// job is created for every agent in one transaction and the answer is
/// `{"executions": [...]}`.
pub fn create_execution(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let mut input: NewExecution = req.json()?;
    // The job without its target list, so that the per-target copies below do not copy
    // the whole list once per agent (quadratic in the fan-out).
    if let Some(targets) = input.agents.take() {
        if input.agent.is_some() {
            return Err(AppError::invalid(
                "agents",
                "give either agent or agents, not both",
            ));
        }
        if targets.is_empty() || targets.len() > MAX_FAN_OUT {
            return Err(AppError::invalid(
                "agents",
                format!("agents must name 1 to {MAX_FAN_OUT} agents"),
            ));
        }
        let actor = ctx.actor(req);
        // A large fan-out is one long transaction: let the runtime move the fleet's
        // connections to other workers meanwhile.
        let create_all = || {
            app.store.write(|w| {
                let mut created = Vec::with_capacity(targets.len());
                let mut one = input.clone();
                for target in &targets {
                    one.agent = Some(target.clone());
                    created.push(executions::create(w, &actor, &ctx.subject, &one)?);
                }
                Ok(created)
            })
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let created = if multi_thread {
            tokio::task::block_in_place(create_all)?
        } else {
            create_all()?
        };
        for execution in &created {
            app.fleet.dispatch(execution);
        }
        let views: Vec<_> = created
            .iter()
            .map(|e| json!({"id": e.id, "agent": e.agent_id, "status": e.status.as_str()}))
            .collect();
        return Ok(reply(StatusCode::CREATED, &json!({"executions": views})));
    }
    let execution = start_execution(app, req, ctx, &input)?;
    let view = app.store.read(|r| execution_view(r, &execution))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/executions[?agent=ID][&server=ID]`: the newest executions the caller
/// may see, newest first.
pub fn executions_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let views = app.store.read(|r| {
        let mut list: Vec<Execution> = match (req.query("agent"), req.query("server")) {
            (Some(agent), _) => {
                let agent = agents::find_visible(r, &ctx.subject, agent)?;
                executions::recent_of_agent(r, &agent.id, 100)?
            }
            (None, Some(server)) => {
                let server = crate::servers::get_visible(r, &ctx.subject, server)?;
                match &server.agent_id {
                    Some(agent_id) => executions::recent_of_agent(r, agent_id, 100)?,
                    None => Vec::new(),
                }
            }
            (None, None) => r.list::<Execution>()?,
        };
        list.retain(|e| policy::can(&ctx.subject, Action::ViewServers, Some(&e.project_id)));
        list.sort_by(|a, b| b.id.cmp(&a.id));
        list.truncate(100);
        list.iter()
            .map(|e| execution_view(r, e))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(reply(StatusCode::OK, &views))
}

/// `GET /api/v1/executions/{id}`.
pub fn execution(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let view = app.store.read(|r| {
        let e = executions::get_visible(r, &ctx.subject, id)?;
        execution_view(r, &e)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `GET /api/v1/executions/{id}/log?from_seq=N`: JSON lines `{"seq","stream","data"}`.
pub fn execution_log(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let from_seq = parse_from_seq(req)?;
    let chunks = app.store.read(|r| {
        executions::get_visible(r, &ctx.subject, id)?;
        executions::log(r, id, from_seq, MAX_LOG_CHUNKS)
    })?;
    let mut body = String::new();
    for chunk in &chunks {
        body.push_str(&serde_json::to_string(chunk).unwrap_or_default());
        body.push('\n');
    }
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// `?from_seq=N`, default 0.
pub fn parse_from_seq(req: &Req) -> AppResult<u64> {
    match req.query("from_seq").filter(|s| !s.is_empty()) {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| AppError::bad_request("from_seq must be a non-negative integer")),
    }
}

/// Cancels an execution; shared by the API and the page.
pub fn cancel(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Execution> {
    let (execution, outcome) = app.store.write(|w| {
        Ok(executions::request_cancel(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
        )?)
    })?;
    match outcome {
        CancelOutcome::CancelledQueued => {
            app.fleet.publish_end(&execution.id);
            // A copy may already be on its way to the agent.
            app.fleet.cancel(&execution);
        }
        CancelOutcome::TellAgent => app.fleet.cancel(&execution),
    }
    Ok(execution)
}

/// `POST /api/v1/executions/{id}/cancel` → 202.
pub fn cancel_execution(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let execution = cancel(app, req, ctx, id)?;
    let view = app.store.read(|r| execution_view(r, &execution))?;
    Ok(reply(StatusCode::ACCEPTED, &view))
}
