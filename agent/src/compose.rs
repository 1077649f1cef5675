//! Docker Compose backups, verifies and restores, through the Docker Engine API on
//! the local socket (bollard).
//!
//! Each runs as the agent's own subcommand (`compose-backup`, `compose-verify`,
//! `compose-restore`) in a job's child process, so its output reaches the control plane
//! through the job's spool like any script's, a cancel kills it with the job's process
//! group, and it survives an agent restart. Human lines go to stdout and stderr; the
//! last stdout line is `DYNSERV-RESULT {json}` ([`RESULT_PREFIX`]), which the control
//! plane reads from the stored log to fill its backup record.
//!
//! A service's backups live in `BACKUP_DIR/<compose project>/<service>/` as
//! `<backup id>.dump` with `<backup id>.json` beside it (size, sha256, when). A dump is
//! written to `<id>.dump.partial` while its sha256 and size are computed on the fly,
//! and renamed only once complete and non-empty: a listed backup is always whole.
//! The dump never sits in memory: it moves through in chunks of the Docker API's
//! stream.
//!
//! What does not live here: the job machinery ([`crate::jobs`]), system updates
//! ([`crate::update`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use dynserv_shared::proto::{JobKind, OffsiteTarget};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The start of the machine-readable last line of a backup, verify, restore or
/// update job.
pub const RESULT_PREFIX: &str = dynserv_shared::proto::RESULT_PREFIX;

/// Reads and writes of dumps move in pieces of this size.
const PIECE: usize = 64 * 1024;

/// Why a backup, verify or restore failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The Docker daemon did not answer on its socket.
    #[error("cannot reach Docker at {socket}: {cause}")]
    DockerUnreachable {
        /// The socket tried.
        socket: String,
        /// Docker's error.
        cause: String,
    },
    /// No container carries the project and service labels.
    #[error("no container of service {service:?} in compose project {project:?} (looked for labels com.docker.compose.project={project}, com.docker.compose.service={service})")]
    ContainerMissing {
        /// The compose project.
        project: String,
        /// The compose service.
        service: String,
    },
    /// The service's container exists but does not run.
    #[error(
        "the container {name} of service {service:?} in compose project {project:?} is not running"
    )]
    ContainerNotRunning {
        /// The compose project.
        project: String,
        /// The compose service.
        service: String,
        /// The container's name.
        name: String,
    },
    /// The command in the container exited with a non-zero code.
    #[error("the command exited with code {0}")]
    CommandFailed(i64),
    /// The dump (file or stdout) held no bytes.
    #[error("the dump is empty: {0}")]
    EmptyDump(String),
    /// The dump path names something that is not a regular file.
    #[error("{0} inside the container is not a regular file")]
    NotAFile(String),
    /// The dump path does not exist in the container.
    #[error("the command left no dump at {path} inside the container: {cause}")]
    DumpMissing {
        /// The path looked at.
        path: String,
        /// Docker's error.
        cause: String,
    },
    /// A kept backup's file is missing or its checksum changed.
    #[error("backup {id}: {reason}")]
    BadBackup {
        /// The backup id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A name that cannot be used as a directory.
    #[error("invalid {what} {value:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// Arguments of `dynserv-agent compose-backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The compose project (label com.docker.compose.project).
    #[arg(long)]
    pub project: String,
    /// The compose service (label com.docker.compose.service).
    #[arg(long)]
    pub service: String,
    /// The backup command, run with /bin/sh -c inside the container.
    #[arg(long)]
    pub command: String,
    /// Where the command leaves its dump inside the container; without it, the
    /// command's stdout is the dump.
    #[arg(long)]
    pub dump_path: Option<String>,
    /// How many backups of this service to keep.
    #[arg(long, default_value_t = 7)]
    pub keep: u32,
    /// Where backups are kept.
    #[arg(long)]
    pub backup_dir: PathBuf,
    /// The backup's id.
    #[arg(long)]
    pub backup_id: String,
    /// A private file naming the off-site storage to upload an encrypted copy to.
    #[arg(long)]
    pub offsite_file: Option<PathBuf>,
}

/// Arguments of `dynserv-agent compose-offsite-upload`.
#[derive(Debug, Clone, clap::Args)]
pub struct OffsiteUploadArgs {
    /// The compose project the backup belongs to.
    #[arg(long)]
    pub project: String,
    /// The compose service the backup belongs to.
    #[arg(long)]
    pub service: String,
    /// Where backups are kept.
    #[arg(long)]
    pub backup_dir: PathBuf,
    /// The backup's id.
    #[arg(long)]
    pub backup_id: String,
    /// A private file naming the off-site storage.
    #[arg(long)]
    pub offsite_file: PathBuf,
}

/// Arguments of `dynserv-agent compose-verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The compose project the backup belongs to.
    #[arg(long)]
    pub project: String,
    /// The compose service the backup belongs to.
    #[arg(long)]
    pub service: String,
    /// Where backups are kept.
    #[arg(long)]
    pub backup_dir: PathBuf,
    /// The backup's id.
    #[arg(long)]
    pub backup_id: String,
    /// Check the off-site copy this private file names instead of the kept dump.
    #[arg(long)]
    pub offsite_file: Option<PathBuf>,
}

