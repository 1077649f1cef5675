//! Off-site storage of backups: each project's S3-compatible storage settings (sealed:
//! the secret key and the project's backup key never leave the control plane except
//! inside a job for that project's agent), their "Test", the retry of failed uploads
//! and the retention of off-site copies.
//!
//! The agent does the uploads, verifies and restores ([`dynserv_agent::offsite`]):
//! a dump never passes through the control plane. The control plane tests settings,
//! lists and deletes objects (retention) with the same client.
//!
//! A project without settings of its own uses the default storage (the record
//! [`DEFAULT_ID`], set by those who may create projects), with a key of its own derived
//! from the default's (HKDF-SHA256 over the project id), so no two projects share one.
//!
//! Tables: `project_offsite` ([`ProjectOffsite`], keyed by project id or [`DEFAULT_ID`],
//! **sealed**);
//! index `backup_offsite_retry` (`<when, sortable>/<backup id>`: failed uploads waiting
//! for their next attempt), kept by `backups::save`.
//!
//! **Invariant:** a backup's off-site copy is `done` only when the agent reported that
//! the storage lists the object with the size and checksum it sent; anything else is
//! `pending`, `uploading` or `failed` with the storage's own message.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::projects::Project;
use crate::store::{Read, Record, Writer};
use dynserv_shared::proto::OffsiteTarget;

/// Off-site copies kept per day, week and month when the project sets no number.
pub const DEFAULT_RETENTION: Retention = Retention {
    daily: 7,
    weekly: 4,
    monthly: 12,
};
/// The id of the default storage's record.
pub const DEFAULT_ID: &str = "_default";
/// Attempts of one upload (the backup's own, then retries) before it is left failed.
pub const MAX_ATTEMPTS: u32 = 6;
/// The wait before the first retry; it doubles with each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Time allowed for the whole "Test" (write, read back, delete).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many off-site copies to keep: the newest of each of the last `daily` days,
/// `weekly` ISO weeks and `monthly` months (grandfather-father-son).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        DEFAULT_RETENTION
    }
}

/// A project's off-site storage. Sealed: the whole record is encrypted at rest.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProjectOffsite {
    /// The project id.
    pub id: String,
    pub endpoint: String,
    pub bucket: String,
    /// Keys start with it (empty, or ending in `/`).
    pub prefix: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// The project's backup key (32 random bytes, base64), made once with the first
    /// settings and kept when they change: every copy made since needs it.
    pub encryption_key: String,
    #[serde(default)]
    pub retention: Retention,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
    /// These are the default storage's settings, not the project's own (never stored).
    #[serde(skip)]
    pub inherited: bool,
}

impl std::fmt::Debug for ProjectOffsite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret key or the backup key, not even in a log line.
        f.debug_struct("ProjectOffsite")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Record for ProjectOffsite {
    const TABLE: &'static str = "project_offsite";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// What `PUT /api/v1/projects/{id}/offsite` and the form send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    /// Required the first time; left out (or empty) later, the stored one is kept.
    pub secret_key: Option<String>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

/// The off-site settings a project uses: its own, else the default storage's with the
/// project's derived key, else none.
pub fn settings(r: &impl Read, project_id: &str) -> anyhow::Result<Option<ProjectOffsite>> {
    if let Some(own) = r.get::<ProjectOffsite>(project_id)? {
        return Ok(Some(own));
    }
    if project_id == DEFAULT_ID {
        return Ok(None);
    }
    Ok(r.get::<ProjectOffsite>(DEFAULT_ID)?.map(|default| {
        let encryption_key = derived_key(&default.encryption_key, project_id);
        ProjectOffsite {
            id: project_id.to_string(),
            encryption_key,
            inherited: true,
            ..default
        }
    }))
}

/// The default storage's own settings.
pub fn default_settings(r: &impl Read) -> anyhow::Result<Option<ProjectOffsite>> {
    r.get(DEFAULT_ID)
}

/// A project's backup key under the default storage: HKDF-SHA256 of the default's key
/// with the project id, base64.
fn derived_key(default_key: &str, project_id: &str) -> String {
    use hkdf::Hkdf;
    use sha2::Sha256;
    let ikm = base64::engine::general_purpose::STANDARD
        .decode(default_key)
        .unwrap_or_default();
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"dynserv/offsite/v1"), &ikm)
        .expand(project_id.as_bytes(), &mut key)
        .expect("32 bytes is a valid hkdf length");
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// What the API and the pages show: never the secret key or the backup key.
pub fn settings_view(settings: Option<&ProjectOffsite>) -> serde_json::Value {
    match settings {
        Some(s) => serde_json::json!({
            "endpoint": s.endpoint,
            "bucket": s.bucket,
            "prefix": s.prefix,
            "region": s.region,
            "access_key": s.access_key,
            "has_secret_key": true,
            "retention": {
                "keep_daily": s.retention.daily,
                "keep_weekly": s.retention.weekly,
                "keep_monthly": s.retention.monthly,
            },
            "updated_at": s.updated_at,
            "updated_by": s.updated_by,
            "default": s.inherited,
        }),
        None => serde_json::Value::Null,
    }
}

