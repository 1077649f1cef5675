//! Pages of server operations: backups (list, one backup with its logs, verify and
//! restore), system updates (list, one update with its packages), a project's backup
//! recipe and schedules, and the Backup / Update buttons of servers and projects.
//! Thin: parse the form, call `backups` / `updates` / `schedules` (which authorize),
//! dispatch, redirect to the execution's live log or render.

use chrono::Utc;
use serde_json::{json, Value};

use super::ops_api::{schedules_view, visible_project};
use super::pages::{form_errors_or, page};
use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::backups::{self, Recipe, RecipeInput, RESTORE_CONFIRMATION};
use crate::error::{AppError, AppResult, Kind};
use crate::executions::Execution;
use crate::policy::{self, Action};
use crate::projects::Project;
use crate::schedules::{self, ScheduleKind};
use crate::servers::Server;
use crate::store::Read;
use crate::updates;

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Human size: `12.3 MiB`.
fn human_size(bytes: Option<u64>) -> String {
    let Some(b) = bytes else { return "—".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn names(
    r: &impl Read,
    agent_id: &str,
    server_id: Option<&str>,
    project_id: &str,
) -> anyhow::Result<(String, String)> {
    let server = match server_id {
        Some(id) => r.get::<Server>(id)?.map(|s| s.name),
        None => None,
    };
    let server = match server {
        Some(name) => name,
        None => r
            .get::<crate::agents::Agent>(agent_id)?
            .map(|a| a.name)
            .unwrap_or_else(|| agent_id.to_string()),
    };
    let project = r
        .get::<Project>(project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    Ok((server, project))
}

fn backup_row(r: &impl Read, ctx: &Ctx, b: &backups::Backup) -> anyhow::Result<Value> {
    let (server, project) = names(r, &b.agent_id, b.server_id.as_deref(), &b.project_id)?;
    let mut v = backups::view(b);
    v["server_name"] = json!(server);
    v["project_name"] = json!(project);
    v["size_text"] = json!(human_size(b.size));
    // Templates are strict: the off-site part is always there, null without one.
    v["offsite"] = match &b.offsite {
        Some(copy) => {
            let mut o = json!(copy);
            o["size_text"] = json!(human_size(copy.size));
            o["usable"] =
                json!(copy.status == backups::OffsiteStatus::Done && copy.pruned_at.is_none());
            o["can_upload"] = json!(
                b.status == backups::BackupStatus::Succeeded
                    && !b.removed
                    && matches!(
                        copy.status,
                        backups::OffsiteStatus::Failed | backups::OffsiteStatus::Pending
                    )
            );
            o
        }
        None => Value::Null,
    };
    v["sha256_short"] = json!(b
        .sha256
        .as_deref()
        .map(|s| &s[..12.min(s.len())])
        .unwrap_or("—"));
    v["status_text"] = json!(match b.status {
        backups::BackupStatus::Running => "running",
        backups::BackupStatus::Succeeded => "succeeded",
        backups::BackupStatus::Failed => "failed",
    });
    v["usable"] = json!(b.status == backups::BackupStatus::Succeeded && !b.removed);
    v["can_operate"] = json!(policy::can(
        &ctx.subject,
        Action::OperateServers,
        Some(&b.project_id)
    ));
    v["duration_text"] = json!(b
        .duration_s()
        .map(|d| format!("{d:.1} s"))
        .unwrap_or_else(|| "—".into()));
    Ok(v)
}

/// The filter form's part of a backup or update list page's context: the values
/// given (empty when not: templates are strict), the projects and statuses to choose
/// from, and whether anything narrows the list.
fn ops_filter_context(r: &impl Read, req: &Req, ctx: &Ctx) -> anyhow::Result<Value> {
    let given = |name: &str| req.text_filter(name).unwrap_or_default();
    let project = given("project");
    let projects: Vec<Value> = crate::projects::all(r)?
        .into_iter()
        .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
        .map(|p| {
            let selected = project == p.id || project == p.name;
            json!({"id": p.id, "name": p.name, "selected": selected})
        })
        .collect();
    Ok(json!({
        "filters": {"project": project, "server": given("server"), "status": given("status")},
        "projects": projects,
        "statuses": backups::BackupStatus::ALL.map(|s| s.as_str()),
        "filtered": super::ops_api::OPS_FILTERS.iter().any(|n| req.text_filter(n).is_some()),
    }))
}

/// `GET /backups[?project=…][&server=…][&status=…]`: one page of backups, newest
/// first, with a filter form and a pager.
pub fn backups_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(50)?;
    let data = app.store.read(|r| {
        let filter = super::ops_api::ops_filter(r, req, ctx)?;
        let page = backups::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let rows = page
            .items
            .iter()
            .map(|b| backup_row(r, ctx, b))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut data = ops_filter_context(r, req, ctx)?;
        data["backups"] = json!(rows);
        data["pager"] = req.pager(&paging, page.next.as_deref());
        Ok(data)
    })?;
    page(app, req, ctx, "backups", "Backups", data)
}

/// `GET /backups/{id}`.
pub fn backup_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let (row, has_restore, servers) = app.store.read(|r| {
        let backup = backups::get_visible(r, &ctx.subject, id)?;
        let has_restore =
            backups::recipe(r, &backup.project_id)?.is_some_and(|r| r.restore_command.is_some());
        let servers = super::offsite_pages::restore_targets(r, &backup.project_id)?;
        Ok((backup_row(r, ctx, &backup)?, has_restore, servers))
    })?;
    let title = format!(
        "Backup of {}/{}",
        row["compose_project"].as_str().unwrap_or(""),
        row["service"].as_str().unwrap_or("")
    );
    page(
        app,
        req,
        ctx,
        "backups_detail",
        &title,
        json!({"backup": row, "has_restore": has_restore, "confirm_word": RESTORE_CONFIRMATION, "servers": servers}),
    )
}

/// Turns a domain error of a button into a flash message on the page it came from.
fn after(result: AppResult<Vec<Execution>>, back: &str) -> AppResult<Resp> {
    match result {
        Ok(list) if list.len() == 1 => Ok(redirect(&format!("/executions/{}", list[0].id), None)),
        Ok(list) => Ok(redirect(
            back,
            Some(("success", &format!("started on {} servers", list.len()))),
        )),
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::Conflict) => {
            Ok(redirect(back, Some(("danger", &e.message))))
        }
        Err(e) => Err(e),
    }
}