/// Arguments of `dynserv-agent compose-restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The compose project (label com.docker.compose.project).
    #[arg(long)]
    pub project: String,
    /// The compose service (label com.docker.compose.service).
    #[arg(long)]
    pub service: String,
    /// The restore command, run with /bin/sh -c inside the container; it finds the
    /// dump's path in $DYNSERV_RESTORE_FILE.
    #[arg(long)]
    pub command: String,
    /// Where to copy the dump inside the container; without it, the dump is fed to
    /// the command's stdin.
    #[arg(long)]
    pub dump_path: Option<String>,
    /// Where backups are kept.
    #[arg(long)]
    pub backup_dir: PathBuf,
    /// The backup's id.
    #[arg(long)]
    pub backup_id: String,
    /// Fetch the dump from the off-site copy this private file names first.
    #[arg(long)]
    pub offsite_file: Option<PathBuf>,
}

/// What the agent keeps beside each dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupMeta {
    /// The backup's id.
    pub backup_id: String,
    /// Compose project.
    pub project: String,
    /// Compose service.
    pub service: String,
    /// Bytes in the dump.
    pub size: u64,
    /// Hex sha256 of the dump.
    pub sha256: String,
    /// When the dump was complete, in seconds since the epoch.
    pub created_unix: u64,
    /// Where the dump came from (a path in the container, or `stdout`).
    pub source: String,
}

/// The command line a job runs for a backup, verify, restore or update kind: the
/// agent's own binary with the matching subcommand. Backups are kept in
/// `STATE_DIR/backups`, next to the `jobs` directory that holds `job_dir`.
pub fn job_argv(kind: &JobKind, job_dir: &Path) -> Result<Vec<String>> {
    let exe = own_binary()?;
    let state_dir = job_dir
        .parent()
        .and_then(Path::parent)
        .context("the job directory has no state directory above it")?;
    let backup_dir = state_dir.join("backups").to_string_lossy().into_owned();
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    // Off-site settings hold secrets: they go in a private file, never on the command
    // line where any local user could read them.
    let offsite_file = |target: &Option<OffsiteTarget>| -> Result<Option<String>> {
        let Some(target) = target else {
            return Ok(None);
        };
        let path = job_dir.join("offsite.json");
        crate::private_fs::write(&path, serde_json::to_vec(target)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(path.to_string_lossy().into_owned()))
    };
    let mut push = |items: &[&str]| argv.extend(items.iter().map(|s| s.to_string()));
    match kind {
        JobKind::ComposeBackup {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            keep,
            offsite,
        } => {
            let keep = keep.to_string();
            push(&["compose-backup", "--project", compose_project]);
            push(&["--service", service, "--command", command, "--keep", &keep]);
            push(&["--backup-dir", &backup_dir, "--backup-id", backup_id]);
            if let Some(path) = dump_path {
                push(&["--dump-path", path]);
            }
            if let Some(file) = offsite_file(offsite)? {
                push(&["--offsite-file", &file]);
            }
        }
        JobKind::ComposeOffsiteUpload {
            backup_id,
            compose_project,
            service,
            offsite,
        } => {
            let file = offsite_file(offsite)?
                .context("the off-site upload job names no off-site storage")?;
            push(&["compose-offsite-upload", "--project", compose_project]);
            push(&["--service", service, "--backup-dir", &backup_dir]);
            push(&["--backup-id", backup_id, "--offsite-file", &file]);
        }
        JobKind::ComposeVerify {
            backup_id,
            compose_project,
            service,
            offsite,
        } => {
            push(&["compose-verify", "--project", compose_project]);
            push(&["--service", service, "--backup-dir", &backup_dir]);
            push(&["--backup-id", backup_id]);
            if let Some(file) = offsite_file(offsite)? {
                push(&["--offsite-file", &file]);
            }
        }
        JobKind::ComposeRestore {
            backup_id,
            compose_project,
            service,
            command,
            dump_path,
            offsite,
        } => {
            push(&["compose-restore", "--project", compose_project]);
            push(&["--service", service, "--command", command]);
            push(&["--backup-dir", &backup_dir, "--backup-id", backup_id]);
            if let Some(path) = dump_path {
                push(&["--dump-path", path]);
            }
            if let Some(file) = offsite_file(offsite)? {
                push(&["--offsite-file", &file]);
            }
        }
        JobKind::SystemUpdate { check } => {
            push(&["system-update"]);
            if *check {
                push(&["--check"]);
            }
        }
        // Scripts and playbooks (and any later kind) have their own arms in `jobs`.
        _ => anyhow::bail!("not a subcommand job kind"),
    }
    Ok(argv)
}

/// The agent's own binary for a job's command line: `/proc/<pid>/exe`, which names the
/// running binary even after an upgrade replaced (deleted) the file on disk, where
/// `current_exe()` would answer a path ending in " (deleted)" that cannot be run.
pub(crate) fn own_binary() -> Result<PathBuf> {
    let proc_exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().context("finding the agent's own binary")
}