fn bucket_ok(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.'])
}

/// Validates and stores a project's off-site settings; audited. The backup key is made
/// with the first settings and kept afterwards (a project that used the default
/// storage keeps the key derived for it, so its copies stay readable).
pub fn save_settings(
    w: &mut Writer,
    actor: &Actor,
    project: &Project,
    input: &SettingsInput,
) -> AppResult<ProjectOffsite> {
    let existing = settings(w, &project.id)?;
    save_record(
        w,
        actor,
        &project.id,
        &format!("project:{}", project.name),
        existing,
        input,
    )
}

/// Validates and stores the default storage (for projects without their own); audited.
pub fn save_default(
    w: &mut Writer,
    actor: &Actor,
    input: &SettingsInput,
) -> AppResult<ProjectOffsite> {
    let existing = default_settings(w)?;
    save_record(w, actor, DEFAULT_ID, "offsite:default", existing, input)
}

fn save_record(
    w: &mut Writer,
    actor: &Actor,
    id: &str,
    audit_target: &str,
    existing: Option<ProjectOffsite>,
    input: &SettingsInput,
) -> AppResult<ProjectOffsite> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |field: &str, message: &str| problems.push((field.into(), message.into()));
    let text = |v: &Option<String>| v.as_deref().unwrap_or("").trim().to_string();
    let endpoint = text(&input.endpoint).trim_end_matches('/').to_string();
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => problem(
            "endpoint",
            "endpoint must be the storage's URL, e.g. https://fsn1.your-objectstorage.com",
        ),
    }
    let bucket = text(&input.bucket);
    if !bucket_ok(&bucket) {
        problem(
            "bucket",
            "bucket must be 3 to 63 lower-case letters, digits, '-' or '.'",
        );
    }
    let mut prefix = text(&input.prefix).trim_matches('/').to_string();
    if prefix.len() > 512
        || prefix
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
            && !prefix.is_empty()
        || prefix.chars().any(|c| c.is_control())
    {
        problem(
            "prefix",
            "prefix must be a path of names separated by '/' (at most 512 characters)",
        );
    }
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let region = match text(&input.region) {
        r if r.is_empty() => "us-east-1".to_string(),
        r => r,
    };
    if region.len() > 64
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problem("region", "region must be a name like eu-central-1");
    }
    let access_key = text(&input.access_key);
    if access_key.is_empty() || access_key.len() > 256 || access_key.chars().any(char::is_control) {
        problem(
            "access_key",
            "access_key is required (at most 256 characters)",
        );
    }
    // The default's secret is not carried over into a project's own settings.
    let own = existing.as_ref().filter(|e| !e.inherited);
    let secret_key = match (
        input
            .secret_key
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty()),
        own,
    ) {
        (Some(s), _) => s.to_string(),
        (None, Some(old)) => old.secret_key.clone(),
        (None, None) => {
            problem("secret_key", "secret_key is required");
            String::new()
        }
    };
    if secret_key.len() > 1024 || secret_key.chars().any(char::is_control) {
        problem(
            "secret_key",
            "secret_key is too long or holds control characters",
        );
    }
    let old_retention = existing.as_ref().map(|e| e.retention).unwrap_or_default();
    let retention = Retention {
        daily: input.keep_daily.unwrap_or(old_retention.daily),
        weekly: input.keep_weekly.unwrap_or(old_retention.weekly),
        monthly: input.keep_monthly.unwrap_or(old_retention.monthly),
    };
    for (field, n) in [
        ("keep_daily", retention.daily),
        ("keep_weekly", retention.weekly),
        ("keep_monthly", retention.monthly),
    ] {
        if n > 1000 {
            problem(field, "keep at most 1000");
        }
    }
    if retention.daily + retention.weekly + retention.monthly == 0 {
        problem(
            "keep_daily",
            "keep at least one copy (daily, weekly or monthly)",
        );
    }
    if let Some(err) = AppError::invalid_fields(problems) {
        return Err(err);
    }
    let encryption_key = existing
        .as_ref()
        .map(|e| e.encryption_key.clone())
        .unwrap_or_else(|| {
            let mut key = [0u8; 32];
            rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
            base64::engine::general_purpose::STANDARD.encode(key)
        });
    let record = ProjectOffsite {
        id: id.to_string(),
        endpoint,
        bucket,
        prefix,
        region,
        access_key,
        secret_key,
        encryption_key,
        retention,
        updated_at: Utc::now(),
        updated_by: actor.username.clone(),
        inherited: false,
    };
    w.put(&record)?;
    audit::record(
        w,
        actor,
        "project.offsite_update",
        audit_target,
        format!(
            "{} bucket {} prefix {:?}",
            record.endpoint, record.bucket, record.prefix
        ),
    )?;
    Ok(record)
}

