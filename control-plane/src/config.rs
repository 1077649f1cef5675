//! Configuration of `dynserv serve` and the other commands.
//!
//! Precedence, highest first: command-line flags, then environment variables
//! (`DYNSERV_*`, plus `SESSION_SECRET`, `DATABASE_URL`, `HETZNER_API_TOKEN`,
//! `HETZNER_API_URL`), then the optional TOML file (`--config FILE`, or
//! `DATA_DIR/dynserv.toml` when present), then the defaults below. Flags and env are
//! merged by clap (each flag names its variable); [`Config::resolve`] layers the file
//! and defaults under them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default QUIC (fleet) listen address.
pub const DEFAULT_QUIC: &str = "0.0.0.0:4433";
/// Default Hetzner Cloud API base.
pub const DEFAULT_HETZNER_URL: &str = "https://api.hetzner.cloud/v1";
/// Default seconds between two scheduled Hetzner syncs of a project.
pub const DEFAULT_HETZNER_SYNC_SECS: u64 = 15 * 60;
/// The shortest interval of scheduled syncs a setting may ask for, in seconds.
pub const MIN_HETZNER_SYNC_SECS: u64 = 10;
/// Default seconds provisioning waits for a new server to reach `running`.
pub const DEFAULT_PROVISION_BOOT_SECS: u64 = 600;
/// Default seconds provisioning waits for a running server's agent to enroll.
pub const DEFAULT_PROVISION_ENROLL_SECS: u64 = 900;

/// Default days an ended execution and its log are kept.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;
/// Default days an audit entry is kept.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 365;
/// Default seconds an agent stays disconnected before `agent.offline` is raised.
pub const DEFAULT_AGENT_OFFLINE_ALERT_SECS: u64 = 300;
/// Default bytes of output stored per execution (100 MiB); past it the job goes on
/// and nothing more is stored or shown.
pub const DEFAULT_MAX_JOB_OUTPUT: u64 = 100 * 1024 * 1024;
/// Default seconds a web terminal may go without input before it is closed.
pub const DEFAULT_TERMINAL_IDLE_SECS: u64 = 900;
/// Default size of the store's page cache, in MiB.
pub const DEFAULT_STORE_CACHE_MB: u64 = 32;
/// Default free space (MiB) under the data directory below which new jobs are
/// refused, so the output of running ones still has room.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 512;

/// The optional configuration file. Unknown keys are an error, so a typo is caught.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<String>,
    pub quic: Option<String>,
    /// The address agents dial, as written into enrollment instructions and cloud-init
    /// (`HOST:PORT`); defaults to the QUIC listen address.
    pub public_quic: Option<String>,
    /// The URL people and new servers reach the web UI at.
    pub public_url: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub hetzner_api_url: Option<String>,
    pub session_idle_minutes: Option<u64>,
    pub session_absolute_hours: Option<u64>,
    /// Seconds between two scheduled Hetzner syncs of a project; 0 turns them off.
    pub hetzner_sync_secs: Option<u64>,
    /// Seconds provisioning waits for a new server to boot.
    pub provision_boot_secs: Option<u64>,
    /// Seconds provisioning waits for a new server's agent to enroll.
    pub provision_enroll_secs: Option<u64>,
    /// Days ended executions and their logs are kept (0 keeps them forever).
    pub retention_days: Option<u64>,
    /// Days audit entries are kept (0 keeps them forever).
    pub audit_retention_days: Option<u64>,
    /// Bytes of output stored per execution.
    pub max_job_output: Option<u64>,
    /// Days an agent certificate is valid (renewed with a third left).
    pub agent_cert_days: Option<u64>,
    /// The store's page cache, in MiB.
    pub store_cache_mb: Option<u64>,
    /// Free MiB under the data directory below which new jobs are refused.
    pub min_free_disk_mb: Option<u64>,
    /// The SMTP server alert e-mails go through (`smtp://user:pass@host:port`,
    /// `smtps://…`, or `smtp://…?tls=required` for STARTTLS); none sends no e-mail.
    pub smtp_url: Option<String>,
    /// The sender of alert e-mails.
    pub mail_from: Option<String>,
    /// Address ranges webhooks may reach besides public addresses.
    pub webhook_allow: Option<Vec<String>>,
    /// Seconds an agent stays disconnected before `agent.offline` is raised (0: never).
    pub agent_offline_alert_secs: Option<u64>,
    /// Seconds a web terminal may go without input before it is closed.
    pub terminal_idle_secs: Option<u64>,
}

