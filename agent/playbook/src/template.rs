//! Jinja2 templating with Ansible's semantics, on top of minijinja.
//!
//! * Undefined variables are errors (strict mode), as in Ansible.
//! * A string that is exactly one `{{ expression }}` evaluates to the expression's native
//!   value (a list stays a list); anything else renders to a string (ansible-core 2.19).
//! * Conditionals (`when`, `changed_when`, `failed_when`, `assert.that`) are bare
//!   expressions that must evaluate to a boolean.
//! * Variables are templated lazily when read, so `a: "{{ b }}/x"` sees `b`'s final value,
//!   whatever the order in which the variables were defined.
//! * The Ansible filters, tests and lookups that real playbooks use are registered here
//!   (see `filters`).
//!
//! What does not live here: where variables come from and their precedence (`engine`).

use super::chained;
use super::filters;
use minijinja::value::ValueKind;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Ansible's `omit` placeholder: a module argument whose value is this string is dropped.
pub const OMIT: &str = "__omit_place_holder__dynserv";

/// Errors raised while templating.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// A variable or attribute used by the template is not defined.
    #[error("{message}")]
    Undefined {
        /// Ansible-style description such as `'foo' is undefined`.
        message: String,
    },
    /// The template has a syntax error or failed while rendering.
    #[error("template error while templating string: {message}. String: {source_text}")]
    Render {
        /// What went wrong.
        message: String,
        /// The template text.
        source_text: String,
    },
    /// A conditional evaluated to something other than a boolean.
    #[error("Conditional result ({value}) was derived from value of type '{type_name}' at '{expression}'. Conditionals must have a boolean result.")]
    NotBoolean {
        /// The conditional expression.
        expression: String,
        /// The truth of the value it produced (`True`/`False`, as Python's `bool`).
        value: String,
        /// The Python-style type name of that value.
        type_name: String,
    },
}

/// The templating engine of one playbook run.
pub struct Templar {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templar")
    }
}

/// Whether a string contains Jinja2 markup and therefore needs templating.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Wraps a `!unsafe` string so that templating yields it verbatim.
pub fn unsafe_string(text: &str) -> Value {
    if is_template(text) && !text.contains("endraw") {
        Value::from(format!("{{% raw %}}{text}{{% endraw %}}"))
    } else {
        Value::from(text)
    }
}

