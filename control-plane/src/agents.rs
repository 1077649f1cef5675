//! Agents and enrollment tokens: who may enroll (tokens scoped to a project, stored
//! hashed, with an expiry and a use count), the agent records enrollment creates (each
//! attached to a server record of its project), and revocation.
//!
//! Live state (connected, last heartbeat figures) is kept by the fleet gateway in
//! memory; this module persists `last_seen` when a connection ends and the facts an
//! agent reports in its hello. Indexes: `enroll_token_by_hash` (sha256 of the secret),
//! `enroll_token_by_expiry` (`expires_at/token_id`, so the live tokens are read without
//! the expired ones), `agent_by_project` (`project_id/agent_id`); for the lists by name `agent_order`
//! (`position`) and `agent_by_project_name` (`project_id/position`, the position being
//! the name and id, `listing::name_position`), written when an agent enrolls (its name
//! and project never change); `agent_duplicate` (agent id) while an agent has a refused
//! copy on record, so the Agents page finds those without reading every agent.
//!
//! Copies of one agent (its state directory cloned to another machine) share its
//! certificate. This module keeps what the gateway's rule (`fleet::identity`) needs and
//! what people see of it: the host that holds the identity ([`Agent::host_id`]), the
//! latest refused copy ([`Agent::duplicate`], one audit entry and one admin notification
//! per episode), which host runs each running job ([`JobHolder`], so a job is never
//! handed to a copy on another machine), and the admin's "accept this host".

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::{self, Status};
use crate::listing::{self, Order, Page, Source};
use crate::notifications::{self, Message};
use crate::policy::{self, Action, Subject};
use crate::projects::{self, Project};
use crate::secrets;
use crate::servers::{self, Server};
use crate::store::{Read, Record, Store, Writer};

const TOKEN_BY_HASH: &str = "enroll_token_by_hash";
/// Enrollment tokens by expiry (`expires_at/token_id`): the live ones are those that
/// expire after now, so listing them never reads the tokens of the past.
const TOKEN_BY_EXPIRY: &str = "enroll_token_by_expiry";
const AGENT_BY_PROJECT: &str = "agent_by_project";
const AGENT_ORDER: &str = "agent_order";
const AGENT_BY_PROJECT_NAME: &str = "agent_by_project_name";
const AGENT_DUPLICATE: &str = "agent_duplicate";

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
    /// The server this token was made for (an agent install over SSH): the agent it
    /// enrolls is attached to that server, whatever name it gives.
    #[serde(default)]
    pub server_id: Option<String>,
    /// When it was revoked; a revoked token enrolls nothing.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    #[serde(default)]
    pub revoked_by: Option<String>,
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
    /// The host id of the machine that holds this agent's identity: sent at
    /// enrollment, or at the first hello that carried one, or accepted by an admin.
    /// `None` for agents that never sent one.
    #[serde(default)]
    pub host_id: Option<String>,
    /// The latest copy of this agent refused because another machine holds the
    /// identity; shown while [`DuplicateSighting::is_active`].
    #[serde(default)]
    pub duplicate: Option<DuplicateSighting>,
    /// The fleet protocol of the agent's last hello (or enrollment); 0 when not yet
    /// recorded (agents enrolled before it was).
    #[serde(default)]
    pub protocol: u32,
    /// When the certificate the agent presents expires; `None` for agents enrolled
    /// before certificates had a lifetime (theirs are renewed at their next connection).
    #[serde(default)]
    pub cert_expires_at: Option<DateTime<Utc>>,
    /// The certificate this one replaced by a renewal, still accepted until the agent
    /// connects with the new one (it may have lost the connection before storing it).
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
    /// A renewed certificate sent to the agent and not yet confirmed: accepted (and
    /// then made the current one) should the agent connect with it before its
    /// confirmation arrived.
    #[serde(default)]
    pub next_cert: Option<NextCert>,
    /// When the agent's connection ended, while it stays away (see
    /// [`crate::agent_offline`]); `None` while connected.
    #[serde(default)]
    pub offline_since: Option<DateTime<Utc>>,
    /// The CA that issued the current certificate (see [`crate::fleet::ca`]); `None`
    /// for agents enrolled before CAs were rotated: the original CA.
    #[serde(default)]
    pub cert_ca: Option<String>,
}

impl Agent {
    /// The id of the CA that issued the agent's current certificate.
    pub fn cert_ca_id(&self) -> &str {
        self.cert_ca
            .as_deref()
            .unwrap_or(crate::fleet::ca::ORIGINAL_CA_ID)
    }
}

#[cfg(test)]
impl Agent {
    /// An agent as tests write it by hand: enrolled now in `project_id`, with no
    /// server, facts, certificate or history.
    pub(crate) fn sample(id: &str, name: &str, project_id: &str) -> Agent {
        Agent {
            id: id.into(),
            name: name.into(),
            project_id: project_id.into(),
            server_id: None,
            cert_sha256: String::new(),
            enrolled_at: Utc::now(),
            token_id: "t".into(),
            facts: AgentFacts::default(),
            last_seen: None,
            revoked_at: None,
            revoked_by: None,
            host_id: None,
            duplicate: None,
            protocol: 0,
            cert_expires_at: None,
            previous_cert_sha256: None,
            next_cert: None,
            offline_since: None,
            cert_ca: None,
        }
    }
}

/// A certificate issued to an agent by a renewal, before the agent confirmed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextCert {
    /// Its SHA-256 (hex, of the DER).
    pub sha256: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The CA that issued it (`None` in records from before CA rotations: the
    /// original CA).
    #[serde(default)]
    pub ca: Option<String>,
}

/// Stops accepting the certificate a renewal replaced (the agent connected with the
/// new one); returns the agent as recorded.
pub fn forget_previous_cert(w: &mut Writer, agent_id: &str) -> anyhow::Result<Option<Agent>> {
    let Some(mut agent) = w.get::<Agent>(agent_id)? else {
        return Ok(None);
    };
    if agent.previous_cert_sha256.take().is_some() {
        w.put(&agent)?;
    }
    Ok(Some(agent))
}

