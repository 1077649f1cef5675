//! Power actions: power on, power off, reboot. Starting one asks Hetzner and answers
//! its action id; a background watcher follows the action until it succeeds or fails
//! and keeps its state in the `hetzner_actions` table for the API and the server page.
//! Actions still `running` when the control plane stopped are followed again when it
//! starts ([`resume`]), so none stays `running` for ever.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::client::{HetznerError, PowerAction};
use super::sync::{client_for, merge};
use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult, Kind};
use crate::projects::Project;
use crate::servers::{self, Server};
use crate::store::{Read, Record};

/// How soon the watcher first asks Hetzner about a running action.
const POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two questions: the wait grows by half each time, so a
/// slow action costs a request every few seconds, not two a second.
const POLL_MAX: Duration = Duration::from_secs(5);
/// How long after its start an action is followed.
const WATCH_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A Hetzner action started from dynserv, as last seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HetznerAction {
    /// Hetzner's action id, as text.
    pub id: String,
    pub action_id: i64,
    pub server_id: String,
    pub project_id: String,
    /// Hetzner's command (`start_server`, `stop_server`, …).
    pub command: String,
    /// What was asked (`poweron`, `poweroff`, `reboot`).
    pub requested: String,
    /// `running`, `success` or `error`.
    pub status: String,
    pub progress: i32,
    /// Hetzner's message when the action failed.
    pub error: Option<String>,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Record for HetznerAction {
    const TABLE: &'static str = "hetzner_actions";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Turns a Hetzner error into one the person sees, with Hetzner's own message.
pub fn user_error(e: HetznerError) -> AppError {
    match e {
        HetznerError::Api { status, .. } if status >= 500 || status == 429 => AppError::new(
            Kind::Conflict,
            format!("{e}; Hetzner is busy or unavailable, try again in a minute"),
        ),
        HetznerError::Transport(_) | HetznerError::Decode(_) => {
            AppError::new(Kind::Conflict, e.to_string())
        }
        _ => AppError::new(Kind::Conflict, e.to_string()),
    }
}

fn action_status(status: hcloud::models::action::Status) -> &'static str {
    match status {
        hcloud::models::action::Status::Running => "running",
        hcloud::models::action::Status::Success => "success",
        hcloud::models::action::Status::Error => "error",
    }
}

/// Starts a power action on a server and a watcher for it; answers the action.
pub async fn start(
    app: &App,
    actor: &Actor,
    server: &Server,
    action: PowerAction,
) -> AppResult<HetznerAction> {
    let hetzner_id = server.hetzner_id.ok_or_else(|| {
        AppError::conflict(format!(
            "{} is not a Hetzner server (sync its project first)",
            server.name
        ))
    })?;
    if server.status == "deleted" {
        return Err(AppError::conflict(format!(
            "{} was deleted at Hetzner",
            server.name
        )));
    }
    let project: Project = app
        .store
        .get(&server.project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let client = client_for(app, &project).map_err(user_error)?;
    let started = client.power(hetzner_id, action).await.map_err(user_error)?;
    let record = HetznerAction {
        id: started.id.to_string(),
        action_id: started.id,
        server_id: server.id.clone(),
        project_id: server.project_id.clone(),
        command: started.command.clone(),
        requested: action.as_str().to_string(),
        status: action_status(started.status).to_string(),
        progress: started.progress,
        error: started.error.as_ref().map(|e| e.message.clone()),
        requested_by: actor.username.clone(),
        started_at: Utc::now(),
        finished_at: None,
    };
    app.store.write(|w| {
        w.put(&record)?;
        audit::record(
            w,
            actor,
            "server.power",
            &format!("server:{}", server.name),
            format!("{} (Hetzner action {})", action.as_str(), started.id),
        )
    })?;
    let app = app.clone();
    let watched = record.clone();
    tokio::spawn(async move {
        watch(app, client, watched, action).await;
    });
    Ok(record)
}

/// Follows again, in the background, every action a previous run left `running`.
pub fn resume(app: &App) {
    let running: Vec<HetznerAction> = match app.store.list::<HetznerAction>() {
        Ok(list) => list.into_iter().filter(|a| a.status == "running").collect(),
        Err(e) => {
            tracing::error!("listing Hetzner actions to follow again: {e:#}");
            return;
        }
    };
    for record in running {
        let Some(action) = PowerAction::parse(&record.requested) else {
            tracing::warn!(
                "Hetzner action {} asked for {:?}, which is not a power action",
                record.action_id,
                record.requested
            );
            continue;
        };
        tracing::info!(
            "following Hetzner action {} ({}) again",
            record.action_id,
            record.command
        );
        let project = app.store.get::<Project>(&record.project_id);
        let client = match project {
            Ok(Some(project)) => client_for(app, &project),
            Ok(None) => Err(HetznerError::NoToken),
            Err(e) => {
                tracing::error!("reading the project of action {}: {e:#}", record.action_id);
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            match client {
                Ok(client) => watch(app, client, record, action).await,
                Err(e) => {
                    let mut record = record;
                    record.status = "error".into();
                    record.error = Some(format!("cannot follow the action any more: {e}"));
                    finish(&app, None, record, action).await;
                }
            }
        });
    }
}

/// Follows an action until it ends (or [`WATCH_LIMIT`] after its start), then
/// refreshes the server from Hetzner.
async fn watch(
    app: App,
    client: super::client::Client,
    mut record: HetznerAction,
    action: PowerAction,
) {
    // Following is background work: it leaves the request budget to people.
    let client = client.background();
    let limit = chrono::Duration::from_std(WATCH_LIMIT).unwrap_or(chrono::Duration::MAX);
    let deadline = record.started_at + limit;
    let mut pause = POLL_FIRST;
    while record.status == "running" {
        tokio::time::sleep(pause).await;
        pause = pause.mul_f64(1.5).min(POLL_MAX);
        match client.action(record.action_id).await {
            Ok(a) => {
                record.status = action_status(a.status).to_string();
                record.progress = a.progress;
                if record.status == "error" {
                    record.error = a.error.map(|e| format!("{} ({})", e.message, e.code));
                }
            }
            Err(e) if e.is_not_found() => {
                record.status = "error".into();
                record.error = Some(format!(
                    "Hetzner no longer knows action {}",
                    record.action_id
                ));
            }
            Err(e) => tracing::warn!("watching Hetzner action {}: {e}", record.action_id),
        }
        if record.status == "running" && Utc::now() >= deadline {
            record.status = "error".into();
            record.error = Some(format!(
                "gave up following the action {} minutes after it started",
                WATCH_LIMIT.as_secs() / 60
            ));
        }
        if record.status == "running" {
            let _ = app.store.put(&record);
        }
    }
    finish(&app, Some(&client), record, action).await;
}

/// Records how an action ended and the server's status, as Hetzner now reports it
/// (or, without an answer, as a successful action leaves it).
async fn finish(
    app: &App,
    client: Option<&super::client::Client>,
    mut record: HetznerAction,
    action: PowerAction,
) {
    record.finished_at = Some(Utc::now());
    let hetzner_server = match (client, app.store.get::<Server>(&record.server_id)) {
        (Some(client), Ok(Some(s))) => match s.hetzner_id {
            Some(id) => client.server(id).await.ok().flatten(),
            None => None,
        },
        _ => None,
    };
    let result = app.store.write(|w| {
        w.put(&record)?;
        if let Some(mut server) = w.get::<Server>(&record.server_id)? {
            let now = Utc::now();
            match &hetzner_server {
                Some(remote) => {
                    let prices = Default::default();
                    merge(&mut server, remote, &prices, now);
                }
                None if record.status == "success" => {
                    server.status = action.resulting_status().into();
                    server.updated_at = now;
                }
                None => {}
            }
            servers::save(w, &server)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::error!("recording Hetzner action {}: {e:#}", record.action_id);
    }
}

/// The actions of a server, newest first.
pub fn of_server(
    r: &impl Read,
    server_id: &str,
    limit: usize,
) -> anyhow::Result<Vec<HetznerAction>> {
    let mut actions: Vec<HetznerAction> = r
        .list::<HetznerAction>()?
        .into_iter()
        .filter(|a| a.server_id == server_id)
        .collect();
    actions.sort_by_key(|a| std::cmp::Reverse(a.started_at));
    actions.truncate(limit);
    Ok(actions)
}
