//! The `dynserv-agent playbook` CLI contract and the shipped sample playbooks.
//!
//! Exit codes: 0 success, 2 failed task, 1 invalid playbook; an unknown module is
//! rejected before any task runs, naming the module and its line. Every sample in
//! `playbooks/` validates and passes `--check` on this (Debian/Ubuntu) machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn agent(args: &[&str]) -> Output {
    Command::new(dynserv_tests::agent_binary())
        .arg("playbook")
        .args(args)
        .output()
        .expect("dynserv-agent runs")
}

fn write_playbook(dir: &Path, text: &str) -> String {
    let path = dir.join("play.yml");
    std::fs::write(&path, text).expect("write playbook");
    path.display().to_string()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const SAMPLES: &[&str] = &[
    "hello.yml",
    "nginx.yml",
    "docker.yml",
    "system-update.yml",
    "compose-deploy.yml",
    "db-backup.yml",
];

/// A playbook with an unknown module exits 1 before running anything, naming module and line.
#[test]
fn unknown_module_is_rejected_before_any_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let file = write_playbook(
        dir.path(),
        &format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - file: path={} state=touch\n    - name: needs a collection\n      community.mysql.mysql_query:\n        query: SELECT 1\n",
            marker.display()
        ),
    );
    let output = agent(&[&file]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(all.contains("community.mysql.mysql_query"), "{all}");
    assert!(all.contains("line 5"), "{all}");
    assert!(!all.contains("TASK ["), "{all}");
    assert!(!marker.exists(), "a task ran before validation failed");
}

/// YAML syntax errors exit 1 with a line and a column.
#[test]
fn syntax_error_exits_1_with_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_playbook(
        dir.path(),
        "- hosts: localhost\n  tasks:\n    - debug: {msg: [unclosed\n",
    );
    let output = agent(&[&file]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("line "), "{}", text(&output));
    assert!(text(&output).contains("column "), "{}", text(&output));
}

/// A playbook naming a role that is not there exits 1 before running anything, with
/// Ansible's message: the role, the directories searched and the entry's position.
#[test]
fn missing_role_is_rejected_before_any_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let file = write_playbook(
        dir.path(),
        &format!(
            "- hosts: localhost\n  gather_facts: false\n  pre_tasks:\n    - file: path={} state=touch\n  roles:\n    - role: webserver\n",
            marker.display()
        ),
    );
    let output = agent(&[&file]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(
        all.contains(&format!(
            "the role 'webserver' was not found in {}/roles:",
            dir.path().canonicalize().expect("dir").display()
        )),
        "{all}"
    );
    assert!(all.contains("(line 6, column 7)"), "{all}");
    assert!(!marker.exists(), "a task ran before validation failed");
}

