//! `reboot`: restart the machine and wait until it is back.
//!
//! Ansible's `reboot` is an action plugin on the controller: it reads the boot id over
//! the connection, runs the reboot command, then reconnects until the boot id differs
//! and the test command succeeds. The agent runs *on* the server, so this module does
//! the same steps locally, in Ansible's order:
//!
//! 1. read the boot id with `boot_time_command` (default
//!    `cat /proc/sys/kernel/random/boot_id`); a failure here fails the task before
//!    anything is rebooted;
//! 2. run the reboot command through `/bin/sh -c`: `reboot_command` as given (its first
//!    word is looked up in `search_paths` unless it is absolute), or by default Linux's
//!    `shutdown -r {pre_reboot_delay // 60} "{msg}"`. Like Ansible, `pre_reboot_delay`
//!    only feeds that default command (in whole minutes, so under 60 s means now);
//! 3. sleep `post_reboot_delay`;
//! 4. run `boot_time_command` again, with Ansible's backoff (2^n s plus up to 1 s of
//!    jitter, at most 12 s) until its output is non-empty and differs from the first
//!    one, for at most `reboot_timeout` seconds (default 600), then run `test_command`
//!    (default `whoami`) the same way until it exits 0. Each of these commands is killed
//!    after `connect_timeout` seconds when that is set (a hung command during shutdown
//!    must not eat the whole timeout).
//!
//! The result is Ansible's: `changed: true, rebooted: true, elapsed: <seconds since the
//! reboot command>`; "Timed out waiting for last boot time check (timeout=N)" (or "...
//! post-reboot test command ...") when the machine never came back. Check mode runs
//! nothing and reports `changed: true, rebooted: true, elapsed: 0`, as Ansible does.
//!
//! # When the reboot really restarts the machine
//!
//! Then the runner cannot see the machine come back: it is itself killed by the
//! shutdown. The reboot command returns at once (systemd schedules the reboot), and
//! the module keeps polling the boot id, which cannot change while this process is
//! alive: the kernel makes a new boot id only on the next boot. The shutdown stops the
//! agent's service, which kills every process of its control group, so the playbook
//! process dies in step 4 without printing a result or a PLAY RECAP, and its job
//! wrapper never records an exit code. The agent that starts after the boot adopts the
//! job from its state directory, finds its process gone without an exit code and ends
//! the job as failed ("the job's process ended without an exit code"). The agent side
//! therefore never reports a reboot as succeeded; the operator sees the job end with
//! the machine's reconnection. Tasks after a real reboot do not run: put `reboot` last
//! and continue in another job. Success is reported only when the boot id changes
//! without killing this process, which is what a custom `boot_time_command` (or a
//! container whose "reboot" restarts something else) can produce.

use super::exec::Run;
use super::{ArgError, Args, ModuleContext, Outcome};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_REBOOT_TIMEOUT: i64 = 600;
const DEFAULT_TEST_COMMAND: &str = "whoami";
const DEFAULT_BOOT_TIME_COMMAND: &str = "cat /proc/sys/kernel/random/boot_id";
const DEFAULT_REBOOT_MESSAGE: &str = "Reboot initiated by Ansible";
const DEFAULT_SHUTDOWN_COMMAND: &str = "shutdown";
const DEFAULT_SEARCH_PATHS: &[&str] =
    &["/sbin", "/bin", "/usr/sbin", "/usr/bin", "/usr/local/sbin"];
/// The longest pause between two attempts, before jitter (Ansible's `max_fail_sleep`).
const MAX_FAIL_SLEEP: Duration = Duration::from_secs(12);

