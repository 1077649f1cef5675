//! `copy`, `file`, `stat`, `slurp` and the shared file-attribute logic (`mode`, `owner`,
//! `group`) that every file-writing module applies after writing.

use super::{ArgError, Args, ModuleContext, Outcome};
use base64::Engine as _;
use minijinja::Value;
use sha1::Digest;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// SHA-1 of a file's content in hex, as Ansible's `checksum`.
pub fn file_sha1(path: &Path) -> io::Result<String> {
    Ok(hex::encode(sha1::Sha1::digest(fs::read(path)?)))
}

/// SHA-1 of bytes in hex.
pub fn bytes_sha1(bytes: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(bytes))
}

/// The process umask.
pub fn umask() -> u32 {
    // SAFETY: umask only swaps the process mask; the original value is restored at once.
    unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask as u32
    }
}

/// Looks a user up by name or numeric id.
pub fn lookup_uid(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    let c_name = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the id out.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        None
    } else {
        // SAFETY: non-null pointer from getpwnam.
        Some(unsafe { (*entry).pw_uid })
    }
}

/// Looks a group up by name or numeric id.
pub fn lookup_gid(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    let c_name = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or null; we copy the id out.
    let entry = unsafe { libc::getgrnam(c_name.as_ptr()) };
    if entry.is_null() {
        None
    } else {
        // SAFETY: non-null pointer from getgrnam.
        Some(unsafe { (*entry).gr_gid })
    }
}

