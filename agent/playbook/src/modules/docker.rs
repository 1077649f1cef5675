//! `community.docker.docker_image` and `community.docker.docker_container`, through
//! the `docker` command line (Ansible's modules talk to the daemon's API directly).
//!
//! docker_image follows community.docker 4's decisions: an image already there is
//! left alone unless `force_source`; a missing one is pulled (`source: pull`) or is a
//! failure (`source: local`); in check mode nothing is pulled or removed and the
//! result says what would be done. Building, loading, archiving, tagging and pushing
//! are not implemented natively and fail saying so.
//!
//! docker_container covers the common core: `name`, `image`, `command`, `state`
//! (`absent`, `present`, `started`, `stopped`), `pull`, `recreate`, `restart`. A
//! container whose image differs from the wanted one is recreated, as Ansible's
//! default `image_name_mismatch: recreate` does; other options (ports, volumes, env,
//! ...) fail saying they are not implemented natively rather than being ignored.

use minijinja::Value;

use super::exec::{run, which, Run};
use super::nodejs::missing_executable;
use super::{ArgError, Args, ModuleContext, Outcome};

/// Whether `name` is an image ID (`sha256:` and 64 hex digits, or the bare digits).
pub fn is_image_name_id(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Docker's `parse_repository_tag`: `repo@digest`, `repo:tag` (a colon after the last
/// slash), or a bare repository.
pub fn parse_repository_tag(name: &str) -> (String, Option<String>) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo.to_string(), Some(digest.to_string()));
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
        _ => (name.to_string(), None),
    }
}

/// community.docker's `is_valid_tag` (empty allowed).
pub fn is_valid_tag(tag: &str) -> bool {
    tag.is_empty()
        || regex::Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}$")
            .expect("valid")
            .is_match(tag)
}

fn docker(args: &[&str], ctx: &ModuleContext) -> Run {
    run("docker", args, &ctx.environment, None)
}

/// The daemon's words in a `docker` CLI error.
fn daemon_error(r: &Run) -> String {
    let text = r.stderr.trim();
    text.strip_prefix("Error response from daemon: ")
        .unwrap_or(text)
        .to_string()
}

/// The daemon's API version, or Ansible's failure when the daemon cannot be reached.
fn api_version(ctx: &ModuleContext) -> Result<String, Outcome> {
    if which("docker").is_none() {
        return Err(missing_executable("docker"));
    }
    let r = docker(&["version", "--format", "{{.Server.APIVersion}}"], ctx);
    if r.rc != 0 || r.stdout.trim().is_empty() {
        return Err(Outcome::failed(format!(
            "Error connecting: Error while fetching server API version: {}",
            daemon_error(&r)
        )));
    }
    Ok(r.stdout.trim().to_string())
}

/// `docker image inspect` of one reference, if the image exists.
fn inspect_image(reference: &str, ctx: &ModuleContext) -> Option<Value> {
    let r = docker(&["image", "inspect", reference], ctx);
    if r.rc != 0 {
        return None;
    }
    first_of_json_array(&r.stdout)
}

fn first_of_json_array(text: &str) -> Option<Value> {
    let parsed: serde_json::Value = serde_json::from_str(text).ok()?;
    let first = parsed.as_array()?.first()?.clone();
    Some(crate::filters::json_to_value(&first))
}

fn field_str(value: &Value, path: &[&str]) -> Option<String> {
    let mut current = value.clone();
    for key in path {
        current = current.get_attr(key).ok()?;
        if current.is_undefined() || current.is_none() {
            return None;
        }
    }
    current.as_str().map(String::from)
}

