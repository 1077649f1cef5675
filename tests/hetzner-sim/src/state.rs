//! The simulated Hetzner Cloud: projects (one per API token) with their servers, the
//! actions on them, the catalog of locations and server types with prices, injected
//! faults and the log of requests. Pure data: time is passed in, nothing here does I/O.
//!
//! Answers are built as JSON in the shapes of the real API (the fixtures in
//! `shared/fixtures/hetzner/`); the crate's tests read every one back through the
//! `hcloud` crate's models, which are strict about keys and enum values.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Hetzner's request budget per project and hour.
pub const RATE_LIMIT_PER_HOUR: u32 = 3600;

/// A project's request budget as Hetzner keeps it: a bucket of `limit` requests (3600)
/// that refills by a 3600th of the limit every second, one request a second by
/// default. Every answer tells it in three headers: `RateLimit-Limit` (the limit),
/// `RateLimit-Remaining` (the whole requests left) and `RateLimit-Reset` (the unix
/// second at which the bucket is full again). A request that finds it empty is
/// answered 429 `rate_limit_exceeded` and takes nothing.
#[derive(Debug, Clone)]
pub struct RateBucket {
    pub limit: u32,
    pub tokens: f64,
    /// When `tokens` was last brought up to date; `None` for a full, unused bucket.
    pub at: Option<DateTime<Utc>>,
}

impl Default for RateBucket {
    fn default() -> RateBucket {
        RateBucket {
            limit: RATE_LIMIT_PER_HOUR,
            tokens: f64::from(RATE_LIMIT_PER_HOUR),
            at: None,
        }
    }
}

/// The three `RateLimit-*` header values of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds.
    pub reset: i64,
}

impl RateBucket {
    fn per_second(&self) -> f64 {
        f64::from(self.limit) / 3600.0
    }

    fn refill(&mut self, now: DateTime<Utc>) {
        if let Some(at) = self.at {
            let elapsed = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * self.per_second()).min(f64::from(self.limit));
        }
        self.at = Some(now);
    }

    /// Takes one request; `false` when the bucket is empty.
    pub fn take(&mut self, now: DateTime<Utc>) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sets the bucket to `remaining` requests of `limit` an hour.
    pub fn set(&mut self, limit: u32, remaining: u32, now: DateTime<Utc>) {
        self.limit = limit.max(1);
        self.tokens = f64::from(remaining.min(self.limit));
        self.at = Some(now);
    }

    /// The headers as they stand at `now`.
    pub fn headers(&mut self, now: DateTime<Utc>) -> RateHeaders {
        self.refill(now);
        let missing = f64::from(self.limit) - self.tokens;
        let to_full = (missing / self.per_second()).ceil().max(0.0) as i64;
        RateHeaders {
            limit: self.limit,
            remaining: self.tokens.floor().max(0.0) as u32,
            reset: now.timestamp() + to_full,
        }
    }
}

/// One location of the catalog.
pub struct Location {
    pub id: i64,
    pub name: &'static str,
    pub description: &'static str,
    pub city: &'static str,
    pub country: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub network_zone: &'static str,
}

/// The locations the simulator knows.
pub const LOCATIONS: &[Location] = &[
    Location {
        id: 1,
        name: "fsn1",
        description: "Falkenstein DC Park 1",
        city: "Falkenstein",
        country: "DE",
        latitude: 50.47612,
        longitude: 12.370071,
        network_zone: "eu-central",
    },
    Location {
        id: 2,
        name: "nbg1",
        description: "Nuremberg DC Park 1",
        city: "Nuremberg",
        country: "DE",
        latitude: 49.452102,
        longitude: 11.076665,
        network_zone: "eu-central",
    },
    Location {
        id: 3,
        name: "hel1",
        description: "Helsinki DC Park 1",
        city: "Helsinki",
        country: "FI",
        latitude: 60.169855,
        longitude: 24.938379,
        network_zone: "eu-central",
    },
    Location {
        id: 4,
        name: "ash",
        description: "Ashburn, VA",
        city: "Ashburn, VA",
        country: "US",
        latitude: 39.045821,
        longitude: -77.487073,
        network_zone: "us-east",
    },
];

/// One server type of the catalog with its monthly net price per location (EUR).
pub struct ServerType {
    pub id: i64,
    pub name: &'static str,
    pub cores: i32,
    pub memory: f64,
    pub disk: f64,
    pub cpu_type: &'static str,
    pub prices: &'static [(&'static str, f64)],
}

