//! `ansible.posix.selinux`: the SELinux mode and policy, at run time (selinuxfs) and in
//! the configuration file.
//!
//! Ansible's module needs libselinux's Python binding and fails without it before
//! anything else; hosts whose system Python lacks it (no SELinux userland) get that
//! same failure here. Otherwise the run-time state comes from
//! `/sys/fs/selinux/enforce`, the policy from the configuration file (as libselinux's
//! `selinux_getpolicytype` reads it), and the configuration is edited with
//! [`set_config_line`] like Ansible's `set_config_state`/`set_config_policy`.

use std::path::Path;

use minijinja::Value;

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

const ENFORCE: &str = "/sys/fs/selinux/enforce";

/// The value of the first `KEY=` line.
pub fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .map(|l| l.split('=').nth(1).unwrap_or_default().trim().to_string())
}

/// Rewrites every `KEY=...` line to `KEY=value`, appending one when none exists.
pub fn set_config_line(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key}=");
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(&prefix) {
            found = true;
            out.push_str(&format!("{key}={value}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&format!("{key}={value}\n"));
    }
    out
}

/// Whether each kernel's arguments enable SELinux: `Some(true)`/`Some(false)` when all
/// agree, `None` when they differ (grubby `--info=ALL` output).
pub fn kernels_enabled(grubby_info: &str) -> Option<bool> {
    let mut all_enabled = true;
    let mut all_disabled = true;
    for line in grubby_info.lines() {
        if let Some(args) = line
            .strip_prefix("args=\"")
            .and_then(|rest| rest.strip_suffix('"'))
        {
            if args.split(' ').any(|a| a == "selinux=0") {
                all_enabled = false;
            } else {
                all_disabled = false;
            }
        }
    }
    match (all_enabled, all_disabled) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Whether the system Python has a package (where Ansible's respawn looks for it):
/// libselinux's binding comes with the SELinux userland (python3-selinux on Debian,
/// python3-libselinux on Red Hat).
fn system_python_has(package: &str) -> bool {
    [
        "/usr/lib/python3/dist-packages",
        "/usr/lib/python3*/site-packages",
        "/usr/lib64/python3*/site-packages",
        "/usr/local/lib/python3*/dist-packages",
    ]
    .iter()
    .filter_map(|dir| glob::glob(&format!("{dir}/{package}")).ok())
    .flatten()
    .flatten()
    .any(|p| p.exists())
}

fn write_config(path: &str, text: &str) -> Result<(), Outcome> {
    super::files::atomic_write(Path::new(path), text.as_bytes())
        .map_err(|e| Outcome::failed(format!("Could not write {path}: {e}")))
}

/// `selinux`: sets the SELinux state and policy.
pub fn selinux(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "policy",
        "state",
        "configfile",
        "conf",
        "file",
        "update_kernel_param",
    ])?;
    let state = args
        .choice("state", &["enforcing", "permissive", "disabled"], None)?
        .ok_or_else(|| ArgError::Missing("state".into()))?;
    let configfile = args
        .str_any(&["configfile", "conf", "file"])
        .unwrap_or_else(|| "/etc/selinux/config".into());
    let update_kernel_param = args.bool("update_kernel_param", false)?;
    let mut policy = args.str("policy").filter(|p| !p.is_empty());

    if !system_python_has("selinux") {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "libselinux-python",
        )));
    }
    let runtime_enabled = Path::new(ENFORCE).exists();
    let runtime_state = if !runtime_enabled {
        "disabled"
    } else if std::fs::read_to_string(ENFORCE).is_ok_and(|t| t.trim() == "1") {
        "enforcing"
    } else {
        "permissive"
    };
    if !Path::new(&configfile).is_file() {
        return Ok(Outcome::failed(format!("Unable to find file {configfile}")).with(
            "details",
            "Please install SELinux-policy package, if this package is not installed previously.",
        ));
    }
    let text = std::fs::read_to_string(&configfile).unwrap_or_default();
    let config_policy = config_value(&text, "SELINUXTYPE");
    let config_state = config_value(&text, "SELINUX");
    let runtime_policy = std::fs::read_to_string("/etc/selinux/config")
        .ok()
        .and_then(|t| config_value(&t, "SELINUXTYPE"));
    let mut kernel_enabled = None;
    if update_kernel_param {
        if which("grubby").is_none() {
            return Ok(Outcome::failed("'grubby' command not found on host").with(
                "details",
                "In order to update the kernel command lineenabled/disabled setting, the grubby packageneeds to be present on the system.",
            ));
        }
        let r = run("grubby", &["--info=ALL"], &ctx.environment, None);
        if !r.ok() {
            return Ok(Outcome::failed("unable to run grubby"));
        }
        kernel_enabled = kernels_enabled(&r.stdout);
    }
    if state != "disabled" {
        if policy.is_none() {
            return Ok(Outcome::failed(
                "Policy is required if state is not 'disabled'",
            ));
        }
    } else if policy.is_none() {
        policy = config_policy.clone();
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "None".into());
    let mut changed = false;
    let mut msgs: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut reboot_required = false;
    if policy != runtime_policy {
        if ctx.check {
            return Ok(Outcome::new().with("changed", true));
        }
        msgs.push(format!(
            "Running SELinux policy changed from '{}' to '{}'",
            show(&runtime_policy),
            show(&policy)
        ));
        changed = true;
    }
    let mut text = text;
    if policy != config_policy {
        if ctx.check {
            return Ok(Outcome::new().with("changed", true));
        }
        let name = show(&policy);
        if !Path::new(&format!("/etc/selinux/{name}/policy")).exists() {
            return Ok(Outcome::failed(format!(
                "Policy {name} does not exist in /etc/selinux/"
            )));
        }
        text = set_config_line(&text, "SELINUXTYPE", &name);
        if let Err(failure) = write_config(&configfile, &text) {
            return Ok(failure);
        }
        msgs.push(format!(
            "SELinux policy configuration in '{configfile}' changed from '{}' to '{name}'",
            show(&config_policy)
        ));
        changed = true;
    }
    if state != runtime_state {
        if runtime_enabled {
            if state == "disabled" {
                if runtime_state != "permissive" {
                    if !ctx.check {
                        let _ = std::fs::write(ENFORCE, "0");
                    }
                    warnings.push(format!("SELinux state temporarily changed from '{runtime_state}' to 'permissive'. State change will take effect next reboot."));
                    changed = true;
                } else {
                    warnings.push("SELinux state change will take effect next reboot".into());
                }
                reboot_required = true;
            } else {
                if !ctx.check {
                    let _ = std::fs::write(ENFORCE, if state == "enforcing" { "1" } else { "0" });
                }
                msgs.push(format!(
                    "SELinux state changed from '{runtime_state}' to '{state}'"
                ));
                changed = true;
            }
        } else {
            warnings.push(format!(
                "Reboot is required to set SELinux state to '{state}'"
            ));
            reboot_required = true;
        }
    }
    if Some(&state) != config_state.as_ref() {
        if !ctx.check {
            text = set_config_line(&text, "SELINUX", &state);
            if let Err(failure) = write_config(&configfile, &text) {
                return Ok(failure);
            }
        }
        msgs.push(format!(
            "Config SELinux state changed from '{}' to '{state}'",
            show(&config_state)
        ));
        changed = true;
    }
    let requested = state == "enforcing" || state == "permissive";
    if update_kernel_param && kernel_enabled != Some(requested) {
        if !ctx.check {
            let flag = if requested { "--remove-args" } else { "--args" };
            let r = run(
                "grubby",
                &["--update-kernel=ALL", flag, "selinux=0"],
                &ctx.environment,
                None,
            );
            if !r.ok() {
                return Ok(Outcome::failed(if requested {
                    "unable to remove selinux=0 from kernel config"
                } else {
                    "unable to add selinux=0 to kernel config"
                }));
            }
        }
        let (from, to) = if requested {
            ("disabled", "enabled")
        } else {
            ("enabled", "disabled")
        };
        let from = if kernel_enabled.is_none() {
            "<inconsistent>"
        } else {
            from
        };
        msgs.push(format!(
            "Kernel SELinux state changed from '{from}' to '{to}'"
        ));
        changed = true;
    }
    let mut out = Outcome::new()
        .with("changed", changed)
        .with("msg", msgs.join(", "))
        .with("configfile", configfile)
        .with("policy", Value::from(policy))
        .with("state", state)
        .with("reboot_required", reboot_required);
    if !warnings.is_empty() {
        out.set("warnings", Value::from(warnings));
    }
    Ok(out)
}