/// `docker_image`: makes an image present (pulled, or found locally) or absent.
pub fn docker_image(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    const IMAGE_ARGS: &[&str] = &[
        "source",
        "build",
        "archive_path",
        "force_source",
        "force_absent",
        "force_tag",
        "load_path",
        "name",
        "pull",
        "push",
        "repository",
        "state",
        "tag",
    ];
    args.check_supported(&[IMAGE_ARGS, CONNECTION_ARGS].concat())?;
    let name = args.required("name")?;
    let source = args.choice("source", &["build", "load", "pull", "local"], None)?;
    let state = args
        .choice("state", &["absent", "present"], Some("present"))?
        .unwrap_or_default();
    let force_source = args.bool("force_source", false)?;
    let force_absent = args.bool("force_absent", false)?;
    args.bool("force_tag", false)?;
    let push = args.bool("push", false)?;
    let mut tag = args.str("tag").unwrap_or_else(|| "latest".into());
    for (key, wanted, missing) in [
        ("state", "present", "source"),
        ("source", "build", "build"),
        ("source", "load", "load_path"),
    ] {
        let value = if key == "state" {
            Some(state.clone())
        } else {
            source.clone()
        };
        if value.as_deref() == Some(wanted) && !args.has(missing) {
            return Err(ArgError::Invalid(format!(
                "{key} is {wanted} but all of the following are missing: {missing}"
            )));
        }
    }
    if !is_valid_tag(&tag) {
        return Ok(Outcome::failed(format!(
            "\"{tag}\" is not a valid docker tag!"
        )));
    }
    if source.as_deref() == Some("build")
        && !args
            .get("build")
            .and_then(|b| b.get_attr("path").ok())
            .is_some_and(|p| !p.is_undefined() && !p.is_none())
    {
        return Ok(Outcome::failed(
            "If \"source\" is set to \"build\", the \"build.path\" option must be specified.",
        ));
    }
    let api = match api_version(ctx) {
        Ok(v) => v,
        Err(out) => return Ok(out),
    };
    let mut repo = name.clone();
    if !is_image_name_id(&name) {
        if let (r, Some(t)) = parse_repository_tag(&name) {
            repo = r;
            tag = t;
        }
    }
    if args.has("repository") || push || args.has("archive_path") {
        return Ok(Outcome::failed(
            "docker_image: repository, push and archive_path are not implemented by the native runtime",
        ));
    }
    let reference = if is_image_name_id(&repo) || tag.is_empty() {
        repo.clone()
    } else if tag.starts_with("sha256:") {
        format!("{repo}@{tag}")
    } else {
        format!("{repo}:{tag}")
    };
    let image = inspect_image(&reference, ctx);
    let mut actions: Vec<String> = Vec::new();
    let mut changed = false;
    let mut result_image = Value::from_pairs(Vec::<(String, Value)>::new());
    if state == "absent" {
        let display = if is_image_name_id(&name) || tag.is_empty() {
            name.clone()
        } else {
            format!("{repo}:{tag}")
        };
        if image.is_some() {
            if !ctx.check {
                let mut command = vec!["image", "rm"];
                if force_absent {
                    command.push("--force");
                }
                command.push(&reference);
                let r = docker(&command, ctx);
                if r.rc != 0 && !r.stderr.contains("No such image") {
                    return Ok(Outcome::failed(format!(
                        "Error removing image {display} - {}",
                        daemon_error(&r)
                    )));
                }
            }
            changed = true;
            actions.push(format!("Removed image {display}"));
            result_image = Value::from_pairs([("state", Value::from("Deleted"))]);
        }
    } else if image.is_none() || force_source {
        match source.as_deref() {
            Some("pull") => {
                if is_image_name_id(&repo) {
                    return Ok(Outcome::failed(format!(
                        "Image name must not be an image ID for source=pull; got: {repo}"
                    )));
                }
                actions.push(format!("Pulled image {repo}:{tag}"));
                changed = true;
                if !ctx.check {
                    let r = docker(&["pull", "--quiet", &reference], ctx);
                    if r.rc != 0 {
                        let reason = daemon_error(&r);
                        let (code, phrase) = if reason.contains("not found")
                            || reason.contains("does not exist")
                        {
                            ("404 Client Error", "Not Found")
                        } else {
                            ("500 Server Error", "Internal Server Error")
                        };
                        return Ok(Outcome::failed(format!(
                            "Error pulling image {repo}:{tag} - {code} for http+docker://localhost/v{api}/images/create?tag={tag}&fromImage={repo}: {phrase} (\"{reason}\")"
                        )));
                    }
                    let pulled = inspect_image(&reference, ctx);
                    if let (Some(before), Some(after)) = (&image, &pulled) {
                        if field_str(before, &["Id"]) == field_str(after, &["Id"]) {
                            changed = false;
                        }
                    }
                    if let Some(pulled) = pulled {
                        result_image = pulled;
                    }
                }
            }
            Some("local") => {
                if image.is_none() {
                    let display = if !tag.is_empty() && !is_image_name_id(&repo) {
                        format!("{repo}:{tag}")
                    } else {
                        repo.clone()
                    };
                    return Ok(Outcome::failed(format!(
                        "Cannot find the image {display} locally."
                    )));
                }
                if let Some(image) = image {
                    result_image = image;
                }
            }
            _ => {
                return Ok(Outcome::failed(
                    "docker_image: building and loading images are not implemented by the native runtime",
                ))
            }
        }
    } else if let Some(image) = image {
        result_image = image;
    }
    Ok(Outcome::new()
        .with("changed", changed)
        .with("actions", actions)
        .with("image", result_image))
}

