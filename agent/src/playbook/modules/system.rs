//! `cron`, `authorized_key`, `sysctl` and `hostname`.

use super::exec::run;
use super::files::{atomic_write, lookup_uid};
use super::{ArgError, Args, ModuleContext, Outcome};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn read_crontab(user: Option<&str>) -> Result<Vec<String>, String> {
    let mut argv = Vec::new();
    if let Some(u) = user {
        argv.extend(["-u", u]);
    }
    argv.push("-l");
    let r = run("crontab", &argv, &[], None);
    if r.rc == 127 {
        return Err("crontab is not installed".into());
    }
    if !r.ok() {
        // "no crontab for user" is an empty crontab.
        return Ok(Vec::new());
    }
    Ok(r.stdout.lines().map(String::from).collect())
}

fn write_crontab(user: Option<&str>, lines: &[String]) -> Result<(), String> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let mut argv = Vec::new();
    if let Some(u) = user {
        argv.extend(["-u", u]);
    }
    argv.push("-");
    let r = run("crontab", &argv, &[], Some(&text));
    if r.ok() {
        Ok(())
    } else {
        Err(format!("Unable to write crontab: {}", r.stderr.trim()))
    }
}

/// `cron`.
pub fn cron(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "job",
        "value",
        "state",
        "user",
        "cron_file",
        "minute",
        "hour",
        "day",
        "dom",
        "month",
        "weekday",
        "dow",
        "special_time",
        "disabled",
        "env",
        "insertafter",
        "insertbefore",
        "backup",
        "reboot",
    ])?;
    let name = args.required("name")?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let user = args.str("user");
    let cron_file = args.str("cron_file").map(|f| {
        if f.starts_with('/') {
            PathBuf::from(f)
        } else {
            Path::new("/etc/cron.d").join(f)
        }
    });
    let env = args.bool("env", false)?;
    let job = args.str_any(&["job", "value"]);
    if state == "present" && job.is_none() && !env {
        return Err(ArgError::Invalid(
            "You must specify 'job' to install a new cron job or variable".into(),
        ));
    }
    if cron_file.is_some() && user.is_none() && !env {
        return Err(ArgError::Invalid(
            "To use cron_file=... parameter you must specify user=... as well".into(),
        ));
    }
    let mut lines: Vec<String> = match &cron_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default(),
        None => read_crontab(user.as_deref()).map_err(ArgError::Invalid)?,
    };
    let original = lines.clone();
    if env {
        let prefix = format!("{name}=");
        let position = lines.iter().position(|l| l.starts_with(&prefix));
        let wanted = format!("{name}={}", job.clone().unwrap_or_default());
        match (state.as_str(), position) {
            ("present", Some(i)) => lines[i] = wanted,
            ("present", None) => {
                let at = match (args.str("insertafter"), args.str("insertbefore")) {
                    (Some(after), _) => lines
                        .iter()
                        .position(|l| l.starts_with(&format!("{after}=")))
                        .map(|i| i + 1)
                        .unwrap_or(0),
                    (None, Some(before)) => lines
                        .iter()
                        .position(|l| l.starts_with(&format!("{before}=")))
                        .unwrap_or(0),
                    _ => 0,
                };
                lines.insert(at, wanted);
            }
            ("absent", Some(i)) => {
                lines.remove(i);
            }
            _ => {}
        }
    } else {
        let marker = format!("#Ansible: {name}");
        let position = lines.iter().position(|l| *l == marker);
        let special = args.str("special_time").or_else(|| {
            args.bool("reboot", false)
                .ok()
                .filter(|b| *b)
                .map(|_| "reboot".to_string())
        });
        let schedule = match &special {
            Some(s) => format!("@{s}"),
            None => [
                args.str("minute").unwrap_or_else(|| "*".into()),
                args.str("hour").unwrap_or_else(|| "*".into()),
                args.str_any(&["day", "dom"]).unwrap_or_else(|| "*".into()),
                args.str("month").unwrap_or_else(|| "*".into()),
                args.str_any(&["weekday", "dow"])
                    .unwrap_or_else(|| "*".into()),
            ]
            .join(" "),
        };
        let disabled = if args.bool("disabled", false)? {
            "#"
        } else {
            ""
        };
        let user_field = match (&cron_file, &user) {
            (Some(_), Some(u)) => format!("{u} "),
            _ => String::new(),
        };
        let line = format!(
            "{disabled}{schedule} {user_field}{}",
            job.clone().unwrap_or_default()
        );
        match (state.as_str(), position) {
            ("present", Some(i)) => {
                if i + 1 < lines.len() {
                    lines[i + 1] = line;
                } else {
                    lines.push(line);
                }
            }
            ("present", None) => {
                lines.push(marker);
                lines.push(line);
            }
            ("absent", Some(i)) => {
                let end = (i + 2).min(lines.len());
                lines.drain(i..end);
            }
            _ => {}
        }
    }
    let changed = lines != original;
    if changed && !ctx.check {
        match &cron_file {
            Some(path) => {
                if lines.is_empty() && state == "absent" {
                    let _ = std::fs::remove_file(path);
                } else {
                    let text = format!("{}\n", lines.join("\n"));
                    atomic_write(path, text.as_bytes()).map_err(|e| {
                        ArgError::Invalid(format!("could not write {}: {e}", path.display()))
                    })?;
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
                }
            }
            None => write_crontab(user.as_deref(), &lines).map_err(ArgError::Invalid)?,
        }
    }
    let jobs: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("#Ansible: ").map(String::from))
        .collect();
    let envs: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(String::from)
        .collect();
    Ok(Outcome::new()
        .with("changed", changed)
        .with("jobs", minijinja::Value::from(jobs))
        .with("envs", minijinja::Value::from(envs)))
}

