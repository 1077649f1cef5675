//! Client subscriptions: what a client pays per month (in its own currency), for which
//! servers, from when until when, and whether it renews by itself. Each belongs to the
//! sales agent who owns the client.
//!
//! The daily renewal job is a pure plan, [`plan`] over `(subscriptions, today)`, applied
//! by [`run_renewals`] in one transaction: an auto-renewing subscription whose end has
//! come is extended by its renewal period (each renewal recorded); the others notify
//! the owner and the admins 30, 7 and 1 days before their end (once each) and are
//! marked expired the day after it. [`renewal_job`] runs it at start-up and after each
//! UTC midnight, with the clock injected so tests never sleep.
//!
//! Lists read pages by client name through `subscription_order` (`position`) and
//! `subscription_by_agent` (`agent_id/position`, the position being the client's name
//! and the id), kept by [`save`], through which every subscription is written.
//!
//! The lifecycle beyond renewals ([`change`]): a cancellation the client asked for takes
//! effect on its date (until then no reminders; an auto-renewing one still renews up to
//! it), a pause stops renewals, reminders and revenue until it is resumed (the end date
//! moves by the days paused), an end stops it today. Each change is audited and told to
//! the owning sales agent; [`delete`] removes a subscription made by mistake.
//!
//! What does not live here: revenue arithmetic (`revenue`) and permissions (`policy`;
//! seeing everyone's subscriptions follows `ViewAllRevenue`).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::listing::{self, Order, Page, Source};
use crate::notifications::{self, Message};
use crate::policy::{self, Subject};
use crate::servers::Server;
use crate::store::{Read, Record, Store, Writer};
use crate::users::User;
use crate::validate::{self, Problems};

const ORDER: &str = "subscription_order";
const BY_AGENT: &str = "subscription_by_agent";
/// `{hosting_until}/{id}`: the subscriptions by end date, soonest first.
const BY_END: &str = "subscription_by_end";
/// `{sales_agent_id}/{hosting_until}/{id}`: one agent's, by end date.
const BY_AGENT_END: &str = "subscription_by_agent_end";

/// Days before the end at which a subscription that does not renew is announced.
pub const REMINDER_DAYS: [u32; 3] = [30, 7, 1];

/// Whether a subscription still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    /// Paused by the sales agent: no renewals, reminders or revenue until resumed.
    Paused,
    /// Cancelled from its cancellation's effective date on.
    Cancelled,
    /// Ended by hand before its end date.
    Ended,
    /// Its end date passed without renewal.
    Expired,
}

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 5] = [
        SubscriptionStatus::Active,
        SubscriptionStatus::Paused,
        SubscriptionStatus::Cancelled,
        SubscriptionStatus::Ended,
        SubscriptionStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Cancelled => "cancelled",
            SubscriptionStatus::Ended => "ended",
            SubscriptionStatus::Expired => "expired",
        }
    }

    /// Whether the subscription still runs or may run again (active or paused).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Active | SubscriptionStatus::Paused
        )
    }

    pub fn parse(text: &str) -> Option<SubscriptionStatus> {
        SubscriptionStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One automatic renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewal {
    /// The day the job renewed it.
    pub on: NaiveDate,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// A cancellation the client asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancellation {
    pub reason: String,
    /// The first day the subscription no longer runs.
    pub effective_on: NaiveDate,
    /// Username of who recorded it.
    pub by: String,
    pub at: DateTime<Utc>,
}

/// One change of a subscription's lifecycle (cancel, pause, resume, end), oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleChange {
    pub action: String,
    pub at: DateTime<Utc>,
    /// Username of who made it (`system` for a cancellation taking effect).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_on: Option<NaiveDate>,
}

/// A client subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    /// The client record (`clients`); subscriptions stored before clients were
    /// records got theirs by name when the store was migrated.
    #[serde(default)]
    pub client_id: Option<String>,
    pub client: String,
    pub server_ids: Vec<String>,
    pub monthly_cost: f64,
    /// ISO 4217 code, upper case (`EUR`, `USD`).
    pub currency: String,
    pub starts_on: NaiveDate,
    pub hosting_until: NaiveDate,
    pub auto_renew: bool,
    pub renewal_months: u32,
    /// User id and username of the owning sales agent.
    pub sales_agent_id: String,
    pub sales_agent: String,
    pub status: SubscriptionStatus,
    #[serde(default)]
    pub renewals: Vec<Renewal>,
    /// Reminder thresholds (days) already announced for the current end date.
    #[serde(default)]
    pub reminders_sent: Vec<u32>,
    pub notes: Option<String>,
    /// The client's cancellation, pending until its effective date or taken effect.
    #[serde(default)]
    pub cancellation: Option<Cancellation>,
    /// The day it was paused, while it is.
    #[serde(default)]
    pub paused_on: Option<NaiveDate>,
    /// The first day it no longer ran, once cancelled or ended.
    #[serde(default)]
    pub ended_on: Option<NaiveDate>,
    #[serde(default)]
    pub lifecycle: Vec<LifecycleChange>,
    /// The deployed request it was made from, if any.
    #[serde(default)]
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Record for Subscription {
    const TABLE: &'static str = "subscriptions";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A subscription as the API and forms send it; on update absent fields stay.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// A client record; `client` alone finds the client by name or creates it.
    pub client_id: Option<String>,
    pub client: Option<String>,
    pub server_ids: Option<Vec<String>>,
    pub monthly_cost: Option<f64>,
    pub currency: Option<String>,
    /// `YYYY-MM-DD`.
    pub starts_on: Option<String>,
    /// `YYYY-MM-DD`.
    pub hosting_until: Option<String>,
    pub auto_renew: Option<bool>,
    pub renewal_months: Option<u32>,
    /// Username of the owning sales agent; the caller by default.
    pub sales_agent: Option<String>,
    pub notes: Option<String>,
    /// The deployed request it is made from (only when it is made): its client and
    /// server unless given, and the request then links to it.
    pub request_id: Option<String>,
}

fn date(field: &str, value: &str) -> AppResult<NaiveDate> {
    NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|_| {
        AppError::invalid(
            field,
            format!("{} must be a date like 2026-01-31", validate::human(field)),
        )
    })
}

fn currency(value: &str) -> AppResult<String> {
    let code = value.trim().to_uppercase();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(AppError::invalid(
            "currency",
            "currency must be a three-letter code such as EUR or USD",
        ));
    }
    Ok(code)
}

fn check_servers(r: &impl Read, ids: &[String]) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for id in ids.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        if r.get::<Server>(id)?.is_none() {
            return Err(AppError::invalid(
                "server_ids",
                format!("there is no server {id}"),
            ));
        }
        if !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}