/// A failed task exits 2 and the recap counts it; success exits 0.
#[test]
fn exit_codes_and_recap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_playbook(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg={{ greeting }}\n    - command: /bin/false\n      when: fail | bool\n",
    );
    let output = agent(&[&file, "-e", "greeting=hi", "-e", "fail=no"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("PLAY RECAP"), "{stdout}");
    assert!(
        stdout.contains("ok=1    changed=0    unreachable=0    failed=0    skipped=1"),
        "{stdout}"
    );
    assert!(stdout.contains("\"msg\": \"hi\""), "{stdout}");

    let output = agent(&[&file, "-e", "greeting=hi", "-e", "fail=yes"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("fatal: [localhost]: FAILED!"), "{stdout}");
    assert!(stdout.contains("failed=1"), "{stdout}");
}

/// Every sample playbook passes the runtime's validation.
#[test]
fn samples_validate() {
    for sample in SAMPLES {
        let path = workspace_root().join("playbooks").join(sample);
        let output = agent(&["--syntax-check", &path.display().to_string()]);
        assert_eq!(output.status.code(), Some(0), "{sample}: {}", text(&output));
    }
}

/// Every sample playbook passes --check on this Debian/Ubuntu machine and changes nothing.
#[test]
fn samples_pass_check_mode() {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    assert!(
        os_release.contains("ID=debian")
            || os_release.contains("ID=ubuntu")
            || os_release.contains("ID_LIKE=debian"),
        "the sample playbooks target Debian/Ubuntu; this test must run on one"
    );
    for sample in SAMPLES {
        let path = workspace_root().join("playbooks").join(sample);
        let output = agent(&["--check", &path.display().to_string()]);
        let all = text(&output);
        if offline_head_request_failed(&all) {
            // get_url checks its URL with a HEAD request in check mode, as Ansible does;
            // on a machine that cannot resolve names that request fails under Ansible too.
            eprintln!("{sample}: get_url could not resolve its host (offline machine)");
            continue;
        }
        assert_eq!(
            output.status.code(),
            Some(0),
            "{sample} --check failed:\n{all}"
        );
        assert!(all.contains("failed=0"), "{sample}:\n{all}");
    }
}

/// Whether the run's only failure is a get_url HEAD request to a host that does not
/// resolve (the machine is offline).
fn offline_head_request_failed(output: &str) -> bool {
    output.contains("failed=1")
        && output
            .lines()
            .filter(|l| l.starts_with("fatal:"))
            .all(|l| l.contains("Could not resolve host"))
}

/// With --ansible-fallback a module the runtime lacks runs through ansible-core and its
/// result is registered like a native one; without the flag the playbook is rejected.
#[test]
fn unknown_module_runs_through_ansible_when_allowed() {
    let ansible = std::env::var_os("DYNSERV_ANSIBLE_PLAYBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-ansible/bin/ansible-playbook"))
        .with_file_name("ansible");
    assert!(
        ansible.is_file(),
        "ansible not found at {}; see tests/fixtures/playbooks/INSTALL.md",
        ansible.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.txt"), "a").expect("write");
    std::fs::write(dir.path().join("b.txt"), "b").expect("write");
    let file = write_playbook(
        dir.path(),
        &format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: find is not native\n      ansible.builtin.find:\n        paths: {root}\n        patterns: '*.txt'\n      register: found\n    - copy:\n        content: \"{{{{ found.matched }}}}\\n\"\n        dest: {root}/count.out\n",
            root = dir.path().display()
        ),
    );
    let rejected = agent(&[&file]);
    assert_eq!(rejected.status.code(), Some(1), "{}", text(&rejected));
    assert!(
        text(&rejected).contains("ansible.builtin.find"),
        "{}",
        text(&rejected)
    );

    let output = Command::new(dynserv_tests::agent_binary())
        .arg("playbook")
        .arg(format!("--ansible-fallback={}", ansible.display()))
        .arg(&file)
        .env(
            "ANSIBLE_PYTHON_INTERPRETER",
            ansible.with_file_name("python"),
        )
        .env("ANSIBLE_LOCAL_TEMP", dir.path().join("tmp"))
        .output()
        .expect("dynserv-agent runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("count.out")).expect("written"),
        "2\n"
    );
}

