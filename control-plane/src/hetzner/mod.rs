//! Hetzner Cloud: the client (requests to `HETZNER_API_URL` read into `hcloud`'s
//! models, paging, retries, the per-token request budget that follows Hetzner's
//! `RateLimit-*` headers), sync of each project's servers, budgets and cost trend,
//! power actions, and provisioning of approved server requests.
//!
//! What does not live here: the request workflow (`requests` moves a request), the
//! enrollment tokens and the fleet (`agents`, `fleet`), the web handlers
//! (`web::hetzner_api`, `web::hetzner_pages`).
//!
//! **Invariant:** a server known both at Hetzner and through its agent is one server
//! record (matched by Hetzner id, then by name); a server gone at Hetzner is marked
//! `deleted`, never removed.
//!
//! **Invariant (the token rule):** a project talks to Hetzner with its own token when
//! it has one, else with `HETZNER_API_TOKEN`; it "has no token" only when neither is
//! set. Sync, power actions, provisioning, the request workflow and the pages all ask
//! [`has_token`] (and take the token itself from [`sync::client_for`]), so a project
//! that lives on the default token is synced, powered and provisioned like one with
//! its own.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod budget;
pub mod client;
pub mod power;
pub mod provision;
pub mod sync;

pub use client::{Client, HetznerError, PowerAction};

use crate::app::App;
use crate::projects::Project;

/// Whether this process runs with `HETZNER_API_TOKEN` set, for the places that apply
/// the token rule without an [`App`] at hand (the request workflow inside a write
/// transaction, the provisioning view). Set by [`start`]; false until then, so the
/// demo data seeded before the start is judged by the projects' own tokens.
static DEFAULT_TOKEN: AtomicBool = AtomicBool::new(false);

/// The token rule: whether a project can talk to Hetzner, with its own token or the
/// default one (`default_token`: whether `HETZNER_API_TOKEN` is set).
pub fn has_token(project: &Project, default_token: bool) -> bool {
    project.hetzner_token_enc.is_some() || default_token
}

/// [`has_token`] with this process's configuration, for code without an [`App`].
pub fn project_has_token(project: &Project) -> bool {
    has_token(project, DEFAULT_TOKEN.load(Ordering::Relaxed))
}

/// Starts the Hetzner side of a running control plane until `stop` resolves: takes
/// the token rule's default from the configuration, registers the provisioning hook,
/// follows again the power actions a previous run left running, and spawns the
/// provisioning supervisor (which also picks up requests left provisioning) and the
/// scheduled syncs.
pub fn start<S>(app: &App, stop: impl Fn() -> S)
where
    S: Future<Output = ()> + Send + 'static,
{
    DEFAULT_TOKEN.store(app.config.hetzner_api_token.is_some(), Ordering::Relaxed);
    provision::register();
    // Power actions are followed again by the replica that leads, whenever it starts
    // leading (at once with one replica).
    let mut leading = app.cluster.leadership();
    let follower = app.clone();
    let stop_following = stop();
    tokio::spawn(async move {
        tokio::pin!(stop_following);
        loop {
            if *leading.borrow_and_update() {
                crate::store::block_in_place(|| power::resume(&follower));
            }
            tokio::select! {
                _ = &mut stop_following => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
    });
    tokio::spawn(provision::supervisor(app.clone(), stop()));
    tokio::spawn(sync::scheduler(app.clone(), stop()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(own: bool) -> Project {
        Project {
            id: "p".into(),
            name: "P".into(),
            description: None,
            budget_monthly: None,
            hetzner_token_enc: own.then(|| "sealed".into()),
            last_sync: None,
            deploy_command: None,
            created_at: chrono::Utc::now(),
        }
    }

    /// The project's own token or the default one: either is a token; neither is none.
    #[test]
    fn token_rule() {
        assert!(has_token(&project(true), false));
        assert!(has_token(&project(true), true));
        assert!(has_token(&project(false), true));
        assert!(!has_token(&project(false), false));
    }
}
