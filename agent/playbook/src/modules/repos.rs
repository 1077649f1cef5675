//! `apt_repository`, `apt_key`, `pip` and `dnf`/`yum`.

use super::exec::{run, which};
use super::files::{apply_attributes, atomic_write};
use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;
use std::path::{Path, PathBuf};

const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

fn normalize_source(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The file name Ansible suggests for a repository line (`download_docker_com_linux_ubuntu.list`).
pub fn suggest_filename(repo: &str) -> String {
    let without_options = regex::Regex::new(r"\[[^\]]+\]")
        .map(|re| re.replace_all(repo, "").into_owned())
        .unwrap_or_default();
    let without_protocol = regex::Regex::new(r"\w+://")
        .map(|re| re.replace_all(&without_options, "").into_owned())
        .unwrap_or_default();
    let first = without_protocol
        .split_whitespace()
        .find(|p| !matches!(*p, "deb" | "deb-src"))
        .unwrap_or("repository");
    let first = first.rsplit('@').next().unwrap_or(first);
    first
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
}

fn source_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir(SOURCES_DIR) {
        let mut listed: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list"))
            .collect();
        listed.sort();
        files.extend(listed);
    }
    files
}

/// `apt_repository`.
pub fn apt_repository(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "repo",
        "state",
        "filename",
        "update_cache",
        "update_cache_retries",
        "update_cache_retry_max_delay",
        "validate_certs",
        "codename",
        "install_python_apt",
    ])?;
    let repo = args.required("repo")?;
    if repo.starts_with("ppa:") {
        return Ok(Outcome::failed(
            "apt_repository: PPAs are not supported by the native runtime; give the deb line",
        ));
    }
    let wanted = normalize_source(&repo);
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let file = Path::new(SOURCES_DIR).join(format!(
        "{}.list",
        args.str("filename")
            .unwrap_or_else(|| suggest_filename(&repo))
    ));
    let mut changed = false;
    if state == "present" {
        let exists = source_files().iter().any(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.lines().any(|l| normalize_source(l) == wanted))
                .unwrap_or(false)
        });
        if !exists {
            changed = true;
            if !ctx.check {
                let mut text = std::fs::read_to_string(&file).unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&wanted);
                text.push('\n');
                std::fs::create_dir_all(SOURCES_DIR)
                    .map_err(|e| ArgError::Invalid(e.to_string()))?;
                atomic_write(&file, text.as_bytes()).map_err(|e| {
                    ArgError::Invalid(format!("could not write {}: {e}", file.display()))
                })?;
            }
        }
        if file.exists() {
            changed |= apply_attributes(&file, args, ctx, true).map_err(ArgError::Invalid)?;
        }
    } else {
        for f in source_files() {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| normalize_source(l) != wanted)
                .collect();
            if kept.len() != text.lines().count() {
                changed = true;
                if !ctx.check {
                    if kept.iter().all(|l| l.trim().is_empty()) && f.starts_with(SOURCES_DIR) {
                        let _ = std::fs::remove_file(&f);
                    } else {
                        let body = format!("{}\n", kept.join("\n"));
                        atomic_write(&f, body.as_bytes())
                            .map_err(|e| ArgError::Invalid(e.to_string()))?;
                    }
                }
            }
        }
    }
    if changed && !ctx.check && args.bool("update_cache", true)? {
        let r = run(
            "apt-get",
            &["update", "-q"],
            &[("DEBIAN_FRONTEND".into(), "noninteractive".into())],
            None,
        );
        if !r.ok() {
            return Ok(Outcome::failed(format!(
                "Failed to update apt cache: {}",
                r.stderr.trim()
            )));
        }
    }
    let added = if changed && state == "present" {
        vec![file.display().to_string()]
    } else {
        vec![]
    };
    Ok(Outcome::new()
        .with("changed", changed)
        .with("repo", repo)
        .with("state", state)
        .with("sources_added", Value::from(added)))
}

