//! `user` and `group`: accounts through the shadow-utils commands (useradd, usermod,
//! userdel, groupadd, groupmod, groupdel), state read from /etc/passwd, /etc/group and
//! /etc/shadow.

use super::exec::run;
use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;

/// One /etc/passwd entry.
#[derive(Debug, Clone, PartialEq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    comment: String,
    home: String,
    shell: String,
}

fn passwd_entry(name: &str) -> Option<PasswdEntry> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| PasswdEntry {
            name: f[0].into(),
            uid: f[2].parse().unwrap_or(0),
            gid: f[3].parse().unwrap_or(0),
            comment: f[4].into(),
            home: f[5].into(),
            shell: f[6].into(),
        })
    })
}

/// (name, gid, members) of every group.
fn groups() -> Vec<(String, u32, Vec<String>)> {
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4).then(|| {
                (
                    f[0].to_string(),
                    f[2].parse().unwrap_or(0),
                    f[3].split(',')
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect(),
                )
            })
        })
        .collect()
}

fn group_gid(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    groups()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, gid, _)| gid)
}

fn shadow_hash(name: &str) -> Option<String> {
    std::fs::read_to_string("/etc/shadow")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 1 && f[0] == name).then(|| f[1].to_string())
        })
}

fn command_failure(what: &str, r: &super::exec::Run) -> Outcome {
    Outcome::failed(format!("{what} failed: {}", r.stderr.trim()))
        .with("rc", r.rc)
        .with("stdout", r.stdout.clone())
        .with("stderr", r.stderr.clone())
}

