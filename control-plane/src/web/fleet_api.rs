//! JSON API of the fleet: agents, enrollment tokens and executions (names in
//! CONTRACT.md). Thin: parse, authorize with `policy::can`, call `agents` /
//! `executions`, tell the fleet, answer JSON.

use serde::Deserialize;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode};

use super::{json as reply, Ctx, Req, Resp};
use crate::agent_upgrades;
use crate::agents::{self, Agent, AgentView};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::executions::{self, CancelOutcome, Execution, ExecutionView, NewExecution};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::store::Read;

/// Refuses a caller who has no part in the fleet (a sales agent, whatever project
/// grants they hold) before anything is looked up. Every fleet and operations endpoint
/// and page starts here, so such a caller hears 403, never a list, a 404 or a 409.
pub fn require_fleet(ctx: &Ctx) -> AppResult<()> {
    if policy::can(&ctx.subject, Action::UseFleet, None) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// The view of an agent with its live state.
pub fn agent_view(app: &App, r: &impl Read, agent: &Agent) -> anyhow::Result<AgentView> {
    let project = r
        .get::<Project>(&agent.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    Ok(agents::view(agent, &project, app.fleet.live(r, &agent.id)))
}

/// The views of a page of agents: their projects and where they are connected are
/// read together (one query each on PostgreSQL instead of a round trip per row).
pub fn agent_views(app: &App, r: &impl Read, agents: &[Agent]) -> anyhow::Result<Vec<AgentView>> {
    prefetch_agent_rows(app, r, agents)?;
    agents.iter().map(|a| agent_view(app, r, a)).collect()
}

/// Reads ahead what [`agent_view`] asks about each of `agents`.
pub fn prefetch_agent_rows(app: &App, r: &impl Read, agents: &[Agent]) -> anyhow::Result<()> {
    let mut project_ids: Vec<String> = agents.iter().map(|a| a.project_id.clone()).collect();
    project_ids.sort_unstable();
    project_ids.dedup();
    r.prefetch::<Project>(&project_ids)?;
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    app.fleet.prefetch_live(r, &ids)
}

/// The view of an execution with its agent's name.
pub fn execution_view(r: &impl Read, execution: &Execution) -> anyhow::Result<ExecutionView> {
    let name = r
        .get_view::<agents::AgentBadge>(&execution.agent_id)?
        .map(|a| a.name);
    Ok(ExecutionView::new(execution, name))
}

/// The views of a list of executions: their agents are read together (one query on
/// PostgreSQL instead of one round trip per row).
pub fn execution_views(
    r: &impl Read,
    executions: &[Execution],
) -> anyhow::Result<Vec<ExecutionView>> {
    let mut agent_ids: Vec<String> = executions.iter().map(|e| e.agent_id.clone()).collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    r.prefetch::<Agent>(&agent_ids)?;
    executions.iter().map(|e| execution_view(r, e)).collect()
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
    let agent = r.get_view::<agents::AgentBadge>(agent_id)?;
    let live = app.fleet.live(r, agent_id);
    let last_seen = live
        .as_ref()
        .map(|(seen, _)| *seen)
        .or(agent.as_ref().and_then(|a| a.last_seen));
    Ok(json!({
        "id": agent_id,
        "name": agent.as_ref().map(|a| a.name.as_str()),
        "connected": live.is_some(),
        "last_seen": last_seen,
        "version": agent.as_ref().map(|a| a.facts.agent_version.as_str()),
        "revoked": agent.as_ref().is_some_and(|a| a.revoked_at.is_some()),
    }))
}

/// The filters of the agent list (API and page).
pub const AGENT_FILTERS: [&str; 2] = ["project", "q"];

/// Reads the agent filters of a request: `project` (id or name) and `q` (text in the
/// name or host name). An unknown filter or project is a 400 naming it.
pub fn agent_filter(r: &impl Read, req: &Req, ctx: &Ctx) -> AppResult<agents::Filter> {
    req.only_filters(&AGENT_FILTERS)?;
    let mut filter = agents::Filter {
        text: req.text_filter("q"),
        ..Default::default()
    };
    filter.project_id = super::project_filter(r, req, ctx)?;
    Ok(filter)
}

/// `GET /api/v1/agents[?project=…][&q=…]`: one page of the agents the caller may see,
/// by name.
pub fn agents_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let paging = req.paging()?;
    let (views, next) = app.store.read(|r| {
        let filter = agent_filter(r, req, ctx)?;
        let page = agents::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        Ok((agent_views(app, r, &page.items)?, page.next))
    })?;
    Ok(super::json_page(req, &views, next.as_deref()))
}

/// `GET /api/v1/agent-versions[?project=…]`: how many of the agents the caller sees
/// run the control plane's own version (`{"version", "agents", "current", "outdated",
/// "text": "37 of 40 on 0.3.0"}`).
pub fn agent_versions(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    req.only_filters(&["project"])?;
    let summary = app.store.read(|r| {
        let project = super::project_filter(r, req, ctx)?;
        agents::version_summary(r, &ctx.subject, project.as_deref())
    })?;
    Ok(reply(StatusCode::OK, &summary))
}

/// `GET /api/v1/agents/{id}`.
pub fn agent(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let agent = agents::find_visible(r, &ctx.subject, id)?;
        agent_view(app, r, &agent)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `POST /api/v1/agents/{id}/revoke`.
pub fn revoke_agent(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let agent = app
        .store
        .write(|w| Ok(agents::revoke(w, &ctx.actor(req), &ctx.subject, id)?))?;
    app.fleet.disconnect(&agent.id);
    let view = app.store.read(|r| agent_view(app, r, &agent))?;
    Ok(reply(StatusCode::OK, &view))
}

/// Accepts the machine of an agent's latest refused copy as the one holding its
/// identity; shared by the API and the page. The previous machine's connection is
/// closed (it is refused from its next hello on) and viewers of the jobs it was
/// running learn that they ended.
pub fn accept_host(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<agents::HostAccepted> {
    let accepted = app.store.write(|w| {
        Ok(agents::accept_host(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            chrono::Utc::now(),
        )?)
    })?;
    if let Some(host_id) = &accepted.agent.host_id {
        app.fleet.disconnect_other_host(&accepted.agent.id, host_id);
    }
    for execution_id in &accepted.failed_executions {
        app.fleet
            .publish_end(execution_id, &accepted.agent.project_id, "failed");
    }
    Ok(accepted)
}

/// `POST /api/v1/agents/{id}/accept-host` → the agent.
pub fn accept_host_api(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let accepted = accept_host(app, req, ctx, id)?;
    let view = app.store.read(|r| agent_view(app, r, &accepted.agent))?;
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
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::ManageAgents, None) {
        return Err(AppError::forbidden());
    }
    let key = input
        .project
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AppError::invalid("project", "project is required"))?;
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
        // The lifetime is judged once the caller's right to the project is.
        let ttl = match input
            .ttl
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(text) => agents::parse_ttl(text).map_err(|e| AppError::invalid("ttl", e))?,
            None => chrono::Duration::hours(agents::DEFAULT_TOKEN_TTL_HOURS),
        };
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
    require_fleet(ctx)?;
    let input: NewToken = req.json()?;
    let created = create_token(app, req, ctx, &input)?;
    Ok(reply(StatusCode::CREATED, &created))
}