/// Records a renewed certificate about to be sent to the agent.
pub fn record_renewal_offered(
    w: &mut Writer,
    agent_id: &str,
    next: NextCert,
) -> anyhow::Result<()> {
    if let Some(mut agent) = w.get::<Agent>(agent_id)? {
        agent.next_cert = Some(next);
        w.put(&agent)?;
    }
    Ok(())
}

/// Makes the agent's offered certificate (`next_cert`, fingerprint `sha256`) its
/// current one, keeping `presented` (the one it connected with) accepted until it
/// connects with the new one. Returns the agent as recorded, `None` when the
/// certificate was not the one offered.
pub fn record_renewal(
    w: &mut Writer,
    agent_id: &str,
    presented: &str,
    sha256: &str,
) -> anyhow::Result<Option<Agent>> {
    let Some(mut agent) = w.get::<Agent>(agent_id)? else {
        return Ok(None);
    };
    let Some(next) = agent.next_cert.take().filter(|n| n.sha256 == sha256) else {
        return Ok(None);
    };
    agent.previous_cert_sha256 = Some(presented.to_string()).filter(|p| p != sha256);
    agent.cert_sha256 = next.sha256;
    agent.cert_expires_at = Some(next.expires_at);
    count_ca(w, &agent, -1)?;
    agent.cert_ca = Some(
        next.ca
            .unwrap_or_else(|| crate::fleet::ca::ORIGINAL_CA_ID.to_string()),
    );
    count_ca(w, &agent, 1)?;
    w.put(&agent)?;
    audit::record(
        w,
        &Actor::system(),
        "agent.cert_renew",
        &format!("agent:{}", agent.name),
        format!("expires {}", next.expires_at.to_rfc3339()),
    )?;
    Ok(Some(agent))
}

/// How long a copy refused for a duplicate identity is asked to wait before it tries
/// again: the refusal lasts until a person acts, so trying often only costs both sides.
pub const DUPLICATE_RETRY_S: u64 = 300;

/// A duplicate episode ends when no copy tried to connect for this long (three of a
/// copy's retries): a sighting after that is a new episode, audited and announced again.
pub const DUPLICATE_QUIET_MINUTES: i64 = 15;

/// A copy of an agent that was refused because another machine holds its identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DuplicateSighting {
    /// The copy's host id.
    pub host_id: String,
    /// The copy's host name, from its hello.
    pub hostname: String,
    /// The address the copy connected from.
    pub address: String,
    /// The first refusal of this episode.
    pub first_seen_at: DateTime<Utc>,
    /// The latest refusal.
    pub seen_at: DateTime<Utc>,
    /// Refusals in this episode.
    pub attempts: u64,
}

impl DuplicateSighting {
    /// Whether the episode is still going on at `now`: a copy tried within the last
    /// [`DUPLICATE_QUIET_MINUTES`].
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now - self.seen_at < Duration::minutes(DUPLICATE_QUIET_MINUTES)
    }
}

