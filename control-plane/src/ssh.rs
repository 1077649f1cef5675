//! Reaching servers over SSH: a project's SSH settings, each server's pinned host key
//! and last connection test, and the SSH client itself (russh, pure Rust, on the
//! control plane's tokio runtime; never the `ssh` program).
//!
//! SSH is only the way in: the agent install ([`crate::agent_installs`]) uses it once,
//! everything afterwards runs through the agent.
//!
//! Tables:
//! * `project_ssh` ([`ProjectSsh`], keyed by project id, **sealed**: the private key and
//!   its passphrase are encrypted at rest and never leave the control plane; the API
//!   and pages show only the key's fingerprint);
//! * `server_ssh` ([`ServerSsh`], keyed by server id): the host key pinned on first
//!   use, a different key a server presented later (refused until someone allowed to
//!   manage the project's agents accepts it), the last test and the last install.
//!
//! **Invariant:** a connection whose host key differs from the pinned one is refused
//! before authentication; nothing is sent to such a server.
//!
//! Every network step has its own timeout ([`CONNECT_TIMEOUT`], [`AUTH_TIMEOUT`], and
//! one per command); store calls made from async code go through `store::blocking`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::projects::Project;
use crate::servers::Server;
use crate::store::{self, Read, Record, Writer};

/// Time allowed to open the TCP connection and finish the key exchange.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for the server to accept or refuse the key.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for a short command (inspecting the server, starting the agent).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The most output kept of one command (stdout and stderr each); the rest is dropped,
/// the command runs on.
pub const MAX_COMMAND_OUTPUT: usize = 64 * 1024;
/// The largest private key accepted (an 8192-bit RSA key in PEM is about 6.5 KiB).
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// The default SSH port.
pub const DEFAULT_PORT: u16 = 22;

/// A project's SSH settings. Sealed: the whole record is encrypted at rest.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProjectSsh {
    /// The project id.
    pub id: String,
    pub username: String,
    pub port: u16,
    /// The private key as given (OpenSSH or PEM).
    pub private_key: String,
    pub passphrase: Option<String>,
    /// `SHA256:…` of the public key, what people see instead of the key.
    pub key_fingerprint: String,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
    pub key_algorithm: String,
    /// Where the agent is installed on the servers (absolute path); `None` is
    /// `/opt/dynserv-agent` for root and `~/.dynserv-agent` for other users.
    #[serde(default)]
    pub install_dir: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl std::fmt::Debug for ProjectSsh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the passphrase, not even in a log line.
        f.debug_struct("ProjectSsh")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("port", &self.port)
            .field("key_fingerprint", &self.key_fingerprint)
            .finish_non_exhaustive()
    }
}

impl Record for ProjectSsh {
    const TABLE: &'static str = "project_ssh";
    const SEALED: bool = true;
    fn id(&self) -> &str {
        &self.id
    }
}

/// The outcome of the last connection test of a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestOutcome {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub host_key_fingerprint: Option<String>,
    pub error: Option<String>,
}

/// What the control plane knows about reaching one server over SSH.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSsh {
    /// The server id.
    pub id: String,
    /// The pinned host key (OpenSSH public key line) and its fingerprint.
    pub host_key: Option<String>,
    pub host_key_fingerprint: Option<String>,
    pub pinned_at: Option<DateTime<Utc>>,
    /// A different host key the server presented after one was pinned: refused until
    /// accepted ([`accept_host_key`]).
    pub offered_key: Option<String>,
    pub offered_fingerprint: Option<String>,
    pub offered_at: Option<DateTime<Utc>>,
    pub last_test: Option<TestOutcome>,
    /// The last agent install started on the server.
    pub last_install: Option<String>,
}

impl Record for ServerSsh {
    const TABLE: &'static str = "server_ssh";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What `PUT /api/v1/projects/{id}/ssh` and the project page's form send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    pub username: Option<String>,
    pub port: Option<u16>,
    /// Required the first time; left out (or empty) later, the stored key is kept.
    pub private_key: Option<String>,
    pub passphrase: Option<String>,
    pub install_dir: Option<String>,
}

