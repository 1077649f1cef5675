//! Agents and enrollment tokens: who may enroll (tokens scoped to a project, stored
//! hashed, with an expiry and a use count), the agent records enrollment creates (each
//! attached to a server record of its project), and revocation.
//!
//! Live state (connected, last heartbeat figures) is kept by the fleet gateway in
//! memory; this module persists `last_seen` when a connection ends and the facts an
//! agent reports in its hello. Indexes: `enroll_token_by_hash` (sha256 of the secret),
//! `agent_by_project` (`project_id/agent_id`).

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action, Subject};
use crate::projects::{self, Project};
use crate::secrets;
use crate::servers::{self, Server};
use crate::store::{Read, Record, Store, Writer};

const TOKEN_BY_HASH: &str = "enroll_token_by_hash";
const AGENT_BY_PROJECT: &str = "agent_by_project";

/// Default lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL_HOURS: i64 = 24;
/// Longest lifetime of an enrollment token (one year).
pub const MAX_TOKEN_TTL_DAYS: i64 = 366;

/// An enrollment token: only the hash of its secret is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokenRecord {
    pub id: String,
    pub project_id: String,
    /// SHA-256 (hex) of the secret.
    pub secret_hash: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// How many enrollments the token allows.
    pub max_uses: u32,
    /// How many it was used for.
    pub uses: u32,
    /// A server request this token was made for, if any (its enrollment completes it).
    #[serde(default)]
    pub request_id: Option<String>,
}

impl Record for EnrollmentTokenRecord {
    const TABLE: &'static str = "enrollment_tokens";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Host facts as stored and shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub uptime_s: u64,
    pub agent_version: String,
}

impl From<&dynserv_shared::proto::Facts> for AgentFacts {
    fn from(f: &dynserv_shared::proto::Facts) -> AgentFacts {
        AgentFacts {
            hostname: f.hostname.clone(),
            os: f.os.clone(),
            kernel: f.kernel.clone(),
            arch: f.arch.clone(),
            cpus: f.cpus,
            memory_bytes: f.memory_bytes,
            disk_bytes: f.disk_bytes,
            uptime_s: f.uptime_s,
            agent_version: f.agent_version.clone(),
        }
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub server_id: Option<String>,
    /// SHA-256 (hex) of the client certificate issued at enrollment; a connection must
    /// present exactly this certificate.
    pub cert_sha256: String,
    pub enrolled_at: DateTime<Utc>,
    pub token_id: String,
    pub facts: AgentFacts,
    pub last_seen: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl Record for Agent {
    const TABLE: &'static str = "agents";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Why an enrollment was refused; the message goes back to the agent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnrollRefusal {
    /// No token has this secret.
    #[error("unknown enrollment token")]
    Unknown,
    /// The token's expiry passed.
    #[error("the enrollment token has expired")]
    Expired,
    /// The token's uses are spent.
    #[error("the enrollment token has been used up")]
    UsedUp,
    /// The token's project no longer exists.
    #[error("the enrollment token's project no longer exists")]
    NoProject,
    /// The requested name is not usable.
    #[error("invalid agent name: {0}")]
    BadName(String),
}

/// Parses a duration like `30m`, `24h`, `7d`, `3600s` or `3600` (seconds), between one
/// second and [`MAX_TOKEN_TTL_DAYS`] days. Any number of digits is read without
/// overflow: a value too large for a duration is out of range like any other.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let shape = || {
        format!(
            "{:?} is not a duration like 30m, 24h or 7d",
            crate::validate::echo(text)
        )
    };
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    if number.is_empty() {
        return Err(shape());
    }
    let seconds_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(shape()),
    };
    let out_of_range = || format!("the lifetime must be between 1 s and {MAX_TOKEN_TTL_DAYS} days");
    let max_seconds = MAX_TOKEN_TTL_DAYS as u64 * 86_400;
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .filter(|s| (1..=max_seconds).contains(s))
        .ok_or_else(out_of_range)?;
    i64::try_from(seconds)
        .ok()
        .and_then(Duration::try_seconds)
        .ok_or_else(out_of_range)
}