fn dispatch(app: &App, list: &[Execution]) {
    for e in list {
        app.fleet.dispatch(e);
    }
}

/// `POST /servers/{id}/backup` (button).
pub fn server_backup(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let result = app
        .store
        .write(|w| {
            Ok(backups::start_for_server(
                w,
                &ctx.actor(req),
                &ctx.subject,
                id,
            )?)
        })
        .map_err(AppError::from)
        .map(|e| vec![e]);
    if let Ok(list) = &result {
        dispatch(app, list);
    }
    after(result, &format!("/servers/{id}"))
}

/// `POST /servers/{id}/update` (button; `check=1` only lists).
pub fn server_update(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let check = form.get("check") == Some("1");
    let result = app
        .store
        .write(|w| {
            Ok(updates::start_for_server(
                w,
                &ctx.actor(req),
                &ctx.subject,
                id,
                check,
            )?)
        })
        .map_err(AppError::from)
        .map(|e| vec![e]);
    if let Ok(list) = &result {
        dispatch(app, list);
    }
    after(result, &format!("/servers/{id}"))
}

/// `POST /backups/{id}/verify`.
pub fn verify(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let result = app
        .store
        .write(|w| Ok(backups::start_verify(w, &ctx.actor(req), &ctx.subject, id)?))
        .map_err(AppError::from)
        .map(|e| vec![e]);
    if let Ok(list) = &result {
        dispatch(app, list);
    }
    after(result, &format!("/backups/{id}"))
}