/// Applies `input` on top of `sub` (a new one or an existing one) when neither
/// `problems` (found before) nor the checks here find a problem; else one error naming
/// every bad field, and `sub` is unchanged.
fn apply(
    r: &impl Read,
    sub: &mut Subscription,
    input: &SubscriptionInput,
    mut problems: Problems,
) -> AppResult<()> {
    let client = input
        .client
        .as_deref()
        .map(|client| problems.check(validate::name("client", Some(client), 120)));
    let server_ids = input
        .server_ids
        .as_ref()
        .map(|ids| problems.check(check_servers(r, ids)));
    let monthly_cost = input
        .monthly_cost
        .map(|cost| problems.check(validate::money("monthly_cost", Some(cost))));
    let currency = input
        .currency
        .as_deref()
        .map(|c| problems.check(currency(c)));
    let starts_on = input
        .starts_on
        .as_deref()
        .map(|d| problems.check(date("starts_on", d)));
    let hosting_until = input
        .hosting_until
        .as_deref()
        .map(|d| problems.check(date("hosting_until", d)));
    if let Some(m) = input.renewal_months {
        if m == 0 || m > 120 {
            problems.add(AppError::invalid(
                "renewal_months",
                "renewal months must be between 1 and 120",
            ));
        }
    }
    let notes = input
        .notes
        .as_deref()
        .map(|n| problems.check(validate::text("notes", Some(n), validate::MAX_TEXT)));
    // The period is judged on the dates it will have, once both are valid.
    let start = match &starts_on {
        Some(Ok(d)) => Some(*d),
        Some(Err(_)) => None,
        None => Some(sub.starts_on),
    };
    let until = match &hosting_until {
        Some(Ok(d)) => Some(*d),
        Some(Err(_)) => None,
        None => Some(sub.hosting_until),
    };
    if let (Some(start), Some(until)) = (start, until) {
        if until < start {
            problems.add(AppError::invalid(
                "hosting_until",
                "hosting until must not be before the start date",
            ));
        }
    }
    problems.finish()?;
    if let Some(client) = client {
        sub.client = client?;
    }
    if let Some(ids) = server_ids {
        sub.server_ids = ids?;
    }
    if let Some(cost) = monthly_cost {
        sub.monthly_cost = cost?.unwrap_or(0.0);
    }
    if let Some(c) = currency {
        sub.currency = c?;
    }
    if let Some(d) = starts_on {
        sub.starts_on = d?;
    }
    if let Some(until) = hosting_until {
        let until = until?;
        if until != sub.hosting_until {
            // A new end date gets its own reminders, and an expired subscription
            // given a later end runs again (a paused, cancelled or ended one stays so).
            sub.reminders_sent.clear();
            if sub.status == SubscriptionStatus::Expired {
                sub.status = SubscriptionStatus::Active;
            }
        }
        sub.hosting_until = until;
    }
    if let Some(a) = input.auto_renew {
        sub.auto_renew = a;
    }
    if let Some(m) = input.renewal_months {
        sub.renewal_months = m;
    }
    if let Some(n) = notes {
        sub.notes = n?;
    }
    Ok(())
}

/// `input` with the name of the client record its `client_id` names (a missing one
/// added to `problems`), and that record.
fn with_client_record(
    w: &mut Writer,
    input: &SubscriptionInput,
    problems: &mut Problems,
) -> (SubscriptionInput, Option<crate::clients::Client>) {
    let mut input = input.clone();
    let chosen = problems
        .check(crate::clients::chosen(w, input.client_id.as_deref()))
        .unwrap_or(None);
    if let Some(client) = &chosen {
        input.client = Some(client.name.clone());
    }
    (input, chosen)
}

/// Points `sub` at its client record: `chosen`, else the client of its name (made when
/// new); the subscription takes the record's spelling of the name.
fn link_client(
    w: &mut Writer,
    actor: &Actor,
    sub: &mut Subscription,
    chosen: Option<crate::clients::Client>,
) -> AppResult<()> {
    let client = match chosen {
        Some(client) => client,
        None => crate::clients::resolve(w, actor, None, &sub.client, None)?,
    };
    sub.client = client.name;
    sub.client_id = Some(client.id);
    Ok(())
}

/// Gives subscription `id` its client's new name (the client was renamed); its list
/// position follows.
pub fn rename_client(w: &mut Writer, id: &str, name: &str) -> anyhow::Result<()> {
    if let Some(mut sub) = w.get::<Subscription>(id)? {
        sub.client = name.to_string();
        sub.updated_at = Utc::now();
        save(w, &sub)?;
    }
    Ok(())
}

/// Schema step (by `clients::link_free_text`): each subscription stored before
/// clients were records is linked to the client of its name, made when new.
pub fn link_clients(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Subscription> = w.list()?;
    let actor = Actor::system();
    for mut sub in all.into_iter().filter(|s| s.client_id.is_none()) {
        match crate::clients::resolve(w, &actor, None, &sub.client, None) {
            Ok(client) => sub.client_id = Some(client.id),
            Err(e) => {
                tracing::warn!(subscription = %sub.id, "subscription kept without a client record: {e}");
                continue;
            }
        }
        save(w, &sub)?;
    }
    Ok(())
}

/// `input` with what its request (`request_id`) gives where it is silent: the client
/// and the server; and that request's id. An unknown request is added to `problems`.
fn with_request_defaults(
    r: &impl Read,
    input: &SubscriptionInput,
    problems: &mut Problems,
) -> anyhow::Result<(SubscriptionInput, Option<String>)> {
    let mut input = input.clone();
    let Some(id) = input
        .request_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
    else {
        return Ok((input, None));
    };
    let Some(request) = r.get::<crate::requests::Request>(&id)? else {
        problems.add(AppError::invalid(
            "request_id",
            format!("there is no request {id}"),
        ));
        return Ok((input, None));
    };
    let no_client =
        input.client_id.is_none() && input.client.as_deref().is_none_or(|c| c.trim().is_empty());
    if no_client {
        input.client_id = request.client_id.clone();
        input.client = Some(request.client_name.clone());
    }
    if input.server_ids.as_ref().is_none_or(|ids| ids.is_empty()) {
        input.server_ids = Some(request.server_id.iter().cloned().collect());
    }
    Ok((input, Some(id)))
}

/// Creates a subscription owned by `owner`.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    owner: &User,
    input: &SubscriptionInput,
) -> AppResult<Subscription> {
    create_adding_to(w, actor, owner, input, Problems::new())
}

