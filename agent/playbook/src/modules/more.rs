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

/// The member names of an archive in archive order, as Ansible lists them (tar: `tar
/// --list` with the same options, zip: the zip's name list), without excluded ones.
fn archive_members(
    archive: &Path,
    is_zip: bool,
    tar_options: &[String],
    excludes: &[String],
    includes: &[String],
    ctx: &ModuleContext,
) -> Result<Vec<String>, String> {
    let name = archive.display().to_string();
    let listing = if is_zip {
        run("unzip", &["-Z1", &name], &ctx.environment, None)
    } else {
        let mut argv: Vec<String> = vec!["--list".into()];
        if !tar_options.is_empty() {
            argv.push("--show-transformed-names".into());
            argv.extend(tar_options.iter().cloned());
        }
        argv.extend(excludes.iter().map(|e| format!("--exclude={e}")));
        argv.extend(["-f".into(), name.clone()]);
        argv.extend(includes.iter().cloned());
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        run("tar", &refs, &ctx.environment, None)
    };
    if !listing.ok() {
        return Err(format!(
            "Unable to list files in the archive: {}",
            listing.stderr.trim()
        ));
    }
    let matches = |member: &str, patterns: &[String]| {
        patterns.iter().any(|p| {
            glob::Pattern::new(p)
                .map(|pattern| pattern.matches(member))
                .unwrap_or(false)
        })
    };
    Ok(listing
        .stdout
        .lines()
        .map(|l| l.strip_prefix('/').unwrap_or(l).to_string())
        .filter(|member| {
            if is_zip && !includes.is_empty() {
                matches(member, includes)
            } else {
                !matches(member, excludes)
            }
        })
        .collect())
}

/// Whether the extracted `fresh` entry is already in place at `target`: same type,
/// content or link target, modification time (files), and, unless the task sets them,
/// mode and (as root) ownership, the differences ansible-core's `tar --diff` and zip
/// checks report.
fn already_extracted(fresh: &Path, target: &Path, args: &Args, keep_newer: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(want), Ok(have)) = (
        std::fs::symlink_metadata(fresh),
        std::fs::symlink_metadata(target),
    ) else {
        return false;
    };
    if want.file_type() != have.file_type() {
        return false;
    }
    if want.file_type().is_symlink() {
        return std::fs::read_link(fresh).ok() == std::fs::read_link(target).ok();
    }
    if !args.has("mode") && want.mode() & 0o7777 != have.mode() & 0o7777 {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !args.has("owner") && want.uid() != have.uid() {
        return false;
    }
    if root && !args.has("group") && want.gid() != have.gid() {
        return false;
    }
    if want.is_dir() {
        return true;
    }
    if keep_newer && have.mtime() > want.mtime() {
        return true;
    }
    want.mtime() == have.mtime()
        && want.len() == have.len()
        && std::fs::read(fresh).ok() == std::fs::read(target).ok()
}

