//! Installing the agent on an existing server over SSH, step by step.
//!
//! `POST /api/v1/servers/{id}/install-agent` creates an [`AgentInstall`] and runs its
//! steps in the background with the project's SSH settings ([`crate::ssh`]):
//!
//! 1. **connect** — host key checked against the pin (pinned on first use), key
//!    authentication;
//! 2. **inspect** — the machine's architecture (it must match the agent binary this
//!    control plane serves), the user, whether systemd runs, the install directory;
//! 3. **upload** — the `dynserv-agent` binary that sits next to `dynserv` (the one
//!    `/download/dynserv-agent` serves), sent over the SSH connection and checked by
//!    its SHA-256, so the server never needs to reach the control plane's HTTP address;
//! 4. **enroll** — a one-time enrollment token bound to this server (its agent is
//!    attached to this server whatever name it reports), passed on stdin, never on a
//!    command line; an earlier agent's state on the server is replaced;
//! 5. **start** — a systemd unit where systemd runs and the user is root, else a
//!    supervised background process (`setsid`, a restart loop, its pid in
//!    `INSTALL_DIR/supervisor.pid`);
//! 6. **connected** — until the agent's connection reaches the fleet gateway.
//!
//! A server whose agent is connected is left alone: the install records one step
//! saying so and succeeds without touching the server. Starting an install and its
//! end are audited. The record (table `agent_installs`, keyed by a UUIDv7) is rewritten
//! after every step, which is what the install page polls.
//!
//! An install a restart of the control plane interrupted stays `running` in the store;
//! [`view`] shows it failed once [`INSTALL_DEADLINE`] has passed, and a new install may
//! start then.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::projects::Project;
use crate::servers::Server;
use crate::ssh::{self, Opened, SshError, COMMAND_TIMEOUT};
use crate::store::{self, Read, Record, Writer};

/// The steps, in order.
pub const STEPS: [&str; 6] = [
    "connect",
    "inspect",
    "upload",
    "enroll",
    "start",
    "connected",
];
/// Time allowed for the upload of the agent binary.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed for the agent's connection to reach the gateway after it started.
pub const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long an install may run at most; past it a `running` record is shown failed
/// (a restart of the control plane interrupted it).
pub const INSTALL_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Lifetime of the one-time enrollment token an install makes.
const TOKEN_TTL_MINUTES: i64 = 30;
/// The systemd unit's name.
pub const UNIT_NAME: &str = "dynserv-agent.service";

/// One step of an install.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One install of the agent on a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInstall {
    pub id: String,
    pub server_id: String,
    pub project_id: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub steps: Vec<Step>,
    pub started_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The agent enrolled (or found connected).
    pub agent_id: Option<String>,
    /// The install changed nothing: the server's agent was connected already.
    #[serde(default)]
    pub unchanged: bool,
}

