//! `community.general.timezone`: the system time zone and the hardware clock's scale.
//!
//! As in Ansible, a usable `timedatectl` (systemd running) does the work; otherwise the
//! configuration files are edited (`/etc/timezone` and `/etc/default/rcS` where
//! `dpkg-reconfigure` exists, else `/etc/sysconfig/clock`), `/etc/localtime` is
//! replaced and `hwclock --systohc` sets the clock. Check mode reports the difference
//! between the current and the planned values, with Ansible's `diff`.

use std::path::Path;

use minijinja::Value;
use regex::Regex;

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

/// Where the values live and how they are changed on this host.
enum Backend {
    Systemd,
    /// Debian: `/etc/timezone`, `/etc/default/rcS`, `ln -sf` and `dpkg-reconfigure`.
    Debian,
    /// Red Hat and others: `/etc/sysconfig/clock` (`ZONE="..."`), `cp` to localtime.
    Sysconfig,
}

struct Timezone {
    backend: Backend,
    msgs: Vec<String>,
    status: Option<String>,
    env: Vec<(String, String)>,
}

/// Ansible's `abort`: the message with the commands already run.
fn abort(msg: &str, msgs: &[String]) -> Outcome {
    let mut lines = vec!["Error message:".to_string(), msg.to_string()];
    if !msgs.is_empty() {
        lines.push("Other message(s):".into());
        lines.extend(msgs.iter().cloned());
    }
    Outcome::failed(lines.join("\n"))
}

/// The first match of `pattern`'s group 1 in `text`.
pub fn first_group(pattern: &str, text: &str) -> Option<String> {
    Regex::new(pattern)
        .ok()?
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

/// Replaces the lines matching `pattern` with `value` at the first match (or on top),
/// as Ansible's `_edit_file`: the new text and the number of lines deleted.
pub fn edit_config(text: &str, pattern: &str, value: &str) -> (String, usize) {
    let re = Regex::new(pattern).expect("the module's patterns are valid");
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let matched: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| re.is_match(l))
        .map(|(i, _)| i)
        .collect();
    let at = matched.first().copied().unwrap_or(0);
    for i in matched.iter().rev() {
        lines.remove(*i);
    }
    lines.insert(at, value);
    (lines.concat(), matched.len())
}

const NAME_DEBIAN: &str = r"(?m)^([^\s]+)";
const NAME_REDHAT: &str = r#"(?m)^ZONE\s*=\s*"?([^"\s]+)"?"#;
const HWCLOCK_CONF: &str = r"(?m)^UTC\s*=\s*([^\s]+)";

impl Timezone {
    fn execute(&mut self, argv: &[&str], log: bool) -> Result<String, Outcome> {
        let r = run(argv[0], &argv[1..], &self.env, None);
        if !r.ok() {
            return Err(Outcome::failed(r.stderr.trim_end().to_string())
                .with("cmd", argv.join(" "))
                .with("rc", r.rc)
                .with("stdout", r.stdout)
                .with("stderr", r.stderr));
        }
        if log {
            self.msgs.push(format!("executed `{}`", argv.join(" ")));
        }
        Ok(r.stdout)
    }

    fn name_file(&self) -> (&'static str, &'static str) {
        match self.backend {
            Backend::Sysconfig => ("/etc/sysconfig/clock", NAME_REDHAT),
            _ => ("/etc/timezone", NAME_DEBIAN),
        }
    }

