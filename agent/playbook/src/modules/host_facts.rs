//! Modules that only read the host and return facts: `ansible.builtin.getent` (the
//! name service databases, through the `getent` program as Ansible's module runs it)
//! and `ansible.builtin.service_facts` (the services the init system knows).
//!
//! Both return `ansible_facts`; the engine keeps those for the rest of the run.

use minijinja::Value;

use super::exec::{run, which};
use super::nodejs::missing_executable;
use super::{ArgError, Args, ModuleContext, Outcome};

/// Splits one `getent` line like Python's `str.split(sep)`: on every occurrence of
/// `sep`, or on runs of whitespace (empty fields dropped) when there is none.
pub fn python_split(line: &str, sep: Option<&str>) -> Vec<String> {
    match sep {
        Some(sep) if !sep.is_empty() => line.split(sep).map(String::from).collect(),
        _ => line.split_whitespace().map(String::from).collect(),
    }
}

/// Ansible's `getent` result dict for a successful lookup: each record keyed by its
/// first field; a key seen again turns its entry into a list of records.
pub fn getent_tree(output: &str, sep: Option<&str>) -> Value {
    let mut entries: Vec<(String, Vec<Value>, usize)> = Vec::new();
    for line in output.lines() {
        let mut record = python_split(line, sep);
        if record.is_empty() {
            // Python's "".split(None) is [] and record[0] raises; getent prints no
            // such line.
            continue;
        }
        let key = record.remove(0);
        let fields = Value::from(record);
        match entries.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => {
                entry.1.push(fields);
                entry.2 += 1;
            }
            None => entries.push((key, vec![fields], 1)),
        }
    }
    Value::from_pairs(entries.into_iter().map(|(key, mut records, seen)| {
        let value = if seen == 1 {
            records.remove(0)
        } else {
            Value::from(records)
        };
        (key, value)
    }))
}

/// `getent`: one name service database (or one key of it) as facts `getent_DATABASE`.
pub fn getent(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["database", "key", "service", "split", "fail_key"])?;
    let database = args.required("database")?;
    let key = args.str("key");
    let service = args.str("service");
    let mut split = args.str("split");
    let fail_key = args.bool("fail_key", true)?;
    if which("getent").is_none() {
        return Ok(missing_executable("getent"));
    }
    let mut command: Vec<&str> = vec![&database];
    if let Some(key) = &key {
        command.push(key);
    }
    if let Some(service) = &service {
        command.extend(["-s", service]);
    }
    if split.is_none() && ["passwd", "shadow", "group", "gshadow"].contains(&database.as_str()) {
        split = Some(":".into());
    }
    let result = run("getent", &command, &ctx.environment, None);
    let tree = format!("getent_{database}");
    let msg = match result.rc {
        0 => {
            let facts = Value::from_pairs([(tree, getent_tree(&result.stdout, split.as_deref()))]);
            return Ok(Outcome::new().with("ansible_facts", facts));
        }
        1 => "Missing arguments, or database unknown.",
        2 => {
            let msg = "One or more supplied key could not be found in the database.";
            if !fail_key {
                let entry =
                    Value::from_pairs([(key.unwrap_or_else(|| "None".into()), Value::from(()))]);
                return Ok(Outcome::new()
                    .with("ansible_facts", Value::from_pairs([(tree, entry)]))
                    .with("msg", msg));
            }
            msg
        }
        3 => "Enumeration not supported on this database.",
        _ => "Unexpected failure!",
    };
    Ok(Outcome::failed(msg))
}

/// Services from `service --status-all` (`[ + ]  name` running, `[ - ]` stopped; `[ ? ]`
/// lines are not services to Ansible's pattern).
pub fn parse_sysv_status(stdout: &str) -> Vec<(String, Value)> {
    let re = regex::Regex::new(r"(?m)^\s*\[ (?P<state>\+|\-) \]\s+(?P<name>.+)$").expect("valid");
    re.captures_iter(stdout)
        .map(|c| {
            let name = c["name"].to_string();
            let state = if &c["state"] == "+" {
                "running"
            } else {
                "stopped"
            };
            let service = Value::from_pairs([
                ("name", Value::from(name.clone())),
                ("state", Value::from(state)),
                ("source", Value::from("sysv")),
            ]);
            (name, service)
        })
        .collect()
}

const BAD_STATES: &[&str] = &["not-found", "masked", "failed"];

/// Services from `systemctl list-units --type service --all --plain`, as Ansible's
/// `_list_from_units` reads them.
pub fn parse_systemd_units(stdout: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for line in stdout.split('\n').filter(|l| l.contains(".service")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        let head = &fields[..fields.len() - 1];
        let status = BAD_STATES
            .iter()
            .find(|bad| head.contains(bad))
            .copied()
            .unwrap_or(fields[2]);
        let state = if fields[3] == "running" {
            "running"
        } else {
            "stopped"
        };
        out.push((
            fields[0].to_string(),
            vec![
                ("name", fields[0].to_string()),
                ("state", state.to_string()),
                ("status", status.to_string()),
                ("source", "systemd".to_string()),
            ],
        ));
    }
    out.into_iter()
        .map(|(name, fields)| (name, Value::from_pairs(fields)))
        .collect()
}

