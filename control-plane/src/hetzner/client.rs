//! The Hetzner Cloud client: requests to `HETZNER_API_URL`, read into the `hcloud`
//! crate's models, with paging, a per-token request budget that follows Hetzner's
//! `RateLimit-*` headers, and bounded retries: after a 429 until `RateLimit-Reset`
//! (capped), after the other errors Hetzner calls retryable with jittered backoff.
//! Errors keep Hetzner's own message so the person who pressed the button reads what
//! Hetzner said.
//!
//! The requests are built here rather than through hcloud's generated functions
//! because those drop the response headers, and the headers are what tells how much
//! of the shared hourly budget is left.
//!
//! # A token's budget
//!
//! Hetzner gives each project (token) a bucket of `RateLimit-Limit` requests (3600)
//! that refills by a 3600th of the limit every second; every answer carries
//! `RateLimit-Remaining` and `RateLimit-Reset`, the unix second at which the bucket
//! is full again. All clients of one token in this process share one budget:
//!
//! * every request takes one from it and waits while it is empty;
//! * every answer sets it to Hetzner's `RateLimit-Remaining`, less the requests still
//!   under way here, so requests made with the token elsewhere count too;
//! * background work (syncs, following actions and booting servers) leaves a tenth of
//!   the limit to people: below that reserve, background requests go one per refill
//!   interval, so a sync slows down instead of running into 429s;
//! * a 429 holds every request of the token until `RateLimit-Reset`, at most
//!   [`RetryPolicy::rate_limit_cap`], each caller with its own jitter.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hcloud::models;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::de::DeserializeOwned;

/// Page size for lists: Hetzner's maximum.
pub const PER_PAGE: i64 = 50;
/// Hetzner's request budget per project (token) and hour, until its answers tell.
pub const REQUESTS_PER_HOUR: f64 = 3600.0;
/// The share of a token's limit that background work leaves for people's actions.
pub const RESERVE_SHARE: f64 = 0.1;

/// What went wrong talking to Hetzner.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HetznerError {
    /// Hetzner answered with an error: HTTP status, its error code and its message.
    #[error("Hetzner: {message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The API could not be reached or the connection broke.
    #[error("cannot reach the Hetzner API: {0}")]
    Transport(String),
    /// Hetzner's answer could not be read.
    #[error("unexpected answer from the Hetzner API: {0}")]
    Decode(String),
    /// Neither the project nor `HETZNER_API_TOKEN` provides a token.
    #[error("the project has no Hetzner API token; set one on the project or HETZNER_API_TOKEN")]
    NoToken,
}

/// Error codes Hetzner documents as worth retrying.
const RETRYABLE_CODES: &[&str] = &["rate_limit_exceeded", "conflict", "timeout"];

impl HetznerError {
    /// The error of an answer that is not a success, from Hetzner's error body
    /// (`{"error": {"code", "message"}}`) when there is one.
    pub fn from_answer(status: u16, body: &str) -> HetznerError {
        match serde_json::from_str::<models::ErrorResponse>(body) {
            Ok(body) => HetznerError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => HetznerError::Api {
                status,
                code: format!("http_{status}"),
                message: reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_lowercase(),
            },
        }
    }

    /// Whether the same request may succeed when tried again later: 429, 502, 503,
    /// 504, the codes `rate_limit_exceeded`, `conflict`, `timeout`, and broken
    /// connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            HetznerError::Api { status, code, .. } => {
                matches!(status, 429 | 502 | 503 | 504) || RETRYABLE_CODES.contains(&code.as_str())
            }
            HetznerError::Transport(_) => true,
            HetznerError::Decode(_) | HetznerError::NoToken => false,
        }
    }

    /// Whether Hetzner said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, HetznerError::Api { status: 404, .. })
    }

    /// Whether the request certainly never reached Hetzner's processing (so a create
    /// may be sent again without risking a duplicate).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, HetznerError::Api { status: 429, .. })
            || matches!(self, HetznerError::Api { code, .. } if code == "rate_limit_exceeded")
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// The longest delay between two attempts.
    pub cap: Duration,
    /// The longest wait for `RateLimit-Reset` after a 429 (before jitter).
    pub rate_limit_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            rate_limit_cap: Duration::from_secs(60),
        }
    }
}