/// `GET /api/v1/enrollment-tokens`: the tokens that could still enroll an agent, of
/// the projects where the caller manages agents, newest first.
pub fn enrollment_tokens_list(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::ManageAgents, None) {
        return Err(AppError::forbidden());
    }
    let list = app.store.read(|r| enrollment_token_views(r, ctx))?;
    Ok(reply(StatusCode::OK, &list))
}

/// The views of the caller's live enrollment tokens; shared by the API and the page.
pub fn enrollment_token_views(r: &impl Read, ctx: &Ctx) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut views = Vec::new();
    for token in agents::live_tokens(r, &ctx.subject, chrono::Utc::now())? {
        let project = r
            .get::<Project>(&token.project_id)?
            .map(|p| p.name)
            .unwrap_or_default();
        views.push(agents::token_view(&token, &project));
    }
    Ok(views)
}

/// Revokes an enrollment token; shared by the API and the page.
pub fn revoke_enrollment_token(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
) -> AppResult<serde_json::Value> {
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::ManageAgents, None) {
        return Err(AppError::forbidden());
    }
    let actor = ctx.actor(req);
    Ok(app.store.write(|w| {
        let token = agents::revoke_token(w, &actor, &ctx.subject, id, chrono::Utc::now())?;
        let project = w
            .get::<Project>(&token.project_id)?
            .map(|p| p.name)
            .unwrap_or_default();
        Ok(agents::token_view(&token, &project))
    })?)
}

