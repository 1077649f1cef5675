//! The audit log: who changed what, when, from which address. Every domain function
//! that changes state writes its entry in the same transaction as the change, so the
//! log and the state never disagree.
//!
//! Lists read pages: the table is keyed by UUIDv7 ids (time order) and indexed by
//! actor, action and subject (`audit_by_actor` etc., `value/id`), so a filtered page
//! is one backwards walk. Entries past retention are pruned in small batches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{IndexScan, Read, Record, Store, Writer};

const BY_ACTOR: &str = "audit_by_actor";
const BY_ACTION: &str = "audit_by_action";
const BY_SUBJECT: &str = "audit_by_subject";
/// Entries a filtered page examines at most; past it the page comes back short
/// with a cursor to go on from.
const SCAN_BUDGET: usize = 20_000;

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
    let entry = AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        at: chrono::Utc::now(),
        actor: actor.username.clone(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.into(),
        ip: actor.ip.clone(),
    };
    // A new id: a new record and new index keys.
    w.insert(&entry)?;
    for (index, key) in index_keys(&entry) {
        w.index_insert(index, &key, &entry.id)?;
    }
    Ok(())
}

fn index_keys(e: &AuditEntry) -> [(&'static str, String); 3] {
    [
        (BY_ACTOR, format!("{}/{}", e.actor, e.id)),
        (BY_ACTION, format!("{}/{}", e.action, e.id)),
        (BY_SUBJECT, format!("{}/{}", e.target, e.id)),
    ]
}

fn index(w: &mut Writer, e: &AuditEntry) -> anyhow::Result<()> {
    for (index, key) in index_keys(e) {
        w.index_put(index, &key, &e.id)?;
    }
    Ok(())
}

/// Stores an audit entry with the id and time it carries (not now, as [`record`]
/// does) and the indexes [`record`] writes. Nothing else calls it: it lets the
/// data-layer benchmark (`benches/data.rs`) and load tests write a year of history.
pub fn seed_for_bench(w: &mut Writer, entry: &AuditEntry) -> anyhow::Result<()> {
    w.put(entry)?;
    index(w, entry)
}

/// Schema step: indexes for entries written before lists read pages.
pub fn backfill_indexes(w: &mut Writer) -> anyhow::Result<()> {
    let all: Vec<AuditEntry> = w.list()?;
    for e in &all {
        index(w, e)?;
    }
    Ok(())
}

/// What an audit list is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// What it happened to (`user:sohila`).
    pub subject: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Text in any field, case-insensitive.
    pub text: Option<String>,
}

impl Filter {
    fn matches(&self, e: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.as_ref().is_none_or(|a| &e.action == a)
            && self.subject.as_ref().is_none_or(|t| &e.target == t)
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at <= t)
            && self.text.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                [&e.actor, &e.action, &e.target, &e.detail]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&q))
            })
    }
}

/// One page of entries matching `filter`, newest first, after the entry id
/// `cursor`; the second value is the next page's cursor while more remain.
pub fn query(
    r: &impl Read,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<(Vec<AuditEntry>, Option<String>)> {
    let source = [
        (BY_ACTOR, &filter.actor),
        (BY_ACTION, &filter.action),
        (BY_SUBJECT, &filter.subject),
    ]
    .into_iter()
    .find_map(|(index, value)| value.as_ref().map(|v| (index, format!("{v}/"))));
    let lower_id = filter
        .since
        .map(crate::executions::id_floor)
        .unwrap_or_default();
    let upper_id = match (cursor, filter.until) {
        (Some(c), _) => Some(c.to_string()),
        (None, Some(until)) => Some(crate::executions::id_floor(
            until + chrono::Duration::milliseconds(1),
        )),
        (None, None) => None,
    };
    let indexed = source.is_some();
    let (index, prefix) = source.unwrap_or(("", String::new()));
    let prefix = prefix.as_str();
    // With no text and at most the one field the index holds, nearly every entry
    // scanned is kept: read one more than asked (which tells whether more remain)
    // rather than a batch of 256 (the dashboard asks for 8).
    let fields = [&filter.actor, &filter.action, &filter.subject]
        .iter()
        .filter(|v| v.is_some())
        .count();
    let batch_size = if filter.text.is_none() && fields <= 1 {
        limit.saturating_add(1).clamp(2, 256)
    } else {
        256
    };
    let mut scan = IndexScan::prefix(index, prefix, batch_size).backward();
    scan.lower = format!("{prefix}{lower_id}");
    scan.after = upper_id.map(|id| format!("{prefix}{id}"));
    let mut items = Vec::new();
    let mut examined = 0;
    loop {
        let batch: Vec<AuditEntry> = match indexed {
            true => {
                let mut out = Vec::new();
                for (_, id) in r.index_page(&scan)? {
                    if let Some(e) = r.get::<AuditEntry>(&id)? {
                        out.push(e);
                    }
                }
                out
            }
            false => r.records_page(&scan)?,
        };
        let full_batch = !batch.is_empty();
        let mut left = batch.len();
        for e in batch {
            examined += 1;
            left -= 1;
            scan.after = Some(format!("{prefix}{}", e.id));
            if filter.matches(&e) {
                items.push(e);
            }
            if items.len() >= limit || examined >= SCAN_BUDGET {
                let last = scan.after.as_ref().map(|k| k[prefix.len()..].to_string());
                // Entries left in this batch answer it; otherwise one more probe.
                let more = left > 0
                    || !{
                        let mut probe = scan.clone();
                        probe.limit = 1;
                        match indexed {
                            true => r.index_page(&probe)?.is_empty(),
                            false => r.records_page::<AuditEntry>(&probe)?.is_empty(),
                        }
                    };
                return Ok((items, if more { last } else { None }));
            }
        }
        if !full_batch {
            return Ok((items, None));
        }
    }
}

/// Deletes up to `max` entries older than `cutoff`, oldest first, a small batch per
/// transaction; returns how many it deleted.
pub fn prune(store: &Store, cutoff: DateTime<Utc>, max: usize) -> anyhow::Result<usize> {
    let mut deleted = 0;
    let upper = crate::executions::id_floor(cutoff);
    while deleted < max {
        let n = store.write(|w| {
            let mut scan = IndexScan::prefix("", "", 500.min(max - deleted));
            scan.upper = upper.clone();
            let old: Vec<AuditEntry> = w.records_page(&scan)?;
            for e in &old {
                if e.at >= cutoff {
                    continue;
                }
                w.delete::<AuditEntry>(&e.id)?;
                for (index, key) in index_keys(e) {
                    w.index_delete(index, &key)?;
                }
            }
            Ok(old.len())
        })?;
        if n == 0 {
            break;
        }
        deleted += n;
    }
    Ok(deleted)
}

/// The newest `limit` entries, newest first, optionally only those whose fields
/// contain `query` (case-insensitive).
pub fn recent(r: &impl Read, query: Option<&str>, limit: usize) -> anyhow::Result<Vec<AuditEntry>> {
    let filter = Filter {
        text: query.map(String::from).filter(|q| !q.is_empty()),
        ..Default::default()
    };
    Ok(self::query(r, &filter, None, limit)?.0)
}