impl Record for AgentInstall {
    const TABLE: &'static str = "agent_installs";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Whether an install record is still under way (not ended, not past the deadline).
fn is_running(install: &AgentInstall, now: DateTime<Utc>) -> bool {
    install.status == "running"
        && now - install.created_at
            < chrono::Duration::from_std(INSTALL_DEADLINE).unwrap_or(chrono::Duration::MAX)
}

/// The API and page view of an install: `{"id", "server", "status", "steps", …}`.
pub fn view(r: &impl Read, install: &AgentInstall) -> anyhow::Result<serde_json::Value> {
    let now = Utc::now();
    let mut install = install.clone();
    if install.status == "running" && !is_running(&install, now) {
        install.status = "failed".into();
        for step in install.steps.iter_mut().filter(|s| s.status == "running") {
            step.status = "failed".into();
            step.message =
                Some("interrupted (the control plane stopped during the install)".into());
        }
    }
    let server = r.get::<Server>(&install.server_id)?;
    let steps: Vec<serde_json::Value> = install
        .steps
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    Ok(serde_json::json!({
        "id": install.id,
        "server": install.server_id,
        "server_name": server.map(|s| s.name),
        "project": install.project_id,
        "status": install.status,
        "steps": steps,
        "running": install.status == "running",
        "started_by": install.started_by,
        "created_at": install.created_at,
        "finished_at": install.finished_at,
        "agent": install.agent_id,
        "unchanged": install.unchanged,
    }))
}

/// Starts an install on `server`: checks what can be checked at once (settings, an
/// address, no other install running), then runs the steps in the background. A
/// server whose agent is connected gets a finished install that changed nothing.
pub fn start(app: &App, actor: &Actor, server_id: &str) -> AppResult<AgentInstall> {
    let install = app
        .store
        .write(|w| Ok(begin(app, w, actor, server_id)?))
        .map_err(AppError::from)?;
    if install.status == "running" {
        let (app, id) = (app.clone(), install.id.clone());
        tokio::spawn(async move { run(app, id).await });
    }
    Ok(install)
}

fn begin(app: &App, w: &mut Writer, actor: &Actor, server_id: &str) -> AppResult<AgentInstall> {
    let server: Server = w
        .get(server_id)?
        .ok_or_else(|| AppError::not_found("server"))?;
    let project: Project = w
        .get(&server.project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let now = Utc::now();
    let mut state = ssh::server_state(w, &server.id)?;
    if let Some(last) = state.last_install.as_deref() {
        if let Some(previous) = w.get::<AgentInstall>(last)? {
            if is_running(&previous, now) {
                return Err(AppError::conflict(format!(
                    "an agent install is already running on {} ({})",
                    server.name, previous.id
                )));
            }
        }
    }
    let mut install = AgentInstall {
        id: uuid::Uuid::now_v7().to_string(),
        server_id: server.id.clone(),
        project_id: project.id.clone(),
        status: "running".into(),
        steps: Vec::new(),
        started_by: actor.username.clone(),
        created_at: now,
        finished_at: None,
        agent_id: None,
        unchanged: false,
    };
    let connected = server
        .agent_id
        .as_deref()
        .filter(|agent_id| app.fleet.live(&*w, agent_id).is_some());
    let detail = if let Some(agent_id) = connected {
        install.status = "succeeded".into();
        install.unchanged = true;
        install.agent_id = Some(agent_id.to_string());
        install.finished_at = Some(now);
        install.steps.push(Step {
            name: "check".into(),
            status: "succeeded".into(),
            at: now,
            message: Some(format!(
                "the agent {agent_id} on {} is connected; nothing was changed",
                server.name
            )),
        });
        "nothing changed: the agent is connected".to_string()
    } else {
        if ssh::settings(w, &project.id)?.is_none() {
            return Err(AppError::conflict(format!(
                "{} has no SSH settings; set a username and private key on the project page first",
                project.name
            )));
        }
        if ssh::server_host(&server).is_none() {
            return Err(AppError::conflict(format!(
                "{} has no IPv4 or IPv6 address to connect to",
                server.name
            )));
        }
        install.steps.push(Step {
            name: STEPS[0].into(),
            status: "running".into(),
            at: now,
            message: None,
        });
        "started".to_string()
    };
    w.put(&install)?;
    state.last_install = Some(install.id.clone());
    w.put(&state)?;
    audit::record(
        w,
        actor,
        "server.agent_install",
        &format!("server:{}", server.name),
        format!("install {}: {detail}", install.id),
    )?;
    Ok(install)
}

/// Records a step's outcome and the next step under way (or the install's end).
async fn update(
    app: &App,
    id: &str,
    change: impl FnOnce(&mut AgentInstall) + Send + 'static,
) -> anyhow::Result<()> {
    let (store, id) = (app.store.clone(), id.to_string());
    store::blocking(move || {
        store.write(|w| {
            let Some(mut install) = w.get::<AgentInstall>(&id)? else {
                anyhow::bail!("the install record is gone");
            };
            change(&mut install);
            w.put(&install)?;
            if install.status != "running" {
                let server = w.get::<Server>(&install.server_id)?;
                let name = server.map(|s| s.name).unwrap_or_default();
                let last = install
                    .steps
                    .last()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_default();
                audit::record(
                    w,
                    &Actor::system(),
                    "server.agent_install_end",
                    &format!("server:{name}"),
                    format!("install {}: {}: {last}", install.id, install.status),
                )?;
            }
            Ok(())
        })
    })
    .await
}

/// Ends the running step with `outcome` and starts `next` (none: the install ends).
fn advance(install: &mut AgentInstall, outcome: Result<String, String>, next: Option<&str>) {
    let now = Utc::now();
    let failed = outcome.is_err();
    if let Some(step) = install
        .steps
        .iter_mut()
        .rev()
        .find(|s| s.status == "running")
    {
        step.status = if failed { "failed" } else { "succeeded" }.into();
        step.at = now;
        step.message = Some(match outcome {
            Ok(m) | Err(m) => m,
        });
    }
    match next {
        Some(name) if !failed => install.steps.push(Step {
            name: name.into(),
            status: "running".into(),
            at: now,
            message: None,
        }),
        _ => {
            install.status = if failed { "failed" } else { "succeeded" }.into();
            install.finished_at = Some(now);
        }
    }
}

async fn run(app: App, id: String) {
    let result = steps(&app, &id).await;
    if let Err(message) = result {
        if let Err(e) = update(&app, &id, move |i| advance(i, Err(message), None)).await {
            tracing::error!("recording the failure of agent install {id}: {e:#}");
        }
    }
}

/// What the inspect step learnt about the server.
struct Machine {
    arch: String,
    root: bool,
    systemd: bool,
    dir: String,
}

/// Runs the steps; an `Err` is the running step's failure message.
async fn steps(app: &App, id: &str) -> Result<(), String> {
    let install = {
        let (store, id) = (app.store.clone(), id.to_string());
        store::blocking(move || store.get::<AgentInstall>(&id))
            .await
            .map_err(|e| format!("{e:#}"))?
            .ok_or("the install record is gone")?
    };
    let server = {
        let (store, server_id) = (app.store.clone(), install.server_id.clone());
        store::blocking(move || store.get::<Server>(&server_id))
            .await
            .map_err(|e| format!("{e:#}"))?
            .ok_or("the server no longer exists")?
    };

    // Connect.
    let opened = ssh::open(app, &server).await.map_err(|e| e.to_string())?;
    let message = format!(
        "{}@{} port {}, host key {}{}",
        opened.settings.username,
        ssh::server_host(&server).unwrap_or_default(),
        opened.settings.port,
        opened.host_key_fingerprint,
        if opened.newly_pinned {
            " (pinned now, first use)"
        } else {
            " (matches the pinned key)"
        },
    );
    step_done(app, id, message, "inspect").await?;
    let result = install_over(app, id, &server, &opened).await;
    opened.session.close().await;
    result
}

async fn step_done(app: &App, id: &str, message: String, next: &'static str) -> Result<(), String> {
    update(app, id, move |i| advance(i, Ok(message), Some(next)))
        .await
        .map_err(|e| format!("recording the step: {e:#}"))
}

fn ssh_error(e: SshError) -> String {
    e.to_string()
}

async fn install_over(app: &App, id: &str, server: &Server, opened: &Opened) -> Result<(), String> {
    let session = &opened.session;

    // Inspect.
    let probe = "uname -m; id -u; if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd; else echo none; fi; echo \"$HOME\"";
    let output = session
        .check(probe, None, COMMAND_TIMEOUT, "inspecting the server")
        .await
        .map_err(ssh_error)?;
    let lines: Vec<&str> = output.stdout.lines().map(str::trim).collect();
    let [arch, uid, init, home, ..] = lines.as_slice() else {
        return Err(format!(
            "inspecting the server gave an unexpected answer: {}",
            output.summary()
        ));
    };
    let root = *uid == "0";
    let dir = match &opened.settings.install_dir {
        Some(dir) => dir.clone(),
        None if root => "/opt/dynserv-agent".to_string(),
        None => {
            let home = home.trim_end_matches('/');
            if !home.starts_with('/')
                || !home
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
            {
                return Err(format!(
                    "the home directory {home:?} is unusable; set an install directory in the project's SSH settings"
                ));
            }
            format!("{home}/.dynserv-agent")
        }
    };
    let machine = Machine {
        arch: arch.to_string(),
        root,
        systemd: *init == "systemd",
        dir,
    };
    if machine.arch != std::env::consts::ARCH {
        return Err(format!(
            "the server is {}, this control plane's agent binary is built for {}",
            machine.arch,
            std::env::consts::ARCH
        ));
    }
    let message = format!(
        "{}, {}, {}, install directory {}",
        machine.arch,
        if machine.root { "root" } else { "not root" },
        if machine.systemd && machine.root {
            "systemd"
        } else if machine.systemd {
            "systemd (not root: a supervised process instead)"
        } else {
            "no systemd: a supervised process"
        },
        machine.dir
    );
    step_done(app, id, message, "upload").await?;

    // Upload.
    let binary =
        agent_binary_path().ok_or("the dynserv-agent binary is not installed next to dynserv")?;
    let (size, sha) = {
        let path = binary.clone();
        tokio::task::spawn_blocking(move || file_sha256(&path))
            .await
            .map_err(|e| format!("hashing the agent binary: {e}"))?
            .map_err(|e| format!("reading {}: {e}", binary.display()))?
    };
    let dir = &machine.dir;
    stop_previous(session, &machine).await?;
    let mut file = tokio::fs::File::open(&binary)
        .await
        .map_err(|e| format!("opening {}: {e}", binary.display()))?;
    let command = format!(
        "umask 077 && mkdir -p {dir} && cat > {dir}/dynserv-agent.new && chmod 0755 {dir}/dynserv-agent.new && sha256sum {dir}/dynserv-agent.new"
    );
    let output = session
        .check(
            &command,
            Some(&mut file),
            UPLOAD_TIMEOUT,
            "uploading the agent",
        )
        .await
        .map_err(ssh_error)?;
    let remote_sha = output.stdout.split_whitespace().next().unwrap_or("");
    if remote_sha != sha {
        return Err(format!(
            "the uploaded agent's SHA-256 is {remote_sha}, expected {sha}"
        ));
    }
    session
        .check(
            &format!("mv -f {dir}/dynserv-agent.new {dir}/dynserv-agent"),
            None,
            COMMAND_TIMEOUT,
            "moving the agent into place",
        )
        .await
        .map_err(ssh_error)?;
    step_done(
        app,
        id,
        format!("{dir}/dynserv-agent, {size} bytes, sha256 {sha}"),
        "enroll",
    )
    .await?;

    // Enroll, with a one-time token bound to this server.
    let secret = {
        let (store, server_id, project_id) = (
            app.store.clone(),
            server.id.clone(),
            server.project_id.clone(),
        );
        let starter = install_starter(app, id).await;
        store::blocking(move || {
            store.write(|w| {
                let project: Project = w
                    .get(&project_id)?
                    .ok_or_else(|| anyhow::anyhow!("the project no longer exists"))?;
                let (mut record, secret) = crate::agents::create_token(
                    w,
                    &Actor {
                        username: starter,
                        ip: None,
                    },
                    &project,
                    1,
                    chrono::Duration::minutes(TOKEN_TTL_MINUTES),
                    Utc::now(),
                )
                .map_err(|e| anyhow::anyhow!(e.message))?;
                record.server_id = Some(server_id);
                w.put(&record)?;
                Ok(secret)
            })
        })
        .await
        .map_err(|e| format!("creating the enrollment token: {e:#}"))?
    };
    let token = app.fleet.token_text(&secret);
    let fleet = shell_quote(&app.config.public_quic);
    let name = shell_quote(&server.name);
    let command = format!(
        "rm -rf {dir}/state && DYNSERV_ENROLL_TOKEN=\"$(cat)\" {dir}/dynserv-agent enroll --server {fleet} --state-dir {dir}/state --name {name}"
    );
    let mut token_input: &[u8] = token.as_bytes();
    session
        .check(
            &command,
            Some(&mut token_input),
            COMMAND_TIMEOUT,
            "enrolling the agent",
        )
        .await
        .map_err(ssh_error)?;
    step_done(
        app,
        id,
        format!(
            "enrolled with {} as {} (one-time token bound to this server)",
            app.config.public_quic, server.name
        ),
        "start",
    )
    .await?;

    // Start.
    let message = if machine.systemd && machine.root {
        let unit = unit_text(dir);
        let command = format!(
            "cat > /etc/systemd/system/{UNIT_NAME} && systemctl daemon-reload && systemctl enable {UNIT_NAME} && systemctl restart {UNIT_NAME}"
        );
        let mut unit_input: &[u8] = unit.as_bytes();
        session
            .check(
                &command,
                Some(&mut unit_input),
                COMMAND_TIMEOUT,
                "starting the systemd unit",
            )
            .await
            .map_err(ssh_error)?;
        format!("systemd unit {UNIT_NAME} enabled and started")
    } else {
        let script = supervisor_script(dir);
        let mut script_input: &[u8] = script.as_bytes();
        session
            .check(
                &format!("cat > {dir}/supervise.sh && chmod 0700 {dir}/supervise.sh"),
                Some(&mut script_input),
                COMMAND_TIMEOUT,
                "writing the supervisor",
            )
            .await
            .map_err(ssh_error)?;
        let command = format!(
            "rm -f {dir}/supervisor.pid; if command -v setsid >/dev/null 2>&1; then setsid sh {dir}/supervise.sh >> {dir}/agent.log 2>&1 < /dev/null & else nohup sh {dir}/supervise.sh >> {dir}/agent.log 2>&1 < /dev/null & fi; \
             i=0; while [ ! -s {dir}/supervisor.pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
             kill -0 \"$(cat {dir}/supervisor.pid)\" && cat {dir}/supervisor.pid"
        );
        let output = session
            .check(&command, None, COMMAND_TIMEOUT, "starting the agent")
            .await
            .map_err(ssh_error)?;
        format!(
            "supervised background process (pid {}, log {dir}/agent.log)",
            output.stdout.trim()
        )
    };
    step_done(app, id, message, "connected").await?;

    // Connected: the agent reached the gateway.
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    loop {
        let (store, fleet, server_id) = (app.store.clone(), app.fleet.clone(), server.id.clone());
        let connected = store::blocking(move || {
            store.read(|r| {
                let server: Option<Server> = r.get(&server_id)?;
                Ok(server
                    .and_then(|s| s.agent_id)
                    .filter(|agent_id| fleet.live(r, agent_id).is_some()))
            })
        })
        .await
        .map_err(|e| format!("{e:#}"))?;
        if let Some(agent_id) = connected {
            let message = format!("agent {agent_id} connected");
            return update(app, id, move |i| {
                i.agent_id = Some(agent_id);
                advance(i, Ok(message), None);
            })
            .await
            .map_err(|e| format!("recording the step: {e:#}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the agent started but did not connect to {} within {} s; see {dir}/agent.log on the server (or journalctl -u {UNIT_NAME})",
                app.config.public_quic,
                CONNECT_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops an agent an earlier install started, so its binary and state can be
/// replaced.
async fn stop_previous(session: &ssh::Session, machine: &Machine) -> Result<(), String> {
    let dir = &machine.dir;
    let mut command = format!(
        "if [ -s {dir}/supervisor.pid ]; then pid=$(cat {dir}/supervisor.pid); kill -TERM -- -\"$pid\" 2>/dev/null || kill -TERM \"$pid\" 2>/dev/null; rm -f {dir}/supervisor.pid; fi"
    );
    if machine.systemd && machine.root {
        command.push_str(&format!(
            "; systemctl stop {UNIT_NAME} >/dev/null 2>&1 || true"
        ));
    }
    command.push_str("; true");
    session
        .check(&command, None, COMMAND_TIMEOUT, "stopping an earlier agent")
        .await
        .map(|_| ())
        .map_err(ssh_error)
}

/// Who started the install (the token's creator in the audit log).
async fn install_starter(app: &App, id: &str) -> String {
    let (store, id) = (app.store.clone(), id.to_string());
    store::blocking(move || store.get::<AgentInstall>(&id))
        .await
        .ok()
        .flatten()
        .map_or_else(|| "system".to_string(), |i| i.started_by)
}

/// The agent binary the control plane serves (`/download/dynserv-agent`, agent
/// installs, agent upgrades): `DYNSERV_AGENT_BINARY` when set, else the
/// `dynserv-agent` next to the running `dynserv`.
pub fn agent_binary_path() -> Option<std::path::PathBuf> {
    if let Some(configured) = std::env::var_os("DYNSERV_AGENT_BINARY").filter(|v| !v.is_empty()) {
        let path = std::path::PathBuf::from(configured);
        return path.is_file().then_some(path);
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join("dynserv-agent");
    path.is_file().then_some(path)
}

fn file_sha256(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Single-quotes a word for the remote shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The systemd unit for an agent installed in `dir` (the shape of
/// `packaging/dynserv-agent.service`, with the install's paths).
pub fn unit_text(dir: &str) -> String {
    format!(
        "# Written by dynserv's agent install over SSH.\n\
         [Unit]\n\
         Description=Dynamic Servers agent\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={dir}/dynserv-agent run --state-dir {dir}/state\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The restart loop of an agent where there is no systemd: records its own pid (the
/// process group `stop_previous` ends) and runs the agent again 2 s after it stops.
pub fn supervisor_script(dir: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # Written by dynserv's agent install over SSH: keeps the agent running where\n\
         # there is no systemd. Stop it with: kill -TERM -- -$(cat {dir}/supervisor.pid)\n\
         echo $$ > {dir}/supervisor.pid\n\
         # The agent exits (code 75) to restart into a binary an upgrade installed.\n\
         export DYNSERV_AGENT_SUPERVISED=1\n\
         while :; do\n\
         \x20 {dir}/dynserv-agent run --state-dir {dir}/state\n\
         \x20 sleep 2\n\
         done\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> AgentInstall {
        AgentInstall {
            id: "i".into(),
            server_id: "s".into(),
            project_id: "p".into(),
            status: "running".into(),
            steps: vec![Step {
                name: "connect".into(),
                status: "running".into(),
                at: Utc::now(),
                message: None,
            }],
            started_by: "admin".into(),
            created_at: Utc::now(),
            finished_at: None,
            agent_id: None,
            unchanged: false,
        }
    }

    /// A step that succeeds starts the next one; one that fails ends the install
    /// failed with the failing step marked, and nothing after it.
    #[test]
    fn steps_advance_and_a_failure_ends_the_install() {
        let mut i = install();
        advance(&mut i, Ok("connected".into()), Some("inspect"));
        assert_eq!(i.status, "running");
        assert_eq!(i.steps.len(), 2);
        assert_eq!(i.steps[0].status, "succeeded");
        assert_eq!(i.steps[1].status, "running");
        advance(&mut i, Err("no sha256sum".into()), Some("upload"));
        assert_eq!(i.status, "failed");
        assert_eq!(i.steps.len(), 2);
        assert_eq!(i.steps[1].status, "failed");
        assert_eq!(i.steps[1].message.as_deref(), Some("no sha256sum"));
        assert!(i.finished_at.is_some());
    }

    /// Words given to the remote shell stay one word whatever they hold.
    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(shell_quote("127.0.0.1:4433"), "'127.0.0.1:4433'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    /// The supervisor records its pid before it first starts the agent.
    #[test]
    fn supervisor_records_its_pid_first() {
        let script = supervisor_script("/opt/dynserv-agent");
        let pid = script.find("supervisor.pid\n").unwrap();
        let run = script.find("dynserv-agent run").unwrap();
        assert!(pid < run, "{script}");
        assert!(unit_text("/opt/x")
            .contains("ExecStart=/opt/x/dynserv-agent run --state-dir /opt/x/state"));
    }
}
