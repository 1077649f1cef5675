//! Differential tests: the native playbook runtime (`dynserv-agent playbook`) against
//! real ansible-core (`ansible-playbook -c local`).
//!
//! Each case runs a fixture playbook from `tests/fixtures/playbooks/` twice with each
//! tool, every tool in its own fresh temporary root (passed as `-e root=DIR`), and
//! compares: the exit codes, the PLAY RECAP counts of the first and of the second run
//! (the second run proves idempotence), the sequence of per-task results, and the files
//! left in the root (type, mode, content, symlink target; `.git` directories are left
//! out).
//!
//! ansible-playbook is found through `DYNSERV_ANSIBLE_PLAYBOOK`, else at
//! `.venv-ansible/bin/ansible-playbook` in the workspace; a missing ansible-playbook is a
//! test failure with the install command, never a silent skip.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/playbooks")
}

fn ansible_playbook() -> PathBuf {
    let path = std::env::var_os("DYNSERV_ANSIBLE_PLAYBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-ansible/bin/ansible-playbook"));
    assert!(
        path.is_file(),
        "ansible-playbook not found at {}: install ansible-core with \
         `python3 -m venv .venv-ansible && .venv-ansible/bin/pip install ansible-core` \
         in the workspace root (see tests/fixtures/playbooks/INSTALL.md), or set DYNSERV_ANSIBLE_PLAYBOOK",
        path.display()
    );
    path
}

/// The recap counters in ansible-playbook's order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recap {
    ok: u32,
    changed: u32,
    unreachable: u32,
    failed: u32,
    skipped: u32,
    rescued: u32,
    ignored: u32,
}

fn parse_recap(stdout: &str) -> Option<Recap> {
    let line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .find(|l| l.starts_with("localhost"))?;
    let mut values = BTreeMap::new();
    for part in line.split_whitespace() {
        if let Some((k, v)) = part.split_once('=') {
            values.insert(k.to_string(), v.parse::<u32>().ok()?);
        }
    }
    Some(Recap {
        ok: *values.get("ok")?,
        changed: *values.get("changed")?,
        unreachable: *values.get("unreachable")?,
        failed: *values.get("failed")?,
        skipped: *values.get("skipped")?,
        rescued: *values.get("rescued")?,
        ignored: *values.get("ignored")?,
    })
}

/// The banners (`PLAY [..]`, `TASK [..]`, `RUNNING HANDLER [..]`), `included:` lines and
/// per-task result words (`ok`, `changed`, `skipping`, `fatal`, ...) in order.
fn result_sequence(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            if l.starts_with("PLAY [")
                || l.starts_with("TASK [")
                || l.starts_with("RUNNING HANDLER [")
            {
                return Some(l.trim_end_matches(['*', ' ']).to_string());
            }
            if l.starts_with("included: ") {
                return Some(l.to_string());
            }
            let (status, rest) = l.split_once(": [localhost]")?;
            if !matches!(status, "ok" | "changed" | "skipping" | "fatal" | "failed") {
                return None;
            }
            let item = rest
                .split_once("(item=")
                .map(|(_, r)| r.split(')').next().unwrap_or_default().to_string());
            Some(match item {
                Some(item) => format!("{status} (item={item})"),
                None => status.to_string(),
            })
        })
        .collect()
}

/// One file system entry, normalised so the two roots compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: String },
    Link { target: String },
}

fn snapshot(root: &Path, ignored: &[&str]) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let root_text = root.display().to_string();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // A repository's internals (index, logs, packs) record times and inodes;
            // the work tree's files are what the git fixture compares.
            if entry.file_name() == ".git" {
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if ignored.contains(&relative.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("entry exists");
            let mode = meta.permissions().mode() & 0o7777;
            let item = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .expect("link")
                    .display()
                    .to_string();
                Entry::Link {
                    target: target.replace(&root_text, "<ROOT>"),
                }
            } else if meta.is_dir() {
                stack.push(path.clone());
                Entry::Dir { mode }
            } else {
                let content = String::from_utf8_lossy(&std::fs::read(&path).expect("readable"))
                    .replace(&root_text, "<ROOT>");
                Entry::File { mode, content }
            };
            out.insert(relative, item);
        }
    }
    out
}