/// The user name of a uid (or the number as text).
pub fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns static storage or null; the name is copied immediately.
    unsafe {
        let entry = libc::getpwuid(uid);
        if entry.is_null() {
            return uid.to_string();
        }
        std::ffi::CStr::from_ptr((*entry).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The group name of a gid (or the number as text).
pub fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns static storage or null; the name is copied immediately.
    unsafe {
        let entry = libc::getgrgid(gid);
        if entry.is_null() {
            return gid.to_string();
        }
        std::ffi::CStr::from_ptr((*entry).gr_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>, follow: bool) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: valid C string; -1 (u32::MAX) leaves an id unchanged.
    let rc = unsafe {
        if follow {
            libc::chown(c_path.as_ptr(), u, g)
        } else {
            libc::lchown(c_path.as_ptr(), u, g)
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies a symbolic mode (`u=rw,g=r,o=`, `a+x`, `u+X`) to the current mode.
pub fn apply_symbolic_mode(current: u32, spec: &str, is_dir: bool) -> Result<u32, String> {
    let mut mode = current & 0o7777;
    for clause in spec.split(',') {
        let op_index = clause
            .find(['+', '-', '='])
            .ok_or_else(|| format!("bad symbolic permission for mode: {spec}"))?;
        let (who, rest) = clause.split_at(op_index);
        let who = if who.is_empty() { "a" } else { who };
        let op = rest.chars().next().unwrap_or('=');
        let perms = &rest[1..];
        let mut mask = 0u32;
        for w in who.chars() {
            mask |= match w {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return Err(format!("bad symbolic permission for mode: {spec}")),
            };
        }
        let mut bits = 0u32;
        for p in perms.chars() {
            bits |= match p {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' => {
                    if is_dir || current & 0o111 != 0 {
                        0o111
                    } else {
                        0
                    }
                }
                's' => 0o6000,
                't' => 0o1000,
                'u' => ((current & 0o700) >> 6) * 0o111,
                'g' => ((current & 0o070) >> 3) * 0o111,
                'o' => (current & 0o007) * 0o111,
                _ => return Err(format!("bad symbolic permission for mode: {spec}")),
            };
        }
        let bits = bits & mask;
        mode = match op {
            '+' => mode | bits,
            '-' => mode & !bits,
            _ => (mode & !mask) | bits,
        };
    }
    Ok(mode)
}

/// Resolves the `mode` argument against the current mode of a path.
pub fn resolve_mode(mode: &Value, current: u32, is_dir: bool) -> Result<u32, String> {
    if let Some(i) = mode.as_i64() {
        if mode.is_integer() {
            return u32::try_from(i).map_err(|_| format!("invalid mode: {mode}"));
        }
    }
    let text = super::value_to_string(mode);
    if !text.is_empty() && text.chars().all(|c| c.is_digit(8)) {
        return u32::from_str_radix(&text, 8).map_err(|_| format!("invalid mode: {text}"));
    }
    apply_symbolic_mode(current, &text, is_dir)
}

/// Applies `mode`/`owner`/`group` if they differ; returns whether anything changed.
pub fn apply_attributes(
    path: &Path,
    args: &Args,
    ctx: &ModuleContext,
    follow: bool,
) -> Result<bool, String> {
    let meta = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let meta = meta.map_err(|e| format!("could not stat {}: {e}", path.display()))?;
    let mut changed = false;
    let uid = match args.str("owner") {
        Some(owner) => Some(
            lookup_uid(&owner)
                .ok_or_else(|| format!("chown failed: failed to look up user {owner}"))?,
        ),
        None => None,
    };
    let gid = match args.str("group") {
        Some(group) => Some(
            lookup_gid(&group)
                .ok_or_else(|| format!("chgrp failed: failed to look up group {group}"))?,
        ),
        None => None,
    };
    let uid_change = uid.filter(|u| *u != meta.uid());
    let gid_change = gid.filter(|g| *g != meta.gid());
    if uid_change.is_some() || gid_change.is_some() {
        changed = true;
        if !ctx.check {
            chown(path, uid_change, gid_change, follow)
                .map_err(|e| format!("chown failed: {e}"))?;
        }
    }
    if let Some(mode) = args.get("mode") {
        let is_link = meta.file_type().is_symlink();
        if !is_link {
            let mode_text = super::value_to_string(&mode);
            if mode_text != "preserve" {
                let current = meta.mode() & 0o7777;
                let wanted = resolve_mode(&mode, current, meta.is_dir())?;
                if wanted != current {
                    changed = true;
                    if !ctx.check {
                        fs::set_permissions(path, fs::Permissions::from_mode(wanted))
                            .map_err(|e| format!("chmod failed: {e}"))?;
                    }
                }
            }
        }
    }
    Ok(changed)
}

/// Adds `path`, `mode`, `owner`, `group`, `size`, `state` of a path to a result.
pub fn add_file_facts(result: &mut Outcome, path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        result.set("uid", meta.uid());
        result.set("gid", meta.gid());
        result.set("owner", user_name(meta.uid()));
        result.set("group", group_name(meta.gid()));
        result.set("mode", format!("{:04o}", meta.mode() & 0o7777));
        result.set("size", meta.size());
        let state = if meta.file_type().is_symlink() {
            "link"
        } else if meta.is_dir() {
            "directory"
        } else if meta.nlink() > 1 {
            "hard"
        } else {
            "file"
        };
        result.set("state", state);
    }
}

/// Writes content atomically (temp file in the same directory, then rename), keeping the
/// mode and ownership of an existing destination like Ansible's `atomic_move`.
pub fn atomic_write(dest: &Path, content: &[u8]) -> io::Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.dynserv.{}.tmp", std::process::id()));
    fs::write(&tmp, content)?;
    let result = (|| {
        match fs::metadata(dest) {
            Ok(existing) => {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(existing.mode() & 0o7777))?;
                let _ = chown(&tmp, Some(existing.uid()), Some(existing.gid()), true);
            }
            Err(_) => {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666 & !umask()))?;
            }
        }
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies an existing file to `path.<timestamp>~` and returns the backup's name.
pub fn backup_file(path: &Path) -> io::Result<String> {
    let stamp = chrono::Local::now().format("%Y-%m-%d@%H:%M:%S");
    let backup = format!("{}.{}.{stamp}~", path.display(), std::process::id());
    fs::copy(path, &backup)?;
    Ok(backup)
}

/// Runs a `validate` command (`%s` = the candidate file); Err carries the failure message.
pub fn run_validate(validate: &str, candidate: &Path) -> Result<(), String> {
    if !validate.contains("%s") {
        return Err(format!("validate must contain %s: {validate}"));
    }
    let command = validate.replace("%s", &candidate.display().to_string());
    let words = super::command::shlex_split(&command)?;
    let Some((program, rest)) = words.split_first() else {
        return Err("validate command is empty".into());
    };
    let output = std::process::Command::new(program)
        .args(rest)
        .output()
        .map_err(|e| format!("failed to validate: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "failed to validate: rc:{} error:{}",
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Writes `content` to `dest` if it differs, then applies attributes: the core of
/// `copy` (content), `template` and other content-producing modules.
pub fn write_if_changed(
    dest: &Path,
    content: &[u8],
    args: &Args,
    ctx: &ModuleContext,
) -> Result<Outcome, ArgError> {
    let mut result = Outcome::new();
    let new_checksum = bytes_sha1(content);
    let exists = dest.exists();
    if dest.is_dir() {
        return Ok(Outcome::failed(format!(
            "can not use content with a dir as dest ({})",
            dest.display()
        )));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            if ctx.check {
                // An earlier task would have created it; report the would-be change.
                return Ok(Outcome::new()
                    .with("changed", true)
                    .with("dest", dest.display().to_string()));
            }
            return Ok(Outcome::failed(format!(
                "Destination directory {} does not exist",
                parent.display()
            )));
        }
    }
    let force = args.bool("force", true)?;
    let old_checksum = if exists { file_sha1(dest).ok() } else { None };
    let mut changed = false;
    if !exists || (force && old_checksum.as_deref() != Some(new_checksum.as_str())) {
        changed = true;
        if ctx.diff {
            let before = if exists {
                fs::read_to_string(dest).unwrap_or_default()
            } else {
                String::new()
            };
            let mut diff = vec![
                ("before", Value::from(before)),
                (
                    "after",
                    Value::from(String::from_utf8_lossy(content).into_owned()),
                ),
                ("after_header", Value::from(dest.display().to_string())),
            ];
            // As ansible-core: a destination that is not there yet has no header.
            if exists {
                diff.push(("before_header", Value::from(dest.display().to_string())));
            }
            result.set("diff", Value::from_pairs(diff));
        }
        if !ctx.check {
            if let Some(validate) = args.str("validate") {
                let tmp =
                    std::env::temp_dir().join(format!("dynserv-validate-{}", std::process::id()));
                fs::write(&tmp, content)
                    .map_err(|e| ArgError::Invalid(format!("could not write temp file: {e}")))?;
                let verdict = run_validate(&validate, &tmp);
                let _ = fs::remove_file(&tmp);
                if let Err(msg) = verdict {
                    return Ok(Outcome::failed(msg));
                }
            }
            if exists && args.bool("backup", false)? {
                if let Ok(backup) = backup_file(dest) {
                    result.set("backup_file", backup);
                }
            }
            if let Err(e) = atomic_write(dest, content) {
                return Ok(Outcome::failed(format!(
                    "Could not write {}: {e}",
                    dest.display()
                )));
            }
        }
    }
    if dest.exists() {
        match apply_attributes(dest, args, ctx, true) {
            Ok(attr_changed) => changed |= attr_changed,
            Err(msg) => return Ok(Outcome::failed(msg)),
        }
    }
    result.set("changed", changed);
    result.set("dest", dest.display().to_string());
    result.set("checksum", new_checksum);
    add_file_facts(&mut result, dest);
    Ok(result)
}

/// `copy`: content or a file/directory tree to a destination.
pub fn copy(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "src",
        "content",
        "dest",
        "backup",
        "force",
        "remote_src",
        "validate",
        "directory_mode",
        "follow",
        "local_follow",
        "checksum",
        "decrypt",
        "_original_basename",
    ])?;
    let dest_text = args.required("dest")?;
    if let Some(content) = args.get("content") {
        if args.has("src") {
            return Err(ArgError::Invalid(
                "parameters are mutually exclusive: src|content".into(),
            ));
        }
        let text = match content.kind() {
            minijinja::value::ValueKind::String => content.as_str().unwrap_or_default().to_string(),
            minijinja::value::ValueKind::Map | minijinja::value::ValueKind::Seq => {
                crate::filters::json_compact(&content).unwrap_or_default()
            }
            _ => super::value_to_string(&content),
        };
        if dest_text.ends_with('/') {
            return Ok(Outcome::failed("can not use content with a dir as dest"));
        }
        return write_if_changed(Path::new(&dest_text), text.as_bytes(), args, ctx);
    }
    let src = args
        .str("src")
        .ok_or_else(|| ArgError::Invalid("src (or content) is required".into()))?;
    let src_path = PathBuf::from(&src);
    let meta = match fs::metadata(&src_path) {
        Ok(m) => m,
        Err(_) => {
            return Ok(Outcome::failed(format!(
                "Could not find or access '{src}' on the Ansible Controller."
            )))
        }
    };
    if meta.is_dir() {
        return copy_tree(&src, &dest_text, args, ctx);
    }
    let mut dest = PathBuf::from(&dest_text);
    if dest_text.ends_with('/') || dest.is_dir() {
        let base = src_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        if dest_text.ends_with('/') && !dest.exists() && !ctx.check {
            fs::create_dir_all(&dest)
                .map_err(|e| ArgError::Invalid(format!("could not create {dest_text}: {e}")))?;
        }
        dest = dest.join(base);
    }
    let content =
        fs::read(&src_path).map_err(|e| ArgError::Invalid(format!("could not read {src}: {e}")))?;
    let args = if args.str("mode").as_deref() == Some("preserve") {
        Args::new(
            "copy",
            with_arg(
                args.value(),
                "mode",
                Value::from(format!("{:04o}", meta.mode() & 0o7777)),
            ),
        )
    } else {
        args.clone()
    };
    let mut result = write_if_changed(&dest, &content, &args, ctx)?;
    set_after_header(&mut result, &src_path.display().to_string());
    result.set("src", src);
    Ok(result)
}

/// Names the source in a result's diff (`+++ after: SRC`), as copy and template do.
pub fn set_after_header(result: &mut Outcome, header: &str) {
    set_diff_field(result, "after_header", header);
}

/// Sets one field of a result's diff (a header), when the result has a diff.
pub fn set_diff_field(result: &mut Outcome, field: &str, text: &str) {
    let Some(diff) = result.get("diff") else {
        return;
    };
    let updated = with_arg(diff, field, Value::from(text));
    result.set("diff", updated);
}

/// Returns a copy of a dict with one key replaced.
pub fn with_arg(args: &Value, key: &str, value: Value) -> Value {
    let mut pairs: Vec<(Value, Value)> = Vec::new();
    if let Ok(keys) = args.try_iter() {
        for k in keys {
            if k.as_str() != Some(key) {
                if let Ok(v) = args.get_item(&k) {
                    pairs.push((k, v));
                }
            }
        }
    }
    pairs.push((Value::from(key), value));
    Value::from_pairs(pairs)
}

fn copy_tree(src: &str, dest: &str, args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    // "dir/" copies the contents, "dir" copies the directory itself into dest.
    let src_path = Path::new(src);
    let target_root = if src.ends_with('/') {
        PathBuf::from(dest)
    } else {
        Path::new(dest).join(src_path.file_name().unwrap_or_default())
    };
    let mut changed = false;
    let mut stack = vec![(src_path.to_path_buf(), target_root.clone())];
    let dir_args = match args.get("directory_mode") {
        Some(mode) => Args::new("file", Value::from_pairs([("mode", mode)])),
        None => Args::new("file", Value::from_pairs(Vec::<(String, Value)>::new())),
    };
    while let Some((from, to)) = stack.pop() {
        if !to.exists() {
            changed = true;
            if !ctx.check {
                fs::create_dir_all(&to).map_err(|e| {
                    ArgError::Invalid(format!("could not create {}: {e}", to.display()))
                })?;
            }
        }
        if to.exists() {
            changed |= apply_attributes(&to, &dir_args, ctx, true).map_err(ArgError::Invalid)?;
        }
        let mut entries: Vec<_> = fs::read_dir(&from)
            .map_err(|e| ArgError::Invalid(format!("could not read {}: {e}", from.display())))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let target = to.join(entry.file_name());
            if path.is_dir() {
                stack.push((path, target));
            } else {
                let content = fs::read(&path).map_err(|e| {
                    ArgError::Invalid(format!("could not read {}: {e}", path.display()))
                })?;
                let r = if ctx.check && !to.exists() {
                    Outcome::new().with("changed", true)
                } else {
                    write_if_changed(&target, &content, args, ctx)?
                };
                if r.is_failed() {
                    return Ok(r);
                }
                changed |= r.changed();
            }
        }
    }
    let mut result = Outcome::new()
        .with("changed", changed)
        .with("dest", dest)
        .with("src", src);
    add_file_facts(&mut result, &target_root);
    Ok(result)
}

fn current_state(path: &Path) -> &'static str {
    match fs::symlink_metadata(path) {
        Err(_) => "absent",
        Ok(meta) if meta.file_type().is_symlink() => "link",
        Ok(meta) if meta.is_dir() => "directory",
        Ok(meta) if meta.nlink() > 1 => "hard",
        Ok(_) => "file",
    }
}

fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

fn apply_recursive(
    root: &Path,
    args: &Args,
    ctx: &ModuleContext,
    follow: bool,
) -> Result<bool, String> {
    let mut changed = false;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("could not read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            changed |= apply_attributes(&path, args, ctx, follow && !is_link)?;
            if path.is_dir() && !is_link {
                stack.push(path);
            }
        }
    }
    Ok(changed)
}

/// `file`: directories, links, removal, touch and attributes; with `--diff`, the
/// changes as ansible-core's file module reports them (`{"before": {"path", "state"?,
/// "mode"?, "owner"?, "group"?}, "after": {...}}`).
pub fn file(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    let path_text = args.str_any(&["path", "dest", "name"]);
    let before = path_text.as_deref().map(|p| {
        let path = Path::new(p);
        (current_state(path), fs::metadata(path).ok())
    });
    let mut result = file_inner(args, ctx)?;
    if !ctx.diff || !result.changed() || result.is_failed() {
        return Ok(result);
    }
    // ansible-core's touch of a missing path in check mode reports no diff; a real
    // touch reports the times it set, which this runtime does not.
    if args.str("state").as_deref() == Some("touch") {
        return Ok(result);
    }
    let (Some(path_text), Some((prev, meta))) = (path_text, before) else {
        return Ok(result);
    };
    let state = args
        .str("state")
        .unwrap_or_else(|| default_state(prev, args.bool("recurse", false).unwrap_or(false)));
    let mut before = vec![("path".to_string(), Value::from(path_text.clone()))];
    let mut after = before.clone();
    if prev != state {
        before.push(("state".into(), Value::from(prev)));
        after.push(("state".into(), Value::from(state.clone())));
    }
    // Attributes compare with what was there (a path that did not exist shows its
    // state only, as in check mode).
    if let (Some(meta), true) = (meta, state != "absent" && prev != "absent") {
        if let Some(owner) = args.str("owner").and_then(|o| lookup_uid(&o)) {
            if owner != meta.uid() {
                before.push(("owner".into(), Value::from(meta.uid())));
                after.push(("owner".into(), Value::from(owner)));
            }
        }
        if let Some(group) = args.str("group").and_then(|g| lookup_gid(&g)) {
            if group != meta.gid() {
                before.push(("group".into(), Value::from(meta.gid())));
                after.push(("group".into(), Value::from(group)));
            }
        }
        if let Some(mode) = args.get("mode") {
            let current = meta.mode() & 0o7777;
            if let Ok(wanted) = resolve_mode(&mode, current, meta.is_dir()) {
                if wanted != current {
                    before.push(("mode".into(), Value::from(format!("0{current:03o}"))));
                    after.push(("mode".into(), Value::from(format!("0{wanted:03o}"))));
                }
            }
        }
    }
    result.set(
        "diff",
        Value::from_pairs([
            ("before", Value::from_pairs(before)),
            ("after", Value::from_pairs(after)),
        ]),
    );
    Ok(result)
}

