//! `ansible.posix.mount`: fstab entries and mounted file systems (Linux).
//!
//! The fstab editing is two pure functions over the file's text ([`set_mount`],
//! [`unset_mount`]) with Ansible's quirks kept: a line is matched by its mount point
//! (swap lines by their source), escaped characters are compared escaped, a line with
//! only four fields is rewritten with `0 0`, and removal only knows six-field lines.
//! Mounting and unmounting run `mount`/`umount`, with `-T FSTAB` for another fstab.

use std::path::Path;

use minijinja::Value;

use super::exec::run;
use super::{ArgError, Args, ModuleContext, Outcome};

/// The fields of an fstab entry the module writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `src` (device, label, remote share).
    pub src: Option<String>,
    /// The mount point.
    pub name: String,
    /// `fstype`.
    pub fstype: Option<String>,
    /// Mount options.
    pub opts: String,
    /// `dump`.
    pub dump: String,
    /// `passno`.
    pub passno: String,
}

/// Escapes space, ampersand and backslash as fstab(5) octal escapes.
pub fn escape_fstab(value: &str) -> String {
    value
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('&', "\\046")
}

fn entry_line(src: &str, name: &str, fstype: &str, opts: &str, dump: &str, passno: &str) -> String {
    format!("{src} {name} {fstype} {opts} {dump} {passno}\n")
}

/// Python's `readlines()` with a newline added to a last line without one.
fn lines_of(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .map(|l| {
            if l.ends_with('\n') {
                l.to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Adds or updates `entry` in fstab text: the new text and whether it changed.
pub fn set_mount(text: &str, entry: &Entry) -> (String, bool) {
    let escaped = |v: &str| escape_fstab(v);
    let want_src = escaped(entry.src.as_deref().unwrap_or("None"));
    let want_fstype = escaped(entry.fstype.as_deref().unwrap_or("None"));
    let want_name = escaped(&entry.name);
    let want = [
        want_src.clone(),
        want_fstype.clone(),
        escaped(&entry.opts),
        escaped(&entry.dump),
        escaped(&entry.passno),
    ];
    let mut out = String::new();
    let mut exists = false;
    let mut changed = false;
    for line in lines_of(text) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(&line);
            continue;
        }
        let fields: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if !(4..=6).contains(&fields.len()) {
            out.push_str(&line);
            continue;
        }
        let is_other_swap = entry.src.is_some()
            && fields[1] == "none"
            && fields[2] == "swap"
            && Some(fields[0]) != entry.src.as_deref();
        if fields[1] != want_name || is_other_swap {
            out.push_str(&line);
            continue;
        }
        exists = true;
        // Missing dump/passno are the integer 0 in Ansible, never equal to a string.
        let current: [Option<&str>; 5] = [
            Some(fields[0]),
            Some(fields[2]),
            Some(fields[3]),
            fields.get(4).copied(),
            fields.get(5).copied(),
        ];
        let mut ld: Vec<String> = current
            .iter()
            .map(|f| f.unwrap_or("0").to_string())
            .collect();
        let mut line_changed = false;
        for (i, wanted) in want.iter().enumerate() {
            if current[i] != Some(wanted.as_str()) {
                ld[i] = wanted.clone();
                line_changed = true;
            }
        }
        if line_changed || changed {
            changed = true;
            out.push_str(&entry_line(
                &ld[0], fields[1], &ld[1], &ld[2], &ld[3], &ld[4],
            ));
        } else {
            out.push_str(&line);
        }
    }
    if !exists {
        out.push_str(&entry_line(
            &want[0], &want_name, &want[1], &want[2], &want[3], &want[4],
        ));
        changed = true;
    }
    (out, changed)
}

/// Removes the entries of mount point `name` (six-field lines only, as Ansible).
pub fn unset_mount(text: &str, name: &str, src: Option<&str>) -> (String, bool) {
    let escaped_name = escape_fstab(name);
    let mut out = String::new();
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 6 {
            out.push_str(line);
            continue;
        }
        let is_other_swap =
            src.is_some() && fields[1] == "none" && fields[2] == "swap" && Some(fields[0]) != src;
        if fields[1] != escaped_name || is_other_swap {
            out.push_str(line);
            continue;
        }
        changed = true;
    }
    (out, changed)
}

/// Mount points in `/proc/self/mountinfo` with their sources.
fn linux_mounts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let point = unescape_octal(fields.get(4)?);
            let source = unescape_octal(fields.get(dash + 2)?);
            Some((point, source))
        })
        .collect()
}

