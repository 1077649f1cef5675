//! The harness: a control plane started in-process on free ports, an admin with an
//! API token, and agents enrolled and run with `dynserv-agent`'s library.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dynserv::app::App;
use dynserv::config::{Config, Overrides};
use dynserv::control::{self, Command, Core};
use dynserv::secrets::Keys;
use dynserv::store::Store;
use dynserv::web::HttpTimeouts;
use dynserv::Listeners;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin's password (zxcvbn score ≥ 3).
pub const PASSWORD: &str = "Tq4!pinewood-harbor-ledger";

/// How long a test waits for something that takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `test` on a multi-thread runtime whose workers are marked as the real
/// server's are (`dynserv::store::mark_async_worker`), then checks that no store
/// call ran on one of them.
pub fn run<F: Future<Output = ()>>(test: F) {
    // The control plane's log goes to the test's output (`RUST_LOG`, warnings by
    // default): a store call on a worker is logged there with its caller.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_unpark(dynserv::store::mark_async_worker)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(test);
    assert_eq!(
        dynserv::store::calls_on_async_workers(),
        0,
        "store calls ran on async workers"
    );
}

/// What a test changes before its control plane starts.
#[derive(Default)]
pub struct Tuning {
    /// The web server's time limits.
    pub timeouts: HttpTimeouts,
    /// `DYNSERV_TRUSTED_PROXIES`.
    pub trusted_proxies: Option<String>,
}

/// A control plane running in this process until [`ControlPlane::stop`].
pub struct ControlPlane {
    pub app: App,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The HTTP listener's address.
    pub http_addr: SocketAddr,
    /// The fleet gateway's address.
    pub quic: SocketAddr,
    /// An API token of the admin.
    pub token: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
}