/// The state `file` keeps when none is given: the path's own, else a directory with
/// `recurse`, else a file.
fn default_state(prev: &str, recurse: bool) -> String {
    if prev != "absent" {
        prev.to_string()
    } else if recurse {
        "directory".into()
    } else {
        "file".into()
    }
}

fn file_inner(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "path",
        "dest",
        "name",
        "state",
        "src",
        "recurse",
        "force",
        "follow",
        "modification_time",
        "modification_time_format",
        "access_time",
        "access_time_format",
        "_original_basename",
        "_diff_peek",
    ])?;
    let path_text = args
        .str_any(&["path", "dest", "name"])
        .ok_or_else(|| ArgError::Missing("path".into()))?;
    let path = PathBuf::from(&path_text);
    let recurse = args.bool("recurse", false)?;
    let force = args.bool("force", false)?;
    let follow = args.bool("follow", true)?;
    let prev = current_state(&path);
    let state = args
        .choice(
            "state",
            &["absent", "directory", "file", "hard", "link", "touch"],
            None,
        )?
        .unwrap_or_else(|| default_state(prev, recurse));
    if recurse && state != "directory" {
        return Err(ArgError::Invalid(
            "recurse option requires state to be 'directory'".into(),
        ));
    }
    let mut result = Outcome::new().with("path", path_text.clone());
    let fail = |msg: String| Ok(Outcome::failed(msg).with("path", path_text.clone()));
    match state.as_str() {
        "absent" => {
            if prev != "absent" {
                if !ctx.check {
                    if let Err(e) = remove_path(&path) {
                        return fail(format!("rmtree failed: {e}"));
                    }
                }
                result.set("changed", true);
            }
            result.set("state", "absent");
            return Ok(result);
        }
        "directory" => {
            let mut changed = false;
            if prev == "absent" {
                // Create every missing ancestor and apply the attributes to each, as Ansible does.
                let mut missing = Vec::new();
                let mut cursor = Some(path.as_path());
                while let Some(p) = cursor {
                    if p.as_os_str().is_empty() || p.exists() {
                        break;
                    }
                    missing.push(p.to_path_buf());
                    cursor = p.parent();
                }
                changed = true;
                if !ctx.check {
                    for dir in missing.iter().rev() {
                        if let Err(e) = fs::create_dir(dir) {
                            if e.kind() != io::ErrorKind::AlreadyExists {
                                return fail(format!(
                                    "There was an issue creating {} as requested: {e}",
                                    dir.display()
                                ));
                            }
                        }
                        if let Err(msg) = apply_attributes(dir, args, ctx, true) {
                            return fail(msg);
                        }
                    }
                }
            } else if prev != "directory" && !(prev == "link" && follow && path.is_dir()) {
                return fail(format!("{path_text} already exists as a {prev}"));
            }
            if path.exists() {
                match apply_attributes(&path, args, ctx, follow) {
                    Ok(c) => changed |= c,
                    Err(msg) => return fail(msg),
                }
                if recurse {
                    match apply_recursive(&path, args, ctx, follow) {
                        Ok(c) => changed |= c,
                        Err(msg) => return fail(msg),
                    }
                }
            }
            result.set("changed", changed);
        }
        "file" => {
            if prev == "absent" {
                return fail(format!("file ({path_text}) is absent, cannot continue"));
            }
            if prev == "directory" {
                return fail(format!("{path_text} is a directory, cannot continue"));
            }
            match apply_attributes(&path, args, ctx, follow) {
                Ok(c) => result.set("changed", c),
                Err(msg) => return fail(msg),
            }
        }
        "touch" => {
            if !ctx.check {
                if prev == "absent" {
                    if let Err(e) = fs::OpenOptions::new().create(true).append(true).open(&path) {
                        return fail(format!("Error, could not touch target: {e}"));
                    }
                    let _ =
                        fs::set_permissions(&path, fs::Permissions::from_mode(0o666 & !umask()));
                } else {
                    let preserve_m = args.str("modification_time").as_deref() == Some("preserve");
                    let preserve_a = args.str("access_time").as_deref() == Some("preserve");
                    if !(preserve_m && preserve_a) {
                        touch_times(&path);
                    }
                }
            }
            let mut attributes_changed = false;
            if path.exists() {
                match apply_attributes(&path, args, ctx, follow) {
                    Ok(c) => attributes_changed = c,
                    Err(msg) => return fail(msg),
                }
            }
            let preserved = args.str("modification_time").as_deref() == Some("preserve")
                && args.str("access_time").as_deref() == Some("preserve")
                && prev != "absent";
            result.set("changed", !preserved || attributes_changed);
        }
        "link" | "hard" => {
            // Without src an existing link keeps its target (only attributes change).
            let src = match args.str("src") {
                Some(src) => src,
                None if prev == state => {
                    if state == "link" {
                        fs::read_link(&path)
                            .map(|t| t.display().to_string())
                            .unwrap_or_default()
                    } else {
                        let mut changed = false;
                        match apply_attributes(&path, args, ctx, true) {
                            Ok(c) => changed |= c,
                            Err(msg) => return fail(msg),
                        }
                        result.set("changed", changed);
                        add_file_facts(&mut result, &path);
                        return Ok(result);
                    }
                }
                None => {
                    let kind = if state == "link" {
                        "symlinks"
                    } else {
                        "hardlinks"
                    };
                    return fail(format!("src is required for creating new {kind}"));
                }
            };
            let mut changed = false;
            if state == "link" {
                let base = path.parent().unwrap_or(Path::new("/"));
                let absolute_src = if src.starts_with('/') {
                    PathBuf::from(&src)
                } else {
                    base.join(&src)
                };
                if !absolute_src.exists() && !force && !ctx.check {
                    return fail(format!(
                        "src file does not exist, use \"force=yes\" if you really want to create the link: {}",
                        absolute_src.display()
                    ));
                }
                let current_target = fs::read_link(&path).ok();
                if current_target.as_deref() != Some(Path::new(&src)) {
                    if prev == "file" || prev == "hard" {
                        if !force {
                            return fail(format!(
                                "refusing to convert from file to symlink for {path_text}"
                            ));
                        }
                    } else if prev == "directory" {
                        let empty = fs::read_dir(&path)
                            .map(|mut d| d.next().is_none())
                            .unwrap_or(false);
                        if !(force && empty) {
                            return fail(format!(
                                "refusing to convert from directory to symlink for {path_text}"
                            ));
                        }
                    }
                    changed = true;
                    if !ctx.check {
                        if prev != "absent" {
                            let _ = remove_path(&path);
                        }
                        if let Err(e) = std::os::unix::fs::symlink(&src, &path) {
                            return fail(format!("Error while linking: {e}"));
                        }
                    }
                }
                if path.symlink_metadata().is_ok() && !ctx.check {
                    match apply_attributes(&path, args, ctx, false) {
                        Ok(c) => changed |= c,
                        Err(msg) => return fail(msg),
                    }
                }
            } else {
                let src_meta = match fs::metadata(&src) {
                    Ok(m) => m,
                    Err(_) => return fail(format!("src does not exist: {src}")),
                };
                let same = fs::metadata(&path)
                    .map(|m| m.ino() == src_meta.ino() && m.dev() == src_meta.dev())
                    .unwrap_or(false);
                if !same {
                    if prev != "absent" && !force {
                        return fail(format!(
                            "refusing to convert from {prev} to hard link for {path_text}"
                        ));
                    }
                    changed = true;
                    if !ctx.check {
                        if prev != "absent" {
                            let _ = remove_path(&path);
                        }
                        if let Err(e) = fs::hard_link(&src, &path) {
                            return fail(format!("Error while linking: {e}"));
                        }
                    }
                }
                if path.exists() {
                    match apply_attributes(&path, args, ctx, true) {
                        Ok(c) => changed |= c,
                        Err(msg) => return fail(msg),
                    }
                }
            }
            result.set("changed", changed);
            result.set("src", src);
        }
        _ => {}
    }
    add_file_facts(&mut result, &path);
    if !path.exists() && ctx.check {
        result.set("state", state);
    }
    Ok(result)
}

