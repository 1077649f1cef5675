//! Ansible's filters, tests and lookups for minijinja.
//!
//! minijinja ships Jinja2's builtins; this module adds what ansible-core adds
//! (`plugins/filter/core.py`, `plugins/test/core.py`, lookup plugins) and overrides the
//! builtins whose meaning differs in Ansible (`bool`, `int`).

use super::template::python_type_name;
use base64::Engine as _;
use minijinja::value::ValueKind;
use minijinja::value::{Kwargs, Rest};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use std::path::{Path, PathBuf};

fn err(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

fn text(value: &Value) -> String {
    match value.as_str() {
        Some(s) => s.to_string(),
        None => {
            if value.is_none() {
                String::new()
            } else {
                value.to_string()
            }
        }
    }
}

/// Registers every Ansible filter, test and function on `env`.
pub fn register(env: &mut Environment<'static>, base_dir: PathBuf) {
    crate::more_filters::register(env);
    env.add_filter("bool", to_bool_filter);
    env.add_filter("int", to_int);
    env.add_filter("float", to_float);
    env.add_filter("string", |v: Value| text(&v));
    env.add_filter("to_json", to_json);
    env.add_filter("to_nice_json", to_nice_json);
    env.add_filter("from_json", from_json);
    env.add_filter("to_yaml", to_yaml);
    env.add_filter("to_nice_yaml", to_yaml);
    env.add_filter("from_yaml", from_yaml);
    env.add_filter("regex_replace", regex_replace);
    env.add_filter("regex_search", regex_search);
    env.add_filter("regex_findall", regex_findall);
    env.add_filter("regex_escape", |s: String| regex::escape(&s));
    env.add_filter("b64encode", |s: String| {
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    });
    env.add_filter("b64decode", b64decode);
    env.add_filter("basename", |s: String| {
        Path::new(&s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    env.add_filter("dirname", dirname);
    env.add_filter("expanduser", expanduser);
    env.add_filter("realpath", |s: String| {
        std::fs::canonicalize(&s)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or(s)
    });
    env.add_filter("splitext", |s: String| {
        let p = Path::new(&s);
        match (p.extension(), s.rfind('.')) {
            (Some(_), Some(i)) => Value::from(vec![s[..i].to_string(), s[i..].to_string()]),
            _ => Value::from(vec![s.clone(), String::new()]),
        }
    });
    env.add_filter("path_join", path_join);
    env.add_filter("combine", combine);
    env.add_filter("dict2items", dict2items);
    env.add_filter("items2dict", items2dict);
    env.add_filter("flatten", flatten_filter);
    env.add_filter("ternary", ternary);
    env.add_filter("mandatory", mandatory);
    env.add_filter("password_hash", password_hash);
    env.add_filter("hash", hash_filter);
    env.add_filter("checksum", |s: String| sha1_hex(s.as_bytes()));
    env.add_filter("sha1", |s: String| sha1_hex(s.as_bytes()));
    env.add_filter("quote", |s: String| shell_quote(&s));
    env.add_filter("type_debug", |v: Value| python_type_name(&v).to_string());
    env.add_filter("unique", unique);
    env.add_filter("union", |a: Value, b: Value| -> Result<Value, Error> {
        let mut items = to_list(&a)?;
        items.extend(to_list(&b)?);
        unique(Value::from(items))
    });
    env.add_filter("intersect", |a: Value, b: Value| -> Result<Value, Error> {
        let other = to_list(&b)?;
        unique(Value::from(
            to_list(&a)?
                .into_iter()
                .filter(|x| other.contains(x))
                .collect::<Vec<_>>(),
        ))
    });
    env.add_filter("difference", |a: Value, b: Value| -> Result<Value, Error> {
        let other = to_list(&b)?;
        unique(Value::from(
            to_list(&a)?
                .into_iter()
                .filter(|x| !other.contains(x))
                .collect::<Vec<_>>(),
        ))
    });
    env.add_filter(
        "symmetric_difference",
        |a: Value, b: Value| -> Result<Value, Error> {
            let (left, right) = (to_list(&a)?, to_list(&b)?);
            let mut out: Vec<Value> = left
                .iter()
                .filter(|x| !right.contains(x))
                .cloned()
                .collect();
            out.extend(right.iter().filter(|x| !left.contains(x)).cloned());
            unique(Value::from(out))
        },
    );
    env.add_filter("split", |s: String, sep: Option<String>| -> Value {
        match sep {
            Some(sep) if !sep.is_empty() => {
                Value::from(s.split(sep.as_str()).map(String::from).collect::<Vec<_>>())
            }
            _ => Value::from(s.split_whitespace().map(String::from).collect::<Vec<_>>()),
        }
    });
    env.add_filter(
        "zip",
        |a: Value, rest: Rest<Value>| -> Result<Value, Error> {
            let mut lists = vec![to_list(&a)?];
            for other in rest.iter() {
                lists.push(to_list(other)?);
            }
            let len = lists.iter().map(Vec::len).min().unwrap_or(0);
            Ok(Value::from(
                (0..len)
                    .map(|i| Value::from(lists.iter().map(|l| l[i].clone()).collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            ))
        },
    );
    env.add_filter("extract", |key: Value, container: Value| {
        container.get_item(&key)
    });
    env.add_filter("human_to_bytes", human_to_bytes);
    env.add_filter("truncate", truncate);
    env.add_filter("center", center);
    env.add_filter("to_uuid", to_uuid);
    env.add_filter("product", product);
    env.add_filter("wordcount", |s: String| {
        // Jinja2 counts matches of Python's `\w+`.
        WORD.get_or_init(|| regex::Regex::new(r"\w+").expect("valid regex"))
            .find_iter(&s)
            .count()
    });

    env.add_test("version", version_test);
    env.add_test("version_compare", version_test);
    env.add_test("match", |v: String, pattern: String, kwargs: Kwargs| {
        regex_test(&v, &pattern, true, kwargs)
    });
    env.add_test("search", |v: String, pattern: String, kwargs: Kwargs| {
        regex_test(&v, &pattern, false, kwargs)
    });
    env.add_test("regex", |v: String, pattern: String, kwargs: Kwargs| {
        let match_type: Option<String> = kwargs.get("match_type")?;
        regex_test(&v, &pattern, match_type.as_deref() == Some("match"), kwargs)
    });
    for name in ["succeeded", "success"] {
        env.add_test(name, |r: Value| -> Result<bool, Error> {
            Ok(!result_flag(&r, "failed")?)
        });
    }
    for name in ["failed", "failure"] {
        env.add_test(name, |r: Value| result_flag(&r, "failed"));
    }
    for name in ["changed", "change"] {
        env.add_test(name, |r: Value| result_flag(&r, "changed"));
    }
    for name in ["skipped", "skip"] {
        env.add_test(name, |r: Value| result_flag(&r, "skipped"));
    }
    env.add_test("finished", |r: Value| -> Result<bool, Error> {
        Ok(!result_flag(&r, "started")?)
    });
    env.add_test("truthy", |v: Value| v.is_true());
    env.add_test("falsy", |v: Value| !v.is_true());
    env.add_test("any", |v: Value| -> Result<bool, Error> {
        Ok(to_list(&v)?.iter().any(Value::is_true))
    });
    env.add_test("all", |v: Value| -> Result<bool, Error> {
        Ok(to_list(&v)?.iter().all(Value::is_true))
    });
    env.add_test(
        "contains",
        |seq: Value, item: Value| -> Result<bool, Error> { Ok(to_list(&seq)?.contains(&item)) },
    );
    env.add_test("subset", |a: Value, b: Value| -> Result<bool, Error> {
        let b = to_list(&b)?;
        Ok(to_list(&a)?.iter().all(|x| b.contains(x)))
    });
    env.add_test("superset", |a: Value, b: Value| -> Result<bool, Error> {
        let a = to_list(&a)?;
        Ok(to_list(&b)?.iter().all(|x| a.contains(x)))
    });
    env.add_test("exists", |p: String| Path::new(&p).exists());
    env.add_test("file", |p: String| Path::new(&p).is_file());
    env.add_test("directory", |p: String| Path::new(&p).is_dir());
    env.add_test("link", |p: String| Path::new(&p).is_symlink());
    env.add_test("abs", |p: String| Path::new(&p).is_absolute());

    let lookup_dir = base_dir.clone();
    env.add_function(
        "lookup",
        move |state: &State, name: String, terms: Rest<Value>, kwargs: Kwargs| {
            let values = run_lookup(state, &lookup_dir, &name, &terms, &kwargs)?;
            let wantlist: Option<bool> = kwargs.get("wantlist")?;
            if wantlist == Some(true) {
                return Ok(Value::from(values));
            }
            Ok(match values.len() {
                1 => values.into_iter().next().unwrap_or_default(),
                _ => Value::from(values.iter().map(text).collect::<Vec<_>>().join(",")),
            })
        },
    );
    for name in ["query", "q"] {
        let query_dir = base_dir.clone();
        env.add_function(
            name,
            move |state: &State, name: String, terms: Rest<Value>, kwargs: Kwargs| {
                let _: Option<bool> = kwargs.get("wantlist")?;
                run_lookup(state, &query_dir, &name, &terms, &kwargs).map(Value::from)
            },
        );
    }
}

/// Ansible's `bool` filter (`module_utils.parsing.convert_bool`).
pub fn to_bool(value: &Value) -> bool {
    match value.kind() {
        ValueKind::Bool => value.is_true(),
        ValueKind::Number => value.as_i64() == Some(1) || value.to_string() == "1.0",
        ValueKind::String => matches!(
            value
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_lowercase()
                .as_str(),
            "yes" | "on" | "1" | "true" | "y" | "t"
        ),
        _ => false,
    }
}

fn to_bool_filter(value: Value) -> bool {
    to_bool(&value)
}

fn to_int(value: Value, default: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let base: Option<u32> = kwargs.get("base")?;
    let fallback = default.unwrap_or(Value::from(0));
    Ok(match value.kind() {
        ValueKind::Bool => Value::from(i64::from(value.is_true())),
        ValueKind::Number => {
            if value.is_integer() {
                value
            } else {
                let f: f64 = value.to_string().parse().unwrap_or(0.0);
                Value::from(f.trunc() as i64)
            }
        }
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default().trim().replace('_', "");
            let parsed = match base {
                Some(base) if base != 10 => {
                    let digits = s
                        .trim_start_matches("0x")
                        .trim_start_matches("0o")
                        .trim_start_matches("0b");
                    i64::from_str_radix(digits, base).ok()
                }
                _ => s
                    .parse::<i64>()
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().map(|f| f.trunc() as i64)),
            };
            parsed.map(Value::from).unwrap_or(fallback)
        }
        _ => fallback,
    })
}

fn to_float(value: Value, default: Option<Value>) -> Value {
    let fallback = default.unwrap_or(Value::from(0.0));
    match value.kind() {
        ValueKind::Bool => Value::from(if value.is_true() { 1.0 } else { 0.0 }),
        ValueKind::Number => value
            .to_string()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(fallback),
        ValueKind::String => value
            .as_str()
            .unwrap_or_default()
            .trim()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(fallback),
        _ => fallback,
    }
}

/// Serializes a value as compact JSON with Python's separators (`", "`, `": "`).
pub fn json_compact(value: &Value) -> Result<String, Error> {
    let json: serde_json::Value =
        serde_json::to_value(value).map_err(|e| err(format!("cannot serialize to JSON: {e}")))?;
    Ok(python_json(&json))
}

/// Python's `json.dumps` default formatting.
pub fn python_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(python_json).collect::<Vec<_>>().join(", ")
            )
        }
        serde_json::Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    serde_json::Value::String(k.clone()),
                    python_json(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn to_json(value: Value, _kwargs: Kwargs) -> Result<String, Error> {
    json_compact(&value)
}

fn to_nice_json(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let indent = " ".repeat(indent.unwrap_or(4));
    let json: serde_json::Value = serde_json::to_value(&value).map_err(|e| err(e.to_string()))?;
    let json = sort_json(json);
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&json, &mut serializer).map_err(|e| err(e.to_string()))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn sort_json(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_json(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_json).collect())
        }
        other => other,
    }
}