/// `DELETE /api/v1/enrollment-tokens/{id}`.
pub fn revoke_enrollment_token_api(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let view = revoke_enrollment_token(app, req, ctx, id)?;
    Ok(reply(StatusCode::OK, &view))
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
    require_fleet(ctx)?;
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
                // The agents named by id, read in one query on PostgreSQL (and kept
                // by the transaction for `create`) with the counts creating changes,
                // their names' terms in another.
                w.read_ahead(&executions::creation_ahead(
                    crate::store::Ahead::default().records::<crate::agents::Agent>(&targets),
                ))?;
                let found: Vec<crate::agents::Agent> = w
                    .get_many::<crate::agents::Agent>(&targets)?
                    .into_iter()
                    .flatten()
                    .collect();
                // A playbook names its host after the agent's server: read them together.
                if input.kind.as_deref() == Some("playbook") {
                    let servers: Vec<String> =
                        found.iter().filter_map(|a| a.server_id.clone()).collect();
                    w.prefetch::<crate::servers::Server>(&servers)?;
                }
                // A playbook's inventory is built once per project for the whole run.
                let project_of: std::collections::HashMap<String, String> = found
                    .iter()
                    .map(|a| (a.id.clone(), a.project_id.clone()))
                    .collect();
                let mut inventories: std::collections::HashMap<String, String> = Default::default();
                let names: Vec<String> = found.into_iter().map(|a| a.name).collect();
                executions::prefetch_terms(w, &names)?;
                let mut created = Vec::with_capacity(targets.len());
                let mut one = input.clone();
                for target in &targets {
                    one.agent = Some(target.clone());
                    if let Some(project) = project_of.get(target) {
                        one.inventory = inventories
                            .get(project)
                            .map(|id| (project.clone(), id.clone()));
                    }
                    let execution = executions::create(w, &actor, &ctx.subject, &one)?;
                    if let executions::Work::Playbook {
                        inventory_id: Some(id),
                        ..
                    } = &execution.work
                    {
                        inventories.insert(execution.project_id.clone(), id.clone());
                        one.inventory = Some((execution.project_id.clone(), id.clone()));
                    }
                    created.push(execution);
                }
                // The jobs as sent, read here where their secrets were just written.
                let specs = crate::scripts::job_specs_with_secrets(w, &created)?;
                Ok((created, specs))
            })
        };
        // Handlers run on the blocking pool, where one long transaction is fine.
        let (created, specs) = create_all()?;
        let views: Vec<_> = created
            .iter()
            .map(|e| json!({"id": e.id, "agent": e.agent_id, "status": e.status.as_str()}))
            .collect();
        app.fleet.dispatch_many(created, specs);
        return Ok(reply(StatusCode::CREATED, &json!({"executions": views})));
    }
    let execution = start_execution(app, req, ctx, &input)?;
    let view = app.store.read(|r| execution_view(r, &execution))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// The filters `GET /api/v1/executions` and the executions page take.
pub const EXECUTION_FILTERS: [&str; 11] = [
    "status",
    "server",
    "agent",
    "project",
    "kind",
    "script",
    "rollout",
    "started_by",
    "since",
    "until",
    "q",
];

/// Reads the executions filters of a request. A value naming nothing the caller can
/// see (an unknown status, agent, project…) is a 400 naming the filter.
pub fn execution_filter(r: &impl Read, req: &Req, ctx: &Ctx) -> AppResult<executions::Filter> {
    req.only_filters(&EXECUTION_FILTERS)?;
    let given = |name: &str| req.text_filter(name);
    let unknown = super::unknown_filter;
    let mut filter = executions::Filter {
        since: req.time_filter("since")?,
        until: req.time_filter("until")?,
        text: given("q"),
        started_by: given("started_by"),
        ..Default::default()
    };
    if let Some(status) = given("status") {
        filter.status = Some(executions::Status::parse(&status).ok_or_else(|| {
            AppError::bad_request(format!(
                "status must be one of queued, running, succeeded, failed, cancelled, timed_out (not {:?})",
                status.chars().take(40).collect::<String>()
            ))
        })?);
    }
    if let Some(kind) = given("kind") {
        filter.kind = Some(
            executions::KINDS
                .into_iter()
                .find(|k| *k == kind)
                .ok_or_else(|| {
                    AppError::bad_request(format!(
                        "kind must be one of {}",
                        executions::KINDS.join(", ")
                    ))
                })?,
        );
    }
    if let Some(agent) = given("agent") {
        let found =
            agents::find_visible(r, &ctx.subject, &agent).map_err(|_| unknown("agent", &agent))?;
        filter.agent_id = Some(found.id);
    }
    filter.project_id = super::project_filter(r, req, ctx)?;
    // A server by id or by name (within the project filter when one is given).
    if let Some(server) = given("server") {
        let found =
            crate::servers::find_visible(r, &ctx.subject, &server, filter.project_id.as_deref())
                .map_err(|e| match e.kind {
                    crate::error::Kind::Invalid => AppError::bad_request(e.message),
                    _ => unknown("server", &server),
                })?;
        filter.server_id = Some(found.id);
    }
    if let Some(script) = given("script") {
        let found = crate::scripts::get_visible(r, &ctx.subject, &script)
            .map_err(|_| unknown("script", &script))?;
        filter.script_id = Some(found.id);
    }
    if let Some(rollout) = given("rollout") {
        let found = crate::rollouts::get_visible(r, &ctx.subject, &rollout)
            .map_err(|_| unknown("rollout", &rollout))?;
        filter.rollout_id = Some(found.id);
    }
    Ok(filter)
}