impl Record for Agent {
    const TABLE: &'static str = "agents";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What a server row or an execution row shows of its agent, read without the rest of
/// the record ([`crate::store::View`]).
#[derive(Debug, Deserialize)]
pub struct AgentBadge {
    pub name: String,
    pub facts: BadgeFacts,
    pub last_seen: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The one fact an [`AgentBadge`] shows.
#[derive(Debug, Deserialize)]
pub struct BadgeFacts {
    pub agent_version: String,
}

impl crate::store::View for AgentBadge {
    type Of = Agent;
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
    /// Someone revoked the token.
    #[error("the enrollment token has been revoked")]
    Revoked,
    /// The token's project no longer exists.
    #[error("the enrollment token's project no longer exists")]
    NoProject,
    /// The server the token was made for is gone or in another project.
    #[error("the server this enrollment token was made for no longer exists")]
    NoServer,
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
        server_id: None,
        revoked_at: None,
        revoked_by: None,
    };
    w.put(&record)?;
    w.index_put(TOKEN_BY_HASH, &record.secret_hash, &record.id)?;
    w.index_put(TOKEN_BY_EXPIRY, &expiry_key(&record), &record.id)?;
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

/// The enrollment tokens that could still enroll an agent (not revoked, expired or
/// used up) on the projects where the subject manages agents, newest first.
pub fn live_tokens(
    r: &impl Read,
    subject: &Subject,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<EnrollmentTokenRecord>> {
    // Only the tokens that expire after now, read through their expiry index.
    let mut scan = crate::store::IndexScan::prefix(TOKEN_BY_EXPIRY, "", 1000);
    scan.lower = expiry_text(now);
    let mut tokens: Vec<EnrollmentTokenRecord> = Vec::new();
    loop {
        let entries = r.index_page(&scan)?;
        for (_, id) in &entries {
            if let Some(t) = r.get::<EnrollmentTokenRecord>(id)? {
                if t.revoked_at.is_none()
                    && t.expires_at > now
                    && t.uses < t.max_uses
                    && policy::can(subject, Action::ManageAgents, Some(&t.project_id))
                {
                    tokens.push(t);
                }
            }
        }
        if entries.len() < scan.limit {
            break;
        }
        scan.after = entries.last().map(|(key, _)| key.clone());
    }
    // Ids are UUIDv7: their order is their creation order.
    tokens.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(tokens)
}

/// Revokes an enrollment token: it enrolls nothing more. 404 unless the subject manages
/// agents of the token's project (so nobody else learns it exists), then 409 when it
/// is revoked already. Audited.
pub fn revoke_token(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    token_id: &str,
    now: DateTime<Utc>,
) -> AppResult<EnrollmentTokenRecord> {
    let mut token = w
        .get::<EnrollmentTokenRecord>(token_id)?
        .filter(|t| policy::can(subject, Action::ManageAgents, Some(&t.project_id)))
        .ok_or_else(|| AppError::not_found("enrollment token"))?;
    if token.revoked_at.is_some() {
        return Err(AppError::conflict(
            "the enrollment token is already revoked",
        ));
    }
    token.revoked_at = Some(now);
    token.revoked_by = Some(actor.username.clone());
    w.put(&token)?;
    let project = w
        .get::<Project>(&token.project_id)?
        .map(|p| p.name)
        .unwrap_or_else(|| token.project_id.clone());
    audit::record(
        w,
        actor,
        "agent.token_revoke",
        &format!("project:{project}"),
        format!(
            "token {}, {} of {} uses spent",
            token.id, token.uses, token.max_uses
        ),
    )?;
    Ok(token)
}

/// The API and page view of an enrollment token: never its secret or hash.
pub fn token_view(token: &EnrollmentTokenRecord, project_name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": token.id,
        "project": project_name,
        "project_id": token.project_id,
        "uses_left": token.max_uses.saturating_sub(token.uses),
        "expires_at": token.expires_at,
        "created_by": token.created_by,
        "created_at": token.created_at,
        "revoked": token.revoked_at.is_some(),
    })
}

/// The full token text for a secret and a CA fingerprint.
pub fn token_text(secret: &str, ca_sha256: [u8; 32]) -> String {
    dynserv_shared::token::EnrollmentToken::new(secret.to_string(), ca_sha256).to_string()
}

/// `dynserv token create`: creates a token for the named project and returns its full
/// text. Reads (or creates) the fleet CA in the store for the fingerprint.
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
    let fingerprint = crate::fleet::ca::load_ca(store, data_dir)?.fingerprint();
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
    if token.revoked_at.is_some() {
        return Ok(Err(EnrollRefusal::Revoked));
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

/// What an enrollment request tells about the agent it creates.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    /// The id given to the agent (the CN of its certificate).
    pub id: &'a str,
    /// Its checked name.
    pub name: &'a str,
    /// SHA-256 (hex) of the certificate issued to it.
    pub cert_sha256: &'a str,
    /// Its host facts.
    pub facts: AgentFacts,
    /// The host id it sent (empty from older agents): the machine holding its identity.
    pub host_id: &'a str,
    /// The fleet protocol of its enrollment request.
    pub protocol: u32,
    /// When its certificate expires.
    pub cert_expires_at: DateTime<Utc>,
    /// The CA that issued its certificate.
    pub ca_id: &'a str,
}

/// Registers a newly enrolled agent and attaches it to the server its token was made
/// for, else to the project's server of the same name (creating one when there is none).
pub fn register(
    w: &mut Writer,
    token: &EnrollmentTokenRecord,
    new: NewAgent<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<Result<Agent, EnrollRefusal>> {
    let NewAgent {
        id: agent_id,
        name,
        cert_sha256,
        facts,
        host_id,
        protocol,
        cert_expires_at,
        ca_id,
    } = new;
    let Some(project) = w.get::<Project>(&token.project_id)? else {
        return Ok(Err(EnrollRefusal::NoProject));
    };
    let bound = match &token.server_id {
        Some(server_id) => match w.get::<Server>(server_id)? {
            Some(server) if server.project_id == project.id => Some(server),
            _ => return Ok(Err(EnrollRefusal::NoServer)),
        },
        None => servers::by_name(w, &project.id, name)?,
    };
    let mut server = match bound {
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
            notes: None,
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
        host_id: Some(host_id.to_string()).filter(|h| !h.is_empty()),
        duplicate: None,
        protocol,
        cert_expires_at: Some(cert_expires_at),
        previous_cert_sha256: None,
        next_cert: None,
        offline_since: None,
        cert_ca: Some(ca_id.to_string()),
    };
    w.put(&agent)?;
    index_new(w, &agent)?;
    count_version(w, &agent, 1)?;
    count_ca(w, &agent, 1)?;
    crate::executions::know_term(w, name)?;
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
    count_version(w, &agent, -1)?;
    count_ca(w, &agent, -1)?;
    agent.revoked_at = Some(Utc::now());
    agent.revoked_by = Some(actor.username.clone());
    crate::agent_offline::mark_online(w, &mut agent)?;
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

/// Whether an agent's hello brings anything worth writing: new facts, a last-seen
/// time older than ten minutes, a first host id, or an ended duplicate episode to
/// clear.
pub fn hello_changes_anything(
    r: &impl Read,
    agent_id: &str,
    hello: &HelloFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let HelloFacts {
        facts,
        host_id,
        protocol,
    } = hello;
    let current: Option<Agent> = r.get(agent_id)?;
    Ok(!current.as_ref().is_some_and(|a| {
        a.facts == *facts
            && a.protocol == *protocol
            && a.last_seen.is_some_and(|t| now - t < Duration::minutes(10))
            && (host_id.is_empty() || a.host_id.is_some())
            && a.duplicate.as_ref().is_none_or(|d| d.is_active(now))
            && a.offline_since.is_none()
    }))
}

/// Records an agent's facts from its (accepted) hello and that it was seen now. The
/// first host id an agent sends is recorded as the holder of its identity, and a
/// duplicate episode that ended is cleared when the holder says hello again.
pub fn record_hello(
    w: &mut Writer,
    agent_id: &str,
    hello: &HelloFacts,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let HelloFacts {
        facts,
        host_id,
        protocol,
    } = hello;
    if let Some(mut agent) = w.get::<Agent>(agent_id)? {
        if agent.facts.agent_version != facts.agent_version {
            count_version(w, &agent, -1)?;
        }
        let counted_before = agent.facts.agent_version.clone();
        agent.facts = facts.clone();
        agent.protocol = *protocol;
        if counted_before != agent.facts.agent_version {
            count_version(w, &agent, 1)?;
        }
        agent.last_seen = Some(now);
        crate::agent_offline::mark_online(w, &mut agent)?;
        if agent.host_id.is_none() && !host_id.is_empty() {
            agent.host_id = Some(host_id.to_string());
        }
        let holder = agent.host_id.as_deref().is_none_or(|h| h == host_id);
        if holder && agent.duplicate.as_ref().is_some_and(|d| !d.is_active(now)) {
            agent.duplicate = None;
            index_duplicate(w, &agent)?;
        }
        w.put(&agent)?;
    }
    Ok(())
}

/// What an accepted hello says about the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct HelloFacts {
    /// Host facts, the agent's version among them.
    pub facts: AgentFacts,
    /// The host id (empty from older agents).
    pub host_id: String,
    /// The fleet protocol it speaks.
    pub protocol: u32,
}

/// A refused copy of an agent, as the gateway saw it.
#[derive(Debug, Clone)]
pub struct RefusedCopy {
    /// The copy's host id.
    pub host_id: String,
    /// The copy's host name.
    pub hostname: String,
    /// The address it connected from.
    pub address: String,
    /// The host id of the copy that keeps the identity.
    pub holder_host_id: String,
    /// Whether that copy is connected.
    pub holder_connected: bool,
}

/// Records that a copy of the agent was refused because another machine holds its
/// identity. The first refusal of an episode (see [`DUPLICATE_QUIET_MINUTES`]) is
/// audited as `agent.duplicate` and announced to every admin; later ones only update
/// the sighting. True when an episode began.
pub fn record_duplicate(
    w: &mut Writer,
    agent_id: &str,
    copy: &RefusedCopy,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let Some(mut agent) = w.get::<Agent>(agent_id)? else {
        return Ok(false);
    };
    let ongoing = agent.duplicate.take().filter(|d| d.is_active(now));
    let new_episode = ongoing.is_none();
    agent.duplicate = Some(DuplicateSighting {
        host_id: copy.host_id.clone(),
        hostname: copy.hostname.clone(),
        address: copy.address.clone(),
        first_seen_at: ongoing.as_ref().map_or(now, |d| d.first_seen_at),
        seen_at: now,
        attempts: ongoing.as_ref().map_or(0, |d| d.attempts) + 1,
    });
    w.put(&agent)?;
    index_duplicate(w, &agent)?;
    if new_episode {
        let holder = if copy.holder_connected {
            format!("the connected copy on host {}", copy.holder_host_id)
        } else {
            format!("host {}, recorded for it", copy.holder_host_id)
        };
        let detail = format!(
            "a copy of agent {} on another machine (host {}, host id {}, from {}) was \
             refused: {holder} keeps the identity, and jobs run only there",
            agent.name, copy.hostname, copy.host_id, copy.address
        );
        audit::record(
            w,
            &Actor::system(),
            "agent.duplicate",
            &format!("agent:{}", agent.name),
            detail.clone(),
        )?;
        let admins = notifications::admin_ids(w)?;
        crate::alerts::raise(
            w,
            &admins,
            &crate::alerts::Alert {
                event: "agent.duplicate",
                project_id: Some(agent.project_id.clone()),
                subject: serde_json::json!({"agent": agent.name, "agent_id": agent.id, "host_id": copy.host_id, "hostname": copy.hostname}),
                message: Message {
                    title: format!("Agent {} was cloned to another machine", agent.name),
                    body: format!(
                        "{detail}. The copy retries every {} minutes and is refused each time; \
                     the agents page says how to enroll it as an agent of its own.",
                        DUPLICATE_RETRY_S / 60
                    ),
                    link: Some(format!("/agents#agent-{}", agent.id)),
                    level: "danger",
                    subject: format!("agent:{}", agent.id),
                },
            },
        )?;
    }
    Ok(new_episode)
}

/// What [`accept_host`] changed.
#[derive(Debug, Clone)]
pub struct HostAccepted {
    /// The agent after the change.
    pub agent: Agent,
    /// The host that held the identity before.
    pub previous_host_id: Option<String>,
    /// Running executions of the previous host, now failed.
    pub failed_executions: Vec<String>,
}

/// An admin's answer to a duplicate: the machine of the latest refused copy becomes
/// the one that holds the agent's identity (the server moved to new hardware, or was
/// restored from a snapshot, and the old machine is gone). The previous host is refused
/// from then on, and the jobs it was running are failed, since nothing can report them
/// any more. Audited as `agent.accept_host`. 409 when no copy was refused.
pub fn accept_host(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    agent_id: &str,
    now: DateTime<Utc>,
) -> AppResult<HostAccepted> {
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
        return Err(AppError::conflict("the agent is revoked"));
    }
    let Some(copy) = agent.duplicate.take() else {
        return Err(AppError::conflict(
            "no copy of this agent was refused; there is no other host to accept",
        ));
    };
    let previous_host_id = agent.host_id.replace(copy.host_id.clone());
    w.put(&agent)?;
    index_duplicate(w, &agent)?;
    let mut failed_executions = Vec::new();
    for execution in executions::active_of_agent(w, &agent.id)? {
        if execution.status != Status::Running {
            continue;
        }
        let on_new_host =
            job_holder(w, &execution.id)?.is_some_and(|holder| holder.host_id == copy.host_id);
        if on_new_host {
            continue;
        }
        let summary = format!(
            "lost: {} accepted another machine as agent {} while the job ran on the previous one",
            actor.username, agent.name
        );
        if executions::finish(w, &execution.id, Status::Failed, None, &summary, now)? {
            failed_executions.push(execution.id);
        }
    }
    audit::record(
        w,
        actor,
        "agent.accept_host",
        &format!("agent:{}", agent.name),
        format!(
            "host {} (host id {}, from {}) now holds the identity instead of host id {}; \
             {} running job(s) of the previous host failed",
            copy.hostname,
            copy.host_id,
            copy.address,
            previous_host_id.as_deref().unwrap_or("unknown"),
            failed_executions.len()
        ),
    )?;
    Ok(HostAccepted {
        agent,
        previous_host_id,
        failed_executions,
    })
}

/// Which copy of an agent started a running job: the gateway hands a job it sends
/// again only to a process on the same machine (an agent restart re-adopts it), never
/// to a copy on another one. Kept while the execution is active; removed by
/// `executions::finish`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobHolder {
    /// The execution id.
    pub id: String,
    /// The agent.
    pub agent_id: String,
    /// The machine the job runs on.
    pub host_id: String,
    /// The agent process that started (or last resumed) it.
    pub instance_id: String,
    /// When that was.
    pub since: DateTime<Utc>,
}

