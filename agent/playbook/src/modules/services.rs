//! `service` and `systemd`: units through systemctl, SysV scripts through service(8).

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;
use std::collections::BTreeMap;

fn systemctl(args: &[&str], ctx: &ModuleContext, scope: &[&str]) -> super::exec::Run {
    let mut argv: Vec<&str> = scope.to_vec();
    argv.extend_from_slice(args);
    run("systemctl", &argv, &ctx.environment, None)
}

fn unit_properties(name: &str, ctx: &ModuleContext, scope: &[&str]) -> BTreeMap<String, String> {
    let r = systemctl(&["show", name, "--no-page"], ctx, scope);
    r.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `service` / `systemd`.
pub fn service(module: &str, args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "unit",
        "state",
        "enabled",
        "masked",
        "daemon_reload",
        "daemon-reload",
        "daemon_reexec",
        "daemon-reexec",
        "scope",
        "no_block",
        "force",
        "sleep",
        "pattern",
        "arguments",
        "args",
        "runlevel",
        "use",
    ])?;
    let name = args.str_any(&["name", "unit"]);
    let state = args.choice(
        "state",
        &["started", "stopped", "restarted", "reloaded"],
        None,
    )?;
    let enabled = match args.get("enabled") {
        Some(_) => Some(args.bool("enabled", false)?),
        None => None,
    };
    let masked = match args.get("masked") {
        Some(_) => Some(args.bool("masked", false)?),
        None => None,
    };
    let daemon_reload = args.bool("daemon_reload", false)? || args.bool("daemon-reload", false)?;
    let use_systemd = match args.str("use").as_deref() {
        Some("systemd") => true,
        Some("auto") | None => {
            module == "systemd"
                || ctx
                    .facts
                    .get_attr("service_mgr")
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .as_deref()
                    == Some("systemd")
                || std::path::Path::new("/run/systemd/system").exists()
        }
        Some(_) => false,
    };
    if !use_systemd {
        return sysv(args, ctx, name, state, enabled);
    }
    let scope: Vec<&str> = match args.str("scope").as_deref() {
        Some("user") => vec!["--user"],
        Some("global") => vec!["--global"],
        _ => vec![],
    };
    let mut result = Outcome::new();
    if daemon_reload && !ctx.check {
        let r = systemctl(&["daemon-reload"], ctx, &scope);
        if !r.ok() {
            return Ok(Outcome::failed(format!(
                "failure {} during daemon-reload: {}",
                r.rc,
                r.stderr.trim()
            )));
        }
    }
    if args.bool("daemon_reexec", false)? && !ctx.check {
        systemctl(&["daemon-reexec"], ctx, &scope);
    }
    let Some(name) = name else {
        if state.is_some() || enabled.is_some() || masked.is_some() {
            return Err(ArgError::Missing("name".into()));
        }
        return Ok(result);
    };
    result.set("name", name.clone());
    let props = unit_properties(&name, ctx, &scope);
    let found =
        props.get("LoadState").map(String::as_str) != Some("not-found") && !props.is_empty();
    let mut changed = false;
    if let Some(want_masked) = masked {
        let is_masked = props.get("UnitFileState").map(String::as_str) == Some("masked");
        if want_masked != is_masked {
            changed = true;
            if !ctx.check {
                let r = systemctl(
                    &[if want_masked { "mask" } else { "unmask" }, &name],
                    ctx,
                    &scope,
                );
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Unable to {} service {name}: {}",
                        if want_masked { "mask" } else { "unmask" },
                        r.stderr.trim()
                    )));
                }
            }
        }
    }
    if !found && (state.is_some() || enabled.is_some()) && masked != Some(true) {
        return Ok(Outcome::failed(format!(
            "Could not find the requested service {name}: host"
        )));
    }
    if let Some(want_enabled) = enabled {
        let is_enabled = systemctl(&["is-enabled", &name], ctx, &scope).ok();
        if want_enabled != is_enabled {
            changed = true;
            if !ctx.check {
                let r = systemctl(
                    &[if want_enabled { "enable" } else { "disable" }, &name],
                    ctx,
                    &scope,
                );
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Unable to {} service {name}: {}",
                        if want_enabled { "enable" } else { "disable" },
                        r.stderr.trim()
                    )));
                }
            }
        }
        result.set("enabled", want_enabled);
    }
    if let Some(state) = &state {
        let active = props
            .get("ActiveState")
            .map(String::as_str)
            .unwrap_or("inactive");
        let running = matches!(active, "active" | "activating" | "reloading");
        let action = match state.as_str() {
            "started" if !running => Some("start"),
            "stopped" if running => Some("stop"),
            "restarted" => Some(if running { "restart" } else { "start" }),
            "reloaded" => Some(if running { "reload" } else { "start" }),
            _ => None,
        };
        if let Some(action) = action {
            changed = true;
            if !ctx.check {
                let mut argv = vec![action, name.as_str()];
                if args.bool("no_block", false)? {
                    argv.insert(0, "--no-block");
                }
                let r = systemctl(&argv, ctx, &scope);
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Unable to {action} service {name}: {}",
                        r.stderr.trim()
                    )));
                }
            }
        }
        result.set("state", state.clone());
    }
    result.set(
        "status",
        Value::from_pairs(props.into_iter().filter(|(k, _)| {
            matches!(
                k.as_str(),
                "ActiveState" | "SubState" | "LoadState" | "UnitFileState" | "MainPID" | "Id"
            )
        })),
    );
    result.set("changed", changed);
    Ok(result)
}