/// Doubles backslashes inside string literals of `{{ }}` expressions, as Ansible does for
/// templates written in YAML: `regex_replace('(a)', '\\1')` means a backreference there,
/// not an octal escape, because YAML already processed the escapes once.
pub fn escape_backslashes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\\') || !text.contains("{{") {
        return std::borrow::Cow::Borrowed(text);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_var = false;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if !in_var {
            if c == '{' && next == Some('{') {
                in_var = true;
                out.push_str("{{");
                i += 2;
                continue;
            }
            out.push(c);
        } else if let Some(q) = quote {
            if c == '\\' {
                out.push_str("\\\\");
                if let Some(n) = next {
                    if n == q {
                        out.push(n);
                        i += 1;
                    }
                }
            } else {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
            out.push(c);
        } else if c == '}' && next == Some('}') {
            in_var = false;
            out.push_str("}}");
            i += 2;
            continue;
        } else {
            out.push(c);
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// If `text` is exactly one `{{ expression }}`, the expression.
fn single_expression(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    let inner = trimmed.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") || inner.contains("{#")
    {
        return None;
    }
    // Whitespace around the expression is kept by Jinja2 only in string mode.
    if trimmed.len() != text.len() {
        return None;
    }
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    Some(inner)
}

/// The Python type name Ansible would print for a value.
pub fn python_type_name(value: &Value) -> &'static str {
    match value.kind() {
        ValueKind::Undefined => "AnsibleUndefined",
        ValueKind::None => "NoneType",
        ValueKind::Bool => "bool",
        ValueKind::Number => {
            if value.is_integer() {
                "int"
            } else {
                "float"
            }
        }
        ValueKind::String => "str",
        ValueKind::Bytes => "bytes",
        ValueKind::Seq | ValueKind::Iterable => "list",
        ValueKind::Map => "dict",
        _ => "object",
    }
}

impl Templar {
    /// Creates the engine; `base_dir` is where relative `lookup('file', ...)` paths start.
    pub fn new(base_dir: PathBuf) -> Arc<Templar> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Ansible's environment: trim_blocks on, trailing newlines kept.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .keep_trailing_newline(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Ansible's finalize: a None printed into text renders as nothing ("a={{ x }}"
        // with x null is "a="), while a None inside a list still shows as None.
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        filters::register(&mut env, base_dir);
        env.add_global("omit", Value::from(OMIT));
        env.add_function(chained::CHAIN_FUNCTION, chained::chain_lookup);
        Arc::new(Templar { env })
    }

    /// The underlying minijinja environment.
    pub fn environment(&self) -> &Environment<'static> {
        &self.env
    }

    /// Builds a lazily templated variable context from raw variables.
    pub fn context(self: &Arc<Self>, vars: HashMap<String, Value>) -> Value {
        self.context_with_hostvars(vars, Arc::new(Vec::new()))
    }

    /// Like [`Templar::context`], with the `hostvars` of other hosts beside this one's
    /// (`hostvars[inventory_hostname]` is always this very context).
    pub fn context_with_hostvars(
        self: &Arc<Self>,
        vars: HashMap<String, Value>,
        other_hosts: Arc<Vec<(String, Value)>>,
    ) -> Value {
        Value::from_object(LazyVars {
            templar: Arc::clone(self),
            raw: vars,
            other_hosts,
            cache: Mutex::new(HashMap::new()),
            resolving: Mutex::new(HashSet::new()),
        })
    }

    /// Templates a value recursively: strings are rendered, lists and dicts walked.
    pub fn template(&self, value: &Value, ctx: &Value) -> Result<Value, TemplateError> {
        match value.kind() {
            ValueKind::String => match value.as_str() {
                Some(text) if is_template(text) => self.template_str(text, ctx),
                _ => Ok(value.clone()),
            },
            ValueKind::Seq => {
                let mut out = Vec::new();
                for item in value.try_iter().map_err(|e| self.render_error(e, ""))? {
                    out.push(self.template(&item, ctx)?);
                }
                Ok(Value::from(out))
            }
            ValueKind::Map => {
                let mut out = Vec::new();
                for key in value.try_iter().map_err(|e| self.render_error(e, ""))? {
                    let item = value.get_item(&key).map_err(|e| self.render_error(e, ""))?;
                    let key = self.template(&key, ctx)?;
                    out.push((key, self.template(&item, ctx)?));
                }
                Ok(Value::from_pairs(out))
            }
            _ => Ok(value.clone()),
        }
    }

    /// Templates one string; a single expression keeps its native type.
    pub fn template_str(&self, text: &str, ctx: &Value) -> Result<Value, TemplateError> {
        if !is_template(text) {
            return Ok(Value::from(text));
        }
        let escaped = escape_backslashes(text);
        if let Some(expression) = single_expression(&escaped) {
            return self.eval_expression(expression, text, ctx);
        }
        self.render_text(&escaped, ctx).map(Value::from)
    }

    /// Renders a template to text (the `template` module and multi-part strings).
    pub fn render_text(&self, text: &str, ctx: &Value) -> Result<String, TemplateError> {
        self.env
            .render_str(&chained::rewrite_template(text), ctx.clone())
            .map_err(|e| self.explain(e, text, ctx))
    }

    /// Evaluates a bare expression such as a `when` condition.
    pub fn eval_expression(
        &self,
        expression: &str,
        source_text: &str,
        ctx: &Value,
    ) -> Result<Value, TemplateError> {
        let rewritten = chained::rewrite_expression(expression);
        let compiled = self
            .env
            .compile_expression(&rewritten)
            .map_err(|e| self.render_error(e, source_text))?;
        let value = compiled
            .eval(ctx.clone())
            .map_err(|e| self.explain(e, source_text, ctx))?;
        if value.is_undefined() {
            return Err(self.undefined_error(expression, ctx));
        }
        Ok(value)
    }

    /// Evaluates a conditional (`when`, `failed_when`, `assert.that` entries).
    pub fn condition(&self, condition: &Value, ctx: &Value) -> Result<bool, TemplateError> {
        let expression = match condition.kind() {
            ValueKind::Bool => return Ok(condition.is_true()),
            ValueKind::None => return Ok(false),
            ValueKind::String => condition.as_str().unwrap_or_default().to_string(),
            _ => {
                return Err(TemplateError::NotBoolean {
                    expression: condition.to_string(),
                    value: condition.to_string(),
                    type_name: python_type_name(condition).into(),
                })
            }
        };
        let trimmed = expression.trim();
        let bare = single_expression(trimmed).unwrap_or(trimmed);
        if bare.trim().is_empty() {
            return Ok(false);
        }
        let value = if is_template(bare) {
            self.template_str(bare, ctx)?
        } else {
            let wrapped = format!("{{{{ {bare} }}}}");
            let escaped = escape_backslashes(&wrapped);
            let inner = single_expression(&escaped).unwrap_or(bare);
            self.eval_expression(inner, &expression, ctx)?
        };
        match value.kind() {
            ValueKind::Bool => Ok(value.is_true()),
            // ansible-core 2.19 names the value's truth (`Conditional result (True)`).
            _ => Err(TemplateError::NotBoolean {
                expression: expression.clone(),
                value: if value.is_true() { "True" } else { "False" }.into(),
                type_name: python_type_name(&value).into(),
            }),
        }
    }

    fn render_error(&self, error: minijinja::Error, source_text: &str) -> TemplateError {
        TemplateError::Render {
            message: describe(&error),
            source_text: source_text.to_string(),
        }
    }

    /// Turns a minijinja error into Ansible's wording, naming the undefined variable.
    fn explain(&self, error: minijinja::Error, source_text: &str, ctx: &Value) -> TemplateError {
        if error.kind() == ErrorKind::UndefinedError {
            // A variable whose own template failed already says which name is undefined.
            if let Some(detail) = error.detail().filter(|d| is_undefined_message(d)) {
                return TemplateError::Undefined {
                    message: detail.to_string(),
                };
            }
            if let Ok(template) = self.env.template_from_str(source_text) {
                let mut names: Vec<String> =
                    template.undeclared_variables(false).into_iter().collect();
                names.sort();
                for name in names {
                    let known = ctx
                        .get_attr(&name)
                        .map(|v| !v.is_undefined())
                        .unwrap_or(false)
                        || self.env.globals().any(|(global, _)| global == name);
                    if !known {
                        return TemplateError::Undefined {
                            message: format!("'{name}' is undefined"),
                        };
                    }
                }
            }
            if let Some(message) = self.missing_attribute(source_text, ctx) {
                return TemplateError::Undefined { message };
            }
            return TemplateError::Undefined {
                message: format!("{}. String: {source_text}", describe(&error)),
            };
        }
        self.render_error(error, source_text)
    }

    /// Finds the first `a.b.c` path in the template whose last step is missing and says so
    /// the way Jinja2 does: `object of type 'dict' has no attribute 'c'`.
    fn missing_attribute(&self, source_text: &str, ctx: &Value) -> Option<String> {
        static PATH: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
        let re = PATH
            .get_or_init(|| {
                regex::Regex::new(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+").ok()
            })
            .as_ref()?;
        for found in re.find_iter(source_text) {
            let parts: Vec<&str> = found.as_str().split('.').collect();
            let mut current = ctx.get_attr(parts[0]).ok().filter(|v| !v.is_undefined())?;
            for part in &parts[1..] {
                let next = current.get_attr(part).ok().filter(|v| !v.is_undefined());
                match next {
                    Some(v) => current = v,
                    None => {
                        return Some(format!(
                            "object of type '{}' has no attribute '{part}'",
                            python_type_name(&current)
                        ))
                    }
                }
            }
        }
        None
    }

    fn undefined_error(&self, expression: &str, ctx: &Value) -> TemplateError {
        let text = format!("{{{{ {expression} }}}}");
        match self.explain(
            minijinja::Error::new(ErrorKind::UndefinedError, "undefined value"),
            &text,
            ctx,
        ) {
            TemplateError::Undefined { message } => TemplateError::Undefined { message },
            other => other,
        }
    }
}

/// Whether an error detail is one of our Ansible-worded undefined messages.
fn is_undefined_message(detail: &str) -> bool {
    (detail.starts_with('\'') && detail.ends_with("' is undefined"))
        || (detail.starts_with("object of type '") && detail.contains("' has no attribute '"))
}

/// A readable description of a minijinja error, including its cause chain.
fn describe(error: &minijinja::Error) -> String {
    let mut message = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// Renders a value like Python's `repr()` (for messages).
pub fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => python_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::None => "None".into(),
        _ => value.to_string(),
    }
}

/// Python's `repr()` of a string: single quotes unless the text holds a single quote
/// and no double one, and backslash escapes for the quote, backslash, newline, carriage
/// return, tab and (as `\xNN`) other control characters.
pub fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa1).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Variables that are templated when first read and then cached.
#[derive(Debug)]
struct LazyVars {
    templar: Arc<Templar>,
    raw: HashMap<String, Value>,
    /// `hostvars` of the inventory's other hosts.
    other_hosts: Arc<Vec<(String, Value)>>,
    cache: Mutex<HashMap<String, Value>>,
    resolving: Mutex<HashSet<String>>,
}

