//! The fleet protocol's messages. Each message is sent as one frame (see
//! [`crate::frame`]); enums are tagged with a `"type"` field so a reader can tell them
//! apart and an unknown type is a decode error, not a silent default.
//!
//! Streams of one connection:
//!
//! * **Enrollment** (connection without a client certificate): the agent opens one
//!   bidirectional stream, sends [`EnrollRequest`], reads [`EnrollResponse`], and the
//!   connection ends. Nothing else is served to an unauthenticated peer.
//! * **Control** (first stream the agent opens on an authenticated connection):
//!   [`AgentControl::Hello`] first, answered by [`ServerControl::Welcome`] or
//!   [`ServerControl::Refused`]; then [`AgentControl::Heartbeat`]s, each answered by
//!   [`ServerControl::HeartbeatAck`].
//! * **Job** (one per job, opened by the control plane): [`ToAgent::Start`] first, then
//!   the agent answers [`FromAgent::Started`] (or [`FromAgent::Rejected`]), streams
//!   [`FromAgent::Output`] chunks numbered from 0 with no gap, and ends with
//!   [`FromAgent::End`]. The control plane answers [`ToAgent::Ack`] once chunks are
//!   durably stored (cumulative: every seq up to and including `up_to_seq`),
//!   [`ToAgent::EndAck`] once the end is stored, and may send [`ToAgent::Cancel`] at
//!   any time. After a reconnect the control plane sends `Start` again for every job
//!   it has not seen end; the agent never runs a job id twice, it resumes sending from
//!   the first unacknowledged chunk instead. A repeated `Start` for a job the agent
//!   reported started carries [`JobSpec::resume_only`], so that a copy of the agent
//!   that never saw the job does not start it either.
//!
//! * **Terminal** (protocol 3; one per open terminal, opened by the control plane):
//!   [`ToAgent::TerminalOpen`] first; the agent answers [`FromAgent::TerminalOpened`]
//!   (or [`FromAgent::Rejected`], for example past its limit of terminals), then sends
//!   the PTY's output as [`FromAgent::TerminalOutput`] frames of at most
//!   [`MAX_TERMINAL_FRAME`] bytes and ends with [`FromAgent::TerminalClosed`] when the
//!   shell exits. The control plane sends [`ToAgent::TerminalInput`],
//!   [`ToAgent::TerminalResize`] and [`ToAgent::TerminalClose`]; closing the stream
//!   closes the terminal too. Terminal bytes travel base64-encoded (a PTY's output is
//!   not always valid UTF-8, and a read may end inside a character). Nothing of a
//!   terminal is stored on the agent.
//!
//! Copies of one agent (its state directory cloned to another machine) share its
//! certificate; the hello's `host_id` and `instance_id` tell them apart, and the
//! control plane refuses every copy but the one holding the identity with
//! [`ServerControl::Refused`] and a long `retry_after_s`. The fields added for this
//! default to empty, so older agents and control planes still understand each other.
//!
//! A control plane may run as several replicas; the agent knows their addresses and
//! fails over between them. [`ServerControl::Welcome`] carries the current list, so it
//! can change without enrolling again (empty from older control planes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// ALPN protocol name of the fleet protocol, version 1.
pub const ALPN: &[u8] = b"dynserv/1";

/// Version of the message set below; sent in every hello and enrollment request.
///
/// History: 1 is the first release's message set; 2 adds certificate renewal on the
/// control stream ([`ServerControl::Certificate`], [`AgentControl::CertificateStored`]);
/// 3 adds terminal streams ([`ToAgent::TerminalOpen`] and the messages after it);
/// 4 adds agent upgrades (the upgrade stream, [`ToAgent::Upgrade`] and the messages
/// after it, [`AgentControl::UpgradeOutcome`], and the control plane's signing key in
/// [`ServerControl::Welcome`] and [`EnrollResponse::Enrolled`]) and CA rotation (the
/// CA bundle in [`ServerControl::Certificate`]).
/// A control plane serves agents down to [`MIN_PROTOCOL_VERSION`] (one version older
/// than its own) and sends each only what its version knows: nothing added in a later
/// version, and no job whose kind needs a later one ([`JobKind::min_protocol`]).
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest agent protocol a control plane still serves: the previous release's, so
/// a fleet can be upgraded agent by agent after its control plane. An older hello is
/// refused with [`ServerControl::Refused`] and a reason naming the upgrade path.
pub const MIN_PROTOCOL_VERSION: u32 = PROTOCOL_VERSION - 1;

/// The first protocol that knows terminal streams; the control plane never opens one
/// to an agent whose hello announced an older protocol.
pub const TERMINAL_MIN_PROTOCOL: u32 = 3;

/// The first protocol that knows agent upgrades; the control plane never offers an
/// upgrade to (nor sends its signing key to) an agent whose hello announced an older
/// one: such an agent is upgraded by hand once.
pub const UPGRADE_MIN_PROTOCOL: u32 = 4;

/// The first protocol whose [`ServerControl::Certificate`] carries a CA bundle: only
/// agents of this protocol or later are sent certificates of a CA they were not told
/// about at enrollment (a CA rotation).
pub const CA_BUNDLE_MIN_PROTOCOL: u32 = 4;

