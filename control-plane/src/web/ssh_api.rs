//! JSON API for bringing existing servers in: adding a server by hand, a project's SSH
//! settings, a server's connection test and host key, and agent installs over SSH.
//! The work lives in `servers`, `ssh` and `agent_installs`; these handlers check the
//! policy first, parse, call and answer.

use serde_json::json;
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::agent_installs::{self, AgentInstall};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::servers::{self, NewServer, Server};
use crate::ssh::{self, SettingsInput};
use crate::store::Read;

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Finds a project the caller may see and checks `action` on it.
pub fn project_for(app: &App, ctx: &Ctx, key: &str, action: Action) -> AppResult<Project> {
    let project = app
        .store
        .read(|r| projects::find(r, key))?
        .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
        .ok_or_else(|| AppError::not_found("project"))?;
    require(ctx, action, Some(&project.id))?;
    Ok(project)
}

/// Finds a server the caller may see and checks `action` on its project.
pub fn server_for(app: &App, ctx: &Ctx, id: &str, action: Action) -> AppResult<Server> {
    let server = app
        .store
        .read(|r| Ok(servers::get_visible(r, &ctx.subject, id)?))?;
    require(ctx, action, Some(&server.project_id))?;
    Ok(server)
}

/// Creates a server by hand in the project `input.project` names (id or name); the
/// caller needs to be able to edit that project. Shared with the page form.
pub fn create_server(app: &App, req: &Req, ctx: &Ctx, input: &NewServer) -> AppResult<Server> {
    super::fleet_api::require_fleet(ctx)?;
    require(ctx, Action::EditProject, None)?;
    let key = input
        .project
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| AppError::invalid("project", "project is required"))?;
    let project = app
        .store
        .read(|r| projects::find(r, key))?
        .filter(|p| policy::can(&ctx.subject, Action::EditProject, Some(&p.id)))
        .ok_or_else(|| AppError::invalid("project", format!("no project {key} you may edit")))?;
    let actor = ctx.actor(req);
    app.store
        .write(|w| Ok(servers::create(w, &actor, &project.id, input)?))
        .map_err(AppError::from)
}

/// `POST /api/v1/servers` `{"name", "project", "ipv4"?, "ipv6"?, "notes"?}`: 201 with
/// the server (one that is not at Hetzner).
pub fn create_server_api(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    require(ctx, Action::EditProject, None)?;
    let input: NewServer = req.json()?;
    let server = create_server(app, req, ctx, &input)?;
    let value = app
        .store
        .read(|r| super::api::server_json(app, r, &server))?;
    let mut value = value;
    value["notes"] = json!(server.notes);
    Ok(reply(StatusCode::CREATED, &value))
}

/// `GET /api/v1/projects/{id}/ssh`: `{"username", "port", "key_fingerprint", …}`, never
/// the key or the passphrase; 404 while the project has none.
pub fn get_settings(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ViewServers)?;
    let settings = app.store.read(|r| ssh::settings(r, &project.id))?;
    match settings {
        Some(s) => Ok(reply(StatusCode::OK, &ssh::settings_view(Some(&s)))),
        None => Err(AppError::not_found("SSH settings")),
    }
}

/// `PUT /api/v1/projects/{id}/ssh` `{"username", "port", "private_key", "passphrase"?,
/// "install_dir"?}`: 200 with what `GET` answers. Needs the project's admin level.
pub fn put_settings(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let input: SettingsInput = req.json()?;
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(ssh::save_settings(w, &actor, &project, &input)?))
        .map_err(AppError::from)?;
    Ok(reply(StatusCode::OK, &ssh::settings_view(Some(&saved))))
}

/// `DELETE /api/v1/projects/{id}/ssh`: forgets the settings and the key.
pub fn delete_settings(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let actor = ctx.actor(req);
    let removed = app
        .store
        .write(|w| ssh::delete_settings(w, &actor, &project))?;
    if !removed {
        return Err(AppError::not_found("SSH settings"));
    }
    Ok(reply(StatusCode::OK, &json!({"deleted": true})))
}

/// `GET /api/v1/servers/{id}/ssh`: the server's SSH status (`ok`, `failed`, `never`),
/// pinned and offered host keys, the last test and install.
pub fn server_state(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ViewServers)?;
    let state = app.store.read(|r| ssh::server_state(r, &server.id))?;
    Ok(reply(StatusCode::OK, &ssh::server_view(&state)))
}

