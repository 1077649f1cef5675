//! Pages of off-site backup storage: the panel on the project page, the settings form
//! with its "Test" button, and the off-site buttons of a backup's page (upload again,
//! verify, restore from the copy onto a chosen server of the project).

use serde_json::{json, Map, Value};

use super::pages::{page, rerender};
use super::ssh_api::project_for;
use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::backups::{self, RestoreFrom};
use crate::error::{AppError, AppResult, Kind};
use crate::offsite::{self, SettingsInput};
use crate::policy::{self, Action};
use crate::projects::Project;

/// The `offsite` part of the project page: the settings (never the secret) and
/// whether the caller may change and test them.
pub fn project_panel(app: &App, ctx: &Ctx, project_id: &str) -> AppResult<Value> {
    if !policy::can(&ctx.subject, Action::ViewServers, Some(project_id)) {
        return Ok(Value::Null);
    }
    let settings = app.store.read(|r| offsite::settings(r, project_id))?;
    Ok(json!({
        "settings": offsite::settings_view(settings.as_ref()),
        "can_edit": policy::can(&ctx.subject, Action::EditProject, Some(project_id)),
        "can_prune": policy::can(&ctx.subject, Action::OperateServers, Some(project_id)),
    }))
}

fn settings_page(app: &App, req: &Req, project: &Project) -> AppResult<(Value, String)> {
    let settings = app.store.read(|r| offsite::settings(r, &project.id))?;
    let view = offsite::settings_view(settings.as_ref());
    let retention = settings.as_ref().map(|s| s.retention).unwrap_or_default();
    let text = |field: &str| {
        view.get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok((
        json!({
            "project": {"id": project.id, "name": project.name},
            // The default storage's values are offered, but saving makes them the
            // project's own, with a secret of its own.
            "settings": if settings.as_ref().is_some_and(|s| s.inherited) { Value::Null } else { view.clone() },
            "values": {
                "endpoint": text("endpoint"),
                "bucket": text("bucket"),
                "prefix": text("prefix"),
                "region": if settings.is_some() { text("region") } else { String::new() },
                "access_key": text("access_key"),
                "keep_daily": retention.daily.to_string(),
                "keep_weekly": retention.weekly.to_string(),
                "keep_monthly": retention.monthly.to_string(),
            },
            "errors": {},
            "error": null,
            "path": req.path,
        }),
        format!("Off-site backups · {}", project.name),
    ))
}

/// `GET /projects/{id}/offsite`: the settings form.
pub fn settings_form(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let (data, title) = settings_page(app, req, &project)?;
    page(app, req, ctx, "offsite/settings", &title, data)
}

/// `POST /projects/{id}/offsite`: saves the settings (the form re-renders with each
/// problem beside its field; the secret key is never sent back).
pub fn settings_save(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let number = |field: &str| -> Option<u32> {
        form.get(field)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<u32>().unwrap_or(u32::MAX))
    };
    let input = SettingsInput {
        endpoint: form.get("endpoint").map(String::from),
        bucket: form.get("bucket").map(String::from),
        prefix: form.get("prefix").map(String::from),
        region: form.get("region").map(String::from),
        access_key: form.get("access_key").map(String::from),
        secret_key: form.get("secret_key").map(String::from),
        keep_daily: number("keep_daily"),
        keep_weekly: number("keep_weekly"),
        keep_monthly: number("keep_monthly"),
    };
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(offsite::save_settings(w, &actor, &project, &input)?))
        .map_err(AppError::from);
    match saved {
        Ok(s) => Ok(redirect(
            &format!("/projects/{}", project.id),
            Some((
                "success",
                &format!(
                    "Off-site storage saved ({} bucket {}). Use Test to check it.",
                    s.endpoint, s.bucket
                ),
            )),
        )),
        Err(e) => {
            let (data, title) = settings_page(app, req, &project)?;
            let mut values: Map<String, Value> = form.values();
            // The secret is never shown again, not even after a typo.
            values.remove("secret_key");
            values.remove("csrf");
            rerender(app, req, ctx, e, "offsite/settings", &title, data, values)
        }
    }
}

/// `POST /projects/{id}/offsite/test`: writes, reads back and deletes a probe object,
/// then goes back to the project page with the outcome.
pub async fn test(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let back = format!("/projects/{}", project.id);
    let Some(settings) = app.store.read(|r| offsite::settings(r, &project.id))? else {
        return Ok(redirect(
            &back,
            Some(("danger", "Set up the off-site storage first.")),
        ));
    };
    let answer = offsite::test(&settings).await;
    Ok(if answer["ok"] == json!(true) {
        redirect(
            &back,
            Some((
                "success",
                &format!(
                    "Off-site storage works: a probe object was written to {} bucket {}, read back and deleted.",
                    settings.endpoint, settings.bucket
                ),
            )),
        )
    } else {
        redirect(
            &back,
            Some((
                "danger",
                &format!(
                    "Off-site test failed: {}",
                    answer["error"].as_str().unwrap_or("unknown error")
                ),
            )),
        )
    })
}

/// `POST /projects/{id}/offsite/delete`: forgets the settings.
pub fn settings_delete(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let actor = ctx.actor(req);
    app.store.write(|w| {
        if w.delete::<offsite::ProjectOffsite>(&project.id)? {
            crate::audit::record(
                w,
                &actor,
                "project.offsite_delete",
                &format!("project:{}", project.name),
                "",
            )?;
        }
        Ok(())
    })?;
    Ok(redirect(
        &format!("/projects/{}", project.id),
        Some(("info", "Off-site storage settings removed.")),
    ))
}

/// Goes to the new execution, or back to the backup with the reason it could not start.
fn after(
    app: &App,
    result: AppResult<crate::executions::Execution>,
    back: &str,
) -> AppResult<Resp> {
    match result {
        Ok(e) => {
            app.fleet.dispatch(&e);
            Ok(redirect(&format!("/executions/{}", e.id), None))
        }
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::Conflict) => {
            Ok(redirect(back, Some(("danger", &e.message))))
        }
        Err(e) => Err(e),
    }
}

/// `POST /backups/{id}/offsite/{upload|verify|restore}` from the backup's page.
pub fn backup_action(app: &App, req: &Req, ctx: &Ctx, id: &str, action: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let actor = ctx.actor(req);
    let server = form.get("server").map(String::from);
    let confirm = form.get("confirm").map(String::from);
    let result = app
        .store
        .write(|w| {
            Ok(match action {
                "upload" => backups::start_offsite_upload(w, &actor, &ctx.subject, id)?,
                "verify" => {
                    backups::start_offsite_verify(w, &actor, &ctx.subject, id, server.as_deref())?
                }
                _ => backups::start_restore_from(
                    w,
                    &actor,
                    &ctx.subject,
                    id,
                    confirm.as_deref(),
                    &RestoreFrom {
                        offsite: true,
                        onto: server.clone(),
                    },
                )?,
            })
        })
        .map_err(AppError::from);
    after(app, result, &format!("/backups/{id}"))
}

/// The servers with an agent in the backup's project, for the restore's choice.
pub fn restore_targets(
    r: &impl crate::store::Read,
    project_id: &str,
) -> anyhow::Result<Vec<Value>> {
    Ok(backups::agents_of_project(r, project_id)?
        .into_iter()
        .map(|a| json!({"id": a.id, "name": a.name}))
        .collect())
}
