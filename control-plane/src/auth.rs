//! Authentication: logins with throttling, server-side sessions, CSRF tokens and API
//! bearer tokens.
//!
//! * Sessions: a random 256-bit id in an HttpOnly, SameSite=Lax cookie (Secure behind
//!   TLS); the store keeps only its SHA-256, with idle and absolute expiry. A login
//!   always creates a new id.
//! * CSRF: each session has its own random token that every state-changing form
//!   carries; before login, the token is a MAC of a random pre-session cookie.
//! * API tokens: `dsa_…`, shown once, stored as SHA-256; listed (never the secret) and
//!   revoked by their owner or an admin, every revocation audited; `last_used_at` is
//!   written at most once a minute per token, so busy tokens cost no write per request.
//! * Throttling ([`Throttle`]): after [`MAX_FAILURES`] failed logins for a username
//!   from one client network, or [`MAX_FAILURES_PER_NETWORK`] from one network over all
//!   usernames, that key waits a delay that doubles with each further failure. Nothing
//!   is keyed by username alone, so nobody can keep a person out from elsewhere.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult, Kind};
use crate::policy::Subject;
use crate::secrets::{self, Keys};
use crate::store::{Read, Record, Writer};
use crate::users::{self, User};

/// The session cookie.
pub const SESSION_COOKIE: &str = "dsv_session";
/// The pre-login cookie that anonymous CSRF tokens are bound to.
pub const PRE_COOKIE: &str = "dsv_pre";
/// Failed logins for one username from one network before the first delay.
pub const MAX_FAILURES: u32 = 5;
/// Failed logins (over all usernames) or refused enrollments from one network before
/// the first delay: higher, since many people may share a network or an address.
pub const MAX_FAILURES_PER_NETWORK: u32 = 20;
const API_TOKEN_INDEX: &str = "api_token_by_hash";

/// A server-side session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 of the cookie value.
    pub id: String,
    pub user_id: String,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub ip: Option<String>,
}

impl Record for Session {
    const TABLE: &'static str = "sessions";
    fn id(&self) -> &str {
        &self.id
    }
}

/// An API bearer token (only its hash is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub hash: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// When the token last authenticated a request, within [`LAST_USED_RESOLUTION_SECONDS`].
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// How stale a token's `last_used_at` may be before a request writes it again: at most
/// one store write per token in this many seconds, however busy the token is.
pub const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

/// What the API and pages show of a token: never its secret or hash.
#[derive(Debug, Clone, Serialize)]
pub struct ApiTokenView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&ApiToken> for ApiTokenView {
    fn from(t: &ApiToken) -> ApiTokenView {
        ApiTokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
        }
    }
}

impl Record for ApiToken {
    const TABLE: &'static str = "api_tokens";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
}

/// Checks a username and password; returns the active user.
pub fn check_login(r: &impl Read, username: &str, password: &str) -> AppResult<User> {
    let user = users::by_username(r, username.trim())?;
    match user {
        Some(u) if users::verify_password(password, &u.password_hash) => {
            if !u.active {
                return Err(AppError::new(
                    Kind::Unauthenticated,
                    "this account is deactivated",
                ));
            }
            Ok(u)
        }
        Some(_) => Err(AppError::new(
            Kind::Unauthenticated,
            "wrong username or password",
        )),
        None => {
            // Spend the same time as a real check, so timing does not reveal usernames.
            users::verify_password(password, users::dummy_hash());
            Err(AppError::new(
                Kind::Unauthenticated,
                "wrong username or password",
            ))
        }
    }
}

/// Creates a session for a user; returns the cookie value (the only copy of the id).
pub fn create_session(
    w: &mut Writer,
    user: &User,
    actor: &Actor,
) -> anyhow::Result<(String, Session)> {
    let cookie = secrets::random_token(32);
    let now = Utc::now();
    let session = Session {
        id: secrets::hash_secret(&cookie),
        user_id: user.id.clone(),
        csrf: secrets::random_token(24),
        created_at: now,
        last_seen: now,
        ip: actor.ip.clone(),
    };
    w.put(&session)?;
    audit::record(
        w,
        actor,
        "session.login",
        &format!("user:{}", user.username),
        "",
    )?;
    Ok((cookie, session))
}

