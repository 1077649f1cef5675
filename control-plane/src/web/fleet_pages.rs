//! Fleet pages: agents (with revoke), enrollment tokens, the run-script form of a
//! server, and executions with their live log. Thin like every page handler: parse,
//! authorize with `policy::can`, call the domain module (through the shared helpers
//! of `fleet_api`), render or redirect.

use serde_json::{json, Value};
use warp::http::StatusCode;

use super::fleet_api::{self, NewToken};
use super::pages::{form_errors_or, page};
use super::{redirect, Ctx, Req, Resp};
use crate::agents::{self, Agent};
use crate::app::App;
use crate::error::{AppError, AppResult, Kind};
use crate::executions::{self, NewExecution};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::servers;
use crate::store::Read;

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// `GET /agents[?project=…][&q=…]`: one page of agents by name, with a filter form
/// and a pager; every agent with a refused copy gets a notice above the table.
pub fn agents_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(100)?;
    let (rows, duplicates, next, projects, summary) = app.store.read(|r| {
        let filter = fleet_api::agent_filter(r, req, ctx)?;
        let page = agents::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let row = |agent: &agents::Agent| -> anyhow::Result<Value> {
            let mut v = serde_json::to_value(fleet_api::agent_view(app, r, agent)?)?;
            v["can_manage"] = json!(policy::can(
                &ctx.subject,
                Action::ManageAgents,
                Some(&agent.project_id)
            ));
            v["memory_gib"] = json!(format!(
                "{:.1}",
                agent.facts.memory_bytes as f64 / (1u64 << 30) as f64
            ));
            v["disk_gib"] = json!(format!(
                "{:.0}",
                agent.facts.disk_bytes as f64 / (1u64 << 30) as f64
            ));
            Ok(v)
        };
        fleet_api::prefetch_agent_rows(app, r, &page.items)?;
        let rows = page
            .items
            .iter()
            .map(row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Agents with a copy on another machine get a notice above the table that
        // says what happened and what to do, whichever page they are on.
        let mut duplicates = Vec::new();
        for agent in agents::with_duplicates(r, &ctx.subject)? {
            let v = row(&agent)?;
            if !v["duplicate"].is_null() {
                duplicates.push(v);
            }
        }
        let project = filter.project_id.clone().unwrap_or_default();
        let projects: Vec<Value> = projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name, "selected": p.id == project}))
            .collect();
        let summary = agents::version_summary(r, &ctx.subject, filter.project_id.as_deref())?;
        Ok((rows, duplicates, page.next, projects, summary))
    })?;
    let can_enroll = policy::can(&ctx.subject, Action::ManageAgents, None);
    let tokens = match can_enroll {
        true => app
            .store
            .read(|r| fleet_api::enrollment_token_views(r, ctx))?,
        false => Vec::new(),
    };
    page(
        app,
        req,
        ctx,
        "agents",
        "Agents",
        json!({
            "agents": rows,
            "versions": summary,
            "duplicates": duplicates,
            "projects": projects,
            "filters": {"q": req.text_filter("q").unwrap_or_default()},
            "filtered": fleet_api::AGENT_FILTERS.iter().any(|n| req.text_filter(n).is_some()),
            "pager": super::pages::pager_by_name(req, &paging, next.as_deref()),
            "can_enroll": can_enroll,
            "can_upgrade": can_enroll,
            "fleet_server": app.config.public_quic,
            "retry_minutes": agents::DUPLICATE_RETRY_S / 60,
            "quiet_minutes": agents::DUPLICATE_QUIET_MINUTES,
            "tokens": tokens,
            "fleet_ca": super::ca_api::page_section(app, ctx)?,
        }),
    )
}

/// `POST /agents/{id}/accept-host`: the machine of the latest refused copy becomes
/// the agent's.
pub fn accept_host_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    match fleet_api::accept_host(app, req, ctx, id) {
        Ok(accepted) => {
            let lost = match accepted.failed_executions.len() {
                0 => String::new(),
                n => format!(" {n} job(s) running on the previous machine were marked failed."),
            };
            Ok(redirect(
                "/agents",
                Some((
                    "success",
                    &format!(
                        "The other machine now holds agent {}'s identity; it connects at its \
                         next attempt (within {} minutes), and the previous machine is refused.{lost}",
                        accepted.agent.name,
                        agents::DUPLICATE_RETRY_S / 60
                    ),
                )),
            ))
        }
        Err(e) if e.kind == Kind::Conflict => {
            Ok(redirect("/agents", Some(("warning", &e.message))))
        }
        Err(e) => Err(e),
    }
}

