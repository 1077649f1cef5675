//! Sync: every server of a project's Hetzner project becomes (or updates) one of our
//! servers, with its status, type, location, addresses, labels, creation date and
//! monthly cost from Hetzner's pricing. A server known through its agent is matched by
//! Hetzner id, then by name, so it stays one server with both views. Servers gone at
//! Hetzner are marked `deleted`, never dropped. Runs on demand and on a schedule that
//! spreads the projects over the interval and keeps each token within its budget.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hcloud::models;

use super::budget;
use super::client::{status_name, Client, HetznerError, Prices, PER_PAGE, REQUESTS_PER_HOUR};
use crate::app::App;
use crate::audit::{self, Actor};
use crate::projects::{self, Project, SyncStatus};
use crate::servers::{self, Server};
use crate::store::{Read, Writer};

/// What a sync changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncOutcome {
    pub seen: usize,
    pub added: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Whether a sync of the project is under way now in this control plane (on demand
/// or scheduled).
pub fn is_syncing(app: &App, project_id: &str) -> bool {
    app.hetzner.syncing.contains(project_id)
}

/// The token a project talks to Hetzner with: its own, else `HETZNER_API_TOKEN`
/// (the token rule, see [`super::has_token`]).
fn token_of(app: &App, project: &Project) -> Result<String, HetznerError> {
    projects::hetzner_token(&app.keys, project, app.config.hetzner_api_token.as_deref())
        .map_err(|e| HetznerError::Decode(format!("the stored token cannot be read: {e:#}")))?
        .ok_or(HetznerError::NoToken)
}

/// The client for a project: its own token, else `HETZNER_API_TOKEN`.
pub fn client_for(app: &App, project: &Project) -> Result<Client, HetznerError> {
    Client::new(
        &app.hetzner.budgets,
        &app.config.hetzner_api_url,
        &token_of(app, project)?,
    )
}

/// Whether a project can talk to Hetzner: [`super::has_token`] with this control
/// plane's configuration.
pub fn has_token(app: &App, project: &Project) -> bool {
    super::TokenRule::of(app).has_token(project)
}

/// Syncs one project now and records the outcome in its `last_sync`. Answers `None`
/// when a sync of that project is already under way.
pub async fn sync_project(
    app: &App,
    project_id: &str,
    actor: &Actor,
) -> anyhow::Result<Option<Result<SyncOutcome, HetznerError>>> {
    let Some(_running) = app.hetzner.syncing.claim(project_id) else {
        return Ok(None);
    };
    let Some(project) = app.store.get::<Project>(project_id)? else {
        anyhow::bail!("project {project_id} not found");
    };
    let fetched = fetch(app, &project).await;
    let now = Utc::now();
    let result = app.store.write(|w| {
        // Re-read: the project may have been edited while we talked to Hetzner.
        let Some(mut project) = w.get::<Project>(project_id)? else {
            anyhow::bail!("project {project_id} was deleted during its sync");
        };
        let outcome = match &fetched {
            Ok((remote, prices)) => {
                let outcome = apply(w, &project, remote, prices, now)?;
                super::budget::record_prices(w, prices, now)?;
                project.last_sync = Some(SyncStatus {
                    at: now,
                    ok: true,
                    error: None,
                });
                if actor.username != "system" || outcome.added + outcome.deleted > 0 {
                    audit::record(
                        w,
                        actor,
                        "hetzner.sync",
                        &format!("project:{}", project.name),
                        format!(
                            "{} servers at Hetzner: {} new, {} updated, {} deleted",
                            outcome.seen, outcome.added, outcome.updated, outcome.deleted
                        ),
                    )?;
                }
                w.put(&project)?;
                budget::record(w, &project, now)?;
                Ok(outcome)
            }
            Err(e) => {
                let was_ok = project.last_sync.as_ref().is_none_or(|s| s.ok);
                project.last_sync = Some(SyncStatus {
                    at: now,
                    ok: false,
                    error: Some(e.to_string()),
                });
                if actor.username != "system" || was_ok {
                    audit::record(
                        w,
                        actor,
                        "hetzner.sync_failed",
                        &format!("project:{}", project.name),
                        e.to_string(),
                    )?;
                }
                w.put(&project)?;
                Err(e.clone())
            }
        };
        Ok(outcome)
    })?;
    match &result {
        Ok(o) => tracing::info!(project = %project.name, ?o, "hetzner sync done"),
        Err(e) => tracing::warn!(project = %project.name, "hetzner sync failed: {e}"),
    }
    Ok(Some(result))
}

async fn fetch(
    app: &App,
    project: &Project,
) -> Result<(Vec<models::Server>, Prices), HetznerError> {
    // A sync is background work: it slows down before it would eat the budget that
    // people's power actions and provisioning need.
    let client = client_for(app, project)?.background();
    let remote = client.list_servers().await?;
    let prices = client.prices().await?;
    Ok((remote, prices))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Our view of one Hetzner server, written over `server`.
pub fn merge(server: &mut Server, remote: &models::Server, prices: &Prices, now: DateTime<Utc>) {
    server.name = remote.name.clone();
    server.status = status_name(remote.status);
    server.server_type = Some(remote.server_type.name.clone());
    server.location = Some(remote.location.name.clone());
    server.image = remote
        .image
        .as_ref()
        .map(|i| i.name.clone().unwrap_or_else(|| i.description.clone()));
    server.ipv4 = remote.public_net.ipv4.as_ref().map(|ip| ip.ip.clone());
    server.ipv6 = remote.public_net.ipv6.as_ref().map(|ip| ip.ip.clone());
    server.labels = remote
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    server.hetzner_id = Some(remote.id);
    server.monthly_cost = prices
        .get(&(
            remote.server_type.name.clone(),
            remote.location.name.clone(),
        ))
        .copied()
        .or(server.monthly_cost);
    if let Some(created) = parse_time(&remote.created) {
        server.created_at = created;
    }
    server.updated_at = now;
}

/// Writes what Hetzner said into the store: match, update, add, mark deleted.
pub fn apply(
    w: &mut Writer,
    project: &Project,
    remote: &[models::Server],
    prices: &Prices,
    now: DateTime<Utc>,
) -> anyhow::Result<SyncOutcome> {
    let local: Vec<Server> = servers::in_project(w, &project.id)?;
    let by_hetzner_id: HashMap<i64, &Server> = local
        .iter()
        .filter_map(|s| s.hetzner_id.map(|id| (id, s)))
        .collect();
    let mut outcome = SyncOutcome {
        seen: remote.len(),
        ..Default::default()
    };
    let mut seen_ids = HashSet::new();
    for r in remote {
        seen_ids.insert(r.id);
        let existing = match by_hetzner_id.get(&r.id) {
            Some(s) => Some((*s).clone()),
            // A server known by its agent (or registered by hand) before Hetzner told
            // us about it: same project and name, not yet tied to another Hetzner id.
            None => servers::by_name(w, &project.id, &r.name)?
                .filter(|s| s.hetzner_id.is_none() || s.status == "deleted"),
        };
        match existing {
            Some(mut server) => {
                let before = serde_json::to_value(&server)?;
                if server.hetzner_id.is_some_and(|id| id != r.id) {
                    // The old record's server is gone; this is a new one by that name.
                    let mut gone = server.clone();
                    gone.status = "deleted".into();
                    servers::save(w, &gone)?;
                    server = new_server(project, now);
                    outcome.added += 1;
                } else {
                    outcome.updated += 1;
                }
                merge(&mut server, r, prices, now);
                let mut after = serde_json::to_value(&server)?;
                after["updated_at"] = before["updated_at"].clone();
                if before != after {
                    servers::save(w, &server)?;
                }
            }
            None => {
                let mut server = new_server(project, now);
                merge(&mut server, r, prices, now);
                servers::save(w, &server)?;
                outcome.added += 1;
            }
        }
    }
    for server in &local {
        if let Some(id) = server.hetzner_id {
            if !seen_ids.contains(&id) && server.status != "deleted" {
                let mut gone = server.clone();
                gone.status = "deleted".into();
                gone.updated_at = now;
                servers::save(w, &gone)?;
                outcome.deleted += 1;
            }
        }
    }
    Ok(outcome)
}

fn new_server(project: &Project, now: DateTime<Utc>) -> Server {
    Server {
        id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
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
    }
}

/// Starts a sync in the background; answers at once.
pub fn spawn_sync(app: &App, project_id: &str, actor: Actor) {
    let app = app.clone();
    let project_id = project_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = sync_project(&app, &project_id, &actor).await {
            tracing::error!("hetzner sync of {project_id}: {e:#}");
        }
    });
}

