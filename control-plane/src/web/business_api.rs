//! JSON API of the business side (names in CONTRACT.md): server requests and their
//! workflow moves, the caller's notifications, client subscriptions and revenue. Each
//! handler parses, asks `policy::can`, calls the domain module and answers JSON.

use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::notifications;
use crate::policy::{self, Action, Role};
use crate::projects::Project;
use crate::requests::{self, NewRequest, Request};
use crate::revenue;
use crate::store::Read;
use crate::subscriptions::{self, Subscription, SubscriptionInput};
use crate::users::{self, User};
use crate::validate::Problems;

fn require(ctx: &Ctx, action: Action) -> AppResult<()> {
    if policy::can(&ctx.subject, action, None) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Whether the caller may see requests at all (file their own, or see everyone's).
pub fn may_see_requests(ctx: &Ctx) -> bool {
    policy::can(&ctx.subject, Action::CreateRequest, None)
        || policy::can(&ctx.subject, Action::ViewAllRequests, None)
}

// ---- requests ----

/// The API shape of a request: its record plus the project's name.
pub fn request_json(r: &impl Read, request: &Request) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(request)?;
    value["project"] = json!(r
        .get::<Project>(&request.project_id)?
        .map(|p| p.name)
        .unwrap_or_default());
    Ok(value)
}

/// `POST /api/v1/requests`.
pub fn create_request(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::CreateRequest)?;
    let input: NewRequest = req.json()?;
    let actor = ctx.actor(req);
    let value = app.store.write(|w| {
        let request = requests::create(w, &actor, &ctx.user, &input)?;
        request_json(w, &request)
    })?;
    Ok(reply(StatusCode::CREATED, &value))
}

/// The filters of the request list (API and page).
pub const REQUEST_FILTERS: [&str; 2] = ["status", "client"];

/// Reads the request filters of a request; an unknown filter, status or client is a
/// 400 naming it.
pub fn request_filter(r: &impl Read, req: &Req, ctx: &Ctx) -> AppResult<requests::Filter> {
    req.only_filters(&REQUEST_FILTERS)?;
    let mut filter = requests::Filter::default();
    if let Some(status) = req.text_filter("status") {
        filter.status = Some(requests::Status::parse(&status).ok_or_else(|| {
            AppError::bad_request(format!(
                "status must be one of {} (not {:?})",
                requests::Status::ALL.map(|s| s.as_str()).join(", "),
                status.chars().take(40).collect::<String>()
            ))
        })?);
    }
    if let Some(client) = req.text_filter("client") {
        if !requests::client_known(r, &ctx.subject, &client)? {
            return Err(AppError::bad_request(format!(
                "client: no request you can see is for {:?}",
                client.chars().take(80).collect::<String>()
            )));
        }
        filter.client = Some(client);
    }
    Ok(filter)
}

