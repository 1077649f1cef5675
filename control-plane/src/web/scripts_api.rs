//! JSON API of deployment scripts and rollouts: `GET/POST /api/v1/scripts`,
//! `GET/PUT /api/v1/scripts/{id}`, `POST /api/v1/scripts/{id}/run`,
//! `GET /api/v1/rollouts/{id}`. Thin: parse, authorize, call `scripts` / `rollouts`.

use serde_json::json;
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action};
use crate::rollouts::{self, RunInput};
use crate::scripts::{self, ScriptInput, ScriptKind};

/// Scripts are fleet work: a caller without the fleet (a sales agent) is refused
/// before anything is looked up.
fn require_fleet(ctx: &Ctx) -> AppResult<()> {
    if policy::can(&ctx.subject, Action::UseFleet, None)
        && (policy::can(&ctx.subject, Action::ViewServers, None)
            || policy::can(&ctx.subject, Action::ManageScripts, None))
    {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// A body that does not validate answers 422 with the line and column of the error.
fn body_error(input: &ScriptInput, old: Option<&scripts::Script>) -> Option<Resp> {
    let old_kind = old.map(|o| o.kind);
    let allow_fallback = input
        .allow_ansible_fallback
        .or(old.map(|o| o.allow_ansible_fallback))
        .unwrap_or(false);
    let kind = input
        .kind
        .as_deref()
        .and_then(ScriptKind::parse)
        .or(old_kind)
        .unwrap_or(ScriptKind::Playbook);
    let body = input.body.as_deref()?.replace("\r\n", "\n");
    let err = scripts::check_body(kind, &body, allow_fallback).err()?;
    Some(reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "error": err.display(),
            "field": "body",
            "message": err.message,
            "line": err.line,
            "column": err.column,
        }),
    ))
}

