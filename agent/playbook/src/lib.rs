//! Native Ansible playbook runtime.
//!
//! Runs the common core of Ansible playbooks against the local machine without Python:
//! YAML with YAML 1.1 scalars and positioned errors (`yaml`), the playbook structure and
//! its validation (`model`), roles and their variable layers (`roles`), Jinja2 templating
//! with Ansible's filters and strict undefined semantics (`template`, `filters`), host
//! facts (`facts`), the play/task engine with handlers, blocks, loops, check mode and the
//! PLAY RECAP (`engine`), and native modules (`modules`).
//!
//! The API is built for three callers: the `dynserv-agent playbook` CLI ([`cli_main`]),
//! the agent's job executor, which calls [`parse_playbook`] and then [`run_playbook`] with
//! an output sink, extra variables, check mode and secret values to mask, and the control
//! plane, which validates a script on save with [`validate`] /
//! [`check_playbook_text_with_ansible_fallback`]: a pure parse that never touches the
//! control plane's filesystem.
//!
//! A playbook that uses a module this runtime lacks is rejected by [`parse_playbook`]
//! before any task runs, with the module's name and line; with
//! [`parse_playbook_with_ansible_fallback`] and [`RunOptions::ansible_fallback`] such a task
//! instead runs through ansible-core's own module (`fallback`).
//!
//! # What is supported
//!
//! * Inventories (`inventory`, `-i`): INI, YAML, directories and host lists, with
//!   `group_vars/`/`host_vars/` beside the inventory and the playbook. The run plays one
//!   host, the local machine, as the inventory host `--limit` names (default: the only
//!   host, else `localhost`); a play whose `hosts` pattern does not select it is skipped.
//!   Without `-i` the host is alone in `ungrouped` and also answers to `localhost` and
//!   this machine's names.
//! * Plays: `hosts` (Ansible's host patterns), `name`,
//!   `vars`, `vars_files`, `gather_facts`, `pre_tasks`/`roles`/`tasks`/`post_tasks`/
//!   `handlers` (run as Ansible compiles them: pre_tasks, flush, roles and tasks, flush,
//!   post_tasks, flush), `force_handlers`, and the inherited keywords below. Top-level
//!   `import_playbook` (a file relative to the importing playbook, with `vars`/`tags`/
//!   `when`). `vars_prompt` (`-e` wins; without a terminal the default, as Ansible).
//! * Roles (`roles`): entries as names or dicts (`role`/`name`, `vars`, `tags`, `when`,
//!   other keywords, role parameters), found in `roles/` beside the playbook, then
//!   `ANSIBLE_ROLES_PATH` (default `~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles`),
//!   then the playbook's directory; `tasks/`, `handlers/` (joining the play's, notifiable
//!   as `name` or `role : name`), `defaults/`, `vars/`, `files/` and `templates/` (searched
//!   first by the role's tasks) and `meta/main.yml` `dependencies`/`allow_duplicates`. A
//!   role runs once per play unless its parameters differ or it allows duplicates. Tasks
//!   print as `TASK [role : name]`. Task-level `import_role` (static, at parse time) and
//!   `include_role` (at run time, with loops; private unless `public: true`) take `name`,
//!   `tasks_from`, `vars_from`, `defaults_from`, `handlers_from`, `public` and
//!   `allow_duplicates`, and `apply` (keywords for every included task, as for
//!   `include_tasks`); an include's own tags select the include, not the included tasks.
//!   Templated role names and roles from collections are not supported. Variable precedence: role defaults < play vars < vars_files < role vars <
//!   block/task vars < set_fact/registered < role params < extra vars.
//! * Tasks and blocks: `when`, `loop`/`with_items`/`with_dict`/`with_list`/
//!   `with_indexed_items`/`with_sequence`/`with_together`/`with_nested`/`with_subelements`/
//!   `with_fileglob`/`with_lines`/`with_file`/`with_first_found`, `loop_control`, `register`, `notify`/`listen`,
//!   `changed_when`, `failed_when`, `ignore_errors`, `until`/`retries`/`delay`, `tags`,
//!   `vars`, `args`, `k=v` strings, `block`/`rescue`/`always`, `become`/`become_user` (sudo; su as root),
//!   `check_mode`, `diff`, `no_log`, `environment`, `delegate_to` (local host only),
//!   `async`/`poll` (a supervisor process runs the module in the background with its
//!   time limit and writes the job file; `poll: 0` returns the job id) and `async_status`,
//!   `import_tasks` (its file name may use `playbook_dir`), `include_tasks` (with `apply`),
//!   `include_vars`, `meta` (`flush_handlers`, `end_play`,
//!   `end_host`, `clear_facts`, `noop`).
//! * Modules (`modules`): command, shell, raw, copy, template, file, lineinfile,
//!   blockinfile, replace, stat, slurp, debug, set_fact, assert, fail, pause, ping, apt,
//!   apt_key, apt_repository, package, pip, dnf/yum, service, systemd, user, group,
//!   get_url, wait_for, cron, authorized_key, sysctl, hostname, reboot, ufw, unarchive,
//!   git, community.docker.docker_compose_v2.

