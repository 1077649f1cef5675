//! `ansible.builtin.deb822_repository`: APT sources in deb822 format
//! (`/etc/apt/sources.list.d/SLUG.sources`), with signing keys in `/etc/apt/keyrings`.
//!
//! The file text is a pure function of the arguments ([`render`]): fields in the order
//! of the sorted parameter names, booleans as `yes`/`no`, lists space-separated,
//! multi-line values (an inline key) indented with `.` for empty lines, as Ansible's
//! module writes them through python-debian.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use minijinja::value::ValueKind;
use minijinja::Value;

use super::files::{atomic_write, resolve_mode};
use super::{ArgError, Args, ModuleContext, Outcome};

/// Where source files go.
pub const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
/// Where downloaded signing keys go.
pub const KEYRINGS_DIR: &str = "/etc/apt/keyrings";

const BOOLS: &[&str] = &[
    "allow_downgrade_to_insecure",
    "allow_insecure",
    "allow_weak",
    "by_hash",
    "check_date",
    "check_valid_until",
    "enabled",
    "pdiffs",
    "trusted",
];
const LISTS: &[&str] = &[
    "architectures",
    "components",
    "languages",
    "suites",
    "targets",
    "types",
    "uris",
];

/// The file name part derived from the repository's name.
pub fn slug(name: &str) -> String {
    let lower = name.to_lowercase();
    let dashed = regex::Regex::new(r"[_\s]+")
        .expect("valid")
        .replace_all(&lower, "-")
        .into_owned();
    dashed
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect()
}

/// The deb822 field name of a parameter.
pub fn field_name(key: &str) -> String {
    match key {
        "name" => "X-Repolib-Name".into(),
        "uris" => "URIs".into(),
        other => {
            // Python's str.title(): upper-case after every non-letter.
            let mut out = String::new();
            let mut upper = true;
            for c in other.replace('_', "-").chars() {
                if c.is_alphabetic() {
                    if upper {
                        out.extend(c.to_uppercase());
                    } else {
                        out.extend(c.to_lowercase());
                    }
                    upper = false;
                } else {
                    out.push(c);
                    upper = true;
                }
            }
            out
        }
    }
}

/// A multi-line value: on its own lines, indented, empty lines as `.`.
fn multiline(value: &str) -> String {
    let lines: Vec<String> = value
        .trim()
        .lines()
        .map(|l| {
            let t = l.trim();
            format!("    {}", if t.is_empty() { "." } else { t })
        })
        .collect();
    format!("\n{}", lines.join("\n"))
}

/// The repository file's text from `(parameter, value)` pairs already formatted.
pub fn render(fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (key, value) in sorted {
        let value = if value.contains('\n') {
            multiline(value)
        } else {
            value.clone()
        };
        if value.is_empty() || value.starts_with('\n') {
            out.push_str(&format!("{}:{value}\n", field_name(key)));
        } else {
            out.push_str(&format!("{}: {value}\n", field_name(key)));
        }
    }
    out
}

