//! Server requests and their approval workflow.
//!
//! A sales agent files a [`Request`] for a client; an admin approves or rejects it; an
//! approved request is provisioned (at Hetzner when its project has a token, its own
//! or `HETZNER_API_TOKEN`) and ends `deployed` when its server's agent enrolls, or
//! `failed` (retry allowed):
//!
//! ```text
//! pending ──approve──► approved ──start_provisioning──► provisioning ──mark_deployed──► deployed
//!    │                    │                               │    ▲
//!    └──reject──► rejected └──mark_deployed (admin,       fail  retry
//!                              project without token)     ▼    │
//!                                                         failed
//! ```
//!
//! **Invariant:** only [`transition`] changes a request's status, and it asks only the
//! pure table [`next`]. Every move is appended to the request's `history` (who, when,
//! note), audited, and announced to the requester and the admins, all in the caller's
//! write transaction.
//!
//! # Hooks for provisioning (the `hetzner` module)
//!
//! * After an approval commits, the web layer calls [`approved`], which runs every hook
//!   registered with [`ApprovalHooks::on_approved`] (one set per `App`). The Hetzner
//!   provisioner registers one at startup; its hook must not block (spawn a task) and
//!   moves the request on with
//!   `transition(w, rule, &Actor::system(), id, Action::StartProvisioning, note)`, later
//!   `Action::Fail` with Hetzner's message, and records the new server with
//!   [`attach_server`].
//! * When the agent enrolled with a token bound to the request connects, the fleet
//!   calls `transition(w, rule, &Actor::system(), id, Action::MarkDeployed, note)` in the
//!   enrollment's own transaction.
//!
//! What does not live here: creating servers, tokens or cloud-init (hetzner, fleet).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::hetzner::TokenRule;
use crate::listing::{self, Order, Page, Source};
use crate::notifications::{self, Message};
use crate::policy::{self, Role, Subject};
use crate::projects::{self, Project};
use crate::store::{Read, Record, Writer};
use crate::users::{self, User};
use crate::validate;

/// Where a request is in the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Provisioning,
    Deployed,
    Rejected,
    Failed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Approved,
        Status::Provisioning,
        Status::Deployed,
        Status::Rejected,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Provisioning => "provisioning",
            Status::Deployed => "deployed",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the workflow is over for this request.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Deployed | Status::Rejected)
    }
}

/// A move a person or the system asks of the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An admin accepts a pending request.
    Approve,
    /// An admin turns a pending request down, with a reason.
    Reject,
    /// The provisioner (or an admin) starts creating the server at Hetzner.
    StartProvisioning,
    /// The server is up: its agent enrolled (system), or an admin says so by hand for a
    /// project without a Hetzner token.
    MarkDeployed,
    /// Provisioning failed.
    Fail,
    /// Provisioning is tried again after a failure.
    Retry,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Approve,
        Action::Reject,
        Action::StartProvisioning,
        Action::MarkDeployed,
        Action::Fail,
        Action::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::StartProvisioning => "start_provisioning",
            Action::MarkDeployed => "mark_deployed",
            Action::Fail => "fail",
            Action::Retry => "retry",
        }
    }

    /// How a step of this action reads in a request's history.
    pub fn label(self) -> &'static str {
        match self {
            Action::Approve => "approved",
            Action::Reject => "rejected",
            Action::StartProvisioning => "started provisioning",
            Action::MarkDeployed => "marked deployed",
            Action::Fail => "provisioning failed",
            Action::Retry => "retried provisioning",
        }
    }
}

/// Who is asking, as the workflow sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// An active admin.
    Admin,
    /// The control plane itself (provisioner, enrollment).
    System,
    /// Anyone else.
    Other,
}

/// The facts about the actor and the request's project that the table needs.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub actor: ActorKind,
    /// The actor filed the request.
    pub is_requester: bool,
    /// The request's project can provision at Hetzner: it has its own token or
    /// `HETZNER_API_TOKEN` is set (the token rule, `hetzner::has_token`).
    pub project_has_token: bool,
}

/// The workflow's transition table: the new status of a request in `state` after
/// `action` by an actor with `facts`, or why the move is forbidden.
pub fn next(state: Status, action: Action, facts: Facts) -> Result<Status, String> {
    use ActorKind::{Admin, Other, System};
    use Status::*;
    let from = |allowed: &[Status], to: Status, what: &str| {
        if allowed.contains(&state) {
            Ok(to)
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            let article = |word: &str| {
                if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                }
            };
            Err(format!(
                "{} {} request cannot be {what}; only {} {} one can",
                article(state.as_str()),
                state.as_str(),
                article(names[0]),
                names.join(" or ")
            ))
        }
    };
    match (action, facts.actor) {
        (Action::Approve, Admin) if facts.is_requester => {
            Err("you may not approve your own request; another admin must".into())
        }
        (Action::Approve, Admin) => from(&[Pending], Approved, "approved"),
        (Action::Reject, Admin) => from(&[Pending], Rejected, "rejected"),
        (Action::Approve | Action::Reject, System | Other) => {
            Err("only an admin may approve or reject a request".into())
        }
        (Action::StartProvisioning | Action::Retry, Admin | System)
            if !facts.project_has_token =>
        {
            Err("the project has no Hetzner token to provision with; an admin marks the request deployed by hand".into())
        }
        (Action::StartProvisioning, Admin | System) => {
            from(&[Approved], Provisioning, "provisioned")
        }
        (Action::Retry, Admin | System) => from(&[Failed], Provisioning, "retried"),
        (Action::Fail, Admin | System) => from(&[Provisioning], Failed, "marked failed"),
        (Action::MarkDeployed, System) => from(&[Provisioning], Deployed, "marked deployed"),
        (Action::MarkDeployed, Admin) if facts.project_has_token => Err(
            "the project has a Hetzner token: the request becomes deployed when its server's agent enrolls".into(),
        ),
        (Action::MarkDeployed, Admin) => {
            from(&[Approved, Provisioning, Failed], Deployed, "marked deployed")
        }
        (Action::StartProvisioning | Action::Retry | Action::Fail | Action::MarkDeployed, Other) => {
            Err("only an admin or the provisioner may move an approved request".into())
        }
    }
}

/// One step of a request's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Username of who moved it, or `system`.
    pub by: String,
    /// `submit` for the first step, else an [`Action`] name.
    pub action: String,
    /// How the step reads: "submitted", "approved", …
    pub label: String,
    pub from: Option<Status>,
    pub to: Status,
    pub note: Option<String>,
}