/// The share of a token's hourly request budget scheduled syncs may use, leaving the
/// rest for power actions, provisioning and on-demand syncs.
pub const SCHEDULED_SHARE: f64 = 0.5;

/// The time one round of scheduled syncs takes: at least `base`, and long enough
/// that `requests_per_round` (the most any one token needs for a round) stays
/// within [`SCHEDULED_SHARE`] of 3600 requests per hour.
pub fn round_interval(base: Duration, requests_per_round: u64) -> Duration {
    let per_hour = REQUESTS_PER_HOUR * SCHEDULED_SHARE;
    let needed = Duration::from_secs_f64(requests_per_round as f64 * 3600.0 / per_hour);
    base.max(needed)
}

/// Requests one sync of a project costs: its pages of servers plus the pricing.
pub fn requests_per_sync(server_count: usize) -> u64 {
    (server_count as u64).div_ceil(PER_PAGE as u64).max(1) + 1
}

/// The scheduled syncs: every project with a token, once per round, spread evenly
/// over the round, until `shutdown` resolves. The base interval is
/// `Config::hetzner_sync_interval` (`DYNSERV_HETZNER_SYNC_SECS`, default 900 s;
/// `None` turns scheduled syncs off).
pub async fn scheduler(app: App, shutdown: impl Future<Output = ()> + Send + 'static) {
    let Some(base) = app.config.hetzner_sync_interval else {
        return;
    };
    tokio::pin!(shutdown);
    // Let the server settle (and on-demand syncs of a fresh start go first).
    let first = Duration::from_secs(30).min(base);
    tokio::select! {
        _ = &mut shutdown => return,
        _ = tokio::time::sleep(first) => {}
    }
    loop {
        // With several replicas, one syncs on schedule (see `cluster`).
        if !app.cluster.is_leader() {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(crate::cluster::LEADER_RETRY) => {}
            }
            continue;
        }
        let plan = match plan_round(&app) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("planning hetzner syncs: {e:#}");
                Vec::new()
            }
        };
        let per_token_max = plan_cost(&app, &plan);
        let round = round_interval(base, per_token_max);
        let step = round / (plan.len().max(1) as u32);
        for project_id in plan.iter() {
            if let Err(e) = sync_project(&app, project_id, &Actor::system()).await {
                tracing::error!("scheduled hetzner sync of {project_id}: {e:#}");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(step) => {}
            }
        }
        if plan.is_empty() {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(round) => {}
            }
        }
    }
}

