//! Alerts: the events an operator must not miss, told in the product (the inbox of
//! `notifications`), by webhook and by e-mail.
//!
//! Domain modules call [`raise`] inside the write transaction of the change they
//! announce (a job that failed, a backup that failed, a request approved…). It puts the
//! notification into the recipients' inboxes, queues one delivery per matching
//! webhook (`webhook_deliveries`) and one e-mail per recipient who asked for that event
//! by e-mail (`alert_mails`), all in that transaction: an alert exists exactly when its
//! change does, and nothing is sent for a change that was rolled back. The
//! [`deliverer`] task (leader only) sends what is due, outside any transaction, and
//! writes each outcome back; a failed attempt is retried with backoff
//! ([`RETRY_DELAYS`]) and the last answer is kept for the deliveries list.
//!
//! **Invariant:** a webhook delivery connects only to addresses [`address_allowed`]
//! accepts — public addresses, or those `DYNSERV_WEBHOOK_ALLOW` lists — checked on every
//! address the name resolves to, the connection pinned to the checked address, and
//! checked again for every redirect; so a webhook cannot reach the control plane's own
//! network.
//!
//! What does not live here: who is told about what (each announcing module picks its
//! recipients; [`failure_recipients`] is the rule for failures on a project) and the
//! inbox itself (`notifications`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::config::IpNet;
use crate::error::{AppError, AppResult};
use crate::notifications::{self, Message};
use crate::policy::{self, Action, Role, Subject};
use crate::store::{IndexScan, Read, Record, Writer};
use crate::users;

/// Every event an alert may be about, as webhooks and e-mail preferences name them.
pub const EVENTS: [&str; 13] = [
    "execution.failed",
    "backup.failed",
    "update.failed",
    "agent.offline",
    "agent.duplicate",
    "budget.threshold",
    "request.created",
    "request.approved",
    "request.rejected",
    "request.deployed",
    "subscription.reminder",
    "drift.detected",
    "drift.resolved",
];

/// Waits before the second, third… attempt of a delivery; after the last one the
/// delivery is `failed` for good (six attempts over about an hour and a quarter).
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];
/// How long one webhook attempt (connect, send, answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects a delivery follows, each checked like the first address.
const MAX_REDIRECTS: usize = 3;
/// Bytes of a receiver's answer kept with the delivery.
const ANSWER_KEPT: usize = 1024;
/// Deliveries and e-mails sent per pass of the deliverer.
const BATCH: usize = 32;
/// How often the deliverer looks for due work.
const TICK: Duration = Duration::from_secs(1);
/// Webhooks one scope (a project, or the global scope) may have.
pub const MAX_WEBHOOKS_PER_SCOPE: usize = 50;
/// Ended deliveries and e-mails older than this are deleted.
const KEEP_ENDED_DAYS: i64 = 30;

const DELIVERY_BY_HOOK: &str = "webhook_delivery_by_hook";
const DELIVERY_DUE: &str = "webhook_delivery_due";
const MAIL_DUE: &str = "alert_mail_due";

/// A webhook: where alerts of some events are POSTed. Sealed, for its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Only this project's alerts; `None` for every project's (and the alerts about
    /// no project, such as request steps).
    pub project_id: Option<String>,
    /// The HMAC-SHA256 key of `X-Dynserv-Signature`; never shown again.
    pub secret: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl Record for Webhook {
    const TABLE: &'static str = "webhooks";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// The state of a delivery or an e-mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// The receiver answered 2xx (the SMTP server accepted the mail).
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// One alert to one webhook, with the outcome of its last attempt. Ids are UUIDv7.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub url: String,
    /// The exact JSON body sent (what the signature covers).
    pub body: String,
    pub status: SendStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last answer.
    pub response_status: Option<u16>,
    /// The start of the last answer's body.
    pub response_body: Option<String>,
    /// Why the last attempt failed (refused address, timeout, non-2xx…).
    pub error: Option<String>,
}

impl Record for Delivery {
    const TABLE: &'static str = "webhook_deliveries";
    fn id(&self) -> &str {
        &self.id
    }
}