/// A server request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// The client record (`clients`); requests stored before clients were records got
    /// theirs by name when the store was migrated.
    #[serde(default)]
    pub client_id: Option<String>,
    pub client_name: String,
    pub client_email: String,
    pub purpose: String,
    pub project_id: String,
    pub server_type: String,
    pub location: String,
    pub image: String,
    pub cpu_cores: Option<u32>,
    pub ram_gb: Option<u32>,
    pub disk_gb: Option<u32>,
    /// Expected monthly cost of the server, EUR.
    pub monthly_budget: Option<f64>,
    pub notes: Option<String>,
    pub status: Status,
    /// User id of the requester.
    pub requested_by: String,
    pub requested_by_name: String,
    pub history: Vec<Step>,
    /// The server created for it, once there is one.
    pub server_id: Option<String>,
    /// The budget warning shown when it was approved.
    pub budget_warning: Option<String>,
    /// The margin agreed with the client, in percent over the server's cost: the
    /// subscription proposed once the request is deployed charges cost plus margin.
    #[serde(default)]
    pub margin_percent: Option<f64>,
    /// The subscription made from it once deployed.
    #[serde(default)]
    pub subscription_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Record for Request {
    const TABLE: &'static str = "requests";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A new request as the API and the form send it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// A client record; `client_name` alone finds the client by name or creates it.
    pub client_id: Option<String>,
    pub client_name: Option<String>,
    pub client_email: Option<String>,
    pub purpose: Option<String>,
    /// Project name or id.
    pub project: Option<String>,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub image: Option<String>,
    pub cpu_cores: Option<u32>,
    pub ram_gb: Option<u32>,
    pub disk_gb: Option<u32>,
    pub monthly_budget: Option<f64>,
    /// Percent over the server's monthly cost agreed with the client.
    pub margin_percent: Option<f64>,
    pub notes: Option<String>,
}

/// A lower-case identifier such as `cx21`, `fsn1` or `ubuntu-22.04`.
fn slug(field: &str, value: Option<&str>, max: usize) -> AppResult<String> {
    let value = validate::required(field, value, max)?.to_lowercase();
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(AppError::invalid(
            field,
            format!(
                "{} may hold letters, digits, '-', '.' and '_' only",
                validate::human(field)
            ),
        ));
    }
    Ok(value)
}

fn amount_in(field: &str, value: Option<u32>, max: u32) -> AppResult<Option<u32>> {
    match value {
        Some(v) if v == 0 || v > max => Err(AppError::invalid(
            field,
            format!("{} must be between 1 and {max}", validate::human(field)),
        )),
        other => Ok(other),
    }
}

/// A margin in percent: from -100 (given away) to 1000.
pub fn margin(field: &str, value: Option<f64>) -> AppResult<Option<f64>> {
    match value {
        Some(v) if !v.is_finite() || !(-100.0..=1000.0).contains(&v) => Err(AppError::invalid(
            field,
            format!(
                "{} must be a percentage between -100 and 1000",
                validate::human(field)
            ),
        )),
        other => Ok(other),
    }
}

/// Parses a whole number typed into a form field (empty is `None`).
pub fn count_text(field: &str, value: Option<&str>) -> AppResult<Option<u32>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            AppError::invalid(
                field,
                format!("{} must be a whole number", validate::human(field)),
            )
        }),
    }
}

/// The project a request names, by name or id.
fn project_named(r: &impl Read, key: &str) -> AppResult<Project> {
    projects::find(r, key)?
        .ok_or_else(|| AppError::invalid("project", format!("there is no project named {key}")))
}

/// Validates and files a request by `requester`; announces it to the admins.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    requester: &User,
    input: &NewRequest,
) -> AppResult<Request> {
    create_adding_to(w, actor, requester, input, validate::Problems::new())
}

/// Files a request like [`create`] when neither `earlier` (what the caller found
/// reading its form) nor the checks here find a problem; else one error naming every
/// bad field: `earlier` ones first, then in the order of the form.
pub fn create_adding_to(
    w: &mut Writer,
    actor: &Actor,
    requester: &User,
    input: &NewRequest,
    earlier: validate::Problems,
) -> AppResult<Request> {
    let mut problems = earlier;
    // A request for a client record takes its name, and its e-mail unless one is given.
    let chosen = problems
        .check(crate::clients::chosen(w, input.client_id.as_deref()))
        .unwrap_or(None);
    let client_name = match &chosen {
        Some(client) => Ok(client.name.clone()),
        None => problems.check(validate::name(
            "client_name",
            input.client_name.as_deref(),
            120,
        )),
    };
    let given_email = input
        .client_email
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .or(chosen.as_ref().and_then(|c| c.email.as_deref()));
    let client_email = problems.check(validate::email("client_email", given_email));
    let purpose = problems.check(validate::required("purpose", input.purpose.as_deref(), 300));
    let project = problems.check(
        validate::required("project", input.project.as_deref(), 120)
            .and_then(|key| project_named(w, &key)),
    );
    let server_type = problems.check(slug("server_type", input.server_type.as_deref(), 40));
    let location = problems.check(slug("location", input.location.as_deref(), 40));
    let image = problems.check(slug("image", input.image.as_deref(), 80));
    let cpu_cores = problems.check(amount_in("cpu_cores", input.cpu_cores, 512));
    let ram_gb = problems.check(amount_in("ram_gb", input.ram_gb, 4096));
    let disk_gb = problems.check(amount_in("disk_gb", input.disk_gb, 100_000));
    let monthly_budget = problems.check(validate::money("monthly_budget", input.monthly_budget));
    let margin_percent = problems.check(margin("margin_percent", input.margin_percent));
    let notes = problems.check(validate::text(
        "notes",
        input.notes.as_deref(),
        validate::MAX_TEXT,
    ));
    problems.finish()?;
    let (client_name, client_email, purpose, project) =
        (client_name?, client_email?, purpose?, project?);
    let (server_type, location, image) = (server_type?, location?, image?);
    let (cpu_cores, ram_gb, disk_gb) = (cpu_cores?, ram_gb?, disk_gb?);
    let (monthly_budget, margin_percent, notes) = (monthly_budget?, margin_percent?, notes?);
    let client = match chosen {
        Some(client) => client,
        None => crate::clients::resolve(w, actor, None, &client_name, Some(&client_email))?,
    };
    let now = chrono::Utc::now();
    let request = Request {
        id: uuid::Uuid::now_v7().to_string(),
        client_id: Some(client.id),
        client_name,
        client_email,
        purpose,
        project_id: project.id.clone(),
        server_type,
        location,
        image,
        cpu_cores,
        ram_gb,
        disk_gb,
        monthly_budget,
        notes: notes.clone(),
        status: Status::Pending,
        requested_by: requester.id.clone(),
        requested_by_name: requester.username.clone(),
        history: vec![Step {
            at: now,
            by: actor.username.clone(),
            action: "submit".into(),
            label: "submitted".into(),
            from: None,
            to: Status::Pending,
            note: notes,
        }],
        server_id: None,
        budget_warning: None,
        margin_percent,
        subscription_id: None,
        created_at: now,
        updated_at: now,
    };
    save(w, &request)?;
    audit::record(
        w,
        actor,
        "request.create",
        &format!("request:{}", request.id),
        format!(
            "{} for {} in {}",
            request.server_type, request.client_name, project.name
        ),
    )?;
    let admins: Vec<String> = notifications::admin_ids(w)?
        .into_iter()
        .filter(|id| *id != requester.id)
        .collect();
    crate::alerts::raise(
        w,
        &admins,
        &crate::alerts::Alert {
            event: "request.created",
            project_id: Some(request.project_id.clone()),
            subject: serde_json::json!({"request": request.id, "client": request.client_name, "project": project.name}),
            message: Message {
                title: format!(
                    "New server request from {} for {}",
                    requester.username, request.client_name
                ),
                body: format!(
                    "{} in {} ({}) awaits approval",
                    request.server_type, project.name, request.location
                ),
                link: Some(link(&request.id)),
                level: "info",
                subject: format!("request:{}", request.id),
            },
        },
    )?;
    Ok(request)
}