/// The server types the simulator knows.
pub const SERVER_TYPES: &[ServerType] = &[
    ServerType {
        id: 104,
        name: "cx22",
        cores: 2,
        memory: 4.0,
        disk: 40.0,
        cpu_type: "shared",
        prices: &[("fsn1", 3.79), ("nbg1", 3.79), ("hel1", 3.79)],
    },
    ServerType {
        id: 105,
        name: "cpx21",
        cores: 3,
        memory: 4.0,
        disk: 80.0,
        cpu_type: "shared",
        prices: &[
            ("fsn1", 7.05),
            ("nbg1", 7.05),
            ("hel1", 7.05),
            ("ash", 7.55),
        ],
    },
    ServerType {
        id: 106,
        name: "cx32",
        cores: 4,
        memory: 8.0,
        disk: 80.0,
        cpu_type: "shared",
        prices: &[("fsn1", 6.80), ("nbg1", 6.80), ("hel1", 6.80)],
    },
    ServerType {
        id: 107,
        name: "cpx31",
        cores: 4,
        memory: 8.0,
        disk: 160.0,
        cpu_type: "shared",
        prices: &[
            ("fsn1", 13.10),
            ("nbg1", 13.10),
            ("hel1", 13.10),
            ("ash", 14.10),
        ],
    },
    ServerType {
        id: 108,
        name: "ccx13",
        cores: 2,
        memory: 8.0,
        disk: 80.0,
        cpu_type: "dedicated",
        prices: &[("fsn1", 12.49), ("nbg1", 12.49), ("ash", 13.49)],
    },
];

/// The VAT rate the simulated account pays, in percent.
pub const VAT_PERCENT: f64 = 19.0;

/// A server type by name.
pub fn server_type(name: &str) -> Option<&'static ServerType> {
    SERVER_TYPES.iter().find(|t| t.name == name)
}

/// A location by name.
pub fn location(name: &str) -> Option<&'static Location> {
    LOCATIONS.iter().find(|l| l.name == name)
}

/// The gross monthly price of a server type in a location, as the API shows it.
pub fn gross_monthly(server_type: &str, location: &str) -> Option<f64> {
    let t = self::server_type(server_type)?;
    t.prices
        .iter()
        .find(|(l, _)| *l == location)
        .map(|(_, net)| round4(net * (1.0 + VAT_PERCENT / 100.0)))
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A server in a simulated project.
#[derive(Debug, Clone, Serialize)]
pub struct SimServer {
    pub id: i64,
    pub name: String,
    pub server_type: String,
    pub location: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
    /// `running`, `off`, `initializing`, …
    pub status: String,
    pub locked: bool,
    pub user_data: Option<String>,
}

/// What an action does to its server when it finishes.
#[derive(Debug, Clone, Serialize)]
pub struct SimAction {
    pub id: i64,
    pub command: String,
    pub server_id: i64,
    pub started: DateTime<Utc>,
    pub finishes: DateTime<Utc>,
    /// The server's status once the action succeeded.
    pub target_status: Option<String>,
    /// `Some((code, message))` makes the action end in `error`.
    pub fails_with: Option<(String, String)>,
    pub applied: bool,
}

/// A planned misbehaviour: after `skip` more API requests, answer the next `times`
/// requests with `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub skip: u32,
    #[serde(default = "one")]
    pub times: u32,
    /// Only requests whose path starts with this (`/v1/servers`), when set.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only requests with this method (`POST`), when set.
    #[serde(default)]
    pub method: Option<String>,
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

/// How a faulty request is answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// 429 `rate_limit_exceeded` with `RateLimit-Remaining: 0`, as when another client
    /// of the token emptied the bucket: `RateLimit-Reset` is `reset_secs` ahead, by
    /// default the hour an empty bucket takes to fill again.
    RateLimit {
        #[serde(default)]
        reset_secs: Option<u32>,
    },
    /// The request is carried out, but the answer is lost: the client gets this
    /// error instead (a gateway timeout after the server was created, say).
    ErrorAfterProcessing {
        status: u16,
        code: String,
        message: String,
    },
    /// Any status with Hetzner's error body.
    Error {
        status: u16,
        code: String,
        message: String,
    },
}

/// One logged API request.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// When the request arrived.
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

/// A simulated Hetzner project, reached with its token.
#[derive(Debug, Default)]
pub struct Project {
    pub servers: BTreeMap<i64, SimServer>,
    /// The project's request budget, for `RateLimit-*` and 429s.
    pub rate: RateBucket,
}