/// One alert e-mail to one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mail {
    pub id: String,
    pub user_id: String,
    pub to: String,
    pub event: String,
    pub subject: String,
    pub body: String,
    pub status: SendStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

impl Record for Mail {
    const TABLE: &'static str = "alert_mails";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Which events a user also gets by e-mail; keyed by user id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertPrefs {
    pub id: String,
    pub email: Vec<String>,
}

impl Record for AlertPrefs {
    const TABLE: &'static str = "alert_prefs";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What an alert is: its event, the project it concerns, what it is about (the
/// webhook body's `subject`) and the inbox message.
#[derive(Debug, Clone)]
pub struct Alert {
    pub event: &'static str,
    pub project_id: Option<String>,
    pub subject: serde_json::Value,
    pub message: Message,
}

/// Tells `recipients` in the product, queues the webhooks that want the event and the
/// e-mails of the recipients who asked for it. Called inside the change's transaction.
pub fn raise(w: &mut Writer, recipients: &[String], alert: &Alert) -> anyhow::Result<()> {
    debug_assert!(EVENTS.contains(&alert.event), "{}", alert.event);
    notifications::notify(w, recipients, &alert.message)?;
    let now = Utc::now();
    let link = alert.message.link.clone().unwrap_or_default();
    let hooks: Vec<Webhook> = w.records_page(&IndexScan::prefix("", "", 10_000))?;
    for hook in hooks {
        let scoped = match (&hook.project_id, &alert.project_id) {
            (None, _) => true,
            (Some(wanted), Some(project)) => wanted == project,
            (Some(_), None) => false,
        };
        if !scoped || !hook.events.iter().any(|e| e == alert.event) {
            continue;
        }
        let body = json!({
            "event": alert.event,
            "at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "subject": alert.subject,
            "url": link,
            "title": alert.message.title,
            "text": alert.message.body,
        });
        let delivery = Delivery {
            id: uuid::Uuid::now_v7().to_string(),
            webhook_id: hook.id.clone(),
            event: alert.event.to_string(),
            url: hook.url.clone(),
            body: body.to_string(),
            status: SendStatus::Pending,
            attempts: 0,
            created_at: now,
            next_attempt_at: Some(now),
            last_attempt_at: None,
            response_status: None,
            response_body: None,
            error: None,
        };
        w.put(&delivery)?;
        w.index_put(
            DELIVERY_BY_HOOK,
            &format!("{}/{}", hook.id, delivery.id),
            &delivery.id,
        )?;
        w.index_put(DELIVERY_DUE, &delivery.id, &delivery.id)?;
    }
    let mut seen: Vec<&str> = Vec::new();
    for user_id in recipients {
        if seen.contains(&user_id.as_str()) {
            continue;
        }
        seen.push(user_id);
        let wants = w
            .get::<AlertPrefs>(user_id)?
            .is_some_and(|p| p.email.iter().any(|e| e == alert.event));
        if !wants {
            continue;
        }
        let Some(user) = w.get::<users::User>(user_id)? else {
            continue;
        };
        let Some(to) = user.email.filter(|e| !e.is_empty() && user.active) else {
            continue;
        };
        let mail = Mail {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.clone(),
            to,
            event: alert.event.to_string(),
            subject: format!("[dynserv] {}", alert.message.title),
            body: alert.message.body.clone(),
            status: SendStatus::Pending,
            attempts: 0,
            created_at: now,
            next_attempt_at: Some(now),
            error: None,
        };
        w.put(&mail)?;
        w.index_put(MAIL_DUE, &mail.id, &mail.id)?;
    }
    Ok(())
}

/// Who is told in the product about a failure on `project_id`: every active admin and
/// every active technical user who may see the project's servers.
pub fn failure_recipients(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for user in users::all(r)? {
        if !user.active || user.role == Role::Sales {
            continue;
        }
        let subject = users::subject(r, &user)?;
        if policy::can(&subject, Action::ViewServers, Some(project_id)) {
            out.push(user.id);
        }
    }
    Ok(out)
}

// ---- webhooks: creation, listing ----

/// What `POST /api/v1/webhooks` and the form send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    /// A project id or name; none for every project's alerts (admins only).
    pub project: Option<String>,
    pub secret: Option<String>,
}

