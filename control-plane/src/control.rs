//! Commands other than `serve` (`user add`, `apitoken create`, `backup`, …) and the
//! local control socket that lets them run while `serve` holds the store.
//!
//! redb lets one process open the file. So `serve` listens on `DATA_DIR/dynserv.sock`
//! (mode 0600: only the owner of the data directory may use it); a command first tries
//! that socket and, when no server answers, opens the store itself. Both paths run the
//! same [`execute`], so a command behaves the same either way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::app::App;
use crate::audit::Actor;
use crate::auth;
use crate::policy::Role;
use crate::secrets::Keys;
use crate::store::Store;
use crate::users::{self, NewUser};

/// The socket's file name inside the data directory.
pub const SOCKET: &str = "dynserv.sock";
/// Longest accepted request line on the socket.
const MAX_LINE: usize = 64 * 1024;

/// One command, as sent over the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Create a user; without a password one is generated and printed.
    UserAdd {
        username: String,
        role: String,
        manager: bool,
        password: Option<String>,
    },
    /// Create an API token for a user.
    ApiTokenCreate {
        username: String,
        name: Option<String>,
    },
    /// Write a consistent copy of the store.
    Backup { out: PathBuf },
    /// Create an enrollment token for a project; the answer is the token alone.
    TokenCreate {
        project: String,
        uses: Option<u32>,
        ttl: Option<String>,
    },
    /// List the fleet's CAs.
    CaList,
    /// Rotate the fleet's CA; the answer is the new CA's id alone.
    CaRotate,
    /// Retire a CA no agent depends on (or with `force`, one some still do).
    CaRetire { id: String, force: bool },
}

impl Command {
    /// Whether the command changes the fleet's CAs (the running gateway rereads them
    /// at once).
    pub fn changes_cas(&self) -> bool {
        matches!(self, Command::CaRotate | Command::CaRetire { .. })
    }
}

/// The message of a domain error, without the chain of an internal one.
fn plain(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<crate::error::AppError>() {
        Ok(app) => anyhow::anyhow!(app.message),
        Err(e) => e,
    }
}

/// What a command needs: the store and the keys, whichever process holds them.
pub struct Core<'a> {
    pub store: &'a Store,
    pub keys: &'a Keys,
    pub data_dir: &'a Path,
}