/// `GET /api/v1/requests?status=S&client=C`: one page of the requests the caller may
/// see (all with `ViewAllRequests`, else its own), newest first.
pub fn list_requests(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    if !may_see_requests(ctx) {
        return Err(AppError::forbidden());
    }
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let filter = request_filter(r, req, ctx)?;
        let page = requests::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let list = page
            .items
            .iter()
            .map(|q| request_json(r, q))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((list, page.next))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/requests/{id}`: with `proposed_subscription` once it is deployed and
/// has none (see [`requests::proposal`]).
pub fn get_request(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let today = chrono::Utc::now().date_naive();
    let value = app.store.read(|r| {
        let request = requests::get_visible(r, &ctx.subject, id)?;
        let mut value = request_json(r, &request)?;
        value["proposed_subscription"] = json!(requests::proposal(r, &request, today)?);
        Ok(value)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MoveInput {
    note: Option<String>,
    reason: Option<String>,
    /// For `deployed`: the id or name of an existing server of the project to link.
    server: Option<String>,
}

/// `POST /api/v1/requests/{id}/approve|reject|deployed|retry` (admin): one workflow
/// move; `409` with the reason when the workflow forbids it.
pub fn move_request(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    action: requests::Action,
) -> AppResult<Resp> {
    require(ctx, Action::ApproveRequest)?;
    let input: MoveInput = if req.body.iter().all(u8::is_ascii_whitespace) {
        MoveInput::default()
    } else {
        req.json()?
    };
    let note = if action == requests::Action::Reject {
        input.reason.or(input.note)
    } else {
        input.note
    };
    // Unknown ids answer 404 before the workflow is asked.
    app.store
        .read(|r| Ok(requests::get_visible(r, &ctx.subject, id)?))?;
    let server = input
        .server
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if server.is_some() && action != requests::Action::MarkDeployed {
        return Err(AppError::invalid(
            "server",
            "a server is linked only when the request is marked deployed",
        ));
    }
    let actor = ctx.actor(req);
    let request = app.store.write(|w| {
        Ok(requests::mark_moved(
            w,
            crate::hetzner::TokenRule::of(app),
            &actor,
            id,
            action,
            note.as_deref(),
            server,
        )?)
    })?;
    if action == requests::Action::Approve {
        requests::approved(app, &request);
    }
    let value = app.store.read(|r| request_json(r, &request))?;
    Ok(reply(StatusCode::OK, &value))
}

// ---- notifications ----

/// `GET /api/v1/notifications?unread=1&limit=N`: the caller's inbox, newest first.
pub fn notifications(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    req.only_filters(&["unread"])?;
    let unread_only = match req.query("unread").unwrap_or("") {
        "1" | "true" => true,
        "" | "0" | "false" => false,
        _ => return Err(AppError::bad_request("unread must be true or false")),
    };
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        notifications::inbox_page(
            r,
            &ctx.user.id,
            unread_only,
            paging.cursor.as_deref(),
            paging.limit,
        )
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/notifications/unread`: `{"unread": N, "latest": [...]}`, the newest
/// unread ones (at most 20), for the badge and the toasts.
pub fn unread(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let (count, latest) = app.store.read(|r| {
        Ok((
            notifications::unread_count(r, &ctx.user.id)?,
            notifications::inbox(r, &ctx.user.id, true, 20)?,
        ))
    })?;
    Ok(reply(
        StatusCode::OK,
        &json!({"unread": count, "latest": latest}),
    ))
}

/// `POST /api/v1/notifications/{id}/read`.
pub fn mark_read(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let n = app
        .store
        .write(|w| Ok(notifications::mark_read(w, &ctx.user.id, id)?))?;
    Ok(reply(StatusCode::OK, &n))
}

/// `POST /api/v1/notifications/read_all`.
pub fn mark_all_read(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let marked = app
        .store
        .write(|w| Ok(notifications::mark_all_read(w, &ctx.user.id)?))?;
    Ok(reply(StatusCode::OK, &json!({"marked": marked})))
}

// ---- subscriptions ----

/// The API shape of a subscription: its record plus days left and server names.
pub fn subscription_json(r: &impl Read, sub: &Subscription) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(sub)?;
    let today = chrono::Utc::now().date_naive();
    value["days_left"] = json!(subscriptions::days_left(sub, today));
    let mut servers = Vec::new();
    for id in &sub.server_ids {
        if let Some(s) = r.get::<crate::servers::Server>(id)? {
            servers.push(json!({"id": s.id, "name": s.name, "monthly_cost": s.monthly_cost}));
        }
    }
    value["servers"] = Value::Array(servers);
    Ok(value)
}

/// The owner a subscription input names: the caller by default; someone else only for
/// those who see every agent's figures, and only a sales agent or an admin.
pub fn owner_of(r: &impl Read, ctx: &Ctx, username: Option<&str>) -> AppResult<Option<User>> {
    let Some(name) = username.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name == ctx.user.username {
        return Ok(Some(ctx.user.clone()));
    }
    require(ctx, Action::ViewAllRevenue)?;
    let user = users::by_username(r, name)?
        .filter(|u| u.active && matches!(u.role, Role::Sales | Role::Admin))
        .ok_or_else(|| {
            AppError::invalid(
                "sales_agent",
                format!("{name} is not an active sales agent"),
            )
        })?;
    Ok(Some(user))
}

/// The filters of the subscription list (API and page).
pub const SUBSCRIPTION_FILTERS: [&str; 3] = ["status", "q", "sort"];