/// Why an SSH step failed, in words a person can act on.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SshError {
    /// The project has no SSH settings.
    #[error(
        "the project has no SSH settings; set a username and private key on the project page first"
    )]
    NoSettings,
    /// The server has no address to connect to.
    #[error("the server has no IPv4 or IPv6 address to connect to")]
    NoAddress,
    /// The TCP connection failed.
    #[error("cannot reach {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// A step took longer than its timeout.
    #[error("{step} did not finish within {seconds} s")]
    Timeout { step: String, seconds: u64 },
    /// The server presented a host key other than the pinned one.
    #[error("WARNING: the host key of {address} has changed (pinned {pinned}, presented {presented}); the connection was refused. If the server was reinstalled, an administrator can accept the new key; otherwise someone may be intercepting the connection")]
    HostKeyChanged {
        address: String,
        pinned: String,
        presented: String,
        /// The presented key as an OpenSSH public key line (not in the message).
        presented_key: String,
    },
    /// The server refused the key.
    #[error("the server refused the key {fingerprint} for user {username} (is its public key in ~{username}/.ssh/authorized_keys?)")]
    AuthRejected {
        username: String,
        fingerprint: String,
    },
    /// The stored key could not be read.
    #[error("the project's private key cannot be used: {0}")]
    BadKey(String),
    /// The SSH conversation failed.
    #[error("SSH error: {0}")]
    Protocol(String),
    /// A remote command failed.
    #[error("{what} failed (exit {status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
}

// ---- keys ----

/// Reads a private key (OpenSSH, or PEM: PKCS#1 RSA, SEC1 EC, PKCS#8, encrypted or
/// not) with its passphrase.
pub fn parse_key(text: &str, passphrase: Option<&str>) -> Result<PrivateKey, String> {
    let passphrase = passphrase.filter(|p| !p.is_empty());
    match russh::keys::decode_secret_key(text.trim(), passphrase) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            Err("the key is encrypted: give its passphrase".into())
        }
        Err(e) if passphrase.is_some() => Err(format!(
            "the key cannot be read with this passphrase ({e}); check both"
        )),
        Err(e) => Err(format!(
            "not an OpenSSH or PEM private key (ed25519, ECDSA or RSA): {e}"
        )),
    }
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn check_username(text: Option<&str>) -> AppResult<String> {
    let name = text.map(str::trim).unwrap_or("");
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(AppError::invalid(
            "username",
            "username must be 1 to 32 letters, digits, '_', '-' or '.'",
        ))
    }
}

/// An install directory: an absolute path of plain characters, so it needs no quoting
/// in the commands that use it.
fn check_install_dir(text: Option<&str>) -> AppResult<Option<String>> {
    let Some(dir) = text.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let ok = dir.starts_with('/')
        && dir.len() <= 200
        && dir != "/"
        && !dir.contains("..")
        && dir
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
    if ok {
        Ok(Some(dir.trim_end_matches('/').to_string()))
    } else {
        Err(AppError::invalid(
            "install_dir",
            "the install directory must be an absolute path of letters, digits, '/', '_', '-' and '.'",
        ))
    }
}

// ---- settings ----

/// The project's SSH settings, if set.
pub fn settings(r: &impl Read, project_id: &str) -> anyhow::Result<Option<ProjectSsh>> {
    r.get(project_id)
}

/// What the API and the pages show of a project's settings: never the key or the
/// passphrase.
pub fn settings_view(settings: Option<&ProjectSsh>) -> serde_json::Value {
    match settings {
        Some(s) => serde_json::json!({
            "username": s.username,
            "port": s.port,
            "key_fingerprint": s.key_fingerprint,
            "key_algorithm": s.key_algorithm,
            "has_passphrase": s.passphrase.is_some(),
            "install_dir": s.install_dir,
            "updated_at": s.updated_at,
            "updated_by": s.updated_by,
        }),
        None => serde_json::Value::Null,
    }
}