/// The page of a request.
pub fn link(request_id: &str) -> String {
    format!("/requests/{request_id}")
}

/// The workflow facts for `actor` on `request`; `rule` says whether the project has a
/// Hetzner token.
///
/// The control plane itself is [`Actor::system`]: that name with no client address.
/// A person who came over HTTP always has an address, so an account that happens to be
/// named `system` is judged by its role like anyone else.
pub fn facts_of(
    r: &impl Read,
    rule: TokenRule,
    actor: &Actor,
    request: &Request,
) -> anyhow::Result<Facts> {
    let is_system = actor.username == Actor::system().username && actor.ip.is_none();
    let user = if is_system {
        None
    } else {
        users::by_username(r, &actor.username)?
    };
    let kind = match &user {
        _ if is_system => ActorKind::System,
        Some(u) if u.active && u.role == Role::Admin => ActorKind::Admin,
        _ => ActorKind::Other,
    };
    let project: Option<Project> = r.get(&request.project_id)?;
    Ok(Facts {
        actor: kind,
        is_requester: user.is_some_and(|u| u.id == request.requested_by),
        project_has_token: project.is_some_and(|p| rule.has_token(&p)),
    })
}

/// Moves a request with `action` when the table allows it (409 with the reason when
/// not), records the step with `note`, audits it and notifies the requester and the
/// admins (not the actor), all inside `w`. A rejection needs a reason (`note`, 422
/// naming `reason`). An approval stores a budget warning when the project's monthly
/// budget would be exceeded. `rule` is the control plane's Hetzner token rule (a
/// project with a token is provisioned, never marked deployed by hand).
pub fn transition(
    w: &mut Writer,
    rule: TokenRule,
    actor: &Actor,
    request_id: &str,
    action: Action,
    note: Option<&str>,
) -> AppResult<Request> {
    let mut request: Request = w
        .get(request_id)?
        .ok_or_else(|| AppError::not_found("request"))?;
    let field = if action == Action::Reject {
        "reason"
    } else {
        "note"
    };
    let note = validate::text(field, note, validate::MAX_TEXT)?;
    if action == Action::Reject && note.is_none() {
        return Err(AppError::invalid("reason", "a rejection needs a reason"));
    }
    let facts = facts_of(w, rule, actor, &request)?;
    let to = next(request.status, action, facts).map_err(AppError::conflict)?;
    let from = request.status;
    let now = chrono::Utc::now();
    if action == Action::Approve {
        request.budget_warning = budget_warning(w, &request)?;
    }
    request.status = to;
    request.updated_at = now;
    request.history.push(Step {
        at: now,
        by: actor.username.clone(),
        action: action.as_str().into(),
        label: action.label().into(),
        from: Some(from),
        to,
        note: note.clone(),
    });
    save(w, &request)?;
    let mut detail = format!("{} -> {}", from.as_str(), to.as_str());
    if let Some(n) = &note {
        detail.push_str(&format!(": {n}"));
    }
    audit::record(
        w,
        actor,
        &format!("request.{}", action.as_str()),
        &format!("request:{}", request.id),
        detail,
    )?;
    announce(w, actor, &request, action, note.as_deref())?;
    Ok(request)
}

/// The notification of one move: to the requester and the admins, not the actor.
fn announce(
    w: &mut Writer,
    actor: &Actor,
    request: &Request,
    action: Action,
    note: Option<&str>,
) -> anyhow::Result<()> {
    let actor_id = notifications::user_id_of(w, &actor.username)?;
    let mut recipients = vec![request.requested_by.clone()];
    recipients.extend(notifications::admin_ids(w)?);
    recipients.retain(|id| Some(id) != actor_id.as_ref());
    let level = match action {
        Action::Approve | Action::MarkDeployed => "success",
        Action::Reject | Action::Fail => "danger",
        Action::StartProvisioning | Action::Retry => "info",
    };
    let mut body = format!("{} ({})", request.server_type, request.purpose);
    if let Some(n) = note {
        body = format!("{}: {n}", actor.username);
    }
    if action == Action::Approve {
        if let Some(warning) = &request.budget_warning {
            body.push_str(&format!(" — {warning}"));
        }
    }
    let message = Message {
        title: format!(
            "Request for {} {} by {}",
            request.client_name,
            action.label(),
            actor.username
        ),
        body,
        link: Some(link(&request.id)),
        level,
        subject: format!("request:{}", request.id),
    };
    let event = match action {
        Action::Approve => "request.approved",
        Action::Reject => "request.rejected",
        Action::MarkDeployed => "request.deployed",
        Action::StartProvisioning | Action::Retry | Action::Fail => {
            return notifications::notify(w, &recipients, &message);
        }
    };
    crate::alerts::raise(
        w,
        &recipients,
        &crate::alerts::Alert {
            event,
            project_id: Some(request.project_id.clone()),
            subject: serde_json::json!({"request": request.id, "client": request.client_name, "status": request.status}),
            message,
        },
    )
}

/// What the project's servers cost per month (EUR), without deleted ones: the kept
/// sum of `servers`.
pub fn project_cost(r: &impl Read, project_id: &str) -> anyhow::Result<f64> {
    crate::servers::project_cost(r, project_id)
}

/// A warning when approving `request` would push its project over its monthly budget
/// (the servers' monthly cost, plus approved requests not yet deployed, plus this one,
/// each priced at Hetzner's monthly price of its server type where a sync has read it,
/// else at its stated budget), or when that price is above the request's stated budget.
pub fn budget_warning(r: &impl Read, request: &Request) -> anyhow::Result<Option<String>> {
    let mut warnings = Vec::new();
    // What the request will cost: Hetzner's price of its server type where a sync has
    // read it, else the budget the request states.
    let price = crate::hetzner::budget::price_of(r, &request.server_type, &request.location)?;
    if let (Some(price), Some(stated)) = (price, request.monthly_budget) {
        if price > stated + 1e-9 {
            warnings.push(format!(
                "{} in {} costs €{price:.2} a month at Hetzner, more than the request's €{stated:.2}",
                request.server_type, request.location
            ));
        }
    }
    let cost_of = |o: &Request| -> anyhow::Result<f64> {
        Ok(
            crate::hetzner::budget::price_of(r, &o.server_type, &o.location)?
                .or(o.monthly_budget)
                .unwrap_or(0.0),
        )
    };
    let project = r.get::<Project>(&request.project_id)?;
    if let Some((project, budget)) = project
        .as_ref()
        .and_then(|p| p.budget_monthly.filter(|b| *b > 0.0).map(|b| (p, b)))
    {
        let servers = project_cost(r, &project.id)?;
        // Only the requests in flight: read through the status index, never the table.
        let mut in_flight = 0.0;
        for status in [Status::Approved, Status::Provisioning] {
            for id in ids_with_status(r, status)? {
                let Some(o) = r.get::<Request>(&id)? else {
                    continue;
                };
                if o.id != request.id && o.project_id == project.id && o.server_id.is_none() {
                    in_flight += cost_of(&o)?;
                }
            }
        }
        let total = servers + in_flight + cost_of(request)?;
        if total > budget + 1e-9 {
            warnings.push(format!(
                "this brings {} to €{total:.2} a month, over its budget of €{budget:.2}",
                project.name
            ));
        }
    }
    Ok((!warnings.is_empty()).then(|| warnings.join("; ")))
}

