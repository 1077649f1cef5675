//! `community.general.composer`: PHP dependencies through Composer.
//!
//! Ansible's module first asks `php composer help COMMAND --format=json` which options
//! the command has, so a host without PHP or Composer fails before anything else
//! (`Failed to find required executable "php" in paths: /usr/local/bin:...`); the
//! native module gives that same failure. Running Composer where both exist is not
//! implemented natively and fails saying so.

use super::exec::which;
use super::{ArgError, Args, ModuleContext, Outcome};

/// Ansible's `get_bin_path(program, required=True, opt_dirs=["/usr/local/bin"])`
/// failure: the optional directory first, then PATH, then the sbin directories PATH
/// lacks.
fn missing_program(program: &str) -> Outcome {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = vec!["/usr/local/bin".into()];
    dirs.extend(path.split(':').map(String::from));
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

fn find(program: &str) -> bool {
    which(program).is_some()
        || std::path::Path::new("/usr/local/bin")
            .join(program)
            .is_file()
}

/// `composer`: runs a Composer command in `working_dir`.
pub fn composer(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "command",
        "arguments",
        "executable",
        "php_path",
        "working_dir",
        "global_command",
        "prefer_source",
        "prefer_dist",
        "no_dev",
        "no_scripts",
        "no_plugins",
        "apcu_autoloader",
        "optimize_autoloader",
        "classmap_authoritative",
        "ignore_platform_reqs",
        "composer_executable",
    ])?;
    for (key, default) in [
        ("global_command", false),
        ("prefer_source", false),
        ("prefer_dist", false),
        ("no_dev", true),
        ("no_scripts", false),
        ("no_plugins", false),
        ("apcu_autoloader", false),
        ("optimize_autoloader", true),
        ("classmap_authoritative", false),
        ("ignore_platform_reqs", false),
    ] {
        args.bool(key, default)?;
    }
    let global = args.bool("global_command", false)?;
    if !global && !args.has("working_dir") {
        return Err(ArgError::Invalid(
            "global_command is False but all of the following are missing: working_dir".into(),
        ));
    }
    let command = args.str("command").unwrap_or_else(|| "install".into());
    if command.chars().any(char::is_whitespace) {
        return Ok(Outcome::failed(
            "Use the 'arguments' param for passing arguments with the 'command'",
        ));
    }
    if let Err(e) = super::command::shlex_split(&args.str("arguments").unwrap_or_default()) {
        return Ok(Outcome::failed(e));
    }
    if args.str_any(&["executable", "php_path"]).is_none() && !find("php") {
        return Ok(missing_program("php"));
    }
    if args.str("composer_executable").is_none() && !find("composer") {
        return Ok(missing_program("composer"));
    }
    Ok(Outcome::failed(
        "composer: running Composer is not implemented by the native runtime",
    ))
}
