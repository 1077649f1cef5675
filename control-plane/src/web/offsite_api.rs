//! JSON API of off-site backup storage: a project's settings and their test, pruning
//! now, and the off-site actions on a backup (upload again, verify, restore from the
//! copy, also onto another server). The work lives in `offsite` and `backups`.

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;

use super::fleet_api::execution_view;
use super::ssh_api::project_for;
use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::backups::{self, RestoreFrom};
use crate::error::{AppError, AppResult};
use crate::executions::Execution;
use crate::offsite::{self, SettingsInput};
use crate::policy::Action;

/// `GET /api/v1/projects/{id}/offsite`: the settings the project uses without the
/// secret key (`"default": true` when they are the default storage's); 404 while it
/// has none.
pub fn get_settings(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ViewServers)?;
    match app.store.read(|r| offsite::settings(r, &project.id))? {
        Some(s) => Ok(reply(StatusCode::OK, &offsite::settings_view(Some(&s)))),
        None => Err(AppError::not_found("off-site settings")),
    }
}

/// `PUT /api/v1/projects/{id}/offsite` `{"endpoint", "bucket", "prefix"?, "region"?,
/// "access_key", "secret_key", "keep_daily"?, "keep_weekly"?, "keep_monthly"?}`: 200
/// with what `GET` answers. Needs the project's admin level.
pub fn put_settings(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let input: SettingsInput = req.json()?;
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(offsite::save_settings(w, &actor, &project, &input)?))
        .map_err(AppError::from)?;
    Ok(reply(StatusCode::OK, &offsite::settings_view(Some(&saved))))
}

/// `DELETE /api/v1/projects/{id}/offsite`: forgets the settings (copies already made
/// stay in the bucket, and need the backup key, which goes with them).
pub fn delete_settings(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let actor = ctx.actor(req);
    let removed = app.store.write(|w| {
        let removed = w.delete::<offsite::ProjectOffsite>(&project.id)?;
        if removed {
            crate::audit::record(
                w,
                &actor,
                "project.offsite_delete",
                &format!("project:{}", project.name),
                "",
            )?;
        }
        Ok(removed)
    })?;
    if !removed {
        return Err(AppError::not_found("off-site settings"));
    }
    Ok(reply(StatusCode::OK, &json!({"deleted": true})))
}

/// `POST /api/v1/projects/{id}/offsite/test`: `200 {"ok", "error"?}` after writing,
/// reading back and deleting a probe object with the settings the project uses.
pub async fn test(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let settings = app
        .store
        .read(|r| offsite::settings(r, &project.id))?
        .ok_or_else(|| AppError::conflict("this project has no off-site storage yet"))?;
    Ok(reply(StatusCode::OK, &offsite::test(&settings).await))
}

/// Only those who may create projects set the default storage the projects use that
/// have none of their own.
fn require_default_admin(ctx: &Ctx) -> AppResult<()> {
    super::fleet_api::require_fleet(ctx)?;
    if crate::policy::can(&ctx.subject, Action::CreateProject, None) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// `GET /api/v1/offsite`: the default storage, without its secret; 404 when unset.
pub fn get_default(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    require_default_admin(ctx)?;
    match app.store.read(offsite::default_settings)? {
        Some(s) => Ok(reply(StatusCode::OK, &offsite::settings_view(Some(&s)))),
        None => Err(AppError::not_found("default off-site settings")),
    }
}

/// `PUT /api/v1/offsite`: the default storage, the same body as a project's.
pub fn put_default(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_default_admin(ctx)?;
    let input: SettingsInput = req.json()?;
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(offsite::save_default(w, &actor, &input)?))
        .map_err(AppError::from)?;
    Ok(reply(StatusCode::OK, &offsite::settings_view(Some(&saved))))
}

/// `DELETE /api/v1/offsite`: forgets the default storage.
pub fn delete_default(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_default_admin(ctx)?;
    let actor = ctx.actor(req);
    let removed = app.store.write(|w| {
        let removed = w.delete::<offsite::ProjectOffsite>(offsite::DEFAULT_ID)?;
        if removed {
            crate::audit::record(w, &actor, "project.offsite_delete", "offsite:default", "")?;
        }
        Ok(removed)
    })?;
    if !removed {
        return Err(AppError::not_found("default off-site settings"));
    }
    Ok(reply(StatusCode::OK, &json!({"deleted": true})))
}

/// `POST /api/v1/offsite/test`: the Test of the default storage.
pub async fn test_default(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    require_default_admin(ctx)?;
    let settings = app
        .store
        .read(offsite::default_settings)?
        .ok_or_else(|| AppError::conflict("no default off-site storage is set"))?;
    Ok(reply(StatusCode::OK, &offsite::test(&settings).await))
}

/// `POST /api/v1/projects/{id}/offsite/prune`: applies the retention now →
/// `200 {"deleted": [keys], "kept", "errors": [...]}`.
pub async fn prune(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::OperateServers)?;
    let settings = app
        .store
        .read(|r| offsite::settings(r, &project.id))?
        .ok_or_else(|| AppError::conflict("this project has no off-site storage"))?;
    let pruned = backups::prune_project(app, &settings, chrono::Utc::now()).await;
    Ok(reply(StatusCode::OK, &pruned))
}

fn execution_reply(app: &App, execution: &Execution) -> AppResult<Resp> {
    app.fleet.dispatch(execution);
    let view = app.store.read(|r| execution_view(r, execution))?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `POST /api/v1/backups/{id}/offsite/upload`: uploads a failed or pending copy again
/// now → 201 the upload execution.
pub fn upload(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let execution = app.store.write(|w| {
        Ok(backups::start_offsite_upload(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
        )?)
    })?;
    execution_reply(app, &execution)
}

/// The body of the off-site verify and restore calls.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OffsiteInput {
    /// Must be `RESTORE` for a restore.
    pub confirm: Option<String>,
    /// Another server (id or agent) of the project to run on.
    pub server: Option<String>,
}

fn input(req: &Req) -> AppResult<OffsiteInput> {
    if req.body.is_empty() {
        Ok(OffsiteInput::default())
    } else {
        req.json()
    }
}

/// `POST /api/v1/backups/{id}/offsite/verify` `{"server"?}`: downloads, decrypts and
/// checks the copy on the backup's server (or `server`) → 201 the verify execution.
pub fn verify(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let body = input(req)?;
    let execution = app.store.write(|w| {
        Ok(backups::start_offsite_verify(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            body.server.as_deref(),
        )?)
    })?;
    execution_reply(app, &execution)
}

/// `POST /api/v1/backups/{id}/offsite/restore` `{"confirm": "RESTORE", "server"?}`:
/// restores from the off-site copy onto the backup's server or another one of the
/// project → 201 the restore execution.
pub fn restore(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let body = input(req)?;
    let from = RestoreFrom {
        offsite: true,
        onto: body.server.clone(),
    };
    let execution = app.store.write(|w| {
        Ok(backups::start_restore_from(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            body.confirm.as_deref(),
            &from,
        )?)
    })?;
    execution_reply(app, &execution)
}