/// Most bytes of an agent binary in one [`ToAgent::UpgradeChunk`] (before base64), so
/// a chunk's frame stays well under [`crate::frame::MAX_FRAME_LEN`].
pub const MAX_UPGRADE_CHUNK: usize = 256 * 1024;

/// The largest agent binary an upgrade carries; a larger offer is refused by the agent
/// before anything is written.
pub const MAX_AGENT_BINARY_BYTES: u64 = 512 * 1024 * 1024;

/// Most bytes of terminal data (before base64) in one [`ToAgent::TerminalInput`] or
/// [`FromAgent::TerminalOutput`]; a longer input is split by the sender, and the agent
/// reads the PTY in pieces of at most this size.
pub const MAX_TERMINAL_FRAME: usize = 16 * 1024;

/// Default UDP port of the fleet gateway.
pub const DEFAULT_PORT: u16 = 4433;

/// The DNS name in the control plane's server certificate. Agents verify the server
/// certificate against this fixed name (and the pinned CA) rather than the address they
/// dialed, so the control plane can be reached by any address or name.
pub const FLEET_SERVER_NAME: &str = "dynserv.fleet";

/// Most control-plane addresses an agent keeps (given at enrollment or announced in
/// [`ServerControl::Welcome`]); past it the rest of an announced list is ignored.
pub const MAX_REPLICA_ADDRESSES: usize = 32;

/// Longest control-plane address, in bytes; a longer announced entry is ignored.
pub const MAX_REPLICA_ADDRESS_LEN: usize = 255;

/// Largest output chunk an agent sends, in bytes of `data`.
pub const MAX_CHUNK_LEN: usize = 32 * 1024;

/// The start of the last stdout line of a backup, verify, restore or update job:
/// `DYNSERV-RESULT {json}` carries what the control plane records (size, sha256,
/// upgraded packages, or `{"ok": false, "error"}`). It travels as ordinary output.
pub const RESULT_PREFIX: &str = "DYNSERV-RESULT ";

/// Host facts, sent at enrollment and in every hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The host name (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    /// The distribution's pretty name (`/etc/os-release` `PRETTY_NAME`).
    pub os: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// The CPU architecture the agent was built for (`x86_64`, `aarch64`).
    pub arch: String,
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Size of the root file system in bytes.
    pub disk_bytes: u64,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// The agent's version.
    pub agent_version: String,
}

/// Live figures, sent in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Available memory in bytes (`MemAvailable`).
    pub memory_available: u64,
    /// Size of the root file system in bytes.
    pub disk_total: u64,
    /// Bytes available to unprivileged users on the root file system.
    pub disk_available: u64,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// Jobs the agent is running right now.
    pub running_jobs: u32,
    /// Busy CPU time since the previous heartbeat, in percent of all CPUs (from
    /// `/proc/stat` deltas); `None` in the first heartbeat of a connection and from
    /// agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
}

/// First and only request of an enrollment connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The agent's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The secret part of the enrollment token, proven once.
    pub secret: String,
    /// The name the agent asks to be known by (defaults to its host name).
    pub name: String,
    /// The agent's public key: the raw uncompressed P-256 point, base64 (standard).
    /// The control plane certifies it; the private key never leaves the agent.
    pub public_key: String,
    /// Host facts at enrollment time.
    pub facts: Facts,
    /// The host's identity (see [`AgentControl::Hello`]'s `host_id`), recorded with the
    /// agent so that a later copy of its state directory on another machine is told
    /// apart from it. Empty from agents that predate it.
    #[serde(default)]
    pub host_id: String,
}

/// Answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollResponse {
    /// The agent is enrolled.
    Enrolled {
        /// The agent's id; also the CN of its certificate.
        agent_id: String,
        /// The agent's client certificate (PEM).
        certificate_pem: String,
        /// The control plane's CA certificates (PEM), for later connections: the one
        /// the token pinned first, then any other it trusts (during a CA rotation).
        ca_pem: String,
        /// The control plane's Ed25519 public key for agent binaries (base64 of its 32
        /// bytes): an upgrade's binary must carry a signature that verifies with it.
        /// Empty from control planes that predate upgrades.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        signing_key: String,
    },
    /// Enrollment refused; `reason` says why in words a person can act on.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Messages from the agent on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentControl {
    /// First message of every authenticated connection.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's id, which must match its certificate.
        agent_id: String,
        /// Host facts.
        facts: Facts,
        /// A stable identity of the machine the agent runs on (a keyed hash of
        /// `/etc/machine-id`, not the id itself). A copy of the agent's state directory
        /// on another machine (a clone, a snapshot) presents the same certificate but
        /// another host id, which is how the control plane tells the copies apart.
        /// Empty from agents that predate it, or when the machine has no id.
        #[serde(default)]
        host_id: String,
        /// A random id the agent process draws at start and keeps for its lifetime:
        /// two processes sharing one identity on one host (or on hosts with the same
        /// machine id) differ in it. Empty from agents that predate it.
        #[serde(default)]
        instance_id: String,
    },
    /// Periodic figures; also keeps the connection's liveness visible.
    Heartbeat(Load),
    /// The agent stored the certificate of a [`ServerControl::Certificate`] and presents
    /// it from its next connection on (protocol 2).
    CertificateStored {
        /// The SHA-256 (hex) of the certificate's DER, as stored.
        sha256: String,
    },
    /// How an upgrade ended (protocol 4): sent after the welcome by the agent process
    /// that runs once the upgrade is over, the new version when it succeeded, the
    /// previous one after a rollback.
    UpgradeOutcome {
        /// The upgrade's id ([`UpgradeOffer::upgrade_id`]).
        upgrade_id: String,
        /// The version running now.
        version: String,
        /// Why it failed and was rolled back; absent when it succeeded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Messages from the control plane on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerControl {
    /// The hello was accepted.
    Welcome {
        /// The control plane's version.
        version: String,
        /// How often the agent should send a heartbeat, in seconds.
        heartbeat_s: u64,
        /// The control plane's current replica addresses (`HOST:PORT` of each
        /// replica's fleet gateway), in the order the agent should prefer them. The
        /// agent keeps this list in its state directory in place of the one it was
        /// enrolled with (keeping the address it is connected to as well), so replicas
        /// can be added or retired without enrolling again. At most
        /// [`MAX_REPLICA_ADDRESSES`] entries of at most [`MAX_REPLICA_ADDRESS_LEN`]
        /// bytes are used. Empty from control planes that predate it, and then the
        /// agent's list stays as it is.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        servers: Vec<String>,
        /// The control plane's Ed25519 public key for agent binaries (base64 of its 32
        /// bytes; protocol 4, empty for older agents and from older control planes). An
        /// agent that has none yet (enrolled before signing keys existed) keeps the
        /// first one it is sent over its authenticated connection; one that has one
        /// never replaces it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        signing_key: String,
        /// The CA certificates (PEM) the control plane trusts now, the one that signs
        /// its server certificate first (protocol 4; empty for older agents and from
        /// older control planes). An agent keeps it as its `ca.pem` when its own
        /// certificate verifies against it, so a CA retired after a rotation is trusted
        /// by the agent no more from its next connection on.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ca_pem: String,
    },
    /// The hello was refused (revoked agent, unknown version, another copy of the agent
    /// holds its identity); the connection closes.
    Refused {
        /// Why.
        reason: String,
        /// How long the agent should wait before it tries again, in seconds, when the
        /// refusal will last (a duplicate identity stays refused until a person acts);
        /// the agent's usual reconnect backoff applies when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
    },
    /// A heartbeat was received.
    HeartbeatAck,
    /// A renewed client certificate for the agent's own key (protocol 2; never sent to
    /// an older agent). The agent replaces its certificate file atomically, answers
    /// [`AgentControl::CertificateStored`], and presents the new certificate from its
    /// next connection on; the control plane accepts the old one until then.
    Certificate {
        /// The new certificate (PEM).
        certificate_pem: String,
        /// When it expires (RFC 3339).
        expires_at: String,
        /// The CA certificates (PEM, one or more) the agent trusts from now on, for the
        /// control plane's server certificate and as the issuers of its own (protocol
        /// 4; absent from older control planes and for older agents). While the control
        /// plane rotates its CA this holds the old and the new one, and the new
        /// certificate may come from the new one: the agent checks the certificate
        /// against this bundle and stores the bundle as its `ca.pem` before the
        /// certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

/// Which output a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
    /// A note from the agent itself (for example "resumed after an agent restart").
    System,
}

impl OutputStream {
    /// The name used in APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            OutputStream::System => "system",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// A script run by an interpreter.
    Script {
        /// The interpreter (`/bin/sh`, `/bin/bash`, `/usr/bin/python3`); the script is
        /// passed to it as a file argument.
        interpreter: String,
        /// The script text.
        body: String,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Working directory; the agent's state directory when absent.
        working_dir: Option<String>,
    },
    /// A playbook run by the agent's native runtime.
    Playbook {
        /// The playbook YAML text.
        yaml: String,
        /// Extra variables (`-e KEY=VALUE`).
        vars: BTreeMap<String, String>,
        /// Check mode: report what would change without changing it.
        check: bool,
        /// Diff mode (`--diff`), with a structured report: the agent runs the playbook
        /// with `--diff` and its last stdout line is [`RESULT_PREFIX`] and the run's
        /// per-task report (name, action, status, diff; see
        /// `dynserv_playbook::engine::TaskReport`). Drift checks and their Apply set it.
        /// Left out when false, so older agents read the same job as before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        diff: bool,
        /// Run a task whose module the native runtime lacks through ansible-core's
        /// `ansible` program, when it is installed on the server; without this such a
        /// playbook is refused before any task runs.
        #[serde(default)]
        ansible_fallback: bool,
        /// The name the play sees as `inventory_hostname` and labels its output with
        /// (`ok: [web-1]`): the server's name. Absent from older control planes (the
        /// agent then says `localhost`) and left out when unset, so older agents read
        /// the same job as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory_hostname: Option<String>,
        /// The files that come with the playbook (roles/, templates/, files/,
        /// group_vars/, …): the agent writes them beside it, under the rules of
        /// [`crate::tree::check_path`], before it runs it. Left out when empty, so
        /// older agents read a job without files as before.
        #[serde(default, skip_serializing_if = "crate::tree::Files::is_empty")]
        files: crate::tree::Files,
        /// The project's inventory (its servers, groups and variables; see
        /// [`crate::inventory`]): the agent runs the playbook with it as `-i` and
        /// `--limit` set to `inventory_hostname`. Left out when absent, so older
        /// agents read the same job as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory: Option<crate::inventory::SharedInventory>,
    },
    /// A database backup of a Docker Compose service: the agent runs `command` in the
    /// service's container through the Docker API and keeps the dump (the file at
    /// `dump_path` inside the container, or the command's stdout when absent) as
    /// backup `backup_id`, keeping the newest `keep` backups of that service. The
    /// job's last stdout line is `DYNSERV-RESULT {json}` with size and sha256.
    ComposeBackup {
        /// The backup's id; the dump's name on the agent.
        backup_id: String,
        /// The `com.docker.compose.project` label of the container.
        compose_project: String,
        /// The `com.docker.compose.service` label of the container.
        service: String,
        /// The backup command, run with `/bin/sh -c` inside the container.
        command: String,
        /// Where the command leaves its dump inside the container.
        dump_path: Option<String>,
        /// How many backups of this service the agent keeps.
        keep: u32,
        /// Where to upload an encrypted copy of the dump once it is kept; absent when
        /// the project has no off-site storage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offsite: Option<OffsiteTarget>,
    },
    /// Uploads an encrypted copy of a kept backup to off-site storage again (a retry
    /// after a failed upload); the last stdout line reports the upload like a
    /// backup's `offsite` part.
    ComposeOffsiteUpload {
        /// The backup's id.
        backup_id: String,
        /// The Compose project the backup belongs to.
        compose_project: String,
        /// The Compose service the backup belongs to.
        service: String,
        /// Where to upload it (always given; the job fails without it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offsite: Option<OffsiteTarget>,
    },
    /// Recomputes a kept backup's sha256 and compares it with the one recorded; with
    /// `offsite`, downloads and decrypts the off-site copy instead and checks that.
    ComposeVerify {
        /// The backup's id.
        backup_id: String,
        /// The Compose project the backup belongs to.
        compose_project: String,
        /// The Compose service the backup belongs to.
        service: String,
        /// Check the off-site copy, not the one kept on the server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offsite: Option<OffsiteTarget>,
    },
    /// Restores a kept backup: copies it into the service's container at `dump_path`
    /// (or feeds it to the command's stdin when absent), then runs `command` there.
    ComposeRestore {
        /// The backup's id.
        backup_id: String,
        /// The `com.docker.compose.project` label of the container.
        compose_project: String,
        /// The `com.docker.compose.service` label of the container.
        service: String,
        /// The restore command, run with `/bin/sh -c` inside the container.
        command: String,
        /// Where the dump is copied inside the container before the command runs.
        dump_path: Option<String>,
        /// Fetch the dump from off-site storage first (decrypted and checked, then
        /// kept on this server like a backup made here).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offsite: Option<OffsiteTarget>,
    },
    /// Upgrades the system's packages with its package manager (apt, dnf or apk),
    /// non-interactively; the job's last stdout line is `DYNSERV-RESULT {json}` with
    /// the upgraded packages and whether a reboot is required.
    SystemUpdate {
        /// Only list what would be upgraded.
        check: bool,
    },
}

impl JobKind {
    /// The oldest agent protocol that knows this kind of job; the control plane never
    /// sends the job to an agent speaking an older one.
    pub fn min_protocol(&self) -> u32 {
        match self {
            JobKind::Script { .. }
            | JobKind::Playbook { .. }
            | JobKind::ComposeBackup { .. }
            | JobKind::ComposeOffsiteUpload { .. }
            | JobKind::ComposeVerify { .. }
            | JobKind::ComposeRestore { .. }
            | JobKind::SystemUpdate { .. } => 1,
        }
    }
}

/// An object in S3-compatible storage that holds (or will hold) an encrypted copy of
/// a backup, with what the agent needs to reach and read it. It carries secrets (the
/// storage's secret key and the project's backup key): the control plane sends it only
/// inside a job, and lists the secret key among the job's masked secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsiteTarget {
    /// The storage's endpoint URL (`https://s3.eu-central-1.amazonaws.com`,
    /// `https://fsn1.your-objectstorage.com`, `http://127.0.0.1:9000`).
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region the request signatures name (`us-east-1` when the storage has none).
    pub region: String,
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// The object's key inside the bucket.
    pub key: String,
    /// The project's backup key: 32 bytes, base64; dumps are encrypted with it
    /// (XChaCha20-Poly1305 in the STREAM construction) before they leave the server.
    pub encryption_key: String,
    /// The sha256 of the clear dump, when known (verify and restore check it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl std::fmt::Debug for OffsiteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret key or the backup key, not even in a log line.
        f.debug_struct("OffsiteTarget")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One job, as sent to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The execution id; the agent never starts the same id twice.
    pub job_id: String,
    /// What to run.
    #[serde(flatten)]
    pub kind: JobKind,
    /// Seconds after which the job's process group is killed and the job ends as
    /// timed out; no limit when absent.
    pub timeout_s: Option<u64>,
    /// Secret values (passwords, tokens) the job receives as variables; the agent
    /// replaces each of them by `********` in every output chunk before sending it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The job was started before (by this agent or by another copy of it): resume it
    /// if this agent started it, and never start it here otherwise. The control plane
    /// sets it on every `Start` it sends again for a job an agent reported started, so
    /// that a copy of the agent's state directory never runs a job a second time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume_only: bool,
    /// The most output bytes the control plane stores for this job. Past it the agent
    /// stops spooling the job's output (the job goes on) and frees the file space it
    /// would have taken; absent: no limit (older control planes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// One numbered piece of output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// Position in the job's output, from 0, without gaps.
    pub seq: u64,
    /// Which output.
    pub stream: OutputStream,
    /// The bytes, as text (invalid UTF-8 is replaced).
    pub data: String,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit, killed by a signal, or could not start.
    Failed,
    /// Stopped by a cancel request.
    Cancelled,
    /// Stopped because it ran past its timeout.
    TimedOut,
}

