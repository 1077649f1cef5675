//! `apt` (and `package` through it): Debian/Ubuntu packages via apt-get.
//!
//! What is installed and what apt would install is read natively (`apt_state`: the dpkg
//! status file and apt's lists, parsed once per process, the lists' parse kept on disk
//! between processes); `dpkg-query` and `apt-cache` run only for what that reading leaves
//! undecided (patterns, pins, ...). apt-get runs only when something is to be installed,
//! upgraded or removed: at most once per task for the packages, in check mode with
//! `--simulate`. Every apt-get and apt-cache call here gets a binary cache file of the
//! runtime's own where the host's apt keeps none ([`apt_options`]).

use super::apt_state::{own_binary_cache_options, AptPaths, Snapshot};
use super::exec::{run, Run};
use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;
use std::path::Path;

fn apt_env(ctx: &ModuleContext) -> Vec<(String, String)> {
    let mut env = ctx.environment.clone();
    env.push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
    env.push(("DEBCONF_NONINTERACTIVE_SEEN".into(), "true".into()));
    env.push(("LANG".into(), "C".into()));
    env
}

/// `dpkg-query -W`'s `${Status}` lines for `name`, with `${Version}` after a tab.
fn dpkg_query_status(name: &str) -> Run {
    run(
        "dpkg-query",
        &["-W", "-f=${Status}\t${Version}\n", name],
        &[],
        None,
    )
}

/// `apt-cache COMMAND NAME` in the C locale (its output is parsed).
fn apt_cache(command: &str, name: &str) -> Run {
    let mut argv = apt_options();
    argv.extend([command, name]);
    run("apt-cache", &argv, &[("LANG".into(), "C".into())], None)
}

/// `apt-get ARGS`.
fn apt_get(args: &[&str], env: &[(String, String)]) -> Run {
    let mut argv = apt_options();
    argv.extend_from_slice(args);
    run("apt-get", &argv, env, None)
}

/// The options every apt-get and apt-cache call starts with: a binary cache of our own
/// where the host's apt keeps none (see `apt_state::own_binary_cache_options`).
fn apt_options() -> Vec<&'static str> {
    own_binary_cache_options()
        .iter()
        .map(String::as_str)
        .collect()
}

/// Installed version of a package, if installed.
fn installed_version(state: &Snapshot, name: &str) -> Option<String> {
    state.installed_version(name).unwrap_or_else(|_| {
        let r = dpkg_query_status(name);
        if !r.ok() {
            return None;
        }
        r.stdout.lines().find_map(|line| {
            let (status, version) = line.split_once('\t')?;
            status.ends_with(" installed").then(|| version.to_string())
        })
    })
}

/// Whether a package was removed with its configuration files left (what `purge` removes).
fn has_config_files(state: &Snapshot, name: &str) -> bool {
    state
        .has_config_files(name)
        .unwrap_or_else(|_| dpkg_query_status(name).stdout.contains("config-files"))
}

fn candidate_version(state: &Snapshot, name: &str) -> Option<String> {
    state.candidate_version(name).unwrap_or_else(|_| {
        apt_cache("policy", name)
            .stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .map(|v| v.trim().to_string())
            })
            .filter(|v| v != "(none)")
    })
}

/// Whether apt can install a package of this name: it has a candidate version, or
/// another package provides it (python-apt's cache lookup, which ansible-core's apt
/// module uses, refuses a name that is only mentioned by other packages).
fn known_to_apt(state: &Snapshot, name: &str) -> bool {
    if candidate_version(state, name).is_some() {
        return true;
    }
    state.is_provided(name).unwrap_or_else(|_| {
        apt_cache("showpkg", name)
            .stdout
            .split("Reverse Provides:")
            .nth(1)
            .is_some_and(|providers| !providers.trim().is_empty())
    })
}

/// The first package to install that is neither installed nor known to apt; names with
/// wildcards are left to apt, as Ansible expands them first.
fn first_unknown_package<'a>(state: &Snapshot, specs: &'a [String]) -> Option<&'a str> {
    specs
        .iter()
        .map(|spec| split_spec(spec).0)
        .filter(|name| !name.contains(['*', '?', '[']) && !name.ends_with(".deb"))
        .find(|name| installed_version(state, name).is_none() && !known_to_apt(state, name))
}

/// Ansible's failure for a package apt does not know, in check mode as in a real run.
fn no_package_matching(name: &str) -> Outcome {
    Outcome::failed(format!("No package matching '{name}' is available"))
}

fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('=') {
        Some((name, version)) => (name, Some(version)),
        None => (spec, None),
    }
}

fn is_satisfied(state: &Snapshot, spec: &str) -> bool {
    let (name, version) = split_spec(spec);
    match (installed_version(state, name), version) {
        // ansible-core counts a virtual package whose one provider is installed as
        // installed, without asking apt-get; undecided here, apt-get decides as before.
        (None, None) => state
            .sole_provider(name)
            .ok()
            .flatten()
            .is_some_and(|provider| installed_version(state, &provider).is_some()),
        (None, _) => false,
        (Some(_), None) => true,
        (Some(installed), Some(wanted)) => {
            let pattern = wanted.trim_end_matches('*');
            installed == wanted || (wanted.ends_with('*') && installed.starts_with(pattern))
        }
    }
}