/// Creates an enrollment token for a project; returns the record and the secret (the
/// only time it exists outside the agent).
pub fn create_token(
    w: &mut Writer,
    actor: &Actor,
    project: &Project,
    max_uses: u32,
    ttl: Duration,
    now: DateTime<Utc>,
) -> AppResult<(EnrollmentTokenRecord, String)> {
    if max_uses == 0 || max_uses > 10_000 {
        return Err(AppError::invalid(
            "uses",
            "uses must be between 1 and 10000",
        ));
    }
    let expires_at = now
        .checked_add_signed(ttl)
        .filter(|at| *at > now)
        .ok_or_else(|| AppError::invalid("ttl", "the lifetime is out of range"))?;
    let secret = secrets::random_token(32);
    let record = EnrollmentTokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        project_id: project.id.clone(),
        secret_hash: secrets::hash_secret(&secret),
        created_by: actor.username.clone(),
        created_at: now,
        expires_at,
        max_uses,
        uses: 0,
        request_id: None,
    };
    w.put(&record)?;
    w.index_put(TOKEN_BY_HASH, &record.secret_hash, &record.id)?;
    audit::record(
        w,
        actor,
        "agent.token_create",
        &format!("project:{}", project.name),
        format!(
            "uses {max_uses}, expires {}",
            record.expires_at.to_rfc3339()
        ),
    )?;
    Ok((record, secret))
}

/// The full token text for a secret and a CA fingerprint.
pub fn token_text(secret: &str, ca_sha256: [u8; 32]) -> String {
    dynserv_shared::token::EnrollmentToken::new(secret.to_string(), ca_sha256).to_string()
}

