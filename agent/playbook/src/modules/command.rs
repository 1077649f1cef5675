//! `command`, `shell` and `raw`.

use super::{ArgError, Args, ModuleContext, Outcome};
use minijinja::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// Splits a command line like Python's `shlex.split` (POSIX mode).
pub fn shlex_split(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => current.push(ch),
                        None => return Err("No closing quotation".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => current.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                current.push('\\');
                                current.push(ch);
                            }
                            None => return Err("No closing quotation".into()),
                        },
                        Some(ch) => current.push(ch),
                        None => return Err("No closing quotation".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(ch) => current.push(ch),
                    None => return Err("No escaped character".into()),
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        out.push(current);
    }
    Ok(out)
}

fn glob_exists(pattern: &str) -> bool {
    if pattern.contains(['*', '?', '[']) {
        glob::glob(pattern)
            .map(|mut paths| paths.any(|p| p.is_ok()))
            .unwrap_or(false)
    } else {
        std::path::Path::new(pattern).exists()
    }
}

fn lines_value(text: &str) -> Value {
    Value::from(text.lines().map(String::from).collect::<Vec<_>>())
}

/// Runs `command`, `shell` or `raw`.
pub fn run(module: &str, args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "_raw_params",
        "cmd",
        "argv",
        "chdir",
        "creates",
        "removes",
        "stdin",
        "stdin_add_newline",
        "strip_empty_ends",
        "executable",
        "warn",
        "expand_argument_vars",
        "_uses_shell",
    ])?;
    let shell = module != "command";
    let raw = args.str_any(&["_raw_params", "cmd"]);
    let argv = args.get("argv").map(|v| super::value_to_list(&v));
    let (program, cmd_value): (Vec<String>, Value) = if shell {
        let text = raw.ok_or_else(|| ArgError::Invalid("no command given".into()))?;
        let executable = args.str("executable").unwrap_or_else(|| "/bin/sh".into());
        (
            vec![executable, "-c".into(), text.clone()],
            Value::from(text),
        )
    } else {
        match (raw, argv) {
            (Some(_), Some(_)) => {
                return Err(ArgError::Invalid(
                    "only command or argv can be given, not both".into(),
                ))
            }
            (Some(text), None) => {
                let words = shlex_split(&text).map_err(ArgError::Invalid)?;
                (words.clone(), Value::from(words))
            }
            (None, Some(words)) => (words.clone(), Value::from(words)),
            (None, None) => return Err(ArgError::Invalid("no command given".into())),
        }
    };
    if program.is_empty() {
        return Err(ArgError::Invalid("no command given".into()));
    }
    let chdir = args.str("chdir");
    let resolve = |p: String| match &chdir {
        Some(dir) if !p.starts_with('/') => format!("{dir}/{p}"),
        _ => p,
    };
    let mut result = Outcome::new().with("cmd", cmd_value.clone());
    if let Some(creates) = args.str("creates").map(resolve) {
        if glob_exists(&creates) {
            return Ok(result
                .with("rc", 0)
                .with("stdout", format!("skipped, since {creates} exists"))
                .with(
                    "stdout_lines",
                    Value::from(vec![format!("skipped, since {creates} exists")]),
                )
                .with("stderr", "")
                .with("stderr_lines", Value::from(Vec::<String>::new()))
                .with(
                    "msg",
                    format!("Did not run command since '{creates}' exists"),
                ));
        }
    }
    if let Some(removes) = args.str("removes").map(resolve) {
        if !glob_exists(&removes) {
            return Ok(result
                .with("rc", 0)
                .with("stdout", format!("skipped, since {removes} does not exist"))
                .with(
                    "stdout_lines",
                    Value::from(vec![format!("skipped, since {removes} does not exist")]),
                )
                .with("stderr", "")
                .with("stderr_lines", Value::from(Vec::<String>::new()))
                .with(
                    "msg",
                    format!("Did not run command since '{removes}' does not exist"),
                ));
        }
    }
    if ctx.check {
        let has_guard = args.has("creates") || args.has("removes");
        result.set("msg", "Command would have run if not in check mode");
        if has_guard {
            result.set("changed", true);
        } else {
            result.set("skipped", true);
        }
        return Ok(not_run_in_check_mode(result));
    }
    let start = chrono::Local::now();
    let mut command = Command::new(&program[0]);
    command.args(&program[1..]);
    if let Some(dir) = &chdir {
        command.current_dir(dir);
    }
    for (k, v) in &ctx.environment {
        command.env(k, v);
    }
    command.env(
        "LANG",
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
    );
    let stdin = args.str("stdin");
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let mut failed = Outcome::failed(format!(
                "[Errno {}] {}: b'{}'",
                e.raw_os_error().unwrap_or(2),
                errno_text(&e),
                program[0]
            ));
            failed.set("cmd", cmd_value);
            failed.set("rc", 2);
            failed.set("stdout", "");
            failed.set("stderr", "");
            return Ok(failed);
        }
    };
    let mut child = child;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let mut data = input;
        if args.bool("stdin_add_newline", true)? {
            data.push('\n');
        }
        let _ = pipe.write_all(data.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| ArgError::Invalid(format!("failed to wait for the command: {e}")))?;
    let end = chrono::Local::now();
    let strip = args.bool("strip_empty_ends", true)?;
    let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if strip {
        stdout = stdout.trim_end_matches(['\n', '\r']).to_string();
        stderr = stderr.trim_end_matches(['\n', '\r']).to_string();
    }
    let rc = output.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        -output.status.signal().unwrap_or(1)
    });
    let delta = end - start;
    result.set("changed", true);
    result.set("start", start.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
    result.set("end", end.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
    result.set(
        "delta",
        format!(
            "{}:{:02}:{:02}.{:06}",
            delta.num_hours(),
            delta.num_minutes() % 60,
            delta.num_seconds() % 60,
            delta.num_microseconds().unwrap_or(0) % 1_000_000
        ),
    );
    result.set("msg", if rc == 0 { "" } else { "non-zero return code" });
    result.set("rc", rc);
    result.set("stdout", stdout.clone());
    result.set("stderr", stderr.clone());
    result.set("stdout_lines", lines_value(&stdout));
    result.set("stderr_lines", lines_value(&stderr));
    if rc != 0 {
        result.set("failed", true);
    }
    Ok(result)
}

fn errno_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "Permission denied".into(),
        _ => e.to_string(),
    }
}

