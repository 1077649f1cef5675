//! System updates: `dynserv-agent system-update [--check]` detects the package
//! manager (apt, dnf, apk), upgrades non-interactively and ends with the
//! `DYNSERV-RESULT` line ([`crate::compose::RESULT_PREFIX`]) naming the upgraded
//! packages and whether a reboot is required. Runs in a job's child process like the
//! compose subcommands, so its output streams through the job's spool.
//!
//! The parsers of the package managers' listings are plain functions, tested on
//! captured output.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::compose::print_result;

/// Arguments of `dynserv-agent system-update`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    /// Only list what would be upgraded; no package changes (the package lists are
    /// still refreshed, so the answer is current).
    #[arg(long)]
    pub check: bool,
}

/// A supported package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// Debian, Ubuntu.
    Apt,
    /// Fedora, RHEL, Rocky, Alma.
    Dnf,
    /// Alpine.
    Apk,
}

/// One package that is (or would be) upgraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    /// Package name.
    pub name: String,
    /// Installed version, when known.
    pub from: Option<String>,
    /// New version.
    pub to: String,
}

/// The package manager of the system under `root` (`/` on a real system).
pub fn detect(root: &Path) -> Option<Manager> {
    let has = |p: &str| root.join(p.trim_start_matches('/')).exists();
    if has("/usr/bin/apt-get") {
        Some(Manager::Apt)
    } else if has("/usr/bin/dnf") || has("/usr/bin/dnf5") {
        Some(Manager::Dnf)
    } else if has("/sbin/apk") || has("/usr/sbin/apk") {
        Some(Manager::Apk)
    } else {
        None
    }
}

/// Parses `apt-get -s upgrade`: `Inst NAME [OLD] (NEW REPO [ARCH])`.
pub fn parse_apt_simulation(text: &str) -> Vec<Upgrade> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let (from, rest) = match rest.strip_prefix('[') {
                Some(r) => {
                    let (old, r) = r.split_once(']')?;
                    (Some(old.to_string()), r.trim_start())
                }
                None => (None, rest),
            };
            let to = rest.strip_prefix('(')?.split_whitespace().next()?;
            Some(Upgrade {
                name: name.to_string(),
                from,
                to: to.to_string(),
            })
        })
        .collect()
}

/// Parses `dnf check-update`: `NAME.ARCH  VERSION  REPO` lines.
pub fn parse_dnf_check_update(text: &str) -> Vec<Upgrade> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != 3 || line.starts_with(' ') {
                return None;
            }
            let (name, _arch) = fields[0].rsplit_once('.')?;
            if !fields[1].chars().next()?.is_ascii_digit() {
                return None;
            }
            Some(Upgrade {
                name: name.to_string(),
                from: None,
                to: fields[1].to_string(),
            })
        })
        .collect()
}

/// Parses `apk upgrade -s`: `(1/3) Upgrading NAME (OLD -> NEW)`.
pub fn parse_apk_simulation(text: &str) -> Vec<Upgrade> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(") Upgrading ")?;
            let (name, versions) = rest.split_once(" (")?;
            let versions = versions.strip_suffix(')')?;
            let (from, to) = versions.split_once(" -> ")?;
            Some(Upgrade {
                name: name.to_string(),
                from: Some(from.to_string()),
                to: to.to_string(),
            })
        })
        .collect()
}

/// How long apt waits for another apt or dpkg run to release its lock.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";