/// `POST /agents/tokens/{id}/revoke`: revokes an enrollment token.
pub fn revoke_token_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let revoked = fleet_api::revoke_enrollment_token(app, req, ctx, id)?;
    Ok(redirect(
        "/agents",
        Some((
            "success",
            &format!(
                "Enrollment token of {} revoked; it enrolls no more agents.",
                revoked["project"].as_str().unwrap_or("the project")
            ),
        )),
    ))
}

/// `POST /agents/{id}/revoke`.
pub fn revoke_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let agent = app
        .store
        .write(|w| Ok(agents::revoke(w, &ctx.actor(req), &ctx.subject, id)?))?;
    app.fleet.disconnect(&agent.id);
    Ok(redirect(
        "/agents",
        Some((
            "success",
            &format!(
                "Agent {} revoked; its next connection will be refused.",
                agent.name
            ),
        )),
    ))
}

fn token_projects(app: &App, ctx: &Ctx) -> AppResult<Vec<Value>> {
    Ok(app.store.read(|r| {
        Ok(projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ManageAgents, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name}))
            .collect::<Vec<_>>())
    })?)
}

/// `GET /agents/enroll`: the enrollment token form.
pub fn enroll_form(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ManageAgents, None)?;
    let projects = token_projects(app, ctx)?;
    let values = json!({"project": req.query("project").unwrap_or(""), "uses": "1", "ttl": "24h"});
    page(
        app,
        req,
        ctx,
        "enroll",
        "Enroll an agent",
        json!({"projects": projects, "values": values, "errors": {}, "created": null}),
    )
}

/// `POST /agents/enroll`: creates a token and shows it once.
pub fn enroll_create(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ManageAgents, None)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let projects = token_projects(app, ctx)?;
    let uses = match form.get("uses").map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<u32>()
            .map(Some)
            .map_err(|_| AppError::invalid("uses", "uses must be a whole number")),
    };
    let result = uses.and_then(|uses| {
        let input = NewToken {
            project: form.get("project").map(String::from),
            uses,
            ttl: form.get("ttl").map(String::from),
        };
        fleet_api::create_token(app, req, ctx, &input)
    });
    match result {
        Ok(created) => page(
            app,
            req,
            ctx,
            "enroll",
            "Enroll an agent",
            json!({"projects": projects, "values": form.values(), "errors": {}, "created": created}),
        ),
        Err(e) if e.kind == Kind::Invalid => {
            let errors = form_errors_or(&e, "project");
            super::pages::page_with_status(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                "enroll",
                "Enroll an agent",
                json!({"projects": projects, "values": form.values(), "errors": errors, "created": null}),
            )
        }
        Err(e) => Err(e),
    }
}

fn server_and_agent(app: &App, ctx: &Ctx, id: &str) -> AppResult<RunTarget> {
    Ok(app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, id)?;
        let agent = match &server.agent_id {
            Some(agent_id) => r.get::<Agent>(agent_id)?,
            None => None,
        };
        let project = r.get::<Project>(&server.project_id)?;
        Ok((server, agent, project))
    })?)
}

/// A server with its agent and project, as the run form needs them.
type RunTarget = (servers::Server, Option<Agent>, Option<Project>);

fn run_page(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    target: &RunTarget,
    values: Value,
    errors: Value,
) -> AppResult<Resp> {
    let (server, agent, project) = (&target.0, target.1.as_ref(), target.2.as_ref());
    let connected = match agent {
        Some(a) => app.store.read(|r| Ok(app.fleet.live(r, &a.id).is_some()))?,
        None => false,
    };
    let recent = match agent {
        Some(agent) => app.store.read(|r| {
            fleet_api::execution_views(r, &executions::recent_of_agent(r, &agent.id, 10)?)
        })?,
        None => Vec::new(),
    };
    let data = json!({
        "server": {"id": server.id, "name": server.name},
        "agent": agent.map(|a| json!({"id": a.id, "name": a.name, "connected": connected, "revoked": a.revoked_at.is_some()})),
        "deploy_command": project.and_then(|p| p.deploy_command.clone()),
        "values": values,
        "errors": errors,
        "recent": recent,
    });
    page(
        app,
        req,
        ctx,
        "server_run",
        &format!("Run on {}", server.name),
        data,
    )
}