fn needs_templating(value: &Value) -> bool {
    match value.kind() {
        ValueKind::String => value.as_str().is_some_and(is_template),
        ValueKind::Seq | ValueKind::Map => value
            .try_iter()
            .map(|mut items| {
                items.any(|item| {
                    if value.kind() == ValueKind::Map {
                        needs_templating(&item)
                            || value
                                .get_item(&item)
                                .map(|v| needs_templating(&v))
                                .unwrap_or(false)
                    } else {
                        needs_templating(&item)
                    }
                })
            })
            .unwrap_or(false),
        _ => false,
    }
}

impl Object for LazyVars {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if name == "vars" {
            return Some(Value::from_dyn_object(Arc::clone(self)));
        }
        if name == "hostvars" && !self.raw.contains_key("hostvars") {
            // hostvars[inventory_hostname] is this very context.
            let host = self
                .raw
                .get("inventory_hostname")
                .cloned()
                .unwrap_or(Value::from("localhost"));
            let others = self
                .other_hosts
                .iter()
                .map(|(name, vars)| (Value::from(name.as_str()), vars.clone()));
            return Some(Value::from_pairs(
                others.chain([(host, Value::from_dyn_object(Arc::clone(self)))]),
            ));
        }
        let raw = self.raw.get(name)?;
        if !needs_templating(raw) {
            return Some(raw.clone());
        }
        if let Some(hit) = self.cache.lock().ok()?.get(name) {
            return Some(hit.clone());
        }
        if !self.resolving.lock().ok()?.insert(name.to_string()) {
            return Some(Value::from(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("recursive loop detected in template string for variable '{name}'"),
            )));
        }
        let ctx = Value::from_dyn_object(Arc::clone(self));
        let result = self.templar.template(raw, &ctx);
        if let Ok(mut resolving) = self.resolving.lock() {
            resolving.remove(name);
        }
        match result {
            Ok(value) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(name.to_string(), value.clone());
                }
                Some(value)
            }
            Err(TemplateError::Undefined { message }) => Some(Value::from(minijinja::Error::new(
                ErrorKind::UndefinedError,
                message,
            ))),
            Err(error) => Some(Value::from(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                error.to_string(),
            ))),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: Vec<Value> = self.raw.keys().map(|k| Value::from(k.as_str())).collect();
        keys.sort();
        Enumerator::Values(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(templar: &Arc<Templar>, pairs: &[(&str, Value)]) -> Value {
        templar.context(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn check(expr: &str, expected: Value) {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(
            &templar,
            &[
                ("name", Value::from("web")),
                ("items", Value::from(vec![1, 2, 3])),
                ("path", Value::from("{{ root }}/etc")),
                ("root", Value::from("/srv")),
                ("flag", Value::from("yes")),
            ],
        );
        let got = templar
            .template_str(expr, &vars)
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(got, expected, "template {expr:?}");
    }

    /// Single expressions keep native types; mixed strings render to text.
    #[test]
    fn native_and_string_rendering() {
        check("{{ items }}", Value::from(vec![1, 2, 3]));
        check("{{ items | length }}", Value::from(3));
        check("n={{ items | length }}", Value::from("n=3"));
        check("{{ path }}", Value::from("/srv/etc"));
        check("plain", Value::from("plain"));
        check("{{ flag | bool }}", Value::from(true));
        check("{{ 'abc' | regex_replace('b', 'X') }}", Value::from("aXc"));
        check(
            "{{ 'ab' | regex_replace('(a)(b)', '\\2\\1') }}",
            Value::from("ba"),
        );
    }

    /// None printed into text renders as nothing, like Ansible's finalize; a lone
    /// expression stays None and a None inside a list still prints as None.
    #[test]
    fn none_renders_empty_in_text() {
        check("{{ none }}", Value::from(()));
        check("a={{ none }}.", Value::from("a=."));
        check("{{ [none] }} x", Value::from("[None] x"));
    }

    /// `vars` and `hostvars[inventory_hostname]` reach the same variables.
    #[test]
    fn vars_and_hostvars() {
        check("{{ vars['name'] }}", Value::from("web"));
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(
            &templar,
            &[
                ("inventory_hostname", Value::from("h1")),
                ("x", Value::from(1)),
            ],
        );
        assert_eq!(
            templar.template_str("{{ hostvars['h1'].x }}", &vars),
            Ok(Value::from(1))
        );
    }

    /// Undefined variables are errors that name the variable.
    #[test]
    fn undefined_is_an_error() {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(&templar, &[]);
        let err = templar
            .template_str("x {{ missing }}", &vars)
            .expect_err("undefined");
        assert_eq!(err.to_string(), "'missing' is undefined");
        let err = templar
            .template_str("{{ missing }}", &vars)
            .expect_err("undefined");
        assert_eq!(err.to_string(), "'missing' is undefined");
        assert_eq!(
            templar.template_str("{{ missing | default('d') }}", &vars),
            Ok(Value::from("d"))
        );
    }

    /// An attribute of an undefined value is undefined for `default` and `is defined`, as
    /// in Ansible, and still an error naming the variable when used.
    #[test]
    fn chained_undefined() {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(&templar, &[("d", Value::from_pairs([("a", 1)]))]);
        let text = |t: &str| templar.template_str(t, &vars).map(|v| v.to_string());
        assert_eq!(text("{{ missing.attr | default('d') }}"), Ok("d".into()));
        assert_eq!(text("{{ missing['k'] | default(1) }}"), Ok("1".into()));
        assert_eq!(text("{{ (missing.a.b) | default('p') }}"), Ok("p".into()));
        assert_eq!(text("x{{ missing.attr | d('x') }}"), Ok("xx".into()));
        assert_eq!(text("{{ d.x.y | default('z') }}"), Ok("z".into()));
        assert_eq!(text("{{ d.a | default('z') }}"), Ok("1".into()));
        assert_eq!(
            text("{{ missing.attr is defined }} {{ missing.attr is undefined }}"),
            Ok("False True".into())
        );
        assert_eq!(
            templar.condition(&Value::from("missing.a is not defined"), &vars),
            Ok(true)
        );
        let err = templar
            .template_str("{{ missing.attr }}", &vars)
            .expect_err("undefined");
        assert_eq!(err.to_string(), "'missing' is undefined");
        let err = templar
            .template_str("{{ d.x.y }}", &vars)
            .expect_err("undefined");
        assert_eq!(
            err.to_string(),
            "object of type 'dict' has no attribute 'x'"
        );
    }

    /// A variable whose template uses an undefined name reports that name.
    #[test]
    fn nested_undefined_names_the_variable() {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(&templar, &[("a", Value::from("{{ nope }}"))]);
        let err = templar
            .template_str("{{ a }}", &vars)
            .expect_err("undefined");
        assert_eq!(err.to_string(), "'nope' is undefined");
    }

    /// Conditions must be booleans, `{{ }}` wrappers are tolerated.
    #[test]
    fn conditions() {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(
            &templar,
            &[("n", Value::from(3)), ("s", Value::from("text"))],
        );
        let cond = |c: &str| templar.condition(&Value::from(c), &vars);
        assert_eq!(cond("n > 2"), Ok(true));
        assert_eq!(cond("{{ n == 2 }}"), Ok(false));
        assert_eq!(cond("missing is defined"), Ok(false));
        assert_eq!(cond("s is match('te')"), Ok(true));
        assert!(matches!(cond("s"), Err(TemplateError::NotBoolean { .. })));
        assert_eq!(templar.condition(&Value::from(true), &vars), Ok(true));
    }

    /// A variable that refers to itself is reported instead of overflowing the stack.
    #[test]
    fn recursive_variable_is_an_error() {
        let templar = Templar::new(PathBuf::from("/"));
        let vars = ctx(&templar, &[("a", Value::from("{{ a }}"))]);
        assert!(templar.template_str("{{ a }}", &vars).is_err());
    }
}