/// The end of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnd {
    /// How it ended.
    pub status: JobStatus,
    /// The process's exit code, when it exited (not when killed by a signal).
    pub exit_code: Option<i32>,
    /// One line for people ("exit code 2", "killed after 30 s timeout").
    pub summary: String,
    /// Number of output chunks the job produced (the next seq it would have used).
    pub chunks: u64,
    /// The facts a playbook job gathered on its host (`gather_facts`), which the
    /// control plane keeps as the server's latest facts for other hosts' `hostvars`.
    /// Absent when the run gathered none, from older agents, and when the facts
    /// took more than [`MAX_REPORTED_FACTS_BYTES`]; left out when absent, so older
    /// control planes read the same end as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Box<GatheredFacts>>,
}

/// The most bytes (as JSON) of the facts a job reports in [`JobEnd::facts`]: an agent
/// reports none past it, and the control plane keeps none past it.
pub const MAX_REPORTED_FACTS_BYTES: usize = 64 * 1024;

/// Facts gathered on one host by a playbook run, as Ansible's fact cache keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatheredFacts {
    /// When they were gathered (RFC 3339).
    pub gathered_at: String,
    /// The facts without their `ansible_` prefix, as in `ansible_facts`
    /// (`hostname`, `default_ipv4`, ...).
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// Messages from the control plane on a job stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// Run (or resume reporting) this job. Always the first message of a job stream.
    Start(Box<JobSpec>),
    /// Every chunk with `seq <= up_to_seq` is stored; the agent may drop them.
    Ack {
        /// Highest stored seq.
        up_to_seq: u64,
    },
    /// Stop the job: its whole process group is killed.
    Cancel,
    /// The job's end is stored; the agent may forget everything but its id.
    EndAck,
    /// Open a terminal: a login shell of the agent's user on a new PTY of this size
    /// (protocol 3). Always the first message of a terminal stream.
    TerminalOpen(TerminalSize),
    /// Bytes typed into the terminal, base64 (standard); at most
    /// [`MAX_TERMINAL_FRAME`] bytes once decoded.
    TerminalInput {
        /// The bytes, base64.
        data: String,
    },
    /// The terminal's window changed size.
    TerminalResize(TerminalSize),
    /// Close the terminal: the shell's process group is hung up and the stream ends.
    TerminalClose,
    /// Replace the agent's binary (protocol 4). Always the first message of an upgrade
    /// stream; the binary follows in [`ToAgent::UpgradeChunk`]s once the agent
    /// answered [`FromAgent::UpgradeAccepted`].
    Upgrade(UpgradeOffer),
    /// The next piece of the binary, base64 (standard); at most [`MAX_UPGRADE_CHUNK`]
    /// bytes once decoded. The pieces come in order, `size` bytes in all.
    UpgradeChunk {
        /// The bytes, base64.
        data: String,
    },
}

