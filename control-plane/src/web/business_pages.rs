//! HTML pages of the business side: server requests (form, list, the request's page
//! with its live history and the admin's moves), the notification inbox, client
//! subscriptions and revenue (SVG charts, CSV export), plus the business figures of
//! the role dashboards. Handlers are thin: parse, `policy::can`, domain, render.

use serde_json::{json, Map, Value};

use super::business_api::{self, may_see_requests, request_json, subscription_json};
use super::pages::{form, form_errors, page, page_with_status, rerender};
use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult, Kind};
use crate::hetzner::TokenRule;
use crate::notifications;
use crate::policy::{self, Action, Role};
use crate::projects::{self, Project};
use crate::requests::{self, NewRequest, Status};
use crate::revenue;
use crate::store::Read;
use crate::subscriptions::{self, SubscriptionInput, SubscriptionStatus};
use crate::users;
use crate::validate::{self, Problems};

fn require(ctx: &Ctx, action: Action) -> AppResult<()> {
    if policy::can(&ctx.subject, action, None) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Bootstrap colour of a request status badge.
pub fn status_class(status: Status) -> &'static str {
    match status {
        Status::Pending => "text-bg-warning",
        Status::Approved => "text-bg-info",
        Status::Provisioning => "text-bg-primary",
        Status::Deployed => "text-bg-success",
        Status::Rejected => "text-bg-secondary",
        Status::Failed => "text-bg-danger",
    }
}

/// Server types, locations and images offered in the request form (free text is
/// accepted too: the list is a hint, Hetzner is the judge).
const SERVER_TYPES: &[&str] = &[
    "cx11", "cx21", "cx22", "cx31", "cx32", "cx41", "cx42", "cpx11", "cpx21", "cpx31", "cax11",
    "ccx13",
];
const LOCATIONS: &[&str] = &["fsn1", "nbg1", "hel1", "ash", "hil", "sin"];
const IMAGES: &[&str] = &[
    "ubuntu-24.04",
    "ubuntu-22.04",
    "debian-12",
    "debian-11",
    "rocky-9",
];

// ---- requests ----

/// `GET /requests?status=S&client=C`: one page of the requests the caller may see,
/// newest first, with status tabs, a client filter and a pager.
pub fn requests_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    if !may_see_requests(ctx) {
        return Err(AppError::forbidden());
    }
    let paging = req.paging_with(50)?;
    let (rows, next, filter) = app.store.read(|r| {
        let filter = business_api::request_filter(r, req, ctx)?;
        let page = requests::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let mut rows = Vec::new();
        for q in &page.items {
            let mut v = request_json(r, q)?;
            v["status_class"] = json!(status_class(q.status));
            rows.push(v);
        }
        Ok((rows, page.next, filter))
    })?;
    let client = filter.client.clone().unwrap_or_default();
    let tab_href = |status: Option<Status>| {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = status {
            pairs.push(("status", s.as_str()));
        }
        if !client.is_empty() {
            pairs.push(("client", &client));
        }
        match serde_urlencoded::to_string(&pairs) {
            Ok(q) if !q.is_empty() => format!("/requests?{q}"),
            _ => "/requests".to_string(),
        }
    };
    let tabs: Vec<Value> = std::iter::once(
        json!({"label": "all", "href": tab_href(None), "active": filter.status.is_none()}),
    )
    .chain(Status::ALL.iter().map(|s| {
        json!({"label": s.as_str(), "href": tab_href(Some(*s)), "active": filter.status == Some(*s)})
    }))
    .collect();
    page(
        app,
        req,
        ctx,
        "requests",
        "Server requests",
        json!({
            "requests": rows,
            "tabs": tabs,
            "filters": {
                "client": client,
                "status": filter.status.map(|s| s.as_str()).unwrap_or_default(),
            },
            "filtered": filter.client.is_some() || filter.status.is_some(),
            "pager": req.pager(&paging, next.as_deref()),
            "can_create": policy::can(&ctx.subject, Action::CreateRequest, None),
        }),
    )
}

/// The first clients by name, offered while a form's client field is typed in (a
/// name not among them finds or makes its client when the form is saved).
fn client_names(app: &App) -> AppResult<Vec<String>> {
    let page = app
        .store
        .read(|r| crate::clients::query(r, None, None, 500))?;
    Ok(page.items.into_iter().map(|c| c.name).collect())
}

fn request_form_data(app: &App) -> AppResult<Value> {
    let projects: Vec<Value> = app
        .store
        .read(projects::all)?
        .iter()
        .map(|p| json!({"name": p.name, "budget": p.budget_monthly}))
        .collect();
    Ok(json!({
        "projects": projects,
        "client_names": client_names(app)?,
        "server_types": SERVER_TYPES,
        "locations": LOCATIONS,
        "images": IMAGES,
    }))
}

/// `GET /requests/new`.
pub fn request_form(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::CreateRequest)?;
    let mut data = request_form_data(app)?;
    data["values"] = json!({"location": "fsn1", "image": "ubuntu-22.04"});
    data["errors"] = json!({});
    data["error"] = Value::Null;
    page(app, req, ctx, "request_form", "New server request", data)
}

