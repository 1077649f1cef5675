//! Actions Ansible runs on its controller: `fetch` and `set_stats`.
//!
//! The native runtime runs on the managed host itself, so "remote" and "controller"
//! are the same machine: `fetch` copies a file into the per-host tree (or the flat
//! path) under `dest`, exactly where Ansible with `-c local` would put it, with its
//! checksums and messages. The engine passes the two things only the controller knows
//! as internal arguments: `_inventory_hostname` and `_playbook_dir` (relative `dest`s are
//! relative to it, like Ansible's `path_dwim`).

use std::path::{Component, Path, PathBuf};

use minijinja::value::ValueKind;
use minijinja::Value;

use super::files::{bytes_sha1, file_sha1};
use super::{ArgError, Args, ModuleContext, Outcome};

/// Python's `os.path.normpath` for absolute and relative paths.
fn normpath(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                if parts.last().is_some_and(|p| p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..".into());
                }
            }
            _ => {}
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}

/// `fetch`: copies a file of the managed host into a per-host tree under `dest`.
pub fn fetch(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "src",
        "dest",
        "flat",
        "fail_on_missing",
        "validate_checksum",
    ])?;
    if ctx.check {
        return Ok(Outcome::new()
            .with("skipped", true)
            .with("msg", "check mode not (yet) supported for this module"));
    }
    let flat = args.bool("flat", false).unwrap_or(false);
    let fail_on_missing = args.bool("fail_on_missing", true).unwrap_or(true);
    let validate_checksum = args.bool("validate_checksum", true).unwrap_or(true);
    let is_text = |key: &str| {
        args.get(key)
            .is_some_and(|v| matches!(v.kind(), ValueKind::String))
    };
    let mut msg = "";
    if !is_text("src") {
        msg = "Invalid type supplied for source option, it must be a string";
    }
    if !is_text("dest") {
        msg = "Invalid type supplied for dest option, it must be a string";
    }
    if !args.has("src") || !args.has("dest") {
        msg = "src and dest are required";
    }
    if !msg.is_empty() {
        return Ok(Outcome::failed(msg));
    }
    let source = super::nodejs::expand_user(&args.required("src")?);
    let original_dest = args.required("dest")?;
    let mut dest = super::nodejs::expand_user(&original_dest);
    let base = args.str("_playbook_dir").unwrap_or_else(|| ".".to_string());
    let host = args
        .str("_inventory_hostname")
        .unwrap_or_else(|| "localhost".to_string());
    let dwim = |path: &str| -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            Path::new(&base).join(path).display().to_string()
        }
    };

    let mut result = Outcome::new();
    let source_path = Path::new(&source);
    let data = match std::fs::metadata(source_path) {
        Ok(meta) if meta.is_dir() => {
            let mut failure = Outcome::new().with("failed", true).with(
                "msg",
                "remote file is a directory, fetch cannot work on directories",
            );
            if !fail_on_missing {
                failure = Outcome::default().with(
                    "msg",
                    "remote file is a directory, fetch cannot work on directories, not transferring, ignored",
                );
            }
            return Ok(failure);
        }
        Ok(_) => match std::fs::read(source_path) {
            Ok(data) => data,
            Err(e) => return Ok(Outcome::failed(format!("Unable to read {source}: {e}"))),
        },
        Err(_) => {
            result.set(
                "msg",
                "the remote file does not exist, not transferring, ignored",
            );
            if fail_on_missing {
                result.set("failed", true);
            } else {
                result.set("file", source.clone());
            }
            return Ok(result);
        }
    };
    let remote_checksum = bytes_sha1(&data);

    if flat {
        if Path::new(&dest).is_dir() && !dest.ends_with('/') {
            return Ok(Outcome::failed("dest is an existing directory, use a trailing slash if you want to fetch src into that directory"));
        }
        if dest.ends_with('/') {
            let name = source_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            dest = format!("{dest}{name}");
            if Path::new(&dest).is_dir() {
                return Ok(Outcome::failed(format!("calculated dest '{dest}' is an existing directory, use another path that does not point to an existing directory")));
            }
        }
        dest = dwim(&dest);
    } else {
        dest = format!("{}/{host}/{source}", dwim(&dest));
    }
    let dest = normpath(&dest);
    let dest_path = PathBuf::from(&dest);
    let local_checksum = file_sha1(&dest_path).ok();

    if local_checksum.as_deref() == Some(remote_checksum.as_str()) {
        return Ok(Outcome::new()
            .with("md5sum", md5_hex(&data))
            .with("file", source)
            .with("dest", dest)
            .with("checksum", remote_checksum));
    }
    if let Some(parent) = dest_path.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            return Ok(Outcome::failed(format!(
                "Failed to fetch the file: {}: {e}",
                parent.display()
            )));
        }
    }
    if std::fs::write(&dest_path, &data).is_err() {
        return Ok(Outcome::failed("Failed to fetch the file."));
    }
    let written = std::fs::read(&dest_path).unwrap_or_default();
    let new_checksum = bytes_sha1(&written);
    if validate_checksum && new_checksum != remote_checksum {
        return Ok(Outcome::failed("checksum mismatch")
            .with("md5sum", md5_hex(&written))
            .with("file", source)
            .with("dest", dest)
            .with("remote_md5sum", Value::from(()))
            .with("checksum", new_checksum)
            .with("remote_checksum", remote_checksum));
    }
    Ok(Outcome::new()
        .with("changed", true)
        .with("md5sum", md5_hex(&written))
        .with("dest", dest)
        .with("remote_md5sum", Value::from(()))
        .with("checksum", new_checksum)
        .with("remote_checksum", remote_checksum))
}