/// `POST /backups/{id}/restore` (the form asks for the typed confirmation).
pub fn restore(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let confirm = form.get("confirm").map(String::from);
    let result = app
        .store
        .write(|w| {
            Ok(backups::start_restore(
                w,
                &ctx.actor(req),
                &ctx.subject,
                id,
                confirm.as_deref(),
            )?)
        })
        .map_err(AppError::from)
        .map(|e| vec![e]);
    if let Ok(list) = &result {
        dispatch(app, list);
    }
    after(result, &format!("/backups/{id}"))
}

fn recipe_values(recipe: Option<&Recipe>) -> Value {
    match recipe {
        Some(r) => json!({
            "compose_project": r.compose_project, "service": r.service, "command": r.command,
            "dump_path": r.dump_path.clone().unwrap_or_default(), "keep": r.keep,
            "restore_command": r.restore_command.clone().unwrap_or_default(),
            "restore_path": r.restore_path.clone().unwrap_or_default(),
        }),
        None => {
            json!({"compose_project": "", "service": "", "command": "", "dump_path": "", "keep": backups::DEFAULT_KEEP, "restore_command": "", "restore_path": ""})
        }
    }
}

/// `GET /projects/{id}/operations`: recipe, schedules, project-wide buttons, recent runs.
pub fn project_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    project_page_with(app, req, ctx, id, None, json!({}))
}

fn project_page_with(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    values: Option<Value>,
    errors: Value,
) -> AppResult<Resp> {
    let data = app.store.read(|r| {
        let project = visible_project(r, ctx, id)?;
        if !policy::can(&ctx.subject, Action::ViewServers, Some(&project.id)) {
            return Err(AppError::forbidden().into());
        }
        let recipe = backups::recipe(r, &project.id)?;
        let of_project = backups::Filter {
            project_id: Some(project.id.clone()),
            ..Default::default()
        };
        let rows = backups::query(r, &ctx.subject, &of_project, None, 20)?
            .items
            .iter()
            .map(|b| backup_row(r, ctx, b))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let update_rows: Vec<Value> = updates::query(r, &ctx.subject, &of_project, None, 10)?
            .items
            .iter()
            .map(updates::view)
            .collect();
        let schedules = schedules_view(r, &project.id)?;
        let (backup_cron, update_cron) = schedules::of_project(r, &project.id)?;
        Ok(json!({
            "project": {"id": project.id, "name": project.name},
            "has_recipe": recipe.is_some(),
            "values": values.clone().unwrap_or_else(|| {
                let mut v = recipe_values(recipe.as_ref());
                v["backup_cron"] = json!(backup_cron.map(|s| s.cron).unwrap_or_default());
                v["update_cron"] = json!(update_cron.map(|s| s.cron).unwrap_or_default());
                v
            }),
            "errors": errors,
            "schedules": schedules,
            "backups": rows,
            "updates": update_rows,
            "can_edit": policy::can(&ctx.subject, Action::EditProject, Some(&project.id)),
            "can_operate": policy::can(&ctx.subject, Action::OperateServers, Some(&project.id)),
        }))
    })?;
    let title = format!(
        "Backups & updates: {}",
        data["project"]["name"].as_str().unwrap_or("")
    );
    page(app, req, ctx, "backups_project", &title, data)
}

fn form_values(form: &super::Form) -> Value {
    let mut v = serde_json::Map::new();
    for key in [
        "compose_project",
        "service",
        "command",
        "dump_path",
        "keep",
        "restore_command",
        "restore_path",
        "backup_cron",
        "update_cron",
    ] {
        v.insert(key.into(), json!(form.get(key).unwrap_or("")));
    }
    Value::Object(v)
}