/// Splits an authorized_keys line into (options, type, blob, comment).
fn parse_key_line(line: &str) -> Option<(String, String, String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let is_type =
        |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-");
    let words: Vec<&str> = line.split_whitespace().collect();
    let index = words.iter().position(|w| is_type(w))?;
    let blob = words.get(index + 1)?.to_string();
    let options = if index > 0 {
        line[..line.find(words[index]).unwrap_or(0)]
            .trim()
            .to_string()
    } else {
        String::new()
    };
    let comment = words
        .get(index + 2..)
        .map(|w| w.join(" "))
        .unwrap_or_default();
    Some((options, words[index].to_string(), blob, comment))
}

/// `authorized_key`.
pub fn authorized_key(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "user",
        "key",
        "path",
        "manage_dir",
        "state",
        "key_options",
        "exclusive",
        "validate_certs",
        "comment",
        "follow",
    ])?;
    let user = args.required("user")?;
    let keys_text = args.required("key")?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let exclusive = args.bool("exclusive", false)?;
    let key_options = args.str("key_options");
    let home = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[0] == user).then(|| f[5].to_string())
        })
        .ok_or_else(|| ArgError::Invalid(format!("Failed to lookup user {user}")))?;
    let path = args
        .str("path")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".ssh/authorized_keys"));
    let existing_text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = existing_text.lines().map(String::from).collect();
    let wanted: Vec<(String, String, String, String)> = keys_text
        .lines()
        .filter_map(parse_key_line)
        .map(|(opts, t, b, c)| {
            (
                key_options.clone().unwrap_or(opts),
                t,
                b,
                args.str("comment").unwrap_or(c),
            )
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Outcome::failed(format!(
            "invalid key specified: {keys_text}"
        )));
    }
    for (options, key_type, blob, comment) in &wanted {
        let position = lines
            .iter()
            .position(|l| parse_key_line(l).is_some_and(|(_, _, b, _)| b == *blob));
        let line = [
            options.as_str(),
            key_type.as_str(),
            blob.as_str(),
            comment.as_str(),
        ]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        match (state.as_str(), position) {
            ("present", None) => lines.push(line),
            ("present", Some(i)) => {
                let (old_options, _, _, old_comment) =
                    parse_key_line(&lines[i]).unwrap_or_default();
                let comment_differs = args.has("comment") && old_comment != *comment;
                if old_options != *options || comment_differs {
                    lines[i] = line;
                }
            }
            ("absent", Some(i)) => {
                lines.remove(i);
            }
            _ => {}
        }
    }
    if exclusive && state == "present" {
        lines.retain(|l| match parse_key_line(l) {
            Some((_, _, b, _)) => wanted.iter().any(|(_, _, w, _)| *w == b),
            None => false,
        });
    }
    let mut new_text = lines.join("\n");
    if !new_text.is_empty() {
        new_text.push('\n');
    }
    let changed = new_text != existing_text && !(existing_text.is_empty() && new_text.is_empty());
    if changed && !ctx.check {
        let uid = lookup_uid(&user);
        let gid = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 7 && f[0] == user)
                    .then(|| f[3].parse::<u32>().ok())
                    .flatten()
            })
        });
        if let Some(dir) = path.parent() {
            if !dir.exists() && args.bool("manage_dir", true)? {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ArgError::Invalid(format!("could not create {}: {e}", dir.display()))
                })?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                if let (Some(u), Some(g)) = (uid, gid) {
                    let _ = std::os::unix::fs::chown(dir, Some(u), Some(g));
                }
            }
        }
        atomic_write(&path, new_text.as_bytes())
            .map_err(|e| ArgError::Invalid(format!("could not write {}: {e}", path.display())))?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        if let (Some(u), Some(g)) = (uid, gid) {
            let _ = std::os::unix::fs::chown(&path, Some(u), Some(g));
        }
    }
    Ok(Outcome::new()
        .with("changed", changed)
        .with("user", user)
        .with("key", keys_text)
        .with("keyfile", path.display().to_string())
        .with("state", state)
        .with("exclusive", exclusive))
}