/// become_user runs modules as that user (as root: through runuser or sudo); becoming
/// the current user is a no-op.
#[test]
fn become_switches_user_for_modules() {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc_geteuid() } == 0;
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    let target_user = if is_root { "nobody" } else { "" };
    let become_lines = if is_root {
        "      become: true\n      become_user: nobody\n".to_string()
    } else {
        "      become: false\n".to_string()
    };
    let file = write_playbook(
        dir.path(),
        &format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - copy:\n        content: \"x\\n\"\n        dest: {}/owned.txt\n{become_lines}      register: written\n    - command: id -un\n{become_lines}      register: who\n      changed_when: false\n    - copy:\n        content: \"{{{{ who.stdout }}}}\\n\"\n        dest: {}/who.txt\n",
            shared.display(),
            shared.display()
        ),
    );
    // The agent binary must be reachable by the other user.
    let output = agent(&[&file]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    if is_root {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(shared.join("owned.txt"))
            .expect("written")
            .uid();
        assert_ne!(
            owner, 0,
            "the file was written by root, not by {target_user}"
        );
        assert_eq!(
            std::fs::read_to_string(shared.join("who.txt")).expect("written"),
            "nobody\n"
        );
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn recap_changed(output: &Output) -> Option<u32> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .nth(1)?;
    line.split_whitespace()
        .find_map(|p| p.strip_prefix("changed="))
        .and_then(|v| v.parse().ok())
}

/// apt installs and removes a (tiny) package for real, and reports changed only when it
/// acted: the second run of each step is changed=0.
#[test]
fn apt_installs_and_removes_idempotently() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc_geteuid() },
        0,
        "installing packages needs root"
    );
    let _lock = dynserv_tests::AptLock::acquire();
    let package = "sl";
    let already = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(" installed"))
        .unwrap_or(false);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_playbook(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - apt:\n        name: \"{{ pkg }}\"\n        state: \"{{ wanted }}\"\n        update_cache: true\n        cache_valid_time: 86400\n",
    );
    let run = |wanted: &str| {
        let output = agent(&[
            &file,
            "-e",
            &format!("pkg={package}"),
            "-e",
            &format!("wanted={wanted}"),
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        recap_changed(&output)
    };
    if !already {
        assert_eq!(run("present"), Some(1), "first install");
    }
    assert_eq!(run("present"), Some(0), "second install must not change");
    if !already {
        assert_eq!(run("absent"), Some(1), "removal");
        assert_eq!(run("absent"), Some(0), "second removal must not change");
    }
}

/// docker_compose_v2 brings a real Compose project up, stops it and removes it, and
/// reports changed only when Compose acted (second run of each state is changed=0).
#[test]
fn docker_compose_v2_is_idempotent() {
    dynserv_tests::require_docker();
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project");
    std::fs::create_dir(&project).expect("project dir");
    std::fs::write(
        project.join("docker-compose.yml"),
        format!(
            "version: \"2.4\"\nservices:\n  app:\n    image: {}\n    command: [\"sleep\", \"3600\"]\n",
            dynserv_tests::TEST_IMAGE
        ),
    )
    .expect("compose file");
    let name = format!("dsvpb{}", std::process::id());
    let file = write_playbook(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - community.docker.docker_compose_v2:\n        project_src: \"{{ src }}\"\n        project_name: \"{{ name }}\"\n        state: \"{{ wanted }}\"\n        pull: never\n",
    );
    let run = |wanted: &str, check: bool| {
        let mut args = vec![file.clone()];
        if check {
            args.push("--check".into());
        }
        for var in [
            format!("src={}", project.display()),
            format!("name={name}"),
            format!("wanted={wanted}"),
        ] {
            args.push("-e".into());
            args.push(var);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = agent(&refs);
        assert_eq!(output.status.code(), Some(0), "{wanted}: {}", text(&output));
        recap_changed(&output)
    };
    assert_eq!(
        run("present", true),
        Some(1),
        "check mode reports the start"
    );
    assert_eq!(
        run("present", false),
        Some(1),
        "first up starts the service"
    );
    assert_eq!(run("present", false), Some(0), "second up changes nothing");
    assert_eq!(run("stopped", false), Some(1), "stop");
    assert_eq!(
        run("stopped", false),
        Some(0),
        "second stop changes nothing"
    );
    assert_eq!(run("absent", false), Some(1), "down");
    assert_eq!(run("absent", false), Some(0), "second down changes nothing");
}

/// Runs playbook `text` (written to `dir/play.yml`) with `root=dir` and extra arguments.
fn run_in(dir: &Path, text: &str, extra: &[&str]) -> Output {
    let file = write_playbook(dir, text);
    let root = format!("root={}", dir.display());
    let mut args = vec![file.as_str(), "-e", root.as_str()];
    args.extend_from_slice(extra);
    agent(&args)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// reboot runs the reboot command, polls the boot time command until its output
/// changes (here: a file a fake reboot command rewrites, found through search_paths, or
/// changes two seconds later in the background, so the first check after the one-second
/// post_reboot_delay still sees the old id), runs the test command and reports changed
/// with rebooted and elapsed.
#[test]
fn reboot_waits_for_a_new_boot_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let fake = bin.join("fake-reboot");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> {root}/reboots.log\necho \"$1\" > {root}/boot_id\n",
            root = dir.path().display()
        ),
    )
    .expect("fake reboot");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::write(dir.path().join("boot_id"), "first\n").expect("boot id");
    let output = run_in(
        dir.path(),
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: Reboot found in the search paths, new boot id at once
      reboot:
        reboot_command: fake-reboot second "with a message"
        search_paths: ["{{ root }}/empty", "{{ root }}/bin"]
        boot_time_command: cat {{ root }}/boot_id
        test_command: touch {{ root }}/tested-1
        reboot_timeout: 30
      register: immediate
    - name: Reboot whose boot id changes two seconds later
      reboot:
        reboot_command: /bin/sh -c "(sleep 2; echo third > {{ root }}/boot_id) >/dev/null 2>&1 &"
        boot_time_command: cat {{ root }}/boot_id
        test_command: test third = "$(cat {{ root }}/boot_id)" && touch {{ root }}/tested-2
        post_reboot_delay: 1
        reboot_timeout: 30
      register: delayed
    - copy:
        dest: "{{ root }}/results.txt"
        content: |
          {{ immediate.changed }} {{ immediate.rebooted }} {{ immediate.elapsed is number }}
          {{ delayed.changed }} {{ delayed.rebooted }} {{ delayed.elapsed >= 2 }}
"#,
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(recap_changed(&output), Some(3), "{}", text(&output));
    assert_eq!(
        read(&dir.path().join("reboots.log")),
        "second with a message\n"
    );
    assert_eq!(read(&dir.path().join("boot_id")), "third\n");
    assert!(dir.path().join("tested-1").exists(), "{}", text(&output));
    assert!(dir.path().join("tested-2").exists(), "{}", text(&output));
    assert_eq!(
        read(&dir.path().join("results.txt")),
        "True True True\nTrue True True\n"
    );
}

/// reboot fails with Ansible's messages when the boot id never changes (reboot_timeout),
/// when the test command never succeeds, when the reboot command fails or cannot be
/// found, and when the boot time cannot be read before rebooting.
#[test]
fn reboot_failures_use_ansible_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("boot_id"), "same\n").expect("boot id");
    let output = run_in(
        dir.path(),
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: The boot id never changes
      reboot:
        reboot_command: /bin/true
        boot_time_command: cat {{ root }}/boot_id
        reboot_timeout: 2
      register: stuck
      ignore_errors: true
    - name: The machine comes back but the test command fails
      reboot:
        reboot_command: /bin/sh -c "echo new > {{ root }}/boot_id"
        boot_time_command: cat {{ root }}/boot_id
        test_command: /bin/false
        reboot_timeout: 1
      register: untested
      ignore_errors: true
    - name: The reboot command fails
      reboot:
        reboot_command: /bin/sh -c "echo out; echo nope >&2; exit 3"
        boot_time_command: cat {{ root }}/boot_id
      register: refused
      ignore_errors: true
    - name: The reboot command is nowhere
      reboot:
        reboot_command: no-such-reboot-command now
        search_paths: "{{ root }}"
        boot_time_command: cat {{ root }}/boot_id
      register: missing
      ignore_errors: true
    - name: The boot time cannot be read
      reboot:
        reboot_command: /bin/sh -c "touch {{ root }}/must-not-run"
        boot_time_command: cat {{ root }}/no-boot-id
      register: unreadable
      ignore_errors: true
    - copy:
        dest: "{{ root }}/results.txt"
        content: |
          {{ stuck.msg }} | {{ stuck.rebooted }} | {{ stuck.elapsed >= 2 }}
          {{ untested.msg }} | {{ untested.rebooted }}
          {{ refused.msg }} | {{ refused.rebooted }}
          {{ missing.msg }}
          {{ unreadable.msg is match('reboot: failed to get host boot time info, rc: 1, ') }} | {{ unreadable.reboot }}
"#,
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("failed=0    skipped=0    rescued=0    ignored=5"),
        "{stdout}"
    );
    assert_eq!(
        read(&dir.path().join("results.txt")),
        format!(
            "Timed out waiting for last boot time check (timeout=2) | True | True\n\
             Timed out waiting for post-reboot test command (timeout=1) | True\n\
             Reboot command failed. Error was: 'out, nope' | False\n\
             Unable to find command \"no-such-reboot-command\" in search paths: ['{}']\n\
             True | False\n",
            dir.path().display()
        )
    );
    assert!(!dir.path().join("must-not-run").exists());
}

