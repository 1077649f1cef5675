//! Page side of the Hetzner features: the sync and budget panel of the project page,
//! the power panel of the server page, their form posts, and the agent download that
//! new servers fetch from cloud-init.

use serde_json::{json, Value};
use warp::http::{HeaderValue, StatusCode};

use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::error::AppResult;
use crate::hetzner::{power, sync, PowerAction};
use crate::policy::{self, Action};
use crate::projects::Project;
use crate::servers::Server;
use crate::store::Read;

/// The `hetzner` part of the project page: last sync, whether the caller may sync,
/// this month's cost against the budget and the trend.
pub fn project_panel(app: &App, ctx: &Ctx, project_id: &str) -> AppResult<Value> {
    let value = app.store.read(|r| {
        let Some(project) = r.get::<Project>(project_id)? else {
            return Ok(Value::Null);
        };
        // Server costs are fleet figures, for those who see the project's servers.
        let costs = if policy::can(&ctx.subject, Action::ViewServers, Some(&project.id)) {
            super::hetzner_api::costs_json(r, &project)?
        } else {
            Value::Null
        };
        Ok(json!({
            "has_token": sync::has_token(app, &project),
            "can_sync": sync::has_token(app, &project)
                && policy::can(&ctx.subject, Action::OperateServers, Some(&project.id)),
            "last_sync": project.last_sync,
            "syncing": sync::is_syncing(app, &project.id),
            "costs": costs,
        }))
    })?;
    Ok(value)
}

/// The `hetzner` part of the server page: power buttons and recent actions.
pub fn server_panel(app: &App, ctx: &Ctx, server: &Server) -> AppResult<Value> {
    let actions = app.store.read(|r| power::of_server(r, &server.id, 5))?;
    let running = actions.iter().any(|a| a.status == "running");
    Ok(json!({
        "is_hetzner": server.hetzner_id.is_some() && server.status != "deleted",
        "hetzner_id": server.hetzner_id,
        "can_power": server.hetzner_id.is_some()
            && server.status != "deleted"
            && policy::can(&ctx.subject, Action::OperateServers, Some(&server.project_id)),
        "actions": actions,
        "running": running,
    }))
}

/// `POST /projects/{id}/sync`: starts a sync and goes back to the project.
pub fn sync(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let project = super::hetzner_api::project_to_sync(app, ctx, key)?;
    sync::spawn_sync(app, &project.id, ctx.actor(req));
    Ok(redirect(
        &format!("/projects/{}", project.id),
        Some((
            "info",
            "Sync with Hetzner started; reload in a moment to see the result.",
        )),
    ))
}

/// `POST /servers/{id}/power`: starts a power action and goes back to the server.
pub async fn power(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::fleet_api::require_fleet(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let server = super::hetzner_api::server_to_operate(app, ctx, id)?;
    let back = format!("/servers/{}", server.id);
    let Some(action) = PowerAction::parse(form.get("action").unwrap_or("")) else {
        return Ok(redirect(
            &back,
            Some(("danger", "Choose power on, power off or reboot.")),
        ));
    };
    match power::start(app, &ctx.actor(req), &server, action).await {
        Ok(started) => Ok(redirect(
            &back,
            Some((
                "info",
                &format!(
                    "Hetzner started {} (action {}).",
                    started.command, started.action_id
                ),
            )),
        )),
        Err(e) => Ok(redirect(&back, Some(("danger", e.public_message())))),
    }
}

/// `GET /download/dynserv-agent`: the `dynserv-agent` executable that sits next to
/// the running `dynserv`, streamed. Public: a new server fetches it before it has any
/// credentials, and the binary holds no secret.
pub async fn download_agent() -> Resp {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dynserv-agent")));
    let file = match &path {
        Some(p) => tokio::fs::File::open(p).await.ok(),
        None => None,
    };
    let Some(mut file) = file else {
        return super::text(
            StatusCode::NOT_FOUND,
            "the dynserv-agent binary is not installed next to dynserv",
            "text/plain; charset=utf-8",
        );
    };
    let length = file.metadata().await.map(|m| m.len()).ok();
    let (sender, chunks) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let chunk = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => Ok(bytes::Bytes::copy_from_slice(&buf[..n])),
                // Sent on, so the download is cut off rather than ending short.
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // A closed channel is a client that went away: stop reading.
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    let mut resp = super::streamed(chunks);
    let headers = resp.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "content-disposition",
        HeaderValue::from_static("attachment; filename=\"dynserv-agent\""),
    );
    if let Some(len) = length {
        headers.insert("content-length", HeaderValue::from(len));
    }
    resp
}