/// `GET /api/v1/executions`: one page of the executions the caller may see, newest
/// first, narrowed by the filters in [`EXECUTION_FILTERS`].
pub fn executions_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let paging = req.paging()?;
    let (views, next) = executions_page_of(app, req, ctx, &paging)?;
    Ok(super::json_page(req, &views, next.as_deref()))
}

/// One page of the request's filtered executions as views, and the next cursor; for
/// the API list and the executions page.
pub fn executions_page_of(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    paging: &super::Paging,
) -> AppResult<(Vec<ExecutionView>, Option<String>)> {
    Ok(app.store.read(|r| {
        let filter = execution_filter(r, req, ctx)?;
        let page = executions::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        Ok((execution_views(r, &page.items)?, page.next))
    })?)
}

/// `GET /api/v1/executions/{id}`.
pub fn execution(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let e = executions::get_visible(r, &ctx.subject, id)?;
        execution_view(r, &e)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// Log chunks read from the store per batch while streaming a download.
const LOG_STREAM_BATCH: usize = 512;

/// `GET /api/v1/executions/{id}/log?from_seq=N[&format=text]`: the stored output,
/// streamed batch by batch from the store (never built whole in memory), as JSON
/// lines `{"seq","stream","data"}` or, with `format=text`, as a plain-text
/// attachment without ANSI codes. The internal result line is never shown.
pub fn execution_log(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let from_seq = parse_from_seq(req)?;
    let text = match req.query("format").unwrap_or("") {
        "" | "jsonl" | "json" => false,
        "text" => true,
        other => {
            return Err(AppError::bad_request(format!(
                "format must be text or jsonl (not {:?})",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    app.store
        .read(|r| Ok(executions::get_visible(r, &ctx.subject, id)?))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let store = app.store.clone();
    let execution_id = id.to_string();
    tokio::task::spawn_blocking(move || {
        crate::store::allow_blocking_here();
        let mut next = from_seq;
        loop {
            let chunks =
                match store.read(|r| executions::log(r, &execution_id, next, LOG_STREAM_BATCH)) {
                    Ok(chunks) => chunks,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
                        return;
                    }
                };
            let mut body = Vec::new();
            for chunk in &chunks {
                next = chunk.seq + 1;
                let shown = executions::display_text(&chunk.data);
                if shown.is_empty() {
                    continue;
                }
                if text {
                    body.extend_from_slice(strip_ansi(&shown).as_bytes());
                } else {
                    let line = executions::LogChunk {
                        seq: chunk.seq,
                        stream: chunk.stream.clone(),
                        data: shown.into_owned(),
                    };
                    body.extend_from_slice(
                        serde_json::to_string(&line).unwrap_or_default().as_bytes(),
                    );
                    body.push(b'\n');
                }
            }
            // A closed channel is a client that went away: stop reading.
            if !body.is_empty() && tx.blocking_send(Ok(bytes::Bytes::from(body))).is_err() {
                return;
            }
            if chunks.len() < LOG_STREAM_BATCH {
                return;
            }
        }
    });
    let mut resp = super::streamed(rx);
    let headers = resp.headers_mut();
    if text {
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "attachment; filename=\"execution-{}.log\"",
            id.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        )) {
            headers.insert("content-disposition", v);
        }
    } else {
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-ndjson"),
        );
    }
    Ok(resp)
}

/// Terminal output as plain text: ANSI escape sequences (colours, cursor moves,
/// titles) removed, carriage-return progress lines kept as they are.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, then one final byte @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST (ESC \).
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // Two-character sequences (ESC c, ESC =, …).
            Some(_) | None => {}
        }
    }
    out
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
            app.fleet
                .publish_end(&execution.id, &execution.project_id, "cancelled");
            // A copy may already be on its way to the agent.
            app.fleet.cancel(&execution);
        }
        CancelOutcome::TellAgent => app.fleet.cancel(&execution),
    }
    Ok(execution)
}