/// A signed-in caller as [`session_from_cookie`] finds them.
pub struct SignedIn {
    pub session: Session,
    pub user: User,
    pub subject: Subject,
    /// Their unread notifications (the page shell's badge), when asked for.
    pub unread: Option<usize>,
}

/// Looks up a session cookie; `None` when unknown or expired. Refreshes `last_seen`
/// at most once a minute so reads do not turn into writes. The session, its user, what
/// the user may do and, with `badge`, their unread notifications come from one read
/// (every request asks this first; on PostgreSQL a read is a round trip). Requests that
/// render no page shell (the API) leave `badge` off and the count unread.
pub fn session_from_cookie(
    store: &crate::store::Store,
    cookie: &str,
    policy: SessionPolicy,
    now: DateTime<Utc>,
    badge: bool,
) -> anyhow::Result<Option<SignedIn>> {
    let id = secrets::hash_secret(cookie);
    let found = store.read(|r| {
        let Some(session) = r.get::<Session>(&id)? else {
            return Ok(None);
        };
        // The user, their grants and unread count: one round trip on PostgreSQL.
        let mut ahead = users::subject_ahead(&session.user_id);
        if badge {
            ahead = crate::notifications::unread_ahead(ahead, &session.user_id);
        }
        r.read_ahead(&ahead)?;
        let Some(user) = r.get::<User>(&session.user_id)? else {
            return Ok(None);
        };
        let subject = users::subject(r, &user)?;
        let unread = if badge {
            Some(crate::notifications::unread_count(r, &user.id)?)
        } else {
            None
        };
        Ok(Some(SignedIn {
            session,
            user,
            subject,
            unread,
        }))
    })?;
    let Some(mut found) = found else {
        return Ok(None);
    };
    let session = &mut found.session;
    let expired =
        now - session.last_seen > policy.idle || now - session.created_at > policy.absolute;
    if expired || !found.user.active {
        store.write(|w| w.delete::<Session>(&id).map(|_| ()))?;
        return Ok(None);
    }
    if now - session.last_seen > Duration::minutes(1) {
        session.last_seen = now;
        store.put(&*session)?;
    }
    Ok(Some(found))
}

/// Ends a session.
pub fn end_session(w: &mut Writer, cookie: &str) -> anyhow::Result<()> {
    w.delete::<Session>(&secrets::hash_secret(cookie))?;
    Ok(())
}

/// Removes every session of a user (after deactivation or a password reset).
pub fn end_sessions_of(w: &mut Writer, user_id: &str) -> anyhow::Result<()> {
    let sessions: Vec<Session> = w.list()?;
    for s in sessions.iter().filter(|s| s.user_id == user_id) {
        w.delete::<Session>(&s.id)?;
    }
    Ok(())
}

/// The CSRF token of an anonymous visitor, bound to their pre-session cookie.
pub fn anonymous_csrf(keys: &Keys, pre_cookie: &str) -> String {
    keys.sign(&format!("csrf:{pre_cookie}"))
}

/// Creates an API token for a user; returns the token text (shown once).
pub fn create_api_token(
    w: &mut Writer,
    actor: &Actor,
    user: &User,
    name: &str,
) -> anyhow::Result<String> {
    let token = format!("dsa_{}", secrets::random_token(32));
    let hash = secrets::hash_secret(&token);
    let record = ApiToken {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user.id.clone(),
        hash: hash.clone(),
        name: name.to_string(),
        created_at: Utc::now(),
        last_used_at: None,
    };
    w.put(&record)?;
    w.index_put(API_TOKEN_INDEX, &hash, &record.id)?;
    audit::record(
        w,
        actor,
        "apitoken.create",
        &format!("user:{}", user.username),
        name.to_string(),
    )?;
    Ok(token)
}

