//! A real OpenSSH server for the SSH tests: Debian's `/usr/sbin/sshd` (package
//! `openssh-server`, which `scripts/test.sh` installs) started in the foreground on a
//! loopback port with its own configuration, a host key generated for it and an
//! `authorized_keys` holding a client key generated for the test. It runs as the
//! current user (`StrictModes no`, `UsePAM no`), so a login as that user works.
//!
//! Keys are made with `ssh-keygen` (package `openssh-client`, a dependency of the
//! server); the control plane itself never runs either program.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian installs the OpenSSH server.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd` on `127.0.0.1:port`.
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

/// A key pair made by `ssh-keygen`.
pub struct KeyPair {
    /// The private key file's text (OpenSSH format unless asked otherwise).
    pub private: String,
    /// The public key line.
    pub public: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Makes a key pair of `kind` (`ed25519`, `ecdsa`, `rsa`) in `dir` under `name`,
/// with `extra` arguments (`-m PEM`, `-N passphrase`).
pub fn keygen(dir: &Path, name: &str, kind: &str, extra: &[&str]) -> KeyPair {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut args = vec!["-q", "-t", kind, "-C", "dynserv-test", "-f"];
    let path_text = path.to_string_lossy().to_string();
    args.push(&path_text);
    if !extra.contains(&"-N") {
        args.extend(["-N", ""]);
    }
    args.extend(extra);
    let output = Command::new("ssh-keygen")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen (package openssh-client)");
    crate::expect_success("ssh-keygen", &output);
    let public_path = PathBuf::from(format!("{path_text}.pub"));
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&public_path)
        .output()
        .expect("running ssh-keygen -l");
    let listed = crate::expect_success("ssh-keygen -l", &listed);
    KeyPair {
        private: std::fs::read_to_string(&path).expect("reading the private key"),
        public: std::fs::read_to_string(&public_path)
            .expect("reading the public key")
            .trim()
            .to_string(),
        fingerprint: listed
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints the fingerprint second")
            .to_string(),
    }
}

impl Sshd {
    /// Starts sshd on a free loopback port with a new ed25519 host key, accepting
    /// `authorized` (public key lines) for the current user. Panics with the install
    /// command when sshd is missing.
    pub async fn start(authorized: &[&str]) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install Debian's openssh-server (`apt-get install -y openssh-server`; {} does)",
            crate::TEST_COMMAND
        );
        // sshd insists on its privilege separation directory even when it runs as an
        // unprivileged user's daemon.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("dynserv-sshd-")
            .tempdir()
            .expect("a temp dir for sshd");
        std::fs::write(
            dir.path().join("authorized_keys"),
            authorized.join("\n") + "\n",
        )
        .expect("writing authorized_keys");
        let mut sshd = Sshd {
            child: None,
            dir,
            port: crate::free_tcp_port(),
        };
        sshd.new_host_key();
        sshd.spawn().await;
        sshd
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A directory for the test's own files (keys, install directories), removed with
    /// the handle.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The fingerprint of the current host key.
    pub fn host_key_fingerprint(&self) -> String {
        let listed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .expect("running ssh-keygen -l");
        crate::expect_success("ssh-keygen -l", &listed)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_string()
    }

    fn new_host_key(&self) {
        keygen(self.dir.path(), "host_ed25519", "ed25519", &[]);
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_ed25519\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             LogLevel VERBOSE\n",
            dir = self.dir.path().display()
        );
        std::fs::write(self.dir.path().join("sshd_config"), config).expect("writing sshd_config");
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))
            .expect("opening sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
        let port = self.port;
        let log_path = self.dir.path().join("sshd.log");
        crate::eventually(Duration::from_secs(10), "sshd listening", || {
            let log_path = log_path.clone();
            async move {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    Some(())
                } else {
                    let log = crate::log_tail(&log_path, 5);
                    assert!(!log.contains("fatal"), "sshd failed to start:\n{log}");
                    None
                }
            }
        })
        .await;
    }

    /// Replaces the host key and restarts sshd on the same port, as a reinstalled
    /// server (or an attacker in between) would present itself.
    pub async fn change_host_key(&mut self) {
        self.stop();
        self.new_host_key();
        self.spawn().await;
    }

    /// Stops sshd; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::kill_now(&mut child);
        }
    }

    /// The tail of sshd's log.
    pub fn log(&self) -> String {
        crate::log_tail(&self.dir.path().join("sshd.log"), 40)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if crate::keep_artifacts() {
            eprintln!("--- sshd log ---\n{}", self.log());
        }
    }
}

/// Stops, when dropped, a supervised agent an install started in `dir` (the process
/// group whose leader's pid is in `dir/supervisor.pid`), so no agent outlives its test.
pub struct InstalledAgent(pub PathBuf);

impl Drop for InstalledAgent {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("supervisor.pid")) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            if pid > 1 {
                // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
                // names the supervisor's process group (its own session).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}
