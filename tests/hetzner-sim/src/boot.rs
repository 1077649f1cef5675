//! "Booting" a created server: the simulator reads the cloud-init user data the way
//! the real machine would, downloads the agent from the control plane, enrolls it with
//! the one-time token and starts it, each server in its own state directory.
//!
//! The user data names what it needs as `KEY=VALUE` lines (in the agent's environment
//! file, see `packaging/cloud-init.yaml.hbs`): `DYNSERV_URL` (the control plane's web
//! address, for the download), `DYNSERV_FLEET` (`HOST:PORT` the agent dials),
//! `DYNSERV_ENROLL_TOKEN` and `DYNSERV_AGENT_NAME`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// How created servers boot.
#[derive(Debug, Clone, Default)]
pub struct BootConfig {
    /// Where each booted server gets its directory; servers do not boot when unset.
    pub work_dir: Option<PathBuf>,
    /// The agent to run when the user data names no control plane to download it from.
    pub agent_binary: Option<PathBuf>,
}

/// What the user data asks the machine to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Enrollment {
    pub control_url: Option<String>,
    pub fleet: Option<String>,
    pub token: Option<String>,
    pub name: Option<String>,
}

/// Reads the enrollment settings from cloud-init user data.
pub fn parse_user_data(user_data: &str) -> Enrollment {
    let mut e = Enrollment::default();
    for line in user_data.lines() {
        let line = line.trim().trim_start_matches("- ").trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches('"')
            .trim_matches('\'')
            .to_string();
        if value.is_empty() {
            continue;
        }
        match key.trim() {
            "DYNSERV_URL" => e.control_url = Some(value),
            "DYNSERV_FLEET" => e.fleet = Some(value),
            "DYNSERV_ENROLL_TOKEN" => e.token = Some(value),
            "DYNSERV_AGENT_NAME" => e.name = Some(value),
            _ => {}
        }
    }
    e
}

/// Boots servers and keeps their agent processes until dropped.
#[derive(Clone, Default)]
pub struct Booter {
    config: BootConfig,
    children: Arc<Mutex<Vec<tokio::process::Child>>>,
    logs: Arc<Mutex<HashMap<i64, Vec<String>>>>,
}

impl Booter {
    pub fn new(config: BootConfig) -> Booter {
        Booter {
            config,
            ..Default::default()
        }
    }

    /// The boot log of a server: one line per step.
    pub fn log(&self, server_id: i64) -> Vec<String> {
        self.logs
            .lock()
            .map(|l| l.get(&server_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn note(&self, server_id: i64, line: String) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.entry(server_id).or_default().push(line);
        }
    }

    /// Starts booting a server in the background, once its create action is done.
    pub fn boot(&self, server_id: i64, name: String, user_data: String, delay: chrono::Duration) {
        let Some(work_dir) = self.config.work_dir.clone() else {
            self.note(server_id, "boot disabled: no work dir".into());
            return;
        };
        let booter = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay.to_std().unwrap_or_default()).await;
            if let Err(e) = booter
                .run_boot(server_id, &name, &user_data, work_dir)
                .await
            {
                booter.note(server_id, format!("boot failed: {e:#}"));
            }
        });
    }

    async fn run_boot(
        &self,
        server_id: i64,
        name: &str,
        user_data: &str,
        work_dir: PathBuf,
    ) -> anyhow::Result<()> {
        let enrollment = parse_user_data(user_data);
        let dir = work_dir.join(format!("server-{server_id}"));
        std::fs::create_dir_all(&dir)?;
        let binary = match &enrollment.control_url {
            Some(url) => {
                let url = format!("{}/download/dynserv-agent", url.trim_end_matches('/'));
                self.note(server_id, format!("downloading {url}"));
                let bytes = reqwest::get(&url)
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                let path = dir.join("dynserv-agent");
                std::fs::write(&path, &bytes)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                path
            }
            None => self
                .config
                .agent_binary
                .clone()
                .ok_or_else(|| anyhow::anyhow!("the user data names no DYNSERV_URL"))?,
        };
        let fleet = enrollment
            .fleet
            .ok_or_else(|| anyhow::anyhow!("the user data names no DYNSERV_FLEET"))?;
        let token = enrollment
            .token
            .ok_or_else(|| anyhow::anyhow!("the user data has no DYNSERV_ENROLL_TOKEN"))?;
        let agent_name = enrollment.name.unwrap_or_else(|| name.to_string());
        let state_dir = dir.join("state");
        let mut output = None;
        // A binary written a moment ago can still be busy (ETXTBSY) when another
        // thread forked meanwhile; try again shortly.
        for _ in 0..20 {
            let result = tokio::process::Command::new(&binary)
                .arg("enroll")
                .arg("--server")
                .arg(&fleet)
                .arg("--token")
                .arg(&token)
                .arg("--state-dir")
                .arg(&state_dir)
                .arg("--name")
                .arg(&agent_name)
                .output()
                .await;
            match result {
                Err(e) if e.raw_os_error() == Some(26) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => {
                    output = Some(other?);
                    break;
                }
            }
        }
        let output = output.ok_or_else(|| anyhow::anyhow!("the agent binary stayed busy"))?;
        self.note(
            server_id,
            format!(
                "enroll exited {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        );
        if !output.status.success() {
            anyhow::bail!("enrollment failed");
        }
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let child = tokio::process::Command::new(&binary)
            .arg("run")
            .arg("--state-dir")
            .arg(&state_dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.note(server_id, "agent running".into());
        if let Ok(mut children) = self.children.lock() {
            children.push(child);
        }
        Ok(())
    }

    /// Stops every agent process this booter started.
    pub fn stop_all(&self) {
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                let _ = child.start_kill();
            }
            children.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings are found in an environment file written by cloud-init.
    #[test]
    fn reads_the_environment_file() {
        let text = "#cloud-config\nwrite_files:\n  - path: /etc/dynserv-agent.env\n    content: |\n      DYNSERV_URL=http://cp:8080\n      DYNSERV_FLEET=cp:4433\n      DYNSERV_ENROLL_TOKEN=dsv1.abc.def\n      DYNSERV_AGENT_NAME=web-1\n";
        let e = parse_user_data(text);
        assert_eq!(e.control_url.as_deref(), Some("http://cp:8080"));
        assert_eq!(e.fleet.as_deref(), Some("cp:4433"));
        assert_eq!(e.token.as_deref(), Some("dsv1.abc.def"));
        assert_eq!(e.name.as_deref(), Some("web-1"));
    }
}
