//! System updates end to end, for real: the real `dynserv serve` and `dynserv-agent`
//! binaries upgrade a package on this machine through the JSON API of CONTRACT.md.
//!
//! The machine's whole system is never upgraded: the agent runs with `APT_CONFIG`
//! pointing at a file of the test's that gives apt a sources list holding only a
//! local repository (and its own lists and archives dirs), while dpkg's real status
//! stays. The repository offers version 2.0 of a dummy package the test builds with
//! `dpkg-deb` and whose 1.0 it installed with `dpkg -i`, so the upgrade apt sees and
//! performs is exactly that one package. Needs root (CI runs as root), holds
//! [`AptLock`] against the other tests that run apt, and purges the package whatever
//! happens.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dynserv_tests::{eventually, expect_success, Agent, Api, AptLock, ControlPlane};
use serde_json::{json, Value};

/// The dummy package; its only file is [`VERSION_FILE`], holding its version.
const PACKAGE: &str = "dynserv-update-probe";
const VERSION_FILE: &str = "/usr/share/dynserv-update-probe/VERSION";

/// Runs a command to completion; panics with its output when it fails.
fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(program);
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    expect_success(&format!("{program} {}", args.join(" ")), &output)
}

/// The installed version of the probe package, if any.
fn installed_version() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", PACKAGE])
        .output()
        .expect("spawning dpkg-query");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = text.strip_prefix("install ok installed ")?;
    Some(version.to_string())
}

/// Builds `PACKAGE_VERSION_all.deb` in `dir` with `dpkg-deb`.
fn build_package(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("build-{version}"));
    let share = root.join(VERSION_FILE.trim_start_matches('/'));
    std::fs::create_dir_all(root.join("DEBIAN")).expect("package dir");
    std::fs::create_dir_all(share.parent().expect("a folder")).expect("package dir");
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: Dynamic Servers tests <tests@dynserv.invalid>\n\
             Description: dummy package of the dynserv system update test\n"
        ),
    )
    .expect("control file");
    std::fs::write(&share, format!("{version}\n")).expect("version file");
    let deb = dir.join(format!("{PACKAGE}_{version}_all.deb"));
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &root.display().to_string(),
            &deb.display().to_string(),
        ],
        &[],
    );
    deb
}

/// A flat repository (`deb file:DIR ./`) in `dir` offering `deb`: the file and a
/// `Packages` index written here (no dpkg-dev needed), with the SHA256 apt checks.
fn write_repository(dir: &Path, deb: &Path) {
    std::fs::create_dir_all(dir).expect("repository dir");
    let file_name = deb.file_name().expect("a file name").to_string_lossy();
    let target = dir.join(&*file_name);
    std::fs::copy(deb, &target).expect("copying the package into the repository");
    let size = std::fs::metadata(&target).expect("package size").len();
    let sha256 = run("sha256sum", &[&target.display().to_string()], &[])
        .split_whitespace()
        .next()
        .expect("sha256sum prints the hash")
        .to_string();
    let control = run("dpkg-deb", &["--field", &target.display().to_string()], &[]);
    std::fs::write(
        dir.join("Packages"),
        format!("{control}\nFilename: ./{file_name}\nSize: {size}\nSHA256: {sha256}\n\n"),
    )
    .expect("Packages index");
}

/// An apt configuration under `dir` that sees only `repository`, with its own lists
/// and archives; returns the file for `APT_CONFIG`.
fn write_apt_config(dir: &Path, repository: &Path) -> PathBuf {
    let sources = dir.join("sources.list");
    let parts = dir.join("sources.list.d");
    let lists = dir.join("lists");
    let cache = dir.join("cache");
    for d in [&parts, &lists, &cache] {
        std::fs::create_dir_all(d).expect("apt dir");
    }
    std::fs::write(
        &sources,
        format!("deb [trusted=yes] file:{} ./\n", repository.display()),
    )
    .expect("sources list");
    let config = dir.join("apt.conf");
    std::fs::write(
        &config,
        format!(
            "Dir::Etc::sourcelist \"{}\";\n\
             Dir::Etc::sourceparts \"{}\";\n\
             Dir::State::lists \"{}\";\n\
             Dir::Cache \"{}\";\n\
             // The temp dirs are private to root; apt's _apt download user cannot read them.\n\
             APT::Sandbox::User \"root\";\n",
            sources.display(),
            parts.display(),
            lists.display(),
            cache.display()
        ),
    )
    .expect("apt config");
    config
}

/// Purges the probe package when dropped, so a failing test leaves the machine as it
/// found it.
struct PurgeOnDrop;

impl PurgeOnDrop {
    fn purge() {
        let _ = Command::new("dpkg").args(["-P", PACKAGE]).output();
    }
}

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        PurgeOnDrop::purge();
    }
}

async fn connected_server(api: &Api, name: &str) -> String {
    api.connected_agent(name).await["server_id"]
        .as_str()
        .expect("an agent that enrolled has a server")
        .to_string()
}

