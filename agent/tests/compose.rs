//! Compose backups, verifies and restores through the real Docker engine: the agent's
//! `compose-backup`, `compose-verify` and `compose-restore` subcommands against
//! Compose projects started with the machine's Compose tool (so the real labels are
//! set), on an image imported from a static busybox (`packaging/test-image.sh`; no
//! registry). These tests fail, never skip, when Docker is unreachable:
//! `scripts/test.sh` provides Docker, busybox-static and docker-compose.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};

const IMAGE: &str = "dynserv-test/busybox:latest";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Docker must answer and the test image must exist; otherwise the test fails with
/// what to do.
fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Docker is unreachable (docker info failed: {}); these tests need the Docker \
             engine: run scripts/test.sh, which installs and starts what they need",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "the docker CLI cannot run ({e}); these tests need the Docker engine: run \
             scripts/test.sh, which installs and starts what they need"
        ),
    }
    let built = Command::new("bash")
        .arg(repo_root().join("packaging/test-image.sh"))
        .arg(IMAGE)
        .status()
        .expect("running packaging/test-image.sh");
    assert!(built.success(), "building the test image {IMAGE} failed");
}

/// The machine's Compose tool: `docker-compose` (v1) or `docker compose` (v2).
fn compose_command() -> Vec<String> {
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if v1.is_ok_and(|s| s.success()) {
        return vec!["docker-compose".into()];
    }
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if v2.is_ok_and(|s| s.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    panic!("no Compose tool (docker-compose or docker compose): run scripts/test.sh")
}

/// A Compose project with one `db` service, taken down (containers and volumes) on drop.
struct Project {
    name: String,
    dir: tempfile::TempDir,
    compose: Vec<String>,
}

impl Project {
    fn start() -> Project {
        require_docker();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dsvtest{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            format!(
                "version: \"2.4\"\nservices:\n  db:\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", \"echo 'row 1' > /data/db.txt; exec sleep 3600\"]\n"
            ),
        )
        .unwrap();
        let project = Project {
            name,
            dir,
            compose: compose_command(),
        };
        let out = project.compose(&["up", "-d"]);
        assert!(
            out.status.success(),
            "compose up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        project
    }

    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["-p", &self.name, "-f"])
            .arg(self.dir.path().join("docker-compose.yml"))
            .args(args)
            .output()
            .expect("running the Compose tool")
    }

    /// Runs a shell command in the db container; answers its stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.compose(&["exec", "-T", "db", "sh", "-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "0"]);
    }
}

/// One run of an agent subcommand.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    result: serde_json::Value,
    /// Peak resident memory of the subcommand's process, in KiB (from wait4).
    max_rss_kib: i64,
}

// The child is reaped by wait4 (for its own rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn agent(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_dynserv-agent"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting dynserv-agent");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4(2) on our own child with valid out pointers; the rusage it
    // fills is that one process's, unlike the cumulative RUSAGE_CHILDREN.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    let result = last
        .strip_prefix("DYNSERV-RESULT ")
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| {
            panic!("no DYNSERV-RESULT last line\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    Run {
        code,
        stdout,
        stderr,
        result,
        max_rss_kib: usage.ru_maxrss,
    }
}