/// The delay before retry number `retry` (0 for the first retry): exponential, capped,
/// with "equal jitter": half of it fixed, half random (`jitter` in `0..=1`), so many
/// clients that failed together do not come back together.
pub fn backoff_delay(policy: &RetryPolicy, retry: u32, jitter: f64) -> Duration {
    let exp = policy
        .base
        .saturating_mul(2u32.saturating_pow(retry.min(16)))
        .min(policy.cap);
    let half = exp / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How long requests hold after a 429 whose `RateLimit-Reset` is `reset` (unix
/// seconds): until that second, at most `cap`. `None` when the reset is not ahead.
pub fn rate_limit_pause(reset: i64, now: SystemTime, cap: Duration) -> Option<Duration> {
    // The header is the peer's word: a second past what a SystemTime holds is no
    // reset at all, never an overflow.
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(reset).ok()?))?;
    at.duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| d.min(cap))
}

/// `wait` plus jitter (`jitter` in `0..=1`) of up to a tenth of it, at least up to a
/// second, so the callers a 429 held do not all come back in the same instant. Never
/// shorter than `wait`.
pub fn with_jitter(wait: Duration, jitter: f64) -> Duration {
    let spread = (wait / 10).max(Duration::from_secs(1));
    wait + spread.mul_f64(jitter.clamp(0.0, 1.0))
}

/// What Hetzner's `RateLimit-*` headers said about a token's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per hour (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// The unix second at which the budget is full again (`RateLimit-Reset`).
    pub reset: Option<i64>,
}

impl RateLimit {
    /// Reads the headers; `None` without a numeric limit and remainder.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let number =
            |name: &str| -> Option<i64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        Some(RateLimit {
            limit: u32::try_from(number("ratelimit-limit")?).ok()?,
            remaining: u32::try_from(number("ratelimit-remaining")?).ok()?,
            reset: number("ratelimit-reset"),
        })
    }
}

/// Who is asking: people's actions may use the whole budget; background work leaves
/// them [`RESERVE_SHARE`] of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Interactive,
    Background,
}

/// One token's share of Hetzner's limit, as this process knows it.
#[derive(Debug)]
struct Budget {
    /// Requests per hour (`RateLimit-Limit`; 3600 until Hetzner says).
    limit: f64,
    /// Requests that may go now; below zero, those promised to waiting callers.
    tokens: f64,
    at: Instant,
    /// Requests taken and not answered yet.
    in_flight: u32,
    /// After a 429: no request of this token goes before then.
    held_until: Option<Instant>,
    /// While below the reserve: the earliest the next background request may go.
    background_next: Instant,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget {
            limit: REQUESTS_PER_HOUR,
            tokens: REQUESTS_PER_HOUR,
            at: now,
            in_flight: 0,
            held_until: None,
            background_next: now,
        }
    }

    fn per_second(&self) -> f64 {
        self.limit / 3600.0
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let elapsed = (now - self.at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second()).min(self.limit);
            self.at = now;
        }
    }

    /// Takes one request; answers how long the caller waits before sending it.
    /// `jitter` (`0..=1`) spreads the callers a 429 holds.
    fn take(&mut self, now: Instant, pace: Pace, jitter: f64) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        self.in_flight += 1;
        let mut at = now;
        if let Some(held) = self.held_until.filter(|h| *h > now) {
            at = now + with_jitter(held - now, jitter);
        }
        if self.tokens < 0.0 {
            at = at.max(now + Duration::from_secs_f64(-self.tokens / self.per_second()));
        }
        if pace == Pace::Background && self.tokens < self.limit * RESERVE_SHARE {
            at = at.max(self.background_next);
            self.background_next = at + Duration::from_secs_f64(1.0 / self.per_second());
        }
        at - now
    }

    /// Learns from an answer (`rate` from its headers), or from a request that got
    /// none (`None`).
    fn answered(&mut self, now: Instant, rate: Option<RateLimit>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(rate) = rate {
            if rate.limit > 0 {
                self.limit = f64::from(rate.limit);
            }
            self.refill(now);
            self.tokens = (f64::from(rate.remaining) - f64::from(self.in_flight)).min(self.limit);
        }
    }

    /// Holds every request until `until`.
    fn hold(&mut self, until: Instant) {
        self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
    }
}

/// The request budget of each token one control plane uses, kept by the token's
/// hash (never the token). Every [`Client`] of one control plane shares it, so the
/// syncs, power actions and provisioning that use one token spend one budget.
#[derive(Clone, Default)]
pub struct Budgets(Arc<Mutex<HashMap<[u8; 32], Budget>>>);