/// The object key of a backup's off-site copy.
pub fn object_key(
    settings: &ProjectOffsite,
    compose_project: &str,
    service: &str,
    backup_id: &str,
) -> String {
    format!(
        "{}{}/{compose_project}/{service}/{backup_id}.dump.dsv",
        settings.prefix, settings.id
    )
}

/// Where a project's copies live (retention lists it).
pub fn project_prefix(settings: &ProjectOffsite) -> String {
    format!("{}{}/", settings.prefix, settings.id)
}

/// What a job needs to reach `key` (secrets included: only for a job spec).
pub fn target(settings: &ProjectOffsite, key: &str, sha256: Option<&str>) -> OffsiteTarget {
    OffsiteTarget {
        endpoint: settings.endpoint.clone(),
        bucket: settings.bucket.clone(),
        region: settings.region.clone(),
        access_key: settings.access_key.clone(),
        secret_key: settings.secret_key.clone(),
        key: key.to_string(),
        encryption_key: settings.encryption_key.clone(),
        sha256: sha256.map(String::from),
    }
}

/// The "Test": writes, reads back and deletes a probe object under the prefix.
/// Answers `{"ok": true}` or `{"ok": false, "error"}` in the storage's words.
pub async fn test(settings: &ProjectOffsite) -> serde_json::Value {
    let key = format!(
        "{}.dynserv-probe-{}",
        settings.prefix,
        uuid::Uuid::new_v4().simple()
    );
    let target = target(settings, &key, None);
    let outcome = tokio::time::timeout(TEST_TIMEOUT, dynserv_agent::offsite::probe(&target)).await;
    match outcome {
        Ok(Ok(())) => serde_json::json!({"ok": true, "key": key}),
        Ok(Err(e)) => serde_json::json!({"ok": false, "error": e.to_string()}),
        Err(_) => serde_json::json!({
            "ok": false,
            "error": format!("the storage did not answer within {} s", TEST_TIMEOUT.as_secs()),
        }),
    }
}

/// When the next attempt of an upload that failed `attempts` times is due, `None`
/// once every attempt is spent.
pub fn next_retry(attempts: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let factor = 1u32 << attempts.saturating_sub(1).min(10);
    let wait = FIRST_RETRY * factor;
    Some(now + chrono::Duration::from_std(wait).unwrap_or_default())
}

