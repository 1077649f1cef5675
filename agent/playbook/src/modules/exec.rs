//! Running helper programs for system modules (apt-get, systemctl, useradd, ...).

use std::process::{Command, Stdio};

/// The captured result of a helper program.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Exit code (-1 when killed by a signal, 127 when it could not start).
    pub rc: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Whether the program exited with 0.
    pub fn ok(&self) -> bool {
        self.rc == 0
    }
}

/// Runs `program args...` with extra environment variables and optional stdin.
pub fn run(program: &str, args: &[&str], env: &[(String, String)], stdin: Option<&str>) -> Run {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                rc: 127,
                stdout: String::new(),
                stderr: format!("{program}: {e}"),
            }
        }
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = pipe.write_all(input.as_bytes());
    }
    match child.wait_with_output() {
        Ok(output) => Run {
            rc: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Err(e) => Run {
            rc: -1,
            stdout: String::new(),
            stderr: e.to_string(),
        },
    }
}

/// Whether a program can be found on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(std::path::PathBuf::from),
        )
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