/// Prints the machine-readable last line.
pub fn print_result(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{RESULT_PREFIX}{value}");
    let _ = out.flush();
}

/// Runs a subcommand body on a small runtime, prints its result line and maps the
/// outcome to an exit code: 0 done, 1 failed (with the reason on stderr and in the
/// result line).
fn run_cli(body: impl std::future::Future<Output = Result<serde_json::Value>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(body) {
        Ok(value) => {
            print_result(&value);
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            print_result(&serde_json::json!({ "ok": false, "error": format!("{e:#}") }));
            1
        }
    }
}

/// `dynserv-agent compose-backup`.
pub fn backup_main(args: BackupArgs) -> i32 {
    run_cli(async move {
        // Read first: a target that cannot be read fails the job before any work.
        let target = args.offsite_file.as_deref().map(read_target).transpose()?;
        let meta = backup(&args).await?;
        let removed = prune(&args.backup_dir, &args.project, &args.service, args.keep)?;
        for id in &removed {
            say(&format!("removed old backup {id} (keeping {})", args.keep));
        }
        let dump = dump_file(
            &args.backup_dir,
            &args.project,
            &args.service,
            &args.backup_id,
        )?;
        let mut result = serde_json::json!({
            "ok": true,
            "backup_id": meta.backup_id,
            "size": meta.size,
            "sha256": meta.sha256,
            "source": meta.source,
            "path": dump,
            "removed": removed,
        });
        if let Some(target) = target {
            // The dump is kept here whatever happens off site; the record shows both.
            result["offsite"] = upload_with_retries(&target, &dump, &meta).await;
        }
        let peak = peak_rss_bytes();
        if let Some(bytes) = peak {
            say(&format!("peak memory of this backup: {} KiB", bytes / 1024));
        }
        result["peak_rss_bytes"] = serde_json::json!(peak);
        Ok(result)
    })
}

/// `dynserv-agent compose-offsite-upload`: uploads a kept backup again.
pub fn offsite_upload_main(args: OffsiteUploadArgs) -> i32 {
    run_cli(async move {
        let target = read_target(&args.offsite_file)?;
        let meta = verify(
            &args.backup_dir,
            &args.project,
            &args.service,
            &args.backup_id,
        )?;
        let dump = dump_file(
            &args.backup_dir,
            &args.project,
            &args.service,
            &args.backup_id,
        )?;
        let offsite = upload_with_retries(&target, &dump, &meta).await;
        if offsite["ok"] != serde_json::json!(true) {
            let error = offsite["error"]
                .as_str()
                .unwrap_or("the upload failed")
                .to_string();
            eprintln!("error: {error}");
            print_result(&serde_json::json!({"ok": false, "error": error, "offsite": offsite}));
            std::process::exit(1);
        }
        Ok(serde_json::json!({
            "ok": true, "backup_id": meta.backup_id, "size": meta.size, "sha256": meta.sha256,
            "offsite": offsite, "peak_rss_bytes": peak_rss_bytes(),
        }))
    })
}