/// The result of a command that check mode did not run, with the fields Ansible's
/// skipped result has (empty output and its lines, no timings).
fn not_run_in_check_mode(result: Outcome) -> Outcome {
    let no_lines = || Value::from(Vec::<String>::new());
    result
        .with("rc", 0)
        .with("stdout", "")
        .with("stdout_lines", no_lines())
        .with("stderr", "")
        .with("stderr_lines", no_lines())
        .with("start", Value::from(()))
        .with("end", Value::from(()))
        .with("delta", Value::from(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &[&str]) {
        assert_eq!(shlex_split(input).expect("valid"), expected, "{input}");
    }

    /// Command lines split like Python's shlex.split.
    #[test]
    fn shlex() {
        check("echo hello world", &["echo", "hello", "world"]);
        check("echo 'a b' \"c d\"", &["echo", "a b", "c d"]);
        check(r#"printf "x\"y""#, &["printf", "x\"y"]);
        check("a\\ b", &["a b"]);
        check("ls # comment", &["ls"]);
        assert!(shlex_split("echo 'open").is_err());
    }

    /// A non-zero exit fails the task; creates= skips the command when the path exists.
    #[test]
    fn rc_and_creates() {
        let ctx = ModuleContext::default();
        let r = run(
            "shell",
            &Args::new("shell", Value::from_pairs([("_raw_params", "exit 3")])),
            &ctx,
        )
        .expect("runs");
        assert!(r.is_failed());
        assert_eq!(r.get("rc"), Some(&Value::from(3)));
        let r = run(
            "command",
            &Args::new(
                "command",
                Value::from_pairs([("_raw_params", "false"), ("creates", "/")]),
            ),
            &ctx,
        )
        .expect("runs");
        assert!(!r.changed() && !r.is_failed());
    }
}
