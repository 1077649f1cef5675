//! `community.general.pamd`: edits rules of a PAM service file (`/etc/pam.d/NAME`).
//!
//! The editing is a pure function over the file's text ([`PamService`]), kept to
//! Ansible's behaviour: rules are matched on type, control and module path; a changed
//! file is written back with every rule re-formatted (`type` padded to 11 columns) and
//! an `# Updated by Ansible - TIME` line as its second line; inserting before or after
//! a rule replaces the comments and blank lines between that rule and its neighbouring
//! rule, as Ansible's linked list does.

use std::path::Path;

use regex::Regex;

use super::{ArgError, Args, ModuleContext, Outcome};

const VALID_TYPES: &[&str] = &[
    "account",
    "-account",
    "auth",
    "-auth",
    "password",
    "-password",
    "session",
    "-session",
];
const SIMPLE_CONTROLS: &[&str] = &[
    "required",
    "requisite",
    "sufficient",
    "optional",
    "include",
    "substack",
    "definitive",
];
const CONTROL_VALUES: &[&str] = &[
    "success",
    "open_err",
    "symbol_err",
    "service_err",
    "system_err",
    "buf_err",
    "perm_denied",
    "auth_err",
    "cred_insufficient",
    "authinfo_unavail",
    "user_unknown",
    "maxtries",
    "new_authtok_reqd",
    "acct_expired",
    "session_err",
    "cred_unavail",
    "cred_expired",
    "cred_err",
    "no_module_data",
    "conv_err",
    "authtok_err",
    "authtok_recover_err",
    "authtok_lock_busy",
    "authtok_disable_aging",
    "try_again",
    "ignore",
    "abort",
    "authtok_expired",
    "module_unknown",
    "bad_item",
    "conv_again",
    "incomplete",
    "default",
];
const CONTROL_ACTIONS: &[&str] = &["ignore", "bad", "die", "ok", "done", "reset"];

/// A rule of a PAM service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `auth`, `-session`, ...
    pub rule_type: String,
    /// A simple control, or the words of a bracketed one.
    control: Control,
    /// The module path.
    pub path: String,
    /// The module's arguments.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Control {
    Simple(String),
    Complex(Vec<String>),
}

impl Control {
    fn parse(text: &str) -> Control {
        if text.starts_with('[') {
            let inner = text.replace(" = ", "=").replace(['[', ']'], "");
            Control::Complex(inner.split(' ').map(String::from).collect())
        } else {
            Control::Simple(text.to_string())
        }
    }

    fn text(&self) -> String {
        match self {
            Control::Simple(s) => s.clone(),
            Control::Complex(words) => format!("[{}]", words.join(" ")),
        }
    }
}

impl Rule {
    fn new(rule_type: &str, control: &str, path: &str, args: Vec<String>) -> Rule {
        Rule {
            rule_type: rule_type.to_string(),
            control: Control::parse(control),
            path: path.to_string(),
            args,
        }
    }

    fn matches(&self, rule_type: &str, control: &str, path: &str) -> bool {
        self.rule_type == rule_type && self.control.text() == control && self.path == path
    }

    fn text(&self) -> String {
        let head = format!(
            "{:<11}{} {}",
            self.rule_type,
            self.control.text(),
            self.path
        );
        if self.args.is_empty() {
            head
        } else {
            format!("{head} {}", self.args.join(" "))
        }
    }