/// In check mode reboot reports changed (and rebooted) without running any command.
#[test]
fn reboot_check_mode_runs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_in(
        dir.path(),
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - reboot:
        reboot_command: /bin/sh -c "touch {{ root }}/rebooted"
        boot_time_command: /bin/sh -c "touch {{ root }}/boot-time-read; echo id"
      register: planned
    - assert:
        that:
          - planned.changed
          - planned.rebooted
          - planned.elapsed == 0
"#,
        &["--check"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(recap_changed(&output), Some(1), "{}", text(&output));
    assert!(!dir.path().join("rebooted").exists());
    assert!(!dir.path().join("boot-time-read").exists());
}

/// Runs `playbook` twice with `root=dir`, expecting success and the given changed counts.
fn run_twice(dir: &Path, playbook: &str, extra: &[&str], changed: (u32, u32)) {
    for (round, expected) in [("first", changed.0), ("second", changed.1)] {
        let output = run_in(dir, playbook, extra);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{round} run: {}",
            text(&output)
        );
        assert_eq!(
            recap_changed(&output),
            Some(expected),
            "{round} run: {}",
            text(&output)
        );
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop";
const BOB: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQBob bob@desk";

/// authorized_key with path: creates the directory (0700) and file (0600), adds keys with
/// options, changes nothing the second time, prunes with exclusive and removes with
/// absent (ansible.posix is not in ansible-core, so this is not a differential test).
#[test]
fn authorized_key_in_a_temp_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keyfile = dir.path().join("home/.ssh/authorized_keys");
    let play = |tasks: &str| {
        format!(
            "- hosts: localhost\n  gather_facts: false\n  vars:\n    keyfile: \"{{{{ root }}}}/home/.ssh/authorized_keys\"\n  tasks:\n{tasks}"
        )
    };
    let add = play(&format!(
        r#"    - ansible.posix.authorized_key:
        user: root
        path: "{{{{ keyfile }}}}"
        key: "{ALICE}"
    - authorized_key:
        user: root
        path: "{{{{ keyfile }}}}"
        key: "{BOB}"
        key_options: 'no-port-forwarding,from="10.0.0.1"'
"#
    ));
    run_twice(dir.path(), &add, &[], (2, 0));
    assert_eq!(
        read(&keyfile),
        format!("{ALICE}\nno-port-forwarding,from=\"10.0.0.1\" {BOB}\n")
    );
    assert_eq!(mode_of(&keyfile), 0o600);
    assert_eq!(mode_of(keyfile.parent().expect("dir")), 0o700);

    let exclusive = play(&format!(
        r#"    - authorized_key:
        user: root
        path: "{{{{ keyfile }}}}"
        key: "{ALICE}"
        exclusive: true
"#
    ));
    run_twice(dir.path(), &exclusive, &[], (1, 0));
    assert_eq!(read(&keyfile), format!("{ALICE}\n"));

    let absent = play(&format!(
        r#"    - authorized_key:
        user: root
        path: "{{{{ keyfile }}}}"
        key: "{ALICE}"
        state: absent
"#
    ));
    run_twice(dir.path(), &absent, &[], (1, 0));
    assert_eq!(read(&keyfile), "");
}

/// sysctl with sysctl_file and reload: false edits only that file: adds, updates (with
/// whitespace in the value normalised) and removes entries, keeps comments, and changes
/// nothing the second time; the live kernel is not touched.
#[test]
fn sysctl_edits_its_file_idempotently() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("99-dynserv.conf");
    std::fs::write(
        &file,
        "# tuning\nvm.swappiness = 60\nnet.core.somaxconn=128\n",
    )
    .expect("write");
    let before_live = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap_or_default();
    let play = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.posix.sysctl:
        name: vm.swappiness
        value: "10"
        sysctl_file: "{{ root }}/99-dynserv.conf"
        reload: false
    - sysctl:
        name: net.ipv4.tcp_rmem
        value: "4096   87380  6291456"
        sysctl_file: "{{ root }}/99-dynserv.conf"
        reload: false
    - sysctl:
        name: net.core.somaxconn
        state: absent
        sysctl_file: "{{ root }}/99-dynserv.conf"
        reload: false
"#;
    run_twice(dir.path(), play, &[], (3, 0));
    assert_eq!(
        read(&file),
        "# tuning\nvm.swappiness=10\nnet.ipv4.tcp_rmem=4096 87380 6291456\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap_or_default(),
        before_live,
        "reload: false must leave the kernel alone"
    );
}