/// `GET /servers/{id}/run[?deploy=1]`: the run-script form.
pub fn run_form(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let target = server_and_agent(app, ctx, id)?;
    require(ctx, Action::OperateServers, Some(&target.0.project_id))?;
    let script = match (
        req.query("deploy"),
        target.2.as_ref().and_then(|p| p.deploy_command.clone()),
    ) {
        (Some(_), Some(command)) => format!("{command}\n"),
        _ => String::new(),
    };
    let values = json!({"script": script, "interpreter": "/bin/bash", "timeout_s": "", "env": "", "working_dir": ""});
    run_page(app, req, ctx, &target, values, json!({}))
}

/// Parses `KEY=VALUE` lines.
fn parse_env(text: &str) -> AppResult<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| AppError::invalid("env", format!("{line:?} is not KEY=VALUE")))?;
        env.insert(k.trim().to_string(), v.to_string());
    }
    Ok(env)
}

/// `POST /servers/{id}/run`: starts the script and opens its execution page.
pub fn run_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let target = server_and_agent(app, ctx, id)?;
    require(ctx, Action::OperateServers, Some(&target.0.project_id))?;
    let parsed = (|| {
        let agent = target.1.as_ref().ok_or_else(|| {
            AppError::invalid("script", "this server has no agent; enroll one first")
        })?;
        let timeout_s = match form
            .get("timeout_s")
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(t) => Some(t.parse::<u64>().map_err(|_| {
                AppError::invalid("timeout_s", "the timeout is a whole number of seconds")
            })?),
        };
        let input = NewExecution {
            agent: Some(agent.id.clone()),
            kind: Some("script".into()),
            script: form.get("script").map(|s| s.replace("\r\n", "\n")),
            interpreter: form.get("interpreter").map(String::from),
            env: Some(parse_env(form.get("env").unwrap_or(""))?),
            working_dir: form.get("working_dir").map(String::from),
            timeout_s,
            ..Default::default()
        };
        fleet_api::start_execution(app, req, ctx, &input)
    })();
    match parsed {
        Ok(execution) => Ok(redirect(&format!("/executions/{}", execution.id), None)),
        Err(e) if e.kind == Kind::Invalid => {
            let errors = form_errors_or(&e, "script");
            run_page(
                app,
                req,
                ctx,
                &target,
                Value::Object(form.values()),
                Value::Object(errors),
            )
        }
        Err(e) => Err(e),
    }
}

/// The filters the executions page's form shows as fields; the rest it carries hidden.
const EXECUTION_FORM_FIELDS: [&str; 9] = [
    "q",
    "status",
    "kind",
    "project",
    "server",
    "script",
    "started_by",
    "since",
    "until",
];

