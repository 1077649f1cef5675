//! `community.general.locale_gen`: enables or disables locales in `/etc/locale.gen`
//! and regenerates them with `locale-gen`.
//!
//! Follows community.general 11's module: the locales asked for must be listed
//! (commented or not) in `/usr/share/i18n/SUPPORTED` or already be compiled
//! (`locale -a`); `changed` compares `locale -a` before and after. In check mode
//! nothing runs and, as in Ansible (whose state tracking only sees the host after
//! the skipped change), the result is never changed. The Ubuntu-legacy mechanism
//! (`/var/lib/locales/supported.d` without `/etc/locale.gen`) is not implemented.

use minijinja::Value;

use super::exec::run;
use super::{ArgError, Args, ModuleContext, Outcome};

const ETC_LOCALE_GEN: &str = "/etc/locale.gen";
const VAR_LIB_LOCALES: &str = "/var/lib/locales/supported.d";
const SUPPORTED_LOCALES: &str = "/usr/share/i18n/SUPPORTED";

/// `locale -a` may spell the charset in lower case (`C.utf8`): Ansible's `fix_case`.
pub fn fix_case(name: &str) -> String {
    const NORMALIZATION: &[(&str, &str)] = &[
        (".utf8", ".UTF-8"),
        (".eucjp", ".EUC-JP"),
        (".iso885915", ".ISO-8859-15"),
        (".cp1251", ".CP1251"),
        (".koi8r", ".KOI8-R"),
        (".armscii8", ".ARMSCII-8"),
        (".euckr", ".EUC-KR"),
        (".gbk", ".GBK"),
        (".gb18030", ".GB18030"),
        (".euctw", ".EUC-TW"),
    ];
    let mut name = name.to_string();
    for (from, to) in NORMALIZATION {
        name = name.replace(from, to);
    }
    name
}

/// The names among `wanted` that `locale -a`'s output does not list.
pub fn not_present(wanted: &[String], locale_a: &str) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !locale_a.lines().any(|l| fix_case(w) == fix_case(l)))
        .cloned()
        .collect()
}

/// The locale names a SUPPORTED (or locale.gen) file lists, commented or not.
pub fn listed_locales(text: &str) -> Vec<String> {
    let re =
        regex::Regex::new(r"^\s*#?\s*(?P<locale>\S+[\._\S]+) (?P<charset>\S+)\s*$").expect("valid");
    text.lines()
        .filter_map(|l| re.captures(l).map(|c| c["locale"].to_string()))
        .collect()
}

/// `/etc/locale.gen` with each of `names` uncommented (or commented out).
pub fn set_locales(text: &str, names: &[String], enabled: bool) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    for name in names {
        let re = regex::Regex::new(&format!(r"^#?\s*{} (?P<charset>.+)", regex::escape(name)))
            .expect("valid");
        let replacement = if enabled {
            format!("{name} ${{charset}}")
        } else {
            format!("# {name} ${{charset}}")
        };
        for line in lines.iter_mut() {
            // Python's `.+` stops before the line's newline; keep it.
            let (body, end) = match line.strip_suffix('\n') {
                Some(body) => (body.to_string(), "\n"),
                None => (line.clone(), ""),
            };
            *line = format!("{}{end}", re.replace(&body, replacement.as_str()));
        }
    }
    lines.concat()
}

fn locale_a(ctx: &ModuleContext) -> Result<String, String> {
    let mut env = ctx.environment.clone();
    env.push(("LANGUAGE".into(), "C".into()));
    env.push(("LC_ALL".into(), "C".into()));
    let r = run("locale", &["-a"], &env, None);
    if r.rc != 0 {
        return Err(format!(
            "Command '[locale -a]' failed with rc={}: {}",
            r.rc,
            r.stderr.trim_end()
        ));
    }
    Ok(r.stdout)
}