/// The key of the retry index for a time: fixed width, so keys sort by time.
pub fn retry_key(at: DateTime<Utc>, backup_id: &str) -> String {
    format!("{}/{backup_id}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// A day, an ISO week or a month: (year, number, which kind).
type Period = (i32, u32, u32);

/// Which of a project's copies to delete: `copies` are `(key, when made)`; the newest
/// copy of each of the newest `daily` days, `weekly` ISO weeks and `monthly` months is
/// kept (a copy may count for several). Answers the keys to delete, none when nothing
/// would be kept. Pure, for tests.
pub fn to_prune(copies: &[(String, DateTime<Utc>)], retention: Retention) -> Vec<String> {
    let mut sorted: Vec<&(String, DateTime<Utc>)> = copies.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut keep: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut pick = |period: &dyn Fn(&DateTime<Utc>) -> Period, count: u32| {
        let mut seen: Vec<Period> = Vec::new();
        for (id, at) in &sorted {
            if seen.len() as u32 >= count {
                break;
            }
            let p = period(at);
            if !seen.contains(&p) {
                seen.push(p);
                keep.insert(id.as_str());
            }
        }
    };
    pick(&|t| (t.year(), t.ordinal(), 0), retention.daily);
    pick(
        &|t| {
            let w = t.iso_week();
            (w.year(), w.week(), 1)
        },
        retention.weekly,
    );
    pick(&|t| (t.year(), t.month(), 2), retention.monthly);
    if keep.is_empty() {
        return Vec::new();
    }
    sorted
        .iter()
        .filter(|(id, _)| !keep.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Grandfather-father-son: of two copies a day for 60 days, 7 daily, 4 weekly and 12
    /// monthly keep the newest of each period (at most 23 copies); keeping nothing per
    /// period deletes nothing.
    #[test]
    fn retention_keeps_the_newest_of_each_period() {
        let now = at("2026-12-03T12:00:00Z");
        let mut copies = Vec::new();
        for day in 0..60 {
            for hour in [1, 5] {
                let t = now - chrono::Duration::days(day) - chrono::Duration::hours(hour);
                copies.push((format!("b{day:02}-{hour:02}"), t));
            }
        }
        let pruned = to_prune(&copies, DEFAULT_RETENTION);
        let kept: Vec<&String> = copies
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !pruned.contains(id))
            .collect();
        // The newest copy of each of the last 7 days.
        for day in 0..7 {
            assert!(kept.contains(&&format!("b{day:02}-01")), "{kept:?}");
            assert!(!kept.contains(&&format!("b{day:02}-05")), "{kept:?}");
        }
        assert!(kept.len() > 7 && kept.len() <= 23, "{kept:?}");
        assert_eq!(kept.len() + pruned.len(), copies.len());
        // Only today's newest with one daily copy.
        let one = Retention {
            daily: 1,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(to_prune(&copies, one).len(), copies.len() - 1);
        let none = Retention {
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert!(to_prune(&copies, none).is_empty());
    }

    /// Retries wait 1, 2, 4, 8, 16 minutes, then stop.
    #[test]
    fn retries_back_off_and_stop() {
        let now = at("2026-12-03T12:00:00Z");
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS)
            .map(|a| {
                next_retry(a, now)
                    .map(|t| (t - now).num_minutes())
                    .unwrap_or(-1)
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, -1]);
        assert!(retry_key(at("2026-12-03T09:00:00Z"), "b") < retry_key(now, "a"));
    }

    /// A project under the default storage gets a key of its own, the same each time.
    #[test]
    fn derived_keys_differ_per_project() {
        let default = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let a = derived_key(&default, "p1");
        assert_eq!(a, derived_key(&default, "p1"));
        assert_ne!(a, derived_key(&default, "p2"));
        assert_ne!(a, default);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .unwrap()
                .len(),
            32
        );
    }

    /// Bucket names follow S3's rules.
    #[test]
    fn bucket_names() {
        assert!(bucket_ok("dynserv-backups"));
        assert!(!bucket_ok("Dynserv"));
        assert!(!bucket_ok("ab"));
        assert!(!bucket_ok("-abc"));
    }
}
