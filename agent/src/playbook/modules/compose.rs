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

/// Parses Compose's progress output into (resource kind, name, verb) events.
pub fn parse_events(output: &str) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
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

fn compose_base() -> Option<Vec<String>> {
    if let Some(docker) = which("docker") {
        let docker = docker.display().to_string();
        if run(&docker, &["compose", "version"], &[], None).ok() {
            return Some(vec![docker, "compose".into()]);
        }
    }
    which("docker-compose").map(|p| vec![p.display().to_string()])
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
    let mut base =
        match args.str("docker_cli") {
            Some(cli) => vec![cli, "compose".into()],
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
        let text =
            serde_yaml::to_string(&definition).map_err(|e| ArgError::Invalid(e.to_string()))?;
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
    if ctx.check {
        base.push("--dry-run".into());
    }
    let services = args.list("services");
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
            match args
                .choice("build", &["always", "never", "policy"], Some("policy"))?
                .as_deref()
            {
                Some("always") => sub.push("--build".into()),
                Some("never") => sub.push("--no-build".into()),
                _ => {}
            }
            match args
                .choice("recreate", &["always", "never", "auto"], Some("auto"))?
                .as_deref()
            {
                Some("always") => sub.push("--force-recreate".into()),
                Some("never") => sub.push("--no-recreate".into()),
                _ => {}
            }
            if args.bool("remove_orphans", false)? {
                sub.push("--remove-orphans".into());
            }
            if !args.bool("dependencies", true)? {
                sub.push("--no-deps".into());
            }
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
    }
}
