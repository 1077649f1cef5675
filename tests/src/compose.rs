//! Docker Compose projects for the backup tests: one `db` service on the image that
//! `packaging/test-image.sh` imports from a static busybox (no registry), started with
//! the machine's Compose tool so the real `com.docker.compose.*` labels are set, and
//! taken down (containers and volumes) when the handle is dropped.
//!
//! Docker must answer: [`require_docker`] fails the test with what to run otherwise;
//! nothing is skipped.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The image the test projects run.
pub const TEST_IMAGE: &str = "dynserv-test/busybox:latest";

/// Fails the test unless Docker answers; builds the test image when missing.
pub fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Docker is unreachable (docker info failed: {}); these tests need the Docker engine: run {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            crate::TEST_COMMAND
        ),
        Err(e) => panic!(
            "the docker CLI cannot run ({e}); these tests need the Docker engine: run {}",
            crate::TEST_COMMAND
        ),
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/test-image.sh");
    let built = Command::new("bash")
        .arg(script)
        .arg(TEST_IMAGE)
        .status()
        .expect("running packaging/test-image.sh");
    assert!(
        built.success(),
        "building the test image {TEST_IMAGE} failed"
    );
}

/// A running Compose project with a `db` service holding `/data/db.txt` (`row 1`).
pub struct ComposeProject {
    name: String,
    dir: tempfile::TempDir,
    compose: Vec<String>,
}

impl ComposeProject {
    /// Starts a project named `prefix` + this process id.
    pub fn start(prefix: &str) -> ComposeProject {
        require_docker();
        let v1 = Command::new("docker-compose")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let compose = if v1 {
            vec!["docker-compose".to_string()]
        } else {
            vec!["docker".to_string(), "compose".to_string()]
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            format!(
                "version: \"2.4\"\nservices:\n  db:\n    image: {TEST_IMAGE}\n    command: [\"/bin/sh\", \"-c\", \"echo 'row 1' > /data/db.txt; exec sleep 3600\"]\n"
            ),
        )
        .expect("writing docker-compose.yml");
        let project = ComposeProject {
            name: format!("{prefix}{}", std::process::id()),
            dir,
            compose,
        };
        let out = project.compose(&["up", "-d"]);
        assert!(
            out.status.success(),
            "compose up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        project
    }

    /// The Compose project name (its `com.docker.compose.project` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the Compose tool on this project.
    pub fn compose(&self, args: &[&str]) -> Output {
        Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["-p", &self.name, "-f"])
            .arg(self.dir.path().join("docker-compose.yml"))
            .args(args)
            .output()
            .expect("running the Compose tool")
    }

    /// Runs a shell script in the `db` container; answers its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.compose(&["exec", "-T", "db", "sh", "-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "0"]);
    }
}
