//! Host patterns, as ansible-core's `InventoryManager` evaluates a play's `hosts:` and
//! `--limit`: host and group names, `all`, shell globs (`web*`, `db[12]`), regexes
//! (`~web\d+`), subscripts (`webservers[0]`, `webservers[1:2]`), and lists of terms
//! separated by commas (or colons) where `&term` intersects and `!term` excludes.
//! Terms apply in Ansible's order: plain ones first, then intersections, then
//! exclusions. `localhost`, `127.0.0.1` and `::1` name the implicit localhost when the
//! inventory does not hold them.

use super::{Inventory, InventoryError, LOCALHOST_NAMES};
use minijinja::value::ValueKind;
use minijinja::Value;
use std::collections::HashSet;

/// The terms of a play's `hosts` (a string or a list of strings), each split.
pub fn terms(hosts: &Value) -> Vec<String> {
    match hosts.kind() {
        ValueKind::Seq => hosts
            .try_iter()
            .map(|items| {
                items
                    .flat_map(|item| split(&crate::modules::value_to_string(&item)))
                    .collect()
            })
            .unwrap_or_default(),
        ValueKind::None | ValueKind::Undefined => Vec::new(),
        _ => split(&crate::modules::value_to_string(hosts)),
    }
}

/// The terms of `--limit`; `@FILE` stands for the host names in FILE, one a line.
pub fn limit_terms(limit: &str) -> Result<Vec<String>, InventoryError> {
    let mut out = Vec::new();
    for term in split(limit) {
        let Some(file) = term.strip_prefix('@') else {
            out.push(term);
            continue;
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            InventoryError::Pattern(format!("Unable to find limit file {file}: {e}"))
        })?;
        out.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    Ok(out)
}

