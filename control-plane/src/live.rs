//! Live updates for pages: what changed (an agent connected or left, an execution
//! started or ended, a rollout moved on), told to the browsers that watch through one
//! server-sent-events stream each (`GET /api/v1/events`, `web::live_api`).
//!
//! * Events are published after the change committed, into one bounded broadcast
//!   channel per control plane ([`CAPACITY`]); a viewer that falls behind is told to
//!   `resync` (its page reads its data again) rather than being waited for.
//! * Every event names the projects it concerns (or, for a notification, its user);
//!   each stream passes on only what its viewer may see, decided by `policy::can`
//!   ([`Event::visible_to`]).
//! * With several replicas, an event published on one goes to the others as a
//!   `cluster::Message::Live`, so a page on replica A follows what happened on B.
//! * Events carry ids and states, never secrets or output; pages read the details
//!   through the API they already use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;

use crate::policy::{self, Action, Subject};

/// Events held for slow viewers before they lag (and are told to resync).
pub const CAPACITY: usize = 1024;
/// Most event streams open at once per session (or API token).
pub const MAX_STREAMS_PER_SESSION: usize = 8;
/// Most projects an event names (a rollout over more tells the first ones' viewers).
const MAX_PROJECTS: usize = 100;

/// What an event is about; a stream asks for the topics its page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    Agents,
    Executions,
    Rollouts,
    Notifications,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::Agents,
        Topic::Executions,
        Topic::Rollouts,
        Topic::Notifications,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Agents => "agents",
            Topic::Executions => "executions",
            Topic::Rollouts => "rollouts",
            Topic::Notifications => "notifications",
        }
    }

    pub fn parse(text: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether the topic is about the fleet (which sales agents never see).
    pub fn is_fleet(self) -> bool {
        !matches!(self, Topic::Notifications)
    }
}

/// One change, as streams tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub topic: Topic,
    /// The projects it concerns: a viewer who may see any of them is told.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// The one user it is for (notifications), by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the page is told: `{"id", ...}`.
    pub data: serde_json::Value,
}

impl Event {
    /// Whether `subject` may be told about this event.
    pub fn visible_to(&self, subject: &Subject) -> bool {
        match self.topic {
            Topic::Notifications => self.user.as_deref() == Some(subject.user_id.as_str()),
            _ => {
                policy::can(subject, Action::UseFleet, None)
                    && self
                        .projects
                        .iter()
                        .any(|p| policy::can(subject, Action::ViewServers, Some(p)))
            }
        }
    }

    /// An agent connected or left.
    pub fn agent(agent_id: &str, project_id: &str, connected: bool) -> Event {
        Event {
            topic: Topic::Agents,
            projects: vec![project_id.to_string()],
            user: None,
            data: json!({
                "id": agent_id,
                "connected": connected,
                "at": chrono::Utc::now(),
            }),
        }
    }

    /// Executions of a project were created (queued). One event per project and
    /// transaction however many (a fan-out of 10,000 is one): lists showing their
    /// newest page read it again.
    pub fn executions_created(project_id: &str) -> Event {
        Event {
            topic: Topic::Executions,
            projects: vec![project_id.to_string()],
            user: None,
            data: json!({"created": true}),
        }
    }

    /// An execution changed status (its details are read through the API).
    pub fn execution(execution_id: &str, project_id: &str, status: &str) -> Event {
        Event {
            topic: Topic::Executions,
            projects: vec![project_id.to_string()],
            user: None,
            data: json!({"id": execution_id, "status": status}),
        }
    }

    /// A rollout moved on (a batch started, a target ended, it finished).
    pub fn rollout(rollout: &crate::rollouts::Rollout) -> Event {
        let mut projects: Vec<String> = Vec::new();
        for target in &rollout.targets {
            if projects.len() >= MAX_PROJECTS {
                break;
            }
            if !projects.contains(&target.project_id) {
                projects.push(target.project_id.clone());
            }
        }
        Event {
            topic: Topic::Rollouts,
            projects,
            user: None,
            data: json!({"id": rollout.id, "status": rollout.status.as_str()}),
        }
    }