/// `dynserv token create`: creates a token for the named project and returns its full
/// text. Reads (or creates) the fleet CA in the data directory for the fingerprint.
pub fn create_token_cli(
    store: &Store,
    data_dir: &Path,
    project: &str,
    uses: Option<u32>,
    ttl: Option<&str>,
) -> anyhow::Result<String> {
    let ttl = match ttl {
        Some(text) => parse_ttl(text).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?,
        None => Duration::hours(DEFAULT_TOKEN_TTL_HOURS),
    };
    let ca = crate::fleet::ca::load_or_create(data_dir)?;
    let fingerprint = ca.ca.fingerprint();
    let secret = store.write(|w| {
        let project = projects::find(w, project)?
            .with_context(|| format!("no project named {:?}", crate::validate::echo(project)))?;
        let (_, secret) = create_token(
            w,
            &Actor::cli(),
            &project,
            uses.unwrap_or(1),
            ttl,
            Utc::now(),
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(secret)
    })?;
    Ok(token_text(&secret, fingerprint))
}

/// Spends one use of the token with this secret; the token record after the use.
pub fn consume_token(
    w: &mut Writer,
    secret: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Result<EnrollmentTokenRecord, EnrollRefusal>> {
    let hash = secrets::hash_secret(secret);
    let Some(id) = w.index_get(TOKEN_BY_HASH, &hash)? else {
        return Ok(Err(EnrollRefusal::Unknown));
    };
    let Some(mut token) = w.get::<EnrollmentTokenRecord>(&id)? else {
        return Ok(Err(EnrollRefusal::Unknown));
    };
    if !secrets::constant_time_eq(&token.secret_hash, &hash) {
        return Ok(Err(EnrollRefusal::Unknown));
    }
    if now >= token.expires_at {
        return Ok(Err(EnrollRefusal::Expired));
    }
    if token.uses >= token.max_uses {
        return Ok(Err(EnrollRefusal::UsedUp));
    }
    token.uses += 1;
    w.put(&token)?;
    Ok(Ok(token))
}

/// Checks an agent name: what a server name may hold.
pub fn check_name(name: &str) -> Result<String, EnrollRefusal> {
    let name = name.trim().to_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(name)
    } else {
        Err(EnrollRefusal::BadName(
            "use 1 to 63 letters, digits, '-' or '.'".into(),
        ))
    }
}

/// Registers a newly enrolled agent and attaches it to the project's server of the same
/// name (creating one when there is none).
pub fn register(
    w: &mut Writer,
    token: &EnrollmentTokenRecord,
    agent_id: &str,
    name: &str,
    cert_sha256: &str,
    facts: AgentFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<Result<Agent, EnrollRefusal>> {
    let Some(project) = w.get::<Project>(&token.project_id)? else {
        return Ok(Err(EnrollRefusal::NoProject));
    };
    let mut server = match servers::by_name(w, &project.id, name)? {
        Some(server) => server,
        None => Server {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            project_id: project.id.clone(),
            status: "unknown".into(),
            server_type: None,
            location: None,
            image: None,
            ipv4: None,
            ipv6: None,
            labels: Default::default(),
            hetzner_id: None,
            agent_id: None,
            monthly_cost: None,
            created_at: now,
            updated_at: now,
        },
    };
    // A server re-enrolled under a new agent leaves the old agent without a server.
    if let Some(old_id) = server.agent_id.take() {
        if let Some(mut old) = w.get::<Agent>(&old_id)? {
            old.server_id = None;
            w.put(&old)?;
        }
    }
    server.agent_id = Some(agent_id.to_string());
    server.updated_at = now;
    servers::save(w, &server)?;
    let agent = Agent {
        id: agent_id.to_string(),
        name: name.to_string(),
        project_id: project.id.clone(),
        server_id: Some(server.id.clone()),
        cert_sha256: cert_sha256.to_string(),
        enrolled_at: now,
        token_id: token.id.clone(),
        facts,
        last_seen: Some(now),
        revoked_at: None,
        revoked_by: None,
    };
    w.put(&agent)?;
    w.index_put(
        AGENT_BY_PROJECT,
        &format!("{}/{}", project.id, agent.id),
        &agent.id,
    )?;
    audit::record(
        w,
        &Actor::system(),
        "agent.enroll",
        &format!("agent:{name}"),
        format!("project {}, server {}", project.name, server.name),
    )?;
    Ok(Ok(agent))
}

/// Revokes an agent: its next connection is refused.
pub fn revoke(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    agent_id: &str,
) -> AppResult<Agent> {
    let mut agent: Agent = w
        .get(agent_id)?
        .ok_or_else(|| AppError::not_found("agent"))?;
    if !policy::can(subject, Action::ViewServers, Some(&agent.project_id)) {
        return Err(AppError::not_found("agent"));
    }
    if !policy::can(subject, Action::ManageAgents, Some(&agent.project_id)) {
        return Err(AppError::forbidden());
    }
    if agent.revoked_at.is_some() {
        return Err(AppError::conflict("the agent is already revoked"));
    }
    agent.revoked_at = Some(Utc::now());
    agent.revoked_by = Some(actor.username.clone());
    w.put(&agent)?;
    audit::record(
        w,
        actor,
        "agent.revoke",
        &format!("agent:{}", agent.name),
        "",
    )?;
    Ok(agent)
}

/// Whether an agent's hello brings anything worth writing: new facts, or a last-seen
/// time older than ten minutes.
pub fn hello_changes_anything(
    r: &impl Read,
    agent_id: &str,
    facts: &AgentFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let current: Option<Agent> = r.get(agent_id)?;
    Ok(!current.as_ref().is_some_and(|a| {
        a.facts == *facts && a.last_seen.is_some_and(|t| now - t < Duration::minutes(10))
    }))
}

/// Records an agent's facts from its hello and that it was seen now.
pub fn record_hello(
    w: &mut Writer,
    agent_id: &str,
    facts: &AgentFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    if let Some(mut agent) = w.get::<Agent>(agent_id)? {
        agent.facts = facts.clone();
        agent.last_seen = Some(now);
        w.put(&agent)?;
    }
    Ok(())
}

/// Records when an agent was last seen (at the end of its connection).
pub fn record_last_seen(w: &mut Writer, agent_id: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    if let Some(mut agent) = w.get::<Agent>(agent_id)? {
        agent.last_seen = Some(at);
        w.put(&agent)?;
    }
    Ok(())
}

/// The agents a subject may see, by name.
pub fn visible(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Agent>> {
    let mut agents: Vec<Agent> = r
        .list::<Agent>()?
        .into_iter()
        .filter(|a| policy::can(subject, Action::ViewServers, Some(&a.project_id)))
        .collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name).then(a.enrolled_at.cmp(&b.enrolled_at)));
    Ok(agents)
}

/// One agent by id, or by name among those the subject may see; 404 when unknown or
/// invisible, 422 when a name matches several.
pub fn find_visible(r: &impl Read, subject: &Subject, key: &str) -> AppResult<Agent> {
    if let Some(agent) = r.get::<Agent>(key)? {
        if policy::can(subject, Action::ViewServers, Some(&agent.project_id)) {
            return Ok(agent);
        }
        return Err(AppError::not_found("agent"));
    }
    let wanted = key.trim().to_lowercase();
    let mut matches: Vec<Agent> = visible(r, subject)?
        .into_iter()
        .filter(|a| a.name == wanted && a.revoked_at.is_none())
        .collect();
    match matches.len() {
        0 => Err(AppError::not_found("agent")),
        1 => Ok(matches.remove(0)),
        _ => Err(AppError::invalid(
            "agent",
            format!("several agents are named {wanted}; use the agent id"),
        )),
    }
}

/// Live figures of a connected agent, from its last heartbeat.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LiveLoad {
    pub load: [f64; 3],
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub uptime_s: u64,
    pub running_jobs: u32,
}