struct RunResult {
    code: Option<i32>,
    stdout: String,
    recap: Option<Recap>,
}

fn finish(what: &str, output: Output) -> RunResult {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let recap = parse_recap(&stdout);
    if recap.is_none() {
        eprintln!("{what}: no PLAY RECAP\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    }
    RunResult {
        code: output.status.code(),
        stdout: format!("{stdout}\n{stderr}"),
        recap,
    }
}

fn run_agent(playbook: &Path, root: &Path, extra: &[&str]) -> RunResult {
    let output = Command::new(dynserv_tests::agent_binary())
        .arg("playbook")
        .arg(playbook)
        .arg("-e")
        .arg(format!("root={}", root.display()))
        .args(extra)
        .output()
        .expect("dynserv-agent runs");
    finish("dynserv-agent", output)
}

fn run_ansible(playbook: &Path, root: &Path, home: &Path, extra: &[&str]) -> RunResult {
    let output = ansible_command(home)
        .args(["-c", "local", "-i", "localhost,"])
        .arg(playbook)
        .arg("-e")
        .arg(format!("root={}", root.display()))
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("ansible-playbook could not be started: {e}"));
    finish("ansible-playbook", output)
}

/// ansible-playbook with a configuration of its own in `home`, no colours, no retry
/// files and the venv's Python for modules.
fn ansible_command(home: &Path) -> Command {
    let program = ansible_playbook();
    let python = program.with_file_name("python");
    let mut command = Command::new(&program);
    command
        .current_dir(home)
        .env("ANSIBLE_CONFIG", home.join("none.cfg"))
        .env("ANSIBLE_HOME", home.join("ansible"))
        .env("ANSIBLE_LOCAL_TEMP", home.join("local-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_DEPRECATION_WARNINGS", "0")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env(
            "ANSIBLE_PYTHON_INTERPRETER",
            if python.exists() {
                python.display().to_string()
            } else {
                "python3".into()
            },
        );
    command
}

/// Runs a fixture with both tools (twice each) and compares everything observable.
fn check(fixture: &str, extra: &[&str]) {
    check_playbook(&fixtures().join(fixture), extra);
}

fn check_playbook(playbook: &Path, extra: &[&str]) {
    check_with_vars(playbook, extra, extra);
}

/// Like [`check_playbook`], with different extra arguments for each tool.
fn check_with_vars(playbook: &Path, native_extra: &[&str], ansible_extra: &[&str]) {
    check_ignoring(playbook, native_extra, ansible_extra, &[]);
}

/// Like [`check_with_vars`], leaving the root's top-level entries `ignored` out of the
/// file comparison (for trees such as a virtualenv whose files record their creation).
fn check_ignoring(
    playbook: &Path,
    native_extra: &[&str],
    ansible_extra: &[&str],
    ignored: &[&str],
) {
    let fixture = playbook
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let playbook = playbook.to_path_buf();
    // Fail first and clearly when ansible-core is missing.
    ansible_playbook();
    let native_dir = tempfile::tempdir().expect("temp dir");
    let ansible_dir = tempfile::tempdir().expect("temp dir");
    let home = tempfile::tempdir().expect("temp dir");
    let native_root = native_dir.path().join("root");
    let ansible_root = ansible_dir.path().join("root");
    std::fs::create_dir(&native_root).expect("root");
    std::fs::create_dir(&ansible_root).expect("root");

    for round in ["first", "second"] {
        let native = run_agent(&playbook, &native_root, native_extra);
        let ansible = run_ansible(&playbook, &ansible_root, home.path(), ansible_extra);
        let context = format!(
            "{fixture} ({round} run)\n=== dynserv-agent\n{}\n=== ansible-playbook\n{}",
            native.stdout, ansible.stdout
        );
        assert!(
            ansible.recap.is_some(),
            "ansible-playbook printed no recap: {context}"
        );
        assert_eq!(native.code, ansible.code, "exit codes differ: {context}");
        assert_eq!(native.recap, ansible.recap, "recap differs: {context}");
        assert_eq!(
            result_sequence(&native.stdout),
            result_sequence(&ansible.stdout),
            "task results differ: {context}"
        );
    }
    let native_files = snapshot(&native_root, ignored);
    let ansible_files = snapshot(&ansible_root, ignored);
    assert_eq!(
        native_files, ansible_files,
        "{fixture}: resulting files differ"
    );
}

/// file, copy, template, lineinfile, blockinfile, replace and stat agree with Ansible.
#[test]
fn file_modules_match_ansible() {
    check("files.yml", &[]);
}

/// Loops, conditionals, register, changed_when/failed_when, ignore_errors, blocks,
/// set_fact, assert, until and handlers agree with Ansible.
#[test]
fn engine_keywords_match_ansible() {
    check("engine.yml", &[]);
}

/// command and shell with creates/removes/chdir/stdin/argv/environment agree with Ansible.
#[test]
fn commands_match_ansible() {
    check("commands.yml", &[]);
}

/// Ansible's filters and tests render the same text.
#[test]
fn filters_match_ansible() {
    check("filters.yml", &[]);
}

/// Check mode changes nothing and reports the same counts.
#[test]
fn check_mode_matches_ansible() {
    check("check_mode.yml", &["--check"]);
}

/// vars_prompt without a terminal: `-e` wins, else the default, else Ansible's `None`.
#[test]
fn vars_prompt_matches_ansible() {
    check("vars_prompt.yml", &["-e", "given=fromextra"]);
}

/// A failed task stops the play with exit code 2 and failed=1.
#[test]
fn failure_matches_ansible() {
    check("failure.yml", &[]);
}

/// Gathered facts have Ansible's names and values.
#[test]
fn facts_match_ansible() {
    check("facts.yml", &[]);
}

/// --tags and --skip-tags select the same tasks.
#[test]
fn tag_selection_matches_ansible() {
    check("tags.yml", &["--tags", "web", "--skip-tags", "slow"]);
}

/// Roles (dependencies, run-once, defaults/vars precedence, role handlers, role files
/// and templates), include_role/import_role with tasks_from and import_playbook agree
/// with Ansible, `role : task` names included.
#[test]
fn roles_match_ansible() {
    check("roles.yml", &[]);
}

/// The shipped hello playbook prints the same facts-driven results as Ansible.
#[test]
fn hello_sample_matches_ansible() {
    check_playbook(&workspace_root().join("playbooks/hello.yml"), &[]);
}

/// get_url, wait_for, imports, includes, vars files and
/// the with_* loops agree with Ansible (all confined to the temp root).
#[test]
fn more_modules_match_ansible() {
    check("more.yml", &[]);
}

/// Removes the accounts a test created, whatever happened in the test.
struct AccountCleanup(Vec<String>);

impl Drop for AccountCleanup {
    fn drop(&mut self) {
        for prefix in &self.0 {
            for user in ["usr", "tmp"] {
                let _ = Command::new("userdel")
                    .arg(format!("{prefix}{user}"))
                    .output();
            }
            for group in ["grp", "sys"] {
                let _ = Command::new("groupdel")
                    .arg(format!("{prefix}{group}"))
                    .output();
            }
        }
    }
}

/// user and group create, modify and remove accounts like Ansible (each tool gets its
/// own account names, removed afterwards).
#[test]
fn accounts_match_ansible() {
    let id = std::process::id();
    let (native, ansible) = (format!("dsvn{id}"), format!("dsva{id}"));
    let _cleanup = AccountCleanup(vec![native.clone(), ansible.clone()]);
    check_with_vars(
        &fixtures().join("accounts.yml"),
        &["-e", &format!("prefix={native}")],
        &["-e", &format!("prefix={ansible}")],
    );
}

/// Directory copies, recursion, links, insert positions, backrefs, lstrip_blocks,
/// force=no and integer/symbolic modes agree with Ansible.
#[test]
fn file_edge_cases_match_ansible() {
    check("files2.yml", &[]);
}

/// Fails with the install command when a program the fixture needs is missing.
fn require_program(program: &str, debian_package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file());
    assert!(
        found,
        "{program} not found: install it with `apt-get install {debian_package}` \
         (see tests/fixtures/playbooks/INSTALL.md)"
    );
}

/// cron in cron files (jobs, special times, variables and where they go, unnamed lines
/// adopted by name, removal of a file's last job, argument errors) agrees with Ansible.
/// ansible-core's module needs the crontab program even when it only edits files.
#[test]
fn cron_files_match_ansible() {
    require_program("crontab", "cron");
    check("cron.yml", &[]);
}

/// unarchive (tar.gz on the host, zip from files/, list_files, exclude, include,
/// extra_opts, creates, mode, repairing an edited file) agrees with Ansible.
#[test]
fn unarchive_matches_ansible() {
    require_program("unzip", "unzip");
    check("unarchive.yml", &[]);
}

/// git (clone of a branch, a tag, a commit id and a shallow clone, clone=no, update=no,
/// pulling, local modifications with and without force) agrees with Ansible on a local
/// repository the play creates.
#[test]
fn git_matches_ansible() {
    require_program("git", "git");
    check("git.yml", &[]);
}

/// pip (a virtualenv created by the module, version pins, requirements, latest,
/// executable, absent, a missing package) agrees with Ansible, installing a wheel the
/// play builds itself with no package index. The virtualenv and the wheel are not
/// compared as files: they record the times of their creation.
#[test]
fn pip_matches_ansible() {
    let fixture = fixtures().join("pip.yml");
    check_ignoring(&fixture, &[], &[], &["venv", "dist"]);
}

/// The lines of a run worth comparing: banners without their stars, result lines,
/// messages, "skipping: no hosts matched" and the recap, without warnings.
fn comparable_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches(['*', ' ']).trim_start().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with("[WARNING]") && !l.starts_with("[DEPRECATION"))
        .collect()
}

