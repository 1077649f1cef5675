//! `ufw`, `unarchive` and `git`.

use super::exec::{run, which};
use super::files::apply_attributes;
use super::{ArgError, Args, ModuleContext, Outcome};
use std::path::{Path, PathBuf};

fn ufw_state() -> String {
    let status = run("ufw", &["status", "verbose"], &[], None).stdout;
    let mut rules = String::new();
    for file in [
        "/etc/ufw/user.rules",
        "/etc/ufw/user6.rules",
        "/lib/ufw/user.rules",
        "/lib/ufw/user6.rules",
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            rules.push_str(&text);
        }
    }
    format!("{status}\n{rules}")
}

fn tuples(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("### tuple"))
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `community.general.ufw`: changed is decided by comparing ufw's state (status and
/// user rules) before and after, as the collection's module does; check mode compares
/// the rule tuples of `ufw --dry-run`.
pub fn ufw(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "state",
        "default",
        "policy",
        "direction",
        "logging",
        "rule",
        "port",
        "to_port",
        "proto",
        "protocol",
        "from_ip",
        "from",
        "src",
        "from_port",
        "to_ip",
        "to",
        "dest",
        "interface",
        "if",
        "interface_in",
        "interface_out",
        "log",
        "comment",
        "delete",
        "insert",
        "insert_relative_to",
        "route",
        "name",
        "app",
    ])?;
    if which("ufw").is_none() {
        return Ok(Outcome::failed("ufw is not installed"));
    }
    let before = ufw_state();
    let mut commands: Vec<Vec<String>> = Vec::new();
    if let Some(state) =
        args.choice("state", &["enabled", "disabled", "reloaded", "reset"], None)?
    {
        let active = before.contains("Status: active");
        match state.as_str() {
            "enabled" if !active => commands.push(vec!["--force".into(), "enable".into()]),
            "disabled" if active => commands.push(vec!["disable".into()]),
            "reloaded" => commands.push(vec!["reload".into()]),
            "reset" => commands.push(vec!["--force".into(), "reset".into()]),
            _ => {}
        }
    }
    if let Some(policy) = args.str_any(&["default", "policy"]) {
        let mut c = vec!["default".into(), policy];
        if let Some(direction) = args.str("direction") {
            c.push(direction);
        }
        commands.push(c);
    }
    if let Some(logging) = args.str("logging") {
        commands.push(vec!["logging".into(), logging]);
    }
    if let Some(rule) = args.choice("rule", &["allow", "deny", "limit", "reject"], None)? {
        let mut c: Vec<String> = Vec::new();
        if args.bool("delete", false)? {
            c.push("delete".into());
        }
        if let Some(insert) = args.int("insert")? {
            c.extend(["insert".into(), insert.to_string()]);
        }
        if args.bool("route", false)? {
            c.push("route".into());
        }
        c.push(rule);
        if let Some(direction) = args.str("direction").filter(|d| d == "in" || d == "out") {
            c.push(direction);
        }
        if let Some(interface) = args.str_any(&["interface", "if"]) {
            c.extend(["on".into(), interface]);
        }
        if args.bool("log", false)? {
            c.push("log".into());
        }
        c.extend([
            "from".into(),
            args.str_any(&["from_ip", "from", "src"])
                .unwrap_or_else(|| "any".into()),
        ]);
        if let Some(p) = args.str("from_port") {
            c.extend(["port".into(), p]);
        }
        c.extend([
            "to".into(),
            args.str_any(&["to_ip", "to", "dest"])
                .unwrap_or_else(|| "any".into()),
        ]);
        if let Some(p) = args.str_any(&["to_port", "port"]) {
            c.extend(["port".into(), p]);
        }
        if let Some(proto) = args.str_any(&["proto", "protocol"]).filter(|p| p != "any") {
            c.extend(["proto".into(), proto]);
        }
        if let Some(app) = args.str_any(&["name", "app"]) {
            c.extend(["app".into(), app]);
        }
        if let Some(comment) = args.str("comment") {
            c.extend(["comment".into(), comment]);
        }
        commands.push(c);
    }
    let mut changed = false;
    for command in &commands {
        let refs: Vec<&str> = command.iter().map(String::as_str).collect();
        if ctx.check {
            if matches!(
                refs.first(),
                Some(&"--force")
                    | Some(&"disable")
                    | Some(&"reload")
                    | Some(&"default")
                    | Some(&"logging")
            ) {
                changed |= !matches!(refs.first(), Some(&"reload"));
                continue;
            }
            let mut dry = vec!["--dry-run"];
            dry.extend(refs.iter());
            let r = run("ufw", &dry, &[], None);
            changed |= tuples(&r.stdout) != tuples(&before) && r.stdout.contains("### tuple");
        } else {
            let r = run("ufw", &refs, &[], None);
            if !r.ok() {
                return Ok(Outcome::failed(format!(
                    "ufw {} failed: {}",
                    command.join(" "),
                    r.stderr.trim()
                )));
            }
        }
    }
    if !ctx.check {
        changed = ufw_state() != before;
    }
    Ok(Outcome::new().with("changed", changed).with(
        "commands",
        minijinja::Value::from(
            commands
                .iter()
                .map(|c| format!("ufw {}", c.join(" ")))
                .collect::<Vec<_>>(),
        ),
    ))
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `unarchive`: extracts into a scratch directory next to `dest`, then copies only what
/// differs, so a second run reports no change.
pub fn unarchive(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "src",
        "dest",
        "remote_src",
        "creates",
        "list_files",
        "exclude",
        "include",
        "keep_newer",
        "extra_opts",
        "validate_certs",
        "decrypt",
        "copy",
        "io_buffer_size",
    ])?;
    let src = args.required("src")?;
    let dest = PathBuf::from(args.required("dest")?);
    if let Some(creates) = args.str("creates") {
        if Path::new(&creates).exists() {
            return Ok(Outcome::new()
                .with("msg", format!("skipped, since {creates} exists"))
                .with("dest", dest.display().to_string()));
        }
    }
    if !dest.is_dir() {
        return Ok(Outcome::failed(format!(
            "dest '{}' must be an existing dir",
            dest.display()
        )));
    }
    let (archive, _download) = if src.starts_with("http://") || src.starts_with("https://") {
        let tmp = tempfile_path("unarchive-download");
        let r = run(
            "curl",
            &["-fsSL", "-o", &tmp.display().to_string(), &src],
            &ctx.environment,
            None,
        );
        if !r.ok() {
            return Ok(Outcome::failed(format!(
                "Failure downloading {src}, {}",
                r.stderr.trim()
            )));
        }
        (tmp.clone(), Some(tmp))
    } else {
        (PathBuf::from(&src), None)
    };
    if !archive.is_file() {
        return Ok(Outcome::failed(format!("Source '{src}' does not exist")));
    }
    let scratch = dest.join(format!(".dynserv-unarchive-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| ArgError::Invalid(e.to_string()))?;
    let name = archive.display().to_string();
    let extra: Vec<String> = args.list("extra_opts");
    let is_zip = name.ends_with(".zip")
        || std::fs::read(&archive)
            .map(|b| b.starts_with(b"PK\x03\x04"))
            .unwrap_or(false);
    let r = if is_zip {
        let mut argv: Vec<&str> = vec!["-q", "-o"];
        argv.extend(extra.iter().map(String::as_str));
        argv.extend([name.as_str(), "-d", scratch.to_str().unwrap_or_default()]);
        run("unzip", &argv, &ctx.environment, None)
    } else {
        let excludes: Vec<String> = args
            .list("exclude")
            .into_iter()
            .map(|p| format!("--exclude={p}"))
            .collect();
        let mut argv: Vec<&str> = vec![
            "-xf",
            name.as_str(),
            "-C",
            scratch.to_str().unwrap_or_default(),
        ];
        argv.extend(extra.iter().map(String::as_str));
        argv.extend(excludes.iter().map(String::as_str));
        run("tar", &argv, &ctx.environment, None)
    };
    if let Some(tmp) = &_download {
        let _ = std::fs::remove_file(tmp);
    }
    if !r.ok() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(Outcome::failed(format!(
            "Failed to unpack {src} to {}: {}",
            dest.display(),
            r.stderr.trim()
        )));
    }
    let mut changed = false;
    let mut files = Vec::new();
    for path in walk(&scratch) {
        let relative = path.strip_prefix(&scratch).unwrap_or(&path).to_path_buf();
        files.push(relative.display().to_string());
        let target = dest.join(&relative);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() {
            if !target.is_dir() {
                changed = true;
                if !ctx.check {
                    let _ = std::fs::create_dir_all(&target);
                }
            }
            continue;
        }
        let same = if meta.file_type().is_symlink() {
            std::fs::read_link(&path).ok() == std::fs::read_link(&target).ok()
        } else {
            std::fs::read(&path).ok() == std::fs::read(&target).ok()
                && std::fs::metadata(&target)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .ok()
                    == Some(meta.permissions().mode() & 0o7777)
        };
        if !same {
            changed = true;
            if !ctx.check {
                if let Some(parent) = target.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::remove_file(&target);
                if std::fs::rename(&path, &target).is_err() {
                    let _ = std::fs::copy(&path, &target);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !ctx.check && (args.has("mode") || args.has("owner") || args.has("group")) {
        for file in &files {
            changed |=
                apply_attributes(&dest.join(file), args, ctx, false).map_err(ArgError::Invalid)?;
        }
    }
    let mut result = Outcome::new()
        .with("changed", changed)
        .with("dest", dest.display().to_string())
        .with("src", src);
    if args.bool("list_files", false)? {
        result.set("files", minijinja::Value::from(files));
    }
    Ok(result)
}

fn tempfile_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dynserv-{tag}-{}", std::process::id()))
}

fn git(dir: Option<&Path>, argv: &[&str], ctx: &ModuleContext) -> super::exec::Run {
    let mut full: Vec<&str> = Vec::new();
    let dir_text;
    if let Some(d) = dir {
        dir_text = d.display().to_string();
        full.extend(["-C", dir_text.as_str()]);
    }
    full.extend_from_slice(argv);
    let mut env = ctx.environment.clone();
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    run("git", &full, &env, None)
}

/// `git`: clone or update a working copy to `version`.
pub fn git_module(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "repo",
        "name",
        "dest",
        "version",
        "force",
        "depth",
        "update",
        "clone",
        "accept_hostkey",
        "accept_newhostkey",
        "key_file",
        "ssh_opts",
        "recursive",
        "single_branch",
        "bare",
        "remote",
        "track_submodules",
        "umask",
        "reference",
        "refspec",
        "verify_commit",
        "archive",
        "executable",
        "separate_git_dir",
        "gpg_whitelist",
    ])?;
    let repo = args
        .str_any(&["repo", "name"])
        .ok_or_else(|| ArgError::Missing("repo".into()))?;
    let dest = PathBuf::from(args.required("dest")?);
    let version = args.str("version").unwrap_or_else(|| "HEAD".into());
    let remote = args.str("remote").unwrap_or_else(|| "origin".into());
    let mut ctx = ctx.clone();
    if args.bool("accept_hostkey", false)?
        || args.bool("accept_newhostkey", false)?
        || args.has("key_file")
    {
        let mut ssh = String::from("ssh -o StrictHostKeyChecking=accept-new");
        if let Some(key) = args.str("key_file") {
            ssh.push_str(&format!(" -i {key} -o IdentitiesOnly=yes"));
        }
        ctx.environment.push(("GIT_SSH_COMMAND".into(), ssh));
    }
    let head = |ctx: &ModuleContext| {
        git(Some(&dest), &["rev-parse", "HEAD"], ctx)
            .stdout
            .trim()
            .to_string()
    };
    if !dest.join(".git").exists() {
        if !args.bool("clone", true)? {
            return Ok(Outcome::new()
                .with("before", minijinja::Value::from(()))
                .with("after", minijinja::Value::from(())));
        }
        if ctx.check {
            return Ok(Outcome::new()
                .with("changed", true)
                .with("before", minijinja::Value::from(())));
        }
        let mut argv: Vec<String> = vec!["clone".into()];
        if let Some(depth) = args.int("depth")? {
            argv.extend(["--depth".into(), depth.to_string()]);
            if version != "HEAD" && !looks_like_sha(&version) {
                argv.extend(["--branch".into(), version.clone()]);
            }
        }
        if args.bool("recursive", true)? {
            argv.push("--recursive".into());
        }
        argv.extend([repo.clone(), dest.display().to_string()]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let r = git(None, &refs, &ctx);
        if !r.ok() {
            return Ok(
                Outcome::failed(format!("Failed to clone {repo}: {}", r.stderr.trim()))
                    .with("rc", r.rc),
            );
        }
        if version != "HEAD" {
            let r = git(Some(&dest), &["checkout", "--force", &version], &ctx);
            if !r.ok() {
                return Ok(Outcome::failed(format!(
                    "Failed to checkout {version}: {}",
                    r.stderr.trim()
                )));
            }
        }
        return Ok(Outcome::new()
            .with("changed", true)
            .with("before", minijinja::Value::from(()))
            .with("after", head(&ctx)));
    }
    let before = head(&ctx);
    let dirty = !git(
        Some(&dest),
        &["status", "--porcelain", "--untracked-files=no"],
        &ctx,
    )
    .stdout
    .trim()
    .is_empty();
    let force = args.bool("force", false)?;
    if dirty && !force {
        return Ok(Outcome::failed(
            "Local modifications exist in the destination: ".to_string()
                + &dest.display().to_string()
                + " (force=no).",
        ));
    }
    if !args.bool("update", true)? {
        return Ok(Outcome::new()
            .with("before", before.clone())
            .with("after", before));
    }
    let target_ref = if version == "HEAD" {
        format!("{remote}/HEAD")
    } else if looks_like_sha(&version) {
        version.clone()
    } else {
        format!("{remote}/{version}")
    };
    let target = if ctx.check {
        let want = if version == "HEAD" {
            "HEAD".to_string()
        } else {
            version.clone()
        };
        let r = git(
            Some(&dest),
            &[
                "ls-remote",
                &remote,
                &want,
                &format!("refs/tags/{want}^{{}}"),
            ],
            &ctx,
        );
        r.stdout
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .map(String::from)
            .unwrap_or_else(|| version.clone())
    } else {
        let r = git(Some(&dest), &["fetch", "--tags", "--force", &remote], &ctx);
        if !r.ok() {
            return Ok(Outcome::failed(format!(
                "Failed to download remote objects and refs: {}",
                r.stderr.trim()
            )));
        }
        let tag = git(
            Some(&dest),
            &["rev-parse", &format!("{version}^{{commit}}")],
            &ctx,
        );
        let branch = git(
            Some(&dest),
            &["rev-parse", &format!("{target_ref}^{{commit}}")],
            &ctx,
        );
        if branch.ok() {
            branch.stdout.trim().to_string()
        } else {
            tag.stdout.trim().to_string()
        }
    };
    let changed = target != before || (dirty && force);
    if changed && !ctx.check {
        let r = if version != "HEAD"
            && !looks_like_sha(&version)
            && git(
                Some(&dest),
                &["rev-parse", "--verify", &format!("{remote}/{version}")],
                &ctx,
            )
            .ok()
        {
            git(
                Some(&dest),
                &[
                    "checkout",
                    "--force",
                    "-B",
                    &version,
                    &format!("{remote}/{version}"),
                ],
                &ctx,
            )
        } else if version == "HEAD" {
            git(Some(&dest), &["reset", "--hard", &target], &ctx)
        } else {
            git(Some(&dest), &["checkout", "--force", &target], &ctx)
        };
        if !r.ok() {
            return Ok(Outcome::failed(format!(
                "Failed to checkout {version}: {}",
                r.stderr.trim()
            )));
        }
    }
    let after = if ctx.check { target } else { head(&ctx) };
    Ok(Outcome::new()
        .with("changed", changed)
        .with("before", before)
        .with("after", after))
}

fn looks_like_sha(version: &str) -> bool {
    version.len() >= 7 && version.len() <= 40 && version.chars().all(|c| c.is_ascii_hexdigit())
}
