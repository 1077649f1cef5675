//! Running one task through ansible-core when the native runtime lacks its module.
//!
//! Only used when the caller allows it: the task's module runs as an ad-hoc command
//! (`ansible localhost -c local -m MODULE -a JSON`, minimal callback) with the already
//! templated arguments, and the printed JSON result is merged back as the task's result.

use super::filters::json_to_value;
use super::modules::{ModuleContext, Outcome};
use minijinja::Value;
use std::path::Path;
use std::process::Command;

/// Runs `module` with `args` through ansible-core's `ansible` program.
pub fn run_ansible_module(
    program: &Path,
    module: &str,
    args: &Value,
    ctx: &ModuleContext,
    become_user: Option<&str>,
) -> Outcome {
    let json_args = match serde_json::to_string(args) {
        Ok(a) => a,
        Err(e) => return Outcome::failed(format!("cannot encode the arguments of {module}: {e}")),
    };
    let mut command = Command::new(program);
    command
        .args([
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-m",
            module,
            "-a",
            &json_args,
        ])
        .env("ANSIBLE_STDOUT_CALLBACK", "minimal")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0");
    for (k, v) in &ctx.environment {
        command.env(k, v);
    }
    if ctx.check {
        command.arg("--check");
    }
    if ctx.diff {
        command.arg("--diff");
    }
    if let Some(user) = become_user {
        command.args(["--become", "--become-user", user]);
    }
    let output = match command.output() {
        Ok(o) => o,
        Err(e) => {
            return Outcome::failed(format!(
                "module {module} needs ansible-core, but {} could not be run: {e}",
                program.display()
            ))
        }
    };
    // The minimal callback prints `localhost | STATUS => {json over several lines}`.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let host_result = stdout.find("localhost | ").and_then(|start| {
        let rest = &stdout[start..];
        let json = &rest[rest.find(" => ")? + 4..];
        serde_json::Deserializer::from_str(json)
            .into_iter::<serde_json::Value>()
            .next()?
            .ok()
    });
    match host_result {
        Some(result) => {
            let mut outcome = Outcome::from_value(&json_to_value(&result));
            for key in [
                "_ansible_no_log",
                "action",
                "invocation",
                "_ansible_verbose_always",
                "_ansible_verbose_override",
            ] {
                outcome.remove(key);
            }
            if outcome.get("changed").is_none() {
                outcome.set("changed", false);
            }
            outcome
        }
        None => Outcome::failed(format!(
            "running {module} through ansible-core failed (rc={}): {}",
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}