/// Converts JSON into a template value, keeping object key order.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(json_to_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v))),
        ),
    }
}

fn from_json(s: String) -> Result<Value, Error> {
    let json: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| err(format!("from_json: {e}")))?;
    Ok(json_to_value(&json))
}

fn to_yaml(value: Value, _kwargs: Kwargs) -> Result<String, Error> {
    let json = serde_json::to_value(&value).map_err(|e| err(format!("to_yaml: {e}")))?;
    super::yaml::to_yaml_text(&json).map_err(|e| err(format!("to_yaml: {e}")))
}

fn from_yaml(s: String) -> Result<Value, Error> {
    super::yaml::parse_one(&s)
        .map(|node| node.to_value())
        .map_err(|e| err(format!("from_yaml: {e}")))
}

/// Compiles a Python regular expression with Ansible's flags.
fn compile_regex(pattern: &str, ignorecase: bool, multiline: bool) -> Result<regex::Regex, Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(ignorecase)
        .multi_line(multiline)
        .build()
        .map_err(|e| err(format!("invalid regular expression {pattern:?}: {e}")))
}

/// Translates a Python replacement string (`\1`, `\g<name>`) into the regex crate's syntax.
pub fn python_replacement(replacement: &str) -> String {
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut number = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        number.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{number}}}"));
                }
                Some('g') => {
                    chars.next();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                        out.push_str(&format!("${{{name}}}"));
                    } else {
                        out.push_str("\\g");
                    }
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