/// The connection options every community.docker module takes: accepted, and left to
/// the `docker` CLI's own environment.
const CONNECTION_ARGS: &[&str] = &[
    "docker_host",
    "tls_hostname",
    "api_version",
    "timeout",
    "ca_path",
    "ca_cert",
    "tls_ca_cert",
    "cacert_path",
    "client_cert",
    "tls_client_cert",
    "cert_path",
    "client_key",
    "tls_client_key",
    "key_path",
    "tls",
    "use_ssh_client",
    "validate_certs",
    "tls_verify",
    "debug",
];

/// Options of docker_container the native module reads (besides [`CONNECTION_ARGS`]).
const CONTAINER_OPTIONS: &[&str] = &[
    "name",
    "image",
    "command",
    "state",
    "pull",
    "recreate",
    "restart",
    "force_kill",
    "forcekill",
    "keep_volumes",
    "cleanup",
    "container_default_behavior",
    "command_handling",
    "image_comparison",
    "image_label_mismatch",
    "image_name_mismatch",
    "networks_cli_compatible",
    "comparisons",
    "default_host_ip",
    "kill_signal",
    "output_logs",
    "paused",
    "pull_check_mode_behavior",
    "removal_wait_timeout",
    "healthy_wait_timeout",
];

/// `command` as a list of words (a string is split like a shell would, roughly).
fn command_words(value: &Value) -> Vec<String> {
    match value.as_str() {
        Some(text) => super::command::shlex_split(text)
            .unwrap_or_else(|_| text.split_whitespace().map(String::from).collect()),
        None => super::value_to_list(value),
    }
}