/// Whether Ansible accepts `name` as a variable name.
pub fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            name,
            "true" | "false" | "none" | "True" | "False" | "None" | "not"
        )
}

/// `set_stats`: custom statistics for the run, returned as `ansible_stats`.
///
/// Ansible shows them after the recap only with `show_custom_stats` (off by default);
/// the native runtime does not print them.
pub fn set_stats(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    let supported = ["aggregate", "data", "per_host"];
    if let Ok(keys) = args.value().try_iter() {
        let unknown: Vec<String> = keys
            .filter_map(|k| k.as_str().map(String::from))
            .filter(|k| !supported.contains(&k.as_str()) && !k.starts_with('_'))
            .collect();
        if !unknown.is_empty() {
            return Ok(Outcome::failed(format!(
                "Invalid options for set_stats: {}",
                unknown.join(", ")
            )));
        }
    }
    let data = args
        .value()
        .get_attr("data")
        .ok()
        .filter(|v| !v.is_undefined())
        .unwrap_or_else(|| Value::from_pairs(Vec::<(String, Value)>::new()));
    if data.kind() != ValueKind::Map {
        return Ok(Outcome::failed(
            "The 'data' option needs to be a dictionary/hash",
        ));
    }
    let mut flags = [("per_host", false), ("aggregate", true)];
    for (key, value) in flags.iter_mut() {
        if let Some(v) = args.get(key) {
            *value = super::parse_bool(&v).unwrap_or(false);
        }
    }
    let mut pairs = Vec::new();
    if let Ok(keys) = data.try_iter() {
        for key in keys {
            let name = super::value_to_string(&key);
            if !valid_variable_name(&name) {
                return Ok(Outcome::failed(format!(
                    "Task failed: Invalid variable name '{name}'."
                )));
            }
            pairs.push((name, data.get_item(&key).unwrap_or_default()));
        }
    }
    let stats = Value::from_pairs([
        ("data".to_string(), Value::from_pairs(pairs)),
        ("per_host".to_string(), Value::from(flags[0].1)),
        ("aggregate".to_string(), Value::from(flags[1].1)),
    ]);
    Ok(Outcome::new().with("ansible_stats", stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths are normalised like Python's `os.path.normpath`.
    #[test]
    fn normpath_matches_python() {
        for (input, expected) in [
            ("/a//b/./c/", "/a/b/c"),
            ("/a/../../b", "/b"),
            ("a/../../b", "../b"),
            ("./", "."),
            ("/x/localhost//tmp/f", "/x/localhost/tmp/f"),
        ] {
            assert_eq!(normpath(input), expected, "{input}");
        }
    }

    /// Variable names follow Python identifiers, ASCII only, without Jinja's keywords.
    #[test]
    fn variable_names() {
        for (name, ok) in [
            ("count", true),
            ("_x1", true),
            ("1x", false),
            ("a-b", false),
            ("None", false),
            ("", false),
        ] {
            assert_eq!(valid_variable_name(name), ok, "{name}");
        }
    }
}
