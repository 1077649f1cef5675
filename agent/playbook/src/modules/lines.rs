//! `lineinfile`, `blockinfile` and `replace`: edits of text files, following the
//! algorithms of ansible-core's modules line for line so that `changed` agrees.

use super::files::{apply_attributes, atomic_write, backup_file, run_validate};
use super::{ArgError, Args, ModuleContext, Outcome};
use std::fs;
use std::path::Path;

fn compile(pattern: &str) -> Result<regex::Regex, ArgError> {
    regex::Regex::new(pattern)
        .map_err(|e| ArgError::Invalid(format!("invalid regular expression {pattern:?}: {e}")))
}

/// Splits text into lines that keep their terminators (Python's `splitlines(True)` for `\n`).
fn split_keep(text: &str) -> Vec<String> {
    text.split_inclusive('\n').map(String::from).collect()
}

fn strip_eol(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Writes the edited text (validate, backup, atomic write) and applies attributes.
fn finish(
    path: &Path,
    original: Option<&str>,
    edited: &str,
    mut changed: bool,
    mut msg: String,
    args: &Args,
    ctx: &ModuleContext,
) -> Result<Outcome, ArgError> {
    let mut result = Outcome::new();
    if changed && !ctx.check {
        if let Some(validate) = args.str("validate") {
            let tmp = std::env::temp_dir().join(format!("dynserv-validate-{}", std::process::id()));
            fs::write(&tmp, edited)
                .map_err(|e| ArgError::Invalid(format!("could not write temp file: {e}")))?;
            let verdict = run_validate(&validate, &tmp);
            let _ = fs::remove_file(&tmp);
            if let Err(m) = verdict {
                return Ok(Outcome::failed(m));
            }
        }
        if original.is_some() && args.bool("backup", false)? {
            if let Ok(backup) = backup_file(path) {
                result.set("backup", backup);
            }
        }
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            fs::create_dir_all(parent).map_err(|e| {
                ArgError::Invalid(format!("Error creating {}: {e}", parent.display()))
            })?;
        }
        if let Err(e) = atomic_write(path, edited.as_bytes()) {
            return Ok(Outcome::failed(format!(
                "Could not write {}: {e}",
                path.display()
            )));
        }
    }
    if ctx.diff && changed {
        result.set(
            "diff",
            minijinja::Value::from_pairs([
                ("before", original.unwrap_or_default().to_string()),
                ("after", edited.to_string()),
                // As lineinfile, blockinfile and replace name it.
                ("before_header", format!("{} (content)", path.display())),
                ("after_header", format!("{} (content)", path.display())),
            ]),
        );
    }
    if path.exists() {
        match apply_attributes(path, args, ctx, true) {
            Ok(true) => {
                if changed {
                    msg.push_str(" and ownership, perms or SE linux context changed");
                } else {
                    msg = "ownership, perms or SE linux context changed".into();
                }
                changed = true;
            }
            Ok(false) => {}
            Err(m) => return Ok(Outcome::failed(m)),
        }
    }
    result.set("changed", changed);
    result.set("msg", msg);
    Ok(result)
}

