//! The Hetzner Cloud client: the `hcloud` crate pointed at `HETZNER_API_URL`, with
//! paging, a per-token request budget, and bounded retries with jittered backoff on
//! rate limits and the errors Hetzner calls retryable. Errors keep Hetzner's own
//! message so the person who pressed the button reads what Hetzner said.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hcloud::apis::configuration::Configuration;
use hcloud::apis::{actions_api, pricing_api, servers_api};
use hcloud::models;

/// The key `hcloud` looks its API base up by.
pub const HCLOUD_BASE: &str = "https://api.hetzner.cloud/v1";
/// Page size for lists: Hetzner's maximum.
pub const PER_PAGE: i64 = 50;
/// Hetzner's request budget per project (token) and hour.
pub const REQUESTS_PER_HOUR: f64 = 3600.0;

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
    /// Converts an `hcloud` error, reading Hetzner's error body when there is one.
    pub fn from_hcloud<T>(e: hcloud::apis::Error<T>) -> HetznerError {
        match e {
            hcloud::apis::Error::ResponseError(r) => {
                let status = r.status.as_u16();
                match serde_json::from_str::<models::ErrorResponse>(&r.content) {
                    Ok(body) => HetznerError::Api {
                        status,
                        code: body.error.code,
                        message: body.error.message,
                    },
                    Err(_) => HetznerError::Api {
                        status,
                        code: format!("http_{status}"),
                        message: r
                            .status
                            .canonical_reason()
                            .unwrap_or("error")
                            .to_lowercase(),
                    },
                }
            }
            hcloud::apis::Error::Reqwest(e) => HetznerError::Transport(e.to_string()),
            hcloud::apis::Error::Io(e) => HetznerError::Transport(e.to_string()),
            hcloud::apis::Error::Serde(e) => HetznerError::Decode(e.to_string()),
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
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
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

/// Runs `attempt` until it succeeds, fails with an error that is not retryable, or
/// `policy.max_attempts` are spent; sleeps [`backoff_delay`] between attempts.
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, HetznerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HetznerError>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() && retry + 1 < policy.max_attempts => {
                let delay = backoff_delay(policy, retry, rand::random::<f64>());
                tracing::warn!(
                    "hetzner: {what} failed ({e}); retry {} in {delay:?}",
                    retry + 1
                );
                tokio::time::sleep(delay).await;
                retry += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A token bucket per API token: every request takes one, the bucket refills at
/// Hetzner's 3600 per hour, so all of dynserv's calls with one token (syncs of
/// projects sharing the default token, power actions, provisioning) stay under it.
struct Bucket {
    tokens: f64,
    at: Instant,
}

static BUCKETS: Mutex<Option<HashMap<[u8; 32], Bucket>>> = Mutex::new(None);

/// Takes one request from the token's budget; answers how long to wait first.
fn take_budget(token: &str, now: Instant) -> Duration {
    use sha2::Digest;
    let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let mut guard = BUCKETS.lock().unwrap_or_else(|p| p.into_inner());
    let buckets = guard.get_or_insert_with(HashMap::new);
    let per_second = REQUESTS_PER_HOUR / 3600.0;
    let bucket = buckets.entry(key).or_insert(Bucket {
        tokens: REQUESTS_PER_HOUR,
        at: now,
    });
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * per_second).min(REQUESTS_PER_HOUR);
    bucket.at = now;
    bucket.tokens -= 1.0;
    if bucket.tokens >= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(-bucket.tokens / per_second)
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

/// A client for one Hetzner project (one token).
#[derive(Clone)]
pub struct Client {
    config: Configuration,
    token: String,
    pub retry: RetryPolicy,
}

impl Client {
    /// A client for `api_url` (`HETZNER_API_URL`) with a project's token.
    pub fn new(api_url: &str, token: &str) -> Result<Client, HetznerError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| HetznerError::Transport(e.to_string()))?;
        let mut config = Configuration::new();
        config.base_path_mapping.insert(
            HCLOUD_BASE.to_string(),
            api_url.trim_end_matches('/').to_string(),
        );
        config.bearer_access_token = Some(token.to_string());
        config.user_agent = Some(format!("dynserv/{}", dynserv_shared::VERSION));
        config.client = http;
        Ok(Client {
            config,
            token: token.to_string(),
            retry: RetryPolicy::default(),
        })
    }

    /// Waits for the token's request budget, then runs one call, retrying as the
    /// policy says.
    async fn call<T, F, Fut, E>(&self, what: &str, f: F) -> Result<T, HetznerError>
    where
        F: Fn(Configuration) -> Fut,
        Fut: Future<Output = Result<T, hcloud::apis::Error<E>>>,
    {
        with_retry(&self.retry, what, || {
            let config = self.config.clone();
            let fut = f(config);
            async move {
                let wait = take_budget(&self.token, Instant::now());
                if !wait.is_zero() {
                    tracing::info!("hetzner: request budget spent; waiting {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                fut.await.map_err(HetznerError::from_hcloud)
            }
        })
        .await
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
            let params = servers_api::ListServersParams {
                name: name.map(String::from),
                label_selector: label_selector.map(String::from),
                page: Some(p),
                per_page: Some(PER_PAGE),
                ..Default::default()
            };
            let answer = self
                .call("listing servers", |c| {
                    let params = params.clone();
                    async move { servers_api::list_servers(&c, params).await }
                })
                .await?;
            servers.extend(answer.servers);
            page = answer.meta.pagination.next_page.filter(|next| *next > p);
        }
        Ok(servers)
    }

    /// One server; `None` when Hetzner does not know it.
    pub async fn server(&self, id: i64) -> Result<Option<models::Server>, HetznerError> {
        let answer = self
            .call("reading a server", |c| async move {
                servers_api::get_server(&c, servers_api::GetServerParams { id }).await
            })
            .await;
        match answer {
            Ok(a) => Ok(a.server.map(|s| *s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Monthly gross prices per server type and location.
    pub async fn prices(&self) -> Result<Prices, HetznerError> {
        let pricing = self
            .call("reading prices", |c| async move {
                pricing_api::list_prices(&c).await
            })
            .await?;
        Ok(monthly_prices(&pricing))
    }

    /// Starts a power action; answers Hetzner's action.
    pub async fn power(
        &self,
        server_id: i64,
        action: PowerAction,
    ) -> Result<models::Action, HetznerError> {
        let id = server_id;
        let action = match action {
            PowerAction::PowerOn => {
                self.call("powering on", |c| async move {
                    servers_api::power_on_server(&c, servers_api::PowerOnServerParams { id })
                        .await
                        .map(|a| a.action)
                })
                .await?
            }
            PowerAction::PowerOff => {
                self.call("powering off", |c| async move {
                    servers_api::power_off_server(&c, servers_api::PowerOffServerParams { id })
                        .await
                        .map(|a| a.action)
                })
                .await?
            }
            PowerAction::Reboot => {
                self.call("rebooting", |c| async move {
                    servers_api::soft_reboot_server(&c, servers_api::SoftRebootServerParams { id })
                        .await
                        .map(|a| a.action)
                })
                .await?
            }
        };
        Ok(*action)
    }

    /// The current state of an action.
    pub async fn action(&self, id: i64) -> Result<models::Action, HetznerError> {
        let answer = self
            .call("reading an action", |c| async move {
                actions_api::get_action(&c, actions_api::GetActionParams { id }).await
            })
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
        let mut retry = 0;
        loop {
            let wait = take_budget(&self.token, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let params = servers_api::CreateServerParams {
                create_server_request: request.clone(),
            };
            match servers_api::create_server(&self.config, params).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    let e = HetznerError::from_hcloud(e);
                    if e.is_rate_limited() && retry + 1 < self.retry.max_attempts {
                        tokio::time::sleep(backoff_delay(
                            &self.retry,
                            retry,
                            rand::random::<f64>(),
                        ))
                        .await;
                        retry += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
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

    /// Backoff doubles from the base, stays within [half, full] of it, and is capped.
    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
        };
        assert_eq!(backoff_delay(&policy, 0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff_delay(&policy, 0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(&policy, 1, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff_delay(&policy, 2, 0.5), Duration::from_millis(1500));
        assert_eq!(backoff_delay(&policy, 10, 1.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(&policy, 40, 0.0), Duration::from_secs(2));
    }

    /// Retries stop after the policy's attempts, and at once on a final error.
    #[tokio::test]
    async fn retries_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(10),
        };
        let mut calls = 0;
        let result: Result<(), _> = with_retry(&policy, "test", || {
            calls += 1;
            async { Err(api(429, "rate_limit_exceeded")) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let result: Result<(), _> = with_retry(&policy, "test", || {
            calls += 1;
            async { Err(api(401, "unauthorized")) }
        })
        .await;
        assert_eq!(result, Err(api(401, "unauthorized")));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let result = with_retry(&policy, "test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 2 {
                    Err(api(502, "http_502"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(2));
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

    /// The request budget lets 3600 requests through at once, then makes callers wait.
    #[test]
    fn request_budget() {
        let now = Instant::now();
        let token = format!("budget-test-{}", rand::random::<u64>());
        for _ in 0..3600 {
            assert_eq!(take_budget(&token, now), Duration::ZERO);
        }
        assert!(take_budget(&token, now) >= Duration::from_millis(900));
        assert_eq!(
            take_budget(&format!("{token}-other"), now),
            Duration::ZERO,
            "another token has its own budget"
        );
    }
}