/// `deb822_repository`: adds or removes a deb822 APT source.
pub fn deb822_repository(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    let mut supported: Vec<&str> = BOOLS.to_vec();
    supported.extend(LISTS);
    supported.extend([
        "date_max_future",
        "inrelease_path",
        "name",
        "signed_by",
        "mode",
        "state",
    ]);
    args.check_supported(&supported)?;
    let name = args.required("name")?;
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let mut fields: Vec<(String, String)> = Vec::new();
    for key in BOOLS {
        if args.has(key) {
            let on = args.bool(key, false)?;
            fields.push((key.to_string(), if on { "yes" } else { "no" }.into()));
        }
    }
    for key in LISTS {
        let items = if *key == "types" && !args.has("types") {
            vec!["deb".to_string()]
        } else if args.has(key) {
            args.list(key)
        } else {
            continue;
        };
        if *key == "types" {
            if let Some(bad) = items.iter().find(|t| *t != "deb" && *t != "deb-src") {
                return Err(ArgError::Invalid(format!(
                    "value of types must be one or more of: deb, deb-src. Got no match for: {bad}"
                )));
            }
        }
        fields.push((key.to_string(), items.join(" ")));
    }
    if let Some(n) = args.int("date_max_future")? {
        fields.push(("date_max_future".into(), n.to_string()));
    }
    if let Some(p) = args.str("inrelease_path") {
        fields.push(("inrelease_path".into(), p));
    }
    fields.push(("name".into(), name.clone()));
    let slug = slug(&name);
    let dest = format!("{SOURCES_DIR}/{slug}.sources");

    if state == "absent" {
        let mut changed = false;
        if Path::new(&dest).exists() {
            if !ctx.check {
                let _ = std::fs::remove_file(&dest);
            }
            changed = true;
        }
        let mut key_filename = String::new();
        for ext in ["asc", "gpg"] {
            key_filename = format!("{KEYRINGS_DIR}/{slug}.{ext}");
            if Path::new(&key_filename).exists() {
                if !ctx.check {
                    let _ = std::fs::remove_file(&key_filename);
                }
                changed = true;
            }
        }
        return Ok(Outcome::new()
            .with("repo", Value::from(()))
            .with("changed", changed)
            .with("dest", dest)
            .with("key_filename", key_filename));
    }

    let mut changed = false;
    let mut key_filename: Option<String> = None;
    if let Some(signed_by) = args.str("signed_by") {
        let value = if Path::new(&signed_by).is_file() {
            key_filename = Some(signed_by.clone());
            signed_by
        } else if has_scheme(&signed_by) {
            match fetch_key(&signed_by, ctx) {
                Err(e) => {
                    return Ok(Outcome::failed(format!(
                        "Could not fetch signed_by key: {e}"
                    )))
                }
                Ok(data) if data.is_empty() => signed_by,
                Ok(data) => {
                    let armored = String::from_utf8_lossy(&data)
                        .contains("-----BEGIN PGP PUBLIC KEY BLOCK-----");
                    let file = format!(
                        "{KEYRINGS_DIR}/{slug}.{}",
                        if armored { "asc" } else { "gpg" }
                    );
                    let same = std::fs::read(&file).ok().as_deref() == Some(&data[..]);
                    if !same {
                        if !Path::new(KEYRINGS_DIR).is_dir() && !ctx.check {
                            let _ = std::fs::create_dir_all(KEYRINGS_DIR);
                            let _ = std::fs::set_permissions(
                                KEYRINGS_DIR,
                                std::fs::Permissions::from_mode(0o755),
                            );
                        }
                        if !ctx.check {
                            if let Err(e) = atomic_write(Path::new(&file), &data) {
                                return Ok(Outcome::failed(format!("Could not write {file}: {e}")));
                            }
                        }
                        changed = true;
                    }
                    changed |=
                        set_mode(&file, &Value::from("0644"), ctx).map_err(ArgError::Invalid)?;
                    key_filename = Some(file.clone());
                    file
                }
            }
        } else {
            signed_by
        };
        fields.push(("signed_by".into(), value));
    }
    let repo = render(&fields);
    let current = std::fs::read(&dest).ok();
    if current.as_deref() != Some(repo.as_bytes()) {
        if !ctx.check {
            if let Err(e) = atomic_write(Path::new(&dest), repo.as_bytes()) {
                return Ok(Outcome::failed(format!("Could not write {dest}: {e}")));
            }
        }
        changed = true;
    }
    let mode = args.get("mode").unwrap_or_else(|| Value::from("0644"));
    changed |= set_mode(&dest, &mode, ctx).map_err(ArgError::Invalid)?;
    Ok(Outcome::new()
        .with("repo", repo)
        .with("changed", changed)
        .with("dest", dest)
        .with("key_filename", Value::from(key_filename)))
}

/// Downloads a key with curl; errors read like Python's urllib's.
fn fetch_key(url: &str, ctx: &ModuleContext) -> Result<Vec<u8>, String> {
    let Some(curl) = super::exec::which("curl") else {
        return Err("curl is needed to download keys".into());
    };
    let output = std::process::Command::new(curl)
        .args(["-sSL", "--write-out", "\n%{http_code}", url])
        .envs(
            ctx.environment
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = output.stdout;
    let split = stdout.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let (body, code) = stdout.split_at(split);
    let code: u16 = String::from_utf8_lossy(code).trim().parse().unwrap_or(0);
    match output.status.code() {
        Some(0) if (200..300).contains(&code) || code == 0 => Ok(body.to_vec()),
        Some(0) => Err(format!("HTTP Error {code}: {}", http_reason(code))),
        Some(6) => Err("<urlopen error [Errno -2] Name or service not known>".into()),
        Some(7) => Err("<urlopen error [Errno 111] Connection refused>".into()),
        Some(28) => Err("<urlopen error timed out>".into()),
        _ => Err(format!(
            "<urlopen error {}>",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn http_reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn has_scheme(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// Ansible's `set_mode_if_different`: a missing file in check mode is a change.
fn set_mode(path: &str, mode: &Value, ctx: &ModuleContext) -> Result<bool, String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(ctx.check);
    };
    let current = meta.permissions().mode() & 0o7777;
    let mode = if mode.kind() == ValueKind::Number {
        // A YAML integer written in octal (0644) arrives as its decimal value.
        Value::from(format!("{:o}", mode.as_i64().unwrap_or(0o644)))
    } else {
        mode.clone()
    };
    let wanted = resolve_mode(&mode, current, false)?;
    if wanted == current {
        return Ok(false);
    }
    if !ctx.check {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
            .map_err(|e| e.to_string())?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slug, the field names and the file text follow Ansible's module.
    #[test]
    fn renders_like_ansible() {
        assert_eq!(
            slug("Debian Bookworm_backports!"),
            "debian-bookworm-backports"
        );
        assert_eq!(field_name("check_valid_until"), "Check-Valid-Until");
        assert_eq!(field_name("uris"), "URIs");
        let fields: Vec<(String, String)> = [
            ("types", "deb"),
            ("uris", "http://deb.debian.org/debian"),
            ("name", "debian"),
            ("suites", "stable"),
            ("components", "main contrib"),
            ("enabled", "yes"),
            (
                "signed_by",
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            render(&fields),
            "Components: main contrib\nEnabled: yes\nX-Repolib-Name: debian\nSigned-By:\n    -----BEGIN PGP PUBLIC KEY BLOCK-----\n    .\n    abc\n    -----END PGP PUBLIC KEY BLOCK-----\nSuites: stable\nTypes: deb\nURIs: http://deb.debian.org/debian\n"
        );
    }
}
