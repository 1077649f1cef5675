//! `community.general.snap`: snap packages through the `snap` program.
//!
//! Like Ansible's module, a host without `snap` fails at once with Ansible's "Failed to
//! find required executable" message; otherwise `snap list` tells what is installed and
//! on which channel, `snap info` resolves names for `present`, and install, refresh,
//! remove, enable, disable and `snap set` run only when needed (none in check mode).

use minijinja::Value;
use regex::Regex;

use super::exec::{run, which, Run};
use super::{ArgError, Args, ModuleContext, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotInstalled,
    ChannelMismatch,
    Installed,
}

/// `(name, channel)` pairs from `snap list` output.
pub fn parse_list(text: &str) -> Vec<(String, String)> {
    let re = Regex::new(r"^(\S+)\s+\S+\s+\S+\s+(\S+)").expect("valid");
    text.split('\n')
        .skip(1)
        .filter_map(|l| re.captures(l).map(|c| (c[1].to_string(), c[2].to_string())))
        .collect()
}

fn status_of(name: &str, channel: Option<&str>, installed: &[(String, String)]) -> Status {
    match installed.iter().find(|(n, _)| n == name) {
        None => Status::NotInstalled,
        Some((_, current)) => match channel {
            Some(c) if *current != c && *current != format!("latest/{c}") => {
                Status::ChannelMismatch
            }
            _ => Status::Installed,
        },
    }
}

/// Flattens `snap get -d` JSON into `a.b = value` pairs as strings.
pub fn option_map(json: &serde_json::Value, prefix: Option<&str>, out: &mut Vec<(String, String)>) {
    if let serde_json::Value::Object(map) = json {
        for (key, value) in map {
            let full = match prefix {
                Some(p) => format!("{p}.{key}"),
                None => key.clone(),
            };
            match value {
                serde_json::Value::String(s) => out.push((full, s.clone())),
                serde_json::Value::Bool(b) => {
                    out.push((full, if *b { "True" } else { "False" }.to_string()))
                }
                serde_json::Value::Number(n) => out.push((full, n.to_string())),
                other => option_map(other, Some(&full), out),
            }
        }
    }
}

struct Snap {
    env: Vec<(String, String)>,
}

impl Snap {
    fn run(&self, argv: &[String]) -> Run {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        run("snap", &refs, &self.env, None)
    }

    fn installed(&self) -> Result<Vec<(String, String)>, Outcome> {
        let r = self.run(&["list".to_string()]);
        if !r.ok() {
            return Err(Outcome::failed(r.stderr.trim_end().to_string())
                .with("cmd", "snap list")
                .with("rc", r.rc)
                .with("stdout", r.stdout)
                .with("stderr", r.stderr));
        }
        Ok(parse_list(&r.stdout))
    }

    fn enabled(&self, name: &str) -> Option<bool> {
        let r = self.run(&["list".to_string(), name.to_string()]);
        if !r.ok() {
            return None;
        }
        let line = r.stdout.lines().nth(1)?;
        let notes = line.split_whitespace().nth(5)?;
        Some(!notes.split(',').any(|n| n == "disabled"))
    }
}