fn touch_times(path: &Path) {
    if let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a null times pointer sets both timestamps to now.
        unsafe {
            libc::utimes(c_path.as_ptr(), std::ptr::null());
        }
    }
}

/// `stat`: facts about a path; never changes anything.
pub fn stat(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "path",
        "follow",
        "get_checksum",
        "checksum_algorithm",
        "get_mime",
        "get_attributes",
        "get_md5",
    ])?;
    let path_text = args.required("path")?;
    let path = Path::new(&path_text);
    let follow = args.bool("follow", false)?;
    let meta = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let Ok(meta) = meta else {
        return Ok(Outcome::new().with("stat", Value::from_pairs([("exists", false)])));
    };
    let mode = meta.mode();
    let file_type = meta.file_type();
    let mut stat: Vec<(&str, Value)> = vec![
        ("exists", Value::from(true)),
        ("path", Value::from(path_text.as_str())),
        ("mode", Value::from(format!("{:04o}", mode & 0o7777))),
        ("isdir", Value::from(file_type.is_dir())),
        ("ischr", Value::from(mode & libc::S_IFMT == libc::S_IFCHR)),
        ("isblk", Value::from(mode & libc::S_IFMT == libc::S_IFBLK)),
        ("isreg", Value::from(file_type.is_file())),
        ("isfifo", Value::from(mode & libc::S_IFMT == libc::S_IFIFO)),
        ("islnk", Value::from(file_type.is_symlink())),
        ("issock", Value::from(mode & libc::S_IFMT == libc::S_IFSOCK)),
        ("uid", Value::from(meta.uid())),
        ("gid", Value::from(meta.gid())),
        ("size", Value::from(meta.size())),
        ("inode", Value::from(meta.ino())),
        ("dev", Value::from(meta.dev())),
        ("nlink", Value::from(meta.nlink())),
        (
            "atime",
            Value::from(meta.atime() as f64 + meta.atime_nsec() as f64 / 1e9),
        ),
        (
            "mtime",
            Value::from(meta.mtime() as f64 + meta.mtime_nsec() as f64 / 1e9),
        ),
        (
            "ctime",
            Value::from(meta.ctime() as f64 + meta.ctime_nsec() as f64 / 1e9),
        ),
        ("wusr", Value::from(mode & 0o200 != 0)),
        ("rusr", Value::from(mode & 0o400 != 0)),
        ("xusr", Value::from(mode & 0o100 != 0)),
        ("wgrp", Value::from(mode & 0o020 != 0)),
        ("rgrp", Value::from(mode & 0o040 != 0)),
        ("xgrp", Value::from(mode & 0o010 != 0)),
        ("woth", Value::from(mode & 0o002 != 0)),
        ("roth", Value::from(mode & 0o004 != 0)),
        ("xoth", Value::from(mode & 0o001 != 0)),
        ("isuid", Value::from(mode & 0o4000 != 0)),
        ("isgid", Value::from(mode & 0o2000 != 0)),
        ("pw_name", Value::from(user_name(meta.uid()))),
        ("gr_name", Value::from(group_name(meta.gid()))),
    ];
    let access = |flag: libc::c_int| -> bool {
        CString::new(path.as_os_str().as_encoded_bytes())
            // SAFETY: valid C string.
            .map(|c| unsafe { libc::access(c.as_ptr(), flag) } == 0)
            .unwrap_or(false)
    };
    stat.push(("readable", Value::from(access(libc::R_OK))));
    stat.push(("writeable", Value::from(access(libc::W_OK))));
    stat.push(("executable", Value::from(access(libc::X_OK))));
    if file_type.is_symlink() {
        if let Ok(target) = fs::read_link(path) {
            stat.push(("lnk_target", Value::from(target.display().to_string())));
        }
        if let Ok(source) = fs::canonicalize(path) {
            stat.push(("lnk_source", Value::from(source.display().to_string())));
        }
    }
    if file_type.is_file() && args.bool("get_checksum", true)? {
        if let Ok(sum) = file_sha1(path) {
            stat.push(("checksum", Value::from(sum)));
        }
    }
    Ok(Outcome::new().with("stat", Value::from_pairs(stat)))
}