impl Record for JobHolder {
    const TABLE: &'static str = "agent_job_holders";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Records which agent process (and machine) started or resumed a job. Agents that
/// predate host ids leave nothing to record.
pub fn record_job_holder(w: &mut Writer, holder: &JobHolder) -> anyhow::Result<()> {
    if holder.host_id.is_empty() {
        return Ok(());
    }
    w.put(holder)
}

/// The holder of a running job, if one was recorded.
pub fn job_holder(r: &impl Read, execution_id: &str) -> anyhow::Result<Option<JobHolder>> {
    r.get(execution_id)
}

/// Forgets a job's holder (the job ended).
pub fn forget_job_holder(w: &mut Writer, execution_id: &str) -> anyhow::Result<()> {
    w.remove::<JobHolder>(execution_id)
}

/// Records when an agent was last seen (at the end of its connection).
pub fn record_last_seen(w: &mut Writer, agent_id: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    if let Some(mut agent) = w.get::<Agent>(agent_id)? {
        agent.last_seen = Some(at);
        crate::agent_offline::mark_offline(w, &mut agent, at)?;
        w.put(&agent)?;
    }
    Ok(())
}

/// A time as index keys write it: fixed width, so text order is time order.
fn expiry_text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The expiry index key of an enrollment token.
fn expiry_key(token: &EnrollmentTokenRecord) -> String {
    format!("{}/{}", expiry_text(token.expires_at), token.id)
}

/// Writes the indexes of a newly enrolled agent (its name and project never change).
fn index_new(w: &mut Writer, agent: &Agent) -> anyhow::Result<()> {
    let position = listing::name_position(&agent.name, &agent.id);
    w.index_put(
        AGENT_BY_PROJECT,
        &format!("{}/{}", agent.project_id, agent.id),
        &agent.id,
    )?;
    w.index_put(
        AGENT_BY_PROJECT_NAME,
        &format!("{}/{position}", agent.project_id),
        &agent.id,
    )?;
    w.index_put(AGENT_ORDER, &position, &agent.id)?;
    index_duplicate(w, agent)
}

/// Keeps `agent_duplicate` in step with whether the agent has a refused copy on record;
/// called wherever that changes.
fn index_duplicate(w: &mut Writer, agent: &Agent) -> anyhow::Result<()> {
    match agent.duplicate {
        Some(_) => w.index_put(AGENT_DUPLICATE, &agent.id, &agent.id),
        None => w.index_delete(AGENT_DUPLICATE, &agent.id),
    }
}

/// Kept count of usable (not revoked) agents, and of those per project.
const AGENTS_COUNT: &str = "agents_usable";
/// Kept count of usable agents on one version: `agents_on/VERSION`, and per project
/// `agents_on/PROJECT/VERSION`.
const AGENTS_ON: &str = "agents_on";
/// Set once the counts above cover the agents enrolled before they were kept.
const VERSION_COUNTS_READY: &str = "agents_version_counts_ready";

/// Adds `delta` to the kept counts an agent is part of (nothing for a revoked one).
fn count_version(w: &mut Writer, agent: &Agent, delta: i64) -> anyhow::Result<()> {
    if agent.revoked_at.is_some() {
        return Ok(());
    }
    let version = &agent.facts.agent_version;
    let project = &agent.project_id;
    w.counter_add(AGENTS_COUNT, delta)?;
    w.counter_add(&format!("{AGENTS_COUNT}/{project}"), delta)?;
    w.counter_add(&format!("{AGENTS_ON}/{version}"), delta)?;
    w.counter_add(&format!("{AGENTS_ON}/{project}/{version}"), delta)?;
    Ok(())
}

/// Counts the agents enrolled before version counts were kept, once (the marker is
/// read and set in the same transaction, so replicas starting together count once).
pub fn backfill_version_counts(store: &Store) -> anyhow::Result<()> {
    if store.read(|r| r.counter(VERSION_COUNTS_READY))? > 0 {
        return Ok(());
    }
    store.write(|w| {
        if w.counter(VERSION_COUNTS_READY)? > 0 {
            return Ok(());
        }
        let all: Vec<Agent> = w.list()?;
        for agent in &all {
            count_version(w, agent, 1)?;
        }
        w.counter_add(VERSION_COUNTS_READY, 1)?;
        Ok(())
    })
}

/// Kept count of usable agents whose current certificate a CA issued:
/// `agents_by_ca/CA_ID` (see [`crate::fleet::ca`]: a CA is retired once no agent
/// depends on it).
const AGENTS_BY_CA: &str = "agents_by_ca";
/// Set once the counts above cover the agents enrolled before they were kept.
const CA_COUNTS_READY: &str = "agents_ca_counts_ready";

/// Adds `delta` to the count of the CA that issued the agent's certificate (nothing
/// for a revoked agent).
fn count_ca(w: &mut Writer, agent: &Agent, delta: i64) -> anyhow::Result<()> {
    if agent.revoked_at.is_some() {
        return Ok(());
    }
    w.counter_add(&format!("{AGENTS_BY_CA}/{}", agent.cert_ca_id()), delta)?;
    Ok(())
}

/// How many usable agents hold a current certificate of the CA `ca_id`.
pub fn holding_ca(r: &impl Read, ca_id: &str) -> anyhow::Result<u64> {
    r.counter(&format!("{AGENTS_BY_CA}/{ca_id}"))
}

/// Counts the agents enrolled before the per-CA counts were kept, once (all hold
/// certificates of the original CA then; the marker is read and set in the same
/// transaction, so replicas starting together count once).
pub fn backfill_ca_counts(store: &Store) -> anyhow::Result<()> {
    if store.read(|r| r.counter(CA_COUNTS_READY))? > 0 {
        return Ok(());
    }
    store.write(|w| {
        if w.counter(CA_COUNTS_READY)? > 0 {
            return Ok(());
        }
        let all: Vec<Agent> = w.list()?;
        for agent in &all {
            count_ca(w, agent, 1)?;
        }
        w.counter_add(CA_COUNTS_READY, 1)?;
        Ok(())
    })
}

/// How much of the fleet a subject sees runs the control plane's own version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    /// The control plane's version.
    pub version: String,
    /// Usable (not revoked) agents the subject sees.
    pub agents: u64,
    /// Those of them on `version`.
    pub current: u64,
    /// `agents - current`.
    pub outdated: u64,
    /// "37 of 40 on 0.3.0".
    pub text: String,
}

