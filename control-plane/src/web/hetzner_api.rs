//! JSON API of the Hetzner features: on-demand sync, power actions and their state,
//! and a project's costs against its budget.

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::hetzner::{budget, power, sync, PowerAction};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::servers::{self, Server};
use crate::store::Read;

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Finds a project the caller may see and checks it may be synced by them.
pub fn project_to_sync(app: &App, ctx: &Ctx, key: &str) -> AppResult<Project> {
    let project = app
        .store
        .read(|r| projects::find(r, key))?
        .ok_or_else(|| AppError::not_found("project"))?;
    require(ctx, Action::ViewProject, Some(&project.id))?;
    require(ctx, Action::OperateServers, Some(&project.id))?;
    if !sync::has_token(app, &project) {
        return Err(AppError::conflict(format!(
            "{} has no Hetzner API token; add one on the project first",
            project.name
        )));
    }
    Ok(project)
}

/// `POST /api/v1/projects/{id}/sync`: 202, the sync runs in the background and its
/// outcome appears in the project's `last_sync`.
pub fn sync_project(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_to_sync(app, ctx, key)?;
    sync::spawn_sync(app, &project.id, ctx.actor(req));
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({"project": project.id, "status": "syncing", "last_sync": project.last_sync}),
    ))
}

/// Finds a server the caller may operate.
pub fn server_to_operate(app: &App, ctx: &Ctx, id: &str) -> AppResult<Server> {
    let server = app
        .store
        .read(|r| Ok(servers::get_visible(r, &ctx.subject, id)?))?;
    require(ctx, Action::OperateServers, Some(&server.project_id))?;
    Ok(server)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerInput {
    action: String,
}

/// `POST /api/v1/servers/{id}/power` `{"action": "poweron|poweroff|reboot"}`: 202
/// `{"action_id"}`; follow it at `GET /api/v1/servers/{id}/actions/{action_id}`.
pub async fn power(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_to_operate(app, ctx, id)?;
    let input: PowerInput = req.json()?;
    let action = PowerAction::parse(&input.action)
        .ok_or_else(|| AppError::invalid("action", "action must be poweron, poweroff or reboot"))?;
    let started = power::start(app, &ctx.actor(req), &server, action).await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({"action_id": started.action_id, "status": started.status, "command": started.command}),
    ))
}

/// `GET /api/v1/servers/{id}/actions`: the server's recent Hetzner actions.
pub fn actions(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let list = app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, id)?;
        power::of_server(r, &server.id, 20)
    })?;
    Ok(reply(StatusCode::OK, &list))
}

/// `GET /api/v1/servers/{id}/actions/{action_id}`: one action as last seen.
pub fn action(app: &App, ctx: &Ctx, id: &str, action_id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let found = app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, id)?;
        let action: Option<power::HetznerAction> = r.get(action_id)?;
        Ok(action.filter(|a| a.server_id == server.id))
    })?;
    let action = found.ok_or_else(|| AppError::not_found("action"))?;
    Ok(reply(StatusCode::OK, &action))
}

/// `GET /api/v1/requests/{id}/provisioning`: the provisioning steps of a request
/// (creating, booting, agent enrolled, deployed), or null before it started.
pub fn provisioning(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let value = app.store.read(|r| {
        let request = crate::requests::get_visible(r, &ctx.subject, id)?;
        crate::hetzner::provision::view(r, crate::hetzner::TokenRule::of(app), &request.id)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `GET /api/v1/projects/{id}/costs`: this month's cost, the budget, the warnings
/// raised this month and the trend of the last twelve months. Server costs are fleet
/// figures: they need the project's servers in view.
pub fn costs(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let value = app.store.read(|r| {
        let project = projects::find(r, key)?
            .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
            .ok_or_else(|| AppError::not_found("project"))?;
        require(ctx, Action::ViewServers, Some(&project.id))?;
        costs_json(r, &project)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// The cost view of a project, shared by the API and the project page.
pub fn costs_json(
    r: &impl crate::store::Read,
    project: &Project,
) -> anyhow::Result<serde_json::Value> {
    let now = chrono::Utc::now();
    let cost = budget::project_cost(r, &project.id)?;
    let percent = budget::percent_used(cost, project.budget_monthly);
    let alerts = budget::alerts_this_month(r, &project.id, now)?;
    let trend = budget::trend(r, &project.id, 12)?;
    let max = trend
        .iter()
        .map(|s| s.cost)
        .fold(project.budget_monthly.unwrap_or(0.0), f64::max)
        .max(cost);
    let this_month = budget::month_of(now);
    let trend_rows: Vec<serde_json::Value> = trend
        .iter()
        .map(|s| {
            // The month under way shows today's cost against today's budget, not the
            // ones its snapshot took at the last sync (a budget changed since would
            // keep the old colour until the next one).
            let (cost, budget) = match s.month == this_month {
                true => (cost, project.budget_monthly),
                false => (s.cost, s.budget),
            };
            let width = if max > 0.0 {
                (cost / max * 100.0).round()
            } else {
                0.0
            };
            json!({"month": s.month, "cost": cost, "budget": budget, "width": width,
                   "over": budget.is_some_and(|b| b > 0.0 && cost >= b)})
        })
        .collect();
    let level = match percent {
        Some(p) if p >= 100.0 => "danger",
        Some(p) if p >= 80.0 => "warning",
        _ => "ok",
    };
    Ok(json!({
        "month": budget::month_of(now),
        "cost": cost,
        "budget": project.budget_monthly,
        "percent": percent.map(|p| p as i64),
        "level": level,
        "warning": level != "ok",
        "alerts": alerts,
        "trend": trend_rows,
    }))
}