/// `slurp`: a file's content, base64-encoded.
pub fn slurp(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["src", "path"])?;
    let src = args
        .str_any(&["src", "path"])
        .ok_or_else(|| ArgError::Missing("src".into()))?;
    match fs::read(&src) {
        Ok(bytes) => Ok(Outcome::new()
            .with(
                "content",
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
            .with("encoding", "base64")
            .with("source", src)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Outcome::failed(format!("file not found: {src}")))
        }
        Err(e) => Ok(Outcome::failed(format!("unable to slurp file: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_mode(current: u32, spec: &str, is_dir: bool, expected: u32) {
        assert_eq!(
            apply_symbolic_mode(current, spec, is_dir),
            Ok(expected),
            "{current:o} {spec}"
        );
    }

    /// Symbolic modes behave like chmod(1).
    #[test]
    fn symbolic_modes() {
        check_mode(0o644, "u+x", false, 0o744);
        check_mode(0o644, "u=rwx,g=rx,o=", false, 0o750);
        check_mode(0o600, "a+r", false, 0o644);
        check_mode(0o755, "go-w", false, 0o755);
        check_mode(0o644, "a+X", false, 0o644);
        check_mode(0o644, "a+X", true, 0o755);
    }

    /// Integer modes from YAML are used as-is; strings are octal.
    #[test]
    fn mode_values() {
        assert_eq!(resolve_mode(&Value::from(0o644), 0, false), Ok(0o644));
        assert_eq!(resolve_mode(&Value::from("0640"), 0, false), Ok(0o640));
        assert_eq!(resolve_mode(&Value::from("755"), 0, false), Ok(0o755));
    }

    /// copy with content is idempotent and check mode changes nothing.
    #[test]
    fn copy_content_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("f.txt");
        let args = Args::new(
            "copy",
            Value::from_pairs([
                ("content", Value::from("hi\n")),
                ("dest", Value::from(dest.display().to_string())),
                ("mode", Value::from("0600")),
            ]),
        );
        let check = ModuleContext {
            check: true,
            ..Default::default()
        };
        assert!(copy(&args, &check).expect("runs").changed());
        assert!(!dest.exists());
        let ctx = ModuleContext::default();
        assert!(copy(&args, &ctx).expect("runs").changed());
        assert!(!copy(&args, &ctx).expect("runs").changed());
        assert_eq!(fs::metadata(&dest).expect("exists").mode() & 0o777, 0o600);
    }

    /// file state=directory creates parents and is idempotent; absent removes.
    #[test]
    fn file_directory_and_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("a/b");
        let ctx = ModuleContext::default();
        let args = Args::new(
            "file",
            Value::from_pairs([
                ("path", target.display().to_string()),
                ("state", "directory".into()),
            ]),
        );
        assert!(file(&args, &ctx).expect("runs").changed());
        assert!(!file(&args, &ctx).expect("runs").changed());
        let args = Args::new(
            "file",
            Value::from_pairs([
                ("path", dir.path().join("a").display().to_string()),
                ("state", "absent".into()),
            ]),
        );
        assert!(file(&args, &ctx).expect("runs").changed());
        assert!(!file(&args, &ctx).expect("runs").changed());
    }
}
