//! Provisioning of approved server requests at Hetzner.
//!
//! Approving a request whose project has its own Hetzner token moves it to
//! `provisioning` (through `requests::transition`, the only way a request moves) and
//! starts the steps: **creating** (a one-time enrollment token bound to the request,
//! cloud-init user data from `packaging/cloud-init.yaml.hbs`, the server at Hetzner with
//! the requested type, image and location), **booting** (until Hetzner says
//! `running`), **agent enrolled** (the agent that cloud-init installed enrolled with
//! that token and attached itself to the server by name) and **deployed**. Any failure
//! moves the request to `failed` with the reason; a retry (or a restart of the control
//! plane) picks a `provisioning` request up again.
//!
//! **Invariant:** nothing is created twice. The Hetzner server id is remembered in the
//! request's [`Provisioning`] record as soon as it is known, and before creating, the
//! server is looked up by that id and then by its `dynserv-request` label, so a
//! create whose answer was lost is found, not repeated.
//!
//! Table: `provisionings` (one per request, keyed by the request id).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hcloud::models;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::{status_name, HetznerError};
use super::sync::{client_for, merge};
use crate::app::App;
use crate::audit::Actor;
use crate::projects::Project;
use crate::requests::{self, Request, Status};
use crate::servers::{self, Server};
use crate::store::{Read, Record};

/// The cloud-init user data template.
pub const CLOUD_INIT_TEMPLATE: &str = include_str!("../../../packaging/cloud-init.yaml.hbs");
/// The agent's systemd unit, written by cloud-init.
pub const AGENT_UNIT: &str = include_str!("../../../packaging/dynserv-agent.service");
/// The label that ties a Hetzner server to the request it was made for.
pub const REQUEST_LABEL: &str = "dynserv-request";

/// The steps, in order, as the request page shows them.
pub const STEPS: [&str; 4] = ["creating", "booting", "agent enrolled", "deployed"];

/// One step reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub at: DateTime<Utc>,
    pub step: String,
    pub note: String,
}

/// The provisioning of one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provisioning {
    /// The request id.
    pub id: String,
    pub project_id: String,
    pub server_name: String,
    /// The Hetzner server, once created (or found).
    pub hetzner_id: Option<i64>,
    /// Our server record.
    pub server_id: Option<String>,
    /// The step under way or reached last: one of [`STEPS`], or `failed`.
    pub step: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub history: Vec<StepRecord>,
    pub updated_at: DateTime<Utc>,
}

impl Record for Provisioning {
    const TABLE: &'static str = "provisionings";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The Hetzner server name of a request: the client's name as a hostname plus the
/// start of the request id, so two requests of one client never collide.
pub fn server_name(request: &Request) -> String {
    let mut slug = String::new();
    for c in request.client_name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    let slug = slug.trim_matches('-');
    let short: String = request
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_lowercase();
    if slug.is_empty() {
        format!("server-{short}")
    } else {
        format!("{slug}-{short}")
    }
}

/// Renders the cloud-init user data.
pub fn user_data(
    control_url: &str,
    fleet: &str,
    token: &str,
    name: &str,
    request_id: &str,
) -> anyhow::Result<String> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    let unit: String = AGENT_UNIT
        .lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = hb.render_template(
        CLOUD_INIT_TEMPLATE,
        &json!({
            "control_url": control_url, "fleet": fleet, "token": token, "name": name,
            "request_id": request_id, "unit": unit,
        }),
    )?;
    Ok(text)
}

/// Registers `app`'s approval hook: an approved request of a project with a token
/// (its own or the default one) starts provisioning at once.
pub fn register(app: &App) {
    app.approvals.on_approved(|app, request| {
        let app = app.clone();
        let request_id = request.id.clone();
        tokio::spawn(async move {
            let started = crate::store::block_in_place(|| {
                app.store.write(|w| {
                    let project: Option<Project> = w
                        .get::<Request>(&request_id)?
                        .map(|r| r.project_id)
                        .map(|id| w.get(&id))
                        .transpose()?
                        .flatten();
                    if project.is_none_or(|p| !super::sync::has_token(&app, &p)) {
                        return Ok(false);
                    }
                    requests::transition(
                        w,
                        super::TokenRule::of(&app),
                        &Actor::system(),
                        &request_id,
                        requests::Action::StartProvisioning,
                        Some("creating the server at Hetzner"),
                    )?;
                    Ok(true)
                })
            });
            match started {
                // Another replica leads: its supervisor picks the request up within
                // seconds, so only one replica ever provisions it.
                Ok(true) if !app.cluster.is_leader() => {}
                Ok(true) => run(&app, &request_id).await,
                Ok(false) => {}
                Err(e) => tracing::warn!("provisioning {request_id} did not start: {e:#}"),
            }
        });
    });
}