/// The version summary of the agents `subject` sees (of one project when given), from
/// the kept counts: a few counter reads whatever the fleet's size.
pub fn version_summary(
    r: &impl Read,
    subject: &Subject,
    project_id: Option<&str>,
) -> anyhow::Result<VersionSummary> {
    let version = dynserv_shared::VERSION;
    let projects: Option<Vec<String>> = match project_id {
        Some(p) => Some(vec![p.to_string()]),
        None => listing::project_scope(subject, Action::ViewServers),
    };
    let (agents, current) = match projects {
        None => (
            r.counter(AGENTS_COUNT)?,
            r.counter(&format!("{AGENTS_ON}/{version}"))?,
        ),
        Some(projects) => {
            let mut names = Vec::new();
            for p in &projects {
                names.push(format!("{AGENTS_COUNT}/{p}"));
                names.push(format!("{AGENTS_ON}/{p}/{version}"));
            }
            r.prefetch_counters(&names)?;
            let (mut agents, mut current) = (0, 0);
            for p in &projects {
                agents += r.counter(&format!("{AGENTS_COUNT}/{p}"))?;
                current += r.counter(&format!("{AGENTS_ON}/{p}/{version}"))?;
            }
            (agents, current)
        }
    };
    let current = current.min(agents);
    Ok(VersionSummary {
        version: version.to_string(),
        agents,
        current,
        outdated: agents - current,
        text: format!("{current} of {agents} on {version}"),
    })
}