/// Reads the private file that names the off-site storage.
fn read_target(path: &Path) -> Result<OffsiteTarget> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Tries to upload in this many attempts before the job reports the failure (the
/// control plane retries later, with a longer backoff).
const UPLOAD_ATTEMPTS: u32 = 3;

/// Uploads an encrypted copy of a kept dump, retrying with backoff; answers the
/// result's `offsite` part: `{"ok": true, "key", "size", "etag", "sha256", "checked_by"}`
/// or `{"ok": false, "key", "error"}` with the storage's own message.
async fn upload_with_retries(
    target: &OffsiteTarget,
    dump: &Path,
    meta: &BackupMeta,
) -> serde_json::Value {
    let mut delay = Duration::from_secs(2);
    let mut last_error = String::new();
    for attempt in 1..=UPLOAD_ATTEMPTS {
        say(&format!(
            "off-site: uploading an encrypted copy to {} (attempt {attempt} of {UPLOAD_ATTEMPTS})",
            target.key
        ));
        match crate::offsite::upload_file(target, dump, &meta.sha256, &mut |line| say(line)).await {
            Ok(done) => {
                say(&format!(
                    "off-site: {} listed with {} bytes, ETag {} (checked by {})",
                    done.key, done.size, done.etag, done.checked_by
                ));
                return serde_json::json!({
                    "ok": true,
                    "key": done.key,
                    "size": done.size,
                    "etag": done.etag,
                    "sha256": meta.sha256,
                    "checked_by": done.checked_by,
                });
            }
            Err(e) => {
                last_error = format!("{e:#}");
                eprintln!("[dynserv] off-site upload failed: {last_error}");
                if attempt < UPLOAD_ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
    serde_json::json!({"ok": false, "key": target.key, "error": last_error})
}

/// The most memory this process has held (VmHWM), for the result line.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `dynserv-agent compose-verify`.
pub fn verify_main(args: VerifyArgs) -> i32 {
    run_cli(async move {
        if let Some(file) = &args.offsite_file {
            let target = read_target(file)?;
            say(&format!(
                "downloading and decrypting the off-site copy {}",
                target.key
            ));
            let (size, sha256) = crate::offsite::download(&target, &mut |_| Ok(())).await?;
            say(&format!(
                "the off-site copy decrypts to {size} bytes with sha256 {sha256}, as recorded"
            ));
            return Ok(serde_json::json!({
                "ok": true, "backup_id": args.backup_id, "size": size, "sha256": sha256,
                "offsite": true, "peak_rss_bytes": peak_rss_bytes(),
            }));
        }
        let meta = verify(
            &args.backup_dir,
            &args.project,
            &args.service,
            &args.backup_id,
        )?;
        Ok(serde_json::json!({
            "ok": true, "backup_id": meta.backup_id, "size": meta.size, "sha256": meta.sha256,
        }))
    })
}

/// `dynserv-agent compose-restore`.
pub fn restore_main(args: RestoreArgs) -> i32 {
    run_cli(async move {
        if let Some(file) = &args.offsite_file {
            fetch_offsite(&args, &read_target(file)?).await?;
        }
        let meta = restore(&args).await?;
        Ok(serde_json::json!({
            "ok": true, "backup_id": meta.backup_id, "size": meta.size, "sha256": meta.sha256,
        }))
    })
}

/// A progress line of the agent's own, on stdout with the command's output.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[dynserv] {line}");
    let _ = out.flush();
}

fn check_name(what: &'static str, value: &str) -> Result<(), ComposeError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ComposeError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

/// The directory of one service's backups.
pub fn recipe_dir(backup_dir: &Path, project: &str, service: &str) -> Result<PathBuf> {
    check_name("compose project", project)?;
    check_name("service", service)?;
    Ok(backup_dir.join(project).join(service))
}

/// The dump file of a backup.
pub fn dump_file(backup_dir: &Path, project: &str, service: &str, id: &str) -> Result<PathBuf> {
    check_name("backup id", id)?;
    Ok(recipe_dir(backup_dir, project, service)?.join(format!("{id}.dump")))
}

fn meta_file(backup_dir: &Path, project: &str, service: &str, id: &str) -> Result<PathBuf> {
    check_name("backup id", id)?;
    Ok(recipe_dir(backup_dir, project, service)?.join(format!("{id}.json")))
}

/// The Docker socket path bollard will use.
fn docker_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string())
}

/// Connects to the local Docker daemon and agrees on an API version it speaks.
pub async fn connect() -> Result<Docker, ComposeError> {
    let socket = docker_socket();
    let unreachable = |cause: String| ComposeError::DockerUnreachable {
        socket: socket.clone(),
        cause,
    };
    // Long backups stream for a long time; the job's own timeout is the limit.
    let docker = Docker::connect_with_unix(&socket, 24 * 3600, bollard::API_DEFAULT_VERSION)
        .map_err(|e| unreachable(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// The running container of a compose service (the first replica when scaled).
pub async fn find_container(docker: &Docker, project: &str, service: &str) -> Result<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={service}"),
        ],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let mut containers = docker
        .list_containers(Some(options))
        .await
        .context("listing containers")?;
    let number = |c: &bollard::models::ContainerSummary| {
        c.labels
            .as_ref()
            .and_then(|l| l.get("com.docker.compose.container-number"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    containers.sort_by_key(number);
    let name_of = |c: &bollard::models::ContainerSummary| {
        c.names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .or_else(|| c.id.clone())
            .unwrap_or_default()
    };
    if let Some(running) = containers
        .iter()
        .find(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
    {
        let id = running
            .id
            .clone()
            .context("docker listed a container without id")?;
        say(&format!(
            "container {} of {project}/{service}",
            name_of(running)
        ));
        return Ok(id);
    }
    match containers.first() {
        Some(stopped) => Err(ComposeError::ContainerNotRunning {
            project: project.into(),
            service: service.into(),
            name: name_of(stopped),
        }
        .into()),
        None => Err(ComposeError::ContainerMissing {
            project: project.into(),
            service: service.into(),
        }
        .into()),
    }
}

/// Where a command's stdout goes.
enum StdoutTo<'a> {
    /// Into the job's log.
    Log,
    /// Into the dump being written.
    Dump(&'a mut DumpWriter),
}

/// Runs `/bin/sh -c command` in the container: stderr (and stdout unless it is the
/// dump) streams to the log; stdin gets `stdin_file` when given. Answers the exit code.
async fn exec(
    docker: &Docker,
    container: &str,
    command: &str,
    env: Vec<String>,
    mut stdout_to: StdoutTo<'_>,
    stdin_file: Option<&Path>,
) -> Result<i64> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    command.to_string(),
                ]),
                env: Some(env),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                attach_stdin: Some(stdin_file.is_some()),
                tty: Some(false),
                ..Default::default()
            },
        )
        .await
        .context("creating the exec in the container")?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = docker
        .start_exec(&created.id, None)
        .await
        .context("starting the command in the container")?
    else {
        anyhow::bail!("docker started the command detached");
    };
    let feeder = async {
        if let Some(path) = stdin_file {
            let mut file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut buf = vec![0u8; PIECE];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                input
                    .write_all(&buf[..n])
                    .await
                    .context("feeding the dump to the command's stdin")?;
            }
            input.flush().await?;
            input.shutdown().await?;
        }
        anyhow::Ok(())
    };
    let reader = async {
        while let Some(item) = output.next().await {
            match item.context("reading the command's output")? {
                LogOutput::StdOut { message } => match &mut stdout_to {
                    StdoutTo::Dump(dump) => dump.write(&message)?,
                    StdoutTo::Log => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&message)?;
                        out.flush()?;
                    }
                },
                LogOutput::StdErr { message } => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&message)?;
                    err.flush()?;
                }
                LogOutput::Console { message } | LogOutput::StdIn { message } => {
                    std::io::stdout().lock().write_all(&message)?;
                }
            }
        }
        anyhow::Ok(())
    };
    // A cancelled job's process group gets SIGTERM: pass it on to the command in the
    // container (Docker has no call to stop an exec), so it does not run on unseen.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    // Learnt now, so a cancel acts at once, within the agent's grace before SIGKILL.
    let early_pid = exec_pid(docker, &created.id).await;
    tokio::select! {
        (fed, read) = async { tokio::join!(feeder, reader) } => {
            read?;
            fed?;
        }
        _ = terminate.recv() => {
            let mut pid = early_pid;
            // A command that has only just started may not have a pid yet: look again
            // for up to a second, well within the agent's grace before SIGKILL.
            for _ in 0..10 {
                if pid.is_some() {
                    break;
                }
                pid = exec_pid(docker, &created.id).await;
                if pid.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            match pid {
                Some(pid) => {
                    // The command's shell may have children of its own: stop them all.
                    for child in descendants(pid as i32) {
                        // SAFETY: kill(2) on a host pid; no memory is involved.
                        unsafe {
                            libc::kill(child, libc::SIGTERM);
                        }
                    }
                    // SAFETY: kill(2) on the exec's host pid; no memory is involved.
                    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    eprintln!("[dynserv] SIGTERM to the command (pid {pid}): {}", if rc == 0 { "sent".to_string() } else { std::io::Error::last_os_error().to_string() });
                }
                None => eprintln!("[dynserv] docker reported no pid for the command; it may still run in the container"),
            }
            anyhow::bail!("stopped: the job was cancelled, and the command in the container was sent SIGTERM");
        }
    }
    // The stream ends a moment before Docker records the exit code (seconds on a busy
    // machine).
    for _ in 0..600 {
        let inspect = docker
            .inspect_exec(&created.id)
            .await
            .context("reading the command's exit code")?;
        if inspect.running != Some(true) {
            return inspect
                .exit_code
                .context("docker reported no exit code for the command");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the command still runs after its output ended")
}

/// The host pid of a running exec, when Docker knows it.
async fn exec_pid(docker: &Docker, exec_id: &str) -> Option<i64> {
    docker
        .inspect_exec(exec_id)
        .await
        .ok()
        .and_then(|i| i.pid)
        .filter(|pid| *pid > 1)
}

/// Every descendant of a process, from `/proc` (the Docker daemon runs on this host,
/// so an exec's pid is a pid here).
fn descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command's closing parenthesis: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Writes a dump to `<final>.partial`, hashing and counting as it goes; `finish`
/// renames it into place.
pub struct DumpWriter {
    file: std::io::BufWriter<std::fs::File>,
    partial: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl DumpWriter {
    /// Starts a dump that will become `path`.
    pub fn create(path: &Path) -> Result<DumpWriter> {
        if let Some(dir) = path.parent() {
            crate::private_fs::create_dir(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = path.with_extension("dump.partial");
        let file = crate::private_fs::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok(DumpWriter {
            file: std::io::BufWriter::with_capacity(PIECE, file),
            partial,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.partial.display()))
    }

    /// Bytes so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Syncs and renames the dump into place; answers (size, hex sha256).
    pub fn finish(self, path: &Path) -> Result<(u64, String)> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| anyhow::anyhow!("flushing the dump: {}", e.error()))?;
        file.sync_all().context("syncing the dump")?;
        std::fs::rename(&self.partial, path)
            .with_context(|| format!("renaming the dump to {}", path.display()))?;
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }

    /// Removes the partial file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Runs a backup: command in the container, then the dump out of it.
pub async fn backup(args: &BackupArgs) -> Result<BackupMeta> {
    let dump = dump_file(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let meta_path = meta_file(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let docker = connect().await?;
    let container = find_container(&docker, &args.project, &args.service).await?;
    say(&format!("running: {}", args.command));
    let mut writer = DumpWriter::create(&dump)?;
    let stdout_to = match args.dump_path {
        Some(_) => StdoutTo::Log,
        None => StdoutTo::Dump(&mut writer),
    };
    let code = match exec(
        &docker,
        &container,
        &args.command,
        Vec::new(),
        stdout_to,
        None,
    )
    .await
    {
        Ok(code) => code,
        Err(e) => {
            writer.discard();
            return Err(e);
        }
    };
    if code != 0 {
        writer.discard();
        return Err(ComposeError::CommandFailed(code).into());
    }
    say("the command exited with code 0");
    let source = match &args.dump_path {
        Some(path) => {
            say(&format!("copying {path} out of the container"));
            if let Err(e) = copy_out(&docker, &container, path, &mut writer).await {
                writer.discard();
                return Err(e);
            }
            path.clone()
        }
        None => "stdout".to_string(),
    };
    if writer.size() == 0 {
        writer.discard();
        let what = match &args.dump_path {
            Some(path) => format!("{path} inside the container has no bytes"),
            None => "the command wrote nothing to stdout".to_string(),
        };
        return Err(ComposeError::EmptyDump(what).into());
    }
    let (size, sha256) = writer.finish(&dump)?;
    let meta = BackupMeta {
        backup_id: args.backup_id.clone(),
        project: args.project.clone(),
        service: args.service.clone(),
        size,
        sha256,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source,
    };
    let tmp = meta_path.with_extension("json.tmp");
    crate::private_fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)?;
    std::fs::rename(&tmp, &meta_path)?;
    say(&format!(
        "backup {} kept: {} bytes, sha256 {}",
        meta.backup_id, meta.size, meta.sha256
    ));
    Ok(meta)
}

/// Streams the file at `path` out of the container through the archive API into
/// `writer`, unpacking the one-entry tar on the fly.
async fn copy_out(
    docker: &Docker,
    container: &str,
    path: &str,
    writer: &mut DumpWriter,
) -> Result<()> {
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = TarReader::default();
    let mut first = true;
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) if first => {
                return Err(ComposeError::DumpMissing {
                    path: path.to_string(),
                    cause: e.to_string(),
                }
                .into())
            }
            Err(e) => return Err(anyhow::Error::from(e).context("copying the dump")),
        };
        first = false;
        tar.feed(&piece, &mut |data| writer.write(data))
            .map_err(|e| match e {
                TarError::NotAFile => ComposeError::NotAFile(path.to_string()).into(),
                other => anyhow::anyhow!("reading the archive docker sent: {other}"),
            })?;
        if tar.done() {
            break;
        }
    }
    if !tar.got_file() {
        return Err(ComposeError::DumpMissing {
            path: path.to_string(),
            cause: "docker sent an empty archive".into(),
        }
        .into());
    }
    Ok(())
}

/// Keeps the newest `keep` backups of a service; answers the ids removed.
pub fn prune(backup_dir: &Path, project: &str, service: &str, keep: u32) -> Result<Vec<String>> {
    let mut all = list(backup_dir, project, service)?;
    let keep = keep.max(1) as usize;
    if all.len() <= keep {
        remove_stale_partials(&recipe_dir(backup_dir, project, service)?);
        return Ok(Vec::new());
    }
    let dir = recipe_dir(backup_dir, project, service)?;
    remove_stale_partials(&dir);
    let excess = all.len() - keep;
    let mut removed = Vec::new();
    for old in all.drain(..excess) {
        let _ = std::fs::remove_file(dir.join(format!("{}.dump", old.backup_id)));
        let _ = std::fs::remove_file(dir.join(format!("{}.json", old.backup_id)));
        removed.push(old.backup_id);
    }
    Ok(removed)
}

/// Removes dumps a killed backup left half-written (a day old: a backup of the same
/// service running right now keeps its own).
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if stale && path.to_string_lossy().ends_with(".dump.partial") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The kept backups of a service, oldest first.
pub fn list(backup_dir: &Path, project: &str, service: &str) -> Result<Vec<BackupMeta>> {
    let dir = recipe_dir(backup_dir, project, service)?;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        if let Ok(meta) = serde_json::from_slice::<BackupMeta>(&std::fs::read(&path)?) {
            out.push(meta);
        }
    }
    out.sort_by(|a, b| (a.created_unix, &a.backup_id).cmp(&(b.created_unix, &b.backup_id)));
    Ok(out)
}

/// Size and hex sha256 of a file, read in pieces.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Recomputes a kept backup's sha256 and compares it with the recorded one.
pub fn verify(backup_dir: &Path, project: &str, service: &str, id: &str) -> Result<BackupMeta> {
    let bad = |reason: String| ComposeError::BadBackup {
        id: id.to_string(),
        reason,
    };
    let meta_path = meta_file(backup_dir, project, service, id)?;
    let meta: BackupMeta = match std::fs::read(&meta_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("its record is unreadable: {e}")))?,
        Err(_) => {
            return Err(bad("it is not kept on this server (pruned or never made)".into()).into())
        }
    };
    let dump = dump_file(backup_dir, project, service, id)?;
    say(&format!("recomputing the sha256 of {}", dump.display()));
    let (size, sha256) = hash_file(&dump).map_err(|e| bad(format!("{e:#}")))?;
    if sha256 != meta.sha256 || size != meta.size {
        return Err(bad(format!(
            "checksum mismatch: recorded {} ({} bytes), found {sha256} ({size} bytes)",
            meta.sha256, meta.size
        ))
        .into());
    }
    say(&format!("sha256 {sha256} matches ({size} bytes)"));
    Ok(meta)
}