fn backup(
    project: &Project,
    dir: &Path,
    id: &str,
    command: &str,
    dump_path: Option<&str>,
    keep: u32,
) -> Run {
    let keep = keep.to_string();
    let dir = dir.to_string_lossy();
    let mut args = vec![
        "compose-backup",
        "--project",
        &project.name,
        "--service",
        "db",
        "--command",
        command,
        "--keep",
        &keep,
        "--backup-dir",
        &dir,
        "--backup-id",
        id,
    ];
    if let Some(path) = dump_path {
        args.extend(["--dump-path", path]);
    }
    agent(&args)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn dump_of(dir: &Path, project: &Project, id: &str) -> PathBuf {
    dir.join(&project.name)
        .join("db")
        .join(format!("{id}.dump"))
}

/// A backup whose command writes a dump file: the dump is copied out through the
/// archive API with the right size and sha256, the command's output is in the log,
/// and only the newest N backups are kept.
#[test]
fn backup_copies_the_dump_with_its_checksum_and_keeps_n() {
    let project = Project::start();
    let dir = tempfile::tempdir().unwrap();
    let command = "echo dumping; echo 'a warning' >&2; cp /data/db.txt /tmp/dump.sql; echo 'row 2' >> /tmp/dump.sql";
    let run = backup(
        &project,
        dir.path(),
        "b1",
        command,
        Some("/tmp/dump.sql"),
        2,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let expected = b"row 1\nrow 2\n";
    assert_eq!(run.result["ok"], true);
    assert_eq!(run.result["size"], expected.len() as u64);
    assert_eq!(run.result["sha256"], sha256_hex(expected));
    assert_eq!(
        std::fs::read(dump_of(dir.path(), &project, "b1")).unwrap(),
        expected
    );
    assert!(run.stdout.contains("dumping\n"), "{}", run.stdout);
    assert!(run.stderr.contains("a warning\n"), "{}", run.stderr);

    // Without a dump path the command's stdout is the dump.
    let run = backup(&project, dir.path(), "b2", "cat /data/db.txt", None, 2);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result["sha256"], sha256_hex(b"row 1\n"));
    assert_eq!(run.result["source"], "stdout");

    let run = backup(&project, dir.path(), "b3", "cat /data/db.txt", None, 2);
    assert_eq!(run.code, 0);
    assert_eq!(run.result["removed"], serde_json::json!(["b1"]));
    assert!(!dump_of(dir.path(), &project, "b1").exists());
    assert!(dump_of(dir.path(), &project, "b3").exists());

    let verified = agent(&[
        "compose-verify",
        "--project",
        &project.name,
        "--service",
        "db",
        "--backup-dir",
        &dir.path().to_string_lossy(),
        "--backup-id",
        "b3",
    ]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert_eq!(verified.result["sha256"], sha256_hex(b"row 1\n"));
    std::fs::write(dump_of(dir.path(), &project, "b3"), b"changed").unwrap();
    let verified = agent(&[
        "compose-verify",
        "--project",
        &project.name,
        "--service",
        "db",
        "--backup-dir",
        &dir.path().to_string_lossy(),
        "--backup-id",
        "b3",
    ]);
    assert_eq!(verified.code, 1);
    assert!(verified.result["error"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));
}

/// A backup command that exits non-zero fails with its exit code and keeps nothing.
#[test]
fn failing_backup_command_is_a_failed_backup() {
    let project = Project::start();
    let dir = tempfile::tempdir().unwrap();
    let run = backup(
        &project,
        dir.path(),
        "f1",
        "echo 'pg_dump: connection refused' >&2; exit 3",
        Some("/tmp/x.sql"),
        3,
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.result["ok"], false);
    assert_eq!(run.result["error"], "the command exited with code 3");
    assert!(
        run.stderr.contains("pg_dump: connection refused"),
        "{}",
        run.stderr
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join(&project.name).join("db"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "left behind: {kept:?}");

    // An empty dump, or none at all, is a failure too: never done without a dump.
    let run = backup(
        &project,
        dir.path(),
        "f2",
        ": > /tmp/empty.sql",
        Some("/tmp/empty.sql"),
        3,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.result["error"]
            .as_str()
            .unwrap()
            .contains("the dump is empty"),
        "{}",
        run.result
    );
    let run = backup(
        &project,
        dir.path(),
        "f3",
        "true",
        Some("/tmp/never-written.sql"),
        3,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.result["error"]
            .as_str()
            .unwrap()
            .contains("left no dump at /tmp/never-written.sql"),
        "{}",
        run.result
    );
    let run = backup(&project, dir.path(), "f4", "true", None, 3);
    assert_eq!(run.code, 1);
    assert!(
        run.result["error"]
            .as_str()
            .unwrap()
            .contains("wrote nothing to stdout"),
        "{}",
        run.result
    );
}

/// A backup of a service that has no container fails and says which labels it sought.
#[test]
fn missing_container_is_a_failed_backup() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let run = agent(&[
        "compose-backup",
        "--project",
        "dsvtest-no-such-project",
        "--service",
        "db",
        "--command",
        "true",
        "--backup-dir",
        &dir.path().to_string_lossy(),
        "--backup-id",
        "m1",
    ]);
    assert_eq!(run.code, 1);
    let error = run.result["error"].as_str().unwrap();
    assert!(
        error.contains(
            "no container of service \"db\" in compose project \"dsvtest-no-such-project\""
        ),
        "{error}"
    );
}

/// A 200 MB dump streams through the agent with its peak memory under 50 MiB and the
/// checksum the container itself computes.
#[test]
fn dump_of_200_mb_streams_in_little_memory() {
    let project = Project::start();
    let dir = tempfile::tempdir().unwrap();
    let command = "dd if=/dev/urandom of=/tmp/big.dump bs=1048576 count=200 2>/dev/null && sha256sum /tmp/big.dump";
    let run = backup(
        &project,
        dir.path(),
        "big",
        command,
        Some("/tmp/big.dump"),
        1,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result["size"], 200 * 1024 * 1024);
    let inside = run
        .stdout
        .lines()
        .find(|l| l.ends_with("  /tmp/big.dump"))
        .and_then(|l| l.split_whitespace().next())
        .expect("sha256sum line");
    assert_eq!(run.result["sha256"], inside);
    let rss_mib = run.max_rss_kib as f64 / 1024.0;
    eprintln!("compose-backup of 200 MiB: peak RSS {rss_mib:.1} MiB");
    assert!(rss_mib < 50.0, "peak RSS {rss_mib:.1} MiB");
    // The same through stdout (the exec stream) instead of the archive API.
    let run = backup(&project, dir.path(), "big2", "cat /tmp/big.dump", None, 1);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result["sha256"], inside);
    let rss_mib = run.max_rss_kib as f64 / 1024.0;
    eprintln!("compose-backup of 200 MiB from stdout: peak RSS {rss_mib:.1} MiB");
    assert!(rss_mib < 50.0, "peak RSS {rss_mib:.1} MiB");
}

/// A restore copies the chosen backup into the container (or feeds it to stdin) and
/// runs the restore command, which brings the data back.
#[test]
fn restore_brings_the_data_back() {
    let project = Project::start();
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().to_string_lossy().into_owned();
    let run = backup(&project, dir.path(), "r1", "cat /data/db.txt", None, 5);
    assert_eq!(run.code, 0, "{}", run.stderr);
    project.sh("echo 'row 99 (after the backup)' > /data/db.txt");

    let run = agent(&[
        "compose-restore",
        "--project",
        &project.name,
        "--service",
        "db",
        "--command",
        "cp \"$DYNSERV_RESTORE_FILE\" /data/db.txt && echo restored",
        "--dump-path",
        "/tmp/restore/db.sql",
        "--backup-dir",
        &backup_dir,
        "--backup-id",
        "r1",
    ]);
    // The target directory does not exist in the container: a clear failure.
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.result["error"]
            .as_str()
            .unwrap()
            .contains("copying the dump into the container"),
        "{}",
        run.result
    );

    let run = agent(&[
        "compose-restore",
        "--project",
        &project.name,
        "--service",
        "db",
        "--command",
        "cp \"$DYNSERV_RESTORE_FILE\" /data/db.txt && echo restored",
        "--dump-path",
        "/tmp/db.sql",
        "--backup-dir",
        &backup_dir,
        "--backup-id",
        "r1",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("restored\n"));
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");

    project.sh("echo 'row 100' > /data/db.txt");
    let run = agent(&[
        "compose-restore",
        "--project",
        &project.name,
        "--service",
        "db",
        "--command",
        "cat > /data/db.txt",
        "--backup-dir",
        &backup_dir,
        "--backup-id",
        "r1",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(project.sh("cat /data/db.txt"), "row 1\n");

    let run = agent(&[
        "compose-restore",
        "--project",
        &project.name,
        "--service",
        "db",
        "--command",
        "exit 4",
        "--backup-dir",
        &backup_dir,
        "--backup-id",
        "nope",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.result["error"]
        .as_str()
        .unwrap()
        .contains("not kept on this server"));
}

/// A cancelled backup (SIGTERM to the job's process group) stops the command inside
/// the container too, and keeps nothing.
#[test]
fn cancelled_backup_stops_the_command_in_the_container() {
    let project = Project::start();
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().to_string_lossy().into_owned();
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynserv-agent"))
        .args([
            "compose-backup",
            "--project",
            &project.name,
            "--service",
            "db",
            "--command",
            "echo started; exec sleep 300",
            "--backup-dir",
            &backup_dir,
            "--backup-id",
            "c1",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(dir.path().join("out"))
        .unwrap()
        .contains("started")
    {
        assert!(
            started.elapsed().as_secs() < 30,
            "the command did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
    assert!(out.contains("the job was cancelled"), "{out}");
    // The killed process is gone once Docker's shim has reaped it.
    let mut ps = project.sh("ps");
    for _ in 0..50 {
        if !ps.contains("sleep 300") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        ps = project.sh("ps");
    }
    assert!(!ps.contains("sleep 300"), "the command still runs:\n{ps}");
    assert!(out.contains("SIGTERM to the command (pid"), "{out}");
    assert!(!dump_of(dir.path(), &project, "c1").exists());
}