/// An INI and a YAML inventory with group_vars/ and host_vars/ beside them and beside
/// the playbook, run with `--limit web1` (and `--limit db1`, and with a failing task):
/// the same plays run or are skipped with the same messages, recap and exit code as
/// ansible-core's.
#[test]
fn inventory_matches_ansible() {
    let fixture = fixtures().join("inventory");
    let playbook = fixture.join("site.yml");
    let home = tempfile::tempdir().expect("temp dir");
    for inventory in ["hosts/inv.ini", "hosts/inv.yml"] {
        let inventory = fixture.join(inventory).display().to_string();
        for extra in [
            &["--limit", "web1"][..],
            &["--limit", "db1"][..],
            &["--limit", "web1", "-e", "fail_now=yes"][..],
        ] {
            let native = Command::new(dynserv_tests::agent_binary())
                .arg("playbook")
                .args(["-i", &inventory])
                .args(extra)
                .arg(&playbook)
                .output()
                .expect("dynserv-agent runs");
            let ansible = ansible_command(home.path())
                .args(["-i", &inventory])
                .args(extra)
                .arg(&playbook)
                .output()
                .expect("ansible-playbook runs");
            let (native_out, ansible_out) = (
                String::from_utf8_lossy(&native.stdout),
                String::from_utf8_lossy(&ansible.stdout),
            );
            let context = format!(
                "{inventory} {extra:?}\n=== dynserv-agent\n{native_out}{}\n=== ansible-playbook\n{ansible_out}{}",
                String::from_utf8_lossy(&native.stderr),
                String::from_utf8_lossy(&ansible.stderr)
            );
            assert_eq!(
                native.status.code(),
                ansible.status.code(),
                "exit codes differ: {context}"
            );
            // A failed task's error block quotes its origin in each tool's own way; the
            // lines up to it, the fatal line and the recap must agree.
            let (native_lines, ansible_lines) = (
                comparable_lines(&native_out),
                comparable_lines(&ansible_out),
            );
            let before_error = |lines: &[String]| -> Vec<String> {
                lines
                    .iter()
                    .take_while(|l| !l.starts_with("[ERROR]"))
                    .cloned()
                    .collect()
            };
            let fatal = |lines: &[String]| lines.iter().find(|l| l.starts_with("fatal:")).cloned();
            assert_eq!(
                before_error(&native_lines),
                before_error(&ansible_lines),
                "runs differ: {context}"
            );
            assert_eq!(
                fatal(&native_lines),
                fatal(&ansible_lines),
                "failures differ: {context}"
            );
            assert_eq!(
                native_lines.last(),
                ansible_lines.last(),
                "recaps differ: {context}"
            );
        }
    }
}