/// `POST /requests/new`.
pub fn request_save(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::CreateRequest)?;
    let form = form(req, ctx)?;
    let actor = ctx.actor(req);
    let result = {
        let text = |name: &str| form.get(name).map(String::from);
        // Numbers that do not parse are reported with the other fields' problems.
        let mut problems = Problems::new();
        let mut count = |name: &str| {
            problems
                .check(requests::count_text(name, form.get(name)))
                .unwrap_or(None)
        };
        let (cpu_cores, ram_gb, disk_gb) = (count("cpu_cores"), count("ram_gb"), count("disk_gb"));
        let monthly_budget = problems
            .check(validate::money_text(
                "monthly_budget",
                form.get("monthly_budget"),
            ))
            .unwrap_or(None);
        let margin_percent = problems
            .check(validate::number_text(
                "margin_percent",
                form.get("margin_percent"),
            ))
            .unwrap_or(None);
        let input = NewRequest {
            client_id: None,
            client_name: text("client_name"),
            client_email: text("client_email"),
            purpose: text("purpose"),
            project: text("project"),
            server_type: text("server_type"),
            location: text("location"),
            image: text("image"),
            cpu_cores,
            ram_gb,
            disk_gb,
            monthly_budget,
            margin_percent,
            notes: text("notes"),
        };
        app.store
            .write(|w| {
                Ok(requests::create_adding_to(
                    w, &actor, &ctx.user, &input, problems,
                )?)
            })
            .map_err(AppError::from)
    };
    match result {
        Ok(request) => Ok(redirect(
            &requests::link(&request.id),
            Some((
                "success",
                &format!("Request for {} submitted.", request.client_name),
            )),
        )),
        Err(e) => {
            let data = request_form_data(app)?;
            rerender(
                app,
                req,
                ctx,
                e,
                "request_form",
                "New server request",
                data,
                form.values(),
            )
        }
    }
}

/// The request page's data: the request, its moves the caller may make, and for a
/// pending one the budget warning approval would raise.
fn request_page_data(app: &App, ctx: &Ctx, id: &str) -> AppResult<(Value, String)> {
    let (request, project, mut value, warning) = app.store.read(|r| {
        let request = requests::get_visible(r, &ctx.subject, id)?;
        let project: Option<Project> = r.get(&request.project_id)?;
        let value = request_json(r, &request)?;
        let warning = if request.status == Status::Pending {
            requests::budget_warning(r, &request)?
        } else {
            request.budget_warning.clone()
        };
        Ok((request, project, value, warning))
    })?;
    let is_admin = policy::can(&ctx.subject, Action::ApproveRequest, None);
    let has_token = project
        .as_ref()
        .is_some_and(|p| crate::hetzner::sync::has_token(app, p));
    let facts = requests::Facts {
        actor: if is_admin {
            requests::ActorKind::Admin
        } else {
            requests::ActorKind::Other
        },
        is_requester: request.requested_by == ctx.user.id,
        project_has_token: has_token,
    };
    let allowed = |action| is_admin && requests::next(request.status, action, facts).is_ok();
    value["status_class"] = json!(status_class(request.status));
    let title = format!("Request for {}", request.client_name);
    let data = json!({
        "request": value,
        "budget_warning": warning,
        "own_request_admin": is_admin && request.status == Status::Pending && facts.is_requester,
        "can_approve": allowed(requests::Action::Approve),
        "can_reject": allowed(requests::Action::Reject),
        "can_mark_deployed": allowed(requests::Action::MarkDeployed),
        "can_retry": allowed(requests::Action::Retry),
        "has_token": has_token,
        "api_url": format!("/api/v1/requests/{}", request.id),
        "errors": {},
        "values": {},
    });
    let mut data = data;
    let today = chrono::Utc::now().date_naive();
    let may_subscribe = policy::can(&ctx.subject, Action::ManageSubscriptions, None);
    let can_mark_deployed = allowed(requests::Action::MarkDeployed);
    let (proposal, project_servers) = app.store.read(|r| {
        let proposal = match may_subscribe {
            true => requests::proposal(r, &request, today)?,
            false => None,
        };
        // The servers "Mark deployed" may link, as suggestions while typing.
        let names: Vec<String> = match can_mark_deployed {
            true => {
                let filter = crate::servers::Filter {
                    project_id: Some(request.project_id.clone()),
                    ..Default::default()
                };
                crate::servers::query(r, &ctx.subject, &filter, None, 500)?
                    .items
                    .into_iter()
                    .filter(|s| s.status != "deleted")
                    .map(|s| s.name)
                    .collect()
            }
            false => Vec::new(),
        };
        Ok((proposal, names))
    })?;
    data["proposal"] = json!(proposal);
    data["project_servers"] = json!(project_servers);
    data["provisioning"] = app
        .store
        .read(|r| crate::hetzner::provision::view(r, TokenRule::of(app), &request.id))?;
    // Before provisioning starts the steps wait, hidden, so that whoever watches the
    // page (the requester too) sees them appear and advance without a reload.
    data["provisioning_waiting"] = if data["provisioning"].is_null()
        && matches!(request.status, Status::Pending | Status::Approved)
    {
        let steps: Vec<Value> = crate::hetzner::provision::STEPS
            .iter()
            .map(|name| json!({"name": name, "state": "pending"}))
            .collect();
        json!({"request_id": request.id, "steps": steps})
    } else {
        Value::Null
    };
    Ok((data, title))
}

/// `GET /requests/{id}`: the request with every step, updated live by requests.js.
pub fn request_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let (data, title) = request_page_data(app, ctx, id)?;
    page(app, req, ctx, "request", &title, data)
}

