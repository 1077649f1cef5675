//! `become`: running a module as another user through `sudo` (or `runuser` as root), or
//! through `su` when the agent already runs as root (su would otherwise ask for a
//! password, which the runtime cannot type).
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

/// How `become` switches user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BecomeMethod {
    /// `sudo -n` (or `runuser` as root without sudo).
    Sudo,
    /// `su USER -c ...`, only as root.
    Su,
}

impl BecomeMethod {
    /// The method a `become_method` value names, or why the runtime cannot use it.
    pub fn parse(name: &str) -> Result<BecomeMethod, String> {
        match name {
            "sudo" | "ansible.builtin.sudo" => Ok(BecomeMethod::Sudo),
            "su" | "ansible.builtin.su" => Ok(BecomeMethod::Su),
            other => Err(format!(
                "become_method '{other}' is not supported by the native runtime (sudo, su)"
            )),
        }
    }
}

/// Whom a task runs as, and how the runtime switches to that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Become {
    /// The `become_user`.
    pub user: String,
    /// The `become_method`.
    pub method: BecomeMethod,
}

/// Quotes a word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The command that runs `program playbook --internal-module` as the target user.
pub(crate) fn switch_user_command(target: &Become, program: &Path) -> Result<Command, String> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let user = target.user.as_str();
    if target.method == BecomeMethod::Su {
        if !is_root {
            return Err(format!(
                "become_method su needs the agent to run as root: su would ask for {user}'s \
                 password, which the native runtime cannot type (use sudo)"
            ));
        }
        let mut command = Command::new("su");
        command.args([user, "-c"]).arg(format!(
            "{} playbook --internal-module",
            shell_quote(&program.display().to_string())
        ));
        return Ok(command);
    }
    // Root switches user without a password prompt through runuser(1) when sudo is absent.
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
    command.arg(program).args(["playbook", "--internal-module"]);
    Ok(command)
}

/// Runs a module as the become user through the agent binary.
pub fn run_module_as(
    program: Option<&Path>,
    target: &Become,
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
    let mut command = match switch_user_command(target, &program) {
        Ok(command) => command,
        Err(message) => return Outcome::failed(message),
    };
    let user = target.user.as_str();
    let child = command
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

#[cfg(test)]
mod tests {
    use super::*;

    /// sudo and su (short or FQCN) are known; other methods are refused by name.
    #[test]
    fn become_methods() {
        assert_eq!(BecomeMethod::parse("su"), Ok(BecomeMethod::Su));
        assert_eq!(
            BecomeMethod::parse("ansible.builtin.sudo"),
            Ok(BecomeMethod::Sudo)
        );
        assert_eq!(
            BecomeMethod::parse("doas"),
            Err("become_method 'doas' is not supported by the native runtime (sudo, su)".into())
        );
    }

    /// su runs the agent through the user's shell, so the path is quoted.
    #[test]
    fn su_command_quotes_the_program() {
        assert_eq!(shell_quote("/opt/it's/agent"), "'/opt/it'\\''s/agent'");
        let target = Become {
            user: "postgres".into(),
            method: BecomeMethod::Su,
        };
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        match switch_user_command(&target, Path::new("/usr/bin/dynserv-agent")) {
            Ok(command) => {
                assert!(is_root);
                let args: Vec<String> = command
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                assert_eq!(
                    args,
                    [
                        "postgres",
                        "-c",
                        "'/usr/bin/dynserv-agent' playbook --internal-module"
                    ]
                );
            }
            Err(message) => {
                assert!(!is_root);
                assert!(message.starts_with("become_method su needs the agent to run as root"));
            }
        }
    }
}