pub mod become_;
mod chained;
mod crypt;
pub mod engine;
pub mod facts;
pub mod fallback;
pub mod filters;
mod host_facts;
pub mod inventory;
pub mod model;
pub mod modules;
mod more_filters;
pub mod roles;
pub mod template;
pub mod tree;
pub mod yaml;

pub use engine::{run_playbook, RunOptions, RunReport, Stats};
pub use model::{
    check_playbook_text, check_playbook_text_with_ansible_fallback, parse_playbook,
    parse_playbook_with_ansible_fallback, FileAccess, Playbook, PlaybookError,
};

use anyhow::Context as _;
use minijinja::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Exit code for a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code for an invalid playbook or bad arguments.
pub const EXIT_INVALID: i32 = 1;
/// Exit code when a task failed.
pub const EXIT_FAILED: i32 = 2;

/// Validates playbook text as the editor does: `Ok` or the first error with its
/// position. Touches no file: imports and roles are resolved when the agent runs the
/// playbook (see [`check_playbook_text`]).
pub fn validate(source: &str) -> Result<(), PlaybookError> {
    check_playbook_text(source)
}

/// Parses one `-e` argument: `KEY=VALUE [KEY=VALUE…]`, a JSON/YAML dict, or `@FILE`.
pub fn parse_extra_vars(argument: &str) -> Result<Vec<(String, Value)>, String> {
    let trimmed = argument.trim();
    let dict_from = |text: &str, origin: &str| -> Result<Vec<(String, Value)>, String> {
        let node = yaml::parse_one(text).map_err(|e| format!("{origin}: {e}"))?;
        let value = node.to_value();
        if value.kind() != minijinja::value::ValueKind::Map {
            return Err(format!("{origin}: extra vars must be a dictionary"));
        }
        let mut out = Vec::new();
        for key in value.try_iter().map_err(|e| e.to_string())? {
            let item = value.get_item(&key).map_err(|e| e.to_string())?;
            out.push((modules::value_to_string(&key), item));
        }
        Ok(out)
    };
    if let Some(file) = trimmed.strip_prefix('@') {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("could not read extra vars file {file}: {e}"))?;
        return dict_from(&text, file);
    }
    if trimmed.starts_with('{') {
        return dict_from(trimmed, "extra vars");
    }
    let pairs = model::parse_kv(trimmed, false)
        .map_err(|e| format!("invalid extra vars {argument:?}: {e}"))?;
    if pairs.is_empty() {
        return Err(format!(
            "invalid extra vars {argument:?}: expected KEY=VALUE"
        ));
    }
    Ok(pairs)
}

