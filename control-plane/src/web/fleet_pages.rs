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
            "fleet_server": app.config.public_quic,
            "retry_minutes": agents::DUPLICATE_RETRY_S / 60,
            "quiet_minutes": agents::DUPLICATE_QUIET_MINUTES,
            "tokens": tokens,
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
            executions::recent_of_agent(r, &agent.id, 10)?
                .iter()
                .map(|e| fleet_api::execution_view(r, e))
                .collect::<anyhow::Result<Vec<_>>>()
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

/// `GET /executions`.
pub fn executions_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(50)?;
    let (rows, next) = fleet_api::executions_page_of(app, req, ctx, &paging)?;
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
    let hidden: Vec<serde_json::Value> = ["server", "agent", "project", "script", "rollout"]
        .iter()
        .filter_map(|name| {
            req.text_filter(name)
                .map(|v| json!({"name": name, "value": v}))
        })
        .collect();
    page(
        app,
        req,
        ctx,
        "executions",
        "Executions",
        json!({
            "executions": rows,
            "filters": filters,
            "hidden_filters": hidden,
            "filtered": filtered,
            "statuses": executions::Status::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "kinds": executions::KINDS,
            "pager": req.pager(&paging, next.as_deref()),
        }),
    )
}

/// `GET /executions/{id}`: status and the live log.
pub fn execution_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let (view, script, server_name) = app.store.read(|r| {
        let e = executions::get_visible(r, &ctx.subject, id)?;
        let script = match &e.work {
            executions::Work::Script { interpreter, script, .. } => json!({"interpreter": interpreter, "text": script}),
            executions::Work::Playbook { playbook, check, .. } => json!({"interpreter": if *check { "playbook (check mode)" } else { "playbook" }, "text": playbook}),
            other => crate::backups::work_summary(other),
        };
        let server_name = match &e.server_id {
            Some(sid) => r.get::<servers::Server>(sid)?.map(|s| s.name),
            None => None,
        };
        Ok((fleet_api::execution_view(r, &e)?, script, server_name))
    })?;
    let can_cancel = policy::can(&ctx.subject, Action::OperateServers, Some(&view.project_id))
        && matches!(view.status, "queued" | "running");
    let can_rerun = policy::can(&ctx.subject, Action::OperateServers, Some(&view.project_id))
        && matches!(view.kind, "script" | "playbook")
        && !matches!(view.status, "queued" | "running");
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
        json!({"execution": view, "script": script, "server_name": server_name, "can_cancel": can_cancel, "can_rerun": can_rerun}),
    )
}

/// `POST /executions/{id}/cancel`.
/// `POST /executions/{id}/rerun`: the same work again on the same agent; a problem
/// (secret variables to give again, a revoked agent) comes back as a message.
pub fn rerun_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    fleet_api::require_fleet(ctx)?;
    let given = fleet_api::RerunInput::default();
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
        Err(e) if matches!(e.kind, Kind::Conflict | Kind::Invalid) => Ok(redirect(
            &format!("/executions/{id}"),
            Some(("warning", &format!("Not started again: {}", e.message))),
        )),
        Err(e) => Err(e),
    }
}

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