    /// A user's inbox changed.
    pub fn notification(user_id: &str) -> Event {
        Event {
            topic: Topic::Notifications,
            projects: Vec::new(),
            user: Some(user_id.to_string()),
            data: json!({}),
        }
    }
}

struct Inner {
    tx: broadcast::Sender<Arc<Event>>,
    cluster: OnceLock<crate::cluster::Cluster>,
    /// Open streams per session key.
    streams: Mutex<HashMap<String, usize>>,
}

/// This control plane's live events. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            inner: Arc::new(Inner {
                tx: broadcast::channel(CAPACITY).0,
                cluster: OnceLock::new(),
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends what is published here to the other replicas too.
    pub fn join(&self, cluster: crate::cluster::Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Tells this replica's streams and the other replicas. Call after the change
    /// committed. Never blocks.
    pub fn publish(&self, event: Event) {
        if let Some(cluster) = self.inner.cluster.get().filter(|c| c.is_shared()) {
            cluster.send(crate::cluster::Message::Live {
                event: event.clone(),
            });
        }
        self.publish_here(event);
    }

    /// Tells this replica's streams only (an event another replica published).
    pub fn publish_here(&self, event: Event) {
        // No stream open: nothing to do (a send without receivers is an error).
        if self.inner.tx.receiver_count() > 0 {
            let _ = self.inner.tx.send(Arc::new(event));
        }
    }

    /// Follows the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.tx.subscribe()
    }

    /// Counts a new stream of the session `key`: `None` when it has
    /// [`MAX_STREAMS_PER_SESSION`] open already. The stream counts until the guard
    /// is dropped.
    pub fn open_stream(&self, key: &str) -> Option<StreamGuard> {
        let mut streams = self.inner.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(key.to_string()).or_default();
        if *open >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *open += 1;
        Some(StreamGuard {
            events: self.clone(),
            key: key.to_string(),
        })
    }

    /// Streams open now, in all sessions.
    pub fn open_streams(&self) -> usize {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// One open stream of a session; closing it (dropping this) frees its place.
pub struct StreamGuard {
    events: Events,
    key: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut streams = self
            .events
            .inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Level, Role};

    fn subject(role: Role, grants: &[&str]) -> Subject {
        Subject {
            user_id: "u1".into(),
            username: "someone".into(),
            role,
            is_manager: false,
            grants: grants
                .iter()
                .map(|p| (p.to_string(), Level::Read))
                .collect(),
        }
    }

    #[test]
    fn events_reach_only_who_may_see_them() {
        let event = Event::execution("e1", "p1", "running");
        assert!(event.visible_to(&subject(Role::Admin, &[])));
        assert!(event.visible_to(&subject(Role::Technical, &["p1"])));
        assert!(!event.visible_to(&subject(Role::Technical, &["p2"])));
        assert!(!event.visible_to(&subject(Role::Sales, &["p1"])));
        let note = Event::notification("u1");
        assert!(note.visible_to(&subject(Role::Sales, &[])));
        let other = Event::notification("u2");
        assert!(!other.visible_to(&subject(Role::Admin, &[])));
    }

    #[test]
    fn a_session_holds_at_most_eight_streams() {
        let events = Events::new();
        let mut open: Vec<StreamGuard> = (0..MAX_STREAMS_PER_SESSION)
            .map(|_| events.open_stream("s").expect("a place"))
            .collect();
        assert!(events.open_stream("s").is_none());
        assert!(events.open_stream("other").is_some());
        open.pop();
        assert!(events.open_stream("s").is_some());
        drop(open);
        assert_eq!(events.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_learns_it_lagged() {
        let events = Events::new();
        let mut rx = events.subscribe();
        for i in 0..CAPACITY + 5 {
            events.publish_here(Event::execution(&format!("e{i}"), "p", "running"));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