/// `lineinfile`.
pub fn lineinfile(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "path",
        "dest",
        "destfile",
        "name",
        "regexp",
        "search_string",
        "state",
        "line",
        "value",
        "backrefs",
        "insertafter",
        "insertbefore",
        "create",
        "backup",
        "firstmatch",
        "validate",
        "others",
    ])?;
    let path_text = args
        .str_any(&["path", "dest", "destfile", "name"])
        .ok_or_else(|| ArgError::Missing("path".into()))?;
    let path = Path::new(&path_text);
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let regexp = args.str("regexp");
    let search_string = args.str("search_string");
    if regexp.is_some() && search_string.is_some() {
        return Err(ArgError::Invalid(
            "parameters are mutually exclusive: regexp|search_string".into(),
        ));
    }
    let line = args.str_any(&["line", "value"]);
    let backrefs = args.bool("backrefs", false)?;
    let create = args.bool("create", false)?;
    let firstmatch = args.bool("firstmatch", false)?;
    let insertafter = args.str("insertafter");
    let insertbefore = args.str("insertbefore");
    if insertafter.is_some() && insertbefore.is_some() {
        return Err(ArgError::Invalid(
            "parameters are mutually exclusive: insertbefore|insertafter".into(),
        ));
    }
    if path.is_dir() {
        return Ok(Outcome::failed(format!("Path {path_text} is a directory !")).with("rc", 256));
    }
    let original = fs::read_to_string(path).ok();

    if state == "absent" {
        if regexp.is_none() && search_string.is_none() && line.is_none() {
            return Err(ArgError::Invalid(
                "one of the following is required: line, regexp, search_string".into(),
            ));
        }
        let Some(text) = original.as_deref() else {
            return Ok(Outcome::new()
                .with("msg", "file not present")
                .with("found", 0));
        };
        let re = regexp.as_deref().map(compile).transpose()?;
        let mut lines = split_keep(text);
        let before = lines.len();
        lines.retain(|l| {
            let bare = strip_eol(l);
            let hit = if let Some(re) = &re {
                re.is_match(bare)
            } else if let Some(s) = &search_string {
                l.contains(s.as_str())
            } else {
                line.as_deref() == Some(bare)
            };
            !hit
        });
        let found = before - lines.len();
        let edited: String = lines.concat();
        let msg = if found > 0 {
            format!("{found} line(s) removed")
        } else {
            String::new()
        };
        let mut result = finish(path, Some(text), &edited, found > 0, msg, args, ctx)?;
        result.set("found", found);
        return Ok(result);
    }

    let line =
        line.ok_or_else(|| ArgError::Invalid("line is required with state=present".into()))?;
    if backrefs && regexp.is_none() {
        return Err(ArgError::Invalid(
            "regexp is required with backrefs=true".into(),
        ));
    }
    let text = match original.as_deref() {
        Some(t) => t.to_string(),
        None => {
            if !create {
                return Ok(
                    Outcome::failed(format!("Destination {path_text} does not exist !"))
                        .with("rc", 257),
                );
            }
            String::new()
        }
    };
    let mut lines = split_keep(&text);
    let re_m = regexp.as_deref().map(compile).transpose()?;
    let re_ins = match (insertafter.as_deref(), insertbefore.as_deref()) {
        (Some(p), _) | (None, Some(p)) if p != "BOF" && p != "EOF" => Some(compile(p)?),
        _ => None,
    };
    let mut index: [isize; 2] = [-1, -1];
    let mut matched: Option<regex::Captures> = None;
    let mut matched_line = String::new();
    let mut exact_line_match = false;
    if let Some(re) = &re_m {
        for (n, cur) in lines.iter().enumerate() {
            if re.is_match(strip_eol(cur)) {
                index[0] = n as isize;
                matched_line = strip_eol(cur).to_string();
                if firstmatch {
                    break;
                }
            }
        }
        if index[0] != -1 {
            matched = re.captures(&matched_line);
        }
    }
    let mut search_found = false;
    if let Some(s) = &search_string {
        for (n, cur) in lines.iter().enumerate() {
            if cur.contains(s.as_str()) {
                index[0] = n as isize;
                search_found = true;
                if firstmatch {
                    break;
                }
            }
        }
    }
    let has_match = matched.is_some() || search_found;
    if !has_match {
        for (n, cur) in lines.iter().enumerate() {
            if strip_eol(cur) == line {
                index[0] = n as isize;
                exact_line_match = true;
            } else if let Some(re) = &re_ins {
                if re.is_match(strip_eol(cur)) {
                    if insertafter.is_some() {
                        index[1] = n as isize + 1;
                        if firstmatch {
                            break;
                        }
                    }
                    if insertbefore.is_some() {
                        index[1] = n as isize;
                        if firstmatch {
                            break;
                        }
                    }
                }
            }
        }
    }
    let sep = "\n";
    let mut msg = String::new();
    let mut changed = false;
    let ends_without_newline = |lines: &Vec<String>| {
        lines
            .last()
            .is_some_and(|l| !l.ends_with('\n') && !l.ends_with('\r'))
    };
    if index[0] != -1 {
        let mut new_line = if backrefs {
            match &matched {
                Some(caps) => {
                    let mut out = String::new();
                    caps.expand(&crate::filters::python_replacement(&line), &mut out);
                    out
                }
                None => line.clone(),
            }
        } else {
            line.clone()
        };
        if !new_line.ends_with(sep) {
            new_line.push_str(sep);
        }
        if regexp.is_none() && search_string.is_none() && !exact_line_match {
            // Unreachable in practice: index[0] is only set by a match or an exact line.
        } else if lines[index[0] as usize] != new_line {
            lines[index[0] as usize] = new_line;
            msg = "line replaced".into();
            changed = true;
        }
    } else if backrefs {
        // Nothing to do: without a match the backreferences cannot be filled.
    } else if insertbefore.as_deref() == Some("BOF") || insertafter.as_deref() == Some("BOF") {
        lines.insert(0, format!("{line}{sep}"));
        msg = "line added".into();
        changed = true;
    } else if insertafter.as_deref() == Some("EOF") || index[1] == -1 {
        if ends_without_newline(&lines) {
            lines.push(sep.to_string());
        }
        lines.push(format!("{line}{sep}"));
        msg = "line added".into();
        changed = true;
    } else if insertafter.is_some() && index[1] != -1 {
        let i = index[1] as usize;
        if lines.len() == i {
            if strip_eol(&lines[i - 1]) != line {
                if ends_without_newline(&lines) {
                    if let Some(last) = lines.last_mut() {
                        last.push_str(sep);
                    }
                }
                lines.push(format!("{line}{sep}"));
                msg = "line added".into();
                changed = true;
            }
        } else if strip_eol(&lines[i]) != line {
            lines.insert(i, format!("{line}{sep}"));
            msg = "line added".into();
            changed = true;
        }
    } else {
        lines.insert(index[1] as usize, format!("{line}{sep}"));
        msg = "line added".into();
        changed = true;
    }
    let edited = lines.concat();
    let mut result = finish(path, original.as_deref(), &edited, changed, msg, args, ctx)?;
    if original.is_none() && changed {
        // A created file is reported the same way Ansible does.
        result.set("changed", true);
    }
    Ok(result)
}