/// Arguments of `dynserv-agent playbook`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlaybookArgs {
    /// The playbook file to run.
    #[arg(value_name = "FILE", required_unless_present_any = ["internal_module", "internal_async"])]
    pub file: Option<PathBuf>,
    /// Don't make any changes; report what would change.
    #[arg(short = 'C', long)]
    pub check: bool,
    /// Show the differences in changed files.
    #[arg(short = 'D', long)]
    pub diff: bool,
    /// Extra variables as KEY=VALUE, a YAML/JSON dict or @FILE (repeatable).
    #[arg(short = 'e', long = "extra-vars", value_name = "KEY=VALUE")]
    pub extra_vars: Vec<String>,
    /// Only run tasks tagged with these tags (comma-separated, repeatable).
    #[arg(short = 't', long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Skip tasks tagged with these tags (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub skip_tags: Vec<String>,
    /// Run notified handlers even if a task fails.
    #[arg(long)]
    pub force_handlers: bool,
    /// Only check the playbook's syntax and modules; run nothing.
    #[arg(long)]
    pub syntax_check: bool,
    /// The host name the play sees as `inventory_hostname` when there is no inventory.
    #[arg(long, default_value = "localhost", conflicts_with = "inventory")]
    pub inventory_hostname: String,
    /// An Ansible inventory: an INI or YAML file, a directory of them, or `host1,host2,`.
    #[arg(short = 'i', long, value_name = "INVENTORY")]
    pub inventory: Option<String>,
    /// The inventory host this run plays (a host pattern selecting exactly one host).
    #[arg(short = 'l', long, value_name = "PATTERN")]
    pub limit: Option<String>,
    /// Run tasks whose module the native runtime lacks through ansible-core's `ansible`
    /// program (`--ansible-fallback=PATH` to choose it); without this flag such a playbook
    /// is rejected.
    #[arg(long, value_name = "ANSIBLE", num_args = 0..=1, require_equals = true, default_missing_value = "ansible")]
    pub ansible_fallback: Option<PathBuf>,
    /// Print the run's per-task report (name, action, status, diff) as the last stdout
    /// line, `DYNSERV-RESULT {json}`: how the agent's drift checks read what would
    /// change (see `engine::report`).
    #[arg(long, hide = true)]
    pub result_line: bool,
    /// Internal (agent jobs): a JSON file of facts gathered earlier on other hosts of
    /// the inventory, `{HOST: {"gathered_at", "facts": {...}}}`, shown as their
    /// `hostvars[HOST].ansible_facts` and `ansible_*` (the control plane's fact cache).
    #[arg(long, hide = true, value_name = "FILE")]
    pub facts_cache: Option<PathBuf>,
    /// Internal (agent jobs): where to write the facts the run gathered on its host,
    /// `{"gathered_at", "facts": {...}}`, once it ends; nothing is written when it
    /// gathered none.
    #[arg(long, hide = true, value_name = "FILE")]
    pub facts_out: Option<PathBuf>,
    /// Internal: run one module from a JSON request on stdin (used for `become`).
    #[arg(long, hide = true)]
    pub internal_module: bool,
    /// Internal: supervise a background (`async`) job described as JSON on stdin.
    #[arg(long, hide = true)]
    pub internal_async: bool,
}

/// Runs `dynserv-agent playbook`; returns the process exit code.
pub fn cli_main(args: PlaybookArgs) -> i32 {
    if args.internal_module {
        let mut input = String::new();
        if std::io::stdin().read_to_string(&mut input).is_err() {
            return EXIT_INVALID;
        }
        println!("{}", become_::serve_request(&input));
        return EXIT_OK;
    }
    if args.internal_async {
        let mut input = String::new();
        if std::io::stdin().read_to_string(&mut input).is_err() {
            return EXIT_INVALID;
        }
        return engine::serve_async(&input);
    }
    match cli_run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR! {e:#}");
            EXIT_INVALID
        }
    }
}

