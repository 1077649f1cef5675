//! YAML loading with source positions and YAML 1.1 scalar resolution.
//!
//! Ansible reads playbooks with PyYAML, which implements YAML 1.1: `yes`/`no`/`on`/`off`
//! are booleans and `0644` is an octal integer. Error messages must point at a line and
//! column, both for syntax errors and for semantic errors found later (an unknown module),
//! so this module builds its own tree of [`Node`]s from `yaml-rust2`'s marked events
//! instead of going through serde, which loses positions.
//!
//! What does not live here: the meaning of playbook keys (see `model`).

use minijinja::Value;
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the source text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number, starting at 1.
    pub column: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A YAML value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: NodeKind,
    /// Where the value starts in the source.
    pub pos: Pos,
}

/// The resolved value of a YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or an empty value.
    Null,
    /// A YAML 1.1 boolean.
    Bool(bool),
    /// An integer (decimal, octal `0644`, hex `0x1f`, binary `0b101`).
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A string; `unsafe` is set for `!unsafe` strings, which are never templated.
    Str {
        /// The text.
        text: String,
        /// Whether the string carried Ansible's `!unsafe` tag.
        is_unsafe: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order (keys are kept as nodes for their positions).
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (line {}, column {})", pos.line, pos.column)]
pub struct YamlError {
    /// What went wrong.
    pub message: String,
    /// Where it went wrong.
    pub pos: Pos,
}

impl Node {
    /// The string content if this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The entries if this node is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "bool",
            NodeKind::Int(_) => "int",
            NodeKind::Float(_) => "float",
            NodeKind::Str { .. } => "str",
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "dict",
        }
    }

    /// The scalar rendered as text the way Python's `str()` would (used for keys).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            NodeKind::Null => Some("None".into()),
            NodeKind::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::Float(f) => Some(f.to_string()),
            NodeKind::Str { text, .. } => Some(text.clone()),
            _ => None,
        }
    }

    /// Converts the node to a template value, keeping mapping order.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::from(()),
            NodeKind::Bool(b) => Value::from(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => Value::from(*f),
            NodeKind::Str { text, is_unsafe } => {
                if *is_unsafe {
                    crate::template::unsafe_string(text)
                } else {
                    Value::from(text.as_str())
                }
            }
            NodeKind::Seq(items) => {
                Value::from(items.iter().map(Node::to_value).collect::<Vec<_>>())
            }
            NodeKind::Map(entries) => Value::from_pairs(entries.iter().map(|(k, v)| {
                let key = match &k.kind {
                    NodeKind::Str { text, .. } => Value::from(text.as_str()),
                    _ => k.to_value(),
                };
                (key, v.to_value())
            })),
        }
    }
}

/// Parses every document of a YAML stream.
pub fn parse_documents(source: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        message: e.info().to_string(),
        pos: to_pos(e.marker()),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.documents)
}

/// Parses a YAML stream that must hold at most one document; an empty stream is null.
pub fn parse_one(source: &str) -> Result<Node, YamlError> {
    let mut docs = parse_documents(source)?;
    match docs.len() {
        0 => Ok(Node {
            kind: NodeKind::Null,
            pos: Pos { line: 1, column: 1 },
        }),
        1 => Ok(docs.remove(0)),
        _ => Err(YamlError {
            message: "expected a single YAML document".into(),
            pos: docs[1].pos,
        }),
    }
}