fn regex_replace(
    value: Value,
    pattern: String,
    replacement: Option<String>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let ignorecase: Option<bool> = kwargs.get("ignorecase")?;
    let multiline: Option<bool> = kwargs.get("multiline")?;
    let count: Option<usize> = kwargs.get("count")?;
    let re = compile_regex(
        &pattern,
        ignorecase.unwrap_or(false),
        multiline.unwrap_or(false),
    )?;
    let replacement = python_replacement(&replacement.unwrap_or_default());
    let input = text(&value);
    Ok(re
        .replacen(&input, count.unwrap_or(0), replacement.as_str())
        .into_owned())
}

fn regex_search(
    value: Value,
    pattern: String,
    groups: Rest<String>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ignorecase: Option<bool> = kwargs.get("ignorecase")?;
    let multiline: Option<bool> = kwargs.get("multiline")?;
    let re = compile_regex(
        &pattern,
        ignorecase.unwrap_or(false),
        multiline.unwrap_or(false),
    )?;
    let input = text(&value);
    let Some(caps) = re.captures(&input) else {
        return Ok(Value::from(()));
    };
    if groups.is_empty() {
        return Ok(Value::from(
            caps.get(0).map(|m| m.as_str()).unwrap_or_default(),
        ));
    }
    let mut out = Vec::new();
    for group in groups.iter() {
        let found = if let Some(n) = group
            .strip_prefix('\\')
            .and_then(|n| n.parse::<usize>().ok())
        {
            caps.get(n)
        } else if let Some(name) = group.strip_prefix("\\g<").and_then(|n| n.strip_suffix('>')) {
            caps.name(name)
        } else {
            return Err(err(format!("unknown argument {group:?} to regex_search")));
        };
        out.push(
            found
                .map(|m| Value::from(m.as_str()))
                .unwrap_or(Value::from(())),
        );
    }
    Ok(Value::from(out))
}