/// A webhook as the API shows it: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub project: Option<String>,
    pub project_id: Option<String>,
    pub signed: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// The view of a webhook, with its project's name.
pub fn view(r: &impl Read, hook: &Webhook) -> anyhow::Result<WebhookView> {
    let project = match &hook.project_id {
        Some(id) => r.get::<crate::projects::Project>(id)?.map(|p| p.name),
        None => None,
    };
    Ok(WebhookView {
        id: hook.id.clone(),
        url: hook.url.clone(),
        events: hook.events.clone(),
        project,
        project_id: hook.project_id.clone(),
        signed: hook.secret.is_some(),
        created_by: hook.created_by.clone(),
        created_at: hook.created_at,
    })
}

/// Whether `subject` may create, see and delete webhooks of `project_id` (`None`: the
/// global ones): admins, and the project's admins for its own.
pub fn may_manage(subject: &Subject, project_id: Option<&str>) -> bool {
    match project_id {
        None => subject.role == Role::Admin,
        Some(id) => {
            subject.role != Role::Sales && policy::can(subject, Action::ManageAccess, Some(id))
        }
    }
}

/// Checks and stores a new webhook for `subject`. A URL must be `http` or `https` with
/// a host; an address written as a literal must be one deliveries may reach.
pub fn create(
    w: &mut Writer,
    subject: &Subject,
    input: &NewWebhook,
    allow: &[IpNet],
) -> AppResult<Webhook> {
    let project_id = match input
        .project
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        Some(key) => Some(
            crate::projects::find(w, key)?
                .filter(|p| policy::can(subject, Action::ViewProject, Some(&p.id)))
                .ok_or_else(|| AppError::invalid("project", "no such project"))?
                .id,
        ),
        None => None,
    };
    if !may_manage(subject, project_id.as_deref()) {
        return Err(AppError::forbidden());
    }
    let url = check_url(input.url.trim(), allow).map_err(|e| AppError::invalid("url", e))?;
    if input.events.is_empty() {
        return Err(AppError::invalid("events", "name at least one event"));
    }
    let mut events = Vec::new();
    for event in &input.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(AppError::invalid(
                "events",
                format!(
                    "unknown event {:?} (known: {})",
                    crate::validate::echo(event),
                    EVENTS.join(", ")
                ),
            ));
        }
        if !events.contains(event) {
            events.push(event.clone());
        }
    }
    let secret = input.secret.as_deref().filter(|s| !s.is_empty());
    if secret.is_some_and(|s| s.len() > 256) {
        return Err(AppError::invalid("secret", "at most 256 bytes"));
    }
    let existing: Vec<Webhook> = w.records_page(&IndexScan::prefix("", "", 10_000))?;
    if existing
        .iter()
        .filter(|h| h.project_id == project_id)
        .count()
        >= MAX_WEBHOOKS_PER_SCOPE
    {
        return Err(AppError::conflict(format!(
            "at most {MAX_WEBHOOKS_PER_SCOPE} webhooks per project"
        )));
    }
    let hook = Webhook {
        id: uuid::Uuid::now_v7().to_string(),
        url: url.to_string(),
        events,
        project_id,
        secret: secret.map(String::from),
        created_by: subject.username.clone(),
        created_at: Utc::now(),
    };
    w.put(&hook)?;
    Ok(hook)
}

/// The webhooks `subject` may manage, oldest first.
pub fn visible(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Webhook>> {
    let all: Vec<Webhook> = r.records_page(&IndexScan::prefix("", "", 10_000))?;
    Ok(all
        .into_iter()
        .filter(|h| may_manage(subject, h.project_id.as_deref()))
        .collect())
}

/// A webhook `subject` may manage; 404 otherwise, so others learn nothing.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Webhook> {
    r.get::<Webhook>(id)?
        .filter(|h| may_manage(subject, h.project_id.as_deref()))
        .ok_or_else(|| AppError::not_found("webhook"))
}

