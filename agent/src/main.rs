//! `dynserv-agent`: parses arguments, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dynserv_agent::connection;

#[derive(Parser)]
#[command(
    name = "dynserv-agent",
    about = "Dynamic Servers agent: dials out to the control plane and runs jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrolls this machine once and stores its key, certificate and the control
    /// plane's addresses (mode 0600).
    Enroll {
        /// The control plane's fleet addresses, HOST:PORT[,HOST:PORT…] (UDP, default
        /// port 4433): one per replica, tried in this order.
        #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
        server: String,
        /// The enrollment token, dsv1.<secret>.<ca-sha256>.
        #[arg(long, env = "DYNSERV_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Where the agent keeps its identity, job spool and state.
        #[arg(long, env = "DYNSERV_AGENT_STATE_DIR", default_value = connection::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The name to enroll under (defaults to the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Connects to the control plane and serves jobs until stopped; reconnects forever,
    /// failing over between the control plane's addresses.
    Run {
        /// Where the agent keeps its identity, job spool and state.
        #[arg(long, env = "DYNSERV_AGENT_STATE_DIR", default_value = connection::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Runs an Ansible playbook locally with the native runtime (exit 0 ok, 2 failed task, 1 invalid).
    Playbook(dynserv_agent::playbook::PlaybookArgs),
    /// Backs up a Docker Compose service's database through the Docker API (used by backup jobs).
    ComposeBackup(dynserv_agent::compose::BackupArgs),
    /// Recomputes a kept backup's sha256 and compares it with the recorded one.
    ComposeVerify(dynserv_agent::compose::VerifyArgs),
    /// Restores a kept backup into a Docker Compose service (used by restore jobs).
    ComposeRestore(dynserv_agent::compose::RestoreArgs),
    /// Uploads an encrypted copy of a kept backup to off-site storage (used by retries).
    ComposeOffsiteUpload(dynserv_agent::compose::OffsiteUploadArgs),
    /// Upgrades the system's packages non-interactively (apt, dnf or apk).
    SystemUpdate(dynserv_agent::update::UpdateArgs),
    /// Prints the version this binary reports (also how an upgrade checks that a new
    /// binary runs before it replaces the old one).
    Version,
}

/// The state directory as an absolute path: jobs run in other working directories
/// and write their exit code below it, so a relative `--state-dir` would point
/// elsewhere for them.
fn absolute(state_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(state_dir)
        .map_err(|e| anyhow::anyhow!("resolving the state directory {}: {e}", state_dir.display()))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DYNSERV_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One thread: the agent idles most of the time and must stay small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    // The version comes from the binary's version marker (see dynserv_agent::version).
    let matches = Cli::command()
        .version(dynserv_agent::version::version())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The playbook runner prints Ansible-style output itself and has its own exit codes.
    let command = match cli.command {
        Command::Playbook(args) => {
            let code = dynserv_agent::playbook::cli_main(args);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        // Backups, restores and updates print their own lines and result.
        Command::ComposeBackup(args) => {
            return ExitCode::from(dynserv_agent::compose::backup_main(args) as u8)
        }
        Command::ComposeVerify(args) => {
            return ExitCode::from(dynserv_agent::compose::verify_main(args) as u8)
        }
        Command::ComposeRestore(args) => {
            return ExitCode::from(dynserv_agent::compose::restore_main(args) as u8)
        }
        Command::ComposeOffsiteUpload(args) => {
            return ExitCode::from(dynserv_agent::compose::offsite_upload_main(args) as u8)
        }
        Command::SystemUpdate(args) => {
            return ExitCode::from(dynserv_agent::update::update_main(args) as u8)
        }
        Command::Version => {
            println!("{}", dynserv_agent::version::version());
            return ExitCode::SUCCESS;
        }
        other => other,
    };
    init_tracing();
    let result = match command {
        Command::Enroll {
            server,
            token,
            state_dir,
            name,
        } => absolute(&state_dir).and_then(|state_dir| {
            let servers = dynserv_agent::servers::parse(&server)
                .map_err(|e| anyhow::anyhow!("invalid --server list: {e}"))?;
            let rt = runtime()?;
            let agent_id = rt.block_on(connection::enroll(
                &servers,
                &token,
                &state_dir,
                name.as_deref(),
            ))?;
            println!("enrolled as agent {agent_id}");
            Ok(())
        }),
        Command::Run { state_dir } => absolute(&state_dir).and_then(|state_dir| {
            let runtime = runtime()?;
            let ended = runtime.block_on(connection::run(state_dir, shutdown_signal()))?;
            // Jobs run in their own process groups and survive the restart; nothing of
            // the runtime is needed past this point.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match ended {
                connection::Ended::Shutdown => Ok(()),
                connection::Ended::Restart(binary) => {
                    let error = dynserv_agent::upgrade::restart(&binary);
                    Err(anyhow::anyhow!(
                        "re-executing {} after an upgrade: {error}",
                        binary.display()
                    ))
                }
            }
        }),
        Command::Playbook(_)
        | Command::ComposeBackup(_)
        | Command::ComposeVerify(_)
        | Command::ComposeRestore(_)
        | Command::ComposeOffsiteUpload(_)
        | Command::SystemUpdate(_)
        | Command::Version => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