/// `user`.
pub fn user(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "user",
        "state",
        "uid",
        "group",
        "groups",
        "append",
        "shell",
        "home",
        "create_home",
        "createhome",
        "move_home",
        "system",
        "password",
        "update_password",
        "comment",
        "remove",
        "force",
        "generate_ssh_key",
        "ssh_key_bits",
        "ssh_key_type",
        "ssh_key_file",
        "ssh_key_comment",
        "ssh_key_passphrase",
        "expires",
        "password_lock",
        "non_unique",
        "local",
        "skeleton",
        "umask",
        "password_expire_max",
        "password_expire_min",
    ])?;
    let name = args
        .str_any(&["name", "user"])
        .ok_or_else(|| ArgError::Missing("name".into()))?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let existing = passwd_entry(&name);
    let mut result = Outcome::new()
        .with("name", name.clone())
        .with("state", state.clone());
    if state == "absent" {
        if existing.is_some() {
            result.set("changed", true);
            if !ctx.check {
                let mut argv: Vec<&str> = Vec::new();
                if args.bool("force", false)? {
                    argv.push("-f");
                }
                if args.bool("remove", false)? {
                    argv.push("-r");
                }
                argv.push(&name);
                let r = run("userdel", &argv, &ctx.environment, None);
                if !r.ok() {
                    return Ok(command_failure("userdel", &r));
                }
            }
        }
        return Ok(result);
    }
    let uid = args.str("uid");
    let group = args.str("group");
    let groups_wanted = args.get("groups").map(|_| args.list("groups"));
    let append = args.bool("append", false)?;
    let shell = args.str("shell");
    let home = args.str("home");
    let comment = args.str("comment");
    let password = args.str("password");
    let create_home = args.bool("create_home", true)? && args.bool("createhome", true)?;
    let mut changed = false;
    match &existing {
        None => {
            let mut argv: Vec<String> = Vec::new();
            if let Some(uid) = &uid {
                argv.extend(["-u".into(), uid.clone()]);
                if args.bool("non_unique", false)? {
                    argv.push("-o".into());
                }
            }
            if let Some(group) = &group {
                if group_gid(group).is_none() {
                    return Ok(Outcome::failed(format!("Group {group} does not exist")));
                }
                argv.extend(["-g".into(), group.clone()]);
            } else if groups().iter().any(|(n, _, _)| *n == name) {
                // useradd would fail creating a same-named group; join it instead.
                argv.extend(["-g".into(), name.clone()]);
            }
            if let Some(list) = &groups_wanted {
                if !list.is_empty() {
                    argv.extend(["-G".into(), list.join(",")]);
                }
            }
            if let Some(shell) = &shell {
                argv.extend(["-s".into(), shell.clone()]);
            }
            if let Some(home) = &home {
                argv.extend(["-d".into(), home.clone()]);
            }
            if let Some(comment) = &comment {
                argv.extend(["-c".into(), comment.clone()]);
            }
            if let Some(password) = &password {
                argv.extend(["-p".into(), password.clone()]);
            }
            if args.bool("system", false)? {
                argv.push("-r".into());
            }
            argv.push(if create_home {
                "-m".into()
            } else {
                "-M".into()
            });
            if let Some(skel) = args.str("skeleton") {
                argv.extend(["-k".into(), skel]);
            }
            argv.push(name.clone());
            changed = true;
            if !ctx.check {
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                let r = run("useradd", &refs, &ctx.environment, None);
                if !r.ok() {
                    return Ok(command_failure("useradd", &r));
                }
            }
        }
        Some(entry) => {
            let mut argv: Vec<String> = Vec::new();
            if let Some(uid) = &uid {
                if uid.parse::<u32>().ok() != Some(entry.uid) {
                    argv.extend(["-u".into(), uid.clone()]);
                    if args.bool("non_unique", false)? {
                        argv.push("-o".into());
                    }
                }
            }
            if let Some(group) = &group {
                match group_gid(group) {
                    None => return Ok(Outcome::failed(format!("Group {group} does not exist"))),
                    Some(gid) if gid != entry.gid => argv.extend(["-g".into(), group.clone()]),
                    Some(_) => {}
                }
            }
            if let Some(list) = &groups_wanted {
                // As in Ansible: membership means being listed in /etc/group, the primary
                // group included only when listed there.
                let current: Vec<String> = groups()
                    .into_iter()
                    .filter(|(_, _, members)| members.contains(&name))
                    .map(|(n, _, _)| n)
                    .collect();
                let wanted: Vec<String> = list.clone();
                if let Some(missing) = wanted.iter().find(|g| group_gid(g).is_none()) {
                    return Ok(Outcome::failed(format!("Group {missing} does not exist")));
                }
                let differs = if append {
                    wanted.iter().any(|g| !current.contains(g))
                } else {
                    let mut a = current.clone();
                    let mut b = wanted.clone();
                    a.sort();
                    b.sort();
                    a != b
                };
                if differs {
                    if append {
                        argv.push("-a".into());
                    }
                    argv.extend(["-G".into(), wanted.join(",")]);
                }
            }
            if let Some(shell) = &shell {
                if *shell != entry.shell {
                    argv.extend(["-s".into(), shell.clone()]);
                }
            }
            if let Some(home) = &home {
                if *home != entry.home {
                    argv.extend(["-d".into(), home.clone()]);
                    if args.bool("move_home", false)? {
                        argv.push("-m".into());
                    }
                }
            }
            if let Some(comment) = &comment {
                if *comment != entry.comment {
                    argv.extend(["-c".into(), comment.clone()]);
                }
            }
            if let Some(password) = &password {
                let update = args
                    .choice("update_password", &["always", "on_create"], Some("always"))?
                    .unwrap_or_default();
                if update == "always" && shadow_hash(&name).as_deref() != Some(password.as_str()) {
                    argv.extend(["-p".into(), password.clone()]);
                }
            }
            if !argv.is_empty() {
                changed = true;
                argv.push(name.clone());
                if !ctx.check {
                    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                    let r = run("usermod", &refs, &ctx.environment, None);
                    if !r.ok() {
                        return Ok(command_failure("usermod", &r));
                    }
                }
            }
            if create_home
                && !std::path::Path::new(&entry.home).exists()
                && home.is_none()
                && args.has("create_home")
            {
                changed = true;
                if !ctx.check {
                    let _ = std::fs::create_dir_all(&entry.home);
                    let _ = run(
                        "chown",
                        &[&format!("{}:{}", entry.uid, entry.gid), &entry.home],
                        &[],
                        None,
                    );
                }
            }
        }
    }
    if args.bool("generate_ssh_key", false)? {
        if let Some(entry) = passwd_entry(&name).or(existing.clone()) {
            let key_type = args.str("ssh_key_type").unwrap_or_else(|| "rsa".into());
            let file = args
                .str("ssh_key_file")
                .unwrap_or_else(|| format!(".ssh/id_{key_type}"));
            let path = if file.starts_with('/') {
                file
            } else {
                format!("{}/{file}", entry.home)
            };
            if !std::path::Path::new(&path).exists() {
                changed = true;
                if !ctx.check {
                    if let Some(dir) = std::path::Path::new(&path).parent() {
                        let _ = std::fs::create_dir_all(dir);
                        let _ = run(
                            "chown",
                            &[
                                &format!("{}:{}", entry.uid, entry.gid),
                                &dir.display().to_string(),
                            ],
                            &[],
                            None,
                        );
                        use std::os::unix::fs::PermissionsExt;
                        let _ =
                            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                    }
                    let bits = args.str("ssh_key_bits").unwrap_or_else(|| {
                        if key_type == "rsa" {
                            "4096".into()
                        } else {
                            String::new()
                        }
                    });
                    let comment = args.str("ssh_key_comment").unwrap_or_else(|| {
                        format!(
                            "ansible-generated on {}",
                            crate::facts::FactSources::read().nodename
                        )
                    });
                    let passphrase = args.str("ssh_key_passphrase").unwrap_or_default();
                    let mut argv = vec![
                        "-t",
                        key_type.as_str(),
                        "-C",
                        comment.as_str(),
                        "-N",
                        passphrase.as_str(),
                        "-f",
                        path.as_str(),
                        "-q",
                    ];
                    if !bits.is_empty() {
                        argv.extend(["-b", bits.as_str()]);
                    }
                    let r = run("ssh-keygen", &argv, &[], None);
                    if !r.ok() {
                        return Ok(command_failure("ssh-keygen", &r));
                    }
                    let _ = run(
                        "chown",
                        &[
                            &format!("{}:{}", entry.uid, entry.gid),
                            &path,
                            &format!("{path}.pub"),
                        ],
                        &[],
                        None,
                    );
                }
            }
            result.set("ssh_key_file", path);
        }
    }
    if let Some(entry) = passwd_entry(&name) {
        result.set("uid", entry.uid);
        result.set("group", entry.gid);
        result.set("home", entry.home);
        result.set("shell", entry.shell);
        result.set("comment", entry.comment);
    }
    result.set("system", Value::from(args.bool("system", false)?));
    result.set("changed", changed);
    Ok(result)
}