/// `blockinfile`.
pub fn blockinfile(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "path",
        "dest",
        "destfile",
        "name",
        "state",
        "marker",
        "block",
        "content",
        "insertafter",
        "insertbefore",
        "create",
        "backup",
        "marker_begin",
        "marker_end",
        "validate",
        "append_newline",
        "prepend_newline",
    ])?;
    let path_text = args
        .str_any(&["path", "dest", "destfile", "name"])
        .ok_or_else(|| ArgError::Missing("path".into()))?;
    let path = Path::new(&path_text);
    let state = args
        .choice("state", &["present", "absent"], Some("present"))?
        .unwrap_or_default();
    let marker = args
        .str("marker")
        .unwrap_or_else(|| "# {mark} ANSIBLE MANAGED BLOCK".into());
    let begin = marker.replace(
        "{mark}",
        &args.str("marker_begin").unwrap_or_else(|| "BEGIN".into()),
    );
    let end = marker.replace(
        "{mark}",
        &args.str("marker_end").unwrap_or_else(|| "END".into()),
    );
    let block = args.str_any(&["block", "content"]).unwrap_or_default();
    let create = args.bool("create", false)?;
    let insertafter = args.str("insertafter");
    let insertbefore = args.str("insertbefore");
    if path.is_dir() {
        return Ok(Outcome::failed(format!("Path {path_text} is a directory !")).with("rc", 256));
    }
    let original = fs::read_to_string(path).ok();
    if original.is_none() {
        if state == "absent" {
            return Ok(Outcome::new().with("msg", format!("File {path_text} not present")));
        }
        if !create {
            return Ok(
                Outcome::failed(format!("Path {path_text} does not exist !")).with("rc", 257),
            );
        }
    }
    let text = original.clone().unwrap_or_default();
    let mut lines = split_keep(&text);
    let block_lines: Vec<String> = if state == "absent" || block.is_empty() {
        Vec::new()
    } else {
        let mut v = vec![begin.clone()];
        v.extend(block.lines().map(String::from));
        v.push(end.clone());
        v
    };
    let mut n0: Option<usize> = None;
    let mut n1: Option<usize> = None;
    for (i, l) in lines.iter().enumerate() {
        if strip_eol(l) == begin {
            n0 = Some(i);
        }
        if strip_eol(l) == end {
            n1 = Some(i);
        }
    }
    let insert_at = match (n0, n1) {
        (Some(a), Some(b)) if a < b => {
            lines.drain(a..=b);
            a
        }
        (Some(a), Some(b)) => {
            lines.drain(b..=a);
            b
        }
        _ => {
            if let Some(pattern) = insertbefore.as_deref() {
                if pattern == "BOF" {
                    0
                } else {
                    let re = compile(pattern)?;
                    lines
                        .iter()
                        .rposition(|l| re.is_match(strip_eol(l)))
                        .unwrap_or(lines.len())
                }
            } else if let Some(pattern) = insertafter.as_deref().filter(|p| *p != "EOF") {
                let re = compile(pattern)?;
                lines
                    .iter()
                    .rposition(|l| re.is_match(strip_eol(l)))
                    .map(|i| i + 1)
                    .unwrap_or(lines.len())
            } else {
                lines.len()
            }
        }
    };
    if insert_at > 0 && !block_lines.is_empty() {
        if let Some(prev) = lines.get_mut(insert_at - 1) {
            if !prev.ends_with('\n') {
                prev.push('\n');
            }
        }
    }
    let new_lines: Vec<String> = block_lines.iter().map(|l| format!("{l}\n")).collect();
    lines.splice(insert_at..insert_at, new_lines);
    let edited = lines.concat();
    let (changed, msg) = if original.as_deref() == Some(edited.as_str())
        || (original.is_none() && edited.is_empty())
    {
        (false, String::new())
    } else if original.is_none() {
        (true, "File created".to_string())
    } else if block_lines.is_empty() {
        (true, "Block removed".to_string())
    } else {
        (true, "Block inserted".to_string())
    };
    finish(path, original.as_deref(), &edited, changed, msg, args, ctx)
}