/// `snap`: installs, removes, enables or disables snaps and sets their options.
pub fn snap(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "state",
        "classic",
        "channel",
        "options",
        "dangerous",
    ])?;
    let names = args.list("name");
    if !args.has("name") {
        return Err(ArgError::Missing("name".into()));
    }
    let state = args
        .choice(
            "state",
            &["absent", "present", "enabled", "disabled"],
            Some("present"),
        )?
        .unwrap_or_default();
    let classic = args.bool("classic", false)?;
    let dangerous = args.bool("dangerous", false)?;
    let channel = args.str("channel");
    let options = args.has("options").then(|| args.list("options"));
    if which("snap").is_none() {
        return Ok(super::nodejs::missing_executable("snap"));
    }
    let snap = Snap {
        env: ctx
            .environment
            .iter()
            .cloned()
            .chain([("LC_ALL".to_string(), "C".to_string())])
            .collect(),
    };
    let result = (|| -> Result<Outcome, Outcome> {
        let version: Vec<(String, Value)> = snap
            .run(&["version".to_string()])
            .stdout
            .lines()
            .filter_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                (parts.len() == 2).then(|| (parts[0].to_string(), Value::from(parts[1])))
            })
            .collect();
        let mut names_for_status = names.clone();
        if state == "present" {
            let mut argv = vec!["info".to_string()];
            argv.extend(names.iter().cloned());
            let r = snap.run(&argv);
            let check = if names.len() == 1 {
                &r.stderr
            } else {
                &r.stdout
            };
            if check.contains("warning: no snap found") {
                let missing: Vec<String> = r
                    .stdout
                    .split('\n')
                    .filter(|l| l.starts_with("warning: no snap found"))
                    .filter_map(|l| l.split_whitespace().last().map(|s| format!("'{s}'")))
                    .collect();
                return Err(Outcome::failed(format!(
                    "Snaps not found: [{}].",
                    missing.join(", ")
                )));
            }
            names_for_status = r
                .stdout
                .split("\n---")
                .filter_map(|block| {
                    block
                        .lines()
                        .find(|l| l.starts_with("name:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .map(String::from)
                })
                .collect();
        }
        let installed = snap.installed()?;
        let statuses: Vec<Status> = names_for_status
            .iter()
            .map(|n| status_of(n, channel.as_deref(), &installed))
            .collect();
        let status_of_name = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .and_then(|i| statuses.get(i).copied())
                .unwrap_or(Status::NotInstalled)
        };
        let mut out = Outcome::new()
            .with("name", Value::from(names.clone()))
            .with("state", state.clone())
            .with("version", Value::from_pairs(version));
        let mut changed = false;
        let channel_text = channel.clone().unwrap_or_else(|| "stable".into());
        let base = |verb: &str, with_options: bool| {
            let mut argv = vec![verb.to_string()];
            if with_options && classic {
                argv.push("--classic".into());
            }
            if with_options && channel_text != "stable" {
                argv.push("--channel".into());
                argv.push(channel_text.clone());
            }
            if with_options && dangerous && verb != "remove" {
                argv.push("--dangerous".into());
            }
            argv
        };
        let run_all =
            |verb: &str, targets: &[String], bundle: bool| -> Result<String, (String, Run)> {
                let mut cmds = Vec::new();
                let mut last = Run::default();
                let batches: Vec<Vec<String>> = if bundle {
                    vec![targets.to_vec()]
                } else {
                    targets.iter().map(|t| vec![t.clone()]).collect()
                };
                let mut failed = false;
                for batch in batches {
                    let mut argv = base(verb, true);
                    argv.extend(batch);
                    let r = snap.run(&argv);
                    cmds.push(format!("snap {}", argv.join(" ")));
                    if !r.ok() && !failed {
                        failed = true;
                        last = r;
                    }
                }
                let cmd = cmds.join("; ");
                if failed {
                    Err((cmd, last))
                } else {
                    Ok(cmd)
                }
            };
        let classic_error = Regex::new(
            r#"^error: This revision of snap "(\w+)" was published using classic confinement"#,
        )
        .expect("valid");
        match state.as_str() {
            "present" => {
                out.set("classic", classic);
                for (refresh, wanted, key) in [
                    (true, Status::ChannelMismatch, "snaps_installed"),
                    (false, Status::NotInstalled, "snaps_installed"),
                ] {
                    let targets: Vec<String> = names
                        .iter()
                        .filter(|n| status_of_name(n) == wanted)
                        .cloned()
                        .collect();
                    if targets.is_empty() {
                        continue;
                    }
                    changed = true;
                    out.set(key, Value::from(targets.clone()));
                    if ctx.check {
                        continue;
                    }
                    let one_package = classic || channel_text != "stable";
                    let verb = if refresh { "refresh" } else { "install" };
                    match run_all(verb, &targets, !(one_package && targets.len() > 1)) {
                        Ok(cmd) => out.set("cmd", cmd),
                        Err((cmd, r)) => {
                            let msg = match classic_error.captures(&r.stderr) {
                                Some(c) => format!("Couldn't install {} because it requires classic confinement", &c[1]),
                                None => format!("Ooops! Snap installation failed while executing '{cmd}', please examine logs and error output for more details."),
                            };
                            return Err(Outcome::failed(msg).with("cmd", cmd));
                        }
                    }
                }
                if let Some(options) = &options {
                    let re = Regex::new(r"^(\S+:)?(\S+)\s*=\s*(.+)").expect("valid");
                    let mut overall = Vec::new();
                    for name in names
                        .iter()
                        .filter(|n| status_of_name(n) != Status::NotInstalled)
                    {
                        let r = snap.run(&["get".into(), "-d".into(), name.clone()]);
                        let mut current = Vec::new();
                        if r.ok()
                            && !r
                                .stdout
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .contains("has no configuration")
                        {
                            let json: serde_json::Value = serde_json::from_str(&r.stdout).map_err(|e| {
                                Outcome::failed(format!("Parsing option map returned by 'snap get {name}' triggers exception '{e}', output:\n'{}'", r.stdout))
                            })?;
                            option_map(&json, None, &mut current);
                        }
                        let mut changes = Vec::new();
                        for option in options {
                            let Some(c) = re.captures(option) else {
                                return Err(Outcome::failed(format!(
                                    "Cannot parse set option '{option}'"
                                )));
                            };
                            let selected = c
                                .get(1)
                                .map(|m| m.as_str().trim_end_matches(':').to_string());
                            if let Some(s) = &selected {
                                if !names.contains(s) {
                                    return Err(Outcome::failed(format!("Snap option '{option}' refers to snap which is not in the list of snap names")));
                                }
                            }
                            if selected.as_ref().is_none_or(|s| s == name) {
                                let key = c[2].to_string();
                                let value = c[3].trim().to_string();
                                if !current.iter().any(|(k, v)| *k == key && *v == value) {
                                    changes.push(format!("{key}={value}"));
                                    overall.push(if selected.is_some() {
                                        option.clone()
                                    } else {
                                        format!("{name}:{option}")
                                    });
                                }
                            }
                        }
                        if !changes.is_empty() {
                            changed = true;
                            if !ctx.check {
                                let mut argv = vec!["set".to_string(), name.clone()];
                                argv.extend(changes.iter().cloned());
                                let r = snap.run(&argv);
                                if !r.ok() {
                                    let msg = if r.stderr.contains("has no \"configure\" hook") {
                                        format!(
                                            "Snap '{name}' does not have any configurable options"
                                        )
                                    } else {
                                        format!(
                                            "Cannot set options '{}' for snap '{name}': error={}",
                                            changes.join(" "),
                                            r.stderr
                                        )
                                    };
                                    return Err(Outcome::failed(msg));
                                }
                            }
                        }
                    }
                    if !overall.is_empty() {
                        out.set("options_changed", Value::from(overall));
                    }
                }
            }
            other => {
                let (targets, key, verb): (Vec<String>, &str, &str) = match other {
                    "absent" => (
                        names
                            .iter()
                            .filter(|n| status_of_name(n) != Status::NotInstalled)
                            .cloned()
                            .collect(),
                        "snaps_removed",
                        "remove",
                    ),
                    "enabled" => (
                        names
                            .iter()
                            .filter(|n| snap.enabled(n) != Some(true))
                            .cloned()
                            .collect(),
                        "snaps_enabled",
                        "enable",
                    ),
                    _ => (
                        names
                            .iter()
                            .filter(|n| snap.enabled(n) == Some(true))
                            .cloned()
                            .collect(),
                        "snaps_disabled",
                        "disable",
                    ),
                };
                if !targets.is_empty() {
                    changed = true;
                    out.set(key, Value::from(targets.clone()));
                    if !ctx.check {
                        match run_all(verb, &targets, true) {
                            Ok(cmd) => out.set("cmd", cmd),
                            Err((cmd, _)) => {
                                return Err(Outcome::failed(format!("Ooops! Snap operation failed while executing '{cmd}', please examine logs and error output for more details.")).with("cmd", cmd))
                            }
                        }
                    }
                }
            }
        }
        out.set("channel", channel_text);
        out.set("changed", changed);
        Ok(out)
    })();
    Ok(result.unwrap_or_else(|failure| failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `snap list` rows give names and channels; channels match with `latest/`.
    #[test]
    fn list_and_status() {
        let text = "Name    Version   Rev    Tracking       Publisher   Notes\ncore22  20240111  1122   latest/stable  canonical✓  base\nhello   2.10      42     latest/edge    canonical✓  disabled\n";
        let list = parse_list(text);
        assert_eq!(list[1], ("hello".to_string(), "latest/edge".to_string()));
        assert_eq!(status_of("hello", Some("edge"), &list), Status::Installed);
        assert_eq!(
            status_of("hello", Some("stable"), &list),
            Status::ChannelMismatch
        );
        assert_eq!(status_of("nope", None, &list), Status::NotInstalled);
    }

    /// Nested options flatten to dotted keys with Python's text for values.
    #[test]
    fn options_flatten() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": 1, "c": true}, "d": "x"}"#).unwrap();
        let mut out = Vec::new();
        option_map(&json, None, &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                ("a.b".to_string(), "1".to_string()),
                ("a.c".to_string(), "True".to_string()),
                ("d".to_string(), "x".to_string())
            ]
        );
    }
}