/// `unarchive`: extracts into a scratch directory next to the destination's files, then
/// moves into place only what differs from them, so a second run reports no change.
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
    let excludes = args.list("exclude");
    let includes = args.list("include");
    if !excludes.is_empty() && !includes.is_empty() {
        return Ok(Outcome::failed(
            "parameters are mutually exclusive: include|exclude",
        ));
    }
    let remote_src = if args.has("copy") {
        !args.bool("copy", true)?
    } else {
        args.bool("remote_src", false)?
    };
    if let Some(creates) = args.str("creates") {
        if Path::new(&creates).exists() {
            return Ok(Outcome::new()
                .with("skipped", true)
                .with("msg", format!("skipped, since {creates} exists")));
        }
    }
    if !dest.is_dir() {
        return Ok(Outcome::failed(format!(
            "dest '{}' must be an existing dir",
            dest.display()
        )));
    }
    let is_url = src.contains("://");
    if is_url && !remote_src {
        return Ok(Outcome::failed(format!(
            "Unsupported option, an URI src ({src}) is only supported when remote_src is True"
        )));
    }
    let download = if is_url {
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
        Some(tmp)
    } else {
        None
    };
    let archive = download.clone().unwrap_or_else(|| PathBuf::from(&src));
    let result = unarchive_file(&archive, &src, &dest, args, ctx, &excludes, &includes);
    if let Some(tmp) = &download {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn unarchive_file(
    archive: &Path,
    src: &str,
    dest: &Path,
    args: &Args,
    ctx: &ModuleContext,
    excludes: &[String],
    includes: &[String],
) -> Result<Outcome, ArgError> {
    match std::fs::metadata(archive) {
        Err(_) => return Ok(Outcome::failed(format!("Source '{src}' does not exist"))),
        Ok(meta) if meta.len() == 0 => {
            return Ok(Outcome::failed(format!(
                "Invalid archive '{src}', the file is 0 bytes"
            )))
        }
        Ok(_) => {}
    }
    let name = archive.display().to_string();
    let extra: Vec<String> = args.list("extra_opts");
    let keep_newer = args.bool("keep_newer", false)?;
    let is_zip = std::fs::read(archive)
        .map(|b| b.starts_with(b"PK\x03\x04"))
        .unwrap_or(false);
    let members = match archive_members(archive, is_zip, &extra, excludes, includes, ctx) {
        Ok(members) => members,
        Err(msg) => return Ok(Outcome::failed(msg)),
    };
    let scratch = dest.join(format!(".dynserv-unarchive-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| ArgError::Invalid(e.to_string()))?;
    let scratch_text = scratch.display().to_string();
    let r = if is_zip {
        let mut argv: Vec<&str> = vec!["-q", "-o"];
        argv.extend(extra.iter().map(String::as_str));
        argv.extend([name.as_str(), "-d", scratch_text.as_str()]);
        argv.extend(includes.iter().map(String::as_str));
        if !excludes.is_empty() {
            argv.push("-x");
            argv.extend(excludes.iter().map(String::as_str));
        }
        run("unzip", &argv, &ctx.environment, None)
    } else {
        let mut argv: Vec<String> = vec!["--extract".into(), "-C".into(), scratch_text.clone()];
        argv.extend(extra.iter().cloned());
        argv.extend(excludes.iter().map(|e| format!("--exclude={e}")));
        argv.extend(["-f".into(), name.clone()]);
        argv.extend(includes.iter().cloned());
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        run("tar", &refs, &ctx.environment, None)
    };
    if !r.ok() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(
            Outcome::failed(format!("failed to unpack {src} to {}", dest.display()))
                .with("stderr", r.stderr),
        );
    }
    // The archive's directory times, read before moving files out changes them.
    let directory_times: Vec<(PathBuf, std::fs::FileTimes)> = walk(&scratch)
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            let times = std::fs::FileTimes::new()
                .set_accessed(meta.accessed().ok()?)
                .set_modified(meta.modified().ok()?);
            Some((dest.join(p.strip_prefix(&scratch).ok()?), times))
        })
        .collect();
    let mut changed = false;
    for path in walk(&scratch) {
        let relative = path.strip_prefix(&scratch).unwrap_or(&path).to_path_buf();
        let target = dest.join(&relative);
        if already_extracted(&path, &target, args, keep_newer) {
            continue;
        }
        changed = true;
        if ctx.check {
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir && target.is_dir() {
            // An existing directory takes the archive's mode and owner, keeps its content.
            copy_metadata(&path, &target);
            continue;
        }
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(&target);
        } else {
            let _ = std::fs::remove_file(&target);
        }
        if is_dir {
            let _ = std::fs::create_dir(&target);
            copy_metadata(&path, &target);
        } else if let Err(e) = std::fs::rename(&path, &target) {
            let _ = std::fs::remove_dir_all(&scratch);
            return Ok(Outcome::failed(format!(
                "failed to unpack {src} to {}: {}: {e}",
                dest.display(),
                target.display()
            )));
        }
    }
    // Directories get the archive's times last, after their content moved in.
    if !ctx.check {
        for (target, times) in directory_times {
            if let Ok(dir) = std::fs::File::open(&target) {
                let _ = dir.set_times(times);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !ctx.check && (args.has("mode") || args.has("owner") || args.has("group")) {
        let mut top_folders: Vec<&str> = Vec::new();
        for member in &members {
            changed |= apply_attributes(&dest.join(member), args, ctx, false)
                .map_err(ArgError::Invalid)?;
            if let Some((top, _)) = member.split_once('/') {
                if !top_folders.contains(&top) {
                    top_folders.push(top);
                }
            }
        }
        for top in top_folders {
            changed |=
                apply_attributes(&dest.join(top), args, ctx, false).map_err(ArgError::Invalid)?;
        }
    }
    let mut result = Outcome::new()
        .with("changed", changed)
        .with("dest", dest.display().to_string())
        .with("src", src)
        .with("handler", if is_zip { "ZipArchive" } else { "TgzArchive" });
    if args.bool("list_files", false)? {
        result.set("files", minijinja::Value::from(members));
    }
    Ok(result)
}

/// Gives `target` the mode and (as root) the owner of `source`.
fn copy_metadata(source: &Path, target: &Path) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(source) {
        let _ = std::fs::set_permissions(
            target,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        );
        let _ = std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()));
    }
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
        // Like Ansible: without a checkout, check mode and clone=no only look up what
        // a clone would check out, and report that as a change.
        if ctx.check || !args.bool("clone", true)? {
            return Ok(match remote_head(&repo, &version, &ctx) {
                Ok(after) => Outcome::new()
                    .with("changed", true)
                    .with("before", minijinja::Value::from(()))
                    .with("after", after),
                Err(msg) => Outcome::failed(msg),
            });
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

/// The commit `version` names in the remote repository `repo` (Ansible's
/// `get_remote_head` while cloning): the remote HEAD, a branch, a tag (its commit when
/// annotated), or the version itself when it names neither (a commit id).
fn remote_head(repo: &str, version: &str, ctx: &ModuleContext) -> Result<String, String> {
    let ls_remote = |kind: &str, pattern: &str| -> Result<String, String> {
        let r = git(None, &["ls-remote", repo, kind, pattern], ctx);
        if r.ok() {
            Ok(r.stdout)
        } else {
            Err(format!(
                "Failed to list the references of {repo}: {}",
                r.stderr.trim()
            ))
        }
    };
    let (out, tag) = if version == "HEAD" {
        (ls_remote("-h", "HEAD")?, false)
    } else if !ls_remote("-h", &format!("refs/heads/{version}"))?.is_empty() {
        (ls_remote("-h", &format!("refs/heads/{version}"))?, false)
    } else if !ls_remote("-t", &format!("refs/tags/{version}"))?.is_empty() {
        (ls_remote("-t", &format!("refs/tags/{version}*"))?, true)
    } else {
        return Ok(version.to_string());
    };
    if out.is_empty() {
        return Err(format!("Could not determine remote revision for {version}"));
    }
    let mut line = out.lines().next().unwrap_or_default();
    if tag {
        for candidate in out.lines() {
            if candidate.ends_with(&format!("{version}^{{}}")) {
                line = candidate;
                break;
            } else if candidate.ends_with(version) {
                line = candidate;
            }
        }
    }
    Ok(line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn looks_like_sha(version: &str) -> bool {
    version.len() >= 7 && version.len() <= 40 && version.chars().all(|c| c.is_ascii_hexdigit())
}