fn regex_findall(value: Value, pattern: String, kwargs: Kwargs) -> Result<Value, Error> {
    let ignorecase: Option<bool> = kwargs.get("ignorecase")?;
    let multiline: Option<bool> = kwargs.get("multiline")?;
    let re = compile_regex(
        &pattern,
        ignorecase.unwrap_or(false),
        multiline.unwrap_or(false),
    )?;
    let input = text(&value);
    let groups = re.captures_len() - 1;
    let mut out = Vec::new();
    for caps in re.captures_iter(&input) {
        let item = match groups {
            0 => Value::from(caps.get(0).map(|m| m.as_str()).unwrap_or_default()),
            1 => Value::from(caps.get(1).map(|m| m.as_str()).unwrap_or_default()),
            _ => Value::from(
                (1..=groups)
                    .map(|i| {
                        caps.get(i)
                            .map(|m| m.as_str().to_string())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        out.push(item);
    }
    Ok(Value::from(out))
}

fn regex_test(value: &str, pattern: &str, anchored: bool, kwargs: Kwargs) -> Result<bool, Error> {
    let ignorecase: Option<bool> = kwargs.get("ignorecase")?;
    let multiline: Option<bool> = kwargs.get("multiline")?;
    let pattern = if anchored {
        format!("\\A(?:{pattern})")
    } else {
        pattern.to_string()
    };
    Ok(compile_regex(
        &pattern,
        ignorecase.unwrap_or(false),
        multiline.unwrap_or(false),
    )?
    .is_match(value))
}

fn b64decode(s: String) -> Result<String, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim().as_bytes())
        .map_err(|e| err(format!("b64decode: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn dirname(s: String) -> String {
    match s.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => s[..i].trim_end_matches('/').to_string(),
        None => String::new(),
    }
}

fn expanduser(s: String) -> String {
    match (s.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{home}{rest}")
        }
        _ => s,
    }
}

fn path_join(parts: Value) -> Result<String, Error> {
    let mut path = PathBuf::new();
    for part in to_list(&parts)? {
        path.push(text(&part));
    }
    Ok(path.to_string_lossy().into_owned())
}

fn to_list(value: &Value) -> Result<Vec<Value>, Error> {
    if value.kind() == ValueKind::String {
        return Err(err("expected a list, got a string"));
    }
    Ok(value.try_iter()?.collect())
}

fn is_map(value: &Value) -> bool {
    value.kind() == ValueKind::Map
}

fn map_entries(value: &Value) -> Result<Vec<(Value, Value)>, Error> {
    let mut out = Vec::new();
    for key in value.try_iter()? {
        let item = value.get_item(&key)?;
        out.push((key, item));
    }
    Ok(out)
}

/// Merges two dicts the way Ansible's `combine` does.
pub fn merge_dicts(
    base: &Value,
    other: &Value,
    recursive: bool,
    list_merge: &str,
) -> Result<Value, Error> {
    let mut entries = map_entries(base)?;
    for (key, value) in map_entries(other)? {
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => {
                slot.1 = if recursive && is_map(&slot.1) && is_map(&value) {
                    merge_dicts(&slot.1, &value, true, list_merge)?
                } else if slot.1.kind() == ValueKind::Seq
                    && value.kind() == ValueKind::Seq
                    && list_merge != "replace"
                {
                    let (old, new) = (to_list(&slot.1)?, to_list(&value)?);
                    let merged = match list_merge {
                        "keep" => old,
                        "append" => old.into_iter().chain(new).collect(),
                        "prepend" => new.into_iter().chain(old).collect(),
                        "append_rp" => {
                            let mut v: Vec<Value> =
                                old.into_iter().filter(|x| !new.contains(x)).collect();
                            v.extend(new);
                            v
                        }
                        "prepend_rp" => {
                            let mut v = new.clone();
                            v.extend(old.into_iter().filter(|x| !new.contains(x)));
                            v
                        }
                        other => return Err(err(format!("combine: invalid list_merge {other:?}"))),
                    };
                    Value::from(merged)
                } else {
                    value
                }
            }
            None => entries.push((key, value)),
        }
    }
    Ok(Value::from_pairs(entries))
}

fn combine(base: Value, others: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let recursive: Option<bool> = kwargs.get("recursive")?;
    let list_merge: Option<String> = kwargs.get("list_merge")?;
    let mut result = if base.kind() == ValueKind::Seq {
        to_list(&base)?.into_iter().try_fold(
            Value::from_pairs(Vec::<(Value, Value)>::new()),
            |acc, d| {
                merge_dicts(
                    &acc,
                    &d,
                    recursive.unwrap_or(false),
                    list_merge.as_deref().unwrap_or("replace"),
                )
            },
        )?
    } else {
        base
    };
    for other in others.iter() {
        let dicts = if other.kind() == ValueKind::Seq {
            to_list(other)?
        } else {
            vec![other.clone()]
        };
        for d in dicts {
            if !is_map(&d) {
                return Err(err(format!(
                    "failed to combine variables, expected dicts but got a '{}'",
                    python_type_name(&d)
                )));
            }
            result = merge_dicts(
                &result,
                &d,
                recursive.unwrap_or(false),
                list_merge.as_deref().unwrap_or("replace"),
            )?;
        }
    }
    Ok(result)
}

fn dict2items(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    if !is_map(&value) {
        return Err(err(format!(
            "dict2items requires a dictionary, got {} instead.",
            python_type_name(&value)
        )));
    }
    let key_name: Option<String> = kwargs.get("key_name")?;
    let value_name: Option<String> = kwargs.get("value_name")?;
    let (k, v) = (
        key_name.unwrap_or("key".into()),
        value_name.unwrap_or("value".into()),
    );
    Ok(Value::from(
        map_entries(&value)?
            .into_iter()
            .map(|(key, item)| Value::from_pairs([(k.clone(), key), (v.clone(), item)]))
            .collect::<Vec<_>>(),
    ))
}

fn items2dict(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let key_name: Option<String> = kwargs.get("key_name")?;
    let value_name: Option<String> = kwargs.get("value_name")?;
    let (k, v) = (
        key_name.unwrap_or("key".into()),
        value_name.unwrap_or("value".into()),
    );
    let mut out = Vec::new();
    for item in to_list(&value)? {
        out.push((item.get_attr(&k)?, item.get_attr(&v)?));
    }
    Ok(Value::from_pairs(out))
}

fn flatten_into(
    value: &Value,
    levels: Option<i64>,
    skip_nulls: bool,
    out: &mut Vec<Value>,
) -> Result<(), Error> {
    for item in to_list(value)? {
        if item.kind() == ValueKind::Seq && levels.is_none_or(|l| l > 0) {
            flatten_into(&item, levels.map(|l| l - 1), skip_nulls, out)?;
        } else if !(skip_nulls && item.is_none()) {
            out.push(item);
        }
    }
    Ok(())
}

/// Flattens nested lists (`flatten` filter, and `with_items`' one level).
pub fn flatten(value: &Value, levels: Option<i64>) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    flatten_into(value, levels, true, &mut out)?;
    Ok(out)
}

fn flatten_filter(value: Value, levels: Option<i64>, kwargs: Kwargs) -> Result<Value, Error> {
    let skip_nulls: Option<bool> = kwargs.get("skip_nulls")?;
    let levels = match levels {
        Some(l) => Some(l),
        None => kwargs.get::<Option<i64>>("levels")?,
    };
    let mut out = Vec::new();
    flatten_into(&value, levels, skip_nulls.unwrap_or(true), &mut out)?;
    Ok(Value::from(out))
}

fn ternary(
    value: Value,
    true_value: Value,
    false_value: Value,
    none_value: Option<Value>,
) -> Value {
    match (value.is_none(), none_value) {
        (true, Some(none)) => none,
        _ => {
            if value.is_true() {
                true_value
            } else {
                false_value
            }
        }
    }
}

fn mandatory(value: Value, msg: Option<String>) -> Result<Value, Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            msg.unwrap_or_else(|| "Mandatory variable not defined.".into()),
        ));
    }
    Ok(value)
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(bytes))
}