/// `GET /executions`: one page of the filtered executions, newest first, each with
/// its name, server, project, rollout, who, status and duration (a failed one with
/// its reason), and a pager through the list's cursor.
pub fn executions_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(50)?;
    // A filter naming nothing (an unknown server name, a bad date) shows the form with
    // the message above an empty list.
    let (filter, filter_error) = match app
        .store
        .read(|r| Ok(fleet_api::execution_filter(r, req, ctx)))?
    {
        Ok(filter) => (Some(filter), None),
        Err(e) if e.kind == Kind::BadRequest => (None, Some(e.message)),
        Err(e) => return Err(e),
    };
    let (rows, next, projects, scripts) = app.store.read(|r| {
        let (items, next) = match &filter {
            Some(filter) => {
                let page = executions::query(
                    r,
                    &ctx.subject,
                    filter,
                    paging.cursor.as_deref(),
                    paging.limit,
                )?;
                (page.items, page.next)
            }
            None => (Vec::new(), None),
        };
        let projects = projects::all(r)?;
        let rows = serde_json::to_value(execution_rows(r, ctx, &items, &projects)?)?;
        let filter = filter.clone().unwrap_or_default();
        let selected = filter.project_id.clone().unwrap_or_default();
        let projects: Vec<Value> = projects
            .iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name, "selected": p.id == selected}))
            .collect();
        let script = filter.script_id.clone().unwrap_or_default();
        let scripts: Vec<Value> = crate::scripts::visible(r, &ctx.subject)?
            .iter()
            .map(|s| json!({"id": s.id, "name": s.name, "selected": s.id == script}))
            .collect();
        Ok((rows, next, projects, scripts))
    })?;
    // Every filter has a value (empty when not given): templates are strict.
    let filters: serde_json::Map<String, serde_json::Value> = fleet_api::EXECUTION_FILTERS
        .iter()
        .map(|name| {
            (
                name.to_string(),
                json!(req.text_filter(name).unwrap_or_default()),
            )
        })
        .collect();
    let filtered = fleet_api::EXECUTION_FILTERS
        .iter()
        .any(|name| req.text_filter(name).is_some());
    let hidden: Vec<serde_json::Value> = fleet_api::EXECUTION_FILTERS
        .iter()
        .filter(|name| !EXECUTION_FORM_FIELDS.contains(name))
        .filter_map(|name| {
            req.text_filter(name)
                .map(|v| json!({"name": name, "value": v}))
        })
        .collect();
    let status = match filter_error {
        Some(_) => StatusCode::BAD_REQUEST,
        None => StatusCode::OK,
    };
    super::pages::page_with_status(
        app,
        req,
        ctx,
        status,
        "executions",
        "Executions",
        json!({
            "executions": rows,
            "filter_error": filter_error,
            "filters": filters,
            "hidden_filters": hidden,
            "filtered": filtered,
            "projects": projects,
            "scripts": scripts,
            "statuses": executions::Status::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "kinds": executions::KINDS,
            "pager": req.pager(&paging, next.as_deref()),
        }),
    )
}

/// The executions list's rows ([`ExecutionListRow`]): each with its server's and
/// project's names, why it failed (a backup's own error, else the job's summary) and
/// whether the caller may run it again. Servers and backups are read in one query each.
fn execution_rows<'a>(
    r: &impl Read,
    ctx: &Ctx,
    items: &'a [executions::Execution],
    projects: &'a [Project],
) -> anyhow::Result<Vec<ExecutionListRow<'a>>> {
    let server_ids: Vec<String> = items.iter().filter_map(|e| e.server_id.clone()).collect();
    let servers: std::collections::HashMap<String, String> = r
        .get_many::<servers::Server>(&server_ids)?
        .into_iter()
        .flatten()
        .map(|s| (s.id, s.name))
        .collect();
    let failed_backups: Vec<String> = items
        .iter()
        .filter(|e| e.status == executions::Status::Failed)
        .filter_map(|e| match &e.work {
            executions::Work::ComposeBackup { backup_id, .. } => Some(backup_id.clone()),
            _ => None,
        })
        .collect();
    let backup_errors: std::collections::HashMap<String, String> = r
        .get_many::<crate::backups::Backup>(&failed_backups)?
        .into_iter()
        .flatten()
        .filter_map(|b| b.error.map(|error| (b.execution_id, error)))
        .collect();
    let project_names: std::collections::HashMap<&str, &str> = projects
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();
    Ok(items
        .iter()
        .map(|e| {
            let failed = matches!(
                e.status,
                executions::Status::Failed | executions::Status::TimedOut
            );
            let reason = match failed {
                true => backup_errors
                    .get(&e.id)
                    .cloned()
                    .or_else(|| e.summary.clone().filter(|s| !s.trim().is_empty())),
                false => None,
            };
            ExecutionListRow {
                id: &e.id,
                created_at: e.created_at,
                name: &e.name,
                kind: e.work.kind(),
                drift_check: e.is_drift_check(),
                output_truncated: e.output_truncated,
                server_id: e.server_id.as_deref(),
                server_name: e.server_id.as_ref().and_then(|id| servers.get(id)).cloned(),
                agent_name: &e.agent_name,
                project_name: project_names.get(e.project_id.as_str()).copied(),
                rollout: e.rollout_id.as_deref(),
                created_by: &e.created_by,
                status: e.status.as_str(),
                status_class: status_class(e.status),
                failed_exit_code: e
                    .exit_code
                    .filter(|_| e.status == executions::Status::Failed),
                reason,
                duration_s: e.duration_s(),
                can_rerun: may_rerun(ctx, e),
            }
        })
        .collect())
}