/// Creates a subscription like [`create`] when neither `earlier` (what the caller
/// found reading its form) nor the checks here find a problem; else one error naming
/// every bad field.
pub fn create_adding_to(
    w: &mut Writer,
    actor: &Actor,
    owner: &User,
    input: &SubscriptionInput,
    earlier: Problems,
) -> AppResult<Subscription> {
    let mut problems = earlier;
    let (input, request_id) = with_request_defaults(w, input, &mut problems)?;
    let (input, chosen) = &with_client_record(w, &input, &mut problems);
    let _ = problems.check(validate::name("client", input.client.as_deref(), 120));
    if input.monthly_cost.is_none() {
        problems.add(AppError::invalid(
            "monthly_cost",
            "monthly cost is required",
        ));
    }
    let _ = problems.check(validate::required("currency", input.currency.as_deref(), 3));
    let _ = problems.check(validate::required(
        "starts_on",
        input.starts_on.as_deref(),
        10,
    ));
    let _ = problems.check(validate::required(
        "hosting_until",
        input.hosting_until.as_deref(),
        10,
    ));
    let now = Utc::now();
    let today = now.date_naive();
    let mut sub = Subscription {
        id: uuid::Uuid::now_v7().to_string(),
        client_id: None,
        client: String::new(),
        server_ids: Vec::new(),
        monthly_cost: 0.0,
        currency: String::new(),
        starts_on: today,
        hosting_until: today,
        auto_renew: false,
        renewal_months: 12,
        sales_agent_id: owner.id.clone(),
        sales_agent: owner.username.clone(),
        status: SubscriptionStatus::Active,
        renewals: Vec::new(),
        reminders_sent: Vec::new(),
        notes: None,
        cancellation: None,
        paused_on: None,
        ended_on: None,
        lifecycle: Vec::new(),
        request_id: None,
        created_at: now,
        updated_at: now,
    };
    apply(w, &mut sub, input, problems)?;
    link_client(w, actor, &mut sub, chosen.clone())?;
    if let Some(request_id) = request_id {
        crate::requests::link_subscription(w, &request_id, &sub.id)?;
        sub.request_id = Some(request_id);
    }
    save(w, &sub)?;
    audit::record(
        w,
        actor,
        "subscription.create",
        &format!("subscription:{}", sub.id),
        format!(
            "{}: {:.2} {} a month until {}",
            sub.client, sub.monthly_cost, sub.currency, sub.hosting_until
        ),
    )?;
    Ok(sub)
}

/// Changes a subscription; `owner` moves it to another sales agent.
pub fn update(
    w: &mut Writer,
    actor: &Actor,
    id: &str,
    input: &SubscriptionInput,
    owner: Option<&User>,
) -> AppResult<Subscription> {
    update_adding_to(w, actor, id, input, owner, Problems::new())
}

/// Changes a subscription like [`update`] when neither `earlier` (what the caller
/// found reading its form) nor the checks here find a problem; else one error naming
/// every bad field, and nothing changes.
pub fn update_adding_to(
    w: &mut Writer,
    actor: &Actor,
    id: &str,
    input: &SubscriptionInput,
    owner: Option<&User>,
    earlier: Problems,
) -> AppResult<Subscription> {
    let mut sub: Subscription = w
        .get(id)?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    let mut problems = earlier;
    if input
        .request_id
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty() && Some(r.trim()) != sub.request_id.as_deref())
    {
        problems.add(AppError::invalid(
            "request_id",
            "a subscription's request is set when it is made",
        ));
    }
    let (input, chosen) = &with_client_record(w, input, &mut problems);
    let renamed = input
        .client
        .as_deref()
        .is_some_and(|c| c.trim() != sub.client);
    apply(w, &mut sub, input, problems)?;
    if chosen.is_some() || renamed || sub.client_id.is_none() {
        link_client(w, actor, &mut sub, chosen.clone())?;
    }
    if let Some(owner) = owner {
        sub.sales_agent_id = owner.id.clone();
        sub.sales_agent = owner.username.clone();
    }
    sub.updated_at = Utc::now();
    save(w, &sub)?;
    audit::record(
        w,
        actor,
        "subscription.update",
        &format!("subscription:{}", sub.id),
        format!(
            "{}: {:.2} {} a month until {}{}",
            sub.client,
            sub.monthly_cost,
            sub.currency,
            sub.hosting_until,
            if sub.auto_renew { ", auto-renew" } else { "" }
        ),
    )?;
    Ok(sub)
}

/// A change of a subscription's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The client cancels, from an effective date (today by default).
    Cancel,
    Pause,
    Resume,
    /// Stop it today.
    End,
}

impl Change {
    pub fn parse(text: &str) -> Option<Change> {
        [Change::Cancel, Change::Pause, Change::Resume, Change::End]
            .into_iter()
            .find(|c| c.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Cancel => "cancel",
            Change::Pause => "pause",
            Change::Resume => "resume",
            Change::End => "end",
        }
    }
}

/// What a lifecycle change carries: a reason (required to cancel) and, for a
/// cancellation, the first day it no longer runs (`YYYY-MM-DD`, today by default).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangeInput {
    pub reason: Option<String>,
    pub effective_on: Option<String>,
}