/// `POST /requests/{id}/{approve|reject|deployed|retry}`: one workflow move by an
/// admin. A missing reason re-renders the page with the message beside the field; a
/// move the workflow forbids comes back as a flash with the reason.
pub fn request_move(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    action: requests::Action,
) -> AppResult<Resp> {
    require(ctx, Action::ApproveRequest)?;
    let form = form(req, ctx)?;
    app.store
        .read(|r| Ok(requests::get_visible(r, &ctx.subject, id)?))?;
    let note = if action == requests::Action::Reject {
        form.get("reason")
    } else {
        form.get("note")
    };
    let server = form
        .get("server")
        .map(str::trim)
        .filter(|s| !s.is_empty() && action == requests::Action::MarkDeployed);
    let actor = ctx.actor(req);
    match app.store.write(|w| {
        Ok(requests::mark_moved(
            w,
            TokenRule::of(app),
            &actor,
            id,
            action,
            note,
            server,
        )?)
    }) {
        Ok(request) => {
            if action == requests::Action::Approve {
                requests::approved(app, &request);
            }
            let flash = match (&request.budget_warning, action) {
                (Some(w), requests::Action::Approve) => ("warning", format!("Approved — {w}.")),
                _ => ("success", format!("Request {}.", action.label())),
            };
            Ok(redirect(&requests::link(id), Some((flash.0, &flash.1))))
        }
        Err(e) => {
            let e = AppError::from(e);
            match e.kind {
                Kind::Invalid => {
                    let (mut data, title) = request_page_data(app, ctx, id)?;
                    data["errors"] = Value::Object(form_errors(&e));
                    data["values"] = Value::Object(form.values());
                    page_with_status(app, req, ctx, e.status(), "request", &title, data)
                }
                Kind::Conflict => Ok(redirect(
                    &requests::link(id),
                    Some(("danger", e.public_message())),
                )),
                _ => Err(e),
            }
        }
    }
}

// ---- notifications ----

/// `GET /notifications`: the caller's inbox.
pub fn inbox(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let paging = req.paging_with(50)?;
    let (list, next) = app.store.read(|r| {
        notifications::inbox_page(
            r,
            &ctx.user.id,
            false,
            paging.cursor.as_deref(),
            paging.limit,
        )
    })?;
    let unread = list.iter().filter(|n| !n.read).count();
    page(
        app,
        req,
        ctx,
        "notifications",
        "Notifications",
        json!({"notifications": list, "unread_here": unread, "pager": req.pager(&paging, next.as_deref())}),
    )
}

/// `GET /notifications/{id}`: marks it read and goes to what it is about.
pub fn open_notification(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let n = app
        .store
        .write(|w| Ok(notifications::mark_read(w, &ctx.user.id, id)?))?;
    let target = n
        .link
        .filter(|l| l.starts_with('/') && !l.starts_with("//"))
        .unwrap_or_else(|| "/notifications".into());
    Ok(redirect(&target, None))
}

/// `POST /notifications/{id}/read`.
pub fn read_notification(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    form(req, ctx)?;
    app.store
        .write(|w| Ok(notifications::mark_read(w, &ctx.user.id, id)?))?;
    Ok(redirect("/notifications", None))
}

/// `POST /notifications/read_all`.
pub fn read_all_notifications(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    form(req, ctx)?;
    let n = app
        .store
        .write(|w| Ok(notifications::mark_all_read(w, &ctx.user.id)?))?;
    Ok(redirect(
        "/notifications",
        Some(("success", &format!("{n} marked read."))),
    ))
}

// ---- subscriptions ----

