//! JSON API of server operations: backups (recipes, runs, verify, restore), system
//! updates and their schedules (names in CONTRACT.md: `GET /api/v1/backups`,
//! `POST /api/v1/servers/{id}/backup`). Thin: parse, call `backups` / `updates` /
//! `schedules` (which authorize with `policy::can`), dispatch, answer JSON.

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;

use super::fleet_api::execution_view;
use super::{json as reply, Ctx, Req, Resp};
use crate::agents;
use crate::app::App;
use crate::backups::{self, RecipeInput};
use crate::error::{AppError, AppResult};
use crate::executions::Execution;
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::schedules::{self, ScheduleKind};
use crate::servers::{self, Server};
use crate::store::Read;
use crate::updates;

/// A project whose servers and operations the subject may see, by id or name; 404
/// otherwise (recipes, schedules and runs are operations, not project facts).
pub fn visible_project(r: &impl Read, ctx: &Ctx, key: &str) -> AppResult<Project> {
    projects::find(r, key)?
        .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
        .ok_or_else(|| AppError::not_found("project"))
}

fn dispatch_all(app: &App, executions: &[Execution]) {
    for e in executions {
        app.fleet.dispatch(e);
    }
}

/// The filters of the backup and update lists (API and pages).
pub const OPS_FILTERS: [&str; 3] = ["project", "server", "status"];

/// Reads the filters of a backup or update list: `project` (id or name), `server` (a
/// server's id, its name within the `project` given, or its agent's id or name) and
/// `status`. An unknown filter, or a value naming nothing the caller can see, is a 400
/// naming the filter.
pub fn ops_filter(r: &impl Read, req: &Req, ctx: &Ctx) -> AppResult<backups::Filter> {
    req.only_filters(&OPS_FILTERS)?;
    let unknown = super::unknown_filter;
    let mut filter = backups::Filter::default();
    if let Some(status) = req.text_filter("status") {
        filter.status = Some(backups::BackupStatus::parse(&status).ok_or_else(|| {
            AppError::bad_request(format!(
                "status must be one of {} (not {:?})",
                backups::BackupStatus::ALL.map(|s| s.as_str()).join(", "),
                status.chars().take(40).collect::<String>()
            ))
        })?);
    }
    filter.project_id = super::project_filter(r, req, ctx)?;
    if let Some(server) = req.text_filter("server") {
        let by_id = r.get::<Server>(&server)?;
        let by_name = match (&by_id, &filter.project_id) {
            (None, Some(project_id)) => servers::by_name(r, project_id, &server)?,
            _ => None,
        };
        match by_id.or(by_name) {
            Some(found) => {
                if !policy::can(&ctx.subject, Action::ViewServers, Some(&found.project_id)) {
                    return Err(unknown("server", &server));
                }
                filter.server_id = Some(found.id);
            }
            None => {
                let agent = agents::find_visible(r, &ctx.subject, &server)
                    .map_err(|_| unknown("server", &server))?;
                filter.agent_id = Some(agent.id);
            }
        }
    }
    Ok(filter)
}

