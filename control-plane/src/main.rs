//! The `dynserv` binary: parses arguments, sets up logging, and hands over to the
//! library (`dynserv::run` for `serve`, `dynserv::control` for the other commands).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use dynserv::config::{Config, Overrides};
use dynserv::control::{self, Command};

/// jemalloc instead of glibc's malloc: serving a page builds and drops thousands of
/// small values (JSON maps, strings) on many threads, where glibc's arenas spent over a
/// third of the control plane's CPU (`malloc_consolidate`, `_int_free`) under 16 clients.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "dynserv", version, about = "Dynamic Servers control plane")]
struct Cli {
    /// Data directory: the store, the CA, the master secret and the control socket.
    #[arg(
        long,
        global = true,
        env = "DYNSERV_DATA_DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,
    /// A TOML configuration file (default: DATA_DIR/dynserv.toml when present).
    #[arg(long, global = true, env = "DYNSERV_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: web UI, API and fleet gateway.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API bearer tokens.
    #[command(subcommand)]
    Apitoken(ApiTokenCmd),
    /// Manage agent enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The fleet's certificate authorities: list, rotate, retire.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Write a consistent copy of the store, also while `serve` runs.
    Backup {
        /// The file to write; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy the whole store into an empty target and verify it: `postgres://…` or a
    /// new `.redb` file. Stop `serve` on a redb store first.
    Migrate {
        /// The target: a PostgreSQL URL or the path of a new redb file.
        #[arg(long)]
        to: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// HTTP listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "DYNSERV_HTTP")]
    http: Option<String>,
    /// QUIC (fleet) listen address [default: 0.0.0.0:4433]
    #[arg(long, env = "DYNSERV_QUIC")]
    quic: Option<String>,
    /// The HOST:PORT agents dial (default: the QUIC address).
    #[arg(long, env = "DYNSERV_PUBLIC_QUIC")]
    public_quic: Option<String>,
    /// The URL the web UI is reached at.
    #[arg(long, env = "DYNSERV_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seed demo users, projects and servers into an empty store.
    #[arg(long)]
    demo: bool,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user.
    Add {
        #[arg(long)]
        username: String,
        /// admin, technical or sales
        #[arg(long)]
        role: String,
        /// A technical manager sees every project; a sales manager every agent's figures.
        #[arg(long)]
        manager: bool,
        /// Read the password from standard input (otherwise one is generated and printed).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an enrollment token for a project and print it (nothing else).
    Create {
        /// The project (name or id) the enrolled servers join.
        #[arg(long)]
        project: String,
        /// How many agents may enroll with it [default: 1].
        #[arg(long)]
        uses: Option<u32>,
        /// How long it stays valid: 30m, 24h, 7d [default: 24h].
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// List the CAs: id, status, how many agents hold a certificate of each.
    List,
    /// Make a new CA the active one (it issues every certificate from now on) and keep
    /// the current one trusted until it is retired; connected agents are sent
    /// certificates of the new CA at once. Prints the new CA's id.
    Rotate,
    /// Stop trusting a retiring CA. Refused while agents still hold a certificate of
    /// it, unless --force.
    Retire {
        /// The CA's id (or full SHA-256 fingerprint), as `dynserv ca list` shows it.
        id: String,
        /// Retire it even though agents still hold its certificates: they can no
        /// longer connect and must enroll again.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ApiTokenCmd {
    /// Create an API token for a user and print it.
    Create {
        #[arg(long)]
        username: String,
        /// A name to recognise the token by.
        #[arg(long)]
        name: Option<String>,
    },
}

fn overrides(cli: &Cli, serve: Option<&ServeArgs>) -> Overrides {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Overrides {
        http: serve.and_then(|s| s.http.clone()),
        quic: serve.and_then(|s| s.quic.clone()),
        public_quic: serve.and_then(|s| s.public_quic.clone()),
        public_url: serve.and_then(|s| s.public_url.clone()),
        trusted_proxies: env("DYNSERV_TRUSTED_PROXIES"),
        session_secret: env("SESSION_SECRET"),
        database_url: env("DATABASE_URL"),
        hetzner_api_token: env("HETZNER_API_TOKEN"),
        hetzner_api_url: env("HETZNER_API_URL"),
        hetzner_sync_secs: env("DYNSERV_HETZNER_SYNC_SECS"),
        provision_boot_secs: env("DYNSERV_PROVISION_BOOT_SECS"),
        provision_enroll_secs: env("DYNSERV_PROVISION_ENROLL_SECS"),
        retention_days: env("DYNSERV_RETENTION_DAYS"),
        audit_retention_days: env("DYNSERV_AUDIT_RETENTION_DAYS"),
        max_job_output: env("DYNSERV_MAX_JOB_OUTPUT"),
        agent_cert_days: env("DYNSERV_AGENT_CERT_DAYS"),
        store_cache_mb: env("DYNSERV_STORE_CACHE_MB"),
        min_free_disk_mb: env("DYNSERV_MIN_FREE_DISK_MB"),
        smtp_url: env("DYNSERV_SMTP_URL"),
        mail_from: env("DYNSERV_MAIL_FROM"),
        webhook_allow: env("DYNSERV_WEBHOOK_ALLOW"),
        agent_offline_alert: env("DYNSERV_AGENT_OFFLINE_ALERT"),
        terminal_idle_secs: env("DYNSERV_TERMINAL_IDLE_SECS"),
        config_file: cli.config.clone(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynserv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match &cli.command {
        Cmd::Serve(args) => serve(&cli, args),
        Cmd::User(UserCmd::Add {
            username,
            role,
            manager,
            password_stdin,
        }) => {
            let password = if *password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the password from stdin")?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            } else {
                None
            };
            one_shot(
                &cli,
                Command::UserAdd {
                    username: username.clone(),
                    role: role.clone(),
                    manager: *manager,
                    password,
                },
            )
        }
        Cmd::Apitoken(ApiTokenCmd::Create { username, name }) => one_shot(
            &cli,
            Command::ApiTokenCreate {
                username: username.clone(),
                name: name.clone(),
            },
        ),
        Cmd::Backup { out } => one_shot(&cli, Command::Backup { out: out.clone() }),
        Cmd::Ca(CaCmd::List) => one_shot(&cli, Command::CaList),
        Cmd::Ca(CaCmd::Rotate) => one_shot(&cli, Command::CaRotate),
        Cmd::Ca(CaCmd::Retire { id, force }) => one_shot(
            &cli,
            Command::CaRetire {
                id: id.clone(),
                force: *force,
            },
        ),
        Cmd::Migrate { to } => {
            let config = Config::resolve(&cli.data_dir, &overrides(&cli, None))?;
            let report = control::migrate(
                &config.data_dir,
                &config.database,
                config.session_secret.as_deref(),
                to,
            )?;
            println!("{report}");
            Ok(())
        }
        Cmd::Token(TokenCmd::Create { project, uses, ttl }) => one_shot(
            &cli,
            Command::TokenCreate {
                project: project.clone(),
                uses: *uses,
                ttl: ttl.clone(),
            },
        ),
    }
}

fn one_shot(cli: &Cli, command: Command) -> Result<()> {
    let config = Config::resolve(&cli.data_dir, &overrides(cli, None))?;
    let answer = control::run_command(
        &config.data_dir,
        &config.database,
        config.session_secret.as_deref(),
        &command,
    )?;
    println!("{answer}");
    Ok(())
}

fn serve(cli: &Cli, args: &ServeArgs) -> Result<()> {
    init_tracing();
    // The data directory holds the store, the master secret and the fleet CA's key.
    dynserv_agent::private_fs::create_dir(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let config = Config::resolve(&cli.data_dir, &overrides(cli, Some(args)))?;
    // Worker threads are marked so a store call made on one is counted and logged
    // (store calls belong on the blocking pool).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_unpark(dynserv::store::mark_async_worker)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let store = dynserv::store::Store::open_location(&config.database, config.store_cache_bytes)?;
        let keys = dynserv::secrets::Keys::load(&config.data_dir, config.session_secret.as_deref())?;
        if args.demo && dynserv::demo::seed(&store, &keys)? {
            println!("seeded demo data: sign in as admin/admin123, tech/tech123, sales/sales123 or sohila/sohila123");
        }
        let app = dynserv::app::App::new(store, keys, config)?;
        if args.demo {
            app.fleet.want_demo_agent();
        }
        let listeners = dynserv::Listeners::bind(&app.config)?;
        dynserv::run(app, listeners, dynserv::shutdown_signal()).await
    })
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DYNSERV_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("DYNSERV_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