/// `sysctl`.
pub fn sysctl(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "key",
        "value",
        "val",
        "state",
        "reload",
        "sysctl_file",
        "sysctl_set",
        "ignoreerrors",
    ])?;
    let name = args
        .str_any(&["name", "key"])
        .ok_or_else(|| ArgError::Missing("name".into()))?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let value = args.str_any(&["value", "val"]);
    if state == "present" && value.is_none() {
        return Err(ArgError::Invalid("value cannot be None".into()));
    }
    let value = value.map(|v| match v.as_str() {
        "True" => "1".to_string(),
        "False" => "0".to_string(),
        _ => v.split_whitespace().collect::<Vec<_>>().join(" "),
    });
    let file = PathBuf::from(
        args.str("sysctl_file")
            .unwrap_or_else(|| "/etc/sysctl.conf".into()),
    );
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let position = lines.iter().rposition(|l| {
        let l = l.trim();
        !l.starts_with('#')
            && !l.starts_with(';')
            && l.split_once('=').is_some_and(|(k, _)| k.trim() == name)
    });
    let current = position.and_then(|i| {
        lines[i]
            .split_once('=')
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
    });
    match (state.as_str(), position) {
        ("present", Some(i)) if current != value => {
            lines[i] = format!("{name}={}", value.clone().unwrap_or_default())
        }
        ("present", None) => lines.push(format!("{name}={}", value.clone().unwrap_or_default())),
        ("absent", Some(i)) => {
            lines.remove(i);
        }
        _ => {}
    }
    let mut new_text = lines.join("\n");
    if !new_text.is_empty() {
        new_text.push('\n');
    }
    let file_changed = new_text != text;
    let mut live_changed = false;
    if args.bool("sysctl_set", false)? && state == "present" {
        let live = run("sysctl", &["-n", "-e", &name], &[], None)
            .stdout
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if Some(&live) != value.as_ref() {
            live_changed = true;
            if !ctx.check {
                let r = run(
                    "sysctl",
                    &[
                        "-w",
                        &format!("{name}={}", value.clone().unwrap_or_default()),
                    ],
                    &[],
                    None,
                );
                if !r.ok() && !args.bool("ignoreerrors", false)? {
                    return Ok(Outcome::failed(format!(
                        "setting {name} failed: {}",
                        r.stderr.trim()
                    )));
                }
            }
        }
    }
    if file_changed && !ctx.check {
        atomic_write(&file, new_text.as_bytes())
            .map_err(|e| ArgError::Invalid(format!("could not write {}: {e}", file.display())))?;
        if args.bool("reload", true)? {
            let r = run("sysctl", &["-p", &file.display().to_string()], &[], None);
            if !r.ok() && !args.bool("ignoreerrors", false)? {
                return Ok(Outcome::failed(format!(
                    "Failed to reload sysctl: {}",
                    r.stderr.trim()
                )));
            }
        }
    }
    Ok(Outcome::new().with("changed", file_changed || live_changed))
}