/// Cancels, pauses, resumes or ends a subscription on `today`, audited and told to its
/// sales agent. A move the status does not allow is a conflict (409); bad fields are
/// invalid (422) and change nothing.
pub fn change(
    w: &mut Writer,
    actor: &Actor,
    id: &str,
    what: Change,
    input: &ChangeInput,
    today: NaiveDate,
) -> AppResult<Subscription> {
    let mut sub: Subscription = w
        .get(id)?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    let mut problems = Problems::new();
    let reason = problems
        .check(validate::text("reason", input.reason.as_deref(), 500))
        .unwrap_or(None);
    let effective_on = match (what, input.effective_on.as_deref().map(str::trim)) {
        (Change::Cancel, Some(d)) if !d.is_empty() => problems.check(date("effective_on", d)).ok(),
        (Change::Cancel, _) => Some(today),
        (_, Some(d)) if !d.is_empty() => {
            problems.add(AppError::invalid(
                "effective_on",
                "only a cancellation takes an effective date",
            ));
            None
        }
        _ => None,
    };
    let reason_given = input
        .reason
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty());
    if what == Change::Cancel && !reason_given {
        problems.add(AppError::invalid("reason", "say why the client cancels"));
    }
    if let Some(on) = effective_on.filter(|on| *on < sub.starts_on) {
        problems.add(AppError::invalid(
            "effective_on",
            format!(
                "a cancellation cannot take effect on {on}, before the subscription starts ({})",
                sub.starts_on
            ),
        ));
    }
    problems.finish()?;
    let allowed = match what {
        Change::Cancel | Change::End => sub.status.is_open(),
        Change::Pause => sub.status == SubscriptionStatus::Active,
        Change::Resume => sub.status == SubscriptionStatus::Paused,
    };
    if !allowed {
        return Err(AppError::conflict(format!(
            "a subscription that is {} cannot be {}",
            sub.status.as_str(),
            match what {
                Change::Cancel => "cancelled",
                Change::Pause => "paused",
                Change::Resume => "resumed (it is not paused)",
                Change::End => "ended",
            }
        )));
    }
    let target = format!("subscription:{}", sub.id);
    let (title, body, detail) = match what {
        Change::Cancel => {
            let on = effective_on.unwrap_or(today);
            sub.cancellation = Some(Cancellation {
                reason: reason.clone().unwrap_or_default(),
                effective_on: on,
                by: actor.username.clone(),
                at: Utc::now(),
            });
            let when = if on <= today {
                sub.status = SubscriptionStatus::Cancelled;
                sub.ended_on = Some(on);
                sub.paused_on = None;
                format!("from {on}")
            } else {
                format!("from {on}; it runs until then without reminders")
            };
            (
                format!("Subscription of {} cancelled", sub.client),
                format!("{when}: {}", reason.clone().unwrap_or_default()),
                format!("{}: cancelled from {on}", sub.client),
            )
        }
        Change::Pause => {
            sub.status = SubscriptionStatus::Paused;
            sub.paused_on = Some(today);
            (
                format!("Subscription of {} paused", sub.client),
                "no renewals, reminders or revenue until it is resumed".to_string(),
                format!("{}: paused", sub.client),
            )
        }
        Change::Resume => {
            let paused_days = sub
                .paused_on
                .map(|p| (today - p).num_days().max(0))
                .unwrap_or(0);
            sub.hosting_until += chrono::Duration::days(paused_days);
            sub.status = SubscriptionStatus::Active;
            sub.paused_on = None;
            sub.reminders_sent.clear();
            (
                format!("Subscription of {} resumed", sub.client),
                format!(
                    "paused {paused_days} days; hosting now runs until {}",
                    sub.hosting_until
                ),
                format!("{}: resumed, until {}", sub.client, sub.hosting_until),
            )
        }
        Change::End => {
            sub.status = SubscriptionStatus::Ended;
            sub.ended_on = Some(today);
            sub.paused_on = None;
            (
                format!("Subscription of {} ended", sub.client),
                format!("ended on {today}"),
                format!("{}: ended on {today}", sub.client),
            )
        }
    };
    sub.lifecycle.push(LifecycleChange {
        action: what.as_str().to_string(),
        at: Utc::now(),
        by: actor.username.clone(),
        reason: reason.clone(),
        // Pauses and resumes are dated too: statements charge only the days it ran.
        effective_on: effective_on.or(Some(today)),
    });
    sub.updated_at = Utc::now();
    save(w, &sub)?;
    let detail = match &reason {
        Some(r) => format!("{detail} ({r})"),
        None => detail,
    };
    audit::record(
        w,
        actor,
        &format!("subscription.{}", what.as_str()),
        &target,
        detail,
    )?;
    notifications::notify(
        w,
        std::slice::from_ref(&sub.sales_agent_id),
        &Message {
            title,
            body,
            link: Some(format!("/subscriptions/{}", sub.id)),
            level: "info",
            subject: target,
        },
    )?;
    Ok(sub)
}

/// Deletes a subscription (one made by mistake) with its list entries, audited.
pub fn delete(w: &mut Writer, actor: &Actor, id: &str) -> AppResult<Subscription> {
    let sub: Subscription = w
        .get(id)?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    for (index, key) in list_keys(&sub) {
        w.index_delete(index, &key)?;
    }
    w.delete::<Subscription>(id)?;
    audit::record(
        w,
        actor,
        "subscription.delete",
        &format!("subscription:{}", sub.id),
        format!(
            "{}: {:.2} {} a month",
            sub.client, sub.monthly_cost, sub.currency
        ),
    )?;
    Ok(sub)
}

/// A server a subscription form may offer.
#[derive(Debug, Clone)]
pub struct OfferedServer {
    pub server: Server,
    /// The client of the deployed request it was made for, when offered through one.
    pub client: Option<String>,
    /// Whether the subject sees the server in the fleet (and with it its monthly cost).
    pub in_fleet: bool,
}

/// The servers `subject` may put on a subscription: every server it sees in the fleet;
/// for a sales agent, who sees no fleet, the servers of the deployed requests it may
/// see (of `client` only, when given), plus those `attached` to the subscription
/// already. Deleted servers are not offered. Sorted by name.
pub fn offerable_servers(
    r: &impl Read,
    subject: &Subject,
    client: Option<&str>,
    attached: &[String],
) -> anyhow::Result<Vec<OfferedServer>> {
    let mut out: Vec<OfferedServer> = Vec::new();
    let seen = |out: &[OfferedServer], id: &str| out.iter().any(|o| o.server.id == id);
    if policy::can(subject, policy::Action::ViewServers, None) {
        for server in r.list::<Server>()? {
            if server.status != "deleted"
                && policy::can(
                    subject,
                    policy::Action::ViewServers,
                    Some(&server.project_id),
                )
            {
                out.push(OfferedServer {
                    server,
                    client: None,
                    in_fleet: true,
                });
            }
        }
    }
    let client = client.map(str::trim).filter(|c| !c.is_empty());
    let deployed = crate::requests::Filter {
        status: Some(crate::requests::Status::Deployed),
        ..Default::default()
    };
    for request in crate::requests::all_matching(r, subject, &deployed)? {
        if client.is_some_and(|c| !request.client_name.trim().eq_ignore_ascii_case(c)) {
            continue;
        }
        let Some(server_id) = &request.server_id else {
            continue;
        };
        if seen(&out, server_id) {
            continue;
        }
        if let Some(server) = r
            .get::<Server>(server_id)?
            .filter(|s| s.status != "deleted")
        {
            out.push(OfferedServer {
                server,
                client: Some(request.client_name.clone()),
                in_fleet: false,
            });
        }
    }
    for id in attached {
        if seen(&out, id) {
            continue;
        }
        if let Some(server) = r.get::<Server>(id)? {
            out.push(OfferedServer {
                server,
                client: None,
                in_fleet: false,
            });
        }
    }
    out.sort_by(|a, b| a.server.name.cmp(&b.server.name));
    Ok(out)
}

/// Checks the servers an input puts on a subscription against those `subject` may
/// offer (of any client's request, see [`offerable_servers`]); one it may not offer
/// reads as unknown, so the answer never tells what exists outside its view. Ids of no
/// server at all are left to the record's own checks.
pub fn check_server_choice(
    r: &impl Read,
    subject: &Subject,
    input: &SubscriptionInput,
    existing: Option<&Subscription>,
) -> AppResult<()> {
    let Some(ids) = &input.server_ids else {
        return Ok(());
    };
    let attached = existing.map(|s| s.server_ids.as_slice()).unwrap_or(&[]);
    let offered = offerable_servers(r, subject, None, attached)?;
    for id in ids.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        if offered.iter().any(|o| o.server.id == id) || r.get::<Server>(id)?.is_none() {
            continue;
        }
        return Err(AppError::invalid(
            "server_ids",
            format!("there is no server {id}"),
        ));
    }
    Ok(())
}

/// Writes a subscription: the only way one reaches the store. Its list indexes follow
/// in the same transaction (a new client name or owner moves them).
fn save(w: &mut Writer, sub: &Subscription) -> anyhow::Result<()> {
    let old: Option<Subscription> = w.get(&sub.id)?;
    w.put(sub)?;
    let old_keys = old.as_ref().map(list_keys).unwrap_or_default();
    let new_keys = list_keys(sub);
    for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        w.index_delete(key.0, &key.1)?;
    }
    for key in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        w.index_put(key.0, &key.1, &sub.id)?;
    }
    Ok(())
}