/// Downloads and decrypts an off-site copy into this server's backups, as if the backup
/// had been made here: the dump is written to `<id>.dump.partial`, its sha256 checked
/// against the recorded one, and only then renamed into place with its record.
async fn fetch_offsite(args: &RestoreArgs, target: &OffsiteTarget) -> Result<()> {
    let dump = dump_file(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let meta_path = meta_file(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let expected = target
        .sha256
        .clone()
        .context("the off-site copy has no recorded sha256 to check it against")?;
    say(&format!(
        "downloading and decrypting the off-site copy {}",
        target.key
    ));
    let mut writer = DumpWriter::create(&dump)?;
    let fetched = crate::offsite::download(target, &mut |piece| writer.write(piece)).await;
    if let Err(e) = fetched {
        writer.discard();
        return Err(e);
    }
    let (size, sha256) = writer.finish(&dump)?;
    if sha256 != expected {
        let _ = std::fs::remove_file(&dump);
        anyhow::bail!("the off-site copy decrypts to sha256 {sha256}, recorded {expected}");
    }
    let meta = BackupMeta {
        backup_id: args.backup_id.clone(),
        project: args.project.clone(),
        service: args.service.clone(),
        size,
        sha256,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source: format!("off-site {}", target.key),
    };
    let tmp = meta_path.with_extension("json.tmp");
    crate::private_fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)?;
    std::fs::rename(&tmp, &meta_path)?;
    say(&format!(
        "fetched {size} bytes, sha256 {} as recorded",
        meta.sha256
    ));
    Ok(())
}

/// Restores a kept backup into the service's container and runs the restore command.
pub async fn restore(args: &RestoreArgs) -> Result<BackupMeta> {
    let meta = verify(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let dump = dump_file(
        &args.backup_dir,
        &args.project,
        &args.service,
        &args.backup_id,
    )?;
    let docker = connect().await?;
    let container = find_container(&docker, &args.project, &args.service).await?;
    let mut env = Vec::new();
    let stdin_file = match &args.dump_path {
        Some(path) => {
            say(&format!(
                "copying backup {} to {path} in the container",
                meta.backup_id
            ));
            copy_in(&docker, &container, &dump, path, meta.size).await?;
            env.push(format!("DYNSERV_RESTORE_FILE={path}"));
            None
        }
        None => {
            say(&format!(
                "feeding backup {} to the command's stdin",
                meta.backup_id
            ));
            Some(dump.as_path())
        }
    };
    say(&format!("running: {}", args.command));
    let code = exec(
        &docker,
        &container,
        &args.command,
        env,
        StdoutTo::Log,
        stdin_file,
    )
    .await?;
    if code != 0 {
        return Err(ComposeError::CommandFailed(code).into());
    }
    say("restore done: the command exited with code 0");
    Ok(meta)
}

/// Uploads `file` to `target` (a file path) in the container as a one-entry tar
/// streamed from disk.
async fn copy_in(
    docker: &Docker,
    container: &str,
    file: &Path,
    target: &str,
    size: u64,
) -> Result<()> {
    let (dir, name) = match target.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => anyhow::bail!("the dump path {target:?} must be absolute"),
    };
    if name.is_empty() || !target.starts_with('/') {
        anyhow::bail!("the dump path {target:?} must be an absolute file path");
    }
    let header = tar_header(name, size)?;
    let handle =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let padding = (512 - (size % 512) as usize) % 512;
    let body = futures::stream::once(async move { Ok(bytes::Bytes::from(header.to_vec())) })
        .chain(futures::stream::unfold(handle, |mut handle| async move {
            let mut buf = vec![0u8; PIECE];
            match handle.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), handle))
                }
                Err(e) => Some((Err(e), handle)),
            }
        }))
        .chain(futures::stream::once(async move {
            Ok(bytes::Bytes::from(vec![0u8; padding + 1024]))
        }));
    let options = UploadToContainerOptionsBuilder::new().path(dir).build();
    docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(body))
        .await
        .with_context(|| format!("copying the dump into the container at {target}"))
}