const ARMORED_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZfixture\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";

/// apt_key with keyring: stores a key given as data or as a file in that keyring file
/// (0644), changes nothing the second time, and removes it with absent.
#[test]
fn apt_key_manages_a_keyring_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("vendor.asc"), ARMORED_KEY).expect("key file");
    let play = |state: &str| {
        format!(
            r#"- hosts: localhost
  gather_facts: false
  tasks:
    - apt_key:
        data: "{{{{ lookup('file', root + '/vendor.asc') }}}}"
        keyring: "{{{{ root }}}}/keyrings/from-data.asc"
        state: {state}
    - apt_key:
        file: "{{{{ root }}}}/vendor.asc"
        keyring: "{{{{ root }}}}/keyrings/from-file.asc"
        state: {state}
"#
        )
    };
    run_twice(dir.path(), &play("present"), &[], (2, 0));
    for name in ["from-data.asc", "from-file.asc"] {
        let path = dir.path().join("keyrings").join(name);
        // lookup('file') strips the final newline, as Ansible's does.
        assert_eq!(read(&path).trim_end(), ARMORED_KEY.trim_end(), "{name}");
        assert_eq!(mode_of(&path), 0o644, "{name}");
    }
    run_twice(dir.path(), &play("absent"), &[], (2, 0));
    assert!(!dir.path().join("keyrings/from-data.asc").exists());
    assert!(!dir.path().join("keyrings/from-file.asc").exists());
}