/// Deletes a webhook with its deliveries.
pub fn delete(w: &mut Writer, hook: &Webhook) -> anyhow::Result<()> {
    let deliveries = w.index_scan(DELIVERY_BY_HOOK, &format!("{}/", hook.id))?;
    for (key, id) in deliveries {
        w.delete::<Delivery>(&id)?;
        w.index_delete(DELIVERY_BY_HOOK, &key)?;
        w.index_delete(DELIVERY_DUE, &id)?;
    }
    w.delete::<Webhook>(&hook.id)?;
    Ok(())
}

/// One page of a webhook's deliveries, newest first, after the delivery id `cursor`.
pub fn deliveries_page(
    r: &impl Read,
    webhook_id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<crate::listing::Page<Delivery>> {
    crate::listing::page(
        r,
        vec![crate::listing::Source::index(
            DELIVERY_BY_HOOK,
            format!("{webhook_id}/"),
        )],
        crate::listing::Order::Descending,
        cursor,
        limit,
        |_| true,
    )
}

/// A user's e-mail preferences (none chosen when never saved).
pub fn prefs(r: &impl Read, user_id: &str) -> anyhow::Result<AlertPrefs> {
    Ok(r.get::<AlertPrefs>(user_id)?.unwrap_or_else(|| AlertPrefs {
        id: user_id.to_string(),
        email: Vec::new(),
    }))
}

/// Saves which events reach a user by e-mail; unknown events are a 422 naming them.
pub fn save_prefs(w: &mut Writer, user_id: &str, email: &[String]) -> AppResult<AlertPrefs> {
    let mut chosen = Vec::new();
    for event in email {
        if !EVENTS.contains(&event.as_str()) {
            return Err(AppError::invalid(
                "email",
                format!("unknown event {:?}", crate::validate::echo(event)),
            ));
        }
        if !chosen.contains(event) {
            chosen.push(event.clone());
        }
    }
    let prefs = AlertPrefs {
        id: user_id.to_string(),
        email: chosen,
    };
    w.put(&prefs)?;
    Ok(prefs)
}

// ---- the address guard ----

/// Whether a delivery may connect to `ip`: a public address, or one in `allow`.
pub fn address_allowed(ip: IpAddr, allow: &[IpNet]) -> bool {
    allow.iter().any(|net| net.contains(ip)) || is_public(ip)
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local,
/// shared (CGNAT), unspecified, multicast, broadcast, documentation, benchmarking or
/// reserved, also when an IPv6 address carries an IPv4 one (mapped, NAT64).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b {
                let embedded = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_public(IpAddr::V4(embedded));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[0] == 0
                || s[0] == 0x0100)
        }
    }
}

/// A webhook URL: `http` or `https`, with a host, no credentials; a literal address
/// must be allowed.
fn check_url(text: &str, allow: &[IpNet]) -> Result<url::Url, String> {
    if text.len() > 2000 {
        return Err("at most 2000 characters".into());
    }
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    match url.host() {
        None => return Err("has no host".into()),
        Some(url::Host::Ipv4(ip)) if !address_allowed(IpAddr::V4(ip), allow) => {
            return Err(format!("{ip} is not a public address (DYNSERV_WEBHOOK_ALLOW lists the others deliveries may reach)"));
        }
        Some(url::Host::Ipv6(ip)) if !address_allowed(IpAddr::V6(ip), allow) => {
            return Err(format!("{ip} is not a public address (DYNSERV_WEBHOOK_ALLOW lists the others deliveries may reach)"));
        }
        Some(_) => {}
    }
    Ok(url)
}