/// The whole simulated cloud.
pub struct State {
    pub projects: HashMap<String, Project>,
    pub actions: BTreeMap<i64, SimAction>,
    pub faults: VecDeque<Fault>,
    pub log: Vec<LoggedRequest>,
    /// How long actions run before they succeed.
    pub action_duration: Duration,
    /// Answer server lists as if `label_selector` were not given (a misbehaving API,
    /// for the test that a lookup by label never adopts an unrelated server).
    pub ignore_label_selector: bool,
    next_server_id: i64,
    next_action_id: i64,
}

/// An API error: status, Hetzner code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The body Hetzner answers errors with (see `error_invalid_input.json`).
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "details": {}}})
    }
}

/// What it takes to put a server into a project.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewServer {
    pub name: String,
    #[serde(default)]
    pub server_type: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub user_data: Option<String>,
}

impl State {
    pub fn new(action_duration: Duration) -> State {
        State {
            projects: HashMap::new(),
            actions: BTreeMap::new(),
            faults: VecDeque::new(),
            log: Vec::new(),
            action_duration,
            ignore_label_selector: false,
            next_server_id: 1000,
            next_action_id: 5000,
        }
    }

    /// Applies finished actions to their servers.
    pub fn advance(&mut self, now: DateTime<Utc>) {
        for action in self.actions.values_mut() {
            if action.applied || now < action.finishes {
                continue;
            }
            action.applied = true;
            if action.fails_with.is_some() {
                continue;
            }
            if let Some(target) = &action.target_status {
                for p in self.projects.values_mut() {
                    if let Some(s) = p.servers.get_mut(&action.server_id) {
                        s.status = target.clone();
                    }
                }
            }
        }
    }

    /// Adds a server directly (as if made in Hetzner's console); answers its id.
    pub fn add_server(&mut self, token: &str, input: &NewServer) -> Result<i64, ApiError> {
        let server_type = input.server_type.clone().unwrap_or_else(|| "cx22".into());
        if self::server_type(&server_type).is_none() {
            return Err(ApiError::new(
                400,
                "invalid_input",
                format!("unknown server type \"{server_type}\""),
            ));
        }
        let location = input.location.clone().unwrap_or_else(|| "fsn1".into());
        if self::location(&location).is_none() {
            return Err(ApiError::new(
                400,
                "invalid_input",
                format!("unknown location \"{location}\""),
            ));
        }
        let name = input.name.trim().to_string();
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_name {
            return Err(ApiError::new(
                400,
                "invalid_input",
                "invalid input in field 'name': must be a valid hostname",
            ));
        }
        let project = self.projects.entry(token.to_string()).or_default();
        if project.servers.values().any(|s| s.name == name) {
            return Err(ApiError::new(
                409,
                "uniqueness_error",
                "server name is already used",
            ));
        }
        self.next_server_id += 1;
        let id = self.next_server_id;
        project.servers.insert(
            id,
            SimServer {
                id,
                name,
                server_type,
                location,
                image: input.image.clone().unwrap_or_else(|| "ubuntu-24.04".into()),
                labels: input.labels.clone(),
                created: Utc::now(),
                status: input.status.clone().unwrap_or_else(|| "running".into()),
                locked: false,
                user_data: input.user_data.clone(),
            },
        );
        Ok(id)
    }

    /// Starts an action on a server.
    pub fn start_action(
        &mut self,
        command: &str,
        server_id: i64,
        target_status: Option<&str>,
        now: DateTime<Utc>,
    ) -> i64 {
        self.next_action_id += 1;
        let id = self.next_action_id;
        self.actions.insert(
            id,
            SimAction {
                id,
                command: command.to_string(),
                server_id,
                started: now,
                finishes: now + self.action_duration,
                target_status: target_status.map(String::from),
                fails_with: None,
                applied: false,
            },
        );
        id
    }

    /// The server of a project by id.
    pub fn server_mut(&mut self, token: &str, id: i64) -> Option<&mut SimServer> {
        self.projects.get_mut(token)?.servers.get_mut(&id)
    }