fn fetch(url: &str, validate_certs: bool) -> Result<Vec<u8>, String> {
    let curl = which("curl").ok_or("curl is needed to download keys")?;
    let mut argv = vec!["-fsSL"];
    if !validate_certs {
        argv.push("-k");
    }
    argv.push(url);
    let output = std::process::Command::new(curl)
        .args(&argv)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "Failed to download key at {url}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// `apt_key`: keys are kept as files under /etc/apt/trusted.gpg.d (or `keyring`), never
/// through the removed `apt-key` tool.
pub fn apt_key(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "id",
        "url",
        "data",
        "file",
        "keyring",
        "keyserver",
        "state",
        "validate_certs",
    ])?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    if args.has("keyserver") {
        return Ok(Outcome::failed(
            "apt_key: keyserver is not supported by the native runtime; use url or data",
        ));
    }
    let id = args
        .str("id")
        .map(|i| i.trim_start_matches("0x").to_uppercase());
    let keyring = args.str("keyring").map(PathBuf::from);
    let data: Option<Vec<u8>> = if let Some(d) = args.str("data") {
        Some(d.into_bytes())
    } else if let Some(f) = args.str("file") {
        Some(std::fs::read(&f).map_err(|e| ArgError::Invalid(format!("could not read {f}: {e}")))?)
    } else if let Some(url) = args.str("url") {
        if state == "present" {
            Some(fetch(&url, args.bool("validate_certs", true)?).map_err(ArgError::Invalid)?)
        } else {
            None
        }
    } else {
        None
    };
    let armored = data
        .as_ref()
        .is_some_and(|d| d.starts_with(b"-----BEGIN PGP"));
    let name = match (&id, &data) {
        (Some(id), _) => format!("dynserv-{}", &id[id.len().saturating_sub(16)..]),
        (None, Some(d)) => format!("dynserv-{}", &super::files::bytes_sha1(d)[..16]),
        (None, None) => {
            return Err(ArgError::Invalid(
                "one of id, url, data or file is required".into(),
            ))
        }
    };
    let path = keyring.unwrap_or_else(|| {
        let in_trusted = |extension: &str| {
            Path::new("/etc/apt/trusted.gpg.d").join(format!("{name}.{extension}"))
        };
        // Removing by id alone does not know whether the key was stored armored.
        if data.is_none() && in_trusted("asc").exists() {
            in_trusted("asc")
        } else {
            in_trusted(if armored { "asc" } else { "gpg" })
        }
    });
    let mut changed = false;
    if state == "present" {
        let Some(data) = data else {
            return Ok(Outcome::failed(
                "apt_key: url, data or file is required to add a key",
            ));
        };
        if std::fs::read(&path).ok().as_deref() != Some(data.as_slice()) {
            changed = true;
            if !ctx.check {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                atomic_write(&path, &data).map_err(|e| {
                    ArgError::Invalid(format!("could not write {}: {e}", path.display()))
                })?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
            }
        }
    } else if path.exists() {
        changed = true;
        if !ctx.check {
            std::fs::remove_file(&path).map_err(|e| ArgError::Invalid(e.to_string()))?;
        }
    }
    Ok(Outcome::new()
        .with("changed", changed)
        .with("keyring", path.display().to_string()))
}

/// `pip`.
pub fn pip(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "version",
        "requirements",
        "virtualenv",
        "virtualenv_command",
        "virtualenv_python",
        "virtualenv_site_packages",
        "state",
        "executable",
        "extra_args",
        "chdir",
        "editable",
        "umask",
        "break_system_packages",
    ])?;
    let names = args.list("name");
    let requirements = args.str("requirements");
    if names.is_empty() && requirements.is_none() {
        return Err(ArgError::Invalid(
            "one of the following is required: name, requirements".into(),
        ));
    }
    let state = args
        .choice(
            "state",
            &["present", "absent", "latest", "forcereinstall"],
            Some("present"),
        )?
        .unwrap_or_default();
    let mut changed = false;
    let pip = if let Some(venv) = args.str("virtualenv") {
        let pip = Path::new(&venv).join("bin/pip");
        if !pip.exists() {
            changed = true;
            if ctx.check {
                return Ok(Outcome::new().with("changed", true));
            }
            let command = args
                .str("virtualenv_command")
                .unwrap_or_else(|| "python3 -m venv".into());
            let mut words = super::command::shlex_split(&command).map_err(ArgError::Invalid)?;
            words.push(venv.clone());
            let refs: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
            let r = run(&words[0], &refs, &ctx.environment, None);
            if !r.ok() {
                return Ok(Outcome::failed(format!(
                    "Unable to create the virtualenv: {}",
                    r.stderr.trim()
                )));
            }
        }
        pip.display().to_string()
    } else {
        args.str("executable")
            .or_else(|| which("pip3").map(|p| p.display().to_string()))
            .unwrap_or_else(|| "pip3".into())
    };
    let freeze = || -> Vec<String> {
        let r = run(
            &pip,
            &["list", "--format=freeze", "--disable-pip-version-check"],
            &ctx.environment,
            None,
        );
        r.stdout
            .lines()
            .map(|l| l.to_lowercase().replace('_', "-"))
            .collect()
    };
    let before = freeze();
    let installed = |name: &str, version: Option<&str>| -> bool {
        let key = name.to_lowercase().replace('_', "-");
        before.iter().any(|l| match l.split_once("==") {
            Some((n, v)) => n == key && version.is_none_or(|want| v == want),
            None => false,
        })
    };
    let version = args.str("version");
    let mut specs: Vec<String> = Vec::new();
    for name in &names {
        let (bare, pinned) = match name.split_once("==") {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (name.clone(), version.clone()),
        };
        let needed = match state.as_str() {
            "present" => !installed(&bare, pinned.as_deref()),
            "absent" => installed(&bare, None),
            _ => true,
        };
        if needed {
            specs.push(match &pinned {
                Some(v) if state != "absent" => format!("{bare}=={v}"),
                _ => bare,
            });
        }
    }
    if specs.is_empty() && requirements.is_none() {
        return Ok(Outcome::new()
            .with("changed", changed)
            .with("name", Value::from(names)));
    }
    if ctx.check {
        return Ok(Outcome::new().with("changed", true));
    }
    let mut argv: Vec<String> = vec![if state == "absent" {
        "uninstall".into()
    } else {
        "install".into()
    }];
    argv.push("--disable-pip-version-check".into());
    match state.as_str() {
        "absent" => argv.push("-y".into()),
        "latest" => argv.push("-U".into()),
        "forcereinstall" => argv.extend(["-U".into(), "--force-reinstall".into()]),
        _ => {}
    }
    if let Some(extra) = args.str("extra_args") {
        argv.extend(super::command::shlex_split(&extra).map_err(ArgError::Invalid)?);
    }
    if args.bool("break_system_packages", false)? {
        argv.push("--break-system-packages".into());
    }
    if let Some(req) = &requirements {
        argv.extend(["-r".into(), req.clone()]);
    }
    argv.extend(specs);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut command_env = ctx.environment.clone();
    if let Some(dir) = args.str("chdir") {
        command_env.push(("PWD".into(), dir));
    }
    let r = run(&pip, &refs, &command_env, None);
    if !r.ok() {
        return Ok(Outcome::failed(format!("pip failed: {}", r.stderr.trim()))
            .with("stdout", r.stdout)
            .with("stderr", r.stderr));
    }
    let after = freeze();
    changed |= after != before;
    Ok(Outcome::new()
        .with("changed", changed)
        .with("cmd", format!("{pip} {}", argv.join(" ")))
        .with("stdout", r.stdout))
}