/// Removes a sources list file whatever happens in the test.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// apt_repository adds a repository line to its own file under
/// /etc/apt/sources.list.d (with update_cache: false), finds it already there the
/// second time, and removes the line and the emptied file with absent. The repository
/// is a local, empty one and the file is removed even when the test fails.
#[test]
fn apt_repository_adds_and_removes_a_source() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc_geteuid() },
        0,
        "writing /etc/apt/sources.list.d needs root"
    );
    let _lock = dynserv_tests::AptLock::acquire();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Packages"), "").expect("empty repository");
    let name = format!("dynserv-test-{}", std::process::id());
    let list = PathBuf::from(format!("/etc/apt/sources.list.d/{name}.list"));
    let _cleanup = RemoveOnDrop(list.clone());
    let line = format!("deb [trusted=yes] file:{} ./", dir.path().display());
    let play = |state: &str| {
        format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - apt_repository:\n        repo: \"{line}\"\n        filename: {name}\n        state: {state}\n        update_cache: false\n"
        )
    };
    run_twice(dir.path(), &play("present"), &[], (1, 0));
    assert_eq!(read(&list), format!("{line}\n"));
    run_twice(dir.path(), &play("absent"), &[], (1, 0));
    assert!(!list.exists(), "the emptied list file is removed");
}