    /// Takes the fault that applies to this request, if any.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<FaultKind> {
        let index = self.faults.iter().position(|f| {
            f.path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let fault = &mut self.faults[index];
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        let kind = fault.kind.clone();
        fault.times = fault.times.saturating_sub(1);
        if fault.times == 0 {
            self.faults.remove(index);
        }
        Some(kind)
    }
}

// ---- JSON in the API's shapes ----

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn price(net: f64) -> Value {
    let gross = net * (1.0 + VAT_PERCENT / 100.0);
    json!({"net": format!("{net:.4}"), "gross": format!("{gross:.4}")})
}

fn location_json(l: &Location) -> Value {
    json!({
        "id": l.id, "name": l.name, "description": l.description, "city": l.city,
        "country": l.country, "latitude": l.latitude, "longitude": l.longitude,
        "network_zone": l.network_zone,
    })
}

fn prices_json(t: &ServerType) -> Vec<Value> {
    t.prices
        .iter()
        .map(|(loc, net)| {
            json!({
                "location": loc,
                "price_hourly": price(net / 730.0),
                "price_monthly": price(*net),
                "included_traffic": 21_990_232_555_520_i64,
                "price_per_tb_traffic": price(1.0),
            })
        })
        .collect()
}

/// A server type as `GET /server_types` shows it.
pub fn server_type_json(t: &ServerType) -> Value {
    let locations: Vec<Value> = t
        .prices
        .iter()
        .filter_map(|(loc, _)| location(loc))
        .map(|l| json!({"id": l.id, "name": l.name, "deprecation": null}))
        .collect();
    json!({
        "id": t.id, "name": t.name, "description": t.name.to_uppercase(),
        "cores": t.cores, "memory": t.memory, "disk": t.disk, "deprecated": false,
        "prices": prices_json(t), "storage_type": "local", "cpu_type": t.cpu_type,
        "architecture": "x86", "locations": locations,
    })
}

/// The pricing of the whole catalog as `GET /pricing` shows it.
pub fn pricing_json() -> Value {
    let server_types: Vec<Value> = SERVER_TYPES
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "prices": prices_json(t)}))
        .collect();
    json!({"pricing": {
        "currency": "EUR",
        "vat_rate": format!("{VAT_PERCENT:.2}"),
        "image": {"price_per_gb_month": price(0.0119)},
        "floating_ip": {"price_monthly": price(3.0)},
        "floating_ips": [{"type": "ipv4", "prices": [{"location": "fsn1", "price_monthly": price(3.0)}]}],
        "primary_ips": [{"type": "ipv4", "prices": [{"location": "fsn1", "price_hourly": price(0.0008), "price_monthly": price(0.5)}]}],
        "load_balancer_types": [],
        "server_backup": {"percentage": "20.00"},
        "server_types": server_types,
        "volume": {"price_per_gb_month": price(0.044)},
    }})
}

fn os_flavor(image: &str) -> &'static str {
    [
        "ubuntu", "debian", "fedora", "centos", "rocky", "alma", "opensuse",
    ]
    .into_iter()
    .find(|f| image.starts_with(f))
    .unwrap_or("unknown")
}

/// A server as `GET /servers/{id}` shows it.
pub fn server_json(s: &SimServer) -> Value {
    let t = server_type(&s.server_type).unwrap_or(&SERVER_TYPES[0]);
    let l = location(&s.location).unwrap_or(&LOCATIONS[0]);
    let ipv4 = format!("198.18.{}.{}", (s.id / 256) % 256, s.id % 256);
    let ipv6 = format!("2001:db8:{:x}::/64", s.id);
    let image_version = s.image.split('-').nth(1).map(String::from);
    json!({
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "created": rfc3339(s.created),
        "public_net": {
            "ipv4": {"ip": ipv4, "blocked": false, "dns_ptr": format!("static.{}.clients.your-server.de", ipv4)},
            "ipv6": {"ip": ipv6, "blocked": false, "dns_ptr": []},
            "floating_ips": [],
            "firewalls": [],
        },
        "private_net": [],
        "server_type": server_type_json(t),
        "datacenter": {
            "id": l.id, "name": format!("{}-dc1", l.name), "description": format!("{} DC 1", l.city),
            "location": location_json(l),
            "server_types": {"supported": [t.id], "available": [t.id], "available_for_migration": [t.id]},
        },
        "location": location_json(l),
        "image": {
            "id": 67_794_396, "type": "system", "status": "available", "name": s.image,
            "description": s.image, "image_size": null, "disk_size": 5, "created": "2024-04-25T00:00:00Z",
            "created_from": null, "bound_to": null, "os_flavor": os_flavor(&s.image),
            "os_version": image_version, "rapid_deploy": true, "protection": {"delete": false},
            "deprecated": null, "deleted": null, "labels": {}, "architecture": "x86",
        },
        "iso": null,
        "rescue_enabled": false,
        "locked": s.locked,
        "backup_window": null,
        "outgoing_traffic": 0,
        "ingoing_traffic": 0,
        "included_traffic": 21_990_232_555_520_i64,
        "protection": {"delete": false, "rebuild": false},
        "labels": s.labels,
        "volumes": [],
        "load_balancers": [],
        "primary_disk_size": t.disk as i64,
        "placement_group": null,
    })
}