fn cli_run(args: &PlaybookArgs) -> anyhow::Result<i32> {
    let file = args.file.as_ref().context("a playbook file is required")?;
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("could not read the playbook {}", file.display()))?;
    let base_dir = std::fs::canonicalize(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let parsed = if args.ansible_fallback.is_some() {
        parse_playbook_with_ansible_fallback(&source, &base_dir)
    } else {
        parse_playbook(&source, &base_dir)
    };
    let playbook = match parsed {
        Ok(mut p) => {
            p.source_path = Some(file.clone());
            p
        }
        Err(e) => {
            eprintln!("ERROR! {e}");
            eprintln!("The error appears to be in '{}'", file.display());
            return Ok(EXIT_INVALID);
        }
    };
    if args.syntax_check {
        println!("\nplaybook: {}", file.display());
        return Ok(EXIT_OK);
    }
    let (inventory, host) = inventory_for_run(args, &base_dir)?;
    let mut extra_vars = Vec::new();
    for argument in &args.extra_vars {
        extra_vars.extend(parse_extra_vars(argument).map_err(anyhow::Error::msg)?);
    }
    let options = RunOptions {
        check: args.check,
        diff: args.diff,
        extra_vars,
        tags: args
            .tags
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect(),
        skip_tags: args
            .skip_tags
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect(),
        secrets: Vec::new(),
        force_handlers: args.force_handlers,
        inventory_hostname: host,
        inventory: Some(std::sync::Arc::new(inventory)),
        become_program: std::env::current_exe().ok(),
        ansible_fallback: args.ansible_fallback.clone(),
        cancel: None,
        cached_facts: std::sync::Arc::new(match &args.facts_cache {
            Some(path) => read_facts_cache(path)?,
            None => engine::CachedFacts::new(),
        }),
    };
    let stdout = std::io::stdout();
    let mut sink = |line: &str| {
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    };
    let report = run_playbook(&playbook, &options, &mut sink);
    if args.result_line {
        sink(&engine::report::result_line(report.failed, &report.tasks));
    }
    if let (Some(path), Some(gathered)) = (&args.facts_out, &report.gathered_facts) {
        write_gathered_facts(path, gathered)?;
    }
    Ok(if report.failed { EXIT_FAILED } else { EXIT_OK })
}

/// One host's entry of a `--facts-cache` file (its `gathered_at` is for people).
#[derive(serde::Deserialize)]
struct CachedHostFacts {
    facts: serde_json::Map<String, serde_json::Value>,
}

/// Reads a `--facts-cache` file.
fn read_facts_cache(path: &Path) -> anyhow::Result<engine::CachedFacts> {
    let text = std::fs::read(path)
        .with_context(|| format!("could not read the facts cache {}", path.display()))?;
    let hosts: std::collections::BTreeMap<String, CachedHostFacts> = serde_json::from_slice(&text)
        .with_context(|| format!("the facts cache {} is not valid", path.display()))?;
    Ok(hosts.into_iter().map(|(h, f)| (h, f.facts)).collect())
}

/// Writes the run's gathered facts for `--facts-out`, readable by its owner only
/// (facts hold the environment of the run).
fn write_gathered_facts(path: &Path, gathered: &engine::GatheredFacts) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let body = serde_json::json!({
        "gathered_at": gathered.gathered_at.to_rfc3339(),
        "facts": gathered.facts,
        "module_facts": gathered.module_facts,
    });
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not write the gathered facts to {}", path.display()))?;
    file.write_all(&serde_json::to_vec(&body)?)
        .with_context(|| format!("could not write the gathered facts to {}", path.display()))?;
    Ok(())
}

