//! `become`: running a module as another user through `sudo` (or `runuser` as root).
//!
//! Modules run in-process, so switching user means re-executing the agent binary under
//! `sudo -n -u USER` with the hidden `playbook --internal-module` flag: the request (module,
//! arguments, check/diff flags) goes in as JSON on stdin and the result comes back as
//! JSON on stdout. `-n` makes sudo fail instead of prompting for a password.

use super::filters::json_to_value;
use super::modules::{self, ModuleContext, Outcome};
use minijinja::Value;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The request a child process receives.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModuleRequest {
    /// Canonical module name.
    pub module: String,
    /// Templated arguments.
    pub args: serde_json::Value,
    /// Check mode.
    pub check: bool,
    /// Diff mode.
    pub diff: bool,
    /// Environment for commands.
    pub environment: Vec<(String, String)>,
    /// Host facts.
    pub facts: serde_json::Value,
}

/// Runs a module as `user` via sudo and the agent binary.
pub fn run_module_as(
    program: Option<&Path>,
    user: &str,
    module: &str,
    args: &Value,
    ctx: &ModuleContext,
) -> Outcome {
    let program = match program
        .map(Path::to_path_buf)
        .map(Ok)
        .unwrap_or_else(std::env::current_exe)
    {
        Ok(p) => p,
        Err(e) => return Outcome::failed(format!("become: cannot locate the agent binary: {e}")),
    };
    let request = ModuleRequest {
        module: module.to_string(),
        args: serde_json::to_value(args).unwrap_or_default(),
        check: ctx.check,
        diff: ctx.diff,
        environment: ctx.environment.clone(),
        facts: serde_json::to_value(&ctx.facts).unwrap_or_default(),
    };
    let body = match serde_json::to_vec(&request) {
        Ok(b) => b,
        Err(e) => return Outcome::failed(format!("become: cannot encode the request: {e}")),
    };
    // Root switches user without a password prompt through runuser(1) when sudo is absent.
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let use_runuser = is_root
        && super::modules::exec::which("sudo").is_none()
        && super::modules::exec::which("runuser").is_some();
    let mut command = if use_runuser {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "-H", "-u", user, "--"]);
        c
    };
    let child = command
        .arg(&program)
        .args(["playbook", "--internal-module"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("become: could not run sudo: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let output = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Outcome::failed(format!("become: sudo failed: {e}")),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("password is required") {
        return Outcome::failed("Missing sudo password");
    }
    match serde_json::from_slice::<serde_json::Value>(&output.stdout) {
        Ok(json) => Outcome::from_value(&json_to_value(&json)),
        Err(_) => Outcome::failed(format!(
            "become: running the module as {user} failed (rc={}): {}",
            output.status.code().unwrap_or(-1),
            stderr.trim()
        )),
    }
}

/// Serves one request in the child: reads JSON from stdin, writes the result to stdout.
pub fn serve_request(input: &str) -> String {
    let result = match serde_json::from_str::<ModuleRequest>(input) {
        Ok(request) => {
            let ctx = ModuleContext {
                check: request.check,
                diff: request.diff,
                environment: request.environment,
                facts: json_to_value(&request.facts),
            };
            modules::run_module(&request.module, &json_to_value(&request.args), &ctx)
        }
        Err(e) => Outcome::failed(format!("invalid module request: {e}")),
    };
    serde_json::to_string(&result.to_value())
        .unwrap_or_else(|e| format!("{{\"failed\": true, \"msg\": \"{e}\"}}"))
}