/// `reboot`.
pub fn reboot(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    if ctx.check {
        return Ok(Outcome::new()
            .with("changed", true)
            .with("elapsed", 0)
            .with("rebooted", true));
    }
    args.check_supported(&[
        "boot_time_command",
        "connect_timeout",
        "msg",
        "post_reboot_delay",
        "pre_reboot_delay",
        "reboot_command",
        "reboot_timeout",
        "search_paths",
        "test_command",
    ])?;
    let reboot_timeout = Duration::from_secs(non_negative(
        args.int("reboot_timeout")?
            .unwrap_or(DEFAULT_REBOOT_TIMEOUT),
    ));
    let pre_reboot_delay = non_negative(args.int("pre_reboot_delay")?.unwrap_or(0));
    let post_reboot_delay =
        Duration::from_secs(non_negative(args.int("post_reboot_delay")?.unwrap_or(0)));
    let command_timeout = args
        .int("connect_timeout")?
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let boot_time_command = args
        .str("boot_time_command")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| DEFAULT_BOOT_TIME_COMMAND.into());
    let test_command = args
        .str("test_command")
        .unwrap_or_else(|| DEFAULT_TEST_COMMAND.into());
    let reboot_command = args.str("reboot_command");
    let search_paths = if args.has("search_paths") {
        args.list("search_paths")
    } else {
        DEFAULT_SEARCH_PATHS.iter().map(|p| p.to_string()).collect()
    };
    let shell = |command: &str| run_shell(command, &ctx.environment, command_timeout);

    let previous_boot_id = match boot_id(&shell(&boot_time_command)) {
        Ok(id) => id,
        Err(msg) => {
            return Ok(Outcome::failed(msg).with("reboot", false));
        }
    };
    let binary = shutdown_binary(reboot_command.as_deref());
    let Some(binary_path) = find_binary(binary, &search_paths) else {
        return Ok(Outcome::failed(format!(
            "Unable to find command \"{binary}\" in search paths: {}",
            python_list(&search_paths)
        )));
    };
    let full_command = format!(
        "{binary_path} {}",
        shutdown_arguments(
            reboot_command.as_deref(),
            pre_reboot_delay,
            &args
                .str("msg")
                .unwrap_or_else(|| DEFAULT_REBOOT_MESSAGE.into()),
        )
    );
    // The reboot command itself is not bounded by connect_timeout: Ansible runs it once
    // and waits for it.
    let reboot_run = run_shell(&full_command, &ctx.environment, None);
    let start = Instant::now();
    if !reboot_run.ok() {
        return Ok(Outcome::failed(format!(
            "Reboot command failed. Error was: '{}, {}'",
            reboot_run.stdout.trim(),
            reboot_run.stderr.trim()
        ))
        .with("rebooted", false)
        .with("elapsed", start.elapsed().as_secs()));
    }
    std::thread::sleep(post_reboot_delay);

    let boot_check = || -> Result<(), String> {
        let current = boot_id(&shell(&boot_time_command))?;
        if current.is_empty() || current == previous_boot_id {
            Err("boot time has not changed".into())
        } else {
            Ok(())
        }
    };
    let test = || -> Result<(), String> {
        let run = shell(&test_command);
        if run.ok() {
            Ok(())
        } else {
            Err(format!(
                "Test command failed: {} {}",
                run.stderr, run.stdout
            ))
        }
    };
    let validated = until_success_or_timeout(boot_check, reboot_timeout, "last boot time check")
        .and_then(|()| until_success_or_timeout(test, reboot_timeout, "post-reboot test command"));
    let elapsed = start.elapsed().as_secs();
    Ok(match validated {
        Ok(()) => Outcome::new()
            .with("changed", true)
            .with("rebooted", true)
            .with("elapsed", elapsed),
        Err(msg) => Outcome::failed(msg)
            .with("rebooted", true)
            .with("elapsed", elapsed),
    })
}

fn non_negative(value: i64) -> u64 {
    value.max(0) as u64
}

/// The boot id from a run of the boot time command, or Ansible's error text.
fn boot_id(run: &Run) -> Result<String, String> {
    if run.ok() {
        Ok(run.stdout.trim().to_string())
    } else {
        Err(format!(
            "reboot: failed to get host boot time info, rc: {}, stdout: {}, stderr: {}",
            run.rc, run.stdout, run.stderr
        ))
    }
}

/// The program of the reboot command: `reboot_command`'s first word, or `shutdown`.
fn shutdown_binary(reboot_command: Option<&str>) -> &str {
    match reboot_command {
        Some(command) => command.split(' ').next().unwrap_or_default(),
        None => DEFAULT_SHUTDOWN_COMMAND,
    }
}

/// The arguments of the reboot command: the rest of `reboot_command`, or Linux's
/// `-r {minutes} "{msg}"` (Ansible rounds the delay down to whole minutes).
fn shutdown_arguments(reboot_command: Option<&str>, pre_reboot_delay: u64, msg: &str) -> String {
    match reboot_command {
        Some(command) => command
            .split_once(' ')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default(),
        None => format!("-r {} \"{msg}\"", pre_reboot_delay / 60),
    }
}

/// An absolute program as is; otherwise the first search path that holds it.
fn find_binary(binary: &str, search_paths: &[String]) -> Option<String> {
    if binary.starts_with('/') {
        return Some(binary.to_string());
    }
    if binary.is_empty() {
        return None;
    }
    search_paths
        .iter()
        .map(|dir| std::path::Path::new(dir).join(binary))
        .find(|candidate| std::fs::symlink_metadata(candidate).is_ok())
        .map(|found| found.display().to_string())
}

fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// How long to wait after the `fail_count`-th failed attempt (counting from 0):
/// 2^n seconds plus `jitter`, or 12 s plus `jitter` once that is longer.
fn retry_pause(fail_count: u32, jitter: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << fail_count.min(16));
    base.min(MAX_FAIL_SLEEP) + jitter
}

/// Runs `action` until it succeeds or `timeout` has passed, pausing between attempts
/// like Ansible's `do_until_success_or_timeout` (the last pause is cut short at the
/// deadline instead of overrunning it).
fn until_success_or_timeout(
    mut action: impl FnMut() -> Result<(), String>,
    timeout: Duration,
    description: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut fail_count = 0;
    while Instant::now() < deadline {
        if action().is_ok() {
            return Ok(());
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
        let pause = retry_pause(fail_count, jitter);
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        fail_count += 1;
    }
    Err(format!(
        "Timed out waiting for {description} (timeout={})",
        timeout.as_secs()
    ))
}

/// Runs `command` with `/bin/sh -c`, killing it (and reporting a failure) after
/// `timeout`.
fn run_shell(command: &str, env: &[(String, String)], timeout: Option<Duration>) -> Run {
    use std::os::unix::process::CommandExt;
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what the shell started too (they
        // would otherwise keep the output pipes open).
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Run {
                rc: 127,
                stdout: String::new(),
                stderr: format!("/bin/sh: {e}"),
            }
        }
    };
    // Read both pipes on their own threads so a chatty command cannot block on a full
    // pipe while we wait for it.
    let stdout = child.stdout.take().map(read_to_end);
    let stderr = child.stderr.take().map(read_to_end);
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                // SAFETY: kill(2) on the process group we just created; no memory is
                // involved.
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let collect = |handle: Option<std::thread::JoinHandle<String>>| {
        handle.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, mut stderr) = (collect(stdout), collect(stderr));
    let rc = match status {
        Some(status) => status.code().unwrap_or(-1),
        None => {
            stderr.push_str(&format!(
                "timed out after {} s",
                timeout.unwrap_or_default().as_secs()
            ));
            -1
        }
    };
    Run { rc, stdout, stderr }
}

fn read_to_end(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default reboot command is Linux's shutdown with the delay in whole minutes.
    #[test]
    fn default_and_custom_reboot_commands() {
        assert_eq!(shutdown_binary(None), "shutdown");
        assert_eq!(
            shutdown_arguments(None, 0, "Reboot initiated by Ansible"),
            "-r 0 \"Reboot initiated by Ansible\""
        );
        assert_eq!(shutdown_arguments(None, 150, "bye"), "-r 2 \"bye\"");
        assert_eq!(shutdown_binary(Some("systemctl reboot -i")), "systemctl");
        assert_eq!(
            shutdown_arguments(Some("systemctl reboot -i"), 150, "ignored"),
            "reboot -i"
        );
        assert_eq!(shutdown_arguments(Some("reboot"), 0, "ignored"), "");
    }

    /// The pause doubles from 1 s and stops growing at 12 s.
    #[test]
    fn backoff_doubles_up_to_twelve_seconds() {
        let pauses: Vec<u64> = (0..6)
            .map(|n| retry_pause(n, Duration::ZERO).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 12, 12]);
        assert_eq!(
            retry_pause(40, Duration::from_millis(500)),
            Duration::from_millis(12_500)
        );
    }

    /// A relative program is found in the first search path that has it.
    #[test]
    fn binaries_are_found_in_search_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&empty).expect("dir");
        std::fs::create_dir(&bin).expect("dir");
        std::fs::write(bin.join("restart-me"), "").expect("write");
        let paths = [empty.display().to_string(), bin.display().to_string()];
        assert_eq!(
            find_binary("restart-me", &paths),
            Some(bin.join("restart-me").display().to_string())
        );
        assert_eq!(find_binary("missing", &paths), None);
        assert_eq!(find_binary("/abs/prog", &paths), Some("/abs/prog".into()));
    }

    /// A command that outlives its timeout is killed and reported as failed.
    #[test]
    fn commands_are_killed_after_their_timeout() {
        let started = Instant::now();
        let run = run_shell("sleep 5; echo late", &[], Some(Duration::from_millis(200)));
        assert!(!run.ok());
        assert!(run.stderr.contains("timed out"), "{}", run.stderr);
        assert!(started.elapsed() < Duration::from_secs(3));
        let run = run_shell("echo hi; echo err >&2", &[], None);
        assert_eq!(
            (run.rc, run.stdout.as_str(), run.stderr.as_str()),
            (0, "hi\n", "err\n")
        );
    }
}
