//! JSON API of run inventories (issue 14): a server's groups and host variables, a
//! project's group variables and the inventory a run in the project gets. The rules
//! live in `inventory`; these handlers check the policy first (read level to see,
//! write level to edit), parse, call and answer.

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;

use super::ssh_api::{project_for, server_for};
use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::inventory::{self, MAX_GROUP_VARS_BYTES, MAX_HOST_VARS_BYTES};
use crate::policy::Action;
use crate::projects::Project;
use crate::servers::Server;
use crate::store::Read;

/// The body of `PUT /api/v1/servers/{id}/inventory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInventoryInput {
    /// The operator's groups (replacing the ones set before).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Host variables: an object, or YAML text of a mapping.
    #[serde(default)]
    pub vars: serde_json::Value,
}

/// The body of `PUT /api/v1/projects/{id}/groups/{group}/vars`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupVarsInput {
    /// The group's variables: an object, or YAML text of a mapping; empty removes them.
    #[serde(default)]
    pub vars: serde_json::Value,
}

/// What the API and the server page show of a server's inventory.
pub fn server_view(
    r: &impl Read,
    project: &Project,
    server: &Server,
) -> anyhow::Result<serde_json::Value> {
    let own = inventory::of_server(r, server)?;
    Ok(json!({
        "server": server.id,
        "name": server.name,
        "project": project.name,
        "project_group": inventory::project_group(&project.name),
        "groups": own.groups,
        "effective_groups": inventory::effective_groups(project, server, &own.groups),
        "vars": own.vars,
        "suggestions": inventory::group_suggestions(r, project)?,
    }))
}

fn project_of(r: &impl Read, server: &Server) -> AppResult<Project> {
    r.get::<Project>(&server.project_id)?
        .ok_or_else(|| AppError::not_found("project"))
}

/// `GET /api/v1/servers/{id}/inventory`: `{"groups", "effective_groups", "vars",
/// "project_group", "suggestions"}`.
pub fn get_server(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ViewServers)?;
    let view = app.store.read(|r| {
        let project = project_of(r, &server)?;
        server_view(r, &project, &server)
    })?;
    Ok(reply(StatusCode::OK, &view))
}

/// `GET /api/v1/servers/{id}/facts`: the facts playbook runs last gathered on the
/// server and its modules returned, as the other servers' runs see them in
/// `hostvars`: `{"server", "gathered_at", "received_at", "execution", "facts"}`, 404
/// when none are kept. The facts hold a run's environment: reading them needs the
/// level that runs playbooks in the project.
pub fn get_server_facts(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::OperateServers)?;
    let stored = app
        .store
        .read(|r| inventory::facts_of_server(r, &server))?
        .ok_or_else(|| AppError::not_found("facts"))?;
    Ok(reply(
        StatusCode::OK,
        &json!({
            "server": server.id,
            "gathered_at": stored.gathered_at,
            "received_at": stored.received_at,
            "execution": stored.execution_id,
            "facts": stored.facts,
        }),
    ))
}

/// Validates and stores a server's groups and host variables (the API and the page).
pub fn save_server(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    server: &Server,
    input: &ServerInventoryInput,
) -> AppResult<()> {
    let groups = inventory::parse_groups(&input.groups)?;
    let vars = inventory::parse_vars("vars", &input.vars, MAX_HOST_VARS_BYTES)?;
    let actor = ctx.actor(req);
    app.store.write(|w| {
        inventory::save_server(w, &actor, server, groups, vars)?;
        Ok(())
    })?;
    Ok(())
}

/// `PUT /api/v1/servers/{id}/inventory` `{"groups": [...], "vars": {...} or "YAML"}`:
/// 200 with what `GET` answers; 422 naming the field for a bad group name or
/// variables. Needs the project's write level.
pub fn put_server(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageScripts)?;
    let input: ServerInventoryInput = req.json()?;
    save_server(app, req, ctx, &server, &input)?;
    get_server(app, ctx, id)
}

fn group_of(group: &str) -> AppResult<&str> {
    if group == "all" || inventory::valid_group_name(group) {
        Ok(group)
    } else {
        Err(AppError::invalid(
            "group",
            "not a valid group name: letters, digits and _, not starting with a digit",
        ))
    }
}

/// `GET /api/v1/projects/{id}/groups/{group}/vars`: `{"group", "vars"}` (empty when
/// none are set).
pub fn get_group_vars(app: &App, ctx: &Ctx, key: &str, group: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ViewServers)?;
    let group = group_of(group)?;
    let vars = app
        .store
        .read(|r| inventory::group_vars(r, &project.id, group))?;
    Ok(reply(
        StatusCode::OK,
        &json!({"group": group, "vars": vars}),
    ))
}

/// Validates and stores one group's variables (the API and the page).
pub fn save_group_vars(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    project: &Project,
    group: &str,
    given: &serde_json::Value,
) -> AppResult<serde_json::Value> {
    let group = group_of(group)?;
    let vars = inventory::parse_vars("vars", given, MAX_GROUP_VARS_BYTES)?;
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(inventory::save_group_vars(w, &actor, project, group, vars)?))
        .map_err(AppError::from)?;
    Ok(json!({"group": saved.group, "vars": saved.vars}))
}

/// `PUT /api/v1/projects/{id}/groups/{group}/vars` `{"vars": {...} or "YAML"}`: 200
/// `{"group", "vars"}`. Needs the project's write level.
pub fn put_group_vars(app: &App, req: &Req, ctx: &Ctx, key: &str, group: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ManageScripts)?;
    let input: GroupVarsInput = req.json()?;
    let view = save_group_vars(app, req, ctx, &project, group, &input.vars)?;
    Ok(reply(StatusCode::OK, &view))
}

/// `GET /api/v1/projects/{id}/inventory[?format=yaml]`: the inventory a run in the
/// project gets now, in Ansible's YAML inventory structure (JSON by default).
pub fn get_project(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ViewServers)?;
    req.only_filters(&["format"])?;
    let built = app.store.read(|r| inventory::build(r, &project))?;
    let ansible = built.to_ansible();
    match req.query("format").unwrap_or("json") {
        "json" => Ok(reply(StatusCode::OK, &ansible)),
        "yaml" => {
            let text = dynserv_playbook::yaml::to_yaml_text(&ansible)
                .map_err(|e| AppError::from(anyhow::anyhow!("writing the inventory: {e}")))?;
            Ok(super::text(StatusCode::OK, text, "application/yaml"))
        }
        _ => Err(AppError::bad_request("format must be json or yaml")),
    }
}
