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
//! [`has_token`] (through [`TokenRule`], and take the token itself from
//! [`sync::client_for`]), so a project that lives on the default token is synced,
//! powered and provisioned like one with its own.
//!
//! What one control plane keeps in memory for Hetzner (syncs and provisionings under
//! way, each token's request budget) lives in its [`State`], reached from `App`, so
//! two control planes in one process share none of it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

pub mod budget;
pub mod client;
pub mod power;
pub mod provision;
pub mod sync;

pub use client::{Client, HetznerError, PowerAction};

use crate::app::App;
use crate::projects::Project;

/// The token rule: whether a project can talk to Hetzner, with its own token or the
/// default one (`default_token`: whether `HETZNER_API_TOKEN` is set).
pub fn has_token(project: &Project, default_token: bool) -> bool {
    project.hetzner_token_enc.is_some() || default_token
}

/// The token rule as one control plane applies it, for the code that decides it
/// without an [`App`] at hand (the request workflow inside a write transaction, the
/// provisioning view): their callers pass it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRule {
    default_token: bool,
}

impl TokenRule {
    /// The rule of a control plane: the default token counts when
    /// `HETZNER_API_TOKEN` is set.
    pub fn of(app: &App) -> TokenRule {
        TokenRule {
            default_token: app.config.hetzner_api_token.is_some(),
        }
    }

    /// Only projects' own tokens count: the demo seed, written before the control
    /// plane starts, judges its requests this way whatever the configuration.
    pub fn own_tokens_only() -> TokenRule {
        TokenRule {
            default_token: false,
        }
    }

    /// [`has_token`] under this rule.
    pub fn has_token(self, project: &Project) -> bool {
        has_token(project, self.default_token)
    }
}

/// What the Hetzner side of one control plane keeps in memory. One per `App`.
#[derive(Default)]
pub struct State {
    /// Projects whose sync is under way, so two syncs of one project never overlap.
    pub(crate) syncing: UnderWay,
    /// Requests whose provisioning runs in this control plane.
    pub(crate) provisioning: UnderWay,
    /// The request budget of each token, shared by every client.
    pub(crate) budgets: client::Budgets,
}

/// Ids of work under way, so one piece never runs twice at once.
#[derive(Default)]
pub(crate) struct UnderWay(Mutex<HashSet<String>>);

impl UnderWay {
    /// Marks `id` under way until the answer is dropped; `None` when it already is.
    pub(crate) fn claim(&self, id: &str) -> Option<Claim<'_>> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.to_string()).then(|| Claim {
            under_way: self,
            id: id.to_string(),
        })
    }

    /// Whether `id` is under way now.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// An id under way; dropping it ends that.
pub(crate) struct Claim<'a> {
    under_way: &'a UnderWay,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self.under_way.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.id);
    }
}

/// Starts the Hetzner side of a running control plane until `stop` resolves:
/// registers the provisioning hook, follows again the power actions a previous run
/// left running, and spawns the provisioning supervisor (which also picks up requests
/// left provisioning) and the scheduled syncs.
pub fn start<S>(app: &App, stop: impl Fn() -> S)
where
    S: Future<Output = ()> + Send + 'static,
{
    provision::register(app);
    // Power actions are followed again by the replica that leads, whenever it starts
    // leading (at once with one replica).
    let mut leading = app.cluster.leadership();
    let follower = app.clone();
    let stop_following = stop();
    tokio::spawn(async move {
        tokio::pin!(stop_following);
        loop {
            if *leading.borrow_and_update() {
                let resumed = follower.clone();
                crate::store::blocking(move || power::resume(&resumed)).await;
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
            terminal_enabled: true,
        }
    }

    /// The project's own token or the default one: either is a token; neither is none.
    #[test]
    fn token_rule() {
        assert!(has_token(&project(true), false));
        assert!(has_token(&project(true), true));
        assert!(has_token(&project(false), true));
        assert!(!has_token(&project(false), false));
        assert!(!TokenRule::own_tokens_only().has_token(&project(false)));
        assert!(TokenRule::own_tokens_only().has_token(&project(true)));
    }

    /// A claimed id is under way until its claim is dropped, and only one claim of
    /// it holds at a time; another control plane's state knows nothing of it.
    #[test]
    fn work_under_way_is_claimed_once() {
        let state = State::default();
        let claim = state.syncing.claim("p1");
        assert!(claim.is_some());
        assert!(state.syncing.contains("p1"));
        assert!(state.syncing.claim("p1").is_none());
        assert!(!state.provisioning.contains("p1"));
        assert!(!State::default().syncing.contains("p1"));
        drop(claim);
        assert!(!state.syncing.contains("p1"));
        assert!(state.syncing.claim("p1").is_some());
    }
}