/// Validates and stores a project's SSH settings (the key is parsed with its
/// passphrase first, so a key that cannot be used is never stored); audited.
pub fn save_settings(
    w: &mut Writer,
    actor: &Actor,
    project: &Project,
    input: &SettingsInput,
) -> AppResult<ProjectSsh> {
    let mut problems = Vec::new();
    let username = check_username(input.username.as_deref())
        .map_err(|e| problems.push(("username".to_string(), e.message)))
        .ok();
    let port = match input.port {
        None => Some(DEFAULT_PORT),
        Some(0) => {
            problems.push(("port".into(), "port must be between 1 and 65535".into()));
            None
        }
        Some(p) => Some(p),
    };
    let install_dir = check_install_dir(input.install_dir.as_deref())
        .map_err(|e| problems.push(("install_dir".to_string(), e.message)))
        .ok()
        .flatten();
    let existing = settings(w, &project.id)?;
    let given_key = input
        .private_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let (private_key, passphrase) = match (given_key, &existing) {
        (Some(key), _) => (
            Some(key.to_string()),
            input.passphrase.clone().filter(|p| !p.is_empty()),
        ),
        // The stored key stays; so does its passphrase unless a new one is given.
        (None, Some(old)) => (
            Some(old.private_key.clone()),
            input
                .passphrase
                .clone()
                .filter(|p| !p.is_empty())
                .or(old.passphrase.clone()),
        ),
        (None, None) => {
            problems.push(("private_key".into(), "a private key is required".into()));
            (None, None)
        }
    };
    let mut parsed = None;
    if let Some(key) = &private_key {
        if key.len() > MAX_KEY_LEN {
            problems.push((
                "private_key".into(),
                format!("the key is longer than {} KiB", MAX_KEY_LEN / 1024),
            ));
        } else if passphrase.as_ref().is_some_and(|p| p.len() > 1024) {
            problems.push((
                "passphrase".into(),
                "the passphrase is longer than 1024 characters".into(),
            ));
        } else {
            match parse_key(key, passphrase.as_deref()) {
                Ok(k) => parsed = Some(k),
                Err(message) => {
                    let field = if message.contains("passphrase") {
                        "passphrase"
                    } else {
                        "private_key"
                    };
                    problems.push((field.into(), message));
                }
            }
        }
    }
    if let Some(err) = AppError::invalid_fields(problems) {
        return Err(err);
    }
    let (Some(username), Some(port), Some(private_key), Some(key)) =
        (username, port, private_key, parsed)
    else {
        return Err(AppError::new(
            crate::error::Kind::Internal,
            "SSH settings checked without a value",
        ));
    };
    let record = ProjectSsh {
        id: project.id.clone(),
        username,
        port,
        private_key,
        passphrase,
        key_fingerprint: fingerprint(key.public_key()),
        key_algorithm: key.algorithm().to_string(),
        install_dir,
        updated_at: Utc::now(),
        updated_by: actor.username.clone(),
    };
    w.put(&record)?;
    audit::record(
        w,
        actor,
        "project.ssh_update",
        &format!("project:{}", project.name),
        format!(
            "user {}, port {}, key {}",
            record.username, record.port, record.key_fingerprint
        ),
    )?;
    Ok(record)
}

/// Forgets a project's SSH settings (the key with them); audited. `false` when there
/// were none.
pub fn delete_settings(w: &mut Writer, actor: &Actor, project: &Project) -> anyhow::Result<bool> {
    let removed = w.delete::<ProjectSsh>(&project.id)?;
    if removed {
        audit::record(
            w,
            actor,
            "project.ssh_delete",
            &format!("project:{}", project.name),
            "",
        )?;
    }
    Ok(removed)
}

/// What the control plane knows about reaching a server (empty when nothing yet).
pub fn server_state(r: &impl Read, server_id: &str) -> anyhow::Result<ServerSsh> {
    Ok(r.get::<ServerSsh>(server_id)?.unwrap_or_else(|| ServerSsh {
        id: server_id.to_string(),
        ..Default::default()
    }))
}

/// The server page's and the API's view of a server's SSH state: `status` is `ok`,
/// `failed` (with `error`) or `never` (never tested).
pub fn server_view(state: &ServerSsh) -> serde_json::Value {
    let status = match &state.last_test {
        None => "never",
        Some(t) if t.ok => "ok",
        Some(_) => "failed",
    };
    serde_json::json!({
        "status": status,
        "host_key_fingerprint": state.host_key_fingerprint,
        "pinned_at": state.pinned_at,
        "offered_fingerprint": state.offered_fingerprint,
        "offered_at": state.offered_at,
        "last_test": state.last_test,
        "last_install": state.last_install,
    })
}