impl Budgets {
    /// Runs `f` on the budget of `token`.
    fn with<R>(&self, token: &str, f: impl FnOnce(&mut Budget) -> R) -> R {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let budget = guard
            .entry(key)
            .or_insert_with(|| Budget::new(Instant::now()));
        f(budget)
    }
}

/// One failed attempt: the error, and how long to wait before the next when Hetzner
/// said (`RateLimit-Reset` of a 429).
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub error: HetznerError,
    pub wait: Option<Duration>,
}

impl From<HetznerError> for Failed {
    fn from(error: HetznerError) -> Failed {
        Failed { error, wait: None }
    }
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, or
/// `policy.max_attempts` are spent. Between attempts it sleeps the wait the failure
/// names (a 429's reset), else [`backoff_delay`].
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    retryable: impl Fn(&HetznerError) -> bool,
    mut attempt: F,
) -> Result<T, HetznerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failed>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failed) if retryable(&failed.error) && retry + 1 < policy.max_attempts => {
                let delay = failed
                    .wait
                    .unwrap_or_else(|| backoff_delay(policy, retry, rand::random::<f64>()));
                tracing::warn!(
                    "hetzner: {what} failed ({}); retry {} in {delay:?}",
                    failed.error,
                    retry + 1
                );
                tokio::time::sleep(delay).await;
                retry += 1;
            }
            Err(failed) => return Err(failed.error),
        }
    }
}
/// Monthly gross price (EUR) per `(server type, location)`.
pub type Prices = HashMap<(String, String), f64>;

/// Reads Hetzner's pricing into monthly gross prices per server type and location.
pub fn monthly_prices(pricing: &models::ListPricesResponse) -> Prices {
    let mut prices = Prices::new();
    for server_type in &pricing.pricing.server_types {
        for price in &server_type.prices {
            if let Ok(gross) = price.price_monthly.gross.trim().parse::<f64>() {
                prices.insert(
                    (server_type.name.clone(), price.location.clone()),
                    (gross * 100.0).round() / 100.0,
                );
            }
        }
    }
    prices
}

/// Power actions a person may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOn,
    PowerOff,
    Reboot,
}

impl PowerAction {
    pub fn parse(text: &str) -> Option<PowerAction> {
        match text.trim() {
            "poweron" => Some(PowerAction::PowerOn),
            "poweroff" => Some(PowerAction::PowerOff),
            "reboot" => Some(PowerAction::Reboot),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::PowerOn => "poweron",
            PowerAction::PowerOff => "poweroff",
            PowerAction::Reboot => "reboot",
        }
    }

    /// The server status once the action succeeded.
    pub fn resulting_status(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "off",
            PowerAction::PowerOn | PowerAction::Reboot => "running",
        }
    }
}

/// One request to the API: method, path under the API base, query and JSON body.
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
        }
    }

    fn post(path: String, body: Option<serde_json::Value>) -> Call {
        Call {
            method: Method::POST,
            path,
            query: Vec::new(),
            body,
        }
    }
}

/// The answer of an action endpoint (`{"action": …}`).
#[derive(serde::Deserialize)]
struct ActionAnswer {
    action: models::Action,
}

/// A client for one Hetzner project (one token).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    budgets: Budgets,
    pace: Pace,
    pub retry: RetryPolicy,
}