/// Runs a command with its output streaming into the job's log.
fn run_streamed(argv: &[&str]) -> Result<()> {
    println!("$ {}", argv.join(" "));
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    if !status.success() {
        anyhow::bail!("{} failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// Runs a command and captures its stdout (echoed to the log too); answers its exit
/// code and text.
fn run_captured(argv: &[&str]) -> Result<(i32, String)> {
    println!("$ {}", argv.join(" "));
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Whether the system asks for a reboot.
fn reboot_required(manager: Manager, upgraded: &[Upgrade]) -> bool {
    match manager {
        Manager::Apt => Path::new("/var/run/reboot-required").exists(),
        Manager::Dnf => {
            for argv in [
                &["needs-restarting", "-r"][..],
                &["dnf", "needs-restarting", "-r"],
            ] {
                if let Ok(status) = Command::new(argv[0])
                    .args(&argv[1..])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                {
                    match status.code() {
                        Some(1) => return true,
                        Some(0) => return false,
                        _ => {}
                    }
                }
            }
            false
        }
        // Alpine has no marker; a new kernel is the reason to reboot.
        Manager::Apk => upgraded.iter().any(|u| u.name.starts_with("linux-")),
    }
}

fn update(args: &UpdateArgs) -> Result<serde_json::Value> {
    let manager = detect(Path::new("/"))
        .context("no supported package manager found (looked for apt-get, dnf and apk)")?;
    let name = serde_json::to_value(manager)?;
    println!(
        "[dynserv] package manager: {}",
        name.as_str().unwrap_or_default()
    );
    let upgraded = match manager {
        Manager::Apt => {
            // A fresh server's cloud-init or unattended-upgrades may hold the dpkg lock
            // for a while: wait for it instead of failing at once.
            run_streamed(&["apt-get", "-q", "-o", APT_LOCK_WAIT, "update"])?;
            let (code, text) = run_captured(&["apt-get", "-s", "-q", "upgrade"])?;
            if code != 0 {
                anyhow::bail!("apt-get -s upgrade failed (exit code {code})");
            }
            let list = parse_apt_simulation(&text);
            if !args.check {
                run_streamed(&[
                    "apt-get",
                    "-y",
                    "-q",
                    "-o",
                    APT_LOCK_WAIT,
                    "-o",
                    "Dpkg::Options::=--force-confdef",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    "upgrade",
                ])?;
            }
            list
        }
        Manager::Dnf => {
            let (code, text) = run_captured(&["dnf", "-q", "check-update"])?;
            if code != 0 && code != 100 {
                anyhow::bail!("dnf check-update failed (exit code {code})");
            }
            let list = parse_dnf_check_update(&text);
            if !args.check {
                run_streamed(&["dnf", "-y", "upgrade"])?;
            }
            list
        }
        Manager::Apk => {
            run_streamed(&["apk", "update"])?;
            let (code, text) = run_captured(&["apk", "upgrade", "-s"])?;
            if code != 0 {
                anyhow::bail!("apk upgrade -s failed (exit code {code})");
            }
            let list = parse_apk_simulation(&text);
            if !args.check {
                run_streamed(&["apk", "upgrade", "--no-progress"])?;
            }
            list
        }
    };
    let reboot = reboot_required(manager, &upgraded);
    let verb = if args.check {
        "would upgrade"
    } else {
        "upgraded"
    };
    println!("[dynserv] {verb} {} package(s)", upgraded.len());
    for u in &upgraded {
        println!(
            "[dynserv]   {} {} -> {}",
            u.name,
            u.from.as_deref().unwrap_or("?"),
            u.to
        );
    }
    println!(
        "[dynserv] reboot required: {}",
        if reboot { "yes" } else { "no" }
    );
    Ok(serde_json::json!({
        "ok": true,
        "manager": manager,
        "check": args.check,
        "upgraded": upgraded,
        "reboot_required": reboot,
    }))
}

/// `dynserv-agent system-update`: 0 done, 1 failed.
pub fn update_main(args: UpdateArgs) -> i32 {
    match update(&args) {
        Ok(value) => {
            print_result(&value);
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            print_result(&serde_json::json!({ "ok": false, "error": format!("{e:#}") }));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apt's simulation lines give name, old and new versions.
    #[test]
    fn apt_simulation() {
        let text = "Reading package lists...\n\
Inst libssl3 [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n\
Inst newpkg (1.0 Debian:12 [all])\n\
Conf libssl3 (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n";
        assert_eq!(
            parse_apt_simulation(text),
            vec![
                Upgrade {
                    name: "libssl3".into(),
                    from: Some("3.0.11-1~deb12u1".into()),
                    to: "3.0.13-1~deb12u1".into()
                },
                Upgrade {
                    name: "newpkg".into(),
                    from: None,
                    to: "1.0".into()
                },
            ]
        );
    }

    /// dnf's check-update table, without its headers and obsoletes section noise.
    #[test]
    fn dnf_check_update() {
        let text = "\nkernel.x86_64   6.5.6-300.fc39   updates\nopenssl-libs.x86_64  1:3.1.1-4.fc39  updates\nObsoleting Packages\n";
        let names: Vec<_> = parse_dnf_check_update(text)
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, vec!["kernel", "openssl-libs"]);
    }

    /// apk's simulation lines, and a kernel upgrade asks for a reboot.
    #[test]
    fn apk_simulation() {
        let text = "(1/2) Upgrading musl (1.2.4-r1 -> 1.2.4-r2)\n(2/2) Upgrading linux-lts (6.1.1-r0 -> 6.1.2-r0)\nOK: 10 MiB in 20 packages\n";
        let list = parse_apk_simulation(text);
        assert_eq!(
            list[0],
            Upgrade {
                name: "musl".into(),
                from: Some("1.2.4-r1".into()),
                to: "1.2.4-r2".into()
            }
        );
        assert!(reboot_required(Manager::Apk, &list));
    }

    /// The package manager is found by its binary.
    #[test]
    fn detects_by_binary() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect(root.path()), None);
        std::fs::create_dir_all(root.path().join("sbin")).unwrap();
        std::fs::write(root.path().join("sbin/apk"), "").unwrap();
        assert_eq!(detect(root.path()), Some(Manager::Apk));
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::write(root.path().join("usr/bin/apt-get"), "").unwrap();
        assert_eq!(detect(root.path()), Some(Manager::Apt));
    }
}