/// `GET /subscriptions`.
pub fn subscriptions_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let filter = business_api::subscription_filter(req)?;
    let paging = req.paging_with(50)?;
    let today = chrono::Utc::now().date_naive();
    let (rows, next, mrr) = app.store.read(|r| {
        // The recurring revenue is a report over every subscription the caller sees.
        let mrr = money_text(
            &revenue::compute(&subscriptions::visible(r, &ctx.subject)?, &[], today).mrr,
        );
        let page = subscriptions::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let rows = page
            .items
            .iter()
            .map(|s| {
                let mut v = subscription_json(r, s)?;
                let left = subscriptions::days_left(s, today);
                v["expiring"] = json!(
                    s.status == SubscriptionStatus::Active
                        && s.cancellation.is_none()
                        && !s.auto_renew
                        && (0..=30).contains(&left)
                );
                v["expired"] = json!(s.status == SubscriptionStatus::Expired);
                Ok(v)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((rows, page.next, mrr))
    })?;
    page(
        app,
        req,
        ctx,
        "subscriptions",
        "Subscriptions",
        json!({
            "subscriptions": rows,
            "mrr": mrr,
            "filters": {
                "q": filter.text.clone().unwrap_or_default(),
                "status": filter.status.map(|s| s.as_str()).unwrap_or_default(),
                "sort": match filter.sort {
                    subscriptions::Sort::Client => "client",
                    subscriptions::Sort::End => "end",
                },
            },
            "statuses": SubscriptionStatus::ALL.map(|s| s.as_str()),
            "filtered": filter.text.is_some() || filter.status.is_some()
                || filter.sort != subscriptions::Sort::Client,
            "pager": super::pages::pager_by_name(req, &paging, next.as_deref()),
        }),
    )
}

/// What the subscription form offers: only servers the caller may put on it (see
/// `subscriptions::offerable_servers`), with their monthly cost only for those who
/// see them in the fleet; for an existing subscription, those of its client.
fn subscription_form_data(
    app: &App,
    ctx: &Ctx,
    existing: Option<&subscriptions::Subscription>,
) -> AppResult<Value> {
    let (servers, agents) = app.store.read(|r| {
        let offered = subscriptions::offerable_servers(
            r,
            &ctx.subject,
            existing.map(|s| s.client.as_str()),
            existing.map(|s| s.server_ids.as_slice()).unwrap_or(&[]),
        )?;
        let mut servers = Vec::new();
        for o in offered {
            let label = match o.client {
                Some(client) => client,
                None => r.get::<Project>(&o.server.project_id)?.map(|p| p.name).unwrap_or_default(),
            };
            let cost = if o.in_fleet { o.server.monthly_cost } else { None };
            servers.push(json!({"id": o.server.id, "name": o.server.name, "project": label, "monthly_cost": cost}));
        }
        let agents: Vec<String> = users::all(r)?
            .into_iter()
            .filter(|u| u.active && matches!(u.role, Role::Sales | Role::Admin))
            .map(|u| u.username)
            .collect();
        Ok((servers, agents))
    })?;
    Ok(json!({
        "servers": servers,
        "agents": agents,
        "can_assign": policy::can(&ctx.subject, Action::ViewAllRevenue, None),
        "client_names": client_names(app)?,
        "subscription": null,
        "lifecycle": null,
        "proposal": null,
    }))
}

/// What the subscription page offers to do with its lifecycle.
fn lifecycle_view(s: &subscriptions::Subscription, ctx: &Ctx) -> Value {
    let today = chrono::Utc::now().date_naive();
    let pending = s
        .cancellation
        .as_ref()
        .filter(|c| s.status.is_open() && c.effective_on > today);
    json!({
        "can_cancel": s.status.is_open(),
        "can_pause": s.status == SubscriptionStatus::Active,
        "can_resume": s.status == SubscriptionStatus::Paused,
        "can_end": s.status.is_open(),
        "can_delete": policy::can(&ctx.subject, Action::ViewAllRevenue, None),
        "today": today.to_string(),
        "pending_cancellation": pending,
        "badge": match s.status {
            SubscriptionStatus::Active => "text-bg-success",
            SubscriptionStatus::Paused => "text-bg-warning",
            SubscriptionStatus::Cancelled | SubscriptionStatus::Ended => "text-bg-dark",
            SubscriptionStatus::Expired => "text-bg-secondary",
        },
    })
}

fn subscription_values(s: &subscriptions::Subscription) -> Value {
    json!({
        "client": s.client, "monthly_cost": format!("{:.2}", s.monthly_cost), "currency": s.currency,
        "starts_on": s.starts_on.to_string(), "hosting_until": s.hosting_until.to_string(),
        "auto_renew": s.auto_renew, "renewal_months": s.renewal_months.to_string(),
        "sales_agent": s.sales_agent, "notes": s.notes.clone().unwrap_or_default(),
        "server_ids": s.server_ids,
    })
}

/// `GET /subscriptions/new` and `GET /subscriptions/{id}`.
pub fn subscription_form(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let existing = match id {
        Some(id) => Some(
            app.store
                .read(|r| Ok(subscriptions::get_visible(r, &ctx.subject, id)?))?,
        ),
        None => None,
    };
    let mut data = subscription_form_data(app, ctx, existing.as_ref())?;
    let title = match id {
        None => {
            let today = chrono::Utc::now().date_naive();
            data["values"] = json!({
                "currency": "EUR", "starts_on": today.to_string(), "renewal_months": "12",
                "auto_renew": true, "sales_agent": ctx.user.username, "server_ids": [],
            });
            if let Some(request_id) = req.query("request").filter(|r| !r.trim().is_empty()) {
                match proposal_values(app, ctx, request_id, today)? {
                    Ok((values, proposal)) => {
                        data["values"] = values;
                        data["proposal"] = proposal;
                    }
                    Err(why) => {
                        return Ok(redirect(
                            &requests::link(request_id),
                            Some(("warning", &why)),
                        ))
                    }
                }
            }
            "New subscription".to_string()
        }
        Some(id) => {
            let (sub, value) = app.store.read(|r| {
                let sub = subscriptions::get_visible(r, &ctx.subject, id)?;
                let value = subscription_json(r, &sub)?;
                Ok((sub, value))
            })?;
            data["values"] = subscription_values(&sub);
            data["subscription"] = value;
            data["lifecycle"] = lifecycle_view(&sub, ctx);
            format!("Subscription of {}", sub.client)
        }
    };
    data["errors"] = json!({});
    data["error"] = Value::Null;
    page(app, req, ctx, "subscription_form", &title, data)
}

/// The form values of the subscription proposed for a deployed request, and the
/// proposal; or why there is none (the request is not deployed, or has one already).
fn proposal_values(
    app: &App,
    ctx: &Ctx,
    request_id: &str,
    today: chrono::NaiveDate,
) -> AppResult<Result<(Value, Value), String>> {
    let answer = app.store.read(|r| {
        let request = requests::get_visible(r, &ctx.subject, request_id)?;
        let Some(p) = requests::proposal(r, &request, today)? else {
            let why = match &request.subscription_id {
                Some(_) => "The request has its subscription already.",
                None => "A subscription is proposed once the request is deployed.",
            };
            return Ok(Err(why.to_string()));
        };
        let values = json!({
            "client": p.client, "server_ids": p.server_ids,
            "monthly_cost": p.monthly_cost.map(|c| format!("{c:.2}")).unwrap_or_default(),
            "currency": p.currency, "starts_on": p.starts_on.to_string(),
            "hosting_until": p.hosting_until.to_string(), "auto_renew": p.auto_renew,
            "renewal_months": p.renewal_months.to_string(), "sales_agent": ctx.user.username,
            "request_id": p.request_id,
        });
        Ok(Ok((values, json!(p))))
    })?;
    Ok(answer)
}

/// `POST /subscriptions/new` and `POST /subscriptions/{id}`.
pub fn subscription_save(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let form = form(req, ctx)?;
    let existing = match id {
        Some(id) => Some(
            app.store
                .read(|r| Ok(subscriptions::get_visible(r, &ctx.subject, id)?))?,
        ),
        None => None,
    };
    let actor = ctx.actor(req);
    let server_ids: Vec<String> = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&req.body)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == "server_ids")
        .map(|(_, v)| v)
        .collect();
    let result = {
        let text = |name: &str| form.get(name).map(String::from);
        // Numbers that do not parse are reported with the other fields' problems.
        let mut problems = Problems::new();
        let monthly_cost = problems
            .check(
                validate::money_text("monthly_cost", form.get("monthly_cost")).and_then(|cost| {
                    cost.ok_or_else(|| {
                        AppError::invalid("monthly_cost", "monthly cost is required")
                    })
                }),
            )
            .ok();
        let renewal_months = problems
            .check(requests::count_text(
                "renewal_months",
                form.get("renewal_months"),
            ))
            .unwrap_or(None);
        let input = SubscriptionInput {
            client_id: None,
            client: Some(text("client").unwrap_or_default()),
            server_ids: Some(server_ids.clone()),
            monthly_cost,
            currency: Some(text("currency").unwrap_or_default()),
            starts_on: Some(text("starts_on").unwrap_or_default()),
            hosting_until: Some(text("hosting_until").unwrap_or_default()),
            auto_renew: Some(form.checked("auto_renew")),
            renewal_months,
            sales_agent: text("sales_agent"),
            notes: Some(text("notes").unwrap_or_default()),
            request_id: if existing.is_none() {
                text("request_id")
            } else {
                None
            },
        };
        app.store
            .write(|w| {
                let mut problems = problems;
                let owner = problems
                    .check(business_api::owner_of(w, ctx, input.sales_agent.as_deref()))
                    .unwrap_or(None);
                let _ = problems.check(subscriptions::check_server_choice(
                    w,
                    &ctx.subject,
                    &input,
                    existing.as_ref(),
                ));
                let _ = problems.check(business_api::check_request_choice(w, ctx, &input));
                Ok(match &existing {
                    Some(s) => subscriptions::update_adding_to(
                        w,
                        &actor,
                        &s.id,
                        &input,
                        owner.as_ref(),
                        problems,
                    )?,
                    None => subscriptions::create_adding_to(
                        w,
                        &actor,
                        owner.as_ref().unwrap_or(&ctx.user),
                        &input,
                        problems,
                    )?,
                })
            })
            .map_err(AppError::from)
    };
    match result {
        Ok(sub) => Ok(redirect(
            "/subscriptions",
            Some(("success", &format!("Subscription of {} saved.", sub.client))),
        )),
        Err(e) => {
            let mut data = subscription_form_data(app, ctx, existing.as_ref())?;
            if let Some(s) = &existing {
                data["subscription"] = app.store.read(|r| subscription_json(r, s))?;
                data["lifecycle"] = lifecycle_view(s, ctx);
            }
            let mut values: Map<String, Value> = form.values();
            values.insert("auto_renew".into(), json!(form.checked("auto_renew")));
            values.insert("server_ids".into(), json!(server_ids));
            let title = if existing.is_some() {
                "Edit subscription"
            } else {
                "New subscription"
            };
            rerender(app, req, ctx, e, "subscription_form", title, data, values)
        }
    }
}

