//! What a run prints: banners, per-task result lines (`ok:`, `changed:`, `fatal:`, loop
//! items), diffs, the result JSON as Ansible shows it, and the PLAY RECAP.
//!
//! What does not live here: deciding a task's result (the engine in `mod.rs`) or the
//! recap counters' rules (`Stats`).

use super::*;

impl Runner<'_> {
    pub(super) fn emit(&mut self, line: &str) {
        let mut text = line.to_string();
        for secret in &self.options.secrets {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "********");
            }
        }
        (self.sink)(&text);
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
        let get = |k: &str| {
            diff.get_attr(k)
                .ok()
                .filter(|v| !v.is_undefined())
                .map(|v| modules::value_to_string(&v))
                .unwrap_or_default()
        };
        for line in unified_diff(&get("before"), &get("after"), &get("after_header")) {
            self.emit(&line);
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

/// A minimal line diff for `--diff` output.
pub fn unified_diff(before: &str, after: &str, header: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut out = vec![
        format!("--- before: {header}"),
        format!("+++ after: {header}"),
    ];
    if a.len() * b.len() > 4_000_000 {
        out.extend(a.iter().map(|l| format!("-{l}")));
        out.extend(b.iter().map(|l| format!("+{l}")));
        return out;
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    out.push(format!("@@ -1,{} +1,{} @@", a.len(), b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
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

    /// Diffs list removals before additions, like difflib.
    #[test]
    fn diffs() {
        assert_eq!(
            unified_diff("a\nb\nc\n", "a\nB\nc\n", "f")[2..],
            ["@@ -1,3 +1,3 @@", " a", "-b", "+B", " c"]
        );
    }
}