/// `docker_container`: the common core of Ansible's module (see the module docs).
pub fn docker_container(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    let name = args.required("name")?;
    let state = args
        .choice(
            "state",
            &["absent", "present", "healthy", "started", "stopped"],
            Some("started"),
        )?
        .unwrap_or_default();
    if state == "present" && !args.has("image") {
        return Err(ArgError::Invalid(
            "state is present but all of the following are missing: image".into(),
        ));
    }
    let recreate = args.bool("recreate", false)?;
    let restart = args.bool("restart", false)?;
    let force_kill = args.bool("force_kill", false)? || args.bool("forcekill", false)?;
    let keep_volumes = args.bool("keep_volumes", true)?;
    let pull = args.str("pull").unwrap_or_else(|| "missing".into());
    let pull_always = matches!(pull.as_str(), "always" | "True" | "true");
    let pull_never = matches!(pull.as_str(), "never");
    // Options outside the native core are refused, never silently ignored.
    let mut unknown: Vec<String> = Vec::new();
    if let Ok(keys) = args.value().try_iter() {
        for key in keys {
            let key = key.as_str().unwrap_or_default().to_string();
            if !CONTAINER_OPTIONS.contains(&key.as_str())
                && !CONNECTION_ARGS.contains(&key.as_str())
                && !key.starts_with('_')
            {
                unknown.push(key);
            }
        }
    }
    if !unknown.is_empty() {
        return Ok(Outcome::failed(format!(
            "docker_container: the options {} are not implemented by the native runtime",
            unknown.join(", ")
        )));
    }
    let api = match api_version(ctx) {
        Ok(v) => v,
        Err(out) => return Ok(out),
    };
    let existing = {
        let r = docker(&["container", "inspect", &name], ctx);
        if r.rc == 0 {
            first_of_json_array(&r.stdout)
        } else {
            None
        }
    };
    let running = existing
        .as_ref()
        .and_then(|c| c.get_attr("State").ok())
        .and_then(|s| s.get_attr("Running").ok())
        .is_some_and(|r| r.is_true());
    let mut actions: Vec<Value> = Vec::new();
    let mut changed = false;
    let remove = |ctx: &ModuleContext| -> Result<(), Outcome> {
        let mut command = vec!["rm", "--force"];
        if !keep_volumes {
            command.push("--volumes");
        }
        command.push(&name);
        let r = docker(&command, ctx);
        if r.rc != 0 {
            return Err(Outcome::failed(format!(
                "Error removing container {name}: {}",
                daemon_error(&r)
            )));
        }
        Ok(())
    };
    if state == "absent" {
        if existing.is_some() {
            changed = true;
            actions.push(Value::from_pairs([("removed", Value::from(name.clone()))]));
            if !ctx.check {
                if let Err(out) = remove(ctx) {
                    return Ok(out);
                }
            }
        }
        return Ok(Outcome::new()
            .with("changed", changed)
            .with("actions", actions)
            .with(
                "container",
                Value::from_pairs(Vec::<(String, Value)>::new()),
            ));
    }
    let image = args.str("image");
    let mut container_exists = existing.is_some();
    if let Some(image) = &image {
        let (repo, tag) = parse_repository_tag(image);
        let reference = match &tag {
            Some(t) if t.starts_with("sha256:") => format!("{repo}@{t}"),
            Some(t) => format!("{repo}:{t}"),
            None => format!("{repo}:latest"),
        };
        let present = inspect_image(&reference, ctx);
        if (present.is_none() && !pull_never) || pull_always {
            let shown = format!("{repo}:{}", tag.clone().unwrap_or_else(|| "latest".into()));
            if !ctx.check {
                let r = docker(&["pull", "--quiet", &reference], ctx);
                if r.rc != 0 {
                    let reason = daemon_error(&r);
                    let (code, phrase) =
                        if reason.contains("not found") || reason.contains("does not exist") {
                            ("404 Client Error", "Not Found")
                        } else {
                            ("500 Server Error", "Internal Server Error")
                        };
                    return Ok(Outcome::failed(format!(
                        "Error pulling image {shown} - {code} for http+docker://localhost/v{api}/images/create?tag={}&fromImage={repo}: {phrase} (\"{reason}\")",
                        tag.clone().unwrap_or_else(|| "latest".into())
                    )));
                }
            }
            let wanted_id = present.as_ref().and_then(|p| field_str(p, &["Id"]));
            let now_id = inspect_image(&reference, ctx).and_then(|p| field_str(&p, &["Id"]));
            if ctx.check || wanted_id != now_id {
                changed = true;
                actions.push(Value::from_pairs([
                    ("pulled_image", Value::from(shown)),
                    ("changed", Value::from(true)),
                ]));
            }
        }
        if let Some(current) = &existing {
            let current_image = field_str(current, &["Image"]);
            let wanted_image = inspect_image(&reference, ctx).and_then(|p| field_str(&p, &["Id"]));
            let mismatch = wanted_image.is_some() && current_image != wanted_image;
            if recreate || mismatch {
                changed = true;
                actions.push(Value::from_pairs([(
                    "recreated",
                    Value::from(name.clone()),
                )]));
                if !ctx.check {
                    if let Err(out) = remove(ctx) {
                        return Ok(out);
                    }
                }
                container_exists = false;
            }
        }
    }
    if !container_exists {
        let Some(image) = &image else {
            return Ok(Outcome::failed(
                "Cannot create container when image is not specified!",
            ));
        };
        changed = true;
        actions.push(Value::from_pairs([(
            "created",
            Value::from("Created container"),
        )]));
        if !ctx.check {
            let mut command: Vec<String> = vec![
                "create".into(),
                "--name".into(),
                name.clone(),
                image.clone(),
            ];
            if let Some(cmd) = args.get("command") {
                command.extend(command_words(&cmd));
            }
            let refs: Vec<&str> = command.iter().map(String::as_str).collect();
            let r = docker(&refs, ctx);
            if r.rc != 0 {
                return Ok(Outcome::failed(format!(
                    "Error creating container: {}",
                    daemon_error(&r)
                )));
            }
        }
    }
    let now_running = running && container_exists;
    match state.as_str() {
        "started" | "healthy" if !now_running || restart => {
            changed = true;
            actions.push(Value::from_pairs([(
                if now_running { "restarted" } else { "started" },
                Value::from(name.clone()),
            )]));
            if !ctx.check {
                let verb = if now_running { "restart" } else { "start" };
                let r = docker(&[verb, &name], ctx);
                if r.rc != 0 {
                    return Ok(Outcome::failed(format!(
                        "Error starting container {name}: {}",
                        daemon_error(&r)
                    )));
                }
            }
        }
        "stopped" if now_running => {
            changed = true;
            actions.push(Value::from_pairs([("stopped", Value::from(name.clone()))]));
            if !ctx.check {
                let r = if force_kill {
                    docker(&["kill", &name], ctx)
                } else {
                    docker(&["stop", &name], ctx)
                };
                if r.rc != 0 {
                    return Ok(Outcome::failed(format!(
                        "Error stopping container {name}: {}",
                        daemon_error(&r)
                    )));
                }
            }
        }
        _ => {}
    }
    let container = if ctx.check {
        existing.unwrap_or_default()
    } else {
        let r = docker(&["container", "inspect", &name], ctx);
        first_of_json_array(&r.stdout).unwrap_or_default()
    };
    Ok(Outcome::new()
        .with("changed", changed)
        .with("actions", actions)
        .with("container", container))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags come after the last colon that follows the last slash; digests after `@`.
    #[test]
    fn repository_and_tag() {
        assert_eq!(
            parse_repository_tag("ubuntu:22.04"),
            ("ubuntu".into(), Some("22.04".into()))
        );
        assert_eq!(
            parse_repository_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), None)
        );
        assert_eq!(parse_repository_tag("nginx"), ("nginx".into(), None));
        assert!(is_image_name_id(&"a".repeat(64)));
        assert!(!is_valid_tag("-bad"));
    }
}
