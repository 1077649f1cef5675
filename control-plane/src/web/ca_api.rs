//! The fleet's certificate authorities over HTTP, for admins (`Action::ManageFleetCa`):
//! `GET /api/v1/ca`, `POST /api/v1/ca/rotate`, `POST /api/v1/ca/{id}/retire`, and the
//! forms of the CA section on the Agents page. Thin: authorize, call `fleet::ca`, have
//! the gateway reread the CAs, answer. The rules live in `fleet::ca`.

use serde::Deserialize;
use serde_json::Value;
use warp::http::StatusCode;

use super::{json as reply, redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::fleet::ca::{self, CaView};
use crate::listing;
use crate::policy::{self, Action};

fn require_ca(ctx: &Ctx) -> AppResult<()> {
    if policy::can(&ctx.subject, Action::ManageFleetCa, None) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Puts a change in force on this replica's gateway at once (the others reread the
/// store within `gateway::TRUST_RELOAD`). The change is committed already: a failure
/// here is logged, and the next periodic reload retries.
fn reload(app: &App) {
    if let Err(e) = app.fleet.reload_trust() {
        tracing::warn!("rereading the fleet's CAs: {e:#}");
    }
}

/// `GET /api/v1/ca`: the CAs, oldest first, with `id`, `fingerprint`, `created_at`,
/// `status` (`active`, `retiring`, `retired`), `agents` (how many usable agents hold
/// a certificate of it) and `serving`. A handful of records, read whole and paged in
/// memory.
pub fn list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_ca(ctx)?;
    req.only_filters(&[])?;
    let paging = req.paging()?;
    let all = app.store.read(ca::list)?;
    let page = listing::page_of_all(
        all.into_iter().enumerate().collect(),
        |(at, _)| format!("{at:06}"),
        paging.cursor.as_deref(),
        paging.limit,
    );
    let items: Vec<CaView> = page.items.into_iter().map(|(_, view)| view).collect();
    Ok(super::json_page(req, &items, page.next.as_deref()))
}

/// Rotates the CA (see [`ca::rotate`]); shared by the API and the page.
fn rotate(app: &App, req: &Req, ctx: &Ctx) -> AppResult<CaView> {
    let view = app
        .store
        .write(|w| Ok(ca::rotate(w, &ctx.actor(req), chrono::Utc::now())?))?;
    reload(app);
    Ok(view)
}

/// Retires a CA (see [`ca::retire`]); shared by the API and the page.
fn retire(app: &App, req: &Req, ctx: &Ctx, id: &str, force: bool) -> AppResult<CaView> {
    let view = app.store.write(|w| {
        Ok(ca::retire(
            w,
            &ctx.actor(req),
            id,
            force,
            chrono::Utc::now(),
        )?)
    })?;
    reload(app);
    Ok(view)
}

/// The body of `POST /api/v1/ca/rotate`: nothing to choose (`{}` or no body).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateOptions {}

/// The body of `POST /api/v1/ca/{id}/retire`: `{"force": true}` retires a CA agents
/// still depend on; no body (or `{}`) does not.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireOptions {
    #[serde(default)]
    force: bool,
}

fn has_body(req: &Req) -> bool {
    !req.body.iter().all(u8::is_ascii_whitespace)
}

/// `POST /api/v1/ca/rotate` → `201` with the new CA.
pub fn rotate_api(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_ca(ctx)?;
    if has_body(req) {
        let _: RotateOptions = req.json()?;
    }
    let view = rotate(app, req, ctx)?;
    Ok(reply(StatusCode::CREATED, &view))
}

/// `POST /api/v1/ca/{id}/retire` `{"force"?}` → `200` with the retired CA; `409` for
/// the active CA, a retired one, or one agents still hold certificates of without
/// `force`.
pub fn retire_api(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_ca(ctx)?;
    let options: RetireOptions = if has_body(req) {
        req.json()?
    } else {
        RetireOptions::default()
    };
    let view = retire(app, req, ctx, id, options.force)?;
    Ok(reply(StatusCode::OK, &view))
}

/// What the Agents page shows of the CAs: `None` for callers who may not manage them.
pub fn page_section(app: &App, ctx: &Ctx) -> AppResult<Option<Value>> {
    if !policy::can(&ctx.subject, Action::ManageFleetCa, None) {
        return Ok(None);
    }
    let all = app.store.read(ca::list)?;
    let rotating = all.iter().filter(|c| c.status != "retired").count() > 1;
    let rows: Vec<Value> = all
        .iter()
        .map(|view| {
            let mut v = serde_json::to_value(view).unwrap_or(Value::Null);
            v["retiring"] = Value::Bool(view.status == "retiring");
            v["active"] = Value::Bool(view.status == "active");
            v["short_fingerprint"] = Value::String(view.fingerprint[..16].to_string());
            v
        })
        .collect();
    Ok(Some(serde_json::json!({"cas": rows, "rotating": rotating})))
}

/// `POST /agents/ca/rotate` (the Agents page's Rotate button).
pub fn rotate_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_ca(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    Ok(match rotate(app, req, ctx) {
        Ok(view) => redirect(
            "/agents#fleet-cas",
            Some((
                "success",
                &format!(
                    "CA {} is active; connected agents are being sent certificates of it. \
                     Retire the old CA once no agent holds its certificates.",
                    view.id
                ),
            )),
        ),
        Err(e) => redirect("/agents#fleet-cas", Some(("danger", e.public_message()))),
    })
}

/// `POST /agents/ca/{id}/retire` (the Agents page's Retire button; `force=on` retires
/// one agents still depend on).
pub fn retire_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_ca(ctx)?;
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    let force = form.get("force").is_some_and(|v| v == "on" || v == "true");
    Ok(match retire(app, req, ctx, id, force) {
        Ok(view) => redirect(
            "/agents#fleet-cas",
            Some((
                "success",
                &format!("CA {} is retired and trusted no more.", view.id),
            )),
        ),
        Err(e) => redirect("/agents#fleet-cas", Some(("danger", e.public_message()))),
    })
}