/// Bootstrap colour of an execution's status badge (`web/static/app.js` keeps the same
/// table for badges it updates live).
fn status_class(status: executions::Status) -> &'static str {
    use executions::Status;
    match status {
        Status::Succeeded => "text-bg-success",
        Status::Failed => "text-bg-danger",
        Status::Running => "text-bg-primary",
        Status::TimedOut => "text-bg-warning",
        Status::Queued | Status::Cancelled => "text-bg-secondary",
    }
}

/// An execution as the executions page lists it: what its template shows.
#[derive(serde::Serialize)]
struct ExecutionListRow<'a> {
    id: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    name: &'a str,
    kind: &'static str,
    drift_check: bool,
    output_truncated: bool,
    server_id: Option<&'a str>,
    server_name: Option<String>,
    agent_name: &'a str,
    project_name: Option<&'a str>,
    rollout: Option<&'a str>,
    created_by: &'a str,
    status: &'static str,
    /// The status badge's colour.
    status_class: &'static str,
    /// The exit code of a failed execution (a timed-out one's says nothing).
    failed_exit_code: Option<i32>,
    /// Why it failed: a backup's own error, else the job's summary.
    reason: Option<String>,
    duration_s: Option<f64>,
    can_rerun: bool,
}

/// Whether the caller may run an execution's work again from here: a script or a
/// playbook that ended, on a project where the caller operates servers.
fn may_rerun(ctx: &Ctx, e: &executions::Execution) -> bool {
    policy::can(&ctx.subject, Action::OperateServers, Some(&e.project_id))
        && matches!(e.work.kind(), "script" | "playbook")
        && e.status.is_final()
}

/// `GET /executions/{id}`: status and the live log.
pub fn execution_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let (view, status_class, script, server_name, can_rerun, rerun_secrets) = app.store.read(|r| {
        let e = executions::get_visible(r, &ctx.subject, id)?;
        let can_rerun = may_rerun(ctx, &e);
        let rerun_secrets = match can_rerun {
            true => !fleet_api::rerun_secret_names(r, &e)?.is_empty(),
            false => false,
        };
        let script = match &e.work {
            executions::Work::Script { interpreter, script, .. } => json!({"interpreter": interpreter, "text": script}),
            executions::Work::Playbook { playbook, check, .. } => json!({"interpreter": if *check { "playbook (check mode)" } else { "playbook" }, "text": playbook}),
            other => crate::backups::work_summary(other),
        };
        let server_name = match &e.server_id {
            Some(sid) => r.get::<servers::Server>(sid)?.map(|s| s.name),
            None => None,
        };
        Ok((
            fleet_api::execution_view(r, &e)?,
            status_class(e.status),
            script,
            server_name,
            can_rerun,
            rerun_secrets,
        ))
    })?;
    let can_cancel = policy::can(&ctx.subject, Action::OperateServers, Some(&view.project_id))
        && matches!(view.status, "queued" | "running");
    let title = format!(
        "Execution on {}",
        server_name
            .as_deref()
            .or(view.agent_name.as_deref())
            .unwrap_or("an agent")
    );
    page(
        app,
        req,
        ctx,
        "execution",
        &title,
        json!({"execution": view, "status_class": status_class, "script": script, "server_name": server_name, "can_cancel": can_cancel, "can_rerun": can_rerun, "rerun_secrets": rerun_secrets}),
    )
}

/// The re-run form of an execution: what runs again where, and a field for each
/// secret variable to give again.
fn rerun_form_page(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    error: Option<&str>,
) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let (original, secrets, server_name) = app.store.read(|r| {
        let original = executions::get_visible(r, &ctx.subject, id)?;
        let secrets = fleet_api::rerun_secret_names(r, &original)?;
        let server_name = match &original.server_id {
            Some(sid) => r.get::<servers::Server>(sid)?.map(|s| s.name),
            None => None,
        };
        Ok((original, secrets, server_name))
    })?;
    require(ctx, Action::OperateServers, Some(&original.project_id))?;
    super::pages::page_with_status(
        app,
        req,
        ctx,
        status,
        "execution_rerun",
        &format!("Run {} again", original.name),
        json!({
            "execution": {"id": original.id, "name": original.name, "kind": original.work.kind(), "agent_name": original.agent_name},
            "server_name": server_name,
            "secrets": secrets,
            "error": error,
            "can_rerun": may_rerun(ctx, &original),
        }),
    )
}

