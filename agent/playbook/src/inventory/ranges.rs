//! Host names as inventories write them: `name:port`, and ranges such as
//! `web[01:03]`, `db-[a:c]` or `node[0:10:2]`, expanded as ansible-core's
//! `expand_hostname_range` does (leading zeros keep the width; several ranges in one
//! name multiply).

use super::MAX_HOSTS;

/// Splits `host:port` (a port of digits after the only colon outside brackets); an
/// IPv6 address or a range keeps its colons.
pub(super) fn split_port(token: &str) -> (&str, Option<u16>) {
    let mut depth = 0usize;
    let mut colons = Vec::new();
    for (index, c) in token.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => colons.push(index),
            _ => {}
        }
    }
    if let [colon] = colons.as_slice() {
        let port = &token[colon + 1..];
        if let Ok(port) = port.parse::<u16>() {
            return (&token[..*colon], Some(port));
        }
    }
    (token, None)
}

/// Whether `name` holds a `[begin:end]` range.
fn has_range(name: &str) -> bool {
    name.split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .is_some_and(|(inside, _)| inside.contains(':'))
}

/// Expands every range in `name`; a name without one is itself.
pub(super) fn expand(name: &str) -> Result<Vec<String>, String> {
    if !has_range(name) {
        return Ok(vec![name.to_string()]);
    }
    let (head, rest) = name.split_once('[').expect("has_range found '['");
    let (inside, tail) = rest.split_once(']').expect("has_range found ']'");
    let mut out = Vec::new();
    for piece in range_items(inside)? {
        for host in expand(&format!("{head}{piece}{tail}"))? {
            if out.len() >= MAX_HOSTS {
                return Err(format!(
                    "the host range {name} has more than {MAX_HOSTS} hosts"
                ));
            }
            out.push(host);
        }
    }
    Ok(out)
}

/// The items of one range's inside, `begin:end[:step]`.
fn range_items(inside: &str) -> Result<Vec<String>, String> {
    let bounds: Vec<&str> = inside.split(':').collect();
    let (begin, end, step) = match bounds.as_slice() {
        [b, e] => (*b, *e, "1"),
        [b, e, s] => (*b, *e, *s),
        _ => return Err("host range must be begin:end or begin:end:step".into()),
    };
    let begin = if begin.is_empty() { "0" } else { begin };
    if end.is_empty() {
        return Err("host range must specify end value".into());
    }
    let step: usize = step
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("host range step must be a positive number, got {step}"))?;
    if let (Some(b), Some(e)) = (single_letter(begin), single_letter(end)) {
        if b > e {
            return Err("host range must have begin <= end".into());
        }
        return Ok((b..=e).step_by(step).map(|c| c.to_string()).collect());
    }
    let width = if begin.starts_with('0') && begin.len() > 1 {
        if begin.len() != end.len() {
            return Err("host range must specify equal-length begin and end formats".into());
        }
        begin.len()
    } else {
        0
    };
    let number = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("invalid host range bound {text:?}"))
    };
    let (b, e) = (number(begin)?, number(end)?);
    if e.saturating_sub(b) / step as u64 >= MAX_HOSTS as u64 {
        return Err(format!("a host range has more than {MAX_HOSTS} hosts"));
    }
    Ok((b..=e)
        .step_by(step)
        .map(|n| format!("{n:0width$}"))
        .collect())
}

fn single_letter(text: &str) -> Option<char> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some(c),
        _ => None,
    }
}
