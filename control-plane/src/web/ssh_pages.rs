//! Pages for bringing existing servers in: the "Add server" form, the project's SSH
//! settings form and its panel on the project page, the SSH panel of the server page
//! (status, test, host key, install) and the live page of an agent install.

use serde_json::{json, Map, Value};

use super::pages::{page, rerender};
use super::ssh_api::{project_for, server_for, visible_install};
use super::{redirect, Ctx, Req, Resp};
use crate::agent_installs;
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action};
use crate::projects::{self, Project};
use crate::servers::{NewServer, Server};
use crate::ssh::{self, SettingsInput};
use crate::store::Read;

/// The projects the caller may add a server to, for the form's choice.
fn editable_projects(app: &App, ctx: &Ctx) -> AppResult<Vec<Value>> {
    let all = app.store.read(projects::all)?;
    Ok(all
        .iter()
        .filter(|p| policy::can(&ctx.subject, Action::EditProject, Some(&p.id)))
        .map(|p| json!({"id": p.id, "name": p.name}))
        .collect())
}

/// `GET /servers/new[?project=ID]`: the form that adds a server by hand.
pub fn new_server_form(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::EditProject, None) {
        return Err(AppError::forbidden());
    }
    let projects = editable_projects(app, ctx)?;
    let values = json!({"project": req.query("project").unwrap_or("")});
    page(
        app,
        req,
        ctx,
        "ssh/server_new",
        "Add a server",
        json!({"projects": projects, "values": values, "errors": {}, "error": null}),
    )
}

/// `POST /servers/new`: creates the server, then shows it.
pub fn new_server_save(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    let input = NewServer {
        name: form.get("name").map(String::from),
        project: form.get("project").map(String::from),
        ipv4: form.get("ipv4").map(String::from),
        ipv6: form.get("ipv6").map(String::from),
        notes: form.get("notes").map(String::from),
        ..Default::default()
    };
    match super::ssh_api::create_server(app, req, ctx, &input) {
        Ok(server) => Ok(redirect(
            &format!("/servers/{}", server.id),
            Some((
                "success",
                &format!(
                    "Server {} added. Test the SSH connection or install the agent below.",
                    server.name
                ),
            )),
        )),
        Err(e) => {
            let projects = editable_projects(app, ctx)?;
            rerender(
                app,
                req,
                ctx,
                e,
                "ssh/server_new",
                "Add a server",
                json!({"projects": projects}),
                form.values(),
            )
        }
    }
}

/// The `ssh` part of the project page: the settings (fingerprint only) and whether
/// the caller may change them.
pub fn project_panel(app: &App, ctx: &Ctx, project_id: &str) -> AppResult<Value> {
    if !policy::can(&ctx.subject, Action::ViewServers, Some(project_id)) {
        return Ok(Value::Null);
    }
    let settings = app.store.read(|r| ssh::settings(r, project_id))?;
    Ok(json!({
        "settings": ssh::settings_view(settings.as_ref()),
        "can_edit": policy::can(&ctx.subject, Action::EditProject, Some(project_id)),
        "can_install": policy::can(&ctx.subject, Action::ManageAgents, Some(project_id)),
        "can_add_server": policy::can(&ctx.subject, Action::EditProject, Some(project_id)),
    }))
}

fn settings_page(app: &App, req: &Req, project: &Project) -> AppResult<(Value, String)> {
    let settings = app.store.read(|r| ssh::settings(r, &project.id))?;
    let title = format!("SSH settings · {}", project.name);
    Ok((
        json!({
            "project": {"id": project.id, "name": project.name},
            "settings": ssh::settings_view(settings.as_ref()),
            "values": {
                "username": settings.as_ref().map_or("root".to_string(), |s| s.username.clone()),
                "port": settings.as_ref().map_or(ssh::DEFAULT_PORT, |s| s.port).to_string(),
                "install_dir": settings.as_ref().and_then(|s| s.install_dir.clone()).unwrap_or_default(),
            },
            "errors": {},
            "error": null,
            "path": req.path,
        }),
        title,
    ))
}

/// `GET /projects/{id}/ssh`: the SSH settings form.
pub fn settings_form(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let (data, title) = settings_page(app, req, &project)?;
    page(app, req, ctx, "ssh/settings", &title, data)
}

/// `POST /projects/{id}/ssh`: saves the settings (the form re-renders with each
/// problem beside its field; the key and passphrase are never sent back).
pub fn settings_save(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let form = req.form()?;
    let port = match form.get("port").map(str::trim).filter(|p| !p.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => Some(0),
        },
    };
    let input = SettingsInput {
        username: form.get("username").map(String::from),
        port,
        private_key: form.get("private_key").map(String::from),
        passphrase: form.get("passphrase").map(String::from),
        install_dir: form.get("install_dir").map(String::from),
    };
    let actor = ctx.actor(req);
    let saved = app
        .store
        .write(|w| Ok(ssh::save_settings(w, &actor, &project, &input)?))
        .map_err(AppError::from);
    match saved {
        Ok(s) => Ok(redirect(
            &format!("/projects/{}", project.id),
            Some((
                "success",
                &format!("SSH settings saved (key {}).", s.key_fingerprint),
            )),
        )),
        Err(e) => {
            let (data, title) = settings_page(app, req, &project)?;
            let mut values: Map<String, Value> = form.values();
            // The key and passphrase are never shown again, not even after a typo.
            values.remove("private_key");
            values.remove("passphrase");
            values.remove("csrf");
            rerender(app, req, ctx, e, "ssh/settings", &title, data, values)
        }
    }
}