/// `POST /subscriptions/{id}/{cancel,pause,resume,end}` from the subscription page;
/// a refused change re-renders the page with the reason beside the form.
pub fn subscription_change(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    what: &str,
) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let what = subscriptions::Change::parse(what).ok_or_else(|| AppError::not_found("page"))?;
    let form = form(req, ctx)?;
    let existing = app
        .store
        .read(|r| Ok(subscriptions::get_visible(r, &ctx.subject, id)?))?;
    let input = subscriptions::ChangeInput {
        reason: form.get("reason").map(String::from),
        effective_on: form
            .get("effective_on")
            .filter(|d| !d.trim().is_empty())
            .map(String::from),
    };
    let actor = ctx.actor(req);
    let today = chrono::Utc::now().date_naive();
    let result = app
        .store
        .write(|w| Ok(subscriptions::change(w, &actor, id, what, &input, today)?))
        .map_err(AppError::from);
    match result {
        Ok(sub) => {
            let done = match what {
                subscriptions::Change::Cancel => "cancelled",
                subscriptions::Change::Pause => "paused",
                subscriptions::Change::Resume => "resumed",
                subscriptions::Change::End => "ended",
            };
            Ok(redirect(
                &format!("/subscriptions/{}", sub.id),
                Some((
                    "success",
                    &format!("Subscription of {} {done}.", sub.client),
                )),
            ))
        }
        Err(e) => {
            let mut data = subscription_form_data(app, ctx, Some(&existing))?;
            data["subscription"] = app.store.read(|r| subscription_json(r, &existing))?;
            data["lifecycle"] = lifecycle_view(&existing, ctx);
            let mut values = match subscription_values(&existing) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            values.insert(
                "reason".into(),
                json!(form.get("reason").unwrap_or_default()),
            );
            values.insert(
                "effective_on".into(),
                json!(form.get("effective_on").unwrap_or_default()),
            );
            values.insert("change".into(), json!(what.as_str()));
            let title = format!("Subscription of {}", existing.client);
            rerender(app, req, ctx, e, "subscription_form", &title, data, values)
        }
    }
}

