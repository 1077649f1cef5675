//! Ansible's chained undefined for `default` and `is defined`.
//!
//! In Ansible an attribute of an undefined value is itself undefined, so
//! `{{ missing.attr | default('d') }}` gives `d` and `missing.attr is defined` is false;
//! only *using* such a value fails ("'missing' is undefined"). minijinja's strict mode
//! fails as soon as an attribute of an undefined value is read, so before compiling, an
//! attribute chain that feeds `default`/`d` or an `is [not] defined`/`undefined` test is
//! rewritten into a call of [`CHAIN_FUNCTION`], which walks the chain and yields undefined
//! at the first missing step. Everything else keeps minijinja's strict behaviour.
//!
//! What does not live here: the error messages for undefined values (`template`).

use minijinja::Value;
use std::borrow::Cow;

/// The global function that walks an attribute chain, returning undefined at the first
/// missing step: `__dynserv_chain(root, 'a', 'b')` is `root.a.b`.
pub const CHAIN_FUNCTION: &str = "__dynserv_chain";

/// Looks `keys` up one after the other, starting at `root`; undefined once a step is
/// missing or its parent is undefined.
pub fn chain_lookup(root: Value, keys: minijinja::value::Rest<Value>) -> Value {
    let mut current = root;
    for key in keys.iter() {
        if current.is_undefined() {
            return Value::UNDEFINED;
        }
        current = current.get_item(key).unwrap_or(Value::UNDEFINED);
    }
    current
}

/// Words that start no variable chain.
const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None",
];

/// Rewrites the chains of one bare expression (the inside of `{{ }}`).
pub fn rewrite_expression(expression: &str) -> Cow<'_, str> {
    if !expression.contains('.') && !expression.contains('[') {
        return Cow::Borrowed(expression);
    }
    let chars: Vec<char> = expression.chars().collect();
    let mut out = String::with_capacity(expression.len() + 16);
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let end = string_end(&chars, i);
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        if is_ident_start(c) && starts_chain(&chars, i) {
            if let Some(chain) = parse_chain(&chars, i) {
                if feeds_default_or_test(&chars, i, chain.end) {
                    out.push_str(&chain.call());
                    changed = true;
                    i = chain.end;
                    continue;
                }
            }
            let end = ident_end(&chars, i);
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(expression)
    }
}