/// The active user a bearer token belongs to, and what they may do (one read).
/// Records that the token was used, at most once per
/// [`LAST_USED_RESOLUTION_SECONDS`]; a failed record is logged, never a refused
/// request.
pub fn api_token_user(
    store: &crate::store::Store,
    token: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(User, Subject)>> {
    if !token.starts_with("dsa_") || token.len() > 100 {
        return Ok(None);
    }
    let hash = secrets::hash_secret(token);
    let found = store.read(|r| {
        let Some(id) = r.index_get(API_TOKEN_INDEX, &hash)? else {
            return Ok(None);
        };
        let Some(record) = r.get::<ApiToken>(&id)? else {
            return Ok(None);
        };
        r.read_ahead(&users::subject_ahead(&record.user_id))?;
        let Some(user) = r.get::<User>(&record.user_id)?.filter(|u| u.active) else {
            return Ok(None);
        };
        let subject = users::subject(r, &user)?;
        Ok(Some((record, user, subject)))
    })?;
    let Some((record, user, subject)) = found else {
        return Ok(None);
    };
    let stale = record
        .last_used_at
        .is_none_or(|at| now - at >= Duration::seconds(LAST_USED_RESOLUTION_SECONDS));
    if stale {
        let touched = store.write(|w| {
            // Re-read: the token may have been revoked since.
            if let Some(mut current) = w.get::<ApiToken>(&record.id)? {
                current.last_used_at = Some(now);
                w.put(&current)?;
            }
            Ok(())
        });
        if let Err(e) = touched {
            tracing::warn!(token = %record.id, "recording the use of an API token: {e:#}");
        }
    }
    Ok(Some((user, subject)))
}

/// The API tokens of a user, newest first.
pub fn tokens_of(r: &impl Read, user_id: &str) -> anyhow::Result<Vec<ApiToken>> {
    let mut tokens: Vec<ApiToken> = r
        .list::<ApiToken>()?
        .into_iter()
        .filter(|t| t.user_id == user_id)
        .collect();
    tokens.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(tokens)
}

/// Revokes one API token of `owner`; 404 when `owner` has no token with this id (so a
/// caller who names another user's token learns nothing). Audited.
pub fn revoke_api_token(
    w: &mut Writer,
    actor: &Actor,
    owner: &User,
    token_id: &str,
) -> AppResult<ApiToken> {
    let token = w
        .get::<ApiToken>(token_id)?
        .filter(|t| t.user_id == owner.id)
        .ok_or_else(|| AppError::not_found("API token"))?;
    delete_token(w, actor, owner, &token)?;
    Ok(token)
}

/// Revokes every API token of a user (after a password reset); how many. Each
/// revocation is audited.
pub fn revoke_api_tokens_of(w: &mut Writer, actor: &Actor, user: &User) -> anyhow::Result<usize> {
    let tokens = tokens_of(w, &user.id)?;
    for token in &tokens {
        delete_token(w, actor, user, token)?;
    }
    Ok(tokens.len())
}

fn delete_token(
    w: &mut Writer,
    actor: &Actor,
    owner: &User,
    token: &ApiToken,
) -> anyhow::Result<()> {
    w.delete::<ApiToken>(&token.id)?;
    w.index_delete(API_TOKEN_INDEX, &token.hash)?;
    audit::record(
        w,
        actor,
        "apitoken.revoke",
        &format!("user:{}", owner.username),
        format!("{} ({})", token.name, token.id),
    )?;
    Ok(())
}

/// A client network, the unit logins and enrollments are throttled by: the /24 of an
/// IPv4 address, the /64 of an IPv6 one (IPv4-mapped IPv6 addresses count as IPv4).
/// One host usually has many addresses of its network (a /64 is what one IPv6 host
/// gets), so counting exact addresses would let one attacker try from each in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    /// The first address of the network.
    base: IpAddr,
}

