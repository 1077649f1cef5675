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
//! * Throttling: after [`MAX_FAILURES`] failed logins for a username or from an address
//!   within the window, further attempts are refused until the lock ends.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult, Kind};
use crate::secrets::{self, Keys};
use crate::store::{Read, Record, Writer};
use crate::users::{self, User};

/// The session cookie.
pub const SESSION_COOKIE: &str = "dsv_session";
/// The pre-login cookie that anonymous CSRF tokens are bound to.
pub const PRE_COOKIE: &str = "dsv_pre";
/// Failed logins for one username within [`FAILURE_WINDOW_MINUTES`] before a lock.
pub const MAX_FAILURES: u32 = 5;
/// Failed logins from one address (over all usernames) before a lock: higher, since
/// many people may share an address behind NAT.
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
const FAILURE_WINDOW_MINUTES: i64 = 15;
const LOCK_MINUTES: i64 = 5;
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

/// Looks up a session cookie; `None` when unknown or expired. Refreshes `last_seen`
/// at most once a minute so reads do not turn into writes.
pub fn session_from_cookie(
    store: &crate::store::Store,
    cookie: &str,
    policy: SessionPolicy,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(Session, User)>> {
    let id = secrets::hash_secret(cookie);
    let found = store.read(|r| {
        let Some(session) = r.get::<Session>(&id)? else {
            return Ok(None);
        };
        let user = r.get::<User>(&session.user_id)?;
        Ok(user.map(|u| (session, u)))
    })?;
    let Some((mut session, user)) = found else {
        return Ok(None);
    };
    let expired =
        now - session.last_seen > policy.idle || now - session.created_at > policy.absolute;
    if expired || !user.active {
        store.write(|w| w.delete::<Session>(&id).map(|_| ()))?;
        return Ok(None);
    }
    if now - session.last_seen > Duration::minutes(1) {
        session.last_seen = now;
        store.put(&session)?;
    }
    Ok(Some((session, user)))
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

/// The active user a bearer token belongs to. Records that the token was used, at most
/// once per [`LAST_USED_RESOLUTION_SECONDS`]; a failed record is logged, never a
/// refused request.
pub fn api_token_user(
    store: &crate::store::Store,
    token: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<User>> {
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
        let user = r.get::<User>(&record.user_id)?.filter(|u| u.active);
        Ok(user.map(|u| (record, u)))
    })?;
    let Some((record, user)) = found else {
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
    Ok(Some(user))
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

/// Counts failures per key: failed logins as `user:NAME` (locks after [`MAX_FAILURES`])
/// and `ip:ADDR`, refused agent enrollments as `enroll:ADDR` (both after
/// [`MAX_FAILURES_PER_ADDRESS`]).
#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: DateTime<Utc>,
    locked_until: Option<DateTime<Utc>>,
}

impl Throttle {
    /// Refuses when `key` is locked; says until when.
    pub fn check(&self, keys: &[String], now: DateTime<Utc>) -> AppResult<()> {
        let entries = self.entries.lock().expect("throttle lock");
        for key in keys {
            if let Some(until) = entries.get(key).and_then(|f| f.locked_until) {
                if until > now {
                    let minutes = ((until - now).num_seconds() + 59) / 60;
                    let what = if key.starts_with("enroll:") {
                        "enrollments from this address"
                    } else {
                        "logins"
                    };
                    return Err(AppError::new(
                        Kind::TooManyRequests,
                        format!(
                            "too many failed {what}; try again in {minutes} minute{}",
                            if minutes == 1 { "" } else { "s" }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records a failure for each key; locks a key at the limit.
    pub fn fail(&self, keys: &[String], now: DateTime<Utc>) {
        let mut entries = self.entries.lock().expect("throttle lock");
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert(Failures {
                count: 0,
                first: now,
                locked_until: None,
            });
            if now - entry.first > Duration::minutes(FAILURE_WINDOW_MINUTES) {
                *entry = Failures {
                    count: 0,
                    first: now,
                    locked_until: None,
                };
            }
            entry.count += 1;
            let limit = if key.starts_with("ip:") || key.starts_with("enroll:") {
                MAX_FAILURES_PER_ADDRESS
            } else {
                MAX_FAILURES
            };
            if entry.count >= limit {
                entry.locked_until = Some(now + Duration::minutes(LOCK_MINUTES));
                entry.count = 0;
                entry.first = now;
            }
        }
        // Keep the map small: forget entries whose window and lock are over.
        if entries.len() > 10_000 {
            entries.retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now)
                    || now - f.first < Duration::minutes(FAILURE_WINDOW_MINUTES)
            });
        }
    }

    /// Clears a username's failures after a successful login.
    pub fn succeed(&self, key: &str) {
        self.entries.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five failures lock the key for five minutes, then it opens again.
    #[test]
    fn throttle_locks_and_unlocks() {
        let t = Throttle::default();
        let keys = vec!["user:a".to_string()];
        let now = Utc::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.fail(&keys, now);
            assert!(t.check(&keys, now).is_ok());
        }
        t.fail(&keys, now);
        let err = t.check(&keys, now).unwrap_err();
        assert_eq!(err.kind, Kind::TooManyRequests);
        assert!(t.check(&keys, now + Duration::minutes(6)).is_ok());
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
        assert!(session_from_cookie(&store, &cookie, policy, now)
            .unwrap()
            .is_some());
        assert!(session_from_cookie(&store, "forged", policy, now)
            .unwrap()
            .is_none());
        assert!(
            session_from_cookie(&store, &cookie, policy, now + Duration::hours(2))
                .unwrap()
                .is_none()
        );
    }
}
