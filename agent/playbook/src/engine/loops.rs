//! Loops: the items of `loop` and every `with_*` form, evaluated before the task runs
//! once per item.
//!
//! What does not live here: running an item and aggregating the results (`mod.rs`).

use super::*;

impl Runner<'_> {
    pub(super) fn loop_items(
        &self,
        scope: &Inherited,
        kind: &LoopKind,
        source: &Value,
        ctx: &Value,
        action: &str,
    ) -> Result<Vec<Value>, String> {
        let value = self
            .templar
            .template(source, ctx)
            .map_err(|e| e.to_string())?;
        let as_list = |v: &Value| -> Result<Vec<Value>, String> {
            match v.kind() {
                ValueKind::Seq | ValueKind::Iterable => Ok(v.try_iter().map_err(|e| e.to_string())?.collect()),
                ValueKind::None => Ok(Vec::new()),
                _ => Err(format!(
                    "Invalid data passed to 'loop', it requires a list, got this instead: {}. Hint: If you passed a list/dict of just one element, try adding wantlist=True to your lookup invocation or use q/query instead of lookup.",
                    item_label(v)
                )),
            }
        };
        match kind {
            LoopKind::Loop => as_list(&value),
            LoopKind::Items => {
                let list = if value.kind() == ValueKind::Seq {
                    value.clone()
                } else {
                    Value::from(vec![value.clone()])
                };
                crate::filters::flatten(&list, Some(1)).map_err(|e| e.to_string())
            }
            LoopKind::List => {
                if value.kind() == ValueKind::Seq {
                    as_list(&value)
                } else {
                    Ok(vec![value])
                }
            }
            LoopKind::Dict => {
                if value.kind() != ValueKind::Map {
                    return Err("with_dict expects a dict".into());
                }
                let mut out = Vec::new();
                for key in value.try_iter().map_err(|e| e.to_string())? {
                    let item = value.get_item(&key).map_err(|e| e.to_string())?;
                    out.push(Value::from_pairs([("key", key), ("value", item)]));
                }
                Ok(out)
            }
            LoopKind::IndexedItems => Ok(crate::filters::flatten(&value, Some(1))
                .map_err(|e| e.to_string())?
                .into_iter()
                .enumerate()
                .map(|(i, v)| Value::from(vec![Value::from(i), v]))
                .collect()),
            LoopKind::Fileglob => {
                let patterns = if value.kind() == ValueKind::Seq {
                    as_list(&value)?
                } else {
                    vec![value]
                };
                let mut out = Vec::new();
                for pattern in patterns {
                    let pattern = modules::value_to_string(&pattern);
                    let full = if pattern.starts_with('/') {
                        pattern
                    } else {
                        self.role_dirs(scope)
                            .into_iter()
                            .map(|d| d.join("files"))
                            .find(|d| d.is_dir())
                            .unwrap_or_else(|| self.base_dir.join("files"))
                            .join(&pattern)
                            .display()
                            .to_string()
                    };
                    if let Ok(paths) = glob::glob(&full) {
                        for p in paths.flatten().filter(|p| p.is_file()) {
                            out.push(Value::from(p.display().to_string()));
                        }
                    }
                }
                Ok(out)
            }
            LoopKind::Sequence => sequence_items(&value),
            LoopKind::Together => {
                let lists: Vec<Vec<Value>> = as_list(&value)?
                    .iter()
                    .map(as_list)
                    .collect::<Result<_, _>>()?;
                let len = lists.iter().map(Vec::len).max().unwrap_or(0);
                Ok((0..len)
                    .map(|i| {
                        Value::from(
                            lists
                                .iter()
                                .map(|l| l.get(i).cloned().unwrap_or(Value::from(())))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect())
            }
            LoopKind::Nested => {
                let lists: Vec<Vec<Value>> = as_list(&value)?
                    .iter()
                    .map(as_list)
                    .collect::<Result<_, _>>()?;
                let mut combos: Vec<Vec<Value>> = vec![Vec::new()];
                for list in lists {
                    combos = combos
                        .into_iter()
                        .flat_map(|prefix| {
                            list.iter().map(move |v| {
                                let mut c = prefix.clone();
                                c.push(v.clone());
                                c
                            })
                        })
                        .collect();
                }
                Ok(combos.into_iter().map(Value::from).collect())
            }
            LoopKind::Lines => {
                let command = modules::value_to_string(&value);
                let output = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&command)
                    .current_dir(&self.base_dir)
                    .output()
                    .map_err(|e| format!("lookup_plugin.lines({command}) failed: {e}"))?;
                Ok(String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(Value::from)
                    .collect())
            }
            LoopKind::File => {
                let names = if value.kind() == ValueKind::Seq {
                    as_list(&value)?
                } else {
                    vec![value]
                };
                names
                    .iter()
                    .map(|n| {
                        let name = modules::value_to_string(n);
                        let path = self.resolve_local(scope, &name, "files");
                        std::fs::read_to_string(&path)
                            .map(|t| Value::from(t.trim_end().to_string()))
                            .map_err(|e| format!("could not read {name}: {e}"))
                    })
                    .collect()
            }
            LoopKind::FirstFound => self.first_found(scope, &value, action),
            LoopKind::Subelements => {
                let parts = as_list(&value)?;
                let (Some(list), Some(key)) = (parts.first(), parts.get(1)) else {
                    return Err("with_subelements expects a list and a key".into());
                };
                let key = modules::value_to_string(key);
                let mut out = Vec::new();
                for element in as_list(list)? {
                    let sub = element.get_attr(&key).map_err(|e| e.to_string())?;
                    // Like Ansible's lookup, the first item is the element without the subkey.
                    let mut rest = Vec::new();
                    for k in element.try_iter().map_err(|e| e.to_string())? {
                        if k.as_str() != Some(key.as_str()) {
                            rest.push((k.clone(), element.get_item(&k).unwrap_or_default()));
                        }
                    }
                    let parent = Value::from_pairs(rest);
                    for s in as_list(&sub)? {
                        out.push(Value::from(vec![parent.clone(), s]));
                    }
                }
                Ok(out)
            }
        }
    }
}

impl Runner<'_> {
    /// `with_first_found`: the first of the named files that exists, as a one-item list.
    /// Terms are file names or `{files, paths, skip}` dicts; a relative name is looked
    /// for in the role's and the play's directories, in the subdirectory ansible-core
    /// picks from the action's name (`templates`, `vars`, else `files`), then in the
    /// directories themselves.
    fn first_found(
        &self,
        scope: &Inherited,
        value: &Value,
        action: &str,
    ) -> Result<Vec<Value>, String> {
        let subdir = ["template", "var", "file"]
            .into_iter()
            .find(|s| action.contains(s))
            .unwrap_or("file");
        let subdir = format!("{subdir}s");
        let dirs = self.role_dirs(scope);
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        crate::filters::find_first(std::slice::from_ref(value), false, &dirs, &subdir)
    }
}