/// Values given on the command line or in the environment (already merged by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub http: Option<String>,
    pub quic: Option<String>,
    pub public_quic: Option<String>,
    pub public_url: Option<String>,
    pub trusted_proxies: Option<String>,
    pub session_secret: Option<String>,
    pub database_url: Option<String>,
    pub hetzner_api_token: Option<String>,
    pub hetzner_api_url: Option<String>,
    /// `DYNSERV_HETZNER_SYNC_SECS`.
    pub hetzner_sync_secs: Option<String>,
    /// `DYNSERV_PROVISION_BOOT_SECS`.
    pub provision_boot_secs: Option<String>,
    /// `DYNSERV_PROVISION_ENROLL_SECS`.
    pub provision_enroll_secs: Option<String>,
    /// `DYNSERV_RETENTION_DAYS`.
    pub retention_days: Option<String>,
    /// `DYNSERV_AUDIT_RETENTION_DAYS`.
    pub audit_retention_days: Option<String>,
    /// `DYNSERV_MAX_JOB_OUTPUT`.
    pub max_job_output: Option<String>,
    /// `DYNSERV_AGENT_CERT_DAYS`.
    pub agent_cert_days: Option<String>,
    /// `DYNSERV_STORE_CACHE_MB`.
    pub store_cache_mb: Option<String>,
    /// `DYNSERV_MIN_FREE_DISK_MB`.
    pub min_free_disk_mb: Option<String>,
    /// `DYNSERV_SMTP_URL`.
    pub smtp_url: Option<String>,
    /// `DYNSERV_MAIL_FROM`.
    pub mail_from: Option<String>,
    /// `DYNSERV_WEBHOOK_ALLOW` (comma-separated ranges).
    pub webhook_allow: Option<String>,
    /// `DYNSERV_AGENT_OFFLINE_ALERT` (seconds).
    pub agent_offline_alert: Option<String>,
    /// `DYNSERV_TERMINAL_IDLE_SECS`.
    pub terminal_idle_secs: Option<String>,
    pub config_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where the store lives: `DATA_DIR/dynserv.redb` unless `DATABASE_URL` names
    /// another file or a PostgreSQL database.
    pub database: crate::store::Location,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub public_quic: String,
    pub public_url: String,
    pub trusted_proxies: Vec<IpNet>,
    pub session_secret: Option<String>,
    pub hetzner_api_token: Option<String>,
    pub hetzner_api_url: String,
    pub session_idle: chrono::Duration,
    pub session_absolute: chrono::Duration,
    /// The base interval of scheduled Hetzner syncs (at least 10 s); `None` when they
    /// are off.
    pub hetzner_sync_interval: Option<Duration>,
    /// How long provisioning waits for a new server to reach `running`.
    pub provision_boot_timeout: Duration,
    /// How long provisioning waits for a running server's agent to enroll.
    pub provision_enroll_timeout: Duration,
    /// Ended executions older than this are pruned with their logs; `None` keeps them.
    pub retention: Option<chrono::Duration>,
    /// Audit entries older than this are pruned; `None` keeps them.
    pub audit_retention: Option<chrono::Duration>,
    /// Bytes of output stored per execution.
    pub max_job_output: u64,
    /// Days an agent certificate is valid, 1 to `fleet::certs::MAX_CERT_DAYS`.
    pub agent_cert_days: u32,
    /// The store's page cache in bytes.
    pub store_cache_bytes: usize,
    /// Free bytes under the data directory below which new jobs are refused.
    pub min_free_disk_bytes: u64,
    /// Where alert e-mails go out (`DYNSERV_SMTP_URL`); `None` sends none. Holds a
    /// password: never logged.
    pub smtp_url: Option<String>,
    /// The sender of alert e-mails (`DYNSERV_MAIL_FROM`, default
    /// [`DEFAULT_MAIL_FROM`]).
    pub mail_from: String,
    /// What webhooks may reach besides public addresses (`DYNSERV_WEBHOOK_ALLOW`).
    pub webhook_allow: Vec<IpNet>,
    /// How long an agent stays disconnected before `agent.offline` is raised
    /// (`DYNSERV_AGENT_OFFLINE_ALERT`); `None` raises none.
    pub agent_offline_alert: Option<Duration>,
    /// How long a web terminal may go without input (keystrokes, resizes) before it
    /// is closed (`DYNSERV_TERMINAL_IDLE_SECS`, at least 10 s).
    pub terminal_idle: Duration,
}