/// The projects a round syncs.
fn plan_round(app: &App) -> anyhow::Result<Vec<String>> {
    let projects = app.store.read(projects::all)?;
    Ok(projects
        .iter()
        .filter(|p| has_token(app, p))
        .map(|p| p.id.clone())
        .collect())
}

/// The most requests one token needs for a round of `plan`.
fn plan_cost(app: &App, plan: &[String]) -> u64 {
    let counted = app.store.read(|r| {
        let mut per_token: HashMap<String, u64> = HashMap::new();
        for id in plan {
            let Some(project) = r.get::<Project>(id)? else {
                continue;
            };
            let count =
                usize::try_from(servers::project_counts(r, id)?.servers).unwrap_or(usize::MAX);
            // Projects without their own token share the default one, and so does a
            // project whose own token is that same one.
            let Ok(key) = token_of(app, &project) else {
                continue;
            };
            *per_token.entry(key).or_default() += requests_per_sync(count);
        }
        Ok(per_token.values().copied().max().unwrap_or(0))
    });
    counted.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round stretches when a token's projects would need more than half of 3600
    /// requests an hour at the base interval.
    #[test]
    fn rounds_stay_under_the_hourly_budget() {
        let base = Duration::from_secs(900);
        assert_eq!(round_interval(base, 10), base);
        // 1000 requests a round at 1800 an hour need 2000 s.
        assert_eq!(round_interval(base, 1000), Duration::from_secs(2000));
        assert_eq!(requests_per_sync(0), 2);
        assert_eq!(requests_per_sync(50), 2);
        assert_eq!(requests_per_sync(120), 4);
        // 100 projects of 120 servers sharing one token: 400 requests a round.
        let round = round_interval(base, 100 * requests_per_sync(120));
        let per_hour = 400.0 * 3600.0 / round.as_secs_f64();
        assert!(per_hour <= 1800.0 + 1e-6, "{per_hour}");
    }
}