/// The diff blocks of a run's output under each task banner, with the root written as
/// `ROOT` and a template's after-header (ansible-core names its temporary rendered
/// copy, the native runtime the template) as `TEMPLATE`.
fn diff_blocks(stdout: &str, root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut out = Vec::new();
    let mut in_diff = false;
    for line in stdout.lines() {
        if line.starts_with("TASK [") {
            out.push(line.to_string());
            continue;
        }
        if line.starts_with("--- before") {
            in_diff = true;
        }
        if !in_diff {
            continue;
        }
        if line.is_empty() {
            in_diff = false;
            out.push(String::new());
            continue;
        }
        let line = line.replace(&root, "ROOT");
        if line.starts_with("+++ after: ") && line.ends_with("diff_site.conf.j2") {
            out.push("+++ after: TEMPLATE".into());
        } else {
            out.push(line);
        }
    }
    out
}

/// `--diff` prints what ansible-core prints for template, copy, lineinfile,
/// blockinfile, replace and file: the same headers, hunks (difflib's, three lines of
/// context), "No newline at end of file" markers, file attributes as sorted JSON, and
/// the empty line after each diff; in check mode and in the real run that follows.
#[test]
fn diff_output_matches_ansible() {
    ansible_playbook();
    let playbook = fixtures().join("diff.yml");
    let native_dir = tempfile::tempdir().expect("temp dir");
    let ansible_dir = tempfile::tempdir().expect("temp dir");
    let home = tempfile::tempdir().expect("temp dir");
    for (round, extra) in [
        ("check", &["--check", "--diff"][..]),
        ("real", &["--diff"][..]),
    ] {
        let native = run_agent(&playbook, native_dir.path(), extra);
        let ansible = run_ansible(&playbook, ansible_dir.path(), home.path(), extra);
        let context = format!(
            "{round} run\n=== dynserv-agent\n{}\n=== ansible-playbook\n{}",
            native.stdout, ansible.stdout
        );
        assert_eq!(native.code, Some(0), "{context}");
        assert_eq!(ansible.code, Some(0), "{context}");
        let native_diffs = diff_blocks(&native.stdout, native_dir.path());
        let ansible_diffs = diff_blocks(&ansible.stdout, ansible_dir.path());
        assert!(
            ansible_diffs.iter().any(|l| l.starts_with("@@")),
            "ansible-core printed no diff: {context}"
        );
        assert_eq!(
            native_diffs.join("\n"),
            ansible_diffs.join("\n"),
            "diffs differ: {context}"
        );
    }
}

