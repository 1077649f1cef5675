//! The audit log: who changed what, when, from which address. Every domain function
//! that changes state writes its entry in the same transaction as the change, so the
//! log and the state never disagree.

use serde::{Deserialize, Serialize};

use crate::store::{Read, Record, Writer};

/// One audit entry. Ids are UUIDv7, so id order is time order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Username of the actor, or `system` / `cli`.
    pub actor: String,
    /// What happened, e.g. `user.create`.
    pub action: String,
    /// What it happened to, e.g. `user:sohila`.
    pub target: String,
    /// Details a person can read; never a secret.
    pub detail: String,
    /// The client address, when it came over HTTP.
    pub ip: Option<String>,
}

impl Record for AuditEntry {
    const TABLE: &'static str = "audit";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Who is acting and from where; passed to every state-changing domain function.
#[derive(Debug, Clone)]
pub struct Actor {
    pub username: String,
    pub ip: Option<String>,
}

impl Actor {
    /// The actor for changes made by the server itself.
    pub fn system() -> Actor {
        Actor {
            username: "system".into(),
            ip: None,
        }
    }
    /// The actor for changes made from the command line on the server machine.
    pub fn cli() -> Actor {
        Actor {
            username: "cli".into(),
            ip: None,
        }
    }
}

/// Records an audit entry inside the caller's transaction.
pub fn record(
    w: &mut Writer,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: impl Into<String>,
) -> anyhow::Result<()> {
    w.put(&AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        at: chrono::Utc::now(),
        actor: actor.username.clone(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.into(),
        ip: actor.ip.clone(),
    })
}

/// The newest `limit` entries, newest first, optionally only those whose fields
/// contain `query` (case-insensitive).
pub fn recent(r: &impl Read, query: Option<&str>, limit: usize) -> anyhow::Result<Vec<AuditEntry>> {
    let needle = query.map(str::to_lowercase).filter(|q| !q.is_empty());
    let mut entries: Vec<AuditEntry> = r.list()?;
    entries.reverse();
    Ok(entries
        .into_iter()
        .filter(|e| match &needle {
            None => true,
            Some(q) => [&e.actor, &e.action, &e.target, &e.detail]
                .iter()
                .any(|f| f.to_lowercase().contains(q.as_str())),
        })
        .take(limit)
        .collect())
}