fn to_pos(marker: &Marker) -> Pos {
    // yaml-rust2 reports lines 1-based and columns 0-based.
    Pos {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<YamlError>,
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending_key, _, _)) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if key.as_str() == Some("<<") {
                        merge_into(entries, node);
                    } else if let Some(slot) = entries.iter_mut().find(|(k, _)| k.kind == key.kind)
                    {
                        // PyYAML keeps the last duplicate key (Ansible warns about it).
                        slot.1 = node;
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

/// Applies a YAML merge key (`<<: *anchor` or a list of anchors); explicit keys win.
fn merge_into(entries: &mut Vec<(Node, Node)>, merged: Node) {
    let sources = match merged.kind {
        NodeKind::Seq(items) => items,
        _ => vec![merged],
    };
    for source in sources {
        if let NodeKind::Map(pairs) = source.kind {
            for (k, v) in pairs {
                if !entries.iter().any(|(existing, _)| existing.kind == k.kind) {
                    entries.push((k, v));
                }
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = to_pos(&marker);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let kind = match resolve_scalar(text, style, tag.as_ref()) {
                    Ok(kind) => kind,
                    Err(message) => {
                        self.error = Some(YamlError { message, pos });
                        return;
                    }
                };
                self.push_node(Node { kind, pos }, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(node) => {
                    let node = node.clone();
                    self.push_node(node, 0);
                }
                None => {
                    self.error = Some(YamlError {
                        message: "found undefined alias".into(),
                        pos,
                    })
                }
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, pos, anchor))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, pos, anchor)) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map(entries, _, pos, anchor)) => (
                        Node {
                            // Block mappings report their start after the first key;
                            // the first key's own position is what users expect.
                            pos: entries.first().map(|(k, _)| k.pos).unwrap_or(pos),
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push_node(node, anchor);
            }
            _ => {}
        }
    }
}

/// Resolves a scalar the way PyYAML's SafeLoader (YAML 1.1) does, plus Ansible's tags.
fn resolve_scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<&Tag>,
) -> Result<NodeKind, String> {
    if let Some(tag) = tag {
        let suffix = tag.suffix.as_str();
        match (tag.handle.as_str(), suffix) {
            ("!", "unsafe") => {
                return Ok(NodeKind::Str {
                    text,
                    is_unsafe: true,
                })
            }
            ("!", "vault") => {
                return Err(
                    "vault-encrypted values (!vault) are not supported by the native runtime"
                        .into(),
                )
            }
            ("!!", "str") | ("tag:yaml.org,2002:", "str") => {
                return Ok(NodeKind::Str {
                    text,
                    is_unsafe: false,
                })
            }
            _ => {}
        }
    }
    if style != TScalarStyle::Plain {
        return Ok(NodeKind::Str {
            text,
            is_unsafe: false,
        });
    }
    Ok(resolve_plain(text))
}

