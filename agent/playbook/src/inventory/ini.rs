//! INI inventories, as ansible-core's `ini` inventory plugin reads them.
//!
//! ```ini
//! web1 ansible_host=10.0.0.5     # before any section: ungrouped
//! [webservers]
//! web[01:03] http_port=8080      # host line: name or range, then key=value vars
//! [webservers:vars]
//! proxy=true                     # key=value, the value is the rest of the line
//! [prod:children]
//! webservers                     # a group declared somewhere in the file
//! ```
//!
//! Values are read as Python literals where they are one (`8080`, `True`, `'a b'`,
//! `[1, 2]`), else kept as text. A `[group:vars]` or `[group:children]` entry naming a
//! group that the file never declares is an error, as in Ansible.

use super::{ranges, Inventory, InventoryError, UNGROUPED};
use minijinja::Value;
use std::collections::HashMap;

/// Why a group is waiting for its declaration, with the line that named it.
struct Pending {
    line: usize,
    /// `vars` for a `[group:vars]` section, `children` for a child named in one.
    state: Section,
    /// The parents a pending child is to be added to.
    parents: Vec<usize>,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Hosts,
    Vars,
    Children,
}

/// Parses INI `text` (from `path`, for messages) into `inventory`.
pub(super) fn parse_into(
    inventory: &mut Inventory,
    text: &str,
    path: &str,
) -> Result<(), InventoryError> {
    let mut parser = Parser {
        inventory,
        path,
        line: 0,
        group: UNGROUPED,
        section: Section::Hosts,
        pending: HashMap::new(),
    };
    for raw in text.lines() {
        parser.line += 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        parser.parse_line(line)?;
    }
    parser.check_pending()
}

struct Parser<'a> {
    inventory: &'a mut Inventory,
    path: &'a str,
    line: usize,
    group: usize,
    section: Section,
    pending: HashMap<String, Pending>,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> InventoryError {
        InventoryError::Line {
            path: self.path.to_string(),
            line: self.line,
            message: message.into(),
        }
    }

    fn parse_line(&mut self, line: &str) -> Result<(), InventoryError> {
        if let Some((name, section)) = section_header(line) {
            let section = match section.unwrap_or("hosts") {
                "hosts" => Section::Hosts,
                "vars" => Section::Vars,
                "children" => Section::Children,
                other => {
                    return Err(self.error(format!(
                        "Section [{name}:{other}] has unknown type: {other}"
                    )))
                }
            };
            return self.start_section(name, section);
        }
        if line.starts_with('[') && line.ends_with(']') {
            return Err(self.error(format!(
                "Invalid section entry: '{line}'. Please make sure that there are no spaces in the section entry, and that there are no other invalid characters"
            )));
        }
        match self.section {
            Section::Hosts => self.host_line(line),
            Section::Vars => self.vars_line(line),
            Section::Children => self.child_line(line),
        }
    }

    fn start_section(&mut self, name: &str, section: Section) -> Result<(), InventoryError> {
        if self.inventory.group_index(name).is_none() && section == Section::Vars {
            self.pending
                .entry(name.to_string())
                .or_insert_with(|| Pending {
                    line: self.line,
                    state: Section::Vars,
                    parents: Vec::new(),
                    name: name.to_string(),
                });
        }
        self.group = self.inventory.add_group(name);
        self.section = section;
        if section != Section::Vars {
            self.declared(name)?;
        }
        Ok(())
    }

    /// A group was declared: its pending children's parents take it in.
    fn declared(&mut self, name: &str) -> Result<(), InventoryError> {
        let Some(pending) = self.pending.remove(name) else {
            return Ok(());
        };
        if pending.state == Section::Children {
            let child = self.inventory.add_group(name);
            for parent in pending.parents {
                self.inventory
                    .add_child(parent, child)
                    .map_err(|m| self.error(m))?;
                let parent_name = self.inventory.groups[parent].name.clone();
                if self
                    .pending
                    .get(&parent_name)
                    .is_some_and(|p| p.state == Section::Children)
                {
                    self.declared(&parent_name)?;
                }
            }
        }
        Ok(())
    }

    fn host_line(&mut self, line: &str) -> Result<(), InventoryError> {
        let tokens = shell_words(line)
            .map_err(|m| self.error(format!("Error parsing host definition '{line}': {m}")))?;
        let Some((pattern, assignments)) = tokens.split_first() else {
            return Ok(());
        };
        if pattern.trim() == "---" {
            return Err(self.error(format!(
                "Invalid host pattern '{pattern}' supplied, '---' is normally a sign this is a YAML file."
            )));
        }
        let (name, port) = ranges::split_port(pattern);
        if name.ends_with(':') && port.is_none() {
            return Err(self.error(format!(
                "Invalid host pattern '{pattern}' supplied, ending in ':' is not allowed, this character is reserved to provide a port."
            )));
        }
        let mut vars = Vec::new();
        for assignment in assignments {
            let Some((key, value)) = assignment.split_once('=') else {
                return Err(self.error(format!(
                    "Expected key=value host variable assignment, got: {assignment}"
                )));
            };
            vars.push((key.to_string(), literal_value(value)));
        }
        for host in ranges::expand(name).map_err(|m| self.error(m))? {
            let index = self
                .inventory
                .add_host(&host, Some(self.group))
                .map_err(|m| self.error(m))?;
            if let Some(port) = port {
                self.inventory
                    .set_host_var(index, "ansible_port", Value::from(port));
            }
            for (key, value) in &vars {
                self.inventory.set_host_var(index, key, value.clone());
            }
        }
        Ok(())
    }

    fn vars_line(&mut self, line: &str) -> Result<(), InventoryError> {
        let Some((key, value)) = line.split_once('=') else {
            return Err(self.error(format!("Expected key=value, got: {line}")));
        };
        let value = literal_value(value.trim());
        self.inventory
            .set_group_var(self.group, key.trim(), value)
            .map_err(|m| self.error(m))
    }

    fn child_line(&mut self, line: &str) -> Result<(), InventoryError> {
        let child = group_name(line)
            .ok_or_else(|| self.error(format!("Expected group name, got: {line}")))?;
        match self.inventory.group_index(child) {
            Some(index) => self
                .inventory
                .add_child(self.group, index)
                .map_err(|m| self.error(m)),
            None => {
                let line = self.line;
                let entry = self.pending.entry(child.to_string()).or_insert(Pending {
                    line,
                    state: Section::Children,
                    parents: Vec::new(),
                    name: child.to_string(),
                });
                entry.parents.push(self.group);
                Ok(())
            }
        }
    }

    /// The first reference to a group never declared is an error.
    fn check_pending(&self) -> Result<(), InventoryError> {
        let Some(first) = self.pending.values().min_by_key(|p| p.line) else {
            return Ok(());
        };
        let message = match first.state {
            Section::Vars => format!(
                "Section [{0}:vars] not valid for undefined group '{0}'.",
                first.name
            ),
            _ => {
                let parent = first.parents.last().copied().unwrap_or(UNGROUPED);
                format!(
                    "Section [{}:children] includes undefined group '{}'.",
                    self.inventory.groups[parent].name, first.name
                )
            }
        };
        Err(InventoryError::Line {
            path: self.path.to_string(),
            line: first.line,
            message,
        })
    }
}