impl Client {
    /// A client for `api_url` (`HETZNER_API_URL`) with a project's token, spending
    /// that token's budget in `budgets`.
    pub fn new(budgets: &Budgets, api_url: &str, token: &str) -> Result<Client, HetznerError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(format!("dynserv/{}", dynserv_shared::VERSION))
            .build()
            .map_err(|e| HetznerError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            budgets: budgets.clone(),
            pace: Pace::Interactive,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client for background work (syncs, following actions, waiting for a
    /// server to boot): it leaves people a reserve of the token's budget.
    pub fn background(mut self) -> Client {
        self.pace = Pace::Background;
        self
    }

    /// Sends `call` once, after the token's budget allows it, and reads the answer.
    async fn attempt<T: DeserializeOwned>(&self, call: &Call) -> Result<T, Failed> {
        let wait = self.budgets.with(&self.token, |b| {
            b.take(Instant::now(), self.pace, rand::random::<f64>())
        });
        if !wait.is_zero() {
            tracing::info!(
                "hetzner: waiting {wait:?} for the request budget ({} {})",
                call.method,
                call.path
            );
            tokio::time::sleep(wait).await;
        }
        let mut request = self
            .http
            .request(call.method.clone(), format!("{}{}", self.base, call.path))
            .bearer_auth(&self.token);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.budgets
                    .with(&self.token, |b| b.answered(Instant::now(), None));
                return Err(HetznerError::Transport(e.to_string()).into());
            }
        };
        let status = response.status().as_u16();
        let rate = RateLimit::from_headers(response.headers());
        let retry_after = self.budgets.with(&self.token, |b| {
            let now = Instant::now();
            b.answered(now, rate);
            if status != 429 {
                return None;
            }
            let pause = rate.and_then(|r| r.reset).and_then(|reset| {
                rate_limit_pause(reset, SystemTime::now(), self.retry.rate_limit_cap)
            })?;
            b.hold(now + pause);
            Some(with_jitter(pause, rand::random::<f64>()))
        });
        let text = response
            .text()
            .await
            .map_err(|e| HetznerError::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            serde_json::from_str(&text).map_err(|e| HetznerError::Decode(e.to_string()).into())
        } else {
            Err(Failed {
                error: HetznerError::from_answer(status, &text),
                wait: retry_after,
            })
        }
    }

    /// Sends `call`, retrying the errors `retryable` accepts as the policy says.
    async fn send<T: DeserializeOwned>(
        &self,
        what: &str,
        call: Call,
        retryable: fn(&HetznerError) -> bool,
    ) -> Result<T, HetznerError> {
        with_retry(&self.retry, what, retryable, || self.attempt(&call)).await
    }

    /// Every server of the project, paging through `meta.pagination.next_page`.
    pub async fn list_servers(&self) -> Result<Vec<models::Server>, HetznerError> {
        self.list_servers_where(None, None).await
    }

