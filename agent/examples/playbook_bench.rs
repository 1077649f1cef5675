//! Wall-time benchmark: `dynserv-agent playbook` against `ansible-playbook -c local`.
//!
//! Runs each playbook `--runs` times with both tools, each run in a fresh temporary root
//! (`-e root=DIR`, first run: everything changes) followed by a second run in the same
//! root (idempotent run: nothing changes), and prints the medians as a Markdown table.
//!
//! ```sh
//! cargo build --release -p dynserv-agent
//! cargo run --release -p dynserv-agent --example playbook_bench -- --runs 5
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Options {
    agent: PathBuf,
    ansible: PathBuf,
    runs: usize,
    playbooks: Vec<PathBuf>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn parse_options() -> Result<Options, String> {
    let root = workspace_root();
    let mut options = Options {
        agent: root.join("target/release/dynserv-agent"),
        ansible: root.join(".venv-ansible/bin/ansible-playbook"),
        runs: 5,
        playbooks: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--agent" => options.agent = args.next().ok_or("--agent needs a path")?.into(),
            "--ansible" => options.ansible = args.next().ok_or("--ansible needs a path")?.into(),
            "--runs" => {
                options.runs = args
                    .next()
                    .ok_or("--runs needs a number")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            other => options.playbooks.push(other.into()),
        }
    }
    if options.playbooks.is_empty() {
        let fixtures = root.join("tests/fixtures/playbooks");
        options.playbooks = [
            "files.yml",
            "engine.yml",
            "commands.yml",
            "filters.yml",
            "more.yml",
        ]
        .iter()
        .map(|f| fixtures.join(f))
        .chain(std::iter::once(root.join("playbooks/hello.yml")))
        .collect();
    }
    for tool in [&options.agent, &options.ansible] {
        if !tool.is_file() {
            return Err(format!("{} not found", tool.display()));
        }
    }
    Ok(options)
}

fn time_run(command: &mut Command) -> Result<Duration, String> {
    let start = Instant::now();
    let output = command.output().map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    match output.status.code() {
        Some(0) | Some(2) => Ok(elapsed),
        code => Err(format!(
            "exit {code:?}: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )),
    }
}

fn agent_command(options: &Options, playbook: &Path, root: &Path) -> Command {
    let mut command = Command::new(&options.agent);
    command
        .arg("playbook")
        .arg(playbook)
        .arg("-e")
        .arg(format!("root={}", root.display()));
    command
}

fn ansible_command(options: &Options, playbook: &Path, root: &Path, home: &Path) -> Command {
    let mut command = Command::new(&options.ansible);
    command
        .args(["-c", "local", "-i", "localhost,"])
        .arg(playbook)
        .arg("-e")
        .arg(format!("root={}", root.display()))
        .current_dir(home)
        .env("ANSIBLE_HOME", home.join("ansible"))
        .env("ANSIBLE_LOCAL_TEMP", home.join("local-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
        .env(
            "ANSIBLE_PYTHON_INTERPRETER",
            options.ansible.with_file_name("python"),
        )
        .env("ANSIBLE_NOCOLOR", "1");
    command
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn measure(
    options: &Options,
    playbook: &Path,
    ansible: bool,
) -> Result<(Duration, Duration), String> {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for _ in 0..options.runs {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        for times in [&mut first, &mut second] {
            let mut command = if ansible {
                ansible_command(options, playbook, &root, dir.path())
            } else {
                agent_command(options, playbook, &root)
            };
            times.push(time_run(&mut command)?);
        }
    }
    Ok((median(first), median(second)))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("| playbook | dynserv-agent first / second run | ansible-playbook first / second run | speed-up (first / second) |");
    println!("| --- | --- | --- | --- |");
    let mut total_native = Duration::ZERO;
    let mut total_ansible = Duration::ZERO;
    for playbook in &options.playbooks {
        let name = playbook
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = measure(&options, playbook, false)
            .and_then(|n| measure(&options, playbook, true).map(|a| (n, a)));
        match result {
            Ok(((n1, n2), (a1, a2))) => {
                total_native += n1 + n2;
                total_ansible += a1 + a2;
                println!(
                    "| {name} | {} / {} | {} / {} | {:.0}x / {:.0}x |",
                    ms(n1),
                    ms(n2),
                    ms(a1),
                    ms(a2),
                    a1.as_secs_f64() / n1.as_secs_f64().max(1e-9),
                    a2.as_secs_f64() / n2.as_secs_f64().max(1e-9)
                );
            }
            Err(e) => println!("| {name} | error: {e} | | |"),
        }
    }
    println!(
        "| **all** | {} | {} | **{:.0}x** |",
        ms(total_native),
        ms(total_ansible),
        total_ansible.as_secs_f64() / total_native.as_secs_f64().max(1e-9)
    );
}
