//! Notifications: each user's inbox. Other domain modules call [`notify`] inside the
//! write transaction of the change they announce, so a notification exists exactly
//! when its change does. Reading, counting and marking read live here too.
//!
//! Indexes: `notification_by_user` (`user_id/notification_id`, every notification of a
//! user) and `notification_unread` (`user_id/notification_id`, only the unread ones),
//! so the unread count of the badge is one index scan.
//!
//! What does not live here: who gets told about what (the announcing module decides)
//! and any delivery outside the product (e-mail).

use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};
use crate::policy::Role;
use crate::store::{IndexScan, Read, Record, Writer};
use crate::users::{self, User};

const BY_USER: &str = "notification_by_user";
const UNREAD: &str = "notification_unread";

/// One notification in one user's inbox. Ids are UUIDv7, so id order is time order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub id: String,
    pub user_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// One line: what happened.
    pub title: String,
    /// Details; may be empty.
    pub body: String,
    /// The page of what it is about (`/requests/ID`), or `None`.
    pub link: Option<String>,
    /// `info`, `success`, `warning` or `danger`: how the toast looks.
    pub level: String,
    pub read: bool,
    /// What it is about, e.g. `request:ID`, for tests and filtering.
    pub subject: String,
}

impl Record for Notification {
    const TABLE: &'static str = "notifications";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What to announce; [`notify`] copies it into each recipient's inbox.
#[derive(Debug, Clone)]
pub struct Message {
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    pub level: &'static str,
    pub subject: String,
}

fn key(user_id: &str, notification_id: &str) -> String {
    format!("{user_id}/{notification_id}")
}

/// Puts `message` into the inbox of each user in `user_ids` (duplicates are told once).
pub fn notify(w: &mut Writer, user_ids: &[String], message: &Message) -> anyhow::Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for user_id in user_ids {
        if seen.contains(&user_id.as_str()) {
            continue;
        }
        seen.push(user_id);
        let notification = Notification {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.clone(),
            at: chrono::Utc::now(),
            title: message.title.clone(),
            body: message.body.clone(),
            link: message.link.clone(),
            level: message.level.to_string(),
            read: false,
            subject: message.subject.clone(),
        };
        w.put(&notification)?;
        w.index_put(BY_USER, &key(user_id, &notification.id), &notification.id)?;
        w.index_put(UNREAD, &key(user_id, &notification.id), &notification.id)?;
        w.counter_add(&unread_counter(user_id), 1)?;
        w.announce(crate::live::Event::notification(user_id));
    }
    Ok(())
}

/// The ids of every active admin: the people most announcements go to.
pub fn admin_ids(r: &impl Read) -> anyhow::Result<Vec<String>> {
    Ok(users::all(r)?
        .into_iter()
        .filter(|u| u.active && u.role == Role::Admin)
        .map(|u| u.id)
        .collect())
}

/// The id of an active user by username, for announcements addressed by name.
pub fn user_id_of(r: &impl Read, username: &str) -> anyhow::Result<Option<String>> {
    Ok(users::by_username(r, username)?
        .filter(|u: &User| u.active)
        .map(|u| u.id))
}

/// A user's inbox, newest first, at most `limit`; only unread ones with `unread_only`.
pub fn inbox(
    r: &impl Read,
    user_id: &str,
    unread_only: bool,
    limit: usize,
) -> anyhow::Result<Vec<Notification>> {
    Ok(inbox_page(r, user_id, unread_only, None, limit)?.0)
}