    /// Servers with a name or matching a label selector.
    pub async fn list_servers_where(
        &self,
        name: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<Vec<models::Server>, HetznerError> {
        let mut servers = Vec::new();
        let mut page = Some(1);
        // A hard stop in case an API kept answering a next page forever.
        let mut pages = 0;
        while let Some(p) = page {
            pages += 1;
            if pages > 1000 {
                return Err(HetznerError::Decode(
                    "more than 1000 pages of servers".into(),
                ));
            }
            let mut call = Call::get("/servers".into());
            if let Some(name) = name {
                call.query.push(("name", name.to_string()));
            }
            if let Some(selector) = label_selector {
                call.query.push(("label_selector", selector.to_string()));
            }
            call.query.push(("page", p.to_string()));
            call.query.push(("per_page", PER_PAGE.to_string()));
            let answer: models::ListServersResponse = self
                .send("listing servers", call, HetznerError::is_retryable)
                .await?;
            servers.extend(answer.servers);
            page = answer.meta.pagination.next_page.filter(|next| *next > p);
        }
        Ok(servers)
    }

    /// One server; `None` when Hetzner does not know it.
    pub async fn server(&self, id: i64) -> Result<Option<models::Server>, HetznerError> {
        let answer: Result<models::GetServerResponse, _> = self
            .send(
                "reading a server",
                Call::get(format!("/servers/{id}")),
                HetznerError::is_retryable,
            )
            .await;
        match answer {
            Ok(a) => Ok(a.server.map(|s| *s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Monthly gross prices per server type and location.
    pub async fn prices(&self) -> Result<Prices, HetznerError> {
        let pricing: models::ListPricesResponse = self
            .send(
                "reading prices",
                Call::get("/pricing".into()),
                HetznerError::is_retryable,
            )
            .await?;
        Ok(monthly_prices(&pricing))
    }

    /// Starts a power action; answers Hetzner's action.
    pub async fn power(
        &self,
        server_id: i64,
        action: PowerAction,
    ) -> Result<models::Action, HetznerError> {
        let (what, endpoint) = match action {
            PowerAction::PowerOn => ("powering on", "poweron"),
            PowerAction::PowerOff => ("powering off", "poweroff"),
            PowerAction::Reboot => ("rebooting", "reboot"),
        };
        let answer: ActionAnswer = self
            .send(
                what,
                Call::post(format!("/servers/{server_id}/actions/{endpoint}"), None),
                HetznerError::is_retryable,
            )
            .await?;
        Ok(answer.action)
    }

    /// The current state of an action.
    pub async fn action(&self, id: i64) -> Result<models::Action, HetznerError> {
        let answer: models::GetActionResponse = self
            .send(
                "reading an action",
                Call::get(format!("/actions/{id}")),
                HetznerError::is_retryable,
            )
            .await?;
        Ok(*answer.action)
    }

    /// Creates a server. Retried only when Hetzner certainly did not process the
    /// request (rate limited), so a retry never creates a second server; callers
    /// look the server up by its labels before creating again.
    pub async fn create_server(
        &self,
        request: models::CreateServerRequest,
    ) -> Result<models::CreateServerResponse, HetznerError> {
        let body = serde_json::to_value(&request)
            .map_err(|e| HetznerError::Decode(format!("the create request: {e}")))?;
        self.send(
            "creating a server",
            Call::post("/servers".into(), Some(body)),
            HetznerError::is_rate_limited,
        )
        .await
    }
}

/// The status of a Hetzner server as its API names it (`running`, `off`, …).
pub fn status_name(status: models::server::Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> HetznerError {
        HetznerError::Api {
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    /// Rate limits, conflicts, timeouts and gateway errors are retried; a bad token,
    /// a locked server or invalid input are not.
    #[test]
    fn retry_classification() {
        for (status, code, retry) in [
            (429, "rate_limit_exceeded", true),
            (409, "conflict", true),
            (504, "timeout", true),
            (502, "http_502", true),
            (504, "http_504", true),
            (401, "unauthorized", false),
            (423, "locked", false),
            (400, "invalid_input", false),
            (404, "not_found", false),
            (409, "uniqueness_error", false),
        ] {
            assert_eq!(api(status, code).is_retryable(), retry, "{status} {code}");
        }
        assert!(HetznerError::Transport("reset".into()).is_retryable());
        assert!(!HetznerError::NoToken.is_retryable());
        assert!(api(429, "rate_limit_exceeded").is_rate_limited());
        assert!(!api(409, "conflict").is_rate_limited());
    }

    /// Hetzner's error body gives the code and message; a body that is not one gives
    /// the HTTP status.
    #[test]
    fn errors_keep_hetzners_message() {
        let body = r#"{"error": {"code": "locked", "message": "server is locked", "details": {}}}"#;
        assert_eq!(
            HetznerError::from_answer(423, body),
            HetznerError::Api {
                status: 423,
                code: "locked".into(),
                message: "server is locked".into()
            }
        );
        assert_eq!(
            HetznerError::from_answer(502, "<html>bad gateway</html>"),
            HetznerError::Api {
                status: 502,
                code: "http_502".into(),
                message: "bad gateway".into()
            }
        );
    }

    /// Backoff doubles from the base, stays within [half, full] of it, and is capped.
    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
            ..Default::default()
        };
        assert_eq!(backoff_delay(&policy, 0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff_delay(&policy, 0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(&policy, 1, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff_delay(&policy, 2, 0.5), Duration::from_millis(1500));
        assert_eq!(backoff_delay(&policy, 10, 1.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(&policy, 40, 0.0), Duration::from_secs(2));
    }

    /// The three `RateLimit-*` headers are read whatever their case; without a limit
    /// and a remainder there is nothing to learn.
    #[test]
    fn rate_limit_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("RateLimit-Limit", "3600".parse().unwrap());
        headers.insert("ratelimit-remaining", "17".parse().unwrap());
        headers.insert("RATELIMIT-RESET", "1767225600".parse().unwrap());
        assert_eq!(
            RateLimit::from_headers(&headers),
            Some(RateLimit {
                limit: 3600,
                remaining: 17,
                reset: Some(1_767_225_600)
            })
        );
        headers.remove("ratelimit-reset");
        assert_eq!(RateLimit::from_headers(&headers).unwrap().reset, None);
        headers.insert("ratelimit-remaining", "many".parse().unwrap());
        assert_eq!(RateLimit::from_headers(&headers), None);
    }

    /// After a 429 requests hold until `RateLimit-Reset`, never longer than the cap,
    /// and jitter only adds.
    #[test]
    fn rate_limit_pause_until_reset() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_000_250);
        let cap = Duration::from_secs(60);
        assert_eq!(
            rate_limit_pause(1_000_003, now, cap),
            Some(Duration::from_millis(2750))
        );
        assert_eq!(rate_limit_pause(1_000_000 + 3600, now, cap), Some(cap));
        assert_eq!(rate_limit_pause(1_000_000, now, cap), None, "in the past");
        assert_eq!(rate_limit_pause(-5, now, cap), None);
        // A reset past what a clock holds is no panic: held for the cap at most, or
        // not at all.
        assert!(rate_limit_pause(i64::MAX, now, cap).is_none_or(|d| d <= cap));
        let wait = Duration::from_millis(2750);
        assert_eq!(with_jitter(wait, 0.0), wait);
        assert_eq!(with_jitter(wait, 1.0), wait + Duration::from_secs(1));
        assert_eq!(with_jitter(cap, 1.0), cap + Duration::from_secs(6));
    }

    /// Retries stop after the policy's attempts, and at once on a final error.
    #[tokio::test]
    async fn retries_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(10),
            ..Default::default()
        };
        let mut calls = 0;
        let result: Result<(), _> = with_retry(&policy, "test", HetznerError::is_retryable, || {
            calls += 1;
            async { Err(api(429, "rate_limit_exceeded").into()) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let result: Result<(), _> = with_retry(&policy, "test", HetznerError::is_retryable, || {
            calls += 1;
            async { Err(api(401, "unauthorized").into()) }
        })
        .await;
        assert_eq!(result, Err(api(401, "unauthorized")));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let result = with_retry(&policy, "test", HetznerError::is_retryable, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 2 {
                    Err(api(502, "http_502").into())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(2));
        // A create is retried only when Hetzner certainly did not process it.
        let mut calls = 0;
        let result: Result<(), _> =
            with_retry(&policy, "test", HetznerError::is_rate_limited, || {
                calls += 1;
                async { Err(api(504, "timeout").into()) }
            })
            .await;
        assert_eq!(result, Err(api(504, "timeout")));
        assert_eq!(calls, 1);
    }

    /// A failure that names its wait (a 429's reset) waits that long, not the
    /// backoff's few milliseconds.
    #[tokio::test]
    async fn retry_waits_what_the_failure_names() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(4),
            ..Default::default()
        };
        let started = Instant::now();
        let mut calls = 0;
        let result = with_retry(&policy, "test", HetznerError::is_retryable, || {
            calls += 1;
            let n = calls;
            async move {
                if n == 1 {
                    Err(Failed {
                        error: api(429, "rate_limit_exceeded"),
                        wait: Some(Duration::from_millis(300)),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(2));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    /// Prices are read per server type and location from Hetzner's pricing answer.
    #[test]
    fn prices_per_type_and_location() {
        let pricing: models::ListPricesResponse = serde_json::from_value(serde_json::json!({
            "pricing": {
                "currency": "EUR", "vat_rate": "19.00",
                "floating_ip": {"price_monthly": {"gross": "1.19", "net": "1.00"}},
                "floating_ips": [], "image": {"price_per_gb_month": {"gross": "1.19", "net": "1.00"}},
                "load_balancer_types": [], "primary_ips": [],
                "server_backup": {"percentage": "20.00"},
                "volume": {"price_per_gb_month": {"gross": "1.19", "net": "1.00"}},
                "server_types": [{"id": 1, "name": "cx22", "prices": [
                    {"location": "fsn1", "included_traffic": 1,
                     "price_hourly": {"gross": "0.0062", "net": "0.0052"},
                     "price_monthly": {"gross": "4.5101000000000000", "net": "3.7900000000"},
                     "price_per_tb_traffic": {"gross": "1.19", "net": "1.00"}},
                    {"location": "ash", "included_traffic": 1,
                     "price_hourly": {"gross": "0.01", "net": "0.01"},
                     "price_monthly": {"gross": "8.99", "net": "7.55"},
                     "price_per_tb_traffic": {"gross": "1.19", "net": "1.00"}}
                ]}]
            }
        }))
        .unwrap();
        let prices = monthly_prices(&pricing);
        assert_eq!(prices[&("cx22".to_string(), "fsn1".to_string())], 4.51);
        assert_eq!(prices[&("cx22".to_string(), "ash".to_string())], 8.99);
        assert!(!prices.contains_key(&("cx22".to_string(), "nbg1".to_string())));
    }

    /// The budget lets 3600 requests through at once, then makes callers wait for
    /// the refill of one a second.
    #[test]
    fn request_budget() {
        let now = Instant::now();
        let mut budget = Budget::new(now);
        for _ in 0..3600 {
            assert_eq!(budget.take(now, Pace::Interactive, 0.0), Duration::ZERO);
        }
        assert_eq!(
            budget.take(now, Pace::Interactive, 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            budget.take(now, Pace::Interactive, 0.0),
            Duration::from_secs(2),
            "waiting callers queue"
        );
        let later = now + Duration::from_secs(10);
        assert_eq!(budget.take(later, Pace::Interactive, 0.0), Duration::ZERO);
    }

    /// Each token has its own budget, kept between requests, and each control plane
    /// its own budgets: a token held after a 429 holds only that token, in that one.
    #[test]
    fn budgets_per_token_and_per_control_plane() {
        let budgets = Budgets::default();
        let until = Instant::now() + Duration::from_secs(60);
        budgets.with("held", |b| b.hold(until));
        let take = |budgets: &Budgets, token: &str| {
            budgets.with(token, |b| b.take(Instant::now(), Pace::Interactive, 0.0))
        };
        assert!(take(&budgets, "held") > Duration::from_secs(50));
        assert_eq!(take(&budgets, "other"), Duration::ZERO);
        assert_eq!(take(&Budgets::default(), "held"), Duration::ZERO);
    }

    /// Hetzner's `RateLimit-Remaining` replaces our count (requests made elsewhere
    /// with the token count too), and its limit sets the size and refill.
    #[test]
    fn budget_follows_hetzners_remaining() {
        let now = Instant::now();
        let mut budget = Budget::new(now);
        assert_eq!(budget.take(now, Pace::Interactive, 0.0), Duration::ZERO);
        budget.answered(
            now,
            Some(RateLimit {
                limit: 7200,
                remaining: 0,
                reset: None,
            }),
        );
        // Empty, refilling two a second.
        assert_eq!(
            budget.take(now, Pace::Interactive, 0.0),
            Duration::from_millis(500)
        );
        // A request still under way when the answer came is counted against it.
        let mut budget = Budget::new(now);
        budget.take(now, Pace::Interactive, 0.0);
        budget.take(now, Pace::Interactive, 0.0);
        budget.answered(
            now,
            Some(RateLimit {
                limit: 3600,
                remaining: 1,
                reset: None,
            }),
        );
        assert_eq!(
            budget.take(now, Pace::Interactive, 0.0),
            Duration::from_secs(1),
            "the remaining one belongs to the request still under way"
        );
        // An answer without headers (or no answer) only ends the request.
        budget.answered(now, None);
        assert_eq!(budget.in_flight, 1);
    }

    /// Below the reserve, background requests go one per refill interval while
    /// people's requests still go at once.
    #[test]
    fn background_slows_down_below_the_reserve() {
        let now = Instant::now();
        let mut budget = Budget::new(now);
        for _ in 0..100 {
            assert_eq!(budget.take(now, Pace::Background, 0.0), Duration::ZERO);
        }
        budget.answered(
            now,
            Some(RateLimit {
                limit: 3600,
                remaining: 300,
                reset: None,
            }),
        );
        let waits: Vec<Duration> = (0..3)
            .map(|_| budget.take(now, Pace::Background, 0.0))
            .collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
        assert_eq!(budget.take(now, Pace::Interactive, 0.0), Duration::ZERO);
        // Above the reserve again (refilled), background goes at once.
        let later = now + Duration::from_secs(600);
        assert_eq!(budget.take(later, Pace::Background, 0.0), Duration::ZERO);
    }

    /// A 429 holds every caller of the token until the reset, each with its jitter.
    #[test]
    fn a_429_holds_the_token() {
        let now = Instant::now();
        let mut budget = Budget::new(now);
        budget.take(now, Pace::Interactive, 0.0);
        budget.answered(
            now,
            Some(RateLimit {
                limit: 3600,
                remaining: 0,
                reset: None,
            }),
        );
        budget.hold(now + Duration::from_secs(30));
        let soon = now + Duration::from_secs(10);
        assert_eq!(
            budget.take(soon, Pace::Interactive, 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            budget.take(soon, Pace::Interactive, 1.0),
            Duration::from_secs(22)
        );
        let after = now + Duration::from_secs(31);
        assert_eq!(budget.take(after, Pace::Interactive, 0.0), Duration::ZERO);
    }
}
