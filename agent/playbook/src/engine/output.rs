//! What a run prints: banners, per-task result lines (`ok:`, `changed:`, `fatal:`, loop
//! items), diffs, the result JSON as Ansible shows it, and the PLAY RECAP.
//!
//! What does not live here: deciding a task's result (the engine in `mod.rs`) or the
//! recap counters' rules (`Stats`).

use super::*;

impl Runner<'_> {
    pub(super) fn emit(&mut self, line: &str) {
        let text = self.masked(line);
        (self.sink)(&text);
    }

    /// A line with the run's secret values replaced, as every printed line is.
    fn masked(&self, line: &str) -> String {
        let mut text = line.to_string();
        for secret in &self.options.secrets {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "********");
            }
        }
        text
    }

    pub(super) fn emit_banner(&mut self, text: &str) {
        self.emit("");
        let line = banner(text);
        self.emit(&line);
    }

    pub(super) fn recap(&mut self) {
        self.emit_banner("PLAY RECAP");
        // As ansible-playbook, the recap lists only a host that some play ran on.
        if self.processed {
            let line = self
                .stats
                .recap_line(&self.options.inventory_hostname.clone());
            self.emit(&line);
        }
        self.emit("");
    }

    pub(super) fn print_diff(&mut self, outcome: &Outcome, scope: &Inherited) {
        let ctx = self.context(scope, &[]);
        let diff_mode = self
            .eval_bool(&scope.diff, &ctx, self.options.diff)
            .unwrap_or(self.options.diff);
        if !diff_mode || !outcome.changed() {
            return;
        }
        let Some(diff) = outcome.get("diff") else {
            return;
        };
        for line in ansible_diff(diff) {
            self.emit(&line);
            // The task's report carries the diff as printed (`report`).
            let masked = self.masked(&line);
            self.task_diff.push(masked);
        }
    }

    /// Ansible 2.19's `[ERROR]: Task failed: ...` line with the task's origin.
    pub(super) fn emit_origin(&mut self, task: &Task, outcome: &Outcome) {
        let msg = outcome
            .get("msg")
            .map(modules::value_to_string)
            .unwrap_or_default();
        self.emit(&format!("[ERROR]: Task failed: {msg}"));
        let file = task
            .file
            .as_deref()
            .cloned()
            .or_else(|| self.playbook.source_path.clone());
        if let Some(file) = file {
            self.emit(&format!(
                "Origin: {}:{}:{}",
                file.display(),
                task.pos.line,
                task.pos.column
            ));
            self.emit("");
        }
    }

    pub(super) fn print_single(
        &mut self,
        task: &Task,
        host: &str,
        outcome: &Outcome,
        no_log: bool,
        ignore_errors: bool,
        scope: &Inherited,
    ) {
        self.print_diff(outcome, scope);
        let verbose = outcome
            .get("_ansible_verbose_always")
            .is_some_and(Value::is_true);
        if outcome.is_failed() {
            self.emit_origin(task, outcome);
            let json = crate::filters::python_json(&displayable(outcome, no_log));
            self.emit(&format!("fatal: [{host}]: FAILED! => {json}"));
            if ignore_errors {
                self.emit("...ignoring");
            }
        } else if outcome.skipped() {
            self.emit(&format!("skipping: [{host}]"));
        } else {
            let status = if outcome.changed() { "changed" } else { "ok" };
            if verbose {
                let json = pretty_json(&displayable(outcome, no_log));
                for (i, line) in json.lines().enumerate() {
                    if i == 0 {
                        self.emit(&format!("{status}: [{host}] => {line}"));
                    } else {
                        self.emit(line);
                    }
                }
            } else {
                self.emit(&format!("{status}: [{host}]"));
            }
        }
    }

    pub(super) fn print_item(
        &mut self,
        host: &str,
        label: &str,
        outcome: &Outcome,
        no_log: bool,
        scope: &Inherited,
    ) {
        self.print_diff(outcome, scope);
        let verbose = outcome
            .get("_ansible_verbose_always")
            .is_some_and(Value::is_true);
        if outcome.is_failed() {
            let json = crate::filters::python_json(&displayable(outcome, no_log));
            self.emit(&format!("failed: [{host}] (item={label}) => {json}"));
        } else if outcome.skipped() {
            self.emit(&format!("skipping: [{host}] => (item={label}) "));
        } else {
            let status = if outcome.changed() { "changed" } else { "ok" };
            if verbose {
                let json = pretty_json(&displayable(outcome, no_log));
                for (i, line) in json.lines().enumerate() {
                    if i == 0 {
                        self.emit(&format!("{status}: [{host}] => (item={label}) => {line}"));
                    } else {
                        self.emit(line);
                    }
                }
            } else {
                self.emit(&format!("{status}: [{host}] => (item={label})"));
            }
        }
    }
}

