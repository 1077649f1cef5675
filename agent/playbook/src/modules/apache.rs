//! `community.general.apache2_module`: enables or disables an Apache module with
//! Debian's `a2enmod`/`a2dismod`, deciding from `apache2ctl -M` as Ansible's module
//! does (the module counts as enabled when ` IDENTIFIER` appears in that listing).

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

/// Ansible's `create_apache_identifier`: the name `apache2ctl -M` lists a module under.
pub fn apache_identifier(name: &str) -> String {
    for (spelling, identifier) in [
        ("shib", "mod_shib"),
        ("shib2", "mod_shib"),
        ("evasive", "evasive20_module"),
    ] {
        if name.contains(spelling) {
            return identifier.to_string();
        }
    }
    for (search, pattern) in [("php8", r"^(php)[\d\.]+"), ("php", r"^(php\d)\.")] {
        if name.contains(search) {
            let re = regex::Regex::new(pattern).expect("valid");
            if let Some(c) = re.captures(name) {
                return format!("{}_module", &c[1]);
            }
        }
    }
    format!("{name}_module")
}

fn control_binary() -> Option<&'static str> {
    ["apache2ctl", "apachectl"]
        .into_iter()
        .find(|c| which(c).is_some())
}

const NO_CONTROL_BINARY: &str =
    "Neither of apache2ctl nor apachectl found. At least one apache control binary is necessary.";

/// Whether the module is loaded, or Ansible's failure.
fn module_is_enabled(
    args: &Args,
    identifier: &str,
    ctx: &ModuleContext,
    warnings: &mut Vec<String>,
) -> Result<bool, Outcome> {
    let control = control_binary().ok_or_else(|| Outcome::failed(NO_CONTROL_BINARY))?;
    let r = run(control, &["-M"], &ctx.environment, None);
    if r.rc != 0 {
        let path = which(control)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| control.to_string());
        let msg = format!("Error executing {path}: {}", r.stderr);
        let ignore = args.bool("ignore_configcheck", false).unwrap_or(false);
        if !ignore {
            return Err(Outcome::failed(msg));
        }
        let name = args.str("name").unwrap_or_default();
        if r.stderr.contains("AH00534") && name.contains("mpm_") {
            if args.bool("warn_mpm_absent", true).unwrap_or(true) {
                warnings.push("No MPM module loaded! apache2 reload AND other module actions will fail if no MPM module is loaded immediately.".into());
            }
        } else {
            warnings.push(msg);
        }
        return Ok(false);
    }
    Ok(r.stdout.contains(&format!(" {identifier}")))
}

/// `apache2_module`: `name` `present` or `absent`.
pub fn apache2_module(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "identifier",
        "force",
        "state",
        "ignore_configcheck",
        "warn_mpm_absent",
    ])?;
    let name = args.required("name")?;
    let force = args.bool("force", false)?;
    let state = args
        .choice("state", &["absent", "present"], Some("present"))?
        .unwrap_or_default();
    args.bool("ignore_configcheck", false)?;
    args.bool("warn_mpm_absent", true)?;
    let mut warnings = Vec::new();
    let with_warnings = |mut out: Outcome, warnings: &[String]| {
        if !warnings.is_empty() {
            out.set("warnings", warnings.to_vec());
        }
        out
    };
    if name == "cgi" && state == "present" {
        let Some(control) = control_binary() else {
            return Ok(Outcome::failed(NO_CONTROL_BINARY));
        };
        let r = run(control, &["-V"], &ctx.environment, None);
        if regex::Regex::new(r"threaded: *yes")
            .expect("valid")
            .is_match(&r.stdout)
        {
            return Ok(Outcome::failed(
                "Your MPM seems to be threaded, therefore enabling cgi module is not allowed.",
            ));
        }
    }
    let identifier = args
        .str("identifier")
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| apache_identifier(&name));
    let want_enabled = state == "present";
    let (state_string, binary) = if want_enabled {
        ("enabled", "a2enmod")
    } else {
        ("disabled", "a2dismod")
    };
    let success = format!("Module {name} {state_string}");
    let enabled = match module_is_enabled(args, &identifier, ctx, &mut warnings) {
        Ok(enabled) => enabled,
        Err(out) => return Ok(with_warnings(out, &warnings)),
    };
    if enabled == want_enabled {
        return Ok(with_warnings(
            Outcome::new().with("result", success),
            &warnings,
        ));
    }
    if ctx.check {
        return Ok(with_warnings(
            Outcome::new().with("changed", true).with("result", success),
            &warnings,
        ));
    }
    if which(binary).is_none() {
        return Ok(Outcome::failed(format!(
            "{binary} not found. Perhaps this system does not use {binary} to manage apache"
        )));
    }
    let mut command: Vec<&str> = Vec::new();
    if !want_enabled && force {
        command.push("-f");
    }
    command.push(&name);
    let r = run(binary, &command, &ctx.environment, None);
    match module_is_enabled(args, &identifier, ctx, &mut warnings) {
        Ok(now) if now == want_enabled => Ok(with_warnings(
            Outcome::new()
                .with("changed", true)
                .with("result", success),
            &warnings,
        )),
        Ok(_) => Ok(Outcome::failed(format!(
            "Failed to set module {name} to {state_string}:\n{}\nMaybe the module identifier ({identifier}) was guessed incorrectly.Consider setting the \"identifier\" option.",
            r.stdout
        ))
        .with("rc", r.rc)
        .with("stdout", r.stdout)
        .with("stderr", r.stderr)),
        Err(out) => Ok(with_warnings(out, &warnings)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names map to `apache2ctl -M` identifiers with Ansible's workarounds.
    #[test]
    fn identifiers() {
        assert_eq!(apache_identifier("rewrite"), "rewrite_module");
        assert_eq!(apache_identifier("php7.4"), "php7_module");
        assert_eq!(apache_identifier("php8.2"), "php_module");
        assert_eq!(apache_identifier("shib2"), "mod_shib");
    }
}