/// What `apt-get install --simulate` would install for the packages `missing`, from
/// the native plan, as apt's `Inst NAME (VERSION)` lines; `None` when the plan cannot
/// tell (a version asked for, a choice only apt makes: see `apt_state::plan`).
fn planned_install(state: &Snapshot, missing: &[&String]) -> Option<String> {
    if missing.is_empty() || missing.iter().any(|spec| split_spec(spec).1.is_some()) {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|name| name.as_str()).collect();
    let plan = state.install_plan(&names).ok()?;
    Some(
        plan.iter()
            .map(|(name, version)| format!("Inst {name} ({version})\n"))
            .collect(),
    )
}

fn cache_mtime() -> Option<std::time::SystemTime> {
    for path in [
        "/var/lib/apt/periodic/update-success-stamp",
        "/var/lib/apt/lists",
    ] {
        if let Ok(meta) = std::fs::metadata(path) {
            if let Ok(m) = meta.modified() {
                return Some(m);
            }
        }
    }
    None
}

fn failure(what: &str, r: &Run) -> Outcome {
    Outcome::failed(format!("'{what}' failed: {}", r.stderr.trim()))
        .with("rc", r.rc)
        .with("stdout", r.stdout.clone())
        .with("stderr", r.stderr.clone())
}

/// `apt`.
pub fn apt(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "pkg",
        "package",
        "state",
        "update_cache",
        "update_cache_retries",
        "update_cache_retry_max_delay",
        "cache_valid_time",
        "upgrade",
        "autoremove",
        "autoclean",
        "clean",
        "purge",
        "install_recommends",
        "force",
        "default_release",
        "dpkg_options",
        "allow_unauthenticated",
        "allow_downgrade",
        "allow_change_held_packages",
        "lock_timeout",
        "only_upgrade",
        "force_apt_get",
        "policy_rc_d",
        "fail_on_autoremove",
        "deb",
    ])?;
    if args.has("deb") {
        return Ok(Outcome::failed(
            "apt: the 'deb' option is not supported by the native runtime",
        ));
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        return Ok(Outcome::failed(
            "apt: apt-get was not found; this host does not use apt",
        ));
    }
    let mut names = args.list("name");
    names.extend(args.list("pkg"));
    names.extend(args.list("package"));
    let state = args
        .choice(
            "state",
            &[
                "present",
                "installed",
                "absent",
                "removed",
                "latest",
                "fixed",
                "build-dep",
            ],
            Some("present"),
        )?
        .unwrap_or_default();
    let env = apt_env(ctx);
    let mut result = Outcome::new();
    if args.bool("update_cache", false)? {
        let valid = args.int("cache_valid_time")?.unwrap_or(0);
        let fresh = valid > 0
            && cache_mtime()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age.as_secs() < valid as u64);
        // In check mode Ansible reports a stale cache as updated without updating it.
        if !fresh && !ctx.check {
            let r = apt_get(&["update", "-q"], &env);
            if !r.ok() {
                return Ok(failure("apt-get update", &r).with(
                    "msg",
                    format!("Failed to update apt cache: {}", r.stderr.trim()),
                ));
            }
        }
        let cache_updated = !fresh;
        result.set("cache_updated", cache_updated);
        if names.is_empty() && !args.has("upgrade") {
            result.set("changed", cache_updated);
            return Ok(result);
        }
    }
    let mut common: Vec<String> = vec![
        "-y".into(),
        "-q".into(),
        "-o".into(),
        "Dpkg::Options::=--force-confdef".into(),
        "-o".into(),
        "Dpkg::Options::=--force-confold".into(),
    ];
    // An empty release is none, as ansible-core's module reads it (roles default it to "").
    let default_release = args.str("default_release").filter(|r| !r.is_empty());
    if let Some(release) = &default_release {
        common.push("-t".into());
        common.push(release.clone());
    }
    if args.has("install_recommends") && !args.bool("install_recommends", true)? {
        common.push("--no-install-recommends".into());
    }
    if args.bool("allow_unauthenticated", false)? {
        common.push("--allow-unauthenticated".into());
    }
    if args.bool("allow_downgrade", false)? {
        common.push("--allow-downgrades".into());
    }
    if args.bool("allow_change_held_packages", false)? {
        common.push("--allow-change-held-packages".into());
    }
    if ctx.check {
        common.push("--simulate".into());
    }
    // Options that change what apt-get would choose leave a simulated install to it.
    let plannable = ctx.check
        && default_release.is_none()
        && !args.bool("allow_unauthenticated", false)?
        && !args.bool("allow_downgrade", false)?
        && !args.bool("allow_change_held_packages", false)?;
    let mut changed = false;
    let mut stdout = String::new();
    if let Some(upgrade) = args.choice(
        "upgrade",
        &[
            "no", "yes", "safe", "full", "dist", "True", "False", "true", "false",
        ],
        None,
    )? {
        let mode = match upgrade.as_str() {
            "no" | "False" | "false" => None,
            "full" | "dist" => Some("dist-upgrade"),
            _ => Some("upgrade"),
        };
        if let Some(mode) = mode {
            let mut argv: Vec<&str> = vec![mode];
            if mode == "upgrade" {
                argv.push("--with-new-pkgs");
            }
            argv.extend(common.iter().map(String::as_str));
            if args.bool("autoremove", false)? {
                argv.push("--auto-remove");
            }
            let r = apt_get(&argv, &env);
            if !r.ok() {
                return Ok(failure(&format!("apt-get {mode}"), &r));
            }
            changed |= !r
                .stdout
                .contains("0 upgraded, 0 newly installed, 0 to remove");
            stdout.push_str(&r.stdout);
        }
    }
    if !names.is_empty() {
        // Taken after any cache update or upgrade above, so it sees what they changed.
        let packages = Snapshot::take(&AptPaths::system());
        match state.as_str() {
            "present" | "installed" | "fixed" | "build-dep" => {
                if let Some(unknown) = first_unknown_package(&packages, &names) {
                    return Ok(no_package_matching(unknown));
                }
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| !is_satisfied(&packages, n))
                    .collect();
                // In check mode too the install is simulated, as ansible-core's module
                // does: a package whose dependencies cannot be met fails. The native plan
                // answers when it can tell; apt-get --simulate otherwise.
                let planned = (plannable && state != "fixed" && state != "build-dep")
                    .then(|| planned_install(&packages, &missing))
                    .flatten();
                if let Some(plan) = planned {
                    stdout.push_str(&plan);
                    changed = true;
                } else if !missing.is_empty() {
                    let mut argv: Vec<&str> = vec!["install"];
                    argv.extend(common.iter().map(String::as_str));
                    argv.extend(missing.iter().map(|s| s.as_str()));
                    let r = apt_get(&argv, &env);
                    if !r.ok() {
                        return Ok(failure(
                            &format!(
                                "apt-get install {}",
                                missing
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                            &r,
                        ));
                    }
                    stdout.push_str(&r.stdout);
                    changed = true;
                }
            }
            "latest" => {
                if let Some(unknown) = first_unknown_package(&packages, &names) {
                    return Ok(no_package_matching(unknown));
                }
                let outdated: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        let (name, _) = split_spec(n);
                        match (
                            installed_version(&packages, name),
                            candidate_version(&packages, name),
                        ) {
                            (None, _) => true,
                            (Some(installed), Some(candidate)) => installed != candidate,
                            (Some(_), None) => false,
                        }
                    })
                    .collect();
                if !outdated.is_empty() && ctx.check {
                    changed = true;
                } else if !outdated.is_empty() {
                    let mut argv: Vec<&str> = vec!["install"];
                    argv.extend(common.iter().map(String::as_str));
                    if args.bool("only_upgrade", false)? {
                        argv.push("--only-upgrade");
                    }
                    argv.extend(outdated.iter().map(|s| s.as_str()));
                    let r = apt_get(&argv, &env);
                    if !r.ok() {
                        return Ok(failure("apt-get install", &r));
                    }
                    stdout.push_str(&r.stdout);
                    changed = true;
                }
            }
            _ => {
                let purge = args.bool("purge", false)?;
                let installed: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        let name = split_spec(n).0;
                        installed_version(&packages, name).is_some()
                            || (purge && has_config_files(&packages, name))
                    })
                    .collect();
                if !installed.is_empty() && ctx.check {
                    changed = true;
                } else if !installed.is_empty() {
                    let mut argv: Vec<&str> = vec!["remove"];
                    argv.extend(common.iter().map(String::as_str));
                    if purge {
                        argv.push("--purge");
                    }
                    if args.bool("autoremove", false)? {
                        argv.push("--auto-remove");
                    }
                    argv.extend(installed.iter().map(|s| s.as_str()));
                    let r = apt_get(&argv, &env);
                    if !r.ok() {
                        return Ok(failure("apt-get remove", &r));
                    }
                    stdout.push_str(&r.stdout);
                    changed = true;
                }
            }
        }
    } else if args.bool("autoremove", false)? && !args.has("upgrade") {
        let mut argv: Vec<&str> = vec!["autoremove"];
        argv.extend(common.iter().map(String::as_str));
        let r = apt_get(&argv, &env);
        if !r.ok() {
            return Ok(failure("apt-get autoremove", &r));
        }
        changed |= !r
            .stdout
            .contains("0 upgraded, 0 newly installed, 0 to remove");
        stdout.push_str(&r.stdout);
    }
    if args.bool("autoclean", false)? && !ctx.check {
        apt_get(&["autoclean", "-y"], &env);
    }
    if args.bool("clean", false)? && !ctx.check {
        apt_get(&["clean"], &env);
    }
    result.set("changed", changed);
    result.set("stdout", stdout.clone());
    result.set(
        "stdout_lines",
        Value::from(stdout.lines().map(String::from).collect::<Vec<_>>()),
    );
    Ok(result)
}