impl Network {
    /// The network `ip` belongs to.
    pub fn of(ip: IpAddr) -> Network {
        let base = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        };
        Network { base }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.base {
            IpAddr::V4(v4) => write!(f, "{v4}/24"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What a [`Throttle`] counts failures of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// Failed logins for one username from one network: slows down guessing one
    /// person's password without touching that person anywhere else.
    Login { username: String, network: Network },
    /// Failed logins from one network over all usernames: slows down one network
    /// guessing many people's passwords.
    LoginNetwork(Network),
    /// Refused agent enrollments from one network.
    Enroll(Network),
}

impl ThrottleKey {
    /// The keys a login attempt of `username` from `ip` counts against. The username
    /// is keyed as typed, lower-cased and cut to [`MAX_THROTTLED_USERNAME`] characters,
    /// so a huge username cannot make the throttle's memory grow.
    pub fn login(username: &str, ip: IpAddr) -> [ThrottleKey; 2] {
        let network = Network::of(ip);
        let username = username
            .trim()
            .chars()
            .take(MAX_THROTTLED_USERNAME)
            .collect::<String>()
            .to_lowercase();
        [
            ThrottleKey::Login { username, network },
            ThrottleKey::LoginNetwork(network),
        ]
    }

    /// The key an enrollment attempt from `ip` counts against.
    pub fn enroll(ip: IpAddr) -> ThrottleKey {
        ThrottleKey::Enroll(Network::of(ip))
    }

    /// Failures allowed before the first delay.
    fn free_failures(&self) -> u32 {
        match self {
            ThrottleKey::Login { .. } => MAX_FAILURES,
            ThrottleKey::LoginNetwork(_) | ThrottleKey::Enroll(_) => MAX_FAILURES_PER_NETWORK,
        }
    }

    /// What is refused, for the message.
    fn what(&self) -> &'static str {
        match self {
            ThrottleKey::Login { .. } => "logins",
            ThrottleKey::LoginNetwork(_) => "logins from your network",
            ThrottleKey::Enroll(_) => "enrollments from this network",
        }
    }
}

/// Characters of a username a throttle key keeps (usernames have at most 32).
pub const MAX_THROTTLED_USERNAME: usize = 64;
/// Entries a [`Throttle`] keeps at most; past it, forgotten entries are dropped first,
/// then those whose last failure is oldest (a flood of fresh networks can only make
/// the throttle forget, never grow without bound).
pub const MAX_THROTTLE_ENTRIES: usize = 100_000;
/// How long a key's failures are remembered after its last failure and its delay.
const FORGET_AFTER_MINUTES: i64 = 60;
/// The delay after the last free failure; each further failure doubles it.
const FIRST_DELAY_SECONDS: i64 = 60;
/// The longest delay.
const MAX_DELAY_SECONDS: i64 = 30 * 60;

/// Counts failures per [`ThrottleKey`] and answers with growing delays: after a key's
/// free failures each further failure refuses that key for [`FIRST_DELAY_SECONDS`],
/// doubling per failure up to [`MAX_DELAY_SECONDS`]; a key is forgotten an hour
/// after its last failure (and at once for a login key by a successful login).
///
/// There is no key for a username alone: failures from one network never delay the
/// same person logging in from another.
#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: DateTime<Utc>,
    locked_until: Option<DateTime<Utc>>,
}

impl Failures {
    fn forgotten(&self, now: DateTime<Utc>) -> bool {
        let quiet_since = self.locked_until.map_or(self.last, |u| u.max(self.last));
        now - quiet_since > Duration::minutes(FORGET_AFTER_MINUTES)
    }
}

/// The delay after failure number `count` of a key allowing `free` failures.
fn delay_after(count: u32, free: u32) -> Option<Duration> {
    let extra = count.checked_sub(free)?;
    let seconds = FIRST_DELAY_SECONDS
        .saturating_mul(1i64.checked_shl(extra.min(32)).unwrap_or(i64::MAX))
        .min(MAX_DELAY_SECONDS);
    Some(Duration::seconds(seconds))
}