/// `hostname`.
pub fn hostname(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["name", "use"])?;
    let name = args.required("name")?;
    let current = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let file = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let changed = current != name || file != name;
    if changed && !ctx.check {
        let r = run("hostnamectl", &["set-hostname", &name], &[], None);
        if !r.ok() {
            atomic_write(Path::new("/etc/hostname"), format!("{name}\n").as_bytes())
                .map_err(|e| ArgError::Invalid(format!("could not write /etc/hostname: {e}")))?;
            let r = run("hostname", &[&name], &[], None);
            if !r.ok() {
                return Ok(Outcome::failed(format!(
                    "Command failed rc={}, out=, err={}",
                    r.rc,
                    r.stderr.trim()
                )));
            }
        }
    }
    Ok(Outcome::new().with("changed", changed).with("name", name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Value;

    /// cron manages a named job and an environment line in a cron file idempotently.
    #[test]
    fn cron_file_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("backup");
        let run_with = |pairs: &[(&str, &str)]| {
            let mut all: Vec<(String, Value)> = vec![
                ("cron_file".into(), Value::from(file.display().to_string())),
                ("user".into(), Value::from("root")),
            ];
            all.extend(pairs.iter().map(|(k, v)| (k.to_string(), Value::from(*v))));
            let result = cron(
                &Args::new("cron", Value::from_pairs(all)),
                &ModuleContext::default(),
            )
            .expect("runs");
            assert!(!result.is_failed(), "{result:?}");
            result.changed()
        };
        let job = [
            ("name", "nightly"),
            ("minute", "30"),
            ("hour", "2"),
            ("job", "/usr/local/bin/backup.sh"),
        ];
        assert!(run_with(&job));
        assert!(!run_with(&job));
        assert!(run_with(&[
            ("name", "MAILTO"),
            ("env", "yes"),
            ("job", "ops@example.com")
        ]));
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "MAILTO=ops@example.com\n#Ansible: nightly\n30 2 * * * root /usr/local/bin/backup.sh\n"
        );
        assert!(run_with(&[("name", "nightly"), ("state", "absent")]));
        assert!(!run_with(&[("name", "nightly"), ("state", "absent")]));
    }

    /// sysctl edits its file idempotently (without touching the live kernel here).
    #[test]
    fn sysctl_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sysctl.conf");
        std::fs::write(&file, "# comment\nvm.swappiness = 60\n").expect("write");
        let run_with = |name: &str, value: &str| {
            let args = Value::from_pairs([
                ("name", Value::from(name)),
                ("value", Value::from(value)),
                ("sysctl_file", Value::from(file.display().to_string())),
                ("reload", Value::from(false)),
            ]);
            sysctl(&Args::new("sysctl", args), &ModuleContext::default())
                .expect("runs")
                .changed()
        };
        assert!(run_with("vm.swappiness", "10"));
        assert!(!run_with("vm.swappiness", "10"));
        assert!(run_with("net.ipv4.ip_forward", "1"));
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "# comment\nvm.swappiness=10\nnet.ipv4.ip_forward=1\n"
        );
    }

    /// authorized_key adds a key once and removes it again.
    #[test]
    fn authorized_key_in_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        let user = super::super::files::user_name(unsafe { libc::geteuid() });
        let run_with = |state: &str| {
            let args = Value::from_pairs([
                ("user", Value::from(user.as_str())),
                ("key", Value::from("ssh-ed25519 AAAAkey deploy@example")),
                ("path", Value::from(file.display().to_string())),
                ("state", Value::from(state)),
                ("manage_dir", Value::from(false)),
            ]);
            let result = authorized_key(
                &Args::new("authorized_key", args),
                &ModuleContext::default(),
            )
            .expect("runs");
            assert!(!result.is_failed(), "{result:?}");
            result.changed()
        };
        assert!(run_with("present"));
        assert!(!run_with("present"));
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "ssh-ed25519 AAAAkey deploy@example\n"
        );
        assert!(run_with("absent"));
        assert!(!run_with("absent"));
    }

    /// authorized_keys lines split into options, type, blob and comment.
    #[test]
    fn key_lines() {
        assert_eq!(
            parse_key_line("no-pty ssh-ed25519 AAAA me@host"),
            Some((
                "no-pty".into(),
                "ssh-ed25519".into(),
                "AAAA".into(),
                "me@host".into()
            ))
        );
        assert_eq!(parse_key_line("# comment"), None);
    }
}