/// `POST /api/v1/servers/{id}/ssh-test`: `200 {"ok", "host_key_fingerprint", "error"?}`.
pub async fn test(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::OperateServers)?;
    let answer = ssh::test(app, &ctx.actor(req), &server).await;
    Ok(reply(StatusCode::OK, &answer))
}

/// `POST /api/v1/servers/{id}/ssh-host-key/accept`: pins the host key the server
/// presented in place of the pinned one (the project's admin level).
pub fn accept_host_key(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageAgents)?;
    let actor = ctx.actor(req);
    let state = app
        .store
        .write(|w| Ok(ssh::accept_host_key(w, &actor, &server)?))
        .map_err(AppError::from)?;
    Ok(reply(StatusCode::OK, &ssh::server_view(&state)))
}

fn install_json(app: &App, install: &AgentInstall) -> AppResult<serde_json::Value> {
    Ok(app.store.read(|r| agent_installs::view(r, install))?)
}

/// `POST /api/v1/servers/{id}/install-agent`: `202 {"id", …}`; follow it at
/// `GET /api/v1/agent-installs/{id}`.
pub fn install(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageAgents)?;
    let install = agent_installs::start(app, &ctx.actor(req), &server.id)?;
    Ok(reply(StatusCode::ACCEPTED, &install_json(app, &install)?))
}

/// The most installs one "install on every server" starts; past it the other servers
/// are listed as skipped, and asking again starts the next ones.
pub const MAX_PROJECT_INSTALLS: usize = 50;

/// A server an "install on every server" did not start on, with the reason.
pub type Skipped = (Server, String);

/// Starts an install on every server of the project without a connected agent (at
/// most [`MAX_PROJECT_INSTALLS`]); answers the installs started and the servers
/// skipped with the reason. Shared by the API and the project page.
pub fn install_everywhere(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    project: &Project,
) -> AppResult<(Vec<AgentInstall>, Vec<Skipped>)> {
    let candidates = app.store.read(|r| {
        let mut out = Vec::new();
        for server in servers::in_project(r, &project.id)? {
            let connected = server
                .agent_id
                .as_deref()
                .is_some_and(|a| app.fleet.live(r, a).is_some());
            if server.status != "deleted" && !connected {
                out.push(server);
            }
        }
        Ok(out)
    })?;
    let actor = ctx.actor(req);
    let (mut installs, mut skipped) = (Vec::new(), Vec::new());
    for server in candidates {
        if installs.len() >= MAX_PROJECT_INSTALLS {
            skipped.push((
                server,
                format!(
                    "at most {MAX_PROJECT_INSTALLS} installs start at once; ask again for the rest"
                ),
            ));
            continue;
        }
        match agent_installs::start(app, &actor, &server.id) {
            Ok(install) => installs.push(install),
            Err(e) => skipped.push((server, e.message)),
        }
    }
    Ok((installs, skipped))
}

/// `POST /api/v1/projects/{id}/install-agent`: an install on every server of the
/// project that has no connected agent; `202 {"installs": [...], "skipped": [...]}`
/// (a server that cannot start one now, with the reason).
pub fn install_project(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ManageAgents)?;
    let (started, skipped) = install_everywhere(app, req, ctx, &project)?;
    let installs = started
        .iter()
        .map(|i| install_json(app, i))
        .collect::<AppResult<Vec<_>>>()?;
    let skipped: Vec<_> = skipped
        .iter()
        .map(|(server, reason)| json!({"server": server.id, "name": server.name, "reason": reason}))
        .collect();
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({"installs": installs, "skipped": skipped}),
    ))
}

/// Reads an install the caller may see.
pub fn visible_install(
    app: &App,
    ctx: &Ctx,
    id: &str,
) -> AppResult<(AgentInstall, serde_json::Value)> {
    app.store.read(|r| {
        let install = r
            .get::<AgentInstall>(id)?
            .filter(|i| policy::can(&ctx.subject, Action::ViewServers, Some(&i.project_id)));
        match install {
            Some(install) => {
                let view = agent_installs::view(r, &install)?;
                Ok(Ok((install, view)))
            }
            None => Ok(Err(AppError::not_found("agent install"))),
        }
    })?
}

/// `GET /api/v1/agent-installs/{id}`: `{"id", "server", "status", "steps": [{"name",
/// "status", "at", "message"?}]}`.
pub fn get_install(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let (_, view) = visible_install(app, ctx, id)?;
    Ok(reply(StatusCode::OK, &view))
}