/// `POST /projects/{id}/ssh/delete`: forgets the settings and the key.
pub fn settings_delete(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::EditProject)?;
    let actor = ctx.actor(req);
    app.store
        .write(|w| ssh::delete_settings(w, &actor, &project))?;
    Ok(redirect(
        &format!("/projects/{}", project.id),
        Some(("info", "SSH settings and key removed.")),
    ))
}

/// The `ssh` part of the server page: status, host keys, last install, what the
/// caller may do.
pub fn server_panel(app: &App, ctx: &Ctx, server: &Server) -> AppResult<Value> {
    let (state, has_settings, install) = app.store.read(|r| {
        let state = ssh::server_state(r, &server.id)?;
        let has_settings = ssh::settings(r, &server.project_id)?.is_some();
        let install = match &state.last_install {
            Some(id) => match r.get::<agent_installs::AgentInstall>(id)? {
                Some(i) => Some(agent_installs::view(r, &i)?),
                None => None,
            },
            None => None,
        };
        Ok((state, has_settings, install))
    })?;
    let mut view = ssh::server_view(&state);
    view["has_settings"] = json!(has_settings);
    view["has_address"] = json!(ssh::server_host(server).is_some());
    view["install"] = install.unwrap_or(Value::Null);
    view["can_test"] = json!(policy::can(
        &ctx.subject,
        Action::OperateServers,
        Some(&server.project_id)
    ));
    view["can_install"] = json!(policy::can(
        &ctx.subject,
        Action::ManageAgents,
        Some(&server.project_id)
    ));
    Ok(view)
}

/// `POST /servers/{id}/ssh-test`: tests the connection and goes back to the server.
pub async fn test(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::OperateServers)?;
    let answer = ssh::test(app, &ctx.actor(req), &server).await;
    let back = format!("/servers/{}", server.id);
    Ok(match (answer.ok, &answer.error) {
        (true, _) => redirect(
            &back,
            Some((
                "success",
                &format!(
                    "SSH connection ok; host key {}{}.",
                    answer.host_key_fingerprint.as_deref().unwrap_or(""),
                    if answer.pinned { " (pinned now)" } else { "" }
                ),
            )),
        ),
        (false, error) => redirect(
            &back,
            Some((
                "danger",
                &format!(
                    "SSH connection failed: {}",
                    error.as_deref().unwrap_or("unknown error")
                ),
            )),
        ),
    })
}

/// `POST /servers/{id}/ssh-accept`: pins the host key the server presented instead.
pub fn accept(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageAgents)?;
    let actor = ctx.actor(req);
    let back = format!("/servers/{}", server.id);
    match app
        .store
        .write(|w| Ok(ssh::accept_host_key(w, &actor, &server)?))
        .map_err(AppError::from)
    {
        Ok(state) => Ok(redirect(
            &back,
            Some((
                "success",
                &format!(
                    "New host key {} accepted and pinned.",
                    state.host_key_fingerprint.unwrap_or_default()
                ),
            )),
        )),
        Err(e) => Ok(redirect(&back, Some(("danger", e.public_message())))),
    }
}

/// `POST /servers/{id}/install-agent`: starts an install and shows its steps.
pub fn install(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let server = server_for(app, ctx, id, Action::ManageAgents)?;
    match agent_installs::start(app, &ctx.actor(req), &server.id) {
        Ok(install) => Ok(redirect(&format!("/agent-installs/{}", install.id), None)),
        Err(e) => Ok(redirect(
            &format!("/servers/{}", server.id),
            Some(("danger", e.public_message())),
        )),
    }
}

/// `POST /projects/{id}/install-agent`: an install on every server of the project
/// without a connected agent; back to the project with what started and what not.
pub fn install_project(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let project = project_for(app, ctx, key, Action::ManageAgents)?;
    let (started, skipped) = super::ssh_api::install_everywhere(app, req, ctx, &project)?;
    let mut message = format!(
        "Agent installs started on {} server{}.",
        started.len(),
        if started.len() == 1 { "" } else { "s" }
    );
    for (server, reason) in skipped.iter().take(5) {
        message.push_str(&format!(" {}: {reason}.", server.name));
    }
    if skipped.len() > 5 {
        message.push_str(&format!(" {} more not started.", skipped.len() - 5));
    }
    let level = if skipped.is_empty() {
        "success"
    } else {
        "warning"
    };
    Ok(redirect(
        &format!("/projects/{}", project.id),
        Some((level, &message)),
    ))
}

/// `GET /agent-installs/{id}`: the steps of an install, followed live while it runs.
pub fn install_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let (_, view) = visible_install(app, ctx, id)?;
    page(
        app,
        req,
        ctx,
        "ssh/install",
        "Agent install",
        json!({"install": view}),
    )
}