/// A ustar header for one regular file (mode 0644, owner root).
fn tar_header(name: &str, size: u64) -> Result<[u8; 512]> {
    if name.len() > 100 {
        anyhow::bail!("the dump's file name is longer than 100 bytes");
    }
    if size >= 0o77777777777 {
        anyhow::bail!("the dump is larger than 8 GiB, which a plain tar header cannot carry");
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    octal(&mut h, 136, 12, now);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// What went wrong reading a tar stream.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TarError {
    /// The first real entry is a directory, link or device.
    #[error("the archive's entry is not a regular file")]
    NotAFile,
    /// A header's size field is unreadable.
    #[error("a tar header is malformed")]
    BadHeader,
}

/// A streaming reader for the one-file tar the archive API sends: skips pax and GNU
/// long-name entries, hands the first regular file's bytes to a sink, and holds at
/// most one 512-byte header in memory.
#[derive(Default)]
pub struct TarReader {
    header: Vec<u8>,
    /// Bytes of the current entry still to come (data), then padding to skip.
    data_left: u64,
    pad_left: u64,
    /// Whether the current entry's data goes to the sink.
    sinking: bool,
    got_file: bool,
    done: bool,
}

impl TarReader {
    /// Whether the file entry was seen.
    pub fn got_file(&self) -> bool {
        self.got_file
    }

    /// Whether the file's data is complete.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Consumes the next piece of the stream.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> std::result::Result<(), TarError> {
        while !bytes.is_empty() && !self.done {
            if self.data_left > 0 {
                let n = (self.data_left as usize).min(bytes.len());
                if self.sinking {
                    sink(&bytes[..n]).map_err(|_| TarError::BadHeader)?;
                }
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                if self.data_left == 0 && self.sinking {
                    self.done = true;
                }
                continue;
            }
            if self.pad_left > 0 {
                let n = (self.pad_left as usize).min(bytes.len());
                self.pad_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let need = 512 - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < 512 {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if header.iter().all(|b| *b == 0) {
                // End-of-archive block.
                self.done = true;
                break;
            }
            let size = parse_size(&header[124..136]).ok_or(TarError::BadHeader)?;
            let kind = header[156];
            match kind {
                b'0' | 0 | b'7' => {
                    self.sinking = true;
                    self.got_file = true;
                    if size == 0 {
                        self.done = true;
                    }
                }
                b'x' | b'g' | b'L' | b'K' => self.sinking = false,
                _ => return Err(TarError::NotAFile),
            }
            self.data_left = size;
            self.pad_left = (512 - size % 512) % 512;
        }
        Ok(())
    }
}

/// A tar size field: octal text, or GNU base-256 for large sizes.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            value = value.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = tar_header(name, data.len() as u64).unwrap().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len() + (512 - data.len() % 512) % 512 + 1024, 0);
        out
    }

    fn unpack(bytes: &[u8], piece: usize) -> Result<Vec<u8>, TarError> {
        let mut reader = TarReader::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(piece) {
            reader.feed(chunk, &mut |d| {
                got.extend_from_slice(d);
                Ok(())
            })?;
        }
        assert!(reader.got_file());
        Ok(got)
    }

    /// The tar writer and the streaming reader agree, whatever the piece size.
    #[test]
    fn tar_round_trip_in_any_pieces() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let tar = tar_of("dump.sql", &data);
        for piece in [1, 7, 511, 512, 513, 4096, 100_000] {
            assert_eq!(unpack(&tar, piece).unwrap(), data, "piece {piece}");
        }
    }

    /// A pax header before the file is skipped; a directory entry is refused.
    #[test]
    fn tar_skips_pax_and_refuses_directories() {
        let mut pax = tar_header("PaxHeaders/dump", 30).unwrap();
        pax[156] = b'x';
        let mut bytes = pax.to_vec();
        bytes.extend_from_slice(&[b'a'; 30]);
        bytes.resize(1024, 0);
        bytes.extend(tar_of("dump", b"hello"));
        assert_eq!(unpack(&bytes, 100).unwrap(), b"hello");

        let mut dir = tar_header("data/", 0).unwrap();
        dir[156] = b'5';
        let mut reader = TarReader::default();
        assert_eq!(reader.feed(&dir, &mut |_| Ok(())), Err(TarError::NotAFile));
    }

    /// GNU base-256 sizes parse.
    #[test]
    fn base256_size() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 0x02;
        field[10] = 0x01;
        assert_eq!(parse_size(&field), Some(258));
        assert_eq!(parse_size(b"00000000012\0"), Some(10));
    }

    /// Pruning keeps the newest N by time; verify catches a changed dump.
    #[test]
    fn prune_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        for (i, id) in ["b1", "b2", "b3"].iter().enumerate() {
            let path = dump_file(dir.path(), "proj", "db", id).unwrap();
            let mut w = DumpWriter::create(&path).unwrap();
            w.write(id.as_bytes()).unwrap();
            let (size, sha256) = w.finish(&path).unwrap();
            let meta = BackupMeta {
                backup_id: id.to_string(),
                project: "proj".into(),
                service: "db".into(),
                size,
                sha256,
                created_unix: 100 + i as u64,
                source: "stdout".into(),
            };
            std::fs::write(
                meta_file(dir.path(), "proj", "db", id).unwrap(),
                serde_json::to_vec(&meta).unwrap(),
            )
            .unwrap();
        }
        assert_eq!(prune(dir.path(), "proj", "db", 2).unwrap(), vec!["b1"]);
        let kept: Vec<_> = list(dir.path(), "proj", "db")
            .unwrap()
            .into_iter()
            .map(|m| m.backup_id)
            .collect();
        assert_eq!(kept, vec!["b2", "b3"]);
        assert!(verify(dir.path(), "proj", "db", "b3").is_ok());
        std::fs::write(
            dump_file(dir.path(), "proj", "db", "b3").unwrap(),
            b"tampered",
        )
        .unwrap();
        let err = verify(dir.path(), "proj", "db", "b3").unwrap_err();
        assert!(format!("{err:#}").contains("checksum mismatch"), "{err:#}");
        assert!(verify(dir.path(), "proj", "db", "b1").is_err());
        assert!(dump_file(dir.path(), "../x", "db", "b1").is_err());
    }
}