/// The API and page view of an agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub project: String,
    pub project_id: String,
    pub server_id: Option<String>,
    pub connected: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub version: String,
    pub facts: AgentFacts,
    pub load: Option<LiveLoad>,
    pub revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
    pub enrolled_at: DateTime<Utc>,
}

/// Builds the view of an agent from its record, its project's name and the live state.
pub fn view(
    agent: &Agent,
    project_name: &str,
    live: Option<(DateTime<Utc>, Option<LiveLoad>)>,
) -> AgentView {
    let connected = live.is_some();
    let (last_seen, load) = match live {
        Some((seen, load)) => (Some(seen), load),
        None => (agent.last_seen, None),
    };
    AgentView {
        id: agent.id.clone(),
        name: agent.name.clone(),
        project: project_name.to_string(),
        project_id: agent.project_id.clone(),
        server_id: agent.server_id.clone(),
        connected,
        last_seen,
        version: agent.facts.agent_version.clone(),
        facts: agent.facts.clone(),
        load,
        revoked: agent.revoked_at.is_some(),
        revoked_at: agent.revoked_at,
        enrolled_at: agent.enrolled_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations parse with their units; nonsense and out-of-range values do not.
    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::seconds(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::minutes(30));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::hours(24));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::days(7));
        for bad in ["", "h", "0", "-5m", "5w", "1000d", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    /// Huge lifetimes are out of range, never a panic in a duration constructor:
    /// days past what a duration holds, i64::MAX seconds, more digits than any integer.
    #[test]
    fn huge_ttls_are_out_of_range_not_a_panic() {
        for huge in [
            "200000000000d",
            "9223372036854775807s",
            "9223372036854775807",
            "18446744073709551615m",
            "99999999999999999999999999999h",
            "153722867280912931m",
        ] {
            let err = parse_ttl(huge).unwrap_err();
            assert!(err.contains("between 1 s and"), "{huge}: {err}");
        }
        assert_eq!(
            parse_ttl(&format!("{MAX_TOKEN_TTL_DAYS}d")).unwrap(),
            Duration::days(MAX_TOKEN_TTL_DAYS)
        );
    }

    /// Names are lower-cased and limited to what a server name may hold.
    #[test]
    fn names() {
        assert_eq!(check_name(" Web-01.Example ").unwrap(), "web-01.example");
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
    }
}