/// hostname in check mode reports the change and leaves the host's name alone (the
/// test never renames the machine it runs on).
#[test]
fn hostname_check_mode_changes_nothing() {
    let current = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let etc_hostname = std::fs::read_to_string("/etc/hostname").ok();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_in(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - hostname:\n        name: dynserv-renamed-host\n      register: renamed\n    - assert:\n        that: renamed.changed\n",
        &["--check"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(recap_changed(&output), Some(1), "{}", text(&output));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        current
    );
    assert_eq!(std::fs::read_to_string("/etc/hostname").ok(), etc_hostname);
}

/// On a machine without dnf or yum (this Debian test machine), dnf, yum and package
/// with use: dnf fail with a message naming the missing tool, in check mode too.
#[test]
fn dnf_without_dnf_fails_clearly() {
    for tool in ["dnf", "yum"] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).exists());
        assert!(!found, "this test expects a Debian machine without {tool}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for module in ["dnf", "ansible.builtin.yum"] {
        for check in [false, true] {
            let play = format!(
                "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - {module}:\n        name: htop\n        state: present\n"
            );
            let extra: &[&str] = if check { &["--check"] } else { &[] };
            let output = run_in(dir.path(), &play, extra);
            assert_eq!(output.status.code(), Some(2), "{}", text(&output));
            assert!(
                text(&output).contains("neither dnf nor yum is installed"),
                "{}",
                text(&output)
            );
        }
    }
    let output = run_in(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - package:\n        name: htop\n        use: dnf\n",
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("neither dnf nor yum is installed"),
        "{}",
        text(&output)
    );
}

fn inventory_fixture() -> PathBuf {
    workspace_root().join("tests/fixtures/playbooks/inventory")
}

/// The lines that show what a run did: banners (without their stars), result lines,
/// messages and the recap.
fn run_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches(['*', ' ']).trim_start().to_string())
        .filter(|l| !l.is_empty() && l != "{" && l != "}")
        .collect()
}