/// Whether a SysV init script (or an upstart job) manages the service `name`.
fn has_init_script(name: &str) -> bool {
    std::path::Path::new("/etc/init.d").join(name).is_file()
        || std::path::Path::new("/etc/init")
            .join(format!("{name}.conf"))
            .exists()
}

fn sysv(
    args: &Args,
    ctx: &ModuleContext,
    name: Option<String>,
    state: Option<String>,
    enabled: Option<bool>,
) -> Result<Outcome, ArgError> {
    let name = name.ok_or_else(|| ArgError::Missing("name".into()))?;
    if !has_init_script(&name) {
        // Ansible finds no tool for a service without an init script, in check mode too.
        return Ok(Outcome::failed(format!(
            "Could not find the requested service {name}: host"
        )));
    }
    let service = which("service")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "service".into());
    let mut result = Outcome::new().with("name", name.clone());
    let mut changed = false;
    if let Some(state) = &state {
        let running = match args.str("pattern") {
            Some(pattern) => run("pgrep", &["-f", &pattern], &[], None).ok(),
            None => run(&service, &[&name, "status"], &ctx.environment, None).ok(),
        };
        let action = match state.as_str() {
            "started" if !running => Some("start"),
            "stopped" if running => Some("stop"),
            "restarted" => Some("restart"),
            "reloaded" => Some(if running { "reload" } else { "start" }),
            _ => None,
        };
        if let Some(action) = action {
            changed = true;
            if !ctx.check {
                let r = run(&service, &[&name, action], &ctx.environment, None);
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Unable to {action} service {name}: {}{}",
                        r.stdout.trim(),
                        r.stderr.trim()
                    )));
                }
            }
        }
        result.set("state", state.clone());
    }
    if let Some(want) = enabled {
        let Some(update_rc) = which("update-rc.d") else {
            return Ok(Outcome::failed(
                "service: enabled= needs systemd or update-rc.d",
            ));
        };
        let links = std::fs::read_dir("/etc/rc2.d")
            .map(|d| {
                d.flatten().any(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    f.starts_with('S') && f.ends_with(&name)
                })
            })
            .unwrap_or(false);
        if links != want {
            changed = true;
            if !ctx.check {
                let r = run(
                    &update_rc.display().to_string(),
                    &[&name, if want { "defaults" } else { "disable" }],
                    &ctx.environment,
                    None,
                );
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Unable to change the boot state of {name}: {}",
                        r.stderr.trim()
                    )));
                }
            }
        }
        result.set("enabled", want);
    }
    result.set("changed", changed);
    Ok(result)
}