/// Reads the subscription filters of a request; an unknown filter or status is a 400.
pub fn subscription_filter(req: &Req) -> AppResult<subscriptions::Filter> {
    req.only_filters(&SUBSCRIPTION_FILTERS)?;
    let status = match req.text_filter("status") {
        Some(text) => Some(
            subscriptions::SubscriptionStatus::parse(&text).ok_or_else(|| {
                AppError::bad_request(format!(
                    "status must be one of {} (not {:?})",
                    subscriptions::SubscriptionStatus::ALL
                        .map(|s| s.as_str())
                        .join(", "),
                    text.chars().take(40).collect::<String>()
                ))
            })?,
        ),
        None => None,
    };
    let sort = match req.text_filter("sort") {
        Some(text) => subscriptions::Sort::parse(&text).ok_or_else(|| {
            AppError::bad_request(format!(
                "sort must be client or end (not {:?})",
                text.chars().take(40).collect::<String>()
            ))
        })?,
        None => subscriptions::Sort::Client,
    };
    Ok(subscriptions::Filter {
        status,
        text: req.text_filter("q"),
        sort,
    })
}

/// `GET /api/v1/subscriptions[?status=…][&q=…]`: one page of the subscriptions the
/// caller may see, by client.
pub fn list_subscriptions(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let filter = subscription_filter(req)?;
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let page = subscriptions::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let list = page
            .items
            .iter()
            .map(|s| subscription_json(r, s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((list, page.next))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/subscriptions/{id}`.
pub fn get_subscription(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let value = app.store.read(|r| {
        let sub = subscriptions::get_visible(r, &ctx.subject, id)?;
        subscription_json(r, &sub)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `POST /api/v1/subscriptions`.
pub fn create_subscription(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let input: SubscriptionInput = req.json()?;
    let actor = ctx.actor(req);
    let value = app.store.write(|w| {
        // An unknown owner is reported with the other fields' problems.
        let mut problems = Problems::new();
        let owner = problems
            .check(owner_of(w, ctx, input.sales_agent.as_deref()))
            .unwrap_or(None)
            .unwrap_or(ctx.user.clone());
        let _ = problems.check(subscriptions::check_server_choice(
            w,
            &ctx.subject,
            &input,
            None,
        ));
        let _ = problems.check(check_request_choice(w, ctx, &input));
        let sub = subscriptions::create_adding_to(w, &actor, &owner, &input, problems)?;
        subscription_json(w, &sub)
    })?;
    Ok(reply(StatusCode::CREATED, &value))
}

/// The request a new subscription is made from must be one the caller may see: another
/// sales agent's is reported as unknown, like one that does not exist.
pub fn check_request_choice(r: &impl Read, ctx: &Ctx, input: &SubscriptionInput) -> AppResult<()> {
    let Some(id) = input
        .request_id
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
    else {
        return Ok(());
    };
    match requests::get_visible(r, &ctx.subject, id) {
        Err(e) if e.kind == crate::error::Kind::Forbidden => Err(AppError::invalid(
            "request_id",
            format!("there is no request {id}"),
        )),
        // An unknown one is reported when the subscription is made.
        Err(e) if e.kind == crate::error::Kind::NotFound => Ok(()),
        other => other.map(drop),
    }
}

/// `PUT /api/v1/subscriptions/{id}`.
pub fn update_subscription(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let input: SubscriptionInput = req.json()?;
    let actor = ctx.actor(req);
    let value = app.store.write(|w| {
        let existing = subscriptions::get_visible(w, &ctx.subject, id)?;
        let mut problems = Problems::new();
        let owner = problems
            .check(owner_of(w, ctx, input.sales_agent.as_deref()))
            .unwrap_or(None);
        let _ = problems.check(subscriptions::check_server_choice(
            w,
            &ctx.subject,
            &input,
            Some(&existing),
        ));
        let sub = subscriptions::update_adding_to(w, &actor, id, &input, owner.as_ref(), problems)?;
        subscription_json(w, &sub)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `POST /api/v1/subscriptions/{id}/{cancel,pause,resume,end}`: `{"reason"?,
/// "effective_on"?}` (a cancellation needs a reason); an empty body is `{}`.
pub fn change_subscription(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    id: &str,
    what: &str,
) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let what = subscriptions::Change::parse(what)
        .ok_or_else(|| AppError::not_found("subscription action"))?;
    let input: subscriptions::ChangeInput = match req.body.is_empty() {
        true => Default::default(),
        false => req.json()?,
    };
    let actor = ctx.actor(req);
    let today = chrono::Utc::now().date_naive();
    let value = app.store.write(|w| {
        subscriptions::get_visible(w, &ctx.subject, id)?;
        let sub = subscriptions::change(w, &actor, id, what, &input, today)?;
        subscription_json(w, &sub)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `DELETE /api/v1/subscriptions/{id}`: for those who see every sales agent's revenue
/// (admins, sales managers), so a subscription's history is not erased by its owner.
pub fn delete_subscription(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require(ctx, Action::ManageSubscriptions)?;
    let actor = ctx.actor(req);
    app.store.write(|w| {
        subscriptions::get_visible(w, &ctx.subject, id)?;
        require(ctx, Action::ViewAllRevenue)?;
        subscriptions::delete(w, &actor, id)?;
        Ok(())
    })?;
    Ok(reply(StatusCode::OK, &json!({"deleted": id})))
}

// ---- clients ----

/// Clients are for whoever files requests or manages subscriptions.
pub fn may_see_clients(ctx: &Ctx) -> bool {
    policy::can(&ctx.subject, Action::ManageSubscriptions, None)
        || policy::can(&ctx.subject, Action::CreateRequest, None)
}

fn require_clients(ctx: &Ctx) -> AppResult<()> {
    match may_see_clients(ctx) {
        true => Ok(()),
        false => Err(AppError::forbidden()),
    }
}

/// The subscriptions of a client the subject may see: all of them for those who see all
/// revenue, else its own.
fn client_subscriptions(
    r: &impl Read,
    ctx: &Ctx,
    client_id: &str,
) -> anyhow::Result<Vec<Subscription>> {
    let all_subs = policy::can(&ctx.subject, Action::ViewAllRevenue, None);
    let mut subs: Vec<Subscription> = Vec::new();
    for id in crate::clients::related_ids(r, crate::clients::SUBSCRIPTIONS, client_id)? {
        match r.get::<Subscription>(&id)? {
            Some(sub) if all_subs || sub.sales_agent_id == ctx.subject.user_id => subs.push(sub),
            _ => {}
        }
    }
    Ok(subs)
}

/// One client's statement for `month` (`YYYY-MM`, the current month when absent) over
/// the subscriptions the subject may see; a malformed month is a 400.
pub fn statement_of(
    app: &App,
    ctx: &Ctx,
    id: &str,
    month: Option<&str>,
) -> AppResult<crate::statements::Statement> {
    use crate::statements::{self, Month};
    require_clients(ctx)?;
    let month = match month.map(str::trim).filter(|m| !m.is_empty()) {
        None => Month::of(chrono::Utc::now().date_naive()),
        Some(text) => Month::parse(text).ok_or_else(|| {
            AppError::bad_request(format!(
                "month must be like 2026-11 (not {:?})",
                text.chars().take(20).collect::<String>()
            ))
        })?,
    };
    Ok(app.store.read(|r| {
        let client = crate::clients::get(r, id)?;
        let subs = client_subscriptions(r, ctx, &client.id)?;
        let servers = subscriptions::servers_of(r, &subs)?;
        Ok(statements::compute(&client, &subs, &servers, month))
    })?)
}

/// `GET /api/v1/clients/{id}/statement?month=YYYY-MM[&format=csv]`.
pub fn client_statement(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    req.only_filters(&["month", "format"])?;
    let statement = statement_of(app, ctx, id, req.query("month"))?;
    match req.query("format").unwrap_or("json") {
        "json" => Ok(reply(StatusCode::OK, &json!(statement))),
        "csv" => Ok(statement_csv(&statement)),
        other => Err(AppError::bad_request(format!(
            "format must be json or csv (not {:?})",
            other.chars().take(20).collect::<String>()
        ))),
    }
}

/// A statement as a CSV download named after the client and the month.
pub fn statement_csv(statement: &crate::statements::Statement) -> Resp {
    let body = crate::statements::csv(statement);
    let mut resp = super::text(StatusCode::OK, body, "text/csv; charset=utf-8");
    let slug: String = statement
        .client
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = format!(
        "statement-{}-{}.csv",
        slug.trim_matches('-'),
        statement.month
    );
    if let Ok(v) = warp::http::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert("content-disposition", v);
    }
    resp
}

/// A client with what the subject may see of it: its requests, subscriptions, the
/// servers behind them and its monthly recurring revenue per currency.
pub fn client_json(
    r: &impl Read,
    ctx: &Ctx,
    client: &crate::clients::Client,
) -> anyhow::Result<Value> {
    use crate::clients;
    let mut value = serde_json::to_value(client)?;
    let all_requests = policy::can(&ctx.subject, Action::ViewAllRequests, None);
    let mut requests_list = Vec::new();
    let mut server_ids: Vec<String> = Vec::new();
    for id in clients::related_ids(r, clients::REQUESTS, &client.id)? {
        let Some(request) = r.get::<Request>(&id)? else {
            continue;
        };
        if !all_requests && request.requested_by != ctx.subject.user_id {
            continue;
        }
        if let Some(server) = &request.server_id {
            server_ids.push(server.clone());
        }
        requests_list.push(request_json(r, &request)?);
    }
    let subs = client_subscriptions(r, ctx, &client.id)?;
    for sub in &subs {
        server_ids.extend(sub.server_ids.iter().cloned());
    }
    server_ids.sort();
    server_ids.dedup();
    let mut servers = Vec::new();
    for id in &server_ids {
        if let Some(s) = r.get::<crate::servers::Server>(id)? {
            servers.push(json!({"id": s.id, "name": s.name, "status": s.status, "monthly_cost": s.monthly_cost}));
        }
    }
    let today = chrono::Utc::now().date_naive();
    let report = revenue::compute(&subs, &[], today);
    value["requests"] = Value::Array(requests_list);
    value["subscriptions"] = Value::Array(
        subs.iter()
            .map(|s| subscription_json(r, s))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    value["servers"] = Value::Array(servers);
    value["revenue"] = json!({"mrr": report.mrr});
    Ok(value)
}

/// `GET /api/v1/clients[?q=…]`: one page of clients by name.
pub fn list_clients(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_clients(ctx)?;
    req.only_filters(&["q"])?;
    let text = req.text_filter("q");
    let paging = req.paging()?;
    let page = app.store.read(|r| {
        crate::clients::query(r, text.as_deref(), paging.cursor.as_deref(), paging.limit)
    })?;
    Ok(super::json_page(req, &page.items, page.next.as_deref()))
}

/// `POST /api/v1/clients`.
pub fn create_client(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_clients(ctx)?;
    let input: crate::clients::ClientInput = req.json()?;
    let actor = ctx.actor(req);
    let value = app.store.write(|w| {
        let client = crate::clients::create(w, &actor, &input)?;
        client_json(w, ctx, &client)
    })?;
    Ok(reply(StatusCode::CREATED, &value))
}

/// `GET /api/v1/clients/{id}`.
pub fn get_client(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_clients(ctx)?;
    let value = app.store.read(|r| {
        let client = crate::clients::get(r, id)?;
        client_json(r, ctx, &client)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `PUT /api/v1/clients/{id}`.
pub fn update_client(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_clients(ctx)?;
    let input: crate::clients::ClientInput = req.json()?;
    let actor = ctx.actor(req);
    let value = app.store.write(|w| {
        let client = crate::clients::update(w, &actor, id, &input)?;
        client_json(w, ctx, &client)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

// ---- revenue ----

/// The revenue report over the subscriptions the caller may see.
pub fn revenue_of(app: &App, ctx: &Ctx) -> AppResult<revenue::Revenue> {
    require(ctx, Action::ViewRevenue)?;
    let today = chrono::Utc::now().date_naive();
    Ok(app.store.read(|r| {
        let subs = subscriptions::visible(r, &ctx.subject)?;
        let servers = subscriptions::servers_of(r, &subs)?;
        Ok(revenue::compute(&subs, &servers, today))
    })?)
}

/// `GET /api/v1/revenue` (`?format=csv&table=clients|agents|months` for CSV).
pub fn revenue(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let report = revenue_of(app, ctx)?;
    if req.query("format") == Some("csv") {
        return csv_response(&report, req.query("table").unwrap_or("clients"));
    }
    Ok(reply(StatusCode::OK, &report))
}

/// One table of the report as a CSV download.
pub fn csv_response(report: &revenue::Revenue, table: &str) -> AppResult<Resp> {
    let body = revenue::csv(report, table)
        .ok_or_else(|| AppError::invalid("table", "table must be clients, agents or months"))?;
    let mut resp = super::text(StatusCode::OK, body, "text/csv; charset=utf-8");
    if let Ok(v) =
        warp::http::HeaderValue::from_str(&format!("attachment; filename=\"revenue-{table}.csv\""))
    {
        resp.headers_mut().insert("content-disposition", v);
    }
    Ok(resp)
}