/// The address a delivery to `url` connects to: every address its host resolves to
/// must be allowed (so a name that also points inside cannot be raced), and the first
/// is used.
async fn resolve_checked(url: &url::Url, allow: &[IpNet]) -> Result<SocketAddr, String> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "the URL has no port".to_string())?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("resolving {name}: {e}"))?
            .collect(),
        None => return Err("the URL has no host".into()),
    };
    if addrs.is_empty() {
        return Err("the host resolves to no address".into());
    }
    let refused: Vec<String> = addrs
        .iter()
        .filter(|a| !address_allowed(a.ip(), allow))
        .map(|a| a.ip().to_string())
        .collect();
    if !refused.is_empty() {
        return Err(format!(
            "refused: {} resolves to {}, not a public address (DYNSERV_WEBHOOK_ALLOW lists the others deliveries may reach)",
            url.host_str().unwrap_or(""),
            refused.join(", ")
        ));
    }
    Ok(addrs[0])
}

/// The `X-Dynserv-Signature` value of `body` under `secret`: `sha256=HEX`.
pub fn signature(secret: &str, body: &str) -> String {
    use hmac::{Mac, SimpleHmac};
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one attempt got: the answer's status and the start of its body, or why no
/// answer came.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
}

impl Attempt {
    fn failed(error: String) -> Attempt {
        Attempt {
            status: None,
            body: None,
            error: Some(error),
        }
    }

    fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s)) && self.error.is_none()
    }
}

/// POSTs `body` to `url` once, through the address guard, following up to
/// [`MAX_REDIRECTS`] redirects (each target checked the same way; the body is posted
/// again).
pub async fn post_once(
    url: &str,
    body: &str,
    secret: Option<&str>,
    event: &str,
    allow: &[IpNet],
) -> Attempt {
    let mut target = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Attempt::failed(format!("not a URL: {e}")),
    };
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(target.scheme(), "http" | "https") {
            return Attempt::failed(format!(
                "refused: scheme {} is not http(s)",
                target.scheme()
            ));
        }
        let addr = match resolve_checked(&target, allow).await {
            Ok(a) => a,
            Err(e) => return Attempt::failed(e),
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("dynserv/", env!("CARGO_PKG_VERSION")));
        if let Some(url::Host::Domain(name)) = target.host() {
            // Connect to the address just checked, never to what a second lookup says.
            builder = builder.resolve(name, addr);
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => return Attempt::failed(format!("HTTP client: {e}")),
        };
        let mut request = client
            .post(target.clone())
            .header("content-type", "application/json")
            .header("x-dynserv-event", event)
            .body(body.to_string());
        if let Some(secret) = secret {
            request = request.header("x-dynserv-signature", signature(secret, body));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::failed(format!("{e}")),
        };
        let status = response.status();
        if status.is_redirection() {
            let Some(location) = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
            else {
                return Attempt {
                    status: Some(status.as_u16()),
                    body: None,
                    error: Some("a redirect without a Location".into()),
                };
            };
            target = match target.join(location) {
                Ok(u) => u,
                Err(e) => return Attempt::failed(format!("redirect to a bad URL: {e}")),
            };
            continue;
        }
        let text = read_start(response).await;
        return Attempt {
            status: Some(status.as_u16()),
            error: (!status.is_success()).then(|| format!("the receiver answered {status}")),
            body: Some(text),
        };
    }
    Attempt::failed(format!("more than {MAX_REDIRECTS} redirects"))
}