/// Pins the host key a server offered in place of the pinned one; audited. A
/// conflict when the server offered none.
pub fn accept_host_key(w: &mut Writer, actor: &Actor, server: &Server) -> AppResult<ServerSsh> {
    let mut state = server_state(w, &server.id)?;
    let key = state.offered_key.take();
    let Some(fp) = state.offered_fingerprint.take() else {
        return Err(AppError::conflict(
            "the server has presented no new host key to accept; test the connection first",
        ));
    };
    let old = state.host_key_fingerprint.clone().unwrap_or_default();
    state.host_key = key;
    state.host_key_fingerprint = Some(fp.clone());
    state.pinned_at = Some(Utc::now());
    state.offered_at = None;
    w.put(&state)?;
    audit::record(
        w,
        actor,
        "server.ssh_host_key_accept",
        &format!("server:{}", server.name),
        format!("{old} replaced by {fp}"),
    )?;
    Ok(state)
}

/// The address to connect to: the IPv4 address, else the IPv6 one.
pub fn server_host(server: &Server) -> Option<String> {
    server
        .ipv4
        .clone()
        .filter(|a| !a.is_empty())
        .or(server.ipv6.clone().filter(|a| !a.is_empty()))
}

// ---- the client ----

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub key: Arc<PrivateKey>,
}

impl Target {
    /// `host:port`, IPv6 in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The connection's handler: decides on the server's host key: the pinned one only, or any on first use; keeps
/// what was presented so the caller can report or pin it.
pub struct HostKeyCheck {
    pinned: Option<String>,
    presented: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = server_public_key.public_key();
        let presented = fingerprint(&key);
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(key);
        }
        Ok(match &self.pinned {
            None => true,
            Some(pinned) => *pinned == presented,
        })
    }
}

/// An authenticated SSH connection.
pub struct Session {
    handle: client::Handle<HostKeyCheck>,
    /// The host key the server presented.
    pub host_key: PublicKey,
}

/// What a remote command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit status, or `None` when the command ended without one (a signal).
    pub status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The command's output for an error message: stderr, else stdout, trimmed and
    /// bounded.
    pub fn summary(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        let mut out: String = text.chars().take(500).collect();
        if out.is_empty() {
            out = "no output".into();
        }
        out
    }
}

fn timeout(step: &str, limit: Duration) -> SshError {
    SshError::Timeout {
        step: step.to_string(),
        seconds: limit.as_secs(),
    }
}