/// Runs a command; the answer is what the CLI prints on stdout.
pub fn execute(core: &Core, command: &Command) -> Result<String> {
    match command {
        Command::UserAdd {
            username,
            role,
            manager,
            password,
        } => {
            let (password, generated) = match password {
                Some(p) => (p.clone(), false),
                None => (crate::secrets::random_token(12), true),
            };
            let username = username.trim().to_lowercase();
            crate::validate::username(Some(&username)).map_err(|e| anyhow::anyhow!(e.message))?;
            Role::parse(role)
                .with_context(|| format!("role must be admin, technical or sales, not {role:?}"))?;
            crate::validate::password("password", Some(&password), &[&username])
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let hash = users::hash_password(&password)?;
            let input = NewUser {
                username: Some(username.clone()),
                role: Some(role.clone()),
                is_manager: *manager,
                ..Default::default()
            };
            core.store
                .write(|w| Ok(users::create(w, &Actor::cli(), &input, Some(hash))?))
                .map_err(|e| match e.downcast::<crate::error::AppError>() {
                    Ok(app) => anyhow::anyhow!(app.message),
                    Err(e) => e,
                })?;
            Ok(if generated {
                format!("created user {username} with password {password}")
            } else {
                format!("created user {username}")
            })
        }
        Command::ApiTokenCreate { username, name } => {
            let user = core
                .store
                .read(|r| users::by_username(r, username.trim()))?
                .with_context(|| format!("no user named {}", crate::validate::echo(username)))?;
            if !user.active {
                anyhow::bail!("user {username} is deactivated");
            }
            core.store.write(|w| {
                auth::create_api_token(w, &Actor::cli(), &user, name.as_deref().unwrap_or("cli"))
            })
        }
        Command::TokenCreate { project, uses, ttl } => crate::agents::create_token_cli(
            core.store,
            core.data_dir,
            project,
            *uses,
            ttl.as_deref(),
        ),
        Command::CaList => {
            let cas = core.store.read(crate::fleet::ca::list)?;
            let lines: Vec<String> = cas
                .iter()
                .map(|ca| {
                    format!(
                        "{}  {:<8}  {} agent(s)  created {}  sha256 {}{}",
                        ca.id,
                        ca.status,
                        ca.agents,
                        ca.created_at
                            .map(|at| at.to_rfc3339())
                            .unwrap_or_else(|| "before rotations".into()),
                        ca.fingerprint,
                        if ca.serving {
                            "  (signs the gateway)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            Ok(lines.join("\n"))
        }
        Command::CaRotate => {
            let new = core
                .store
                .write(|w| {
                    Ok(crate::fleet::ca::rotate(
                        w,
                        &Actor::cli(),
                        chrono::Utc::now(),
                    )?)
                })
                .map_err(plain)?;
            Ok(new.id)
        }
        Command::CaRetire { id, force } => {
            let retired = core
                .store
                .write(|w| {
                    Ok(crate::fleet::ca::retire(
                        w,
                        &Actor::cli(),
                        id,
                        *force,
                        chrono::Utc::now(),
                    )?)
                })
                .map_err(plain)?;
            Ok(format!("retired CA {}", retired.id))
        }
        Command::Backup { out } => {
            let out = if out.is_absolute() {
                out.clone()
            } else {
                std::env::current_dir()?.join(out)
            };
            core.store.backup_to(&out)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            Ok(format!("wrote {} ({size} bytes)", out.display()))
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Answer {
    ok: Option<String>,
    error: Option<String>,
}

/// Listens on the control socket until `stop` resolves.
pub fn listen(
    app: App,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = ()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = app.config.data_dir.join(SOCKET);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another dynserv serve is running on {}",
                app.config.data_dir.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let app = app.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_one(app, stream).await {
                                tracing::warn!("control socket: {e:#}");
                            }
                        });
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

async fn serve_one(app: App, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64));
    reader.read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Command>(&line) {
        Err(e) => Answer {
            ok: None,
            error: Some(format!("malformed command: {e}")),
        },
        Ok(command) => {
            let result = tokio::task::spawn_blocking(move || {
                crate::store::allow_blocking_here();
                let core = Core {
                    store: &app.store,
                    keys: &app.keys,
                    data_dir: &app.config.data_dir,
                };
                let result = execute(&core, &command);
                if result.is_ok() && command.changes_cas() {
                    // The gateway here takes the new CAs at once; other replicas
                    // within their next reload.
                    if let Err(e) = app.fleet.reload_trust() {
                        tracing::warn!("rereading the fleet's CAs: {e:#}");
                    }
                }
                result
            })
            .await?;
            match result {
                Ok(text) => Answer {
                    ok: Some(text),
                    error: None,
                },
                Err(e) => Answer {
                    ok: None,
                    error: Some(format!("{e:#}")),
                },
            }
        }
    };
    let mut bytes = serde_json::to_vec(&answer)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok(())
}

/// Sends a command to a running server; `Ok(None)` when no server listens.
pub fn send(data_dir: &Path, command: &Command) -> Result<Option<String>> {
    use std::io::{BufRead, Write};
    let path = data_dir.join(SOCKET);
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut bytes = serde_json::to_vec(command)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the server's answer")?;
    let answer: Answer = serde_json::from_str(&line).context("the server's answer is malformed")?;
    match (answer.ok, answer.error) {
        (Some(text), _) => Ok(Some(text)),
        (None, Some(error)) => Err(anyhow::anyhow!(error)),
        (None, None) => Err(anyhow::anyhow!("the server gave an empty answer")),
    }
}

/// Runs a command through the running server, or directly on the store when none runs.
pub fn run_command(
    data_dir: &Path,
    database: &crate::store::Location,
    session_secret: Option<&str>,
    command: &Command,
) -> Result<String> {
    if let Some(answer) = send(data_dir, command)? {
        return Ok(answer);
    }
    dynserv_agent::private_fs::create_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = Store::open_location(database, crate::store::DEFAULT_CACHE_BYTES)?;
    let keys = Keys::load(data_dir, session_secret)?;
    store.seal_with(keys.clone());
    crate::app::install_execution_hooks();
    execute(
        &Core {
            store: &store,
            keys: &keys,
            data_dir,
        },
        command,
    )
}

/// `dynserv migrate --to TARGET`: copies the store at `source` into the empty store
/// `target` (`postgres://…` or a new redb file), verifies the counts per table and
/// returns them as lines to print. Sealed records are copied sealed, so the target is
/// read with the same master secret: said in the answer when it matters.
pub fn migrate(
    data_dir: &Path,
    source: &crate::store::Location,
    session_secret: Option<&str>,
    target: &str,
) -> Result<String> {
    use crate::store::Location;
    let target_location = Location::parse(target.trim());
    if &target_location == source {
        anyhow::bail!("the target is the store itself; name another database or file");
    }
    if let Location::File(path) = &target_location {
        if path.exists() {
            anyhow::bail!("{} already exists; name a new file", path.display());
        }
    }
    let store =
        Store::open_location(source, crate::store::DEFAULT_CACHE_BYTES).with_context(|| {
            format!(
                "opening the store {} (stop `dynserv serve` on it first)",
                source.describe()
            )
        })?;
    let target_store = Store::open_location(&target_location, crate::store::DEFAULT_CACHE_BYTES)
        .with_context(|| format!("opening the target {}", target_location.describe()))?;
    let counts = store.copy_into(&target_store)?;
    let mut lines = vec![format!(
        "copied {} into {} and verified:",
        source.describe(),
        target_location.describe()
    )];
    let width = counts.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    for (table, n) in &counts {
        lines.push(format!("  {table:<width$}  {n}"));
    }
    let from_file_secret = session_secret.is_none_or(str::is_empty);
    if from_file_secret && matches!(target_location, Location::Postgres(_)) {
        lines.push(format!(
            "sealed secrets were copied as they are: set SESSION_SECRET to the content of {} on every replica",
            data_dir.join("secret").display()
        ));
    }
    Ok(lines.join("\n"))
}