/// `GET /api/v1/scripts[?q=TEXT][&project=ID|NAME]`: with `project`, the scripts that
/// run on that project (its own and the global ones); an unknown project is 400, as
/// is one the caller may not see.
pub fn list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    req.only_filters(&["project", "q"])?;
    let paging = req.paging()?;
    let q = req.text_filter("q").unwrap_or_default().to_lowercase();
    let (views, next) = app.store.read(|r| {
        let project = match req.text_filter("project") {
            Some(key) => Some(
                crate::projects::find(r, &key)?
                    .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
                    .ok_or_else(|| AppError::bad_request(format!("unknown project {key:?}")))?,
            ),
            None => None,
        };
        let matching: Vec<scripts::Script> = scripts::visible(r, &ctx.subject)?
            .into_iter()
            .filter(|s| match &project {
                Some(p) => s.project_id.as_ref().is_none_or(|id| *id == p.id),
                None => true,
            })
            .filter(|s| {
                q.is_empty()
                    || s.name.to_lowercase().contains(&q)
                    || s.description.to_lowercase().contains(&q)
            })
            .collect();
        let page = crate::listing::page_of_all(
            matching,
            |s| crate::listing::name_position(&s.name, &s.id),
            paging.cursor.as_deref(),
            paging.limit,
        );
        let views = page
            .items
            .iter()
            .map(|s| scripts::view(r, s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((views, page.next))
    })?;
    Ok(super::json_page(req, &views, next.as_deref()))
}

/// `POST /api/v1/scripts`: the caller's right to the scope comes first, then the body
/// (422 with line and column), then the other fields.
pub fn create(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let input: ScriptInput = req.json()?;
    app.store
        .read(|r| Ok(scripts::authorize_save(r, &ctx.subject, &input, None)?))?;
    if let Some(resp) = body_error(&input, None) {
        return Ok(resp);
    }
    let view = app.store.write(|w| {
        let script = scripts::create(w, &ctx.actor(req), &ctx.subject, &input)?;
        scripts::view(w, &script)
    })?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/scripts/{id}`.
pub fn get(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let script = scripts::get_visible(r, &ctx.subject, id)?;
        scripts::view(r, &script)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `PUT /api/v1/scripts/{id}`.
pub fn update(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let input: ScriptInput = req.json()?;
    let old = app.store.read(|r| {
        let old = scripts::get_visible(r, &ctx.subject, id)?;
        scripts::authorize_save(r, &ctx.subject, &input, Some(&old))?;
        Ok(old)
    })?;
    if let Some(resp) = body_error(&input, Some(&old)) {
        return Ok(resp);
    }
    let view = app.store.write(|w| {
        let script = scripts::update(w, &ctx.actor(req), &ctx.subject, id, &input)?;
        scripts::view(w, &script)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// Starts a rollout and dispatches its first batch; shared with the Run page.
pub fn start_rollout(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    script_id: &str,
    input: &RunInput,
) -> AppResult<rollouts::Rollout> {
    let (rollout, started) = app.store.write(|w| {
        Ok(rollouts::create(
            app,
            w,
            &ctx.actor(req),
            &ctx.subject,
            script_id,
            input,
        )?)
    })?;
    for execution in &started {
        app.fleet.dispatch(execution);
    }
    Ok(rollout)
}

/// `POST /api/v1/scripts/{id}/run` → `201` the rollout with its executions.
pub fn run(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    if !policy::can(&ctx.subject, Action::OperateServers, None) {
        return Err(AppError::forbidden());
    }
    let input: RunInput = req.json()?;
    let rollout = start_rollout(app, req, ctx, id, &input)?;
    let view = app
        .store
        .read(|r| rollouts::view(r, &ctx.subject, &rollout))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/rollouts/{id}`.
pub fn rollout(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let rollout = rollouts::get_visible(r, &ctx.subject, id)?;
        rollouts::view(r, &ctx.subject, &rollout)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// The rollouts list's filters from the query (`status`, `script`, `project`); an
/// unknown value is a 400.
pub fn rollout_filter(app: &App, req: &Req, ctx: &Ctx) -> AppResult<rollouts::Filter> {
    req.only_filters(&["status", "script", "project"])?;
    let status = match req.text_filter("status") {
        Some(text) => Some(
            rollouts::RolloutStatus::parse(&text)
                .ok_or_else(|| super::unknown_filter("status", &text))?,
        ),
        None => None,
    };
    let (script_id, project_id) = app.store.read(|r| {
        let script = match req.text_filter("script") {
            Some(key) => Some(
                crate::scripts::get_visible(r, &ctx.subject, &key)
                    .map_err(|_| super::unknown_filter("script", &key))?
                    .id,
            ),
            None => None,
        };
        Ok((script, super::project_filter(r, req, ctx)?))
    })?;
    Ok(rollouts::Filter {
        status,
        script_id,
        project_id,
    })
}

/// `GET /api/v1/rollouts`: newest first, filters `status`, `script`, `project`; each
/// with its targets' statuses and reasons.
pub fn rollouts_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let filter = rollout_filter(app, req, ctx)?;
    let paging = req.paging()?;
    let (views, next) = app.store.read(|r| {
        let page = rollouts::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let views = page
            .items
            .iter()
            .map(|ro| rollouts::view(r, &ctx.subject, ro))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((views, page.next))
    })?;
    Ok(super::json_page(req, &views, next.as_deref()))
}

/// Cancels a rollout and tells the fleet about its running jobs; shared with the page.
pub fn cancel_rollout_now(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
) -> AppResult<rollouts::Rollout> {
    require_fleet(ctx)?;
    let (rollout, cancelled) = app
        .store
        .write(|w| Ok(rollouts::cancel(w, &ctx.actor(req), &ctx.subject, id)?))?;
    for (execution, outcome) in &cancelled {
        match outcome {
            crate::executions::CancelOutcome::CancelledQueued => {
                app.fleet
                    .publish_end(&execution.id, &execution.project_id, "cancelled");
                app.fleet.cancel(execution);
            }
            crate::executions::CancelOutcome::TellAgent => app.fleet.cancel(execution),
        }
    }
    app.fleet
        .events()
        .publish(crate::live::Event::rollout(&rollout));
    Ok(rollout)
}

/// `POST /api/v1/rollouts/{id}/cancel` → `202` with the rollout.
pub fn cancel_rollout(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let rollout = cancel_rollout_now(app, req, ctx, id)?;
    let view = app
        .store
        .read(|r| rollouts::view(r, &ctx.subject, &rollout))?;
    Ok(reply(StatusCode::ACCEPTED, &view))
}

/// Starts the retry of a rollout's failed and skipped targets; shared with the page.
pub fn retry_failed_now(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    input: &rollouts::RetryInput,
) -> AppResult<rollouts::Rollout> {
    require_fleet(ctx)?;
    let (rollout, started) = app.store.write(|w| {
        Ok(rollouts::retry_failed(
            app,
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            input,
        )?)
    })?;
    for execution in &started {
        app.fleet.dispatch(execution);
    }
    Ok(rollout)
}

/// `POST /api/v1/rollouts/{id}/retry-failed` (`{"vars"?}`) → `201` the new rollout.
pub fn retry_failed(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let input: rollouts::RetryInput = if req.body.is_empty() {
        rollouts::RetryInput::default()
    } else {
        req.json()?
    };
    let rollout = retry_failed_now(app, req, ctx, id, &input)?;
    let view = app
        .store
        .read(|r| rollouts::view(r, &ctx.subject, &rollout))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/scripts/{id}/files`: the script's files with their contents (text, or
/// base64 with `"base64": true`), as `PUT /api/v1/scripts/{id}` takes them back.
pub fn files(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let files = app.store.read(|r| {
        let script = scripts::get_visible(r, &ctx.subject, id)?;
        scripts::files_of(r, &script)
    })?;
    Ok(reply(StatusCode::OK, &files))
}

/// `GET /api/v1/scripts/{id}/archive` (and the editor's download link): the script as
/// a `.tar.gz`, its playbook as `playbook.yml` beside its files.
pub fn archive(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let (script, files) = app.store.read(|r| {
        let script = scripts::get_visible(r, &ctx.subject, id)?;
        let files = scripts::files_of(r, &script)?;
        Ok((script, files))
    })?;
    let bytes = crate::script_files::to_archive(&script.body, &files)?;
    let mut resp = Resp::new(bytes.into());
    resp.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/gzip"),
    );
    let slug: String = script
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if let Ok(v) = warp::http::HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.tar.gz\"",
        slug.trim_matches('-')
    )) {
        resp.headers_mut().insert("content-disposition", v);
    }
    Ok(resp)
}

/// `PUT /api/v1/scripts/{id}/archive` with a `.tar.gz` body: the archive's files
/// replace the script's, and its `playbook.yml` (or `site.yml`) the body when it has
/// one. Validated as a save is (422 naming the file).
pub fn upload_archive(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.write(|w| {
        let script =
            scripts::replace_from_archive(w, &ctx.actor(req), &ctx.subject, id, &req.body)?;
        scripts::view(w, &script)
    })?;
    Ok(reply(StatusCode::OK, &view))
}