/// fetch (per-host tree, flat, trailing slash, missing files and directories with and
/// without fail_on_missing, check mode) and set_stats (data, per_host, aggregate, a
/// non-dict, an invalid name) agree with Ansible, results and files.
#[test]
fn fetch_and_set_stats_match_ansible() {
    check("fetch_stats.yml", &[]);
}

/// ansible.posix.mount on an fstab in the temp root (new, unchanged, rewritten,
/// escaped and noauto entries, removal from fstab and with the mount point, states on
/// paths that are not mounted, check mode, argument errors) agrees with Ansible.
#[test]
fn mount_matches_ansible() {
    check("mount.yml", &[]);
}

/// community.general.pamd on a service file in the temp root (control change, inserts
/// before and after, arguments added, removed and replaced, rule removal, check mode
/// and the failures) agrees with Ansible, the rewritten file included.
#[test]
fn pamd_matches_ansible() {
    check("pamd.yml", &[]);
}

/// apt in check mode (installed packages, exact and pattern versions, unknown and
/// virtual names, a package to install, lists and loops, latest through a pin, absent)
/// answers like Ansible's python-apt.
#[test]
fn apt_matches_ansible() {
    require_program("apt-get", "apt");
    check("apt.yml", &["--check"]);
}

/// timezone, alternatives and deb822_repository in check mode on the host's real
/// configuration, and firewalld, selinux and snap where this host lacks what they
/// need, answer like Ansible (changed or not, diffs, the file text deb822 would write,
/// the failures and their messages).
#[test]
fn system_modules_in_check_mode_match_ansible() {
    require_program("update-alternatives", "dpkg");
    check("system_check.yml", &[]);
}