/// The default sender of alert e-mails.
pub const DEFAULT_MAIL_FROM: &str = "dynserv <dynserv@localhost>";

/// `days` as a retention period; 0 means keep forever. Bounded so that no date
/// arithmetic can overflow.
fn retention(days: u64) -> Option<chrono::Duration> {
    (days > 0).then(|| chrono::Duration::days(days.min(100 * 365) as i64))
}

impl Config {
    /// Layers overrides over the file over the defaults.
    pub fn resolve(data_dir: &Path, over: &Overrides) -> Result<Config> {
        // Absolute from here on: the demo's local agent and the jobs it starts run in
        // other working directories, where `./data` would name another place.
        let data_dir = &std::path::absolute(data_dir)
            .with_context(|| format!("resolving the data directory {}", data_dir.display()))?;
        let file = load_file(data_dir, over.config_file.as_deref())?;
        let http_text = over
            .http
            .clone()
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.into());
        let quic_text = over
            .quic
            .clone()
            .or(file.quic)
            .unwrap_or_else(|| DEFAULT_QUIC.into());
        let http: SocketAddr = http_text
            .parse()
            .with_context(|| format!("--http {http_text:?} is not HOST:PORT"))?;
        let quic: SocketAddr = quic_text
            .parse()
            .with_context(|| format!("--quic {quic_text:?} is not HOST:PORT"))?;
        let database = match over.database_url.as_deref().filter(|s| !s.is_empty()) {
            None => crate::store::Location::File(data_dir.join("dynserv.redb")),
            Some(url) => crate::store::Location::parse(url),
        };
        if matches!(database, crate::store::Location::Postgres(_))
            && over.session_secret.as_deref().is_none_or(str::is_empty)
        {
            bail!("SESSION_SECRET must be set with a PostgreSQL DATABASE_URL, the same on every replica: it seals the secrets and signs the sessions they share");
        }
        let proxies_text: Vec<String> = match &over.trusted_proxies {
            Some(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => file.trusted_proxies.unwrap_or_default(),
        };
        let trusted_proxies = proxies_text
            .iter()
            .map(|p| IpNet::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let allow_text: Vec<String> = match &over.webhook_allow {
            Some(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => file.webhook_allow.clone().unwrap_or_default(),
        };
        let webhook_allow = allow_text
            .iter()
            .map(|p| IpNet::parse(p).with_context(|| format!("DYNSERV_WEBHOOK_ALLOW {p:?}")))
            .collect::<Result<Vec<_>>>()?;
        let smtp_url = over
            .smtp_url
            .clone()
            .or(file.smtp_url.clone())
            .filter(|s| !s.trim().is_empty());
        if let Some(url) = &smtp_url {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                bail!("DYNSERV_SMTP_URL must start with smtp:// or smtps://");
            }
        }
        let mail_from = over
            .mail_from
            .clone()
            .or(file.mail_from.clone())
            .unwrap_or_else(|| DEFAULT_MAIL_FROM.into());
        let public_quic = over
            .public_quic
            .clone()
            .or(file.public_quic)
            .unwrap_or_else(|| {
                if quic.ip().is_unspecified() {
                    format!("127.0.0.1:{}", quic.port())
                } else {
                    quic.to_string()
                }
            });
        let public_url = over
            .public_url
            .clone()
            .or(file.public_url)
            .unwrap_or_else(|| format!("http://{http}"));
        Ok(Config {
            data_dir: data_dir.to_path_buf(),
            database,
            http,
            quic,
            public_quic,
            public_url: public_url.trim_end_matches('/').to_string(),
            trusted_proxies,
            session_secret: over.session_secret.clone(),
            hetzner_api_token: over.hetzner_api_token.clone().filter(|s| !s.is_empty()),
            hetzner_api_url: over
                .hetzner_api_url
                .clone()
                .or(file.hetzner_api_url)
                .unwrap_or_else(|| DEFAULT_HETZNER_URL.into()),
            session_idle: lifetime(
                "session_idle_minutes",
                file.session_idle_minutes.unwrap_or(12 * 60),
                60,
            )?,
            session_absolute: lifetime(
                "session_absolute_hours",
                file.session_absolute_hours.unwrap_or(7 * 24),
                3600,
            )?,
            hetzner_sync_interval: match seconds(
                "DYNSERV_HETZNER_SYNC_SECS",
                over.hetzner_sync_secs.as_deref(),
                file.hetzner_sync_secs,
                DEFAULT_HETZNER_SYNC_SECS,
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs.max(MIN_HETZNER_SYNC_SECS))),
            },
            provision_boot_timeout: Duration::from_secs(seconds(
                "DYNSERV_PROVISION_BOOT_SECS",
                over.provision_boot_secs.as_deref(),
                file.provision_boot_secs,
                DEFAULT_PROVISION_BOOT_SECS,
            )?),
            provision_enroll_timeout: Duration::from_secs(seconds(
                "DYNSERV_PROVISION_ENROLL_SECS",
                over.provision_enroll_secs.as_deref(),
                file.provision_enroll_secs,
                DEFAULT_PROVISION_ENROLL_SECS,
            )?),
            retention: retention(number(
                "DYNSERV_RETENTION_DAYS",
                over.retention_days.as_deref(),
                file.retention_days,
                DEFAULT_RETENTION_DAYS,
            )?),
            audit_retention: retention(number(
                "DYNSERV_AUDIT_RETENTION_DAYS",
                over.audit_retention_days.as_deref(),
                file.audit_retention_days,
                DEFAULT_AUDIT_RETENTION_DAYS,
            )?),
            max_job_output: number(
                "DYNSERV_MAX_JOB_OUTPUT",
                over.max_job_output.as_deref(),
                file.max_job_output,
                DEFAULT_MAX_JOB_OUTPUT,
            )?
            .max(1024),
            agent_cert_days: u32::try_from(
                number(
                    "DYNSERV_AGENT_CERT_DAYS",
                    over.agent_cert_days.as_deref(),
                    file.agent_cert_days,
                    u64::from(crate::fleet::certs::DEFAULT_CERT_DAYS),
                )?
                .clamp(1, u64::from(crate::fleet::certs::MAX_CERT_DAYS)),
            )
            .unwrap_or(crate::fleet::certs::DEFAULT_CERT_DAYS),
            store_cache_bytes: usize::try_from(
                number(
                    "DYNSERV_STORE_CACHE_MB",
                    over.store_cache_mb.as_deref(),
                    file.store_cache_mb,
                    DEFAULT_STORE_CACHE_MB,
                )?
                .clamp(1, 64 * 1024)
                    * 1024
                    * 1024,
            )
            .unwrap_or(usize::MAX),
            min_free_disk_bytes: number(
                "DYNSERV_MIN_FREE_DISK_MB",
                over.min_free_disk_mb.as_deref(),
                file.min_free_disk_mb,
                DEFAULT_MIN_FREE_DISK_MB,
            )?
            .saturating_mul(1024 * 1024),
            smtp_url,
            mail_from,
            webhook_allow,
            agent_offline_alert: match seconds(
                "DYNSERV_AGENT_OFFLINE_ALERT",
                over.agent_offline_alert.as_deref(),
                file.agent_offline_alert_secs,
                DEFAULT_AGENT_OFFLINE_ALERT_SECS,
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            terminal_idle: Duration::from_secs(
                seconds(
                    "DYNSERV_TERMINAL_IDLE_SECS",
                    over.terminal_idle_secs.as_deref(),
                    file.terminal_idle_secs,
                    DEFAULT_TERMINAL_IDLE_SECS,
                )?
                .max(10),
            ),
        })
    }
}

