//! JSON API of drift detection: `PUT/DELETE /api/v1/scripts/{id}/desired-state`,
//! `GET /api/v1/scripts/{id}/desired-state`, `POST /api/v1/scripts/{id}/drift-check`,
//! `GET /api/v1/drift`, `GET /api/v1/drift/{id}` (one report) and
//! `POST /api/v1/drift/{id}/apply`. Thin: parse, authorize, call `drift`.

use chrono::Utc;
use serde_json::json;
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::drift::{self, DesiredInput, DriftStatus};
use crate::error::{AppError, AppResult};
use crate::executions::Execution;
use crate::policy::{self, Action};
use crate::store::Read;

/// The filters of the drift list (API and page).
pub const FILTERS: [&str; 4] = ["project", "status", "script", "server"];

/// Drift is fleet work: a caller without the fleet (a sales agent) is refused before
/// anything is looked up.
pub fn require_fleet(ctx: &Ctx) -> AppResult<()> {
    if policy::can(&ctx.subject, Action::UseFleet, None)
        && policy::can(&ctx.subject, Action::ViewServers, None)
    {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Reads the drift list's filters; an unknown filter or value is a 400.
pub fn filter(app: &App, req: &Req, ctx: &Ctx) -> AppResult<drift::Filter> {
    req.only_filters(&FILTERS)?;
    let status = match req.text_filter("status") {
        Some(text) => Some(DriftStatus::parse(&text).ok_or_else(|| {
            AppError::bad_request(format!(
                "status must be one of {} (not {:?})",
                DriftStatus::ALL.map(|s| s.as_str()).join(", "),
                text.chars().take(40).collect::<String>()
            ))
        })?),
        None => None,
    };
    let filter = app.store.read(|r| {
        let project_id = super::project_filter(r, req, ctx)?;
        let script_id = match req.text_filter("script") {
            Some(key) => Some(
                crate::scripts::get_visible(r, &ctx.subject, &key)
                    .map_err(|_| super::unknown_filter("script", &key))?
                    .id,
            ),
            None => None,
        };
        let server_id = match req.text_filter("server") {
            Some(key) => Some(
                r.get::<crate::servers::Server>(&key)?
                    .filter(|s| policy::can(&ctx.subject, Action::ViewServers, Some(&s.project_id)))
                    .ok_or_else(|| super::unknown_filter("server", &key))?
                    .id,
            ),
            None => None,
        };
        Ok(drift::Filter {
            project_id,
            status,
            script_id,
            server_id,
        })
    })?;
    Ok(filter)
}

/// `GET /api/v1/drift`: `[{"server", "script", "status", "changed", "checked_at",
/// "execution", ...}]`, paged.
pub fn list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let paging = req.paging()?;
    let filter = filter(app, req, ctx)?;
    let (items, next) = app.store.read(|r| {
        let page = drift::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let items = page
            .items
            .iter()
            .map(|d| drift::view(r, d, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((items, page.next))
    })?;
    Ok(super::json_page(req, &items, next.as_deref()))
}

/// `GET /api/v1/drift/{id}`: one server × script's last report, with its tasks.
pub fn get(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let result = drift::get_visible(r, &ctx.subject, id)?;
        drift::view(r, &result, true)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `PUT /api/v1/scripts/{id}/desired-state`.
pub fn put_desired(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let input: DesiredInput = req.json()?;
    let view = app.store.write(|w| {
        let state = drift::set(w, &ctx.actor(req), &ctx.subject, id, &input, Utc::now())?;
        drift::state_view(w, &state, Utc::now())
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `GET /api/v1/scripts/{id}/desired-state`: 404 when the script is none.
pub fn get_desired(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let script = crate::scripts::get_visible(r, &ctx.subject, id)?;
        let state =
            drift::of_script(r, &script.id)?.ok_or_else(|| AppError::not_found("desired state"))?;
        if !policy::can(&ctx.subject, Action::ViewServers, Some(&state.project_id)) {
            return Err(AppError::not_found("desired state").into());
        }
        drift::state_view(r, &state, Utc::now())
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `DELETE /api/v1/scripts/{id}/desired-state`.
pub fn delete_desired(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    app.store
        .write(|w| Ok(drift::stop(w, &ctx.actor(req), &ctx.subject, id)?))?;
    Ok(reply(StatusCode::OK, &json!({"stopped": true})))
}

/// Starts a check now (every target, or one server), dispatches it: the executions.
pub fn start_check(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    server: Option<&str>,
) -> AppResult<Vec<Execution>> {
    let executions = app.store.write(|w| {
        Ok(drift::check_now(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            server,
        )?)
    })?;
    // The jobs read together (one copy of the script's files and inventory).
    let specs = app
        .store
        .read(|r| crate::scripts::job_specs_with_secrets(r, &executions))?;
    app.fleet.dispatch_many(executions.clone(), specs);
    Ok(executions)
}

/// `POST /api/v1/scripts/{id}/drift-check` (optional body `{"server": ID}`) → 202
/// `{"id", "executions"}`: `id` is the first check's execution.
pub fn check(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Input {
        server: Option<String>,
    }
    let input: Input = if req.body.is_empty() {
        Input::default()
    } else {
        req.json()?
    };
    let executions = start_check(app, req, ctx, id, input.server.as_deref())?;
    let ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({"id": ids.first(), "executions": ids}),
    ))
}

/// Runs Apply on a result's server and dispatches it.
pub fn start_apply(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Execution> {
    let execution = app
        .store
        .write(|w| Ok(drift::apply(w, &ctx.actor(req), &ctx.subject, id)?))?;
    app.fleet.dispatch(&execution);
    Ok(execution)
}

/// `POST /api/v1/drift/{id}/apply` → 202 `{"id"}` (the execution).
pub fn apply(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let execution = start_apply(app, req, ctx, id)?;
    Ok(reply(StatusCode::ACCEPTED, &json!({"id": execution.id})))
}