fn hash_filter(s: String, kind: Option<String>) -> Result<String, Error> {
    use sha2::Digest;
    match kind.as_deref().unwrap_or("sha1") {
        "sha1" => Ok(sha1_hex(s.as_bytes())),
        "md5" => {
            use md5::Digest as _;
            Ok(hex::encode(md5::Md5::digest(s.as_bytes())))
        }
        "sha256" => Ok(hex::encode(sha2::Sha256::digest(s.as_bytes()))),
        "sha512" => Ok(hex::encode(sha2::Sha512::digest(s.as_bytes()))),
        other => Err(err(format!("hash type {other:?} is not supported"))),
    }
}

static WORD: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();

/// Jinja2's `truncate(length=255, killwords=False, end='...', leeway=5)`: a string up
/// to `length + leeway` characters is kept whole; a longer one is cut to
/// `length - len(end)` characters (at the last space unless `killwords`) and `end` added.
fn truncate(
    s: String,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let length = kwargs
        .get::<Option<usize>>("length")?
        .or(length)
        .unwrap_or(255);
    let killwords = kwargs
        .get::<Option<bool>>("killwords")?
        .or(killwords)
        .unwrap_or(false);
    let end = kwargs
        .get::<Option<String>>("end")?
        .or(end)
        .unwrap_or_else(|| "...".into());
    // minijinja passes at most five arguments, so `leeway` is a keyword argument only.
    let leeway = kwargs.get::<Option<usize>>("leeway")?.unwrap_or(5);
    kwargs.assert_all_used()?;
    let end_len = end.chars().count();
    if length < end_len {
        return Err(err(format!(
            "truncate: length {length} is shorter than the end marker {end:?}"
        )));
    }
    if s.chars().count() <= length + leeway {
        return Ok(s);
    }
    let head: String = s.chars().take(length - end_len).collect();
    if killwords {
        return Ok(head + &end);
    }
    let kept = match head.rfind(' ') {
        Some(i) => &head[..i],
        None => head.as_str(),
    };
    Ok(format!("{kept}{end}"))
}

/// Python's `str.center(width)`: spaces on both sides, the odd one on the left when
/// the padding and the width are both odd, else on the right.
fn center(s: String, width: Option<usize>) -> String {
    let width = width.unwrap_or(80);
    let len = s.chars().count();
    if len >= width {
        return s;
    }
    let margin = width - len;
    let left = margin / 2 + (margin & width & 1);
    format!("{}{s}{}", " ".repeat(left), " ".repeat(margin - left))
}