impl ControlPlane {
    /// Opens a fresh store, creates the admin and its API token, binds port 0 for
    /// HTTP and QUIC and starts [`dynserv::run`].
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(Tuning::default()).await
    }

    /// Like [`ControlPlane::start`], with what `tuning` changes.
    pub async fn start_with(tuning: Tuning) -> ControlPlane {
        let data = tempfile::tempdir().expect("a temporary directory");
        let over = Overrides {
            // The temporary directory's disk may be nearly full; no floor here.
            min_free_disk_mb: Some("0".into()),
            trusted_proxies: tuning.trusted_proxies,
            ..Default::default()
        };
        let config = Config::resolve(data.path(), &over).expect("the default configuration");
        let store = Store::open_location(&config.database, config.store_cache_bytes)
            .expect("a fresh store");
        let keys = Keys::load(&config.data_dir, None).expect("a master secret");
        let mut app = App::new(store, keys, config).expect("the application state");
        app.http_timeouts = tuning.timeouts;
        let token = admin_token(&app);
        let listeners = Listeners {
            http: std::net::TcpListener::bind("127.0.0.1:0").expect("a free TCP port"),
            quic: std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port"),
        };
        let http_addr = listeners.http.local_addr().expect("the HTTP address");
        let quic = listeners.quic.local_addr().expect("the QUIC address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dynserv::run(app.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        ControlPlane {
            app,
            base: format!("http://{http_addr}"),
            http_addr,
            quic,
            token,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            stop: Some(stop),
            task,
            _data: data,
        }
    }

    /// Stops the control plane and waits until `run` returned. The client's pooled
    /// connections close first, as a browser's would when it goes away.
    pub async fn stop(mut self) {
        self.http = reqwest::Client::new();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("run returns soon after its shutdown future resolves")
            .expect("run did not panic");
        result.expect("run ended without an error");
    }

    /// `GET {base}{path}` with the admin's token: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    /// `GET` of a JSON answer that must be 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// `POST {base}{path}` of `body` with the admin's token: the status and the JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a project and enrolls an agent named `name` in it with
    /// `dynserv_agent::connection::enroll`, then runs it until the returned
    /// [`Agent`] is stopped; waits until the gateway counts it connected.
    pub async fn agent(&self, name: &str) -> Agent {
        let (agent_id, state) = self.enrolled(name).await;
        self.run_agent(agent_id, state).await
    }

    /// Creates a project and enrolls an agent named `name` in it, without running it:
    /// its id and state directory.
    pub async fn enrolled(&self, name: &str) -> (String, tempfile::TempDir) {
        let (status, project) = self
            .post(
                "/api/v1/projects",
                &json!({"name": format!("{name} project")}),
            )
            .await;
        assert_eq!(status, 201, "{project}");
        let (status, created) = self
            .post(
                "/api/v1/enrollment-tokens",
                &json!({"project": project["id"]}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let token = created["token"].as_str().expect("a token");
        let state = tempfile::tempdir().expect("a state directory");
        let agent_id = dynserv_agent::connection::enroll(
            &[self.quic.to_string()],
            token,
            state.path(),
            Some(name),
        )
        .await
        .expect("enrollment");
        (agent_id, state)
    }

    /// Runs the agent enrolled in `state` until the returned [`Agent`] is stopped;
    /// waits until the gateway counts it connected.
    pub async fn run_agent(&self, agent_id: String, state: tempfile::TempDir) -> Agent {
        let connected_before = self.app.fleet.connected_count();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dynserv_agent::connection::run(
            state.path().to_path_buf(),
            async move {
                let _ = stopped.await;
            },
        ));
        eventually("the agent connects", || {
            self.app.fleet.connected_count() > connected_before
        })
        .await;
        Agent {
            id: agent_id,
            stop: Some(stop),
            task,
            state,
        }
    }

    /// Creates a shell job on `agent`; its id.
    pub async fn run_script(&self, agent: &Agent, script: &str) -> String {
        let (status, created) = self
            .post(
                "/api/v1/executions",
                &json!({"agent": agent.id, "kind": "script", "script": script}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().expect("an id").to_string()
    }

    /// Waits until execution `id` has ended; its JSON.
    pub async fn ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let execution = self.get_json(&format!("/api/v1/executions/{id}")).await;
            if !matches!(execution["status"].as_str(), Some("queued" | "running")) {
                return execution;
            }
            assert!(Instant::now() < deadline, "{id} never ended: {execution}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stored output of execution `id` (stdout and stderr), from the log API.
    pub async fn stored_output(&self, id: &str) -> String {
        let (status, body) = self.get(&format!("/api/v1/executions/{id}/log")).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
            .filter(|chunk| chunk["stream"] != "system")
            .map(|chunk| chunk["data"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// An agent running in this process until [`Agent::stop`].
pub struct Agent {
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<dynserv_agent::connection::Ended>>,
    state: tempfile::TempDir,
}

impl Agent {
    /// Stops the agent and waits until its connection loop returned.
    pub async fn stop(self) {
        self.stop_keeping_state().await;
    }

    /// Stops the agent like [`Agent::stop`] and hands back its state directory.
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(PATIENCE, &mut self.task).await;
        self.state
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

/// Waits until `done` holds, checking every 10 ms; fails the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creates the admin through the CLI's own command path and answers an API token.
fn admin_token(app: &App) -> String {
    let core = Core {
        store: &app.store,
        keys: &app.keys,
        data_dir: &app.config.data_dir,
    };
    control::execute(
        &core,
        &Command::UserAdd {
            username: "admin".into(),
            role: "admin".into(),
            manager: false,
            password: Some(PASSWORD.into()),
        },
    )
    .expect("the admin is created");
    control::execute(
        &core,
        &Command::ApiTokenCreate {
            username: "admin".into(),
            name: Some("in-process tests".into()),
        },
    )
    .expect("an API token")
}

/// A file the jobs of a test can wait for: `path` exists once [`touch`] ran.
pub fn gate(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Opens gate `path`.
pub fn touch(path: &str) {
    std::fs::write(path, b"").expect("writing a gate file");
}