/// Starts an update on the server, waits for its execution to end and returns the
/// update record and the execution's stdout as stored.
async fn run_update(api: &Api, server_id: &str, check: bool) -> (Value, String) {
    let (status, created) = api
        .post(
            &format!("/api/v1/servers/{server_id}/update"),
            &json!({ "check": check }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["check"], check, "{created}");
    let execution_id = created["execution_id"].as_str().expect("an execution");
    let end = eventually(
        Duration::from_secs(180),
        &format!("execution {execution_id} ends"),
        || async {
            let (_, e) = api.get(&format!("/api/v1/executions/{execution_id}")).await;
            (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
        },
    )
    .await;
    let (status, update) = api
        .get(&format!(
            "/api/v1/updates/{}",
            created["id"].as_str().expect("an id")
        ))
        .await;
    assert_eq!(status, 200, "{update}");
    assert_eq!(end["status"], "succeeded", "{end}\n{update}");
    let (status, lines) = api
        .get_json_lines(&format!("/api/v1/executions/{execution_id}/log"))
        .await;
    assert_eq!(status, 200);
    let stdout = lines
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .filter_map(|l| l["data"].as_str())
        .collect::<String>();
    (update, stdout)
}

/// Asserts `needles` occur in `text` in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing, or out of order, in:\n{text}"),
        }
    }
}

/// A system update upgrades a package for real: the check lists it and changes
/// nothing; the update streams apt's own output, records exactly `1.0 -> 2.0` and no
/// reboot, and dpkg then has 2.0 installed.
#[tokio::test]
async fn system_update_upgrades_a_package_for_real() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing and upgrading packages needs root"
    );
    let _lock = AptLock::acquire();
    // Declared after the lock, so the package is purged before the lock is released.
    let _purge = PurgeOnDrop;
    PurgeOnDrop::purge();
    let reboot_marker_before = Path::new("/var/run/reboot-required").exists();

    let dir = tempfile::tempdir().expect("temp dir");
    let old = build_package(dir.path(), "1.0");
    let new = build_package(dir.path(), "2.0");
    let repository = dir.path().join("repo");
    write_repository(&repository, &new);
    let apt_config = write_apt_config(dir.path(), &repository);
    run("dpkg", &["-i", &old.display().to_string()], &[]);
    assert_eq!(installed_version().as_deref(), Some("1.0"));

    let cp = ControlPlane::start().await;
    cp.add_user("admin", "admin", false, "admin-password-1");
    let api = cp.api_as("admin");
    let (status, body) = api.post("/api/v1/projects", &json!({"name": "Ops"})).await;
    assert_eq!(status, 201, "{body}");
    let mut agent = Agent::enroll(&cp.quic_addr(), &cp.enrollment_token("Ops"), "apt-host");
    agent.set_env("APT_CONFIG", &apt_config.display().to_string());
    agent.run();
    let server_id = connected_server(&api, "apt-host").await;

    // The check refreshes the package lists itself (`apt-get update`) and changes no
    // package.
    let (check, stdout) = run_update(&api, &server_id, true).await;
    assert_eq!(check["status"], "succeeded", "{check}");
    assert_eq!(check["manager"], "apt", "{check}");
    assert_eq!(
        check["packages"],
        json!([{"name": PACKAGE, "from": "1.0", "to": "2.0"}]),
        "{check}"
    );
    assert_in_order(
        &stdout,
        &[
            "$ apt-get -q -o DPkg::Lock::Timeout=600 update",
            "$ apt-get -s -q upgrade",
            &format!("Inst {PACKAGE} [1.0] (2.0 "),
            &format!("[dynserv] would upgrade 1 package(s)\n[dynserv]   {PACKAGE} 1.0 -> 2.0"),
        ],
    );
    assert!(!stdout.contains("$ apt-get -y"), "{stdout}");
    assert_eq!(installed_version().as_deref(), Some("1.0"), "{stdout}");
    let downloaded = std::fs::read_dir(dir.path().join("cache/archives"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().extension() == Some("deb".as_ref()))
        })
        .unwrap_or(false);
    assert!(!downloaded, "a check downloads nothing: {stdout}");

    let (update, stdout) = run_update(&api, &server_id, false).await;
    assert_eq!(update["status"], "succeeded", "{update}");
    assert_eq!(update["check"], false, "{update}");
    assert_eq!(update["manager"], "apt", "{update}");
    assert_eq!(
        update["packages"],
        json!([{"name": PACKAGE, "from": "1.0", "to": "2.0"}]),
        "{update}"
    );
    assert_eq!(
        update["reboot_required"], reboot_marker_before,
        "the probe package asks for no reboot: {update}"
    );
    // apt's own output, streamed in the order it ran: the lists from our repository,
    // the simulation, then dpkg unpacking and configuring the new version.
    assert_in_order(
        &stdout,
        &[
            "$ apt-get -q -o DPkg::Lock::Timeout=600 update",
            &format!("file:{} ./ Packages", repository.display()),
            "$ apt-get -s -q upgrade",
            &format!("Inst {PACKAGE} [1.0] (2.0 "),
            "$ apt-get -y -q",
            &format!("Unpacking {PACKAGE} (2.0) over (1.0)"),
            &format!("Setting up {PACKAGE} (2.0)"),
            &format!("[dynserv] upgraded 1 package(s)\n[dynserv]   {PACKAGE} 1.0 -> 2.0"),
        ],
    );
    assert!(
        update["log"]
            .as_str()
            .is_some_and(|log| log.contains(&format!("Setting up {PACKAGE} (2.0)"))),
        "the record keeps the log: {update}"
    );
    assert_eq!(installed_version().as_deref(), Some("2.0"));
    assert_eq!(
        std::fs::read_to_string(VERSION_FILE).expect("the package's file"),
        "2.0\n"
    );
    drop(agent);
}