/// Records the server created for a request (by the provisioner).
pub fn attach_server(
    w: &mut Writer,
    actor: &Actor,
    request_id: &str,
    server_id: &str,
) -> AppResult<Request> {
    let mut request: Request = w
        .get(request_id)?
        .ok_or_else(|| AppError::not_found("request"))?;
    request.server_id = Some(server_id.to_string());
    request.updated_at = chrono::Utc::now();
    save(w, &request)?;
    audit::record(
        w,
        actor,
        "request.attach_server",
        &format!("request:{}", request.id),
        format!("server:{server_id}"),
    )?;
    Ok(request)
}

/// One workflow move by a person, as [`transition`]; a request marked deployed by hand
/// first gets `server` (an existing server of its project, by id or name) attached, in
/// the same transaction, so a refused move links nothing.
pub fn mark_moved(
    w: &mut Writer,
    rule: TokenRule,
    actor: &Actor,
    id: &str,
    action: Action,
    note: Option<&str>,
    server: Option<&str>,
) -> AppResult<Request> {
    if let (Action::MarkDeployed, Some(key)) = (action, server) {
        attach_existing_server(w, actor, id, key)?;
    }
    transition(w, rule, actor, id, action, note)
}

/// Attaches `key` (the id or name of a server in the request's project) to a request
/// an admin is about to mark deployed by hand: the server was set up outside Hetzner
/// or existed already. A server of another project, or none, is a 422 on `server`.
pub fn attach_existing_server(
    w: &mut Writer,
    actor: &Actor,
    request_id: &str,
    key: &str,
) -> AppResult<Request> {
    let request: Request = w
        .get(request_id)?
        .ok_or_else(|| AppError::not_found("request"))?;
    let key = key.trim();
    let server = match w.get::<crate::servers::Server>(key)? {
        Some(server) => Some(server),
        None => crate::servers::by_name(w, &request.project_id, key)?,
    };
    let server = server
        .filter(|s| s.project_id == request.project_id)
        .ok_or_else(|| {
            AppError::invalid(
                "server",
                format!("the request's project has no server {key}"),
            )
        })?;
    if request.server_id.as_deref() == Some(server.id.as_str()) {
        return Ok(request);
    }
    attach_server(w, actor, request_id, &server.id)
}

/// A subscription prefilled for a deployed request that has none yet: its client and
/// server, a year from today renewing by itself, and the server's monthly cost (as
/// synced, else the price of its type and location, else the request's budget) plus
/// the margin agreed on the request, in EUR as Hetzner bills.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Proposal {
    pub request_id: String,
    pub client_id: Option<String>,
    pub client: String,
    pub server_ids: Vec<String>,
    pub monthly_cost: Option<f64>,
    pub currency: &'static str,
    pub starts_on: chrono::NaiveDate,
    pub hosting_until: chrono::NaiveDate,
    pub auto_renew: bool,
    pub renewal_months: u32,
    /// How the price was reached, for a person to check it.
    pub basis: String,
}

/// The [`Proposal`] for `request` on `today`, when it is deployed and has no
/// subscription.
pub fn proposal(
    r: &impl Read,
    request: &Request,
    today: chrono::NaiveDate,
) -> anyhow::Result<Option<Proposal>> {
    if request.status != Status::Deployed || request.subscription_id.is_some() {
        return Ok(None);
    }
    let server = match &request.server_id {
        Some(id) => r.get::<crate::servers::Server>(id)?,
        None => None,
    };
    let (cost, source) = match server.as_ref().and_then(|s| s.monthly_cost) {
        Some(cost) => (Some(cost), "the server's monthly cost".to_string()),
        None => match crate::hetzner::budget::price_of(r, &request.server_type, &request.location)?
        {
            Some(price) => (
                Some(price),
                format!(
                    "the price of {} in {}",
                    request.server_type, request.location
                ),
            ),
            None => (
                request.monthly_budget,
                "the request's monthly budget".to_string(),
            ),
        },
    };
    let margin = request.margin_percent.unwrap_or(0.0);
    let monthly_cost = cost.map(|c| ((c * (1.0 + margin / 100.0)) * 100.0).round() / 100.0);
    let basis = match (cost, request.margin_percent) {
        (None, _) => "no cost known: enter the price agreed with the client".to_string(),
        (Some(c), Some(m)) => format!("€{c:.2} ({source}) plus the agreed margin of {m}%"),
        (Some(c), None) => format!("€{c:.2} ({source}); the request states no margin"),
    };
    let hosting_until = today
        .checked_add_months(chrono::Months::new(12))
        .and_then(|d| d.pred_opt())
        .unwrap_or(today);
    Ok(Some(Proposal {
        request_id: request.id.clone(),
        client_id: request.client_id.clone(),
        client: request.client_name.clone(),
        server_ids: request.server_id.iter().cloned().collect(),
        monthly_cost,
        currency: crate::revenue::SERVER_CURRENCY,
        starts_on: today,
        hosting_until,
        auto_renew: true,
        renewal_months: 12,
        basis,
    }))
}

/// Records that subscription `subscription_id` was made from request `request_id`,
/// which must be deployed and have none yet (else a 409), in the caller's transaction.
pub fn link_subscription(
    w: &mut Writer,
    request_id: &str,
    subscription_id: &str,
) -> AppResult<Request> {
    let mut request: Request = w.get(request_id)?.ok_or_else(|| {
        AppError::invalid("request_id", format!("there is no request {request_id}"))
    })?;
    if request.status != Status::Deployed {
        return Err(AppError::conflict(format!(
            "the request is {}: a subscription is made from a deployed request",
            request.status.as_str()
        )));
    }
    if let Some(existing) = &request.subscription_id {
        return Err(AppError::conflict(format!(
            "the request already has subscription {existing}"
        )));
    }
    request.subscription_id = Some(subscription_id.to_string());
    request.updated_at = chrono::Utc::now();
    save(w, &request)?;
    Ok(request)
}

/// Forgets the server a request was attached to (the provisioner found it is not the
/// request's: it lacks the request's label), so a retry never stays on it; audited.
pub fn detach_server(
    w: &mut Writer,
    actor: &Actor,
    request_id: &str,
    reason: &str,
) -> AppResult<Request> {
    let mut request: Request = w
        .get(request_id)?
        .ok_or_else(|| AppError::not_found("request"))?;
    let Some(old) = request.server_id.take() else {
        return Ok(request);
    };
    request.updated_at = chrono::Utc::now();
    save(w, &request)?;
    audit::record(
        w,
        actor,
        "request.detach_server",
        &format!("request:{}", request.id),
        format!("server:{old}: {reason}"),
    )?;
    Ok(request)
}

const BY_STATUS: &str = "request_by_status";
const BY_REQUESTER: &str = "request_by_requester";
const BY_CLIENT: &str = "request_by_client";
/// The scope of `request_by_client` entries every request has (besides the one under
/// its requester's id, for those who see only their own).
const EVERYONE: &str = "*";