/// `POST /api/v1/executions/{id}/cancel` → 202.
pub fn cancel_execution(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let execution = cancel(app, req, ctx, id)?;
    let view = app.store.read(|r| execution_view(r, &execution))?;
    Ok(reply(StatusCode::ACCEPTED, &view))
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    /// Colours, cursor moves and window titles leave the text; the words stay.
    #[test]
    fn ansi_codes_are_stripped() {
        let cases = [
            ("\u{1b}[1;32mok\u{1b}[0m: done\n", "ok: done\n"),
            ("\u{1b}]0;title\u{7}plain", "plain"),
            ("\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\", "link"),
            ("50%\r100%\n", "50%\r100%\n"),
            ("no escapes", "no escapes"),
            ("trailing \u{1b}", "trailing "),
        ];
        for (input, want) in cases {
            assert_eq!(strip_ansi(input), want, "{input:?}");
        }
    }
}

/// The body of `POST /api/v1/executions/{id}/rerun`: the secret variables again when
/// the original had any.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunInput {
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The same work as `original` on the same agent, as a new execution's input: the
/// script or playbook text as it ran (not the stored script's newer version), its
/// plain variables, and the secret ones from `given` (422 naming those missing).
pub fn rerun_input(
    r: &impl crate::store::Read,
    original: &executions::Execution,
    given: &RerunInput,
) -> AppResult<NewExecution> {
    use crate::executions::Work;
    let mut input = NewExecution {
        agent: Some(original.agent_id.clone()),
        timeout_s: original.timeout_s,
        script_id: original.script_id.clone(),
        script_name: original.script_id.as_ref().map(|_| original.name.clone()),
        ..Default::default()
    };
    match &original.work {
        Work::Script {
            interpreter,
            script,
            env,
            working_dir,
        } => {
            input.kind = Some("script".into());
            input.script = Some(script.clone());
            input.interpreter = Some(interpreter.clone());
            input.env = Some(env.clone());
            input.working_dir = working_dir.clone();
        }
        Work::Playbook {
            playbook,
            vars,
            check,
            ansible_fallback,
            tree,
            ..
        } => {
            if let Some(tree) = tree {
                if r.get::<crate::script_files::ScriptTree>(tree)?.is_none() {
                    return Err(AppError::conflict(
                        "the files this playbook ran with are gone (past retention); run the script again from its page",
                    ));
                }
            }
            input.kind = Some("playbook".into());
            input.playbook = Some(playbook.clone());
            input.tree = tree.clone();
            input.vars = Some(
                vars.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            );
            input.check = Some(*check);
            input.ansible_fallback = Some(*ansible_fallback);
        }
        _ => {
            return Err(AppError::conflict(format!(
                "a {} is run again from its own page (Backup, Verify, Restore or Update)",
                original.work.kind().replace('_', " ")
            )))
        }
    }
    let secret_names = rerun_secret_names(r, original)?;
    let mut missing = Vec::new();
    for name in &secret_names {
        match given.vars.get(name) {
            Some(serde_json::Value::String(value)) if !value.is_empty() => {
                input.secrets.insert(name.clone(), value.clone());
            }
            _ => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(AppError::invalid(
            "vars",
            format!("give the secret variables again: {}", missing.join(", ")),
        ));
    }
    if let Some(unknown) = given.vars.keys().find(|k| !secret_names.contains(k)) {
        return Err(AppError::invalid(
            "vars",
            format!(
                "{:?} is not a secret variable of this work; the rest runs as it ran",
                crate::validate::echo(unknown)
            ),
        ));
    }
    Ok(input)
}

/// The secret variables a re-run of `original` must be given again: those its stored
/// script declares secret (their values were never kept).
pub fn rerun_secret_names(
    r: &impl crate::store::Read,
    original: &executions::Execution,
) -> anyhow::Result<Vec<String>> {
    Ok(match &original.script_id {
        Some(id) => r
            .get::<crate::scripts::Script>(id)?
            .map(|s| {
                s.variables
                    .into_iter()
                    .filter(|v| v.secret)
                    .map(|v| v.name)
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    })
}

/// `POST /api/v1/executions/{id}/rerun` (`{"vars"?}`) → `201 {"id", "status", ...}`: the
/// same work again on the same target.
pub fn rerun_execution(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let given: RerunInput = if req.body.is_empty() {
        RerunInput::default()
    } else {
        req.json()?
    };
    let input = app.store.read(|r| {
        let original = executions::get_visible(r, &ctx.subject, id)?;
        Ok(rerun_input(r, &original, &given)?)
    })?;
    let execution = start_execution(app, req, ctx, &input)?;
    let view = app.store.read(|r| execution_view(r, &execution))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/servers/{id}/metrics?since=T&step=S`: the server's figures from its
/// agent's heartbeats, averaged to `step` seconds (see [`crate::server_metrics`]).
pub fn server_metrics(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let points = app.store.read(|r| {
        let server = crate::servers::get_visible(r, &ctx.subject, id)?;
        req.only_filters(&["since", "step"])?;
        let range = crate::server_metrics::range(
            req.query("since"),
            req.query("step"),
            chrono::Utc::now().timestamp(),
        )?;
        let points = crate::server_metrics::query(r, app.fleet.samples(), &server.id, &range)?;
        Ok(json!({"points": points, "step": range.step}))
    })?;
    Ok(reply(StatusCode::OK, &points))
}

/// The body of `POST /api/v1/agents/upgrade`: the agents (ids or names) or a project
/// (id or name), exactly one of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    pub agents: Option<Vec<String>>,
    pub project: Option<String>,
}

/// The body of `POST /api/v1/agents/{id}/upgrade`: `{}` (nothing to choose).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// Starts an upgrade of the selected agents to the binary this control plane serves;
/// shared by the API and the pages. 403 before any lookup for a caller who may
/// manage no agents; 409 when there is no binary to serve.
pub fn start_upgrade(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    selection: &agent_upgrades::Selection,
) -> AppResult<agent_upgrades::AgentUpgrade> {
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::ManageAgents, None) {
        return Err(AppError::forbidden());
    }
    let path = agent_upgrades::agent_binary_path().ok_or_else(|| {
        AppError::conflict(
            "this control plane has no agent binary to serve: put dynserv-agent next to \
             dynserv, or set DYNSERV_AGENT_BINARY",
        )
    })?;
    let binary = agent_upgrades::binary_info(&path)
        .map_err(|e| AppError::conflict(format!("the agent binary cannot be served: {e:#}")))?;
    let signature = app.fleet.sign_binary(&binary);
    let actor = ctx.actor(req);
    let upgrade = app.store.write(|w| {
        Ok(agent_upgrades::create(
            w,
            &actor,
            &ctx.subject,
            selection,
            &binary,
            &signature,
            chrono::Utc::now(),
        )?)
    })?;
    Ok(upgrade)
}

/// `POST /api/v1/agents/{id}/upgrade` `{}` → `202 {"id"}`.
pub fn upgrade_agent(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        let _: NoOptions = req.json()?;
    }
    let selection = agent_upgrades::Selection::Agents(vec![id.to_string()]);
    let upgrade = start_upgrade(app, req, ctx, &selection)?;
    Ok(reply(StatusCode::ACCEPTED, &json!({"id": upgrade.id})))
}

/// `POST /api/v1/agents/upgrade` `{"agents": [...]}` or `{"project"}` → `202 {"id"}`.
pub fn upgrade_agents(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let input: UpgradeRequest = req.json()?;
    let selection = match (input.agents, input.project) {
        (Some(agents), None) => agent_upgrades::Selection::Agents(agents),
        (None, Some(project)) => agent_upgrades::Selection::Project(project),
        _ => {
            return Err(AppError::bad_request(
                "give either \"agents\" (a list of agent ids or names) or \"project\"",
            ))
        }
    };
    let upgrade = start_upgrade(app, req, ctx, &selection)?;
    Ok(reply(StatusCode::ACCEPTED, &json!({"id": upgrade.id})))
}

/// `GET /api/v1/agent-upgrades/{id}`: the upgrade with its agents' status.
pub fn agent_upgrade(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let upgrade = app
        .store
        .read(|r| Ok(agent_upgrades::get_visible(r, &ctx.subject, id)?))?;
    Ok(reply(
        StatusCode::OK,
        &agent_upgrades::view(&upgrade, &ctx.subject),
    ))
}