/// `replace`: regex substitution over the whole file.
pub fn replace(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "path", "dest", "destfile", "name", "regexp", "replace", "after", "before", "backup",
        "validate", "encoding", "others",
    ])?;
    let path_text = args
        .str_any(&["path", "dest", "destfile", "name"])
        .ok_or_else(|| ArgError::Missing("path".into()))?;
    let path = Path::new(&path_text);
    let regexp = args.required("regexp")?;
    let replacement = crate::filters::python_replacement(&args.str("replace").unwrap_or_default());
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(Outcome::failed(format!("Path {path_text} does not exist !")).with("rc", 257));
    };
    let re = regex::RegexBuilder::new(&regexp)
        .multi_line(true)
        .build()
        .map_err(|e| ArgError::Invalid(format!("invalid regular expression: {e}")))?;
    let (start, end) = section(&text, args.str("after"), args.str("before"))?;
    let region = &text[start..end];
    let count = re.find_iter(region).count();
    let replaced = re.replace_all(region, replacement.as_str());
    let edited = format!("{}{}{}", &text[..start], replaced, &text[end..]);
    let changed = edited != text;
    let msg = if changed {
        format!("{count} replacements made")
    } else {
        String::new()
    };
    let mut result = finish(path, Some(&text), &edited, changed, msg, args, ctx)?;
    // replace names the file itself in its diff, where lineinfile and blockinfile say
    // "(content)".
    let name = path.display().to_string();
    super::files::set_diff_field(&mut result, "after_header", &name);
    super::files::set_diff_field(&mut result, "before_header", &name);
    Ok(result)
}