/// Writes a request: the only way a request reaches the store. Its list indexes and
/// kept counts follow in the same transaction.
fn save(w: &mut Writer, request: &Request) -> anyhow::Result<()> {
    let old: Option<Request> = w.get(&request.id)?;
    w.put(request)?;
    reindex(w, old.as_ref(), request)
}

/// Moves the index entries and counts of a request from what `old` had to what `new`
/// has (`old` is `None` for a new request, or when indexing stored ones afresh).
fn reindex(w: &mut Writer, old: Option<&Request>, new: &Request) -> anyhow::Result<()> {
    let old_keys = old.map(list_keys).unwrap_or_default();
    let new_keys = list_keys(new);
    for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        w.index_delete(key.0, &key.1)?;
    }
    for key in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        w.index_put(key.0, &key.1, &new.id)?;
    }
    let old_counts = old.map(counted).unwrap_or_default();
    let new_counts = counted(new);
    for name in old_counts.iter().filter(|c| !new_counts.contains(c)) {
        w.counter_add(name, -1)?;
    }
    for name in new_counts.iter().filter(|c| !old_counts.contains(c)) {
        w.counter_add(name, 1)?;
    }
    Ok(())
}

/// How a client is named in the client index: the name folded to lower case, or the
/// e-mail address (a value with an `@`).
fn client_key(client: &str) -> String {
    let value = client.trim().to_lowercase();
    if value.contains('@') {
        format!("email:{value}")
    } else {
        format!("name:{value}")
    }
}

/// The list index entries of a request: `(index, key)`, all ending with its id.
fn list_keys(q: &Request) -> Vec<(&'static str, String)> {
    let mut keys = vec![
        (BY_STATUS, format!("{}/{}", q.status.as_str(), q.id)),
        (BY_REQUESTER, format!("{}/{}", q.requested_by, q.id)),
    ];
    for client in [client_key(&q.client_name), client_key(&q.client_email)] {
        for scope in [EVERYONE, q.requested_by.as_str()] {
            keys.push((BY_CLIENT, format!("{scope}/{client}/{}", q.id)));
        }
    }
    if let Some(client) = &q.client_id {
        keys.push((crate::clients::REQUESTS, format!("{client}/{}", q.id)));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Schema step (by `clients::link_free_text`): each request stored before clients
/// were records is linked to the client of its name, made with its e-mail when new.
pub fn link_clients(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Request> = w.list()?;
    let actor = Actor::system();
    for mut request in all.into_iter().filter(|q| q.client_id.is_none()) {
        let client = match crate::clients::resolve(
            w,
            &actor,
            None,
            &request.client_name,
            Some(&request.client_email),
        ) {
            Ok(client) => client,
            Err(e) => {
                // A name today's rules refuse stays free text on its request.
                tracing::warn!(request = %request.id, "request kept without a client record: {e}");
                continue;
            }
        };
        request.client_id = Some(client.id);
        save(w, &request)?;
    }
    Ok(())
}

fn status_count(status: Status) -> String {
    format!("requests/{}", status.as_str())
}

fn requester_status_count(user_id: &str, status: Status) -> String {
    format!("requests/by/{user_id}/{}", status.as_str())
}

/// The kept counts a request adds one to.
fn counted(q: &Request) -> Vec<String> {
    vec![
        status_count(q.status),
        requester_status_count(&q.requested_by, q.status),
    ]
}

/// How many requests are in each status: all of them, or one requester's. Kept
/// counts, never a scan.
pub fn counts_by_status(
    r: &impl Read,
    requester: Option<&str>,
) -> anyhow::Result<Vec<(Status, u64)>> {
    Status::ALL
        .into_iter()
        .map(|status| {
            let name = match requester {
                Some(user_id) => requester_status_count(user_id, status),
                None => status_count(status),
            };
            Ok((status, r.counter(&name)?))
        })
        .collect()
}

/// The ids of every request in `status`, oldest first: for the statuses few requests
/// stay in (approved, provisioning), which background work follows.
pub fn ids_with_status(r: &impl Read, status: Status) -> anyhow::Result<Vec<String>> {
    Ok(r.index_scan(BY_STATUS, &format!("{}/", status.as_str()))?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// What a list of requests is narrowed to; the fields combine.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    /// The client's name (case-insensitive) or, with an `@`, its e-mail address.
    pub client: Option<String>,
    /// Only the requests this user (id) filed.
    pub requested_by: Option<String>,
}

impl Filter {
    fn matches(&self, q: &Request) -> bool {
        self.status.is_none_or(|s| q.status == s)
            && self
                .requested_by
                .as_ref()
                .is_none_or(|u| &q.requested_by == u)
            && self.client.as_deref().is_none_or(|c| {
                let wanted = client_key(c);
                client_key(&q.client_name) == wanted || client_key(&q.client_email) == wanted
            })
    }
}

/// Whether `subject` sees every request, or only its own.
fn sees_all(subject: &Subject) -> bool {
    policy::can(subject, policy::Action::ViewAllRequests, None)
}

/// Whether any request the subject may see names the client `client`: a filter on a
/// client nobody filed for is a mistake the caller hears about.
pub fn client_known(r: &impl Read, subject: &Subject, client: &str) -> anyhow::Result<bool> {
    let scope = if sees_all(subject) {
        EVERYONE
    } else {
        subject.user_id.as_str()
    };
    let scan =
        crate::store::IndexScan::prefix(BY_CLIENT, &format!("{scope}/{}/", client_key(client)), 1);
    Ok(!r.index_page(&scan)?.is_empty())
}

/// One page of the requests a subject may see (all of them with `ViewAllRequests`,
/// else its own) that match `filter`, newest first, after the request id `cursor`.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Request>> {
    let all = sees_all(subject);
    let scope = if all {
        EVERYONE
    } else {
        subject.user_id.as_str()
    };
    let requester = match &filter.requested_by {
        Some(user_id) => Some(user_id.as_str()),
        None if !all => Some(subject.user_id.as_str()),
        None => None,
    };
    let source = match (&filter.client, requester, filter.status) {
        (Some(client), _, _) => {
            Source::index(BY_CLIENT, format!("{scope}/{}/", client_key(client)))
        }
        (None, Some(user_id), _) => Source::index(BY_REQUESTER, format!("{user_id}/")),
        (None, None, Some(status)) => Source::index(BY_STATUS, format!("{}/", status.as_str())),
        (None, None, None) => Source::Table,
    };
    listing::page(
        r,
        vec![source],
        Order::Descending,
        cursor,
        limit,
        |q: &Request| filter.matches(q) && (all || q.requested_by == subject.user_id),
    )
}

/// Every request the subject may see that matches `filter`, newest first, read page
/// by page through the same indexes as [`query`]: for work over one status or one
/// client's requests (what a subscription may offer), never for a list a person pages.
pub fn all_matching(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
) -> anyhow::Result<Vec<Request>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = query(r, subject, filter, cursor.as_deref(), 1000)?;
        out.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

/// Schema step: the list indexes and kept counts of requests stored before lists
/// read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Request> = w.list()?;
    for request in &all {
        reindex(w, None, request)?;
    }
    Ok(())
}

/// One request the subject may see; 404 for unknown, 403 for someone else's.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Request> {
    let request: Request = r.get(id)?.ok_or_else(|| AppError::not_found("request"))?;
    if request.requested_by != subject.user_id
        && !policy::can(subject, policy::Action::ViewAllRequests, None)
    {
        return Err(AppError::forbidden());
    }
    Ok(request)
}