/// `community.general.seport`: SELinux port type definitions. Ansible's module needs
/// libselinux's and policycoreutils' Python bindings (`selinux`, `seobject`) and a
/// host with SELinux enabled; without them it fails, and so does this one, with the
/// same words. Changing the policy itself (through `semanage port`) is not
/// implemented natively.
pub fn seport(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "ignore_selinux_state",
        "ports",
        "proto",
        "setype",
        "state",
        "reload",
        "local",
    ])?;
    args.require_all(&["ports", "proto", "setype"])?;
    let ignore_selinux_state = args.bool("ignore_selinux_state", false)?;
    args.bool("reload", true)?;
    args.bool("local", false)?;
    args.choice("proto", &["tcp", "udp"], None)?;
    args.choice("state", &["absent", "present"], Some("present"))?;
    if !system_python_has("selinux") {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "libselinux-python",
        )));
    }
    if !system_python_has("seobject.py") {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "policycoreutils-python",
        )));
    }
    if !ignore_selinux_state && !Path::new(ENFORCE).exists() {
        return Ok(Outcome::failed("SELinux is disabled on this host."));
    }
    Ok(Outcome::failed(
        "seport: changing SELinux port types (semanage port) is not implemented by the native runtime",
    ))
}

/// `ansible.posix.seboolean`: SELinux booleans. Like [`seport`], Ansible's module
/// needs the SELinux Python bindings (`selinux`, `semanage`) and fails without them
/// in the same words; setting booleans (`setsebool`) is not implemented natively.
pub fn seboolean(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["ignore_selinux_state", "name", "persistent", "state"])?;
    args.require_all(&["name", "state"])?;
    let ignore_selinux_state = args.bool("ignore_selinux_state", false)?;
    args.bool("persistent", false)?;
    args.bool("state", false)?;
    if !system_python_has("selinux") {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "libselinux-python",
        )));
    }
    if !system_python_has("semanage.py") {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "libsemanage-python or python3-libsemanage",
        )));
    }
    if !ignore_selinux_state && !Path::new(ENFORCE).exists() {
        return Ok(Outcome::failed("SELinux is disabled on this host."));
    }
    Ok(Outcome::failed(
        "seboolean: setting SELinux booleans is not implemented by the native runtime",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration is read and rewritten line by line like Ansible's module.
    #[test]
    fn config_editing() {
        let text = "# SELinux\nSELINUX=enforcing\nSELINUXTYPE=targeted\n";
        assert_eq!(config_value(text, "SELINUX").as_deref(), Some("enforcing"));
        assert_eq!(
            config_value(text, "SELINUXTYPE").as_deref(),
            Some("targeted")
        );
        assert_eq!(
            set_config_line(text, "SELINUX", "permissive"),
            "# SELinux\nSELINUX=permissive\nSELINUXTYPE=targeted\n"
        );
        assert_eq!(
            set_config_line("# none", "SELINUX", "disabled"),
            "# none\nSELINUX=disabled\n"
        );
    }

    /// grubby's kernels agree or are inconsistent.
    #[test]
    fn kernel_arguments() {
        assert_eq!(
            kernels_enabled("args=\"ro quiet\"\nargs=\"ro\"\n"),
            Some(true)
        );
        assert_eq!(kernels_enabled("args=\"ro selinux=0\"\n"), Some(false));
        assert_eq!(
            kernels_enabled("args=\"ro selinux=0\"\nargs=\"ro\"\n"),
            None
        );
    }
}