/// Picks up `provisioning` requests nobody works on (after a retry or a restart)
/// every two seconds until `shutdown` resolves.
pub async fn supervisor(app: App, shutdown: impl Future<Output = ()> + Send + 'static) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // With several replicas, the leader provisions (see `cluster`).
        if !app.cluster.is_leader() {
            continue;
        }
        let waiting: Vec<String> = match crate::store::block_in_place(|| {
            app.store
                .read(|r| requests::ids_with_status(r, Status::Provisioning))
        }) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!("listing requests to provision: {e:#}");
                continue;
            }
        };
        for request_id in waiting {
            let app = app.clone();
            tokio::spawn(async move { run(&app, &request_id).await });
        }
    }
}

/// Provisions one request unless that already runs here; a failure fails the request.
async fn run(app: &App, request_id: &str) {
    let Some(_active) = app.hetzner.provisioning.claim(request_id) else {
        return;
    };
    if let Err(reason) = provision(app, request_id).await {
        tracing::warn!("provisioning {request_id} failed: {reason}");
        let result = app.store.write(|w| {
            let still = w
                .get::<Request>(request_id)?
                .is_some_and(|r| r.status == Status::Provisioning);
            if still {
                requests::transition(
                    w,
                    super::TokenRule::of(app),
                    &Actor::system(),
                    request_id,
                    requests::Action::Fail,
                    Some(&reason),
                )?;
            }
            if let Some(mut p) = w.get::<Provisioning>(request_id)? {
                p.step = "failed".into();
                p.error = Some(reason.clone());
                p.history.push(StepRecord {
                    at: Utc::now(),
                    step: "failed".into(),
                    note: reason.clone(),
                });
                p.updated_at = Utc::now();
                w.put(&p)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!("recording the failure of {request_id}: {e:#}");
        }
    }
}

fn note(app: &App, p: &mut Provisioning, step: &str, text: impl Into<String>) {
    p.step = step.to_string();
    p.error = None;
    p.history.push(StepRecord {
        at: Utc::now(),
        step: step.to_string(),
        note: text.into(),
    });
    p.updated_at = Utc::now();
    if let Err(e) = app.store.put(p) {
        tracing::error!("recording provisioning of {}: {e:#}", p.id);
    }
}

fn hetzner(e: HetznerError) -> String {
    e.to_string()
}

/// The steps of one attempt; `Err` carries the reason shown on the request.
async fn provision(app: &App, request_id: &str) -> Result<(), String> {
    let (request, project) = app
        .store
        .read(|r| {
            let request: Option<Request> = r.get(request_id)?;
            let project: Option<Project> = match &request {
                Some(q) => r.get(&q.project_id)?,
                None => None,
            };
            Ok((request, project))
        })
        .map_err(|e| format!("{e:#}"))?;
    let (Some(request), Some(project)) = (request, project) else {
        return Err("the request or its project no longer exists".into());
    };
    if request.status != Status::Provisioning {
        return Ok(());
    }
    let client = client_for(app, &project).map_err(hetzner)?;
    let stored = app
        .store
        .get::<Provisioning>(request_id)
        .map_err(|e| format!("{e:#}"))?;
    // A record that neither failed nor finished belongs to a run that a stop of the
    // control plane interrupted: this run follows it on, it is no new attempt.
    let resumed = stored
        .as_ref()
        .is_some_and(|p| p.step != "failed" && p.step != "deployed");
    let mut p = stored.unwrap_or_else(|| Provisioning {
        id: request.id.clone(),
        project_id: project.id.clone(),
        server_name: server_name(&request),
        hetzner_id: None,
        server_id: request.server_id.clone(),
        step: "creating".into(),
        error: None,
        attempts: 0,
        history: Vec::new(),
        updated_at: Utc::now(),
    });
    if resumed {
        let step = p.step.clone();
        note(
            app,
            &mut p,
            &step,
            "followed again after a restart of the control plane",
        );
    } else {
        p.attempts += 1;
        let text = format!(
            "attempt {}: {} ({}, {}, {})",
            p.attempts, p.server_name, request.server_type, request.image, request.location
        );
        note(app, &mut p, "creating", text);
    }

    // Find the server this request already has at Hetzner, or create it.
    let mut remote = None;
    if let Some(id) = p.hetzner_id {
        remote = client.server(id).await.map_err(hetzner)?;
        // A server remembered from an earlier attempt that does not carry this
        // request's label is not its server (an older version adopted whatever the
        // label query answered): detach it, so a retry is never stuck on it.
        if let Some(found) = remote.take() {
            if carries_request_label(&found, &request.id) {
                remote = Some(found);
            } else {
                let reason = format!(
                    "Hetzner #{} ({}) does not carry the label {REQUEST_LABEL}={}; detached, it is not this request's server",
                    found.id, found.name, request.id
                );
                p.hetzner_id = None;
                p.server_id = None;
                note(app, &mut p, "creating", reason.clone());
                app.store
                    .write(|w| {
                        requests::detach_server(w, &Actor::system(), &request.id, &reason)?;
                        Ok(())
                    })
                    .map_err(|e| format!("detaching the server: {e:#}"))?;
            }
        }
    }
    if remote.is_none() {
        let selector = format!("{REQUEST_LABEL}={}", request.id);
        // Adopted only when it carries the request's label: an API that answered an
        // unrelated server to the label query never gets that server taken over.
        remote = client
            .list_servers_where(None, Some(&selector))
            .await
            .map_err(hetzner)?
            .into_iter()
            .find(|s| carries_request_label(s, &request.id));
    }
    let remote = match remote {
        Some(found) if resumed => found,
        Some(found) => {
            note(
                app,
                &mut p,
                "creating",
                format!(
                    "found {} (Hetzner #{}) from an earlier attempt",
                    found.name, found.id
                ),
            );
            found
        }
        None => create(app, &client, &request, &p.server_name).await?,
    };
    p.hetzner_id = Some(remote.id);
    if !resumed || p.step == "creating" {
        note(
            app,
            &mut p,
            "booting",
            format!(
                "Hetzner server #{} {}",
                remote.id,
                status_name(remote.status)
            ),
        );
    }
    let server_id = record_server(app, &project, &request, &remote, &client).await?;
    p.server_id = Some(server_id.clone());
    let _ = app.store.put(&p);

    // Booting: until Hetzner says running. Asking again and again is background
    // work: it leaves the request budget to people.
    let boot_limit = app.config.provision_boot_timeout;
    let deadline = tokio::time::Instant::now() + boot_limit;
    let poller = client.clone().background();
    loop {
        let now = poller.server(remote.id).await.map_err(hetzner)?;
        let Some(now) = now else {
            return Err(format!(
                "the server #{} was deleted at Hetzner while booting",
                remote.id
            ));
        };
        let status = status_name(now.status);
        let _ = app.store.write(|w| {
            if let Some(mut s) = w.get::<Server>(&server_id)? {
                s.status = status.clone();
                s.updated_at = Utc::now();
                servers::save(w, &s)?;
            }
            Ok(())
        });
        if status == "running" {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the server did not reach running within {} s (it is {status})",
                boot_limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Booting ends when Hetzner reports the server running; from here on a failure is
    // the enrollment's, and that is the step shown failed.
    if p.step == "booting" {
        note(
            app,
            &mut p,
            "agent enrolled",
            "Hetzner reports the server running; waiting for its agent to enroll",
        );
    }

    // Agent enrolled: the agent attaches itself to our server record by name.
    let enroll_limit = app.config.provision_enroll_timeout;
    let deadline = tokio::time::Instant::now() + enroll_limit;
    let agent_id = loop {
        let server = app
            .store
            .get::<Server>(&server_id)
            .map_err(|e| format!("{e:#}"))?;
        if let Some(agent_id) = server.and_then(|s| s.agent_id) {
            break agent_id;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the server runs but its agent did not enroll within {} s; check its cloud-init log (/var/log/cloud-init-output.log)",
                enroll_limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let enrolled_note = format!("agent {agent_id}");
    if !p.history.iter().any(|h| h.note == enrolled_note) {
        note(app, &mut p, "agent enrolled", enrolled_note);
    }

    // Deployed: the fleet may have moved the request already when the agent enrolled.
    app.store
        .write(|w| {
            let current: Option<Request> = w.get(&request.id)?;
            if current.is_some_and(|r| r.status == Status::Provisioning) {
                requests::transition(
                    w,
                    super::TokenRule::of(app),
                    &Actor::system(),
                    &request.id,
                    requests::Action::MarkDeployed,
                    Some(&format!("agent {agent_id} enrolled on {}", p.server_name)),
                )?;
            }
            Ok(())
        })
        .map_err(|e| format!("{e:#}"))?;
    note(app, &mut p, "deployed", "the server is under management");
    Ok(())
}

/// Whether a Hetzner server carries the `dynserv-request` label of this request.
pub fn carries_request_label(server: &models::Server, request_id: &str) -> bool {
    server.labels.get(REQUEST_LABEL).map(String::as_str) == Some(request_id)
}

/// Creates the server at Hetzner with a fresh one-time enrollment token.
async fn create(
    app: &App,
    client: &super::Client,
    request: &Request,
    name: &str,
) -> Result<models::Server, String> {
    let secret = app
        .store
        .write(|w| {
            let project: Project = w
                .get(&request.project_id)?
                .ok_or_else(|| anyhow::anyhow!("the project no longer exists"))?;
            let (mut record, secret) = crate::agents::create_token(
                w,
                &Actor::system(),
                &project,
                1,
                chrono::Duration::hours(24),
                Utc::now(),
            )?;
            record.request_id = Some(request.id.clone());
            w.put(&record)?;
            Ok(secret)
        })
        .map_err(|e| format!("creating the enrollment token: {e:#}"))?;
    let token = app.fleet.token_text(&secret);
    let user_data = user_data(
        &app.config.public_url,
        &app.config.public_quic,
        &token,
        name,
        &request.id,
    )
    .map_err(|e| format!("rendering cloud-init: {e:#}"))?;
    let mut create = models::CreateServerRequest::new(
        request.image.clone(),
        name.to_string(),
        request.server_type.clone(),
    );
    create.location = Some(request.location.clone()).filter(|l| !l.is_empty());
    create.labels = Some(HashMap::from([
        (REQUEST_LABEL.to_string(), request.id.clone()),
        ("managed-by".to_string(), "dynserv".to_string()),
    ]));
    create.user_data = Some(user_data);
    create.start_after_create = Some(true);
    let created = client.create_server(create).await.map_err(hetzner)?;
    Ok(*created.server)
}

/// Our server record for the Hetzner server: the one already tied to it, the one of
/// that name (an agent may have enrolled first), or a new one; attached to the request.
async fn record_server(
    app: &App,
    project: &Project,
    request: &Request,
    remote: &models::Server,
    client: &super::Client,
) -> Result<String, String> {
    let prices = client.prices().await.unwrap_or_default();
    app.store
        .write(|w| {
            let now = Utc::now();
            let by_id = servers::in_project(w, &project.id)?
                .into_iter()
                .find(|s| s.hetzner_id == Some(remote.id));
            let existing = match by_id {
                Some(s) => Some(s),
                None => servers::by_name(w, &project.id, &remote.name)?,
            };
            let mut server = existing.unwrap_or_else(|| Server {
                id: uuid::Uuid::new_v4().to_string(),
                name: remote.name.clone(),
                project_id: project.id.clone(),
                status: "initializing".into(),
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
            });
            merge(&mut server, remote, &prices, now);
            servers::save(w, &server)?;
            let current: Option<Request> = w.get(&request.id)?;
            if current.is_some_and(|r| r.server_id.as_deref() != Some(server.id.as_str())) {
                requests::attach_server(w, &Actor::system(), &request.id, &server.id)?;
            }
            super::budget::record(w, project, now)?;
            Ok(server.id)
        })
        .map_err(|e| format!("recording the server: {e:#}"))
}

/// The provisioning of a request, for the API and the request page: each of
/// [`STEPS`] with whether it is done, under way or failed.
pub fn view(
    r: &impl Read,
    rule: super::TokenRule,
    request_id: &str,
) -> anyhow::Result<serde_json::Value> {
    let Some(request) = r.get::<Request>(request_id)? else {
        return Ok(serde_json::Value::Null);
    };
    let under_way = match request.status {
        Status::Provisioning => true,
        // Approved and about to start: only when the provisioner will take it.
        Status::Approved => r
            .get::<Project>(&request.project_id)?
            .is_some_and(|p| rule.has_token(&p)),
        _ => false,
    };
    let p = match r.get::<Provisioning>(request_id)? {
        Some(p) => p,
        None if under_way => Provisioning {
            id: request.id.clone(),
            project_id: request.project_id.clone(),
            server_name: server_name(&request),
            hetzner_id: None,
            server_id: None,
            step: "creating".into(),
            error: None,
            attempts: 0,
            history: Vec::new(),
            updated_at: request.updated_at,
        },
        None => return Ok(serde_json::Value::Null),
    };
    // A retry was asked and the provisioner has not picked it up yet.
    let failed = p.step == "failed" && !under_way;
    let reached = p
        .history
        .iter()
        .rev()
        .find_map(|h| STEPS.iter().position(|s| *s == h.step))
        .unwrap_or(0);
    let steps: Vec<serde_json::Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let state = if i < reached || (i == reached && p.step == "deployed") {
                "done"
            } else if i == reached && failed {
                "failed"
            } else if i == reached {
                "active"
            } else {
                "pending"
            };
            let at = p
                .history
                .iter()
                .rev()
                .find(|h| h.step == *name)
                .map(|h| h.at);
            json!({"name": name, "state": state, "at": at})
        })
        .collect();
    Ok(json!({
        "request_id": p.id,
        "server_name": p.server_name,
        "hetzner_id": p.hetzner_id,
        "server_id": p.server_id,
        "step": if failed || p.step != "failed" { p.step.clone() } else { "creating".into() },
        "attempts": p.attempts,
        "steps": steps,
        "history": p.history,
        "error": if failed { p.error.clone() } else { None },
        "running": !failed && p.step != "deployed",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client_name: &str) -> Request {
        serde_json::from_value(json!({
            "id": "0193a5b2-7c1d-7000-8000-000000000000", "client_name": client_name,
            "client_email": "a@b.c", "purpose": "web", "project_id": "p",
            "server_type": "cx22", "location": "fsn1", "image": "ubuntu-24.04",
            "cpu_cores": null, "ram_gb": null, "disk_gb": null, "monthly_budget": null,
            "notes": null, "status": "approved", "requested_by": "u", "requested_by_name": "s",
            "history": [], "server_id": null, "budget_warning": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .expect("a request")
    }

    /// Server names are hostnames made of the client's name and the request id.
    #[test]
    fn server_names_are_hostnames() {
        assert_eq!(
            server_name(&request("Acme GmbH & Co.")),
            "acme-gmbh-co-0193a5b2"
        );
        assert_eq!(server_name(&request("---")), "server-0193a5b2");
        let long = server_name(&request(&"x".repeat(100)));
        assert!(long.len() <= 63, "{long}");
    }

    /// The request page follows an approved request of a project with a token before
    /// the provisioner wrote anything, and a retried one before it was picked up.
    #[test]
    fn steps_are_followed_from_approval_and_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let project = Project {
            id: "p".into(),
            name: "P".into(),
            description: None,
            budget_monthly: None,
            hetzner_token_enc: Some("sealed".into()),
            last_sync: None,
            deploy_command: None,
            created_at: Utc::now(),
            terminal_enabled: true,
        };
        let mut req = request("Acme");
        store.put(&project).unwrap();
        store.put(&req).unwrap();
        let rule = crate::hetzner::TokenRule::own_tokens_only();
        let v = store.read(|r| view(r, rule, &req.id)).unwrap();
        assert_eq!(v["running"], true);
        assert_eq!(v["steps"][0]["state"], "active");
        assert_eq!(v["steps"][1]["state"], "pending");

        let mut p: Provisioning = serde_json::from_value(json!({
            "id": req.id, "project_id": "p", "server_name": "acme-1", "hetzner_id": null,
            "server_id": null, "step": "failed", "error": "Hetzner: boom (timeout)",
            "attempts": 1, "updated_at": "2026-01-01T00:00:00Z",
            "history": [{"at": "2026-01-01T00:00:00Z", "step": "creating", "note": ""},
                        {"at": "2026-01-01T00:00:01Z", "step": "failed", "note": "boom"}],
        }))
        .unwrap();
        store.put(&p).unwrap();
        req.status = Status::Failed;
        store.put(&req).unwrap();
        let v = store.read(|r| view(r, rule, &req.id)).unwrap();
        assert_eq!(v["running"], false);
        assert_eq!(v["steps"][0]["state"], "failed");
        assert_eq!(v["error"], "Hetzner: boom (timeout)");

        req.status = Status::Provisioning;
        store.put(&req).unwrap();
        let v = store.read(|r| view(r, rule, &req.id)).unwrap();
        assert_eq!(v["running"], true, "a retry is under way");
        assert_eq!(v["steps"][0]["state"], "active");
        assert!(v["error"].is_null());

        p.step = "deployed".into();
        store.put(&p).unwrap();
        req.status = Status::Deployed;
        store.put(&req).unwrap();
        let v = store.read(|r| view(r, rule, &req.id)).unwrap();
        assert_eq!(v["running"], false);
    }

    /// The user data downloads, enrolls with the token, and installs the unit.
    #[test]
    fn user_data_enrolls_with_the_token() {
        let text = user_data(
            "http://cp:8080",
            "cp:4433",
            "dsv1.secret.hash",
            "acme-1",
            "req-1",
        )
        .unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("DYNSERV_ENROLL_TOKEN=dsv1.secret.hash"));
        assert!(text.contains("http://cp:8080/download/dynserv-agent"));
        assert!(text.contains("      ExecStart=/usr/local/bin/dynserv-agent run"));
        assert!(text.contains("enable, --now, dynserv-agent.service"));
    }
}