/// `dnf` / `yum`.
pub fn dnf(module: &str, args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "pkg",
        "state",
        "update_cache",
        "enablerepo",
        "disablerepo",
        "disable_gpg_check",
        "autoremove",
        "allowerasing",
        "security",
        "update_only",
        "use_backend",
    ])?;
    let tool = which("dnf")
        .or_else(|| which("yum"))
        .map(|p| p.display().to_string());
    let Some(tool) = tool else {
        return Ok(Outcome::failed(format!(
            "{module}: neither dnf nor yum is installed"
        )));
    };
    let mut names = args.list("name");
    names.extend(args.list("pkg"));
    let state = args
        .choice(
            "state",
            &["present", "installed", "latest", "absent", "removed"],
            Some("present"),
        )?
        .unwrap_or_default();
    let installed = |n: &str| run("rpm", &["-q", "--whatprovides", n], &[], None).ok();
    let mut flags: Vec<String> = vec!["-y".into()];
    for repo in args.list("enablerepo") {
        flags.push(format!("--enablerepo={repo}"));
    }
    for repo in args.list("disablerepo") {
        flags.push(format!("--disablerepo={repo}"));
    }
    if args.bool("disable_gpg_check", false)? {
        flags.push("--nogpgcheck".into());
    }
    if args.bool("update_cache", false)? && !ctx.check {
        run(&tool, &["makecache"], &ctx.environment, None);
    }
    let (verb, targets): (&str, Vec<String>) = match state.as_str() {
        "absent" | "removed" => (
            "remove",
            names.iter().filter(|n| installed(n)).cloned().collect(),
        ),
        "latest" => {
            if names.iter().any(|n| n == "*") {
                let r = run(&tool, &["-q", "check-update"], &ctx.environment, None);
                (
                    "upgrade",
                    if r.rc == 100 {
                        vec![]
                    } else {
                        return Ok(Outcome::new());
                    },
                )
            } else {
                let missing: Vec<String> =
                    names.iter().filter(|n| !installed(n)).cloned().collect();
                let r = run(&tool, &["-q", "check-update"], &ctx.environment, None);
                let outdated: Vec<String> = names
                    .iter()
                    .filter(|n| {
                        r.stdout
                            .lines()
                            .any(|l| l.split('.').next() == Some(n.as_str()))
                    })
                    .cloned()
                    .collect();
                if missing.is_empty() && outdated.is_empty() {
                    return Ok(Outcome::new());
                }
                ("install", missing.into_iter().chain(outdated).collect())
            }
        }
        _ => (
            "install",
            names.iter().filter(|n| !installed(n)).cloned().collect(),
        ),
    };
    if targets.is_empty() && verb != "upgrade" {
        return Ok(Outcome::new());
    }
    if ctx.check {
        return Ok(Outcome::new().with("changed", true));
    }
    let mut argv: Vec<&str> = vec![verb];
    argv.extend(flags.iter().map(String::as_str));
    argv.extend(targets.iter().map(String::as_str));
    let r = run(&tool, &argv, &ctx.environment, None);
    if !r.ok() {
        return Ok(
            Outcome::failed(format!("{tool} {verb} failed: {}", r.stderr.trim())).with("rc", r.rc),
        );
    }
    Ok(Outcome::new().with("changed", true).with(
        "results",
        Value::from(r.stdout.lines().map(String::from).collect::<Vec<_>>()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repository file names follow Ansible's suggestion rule.
    #[test]
    fn repository_file_names() {
        assert_eq!(
            suggest_filename("deb [arch=amd64 signed-by=/k.asc] https://download.docker.com/linux/ubuntu noble stable"),
            "download_docker_com_linux_ubuntu"
        );
        assert_eq!(
            suggest_filename("deb http://deb.debian.org/debian bookworm main"),
            "deb_debian_org_debian"
        );
    }
}