/// `POST /subscriptions/{id}/delete` (with the `confirm` box ticked): for those who
/// see every sales agent's revenue.
pub fn subscription_delete(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let form = form(req, ctx)?;
    let existing = app
        .store
        .read(|r| Ok(subscriptions::get_visible(r, &ctx.subject, id)?))?;
    require(ctx, Action::ViewAllRevenue)?;
    if !form.checked("confirm") {
        return Ok(redirect(
            &format!("/subscriptions/{id}"),
            Some((
                "danger",
                "Tick the box to confirm that the subscription and its history are deleted.",
            )),
        ));
    }
    let actor = ctx.actor(req);
    app.store
        .write(|w| Ok(subscriptions::delete(w, &actor, id)?))?;
    Ok(redirect(
        "/subscriptions",
        Some((
            "success",
            &format!("Subscription of {} deleted.", existing.client),
        )),
    ))
}

// ---- clients ----

/// `GET /clients[?q=…]`: one page of clients by name.
pub fn clients_list(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    if !business_api::may_see_clients(ctx) {
        return Err(AppError::forbidden());
    }
    req.only_filters(&["q"])?;
    let text = req.text_filter("q");
    let paging = req.paging_with(50)?;
    let page_of = app.store.read(|r| {
        crate::clients::query(r, text.as_deref(), paging.cursor.as_deref(), paging.limit)
    })?;
    page(
        app,
        req,
        ctx,
        "clients",
        "Clients",
        json!({
            "clients": page_of.items,
            "q": text.unwrap_or_default(),
            "pager": super::pages::pager_by_name(req, &paging, page_of.next.as_deref()),
        }),
    )
}

fn client_values(c: &crate::clients::Client) -> Value {
    json!({
        "name": c.name, "email": c.email.clone().unwrap_or_default(),
        "company": c.company.clone().unwrap_or_default(), "vat_id": c.vat_id.clone().unwrap_or_default(),
        "address": c.address.clone().unwrap_or_default(), "notes": c.notes.clone().unwrap_or_default(),
    })
}

/// The client page's data beside the form: the client with what the subject may see
/// of it, and its revenue as text.
fn client_page_data(
    app: &App,
    ctx: &Ctx,
    client: Option<&crate::clients::Client>,
) -> AppResult<Value> {
    let Some(client) = client else {
        return Ok(json!({"client": null, "revenue": null}));
    };
    let value = app
        .store
        .read(|r| business_api::client_json(r, ctx, client))?;
    let mrr: revenue::Money =
        serde_json::from_value(value["revenue"]["mrr"].clone()).unwrap_or_default();
    let revenue = (!mrr.is_empty()).then(|| money_text(&mrr));
    Ok(json!({"client": value, "revenue": revenue}))
}

/// `GET /clients/{id}/statement?month=YYYY-MM`: the printable monthly statement.
pub fn statement_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    req.only_filters(&["month"])?;
    let statement = business_api::statement_of(app, ctx, id, req.query("month"))?;
    let month = crate::statements::Month::of(statement.from);
    let totals: Vec<Value> = statement
        .totals
        .iter()
        .map(|(currency, amount)| json!({"currency": currency, "amount": amount}))
        .collect();
    let title = format!(
        "Statement of {} for {}",
        statement.client.name, statement.month
    );
    let mut value = json!(statement);
    value["totals"] = json!(totals);
    // A short reference reads better on paper than a whole UUID.
    if let Some(lines) = value["lines"].as_array_mut() {
        for line in lines {
            let short: String = line["subscription"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(8)
                .collect();
            line["reference"] = json!(short);
        }
    }
    let data = json!({
        "statement": value,
        "previous": month.previous().to_string(),
        "next": month.next().to_string(),
    });
    page(app, req, ctx, "statement", &title, data)
}

/// `GET /clients/{id}/statement.csv?month=YYYY-MM`.
pub fn statement_download(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    req.only_filters(&["month"])?;
    let statement = business_api::statement_of(app, ctx, id, req.query("month"))?;
    Ok(business_api::statement_csv(&statement))
}

/// `GET /clients/new` and `GET /clients/{id}`.
pub fn client_form(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    if !business_api::may_see_clients(ctx) {
        return Err(AppError::forbidden());
    }
    let client = match id {
        Some(id) => Some(app.store.read(|r| Ok(crate::clients::get(r, id)?))?),
        None => None,
    };
    let mut data = client_page_data(app, ctx, client.as_ref())?;
    data["values"] = client.as_ref().map(client_values).unwrap_or(json!({}));
    data["errors"] = json!({});
    data["error"] = Value::Null;
    let title = client
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "New client".into());
    page(app, req, ctx, "client", &title, data)
}

/// `POST /clients/new` and `POST /clients/{id}`.
pub fn client_save(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    if !business_api::may_see_clients(ctx) {
        return Err(AppError::forbidden());
    }
    let form = form(req, ctx)?;
    let existing = match id {
        Some(id) => Some(app.store.read(|r| Ok(crate::clients::get(r, id)?))?),
        None => None,
    };
    let text = |name: &str| Some(form.get(name).unwrap_or_default().to_string());
    let input = crate::clients::ClientInput {
        name: text("name"),
        email: text("email"),
        company: text("company"),
        vat_id: text("vat_id"),
        address: text("address"),
        notes: text("notes"),
    };
    let actor = ctx.actor(req);
    let result = app
        .store
        .write(|w| {
            Ok(match &existing {
                Some(c) => crate::clients::update(w, &actor, &c.id, &input)?,
                None => crate::clients::create(w, &actor, &input)?,
            })
        })
        .map_err(AppError::from);
    match result {
        Ok(client) => Ok(redirect(
            &format!("/clients/{}", client.id),
            Some(("success", &format!("Client {} saved.", client.name))),
        )),
        Err(e) => {
            let data = client_page_data(app, ctx, existing.as_ref())?;
            let title = existing
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_else(|| "New client".into());
            rerender(app, req, ctx, e, "client", &title, data, form.values())
        }
    }
}