/// Ansible's namespace for `to_uuid` (`UUID_NAMESPACE_ANSIBLE`).
const UUID_NAMESPACE_ANSIBLE: [u8; 16] = [
    0x36, 0x1e, 0x6d, 0x51, 0xfa, 0xec, 0x44, 0x4a, 0x90, 0x79, 0x34, 0x13, 0x86, 0xda, 0x8e, 0x2e,
];

/// Ansible's `to_uuid(namespace=UUID_NAMESPACE_ANSIBLE)`: an RFC 4122 version 5 UUID
/// (SHA-1 of the namespace's bytes and the text), lower-case and hyphenated.
fn to_uuid(value: Value, namespace: Option<String>, kwargs: Kwargs) -> Result<String, Error> {
    use sha1::Digest;
    let namespace = kwargs.get::<Option<String>>("namespace")?.or(namespace);
    kwargs.assert_all_used()?;
    let namespace = match namespace {
        None => UUID_NAMESPACE_ANSIBLE.to_vec(),
        Some(text) => {
            let digits: String = text.chars().filter(|c| *c != '-').collect();
            match hex::decode(&digits) {
                Ok(bytes) if bytes.len() == 16 => bytes,
                _ => return Err(err(format!("to_uuid: {text:?} is not a UUID"))),
            }
        }
    };
    let mut hasher = sha1::Sha1::new();
    hasher.update(&namespace);
    hasher.update(text(&value).as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Ansible's `product` (itertools.product): the cartesian product of the value and the
/// given lists, each combination a list, in itertools' order.
fn product(value: Value, rest: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    let mut combinations: Vec<Vec<Value>> = vec![Vec::new()];
    for list in std::iter::once(&value).chain(rest.iter()) {
        let items = to_list(list)?;
        let mut next = Vec::with_capacity(combinations.len() * items.len());
        for prefix in &combinations {
            for item in &items {
                let mut combination = prefix.clone();
                combination.push(item.clone());
                next.push(combination);
            }
        }
        combinations = next;
    }
    Ok(Value::from(
        combinations
            .into_iter()
            .map(Value::from)
            .collect::<Vec<_>>(),
    ))
}

/// Quotes a string for a POSIX shell, like Python's `shlex.quote`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

fn unique(value: Value) -> Result<Value, Error> {
    let mut out: Vec<Value> = Vec::new();
    for item in to_list(&value)? {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(Value::from(out))
}

fn human_to_bytes(value: Value) -> Result<i64, Error> {
    let s = text(&value).trim().to_string();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number: f64 = s[..split]
        .parse()
        .map_err(|_| err(format!("human_to_bytes() can't interpret {s:?}")))?;
    let unit = s[split..]
        .trim()
        .trim_end_matches(['B', 'b'])
        .to_uppercase();
    let power = match unit.as_str() {
        "" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => return Err(err(format!("human_to_bytes() can't interpret {s:?}"))),
    };
    Ok((number * 1024f64.powi(power)) as i64)
}

fn result_flag(result: &Value, key: &str) -> Result<bool, Error> {
    if !is_map(result) {
        return Err(err(format!(
            "The '{key}' test expects a dictionary, but got a '{}'",
            python_type_name(result)
        )));
    }
    let value = result.get_attr(key).unwrap_or_default();
    Ok(!value.is_undefined() && to_bool(&value))
}

/// Splits a version string into comparable parts (LooseVersion-like).
fn version_parts(version: &str) -> Vec<Result<u64, String>> {
    let re_split = |c: char| c == '.' || c == '-' || c == '_' || c == '+' || c == '~';
    let mut out = Vec::new();
    for piece in version.split(re_split).filter(|p| !p.is_empty()) {
        let mut current = String::new();
        let mut numeric = None;
        for c in piece.chars() {
            let is_digit = c.is_ascii_digit();
            if numeric.is_some_and(|n| n != is_digit) {
                out.push(part(&current));
                current.clear();
            }
            numeric = Some(is_digit);
            current.push(c);
        }
        if !current.is_empty() {
            out.push(part(&current));
        }
    }
    out
}

fn part(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|_| s.to_string())
}

/// Compares two version strings.
pub fn compare_versions(left: &str, right: &str) -> std::cmp::Ordering {
    let (a, b) = (version_parts(left), version_parts(right));
    for i in 0..a.len().max(b.len()) {
        let ordering = match (a.get(i), b.get(i)) {
            (Some(Ok(x)), Some(Ok(y))) => x.cmp(y),
            (Some(Ok(_)), Some(Err(_))) => std::cmp::Ordering::Greater,
            (Some(Err(_)), Some(Ok(_))) => std::cmp::Ordering::Less,
            (Some(Err(x)), Some(Err(y))) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (None, None) => std::cmp::Ordering::Equal,
        };
        if ordering != std::cmp::Ordering::Equal {
            return ordering;
        }
    }
    std::cmp::Ordering::Equal
}

fn version_test(
    value: Value,
    version: Value,
    operator: Option<String>,
    kwargs: Kwargs,
) -> Result<bool, Error> {
    let _: Option<bool> = kwargs.get("strict")?;
    let _: Option<String> = kwargs.get("version_type")?;
    let operator = match operator {
        Some(op) => op,
        None => kwargs
            .get::<Option<String>>("operator")?
            .unwrap_or_else(|| "eq".into()),
    };
    let ordering = compare_versions(&text(&value), &text(&version));
    use std::cmp::Ordering::*;
    Ok(match operator.as_str() {
        "==" | "=" | "eq" => ordering == Equal,
        "!=" | "<>" | "ne" => ordering != Equal,
        "<" | "lt" => ordering == Less,
        "<=" | "le" => ordering != Greater,
        ">" | "gt" => ordering == Greater,
        ">=" | "ge" => ordering != Less,
        other => return Err(err(format!("Invalid operator type ({other})"))),
    })
}

fn run_lookup(
    state: &State,
    base_dir: &Path,
    name: &str,
    terms: &[Value],
    kwargs: &Kwargs,
) -> Result<Vec<Value>, Error> {
    let name = name
        .trim_start_matches("ansible.builtin.")
        .trim_start_matches("community.general.");
    let default: Option<Value> = kwargs.get("default")?;
    let _: Option<String> = kwargs.get("errors")?;
    let mut out = Vec::new();
    // A role's task looks in the role first (`role_path` is set for role tasks).
    let role_dir = state
        .lookup("role_path")
        .and_then(|v| v.as_str().map(PathBuf::from));
    let resolve_path = |term: &str, subdir: &str| -> PathBuf {
        if let Some(role) = role_dir.as_deref() {
            if Path::new(term).is_relative() {
                for candidate in [role.join(subdir).join(term), role.join(term)] {
                    if candidate.exists() {
                        return candidate;
                    }
                }
            }
        }
        resolve_path(base_dir, term)
    };
    if name == "first_found" {
        let files: Option<Value> = kwargs.get("files")?;
        let paths: Option<Value> = kwargs.get("paths")?;
        let skip: Option<bool> = kwargs.get("skip")?;
        let mut terms = terms.to_vec();
        if let Some(files) = files {
            let mut term = vec![("files", files)];
            if let Some(paths) = paths {
                term.push(("paths", paths));
            }
            terms.push(Value::from_pairs(term));
        }
        return first_found(&terms, skip.unwrap_or(false), role_dir.as_deref(), base_dir);
    }
    let terms: Vec<Value> = terms
        .iter()
        .flat_map(|t| {
            if t.kind() == ValueKind::Seq {
                t.try_iter().map(|i| i.collect()).unwrap_or_default()
            } else {
                vec![t.clone()]
            }
        })
        .collect();
    for term in terms {
        let term = text(&term);
        match name {
            "file" => {
                let path = resolve_path(&term, "files");
                let content = std::fs::read_to_string(&path).map_err(|e| {
                    err(format!(
                        "The 'file' lookup had an issue accessing the file '{term}': {e}"
                    ))
                })?;
                let rstrip: Option<bool> = kwargs.get("rstrip")?;
                let lstrip: Option<bool> = kwargs.get("lstrip")?;
                let mut content = content.as_str();
                if rstrip.unwrap_or(true) {
                    content = content.trim_end();
                }
                if lstrip.unwrap_or(false) {
                    content = content.trim_start();
                }
                out.push(Value::from(content));
            }
            "env" => match std::env::var(&term) {
                Ok(v) => out.push(Value::from(v)),
                Err(_) => out.push(default.clone().unwrap_or(Value::from(""))),
            },
            "pipe" => {
                let output = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&term)
                    .current_dir(base_dir)
                    .output()
                    .map_err(|e| err(format!("lookup_plugin.pipe({term}) failed: {e}")))?;
                if !output.status.success() {
                    return Err(err(format!(
                        "lookup_plugin.pipe({term}) returned {}",
                        output.status.code().unwrap_or(-1)
                    )));
                }
                out.push(Value::from(
                    String::from_utf8_lossy(&output.stdout)
                        .trim_end()
                        .to_string(),
                ));
            }
            "template" => {
                let path = resolve_path(&term, "templates");
                let source = std::fs::read_to_string(&path).map_err(|e| {
                    err(format!(
                        "the template file {term} could not be found for the lookup: {e}"
                    ))
                })?;
                let rendered = state
                    .env()
                    .render_str(&source, state.lookup("vars").unwrap_or_default())?;
                out.push(Value::from(rendered));
            }
            "vars" => match state.lookup(&term) {
                Some(v) if !v.is_undefined() => out.push(v),
                _ => match &default {
                    Some(d) => out.push(d.clone()),
                    None => {
                        return Err(Error::new(
                            ErrorKind::UndefinedError,
                            format!("No variable found with this name: {term}"),
                        ))
                    }
                },
            },
            "items" | "list" => out.push(Value::from(term)),
            "fileglob" => {
                let pattern = resolve_path(&term, "files");
                if let Ok(paths) = glob::glob(&pattern.to_string_lossy()) {
                    for path in paths.flatten().filter(|p| p.is_file()) {
                        out.push(Value::from(path.to_string_lossy().into_owned()));
                    }
                }
            }
            other => {
                return Err(err(format!(
                    "lookup plugin ({other}) not found in the native runtime"
                )))
            }
        }
    }
    Ok(out)
}

/// `lookup('first_found', ...)`: the first file of the terms (names, or `{files,
/// paths, skip}` dicts) that exists, looked for in the role's then the play's `files/`
/// and directory, as ansible-core's lookup does outside a `with_first_found` loop.
fn first_found(
    terms: &[Value],
    skip: bool,
    role_dir: Option<&Path>,
    base_dir: &Path,
) -> Result<Vec<Value>, Error> {
    let mut dirs: Vec<&Path> = role_dir.into_iter().collect();
    dirs.push(base_dir);
    find_first(terms, skip, &dirs, "files").map_err(err)
}

/// The search of `first_found` (the lookup, and `with_first_found` with `subdir` by the
/// task's action): the terms (nested lists flattened; names, or `{files, paths, skip}`
/// dicts whose lists may also be `,`/`;` separated, paths also `:`) give candidate
/// names in order; the first that exists, as an absolute path or under each of `dirs`
/// (in `DIR/subdir/` first, then `DIR/`), is the one-item answer. None found: an empty
/// list when `skip` (or a dict's `skip`) says so, else ansible-core's error.
pub(crate) fn find_first(
    terms: &[Value],
    mut skip: bool,
    dirs: &[&Path],
    subdir: &str,
) -> Result<Vec<Value>, String> {
    let flatten = |v: &Value| -> Vec<Value> {
        if v.kind() == ValueKind::Seq {
            v.try_iter().map(|i| i.collect()).unwrap_or_default()
        } else {
            vec![v.clone()]
        }
    };
    let split = |v: &Value, separators: &[char]| -> Vec<String> {
        flatten(v)
            .iter()
            .flat_map(|i| {
                crate::modules::value_to_string(i)
                    .split(separators)
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut candidates = Vec::new();
    for term in terms.iter().flat_map(flatten) {
        if term.kind() == ValueKind::Map {
            let get = |k: &str| {
                term.get_attr(k)
                    .ok()
                    .filter(|v| !v.is_undefined() && !v.is_none())
            };
            let files = get("files")
                .map(|v| split(&v, &[',', ';']))
                .unwrap_or_default();
            let paths = get("paths")
                .map(|v| split(&v, &[',', ':', ';']))
                .unwrap_or_default();
            skip |= get("skip")
                .and_then(|v| crate::modules::parse_bool(&v))
                .unwrap_or(false);
            if paths.is_empty() {
                candidates.extend(files);
            } else {
                for path in &paths {
                    for file in &files {
                        candidates.push(Path::new(path).join(file).display().to_string());
                    }
                }
            }
        } else {
            candidates.push(crate::modules::value_to_string(&term));
        }
    }
    for candidate in &candidates {
        let path = Path::new(candidate);
        if path.is_absolute() {
            if path.exists() {
                return Ok(vec![Value::from(candidate.clone())]);
            }
            continue;
        }
        for dir in dirs {
            for found in [dir.join(subdir).join(path), dir.join(path)] {
                if found.exists() {
                    return Ok(vec![Value::from(found.display().to_string())]);
                }
            }
        }
    }
    if skip {
        return Ok(Vec::new());
    }
    Err("No file was found when using first_found.".to_string())
}

fn resolve_path(base_dir: &Path, term: &str) -> PathBuf {
    let path = Path::new(term);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let in_files = base_dir.join("files").join(path);
    if in_files.exists() {
        return in_files;
    }
    base_dir.join(path)
}

/// `password_hash`: SHA-512 crypt (`$6$`), the Ansible default, and SHA-256 crypt.
fn password_hash(
    password: String,
    hashtype: Option<String>,
    salt: Option<String>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let rounds: Option<usize> = kwargs.get("rounds")?;
    let salt: Option<String> = match salt {
        Some(s) => Some(s),
        None => kwargs.get("salt")?,
    };
    let salt = salt.unwrap_or_else(random_salt);
    match hashtype.as_deref().unwrap_or("sha512") {
        "sha512" | "sha512_crypt" => Ok(super::crypt::sha_crypt(&password, &salt, rounds, true)),
        "sha256" | "sha256_crypt" => Ok(super::crypt::sha_crypt(&password, &salt, rounds, false)),
        other => Err(err(format!(
            "password_hash: hash type {other:?} is not supported by the native runtime"
        ))),
    }
}

pub(crate) fn random_salt() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replacement strings in Python syntax are translated.
    #[test]
    fn python_replacements() {
        for (input, expected) in [
            (r"\1-\2", "${1}-${2}"),
            (r"\g<name>$", "${name}$$"),
            ("plain", "plain"),
        ] {
            assert_eq!(python_replacement(input), expected, "{input}");
        }
    }

    /// Versions compare numerically part by part.
    #[test]
    fn versions() {
        use std::cmp::Ordering::*;
        for (a, b, expected) in [
            ("2.10", "2.9", Greater),
            ("1.0", "1.0.0", Less),
            ("22.04", "22.04", Equal),
            ("1.2a", "1.2", Greater),
        ] {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
        }
    }

    /// `bool` follows Ansible's convert_bool, not Python truthiness.
    #[test]
    fn bool_semantics() {
        for (input, expected) in [
            (Value::from("false"), false),
            (Value::from("yes"), true),
            (Value::from("True"), true),
            (Value::from(1), true),
            (Value::from(0), false),
            (Value::from("nope"), false),
        ] {
            assert_eq!(to_bool(&input), expected, "{input:?}");
        }
    }

    /// Shell quoting matches shlex.quote.
    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
    }
}