/// The inventory of a CLI run (`-i`, else the implicit one of `--inventory-hostname`)
/// with its variables from `group_vars/`/`host_vars/` beside it and beside the
/// playbook in `playbook_dir`, and the host `--limit` selects.
fn inventory_for_run(
    args: &PlaybookArgs,
    playbook_dir: &Path,
) -> anyhow::Result<(inventory::Inventory, String)> {
    let source = args.inventory.as_deref();
    let mut inventory = match source {
        Some(source) => inventory::Inventory::load(source)
            .with_context(|| format!("could not use the inventory {source}"))?,
        None => inventory::Inventory::implicit(&args.inventory_hostname),
    };
    let host = inventory::run_host(&inventory, args.limit.as_deref())?;
    let dirs = inventory::VarsDirs::for_run(source, playbook_dir);
    inventory
        .resolve_vars(&dirs, Some(&host))
        .context("could not read the inventory's variables")?;
    Ok((inventory, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_yaml(source: &str, options: &RunOptions) -> (Vec<String>, RunReport) {
        let playbook = parse_playbook(source, Path::new("/tmp")).expect("valid playbook");
        let mut lines = Vec::new();
        let report = run_playbook(&playbook, options, &mut |line: &str| {
            lines.push(line.to_string())
        });
        (lines, report)
    }

    /// In check and diff mode the run's report lists every task with its status and
    /// the diff as printed, secrets masked; a `no_log` task carries no diff.
    #[test]
    fn the_report_carries_each_task_and_its_masked_diff() {
        use engine::report::TaskStatus;
        let dir = tempfile::tempdir().expect("temp dir");
        let (f, g) = (dir.path().join("f"), dir.path().join("g"));
        std::fs::write(&f, "old hunter2\n").unwrap();
        std::fs::write(&g, "old\n").unwrap();
        let source = format!(
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: f is managed\n      copy:\n        content: \"new hunter2\\n\"\n        dest: {}\n    - name: g is secret\n      no_log: true\n      copy:\n        content: \"new\\n\"\n        dest: {}\n    - name: say hi\n      debug:\n        msg: hi\n",
            f.display(),
            g.display()
        );
        let options = RunOptions {
            check: true,
            diff: true,
            secrets: vec!["hunter2".into()],
            ..RunOptions::default()
        };
        let (lines, report) = run_yaml(&source, &options);
        let text = lines.join("\n");
        assert_eq!(report.tasks.len(), 3, "{text}");
        assert_eq!(report.tasks[0].name, "f is managed");
        assert_eq!(report.tasks[0].action, "copy");
        assert_eq!(report.tasks[0].status, TaskStatus::Changed);
        let diff = report.tasks[0].diff.as_deref().expect("a diff");
        assert!(diff.contains("-old ********"), "{diff}");
        assert!(diff.contains("+new ********"), "{diff}");
        assert!(!diff.contains("hunter2"), "{diff}");
        // The report's diff is what was printed.
        assert!(text.contains(diff.trim_end()), "{text}\n---\n{diff}");
        assert_eq!(report.tasks[1].status, TaskStatus::Changed);
        assert_eq!(report.tasks[1].diff, None, "no_log: no diff");
        assert_eq!(report.tasks[2].status, TaskStatus::Ok);
        assert_eq!(report.tasks[2].diff, None);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old hunter2\n");
        let line = engine::report::result_line(report.failed, &report.tasks);
        let parsed: engine::report::Report = serde_json::from_str(
            line.strip_prefix(engine::report::RESULT_LINE_PREFIX)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(parsed.changed, 2);
        assert!(!parsed.failed);
    }

    fn check(source: &str, expected: Stats) {
        let (lines, report) = run_yaml(source, &RunOptions::default());
        assert_eq!(report.stats, expected, "{}", lines.join("\n"));
    }

    fn stats(
        ok: u32,
        changed: u32,
        failed: u32,
        skipped: u32,
        rescued: u32,
        ignored: u32,
    ) -> Stats {
        Stats {
            ok,
            changed,
            unreachable: 0,
            failed,
            skipped,
            rescued,
            ignored,
        }
    }

    /// Recap counters follow Ansible's rules for skips, ignores, rescues and loops.
    #[test]
    fn recap_counters() {
        let head = "- hosts: localhost\n  gather_facts: false\n  tasks:\n";
        check(
            &format!("{head}    - debug: msg=a\n    - debug: msg=b\n      when: false\n"),
            stats(1, 0, 0, 1, 0, 0),
        );
        check(
            &format!("{head}    - command: 'false'\n      ignore_errors: true\n"),
            stats(1, 1, 0, 0, 0, 1),
        );
        check(
            &format!("{head}    - block:\n        - fail: msg=x\n      rescue:\n        - debug: msg=r\n"),
            stats(1, 0, 0, 0, 1, 0),
        );
        check(
            &format!("{head}    - debug: msg={{{{ item }}}}\n      loop: [1, 2, 3]\n"),
            stats(1, 0, 0, 0, 0, 0),
        );
        check(
            &format!("{head}    - debug: msg=x\n      loop: []\n"),
            stats(0, 0, 0, 1, 0, 0),
        );
        check(
            &format!("{head}    - fail: msg=stop\n    - debug: msg=never\n"),
            stats(0, 0, 1, 0, 0, 0),
        );
        check(
            &format!("{head}    - set_fact: {{n: 3}}\n    - assert: {{that: ['n == 3']}}\n    - debug: msg=x\n      when: n > 5\n"),
            stats(2, 0, 0, 1, 0, 0),
        );
    }

    /// Handlers run once, in definition order, after a change only.
    #[test]
    fn handlers_run_once_in_order() {
        let source = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - command: 'true'\n      notify: [b, a]\n    - command: 'true'\n      notify: a\n    - command: 'true'\n      changed_when: false\n      notify: c\n  handlers:\n    - name: a\n      debug: msg=A\n    - name: b\n      debug: msg=B\n    - name: c\n      debug: msg=C\n";
        let (lines, report) = run_yaml(source, &RunOptions::default());
        let handlers: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("RUNNING HANDLER"))
            .collect();
        assert_eq!(handlers.len(), 2, "{}", lines.join("\n"));
        assert!(
            handlers[0].starts_with("RUNNING HANDLER [a]")
                && handlers[1].starts_with("RUNNING HANDLER [b]")
        );
        assert_eq!(report.stats.ok, 5);
    }

    /// Secret values never reach the output sink.
    #[test]
    fn secrets_are_masked() {
        let options = RunOptions {
            extra_vars: vec![("token".into(), Value::from("s3cr3t-value"))],
            secrets: vec!["s3cr3t-value".into()],
            ..RunOptions::default()
        };
        let (lines, _) = run_yaml("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg='token is {{ token }}'\n", &options);
        let all = lines.join("\n");
        assert!(!all.contains("s3cr3t-value"), "{all}");
        assert!(all.contains("token is ********"), "{all}");
    }

    /// Extra vars win over play vars; play vars are templated lazily.
    #[test]
    fn variable_precedence() {
        let options = RunOptions {
            extra_vars: vec![("who".into(), Value::from("cli"))],
            ..RunOptions::default()
        };
        let (lines, _) = run_yaml(
            "- hosts: localhost\n  gather_facts: false\n  vars:\n    msg: 'hi {{ who }}'\n    who: play\n  tasks:\n    - debug: var=msg\n",
            &options,
        );
        assert!(
            lines.iter().any(|l| l.contains("\"msg\": \"hi cli\"")),
            "{}",
            lines.join("\n")
        );
    }

    /// Role variables stack as in Ansible: role defaults < play vars < role vars < task
    /// vars < set_fact < role params < extra vars (checked against ansible-core 2.19).
    #[test]
    fn role_variable_precedence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let role = dir.path().join("roles/r");
        for (file, text) in [
            ("defaults/main.yml", "a: default\nb: default\nc: default\nd: default\ne: default\nf: default\ng: default\n"),
            ("vars/main.yml", "c: rolevars\nd: rolevars\ne: rolevars\nf: rolevars\n"),
            ("tasks/main.yml", "- set_fact: {e: fact, f: fact}\n- debug: msg=\"{{ [a, b, c, d, e, f, g] | join(' ') }}\"\n  vars: {d: task, e: task, f: task}\n"),
        ] {
            let path = role.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        }
        let playbook = parse_playbook(
            "- hosts: localhost\n  gather_facts: false\n  vars: {b: play, c: play, d: play, e: play, f: play, g: play}\n  roles:\n    - {role: r, f: param}\n",
            dir.path(),
        )
        .expect("valid playbook");
        let options = RunOptions {
            extra_vars: vec![("g".into(), Value::from("extra"))],
            ..RunOptions::default()
        };
        let mut lines = Vec::new();
        run_playbook(&playbook, &options, &mut |line: &str| {
            lines.push(line.to_string())
        });
        assert!(
            lines
                .iter()
                .any(|l| l.contains("\"msg\": \"default play rolevars task fact param extra\"")),
            "{}",
            lines.join("\n")
        );
        assert!(lines.iter().any(|l| l.starts_with("TASK [r : debug]")));
    }

    /// An INI inventory of `text`, its variables resolved.
    fn ini_inventory(text: &str) -> inventory::Inventory {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("inv.ini");
        std::fs::write(&source, text).expect("write");
        let mut inventory =
            inventory::Inventory::load(&source.display().to_string()).expect("valid");
        inventory
            .resolve_vars(&inventory::VarsDirs::default(), None)
            .expect("vars");
        inventory
    }

    /// With an inventory, a play runs only when its pattern selects the host, and
    /// another host's variables are templated in that host's own context.
    #[test]
    fn inventory_selects_plays_and_hostvars() {
        let inventory = ini_inventory("[web]\nweb1\n[db]\ndb1 me='{{ inventory_hostname }}'\n");
        let options = RunOptions {
            inventory_hostname: "web1".into(),
            inventory: Some(std::sync::Arc::new(inventory)),
            ..RunOptions::default()
        };
        let (lines, report) = run_yaml(
            "- hosts: db\n  gather_facts: false\n  tasks:\n    - debug: msg=never\n- hosts: all:!db\n  gather_facts: false\n  tasks:\n    - debug: msg=\"{{ hostvars['db1'].me }} {{ group_names }}\"\n",
            &options,
        );
        let all = lines.join("\n");
        assert_eq!(report.stats.ok, 1, "{all}");
        assert!(all.contains("skipping: no hosts matched"), "{all}");
        assert!(all.contains("\"msg\": \"db1 ['web']\""), "{all}");
        assert!(!all.contains("never"), "{all}");
    }

    /// Another host's cached facts are its `hostvars[h].ansible_facts` and, injected,
    /// `hostvars[h].ansible_*` over its inventory variables (as ansible-core stacks
    /// host facts over inventory variables); a host without facts has an empty
    /// `ansible_facts`; cached facts of the own host are not used; the own host's
    /// gathered facts also sit over its inventory variables, and the run reports them.
    #[test]
    fn hostvars_show_cached_facts_over_inventory_vars() {
        let inventory = ini_inventory(
            "web1 ansible_os_family=from_inventory
db1 ansible_hostname=from_inventory role=db
new1
",
        );
        let facts = |pairs: serde_json::Value| pairs.as_object().unwrap().clone();
        let cached: engine::CachedFacts = [
            ("db1".to_string(), facts(serde_json::json!({"hostname": "db-box", "default_ipv4": {"address": "10.0.0.7"}}))),
            ("web1".to_string(), facts(serde_json::json!({"hostname": "stale-self"}))),
        ]
        .into();
        let options = RunOptions {
            inventory_hostname: "web1".into(),
            inventory: Some(std::sync::Arc::new(inventory)),
            cached_facts: std::sync::Arc::new(cached),
            ..RunOptions::default()
        };
        let (lines, report) = run_yaml(
            concat!(
                "- hosts: web1\n  gather_facts: false\n  tasks:\n",
                "    - debug: msg=\"DB {{ hostvars['db1'].ansible_hostname }} {{ hostvars['db1'].ansible_facts.hostname }}",
                " {{ hostvars['db1'].ansible_default_ipv4.address }} {{ hostvars['db1'].role }}",
                " NEW {{ hostvars['new1'].ansible_facts | length }} {{ hostvars['new1'].ansible_hostname is defined }}",
                " SELF {{ ansible_facts | length }}\"\n",
                "- hosts: web1\n  tasks:\n",
                "    - debug: msg=\"OWN {{ ansible_os_family != 'from_inventory' }} {{ ansible_hostname != 'stale-self' }}\"\n",
            ),
            &options,
        );
        let all = lines.join("\n");
        assert!(!report.failed, "{all}");
        assert!(
            all.contains("\"msg\": \"DB db-box db-box 10.0.0.7 db NEW 0 False SELF 0\""),
            "{all}"
        );
        assert!(all.contains("\"msg\": \"OWN True True\""), "{all}");
        let gathered = report.gathered_facts.expect("the run gathered facts");
        assert!(
            gathered.facts.contains_key("hostname"),
            "{:?}",
            gathered.facts.keys()
        );
        assert!(!gathered.facts.contains_key("ansible_hostname"));
    }

    /// A run that gathers no facts reports none.
    #[test]
    fn a_run_without_gathering_reports_no_facts() {
        let (_, report) = run_yaml(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=x\n",
            &RunOptions::default(),
        );
        assert_eq!(report.gathered_facts, None);
    }

    /// Facts a module returns are reported beside the gathered ones (Ansible's fact
    /// cache keeps both), also by a run that gathers none; `meta: clear_facts` drops
    /// them with the rest.
    #[test]
    fn facts_modules_return_are_reported() {
        let getent = "    - getent: database=passwd key=root\n";
        let (lines, report) = run_yaml(
            &format!("- hosts: localhost\n  gather_facts: false\n  tasks:\n{getent}"),
            &RunOptions::default(),
        );
        let reported = report.gathered_facts.expect("module facts are reported");
        assert!(reported.facts.is_empty(), "nothing was gathered");
        assert!(
            reported.module_facts["getent_passwd"]["root"].is_array(),
            "{reported:?}\n{}",
            lines.join("\n")
        );
        let (_, report) = run_yaml(
            &format!("- hosts: localhost\n  tasks:\n{getent}"),
            &RunOptions::default(),
        );
        let reported = report.gathered_facts.expect("facts were gathered");
        assert!(reported.facts.contains_key("hostname"));
        assert!(reported.module_facts.contains_key("getent_passwd"));
        let (_, report) = run_yaml(
            &format!(
                "- hosts: localhost\n  gather_facts: false\n  tasks:\n{getent}    - meta: clear_facts\n"
            ),
            &RunOptions::default(),
        );
        assert_eq!(report.gathered_facts, None);
    }

    /// A cancelled run stops before its next task and says so.
    #[test]
    fn cancellation_stops_the_run() {
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let options = RunOptions {
            cancel: Some(cancel),
            ..RunOptions::default()
        };
        let (lines, report) = run_yaml(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=x\n",
            &options,
        );
        assert!(report.cancelled && report.failed, "{}", lines.join("\n"));
        assert_eq!(report.stats.ok, 0);
    }

    /// Check mode reports the change and leaves the disk alone.
    #[test]
    fn check_mode_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("f.txt");
        let source = format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - copy: content=x dest={}\n",
            target.display()
        );
        let (_, report) = run_yaml(
            &source,
            &RunOptions {
                check: true,
                ..RunOptions::default()
            },
        );
        assert_eq!(report.stats.changed, 1);
        assert!(!target.exists());
    }

    /// `-e` accepts pairs, dicts and typed YAML.
    #[test]
    fn extra_vars_forms() {
        assert_eq!(
            parse_extra_vars("a=1 b=two").expect("valid")[1],
            ("b".to_string(), Value::from("two"))
        );
        assert_eq!(
            parse_extra_vars("{\"n\": 3}").expect("valid")[0],
            ("n".to_string(), Value::from(3))
        );
        assert!(parse_extra_vars("novalue").is_err());
    }
}
