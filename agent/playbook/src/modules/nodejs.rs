//! `community.general.npm`: Node.js packages in a project directory or globally.
//!
//! Like Ansible's module it asks `npm list --json --long` what is installed (also in
//! check mode, where it is the only command run) and runs `npm install`, `npm ci`,
//! `npm update` or `npm uninstall` only when needed, with the C locale.

use std::path::Path;

use super::exec::{run, which, Run};
use super::{ArgError, Args, ModuleContext, Outcome};

struct Npm<'a> {
    executable: Vec<String>,
    name: Option<String>,
    name_version: Option<String>,
    path: Option<String>,
    global: bool,
    production: bool,
    args: &'a Args,
    ctx: &'a ModuleContext,
}

/// The result of one npm command, or the module's failure.
type Step = Result<String, Outcome>;

impl Npm<'_> {
    fn exec(&self, verb: &[&str], in_check_mode: bool, check_rc: bool, with_name: bool) -> Step {
        if self.ctx.check && !in_check_mode {
            return Ok(String::new());
        }
        let mut cwd = None;
        if let Some(path) = &self.path {
            let dir = Path::new(path);
            if !dir.exists() {
                let _ = std::fs::create_dir_all(dir);
            }
            if !dir.is_dir() {
                return Err(Outcome::failed(format!("path {path} is not a directory")));
            }
            cwd = Some(dir);
        }
        let mut argv: Vec<String> = self.executable[1..].to_vec();
        argv.extend(verb.iter().map(|s| s.to_string()));
        let flag = |on: bool, text: &str, argv: &mut Vec<String>| {
            if on {
                argv.push(text.to_string());
            }
        };
        flag(self.global, "--global", &mut argv);
        let production = self.production
            && verb
                .iter()
                .any(|v| matches!(*v, "install" | "update" | "ci"));
        flag(production, "--production", &mut argv);
        for (key, text) in [
            ("ignore_scripts", "--ignore-scripts"),
            ("unsafe_perm", "--unsafe-perm"),
        ] {
            flag(self.args.bool(key, false).unwrap_or(false), text, &mut argv);
        }
        if with_name {
            if let Some(nv) = &self.name_version {
                argv.push(nv.clone());
            }
        }
        if let Some(registry) = self.args.str("registry") {
            argv.push("--registry".into());
            argv.push(registry);
        }
        for (key, text) in [
            ("no_optional", "--no-optional"),
            ("no_bin_links", "--no-bin-links"),
            ("force", "--force"),
        ] {
            flag(self.args.bool(key, false).unwrap_or(false), text, &mut argv);
        }
        let r = run_in(&self.executable[0], &argv, cwd, &self.ctx.environment);
        if check_rc && !r.ok() {
            let mut cmd = vec![self.executable[0].clone()];
            cmd.extend(argv);
            return Err(Outcome::failed(r.stderr.trim_end().to_string())
                .with("cmd", cmd.join(" "))
                .with("rc", r.rc)
                .with("stdout", r.stdout.clone())
                .with("stderr", r.stderr.clone()));
        }
        Ok(r.stdout)
    }

    /// Installed and missing dependencies, as Ansible's `Npm.list` sees them.
    fn list(&self) -> Result<(Vec<String>, Vec<String>), Outcome> {
        let out = self.exec(&["list", "--json", "--long"], true, false, false)?;
        let text = if out.trim().is_empty() { "{}" } else { &out };
        let data: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Outcome::failed(format!("Failed to parse NPM output with error {e}")))?;
        let mut installed = Vec::new();
        let mut missing = Vec::new();
        match data.get("dependencies").and_then(|d| d.as_object()) {
            Some(deps) => {
                for (dep, props) in deps {
                    let flag = |k: &str| props.get(k).is_some_and(truthy);
                    if flag("missing") || flag("invalid") {
                        missing.push(dep.clone());
                    } else {
                        installed.push(dep.clone());
                        if let Some(version) = props.get("version").filter(|v| truthy(v)) {
                            let version = match version {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            installed.push(format!("{dep}@{version}"));
                        }
                    }
                }
                if let Some(nv) = &self.name_version {
                    if !installed.contains(nv) {
                        missing.push(self.name.clone().unwrap_or_default());
                    }
                }
            }
            None => missing.push(self.name.clone().unwrap_or_default()),
        }
        Ok((installed, missing))
    }

    fn outdated(&self) -> Result<Vec<String>, Outcome> {
        let out = self.exec(&["outdated"], true, false, true)?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split(|c: char| c.is_whitespace() || c == '@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect())
    }
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// Runs a program in a directory with the C locale, as Ansible's command runner does.
fn run_in(program: &str, argv: &[String], cwd: Option<&Path>, env: &[(String, String)]) -> Run {
    let mut env = env.to_vec();
    for key in ["LANGUAGE", "LC_ALL", "LANG"] {
        env.push((key.into(), "C".into()));
    }
    match cwd {
        None => {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(program, &argv, &env, None)
        }
        Some(dir) => {
            let mut command = std::process::Command::new(program);
            command
                .args(argv)
                .current_dir(dir)
                .stdin(std::process::Stdio::null());
            for (k, v) in &env {
                command.env(k, v);
            }
            match command.output() {
                Ok(o) => Run {
                    rc: o.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                },
                Err(e) => Run {
                    rc: 127,
                    stdout: String::new(),
                    stderr: format!("{program}: {e}"),
                },
            }
        }
    }
}

/// Ansible's failure for a program the module cannot find.
pub fn missing_executable(program: &str) -> Outcome {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = path.split(':').map(String::from).collect();
    for extra in ["/sbin", "/usr/sbin", "/usr/local/sbin"] {
        if !dirs.iter().any(|d| d == extra) {
            dirs.push(extra.to_string());
        }
    }
    Outcome::failed(format!(
        "Failed to find required executable \"{program}\" in paths: {}",
        dirs.join(":")
    ))
}

/// `npm`: install, update or remove Node.js packages.
pub fn npm(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "path",
        "version",
        "production",
        "executable",
        "registry",
        "state",
        "ignore_scripts",
        "unsafe_perm",
        "ci",
        "no_optional",
        "no_bin_links",
        "force",
        "global",
    ])?;
    let state = args
        .choice("state", &["present", "absent", "latest"], Some("present"))?
        .unwrap_or_default();
    for key in [
        "production",
        "ignore_scripts",
        "unsafe_perm",
        "ci",
        "no_optional",
        "no_bin_links",
        "force",
        "global",
    ] {
        args.bool(key, false)?;
    }
    if state == "absent" && !args.has("name") {
        return Err(ArgError::Invalid(
            "state is absent but all of the following are missing: name".into(),
        ));
    }
    let global = args.bool("global", false)?;
    let path = args.str("path").map(|p| expand_user(&p));
    if path.is_none() && !global {
        return Ok(Outcome::failed(
            "path must be specified when not using global",
        ));
    }
    let executable: Vec<String> = match args.str("executable") {
        Some(e) => e.split(' ').map(String::from).collect(),
        None => match which("npm") {
            Some(p) => vec![p.display().to_string()],
            None => return Ok(missing_executable("npm")),
        },
    };
    let name = args.str("name");
    let version = args.str("version");
    let name_version = match (&name, &version) {
        (Some(n), Some(v)) if state != "absent" => Some(format!("{n}@{v}")),
        (n, _) => n.clone(),
    };
    let npm = Npm {
        executable,
        name: name.clone(),
        name_version,
        path,
        global,
        production: args.bool("production", false)?,
        args,
        ctx,
    };
    let result = (|| -> Result<bool, Outcome> {
        if args.bool("ci", false).unwrap_or(false) {
            npm.exec(&["ci"], false, true, true)?;
            return Ok(true);
        }
        let mut changed = false;
        match state.as_str() {
            "present" => {
                let (_, missing) = npm.list()?;
                if !missing.is_empty() {
                    changed = true;
                    npm.exec(&["install"], false, true, true)?;
                }
            }
            "latest" => {
                let (_, missing) = npm.list()?;
                let outdated = npm.outdated()?;
                if !missing.is_empty() {
                    changed = true;
                    npm.exec(&["install"], false, true, true)?;
                }
                if !outdated.is_empty() {
                    changed = true;
                    npm.exec(&["update"], false, true, true)?;
                }
            }
            _ => {
                let (installed, _) = npm.list()?;
                if name.as_ref().is_some_and(|n| installed.contains(n)) {
                    changed = true;
                    npm.exec(&["uninstall"], false, true, true)?;
                }
            }
        }
        Ok(changed)
    })();
    Ok(match result {
        Ok(changed) => Outcome::new().with("changed", changed),
        Err(failure) => failure,
    })
}

/// Ansible's `path` type: `~` and environment variables expanded.
pub fn expand_user(path: &str) -> String {
    if let Some(rest) = path.strip_prefix('~') {
        if rest.is_empty() || rest.starts_with('/') {
            if let Ok(home) = std::env::var("HOME") {
                return format!("{home}{rest}");
            }
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state=absent` without a name and a missing path fail with Ansible's messages.
    #[test]
    fn argument_errors() {
        let ctx = ModuleContext::default();
        let absent = Args::new(
            "npm",
            minijinja::Value::from_pairs([("state", "absent"), ("path", "/tmp")]),
        );
        assert_eq!(
            npm(&absent, &ctx).unwrap_err().to_string(),
            "state is absent but all of the following are missing: name"
        );
        let no_path = Args::new("npm", minijinja::Value::from_pairs([("name", "x")]));
        let out = npm(&no_path, &ctx).unwrap();
        assert_eq!(
            out.get("msg").and_then(|m| m.as_str().map(String::from)),
            Some("path must be specified when not using global".to_string())
        );
    }
}