/// A whole number from the environment (`name`, text), else the file, else
/// `default`; text that is not a whole number is an error naming the variable.
fn number(name: &str, env: Option<&str>, file: Option<u64>, default: u64) -> Result<u64> {
    match env.map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a whole number")),
        None => Ok(file.unwrap_or(default)),
    }
}

/// The longest duration a setting may name: ten years. Past it a setting is refused
/// instead of overflowing a clock when it is added to the time.
pub const MAX_SETTING_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// A session lifetime setting (`key`, a count of `unit_seconds`) as a duration, from
/// one unit up to [`MAX_SETTING_SECONDS`].
fn lifetime(key: &str, count: u64, unit_seconds: u64) -> Result<chrono::Duration> {
    count
        .checked_mul(unit_seconds)
        .filter(|s| (1..=MAX_SETTING_SECONDS).contains(s))
        .and_then(|s| i64::try_from(s).ok())
        .and_then(chrono::Duration::try_seconds)
        .with_context(|| format!("{key} = {count} is out of range (1 to ten years)"))
}

/// A number of seconds from the environment (`name`, text), else the file, else
/// `default`; text that is not a whole number, or more than [`MAX_SETTING_SECONDS`],
/// is an error naming the variable.
fn seconds(name: &str, env: Option<&str>, file: Option<u64>, default: u64) -> Result<u64> {
    let value = match env.map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a whole number of seconds"))?,
        None => file.unwrap_or(default),
    };
    if value > MAX_SETTING_SECONDS {
        anyhow::bail!("{name}={value} is more than ten years");
    }
    Ok(value)
}

