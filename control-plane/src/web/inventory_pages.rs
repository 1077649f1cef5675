//! Pages of run inventories (issue 14): the server page's Inventory card (groups added
//! and removed with suggestions of the project's groups, host variables as YAML) and
//! a project group's variables. The rules live in `inventory`; a bad group name or
//! bad variables re-render the form with the message (422).

use serde_json::{json, Value};
use warp::http::StatusCode;

use super::pages::{form, page, page_with_status};
use super::ssh_api::{project_for, server_for};
use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult, Kind};
use crate::inventory;
use crate::policy::{self, Action};
use crate::projects::Project;
use crate::servers::Server;
use crate::store::Read;

/// The variables as the form shows them: YAML, empty when there are none.
fn vars_text(vars: &dynserv_shared::inventory::Vars) -> String {
    if vars.is_empty() {
        return String::new();
    }
    dynserv_playbook::yaml::to_yaml_text(&Value::Object(vars.clone()))
        .unwrap_or_else(|_| Value::Object(vars.clone()).to_string())
}

/// What the Inventory card shows (`inventory` in the server page's data).
fn panel(r: &impl Read, ctx: &Ctx, server: &Server, project: &Project) -> anyhow::Result<Value> {
    let own = inventory::of_server(r, server)?;
    let role = server
        .labels
        .get(inventory::ROLE_LABEL)
        .and_then(|r| inventory::group_name_from(r));
    let project_group = inventory::project_group(&project.name);
    let can_edit = policy::can(&ctx.subject, Action::ManageScripts, Some(&project.id));
    let effective: Vec<Value> = inventory::effective_groups(project, server, &own.groups)
        .into_iter()
        .map(|name| {
            let source = if own.groups.contains(&name) {
                "assigned"
            } else if name == project_group {
                "project"
            } else if role.as_deref() == Some(name.as_str()) {
                "label role"
            } else {
                "assigned"
            };
            json!({
                "name": name,
                "source": source,
                "removable": can_edit && own.groups.contains(&name),
                "project_id": project.id,
                "server_id": server.id,
                "csrf": ctx.csrf,
            })
        })
        .collect();
    let suggestions: Vec<String> = inventory::group_suggestions(r, project)?
        .into_iter()
        .filter(|g| !own.groups.contains(g))
        .collect();
    Ok(json!({
        "server_id": server.id,
        "server_name": server.name,
        "project_id": project.id,
        "project_group": project_group,
        "effective": effective,
        "suggestions": suggestions,
        "vars_text": vars_text(&own.vars),
        "vars_count": own.vars.len(),
        "can_edit": can_edit,
        "csrf": ctx.csrf,
        "error": null,
        "group_error": null,
        "vars_error": null,
        "group_value": "",
    }))
}

/// The Inventory card's data for the server page; null when there is no project.
pub fn server_panel(
    r: &impl Read,
    ctx: &Ctx,
    server: &Server,
    project: Option<&Project>,
) -> anyhow::Result<Value> {
    match project {
        Some(project) => panel(r, ctx, server, project),
        None => Ok(Value::Null),
    }
}

/// `POST /servers/{id}/inventory`: `action=add` with `group`, `action=remove` with
/// `group`, or `action=vars` with `vars` (YAML). Back to the server page, or the form
/// again with the message.
pub fn server_save(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageScripts)?;
    let form = form(req, ctx)?;
    let (project, own) = app.store.read(|r| {
        let project = r
            .get::<Project>(&server.project_id)?
            .ok_or_else(|| anyhow::anyhow!("the server's project is gone"))?;
        Ok((project, inventory::of_server(r, &server)?))
    })?;
    let group = form.get("group").unwrap_or("").trim().to_string();
    let mut groups = own.groups.clone();
    let mut vars = Value::Object(own.vars.clone());
    let message = match form.get("action").unwrap_or("") {
        "add" => {
            if group.is_empty() {
                Err(AppError::invalid("groups", "type a group name to add"))
            } else {
                groups.push(group.clone());
                Ok(format!("{} is now in group {group}.", server.name))
            }
        }
        "remove" => {
            groups.retain(|g| g != &group);
            Ok(format!("{} left group {group}.", server.name))
        }
        "vars" => {
            vars = json!(form.get("vars").unwrap_or(""));
            Ok(format!("Host variables of {} saved.", server.name))
        }
        _ => Err(AppError::bad_request("unknown action")),
    };
    let input = super::inventory_api::ServerInventoryInput { groups, vars };
    let saved = message.and_then(|message| {
        super::inventory_api::save_server(app, req, ctx, &server, &input).map(|_| message)
    });
    match saved {
        Ok(message) => Ok(redirect(
            &format!("/servers/{}", server.id),
            Some(("success", &message)),
        )),
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::BadRequest) => {
            let mut data = app.store.read(|r| panel(r, ctx, &server, &project))?;
            match e.field.as_deref() {
                Some("groups") => {
                    data["group_error"] = json!(e.message);
                    data["group_value"] = json!(group);
                }
                Some("vars") => {
                    data["vars_error"] = json!(e.message);
                    data["vars_text"] = json!(form.get("vars").unwrap_or(""));
                }
                _ => data["error"] = json!(e.message),
            }
            page_with_status(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inventory/server",
                &format!("Inventory of {}", server.name),
                json!({"server": {"id": server.id, "name": server.name}, "inventory": data}),
            )
        }
        Err(e) => Err(e),
    }
}

fn group_page_data(app: &App, ctx: &Ctx, project: &Project, group: &str) -> AppResult<Value> {
    let vars = app
        .store
        .read(|r| inventory::group_vars(r, &project.id, group))?;
    Ok(json!({
        "project": {"id": project.id, "name": project.name},
        "group": group,
        "vars_text": vars_text(&vars),
        "can_edit": policy::can(&ctx.subject, Action::ManageScripts, Some(&project.id)),
        "vars_error": null,
    }))
}

fn valid_group(group: &str) -> AppResult<()> {
    if group == "all" || inventory::valid_group_name(group) {
        Ok(())
    } else {
        Err(AppError::not_found("group"))
    }
}

/// `GET /projects/{id}/groups/{group}`: the group's variables.
pub fn group_form(app: &App, req: &Req, ctx: &Ctx, key: &str, group: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ViewServers)?;
    valid_group(group)?;
    let data = group_page_data(app, ctx, &project, group)?;
    page(
        app,
        req,
        ctx,
        "inventory/group",
        &format!("Group {group} of {}", project.name),
        data,
    )
}

/// `POST /projects/{id}/groups/{group}` with `vars` (YAML; empty removes them).
pub fn group_save(app: &App, req: &Req, ctx: &Ctx, key: &str, group: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ManageScripts)?;
    valid_group(group)?;
    let form = form(req, ctx)?;
    let text = form.get("vars").unwrap_or("").to_string();
    match super::inventory_api::save_group_vars(app, req, ctx, &project, group, &json!(text)) {
        Ok(_) => Ok(redirect(
            &format!("/projects/{}/groups/{group}", project.id),
            Some(("success", &format!("Variables of group {group} saved."))),
        )),
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::BadRequest) => {
            let mut data = group_page_data(app, ctx, &project, group)?;
            data["vars_error"] = json!(e.message);
            data["vars_text"] = json!(text);
            page_with_status(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inventory/group",
                &format!("Group {group} of {}", project.name),
                data,
            )
        }
        Err(e) => Err(e),
    }
}