/// `GET /api/v1/backups[?project=…][&server=…][&status=…]`: one page of the backups
/// the caller may see, newest first.
pub fn backups_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let filter = ops_filter(r, req, ctx)?;
        let page = backups::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        Ok((
            page.items.iter().map(backups::view).collect::<Vec<_>>(),
            page.next,
        ))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/backups/{id}`.
pub fn backup(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let backup = app
        .store
        .read(|r| Ok(backups::get_visible(r, &ctx.subject, id)?))?;
    Ok(reply(StatusCode::OK, &backups::view(&backup)))
}

/// The backup records of new backup executions.
fn backup_views(app: &App, executions: &[Execution]) -> AppResult<Vec<serde_json::Value>> {
    Ok(app.store.read(|r| {
        let mut out = Vec::new();
        for e in executions {
            if let Some(b) = backups::of_execution(r, &e.id)? {
                out.push(backups::view(&b));
            }
        }
        Ok(out)
    })?)
}

/// `POST /api/v1/servers/{id}/backup`: the project's backup on that server → 201 the
/// backup record (`status: running`, `execution_id` to watch).
pub fn server_backup(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let execution = app.store.write(|w| {
        Ok(backups::start_for_server(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
        )?)
    })?;
    app.fleet.dispatch(&execution);
    let views = backup_views(app, std::slice::from_ref(&execution))?;
    Ok(reply(
        StatusCode::CREATED,
        &views.into_iter().next().unwrap_or_default(),
    ))
}

/// `POST /api/v1/projects/{id}/backup`: the backup on every agent of the project.
pub fn project_backup(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let executions = app.store.write(|w| {
        let project = visible_project(w, ctx, id)?;
        Ok(backups::start_for_project(
            w,
            &ctx.actor(req),
            &ctx.subject,
            &project.id,
        )?)
    })?;
    dispatch_all(app, &executions);
    Ok(reply(StatusCode::CREATED, &backup_views(app, &executions)?))
}

fn execution_reply(app: &App, execution: &Execution) -> AppResult<Resp> {
    let view = app.store.read(|r| execution_view(r, execution))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `POST /api/v1/backups/{id}/verify` → 201 the verify execution.
pub fn backup_verify(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let execution = app
        .store
        .write(|w| Ok(backups::start_verify(w, &ctx.actor(req), &ctx.subject, id)?))?;
    app.fleet.dispatch(&execution);
    execution_reply(app, &execution)
}

/// The body of `POST /api/v1/backups/{id}/restore`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RestoreInput {
    /// Must be `RESTORE`.
    pub confirm: Option<String>,
}

/// `POST /api/v1/backups/{id}/restore` `{"confirm": "RESTORE"}` → 201 the restore execution.
pub fn backup_restore(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let input: RestoreInput = if req.body.is_empty() {
        RestoreInput::default()
    } else {
        req.json()?
    };
    let execution = app.store.write(|w| {
        Ok(backups::start_restore(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            input.confirm.as_deref(),
        )?)
    })?;
    app.fleet.dispatch(&execution);
    execution_reply(app, &execution)
}

/// `GET /api/v1/projects/{id}/backup-recipe` (`null` when unset).
pub fn recipe(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let recipe = app.store.read(|r| {
        let project = visible_project(r, ctx, id)?;
        backups::recipe(r, &project.id)
    })?;
    Ok(reply(StatusCode::OK, &recipe))
}

/// `PUT /api/v1/projects/{id}/backup-recipe`.
pub fn save_recipe(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = app.store.read(|r| Ok(visible_project(r, ctx, id)?))?;
    if !policy::can(&ctx.subject, Action::EditProject, Some(&project.id)) {
        return Err(AppError::forbidden());
    }
    let input: RecipeInput = req.json()?;
    let recipe = app.store.write(|w| {
        let project = visible_project(w, ctx, id)?;
        Ok(backups::save_recipe(
            w,
            &ctx.actor(req),
            &ctx.subject,
            &project.id,
            &input,
        )?)
    })?;
    Ok(reply(StatusCode::OK, &recipe))
}

/// The body of the update endpoints.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateInput {
    /// Only list what would be upgraded.
    pub check: Option<bool>,
}

fn update_input(req: &Req) -> AppResult<UpdateInput> {
    if req.body.is_empty() {
        Ok(UpdateInput::default())
    } else {
        req.json()
    }
}

fn update_views(app: &App, executions: &[Execution]) -> AppResult<Vec<serde_json::Value>> {
    Ok(app.store.read(|r| {
        let mut out = Vec::new();
        for e in executions {
            if let crate::executions::Work::SystemUpdate { update_id, .. } = &e.work {
                if let Some(u) = r.get::<updates::Update>(update_id)? {
                    out.push(updates::view(&u));
                }
            }
        }
        Ok(out)
    })?)
}

/// `POST /api/v1/servers/{id}/update` `{"check"?}` → 201 the update record.
pub fn server_update(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let input = update_input(req)?;
    let execution = app.store.write(|w| {
        Ok(updates::start_for_server(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            input.check.unwrap_or(false),
        )?)
    })?;
    app.fleet.dispatch(&execution);
    let views = update_views(app, std::slice::from_ref(&execution))?;
    Ok(reply(
        StatusCode::CREATED,
        &views.into_iter().next().unwrap_or_default(),
    ))
}

/// `POST /api/v1/projects/{id}/update` → 201 the update records.
pub fn project_update(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let input = update_input(req)?;
    let executions = app.store.write(|w| {
        let project = visible_project(w, ctx, id)?;
        Ok(updates::start_for_project(
            w,
            &ctx.actor(req),
            &ctx.subject,
            &project.id,
            input.check.unwrap_or(false),
        )?)
    })?;
    dispatch_all(app, &executions);
    Ok(reply(StatusCode::CREATED, &update_views(app, &executions)?))
}

/// `GET /api/v1/updates[?project=…][&server=…][&status=…]`: one page of the system
/// updates the caller may see, newest first.
pub fn updates_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let filter = ops_filter(r, req, ctx)?;
        let page = updates::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        Ok((
            page.items.iter().map(updates::view).collect::<Vec<_>>(),
            page.next,
        ))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/updates/{id}`.
pub fn update(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let update = app
        .store
        .read(|r| Ok(updates::get_visible(r, &ctx.subject, id)?))?;
    Ok(reply(StatusCode::OK, &updates::view(&update)))
}

/// The project's schedules: `{"backup": {cron, description, next_run} | null, "update": …}`.
pub fn schedules_view(r: &impl Read, project_id: &str) -> anyhow::Result<serde_json::Value> {
    let (backup, update) = schedules::of_project(r, project_id)?;
    let now = Utc::now();
    Ok(json!({
        "backup": schedules::view(backup.as_ref(), now),
        "update": schedules::view(update.as_ref(), now),
    }))
}

/// `GET /api/v1/projects/{id}/schedules`.
pub fn schedules_get(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let project = visible_project(r, ctx, id)?;
        schedules_view(r, &project.id)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// The body of `PUT /api/v1/projects/{id}/schedules`: a cron expression per kind;
/// `null` or `""` removes it, an absent key leaves it as it is.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SchedulesInput {
    #[serde(default, with = "serde_double_option")]
    pub backup: Option<Option<String>>,
    #[serde(default, with = "serde_double_option")]
    pub update: Option<Option<String>>,
}

mod serde_double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Ok(Some(Option::<String>::deserialize(d)?))
    }
}

/// `PUT /api/v1/projects/{id}/schedules`.
pub fn schedules_put(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = app.store.read(|r| Ok(visible_project(r, ctx, id)?))?;
    // Decided here too, so an empty change is refused like any other.
    if !policy::can(&ctx.subject, Action::OperateServers, Some(&project.id)) {
        return Err(AppError::forbidden());
    }
    let input: SchedulesInput = req.json()?;
    let view = app.store.write(|w| {
        let project = visible_project(w, ctx, &project.id)?;
        let now = Utc::now();
        for (kind, value) in [
            (ScheduleKind::Backup, &input.backup),
            (ScheduleKind::Update, &input.update),
        ] {
            if let Some(cron) = value {
                schedules::set(
                    w,
                    &ctx.actor(req),
                    &ctx.subject,
                    &project.id,
                    kind,
                    cron.as_deref(),
                    now,
                )?;
            }
        }
        schedules_view(w, &project.id)
    })?;
    Ok(reply(StatusCode::OK, &view))
}