/// The first [`ANSWER_KEPT`] bytes of an answer's body, as text.
async fn read_start(mut response: reqwest::Response) -> String {
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < ANSWER_KEPT {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    kept.truncate(ANSWER_KEPT);
    String::from_utf8_lossy(&kept).into_owned()
}

// ---- the deliverer ----

/// When attempt number `attempts + 1` is due after a failure, or `None` when the
/// attempts are spent.
pub fn next_attempt(attempts: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
    let delay = RETRY_DELAYS.get(index)?;
    Some(now + chrono::Duration::from_std(*delay).ok()?)
}

/// Deliveries due with their webhook's secret, and e-mails due.
type Due = (Vec<(Delivery, Option<String>)>, Vec<Mail>);

/// Work that is due: deliveries with their webhook's secret, and e-mails.
fn due(r: &impl Read, now: DateTime<Utc>) -> anyhow::Result<Due> {
    let mut deliveries = Vec::new();
    for (_, id) in r.index_page(&IndexScan::prefix(DELIVERY_DUE, "", BATCH * 4))? {
        let Some(d) = r.get::<Delivery>(&id)? else {
            continue;
        };
        if d.next_attempt_at.is_some_and(|at| at <= now) {
            let secret = r.get::<Webhook>(&d.webhook_id)?.and_then(|h| h.secret);
            deliveries.push((d, secret));
            if deliveries.len() >= BATCH {
                break;
            }
        }
    }
    let mut mails = Vec::new();
    for (_, id) in r.index_page(&IndexScan::prefix(MAIL_DUE, "", BATCH * 4))? {
        if let Some(m) = r.get::<Mail>(&id)? {
            if m.next_attempt_at.is_some_and(|at| at <= now) {
                mails.push(m);
                if mails.len() >= BATCH {
                    break;
                }
            }
        }
    }
    Ok((deliveries, mails))
}

/// Writes the outcome of one delivery attempt.
fn record_delivery(
    w: &mut Writer,
    id: &str,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(mut d) = w.get::<Delivery>(id)? else {
        return Ok(());
    };
    d.attempts += 1;
    d.last_attempt_at = Some(now);
    d.response_status = attempt.status;
    d.response_body = attempt.body.clone();
    d.error = attempt.error.clone();
    if attempt.delivered() {
        d.status = SendStatus::Delivered;
        d.next_attempt_at = None;
    } else {
        d.next_attempt_at = next_attempt(d.attempts, now);
        if d.next_attempt_at.is_none() {
            d.status = SendStatus::Failed;
        }
    }
    if d.next_attempt_at.is_none() {
        w.index_delete(DELIVERY_DUE, &d.id)?;
    }
    w.put(&d)?;
    Ok(())
}

/// Writes the outcome of one e-mail attempt.
fn record_mail(
    w: &mut Writer,
    id: &str,
    error: Option<String>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(mut m) = w.get::<Mail>(id)? else {
        return Ok(());
    };
    m.attempts += 1;
    if error.is_none() {
        m.status = SendStatus::Delivered;
        m.next_attempt_at = None;
    } else {
        m.next_attempt_at = next_attempt(m.attempts, now);
        if m.next_attempt_at.is_none() {
            m.status = SendStatus::Failed;
        }
    }
    m.error = error;
    if m.next_attempt_at.is_none() {
        w.index_delete(MAIL_DUE, &m.id)?;
    }
    w.put(&m)?;
    Ok(())
}

/// Deletes ended deliveries and e-mails older than [`KEEP_ENDED_DAYS`], a batch at a
/// time (the oldest first: ids are UUIDv7).
fn prune(w: &mut Writer, now: DateTime<Utc>) -> anyhow::Result<()> {
    let cutoff = now - chrono::Duration::days(KEEP_ENDED_DAYS);
    let mut scan = IndexScan::prefix("", "", 200);
    scan.upper = crate::executions::id_floor(cutoff);
    let old: Vec<Delivery> = w.records_page(&scan)?;
    for d in old.iter().filter(|d| d.status != SendStatus::Pending) {
        w.delete::<Delivery>(&d.id)?;
        w.index_delete(DELIVERY_BY_HOOK, &format!("{}/{}", d.webhook_id, d.id))?;
    }
    let old: Vec<Mail> = w.records_page(&scan)?;
    for m in old.iter().filter(|m| m.status != SendStatus::Pending) {
        w.delete::<Mail>(&m.id)?;
    }
    Ok(())
}

/// Sends one e-mail through `DYNSERV_SMTP_URL`.
async fn send_mail(app: &App, mail: &Mail) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Email, Tokio1Executor};
    let Some(smtp_url) = app.config.smtp_url.as_deref() else {
        return Err("no SMTP server is configured (DYNSERV_SMTP_URL)".into());
    };
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
        .map_err(|e| format!("DYNSERV_SMTP_URL: {e}"))?
        .timeout(Some(ATTEMPT_TIMEOUT))
        .build();
    let link = format!("{}/notifications", app.config.public_url);
    let email = Email::builder()
        .from(
            app.config
                .mail_from
                .parse()
                .map_err(|e| format!("DYNSERV_MAIL_FROM: {e}"))?,
        )
        .to(mail.to.parse().map_err(|e| format!("address {}: {e}", mail.to))?)
        .subject(mail.subject.clone())
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(format!(
            "{}\n\nEvent: {}\n{link}\n\nChoose which alerts reach you by e-mail on your account page: {}/account\n",
            mail.body, mail.event, app.config.public_url
        ))
        .map_err(|e| format!("building the e-mail: {e}"))?;
    transport
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e}"))
}