pub(super) fn sequence_items(value: &Value) -> Result<Vec<Value>, String> {
    let text = modules::value_to_string(value);
    let mut start = 1i64;
    let mut end: Option<i64> = None;
    let mut stride = 1i64;
    let mut format = "%d".to_string();
    let mut count: Option<i64> = None;
    for token in text.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            let parse = |v: &str| -> Result<i64, String> {
                if let Some(hex) = v.strip_prefix("0x") {
                    i64::from_str_radix(hex, 16).map_err(|e| e.to_string())
                } else {
                    v.parse::<i64>()
                        .map_err(|e| format!("can't parse {k}={v}: {e}"))
                }
            };
            match k {
                "start" => start = parse(v)?,
                "end" => end = Some(parse(v)?),
                "stride" => stride = parse(v)?,
                "count" => count = Some(parse(v)?),
                "format" => format = v.to_string(),
                other => return Err(format!("unrecognized sequence argument {other}")),
            }
        } else if let Some((a, b)) = token.split_once('-') {
            start = a
                .parse()
                .map_err(|_| format!("can't parse sequence {token}"))?;
            end = Some(
                b.parse()
                    .map_err(|_| format!("can't parse sequence {token}"))?,
            );
        } else {
            end = Some(
                token
                    .parse()
                    .map_err(|_| format!("can't parse sequence {token}"))?,
            );
        }
    }
    let end = match (end, count) {
        (Some(e), _) => e,
        (None, Some(c)) => start + (c - 1) * stride,
        (None, None) => return Err("must specify count or end in with_sequence".into()),
    };
    if stride == 0 {
        return Err("stride must not be zero".into());
    }
    let mut out = Vec::new();
    let mut i = start;
    while (stride > 0 && i <= end) || (stride < 0 && i >= end) {
        out.push(Value::from(printf_int(&format, i)));
        i += stride;
    }
    Ok(out)
}

pub(super) fn printf_int(format: &str, value: i64) -> String {
    let re = regex::Regex::new(r"%(0?)(\d*)([dxXo])").expect("static regex");
    re.replace(format, |caps: &regex::Captures| {
        let width: usize = caps[2].parse().unwrap_or(0);
        let zero = &caps[1] == "0";
        let digits = match &caps[3] {
            "x" => format!("{value:x}"),
            "X" => format!("{value:X}"),
            "o" => format!("{value:o}"),
            _ => value.to_string(),
        };
        if zero {
            format!("{digits:0>width$}")
        } else {
            format!("{digits:>width$}")
        }
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// with_sequence understands the common forms.
    #[test]
    fn sequences() {
        let s = |t: &str| {
            sequence_items(&Value::from(t))
                .expect("valid")
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(s("start=1 end=3"), ["1", "2", "3"]);
        assert_eq!(s("count=2 format=web%02d"), ["web01", "web02"]);
        assert_eq!(s("4-6"), ["4", "5", "6"]);
    }
}