/// YAML 1.1 implicit typing of a plain scalar.
pub fn resolve_plain(text: String) -> NodeKind {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return NodeKind::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return NodeKind::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeKind::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_yaml11_int(&text) {
        return NodeKind::Int(i);
    }
    if is_yaml11_float(&text) {
        if let Ok(f) = text.replace('_', "").parse::<f64>() {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str {
        text,
        is_unsafe: false,
    }
}

fn parse_yaml11_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if body.is_empty() {
        return None;
    }
    let clean = body.replace('_', "");
    let value = if let Some(bin) = body.strip_prefix("0b") {
        if !bin.chars().all(|c| c == '0' || c == '1' || c == '_') {
            return None;
        }
        i64::from_str_radix(&bin.replace('_', ""), 2).ok()?
    } else if let Some(hex) = body.strip_prefix("0x") {
        if !hex.chars().all(|c| c.is_ascii_hexdigit() || c == '_') {
            return None;
        }
        i64::from_str_radix(&hex.replace('_', ""), 16).ok()?
    } else if body == "0" {
        0
    } else if body.starts_with('0') {
        if !body.chars().all(|c| ('0'..='7').contains(&c) || c == '_') {
            return None;
        }
        i64::from_str_radix(&clean, 8).ok()?
    } else {
        if !body.starts_with(|c: char| c.is_ascii_digit())
            || !body.chars().all(|c| c.is_ascii_digit() || c == '_')
        {
            return None;
        }
        clean.parse::<i64>().ok()?
    };
    Some(if negative { -value } else { value })
}

fn is_yaml11_float(text: &str) -> bool {
    // PyYAML: [-+]?([0-9][0-9_]*)?\.[0-9.]*([eE][-+][0-9]+)? ; a dot is required.
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let Some(dot) = mantissa.find('.') else {
        return false;
    };
    let (int_part, frac) = (&mantissa[..dot], &mantissa[dot + 1..]);
    let int_ok = int_part.is_empty()
        || (int_part.starts_with(|c: char| c.is_ascii_digit())
            && int_part.chars().all(|c| c.is_ascii_digit() || c == '_'));
    let frac_ok = frac.chars().all(|c| c.is_ascii_digit() || c == '.');
    let exp_ok = match exponent {
        None => true,
        Some(e) => {
            let digits = e.strip_prefix(['-', '+']);
            matches!(digits, Some(d) if !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        }
    };
    int_ok && frac_ok && exp_ok && !(int_part.is_empty() && frac.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: NodeKind) {
        assert_eq!(
            resolve_plain(input.to_string()),
            expected,
            "input {input:?}"
        );
    }

    fn s(text: &str) -> NodeKind {
        NodeKind::Str {
            text: text.into(),
            is_unsafe: false,
        }
    }

    /// Plain scalars resolve like PyYAML's YAML 1.1 resolver, which Ansible uses.
    #[test]
    fn yaml11_scalars() {
        check("yes", NodeKind::Bool(true));
        check("Off", NodeKind::Bool(false));
        check("0644", NodeKind::Int(0o644));
        check("0x1f", NodeKind::Int(31));
        check("-12", NodeKind::Int(-12));
        check("1_000", NodeKind::Int(1000));
        check("1.5", NodeKind::Float(1.5));
        check("1e5", s("1e5"));
        check("089", s("089"));
        check("~", NodeKind::Null);
        check("y", s("y"));
        check("2.18.1", s("2.18.1"));
        check(".", s("."));
    }

    /// Positions are 1-based lines and columns.
    #[test]
    fn positions_are_one_based() {
        let doc = parse_one("a: 1\nb:\n  - x\n").expect("valid yaml");
        let b = doc.get("b").expect("b");
        let NodeKind::Seq(items) = &b.kind else {
            panic!("expected a list")
        };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(
            doc.as_map().expect("map")[0].0.pos,
            Pos { line: 1, column: 1 }
        );
    }

    /// Syntax errors carry a line and a column.
    #[test]
    fn syntax_error_has_position() {
        let err = parse_one("a: [1, 2\nb: 3\n").expect_err("invalid yaml");
        assert!(err.pos.line >= 1, "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }

    /// Quoted scalars stay strings, anchors and merge keys work.
    #[test]
    fn quoted_anchors_and_merge() {
        let doc = parse_one("a: 'yes'\nbase: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n").expect("valid");
        assert_eq!(doc.get("a").expect("a").kind, s("yes"));
        let c = doc.get("c").expect("c").to_value();
        assert_eq!(c.get_attr("x").expect("x"), Value::from(1));
        assert_eq!(c.get_attr("y").expect("y"), Value::from(2));
    }
}

/// Writes a JSON-shaped value as block-style YAML (the `to_yaml` filter, compose
/// definitions), keys sorted as PyYAML sorts them, words YAML 1.1 reads as booleans
/// quoted, without the document marker.
pub fn to_yaml_text(value: &serde_json::Value) -> Result<String, String> {
    fn convert(value: &serde_json::Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match value {
            serde_json::Value::Null => Yaml::Null,
            serde_json::Value::Bool(b) => Yaml::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            serde_json::Value::String(s) => Yaml::String(s.clone()),
            serde_json::Value::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            serde_json::Value::Object(map) => Yaml::Hash(
                map.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&convert(value))
        .map_err(|e| e.to_string())?;
    let body = out
        .strip_prefix("---\n")
        .or_else(|| out.strip_prefix("--- "))
        .unwrap_or(&out);
    Ok(format!("{body}\n"))
}

#[cfg(test)]
mod emit_tests {
    /// Mappings, lists and scalars come out as block YAML that parses back the same.
    #[test]
    fn yaml_text_round_trips() {
        let value = serde_json::json!({
            "services": {"db": {"image": "postgres:15", "ports": ["5432:5432"], "restart": true}},
            "n": 3, "x": 1.5, "none": null, "quoted": "yes"
        });
        let text = super::to_yaml_text(&value).unwrap();
        assert!(text.contains("services:\n  db:\n"), "{text}");
        assert!(
            text.starts_with("\"n\": 3\n"),
            "keys sorted, `n` quoted: {text}"
        );
        let back = super::parse_one(&text).unwrap().to_value();
        assert_eq!(back.get_attr("n").unwrap().to_string(), "3");
        assert_eq!(
            back.get_attr("quoted").unwrap().as_str(),
            Some("yes"),
            "a YAML 1.1 boolean word stays a string: {text}"
        );
        let scalar = super::to_yaml_text(&serde_json::json!("plain")).unwrap();
        assert_eq!(scalar, "plain\n");
    }
}
