//! The `agent.offline` alert: raised once an agent has stayed disconnected for the
//! configured delay (`DYNSERV_AGENT_OFFLINE_ALERT`, default 300 s), once per outage,
//! so a reconnect within the delay (a restart, a network blip) tells no one.
//!
//! When a connection ends, the ingestion records `offline_since` on the agent and an
//! entry in the `agent_offline` index keyed by that time; a hello (or a revocation)
//! clears both. The leader's [`watch`] reads only the entries older than the delay
//! ([`check`]), raises the alert for each agent still away, and drops the entry, so the
//! next alert needs a new connection and a new outage.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::agents::Agent;
use crate::app::App;
use crate::notifications::Message;
use crate::store::{IndexScan, Read, Store, Writer};

const OFFLINE_INDEX: &str = "agent_offline";
/// Entries one check reads at most; the next check goes on.
const CHECK_BATCH: usize = 200;

fn key(since: DateTime<Utc>, agent_id: &str) -> String {
    format!("{:011}/{agent_id}", since.timestamp().max(0))
}

/// Records that the agent's connection ended at `at` (called in the transaction that
/// records it; the caller puts the agent). An outage already recorded keeps its start.
pub fn mark_offline(w: &mut Writer, agent: &mut Agent, at: DateTime<Utc>) -> anyhow::Result<()> {
    if agent.offline_since.is_some() || agent.revoked_at.is_some() {
        return Ok(());
    }
    agent.offline_since = Some(at);
    w.index_put(OFFLINE_INDEX, &key(at, &agent.id), &agent.id)
}

/// Records that the agent is back (a hello) or gone for good (revoked): its outage
/// ends without an alert if none was raised yet. The caller puts the agent.
pub fn mark_online(w: &mut Writer, agent: &mut Agent) -> anyhow::Result<()> {
    if let Some(since) = agent.offline_since.take() {
        w.index_delete(OFFLINE_INDEX, &key(since, &agent.id))?;
    }
    Ok(())
}

/// Raises `agent.offline` for each agent disconnected since `delay` before `now` and
/// still away (`is_live` asks the fleet, which knows the agents connected to any
/// replica), and ends the rest of the due entries; returns the agents alerted about.
pub fn check(
    w: &mut Writer,
    now: DateTime<Utc>,
    delay: chrono::Duration,
    is_live: &dyn Fn(&Writer, &str) -> bool,
) -> anyhow::Result<Vec<String>> {
    let due = w.index_page(&IndexScan {
        index: OFFLINE_INDEX.to_string(),
        lower: String::new(),
        upper: format!("{:011}/\u{10FFFF}", (now - delay).timestamp().max(0)),
        backward: false,
        after: None,
        limit: CHECK_BATCH,
    })?;
    let ids: Vec<String> = due.iter().map(|(_, id)| id.clone()).collect();
    w.prefetch::<Agent>(&ids)?;
    let mut alerted = Vec::new();
    for (entry, agent_id) in due {
        w.index_delete(OFFLINE_INDEX, &entry)?;
        let Some(mut agent) = w.get::<Agent>(&agent_id)? else {
            continue;
        };
        let Some(since) = agent.offline_since else {
            continue;
        };
        if key(since, &agent.id) != entry || agent.revoked_at.is_some() {
            continue;
        }
        if is_live(w, &agent.id) {
            // Back on another replica before its hello was recorded here.
            agent.offline_since = None;
            w.put(&agent)?;
            continue;
        }
        let recipients = crate::alerts::failure_recipients(w, &agent.project_id)?;
        let server = match &agent.server_id {
            Some(id) => w.get::<crate::servers::Server>(id)?,
            None => None,
        };
        let minutes = (now - since).num_minutes();
        let link = match &server {
            Some(s) => format!("/servers/{}", s.id),
            None => format!("/agents#agent-{}", agent.id),
        };
        crate::alerts::raise(
            w,
            &recipients,
            &crate::alerts::Alert {
                event: "agent.offline",
                project_id: Some(agent.project_id.clone()),
                subject: json!({
                    "agent": agent.name,
                    "agent_id": agent.id,
                    "server": server.as_ref().map(|s| s.name.clone()),
                    "server_id": agent.server_id,
                    "offline_since": since,
                }),
                message: Message {
                    title: format!("Agent {} is offline", agent.name),
                    body: format!(
                        "Agent {}{} has not been connected since {} UTC ({} minute{}). \
                         Jobs for it wait until it connects again.",
                        agent.name,
                        server
                            .as_ref()
                            .map(|s| format!(" on server {}", s.name))
                            .unwrap_or_default(),
                        since.format("%Y-%m-%d %H:%M:%S"),
                        minutes,
                        if minutes == 1 { "" } else { "s" },
                    ),
                    link: Some(link),
                    level: "warning",
                    subject: format!("agent:{}", agent.id),
                },
            },
        )?;
        alerted.push(agent.id.clone());
    }
    Ok(alerted)
}