/// `group`.
pub fn group(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "gid",
        "state",
        "system",
        "non_unique",
        "local",
        "force",
        "members",
    ])?;
    let name = args.required("name")?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let existing = groups().into_iter().find(|(n, _, _)| *n == name);
    let mut result = Outcome::new()
        .with("name", name.clone())
        .with("state", state.clone());
    let mut changed = false;
    match (state.as_str(), existing) {
        ("absent", Some(_)) => {
            changed = true;
            if !ctx.check {
                let r = run("groupdel", &[&name], &ctx.environment, None);
                if !r.ok() {
                    return Ok(command_failure("groupdel", &r));
                }
            }
        }
        ("present", None) => {
            changed = true;
            let mut argv: Vec<String> = Vec::new();
            if let Some(gid) = args.str("gid") {
                argv.extend(["-g".into(), gid]);
                if args.bool("non_unique", false)? {
                    argv.push("-o".into());
                }
            }
            if args.bool("system", false)? {
                argv.push("-r".into());
            }
            argv.push(name.clone());
            if !ctx.check {
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                let r = run("groupadd", &refs, &ctx.environment, None);
                if !r.ok() {
                    return Ok(command_failure("groupadd", &r));
                }
            }
        }
        ("present", Some((_, gid, _))) => {
            if let Some(wanted) = args.str("gid") {
                if wanted.parse::<u32>().ok() != Some(gid) {
                    changed = true;
                    if !ctx.check {
                        let mut argv = vec!["-g", wanted.as_str()];
                        if args.bool("non_unique", false)? {
                            argv.push("-o");
                        }
                        argv.push(&name);
                        let r = run("groupmod", &argv, &ctx.environment, None);
                        if !r.ok() {
                            return Ok(command_failure("groupmod", &r));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    if let Some((_, gid, _)) = groups().into_iter().find(|(n, _, _)| *n == name) {
        result.set("gid", gid);
    }
    result.set("system", args.bool("system", false)?);
    result.set("changed", changed);
    Ok(result)
}