/// `locale_gen`: `name` (a list) `present` or `absent`.
pub fn locale_gen(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["name", "state"])?;
    if !args.has("name") {
        return Err(ArgError::Missing("name".into()));
    }
    let names = args.list("name");
    let state = args
        .choice("state", &["absent", "present"], Some("present"))?
        .unwrap_or_default();
    let with_vars = |mut out: Outcome, mechanism: Option<&str>| {
        out.set("name", Value::from(names.clone()));
        if let Some(mechanism) = mechanism {
            out.set("ubuntu_mode", false);
            out.set("mechanism", mechanism);
        }
        out
    };
    if !std::path::Path::new(ETC_LOCALE_GEN).exists() {
        let msg = if std::path::Path::new(VAR_LIB_LOCALES).exists() {
            "the ubuntu_legacy mechanism (/var/lib/locales/supported.d without /etc/locale.gen) is not implemented by the native runtime".to_string()
        } else {
            format!(
                "{VAR_LIB_LOCALES} and {ETC_LOCALE_GEN} are missing. Is the package \"locales\" installed?"
            )
        };
        return Ok(with_vars(Outcome::failed(msg), None));
    }
    let fail = |msg: String| with_vars(Outcome::failed(msg), Some("glibc"));
    let available = match std::fs::read_to_string(SUPPORTED_LOCALES) {
        Ok(text) => listed_locales(&text),
        Err(e) => return Ok(fail(super::mount::os_error(&e, SUPPORTED_LOCALES))),
    };
    let before = match locale_a(ctx) {
        Ok(out) => out,
        Err(msg) => return Ok(fail(msg)),
    };
    let unlisted: Vec<String> = names
        .iter()
        .filter(|n| !available.contains(n))
        .cloned()
        .collect();
    let missing = not_present(&unlisted, &before);
    if !missing.is_empty() {
        return Ok(fail(format!(
            "The following locales you have entered are not available on your system: {}",
            missing.join(", ")
        )));
    }
    let was_present = not_present(&names, &before).is_empty();
    let wanted_present = state == "present";
    let mut changed = false;
    if was_present != wanted_present && !ctx.check {
        let text = match std::fs::read_to_string(ETC_LOCALE_GEN) {
            Ok(text) => text,
            Err(e) => return Ok(fail(super::mount::os_error(&e, ETC_LOCALE_GEN))),
        };
        if let Err(e) = std::fs::write(ETC_LOCALE_GEN, set_locales(&text, &names, wanted_present)) {
            return Ok(fail(super::mount::os_error(&e, ETC_LOCALE_GEN)));
        }
        let r = run("locale-gen", &[], &ctx.environment, None);
        if r.rc != 0 {
            return Ok(fail(format!(
                "Command '[locale-gen]' failed with rc={}: {}",
                r.rc,
                r.stderr.trim_end()
            )));
        }
        let after = match locale_a(ctx) {
            Ok(out) => out,
            Err(msg) => return Ok(fail(msg)),
        };
        changed = not_present(&names, &after).is_empty() != was_present;
    }
    Ok(with_vars(
        Outcome::new().with("changed", changed),
        Some("glibc"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commented and uncommented entries both count as available; prose does not.
    #[test]
    fn supported_lines() {
        let listed =
            listed_locales("# This file lists locales\nen_US.UTF-8 UTF-8\n# de_DE.UTF-8 UTF-8\n");
        assert_eq!(listed, ["en_US.UTF-8", "de_DE.UTF-8"]);
    }

    /// Enabling uncomments the entry and keeps the line ends.
    #[test]
    fn enable_and_disable() {
        let text = "# de_DE.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n";
        let names = vec!["de_DE.UTF-8".to_string()];
        assert_eq!(
            set_locales(text, &names, true),
            "de_DE.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n"
        );
        let names = vec!["en_US.UTF-8".to_string()];
        assert_eq!(
            set_locales(text, &names, false),
            "# de_DE.UTF-8 UTF-8\n# en_US.UTF-8 UTF-8\n"
        );
    }

    /// `C.utf8` from `locale -a` is `C.UTF-8`.
    #[test]
    fn case_of_charsets() {
        assert!(not_present(&["C.UTF-8".into()], "C\nC.utf8\nPOSIX\n").is_empty());
    }
}