/// One page of a user's inbox, newest first, after the notification id `cursor`;
/// the second value is the next page's cursor while more remain.
pub fn inbox_page(
    r: &impl Read,
    user_id: &str,
    unread_only: bool,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<(Vec<Notification>, Option<String>)> {
    let index = if unread_only { UNREAD } else { BY_USER };
    let prefix = format!("{user_id}/");
    let scan = IndexScan::prefix(index, &prefix, limit.saturating_add(1))
        .backward()
        .after(cursor.map(|c| format!("{prefix}{c}")));
    let mut entries = r.index_page(&scan)?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let mut out = Vec::new();
    for (_, id) in &entries {
        if let Some(n) = r.get::<Notification>(id)? {
            out.push(n);
        }
    }
    let next = more.then(|| out.last().map(|n| n.id.clone())).flatten();
    Ok((out, next))
}

/// How many unread notifications a user has: a kept count, not a scan.
pub fn unread_count(r: &impl Read, user_id: &str) -> anyhow::Result<usize> {
    Ok(usize::try_from(r.counter(&unread_counter(user_id))?).unwrap_or(usize::MAX))
}

/// Adds [`unread_count`]'s read to `ahead`.
pub fn unread_ahead(ahead: crate::store::Ahead, user_id: &str) -> crate::store::Ahead {
    ahead.counter(unread_counter(user_id))
}

fn unread_counter(user_id: &str) -> String {
    format!("notifications_unread/{user_id}")
}

/// Schema step: the kept unread counts of notifications stored before they were
/// kept.
pub fn backfill_counts(w: &mut Writer) -> anyhow::Result<()> {
    let unread: Vec<(String, String)> = w.index_scan(UNREAD, "")?;
    for (key, _) in unread {
        if let Some((user_id, _)) = key.split_once('/') {
            w.counter_add(&unread_counter(user_id), 1)?;
        }
    }
    Ok(())
}

/// Deletes up to `max` read notifications older than `cutoff`, oldest first, a
/// small batch per transaction; unread ones stay. Returns how many it deleted.
pub fn prune(
    store: &crate::store::Store,
    cutoff: chrono::DateTime<chrono::Utc>,
    max: usize,
) -> anyhow::Result<usize> {
    let upper = crate::executions::id_floor(cutoff);
    let mut after: Option<String> = None;
    let mut deleted = 0;
    while deleted < max {
        let (examined, removed) = store.write(|w| {
            let mut scan = IndexScan::prefix("", "", 500).after(after.clone());
            scan.upper = upper.clone();
            let old: Vec<Notification> = w.records_page(&scan)?;
            let mut removed = 0;
            for n in &old {
                if n.read && n.at < cutoff && deleted + removed < max {
                    w.delete::<Notification>(&n.id)?;
                    w.index_delete(BY_USER, &key(&n.user_id, &n.id))?;
                    removed += 1;
                }
            }
            Ok((old.last().map(|n| n.id.clone()), removed))
        })?;
        deleted += removed;
        match examined {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    Ok(deleted)
}

/// Marks one of the user's notifications read; 404 for someone else's.
pub fn mark_read(w: &mut Writer, user_id: &str, notification_id: &str) -> AppResult<Notification> {
    let mut n: Notification = w
        .get(notification_id)?
        .filter(|n: &Notification| n.user_id == user_id)
        .ok_or_else(|| AppError::not_found("notification"))?;
    if !n.read {
        n.read = true;
        w.put(&n)?;
        w.index_delete(UNREAD, &key(user_id, &n.id))?;
        w.counter_add(&unread_counter(user_id), -1)?;
        w.announce(crate::live::Event::notification(user_id));
    }
    Ok(n)
}

/// Marks every notification of the user read; answers how many were unread.
pub fn mark_all_read(w: &mut Writer, user_id: &str) -> AppResult<usize> {
    let unread = w.index_scan(UNREAD, &format!("{user_id}/"))?;
    for (_, id) in &unread {
        mark_read(w, user_id, id)?;
    }
    Ok(unread.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn message(title: &str) -> Message {
        Message {
            title: title.into(),
            body: String::new(),
            link: Some("/requests/x".into()),
            level: "info",
            subject: "request:x".into(),
        }
    }

    /// Inboxes are per user, newest first; marking read updates the unread count, and
    /// nobody can mark another user's notification.
    #[test]
    fn inbox_unread_and_mark_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (a, b) = ("user-a".to_string(), "user-b".to_string());
        store
            .write(|w| {
                notify(w, &[a.clone(), b.clone(), a.clone()], &message("first"))?;
                notify(w, std::slice::from_ref(&a), &message("second"))?;
                Ok(())
            })
            .unwrap();
        let (inbox_a, unread_a, unread_b) = store
            .read(|r| {
                Ok((
                    inbox(r, &a, false, 10)?,
                    unread_count(r, &a)?,
                    unread_count(r, &b)?,
                ))
            })
            .unwrap();
        let titles: Vec<&str> = inbox_a.iter().map(|n| n.title.as_str()).collect();
        assert_eq!(
            titles,
            ["second", "first"],
            "newest first, duplicates told once"
        );
        assert_eq!((unread_a, unread_b), (2, 1));

        let first_of_b = store.read(|r| inbox(r, &b, false, 10)).unwrap()[0].clone();
        let refused = store.write(|w| Ok(mark_read(w, &a, &first_of_b.id)));
        assert_eq!(
            refused.unwrap().unwrap_err().kind,
            crate::error::Kind::NotFound
        );
        store
            .write(|w| Ok(mark_read(w, &a, &inbox_a[0].id)?))
            .unwrap();
        assert_eq!(store.read(|r| unread_count(r, &a)).unwrap(), 1);
        assert_eq!(
            store.read(|r| inbox(r, &a, true, 10)).unwrap()[0].title,
            "first"
        );
        assert_eq!(store.write(|w| Ok(mark_all_read(w, &a)?)).unwrap(), 1);
        assert_eq!(store.read(|r| unread_count(r, &a)).unwrap(), 0);
        assert_eq!(store.read(|r| unread_count(r, &b)).unwrap(), 1);
    }
}