impl Throttle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        // The map holds counters only; a panic elsewhere cannot leave it half-changed.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses when any of `keys` is delayed; says for how long.
    pub fn check(&self, keys: &[ThrottleKey], now: DateTime<Utc>) -> AppResult<()> {
        let entries = self.entries();
        for key in keys {
            if let Some(until) = entries.get(key).and_then(|f| f.locked_until) {
                if until > now {
                    let minutes = ((until - now).num_seconds() + 59) / 60;
                    return Err(AppError::new(
                        Kind::TooManyRequests,
                        format!(
                            "too many failed {}; try again in {minutes} minute{}",
                            key.what(),
                            if minutes == 1 { "" } else { "s" }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records a failure for each key; a key past its free failures is delayed.
    pub fn fail(&self, keys: &[ThrottleKey], now: DateTime<Utc>) {
        let mut entries = self.entries();
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if entry.forgotten(now) {
                entry.count = 0;
                entry.locked_until = None;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            if let Some(delay) = delay_after(entry.count, key.free_failures()) {
                entry.locked_until = Some(now + delay);
            }
        }
        if entries.len() > MAX_THROTTLE_ENTRIES {
            entries.retain(|_, f| !f.forgotten(now));
        }
        if entries.len() > MAX_THROTTLE_ENTRIES {
            let mut by_age: Vec<(DateTime<Utc>, ThrottleKey)> =
                entries.iter().map(|(k, f)| (f.last, k.clone())).collect();
            by_age.sort_by_key(|(last, _)| *last);
            let excess = entries.len() - MAX_THROTTLE_ENTRIES * 9 / 10;
            for (_, key) in by_age.into_iter().take(excess) {
                entries.remove(&key);
            }
        }
    }

    /// Clears a key after a success (a username's failures from that network after
    /// a good login).
    pub fn succeed(&self, key: &ThrottleKey) {
        self.entries().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Five failures for a username from one network delay it for a minute, then it
    /// opens again; each further failure doubles the delay up to the cap.
    #[test]
    fn throttle_delays_grow() {
        let t = Throttle::default();
        let keys = ThrottleKey::login("ann", ip("198.51.100.7"));
        let mut now = Utc::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.fail(&keys, now);
            assert!(t.check(&keys, now).is_ok());
        }
        t.fail(&keys, now);
        let err = t.check(&keys, now).unwrap_err();
        assert_eq!(err.kind, Kind::TooManyRequests);
        assert_eq!(err.message, "too many failed logins; try again in 1 minute");
        let mut expected = FIRST_DELAY_SECONDS;
        for _ in 0..8 {
            assert!(t
                .check(&keys, now + Duration::seconds(expected - 1))
                .is_err());
            now += Duration::seconds(expected);
            assert!(t.check(&keys, now).is_ok(), "open again after {expected} s");
            t.fail(&keys, now);
            expected = (expected * 2).min(MAX_DELAY_SECONDS);
        }
        assert_eq!(expected, MAX_DELAY_SECONDS);
        // An hour of quiet after the last delay forgets the failures.
        let later = now + Duration::seconds(MAX_DELAY_SECONDS) + Duration::minutes(61);
        t.fail(&keys, later);
        assert!(t.check(&keys, later).is_ok());
    }

    /// The lockout is no weapon: failures from one network delay neither the same
    /// username from another network nor other addresses' other usernames, and a
    /// good login clears that network's count for the username.
    #[test]
    fn failures_from_one_network_never_lock_out_another() {
        let t = Throttle::default();
        let now = Utc::now();
        let attacker = ThrottleKey::login("admin", ip("203.0.113.66"));
        for _ in 0..100 {
            t.fail(&attacker, now);
        }
        assert!(t.check(&attacker, now).is_err());
        let same_network = ThrottleKey::login("admin", ip("203.0.113.200"));
        assert!(
            t.check(&same_network, now).is_err(),
            "the /24 is one network"
        );
        for elsewhere in ["203.0.114.1", "::1", "2001:db8::1"] {
            let admin = ThrottleKey::login("admin", ip(elsewhere));
            assert!(t.check(&admin, now).is_ok(), "{elsewhere}");
        }
        let other = ThrottleKey::login("sohila", ip("198.51.100.1"));
        t.fail(&other, now);
        t.succeed(&other[0]);
        assert!(t.check(&other, now).is_ok());
    }

    /// The per-network count covers every address of the network: sixty tries from
    /// sixty addresses of one /24 (or one /64) are delayed like sixty from one.
    #[test]
    fn many_addresses_of_one_network_count_together() {
        for template in ["127.0.0.{}", "2001:db8:1:2::{}"] {
            let t = Throttle::default();
            let now = Utc::now();
            let mut refused = 0;
            for i in 1..=60 {
                let address = ip(&template.replace("{}", &i.to_string()));
                let keys = ThrottleKey::login(&format!("user{i}"), address);
                if t.check(&keys, now).is_err() {
                    refused += 1;
                    continue;
                }
                t.fail(&keys, now);
            }
            assert_eq!(refused, 60 - MAX_FAILURES_PER_NETWORK, "{template}");
            let enroll_throttle = Throttle::default();
            for i in 1..=60 {
                let address = ip(&template.replace("{}", &i.to_string()));
                enroll_throttle.fail(&[ThrottleKey::enroll(address)], now);
            }
            let err = enroll_throttle
                .check(
                    &[ThrottleKey::enroll(ip(&template.replace("{}", "99")))],
                    now,
                )
                .unwrap_err();
            assert!(
                err.message.contains("enrollments from this network"),
                "{}",
                err.message
            );
        }
    }

    /// Networks are the /24 of IPv4 and the /64 of IPv6; a mapped IPv4 address is
    /// its IPv4 network; a huge username is cut in the key.
    #[test]
    fn networks_and_keys() {
        assert_eq!(Network::of(ip("192.0.2.77")).to_string(), "192.0.2.0/24");
        assert_eq!(
            Network::of(ip("2001:db8:aa:bb:cc:dd:ee:ff")).to_string(),
            "2001:db8:aa:bb::/64"
        );
        assert_eq!(
            Network::of(ip("::ffff:192.0.2.9")),
            Network::of(ip("192.0.2.1"))
        );
        let [key, _] = ThrottleKey::login(&"X".repeat(100_000), ip("192.0.2.1"));
        match key {
            ThrottleKey::Login { username, .. } => {
                assert_eq!(username, "x".repeat(MAX_THROTTLED_USERNAME))
            }
            other => panic!("{other:?}"),
        }
    }

    /// The throttle's memory is bounded: a flood of networks makes it forget the
    /// oldest entries instead of growing.
    #[test]
    fn throttle_memory_is_bounded() {
        let t = Throttle::default();
        let now = Utc::now();
        for i in 0..(MAX_THROTTLE_ENTRIES as u128 + 10) {
            let address = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 64)));
            t.fail(&[ThrottleKey::enroll(address)], now);
        }
        assert!(t.entries().len() <= MAX_THROTTLE_ENTRIES);
    }

    /// Expired sessions are refused: idle and absolute limits both apply.
    #[test]
    fn sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let input = users::NewUser {
            username: Some("ann".into()),
            role: Some("admin".into()),
            ..Default::default()
        };
        let user = store
            .write(|w| {
                Ok(users::create(
                    w,
                    &Actor::cli(),
                    &input,
                    Some(users::hash_password("password1")?),
                )?)
            })
            .unwrap();
        let (cookie, _) = store
            .write(|w| create_session(w, &user, &Actor::cli()))
            .unwrap();
        let policy = SessionPolicy {
            idle: Duration::hours(1),
            absolute: Duration::hours(10),
        };
        let now = Utc::now();
        assert!(session_from_cookie(&store, &cookie, policy, now, true)
            .unwrap()
            .is_some());
        assert!(session_from_cookie(&store, "forged", policy, now, true)
            .unwrap()
            .is_none());
        assert!(
            session_from_cookie(&store, &cookie, policy, now + Duration::hours(2), true)
                .unwrap()
                .is_none()
        );
    }
}