// ---- hooks ----

/// Something to run after an approval commits.
pub type ApprovalHook = Arc<dyn Fn(&App, &Request) + Send + Sync>;

/// The hooks one control plane runs after each committed approval (`App::approvals`).
#[derive(Default)]
pub struct ApprovalHooks(RwLock<Vec<ApprovalHook>>);

impl ApprovalHooks {
    /// Registers a hook run after every committed approval (see the module docs).
    /// Hooks must return quickly: spawn a task for slow work.
    pub fn on_approved(&self, hook: impl Fn(&App, &Request) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.0.write() {
            hooks.push(Arc::new(hook));
        }
    }
}

/// Runs `app`'s approval hooks for a request whose approval has committed.
pub fn approved(app: &App, request: &Request) {
    let hooks: Vec<ApprovalHook> = app
        .approvals
        .0
        .read()
        .map(|h| h.clone())
        .unwrap_or_default();
    for hook in hooks {
        hook(app, request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn facts(actor: ActorKind, is_requester: bool, project_has_token: bool) -> Facts {
        Facts {
            actor,
            is_requester,
            project_has_token,
        }
    }

    /// The table as a person reads it, written independently of `next`: the allowed
    /// moves, each with who may make it and what it needs.
    fn expected(state: Status, action: Action, f: Facts) -> Option<Status> {
        use ActorKind::*;
        use Status::*;
        let admin = f.actor == Admin;
        let admin_or_system = matches!(f.actor, Admin | System);
        match (state, action) {
            (Pending, Action::Approve) if admin && !f.is_requester => Some(Approved),
            (Pending, Action::Reject) if admin => Some(Rejected),
            (Approved, Action::StartProvisioning) if admin_or_system && f.project_has_token => {
                Some(Provisioning)
            }
            (Provisioning, Action::Fail) if admin_or_system => Some(Failed),
            (Failed, Action::Retry) if admin_or_system && f.project_has_token => Some(Provisioning),
            (Provisioning, Action::MarkDeployed) if f.actor == System => Some(Deployed),
            (Approved | Provisioning | Failed, Action::MarkDeployed)
                if admin && !f.project_has_token =>
            {
                Some(Deployed)
            }
            _ => None,
        }
    }

    /// Every state x action x actor kind x requester x token gives the documented
    /// answer, and every refusal carries a reason a person can read.
    #[test]
    fn transition_table() {
        let mut checked = 0;
        for state in Status::ALL {
            for action in Action::ALL {
                for actor in [ActorKind::Admin, ActorKind::System, ActorKind::Other] {
                    for is_requester in [false, true] {
                        for token in [false, true] {
                            let f = facts(actor, is_requester, token);
                            let got = next(state, action, f);
                            let want = expected(state, action, f);
                            match (&got, want) {
                                (Ok(to), Some(w)) => assert_eq!(*to, w),
                                (Err(reason), None) => assert!(reason.len() > 10),
                                _ => {
                                    panic!("{state:?} {action:?} {f:?}: got {got:?}, want {want:?}")
                                }
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 6 * 3 * 2 * 2);
        // Terminal states accept nothing from anyone.
        for state in [Status::Deployed, Status::Rejected] {
            assert!(state.is_final());
            for action in Action::ALL {
                assert!(next(state, action, facts(ActorKind::Admin, false, false)).is_err());
            }
        }
    }

    /// The reasons name what is wrong.
    #[test]
    fn refusals_explain_themselves() {
        let own = next(
            Status::Pending,
            Action::Approve,
            facts(ActorKind::Admin, true, false),
        );
        assert!(own.unwrap_err().contains("your own request"));
        let twice = next(
            Status::Approved,
            Action::Approve,
            facts(ActorKind::Admin, false, false),
        );
        assert!(twice
            .unwrap_err()
            .contains("an approved request cannot be approved"));
        let sales = next(
            Status::Pending,
            Action::Approve,
            facts(ActorKind::Other, false, false),
        );
        assert!(sales.unwrap_err().contains("only an admin"));
    }

    struct World {
        _dir: tempfile::TempDir,
        store: Store,
        sales: User,
        admin: User,
        admin2: User,
    }

    fn world(token: bool, budget: Option<f64>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let keys = crate::secrets::Keys::from_master(b"test secret");
        let (sales, admin, admin2) = store
            .write(|w| {
                let mut made = Vec::new();
                for (name, role) in [("sales", "sales"), ("admin", "admin"), ("boss", "admin")] {
                    made.push(users::test_user(w, name, role)?);
                }
                let input = projects::ProjectInput {
                    name: Some("Nova HR".into()),
                    budget_monthly: budget,
                    hetzner_token: token.then(|| "tok".to_string()),
                    ..Default::default()
                };
                let p = projects::create(w, &keys, &Actor::system(), &input)?;
                let server = crate::servers::NewServer {
                    name: Some("web".into()),
                    monthly_cost: Some(50.0),
                    status: Some("running".into()),
                    ..Default::default()
                };
                crate::servers::create(w, &Actor::system(), &p.id, &server)?;
                Ok((made.remove(0), made.remove(0), made.remove(0)))
            })
            .unwrap();
        World {
            _dir: dir,
            store,
            sales,
            admin,
            admin2,
        }
    }

    fn actor(user: &User) -> Actor {
        Actor {
            username: user.username.clone(),
            ip: None,
        }
    }

    fn file(world: &World, budget: f64) -> Request {
        let input = NewRequest {
            client_name: Some("Acme".into()),
            client_email: Some("ops@acme.example".into()),
            purpose: Some("shop".into()),
            project: Some("nova hr".into()),
            server_type: Some("CX21".into()),
            location: Some("fsn1".into()),
            image: Some("ubuntu-22.04".into()),
            monthly_budget: Some(budget),
            ..Default::default()
        };
        world
            .store
            .write(|w| Ok(create(w, &actor(&world.sales), &world.sales, &input)?))
            .unwrap()
    }

    /// Unread notification titles per user: sales, admin, boss.
    fn inboxes(world: &World) -> [Vec<String>; 3] {
        world
            .store
            .read(|r| {
                let of = |u: &User| -> anyhow::Result<Vec<String>> {
                    Ok(notifications::inbox(r, &u.id, true, 100)?
                        .into_iter()
                        .map(|n| {
                            assert!(n.link.as_deref().unwrap().starts_with("/requests/"));
                            n.title
                        })
                        .collect())
                };
                Ok([of(&world.sales)?, of(&world.admin)?, of(&world.admin2)?])
            })
            .unwrap()
    }

    fn mark_all(world: &World) {
        world
            .store
            .write(|w| {
                for u in [&world.sales, &world.admin, &world.admin2] {
                    notifications::mark_all_read(w, &u.id)?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// Submission tells the admins; each move tells the requester and the admins but
    /// not the one who made it, and lands in the history and the audit log.
    #[test]
    fn every_move_notifies_records_and_audits() {
        let world = world(true, None);
        let request = file(&world, 10.0);
        assert_eq!(request.server_type, "cx21");
        let [sales, admin, boss] = inboxes(&world);
        assert!(
            sales.is_empty(),
            "the requester is not told of their own submission"
        );
        assert_eq!(admin.len(), 1);
        assert_eq!(boss.len(), 1);
        assert!(admin[0].contains("New server request from sales"));
        mark_all(&world);

        let steps: [(Action, Actor, [usize; 3]); 5] = [
            (Action::Approve, actor(&world.admin), [1, 0, 1]),
            (Action::StartProvisioning, Actor::system(), [1, 1, 1]),
            (Action::Fail, Actor::system(), [1, 1, 1]),
            (Action::Retry, actor(&world.admin2), [1, 1, 0]),
            (Action::MarkDeployed, Actor::system(), [1, 1, 1]),
        ];
        for (action, who, counts) in steps {
            world
                .store
                .write(|w| {
                    Ok(transition(
                        w,
                        TokenRule::own_tokens_only(),
                        &who,
                        &request.id,
                        action,
                        Some("step"),
                    )?)
                })
                .unwrap();
            let got = inboxes(&world);
            let lens = [got[0].len(), got[1].len(), got[2].len()];
            assert_eq!(lens, counts, "{action:?} by {}", who.username);
            for title in got.iter().flatten() {
                assert!(title.contains(action.label()), "{title}");
            }
            mark_all(&world);
        }
        let done: Request = world.store.get(&request.id).unwrap().unwrap();
        assert_eq!(done.status, Status::Deployed);
        let labels: Vec<&str> = done.history.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(
            labels,
            [
                "submit",
                "approve",
                "start_provisioning",
                "fail",
                "retry",
                "mark_deployed"
            ]
        );
        assert_eq!(done.history[1].by, "admin");
        let audit = world
            .store
            .read(|r| crate::audit::recent(r, Some("request."), 50))
            .unwrap();
        assert_eq!(audit.len(), 6);

        // A rejection of another request tells the requester and the other admin.
        let second = file(&world, 1.0);
        mark_all(&world);
        let missing = world.store.write(|w| {
            Ok(transition(
                w,
                TokenRule::own_tokens_only(),
                &actor(&world.admin),
                &second.id,
                Action::Reject,
                None,
            ))
        });
        assert_eq!(
            missing.unwrap().unwrap_err().field.as_deref(),
            Some("reason")
        );
        world
            .store
            .write(|w| {
                Ok(transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &actor(&world.admin),
                    &second.id,
                    Action::Reject,
                    Some("too big"),
                )?)
            })
            .unwrap();
        let [sales, admin, boss] = inboxes(&world);
        assert_eq!((sales.len(), admin.len(), boss.len()), (1, 0, 1));
    }

    /// A forbidden move changes nothing and is a conflict with the reason; an admin
    /// who filed a request cannot approve it.
    #[test]
    fn forbidden_moves_change_nothing() {
        let world = world(false, None);
        let request = file(&world, 10.0);
        let sales_try = world.store.write(|w| {
            Ok(transition(
                w,
                TokenRule::own_tokens_only(),
                &actor(&world.sales),
                &request.id,
                Action::Approve,
                None,
            ))
        });
        let err = sales_try.unwrap().unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Conflict);
        let provision = world.store.write(|w| {
            Ok(transition(
                w,
                TokenRule::own_tokens_only(),
                &Actor::system(),
                &request.id,
                Action::StartProvisioning,
                None,
            ))
        });
        assert!(provision.unwrap().is_err());
        let unchanged: Request = world.store.get(&request.id).unwrap().unwrap();
        assert_eq!(unchanged.status, Status::Pending);
        assert_eq!(unchanged.history.len(), 1);

        // No token: the admin marks it deployed by hand after approval.
        world
            .store
            .write(|w| {
                Ok(transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &actor(&world.admin),
                    &request.id,
                    Action::Approve,
                    None,
                )?)
            })
            .unwrap();
        let done = world
            .store
            .write(|w| {
                Ok(transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &actor(&world.admin),
                    &request.id,
                    Action::MarkDeployed,
                    Some("by hand"),
                )?)
            })
            .unwrap();
        assert_eq!(done.status, Status::Deployed);

        // An admin's own request needs another admin.
        let input = NewRequest {
            client_name: Some("Own".into()),
            client_email: Some("a@b.co".into()),
            purpose: Some("x".into()),
            project: Some("Nova HR".into()),
            server_type: Some("cx11".into()),
            location: Some("nbg1".into()),
            image: Some("debian-12".into()),
            ..Default::default()
        };
        let own = world
            .store
            .write(|w| Ok(create(w, &actor(&world.admin), &world.admin, &input)?))
            .unwrap();
        let err = world
            .store
            .write(|w| {
                Ok(transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &actor(&world.admin),
                    &own.id,
                    Action::Approve,
                    None,
                ))
            })
            .unwrap()
            .unwrap_err();
        assert!(err.message.contains("your own request"), "{}", err.message);
        world
            .store
            .write(|w| {
                Ok(transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &actor(&world.admin2),
                    &own.id,
                    Action::Approve,
                    None,
                )?)
            })
            .unwrap();
    }

    /// An account named `system` acting over HTTP is judged by its role, never as the
    /// control plane itself.
    #[test]
    fn a_user_named_system_is_not_the_system() {
        let world = world(true, None);
        let request = file(&world, 1.0);
        world
            .store
            .write(|w| users::test_user(w, "system", "sales"))
            .unwrap();
        let over_http = Actor {
            username: "system".into(),
            ip: Some("203.0.113.9".into()),
        };
        let facts = world
            .store
            .read(|r| {
                Ok((
                    facts_of(r, TokenRule::own_tokens_only(), &over_http, &request)?.actor,
                    facts_of(r, TokenRule::own_tokens_only(), &Actor::system(), &request)?.actor,
                ))
            })
            .unwrap();
        assert_eq!(facts, (ActorKind::Other, ActorKind::System));
    }

    /// Lists read through the status, requester and client indexes: newest first,
    /// each request once however small the pages; a sales agent sees only its own;
    /// the kept counts by status follow every move.
    #[test]
    fn lists_and_counts_follow_the_workflow() {
        let world = world(false, None);
        let other = world
            .store
            .write(|w| users::test_user(w, "other", "sales"))
            .unwrap();
        let file_for = |who: &User, client: &str, email: &str| -> Request {
            let input = NewRequest {
                client_name: Some(client.into()),
                client_email: Some(email.into()),
                purpose: Some("shop".into()),
                project: Some("Nova HR".into()),
                server_type: Some("cx21".into()),
                location: Some("fsn1".into()),
                image: Some("ubuntu-22.04".into()),
                ..Default::default()
            };
            world
                .store
                .write(|w| Ok(create(w, &actor(who), who, &input)?))
                .unwrap()
        };
        let a1 = file_for(&world.sales, "Acme", "ops@acme.example");
        let b1 = file_for(&other, "Bolt", "it@bolt.example");
        let a2 = file_for(&world.sales, "ACME ", "ops@acme.example");
        let admin_actor = actor(&world.admin);
        world
            .store
            .write(|w| {
                transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &admin_actor,
                    &a1.id,
                    Action::Approve,
                    None,
                )?;
                transition(
                    w,
                    TokenRule::own_tokens_only(),
                    &admin_actor,
                    &b1.id,
                    Action::Reject,
                    Some("no"),
                )?;
                Ok(())
            })
            .unwrap();
        let subject_of = |u: &User| world.store.read(|r| users::subject(r, u)).unwrap();
        let (admin, sales, other) = (
            subject_of(&world.admin),
            subject_of(&world.sales),
            subject_of(&other),
        );
        let walk = |subject: &Subject, filter: &Filter| -> Vec<String> {
            let mut out = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = world
                    .store
                    .read(|r| query(r, subject, filter, cursor.as_deref(), 1))
                    .unwrap();
                out.extend(page.items.into_iter().map(|q| q.id));
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return out,
                }
            }
        };
        let by = |status: Option<Status>, client: Option<&str>| Filter {
            status,
            client: client.map(String::from),
            requested_by: None,
        };
        let cases: Vec<(&Subject, Filter, Vec<&String>)> = vec![
            (&admin, by(None, None), vec![&a2.id, &b1.id, &a1.id]),
            (&admin, by(Some(Status::Pending), None), vec![&a2.id]),
            (&admin, by(None, Some("acme")), vec![&a2.id, &a1.id]),
            (
                &admin,
                by(None, Some("OPS@acme.example")),
                vec![&a2.id, &a1.id],
            ),
            (
                &admin,
                by(Some(Status::Approved), Some("Acme")),
                vec![&a1.id],
            ),
            (&sales, by(None, None), vec![&a2.id, &a1.id]),
            (&sales, by(Some(Status::Rejected), None), vec![]),
            (&sales, by(None, Some("bolt")), vec![]),
            (&other, by(None, None), vec![&b1.id]),
        ];
        for (subject, filter, expected) in cases {
            let expected: Vec<String> = expected.into_iter().cloned().collect();
            assert_eq!(
                walk(subject, &filter),
                expected,
                "{} {filter:?}",
                subject.username
            );
        }
        let known = |subject: &Subject, client: &str| {
            world
                .store
                .read(|r| client_known(r, subject, client))
                .unwrap()
        };
        assert!(known(&admin, "bolt") && known(&sales, " acme") && known(&other, "Bolt"));
        assert!(
            !known(&sales, "bolt"),
            "another agent's client stays unknown"
        );
        let counts = |requester: Option<&str>| -> Vec<(Status, u64)> {
            world
                .store
                .read(|r| counts_by_status(r, requester))
                .unwrap()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        assert_eq!(
            counts(None),
            [
                (Status::Pending, 1),
                (Status::Approved, 1),
                (Status::Rejected, 1)
            ]
        );
        assert_eq!(
            counts(Some(&world.sales.id)),
            [(Status::Pending, 1), (Status::Approved, 1)]
        );
        let approved = world
            .store
            .read(|r| ids_with_status(r, Status::Approved))
            .unwrap();
        assert_eq!(approved, vec![a1.id.clone()]);
    }

    /// Approval warns when servers + requests in flight + this one exceed the budget.
    #[test]
    fn approval_warns_over_budget() {
        let world = world(false, Some(100.0));
        let small = file(&world, 30.0);
        let approve = |id: &str| {
            world
                .store
                .write(|w| {
                    Ok(transition(
                        w,
                        TokenRule::own_tokens_only(),
                        &actor(&world.admin),
                        id,
                        Action::Approve,
                        None,
                    )?)
                })
                .unwrap()
        };
        assert_eq!(approve(&small.id).budget_warning, None, "50 + 30 <= 100");
        let second = file(&world, 30.0);
        let warned = approve(&second.id);
        let warning = warned.budget_warning.expect("50 + 30 + 30 > 100");
        assert!(warning.contains("€110.00"), "{warning}");
        assert!(warning.contains("€100.00"), "{warning}");
    }

    /// Validation refuses bad input naming the field.
    #[test]
    fn validation_names_fields() {
        let world = world(false, None);
        let good = NewRequest {
            client_name: Some("Acme".into()),
            client_email: Some("ops@acme.example".into()),
            purpose: Some("shop".into()),
            project: Some("Nova HR".into()),
            server_type: Some("cx21".into()),
            location: Some("fsn1".into()),
            image: Some("ubuntu-22.04".into()),
            ..Default::default()
        };
        let cases: Vec<(&str, NewRequest)> = vec![
            (
                "client_name",
                NewRequest {
                    client_name: None,
                    ..good.clone()
                },
            ),
            (
                "client_email",
                NewRequest {
                    client_email: Some("nope".into()),
                    ..good.clone()
                },
            ),
            (
                "project",
                NewRequest {
                    project: Some("Nowhere".into()),
                    ..good.clone()
                },
            ),
            (
                "server_type",
                NewRequest {
                    server_type: Some("cx 21".into()),
                    ..good.clone()
                },
            ),
            (
                "cpu_cores",
                NewRequest {
                    cpu_cores: Some(0),
                    ..good.clone()
                },
            ),
            (
                "monthly_budget",
                NewRequest {
                    monthly_budget: Some(-1.0),
                    ..good.clone()
                },
            ),
        ];
        for (field, input) in cases {
            let err = world
                .store
                .write(|w| Ok(create(w, &actor(&world.sales), &world.sales, &input)))
                .unwrap()
                .unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field));
        }
    }

    /// A request with many bad fields hears about all of them at once, in the form's
    /// order, an unknown project included; what the form found before (a count that is
    /// not a number) comes first; nothing is filed.
    #[test]
    fn validation_reports_every_field() {
        let world = world(false, None);
        let bad = NewRequest {
            client_name: Some(" ".into()),
            client_email: Some("ops@acme".into()),
            purpose: Some("shop".into()),
            project: Some("Nowhere".into()),
            server_type: Some("cx 21".into()),
            location: Some("fsn1".into()),
            image: None,
            cpu_cores: Some(0),
            monthly_budget: Some(-1.0),
            ..Default::default()
        };
        let mut earlier = validate::Problems::new();
        earlier.add(AppError::invalid("ram_gb", "Ram gb must be a whole number"));
        let err = world
            .store
            .write(|w| {
                Ok(create_adding_to(
                    w,
                    &actor(&world.sales),
                    &world.sales,
                    &bad,
                    earlier,
                ))
            })
            .unwrap()
            .unwrap_err();
        let fields: Vec<&str> = err.field_errors().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "ram_gb",
                "client_name",
                "client_email",
                "project",
                "server_type",
                "image",
                "cpu_cores",
                "monthly_budget"
            ]
        );
        assert_eq!(err.field.as_deref(), Some("ram_gb"));
        let messages: std::collections::HashMap<&str, &str> =
            err.field_errors().into_iter().collect();
        assert_eq!(messages["project"], "there is no project named Nowhere");
        assert_eq!(messages["image"], "Image is required");
        let filed = world.store.read(|r| r.list::<Request>()).unwrap();
        assert!(filed.is_empty(), "{filed:?}");
    }
}
