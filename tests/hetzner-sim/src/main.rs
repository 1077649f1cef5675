//! `hetzner-sim`: runs the Hetzner Cloud simulator until stopped.
//!
//! ```text
//! hetzner-sim --listen 127.0.0.1:4010 --token demo-token --servers 5
//! HETZNER_API_URL=http://127.0.0.1:4010/v1 dynserv serve --demo
//! ```
//! Steer it with `POST /_sim/faults` (`{"kind": {"type": "rate_limit", "reset_secs": 5},
//! "times": 1}`), `POST /_sim/projects/{token}/servers`,
//! `POST /_sim/projects/{token}/rate_limit` (`{"remaining": 20}`),
//! `DELETE /_sim/servers/{id}`, `GET /_sim/requests`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dynserv_hetzner_sim::{BootConfig, SimConfig, Simulator};

#[derive(Parser)]
#[command(
    name = "hetzner-sim",
    version,
    about = "Hetzner Cloud API simulator for Dynamic Servers tests"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010")]
    listen: SocketAddr,
    /// API tokens to accept, one simulated project each.
    #[arg(long = "token", required = true)]
    tokens: Vec<String>,
    /// Servers to put in each project at start.
    #[arg(long, default_value_t = 0)]
    servers: usize,
    /// Seconds an action runs before it succeeds.
    #[arg(long, default_value_t = 2.0)]
    action_secs: f64,
    /// Directory where created servers "boot" (download, enroll and run the agent);
    /// servers do not boot without it.
    #[arg(long)]
    boot_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(0.0..=3600.0).contains(&cli.action_secs) {
        anyhow::bail!("--action-secs must be between 0 and 3600");
    }
    let sim = Simulator::start(SimConfig {
        listen: cli.listen,
        action_duration: std::time::Duration::from_secs_f64(cli.action_secs),
        boot: BootConfig {
            work_dir: cli.boot_dir,
            agent_binary: dynserv_hetzner_sim::sibling_binary("dynserv-agent"),
        },
    })
    .await?;
    for token in &cli.tokens {
        sim.add_project(token);
        sim.add_servers(token, cli.servers, "sim");
    }
    println!("hetzner-sim listening; HETZNER_API_URL={}", sim.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
