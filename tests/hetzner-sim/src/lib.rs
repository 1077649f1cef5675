//! A Hetzner Cloud API simulator for the end-to-end tests and for trying the
//! provisioning loop locally.
//!
//! It keeps projects (one per API token), servers and actions in memory and answers
//! `GET/POST /v1/servers` (paged with `page`/`per_page`, `meta.pagination`),
//! `GET/DELETE /v1/servers/{id}`, `POST /v1/servers/{id}/actions/{poweron,poweroff,
//! reboot,reset,shutdown}`, `GET /v1/actions/{id}` (running, then success after the
//! action duration), `GET /v1/server_types` and `GET /v1/pricing` with the real API's
//! JSON, error bodies and rate limit: a bucket of 3600 requests per project that
//! refills one a second, told in `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (the unix second it is full again), with 429
//! `rate_limit_exceeded` when it is empty. It checks the bearer token (401
//! `unauthorized`), can be told to answer the next requests with a 429 or an error, and
//! "boots" created servers by running the enrollment their user data contains.
//!
//! ```no_run
//! # async fn example() {
//! use dynserv_hetzner_sim::{Simulator, SimConfig};
//! let sim = Simulator::start(SimConfig::default()).await.unwrap();
//! sim.add_project("token-a");
//! sim.add_servers("token-a", 3, "web");
//! println!("HETZNER_API_URL={}", sim.url());
//! # }
//! ```

pub mod boot;
pub mod http;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::oneshot;
use warp::Filter;

pub use boot::{BootConfig, Enrollment};
pub use state::{Fault, FaultKind, LoggedRequest, NewServer, RateHeaders, SimServer};

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How long actions stay `running` before they succeed.
    pub action_duration: std::time::Duration,
    /// How created servers boot.
    pub boot: BootConfig,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            action_duration: std::time::Duration::from_millis(800),
            boot: BootConfig::default(),
        }
    }
}

/// A running simulator; stops (and kills the agents it booted) when dropped.
pub struct Simulator {
    addr: SocketAddr,
    shared: http::Shared,
    stop: Option<oneshot::Sender<()>>,
}

impl Simulator {
    /// Binds and starts serving in the background.
    pub async fn start(config: SimConfig) -> anyhow::Result<Simulator> {
        let duration = chrono::Duration::from_std(config.action_duration)?;
        let shared = http::Shared {
            state: Arc::new(Mutex::new(state::State::new(duration))),
            booter: boot::Booter::new(config.boot.clone()),
        };
        let for_filter = shared.clone();
        let routes = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(
                move |method, path: warp::path::FullPath, query: String, headers, body| {
                    let shared = for_filter.clone();
                    async move {
                        let bytes = collect(body).await;
                        http::handle(&shared, method, path.as_str(), &query, &headers, bytes)
                    }
                },
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let server = warp::serve(routes)
            .incoming(listener)
            .graceful(async {
                let _ = stopped.await;
            })
            .run();
        tokio::spawn(server);
        Ok(Simulator {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// The API base to give the client, `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut state::State) -> R) -> R {
        let mut guard = match self.shared.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.advance(chrono::Utc::now());
        f(&mut guard)
    }

    /// Creates an empty project reached with `token`.
    pub fn add_project(&self, token: &str) {
        self.with_state(|s| {
            s.projects.entry(token.to_string()).or_default();
        });
    }

    /// Adds a server to a project as if made in Hetzner's console; answers its id.
    pub fn add_server(&self, token: &str, server: NewServer) -> anyhow::Result<i64> {
        self.with_state(|s| s.add_server(token, &server))
            .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))
    }

    /// Adds `count` running servers named `PREFIX-001`…, cycling through server types
    /// and locations; answers their ids.
    pub fn add_servers(&self, token: &str, count: usize, prefix: &str) -> Vec<i64> {
        let combos = [
            ("cx22", "fsn1"),
            ("cpx21", "nbg1"),
            ("cx32", "hel1"),
            ("cpx31", "ash"),
        ];
        (1..=count)
            .map(|i| {
                let (server_type, location) = combos[i % combos.len()];
                self.add_server(
                    token,
                    NewServer {
                        name: format!("{prefix}-{i:03}"),
                        server_type: Some(server_type.into()),
                        location: Some(location.into()),
                        labels: [("index".to_string(), i.to_string())].into(),
                        ..Default::default()
                    },
                )
                .expect("a generated server is valid")
            })
            .collect()
    }

    /// Removes a server, as deleting it in Hetzner's console would.
    pub fn delete_server(&self, id: i64) {
        self.with_state(|s| {
            for p in s.projects.values_mut() {
                p.servers.remove(&id);
            }
        });
    }

    /// Locks or unlocks a server: actions on a locked server answer 423 `locked`.
    pub fn set_locked(&self, id: i64, locked: bool) {
        self.with_state(|s| {
            for p in s.projects.values_mut() {
                if let Some(server) = p.servers.get_mut(&id) {
                    server.locked = locked;
                }
            }
        });
    }

    /// Renames a server and replaces its labels, as someone editing it in Hetzner's
    /// console would.
    pub fn edit_server(
        &self,
        id: i64,
        name: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) {
        self.with_state(|s| {
            for p in s.projects.values_mut() {
                if let Some(server) = p.servers.get_mut(&id) {
                    server.name = name.to_string();
                    server.labels = labels.clone();
                }
            }
        });
    }

    /// Makes server lists ignore `label_selector` (true) or honour it again (false), as
    /// an API that answers unrelated servers to a label query would.
    pub fn set_ignore_label_selector(&self, ignore: bool) {
        self.with_state(|s| s.ignore_label_selector = ignore);
    }

    /// How long actions started from now on stay `running` before they succeed.
    pub fn set_action_duration(&self, duration: std::time::Duration) {
        let duration = chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        self.with_state(|s| s.action_duration = duration);
    }

    /// Sets a project's request budget: `remaining` of `limit` requests an hour, as if
    /// other clients of the token had spent the rest.
    pub fn set_rate_limit(&self, token: &str, limit: u32, remaining: u32) {
        self.with_state(|s| {
            let project = s.projects.entry(token.to_string()).or_default();
            project.rate.set(limit, remaining, chrono::Utc::now());
        });
    }

    /// Queues a fault for the coming requests.
    pub fn inject(&self, fault: Fault) {
        self.with_state(|s| s.faults.push_back(fault));
    }

    /// Every server of a project, by id.
    pub fn servers(&self, token: &str) -> Vec<SimServer> {
        self.with_state(|s| {
            s.projects
                .get(token)
                .map(|p| p.servers.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// The requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.with_state(|s| s.log.clone())
    }

    /// How many `POST /v1/servers` succeeded.
    pub fn created_count(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/servers" && r.status == 201)
            .count()
    }

    /// The boot log of a created server.
    pub fn boot_log(&self, server_id: i64) -> Vec<String> {
        self.shared.booter.log(server_id)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.booter.stop_all();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn collect(
    mut body: impl futures::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Unpin,
) -> bytes::Bytes {
    let mut out = Vec::new();
    while let Some(Ok(mut chunk)) = body.next().await {
        while bytes::Buf::has_remaining(&chunk) {
            let part = bytes::Buf::chunk(&chunk);
            out.extend_from_slice(part);
            let n = part.len();
            bytes::Buf::advance(&mut chunk, n);
        }
    }
    bytes::Bytes::from(out)
}

/// Where a binary of this workspace lives next to a running executable (used by the
/// command-line simulator to find `dynserv-agent`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    path.is_file().then_some(path)
}