/// Schema step: the list indexes of agents enrolled, and the expiry index of
/// enrollment tokens created, before lists read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<Agent> = w.list()?;
    for agent in &all {
        index_new(w, agent)?;
    }
    let tokens: Vec<EnrollmentTokenRecord> = w.list()?;
    for token in &tokens {
        w.index_put(TOKEN_BY_EXPIRY, &expiry_key(token), &token.id)?;
    }
    Ok(())
}

/// What a list of agents is narrowed to; the fields combine.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Resolved, and its visibility checked, by the caller.
    pub project_id: Option<String>,
    /// Text in the name or the host name, case-insensitive.
    pub text: Option<String>,
}

/// One page of the agents a subject may see that match `filter`, by name, after the
/// position `cursor` (see [`crate::listing`]).
pub fn query(
    r: &impl Read,
    subject: &Subject,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Agent>> {
    let sources = match (
        &filter.project_id,
        listing::project_scope(subject, Action::ViewServers),
    ) {
        (Some(project), _) => vec![Source::index(AGENT_BY_PROJECT_NAME, format!("{project}/"))],
        (None, Some(projects)) => projects
            .iter()
            .map(|p| Source::index(AGENT_BY_PROJECT_NAME, format!("{p}/")))
            .collect(),
        (None, None) => vec![Source::index(AGENT_ORDER, "")],
    };
    let needle = filter.text.as_deref().map(str::to_lowercase);
    listing::page(r, sources, Order::Ascending, cursor, limit, |a: &Agent| {
        filter
            .project_id
            .as_ref()
            .is_none_or(|p| &a.project_id == p)
            && needle
                .as_deref()
                .is_none_or(|q| a.name.contains(q) || a.facts.hostname.to_lowercase().contains(q))
            && policy::can(subject, Action::ViewServers, Some(&a.project_id))
    })
}

/// Every agent a subject may see, by name, read page by page: for forms that offer
/// agents to choose from, never for a list a person pages.
pub fn visible(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Agent>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = query(r, subject, &Filter::default(), cursor.as_deref(), 1000)?;
        out.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

/// The agents a subject may see that have a refused copy on record (their episode may
/// have ended since: `view` shows only ongoing ones).
pub fn with_duplicates(r: &impl Read, subject: &Subject) -> anyhow::Result<Vec<Agent>> {
    let mut out = Vec::new();
    for (_, id) in r.index_scan(AGENT_DUPLICATE, "")? {
        if let Some(agent) = r.get::<Agent>(&id)? {
            if policy::can(subject, Action::ViewServers, Some(&agent.project_id)) {
                out.push(agent);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The usable (not revoked) agents of a project, through its index.
pub fn of_project(r: &impl Read, project_id: &str) -> anyhow::Result<Vec<Agent>> {
    let ids: Vec<String> = r
        .index_scan(AGENT_BY_PROJECT, &format!("{project_id}/"))?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    // Read together: one query on PostgreSQL for a project of a thousand agents.
    Ok(r.get_many::<Agent>(&ids)?
        .into_iter()
        .flatten()
        .filter(|agent| agent.revoked_at.is_none())
        .collect())
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
    // Agents of that name: the positions `name id` in the name order.
    let mut matches: Vec<Agent> = Vec::new();
    for (_, id) in r.index_scan(AGENT_ORDER, &format!("{wanted} "))? {
        if let Some(agent) = r.get::<Agent>(&id)? {
            if agent.name == wanted
                && agent.revoked_at.is_none()
                && policy::can(subject, Action::ViewServers, Some(&agent.project_id))
            {
                matches.push(agent);
            }
        }
    }
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
    pub cpu_percent: Option<f64>,
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
    /// Older than the control plane's own version.
    pub outdated: bool,
    /// The fleet protocol of its last hello (0: not recorded yet).
    pub protocol: u32,
    /// When its certificate expires (null for certificates from before they had a
    /// lifetime).
    pub cert_expires_at: Option<DateTime<Utc>>,
    pub facts: AgentFacts,
    pub load: Option<LiveLoad>,
    pub revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
    pub enrolled_at: DateTime<Utc>,
    /// The host id of the machine holding the agent's identity.
    pub host_id: Option<String>,
    /// A copy of the agent on another machine, refused recently (an ongoing episode),
    /// or null.
    pub duplicate: Option<DuplicateSighting>,
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
        outdated: dynserv_shared::version_is_older(
            &agent.facts.agent_version,
            dynserv_shared::VERSION,
        ),
        protocol: agent.protocol,
        cert_expires_at: agent.cert_expires_at,
        facts: agent.facts.clone(),
        load,
        revoked: agent.revoked_at.is_some(),
        revoked_at: agent.revoked_at,
        enrolled_at: agent.enrolled_at,
        host_id: agent.host_id.clone(),
        duplicate: agent
            .duplicate
            .clone()
            .filter(|d| agent.revoked_at.is_none() && d.is_active(Utc::now())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The live enrollment tokens are read through their expiry index: an expired,
    /// a used-up and a revoked token are left out, the others come newest first.
    #[test]
    fn live_tokens_leave_out_expired_used_and_revoked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.seal_with(crate::secrets::Keys::from_master(b"test"));
        let t0 = Utc::now();
        let admin = crate::policy::Subject {
            user_id: "u".into(),
            username: "admin".into(),
            role: crate::policy::Role::Admin,
            is_manager: false,
            grants: Default::default(),
        };
        let ids = store
            .write(|w| {
                let project = projects::create(
                    w,
                    &crate::secrets::Keys::from_master(b"test"),
                    &Actor::system(),
                    &projects::ProjectInput {
                        name: Some("P".into()),
                        ..Default::default()
                    },
                )?;
                let mut make = |ttl_hours: i64| -> anyhow::Result<String> {
                    let (t, _) = create_token(
                        w,
                        &Actor::system(),
                        &project,
                        1,
                        Duration::hours(ttl_hours),
                        t0,
                    )?;
                    Ok(t.id)
                };
                let ids = [make(1)?, make(3)?, make(4)?, make(5)?];
                let mut used: EnrollmentTokenRecord = w.get(&ids[2])?.expect("stored");
                used.uses = 1;
                w.put(&used)?;
                revoke_token(w, &Actor::system(), &admin, &ids[3], t0)?;
                Ok(ids)
            })
            .unwrap();
        let live = store
            .read(|r| live_tokens(r, &admin, t0 + Duration::hours(2)))
            .unwrap();
        let live: Vec<&str> = live.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(live, [ids[1].as_str()]);
        let all = store.read(|r| live_tokens(r, &admin, t0)).unwrap();
        assert_eq!(all.len(), 2, "newest first: {all:?}");
        assert_eq!(
            (all[0].id.as_str(), all[1].id.as_str()),
            (ids[1].as_str(), ids[0].as_str())
        );
    }

    /// The version summary follows enrollments, hellos that change an agent's version
    /// and revocations, per project too, and the one-time count of older stores agrees
    /// with the kept one.
    #[test]
    fn version_counts_follow_enrollment_hellos_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let keys = crate::secrets::Keys::from_master(b"test");
        store.seal_with(keys.clone());
        let admin = crate::policy::Subject {
            user_id: "u".into(),
            username: "admin".into(),
            role: crate::policy::Role::Admin,
            is_manager: false,
            grants: Default::default(),
        };
        let ours = dynserv_shared::VERSION;
        let now = Utc::now();
        let (p1, p2) = store
            .write(|w| {
                let mut ids = Vec::new();
                for (name, agents) in [("P1", ["a1", "a2", "a3"].as_slice()), ("P2", &["b1"])] {
                    let project = projects::create(
                        w,
                        &keys,
                        &Actor::system(),
                        &projects::ProjectInput {
                            name: Some(name.into()),
                            ..Default::default()
                        },
                    )?;
                    let (token, _) =
                        create_token(w, &Actor::system(), &project, 10, Duration::hours(1), now)?;
                    for id in agents {
                        let new = NewAgent {
                            id,
                            name: id,
                            cert_sha256: "c",
                            facts: AgentFacts {
                                agent_version: ours.into(),
                                ..Default::default()
                            },
                            host_id: "",
                            protocol: 2,
                            cert_expires_at: now,
                            ca_id: crate::fleet::ca::ORIGINAL_CA_ID,
                        };
                        register(w, &token, new, now)?.expect("enrolled");
                    }
                    ids.push(project.id);
                }
                Ok((ids[0].clone(), ids[1].clone()))
            })
            .unwrap();
        let text = |project: Option<&str>| {
            store
                .read(|r| version_summary(r, &admin, project))
                .unwrap()
                .text
        };
        assert_eq!(text(None), format!("4 of 4 on {ours}"));
        let old = HelloFacts {
            facts: AgentFacts {
                agent_version: "0.0.1".into(),
                ..Default::default()
            },
            host_id: String::new(),
            protocol: 1,
        };
        store
            .write(|w| {
                record_hello(w, "a2", &old, now)?;
                record_hello(w, "a2", &old, now)?;
                record_hello(w, "b1", &old, now)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(text(None), format!("2 of 4 on {ours}"));
        assert_eq!(text(Some(&p1)), format!("2 of 3 on {ours}"));
        assert_eq!(text(Some(&p2)), format!("0 of 1 on {ours}"));
        store
            .write(|w| {
                revoke(w, &Actor::system(), &admin, "a1").map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(())
            })
            .unwrap();
        assert_eq!(text(None), format!("1 of 3 on {ours}"));
        let summary = store.read(|r| version_summary(r, &admin, None)).unwrap();
        assert_eq!((summary.agents, summary.outdated), (3, 2));

        // A store from before the counts: counted once at startup, the same result.
        let kept: Vec<(String, u64)> = store
            .read(|r| {
                let mut out = Vec::new();
                for name in [AGENTS_COUNT.to_string(), format!("{AGENTS_ON}/{ours}")] {
                    out.push((name.clone(), r.counter(&name)?));
                }
                Ok(out)
            })
            .unwrap();
        store
            .write(|w| {
                for (name, value) in &kept {
                    w.counter_add(name, -(*value as i64))?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(text(None), format!("0 of 0 on {ours}"));
        backfill_version_counts(&store).unwrap();
        backfill_version_counts(&store).unwrap();
        assert_eq!(text(None), format!("1 of 3 on {ours}"));
    }

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

    fn agent(id: &str, host_id: Option<&str>) -> Agent {
        Agent {
            host_id: host_id.map(String::from),
            ..Agent::sample(id, "web-01", "p1")
        }
    }

    fn hello(facts: &AgentFacts, host_id: &str) -> HelloFacts {
        HelloFacts {
            facts: facts.clone(),
            host_id: host_id.into(),
            protocol: 0,
        }
    }

    fn copy(host_id: &str) -> RefusedCopy {
        RefusedCopy {
            host_id: host_id.into(),
            hostname: "web-01-clone".into(),
            address: "192.0.2.7".into(),
            holder_host_id: "h1".into(),
            holder_connected: true,
        }
    }

    /// A refused copy is audited as `agent.duplicate` and announced to every admin
    /// once per episode, not once per attempt; a sighting after a quiet period is a new
    /// episode. The original's hello clears an ended episode, never an ongoing one.
    #[test]
    fn a_duplicate_is_announced_once_per_episode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (admin, tech) = store
            .write(|w| {
                w.put(&agent("a1", Some("h1")))?;
                Ok((
                    crate::users::test_user(w, "boss", "admin")?,
                    crate::users::test_user(w, "tech", "technical")?,
                ))
            })
            .unwrap();
        let t0 = Utc::now();
        let retry = Duration::seconds(DUPLICATE_RETRY_S as i64);
        let episodes: Vec<bool> = [t0, t0 + retry, t0 + retry * 2]
            .into_iter()
            .map(|at| {
                store
                    .write(|w| record_duplicate(w, "a1", &copy("h2"), at))
                    .unwrap()
            })
            .collect();
        assert_eq!(episodes, [true, false, false]);
        let count = |store: &Store| {
            store
                .read(|r| {
                    let audits = r
                        .list::<audit::AuditEntry>()?
                        .into_iter()
                        .filter(|e| e.action == "agent.duplicate")
                        .count();
                    Ok((
                        audits,
                        notifications::inbox(r, &admin.id, false, 100)?.len(),
                        notifications::inbox(r, &tech.id, false, 100)?.len(),
                    ))
                })
                .unwrap()
        };
        assert_eq!(count(&store), (1, 1, 0), "one audit entry, admins only");
        let sighting = store
            .get::<Agent>("a1")
            .unwrap()
            .unwrap()
            .duplicate
            .unwrap();
        assert_eq!(
            (sighting.attempts, sighting.first_seen_at, sighting.seen_at),
            (3, t0, t0 + retry * 2)
        );
        assert_eq!(sighting.address, "192.0.2.7");

        // The original says hello while the copy still knocks: the flag stays.
        let hello_at = t0 + retry * 2 + Duration::minutes(1);
        store
            .write(|w| record_hello(w, "a1", &hello(&AgentFacts::default(), "h1"), hello_at))
            .unwrap();
        assert!(store
            .get::<Agent>("a1")
            .unwrap()
            .unwrap()
            .duplicate
            .is_some());
        // After a quiet period the view no longer shows it, and the original's next
        // hello clears it (a copy's hello would not).
        let quiet = t0 + retry * 2 + Duration::minutes(DUPLICATE_QUIET_MINUTES + 1);
        assert!(!sighting.is_active(quiet));
        assert!(store
            .read(|r| hello_changes_anything(r, "a1", &hello(&AgentFacts::default(), "h1"), quiet))
            .unwrap());
        store
            .write(|w| record_hello(w, "a1", &hello(&AgentFacts::default(), "h2"), quiet))
            .unwrap();
        assert!(store
            .get::<Agent>("a1")
            .unwrap()
            .unwrap()
            .duplicate
            .is_some());
        store
            .write(|w| record_hello(w, "a1", &hello(&AgentFacts::default(), "h1"), quiet))
            .unwrap();
        assert!(store
            .get::<Agent>("a1")
            .unwrap()
            .unwrap()
            .duplicate
            .is_none());
        // A new sighting is a new episode.
        assert!(store
            .write(|w| record_duplicate(w, "a1", &copy("h2"), quiet))
            .unwrap());
        assert_eq!(count(&store), (2, 2, 0));
    }

    /// The first host id an agent sends is recorded as its holder; later ones do not
    /// replace it, and agents without one record nothing.
    #[test]
    fn the_first_host_id_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let now = Utc::now();
        store.write(|w| w.put(&agent("a1", None))).unwrap();
        let facts = AgentFacts::default();
        assert!(store
            .read(|r| hello_changes_anything(r, "a1", &hello(&facts, "h1"), now))
            .unwrap());
        for host in ["", "h1", "h2"] {
            store
                .write(|w| record_hello(w, "a1", &hello(&facts, host), now))
                .unwrap();
        }
        assert_eq!(
            store
                .get::<Agent>("a1")
                .unwrap()
                .unwrap()
                .host_id
                .as_deref(),
            Some("h1")
        );
        assert!(!store
            .read(|r| hello_changes_anything(r, "a1", &hello(&facts, "h1"), now))
            .unwrap());
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