/// The list index entries of a subscription: `(index, key)`.
fn list_keys(sub: &Subscription) -> Vec<(&'static str, String)> {
    let position = listing::name_position(sub.client.trim(), &sub.id);
    let end = format!("{}/{}", sub.hosting_until, sub.id);
    let mut keys = vec![
        (BY_AGENT, format!("{}/{position}", sub.sales_agent_id)),
        (ORDER, position),
        (BY_AGENT_END, format!("{}/{end}", sub.sales_agent_id)),
        (BY_END, end),
    ];
    if let Some(client) = &sub.client_id {
        keys.push((
            crate::clients::SUBSCRIPTIONS,
            format!("{client}/{}", sub.id),
        ));
    }
    keys
}

/// Schema step (run by `listing::backfill_indexes`): the list indexes of
/// subscriptions stored before lists read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Subscription> = w.list()?;
    for sub in &all {
        for (index, key) in list_keys(sub) {
            w.index_put(index, &key, &sub.id)?;
        }
    }
    Ok(())
}

/// Schema step 9: the end-date indexes of subscriptions stored before lists could be
/// sorted by end date.
pub fn backfill_end_indexes(w: &mut Writer) -> anyhow::Result<()> {
    backfill_indexes(w)
}

/// The order of a list of subscriptions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// By client name (the default).
    #[default]
    Client,
    /// By end date (`hosting_until`), soonest first.
    End,
}

impl Sort {
    pub fn parse(text: &str) -> Option<Sort> {
        match text {
            "client" => Some(Sort::Client),
            "end" => Some(Sort::End),
            _ => None,
        }
    }
}

/// What a list of subscriptions is narrowed to; the fields combine.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<SubscriptionStatus>,
    /// Text in the client's name, the sales agent's or the currency, case-insensitive.
    pub text: Option<String>,
    pub sort: Sort,
}

/// One page of the subscriptions a subject may see (everyone's with
/// `ViewAllRevenue`, else its own) that match `filter`, by client, after the position
/// `cursor`.
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Subscription>> {
    let all = policy::can(subject, policy::Action::ViewAllRevenue, None);
    let source = match (all, filter.sort) {
        (true, Sort::Client) => Source::index(ORDER, ""),
        (false, Sort::Client) => Source::index(BY_AGENT, format!("{}/", subject.user_id)),
        (true, Sort::End) => Source::index(BY_END, ""),
        (false, Sort::End) => Source::index(BY_AGENT_END, format!("{}/", subject.user_id)),
    };
    let needle = filter.text.as_deref().map(str::to_lowercase);
    listing::page(
        r,
        vec![source],
        Order::Ascending,
        cursor,
        limit,
        |s: &Subscription| {
            (all || s.sales_agent_id == subject.user_id)
                && filter.status.is_none_or(|st| s.status == st)
                && needle.as_deref().is_none_or(|q| {
                    [&s.client, &s.sales_agent, &s.currency]
                        .iter()
                        .any(|f| f.to_lowercase().contains(q))
                })
        },
    )
}

/// The servers on `subs`, read one by one: what a revenue report needs of the fleet,
/// never every server.
pub fn servers_of(r: &impl Read, subs: &[Subscription]) -> anyhow::Result<Vec<Server>> {
    let mut ids: Vec<&str> = subs
        .iter()
        .flat_map(|s| s.server_ids.iter().map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(server) = r.get::<Server>(id)? {
            out.push(server);
        }
    }
    Ok(out)
}

/// The subscriptions a subject may see, by client: every one with `ViewAllRevenue`,
/// else their own.
pub fn visible(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Subscription>> {
    let all = policy::can(subject, policy::Action::ViewAllRevenue, None);
    let mut list: Vec<Subscription> = r
        .list::<Subscription>()?
        .into_iter()
        .filter(|s| all || s.sales_agent_id == subject.user_id)
        .collect();
    list.sort_by_key(|s| s.client.to_lowercase());
    Ok(list)
}

/// One subscription the subject may see; 404 unknown, 403 someone else's.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Subscription> {
    let sub: Subscription = r
        .get(id)?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    if sub.sales_agent_id != subject.user_id
        && !policy::can(subject, policy::Action::ViewAllRevenue, None)
    {
        return Err(AppError::forbidden());
    }
    Ok(sub)
}

/// Days from `today` to the subscription's end (negative once it is over).
pub fn days_left(sub: &Subscription, today: NaiveDate) -> i64 {
    (sub.hosting_until - today).num_days()
}