/// Ansible's `is_systemd_managed`: systemctl exists and systemd booted the machine.
fn systemd_managed() -> bool {
    if which("systemctl").is_none() {
        return false;
    }
    if [
        "/run/systemd/system/",
        "/dev/.run/systemd/",
        "/dev/.systemd/",
    ]
    .iter()
    .any(|canary| std::path::Path::new(canary).exists())
    {
        return true;
    }
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|comm| comm.trim() == "systemd")
}

fn set_service(services: &mut Vec<(String, Value)>, name: String, service: Value) {
    match services.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = service,
        None => services.push((name, service)),
    }
}

/// `service_facts`: the services of the SysV `service` tool and of systemd, as facts
/// `services` (SysV first, systemd's entries override them like Ansible's scanners).
pub fn service_facts(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[])?;
    let mut env = ctx.environment.clone();
    env.push(("LANG".into(), "C".into()));
    env.push(("LC_ALL".into(), "C".into()));
    let mut services: Vec<(String, Value)> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    // Ansible scans SysV only where neither chkconfig nor OpenRC exist; those are Red
    // Hat and Gentoo tools the native runtime does not read.
    if which("service").is_some() && which("chkconfig").is_none() && which("rc-status").is_none() {
        let r = run("service", &["--status-all"], &env, None);
        let skip = r.rc == 4 && !std::path::Path::new("/etc/init.d").exists();
        if !skip {
            if r.rc != 0 {
                warnings.push(format!(
                    "Unable to query 'service' tool ({}): {}",
                    r.rc, r.stderr
                ));
            }
            for (name, service) in parse_sysv_status(&r.stdout) {
                set_service(&mut services, name, service);
            }
        }
    }
    if systemd_managed() {
        let units = run(
            "systemctl",
            &[
                "list-units",
                "--no-pager",
                "--type",
                "service",
                "--all",
                "--plain",
            ],
            &env,
            None,
        );
        if units.rc != 0 {
            warnings.push(format!(
                "Could not list units from systemd: {}",
                units.stderr
            ));
        } else {
            for (name, service) in parse_systemd_units(&units.stdout) {
                set_service(&mut services, name, service);
            }
        }
        let files = run(
            "systemctl",
            &[
                "list-unit-files",
                "--no-pager",
                "--type",
                "service",
                "--all",
            ],
            &env,
            None,
        );
        if files.rc != 0 {
            warnings.push(format!(
                "Could not get unit files data from systemd: {}",
                files.stderr
            ));
        } else {
            for line in files.stdout.split('\n').filter(|l| l.contains(".service")) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 2 {
                    return Ok(Outcome::failed(format!(
                        "Malformed output discovered from systemd list-unit-files: {line}"
                    )));
                }
                let (name, status) = (fields[0], fields[1]);
                let known = services.iter().position(|(k, _)| k == name);
                match known {
                    None => {
                        let show = run(
                            "systemctl",
                            &["show", name, "--property=ActiveState"],
                            &env,
                            None,
                        );
                        let state = if show.rc == 0 && !show.stdout.is_empty() {
                            show.stdout
                                .replace("ActiveState=", "")
                                .trim_end()
                                .to_string()
                        } else {
                            "unknown".into()
                        };
                        services.push((
                            name.to_string(),
                            Value::from_pairs([
                                ("name", Value::from(name)),
                                ("state", Value::from(state)),
                                ("status", Value::from(status)),
                                ("source", Value::from("systemd")),
                            ]),
                        ));
                    }
                    Some(index) => {
                        let entry = services[index].1.clone();
                        let current = entry
                            .get_attr("status")
                            .ok()
                            .and_then(|s| s.as_str().map(String::from))
                            .unwrap_or_default();
                        if !BAD_STATES.contains(&current.as_str()) {
                            let mut updated = Outcome::from_value(&entry);
                            updated.set("status", status);
                            services[index].1 = updated.to_value();
                        }
                    }
                }
            }
        }
    }
    let mut out = if services.is_empty() {
        Outcome::new().with("skipped", true).with(
            "msg",
            "Failed to find any services. This can be due to privileges or some other configuration issue.",
        )
    } else {
        Outcome::new().with(
            "ansible_facts",
            Value::from_pairs([("services", Value::from_pairs(services))]),
        )
    };
    if !warnings.is_empty() {
        out.set("warnings", warnings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records split on the separator; a repeated key collects its records in a list.
    #[test]
    fn getent_records() {
        let tree = getent_tree("root:x:0:\ndocker:x:999:a,b\n", Some(":"));
        assert_eq!(
            tree.get_attr("docker").unwrap().to_string(),
            "['x', '999', 'a,b']"
        );
        let tree = getent_tree("127.0.0.1  localhost\n127.0.0.1 other\n", None);
        assert_eq!(
            tree.get_attr("127.0.0.1").unwrap().to_string(),
            "[['localhost'], ['other']]"
        );
    }

    /// `[ ? ]` lines are left out; `+` is running.
    #[test]
    fn sysv_status() {
        let services = parse_sysv_status(" [ - ]  cron\n [ ? ]  hwclock.sh\n [ + ]  ssh\n");
        let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cron", "ssh"]);
        assert_eq!(
            services[1].1.get_attr("state").unwrap().as_str(),
            Some("running")
        );
    }
}
