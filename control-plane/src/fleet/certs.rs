//! Agent certificate lifetimes and their renewal over the agent's connection.
//!
//! An agent certificate is valid for [`CertPolicy::lifetime_days`] (90 by default,
//! `agent_cert_days` in the configuration). Once two thirds of that have passed, the
//! gateway issues a new certificate for the key the agent already holds and sends it on
//! the control stream (protocol 2 and later); the agent stores it and answers with its
//! fingerprint, and only then does the agent record switch to it, keeping the old
//! fingerprint accepted until the agent connects with the new one. An agent whose
//! certificate expired (offline past its lifetime) is refused and must enroll again
//! with a new token.
//!
//! The rules here are plain functions over times; the clock is [`CertPolicy::now`],
//! which tests move forward.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use dynserv_shared::pki::Validity;

/// Default lifetime of an agent certificate, in days.
pub const DEFAULT_CERT_DAYS: u32 = 90;
/// Longest configurable lifetime (about ten years).
pub const MAX_CERT_DAYS: u32 = 3660;

/// A clock: the current time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How long agent certificates live, and the clock the gateway judges them by.
#[derive(Clone)]
pub struct CertPolicy {
    /// Lifetime of a new certificate, in days.
    pub lifetime_days: u32,
    clock: Clock,
}

impl Default for CertPolicy {
    fn default() -> CertPolicy {
        CertPolicy {
            lifetime_days: DEFAULT_CERT_DAYS,
            clock: Arc::new(Utc::now),
        }
    }
}

impl CertPolicy {
    /// A policy with `lifetime_days` (clamped to 1..=[`MAX_CERT_DAYS`]) and the system
    /// clock.
    pub fn new(lifetime_days: u32) -> CertPolicy {
        CertPolicy {
            lifetime_days: lifetime_days.clamp(1, MAX_CERT_DAYS),
            ..CertPolicy::default()
        }
    }

    /// The same policy judged by another clock (tests).
    pub fn with_clock(self, clock: Clock) -> CertPolicy {
        CertPolicy { clock, ..self }
    }

    /// The current time by this policy's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The validity of a certificate issued now, and when it expires.
    pub fn validity(&self) -> (Validity, DateTime<Utc>) {
        let validity = Validity::days_from(self.now().timestamp(), i64::from(self.lifetime_days));
        let expires = Utc
            .timestamp_opt(validity.not_after_unix(), 0)
            .single()
            .unwrap_or_else(Utc::now);
        (validity, expires)
    }

    /// Whether a certificate expiring at `expires_at` is due for renewal: a third of
    /// the lifetime or less remains (or it predates lifetimes: `None`).
    pub fn renewal_due(&self, expires_at: Option<DateTime<Utc>>) -> bool {
        match expires_at {
            None => true,
            Some(expires_at) => {
                let remaining = expires_at - self.now();
                remaining <= Duration::days(i64::from(self.lifetime_days)) / 3
            }
        }
    }

    /// Whether a certificate expiring at `expires_at` has expired.
    pub fn expired(&self, expires_at: Option<DateTime<Utc>>) -> bool {
        expires_at.is_some_and(|at| at <= self.now())
    }
}

/// Why an agent with an expired certificate is refused, and what to do.
pub fn expired_reason(expires_at: DateTime<Utc>) -> String {
    format!(
        "this agent's certificate expired at {}: it was offline too long to renew it; \
         enroll it again with a new token: stop dynserv-agent, remove its state directory \
         and run `dynserv-agent enroll --server HOST:PORT --token TOKEN` with a token from \
         the Agents page",
        expires_at.format("%Y-%m-%d %H:%M UTC")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn policy_at(now: &'static str) -> CertPolicy {
        CertPolicy::new(90).with_clock(Arc::new(move || at(now)))
    }

    /// A new certificate lives the configured days (to the next midnight); it is due
    /// for renewal once a third of that remains, expired after it, and one from before
    /// lifetimes is renewed at once.
    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let policy = policy_at("2026-01-10T12:00:00Z");
        let (_, expires) = policy.validity();
        assert_eq!(expires, at("2026-04-11T00:00:00Z"));
        assert!(!policy.renewal_due(Some(expires)));
        assert!(policy_at("2026-03-12T00:00:00Z").renewal_due(Some(expires)));
        assert!(!policy_at("2026-03-11T00:00:00Z").renewal_due(Some(expires)));
        assert!(!policy_at("2026-04-10T23:59:00Z").expired(Some(expires)));
        assert!(policy_at("2026-04-11T00:00:00Z").expired(Some(expires)));
        assert!(policy.renewal_due(None));
        assert!(!policy.expired(None));
    }
}