fn unescape_octal(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// An `OSError` as Python prints it: `[Errno 39] Directory not empty: 'path'`.
pub fn os_error(e: &std::io::Error, path: &str) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    format!("[Errno {}] {text}: '{path}'", e.raw_os_error().unwrap_or(0))
}

/// Python's `os.path.ismount`.
fn ismount(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if meta.file_type().is_symlink() {
        return false;
    }
    let parent = Path::new(path).join("..");
    match std::fs::metadata(parent) {
        Ok(up) => up.dev() != meta.dev() || up.ino() == meta.ino(),
        Err(_) => false,
    }
}

fn is_mounted(mounts: &[(String, String)], dest: &str, src: Option<&str>) -> bool {
    mounts
        .iter()
        .rev()
        .find(|(point, _)| point == dest)
        .is_some_and(|(_, source)| src.is_none_or(|s| s == source))
}

fn run_output(program: &str, argv: &[&str], ctx: &ModuleContext) -> (i32, String) {
    let r = run(program, argv, &ctx.environment, None);
    (r.rc, format!("{}{}", r.stdout, r.stderr))
}

fn fstab_args(fstab: &str) -> Vec<&str> {
    if fstab == "/etc/fstab" {
        Vec::new()
    } else {
        vec!["-T", fstab]
    }
}

fn do_mount(name: &str, fstab: &str, ctx: &ModuleContext) -> (i32, String) {
    let mut argv = fstab_args(fstab);
    argv.push(name);
    let (rc, out) = run_output("mount", &argv, ctx);
    (rc, if rc == 0 { String::new() } else { out })
}

fn do_umount(name: &str, ctx: &ModuleContext) -> (i32, String) {
    let (rc, out) = run_output("umount", &[name], ctx);
    (rc, if rc == 0 { String::new() } else { out })
}

fn do_remount(name: &str, fstab: &str, opts: Option<&str>, ctx: &ModuleContext) -> (i32, String) {
    let option = match opts {
        Some(o) => format!("remount,{o}"),
        None => "remount".to_string(),
    };
    let mut argv = vec!["-o", option.as_str()];
    argv.extend(fstab_args(fstab));
    argv.push(name);
    let (rc, _) = run_output("mount", &argv, ctx);
    if rc == 0 {
        return (0, String::new());
    }
    let (rc, msg) = do_umount(name, ctx);
    if rc == 0 {
        do_mount(name, fstab, ctx)
    } else {
        (rc, msg)
    }
}