/// Rewrites the chains inside every `{{ }}` and `{% %}` of a template, leaving text,
/// comments and `{% raw %}` blocks alone.
pub fn rewrite_template(text: &str) -> Cow<'_, str> {
    if !text.contains("{{") && !text.contains("{%") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut changed = false;
    while let Some(start) = rest.find(['{']) {
        let (before, tail) = rest.split_at(start);
        out.push_str(before);
        let close = match tail.get(..2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            Some("{#") => "#}",
            _ => {
                out.push('{');
                rest = &tail[1..];
                continue;
            }
        };
        let Some(end) = tail[2..].find(close).map(|e| e + 2) else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let inner = &tail[2..end];
        if close == "%}" && inner.trim_matches(['-', '+', ' ']).trim() == "raw" {
            let raw_end = raw_block_end(tail);
            out.push_str(&tail[..raw_end]);
            rest = &tail[raw_end..];
            continue;
        }
        out.push_str(&tail[..2]);
        if close == "#}" {
            out.push_str(inner);
        } else {
            let rewritten = rewrite_expression(inner);
            changed |= matches!(rewritten, Cow::Owned(_));
            out.push_str(&rewritten);
        }
        out.push_str(close);
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Where a `{% raw %}` block starting at the beginning of `text` ends (after its
/// `{% endraw %}`), or the end of the text.
fn raw_block_end(text: &str) -> usize {
    let Some(endraw) = text.find("endraw") else {
        return text.len();
    };
    text[endraw..]
        .find("%}")
        .map(|e| endraw + e + 2)
        .unwrap_or(text.len())
}

/// One attribute chain such as `a.b['c']`.
struct Chain {
    root: String,
    /// Each step as a Jinja expression giving the key (`'b'`, `'c'`, `idx`).
    keys: Vec<String>,
    /// Index just past the chain.
    end: usize,
}

impl Chain {
    fn call(&self) -> String {
        let mut call = format!("{CHAIN_FUNCTION}({}", self.root);
        for key in &self.keys {
            call.push_str(", ");
            call.push_str(key);
        }
        call.push(')');
        call
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_end(chars: &[char], start: usize) -> usize {
    let mut end = start;
    while end < chars.len() && is_ident_char(chars[end]) {
        end += 1;
    }
    end
}

/// Index just past the string literal that starts at `start`.
fn string_end(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// Index of the `]` that closes the `[` at `start`, if any.
fn bracket_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '\'' | '"' => {
                i = string_end(chars, i);
                continue;
            }
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn previous_non_space(chars: &[char], before: usize) -> Option<(usize, char)> {
    chars[..before]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, c)| !c.is_whitespace())
        .map(|(i, c)| (i, *c))
}

/// Whether the identifier at `start` begins a variable reference: not the tail of
/// another identifier or an attribute, not a filter or test name.
fn starts_chain(chars: &[char], start: usize) -> bool {
    if start > 0 && (is_ident_char(chars[start - 1]) || chars[start - 1] == '.') {
        return false;
    }
    match previous_non_space(chars, start) {
        Some((_, '|')) => false,
        Some((end, c)) if is_ident_char(c) => {
            let mut word_start = end;
            while word_start > 0 && is_ident_char(chars[word_start - 1]) {
                word_start -= 1;
            }
            let word: String = chars[word_start..=end].iter().collect();
            word != "is" && !(word == "not" && preceded_by_is(chars, word_start))
        }
        _ => true,
    }
}

fn preceded_by_is(chars: &[char], word_start: usize) -> bool {
    let text: String = chars[..word_start].iter().collect();
    text.trim_end().ends_with(" is") || text.trim_end() == "is"
}

/// Parses `root(.attr|[expr])+` at `start`; a step followed by `(` is a method call and
/// ends the chain before it.
fn parse_chain(chars: &[char], start: usize) -> Option<Chain> {
    let root_end = ident_end(chars, start);
    let root: String = chars[start..root_end].iter().collect();
    if KEYWORDS.contains(&root.as_str()) || chars.get(root_end) == Some(&'(') {
        return None;
    }
    let mut keys = Vec::new();
    let mut i = root_end;
    loop {
        match chars.get(i) {
            Some('.') if chars.get(i + 1).is_some_and(|c| is_ident_start(*c)) => {
                let name_end = ident_end(chars, i + 1);
                if chars.get(name_end) == Some(&'(') {
                    break;
                }
                let name: String = chars[i + 1..name_end].iter().collect();
                keys.push(format!("'{name}'"));
                i = name_end;
            }
            Some('[') => {
                let close = bracket_end(chars, i)?;
                let inner: String = chars[i + 1..close].iter().collect();
                if inner.trim().is_empty() || inner.contains(':') {
                    return None;
                }
                keys.push(inner);
                i = close + 1;
            }
            _ => break,
        }
    }
    if keys.is_empty() {
        return None;
    }
    Some(Chain { root, keys, end: i })
}

/// Whether the chain `start..end` (possibly alone inside parentheses) is followed by the
/// `default`/`d` filter or an `is [not] defined`/`undefined` test.
fn feeds_default_or_test(chars: &[char], start: usize, end: usize) -> bool {
    let mut rest: String = chars[end..].iter().collect();
    let opened = matches!(previous_non_space(chars, start), Some((_, '(')));
    if opened {
        if let Some(after) = rest.trim_start().strip_prefix(')') {
            rest = after.to_string();
        }
    }
    let rest = rest.trim_start();
    if let Some(filter) = rest.strip_prefix('|') {
        let name_end = filter
            .trim_start()
            .find(|c: char| !is_ident_char(c))
            .unwrap_or(filter.trim_start().len());
        let name = &filter.trim_start()[..name_end];
        return name == "default" || name == "d";
    }
    let Some(test) = rest.strip_prefix("is") else {
        return false;
    };
    if !test.starts_with(char::is_whitespace) {
        return false;
    }
    let test = test.trim_start();
    let test = test
        .strip_prefix("not")
        .filter(|t| t.starts_with(char::is_whitespace))
        .map(str::trim_start)
        .unwrap_or(test);
    let name_end = test.find(|c: char| !is_ident_char(c)).unwrap_or(test.len());
    matches!(&test[..name_end], "defined" | "undefined")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(rewrite_expression(input), expected, "rewriting {input:?}");
    }

    /// Chains feeding `default`/`d` or a definedness test become chain calls; other
    /// expressions are left alone.
    #[test]
    fn rewrites_only_chains_that_feed_default_or_defined() {
        check(
            " missing.attr | default('d') ",
            " __dynserv_chain(missing, 'attr') | default('d') ",
        );
        check("a.b['k']|d(1)", "__dynserv_chain(a, 'b', 'k')|d(1)");
        check(
            "(missing.a.b) | default('x')",
            "(__dynserv_chain(missing, 'a', 'b')) | default('x')",
        );
        check(
            "x.y is not defined and z.w is undefined",
            "__dynserv_chain(x, 'y') is not defined and __dynserv_chain(z, 'w') is undefined",
        );
        check("missing.attr", "missing.attr");
        check("missing.attr | upper", "missing.attr | upper");
        check("'a.b' | default('x')", "'a.b' | default('x')");
        check("s.split(',') | default([])", "s.split(',') | default([])");
        check("x[1:2] | default([])", "x[1:2] | default([])");
        check("x | default(y.z)", "x | default(y.z)");
    }

    /// Only the insides of `{{ }}` and `{% %}` are rewritten, never raw blocks.
    #[test]
    fn rewrites_template_expressions_only() {
        assert_eq!(
            rewrite_template("a.b | default {{ a.b | default(1) }}{% raw %}{{ a.b | d }}{% endraw %}"),
            "a.b | default {{ __dynserv_chain(a, 'b') | default(1) }}{% raw %}{{ a.b | d }}{% endraw %}"
        );
    }
}
