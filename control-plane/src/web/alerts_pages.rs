//! Pages of alerts: the webhooks list with its form, a webhook's deliveries, and the
//! e-mail choices on the account page. The rules live in `alerts`.

use serde_json::{json, Map, Value};

use super::pages::{page, rerender};
use super::{redirect, Ctx, Req, Resp};
use crate::alerts::{self, NewWebhook};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::policy::{Role, Subject};

/// Whether the Webhooks page is for this subject at all: admins, and the admins of
/// some project.
pub fn may_see_webhooks(subject: &Subject) -> bool {
    subject.role == Role::Admin
        || (subject.role != Role::Sales
            && crate::policy::can(subject, crate::policy::Action::ManageAccess, None))
}

fn require_webhooks(ctx: &Ctx) -> AppResult<()> {
    if may_see_webhooks(&ctx.subject) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// The events with a label, each ticked when `chosen` holds it.
pub fn event_choices(chosen: &[String]) -> Vec<Value> {
    alerts::EVENTS
        .iter()
        .map(|e| {
            json!({
                "name": e,
                "input": format!("event:{e}"),
                "checked": chosen.iter().any(|c| c == e),
            })
        })
        .collect()
}

fn list_data(app: &App, ctx: &Ctx) -> AppResult<Value> {
    let (hooks, projects) = app.store.read(|r| {
        let hooks = alerts::visible(r, &ctx.subject)?
            .iter()
            .map(|h| alerts::view(r, h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let projects: Vec<Value> = crate::projects::all(r)?
            .into_iter()
            .filter(|p| alerts::may_manage(&ctx.subject, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name}))
            .collect();
        Ok((hooks, projects))
    })?;
    Ok(json!({
        "hooks": hooks,
        "projects": projects,
        "may_global": alerts::may_manage(&ctx.subject, None),
        "events": event_choices(&[]),
        "values": {},
        "errors": {},
        "error": null,
    }))
}

/// `GET /webhooks`: the webhooks the caller manages and the form to add one.
pub fn webhooks_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_webhooks(ctx)?;
    let data = list_data(app, ctx)?;
    page(app, req, ctx, "webhooks", "Webhooks", data)
}

/// `POST /webhooks`: adds a webhook; the form re-renders with the problem.
pub fn webhook_create(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_webhooks(ctx)?;
    let form = req.form()?;
    let events: Vec<String> = alerts::EVENTS
        .iter()
        .filter(|e| form.checked(&format!("event:{e}")))
        .map(|e| e.to_string())
        .collect();
    let input = NewWebhook {
        url: form.get("url").unwrap_or_default().to_string(),
        events: events.clone(),
        project: form.get("project").map(String::from),
        secret: form.get("secret").map(String::from),
    };
    let actor = ctx.actor(req);
    let allow = app.config.webhook_allow.clone();
    let created = app
        .store
        .write(|w| {
            let hook = alerts::create(w, &ctx.subject, &input, &allow)?;
            crate::audit::record(
                w,
                &actor,
                "webhook.create",
                &format!("webhook:{}", hook.id),
                format!("{} for {}", hook.url, hook.events.join(", ")),
            )?;
            Ok(hook)
        })
        .map_err(AppError::from);
    match created {
        Ok(hook) => Ok(redirect(
            &format!("/webhooks/{}", hook.id),
            Some(("success", &format!("Webhook to {} added.", hook.url))),
        )),
        Err(e) => {
            let mut data = list_data(app, ctx)?;
            data["events"] = Value::Array(event_choices(&events));
            let mut values: Map<String, Value> = form.values();
            values.remove("secret");
            rerender(app, req, ctx, e, "webhooks", "Webhooks", data, values)
        }
    }
}

/// `GET /webhooks/{id}`: the webhook and its deliveries, newest first, paged.
pub fn webhook_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_webhooks(ctx)?;
    let paging = req.paging_with(50)?;
    let (hook, page_of) = app.store.read(|r| {
        let hook = match alerts::get_visible(r, &ctx.subject, id) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let deliveries =
            alerts::deliveries_page(r, &hook.id, paging.cursor.as_deref(), paging.limit)?;
        Ok(Ok((alerts::view(r, &hook)?, deliveries)))
    })??;
    let deliveries: Vec<Value> = page_of
        .items
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "event": d.event,
                "status": d.status,
                "delivered": d.status == alerts::SendStatus::Delivered,
                "failed": d.status == alerts::SendStatus::Failed,
                "attempts": d.attempts,
                "created_at": d.created_at,
                "last_attempt_at": d.last_attempt_at,
                "next_attempt_at": d.next_attempt_at,
                "response_status": d.response_status,
                "response_body": d.response_body,
                "error": d.error,
            })
        })
        .collect();
    let data = json!({
        "hook": hook,
        "deliveries": deliveries,
        "pager": req.pager(&paging, page_of.next.as_deref()),
    });
    page(app, req, ctx, "webhook", "Webhook", data)
}

/// `POST /webhooks/{id}/delete`.
pub fn webhook_delete(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_webhooks(ctx)?;
    let actor = ctx.actor(req);
    let hook = app.store.write(|w| {
        let hook = alerts::get_visible(w, &ctx.subject, id)?;
        alerts::delete(w, &hook)?;
        crate::audit::record(
            w,
            &actor,
            "webhook.delete",
            &format!("webhook:{}", hook.id),
            hook.url.clone(),
        )?;
        Ok(hook)
    })?;
    Ok(redirect(
        "/webhooks",
        Some(("success", &format!("Webhook to {} deleted.", hook.url))),
    ))
}

/// `POST /account/alerts`: which events also reach the caller by e-mail.
pub fn account_alerts(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let form = req.form()?;
    let chosen: Vec<String> = alerts::EVENTS
        .iter()
        .filter(|e| form.checked(&format!("event:{e}")))
        .map(|e| e.to_string())
        .collect();
    app.store
        .write(|w| Ok(alerts::save_prefs(w, &ctx.user.id, &chosen)?))?;
    let note = if chosen.is_empty() {
        "No alert reaches you by e-mail.".to_string()
    } else if ctx.user.email.as_deref().is_none_or(str::is_empty) {
        "Saved, but your account has no e-mail address: ask an administrator to add one."
            .to_string()
    } else {
        format!("Alerts by e-mail saved: {}.", chosen.join(", "))
    };
    Ok(redirect("/account", Some(("success", &note))))
}
