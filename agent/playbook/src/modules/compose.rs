//! `community.docker.docker_compose_v2` through the Docker Compose CLI
//! (`docker compose`, or the standalone `docker-compose`).
//!
//! Like the collection's module, `changed` comes from the events Compose prints
//! (Creating/Created/Starting/Started/Recreated/Stopping/Removing...); image pulls do
//! not count for `up`. Check mode uses Compose's own `--dry-run`.

use super::exec::{run, which, Run};
use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;

/// Compose event verbs that mean something changed.
const CHANGE_EVENTS: &[&str] = &[
    "Creating",
    "Created",
    "Starting",
    "Started",
    "Recreate",
    "Recreated",
    "Recreating",
    "Stopping",
    "Stopped",
    "Removing",
    "Removed",
    "Restarting",
    "Restarted",
    "Killing",
    "Killed",
    "Building",
    "Built",
];

/// Parses Compose's progress output into (resource kind, name, verb) events; both the
/// v2 plugin (` Container web-1  Started`) and the v1 tool (`Creating web_1 ... done`).
pub fn parse_events(output: &str) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let v1_verb = matches!(
            words.first().copied(),
            Some(
                "Creating"
                    | "Recreating"
                    | "Starting"
                    | "Stopping"
                    | "Removing"
                    | "Restarting"
                    | "Killing"
                    | "Pulling"
                    | "Building"
            )
        );
        if v1_verb
            && (line.contains(" ... ")
                || line.trim_end().ends_with("...")
                || words.get(1) == Some(&"network")
                || words.get(1) == Some(&"volume"))
        {
            let (kind, name) = match words.get(1).copied() {
                Some("network") => ("Network", words.get(2).copied().unwrap_or_default()),
                Some("volume") => ("Volume", words.get(2).copied().unwrap_or_default()),
                Some(name) if words[0] == "Pulling" => ("Image", name),
                Some(name) => ("Container", name),
                None => continue,
            };
            let name = name.trim_matches('"').trim_end_matches(" ...").to_string();
            if !events.iter().any(|(k, n, v): &(String, String, String)| {
                k == kind && *n == name && v == words[0]
            }) {
                events.push((kind.to_string(), name, words[0].to_string()));
            }
            continue;
        }
        // Forms: " Container web-1  Started", " ✔ Container web-1  Started  0.3s", "DRY-RUN MODE - Container x Created"
        let start = words
            .iter()
            .position(|w| matches!(*w, "Container" | "Network" | "Volume" | "Image"));
        let Some(start) = start else { continue };
        if words.len() < start + 3 {
            continue;
        }
        let verb = words[start + 2];
        events.push((
            words[start].to_string(),
            words[start + 1].to_string(),
            verb.to_string(),
        ));
    }
    events
}

/// Whether the events of an operation mean a change.
pub fn events_changed(events: &[(String, String, String)]) -> bool {
    events
        .iter()
        .any(|(kind, _, verb)| kind != "Image" && CHANGE_EVENTS.contains(&verb.as_str()))
}

/// The Compose command and whether it is the v1 `docker-compose` tool.
fn compose_base() -> Option<(Vec<String>, bool)> {
    if let Some(docker) = which("docker") {
        let docker = docker.display().to_string();
        if run(&docker, &["compose", "version"], &[], None).ok() {
            return Some((vec![docker, "compose".into()], false));
        }
    }
    let standalone = which("docker-compose")?.display().to_string();
    let version = run(&standalone, &["version", "--short"], &[], None).stdout;
    let v1 = version.trim().starts_with("1.");
    Some((vec![standalone], v1))
}

/// Runs `base + args` and returns the result.
fn compose_run(base: &[String], args: &[String], ctx: &ModuleContext) -> Run {
    let refs: Vec<&str> = base
        .iter()
        .skip(1)
        .chain(args.iter())
        .map(String::as_str)
        .collect();
    run(&base[0], &refs, &ctx.environment, None)
}