/// `-i inv --limit web1` runs the plays for web1's groups, skips the database play as
/// Ansible prints it, and layers the inventory's variables (file, group_vars/ and
/// host_vars/ beside it and beside the playbook) under play vars; INI and YAML
/// inventories give the same run, which is ansible-core's output for it.
#[test]
fn inventory_and_limit_select_plays_and_variables() {
    let fixture = inventory_fixture();
    let site = fixture.join("site.yml").display().to_string();
    let expected = [
        "PLAY [web tier]",
        "TASK [show the host's variables]",
        "ok: [web1] => {",
        "\"msg\": \"from-webservers on web1 port 8080 / prod / eu-playbook / inventory-all / prod,webservers / web1,web2,db1\"",
        "TASK [show the other hosts]",
        "ok: [web1] => {",
        "\"msg\": \"from-webservers from-prod web1\"",
        "PLAY [database tier]",
        "skipping: no hosts matched",
        "PLAY [all but databases]",
        "TASK [fails on purpose when asked]",
        "skipping: [web1]",
        "TASK [play vars win over inventory vars]",
        "ok: [web1] => {",
        "\"msg\": \"task\"",
        "PLAY RECAP",
        "web1                       : ok=3    changed=0    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0",
    ];
    for inventory in ["hosts/inv.ini", "hosts/inv.yml"] {
        let inventory = fixture.join(inventory).display().to_string();
        let output = agent(&["-i", &inventory, "--limit", "web1", &site]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(run_lines(&stdout), expected, "{inventory}:\n{stdout}");
    }
}

/// A failed task in a play the limit selects exits 2; a play for db1 runs alone when
/// the limit is db1, and its recap names db1.
#[test]
fn inventory_runs_fail_and_select_by_limit() {
    let fixture = inventory_fixture();
    let site = fixture.join("site.yml").display().to_string();
    let inventory = fixture.join("hosts/inv.ini").display().to_string();
    let failed = agent(&[
        "-i",
        &inventory,
        "--limit",
        "web1",
        &site,
        "-e",
        "fail_now=yes",
    ]);
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(
        text(&failed).contains("fatal: [web1]: FAILED!"),
        "{}",
        text(&failed)
    );

    let db = agent(&["-i", &inventory, "--limit", "dbservers", &site]);
    assert_eq!(db.status.code(), Some(0), "{}", text(&db));
    let lines = run_lines(&String::from_utf8_lossy(&db.stdout));
    let skipped = lines
        .iter()
        .filter(|l| *l == "skipping: no hosts matched")
        .count();
    assert_eq!(skipped, 2, "{lines:?}");
    assert!(lines.contains(&"\"msg\": \"db\"".to_string()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("db1    ") && l.contains("ok=1 ")),
        "{lines:?}"
    );
}

/// A limit matching no host, or several, and an unreadable or invalid inventory exit 1
/// with a one-line error before any play.
#[test]
fn bad_inventories_and_limits_exit_1() {
    let fixture = inventory_fixture();
    let site = fixture.join("site.yml").display().to_string();
    let inventory = fixture.join("hosts/inv.ini").display().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.ini");
    std::fs::write(&broken, "[web]\nweb1\n[prod:children]\nmissing\n").expect("write");
    let broken = broken.display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &["-i", &inventory, "--limit", "nomatch"],
            "ERROR! Specified inventory, host pattern and/or --limit leaves us with no hosts to target.",
        ),
        (
            &["-i", &inventory, "--limit", "webservers"],
            "ERROR! --limit webservers selects 2 hosts (web1, web2)",
        ),
        (
            &["-i", "/nonexistent/inv.ini"],
            "ERROR! could not use the inventory /nonexistent/inv.ini: could not read /nonexistent/inv.ini",
        ),
        (
            &["-i", &broken],
            "broken.ini:4: Section [prod:children] includes undefined group 'missing'.",
        ),
    ];
    for (args, expected) in cases {
        let mut all_args = args.to_vec();
        all_args.push(&site);
        let output = agent(&all_args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            !text(&output).contains("PLAY ["),
            "{args:?}: {}",
            text(&output)
        );
    }
}

/// Without -i, group_vars/ and host_vars/ beside the playbook apply to localhost, which
/// is in `ungrouped`; a play for another group is skipped and the recap is empty.
#[test]
fn vars_beside_the_playbook_without_inventory() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("group_vars")).expect("dir");
    std::fs::create_dir_all(dir.path().join("host_vars")).expect("dir");
    std::fs::write(
        dir.path().join("group_vars/all.yml"),
        "a: from-all\nb: from-all\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("group_vars/ungrouped.yml"),
        "b: from-ungrouped\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("host_vars/localhost.yml"), "c: from-host\n").expect("write");
    let file = write_playbook(
        dir.path(),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=\"{{ a }} {{ b }} {{ c }} {{ group_names }}\"\n",
    );
    let output = agent(&[&file]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("\"msg\": \"from-all from-ungrouped from-host ['ungrouped']\""),
        "{}",
        text(&output)
    );

    let other = write_playbook(
        dir.path(),
        "- hosts: webservers\n  gather_facts: false\n  tasks:\n    - debug: msg=never\n",
    );
    let output = agent(&[&other]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let lines = run_lines(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(
        lines,
        [
            "PLAY [webservers]",
            "skipping: no hosts matched",
            "PLAY RECAP"
        ],
        "{}",
        text(&output)
    );
}