/// An action as `GET /actions/{id}` shows it, at `now`.
pub fn action_json(a: &SimAction, now: DateTime<Utc>) -> Value {
    let done = now >= a.finishes;
    let total = (a.finishes - a.started).num_milliseconds().max(1);
    let elapsed = (now - a.started).num_milliseconds().clamp(0, total);
    let (status, error) = match (&a.fails_with, done) {
        (_, false) => ("running", Value::Null),
        (None, true) => ("success", Value::Null),
        (Some((code, message)), true) => ("error", json!({"code": code, "message": message})),
    };
    json!({
        "id": a.id,
        "command": a.command,
        "status": status,
        "progress": if done { 100 } else { elapsed * 100 / total },
        "started": rfc3339(a.started),
        "finished": if done { Value::String(rfc3339(a.finishes)) } else { Value::Null },
        "resources": [{"id": a.server_id, "type": "server"}],
        "error": error,
    })
}

/// `meta.pagination` of a list page.
pub fn pagination(page: usize, per_page: usize, total: usize) -> Value {
    let last_page = total.div_ceil(per_page).max(1);
    json!({"pagination": {
        "page": page,
        "per_page": per_page,
        "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
        "next_page": if page < last_page { json!(page + 1) } else { Value::Null },
        "last_page": last_page,
        "total_entries": total,
    }})
}

/// Whether a server matches a label selector (`k=v`, `k!=v`, `k`, `!k`, comma-joined).
pub fn matches_selector(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label selectors match the way Hetzner documents them.
    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        assert!(matches_selector(&labels, "env=prod"));
        assert!(matches_selector(&labels, "env==prod"));
        assert!(matches_selector(&labels, "env"));
        assert!(!matches_selector(&labels, "env!=prod"));
        assert!(!matches_selector(&labels, "!env"));
        assert!(!matches_selector(&labels, "env=dev"));
        assert!(matches_selector(&labels, ""));
    }

    /// Pagination points at the next page until the last.
    #[test]
    fn pages() {
        let p = pagination(1, 50, 120);
        assert_eq!(p["pagination"]["next_page"], 2);
        assert_eq!(p["pagination"]["last_page"], 3);
        let p = pagination(3, 50, 120);
        assert!(p["pagination"]["next_page"].is_null());
    }

    /// A fault waits for its skipped requests, then fires its number of times.
    #[test]
    fn faults_skip_then_fire() {
        let mut state = State::new(Duration::seconds(1));
        state.faults.push_back(Fault {
            skip: 1,
            times: 2,
            path_prefix: None,
            method: None,
            kind: FaultKind::RateLimit { reset_secs: None },
        });
        assert!(state.take_fault("GET", "/v1/servers").is_none());
        assert!(state.take_fault("GET", "/v1/servers").is_some());
        assert!(state.take_fault("GET", "/v1/servers").is_some());
        assert!(state.take_fault("GET", "/v1/servers").is_none());
    }

    /// The budget works as Hetzner documents it: 3600 requests at once, then one more
    /// each second; `RateLimit-Reset` is when the bucket is full again, and an empty
    /// bucket refuses without taking.
    #[test]
    fn rate_bucket_refills_one_a_second() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut bucket = RateBucket::default();
        assert_eq!(
            bucket.headers(t0),
            RateHeaders {
                limit: 3600,
                remaining: 3600,
                reset: t0.timestamp()
            }
        );
        for _ in 0..3600 {
            assert!(bucket.take(t0));
        }
        assert!(!bucket.take(t0), "empty");
        assert_eq!(
            bucket.headers(t0),
            RateHeaders {
                limit: 3600,
                remaining: 0,
                reset: t0.timestamp() + 3600
            }
        );
        let later = t0 + Duration::milliseconds(2500);
        assert!(bucket.take(later));
        assert!(bucket.take(later));
        assert!(!bucket.take(later), "two came back in 2.5 s");
        let h = bucket.headers(later);
        assert_eq!((h.remaining, h.reset), (0, later.timestamp() + 3600));
        bucket.set(3600, 3590, later);
        assert_eq!(bucket.headers(later).reset, later.timestamp() + 10);
    }
}