/// `GET /executions/{id}/rerun`: the re-run form (asks for the secret variables again).
pub fn rerun_form(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    rerun_form_page(app, req, ctx, id, StatusCode::OK, None)
}

/// `POST /executions/{id}/rerun`: the same work again on the same agent, with the
/// secret variables from the form's `secret.NAME` fields. Missing secrets bring the
/// form back with the message; a conflict (a backup, a revoked agent) goes back to the
/// execution with it.
pub fn rerun_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let mut given = fleet_api::RerunInput::default();
    for (name, value) in form.pairs() {
        if let Some(var) = name.strip_prefix("secret.") {
            given.vars.insert(var.to_string(), json!(value));
        }
    }
    let started = app
        .store
        .read(|r| {
            let original = executions::get_visible(r, &ctx.subject, id)?;
            Ok(fleet_api::rerun_input(r, &original, &given))
        })?
        .and_then(|input| fleet_api::start_execution(app, req, ctx, &input));
    match started {
        Ok(e) => Ok(redirect(
            &format!("/executions/{}", e.id),
            Some(("success", "Started again.")),
        )),
        Err(e) if e.kind == Kind::Invalid => rerun_form_page(
            app,
            req,
            ctx,
            id,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&e.message),
        ),
        Err(e) if e.kind == Kind::Conflict => Ok(redirect(
            &format!("/executions/{id}"),
            Some(("warning", &format!("Not started again: {}", e.message))),
        )),
        Err(e) => Err(e),
    }
}

/// `POST /executions/{id}/cancel`.
pub fn cancel_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let back = format!("/executions/{id}");
    match fleet_api::cancel(app, req, ctx, id) {
        Ok(_) => Ok(redirect(
            &back,
            Some((
                "info",
                "Cancel requested: the job's process group is being stopped.",
            )),
        )),
        Err(e) if e.kind == Kind::Conflict => Ok(redirect(&back, Some(("warning", &e.message)))),
        Err(e) => Err(e),
    }
}

/// `POST /agents/{id}/upgrade` (form): upgrades one agent, then shows the upgrade.
pub fn upgrade_agent_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let selection = crate::agent_upgrades::Selection::Agents(vec![id.to_string()]);
    upgrade_started(app, req, ctx, &selection)
}

/// `POST /agents/upgrade` (form, `project` optional): upgrades every outdated agent
/// of the project, or every one the caller may manage, then shows the upgrade.
pub fn upgrade_all_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let selection = match form.get("project").map(str::trim).filter(|p| !p.is_empty()) {
        Some(project) => crate::agent_upgrades::Selection::Project(project.to_string()),
        None => crate::agent_upgrades::Selection::AllOutdated,
    };
    upgrade_started(app, req, ctx, &selection)
}

fn upgrade_started(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    selection: &crate::agent_upgrades::Selection,
) -> AppResult<Resp> {
    match fleet_api::start_upgrade(app, req, ctx, selection) {
        Ok(upgrade) => Ok(redirect(
            &format!("/agent-upgrades/{}", upgrade.id),
            Some((
                "success",
                &format!(
                    "Upgrading {} agent(s) to {}.",
                    upgrade.targets.len(),
                    upgrade.to
                ),
            )),
        )),
        Err(e) if matches!(e.kind, Kind::Conflict | Kind::Invalid) => {
            Ok(redirect("/agents", Some(("danger", &e.message))))
        }
        Err(e) => Err(e),
    }
}

/// `GET /agent-upgrades/{id}`: an upgrade's agents and where each stands, refreshed
/// by `agent_upgrade.js` from the API while it runs.
pub fn agent_upgrade_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let upgrade = crate::agent_upgrades::get_visible(r, &ctx.subject, id)?;
        Ok(crate::agent_upgrades::view(&upgrade, &ctx.subject))
    })?;
    let title = format!("Agent upgrade to {}", view["to"].as_str().unwrap_or("?"));
    page(
        app,
        req,
        ctx,
        "agent_upgrade",
        &title,
        json!({"upgrade": view}),
    )
}