/// Checks for agents offline past the configured delay until `stop` resolves: on
/// the leader only, and never before the delay has passed since this process
/// started, so agents reconnecting after a restart of the control plane are not
/// reported. Does nothing when the alert is off.
pub async fn watch(app: App, stop: impl Future<Output = ()>) {
    let Some(delay) = app.config.agent_offline_alert else {
        return;
    };
    tokio::pin!(stop);
    let started = tokio::time::Instant::now();
    let every = (delay / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if started.elapsed() < delay.to_std().unwrap_or(Duration::MAX) || !app.cluster.is_leader() {
            continue;
        }
        let (store, fleet) = (app.store.clone(), app.fleet.clone());
        let checked = crate::store::blocking(move || {
            run_check(&store, Utc::now(), delay, &|r: &Writer, id: &str| {
                fleet.live(r, id).is_some()
            })
        })
        .await;
        match checked {
            Ok(alerted) if !alerted.is_empty() => {
                tracing::info!(agents = ?alerted, "agent.offline raised")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("checking for offline agents: {e:#}"),
        }
    }
}

/// One [`check`] in its own transaction.
pub fn run_check(
    store: &Store,
    now: DateTime<Utc>,
    delay: chrono::Duration,
    is_live: &dyn Fn(&Writer, &str) -> bool,
) -> anyhow::Result<Vec<String>> {
    store.write(|w| check(w, now, delay, is_live))
}

/// Agents waiting to be reported, oldest outage first (at most `limit`).
pub fn pending(r: &impl Read, limit: usize) -> anyhow::Result<Vec<String>> {
    Ok(r.index_page(&IndexScan::prefix(OFFLINE_INDEX, "", limit))?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{self, AgentFacts};

    fn agent(id: &str) -> Agent {
        Agent::sample(id, &format!("name-{id}"), "p1")
    }

    fn hello() -> agents::HelloFacts {
        agents::HelloFacts {
            facts: AgentFacts::default(),
            host_id: String::new(),
            protocol: 0,
        }
    }

    /// Nothing before the delay, one alert after it, none again for the same outage;
    /// a reconnect within the delay ends the outage silently; a revoked agent and one
    /// connected elsewhere are not reported.
    #[test]
    fn once_per_outage_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        crate::app::install_execution_hooks();
        store
            .write(|w| {
                for id in ["a1", "a2", "a3", "a4"] {
                    w.put(&agent(id))?;
                }
                Ok(())
            })
            .unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let delay = chrono::Duration::seconds(300);
        let nobody: &dyn Fn(&Writer, &str) -> bool = &|_, _| false;
        store
            .write(|w| {
                for id in ["a1", "a2", "a3", "a4"] {
                    agents::record_last_seen(w, id, t0)?;
                }
                Ok(())
            })
            .unwrap();
        // Disconnecting again does not move the outage's start.
        store
            .write(|w| agents::record_last_seen(w, "a1", t0 + chrono::Duration::seconds(60)))
            .unwrap();
        assert_eq!(store.read(|r| pending(r, 10)).unwrap().len(), 4);
        let before = t0 + delay - chrono::Duration::seconds(1);
        assert!(run_check(&store, before, delay, nobody).unwrap().is_empty());

        // a2 came back within the delay, a3 was revoked, a4 is connected elsewhere.
        store
            .write(|w| agents::record_hello(w, "a2", &hello(), before))
            .unwrap();
        store
            .write(|w| {
                let mut a3: Agent = w.get("a3")?.unwrap();
                a3.revoked_at = Some(before);
                mark_online(w, &mut a3)?;
                w.put(&a3)
            })
            .unwrap();
        let elsewhere: &dyn Fn(&Writer, &str) -> bool = &|_, id| id == "a4";
        let alerted = run_check(&store, t0 + delay, delay, elsewhere).unwrap();
        assert_eq!(alerted, vec!["a1".to_string()]);
        assert!(store.read(|r| pending(r, 10)).unwrap().is_empty());
        assert!(run_check(&store, t0 + delay * 10, delay, nobody)
            .unwrap()
            .is_empty());
        let a2: Agent = store.read(|r| r.get("a2")).unwrap().unwrap();
        assert_eq!(a2.offline_since, None);

        // A new connection and a new outage are reported again.
        let t1 = t0 + delay * 20;
        store
            .write(|w| {
                agents::record_hello(w, "a1", &hello(), t1)?;
                agents::record_last_seen(w, "a1", t1)
            })
            .unwrap();
        let alerted = run_check(&store, t1 + delay, delay, nobody).unwrap();
        assert_eq!(alerted, vec!["a1".to_string()]);
    }
}