    fn validate(&self) -> Result<(), String> {
        let line = self.text();
        if !VALID_TYPES.contains(&self.rule_type.as_str()) {
            return Err(format!(
                "Rule type, {}, is not valid in rule {line}",
                self.rule_type
            ));
        }
        match &self.control {
            Control::Simple(c) if !SIMPLE_CONTROLS.contains(&c.as_str()) => {
                return Err(format!("Rule control, {c}, is not valid in rule {line}"))
            }
            Control::Simple(_) => {}
            Control::Complex(words) => {
                for word in words {
                    let (value, action) = word.split_once('=').unwrap_or((word, ""));
                    if !CONTROL_VALUES.contains(&value) {
                        return Err(format!(
                            "Rule control value, {value}, is not valid in rule {line}"
                        ));
                    }
                    let number = action.parse::<i64>().is_ok_and(|n| n >= 0);
                    if !CONTROL_ACTIONS.contains(&action) && !number {
                        return Err(format!(
                            "Rule control action, {action}, is not valid in rule {line}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Empty(String),
    Comment(String),
    Include(String),
    Rule(Rule),
}

impl Line {
    fn rule(&self) -> Option<&Rule> {
        match self {
            Line::Rule(r) => Some(r),
            _ => None,
        }
    }

    fn is_filler(&self) -> bool {
        matches!(self, Line::Empty(_) | Line::Comment(_))
    }

    fn matches(&self, rule_type: &str, control: &str, path: &str) -> bool {
        self.rule()
            .is_some_and(|r| r.matches(rule_type, control, path))
    }
}

/// Splits module arguments the way Ansible's pamd does: bracketed groups stay whole.
pub fn parse_arguments(items: &[String]) -> Vec<String> {
    let re = Regex::new(r"(\[.*\]|\S*)").expect("valid");
    let mut out = Vec::new();
    for item in items {
        for m in re.find_iter(item) {
            if !m.as_str().is_empty() {
                out.push(m.as_str().to_string());
            }
        }
    }
    out
}

/// A parsed PAM service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamService {
    lines: Vec<Line>,
}

/// A rule to match: type, control, module path.
pub type RuleKey<'a> = (&'a str, &'a str, &'a str);

impl PamService {
    /// Parses a file; a line that is no rule, comment, include or blank is an error
    /// (Ansible's module fails on it with a traceback).
    pub fn parse(content: &str) -> Result<PamService, String> {
        let re = Regex::new(
            r"(?P<rule_type>-?(?:auth|account|session|password))\s+(?P<control>\[.*\]|\S*)\s+(?P<path>\S*)\s*(?P<args>.*)\s*",
        )
        .expect("valid");
        let mut lines = Vec::new();
        for line in content.lines() {
            let trimmed = line.trim_start();
            let parsed = if trimmed.starts_with('#') {
                Line::Comment(line.to_string())
            } else if trimmed.starts_with("@include") {
                Line::Include(line.to_string())
            } else if line.trim().is_empty() {
                Line::Empty(line.to_string())
            } else {
                let c = re.captures(line).ok_or_else(|| {
                    format!("'NoneType' object has no attribute 'group' (line: {line})")
                })?;
                Line::Rule(Rule::new(
                    &c["rule_type"],
                    &c["control"],
                    &c["path"],
                    parse_arguments(&[c["args"].to_string()]),
                ))
            };
            lines.push(parsed);
        }
        Ok(PamService { lines })
    }

    fn matching(&self, key: RuleKey) -> Vec<usize> {
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.matches(key.0, key.1, key.2))
            .map(|(i, _)| i)
            .collect()
    }

    /// `state=updated`: changes type, control, path and/or arguments of matching rules.
    pub fn update(
        &mut self,
        key: RuleKey,
        new_type: Option<&str>,
        new_control: Option<&str>,
        new_path: Option<&str>,
        new_args: Option<&[String]>,
    ) -> usize {
        let new_args = new_args.map(|a| {
            if a.len() == 1 && a[0].is_empty() {
                Vec::new()
            } else {
                parse_arguments(a)
            }
        });
        let mut changes = 0;
        for index in self.matching(key) {
            let Line::Rule(rule) = &mut self.lines[index] else {
                continue;
            };
            let mut changed = false;
            if let Some(t) = new_type.filter(|t| !t.is_empty()) {
                if rule.rule_type != t {
                    rule.rule_type = t.to_string();
                    changed = true;
                }
            }
            if let Some(c) = new_control.filter(|c| !c.is_empty()) {
                if rule.control.text() != c {
                    rule.control = Control::parse(c);
                    changed = true;
                }
            }
            if let Some(p) = new_path.filter(|p| !p.is_empty()) {
                if rule.path != p {
                    rule.path = p.to_string();
                    changed = true;
                }
            }
            if let Some(args) = &new_args {
                if rule.args != *args {
                    rule.args = args.clone();
                    changed = true;
                }
            }
            if changed {
                changes += 1;
            }
        }
        changes
    }

    /// `state=before`: a new rule before each matching rule, unless the rule before it
    /// is already the new one.
    pub fn insert_before(&mut self, key: RuleKey, new: &Rule) -> usize {
        let targets: Vec<Rule> = self
            .matching(key)
            .into_iter()
            .filter_map(|i| self.lines[i].rule().cloned())
            .collect();
        let mut changes = 0;
        let mut from = 0;
        for target in targets {
            let Some(index) =
                (from..self.lines.len()).find(|i| self.lines[*i].rule() == Some(&target))
            else {
                continue;
            };
            let previous = (0..index).rev().find(|i| !self.lines[*i].is_filler());
            let new_text = new.control.text();
            match previous {
                Some(p) if !self.lines[p].matches(&new.rule_type, &new_text, &new.path) => {
                    self.lines.splice(p + 1..index, [Line::Rule(new.clone())]);
                    changes += 1;
                    from = p + 3;
                }
                Some(_) => from = index + 1,
                None => {
                    self.lines.insert(index, Line::Rule(new.clone()));
                    changes += 1;
                    from = index + 2;
                }
            }
        }
        changes
    }

    /// `state=after`: a new rule after each matching rule, unless the next rule is
    /// already the new one.
    pub fn insert_after(&mut self, key: RuleKey, new: &Rule) -> usize {
        let targets: Vec<Rule> = self
            .matching(key)
            .into_iter()
            .filter_map(|i| self.lines[i].rule().cloned())
            .collect();
        let mut changes = 0;
        let mut from = 0;
        for target in targets {
            let Some(index) =
                (from..self.lines.len()).find(|i| self.lines[*i].rule() == Some(&target))
            else {
                continue;
            };
            let next = (index + 1..self.lines.len()).find(|i| !self.lines[*i].is_filler());
            let new_text = new.control.text();
            match next {
                Some(n) if !self.lines[n].matches(&new.rule_type, &new_text, &new.path) => {
                    self.lines.splice(index + 1..n, [Line::Rule(new.clone())]);
                    changes += 1;
                    from = index + 2;
                }
                Some(n) => from = n,
                None => {
                    self.lines.truncate(index + 1);
                    self.lines.push(Line::Rule(new.clone()));
                    changes += 1;
                    from = self.lines.len();
                }
            }
        }
        changes
    }

    /// `state=args_present`: adds missing arguments and updates `key=value` ones.
    pub fn add_arguments(&mut self, key: RuleKey, args: &[String]) -> usize {
        let wanted = parse_arguments(args);
        let split = |list: &[String]| {
            let mut simple: Vec<String> = Vec::new();
            let mut pairs: Vec<(String, String)> = Vec::new();
            for arg in list {
                if arg.starts_with('[') {
                    continue;
                }
                match arg.split_once('=') {
                    Some((k, v)) => {
                        pairs.retain(|(key, _)| key != k);
                        pairs.push((k.to_string(), v.to_string()));
                    }
                    None => {
                        if !simple.contains(arg) {
                            simple.push(arg.clone());
                        }
                    }
                }
            }
            (simple, pairs)
        };
        let (new_simple, new_pairs) = split(&wanted);
        let mut changes = 0;
        for index in self.matching(key) {
            let Line::Rule(rule) = &mut self.lines[index] else {
                continue;
            };
            let (simple, pairs) = split(&rule.args);
            let mut changed = false;
            let mut added: Vec<String> = new_simple
                .iter()
                .filter(|a| !simple.contains(a))
                .cloned()
                .collect();
            added.extend(
                new_pairs
                    .iter()
                    .filter(|(k, _)| !pairs.iter().any(|(key, _)| key == k))
                    .map(|(k, v)| format!("{k}={v}")),
            );
            if !added.is_empty() {
                rule.args.extend(added);
                changed = true;
            }
            for (k, v) in &new_pairs {
                if let Some((_, current)) = pairs.iter().find(|(key, _)| key == k) {
                    if current != v {
                        let old = format!("{k}={current}");
                        if let Some(slot) = rule.args.iter_mut().find(|a| **a == old) {
                            *slot = format!("{k}={v}");
                        }
                        changed = true;
                    }
                }
            }
            if changed {
                changes += 1;
            }
        }
        changes
    }

    /// `state=args_absent`: removes arguments from matching rules.
    pub fn remove_arguments(&mut self, key: RuleKey, args: &[String]) -> usize {
        let unwanted = parse_arguments(args);
        let mut changes = 0;
        for index in self.matching(key) {
            let Line::Rule(rule) = &mut self.lines[index] else {
                continue;
            };
            if !rule.args.iter().any(|a| unwanted.contains(a)) {
                continue;
            }
            rule.args.retain(|a| !unwanted.contains(a));
            changes += 1;
        }
        changes
    }

    /// `state=absent`: removes matching rules.
    pub fn remove(&mut self, key: RuleKey) -> usize {
        let before = self.lines.len();
        self.lines.retain(|l| !l.matches(key.0, key.1, key.2));
        before - self.lines.len()
    }

    /// The first invalid line's message, as Ansible reports it.
    pub fn validate(&self) -> Result<(), String> {
        for line in &self.lines {
            match line {
                Line::Empty(text) if !text.trim().is_empty() => {
                    return Err(format!("Rule is not valid {text}"))
                }
                Line::Comment(text) if !text.starts_with('#') => {
                    return Err(format!("Rule is not valid {text}"))
                }
                Line::Include(text) if !text.starts_with("@include") => {
                    return Err(format!("Rule is not valid {text}"))
                }
                Line::Rule(rule) => rule.validate()?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The file's new text, with the `# Updated by Ansible - {stamp}` line.
    pub fn render(&self, stamp: &str) -> String {
        let mut lines: Vec<String> = self
            .lines
            .iter()
            .map(|l| match l {
                Line::Empty(t) | Line::Comment(t) | Line::Include(t) => t.clone(),
                Line::Rule(r) => r.text(),
            })
            .collect();
        let mark = format!("# Updated by Ansible - {stamp}");
        if lines.len() <= 1 {
            lines.insert(0, String::new());
            lines.insert(1, mark);
        } else if lines[1].starts_with("# Updated by Ansible") {
            lines[1] = mark;
        } else {
            lines.insert(1, mark);
        }
        format!("{}\n", lines.join("\n"))
    }
}

/// `pamd`: edits a PAM service's rules.
pub fn pamd(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "type",
        "control",
        "module_path",
        "new_type",
        "new_control",
        "new_module_path",
        "module_arguments",
        "state",
        "path",
        "backup",
    ])?;
    let mut missing: Vec<&str> = ["name", "type", "control", "module_path"]
        .into_iter()
        .filter(|k| !args.has(k))
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        return Err(ArgError::Missing(missing.join(", ")));
    }
    let name = args.required("name")?;
    let rule_type = args.choice("type", VALID_TYPES, None)?.unwrap_or_default();
    let control = args.required("control")?;
    let module_path = args.required("module_path")?;
    let new_type = args.choice("new_type", VALID_TYPES, None)?;
    let new_control = args.str("new_control");
    let new_path = args.str("new_module_path");
    let module_arguments = args
        .has("module_arguments")
        .then(|| args.list("module_arguments"));
    let state = args
        .choice(
            "state",
            &[
                "absent",
                "after",
                "args_absent",
                "args_present",
                "before",
                "updated",
            ],
            Some("updated"),
        )?
        .unwrap_or_default();
    let requires: &[&str] = match state.as_str() {
        "args_present" | "args_absent" => &["module_arguments"],
        "before" | "after" => &["new_control", "new_type", "new_module_path"],
        _ => &[],
    };
    let absent: Vec<&str> = requires.iter().copied().filter(|k| !args.has(k)).collect();
    if !absent.is_empty() {
        return Err(ArgError::Invalid(format!(
            "state is {state} but all of the following are missing: {}",
            absent.join(", ")
        )));
    }
    let backup = args.bool("backup", false)?;
    let dir = super::nodejs::expand_user(&args.str("path").unwrap_or_else(|| "/etc/pam.d".into()));
    let file = Path::new(&dir).join(&name);
    let content = match std::fs::read_to_string(&file) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::failed(format!(
                "Unable to open/read PAM module file {} with error [Errno {}] {}: '{}'.",
                file.display(),
                e.raw_os_error().unwrap_or(0),
                e.to_string().split(" (os error").next().unwrap_or_default(),
                file.display()
            )))
        }
    };
    let mut service = match PamService::parse(&content) {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::failed(e)),
    };
    let key = (rule_type.as_str(), control.as_str(), module_path.as_str());
    let module_arguments = module_arguments.unwrap_or_default();
    let new_rule = || {
        Rule::new(
            new_type.as_deref().unwrap_or_default(),
            new_control.as_deref().unwrap_or_default(),
            new_path.as_deref().unwrap_or_default(),
            parse_arguments(&module_arguments),
        )
    };
    let changes = match state.as_str() {
        "updated" => service.update(
            key,
            new_type.as_deref(),
            new_control.as_deref(),
            new_path.as_deref(),
            args.has("module_arguments")
                .then_some(&module_arguments[..]),
        ),
        "before" => service.insert_before(key, &new_rule()),
        "after" => service.insert_after(key, &new_rule()),
        "args_absent" => service.remove_arguments(key, &module_arguments),
        "args_present" => {
            if parse_arguments(&module_arguments)
                .iter()
                .any(|a| a.starts_with('['))
            {
                return Ok(Outcome::failed("Unable to process bracketed '[' complex arguments with 'args_present'. Please use 'updated'."));
            }
            service.add_arguments(key, &module_arguments)
        }
        _ => service.remove(key),
    };
    if let Err(msg) = service.validate() {
        return Ok(Outcome::failed(msg));
    }
    let mut result = Outcome::new()
        .with("changed", changes > 0)
        .with("change_count", changes as i64)
        .with("backupdest", "");
    if changes > 0 && !ctx.check {
        if backup {
            if let Ok(b) = super::files::backup_file(&file) {
                result.set("backupdest", b);
            }
        }
        let stamp = chrono::Local::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string();
        let target = std::fs::canonicalize(&file).unwrap_or(file.clone());
        if let Err(e) = super::files::atomic_write(&target, service.render(&stamp).as_bytes()) {
            return Ok(Outcome::failed(format!(
                "Unable to create temporary file: {e}"
            )));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON_AUTH: &str = "# common-auth\n\nauth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\t\t\tpam_deny.so\n# tail\nauth\trequired\t\t\tpam_permit.so\n";

    fn rule(t: &str, c: &str, p: &str, args: &[&str]) -> Rule {
        Rule::new(t, c, p, args.iter().map(|a| a.to_string()).collect())
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A changed file is re-formatted with the mark as second line.
    #[test]
    fn updates_and_renders_like_ansible() {
        let mut s = PamService::parse(COMMON_AUTH).unwrap();
        let key = ("auth", "requisite", "pam_deny.so");
        assert_eq!(s.update(key, None, Some("required"), None, None), 1);
        assert_eq!(
            s.update(
                ("auth", "required", "pam_deny.so"),
                None,
                Some("required"),
                None,
                None
            ),
            0
        );
        assert_eq!(
            s.render("T"),
            "# common-auth\n# Updated by Ansible - T\n\nauth       [success=1 default=ignore] pam_unix.so nullok\nauth       required pam_deny.so\n# tail\nauth       required pam_permit.so\n"
        );
    }

    /// Inserting after a rule replaces the comments up to the next rule; inserting the
    /// same rule again changes nothing.
    #[test]
    fn insert_after_and_before() {
        let mut s = PamService::parse(COMMON_AUTH).unwrap();
        let new = rule("auth", "optional", "pam_faildelay.so", &["delay=4000"]);
        assert_eq!(
            s.insert_after(("auth", "requisite", "pam_deny.so"), &new),
            1
        );
        assert_eq!(
            s.insert_after(("auth", "requisite", "pam_deny.so"), &new),
            0
        );
        let text = s.render("T");
        assert!(!text.contains("# tail"), "{text}");
        assert!(text.contains("pam_deny.so\nauth       optional pam_faildelay.so delay=4000\nauth       required pam_permit.so"));
        let mut s = PamService::parse(COMMON_AUTH).unwrap();
        let env = rule("auth", "required", "pam_env.so", &[]);
        assert_eq!(
            s.insert_before(("auth", "[success=1 default=ignore]", "pam_unix.so"), &env),
            1
        );
        assert_eq!(
            s.insert_before(("auth", "[success=1 default=ignore]", "pam_unix.so"), &env),
            0
        );
        assert!(s.render("T").starts_with("# common-auth\n# Updated by Ansible - T\n\nauth       required pam_env.so\nauth       [success"));
    }

    /// Arguments are added, updated and removed; rules are removed.
    #[test]
    fn arguments_and_removal() {
        let mut s = PamService::parse(COMMON_AUTH).unwrap();
        let key = ("auth", "[success=1 default=ignore]", "pam_unix.so");
        assert_eq!(s.add_arguments(key, &strings(&["nullok", "rounds=5"])), 1);
        assert_eq!(s.add_arguments(key, &strings(&["rounds=5"])), 0);
        assert_eq!(s.add_arguments(key, &strings(&["rounds=8"])), 1);
        assert!(s.render("T").contains("pam_unix.so nullok rounds=8\n"));
        assert_eq!(s.remove_arguments(key, &strings(&["nullok"])), 1);
        assert_eq!(s.remove_arguments(key, &strings(&["nullok"])), 0);
        assert_eq!(s.remove(("auth", "required", "pam_permit.so")), 1);
        assert!(!s.render("T").contains("pam_permit"));
    }

    /// An invalid control is reported like Ansible.
    #[test]
    fn validation_messages() {
        let mut s = PamService::parse(COMMON_AUTH).unwrap();
        s.update(
            ("auth", "requisite", "pam_deny.so"),
            None,
            Some("sometimes"),
            None,
            None,
        );
        assert_eq!(
            s.validate().unwrap_err(),
            "Rule control, sometimes, is not valid in rule auth       sometimes pam_deny.so"
        );
    }
}