/// Splits a pattern into terms: on commas when it has one, else on colons outside
/// brackets (an IPv6 address stays whole).
pub fn split(pattern: &str) -> Vec<String> {
    let pieces: Vec<String> = if pattern.contains(',') {
        pattern.split(',').map(String::from).collect()
    } else if pattern.contains("::") || pattern.parse::<std::net::Ipv6Addr>().is_ok() {
        vec![pattern.to_string()]
    } else {
        split_on_colons(pattern)
    };
    pieces
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// ansible-core's fallback split: runs of characters other than whitespace, `:`, `[`
/// and `]`, or complete `[...]` groups.
fn split_on_colons(pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                let mut group = String::from('[');
                let mut closed = false;
                for next in chars.by_ref() {
                    group.push(next);
                    if next == ']' {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    current.push_str(&group);
                } else if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c if c == ':' || c == ']' || c.is_whitespace() => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The hosts `terms` select, in inventory order of the terms' matches. A name that is
/// not in the inventory but is one of [`LOCALHOST_NAMES`] selects the implicit
/// localhost by that name; an implicit inventory's aliases select its host.
pub fn select(inventory: &Inventory, terms: &[String]) -> Result<Vec<String>, InventoryError> {
    let mut hosts = Selection::default();
    for term in ordered(terms) {
        if inventory.contains_host(term) {
            hosts.push_new(term);
            continue;
        }
        let matched = match_term(inventory, term)?;
        if term.starts_with('!') {
            let matched: HashSet<&str> = matched.iter().map(String::as_str).collect();
            hosts.retain(|h| !matched.contains(h));
        } else if term.starts_with('&') {
            let matched: HashSet<&str> = matched.iter().map(String::as_str).collect();
            hosts.retain(|h| matched.contains(h));
        } else {
            for host in &matched {
                hosts.push_new(host);
            }
        }
    }
    Ok(hosts.list)
}

/// Host names in the order first added, each once; a lookup set keeps adding linear in
/// large inventories (10,000 hosts).
#[derive(Default)]
struct Selection {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Selection {
    fn push_new(&mut self, host: &str) {
        if self.seen.insert(host.to_string()) {
            self.list.push(host.to_string());
        }
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.list.retain(|h| keep(h));
        self.seen.retain(|h| keep(h));
    }
}

/// Plain terms, then `&` intersections, then `!` exclusions; `all` when there is no
/// plain term.
fn ordered(terms: &[String]) -> Vec<&str> {
    let plain: Vec<&str> = terms
        .iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty() && !t.starts_with(['&', '!']))
        .collect();
    let with = |prefix: char| {
        terms
            .iter()
            .map(String::as_str)
            .filter(move |t| t.starts_with(prefix))
    };
    let mut out = if plain.is_empty() { vec!["all"] } else { plain };
    out.extend(with('&'));
    out.extend(with('!'));
    out
}

/// The hosts one term matches, without its `&`/`!` prefix, its subscript applied.
fn match_term(inventory: &Inventory, term: &str) -> Result<Vec<String>, InventoryError> {
    let term = term.trim_start_matches(['&', '!']);
    if term.is_empty() {
        return Ok(Vec::new());
    }
    let (expression, subscript) = split_subscript(term);
    let hosts = enumerate(inventory, expression)?;
    match subscript {
        None => Ok(hosts),
        Some(subscript) => apply_subscript(hosts, subscript).ok_or_else(|| {
            InventoryError::Pattern(format!("No hosts matched the subscripted pattern '{term}'"))
        }),
    }
}

/// `[index]` or `[start:end]` (`end` empty: to the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscript {
    Index(i64),
    Range(usize, Option<usize>),
}

fn split_subscript(term: &str) -> (&str, Option<Subscript>) {
    if term.starts_with('~') || !term.ends_with(']') {
        return (term, None);
    }
    let Some(open) = term.rfind('[') else {
        return (term, None);
    };
    let (expression, inside) = (&term[..open], &term[open + 1..term.len() - 1]);
    if expression.is_empty() {
        return (term, None);
    }
    if let Ok(index) = inside.parse::<i64>() {
        if inside
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            return (expression, Some(Subscript::Index(index)));
        }
    }
    if let Some((start, end)) = inside.split_once([':', '-']) {
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if !start.is_empty() && digits(start) && digits(end) {
            let start = start.parse().unwrap_or(usize::MAX);
            let end = (!end.is_empty()).then(|| end.parse().unwrap_or(usize::MAX));
            return (expression, Some(Subscript::Range(start, end)));
        }
    }
    (term, None)
}

/// Python's `hosts[i]` (`None` when out of range) or `hosts[start:end + 1]`.
fn apply_subscript(hosts: Vec<String>, subscript: Subscript) -> Option<Vec<String>> {
    if hosts.is_empty() {
        return Some(hosts);
    }
    match subscript {
        Subscript::Index(index) => {
            let len = hosts.len() as i64;
            let at = if index < 0 { len + index } else { index };
            (0..len)
                .contains(&at)
                .then(|| vec![hosts[at as usize].clone()])
        }
        Subscript::Range(start, end) => {
            let end = end
                .map_or(hosts.len(), |e| e.saturating_add(1))
                .min(hosts.len());
            Some(
                hosts
                    .get(start..end)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default(),
            )
        }
    }
}

/// The hosts of the groups `expression` matches, and (when no group does, or it is a
/// glob or regex) the hosts whose names it matches.
fn enumerate(inventory: &Inventory, expression: &str) -> Result<Vec<String>, InventoryError> {
    let matcher = compile(expression)?;
    let mut selection = Selection::default();
    let groups: Vec<&str> = inventory
        .group_names_all()
        .filter(|g| matcher.is_match(g))
        .collect();
    for group in &groups {
        for host in inventory.group_hosts(group).unwrap_or_default() {
            selection.push_new(host);
        }
    }
    let by_host_name = groups.is_empty()
        || expression.starts_with('~')
        || expression.contains(['.', '?', '*', '[']);
    if by_host_name {
        for host in inventory.host_names().filter(|h| matcher.is_match(h)) {
            selection.push_new(host);
        }
    }
    let mut hosts = selection.list;
    if hosts.is_empty() {
        if inventory.aliases().iter().any(|a| a == expression) {
            hosts.extend(inventory.host_names().take(1).map(String::from));
        } else if LOCALHOST_NAMES.contains(&expression) {
            hosts.push(expression.to_string());
        }
    }
    Ok(hosts)
}

/// A regex for a `~regex` term (anchored at the start, as Python's `re.match`) or a
/// shell glob (the whole name, as `fnmatch`).
fn compile(expression: &str) -> Result<regex::Regex, InventoryError> {
    let source = match expression.strip_prefix('~') {
        Some(regex) => format!("^(?:{regex})"),
        None => format!("^(?s:{})\\z", glob_to_regex(expression)),
    };
    regex::Regex::new(&source)
        .map_err(|_| InventoryError::Pattern(format!("Invalid host list pattern: {expression}")))
}

/// Python's `fnmatch.translate` body: `*`, `?`, `[seq]` and `[!seq]`.
fn glob_to_regex(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => match class_end(&chars, i) {
                Some(end) => {
                    let raw: String = chars[i + 1..end].iter().collect();
                    let escaped = raw.replace('\\', "\\\\").replace('[', "\\[");
                    let class = match escaped.strip_prefix('!') {
                        Some(rest) => format!("^{rest}"),
                        None if escaped.starts_with('^') => format!("\\{escaped}"),
                        None => escaped,
                    };
                    out.push('[');
                    out.push_str(&class);
                    out.push(']');
                    i = end;
                }
                None => out.push_str("\\["),
            },
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out
}

/// The index of the `]` closing the class opened at `open`, as fnmatch finds it.
fn class_end(chars: &[char], open: usize) -> Option<usize> {
    let mut j = open + 1;
    if chars.get(j) == Some(&'!') {
        j += 1;
    }
    if chars.get(j) == Some(&']') {
        j += 1;
    }
    while j < chars.len() && chars[j] != ']' {
        j += 1;
    }
    (j < chars.len()).then_some(j)
}
