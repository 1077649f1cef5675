//! JSON API of alerts: webhooks and their deliveries, and which events reach the caller
//! by e-mail. The rules live in `alerts`.

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::alerts::{self, NewWebhook};
use crate::app::App;
use crate::error::AppResult;

/// `POST /api/v1/webhooks` `{"url", "events", "project"?, "secret"?}` → `201` with the
/// webhook (never its secret). Admins, and a project's admins for that project.
pub fn create(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let input: NewWebhook = req.json()?;
    let actor = ctx.actor(req);
    let allow = app.config.webhook_allow.clone();
    let view = app.store.write(|w| {
        let hook = match alerts::create(w, &ctx.subject, &input, &allow) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        crate::audit::record(
            w,
            &actor,
            "webhook.create",
            &format!("webhook:{}", hook.id),
            format!("{} for {}", hook.url, hook.events.join(", ")),
        )?;
        Ok(Ok(alerts::view(w, &hook)?))
    })??;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `GET /api/v1/webhooks`: the webhooks the caller may manage, oldest first.
pub fn list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    req.only_filters(&[])?;
    let paging = req.paging()?;
    let page = app.store.read(|r| {
        let hooks = alerts::visible(r, &ctx.subject)?;
        let page = crate::listing::page_of_all(
            hooks,
            |h| h.id.clone(),
            paging.cursor.as_deref(),
            paging.limit,
        );
        let views = page
            .items
            .iter()
            .map(|h| alerts::view(r, h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((views, page.next))
    })?;
    Ok(super::json_page(req, &page.0, page.1.as_deref()))
}

/// `GET /api/v1/webhooks/{id}`.
pub fn get(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let view = app.store.read(|r| {
        Ok(alerts::get_visible(r, &ctx.subject, id).and_then(|h| Ok(alerts::view(r, &h)?)))
    })??;
    Ok(reply(StatusCode::OK, &view))
}

/// `DELETE /api/v1/webhooks/{id}`: the webhook and its deliveries.
pub fn delete(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let actor = ctx.actor(req);
    app.store.write(|w| {
        let hook = match alerts::get_visible(w, &ctx.subject, id) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        alerts::delete(w, &hook)?;
        crate::audit::record(
            w,
            &actor,
            "webhook.delete",
            &format!("webhook:{}", hook.id),
            hook.url.clone(),
        )?;
        Ok(Ok(()))
    })??;
    Ok(reply(StatusCode::OK, &json!({"deleted": true})))
}

/// `GET /api/v1/webhooks/{id}/deliveries`: newest first, each with its status, attempts
/// and the receiver's last answer.
pub fn deliveries(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    req.only_filters(&[])?;
    let paging = req.paging()?;
    let page = app.store.read(|r| {
        Ok(alerts::get_visible(r, &ctx.subject, id).and_then(|hook| {
            Ok(alerts::deliveries_page(
                r,
                &hook.id,
                paging.cursor.as_deref(),
                paging.limit,
            )?)
        }))
    })??;
    Ok(super::json_page(req, &page.items, page.next.as_deref()))
}

/// The body of `PUT /api/v1/me/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertPrefsInput {
    pub email: Vec<String>,
}

/// `GET /api/v1/me/alerts`: `{"email": [event, ...], "events": [every event]}`.
pub fn my_alerts(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let prefs = app.store.read(|r| alerts::prefs(r, &ctx.user.id))?;
    Ok(reply(
        StatusCode::OK,
        &json!({"email": prefs.email, "events": alerts::EVENTS}),
    ))
}

/// `PUT /api/v1/me/alerts` `{"email": [event, ...]}`.
pub fn save_my_alerts(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let input: AlertPrefsInput = req.json()?;
    let prefs = app
        .store
        .write(|w| Ok(alerts::save_prefs(w, &ctx.user.id, &input.email)))??;
    Ok(reply(
        StatusCode::OK,
        &json!({"email": prefs.email, "events": alerts::EVENTS}),
    ))
}