/// community.general.npm (install from package.json with a local dependency, named
/// packages already there, removal, check mode on a missing package, an unreachable
/// registry, argument errors) agrees with Ansible.
#[test]
fn npm_matches_ansible() {
    require_program("npm", "npm");
    check("npm.yml", &[]);
}

/// Drops the roles a postgresql_user run made, whatever happened in the test.
struct RoleCleanup {
    url: String,
    prefixes: Vec<String>,
}

impl Drop for RoleCleanup {
    fn drop(&mut self) {
        for prefix in &self.prefixes {
            for role in ["app", "checked", "bad"] {
                let _ = Command::new("psql")
                    .args([self.url.as_str(), "-X", "-q", "-c"])
                    .arg(format!("DROP ROLE IF EXISTS \"{prefix}_{role}\""))
                    .output();
            }
        }
    }
}

/// community.postgresql.postgresql_user against the harness's PostgreSQL (create with
/// password, flags, limit, comment and settings; the same again; flags, expiry and a
/// new password; no_password_changes; check mode; removal; invalid flags; an
/// unreachable server) agrees with Ansible, each tool with role names of its own.
#[test]
fn postgresql_user_matches_ansible() {
    require_program("psql", "postgresql-client");
    let url = dynserv_tests::postgres::admin_url();
    // postgres://USER@HOST:PORT/DB, as the harness writes it.
    let rest = url
        .strip_prefix("postgres://")
        .expect("a postgres:// URL from the harness");
    let (credentials, address) = rest.split_once('@').expect("user@host in the URL");
    let user = credentials.split(':').next().unwrap_or("postgres");
    let host_port = address.split('/').next().unwrap_or_default();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let id = std::process::id();
    let (native, ansible) = (format!("dsvn{id}"), format!("dsva{id}"));
    let _cleanup = RoleCleanup {
        url: url.clone(),
        prefixes: vec![native.clone(), ansible.clone()],
    };
    let common = [
        "-e".to_string(),
        format!("pg_host={host}"),
        "-e".to_string(),
        format!("pg_port={port}"),
        "-e".to_string(),
        format!("pg_user={user}"),
    ];
    let args_for = |prefix: &str| -> Vec<String> {
        let mut args = common.to_vec();
        args.push("-e".into());
        args.push(format!("prefix={prefix}"));
        args
    };
    let (native_args, ansible_args) = (args_for(&native), args_for(&ansible));
    let native_refs: Vec<&str> = native_args.iter().map(String::as_str).collect();
    let ansible_refs: Vec<&str> = ansible_args.iter().map(String::as_str).collect();
    check_with_vars(
        &fixtures().join("postgresql_user.yml"),
        &native_refs,
        &ansible_refs,
    );
}

/// async/poll and async_status agree with Ansible: a polled job ends with the module's
/// result and its job file removed, fire-and-forget jobs are read and cleaned up with
/// async_status (alone and in a loop), a job past its time limit is killed, a failing
/// background command fails the task, an unknown job id fails, and copy refuses async.
#[test]
fn async_poll_matches_ansible() {
    check("async_poll.yml", &[]);
}

/// include_role and include_tasks with `apply` hand tags, environment, vars,
/// ignore_errors and when to the included tasks; an include's own tags select only the
/// include (run without tags).
#[test]
fn include_role_apply_matches_ansible() {
    check("include_role_apply.yml", &[]);
}

/// The same with `--tags applied`: only tasks tagged through `apply` or by themselves run.
#[test]
fn include_role_apply_with_tags_matches_ansible() {
    check("include_role_apply.yml", &["--tags", "applied"]);
}

/// `with_first_found` and `lookup('first_found')` find the same files as ansible-core:
/// the action's directory first, dicts with paths, separated names, skip.
#[test]
fn first_found_matches_ansible() {
    check("first_found.yml", &[]);
}