fn lines_of(r: &Run) -> Vec<String> {
    r.stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The `up` flags both compose tools share: build, recreate, orphans, dependencies.
fn push_up_flags(args: &Args, up: &mut Vec<String>) -> Result<(), ArgError> {
    match args
        .choice("build", &["always", "never", "policy"], Some("policy"))?
        .as_deref()
    {
        Some("always") => up.push("--build".into()),
        Some("never") => up.push("--no-build".into()),
        _ => {}
    }
    match args
        .choice("recreate", &["always", "never", "auto"], Some("auto"))?
        .as_deref()
    {
        Some("always") => up.push("--force-recreate".into()),
        Some("never") => up.push("--no-recreate".into()),
        _ => {}
    }
    if args.bool("remove_orphans", false)? {
        up.push("--remove-orphans".into());
    }
    if !args.bool("dependencies", true)? {
        up.push("--no-deps".into());
    }
    Ok(())
}

/// `docker_compose_v2`.
pub fn compose(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "project_src",
        "project_name",
        "files",
        "env_files",
        "profiles",
        "state",
        "pull",
        "build",
        "recreate",
        "remove_orphans",
        "remove_images",
        "remove_volumes",
        "services",
        "scale",
        "wait",
        "wait_timeout",
        "timeout",
        "dependencies",
        "definition",
        "docker_cli",
        "docker_host",
        "tls_hostname",
        "api_version",
        "check_files_existing",
        "ignore_build_events",
        "assume_yes",
        "degraded",
    ])?;
    let state = args
        .choice(
            "state",
            &["present", "stopped", "restarted", "absent"],
            Some("present"),
        )?
        .unwrap_or_default();
    let (mut base, v1) =
        match args.str("docker_cli") {
            Some(cli) => (vec![cli, "compose".into()], false),
            None => match compose_base() {
                Some(b) => b,
                None => return Ok(Outcome::failed(
                    "Docker Compose was not found (neither `docker compose` nor `docker-compose`)",
                )),
            },
        };
    base.extend(["--ansi".into(), "never".into()]);
    let mut definition_file = None;
    if let Some(definition) = args.get("definition") {
        let name = args
            .str("project_name")
            .ok_or_else(|| ArgError::Invalid("project_name is required with definition".into()))?;
        let dir =
            std::env::temp_dir().join(format!("dynserv-compose-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| ArgError::Invalid(e.to_string()))?;
        let file = dir.join("compose.yaml");
        let json =
            serde_json::to_value(&definition).map_err(|e| ArgError::Invalid(e.to_string()))?;
        let text = crate::yaml::to_yaml_text(&json).map_err(ArgError::Invalid)?;
        std::fs::write(&file, text).map_err(|e| ArgError::Invalid(e.to_string()))?;
        base.extend([
            "--project-directory".into(),
            dir.display().to_string(),
            "-f".into(),
            file.display().to_string(),
        ]);
        definition_file = Some(dir);
    } else {
        let src = args.str("project_src").ok_or_else(|| {
            ArgError::Invalid("one of the following is required: project_src, definition".into())
        })?;
        if !std::path::Path::new(&src).is_dir() {
            return Ok(Outcome::failed(format!("\"{src}\" is not a directory")));
        }
        base.extend(["--project-directory".into(), src.clone()]);
        for file in args.list("files") {
            let path = if file.starts_with('/') {
                file
            } else {
                format!("{src}/{file}")
            };
            base.extend(["-f".into(), path]);
        }
    }
    if let Some(name) = args.str("project_name") {
        base.extend(["-p".into(), name]);
    }
    for env_file in args.list("env_files") {
        base.extend(["--env-file".into(), env_file]);
    }
    for profile in args.list("profiles") {
        base.extend(["--profile".into(), profile]);
    }
    let services = args.list("services");
    if v1 {
        return compose_v1(args, ctx, &base, &state, &services);
    }
    if ctx.check {
        base.push("--dry-run".into());
    }
    let mut sub: Vec<String> = Vec::new();
    match state.as_str() {
        "present" => {
            sub.extend([
                "up".into(),
                "--detach".into(),
                "--no-color".into(),
                "--quiet-pull".into(),
            ]);
            match args
                .choice(
                    "pull",
                    &["always", "missing", "never", "policy"],
                    Some("policy"),
                )?
                .as_deref()
            {
                Some("always") => sub.extend(["--pull".into(), "always".into()]),
                Some("missing") => sub.extend(["--pull".into(), "missing".into()]),
                Some("never") => sub.extend(["--pull".into(), "never".into()]),
                _ => {}
            }
            push_up_flags(args, &mut sub)?;
            if args.bool("wait", false)? {
                sub.push("--wait".into());
                if let Some(t) = args.int("wait_timeout")? {
                    sub.extend(["--wait-timeout".into(), t.to_string()]);
                }
            }
            if let Some(t) = args.int("timeout")? {
                sub.extend(["--timeout".into(), t.to_string()]);
            }
            if let Some(scale) = args.get("scale") {
                if let Ok(keys) = scale.try_iter() {
                    for key in keys {
                        let n = scale
                            .get_item(&key)
                            .map(|v| super::value_to_string(&v))
                            .unwrap_or_default();
                        sub.extend([
                            "--scale".into(),
                            format!("{}={n}", super::value_to_string(&key)),
                        ]);
                    }
                }
            }
        }
        "stopped" => {
            // Nothing to stop when no container of the project is running.
            let mut ps = base.clone();
            ps.retain(|a| a != "--dry-run");
            ps.extend([
                "ps".into(),
                "--quiet".into(),
                "--status".into(),
                "running".into(),
            ]);
            ps.extend(services.iter().cloned());
            let refs: Vec<&str> = ps.iter().skip(1).map(String::as_str).collect();
            let r = run(&ps[0], &refs, &ctx.environment, None);
            if r.ok() && r.stdout.trim().is_empty() {
                return Ok(Outcome::new().with("actions", Value::from(Vec::<Value>::new())));
            }
            sub.push("stop".into());
            if let Some(t) = args.int("timeout")? {
                sub.extend(["--timeout".into(), t.to_string()]);
            }
        }
        "restarted" => {
            sub.push("restart".into());
            if let Some(t) = args.int("timeout")? {
                sub.extend(["--timeout".into(), t.to_string()]);
            }
        }
        _ => {
            sub.push("down".into());
            if args.bool("remove_orphans", false)? {
                sub.push("--remove-orphans".into());
            }
            if args.bool("remove_volumes", false)? {
                sub.push("--volumes".into());
            }
            if let Some(images) = args.choice("remove_images", &["all", "local"], None)? {
                sub.extend(["--rmi".into(), images]);
            }
            if let Some(t) = args.int("timeout")? {
                sub.extend(["--timeout".into(), t.to_string()]);
            }
        }
    }
    if state != "absent" {
        sub.extend(services.iter().cloned());
    }
    let mut argv = base.clone();
    argv.extend(sub);
    let refs: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let r: Run = run(&argv[0], &refs, &ctx.environment, None);
    if let Some(dir) = definition_file {
        let _ = std::fs::remove_dir_all(dir);
    }
    let output = format!("{}\n{}", r.stdout, r.stderr);
    let events = parse_events(&output);
    let actions: Vec<Value> = events
        .iter()
        .map(|(kind, name, verb)| {
            Value::from_pairs([
                ("what", kind.as_str()),
                ("id", name.as_str()),
                ("status", verb.as_str()),
            ])
        })
        .collect();
    if !r.ok() {
        return Ok(Outcome::failed(format!(
            "Error when processing {}: {}",
            state,
            r.stderr.trim()
        ))
        .with("rc", r.rc)
        .with("stdout", r.stdout)
        .with("stderr", r.stderr)
        .with("cmd", argv.join(" ")));
    }
    Ok(Outcome::new()
        .with("changed", events_changed(&events))
        .with("actions", Value::from(actions))
        .with("rc", r.rc)
        .with("stdout", r.stdout)
        .with("stderr", r.stderr))
}

/// The same operations through the v1 `docker-compose` tool, which has no `--dry-run`:
/// check mode compares the running services with the configured ones instead.
fn compose_v1(
    args: &Args,
    ctx: &ModuleContext,
    base: &[String],
    state: &str,
    services: &[String],
) -> Result<Outcome, ArgError> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let running = lines_of(&compose_run(
        base,
        &s(&["ps", "--services", "--filter", "status=running"]),
        ctx,
    ));
    let existing = lines_of(&compose_run(base, &s(&["ps", "-q"]), ctx));
    let mut configured = lines_of(&compose_run(base, &s(&["config", "--services"]), ctx));
    if !services.is_empty() {
        configured.retain(|c| services.contains(c));
    }
    let selected_running: Vec<&String> = running
        .iter()
        .filter(|r| services.is_empty() || services.contains(r))
        .collect();
    if ctx.check {
        let changed = match state {
            "present" => configured.iter().any(|c| !running.contains(c)),
            "stopped" => !selected_running.is_empty(),
            "restarted" => true,
            _ => !existing.is_empty(),
        };
        return Ok(Outcome::new().with("changed", changed));
    }
    let sub: Vec<String> = match state {
        "present" => {
            if args
                .choice(
                    "pull",
                    &["always", "missing", "never", "policy"],
                    Some("policy"),
                )?
                .as_deref()
                == Some("always")
            {
                let mut pull = s(&["pull", "--quiet"]);
                pull.extend(services.iter().cloned());
                let r = compose_run(base, &pull, ctx);
                if !r.ok() {
                    return Ok(Outcome::failed(format!(
                        "Error when pulling: {}",
                        r.stderr.trim()
                    )));
                }
            }
            let mut up = s(&["up", "--detach", "--no-color"]);
            push_up_flags(args, &mut up)?;
            up.extend(services.iter().cloned());
            up
        }
        "stopped" => {
            if selected_running.is_empty() {
                return Ok(Outcome::new());
            }
            let mut stop = s(&["stop"]);
            stop.extend(services.iter().cloned());
            stop
        }
        "restarted" => {
            let mut restart = s(&["restart"]);
            restart.extend(services.iter().cloned());
            restart
        }
        _ => {
            if existing.is_empty() {
                return Ok(Outcome::new());
            }
            let mut down = s(&["down"]);
            if args.bool("remove_orphans", false)? {
                down.push("--remove-orphans".into());
            }
            if args.bool("remove_volumes", false)? {
                down.push("--volumes".into());
            }
            if let Some(images) = args.choice("remove_images", &["all", "local"], None)? {
                down.extend(["--rmi".into(), images]);
            }
            down
        }
    };
    let r = compose_run(base, &sub, ctx);
    let events = parse_events(&format!("{}\n{}", r.stdout, r.stderr));
    if !r.ok() {
        return Ok(Outcome::failed(format!(
            "Error when processing {state}: {}",
            r.stderr.trim()
        ))
        .with("rc", r.rc)
        .with("stderr", r.stderr));
    }
    let actions: Vec<Value> = events
        .iter()
        .map(|(kind, name, verb)| {
            Value::from_pairs([
                ("what", kind.as_str()),
                ("id", name.as_str()),
                ("status", verb.as_str()),
            ])
        })
        .collect();
    Ok(Outcome::new()
        .with("changed", events_changed(&events))
        .with("actions", Value::from(actions))
        .with("rc", r.rc)
        .with("stdout", r.stdout)
        .with("stderr", r.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compose progress lines become events; only real changes count.
    #[test]
    fn compose_events() {
        let running = " Container app-web-1  Running\n Network app_default  Created\n";
        assert!(events_changed(&parse_events(running)));
        let idle = " Container app-web-1  Running\n Container app-db-1  Running\n";
        assert!(!events_changed(&parse_events(idle)));
        let pulled = " ✔ Image nginx:1.27 Pulled  1.2s\n";
        assert!(!events_changed(&parse_events(pulled)));
        let dry = "DRY-RUN MODE -  Container app-web-1  Recreate\n";
        assert!(events_changed(&parse_events(dry)));
        let v1 = "Creating network \"p_default\" with the default driver\nCreating p_app_1 ... \nCreating p_app_1 ... done\n";
        assert_eq!(parse_events(v1).len(), 2);
        assert!(events_changed(&parse_events(v1)));
        assert!(!events_changed(&parse_events("p_app_1 is up-to-date\n")));
    }
}