    fn hwclock_file(&self) -> &'static str {
        match self.backend {
            Backend::Sysconfig => "/etc/sysconfig/clock",
            _ => "/etc/default/rcS",
        }
    }

    /// `_get_value_from_config`: a missing file or value reads as `n/a` (`UTC` for
    /// adjtime).
    fn read_config(&self, key: &str, phase: &str) -> Result<String, Outcome> {
        let (file, pattern) = match key {
            "name" => self.name_file(),
            "hwclock" => (self.hwclock_file(), HWCLOCK_CONF),
            _ => ("/etc/adjtime", r"(?m)^(UTC|LOCAL)$"),
        };
        let fallback = if key == "adjtime" { "UTC" } else { "n/a" };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fallback.into()),
            Err(_) => {
                return Err(abort(
                    &format!(
                        "tried to configure {key} using a file \"{file}\", but could not read it"
                    ),
                    &self.msgs,
                ))
            }
        };
        match first_group(pattern, &text) {
            None if key == "name" && phase != "before" => Err(abort(
                &format!("tried to configure {key} using a file \"{file}\", but could not find a valid value in it"),
                &self.msgs,
            )),
            None => Ok(fallback.into()),
            Some(v) if key == "hwclock" => Ok(
                if super::parse_bool(&Value::from(v.as_str())).unwrap_or(false) {
                    "UTC".into()
                } else {
                    "local".into()
                },
            ),
            Some(v) if key == "adjtime" && v != "UTC" => Ok(v.to_lowercase()),
            Some(v) => Ok(v),
        }
    }

    fn get(&mut self, key: &str, phase: &str, planned: &str) -> Result<String, Outcome> {
        if let Backend::Systemd = self.backend {
            if self.status.is_none() || phase == "after" {
                self.status = Some(self.execute(&["timedatectl", "status"], false)?);
            }
            let status = self.status.clone().unwrap_or_default();
            let pattern = if key == "hwclock" {
                r"(?m)^\s*RTC in local TZ\s*:\s*([^\s]+)"
            } else {
                r"(?m)^\s*Time ?zone\s*:\s*([^\s]+)"
            };
            let value = first_group(pattern, &status).unwrap_or_default();
            if key == "hwclock" {
                let local = super::parse_bool(&Value::from(value.as_str())).unwrap_or(false);
                return Ok(if local { "local" } else { "UTC" }.into());
            }
            return Ok(value);
        }
        let mut value = self.read_config(key, phase)?;
        if value != planned {
            return Ok(value);
        }
        if key == "hwclock" {
            return self.read_config("adjtime", phase);
        }
        let localtime = Path::new("/etc/localtime");
        if localtime.is_symlink() {
            value = match std::fs::read_link(localtime) {
                Ok(target) if localtime.exists() => {
                    let target = target.display().to_string();
                    match first_group(r"(?:/(?:usr/share|etc)/zoneinfo/)(.*)", &target) {
                        Some(linked) if linked != planned => linked,
                        Some(_) => value,
                        None => "n/a".into(),
                    }
                }
                _ => "n/a".into(),
            };
        } else {
            let same = std::fs::read(localtime).ok()
                == std::fs::read(format!("/usr/share/zoneinfo/{planned}")).ok();
            if !same || !localtime.exists() {
                return Ok("n/a".into());
            }
        }
        Ok(value)
    }

    fn edit(&mut self, file: &str, pattern: &str, value: &str, key: &str) -> Result<(), Outcome> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(_) => {
                return Err(abort(
                    &format!(
                        "tried to configure {key} using a file \"{file}\", but could not read it"
                    ),
                    &self.msgs,
                ))
            }
        };
        let (new_text, deleted) = edit_config(&text, pattern, value);
        if std::fs::write(file, new_text).is_err() {
            return Err(abort(
                &format!(
                    "tried to configure {key} using a file \"{file}\", but could not write to it"
                ),
                &self.msgs,
            ));
        }
        self.msgs.push(format!(
            "Added 1 line and deleted {deleted} line(s) on {file}"
        ));
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), Outcome> {
        match (&self.backend, key) {
            (Backend::Systemd, "hwclock") => {
                let flag = if value == "local" { "yes" } else { "no" };
                self.execute(&["timedatectl", "set-local-rtc", flag], true)?;
            }
            (Backend::Systemd, _) => {
                self.execute(&["timedatectl", "set-timezone", value], true)?;
            }
            (_, "hwclock") => {
                let (option, utc) = if value == "local" {
                    ("--localtime", "no")
                } else {
                    ("--utc", "yes")
                };
                let file = self.hwclock_file();
                self.edit(file, HWCLOCK_CONF, &format!("UTC={utc}\n"), "hwclock")?;
                self.execute(&["hwclock", "--systohc", option], true)?;
            }
            (backend, _) => {
                let (file, pattern) = self.name_file();
                let line = match backend {
                    Backend::Sysconfig => format!("ZONE=\"{value}\"\n"),
                    _ => format!("{value}\n"),
                };
                self.edit(file, pattern, &line, "name")?;
                let tzfile = format!("/usr/share/zoneinfo/{value}");
                if let Backend::Debian = self.backend {
                    self.execute(&["ln", "-sf", &tzfile, "/etc/localtime"], false)?;
                    self.execute(
                        &["dpkg-reconfigure", "--frontend", "noninteractive", "tzdata"],
                        false,
                    )?;
                } else {
                    self.execute(
                        &["cp", "--remove-destination", &tzfile, "/etc/localtime"],
                        false,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn values(pairs: &[(String, String)]) -> Value {
    Value::from_pairs(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone()))),
    )
}

/// `timezone`: sets the time zone and/or the hardware clock's scale.
pub fn timezone(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["hwclock", "rtc", "name"])?;
    let hwclock = match args.str_any(&["hwclock", "rtc"]) {
        None => None,
        Some(v) if v == "local" || v == "UTC" => Some(v),
        Some(v) => {
            return Err(ArgError::Invalid(format!(
                "value of hwclock must be one of: local, UTC, got: {v}"
            )))
        }
    };
    let name = args.str("name");
    if hwclock.is_none() && name.is_none() {
        return Err(ArgError::Invalid(
            "one of the following is required: hwclock, name".into(),
        ));
    }
    let systemd = which("timedatectl").is_some_and(|_| run("timedatectl", &[], &[], None).ok());
    let backend = if systemd {
        Backend::Systemd
    } else if which("dpkg-reconfigure").is_some() {
        Backend::Debian
    } else {
        Backend::Sysconfig
    };
    let mut tz = Timezone {
        backend,
        msgs: Vec::new(),
        status: None,
        env: ctx.environment.clone(),
    };
    if let Some(zone) = &name {
        if !Path::new(&format!("/usr/share/zoneinfo/{zone}")).is_file() {
            return Ok(abort(
                &format!("given timezone \"{zone}\" is not available"),
                &tz.msgs,
            ));
        }
    }
    if !systemd && which("hwclock").is_none() {
        return Ok(super::nodejs::missing_executable("hwclock"));
    }
    let planned: Vec<(String, String)> = [("hwclock", hwclock), ("name", name)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
    let run_all = (|| -> Result<Outcome, Outcome> {
        let mut before = Vec::new();
        for (key, want) in &planned {
            before.push((key.clone(), tz.get(key, "before", want)?));
        }
        let after = if ctx.check {
            planned.clone()
        } else {
            for ((key, want), (_, was)) in planned.iter().zip(&before) {
                if was != want {
                    tz.set(key, want)?;
                }
            }
            let mut after = Vec::new();
            for (key, want) in &planned {
                after.push((key.clone(), tz.get(key, "after", want)?));
            }
            if after != planned {
                let show = |pairs: &[(String, String)]| {
                    let inner: Vec<String> =
                        pairs.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
                    format!("{{{}}}", inner.join(", "))
                };
                return Err(abort(
                    &format!(
                        "still not desired state, though changes have made - planned: {}, after: {}",
                        show(&planned),
                        show(&after)
                    ),
                    &tz.msgs,
                ));
            }
            after
        };
        let mut out = Outcome::new().with("changed", before != after).with(
            "diff",
            Value::from_pairs([("before", values(&before)), ("after", values(&after))]),
        );
        if !tz.msgs.is_empty() {
            out.set("msg", tz.msgs.join("\n"));
        }
        Ok(out)
    })();
    Ok(run_all.unwrap_or_else(|failure| failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first matching line is replaced, later ones are deleted; without a match the
    /// value goes on top.
    #[test]
    fn edit_config_replaces_first_and_deletes_others() {
        assert_eq!(
            edit_config("# c\nUTC=no\nX=1\nUTC=yes\n", HWCLOCK_CONF, "UTC=yes\n"),
            ("# c\nUTC=yes\nX=1\n".to_string(), 2)
        );
        assert_eq!(
            edit_config("X=1\n", HWCLOCK_CONF, "UTC=no\n"),
            ("UTC=no\nX=1\n".to_string(), 0)
        );
        assert_eq!(
            edit_config("Etc/UTC\n", NAME_DEBIAN, "Europe/Paris\n"),
            ("Europe/Paris\n".to_string(), 1)
        );
        assert_eq!(
            first_group(NAME_REDHAT, "ZONE=\"America/New_York\"\n").as_deref(),
            Some("America/New_York")
        );
    }
}