fn section(
    text: &str,
    after: Option<String>,
    before: Option<String>,
) -> Result<(usize, usize), ArgError> {
    let mut start = 0;
    let mut end = text.len();
    if let Some(pattern) = after {
        let re = regex::RegexBuilder::new(&pattern)
            .dot_matches_new_line(true)
            .build()
            .map_err(|e| ArgError::Invalid(e.to_string()))?;
        if let Some(m) = re.find(text) {
            start = m.end();
        }
    }
    if let Some(pattern) = before {
        let re = regex::RegexBuilder::new(&pattern)
            .dot_matches_new_line(true)
            .build()
            .map_err(|e| ArgError::Invalid(e.to_string()))?;
        if let Some(m) = re.find(&text[start..]) {
            end = start + m.start();
        }
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Value;

    fn run_lineinfile(initial: Option<&str>, pairs: &[(&str, &str)]) -> (bool, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        if let Some(content) = initial {
            fs::write(&path, content).expect("write");
        }
        let mut all: Vec<(String, Value)> =
            vec![("path".into(), Value::from(path.display().to_string()))];
        all.extend(pairs.iter().map(|(k, v)| (k.to_string(), Value::from(*v))));
        let result = lineinfile(
            &Args::new("lineinfile", Value::from_pairs(all)),
            &ModuleContext::default(),
        )
        .expect("runs");
        assert!(!result.is_failed(), "{result:?}");
        (
            result.changed(),
            fs::read_to_string(&path).unwrap_or_default(),
        )
    }

    /// lineinfile follows Ansible's replace/insert rules.
    #[test]
    fn lineinfile_cases() {
        type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, bool, &'a str);
        let cases: Vec<Case> = vec![
            (Some("a\nb\n"), vec![("line", "c")], true, "a\nb\nc\n"),
            (Some("a\nb\n"), vec![("line", "b")], false, "a\nb\n"),
            (
                Some("a\nport=1\n"),
                vec![("regexp", "^port="), ("line", "port=2")],
                true,
                "a\nport=2\n",
            ),
            (
                Some("a\nport=2\n"),
                vec![("regexp", "^port="), ("line", "port=2")],
                false,
                "a\nport=2\n",
            ),
            (Some("a\nb"), vec![("line", "c")], true, "a\nb\nc\n"),
            (
                Some("a\nb\n"),
                vec![("line", "x"), ("insertbefore", "BOF")],
                true,
                "x\na\nb\n",
            ),
            (
                Some("a\nb\n"),
                vec![("line", "x"), ("insertafter", "^a")],
                true,
                "a\nx\nb\n",
            ),
            (
                Some("a\nx\nb\n"),
                vec![("line", "x"), ("insertafter", "^a")],
                false,
                "a\nx\nb\n",
            ),
            (
                Some("a\nb\na\n"),
                vec![("line", "a"), ("state", "absent")],
                true,
                "b\n",
            ),
            (
                None,
                vec![("line", "new"), ("create", "yes")],
                true,
                "new\n",
            ),
            (
                Some("k = 1\n"),
                vec![
                    ("regexp", "^k = (\\d)"),
                    ("line", "k = \\1\\1"),
                    ("backrefs", "yes"),
                ],
                true,
                "k = 11\n",
            ),
        ];
        for (initial, args, changed, content) in cases {
            assert_eq!(
                run_lineinfile(initial, &args),
                (changed, content.to_string()),
                "{initial:?} {args:?}"
            );
        }
    }

    /// blockinfile inserts, updates in place and removes its marked block.
    #[test]
    fn blockinfile_cases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, "top\n").expect("write");
        let run = |block: &str, state: &str| {
            let args = Value::from_pairs([
                ("path", path.display().to_string()),
                ("block", block.to_string()),
                ("state", state.to_string()),
            ]);
            blockinfile(&Args::new("blockinfile", args), &ModuleContext::default())
                .expect("runs")
                .changed()
        };
        assert!(run("x\ny", "present"));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "top\n# BEGIN ANSIBLE MANAGED BLOCK\nx\ny\n# END ANSIBLE MANAGED BLOCK\n"
        );
        assert!(!run("x\ny", "present"));
        assert!(run("z", "present"));
        assert!(run("z", "absent"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "top\n");
    }
}