/// Connects and checks the host key against `pinned` (any key when `None`: first
/// use); answers the connection, not yet authenticated, and the key presented.
pub async fn handshake(
    target: &Target,
    pinned: Option<&str>,
) -> Result<(client::Handle<HostKeyCheck>, PublicKey), SshError> {
    let address = target.address();
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    {
        Err(_) => {
            return Err(timeout(
                &format!("connecting to {address}"),
                CONNECT_TIMEOUT,
            ))
        }
        Ok(Err(e)) => {
            return Err(SshError::Unreachable {
                address,
                reason: e.to_string(),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    let presented = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        pinned: pinned.map(str::to_string),
        presented: presented.clone(),
    };
    let config = Arc::new(client::Config {
        // A connection that goes quiet is given up rather than held forever.
        inactivity_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect_stream(config, stream, check),
    )
    .await;
    let presented_key = presented.lock().ok().and_then(|k| k.clone());
    let handle = match connected {
        Err(_) => {
            return Err(timeout(
                &format!("the SSH handshake with {address}"),
                CONNECT_TIMEOUT,
            ))
        }
        Ok(Err(e)) => {
            if let (Some(pinned), Some(key)) = (pinned, &presented_key) {
                let presented = fingerprint(key);
                if presented != pinned {
                    return Err(SshError::HostKeyChanged {
                        address,
                        pinned: pinned.to_string(),
                        presented,
                        presented_key: key.to_openssh().unwrap_or_default(),
                    });
                }
            }
            return Err(SshError::Protocol(format!(
                "the handshake with {address} failed: {e}"
            )));
        }
        Ok(Ok(handle)) => handle,
    };
    match presented_key {
        Some(key) => Ok((handle, key)),
        None => Err(SshError::Protocol(format!(
            "{address} presented no host key"
        ))),
    }
}

/// Authenticates a connection with the target's key.
pub async fn authenticate(
    handle: &mut client::Handle<HostKeyCheck>,
    target: &Target,
) -> Result<(), SshError> {
    let auth = tokio::time::timeout(AUTH_TIMEOUT, async {
        let hash = handle.best_supported_rsa_hash().await?.flatten();
        handle
            .authenticate_publickey(
                target.username.clone(),
                PrivateKeyWithHashAlg::new(target.key.clone(), hash),
            )
            .await
    })
    .await;
    match auth {
        Err(_) => Err(timeout("authentication", AUTH_TIMEOUT)),
        Ok(Err(e)) => Err(SshError::Protocol(format!("authentication failed: {e}"))),
        Ok(Ok(result)) if result.success() => Ok(()),
        Ok(Ok(_)) => Err(SshError::AuthRejected {
            username: target.username.clone(),
            fingerprint: fingerprint(target.key.public_key()),
        }),
    }
}

fn push_bounded(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_COMMAND_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl Session {
    /// Runs `command` (through the login user's shell), feeding it `input` on stdin
    /// when given, and waits for it to end, at most `limit`.
    pub async fn run(
        &self,
        command: &str,
        input: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        limit: Duration,
        what: &str,
    ) -> Result<Output, SshError> {
        let work = async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| SshError::Protocol(format!("opening a session: {e}")))?;
            channel
                .exec(true, command)
                .await
                .map_err(|e| SshError::Protocol(format!("starting {what}: {e}")))?;
            // A command that fails early stops reading its input: the send then fails,
            // and what the command said (its exit status and stderr) is the better
            // reason, so it is collected before the send error is reported.
            let mut send_error = None;
            if let Some(reader) = input {
                if let Err(e) = channel.data(reader).await {
                    send_error = Some(format!("sending to {what}: {e}"));
                }
            }
            if send_error.is_none() {
                if let Err(e) = channel.eof().await {
                    send_error = Some(format!("ending the input of {what}: {e}"));
                }
            }
            let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
            while let Some(message) = channel.wait().await {
                match message {
                    russh::ChannelMsg::Data { data } => push_bounded(&mut stdout, &data),
                    russh::ChannelMsg::ExtendedData { data, .. } => {
                        push_bounded(&mut stderr, &data)
                    }
                    russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    _ => {}
                }
            }
            if let Some(error) = send_error {
                if status.is_none_or(|s| s == 0) {
                    return Err(SshError::Protocol(error));
                }
            }
            Ok(Output {
                status,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(timeout(what, limit)),
        }
    }

    /// Runs `command` and insists that it exits 0.
    pub async fn check(
        &self,
        command: &str,
        input: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        limit: Duration,
        what: &str,
    ) -> Result<Output, SshError> {
        let output = self.run(command, input, limit, what).await?;
        if output.success() {
            Ok(output)
        } else {
            Err(SshError::Command {
                what: what.to_string(),
                status: output
                    .status
                    .map_or("by a signal".to_string(), |s| s.to_string()),
                output: output.summary(),
            })
        }
    }

    /// Says goodbye; errors are of no interest then.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.handle
                .disconnect(russh::Disconnect::ByApplication, "", "en"),
        )
        .await;
    }
}

// ---- connecting to a managed server ----

/// An authenticated connection to a server with its project's settings, the host
/// key checked against the pin (and pinned on first use).
pub struct Opened {
    pub session: Session,
    pub settings: ProjectSsh,
    pub host_key_fingerprint: String,
    /// Whether this connection pinned the key (first use).
    pub newly_pinned: bool,
}

/// Why [`open`] failed, with the host key the server presented when it got that far.
#[derive(Debug)]
pub struct OpenFailure {
    pub error: SshError,
    pub host_key_fingerprint: Option<String>,
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<SshError> for OpenFailure {
    fn from(error: SshError) -> OpenFailure {
        let host_key_fingerprint = match &error {
            SshError::HostKeyChanged { presented, .. } => Some(presented.clone()),
            _ => None,
        };
        OpenFailure {
            error,
            host_key_fingerprint,
        }
    }
}

/// Connects to `server` with its project's settings. The first connection pins the
/// host key (once the key exchange proved the server holds it, before logging in); a
/// different key than the pinned one is recorded as offered and refused.
pub async fn open(app: &App, server: &Server) -> Result<Opened, OpenFailure> {
    let (settings, state) = {
        let store = app.store.clone();
        let (project_id, server_id) = (server.project_id.clone(), server.id.clone());
        store::blocking(move || {
            store.read(|r| Ok((settings(r, &project_id)?, server_state(r, &server_id)?)))
        })
        .await
        .map_err(|e| SshError::Protocol(format!("reading the SSH settings: {e:#}")))?
    };
    let settings = settings.ok_or(SshError::NoSettings)?;
    let host = server_host(server).ok_or(SshError::NoAddress)?;
    let key = parse_key(&settings.private_key, settings.passphrase.as_deref())
        .map_err(SshError::BadKey)?;
    let target = Target {
        host,
        port: settings.port,
        username: settings.username.clone(),
        key: Arc::new(key),
    };
    let pinned = state.host_key_fingerprint.clone();
    let (mut handle, host_key) = match handshake(&target, pinned.as_deref()).await {
        Ok(connected) => connected,
        Err(SshError::HostKeyChanged {
            address,
            pinned,
            presented,
            presented_key,
        }) => {
            // Remember what was offered, so an administrator can look and accept it.
            let (store, server_id) = (app.store.clone(), server.id.clone());
            let (offered, offered_key) = (presented.clone(), presented_key.clone());
            let recorded = store::blocking(move || {
                store.write(|w| {
                    let mut state = server_state(w, &server_id)?;
                    if state.offered_fingerprint.as_deref() != Some(offered.as_str()) {
                        state.offered_fingerprint = Some(offered);
                        state.offered_key = Some(offered_key);
                        state.offered_at = Some(Utc::now());
                        w.put(&state)?;
                    }
                    Ok(())
                })
            })
            .await;
            if let Err(e) = recorded {
                tracing::error!("recording the host key {presented} offered by {address}: {e:#}");
            }
            return Err(SshError::HostKeyChanged {
                address,
                pinned,
                presented,
                presented_key,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let fp = fingerprint(&host_key);
    let newly_pinned = pinned.is_none();
    if newly_pinned {
        let line = host_key.to_openssh().unwrap_or_default();
        let (store, server_id, fp2) = (app.store.clone(), server.id.clone(), fp.clone());
        store::blocking(move || {
            store.write(|w| {
                let mut state = server_state(w, &server_id)?;
                // Another connection may have pinned one meanwhile: keep it.
                if state.host_key_fingerprint.is_none() {
                    state.host_key = Some(line);
                    state.host_key_fingerprint = Some(fp2);
                    state.pinned_at = Some(Utc::now());
                    w.put(&state)?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| SshError::Protocol(format!("pinning the host key: {e:#}")))?;
    }
    if let Err(error) = authenticate(&mut handle, &target).await {
        return Err(OpenFailure {
            error,
            host_key_fingerprint: Some(fp),
        });
    }
    Ok(Opened {
        session: Session { handle, host_key },
        settings,
        host_key_fingerprint: fp,
        newly_pinned,
    })
}

/// The answer of a connection test.
#[derive(Debug, Clone, Serialize)]
pub struct TestAnswer {
    pub ok: bool,
    pub host_key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether this test pinned the host key (first use).
    pub pinned: bool,
}

/// Tests the connection to a server (connect, host key, authentication, `true`),
/// records the outcome as the server's SSH status and audits it.
pub async fn test(app: &App, actor: &Actor, server: &Server) -> TestAnswer {
    let outcome = match open(app, server).await {
        Ok(opened) => {
            let ran = opened
                .session
                .check("true", None, COMMAND_TIMEOUT, "running a command")
                .await;
            let fp = opened.host_key_fingerprint.clone();
            let pinned = opened.newly_pinned;
            opened.session.close().await;
            match ran {
                Ok(_) => TestAnswer {
                    ok: true,
                    host_key_fingerprint: Some(fp),
                    error: None,
                    pinned,
                },
                Err(e) => TestAnswer {
                    ok: false,
                    host_key_fingerprint: Some(fp),
                    error: Some(e.to_string()),
                    pinned,
                },
            }
        }
        Err(failure) => TestAnswer {
            ok: false,
            host_key_fingerprint: failure.host_key_fingerprint,
            error: Some(failure.error.to_string()),
            pinned: false,
        },
    };
    let (store, server_id, server_name, actor, answer) = (
        app.store.clone(),
        server.id.clone(),
        server.name.clone(),
        actor.clone(),
        outcome.clone(),
    );
    let recorded = store::blocking(move || {
        store.write(|w| {
            let mut state = server_state(w, &server_id)?;
            state.last_test = Some(TestOutcome {
                at: Utc::now(),
                ok: answer.ok,
                host_key_fingerprint: answer.host_key_fingerprint.clone(),
                error: answer.error.clone(),
            });
            w.put(&state)?;
            let detail = match &answer.error {
                None => format!(
                    "ok, host key {}",
                    answer.host_key_fingerprint.as_deref().unwrap_or("")
                ),
                Some(e) => format!("failed: {e}"),
            };
            audit::record(
                w,
                &actor,
                "server.ssh_test",
                &format!("server:{server_name}"),
                detail,
            )
        })
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!("recording the SSH test of {}: {e:#}", server.name);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_key(file: &str, passphrase: Option<&str>, algorithm: &str, expected: &str) {
        let parsed = parse_key(file, passphrase).unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        assert_eq!(parsed.algorithm().to_string(), algorithm);
        assert_eq!(fingerprint(parsed.public_key()), expected);
    }

    /// Every key format the settings accept parses, with the fingerprint
    /// `ssh-keygen -l` printed for it (tests/fixtures/ssh, made by ssh-keygen).
    #[test]
    fn openssh_and_pem_keys_parse_with_their_fingerprints() {
        check_key(
            include_str!("../../tests/fixtures/ssh/ed25519"),
            None,
            "ssh-ed25519",
            "SHA256:HfYjxhpPFpEHBiO7831/G/PP/4MQwyDV9yxYnUQv/PE",
        );
        check_key(
            include_str!("../../tests/fixtures/ssh/ed25519_encrypted"),
            Some("Tq4!pinewood"),
            "ssh-ed25519",
            "SHA256:4kXUTY+jJ/HCsbQK2O6Z8heNe0xA8a07q7bygGVOJ7s",
        );
        check_key(
            include_str!("../../tests/fixtures/ssh/ecdsa_pem"),
            None,
            "ecdsa-sha2-nistp256",
            "SHA256:8jOLjp0dQ4/3hs2Vj2hw0wDjXvk6XnPL7Eeoe48SpzA",
        );
        check_key(
            include_str!("../../tests/fixtures/ssh/ecdsa_pkcs8"),
            None,
            "ecdsa-sha2-nistp384",
            "SHA256:7GrrUOJGNRfWBsNNaFzpJe9h9sWrkTjiaQRkXJDf9TA",
        );
        check_key(
            include_str!("../../tests/fixtures/ssh/rsa_pem"),
            None,
            "ssh-rsa",
            "SHA256:kGJ9jeO3Tyt4CagKn71J/0eMd2pGyhFDgqKzn2SodUU",
        );
    }

    /// Garbage, an encrypted key without its passphrase and one with a wrong
    /// passphrase are refused with a message that says what to do.
    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        let err = parse_key("not a key", None).unwrap_err();
        assert!(err.contains("not an OpenSSH or PEM private key"), "{err}");
        let encrypted = include_str!("../../tests/fixtures/ssh/ed25519_encrypted");
        let err = parse_key(encrypted, None).unwrap_err();
        assert!(err.contains("passphrase"), "{err}");
        let err = parse_key(encrypted, Some("wrong-passphrase")).unwrap_err();
        assert!(err.contains("passphrase"), "{err}");
    }

    /// Usernames and install directories that would need shell quoting are refused.
    #[test]
    fn names_that_need_quoting_are_refused() {
        assert!(check_username(Some("root")).is_ok());
        assert!(check_username(Some("deploy.user_1")).is_ok());
        for bad in ["", "-oProxyCommand", "a b", "a;b", &"x".repeat(33)] {
            assert!(check_username(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            check_install_dir(Some("/opt/dynserv-agent/")).unwrap(),
            Some("/opt/dynserv-agent".to_string())
        );
        assert_eq!(check_install_dir(Some(" ")).unwrap(), None);
        for bad in ["relative", "/", "/a b", "/a/../b", "/a;rm", "/a$(x)"] {
            assert!(check_install_dir(Some(bad)).is_err(), "{bad}");
        }
    }
}