/// The background task that sends due webhook deliveries and e-mails (on the leader
/// only), retrying with backoff, until `stop` resolves.
pub async fn deliverer(app: App, stop: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::pin!(stop);
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !app.cluster.is_leader() {
            continue;
        }
        if let Err(e) = deliver_due(&app).await {
            tracing::error!("alert deliveries: {e:#}");
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(std::time::Instant::now());
            let store = app.store.clone();
            if let Err(e) =
                crate::store::blocking(move || store.write(|w| prune(w, Utc::now()))).await
            {
                tracing::error!("pruning alert deliveries: {e:#}");
            }
        }
    }
}

/// One pass: reads what is due, sends it (deliveries concurrently), records outcomes.
pub async fn deliver_due(app: &App) -> anyhow::Result<()> {
    let store = app.store.clone();
    let (deliveries, mails) =
        crate::store::blocking(move || store.read(|r| due(r, Utc::now()))).await?;
    if deliveries.is_empty() && mails.is_empty() {
        return Ok(());
    }
    let allow = app.config.webhook_allow.clone();
    let attempts = futures::future::join_all(deliveries.iter().map(|(d, secret)| {
        let allow = allow.clone();
        async move {
            let attempt = post_once(&d.url, &d.body, secret.as_deref(), &d.event, &allow).await;
            if let Some(e) = &attempt.error {
                tracing::warn!(delivery = %d.id, url = %d.url, "webhook delivery failed: {e}");
            }
            (d.id.clone(), attempt)
        }
    }))
    .await;
    let mut mail_outcomes = Vec::new();
    for mail in &mails {
        let outcome = send_mail(app, mail).await.err();
        if let Some(e) = &outcome {
            tracing::warn!(mail = %mail.id, "alert e-mail failed: {e}");
        }
        mail_outcomes.push((mail.id.clone(), outcome));
    }
    let store = app.store.clone();
    crate::store::blocking(move || {
        store.write(|w| {
            let now = Utc::now();
            for (id, attempt) in &attempts {
                record_delivery(w, id, attempt, now)?;
            }
            for (id, error) in &mail_outcomes {
                record_mail(w, id, error.clone(), now)?;
            }
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard refuses loopback, private, link-local, CGNAT and the IPv6 forms of
    /// them (also an IPv4 inside an IPv6), accepts public addresses, and accepts what
    /// the allow list names.
    #[test]
    fn address_guard() {
        let none: Vec<IpNet> = Vec::new();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!address_allowed(ip, &none), "{refused} must be refused");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(address_allowed(ip, &none), "{public} is public");
        }
        let allow = vec![IpNet::parse("127.0.0.0/8").unwrap()];
        assert!(address_allowed("127.0.0.1".parse().unwrap(), &allow));
        assert!(!address_allowed("10.0.0.1".parse().unwrap(), &allow));
    }

    /// A literal private address in a URL is refused when the webhook is created; a
    /// name is checked when it is resolved.
    #[test]
    fn urls() {
        let none: Vec<IpNet> = Vec::new();
        assert!(check_url("http://127.0.0.1:9/x", &none).is_err());
        assert!(check_url("http://[::1]/x", &none).is_err());
        assert!(check_url("ftp://example.com/", &none).is_err());
        assert!(check_url("https://u:p@example.com/", &none).is_err());
        assert!(check_url("https://hooks.example.com/x", &none).is_ok());
        let allow = vec![IpNet::parse("127.0.0.0/8").unwrap()];
        assert!(check_url("http://127.0.0.1:9/x", &allow).is_ok());
    }

    /// A name that resolves to loopback is refused at delivery time.
    #[tokio::test]
    async fn resolved_names_are_checked() {
        let attempt = post_once("http://localhost:9/x", "{}", None, "execution.failed", &[]).await;
        let error = attempt.error.unwrap();
        assert!(error.contains("refused"), "{error}");
        assert!(attempt.status.is_none());
    }

    /// The signature is the HMAC-SHA256 of RFC 4231's test case 2.
    #[test]
    fn signature_is_hmac_sha256() {
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Retries back off, then stop.
    #[test]
    fn backoff() {
        let now = Utc::now();
        assert_eq!(
            next_attempt(1, now),
            Some(now + chrono::Duration::seconds(10))
        );
        assert_eq!(
            next_attempt(5, now),
            Some(now + chrono::Duration::seconds(3600))
        );
        assert_eq!(next_attempt(6, now), None);
    }

    /// Raising an alert queues a delivery for each webhook that wants the event in
    /// that scope, and an e-mail for each recipient who asked for it.
    #[test]
    fn raise_queues_deliveries_and_mails() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        store.seal_with(crate::secrets::Keys::from_master(&[7u8; 32]));
        let now = Utc::now();
        let hook = |id: &str, project: Option<&str>, events: &[&str]| Webhook {
            id: id.into(),
            url: "https://hooks.example.com/x".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            project_id: project.map(String::from),
            secret: Some("s".into()),
            created_by: "admin".into(),
            created_at: now,
        };
        let user = users::User {
            id: "u1".into(),
            username: "tech".into(),
            full_name: None,
            email: Some("tech@example.com".into()),
            role: Role::Technical,
            is_manager: false,
            active: true,
            password_hash: String::new(),
            created_at: now,
            updated_at: now,
        };
        store
            .write(|w| {
                w.put(&hook("h-all", None, &["execution.failed"]))?;
                w.put(&hook("h-p1", Some("p1"), &["execution.failed"]))?;
                w.put(&hook("h-p2", Some("p2"), &["execution.failed"]))?;
                w.put(&hook("h-other", None, &["backup.failed"]))?;
                w.put(&user)?;
                save_prefs(w, "u1", &["execution.failed".into()])?;
                raise(
                    w,
                    &["u1".into(), "u2".into()],
                    &Alert {
                        event: "execution.failed",
                        project_id: Some("p1".into()),
                        subject: json!({"execution": "e1"}),
                        message: Message {
                            title: "Job failed".into(),
                            body: "exit 3".into(),
                            link: Some("/executions/e1".into()),
                            level: "danger",
                            subject: "execution:e1".into(),
                        },
                    },
                )
            })
            .unwrap();
        let (deliveries, mails) = store.read(|r| due(r, Utc::now())).unwrap();
        let mut hooks: Vec<&str> = deliveries
            .iter()
            .map(|(d, _)| d.webhook_id.as_str())
            .collect();
        hooks.sort();
        assert_eq!(hooks, ["h-all", "h-p1"]);
        assert_eq!(deliveries[0].1.as_deref(), Some("s"));
        let body: serde_json::Value = serde_json::from_str(&deliveries[0].0.body).unwrap();
        assert_eq!(body["event"], "execution.failed");
        assert_eq!(body["subject"]["execution"], "e1");
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].to, "tech@example.com");
        // A delivered attempt leaves the due list; a failed one comes back later.
        let ok = Attempt {
            status: Some(200),
            body: Some("ok".into()),
            error: None,
        };
        let refused = Attempt::failed("refused".into());
        store
            .write(|w| {
                record_delivery(w, &deliveries[0].0.id, &ok, now)?;
                record_delivery(w, &deliveries[1].0.id, &refused, now)
            })
            .unwrap();
        let (left, _) = store.read(|r| due(r, Utc::now())).unwrap();
        assert!(left.is_empty(), "the failed one waits for its retry");
        let later = Utc::now() + chrono::Duration::seconds(11);
        let (left, _) = store.read(|r| due(r, later)).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.attempts, 1);
        assert_eq!(left[0].0.error.as_deref(), Some("refused"));
    }
}