/// Open subscriptions (active, no cancellation pending) that end from `from` to `to`
/// (inclusive), soonest first, at most `limit`: one range of the end-date index, never
/// the whole table.
pub fn ending_between(
    r: &impl Read,
    from: NaiveDate,
    to: NaiveDate,
    limit: usize,
) -> anyhow::Result<Vec<Subscription>> {
    // Cancelled or paused ones in the range are skipped; read a little past `limit`.
    const SCAN: usize = 2_000;
    let mut scan = crate::store::IndexScan::prefix(BY_END, "", SCAN);
    scan.lower = format!("{from}/");
    scan.upper = format!("{to}/\u{10FFFF}");
    let mut out = Vec::new();
    for (_, id) in r.index_page(&scan)? {
        if let Some(sub) = r.get::<Subscription>(&id)? {
            if sub.status == SubscriptionStatus::Active && sub.cancellation.is_none() {
                out.push(sub);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

// ---- the renewal job ----

/// What the renewal job does to one subscription today.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// Extend it; one entry per renewal period it takes to pass today.
    Renew(Vec<Renewal>),
    /// Tell the owner and the admins it ends in `days_left` days; `thresholds` are the
    /// reminder days this one covers (several when the job missed days).
    Remind {
        days_left: i64,
        thresholds: Vec<u32>,
    },
    /// It ended before today.
    Expire,
    /// Its cancellation takes effect.
    Cancel,
}

/// What is due for one subscription on `today`, or `None`.
pub fn due(sub: &Subscription, today: NaiveDate) -> Option<Due> {
    if !sub.status.is_open() {
        return None;
    }
    let cancelled_on = sub.cancellation.as_ref().map(|c| c.effective_on);
    if cancelled_on.is_some_and(|on| on <= today) {
        return Some(Due::Cancel);
    }
    if sub.status == SubscriptionStatus::Paused {
        return None;
    }
    if sub.auto_renew {
        let mut renewals = Vec::new();
        let mut until = sub.hosting_until;
        // Renew on the last day, so a renewing subscription never lapses.
        while until <= today {
            let next = until.checked_add_months(Months::new(sub.renewal_months.max(1)))?;
            renewals.push(Renewal {
                on: today,
                from: until,
                to: next,
            });
            until = next;
        }
        return (!renewals.is_empty()).then_some(Due::Renew(renewals));
    }
    let left = days_left(sub, today);
    if left < 0 {
        return Some(Due::Expire);
    }
    if cancelled_on.is_some() {
        // The client is leaving: nobody needs to be reminded to renew.
        return None;
    }
    let thresholds: Vec<u32> = REMINDER_DAYS
        .into_iter()
        .filter(|t| left <= i64::from(*t) && !sub.reminders_sent.contains(t))
        .collect();
    (!thresholds.is_empty()).then_some(Due::Remind {
        days_left: left,
        thresholds,
    })
}

/// The renewal job's plan for `today`: a pure function of the subscriptions and the
/// date.
pub fn plan(subs: &[Subscription], today: NaiveDate) -> Vec<(String, Due)> {
    subs.iter()
        .filter_map(|s| due(s, today).map(|d| (s.id.clone(), d)))
        .collect()
}

/// What one run of the job did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenewalReport {
    pub renewed: usize,
    pub reminded: usize,
    pub expired: usize,
    pub cancelled: usize,
}

/// Applies today's plan in one transaction: renewals recorded, reminders and expiries
/// announced to the owner and the admins, every change audited as `system`.
pub fn run_renewals(store: &Store, today: NaiveDate) -> anyhow::Result<RenewalReport> {
    store.write(|w| {
        let subs: Vec<Subscription> = w.list()?;
        let mut report = RenewalReport::default();
        let actor = Actor::system();
        for (id, due) in plan(&subs, today) {
            let Some(mut sub) = w.get::<Subscription>(&id)? else {
                continue;
            };
            let target = format!("subscription:{}", sub.id);
            let mut recipients = vec![sub.sales_agent_id.clone()];
            match due {
                Due::Renew(renewals) => {
                    for renewal in renewals {
                        audit::record(
                            w,
                            &actor,
                            "subscription.renew",
                            &target,
                            format!("{}: {} -> {}", sub.client, renewal.from, renewal.to),
                        )?;
                        sub.hosting_until = renewal.to;
                        sub.renewals.push(renewal);
                        report.renewed += 1;
                    }
                    sub.reminders_sent.clear();
                    notifications::notify(
                        w,
                        &recipients,
                        &Message {
                            title: format!("Subscription of {} renewed", sub.client),
                            body: format!("hosting now runs until {}", sub.hosting_until),
                            link: Some(format!("/subscriptions/{}", sub.id)),
                            level: "success",
                            subject: target.clone(),
                        },
                    )?;
                }
                Due::Remind {
                    days_left,
                    thresholds,
                } => {
                    sub.reminders_sent.extend(thresholds);
                    recipients.extend(notifications::admin_ids(w)?);
                    let when = match days_left {
                        0 => "today".to_string(),
                        1 => "tomorrow".to_string(),
                        n => format!("in {n} days"),
                    };
                    crate::alerts::raise(
                        w,
                        &recipients,
                        &crate::alerts::Alert {
                            event: "subscription.reminder",
                            project_id: None,
                            subject: serde_json::json!({"subscription": sub.id, "client": sub.client, "hosting_until": sub.hosting_until, "days_left": days_left}),
                            message: Message {
                            title: format!("Subscription of {} ends {when}", sub.client),
                            body: format!(
                                "hosting until {} does not renew by itself; {} owns the client",
                                sub.hosting_until, sub.sales_agent
                            ),
                            link: Some(format!("/subscriptions/{}", sub.id)),
                            level: "warning",
                            subject: target.clone(),
                        },
                        },
                    )?;
                    audit::record(
                        w,
                        &actor,
                        "subscription.remind",
                        &target,
                        format!("{}: ends {when}", sub.client),
                    )?;
                    report.reminded += 1;
                }
                Due::Cancel => {
                    let on = sub.cancellation.as_ref().map(|c| c.effective_on);
                    sub.status = SubscriptionStatus::Cancelled;
                    sub.ended_on = on;
                    sub.paused_on = None;
                    notifications::notify(
                        w,
                        &recipients,
                        &Message {
                            title: format!("Subscription of {} cancelled", sub.client),
                            body: format!(
                                "the cancellation took effect on {}",
                                on.unwrap_or(today)
                            ),
                            link: Some(format!("/subscriptions/{}", sub.id)),
                            level: "info",
                            subject: target.clone(),
                        },
                    )?;
                    audit::record(
                        w,
                        &actor,
                        "subscription.cancelled",
                        &target,
                        sub.client.clone(),
                    )?;
                    report.cancelled += 1;
                }
                Due::Expire => {
                    sub.status = SubscriptionStatus::Expired;
                    recipients.extend(notifications::admin_ids(w)?);
                    notifications::notify(
                        w,
                        &recipients,
                        &Message {
                            title: format!("Subscription of {} expired", sub.client),
                            body: format!("hosting ended on {}", sub.hosting_until),
                            link: Some(format!("/subscriptions/{}", sub.id)),
                            level: "danger",
                            subject: target.clone(),
                        },
                    )?;
                    audit::record(
                        w,
                        &actor,
                        "subscription.expire",
                        &target,
                        sub.client.clone(),
                    )?;
                    report.expired += 1;
                }
            }
            sub.updated_at = Utc::now();
            save(w, &sub)?;
        }
        Ok(report)
    })
}

/// How long from `now` until just after the next UTC midnight.
pub fn until_next_day(now: DateTime<Utc>) -> Duration {
    let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    let next = tomorrow
        .and_hms_opt(0, 0, 5)
        .map(|t| t.and_utc())
        .unwrap_or(now + chrono::Duration::hours(24));
    (next - now).to_std().unwrap_or(Duration::from_secs(3600))
}

/// Runs the renewal job now and after every UTC midnight until `stop` resolves, with
/// `clock` telling the time.
pub async fn renewal_loop(
    store: Store,
    clock: impl Fn() -> DateTime<Utc> + Send + 'static,
    leads: impl Fn() -> bool + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    loop {
        // With several replicas, the leader renews; another waits until it leads
        // (a day's run is idempotent, so a new leader may run it again).
        if !leads() {
            tokio::select! {
                _ = tokio::time::sleep(crate::cluster::LEADER_RETRY) => continue,
                _ = &mut stop => return,
            }
        }
        let today = clock().date_naive();
        let run_store = store.clone();
        match tokio::task::spawn_blocking(move || {
            crate::store::allow_blocking_here();
            run_renewals(&run_store, today)
        })
        .await
        {
            Ok(Ok(report)) if report != RenewalReport::default() => {
                tracing::info!(?report, %today, "subscription renewal job ran");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("subscription renewal job: {e:#}"),
            Err(e) => tracing::error!("subscription renewal job task: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(until_next_day(clock())) => {}
            _ = &mut stop => return,
        }
    }
}

/// The daily renewal job of a running control plane, on the real clock.
pub async fn renewal_job(app: App, stop: impl Future<Output = ()> + Send + 'static) {
    let cluster = app.cluster.clone();
    renewal_loop(
        app.store.clone(),
        Utc::now,
        move || cluster.is_leader(),
        stop,
    )
    .await
}

/// A subscription for unit tests (here, in `revenue` and `statements`): active, EUR 10
/// a month from 2026-01-01 until `until`, renewing yearly by hand, owned by `sales`.
#[cfg(test)]
pub(crate) fn sample(until: &str) -> Subscription {
    let day = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
    Subscription {
        id: "s".into(),
        client_id: None,
        client: "Acme".into(),
        server_ids: vec![],
        monthly_cost: 10.0,
        currency: "EUR".into(),
        starts_on: day("2026-01-01"),
        hosting_until: day(until),
        auto_renew: false,
        renewal_months: 12,
        sales_agent_id: "u".into(),
        sales_agent: "sales".into(),
        status: SubscriptionStatus::Active,
        renewals: vec![],
        reminders_sent: vec![],
        notes: None,
        cancellation: None,
        paused_on: None,
        ended_on: None,
        lifecycle: vec![],
        request_id: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn sub(until: &str, auto_renew: bool) -> Subscription {
        Subscription {
            auto_renew,
            renewal_months: 1,
            ..sample(until)
        }
    }

    /// The pure plan: reminders at 30, 7 and 1 days, nothing in between, expiry the
    /// day after the end; renewals on the last day, several when days were missed.
    #[test]
    fn plan_is_a_function_of_the_date() {
        let s = sub("2026-06-30", false);
        assert_eq!(due(&s, day("2026-05-30")), None, "31 days left");
        assert_eq!(
            due(&s, day("2026-05-31")),
            Some(Due::Remind {
                days_left: 30,
                thresholds: vec![30]
            })
        );
        assert_eq!(
            due(&s, day("2026-06-30")).map(|d| matches!(d, Due::Remind { .. })),
            Some(true)
        );
        assert_eq!(due(&s, day("2026-07-01")), Some(Due::Expire));
        let mut missed = s.clone();
        missed.reminders_sent = vec![30];
        assert_eq!(
            due(&missed, day("2026-06-29")),
            Some(Due::Remind {
                days_left: 1,
                thresholds: vec![7, 1]
            }),
            "a missed reminder is folded into the next one"
        );

        let r = sub("2026-06-30", true);
        assert_eq!(due(&r, day("2026-06-29")), None);
        assert_eq!(
            due(&r, day("2026-06-30")),
            Some(Due::Renew(vec![Renewal {
                on: day("2026-06-30"),
                from: day("2026-06-30"),
                to: day("2026-07-30")
            }]))
        );
        let Some(Due::Renew(renewals)) = due(&r, day("2026-08-15")) else {
            panic!("renews")
        };
        assert_eq!(renewals.len(), 2);
        assert_eq!(renewals[1].to, day("2026-08-30"));
        let mut expired = sub("2026-01-31", false);
        expired.status = SubscriptionStatus::Expired;
        assert_eq!(plan(&[expired], day("2027-01-01")), vec![]);
    }

    /// A pending cancellation silences reminders and takes effect on its date (also
    /// for a paused one); an auto-renewing one renews up to it; paused ones renew and
    /// remind nothing; closed ones have nothing due.
    #[test]
    fn cancellations_and_pauses_in_the_plan() {
        let cancel_on = |s: &mut Subscription, on: &str| {
            s.cancellation = Some(Cancellation {
                reason: "moving".into(),
                effective_on: day(on),
                by: "sales".into(),
                at: Utc::now(),
            })
        };
        let mut s = sub("2026-06-30", false);
        cancel_on(&mut s, "2026-06-15");
        assert_eq!(due(&s, day("2026-06-01")), None, "no reminder for a leaver");
        assert_eq!(due(&s, day("2026-06-15")), Some(Due::Cancel));
        let mut r = sub("2026-06-30", true);
        cancel_on(&mut r, "2026-09-01");
        assert!(matches!(due(&r, day("2026-06-30")), Some(Due::Renew(_))));
        assert_eq!(due(&r, day("2026-09-01")), Some(Due::Cancel));
        let mut p = sub("2026-06-30", true);
        p.status = SubscriptionStatus::Paused;
        assert_eq!(
            due(&p, day("2026-07-15")),
            None,
            "a paused one renews nothing"
        );
        cancel_on(&mut p, "2026-08-01");
        assert_eq!(due(&p, day("2026-08-01")), Some(Due::Cancel));
        for closed in [SubscriptionStatus::Cancelled, SubscriptionStatus::Ended] {
            let mut c = sub("2026-06-30", false);
            c.status = closed;
            assert_eq!(due(&c, day("2026-07-15")), None);
        }
    }

    /// Pausing for ten days moves the end by ten days; the job turns a cancellation
    /// into `cancelled` on its date, notifying the owner; a cancelled one cannot be
    /// paused (409) and an edit of its end date does not revive it.
    #[test]
    fn lifecycle_changes_and_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let sales = store
            .write(|w| users::test_user(w, "sales", "sales"))
            .unwrap();
        let input = SubscriptionInput {
            client: Some("Acme".into()),
            monthly_cost: Some(10.0),
            currency: Some("EUR".into()),
            starts_on: Some("2026-01-01".into()),
            hosting_until: Some("2026-12-31".into()),
            ..Default::default()
        };
        let actor = Actor::system();
        let s = store
            .write(|w| Ok(create(w, &actor, &sales, &input)?))
            .unwrap();
        let run = |what: Change, input: ChangeInput, on: &str| {
            store
                .write(|w| Ok(change(w, &actor, &s.id, what, &input, day(on))))
                .unwrap()
        };
        run(Change::Pause, ChangeInput::default(), "2026-03-01").unwrap();
        let resumed = run(Change::Resume, ChangeInput::default(), "2026-03-11").unwrap();
        assert_eq!(resumed.hosting_until, day("2027-01-10"));
        let pending = run(
            Change::Cancel,
            ChangeInput {
                reason: Some("moving".into()),
                effective_on: Some("2026-05-01".into()),
            },
            "2026-04-01",
        )
        .unwrap();
        assert_eq!(pending.status, SubscriptionStatus::Active);
        let report = run_renewals(&store, day("2026-05-01")).unwrap();
        assert_eq!(report.cancelled, 1);
        let done: Subscription = store.get(&s.id).unwrap().unwrap();
        assert_eq!(done.status, SubscriptionStatus::Cancelled);
        assert_eq!(done.ended_on, Some(day("2026-05-01")));
        let err = run(Change::Pause, ChangeInput::default(), "2026-05-02").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Conflict);
        let edited = store
            .write(|w| {
                let change = SubscriptionInput {
                    hosting_until: Some("2027-06-30".into()),
                    ..Default::default()
                };
                Ok(update(w, &actor, &s.id, &change, None)?)
            })
            .unwrap();
        assert_eq!(edited.status, SubscriptionStatus::Cancelled);
        let inbox = store
            .read(|r| notifications::inbox(r, &sales.id, false, 10))
            .unwrap();
        assert_eq!(inbox[0].title, "Subscription of Acme cancelled");
        assert_eq!(
            inbox.len(),
            4,
            "paused, resumed, cancellation recorded, taken effect"
        );
    }

    /// A subscription with several bad fields (and an end before its start, once
    /// both dates are valid) names every one at once; an edit changes nothing then.
    #[test]
    fn validation_reports_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let sales = store
            .write(|w| users::test_user(w, "sales", "sales"))
            .unwrap();
        let fields = |err: &AppError| -> Vec<String> {
            err.field_errors()
                .into_iter()
                .map(|(f, _)| f.to_string())
                .collect()
        };
        let bad = SubscriptionInput {
            client: Some(" ".into()),
            server_ids: Some(vec!["nope".into()]),
            currency: Some("euro".into()),
            starts_on: Some("31/12/2026".into()),
            hosting_until: Some("2026-01-01".into()),
            renewal_months: Some(0),
            ..Default::default()
        };
        let err = store
            .write(|w| Ok(create(w, &Actor::system(), &sales, &bad)))
            .unwrap()
            .unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "client",
                "monthly_cost",
                "currency",
                "server_ids",
                "starts_on",
                "renewal_months"
            ]
        );
        assert_eq!(err.field.as_deref(), Some("client"));

        let good = SubscriptionInput {
            client: Some("Acme".into()),
            monthly_cost: Some(10.0),
            currency: Some("eur".into()),
            starts_on: Some("2026-01-01".into()),
            hosting_until: Some("2026-12-31".into()),
            ..Default::default()
        };
        let sub = store
            .write(|w| Ok(create(w, &Actor::system(), &sales, &good)?))
            .unwrap();
        let change = SubscriptionInput {
            monthly_cost: Some(-5.0),
            hosting_until: Some("2025-06-30".into()),
            notes: Some("x".repeat(validate::MAX_TEXT + 1)),
            ..Default::default()
        };
        let err = store
            .write(|w| Ok(update(w, &Actor::system(), &sub.id, &change, None)))
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["monthly_cost", "notes", "hosting_until"]);
        let kept: Subscription = store.get(&sub.id).unwrap().unwrap();
        assert_eq!(kept.monthly_cost, 10.0);
        assert_eq!(kept.hosting_until, day("2026-12-31"));
    }

    /// Run day by day with an injected date: each reminder once to the owner and the
    /// admins, then expiry; the auto-renewing one is renewed and recorded, never
    /// reminded. No sleeping.
    #[test]
    fn job_over_sixty_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (sales, admin) = store
            .write(|w| {
                let mut made = Vec::new();
                for (name, role) in [
                    ("sales", "sales"),
                    ("admin", "admin"),
                    ("tech", "technical"),
                ] {
                    made.push(users::test_user(w, name, role)?);
                }
                Ok((made.remove(0), made.remove(0)))
            })
            .unwrap();
        let input = |client: &str, auto: bool| SubscriptionInput {
            client: Some(client.into()),
            monthly_cost: Some(100.0),
            currency: Some("usd".into()),
            starts_on: Some("2026-01-01".into()),
            hosting_until: Some("2026-03-31".into()),
            auto_renew: Some(auto),
            renewal_months: Some(3),
            ..Default::default()
        };
        let (ending, renewing) = store
            .write(|w| {
                let a = create(w, &Actor::system(), &sales, &input("Ending", false))?;
                let b = create(w, &Actor::system(), &sales, &input("Renewing", true))?;
                Ok((a, b))
            })
            .unwrap();
        assert_eq!(ending.currency, "USD");
        let mut today = day("2026-02-01");
        let mut reminder_days = Vec::new();
        while today <= day("2026-04-10") {
            let report = run_renewals(&store, today).unwrap();
            if report.reminded > 0 {
                reminder_days.push(today);
            }
            today = today.succ_opt().unwrap();
        }
        assert_eq!(
            reminder_days,
            [day("2026-03-01"), day("2026-03-24"), day("2026-03-30")]
        );
        let ending: Subscription = store.get(&ending.id).unwrap().unwrap();
        assert_eq!(ending.status, SubscriptionStatus::Expired);
        let renewing: Subscription = store.get(&renewing.id).unwrap().unwrap();
        assert_eq!(renewing.status, SubscriptionStatus::Active);
        assert_eq!(renewing.hosting_until, day("2026-06-30"));
        assert_eq!(
            renewing.renewals,
            vec![Renewal {
                on: day("2026-03-31"),
                from: day("2026-03-31"),
                to: day("2026-06-30")
            }]
        );
        let titles = |user: &User| {
            store
                .read(|r| notifications::inbox(r, &user.id, false, 100))
                .unwrap()
                .into_iter()
                .map(|n| n.title)
                .collect::<Vec<_>>()
        };
        let expected_admin = [
            "Subscription of Ending expired",
            "Subscription of Ending ends tomorrow",
            "Subscription of Ending ends in 7 days",
            "Subscription of Ending ends in 30 days",
        ];
        assert_eq!(titles(&admin), expected_admin);
        let sales_titles = titles(&sales);
        assert_eq!(sales_titles.len(), 5, "{sales_titles:?}");
        assert!(sales_titles.contains(&"Subscription of Renewing renewed".to_string()));
        // A second run on the same day changes nothing.
        assert_eq!(
            run_renewals(&store, day("2026-04-10")).unwrap(),
            RenewalReport::default()
        );
    }

    /// The loop runs the job at start, then after midnight on the injected clock;
    /// paused tokio time makes the day pass instantly.
    #[tokio::test(start_paused = true)]
    async fn loop_runs_after_midnight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let owner = store
            .write(|w| users::test_user(w, "sales", "sales"))
            .unwrap();
        let input = SubscriptionInput {
            client: Some("Acme".into()),
            monthly_cost: Some(5.0),
            currency: Some("EUR".into()),
            starts_on: Some("2026-01-01".into()),
            hosting_until: Some("2026-03-02".into()),
            ..Default::default()
        };
        let s = store
            .write(|w| Ok(create(w, &Actor::system(), &owner, &input)?))
            .unwrap();
        let start = tokio::time::Instant::now();
        let base: DateTime<Utc> = "2026-03-01T23:00:00Z".parse().unwrap();
        let clock = move || base + chrono::Duration::from_std(start.elapsed()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(renewal_loop(store.clone(), clock, || true, async {
            let _ = rx.await;
        }));
        // Day one: the 1-day reminder; two hours later, past midnight: still ok; the
        // day after the end it expires.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let _ = tx.send(());
        task.await.unwrap();
        let s: Subscription = store.get(&s.id).unwrap().unwrap();
        assert_eq!(s.status, SubscriptionStatus::Expired);
        assert!(s.reminders_sent.contains(&1));
    }
}