// ---- revenue ----

/// Formats a per-currency amount map as `EUR 150.00 · USD 30.00`.
fn money_text(money: &revenue::Money) -> String {
    if money.is_empty() {
        return "—".into();
    }
    money
        .iter()
        .map(|(c, a)| format!("{c} {a:.2}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A client's margin as the revenue page shows it: per currency it pays; the EUR
/// server cost of a client that pays no EUR is written beside it (never converted),
/// so `EGP 2500.00 · EUR -10.59` does not read like a loss.
fn margin_text(c: &revenue::ClientRevenue) -> String {
    if c.hetzner_cost_eur <= 0.0 || c.mrr.contains_key(revenue::SERVER_CURRENCY) {
        return money_text(&c.margin);
    }
    format!(
        "{}, less {} {:.2} of servers",
        money_text(&c.mrr),
        revenue::SERVER_CURRENCY,
        c.hetzner_cost_eur
    )
}

/// `GET /revenue`: tables, one SVG chart per currency, CSV links.
pub fn revenue_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let report = business_api::revenue_of(app, ctx)?;
    let currencies = revenue::currencies(&report);
    let month_charts: Vec<Value> = currencies
        .iter()
        .map(|c| {
            let bars: Vec<(String, f64)> = report
                .by_month
                .iter()
                .map(|m| (m.month.clone(), m.mrr.get(c).copied().unwrap_or(0.0)))
                .collect();
            json!({"currency": c, "svg": revenue::bar_chart_svg("MRR per month", c, &bars)})
        })
        .collect();
    let client_charts: Vec<Value> = report
        .mrr
        .keys()
        .map(|c| {
            let bars: Vec<(String, f64)> = report
                .by_client
                .iter()
                .filter_map(|row| row.mrr.get(c).map(|a| (row.client.clone(), *a)))
                .collect();
            json!({"currency": c, "svg": revenue::bar_chart_svg("MRR per client", c, &bars)})
        })
        .collect();
    let clients: Vec<Value> = report
        .by_client
        .iter()
        .map(|c| {
            json!({
                "client": c.client, "mrr": money_text(&c.mrr), "cost": c.hetzner_cost_eur,
                "margin": margin_text(c), "subscriptions": c.subscriptions,
                "servers": c.servers, "sales_agents": c.sales_agents.join(", "),
                // A loss only in a currency the client pays: the EUR server cost of a
                // client paying in EGP is a cost beside its margin, not a loss.
                "negative": c.margin.iter().any(|(code, v)| *v < 0.0 && c.mrr.contains_key(code)),
            })
        })
        .collect();
    let agents: Vec<Value> = report
        .by_sales_agent
        .iter()
        .map(|a| json!({"sales_agent": a.sales_agent, "mrr": money_text(&a.mrr), "clients": a.clients, "subscriptions": a.subscriptions}))
        .collect();
    let months: Vec<Value> = report
        .by_month
        .iter()
        .map(|m| json!({"month": m.month, "mrr": money_text(&m.mrr)}))
        .collect();
    let totals: Vec<Value> = report
        .mrr
        .iter()
        .map(|(c, a)| json!({"currency": c, "amount": a}))
        .collect();
    page(
        app,
        req,
        ctx,
        "revenue",
        "Revenue",
        json!({
            "totals": totals, "hetzner_cost": report.hetzner_cost_eur,
            "month_charts": month_charts, "client_charts": client_charts,
            "clients": clients, "agents": agents, "months": months,
            "all_agents": policy::can(&ctx.subject, Action::ViewAllRevenue, None),
        }),
    )
}

/// `GET /revenue/{clients|agents|months}.csv`.
pub fn revenue_csv(app: &App, ctx: &Ctx, file: &str) -> AppResult<Resp> {
    let report = business_api::revenue_of(app, ctx)?;
    let table = file
        .strip_suffix(".csv")
        .ok_or_else(|| AppError::not_found("export"))?;
    business_api::csv_response(&report, table).map_err(|_| AppError::not_found("export"))
}

// ---- dashboards ----

/// The business figures of the caller's dashboard, always with every key the
/// template reads: for admins the pending approvals; for sales agents their requests
/// by status, clients, subscriptions ending within 30 days and their MRR.
pub fn dashboard_figures(r: &impl Read, ctx: &Ctx) -> anyhow::Result<Value> {
    let today = chrono::Utc::now().date_naive();
    let mut pending = Vec::new();
    if policy::can(&ctx.subject, Action::ApproveRequest, None) {
        let filter = requests::Filter {
            status: Some(Status::Pending),
            ..Default::default()
        };
        for q in requests::query(r, &ctx.subject, &filter, None, 10)?.items {
            let mut v = request_json(r, &q)?;
            v["budget_warning"] = json!(requests::budget_warning(r, &q)?);
            pending.push(v);
        }
    }
    let mut by_status = Vec::new();
    let mut clients: Vec<String> = Vec::new();
    let mut expiring = Vec::new();
    let mut mrr = Vec::new();
    let mut my_requests = Vec::new();
    if ctx.user.role == Role::Sales {
        for (status, count) in requests::counts_by_status(r, Some(&ctx.user.id))? {
            by_status.push(
                json!({"status": status.as_str(), "count": count, "class": status_class(status)}),
            );
        }
        let mine = requests::Filter {
            requested_by: Some(ctx.user.id.clone()),
            ..Default::default()
        };
        for q in &requests::query(r, &ctx.subject, &mine, None, 6)?.items {
            let mut v = request_json(r, q)?;
            v["status_class"] = json!(status_class(q.status));
            my_requests.push(v);
        }
        let subs: Vec<subscriptions::Subscription> = subscriptions::visible(r, &ctx.subject)?
            .into_iter()
            .filter(|s| s.sales_agent_id == ctx.user.id)
            .collect();
        for s in &subs {
            if s.status == SubscriptionStatus::Active && !clients.contains(&s.client) {
                clients.push(s.client.clone());
            }
            let left = subscriptions::days_left(s, today);
            // A subscription the client cancelled neither renews nor needs a reminder.
            if s.status == SubscriptionStatus::Active
                && s.cancellation.is_none()
                && (0..=30).contains(&left)
            {
                expiring.push(json!({"id": s.id, "client": s.client, "hosting_until": s.hosting_until.to_string(), "days_left": left, "auto_renew": s.auto_renew}));
            }
        }
        let servers = subscriptions::servers_of(r, &subs)?;
        let report = revenue::compute(&subs, &servers, today);
        mrr = report
            .mrr
            .iter()
            .map(|(c, a)| json!({"currency": c, "amount": a}))
            .collect();
    }
    // Admins see every agent's subscriptions that end or renew within 30 days, soonest
    // first (a cancelled one neither renews nor needs a word).
    let mut renewals_due = Vec::new();
    if ctx.user.role == Role::Admin {
        let until = today + chrono::Duration::days(30);
        for s in &subscriptions::ending_between(r, today, until, 10)? {
            renewals_due.push(json!({"id": s.id, "client": s.client, "sales_agent": s.sales_agent, "hosting_until": s.hosting_until.to_string(), "days_left": subscriptions::days_left(s, today), "auto_renew": s.auto_renew}));
        }
    }
    let (running, failed, due) = if policy::can(&ctx.subject, Action::ViewServers, None) {
        operations_figures(r, ctx)?
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    Ok(json!({
        "executions_running": running,
        "executions_failed": failed,
        "schedules_due": due,
        "pending": pending,
        "requests_by_status": by_status,
        "my_requests": my_requests,
        "clients": clients,
        "expiring": expiring,
        "renewals_due": renewals_due,
        "mrr": mrr,
    }))
}

/// Operations at a glance for those who see servers: executions running now, those
/// that failed in the last day, and the backup and update schedules that run next,
/// all limited to the projects the caller may see.
fn operations_figures(
    r: &impl Read,
    ctx: &Ctx,
) -> anyhow::Result<(Vec<Value>, Vec<Value>, Vec<Value>)> {
    use crate::executions::{Execution, Filter, Status as Run};
    let now = chrono::Utc::now();
    let visible =
        |project_id: &str| policy::can(&ctx.subject, Action::ViewServers, Some(project_id));
    // The newest few of some statuses, each read as one page through the executions'
    // indexes: the dashboard never reads the executions table.
    let newest = |statuses: &[Run], since: Option<chrono::DateTime<chrono::Utc>>| {
        let mut found: Vec<Execution> = Vec::new();
        for status in statuses {
            let filter = Filter {
                status: Some(*status),
                since,
                ..Default::default()
            };
            found.extend(crate::executions::query(r, &ctx.subject, &filter, None, 8)?.items);
        }
        found.sort_by(|a, b| b.id.cmp(&a.id));
        found.truncate(8);
        anyhow::Ok(found)
    };
    let row = |e: &Execution| -> anyhow::Result<Value> {
        let agent = r
            .get::<crate::agents::Agent>(&e.agent_id)?
            .map(|a| a.name)
            .unwrap_or_default();
        let kind = serde_json::to_value(&e.work)?
            .get("kind")
            .cloned()
            .unwrap_or(Value::Null);
        Ok(json!({
            "id": e.id, "agent": agent, "kind": kind, "status": e.status.as_str(),
            "created_at": e.created_at, "exit_code": e.exit_code,
        }))
    };
    let running = newest(&[Run::Running, Run::Queued], None)?;
    let failed = newest(
        &[Run::Failed, Run::TimedOut],
        Some(now - chrono::Duration::hours(24)),
    )?;
    // Every row's agent and every project's schedules in one query each (PostgreSQL).
    let agent_ids: Vec<String> = running
        .iter()
        .chain(&failed)
        .map(|e| e.agent_id.clone())
        .collect();
    r.prefetch::<crate::agents::Agent>(&agent_ids)?;
    let running = running
        .iter()
        .map(&row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let failed = failed
        .iter()
        .map(&row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let projects: Vec<projects::Project> = projects::all(r)?
        .into_iter()
        .filter(|p| visible(&p.id))
        .collect();
    let schedule_ids: Vec<String> = projects
        .iter()
        .flat_map(|p| {
            [
                crate::schedules::ScheduleKind::Backup,
                crate::schedules::ScheduleKind::Update,
            ]
            .map(|kind| crate::schedules::schedule_id(kind, &p.id))
        })
        .collect();
    r.prefetch::<crate::schedules::Schedule>(&schedule_ids)?;
    let mut due = Vec::new();
    for project in &projects {
        let (backup, update) = crate::schedules::of_project(r, &project.id)?;
        for (kind, schedule) in [("backup", backup), ("update", update)] {
            let view = crate::schedules::view(schedule.as_ref(), now);
            if !view.is_null() {
                due.push(json!({
                    "project": project.name, "project_id": project.id, "kind": kind,
                    "description": view["description"], "next_run": view["next_run"],
                }));
            }
        }
    }
    due.sort_by(|a, b| {
        a["next_run"]
            .as_str()
            .unwrap_or("")
            .cmp(b["next_run"].as_str().unwrap_or(""))
    });
    due.truncate(8);
    Ok((running, failed, due))
}