fn load_file(data_dir: &Path, explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = data_dir.join("dynserv.toml");
            if !default.exists() {
                return Ok(FileConfig::default());
            }
            default
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// An address range (`10.0.0.0/8`, `::1/128`) or a single address.
#[derive(Debug, Clone, PartialEq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .with_context(|| format!("trusted proxy {text:?} is not an address or range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("trusted proxy {text:?} has an invalid prefix"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example config parses and equals the defaults.
    #[test]
    fn example_config_matches_defaults() {
        let text = include_str!("../../packaging/dynserv.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynserv.toml");
        std::fs::write(&path, text).unwrap();
        let from_file = Config::resolve(dir.path(), &Overrides::default()).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let defaults = Config::resolve(empty.path(), &Overrides::default()).unwrap();
        assert_eq!(from_file.http, defaults.http);
        assert_eq!(from_file.quic, defaults.quic);
        assert_eq!(from_file.hetzner_api_url, defaults.hetzner_api_url);
        assert_eq!(from_file.session_idle, defaults.session_idle);
        assert_eq!(from_file.session_absolute, defaults.session_absolute);
        assert_eq!(
            from_file.hetzner_sync_interval,
            defaults.hetzner_sync_interval
        );
        assert_eq!(
            from_file.provision_boot_timeout,
            defaults.provision_boot_timeout
        );
        assert_eq!(
            from_file.provision_enroll_timeout,
            defaults.provision_enroll_timeout
        );
        assert_eq!(from_file.retention, defaults.retention);
        assert_eq!(from_file.audit_retention, defaults.audit_retention);
        assert_eq!(from_file.max_job_output, defaults.max_job_output);
        assert_eq!(from_file.agent_cert_days, defaults.agent_cert_days);
        assert_eq!(from_file.store_cache_bytes, defaults.store_cache_bytes);
        assert_eq!(from_file.min_free_disk_bytes, defaults.min_free_disk_bytes);
        assert_eq!(from_file.mail_from, defaults.mail_from);
        assert_eq!(from_file.webhook_allow, defaults.webhook_allow);
        assert_eq!(from_file.smtp_url, defaults.smtp_url);
        assert_eq!(from_file.agent_offline_alert, defaults.agent_offline_alert);
        assert_eq!(from_file.terminal_idle, defaults.terminal_idle);
        assert_eq!(file.http.as_deref(), Some(DEFAULT_HTTP));
    }

    /// A relative data directory (the default `./data`) becomes absolute, so paths
    /// derived from it stay right in processes with another working directory.
    #[test]
    fn data_dir_is_made_absolute() {
        let config =
            Config::resolve(Path::new("./no-such-data-dir"), &Overrides::default()).unwrap();
        assert!(
            config.data_dir.is_absolute(),
            "{}",
            config.data_dir.display()
        );
        assert!(config.data_dir.ends_with("no-such-data-dir"));
        assert!(matches!(&config.database, crate::store::Location::File(p) if p.is_absolute()));
    }

    /// Lifetimes and timeouts too large for a clock are refused with the setting's
    /// name instead of panicking in a duration constructor.
    #[test]
    fn huge_durations_are_refused_not_a_panic() {
        for line in [
            "session_idle_minutes = 9223372036854775807",
            "session_absolute_hours = 18446744073709551615",
            "session_idle_minutes = 0",
            "provision_boot_secs = 18446744073709551615",
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("dynserv.toml"), format!("{line}\n")).unwrap();
            let err = Config::resolve(dir.path(), &Overrides::default()).unwrap_err();
            let key = line.split(' ').next().unwrap();
            assert!(format!("{err:#}").contains(key), "{line}: {err:#}");
        }
        let over = Overrides {
            hetzner_sync_secs: Some("99999999999999".into()),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = Config::resolve(dir.path(), &over).unwrap_err();
        assert!(
            format!("{err:#}").contains("DYNSERV_HETZNER_SYNC_SECS"),
            "{err:#}"
        );
    }

    /// Flags win over the file; unknown keys are refused.
    #[test]
    fn precedence_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dynserv.toml"),
            "http = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let over = Overrides {
            http: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(dir.path(), &over).unwrap().http.port(),
            9100
        );
        assert_eq!(
            Config::resolve(dir.path(), &Overrides::default())
                .unwrap()
                .http
                .port(),
            9000
        );
        std::fs::write(dir.path().join("dynserv.toml"), "htp = \"x\"\n").unwrap();
        assert!(Config::resolve(dir.path(), &Overrides::default()).is_err());
    }

    /// The Hetzner timings: defaults, the environment over the file, 0 turns scheduled
    /// syncs off, a too short interval is raised to 10 s, and text that is not a
    /// number is refused with the variable's name.
    #[test]
    fn hetzner_timings() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Config::resolve(dir.path(), &Overrides::default()).unwrap();
        assert_eq!(
            defaults.hetzner_sync_interval,
            Some(Duration::from_secs(900))
        );
        assert_eq!(defaults.provision_boot_timeout, Duration::from_secs(600));
        assert_eq!(defaults.provision_enroll_timeout, Duration::from_secs(900));
        std::fs::write(
            dir.path().join("dynserv.toml"),
            "hetzner_sync_secs = 120\nprovision_boot_secs = 30\n",
        )
        .unwrap();
        let from_file = Config::resolve(dir.path(), &Overrides::default()).unwrap();
        assert_eq!(
            from_file.hetzner_sync_interval,
            Some(Duration::from_secs(120))
        );
        assert_eq!(from_file.provision_boot_timeout, Duration::from_secs(30));
        let env = |sync: &str| Overrides {
            hetzner_sync_secs: Some(sync.into()),
            provision_enroll_secs: Some("45".into()),
            ..Default::default()
        };
        let off = Config::resolve(dir.path(), &env("0")).unwrap();
        assert_eq!(off.hetzner_sync_interval, None);
        assert_eq!(off.provision_enroll_timeout, Duration::from_secs(45));
        assert_eq!(off.provision_boot_timeout, Duration::from_secs(30));
        assert_eq!(
            Config::resolve(dir.path(), &env("3"))
                .unwrap()
                .hetzner_sync_interval,
            Some(Duration::from_secs(10))
        );
        let err = Config::resolve(dir.path(), &env("15m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DYNSERV_HETZNER_SYNC_SECS"), "{err}");
    }

    /// The offline alert delay: 300 s by default, the file's key, the environment over
    /// it, 0 for none, and text that is not a number refused with the variable's name.
    #[test]
    fn agent_offline_alert_delay() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Config::resolve(dir.path(), &Overrides::default()).unwrap();
        assert_eq!(defaults.agent_offline_alert, Some(Duration::from_secs(300)));
        std::fs::write(
            dir.path().join("dynserv.toml"),
            "agent_offline_alert_secs = 60\n",
        )
        .unwrap();
        let from_file = Config::resolve(dir.path(), &Overrides::default()).unwrap();
        assert_eq!(from_file.agent_offline_alert, Some(Duration::from_secs(60)));
        let env = |text: &str| Overrides {
            agent_offline_alert: Some(text.into()),
            ..Default::default()
        };
        let from_env = Config::resolve(dir.path(), &env("5")).unwrap();
        assert_eq!(from_env.agent_offline_alert, Some(Duration::from_secs(5)));
        assert_eq!(
            Config::resolve(dir.path(), &env("0"))
                .unwrap()
                .agent_offline_alert,
            None
        );
        let err = Config::resolve(dir.path(), &env("5m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DYNSERV_AGENT_OFFLINE_ALERT"), "{err}");
    }

    /// A PostgreSQL URL is taken with a SESSION_SECRET and refused without one, with
    /// a message that says why.
    #[test]
    fn postgres_needs_a_session_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut over = Overrides {
            database_url: Some("postgres://x/y".into()),
            ..Default::default()
        };
        let err = Config::resolve(dir.path(), &over).unwrap_err().to_string();
        assert!(err.contains("SESSION_SECRET"), "{err}");
        over.session_secret = Some("shared".into());
        let config = Config::resolve(dir.path(), &over).unwrap();
        assert_eq!(
            config.database,
            crate::store::Location::Postgres("postgres://x/y".into())
        );
    }

    /// Trusted proxy ranges match the addresses inside them only.
    #[test]
    fn ip_ranges() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
    }
}