/// `mount`: manages fstab entries and mounts.
pub fn mount(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "boot",
        "dump",
        "fstab",
        "fstype",
        "path",
        "name",
        "opts",
        "opts_no_log",
        "passno",
        "src",
        "backup",
        "state",
    ])?;
    let name = args
        .str_any(&["path", "name"])
        .map(|p| super::nodejs::expand_user(&p))
        .ok_or_else(|| ArgError::Missing("path".into()))?;
    let state = args
        .choice(
            "state",
            &[
                "absent",
                "absent_from_fstab",
                "mounted",
                "present",
                "unmounted",
                "remounted",
                "ephemeral",
            ],
            None,
        )?
        .ok_or_else(|| ArgError::Missing("state".into()))?;
    if matches!(state.as_str(), "mounted" | "present" | "ephemeral") {
        let missing: Vec<&str> = ["src", "fstype"]
            .into_iter()
            .filter(|k| !args.has(k))
            .collect();
        if !missing.is_empty() {
            return Err(ArgError::Invalid(format!(
                "state is {state} but all of the following are missing: {}",
                missing.join(", ")
            )));
        }
    }
    let boot = args.bool("boot", true)?;
    let backup = args.bool("backup", false)?;
    args.bool("opts_no_log", false)?;
    let src = args.str("src").map(|s| super::nodejs::expand_user(&s));
    let fstype = args.str("fstype");
    let fstab = args.str("fstab").unwrap_or_else(|| "/etc/fstab".into());
    let mut opts = args.str("opts").unwrap_or_else(|| "defaults".into());
    let dump = args.str("dump").unwrap_or_else(|| "0".into());
    let passno = args.str("passno").unwrap_or_else(|| "0".into());
    let mut boot_text = "yes";
    let mut warnings: Vec<String> = Vec::new();
    let split: Vec<&str> = opts.split(',').collect();
    if boot && split.contains(&"noauto") {
        warnings.push("Ignore the 'boot' due to 'opts' contains 'noauto'.".into());
    } else if !boot {
        boot_text = "no";
        opts = format!("{opts},noauto");
    }

    if state != "ephemeral" && !Path::new(&fstab).exists() {
        if let Some(dir) = Path::new(&fstab).parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&fstab)
        {
            return Ok(Outcome::failed(
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    format!("Failed to open {fstab} due to permission issue")
                } else {
                    format!("Failed to open {fstab} due to {e}")
                },
            ));
        }
    }
    let entry = Entry {
        src: src.clone(),
        name: name.clone(),
        fstype: fstype.clone(),
        opts: opts.clone(),
        dump: dump.clone(),
        passno: passno.clone(),
    };
    let mut backup_file = String::new();
    let mut write = |text: &str| -> Result<(), Outcome> {
        if backup {
            if let Ok(b) = super::files::backup_file(Path::new(&fstab)) {
                backup_file = b;
            }
        }
        std::fs::write(&fstab, text)
            .map_err(|e| Outcome::failed(format!("Could not write {fstab}: {e}")))
    };
    let read = || std::fs::read_to_string(&fstab).unwrap_or_default();
    let mounts = linux_mounts();
    let mounted = |src: Option<&str>| ismount(&name) || is_mounted(&mounts, &name, src);
    let mut changed = false;
    let step = (|| -> Result<(), Outcome> {
        match state.as_str() {
            "absent_from_fstab" | "absent" => {
                let (text, c) = unset_mount(&read(), &name, src.as_deref());
                changed = c;
                if c && !ctx.check {
                    write(&text)?;
                    if state == "absent" {
                        if mounted(None) {
                            let (rc, msg) = do_umount(&name, ctx);
                            if rc != 0 {
                                return Err(Outcome::failed(format!(
                                    "Error unmounting {name}: {msg}"
                                )));
                            }
                        }
                        if Path::new(&name).exists() {
                            if let Err(e) = std::fs::remove_dir(&name) {
                                return Err(Outcome::failed(format!(
                                    "Error rmdir {name}: {}",
                                    os_error(&e, &name)
                                )));
                            }
                        }
                    }
                }
            }
            "unmounted" => {
                if mounted(None) {
                    if !ctx.check {
                        let (rc, msg) = do_umount(&name, ctx);
                        if rc != 0 {
                            return Err(Outcome::failed(format!("Error unmounting {name}: {msg}")));
                        }
                    }
                    changed = true;
                }
            }
            "present" => {
                let (text, c) = set_mount(&read(), &entry);
                changed = c;
                if c && !ctx.check {
                    write(&text)?;
                }
            }
            "remounted" => {
                if !ctx.check {
                    let options = (opts != "defaults").then_some(opts.as_str());
                    let (rc, msg) = do_remount(&name, &fstab, options, ctx);
                    if rc != 0 {
                        if options.is_some() {
                            return Err(Outcome::failed("Options were specified with remounted, but the remount command failed. Failing in order to prevent an unexpected mount result. Try replacing this command with a \"state: unmounted\" followed by a \"state: mounted\" using the full desired mount options instead."));
                        }
                        return Err(Outcome::failed(format!("Error remounting {name}: {msg}")));
                    }
                }
                changed = true;
            }
            _ => {
                // mounted / ephemeral
                let mut created = Vec::new();
                if !Path::new(&name).exists() && !ctx.check {
                    let mut current = std::path::PathBuf::new();
                    for part in Path::new(&name).components() {
                        current.push(part);
                        if !current.exists() {
                            if let Err(e) = std::fs::create_dir(&current) {
                                return Err(Outcome::failed(format!(
                                    "Error making dir {name}: {e}"
                                )));
                            }
                            created.push(current.clone());
                        }
                    }
                }
                let before = read();
                if state == "mounted" {
                    let (text, c) = set_mount(&before, &entry);
                    changed = c;
                    if c && !ctx.check {
                        write(&text)?;
                    }
                }
                let mut result = (0, String::new());
                if mounted(src.as_deref()) {
                    if changed && !ctx.check {
                        result = do_remount(&name, &fstab, None, ctx);
                    }
                    if state == "ephemeral" {
                        return Err(Outcome::failed("Ephemeral mount point is already mounted with a different source than the specified one. Failing in order to prevent an unwanted unmount or override operation. Try replacing this command with a \"state: unmounted\" followed by a \"state: ephemeral\", or use a different destination path."));
                    }
                } else {
                    changed = true;
                    if !ctx.check {
                        result = if state == "ephemeral" {
                            let options = format!("-o{opts}");
                            let mut argv = vec![
                                "-t",
                                fstype.as_deref().unwrap_or_default(),
                                options.as_str(),
                                src.as_deref().unwrap_or_default(),
                            ];
                            argv.push(&name);
                            let (rc, out) = run_output("mount", &argv, ctx);
                            (rc, if rc == 0 { String::new() } else { out })
                        } else {
                            do_mount(&name, &fstab, ctx)
                        };
                    }
                }
                if result.0 != 0 {
                    if state != "ephemeral" {
                        let _ = std::fs::write(&fstab, &before);
                    }
                    for dir in created.iter().rev() {
                        let _ = std::fs::remove_dir(dir);
                    }
                    return Err(Outcome::failed(format!(
                        "Error mounting {name}: {}",
                        result.1
                    )));
                }
            }
        }
        Ok(())
    })();
    if let Err(failure) = step {
        return Ok(failure);
    }
    let mut out = Outcome::new()
        .with("changed", changed)
        .with("name", name)
        .with("opts", opts)
        .with("dump", dump)
        .with("passno", passno)
        .with("fstab", fstab)
        .with("boot", boot_text)
        .with("backup_file", backup_file);
    if let Some(src) = src {
        out.set("src", src);
    }
    if let Some(fstype) = fstype {
        out.set("fstype", fstype);
    }
    if !warnings.is_empty() {
        out.set("warnings", Value::from(warnings));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(src: &str, name: &str, fstype: &str, opts: &str) -> Entry {
        Entry {
            src: Some(src.into()),
            name: name.into(),
            fstype: Some(fstype.into()),
            opts: opts.into(),
            dump: "0".into(),
            passno: "0".into(),
        }
    }

    /// A new entry is appended; the same entry again changes nothing.
    #[test]
    fn set_appends_then_is_idempotent() {
        let text = "# fstab\nUUID=1 / ext4 defaults 0 1\n";
        let e = entry("/dev/sdb1", "/data", "ext4", "noatime");
        let (after, changed) = set_mount(text, &e);
        assert!(changed);
        assert_eq!(after, format!("{text}/dev/sdb1 /data ext4 noatime 0 0\n"));
        assert_eq!(set_mount(&after, &e), (after.clone(), false));
    }

    /// An existing line is rewritten in place; a four-field line always is (its
    /// missing dump and passno never equal the strings given).
    #[test]
    fn set_rewrites_in_place() {
        let text = "/dev/a /data ext4 defaults 0 0\n/dev/b /srv xfs defaults\n";
        let (after, changed) = set_mount(text, &entry("/dev/a", "/data", "ext4", "ro"));
        assert!(changed);
        assert_eq!(
            after,
            "/dev/a /data ext4 ro 0 0\n/dev/b /srv xfs defaults\n"
        );
        let (after, changed) = set_mount(text, &entry("/dev/b", "/srv", "xfs", "defaults"));
        assert!(changed);
        assert_eq!(
            after,
            "/dev/a /data ext4 defaults 0 0\n/dev/b /srv xfs defaults 0 0\n"
        );
    }

    /// Spaces in mount points are written and matched as `\040`.
    #[test]
    fn escapes_spaces() {
        let e = entry("//srv/share", "/mnt/my share", "cifs", "guest");
        let (after, _) = set_mount("", &e);
        assert_eq!(after, "//srv/share /mnt/my\\040share cifs guest 0 0\n");
        assert!(!set_mount(&after, &e).1);
        assert_eq!(
            unset_mount(&after, "/mnt/my share", None),
            (String::new(), true)
        );
    }

    /// Removal drops six-field lines of the mount point and keeps other swaps.
    #[test]
    fn unset_removes_only_matching_lines() {
        let text = "/dev/a /data ext4 defaults 0 0\n/dev/s1 none swap sw 0 0\n/dev/s2 none swap sw 0 0\n/dev/b /short ext4 defaults\n";
        assert_eq!(
            unset_mount(text, "/data", None),
            (
                "/dev/s1 none swap sw 0 0\n/dev/s2 none swap sw 0 0\n/dev/b /short ext4 defaults\n"
                    .to_string(),
                true
            )
        );
        assert_eq!(
            unset_mount(text, "none", Some("/dev/s2")).0,
            "/dev/a /data ext4 defaults 0 0\n/dev/s1 none swap sw 0 0\n/dev/b /short ext4 defaults\n"
        );
        assert!(!unset_mount(text, "/short", None).1);
    }
}