/// An agent binary offered for an upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeOffer {
    /// The upgrade's id, reported back in [`AgentControl::UpgradeOutcome`].
    pub upgrade_id: String,
    /// The version the binary reports (its version marker, see [`crate::upgrade`]).
    pub version: String,
    /// Its length in bytes, at most [`MAX_AGENT_BINARY_BYTES`].
    pub size: u64,
    /// Its SHA-256 (hex, lower case).
    pub sha256: String,
    /// The control plane's Ed25519 signature of [`crate::upgrade::signed_message`]
    /// over the version, size and SHA-256, base64 (standard).
    pub signature: String,
}

/// A terminal's size in character cells. Values outside 1..=[`MAX_TERMINAL_CELLS`] are
/// clamped by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// Largest number of columns or rows a terminal is given.
pub const MAX_TERMINAL_CELLS: u16 = 1000;

impl TerminalSize {
    /// The size with both sides clamped to 1..=[`MAX_TERMINAL_CELLS`].
    pub fn clamped(self) -> TerminalSize {
        TerminalSize {
            cols: self.cols.clamp(1, MAX_TERMINAL_CELLS),
            rows: self.rows.clamp(1, MAX_TERMINAL_CELLS),
        }
    }
}

/// Messages from the agent on a job stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// The job runs (or ran): `resumed` when this is a repeat `Start` for a job the
    /// agent already started, in which case output resumes at the first unacked seq.
    Started {
        /// Whether the job had been started before this stream.
        resumed: bool,
    },
    /// The agent will not run this job (unknown kind, already finished and forgotten).
    Rejected {
        /// Why.
        reason: String,
        /// The answer to a `resume_only` start of a job this agent did not start (or
        /// that was started on another host and copied here with the state directory):
        /// the job is not this agent's to end, so the control plane leaves it to the
        /// copy that runs it instead of failing it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        not_started_here: bool,
    },
    /// A piece of output.
    Output(OutputChunk),
    /// The job ended; sent after every chunk.
    End(JobEnd),
    /// The terminal asked for by [`ToAgent::TerminalOpen`] runs (protocol 3).
    TerminalOpened {
        /// The shell it runs (`/bin/bash`).
        shell: String,
    },
    /// Output of the terminal's PTY, base64 (standard); at most [`MAX_TERMINAL_FRAME`]
    /// bytes once decoded.
    TerminalOutput {
        /// The bytes, base64.
        data: String,
    },
    /// The agent takes the offered upgrade: send the binary (protocol 4).
    UpgradeAccepted,
    /// The binary arrived, its size, SHA-256 and signature checked and it runs (it
    /// printed the offered version); the agent replaces itself once no job runs.
    UpgradeStaged {
        /// Jobs running now, which the upgrade waits for.
        running_jobs: u32,
    },
    /// The agent replaced its binary (the previous one kept as `.prev`) and restarts
    /// now; the outcome comes in the next connection's [`AgentControl::UpgradeOutcome`].
    UpgradeRestarting,
    /// The upgrade did not happen (bad checksum or signature, no signing key, no room
    /// beside the binary, another upgrade under way); the agent runs on as it was.
    /// The last message of an upgrade stream.
    UpgradeFailed {
        /// Why, in words a person can act on.
        reason: String,
    },
    /// The terminal ended (its shell exited, or it was closed); the last message of a
    /// terminal stream.
    TerminalClosed {
        /// One line for people ("the shell exited with code 0").
        reason: String,
        /// The shell's exit code, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Terminal messages round-trip with their documented tags, and a size is clamped
    /// to what a PTY accepts.
    #[test]
    fn terminal_messages_round_trip() {
        let to_agent = [
            ToAgent::TerminalOpen(TerminalSize { cols: 80, rows: 24 }),
            ToAgent::TerminalInput {
                data: "ZWNobwo=".into(),
            },
            ToAgent::TerminalResize(TerminalSize {
                cols: 120,
                rows: 40,
            }),
            ToAgent::TerminalClose,
        ];
        for message in to_agent {
            let text = serde_json::to_string(&message).unwrap();
            assert!(text.contains("\"type\":\"terminal_"), "{text}");
            assert_eq!(serde_json::from_str::<ToAgent>(&text).unwrap(), message);
        }
        let from_agent = [
            FromAgent::TerminalOpened {
                shell: "/bin/bash".into(),
            },
            FromAgent::TerminalOutput {
                data: "aGk=".into(),
            },
            FromAgent::TerminalClosed {
                reason: "the shell exited with code 0".into(),
                exit_code: Some(0),
            },
        ];
        for message in from_agent {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(serde_json::from_str::<FromAgent>(&text).unwrap(), message);
        }
        assert_eq!(
            TerminalSize {
                cols: 0,
                rows: 60000
            }
            .clamped(),
            TerminalSize {
                cols: 1,
                rows: MAX_TERMINAL_CELLS
            }
        );
        // Agents one version older are still served; they know terminals, not upgrades.
        const { assert!(MIN_PROTOCOL_VERSION == 3 && UPGRADE_MIN_PROTOCOL > MIN_PROTOCOL_VERSION) };
    }

    /// A job's end without facts (an older agent's) still decodes and is written as
    /// before, and one with facts round-trips; so does an inventory with facts, which
    /// an older one without them still reads as.
    #[test]
    fn job_ends_and_inventories_carry_facts_compatibly() {
        let old_end = r#"{"type":"end","status":"succeeded","exit_code":0,"summary":"exit code 0","chunks":3}"#;
        let FromAgent::End(end) = serde_json::from_str::<FromAgent>(old_end).unwrap() else {
            panic!("an end");
        };
        assert_eq!(end.facts, None);
        assert_eq!(
            serde_json::to_string(&FromAgent::End(end.clone())).unwrap(),
            old_end
        );
        let gathered = GatheredFacts {
            gathered_at: "2026-12-05T10:00:00+00:00".into(),
            facts: serde_json::json!({"hostname": "web-1"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let with = FromAgent::End(JobEnd {
            facts: Some(Box::new(gathered.clone())),
            ..end
        });
        let text = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<FromAgent>(&text).unwrap(), with);

        let mut inventory = crate::inventory::JobInventory {
            hosts: vec!["web-1".into()],
            ..Default::default()
        };
        let plain = serde_json::to_string(&inventory).unwrap();
        assert!(!plain.contains("facts"), "{plain}");
        inventory.facts.insert("web-1".into(), gathered);
        let text = serde_json::to_string(&inventory).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::inventory::JobInventory>(&text).unwrap(),
            inventory
        );
        assert_eq!(
            inventory.to_ansible()["all"]["hosts"]["web-1"],
            serde_json::Value::Null
        );
    }

    /// Messages of agents and control planes from before copies were told apart still
    /// decode (the new fields default to empty), and the new fields round-trip.
    #[test]
    fn copy_detection_fields_are_backward_compatible() {
        let old_hello = r#"{"type":"hello","protocol":1,"agent_id":"a1","facts":{"hostname":"h","os":"","kernel":"","arch":"","cpus":1,"memory_bytes":0,"disk_bytes":0,"uptime_s":0,"agent_version":"0"}}"#;
        match serde_json::from_str::<AgentControl>(old_hello).unwrap() {
            AgentControl::Hello {
                host_id,
                instance_id,
                ..
            } => assert_eq!((host_id.as_str(), instance_id.as_str()), ("", "")),
            other => panic!("not a hello: {other:?}"),
        }
        let old_refusal = r#"{"type":"refused","reason":"revoked"}"#;
        assert_eq!(
            serde_json::from_str::<ServerControl>(old_refusal).unwrap(),
            ServerControl::Refused {
                reason: "revoked".into(),
                retry_after_s: None
            }
        );
        let old_rejection = r#"{"type":"rejected","reason":"no"}"#;
        assert_eq!(
            serde_json::from_str::<FromAgent>(old_rejection).unwrap(),
            FromAgent::Rejected {
                reason: "no".into(),
                not_started_here: false
            }
        );
        let old_spec = r#"{"job_id":"j","kind":"script","interpreter":"/bin/sh","body":"true","env":{},"working_dir":null,"timeout_s":null}"#;
        let spec: JobSpec = serde_json::from_str(old_spec).unwrap();
        assert!(!spec.resume_only);
        // A first start looks exactly as before; a repeated one says so.
        assert!(!serde_json::to_string(&spec)
            .unwrap()
            .contains("resume_only"));
        let again = JobSpec {
            resume_only: true,
            ..spec
        };
        let text = serde_json::to_string(&again).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), again);

        let refusal = ServerControl::Refused {
            reason: "duplicate".into(),
            retry_after_s: Some(300),
        };
        let text = serde_json::to_string(&refusal).unwrap();
        assert_eq!(
            serde_json::from_str::<ServerControl>(&text).unwrap(),
            refusal
        );
    }

    /// The welcome of a control plane from before replica lists decodes with an empty
    /// list, a welcome without replicas encodes exactly as before, and one with
    /// replicas round-trips and still decodes for a reader that knows only the old
    /// fields (serde ignores the unknown one, as an older agent's decoder does).
    #[test]
    fn welcome_replica_list_is_backward_compatible() {
        let old_welcome = r#"{"type":"welcome","version":"0.1.0","heartbeat_s":5}"#;
        let decoded = serde_json::from_str::<ServerControl>(old_welcome).unwrap();
        assert_eq!(
            decoded,
            ServerControl::Welcome {
                version: "0.1.0".into(),
                heartbeat_s: 5,
                servers: Vec::new(),
                signing_key: String::new(),
                ca_pem: String::new(),
            }
        );
        assert_eq!(serde_json::to_string(&decoded).unwrap(), old_welcome);

        let welcome = ServerControl::Welcome {
            version: "0.2.0".into(),
            heartbeat_s: 5,
            servers: vec!["cp1:4433".into(), "cp2:4433".into()],
            signing_key: String::new(),
            ca_pem: String::new(),
        };
        let text = serde_json::to_string(&welcome).unwrap();
        assert_eq!(
            serde_json::from_str::<ServerControl>(&text).unwrap(),
            welcome
        );

        /// The welcome as agents before replica lists declared it.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum OldServerControl {
            Welcome { version: String, heartbeat_s: u64 },
        }
        assert_eq!(
            serde_json::from_str::<OldServerControl>(&text).unwrap(),
            OldServerControl::Welcome {
                version: "0.2.0".into(),
                heartbeat_s: 5
            }
        );
    }

    /// A playbook job from an older control plane (no `inventory_hostname`) still
    /// decodes, and one without a host name is sent exactly as before.
    #[test]
    fn inventory_hostname_is_optional_on_the_wire() {
        let old = r#"{"kind":"playbook","yaml":"- hosts: all","vars":{},"check":false}"#;
        let kind: JobKind = serde_json::from_str(old).unwrap();
        match &kind {
            JobKind::Playbook {
                inventory_hostname, ..
            } => assert_eq!(inventory_hostname, &None),
            other => panic!("not a playbook: {other:?}"),
        }
        let sent = serde_json::to_string(&kind).unwrap();
        assert!(!sent.contains("inventory_hostname"), "{sent}");
        let named = JobKind::Playbook {
            yaml: "- hosts: all".into(),
            vars: BTreeMap::new(),
            check: false,
            diff: false,
            ansible_fallback: false,
            inventory_hostname: Some("web-1".into()),
            files: Default::default(),
            inventory: None,
        };
        let text = serde_json::to_string(&named).unwrap();
        assert!(text.contains(r#""inventory_hostname":"web-1""#), "{text}");
        // Without diff mode the job is sent as older agents know it.
        assert!(!text.contains("diff"), "{text}");
        assert!(!text.contains("files"), "{text}");
        assert_eq!(serde_json::from_str::<JobKind>(&text).unwrap(), named);
        let with_files = JobKind::Playbook {
            yaml: "- hosts: all".into(),
            vars: BTreeMap::new(),
            check: false,
            diff: false,
            ansible_fallback: false,
            inventory_hostname: None,
            files: crate::tree::Files::new(vec![crate::tree::TreeFile::from_bytes(
                "roles/web/tasks/main.yml",
                b"- debug: msg=hi\n".to_vec(),
            )]),
            inventory: None,
        };
        let text = serde_json::to_string(&with_files).unwrap();
        assert!(
            text.contains(r#""files":[{"path":"roles/web/tasks/main.yml""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<JobKind>(&text).unwrap(), with_files);
    }

    /// The upgrade messages (protocol 4) round-trip with their tags, and an enrollment
    /// answer or a welcome without a signing key (older control planes) still decodes,
    /// while one with a key encodes it.
    #[test]
    fn upgrade_messages_round_trip_and_old_answers_decode() {
        let to_agent = [
            ToAgent::Upgrade(UpgradeOffer {
                upgrade_id: "u1".into(),
                version: "0.2.0".into(),
                size: 3,
                sha256: "ab".repeat(32),
                signature: "c2ln".into(),
            }),
            ToAgent::UpgradeChunk {
                data: "AAEC".into(),
            },
        ];
        for message in to_agent {
            let text = serde_json::to_string(&message).unwrap();
            assert!(text.contains("\"type\":\"upgrade"), "{text}");
            assert_eq!(serde_json::from_str::<ToAgent>(&text).unwrap(), message);
        }
        let from_agent = [
            FromAgent::UpgradeAccepted,
            FromAgent::UpgradeStaged { running_jobs: 1 },
            FromAgent::UpgradeRestarting,
            FromAgent::UpgradeFailed {
                reason: "sha256 mismatch".into(),
            },
        ];
        for message in from_agent {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(serde_json::from_str::<FromAgent>(&text).unwrap(), message);
        }
        let outcome = AgentControl::UpgradeOutcome {
            upgrade_id: "u1".into(),
            version: "0.2.0".into(),
            error: None,
        };
        let text = serde_json::to_string(&outcome).unwrap();
        assert!(!text.contains("error"), "{text}");
        assert_eq!(
            serde_json::from_str::<AgentControl>(&text).unwrap(),
            outcome
        );

        let old = r#"{"type":"enrolled","agent_id":"a","certificate_pem":"c","ca_pem":"ca"}"#;
        match serde_json::from_str::<EnrollResponse>(old).unwrap() {
            EnrollResponse::Enrolled { signing_key, .. } => assert!(signing_key.is_empty()),
            other => panic!("not enrolled: {other:?}"),
        }
        let welcome = ServerControl::Welcome {
            version: "0.2.0".into(),
            heartbeat_s: 5,
            servers: Vec::new(),
            signing_key: "a2V5".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----".into(),
        };
        let text = serde_json::to_string(&welcome).unwrap();
        assert!(text.contains("\"signing_key\":\"a2V5\""), "{text}");
        assert_eq!(
            serde_json::from_str::<ServerControl>(&text).unwrap(),
            welcome
        );
    }

    /// A heartbeat from an agent that predates `cpu_percent` decodes with none, and
    /// one without a reading encodes as before.
    #[test]
    fn heartbeat_cpu_percent_is_optional() {
        let old = r#"{"type":"heartbeat","load":[0.5,0.25,0.0],"memory_total":8,"memory_available":4,"disk_total":10,"disk_available":5,"uptime_s":60,"running_jobs":0}"#;
        let decoded = serde_json::from_str::<AgentControl>(old).unwrap();
        let AgentControl::Heartbeat(load) = &decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(load.cpu_percent, None);
        assert_eq!(serde_json::to_string(&decoded).unwrap(), old);
        let with_cpu = AgentControl::Heartbeat(Load {
            cpu_percent: Some(12.5),
            ..load.clone()
        });
        let text = serde_json::to_string(&with_cpu).unwrap();
        assert!(text.contains(r#""cpu_percent":12.5"#), "{text}");
        assert_eq!(
            serde_json::from_str::<AgentControl>(&text).unwrap(),
            with_cpu
        );
    }
}