/// Ansible's banner: the text padded with stars to 80 columns.
pub fn banner(text: &str) -> String {
    let stars = 79usize.saturating_sub(text.chars().count()).max(3);
    format!("{text} {}", "*".repeat(stars))
}

/// Python-style display of a loop item: strings bare, containers as Python literals.
pub fn item_label(item: &Value) -> String {
    match item.kind() {
        ValueKind::String => item.as_str().unwrap_or_default().to_string(),
        _ => python_literal(item),
    }
}

pub(super) fn python_literal(value: &Value) -> String {
    match value.kind() {
        ValueKind::Seq => format!(
            "[{}]",
            value
                .try_iter()
                .map(|items| items
                    .map(|i| python_literal(&i))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        ValueKind::Map => format!(
            "{{{}}}",
            value
                .try_iter()
                .map(|keys| keys
                    .map(|k| format!(
                        "{}: {}",
                        python_literal(&k),
                        python_literal(&value.get_item(&k).unwrap_or_default())
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        _ => python_repr(value),
    }
}

/// Removes internal keys and, for `debug`-style results, everything but `msg`.
pub(super) fn displayable(outcome: &Outcome, no_log: bool) -> serde_json::Value {
    if no_log {
        return serde_json::json!({
            "censored": "the output has been hidden due to the fact that 'no_log: true' was specified for this result",
            "changed": outcome.changed(),
        });
    }
    // Like the default callback: debug results show only their message (or variable).
    let debug = outcome.get("_ansible_debug").is_some();
    let mut map = serde_json::Map::new();
    for (key, value) in outcome.fields() {
        if key.starts_with("_ansible") || key == "invocation" || key == "diff" || key == "failed" {
            continue;
        }
        if key == "changed" && debug {
            continue;
        }
        if debug
            && outcome.get("msg").is_some()
            && !matches!(
                key.as_str(),
                "msg" | "failed" | "exception" | "warnings" | "deprecations"
            )
        {
            continue;
        }
        map.insert(
            key.clone(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(map)
}

pub(super) fn pretty_json(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return value.to_string();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What ansible-core's default callback prints for a result's `diff` (its
/// `_get_diff`): each entry (a diff or a list of them) as a unified diff of `before`
/// and `after` (mappings as sorted 4-space JSON), headed `before: HEADER` /
/// `after: HEADER` when the module names them, with three lines of context and an
/// empty line after it; a `prepared` text as it is. Nothing when nothing differs.
pub fn ansible_diff(diff: &Value) -> Vec<String> {
    let entries: Vec<Value> = match diff.kind() {
        minijinja::value::ValueKind::Seq => {
            diff.try_iter().map(|i| i.collect()).unwrap_or_default()
        }
        _ => vec![diff.clone()],
    };
    let mut out = Vec::new();
    for entry in entries {
        let field = |k: &str| {
            entry
                .get_attr(k)
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_none())
        };
        for (key, text) in [
            (
                "dst_binary",
                "diff skipped: destination file appears to be binary",
            ),
            (
                "src_binary",
                "diff skipped: source file appears to be binary",
            ),
        ] {
            if field(key).is_some() {
                out.push(text.to_string());
            }
        }
        let has = |k: &str| entry.get_attr(k).ok().is_some_and(|v| !v.is_undefined());
        if has("before") && has("after") {
            let side = |k: &str| match field(k) {
                Some(v) if v.kind() == minijinja::value::ValueKind::Map => {
                    format!("{}\n", sorted_json(&v))
                }
                Some(v) => modules::value_to_string(&v),
                None => String::new(),
            };
            let header = |k: &str, name: &str| match field(k) {
                Some(h) => format!("{name}: {}", modules::value_to_string(&h)),
                None => name.to_string(),
            };
            let lines = unified_diff(
                &side("before"),
                &side("after"),
                &header("before_header", "before"),
                &header("after_header", "after"),
            );
            if !lines.is_empty() {
                out.extend(lines);
                out.push(String::new());
            }
        }
        if let Some(prepared) = field("prepared") {
            let text = modules::value_to_string(&prepared);
            out.extend(
                text.strip_suffix('\n')
                    .unwrap_or(&text)
                    .split('\n')
                    .map(String::from),
            );
        }
    }
    out
}

/// A mapping as Python's `json.dumps(sort_keys=True, indent=4)`.
fn sorted_json(value: &Value) -> String {
    let json: serde_json::Value = serde_json::to_value(value).unwrap_or_default();
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // serde_json's maps are sorted (no preserve_order feature here).
    if serde::Serialize::serialize(&json, &mut serializer).is_err() {
        return json.to_string();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lines with their ends, as Python's `splitlines(True)`, where a last line without
/// one gets `\ No newline at end of file` as Ansible adds it.
fn diff_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    if let Some(last) = lines.last_mut() {
        if !last.ends_with('\n') {
            last.push_str("\n\\ No newline at end of file\n");
        }
    }
    lines
}

/// `difflib.unified_diff(before, after, before_header, after_header, n=3)` as printed
/// lines: Python's SequenceMatcher (longest matching blocks, with its "popular line"
/// heuristic for long texts), so hunks and their order match ansible-core's.
pub fn unified_diff(
    before: &str,
    after: &str,
    before_header: &str,
    after_header: &str,
) -> Vec<String> {
    let a = diff_lines(before);
    let b = diff_lines(after);
    let groups = grouped_opcodes(&a, &b, 3);
    let mut out = Vec::new();
    if groups.is_empty() {
        return out;
    }
    out.push(format!("--- {before_header}"));
    out.push(format!("+++ {after_header}"));
    let mut push = |prefix: char, line: &str| {
        let text = format!("{prefix}{line}");
        out.extend(
            text.strip_suffix('\n')
                .unwrap_or(&text)
                .split('\n')
                .map(String::from),
        );
    };
    for group in groups {
        let (first, last) = (group[0], group[group.len() - 1]);
        push_hunk_header(&mut |l| push('@', l), first.1, last.2, first.3, last.4);
        for (tag, i1, i2, j1, j2) in group {
            if tag == Tag::Equal {
                for line in &a[i1..i2] {
                    push(' ', line);
                }
                continue;
            }
            if matches!(tag, Tag::Replace | Tag::Delete) {
                for line in &a[i1..i2] {
                    push('-', line);
                }
            }
            if matches!(tag, Tag::Replace | Tag::Insert) {
                for line in &b[j1..j2] {
                    push('+', line);
                }
            }
        }
    }
    out
}

fn push_hunk_header(push: &mut impl FnMut(&str), a1: usize, a2: usize, b1: usize, b2: usize) {
    let range = |start: usize, stop: usize| {
        let length = stop - start;
        match length {
            1 => format!("{}", start + 1),
            0 => format!("{start},0"),
            _ => format!("{},{length}", start + 1),
        }
    };
    // `push` prefixes '@': the header is "@@ -A +B @@".
    push(&format!("@ -{} +{} @@", range(a1, a2), range(b1, b2)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Equal,
    Replace,
    Delete,
    Insert,
}

type Opcode = (Tag, usize, usize, usize, usize);

/// Python's `SequenceMatcher(None, a, b).get_matching_blocks()`.
fn matching_blocks(a: &[String], b: &[String]) -> Vec<(usize, usize, usize)> {
    let mut b2j: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (j, line) in b.iter().enumerate() {
        b2j.entry(line.as_str()).or_default().push(j);
    }
    // autojunk: in a text of 200 lines or more, a line found more than 1% of the time
    // is not used to start a match.
    if b.len() >= 200 {
        let ntest = b.len() / 100 + 1;
        b2j.retain(|_, idxs| idxs.len() <= ntest);
    }
    let longest = |alo: usize, ahi: usize, blo: usize, bhi: usize| {
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        let mut j2len: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        for (i, line) in a.iter().enumerate().take(ahi).skip(alo) {
            let mut next: std::collections::HashMap<usize, usize> =
                std::collections::HashMap::new();
            if let Some(js) = b2j.get(line.as_str()) {
                for &j in js {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j
                        .checked_sub(1)
                        .and_then(|p| j2len.get(&p))
                        .copied()
                        .unwrap_or(0)
                        + 1;
                    next.insert(j, k);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            j2len = next;
        }
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && a[besti + bestsize] == b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    };
    let mut queue = vec![(0, a.len(), 0, b.len())];
    let mut blocks = Vec::new();
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = longest(alo, ahi, blo, bhi);
        if k > 0 {
            blocks.push((i, j, k));
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    blocks.sort_unstable();
    let mut collapsed = Vec::new();
    let (mut i1, mut j1, mut k1) = (0, 0, 0);
    for (i2, j2, k2) in blocks {
        if i1 + k1 == i2 && j1 + k1 == j2 {
            k1 += k2;
        } else {
            if k1 > 0 {
                collapsed.push((i1, j1, k1));
            }
            (i1, j1, k1) = (i2, j2, k2);
        }
    }
    if k1 > 0 {
        collapsed.push((i1, j1, k1));
    }
    collapsed.push((a.len(), b.len(), 0));
    collapsed
}

/// Python's `get_grouped_opcodes(n)`.
fn grouped_opcodes(a: &[String], b: &[String], n: usize) -> Vec<Vec<Opcode>> {
    let mut codes: Vec<Opcode> = Vec::new();
    let (mut i, mut j) = (0, 0);
    for (ai, bj, size) in matching_blocks(a, b) {
        let tag = if i < ai && j < bj {
            Some(Tag::Replace)
        } else if i < ai {
            Some(Tag::Delete)
        } else if j < bj {
            Some(Tag::Insert)
        } else {
            None
        };
        if let Some(tag) = tag {
            codes.push((tag, i, ai, j, bj));
        }
        (i, j) = (ai + size, bj + size);
        if size > 0 {
            codes.push((Tag::Equal, ai, i, bj, j));
        }
    }
    if codes.is_empty() {
        codes.push((Tag::Equal, 0, 1, 0, 1));
    }
    if let Some(first) = codes.first_mut() {
        if first.0 == Tag::Equal {
            first.1 = first.1.max(first.2.saturating_sub(n));
            first.3 = first.3.max(first.4.saturating_sub(n));
        }
    }
    if let Some(last) = codes.last_mut() {
        if last.0 == Tag::Equal {
            last.2 = last.2.min(last.1 + n);
            last.4 = last.4.min(last.3 + n);
        }
    }
    let mut groups = Vec::new();
    let mut group: Vec<Opcode> = Vec::new();
    for (tag, mut i1, i2, mut j1, j2) in codes {
        if tag == Tag::Equal && i2 - i1 > 2 * n {
            group.push((tag, i1, i2.min(i1 + n), j1, j2.min(j1 + n)));
            groups.push(std::mem::take(&mut group));
            i1 = i1.max(i2.saturating_sub(n));
            j1 = j1.max(j2.saturating_sub(n));
        }
        group.push((tag, i1, i2, j1, j2));
    }
    let only_equal = group.len() == 1 && group[0].0 == Tag::Equal;
    if !group.is_empty() && !only_equal {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Banners pad to 80 columns with at least three stars.
    #[test]
    fn banners() {
        assert_eq!(banner("PLAY [x]").len(), 80);
        assert!(banner(&"x".repeat(100)).ends_with(" ***"));
    }

    /// Loop items are labelled like Python prints them.
    #[test]
    fn item_labels() {
        assert_eq!(item_label(&Value::from("a")), "a");
        assert_eq!(item_label(&Value::from(vec![1, 2])), "[1, 2]");
        assert_eq!(
            item_label(&Value::from_pairs([
                ("key", Value::from("a")),
                ("value", Value::from(true))
            ])),
            "{'key': 'a', 'value': True}"
        );
    }

    /// Diffs as Python's difflib.unified_diff(n=3) prints them (outputs taken from
    /// CPython 3.13 for the same inputs).
    #[test]
    fn diffs_match_difflib() {
        assert_eq!(
            unified_diff("a\nb\nc\n", "a\nB\nc\n", "before: f", "after: f"),
            [
                "--- before: f",
                "+++ after: f",
                "@@ -1,3 +1,3 @@",
                " a",
                "-b",
                "+B",
                " c"
            ]
        );
        // One line: no count; an empty side: start before it, count 0.
        assert_eq!(
            unified_diff("x\n", "x\na\n", "before", "after")[2],
            "@@ -1 +1,2 @@"
        );
        assert_eq!(
            unified_diff("", "a\n", "before", "after")[2],
            "@@ -0,0 +1 @@"
        );
        // Far-apart changes make two hunks with three lines of context each.
        let before: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let after = before
            .replace("\n2\n", "\ntwo\n")
            .replace("18\n", "eighteen\n");
        let diff = unified_diff(&before, &after, "before", "after");
        assert_eq!(diff[2], "@@ -1,5 +1,5 @@");
        assert_eq!(
            diff[9..],
            [
                "@@ -15,6 +15,6 @@",
                " 15",
                " 16",
                " 17",
                "-18",
                "+eighteen",
                " 19",
                " 20"
            ]
        );
        // 300 lines of 7 kinds: every kind is "popular", so difflib finds no anchor
        // and replaces nearly everything (CPython: 600 lines, 297 - and 297 +).
        let before: String = (0..300).map(|i| format!("line{}\n", i % 7)).collect();
        let after = before.replacen("line3\n", "LINE3\n", 2);
        let diff = unified_diff(&before, &after, "before", "after");
        assert_eq!(diff[2], "@@ -1,300 +1,300 @@");
        assert_eq!(diff.len(), 600);
        assert_eq!(diff.iter().filter(|l| l.starts_with('-')).count(), 298);
        // No newline at the end.
        assert_eq!(
            unified_diff("a", "b\n", "before", "after")[3..],
            ["-a", "\\ No newline at end of file", "+b"]
        );
        assert!(unified_diff("same\n", "same\n", "before", "after").is_empty());
    }
}