/// `[name]` or `[name:kind]`, optionally followed by a comment.
fn section_header(line: &str) -> Option<(&str, Option<&str>)> {
    let rest = line.strip_prefix('[')?;
    let (inside, after) = rest.split_once(']')?;
    let after = after.trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return None;
    }
    let (name, kind) = match inside.split_once(':') {
        Some((name, kind)) => (name, Some(kind)),
        None => (inside, None),
    };
    let name_ok = !name.is_empty() && !name.contains(char::is_whitespace);
    let kind_ok =
        kind.is_none_or(|k| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_'));
    (name_ok && kind_ok).then_some((name, kind))
}

/// A child line: one group name, optionally followed by a comment.
fn group_name(line: &str) -> Option<&str> {
    let name = line.split_whitespace().next()?;
    let rest = line[name.len()..].trim_start();
    let valid = !name.contains([':', ']', '[']);
    (valid && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

/// Splits a host line as Python's `shlex.split(line, comments=True)`: whitespace
/// separates words, quotes group, a backslash escapes, `#` outside quotes ends the line.
pub(super) fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("No escaped character")?);
            }
            '\'' | '"' => {
                in_word = true;
                read_quoted(&mut chars, c, &mut word)?;
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn read_quoted(chars: &mut std::str::Chars, quote: char, word: &mut String) -> Result<(), String> {
    while let Some(c) = chars.next() {
        match c {
            c if c == quote => return Ok(()),
            '\\' if quote == '"' => match chars.next() {
                Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                Some(next) => {
                    word.push('\\');
                    word.push(next);
                }
                None => break,
            },
            c => word.push(c),
        }
    }
    Err("No closing quotation".into())
}

/// A value as ansible-core's `ast.literal_eval` attempt reads it: numbers, `True`,
/// `False`, `None`, quoted strings, lists and dicts; anything else stays text.
pub(super) fn literal_value(text: &str) -> Value {
    let trimmed = text.trim();
    match trimmed {
        "True" => return Value::from(true),
        "False" => return Value::from(false),
        "None" => return Value::from(()),
        _ => {}
    }
    if let Some(number) = python_number(trimmed) {
        return number;
    }
    if let Some(inner) = quoted(trimmed) {
        return Value::from(inner);
    }
    if trimmed.starts_with(['[', '{']) {
        if let Some(Ok(node)) = python_to_yaml_flow(trimmed).map(|t| crate::yaml::parse_one(&t)) {
            if matches!(
                node.kind,
                crate::yaml::NodeKind::Seq(_) | crate::yaml::NodeKind::Map(_)
            ) {
                return node.to_value();
            }
        }
    }
    Value::from(text)
}

fn python_number(text: &str) -> Option<Value> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let plain = text.replace('_', "");
    if digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        // Python refuses leading zeros in decimal literals (`010`): text then.
        if digits.len() > 1 && digits.starts_with('0') && !digits.trim_start_matches('0').is_empty()
        {
            return None;
        }
        return plain.parse::<i64>().ok().map(Value::from);
    }
    plain
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::from)
}

fn quoted(text: &str) -> Option<&str> {
    for quote in ['\'', '"'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            let inner = &text[1..text.len() - 1];
            if !inner.contains(quote) {
                return Some(inner);
            }
        }
    }
    None
}

/// A Python list or dict literal as YAML flow text, or `None` when it holds a bare
/// word (which `literal_eval` refuses, so the value stays text).
fn python_to_yaml_flow(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let flush = |word: &mut String, out: &mut String| -> bool {
        let yaml = match word.as_str() {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            "" => "",
            other if python_number(other).is_some() => other,
            _ => return false,
        };
        out.push_str(yaml);
        word.clear();
        true
    };
    for c in text.chars() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            if !flush(&mut word, &mut out) {
                return None;
            }
            quote = Some(c);
            out.push(c);
        } else if c.is_alphanumeric() || c == '_' || c == '.' || (c == '-' && word.is_empty()) {
            word.push(c);
        } else {
            if !flush(&mut word, &mut out) {
                return None;
            }
            out.push(c);
        }
    }
    flush(&mut word, &mut out).then_some(out)
}