/// getent and service_facts on this host (facts kept for later tasks), locale_gen in
/// check mode, and apache2_module, seport, rpm_key, mysql_user and mysql_db where the
/// host lacks apache2ctl, SELinux bindings, rpm and a MySQL driver agree with Ansible:
/// results, facts, the failures and their messages, argument errors.
#[test]
fn host_modules_match_ansible() {
    require_program("getent", "libc-bin");
    require_program("locale", "libc-bin");
    check("host_modules.yml", &[]);
}

/// community.docker.docker_image and docker_container against the host's Docker daemon
/// (argument errors, a missing local image, a pull in check mode, an imported image
/// found locally and removed, a container created, kept, stopped and removed, check
/// mode throughout) agree with Ansible. ansible-core's Docker modules need `requests`,
/// which the system Python has and the venv lacks, so ansible-core runs them with
/// /usr/bin/python3, as the corpus does; each tool uses names of its own.
#[test]
fn docker_image_matches_ansible() {
    require_program("docker", "docker.io");
    let id = std::process::id();
    let (native, ansible) = (format!("dsvn{id}"), format!("dsva{id}"));
    let _cleanup = DockerCleanup {
        names: vec![native.clone(), ansible.clone()],
    };
    let native_prefix = format!("prefix={native}");
    let ansible_prefix = format!("prefix={ansible}");
    check_with_vars(
        &fixtures().join("docker_image.yml"),
        &["-e", &native_prefix],
        &[
            "-e",
            &ansible_prefix,
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
        ],
    );
}

/// Removes the containers and images a docker_image run made, whatever happened.
struct DockerCleanup {
    names: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("docker")
                .args(["rm", "--force", &format!("dynserv-test-{name}-box")])
                .output();
            let _ = Command::new("docker")
                .args(["image", "rm", "--force", &format!("dynserv-test-{name}")])
                .output();
        }
    }
}

/// Drops the databases a postgresql_db run made, whatever happened in the test.
struct DatabaseCleanup {
    url: String,
    prefixes: Vec<String>,
}

impl Drop for DatabaseCleanup {
    fn drop(&mut self) {
        for prefix in &self.prefixes {
            for database in ["app", "checked"] {
                let _ = Command::new("psql")
                    .args([self.url.as_str(), "-X", "-q", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS \"{prefix}_{database}\""))
                    .output();
            }
        }
    }
}

/// community.postgresql.postgresql_db against the harness's PostgreSQL (create with
/// encoding, template and comment; the same again; a connection limit and comment
/// change; check mode; a collation that cannot change; an unreachable server;
/// removal) agrees with Ansible, each tool with database names of its own.
#[test]
fn postgresql_db_matches_ansible() {
    require_program("psql", "postgresql-client");
    let url = dynserv_tests::postgres::admin_url();
    let rest = url
        .strip_prefix("postgres://")
        .expect("a postgres:// URL from the harness");
    let (credentials, address) = rest.split_once('@').expect("user@host in the URL");
    let user = credentials.split(':').next().unwrap_or("postgres");
    let host_port = address.split('/').next().unwrap_or_default();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let id = std::process::id();
    let (native, ansible) = (format!("dsvn{id}"), format!("dsva{id}"));
    let _cleanup = DatabaseCleanup {
        url: url.clone(),
        prefixes: vec![native.clone(), ansible.clone()],
    };
    let args_for = |prefix: &str| -> Vec<String> {
        [
            format!("pg_host={host}"),
            format!("pg_port={port}"),
            format!("pg_user={user}"),
            format!("prefix={prefix}"),
        ]
        .into_iter()
        .flat_map(|v| ["-e".to_string(), v])
        .collect()
    };
    let (native_args, ansible_args) = (args_for(&native), args_for(&ansible));
    let native_refs: Vec<&str> = native_args.iter().map(String::as_str).collect();
    let ansible_refs: Vec<&str> = ansible_args.iter().map(String::as_str).collect();
    check_with_vars(
        &fixtures().join("postgresql_db.yml"),
        &native_refs,
        &ansible_refs,
    );
}

/// A `when` that evaluates to an integer or a string fails each item as in
/// ansible-core 2.19 (20-ssh-server in the public corpus), with its message.
#[test]
fn broken_conditional_matches_ansible() {
    check("broken_conditional.yml", &[]);
}