/// `POST /projects/{id}/operations`: saves the recipe and the schedules.
pub fn project_save(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    // The form edits the recipe: decided before any field is read.
    let project = app.store.read(|r| Ok(visible_project(r, ctx, id)?))?;
    require(ctx, Action::EditProject, Some(&project.id))?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let text = |k: &str| form.get(k).map(|s| s.replace("\r\n", "\n"));
    let keep = match form.get("keep").map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(k) => match k.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return project_page_with(
                    app,
                    req,
                    ctx,
                    id,
                    Some(form_values(&form)),
                    json!({"keep": "a whole number between 1 and 1000"}),
                )
            }
        },
    };
    let input = RecipeInput {
        compose_project: text("compose_project"),
        service: text("service"),
        command: text("command"),
        dump_path: text("dump_path"),
        keep,
        restore_command: text("restore_command"),
        restore_path: text("restore_path"),
    };
    let result = app.store.write(|w| {
        let project = visible_project(w, ctx, id)?;
        backups::save_recipe(w, &ctx.actor(req), &ctx.subject, &project.id, &input)?;
        let now = Utc::now();
        schedules::set(
            w,
            &ctx.actor(req),
            &ctx.subject,
            &project.id,
            ScheduleKind::Backup,
            form.get("backup_cron"),
            now,
        )?;
        schedules::set(
            w,
            &ctx.actor(req),
            &ctx.subject,
            &project.id,
            ScheduleKind::Update,
            form.get("update_cron"),
            now,
        )?;
        Ok(())
    });
    match result.map_err(AppError::from) {
        Ok(()) => Ok(redirect(
            &format!("/projects/{id}/operations"),
            Some(("success", "saved")),
        )),
        Err(e) if e.kind == Kind::Invalid => {
            // The schedules name their kind; the form's fields are the cron inputs.
            let errors: serde_json::Map<String, Value> = form_errors_or(&e, "command")
                .into_iter()
                .map(|(field, message)| match field.as_str() {
                    "backup" => ("backup_cron".to_string(), message),
                    "update" => ("update_cron".to_string(), message),
                    _ => (field, message),
                })
                .collect();
            project_page_with(
                app,
                req,
                ctx,
                id,
                Some(form_values(&form)),
                Value::Object(errors),
            )
        }
        Err(e) => Err(e),
    }
}

/// `POST /projects/{id}/backup` and `POST /projects/{id}/update` (buttons).
pub fn project_run(app: &App, req: &Req, ctx: &Ctx, id: &str, what: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let check = form.get("check") == Some("1");
    let result = app
        .store
        .write(|w| {
            let project = visible_project(w, ctx, id)?;
            Ok(if what == "backup" {
                backups::start_for_project(w, &ctx.actor(req), &ctx.subject, &project.id)?
            } else {
                updates::start_for_project(w, &ctx.actor(req), &ctx.subject, &project.id, check)?
            })
        })
        .map_err(AppError::from);
    if let Ok(list) = &result {
        dispatch(app, list);
    }
    after(result, &format!("/projects/{id}/operations"))
}

fn update_row(r: &impl Read, u: &updates::Update) -> anyhow::Result<Value> {
    let (server, project) = names(r, &u.agent_id, u.server_id.as_deref(), &u.project_id)?;
    let mut v = updates::view(u);
    v["server_name"] = json!(server);
    v["project_name"] = json!(project);
    v["package_count"] = json!(u.packages.len());
    v["status_text"] = v["status"].clone();
    Ok(v)
}

/// `GET /updates[?project=…][&server=…][&status=…]`: one page of system updates,
/// newest first, with a filter form and a pager.
pub fn updates_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(50)?;
    let data = app.store.read(|r| {
        let filter = super::ops_api::ops_filter(r, req, ctx)?;
        let page = updates::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let rows = page
            .items
            .iter()
            .map(|u| update_row(r, u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut data = ops_filter_context(r, req, ctx)?;
        data["updates"] = json!(rows);
        data["pager"] = req.pager(&paging, page.next.as_deref());
        Ok(data)
    })?;
    page(app, req, ctx, "updates", "System updates", data)
}

/// `GET /updates/{id}`.
pub fn update_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let row = app.store.read(|r| {
        let u = updates::get_visible(r, &ctx.subject, id)?;
        update_row(r, &u)
    })?;
    let title = format!(
        "System update on {}",
        row["server_name"].as_str().unwrap_or("")
    );
    page(
        app,
        req,
        ctx,
        "updates_detail",
        &title,
        json!({"update": row}),
    )
}
