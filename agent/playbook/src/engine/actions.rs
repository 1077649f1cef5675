//! Built-in actions that run in the engine rather than as modules because they read or
//! change the run's own state: `meta`, `debug`, `set_fact`, `assert`, `include_vars`,
//! `template` (rendered with the play's variables) and `pause`.

use super::*;

impl Runner<'_> {
    pub(super) fn run_meta(&mut self, args: &Value, scope: &Inherited) {
        let action = arg_str(args, "_raw_params").unwrap_or_default();
        let ctx = self.context(scope, &[]);
        if !scope.when.is_empty() {
            let run = scope
                .when
                .iter()
                .all(|c| self.templar.condition(c, &ctx).unwrap_or(false));
            if !run {
                return;
            }
        }
        match action.trim() {
            "flush_handlers" => self.flush_handlers(),
            "end_play" | "end_host" | "end_batch" => self.end_play = true,
            "clear_facts" => {
                self.facts = None;
                self.module_facts.clear();
            }
            "clear_host_errors" => {}
            _ => {}
        }
    }

    pub(super) fn action_debug(&self, args: &Value, ctx: &Value) -> Outcome {
        let verbosity = args
            .get_attr("verbosity")
            .ok()
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        if verbosity > 0 {
            return Outcome::new()
                .with("skipped", true)
                .with("skipped_reason", "Verbosity threshold not met.");
        }
        let mut outcome = Outcome::default();
        if let Some(var) = arg_str(args, "var") {
            let value = match self.templar.template_str(&format!("{{{{ {var} }}}}"), ctx) {
                Ok(v) => v,
                Err(TemplateError::Undefined { .. }) => Value::from("VARIABLE IS NOT DEFINED!"),
                Err(e) => Value::from(e.to_string()),
            };
            outcome.set(&var, value);
        } else {
            let msg = args
                .get_attr("msg")
                .ok()
                .filter(|v| !v.is_undefined())
                .unwrap_or(Value::from("Hello world!"));
            outcome.set("msg", msg);
        }
        outcome.set("changed", false);
        outcome.set("_ansible_verbose_always", true);
        outcome.set("_ansible_debug", true);
        outcome
    }

    pub(super) fn action_set_fact(&mut self, args: &Value) -> Outcome {
        let mut facts = Vec::new();
        if let Ok(keys) = args.try_iter() {
            for key in keys {
                let Some(name) = key.as_str() else { continue };
                if name == "cacheable" {
                    continue;
                }
                let value = args.get_item(&key).unwrap_or_default();
                facts.push((name.to_string(), value));
            }
        }
        if facts.is_empty() {
            return Outcome::failed(
                "No key/value pairs provided, at least one is required for this action to succeed",
            );
        }
        for (k, v) in &facts {
            self.set_host_var(k, v.clone());
        }
        Outcome::new().with("ansible_facts", Value::from_pairs(facts))
    }

    pub(super) fn action_assert(&self, args: &Value, ctx: &Value) -> Outcome {
        let that = args.get_attr("that").unwrap_or_default();
        let conditions: Vec<Value> = match that.kind() {
            ValueKind::Seq => that.try_iter().map(|i| i.collect()).unwrap_or_default(),
            ValueKind::Undefined | ValueKind::None => {
                return Outcome::failed("conditional required in \"that\" string");
            }
            _ => vec![that],
        };
        let quiet = args
            .get_attr("quiet")
            .ok()
            .and_then(|v| modules::parse_bool(&v))
            .unwrap_or(false);
        for condition in conditions {
            match self.templar.condition(&condition, ctx) {
                Ok(true) => {}
                Ok(false) => {
                    let msg = args
                        .get_attr("fail_msg")
                        .ok()
                        .filter(|v| !v.is_undefined() && !v.is_none())
                        .or_else(|| {
                            args.get_attr("msg")
                                .ok()
                                .filter(|v| !v.is_undefined() && !v.is_none())
                        })
                        .unwrap_or(Value::from("Assertion failed"));
                    let msg = self.templar.template(&msg, ctx).unwrap_or(msg);
                    return Outcome::default()
                        .with("assertion", condition.clone())
                        .with("changed", false)
                        .with("evaluated_to", false)
                        .with("failed", true)
                        .with("msg", msg);
                }
                Err(e) => {
                    return Outcome::failed(format!(
                        "The conditional check '{}' failed. The error was: {e}",
                        modules::value_to_string(&condition)
                    ))
                }
            }
        }
        let success = args
            .get_attr("success_msg")
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
            .unwrap_or(Value::from("All assertions passed"));
        let success = self.templar.template(&success, ctx).unwrap_or(success);
        let mut outcome = Outcome::new().with("msg", success);
        if !quiet {
            outcome.set("_ansible_verbose_always", true);
        }
        outcome
    }

    pub(super) fn action_include_vars(&mut self, scope: &Inherited, args: &Value) -> Outcome {
        let Some(file) = arg_str(args, "_raw_params").or_else(|| arg_str(args, "file")) else {
            return Outcome::failed("include_vars: 'file' (or a free-form file name) is required; 'dir' is not supported");
        };
        let path = self.resolve_local(scope, &file, "vars");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(format!("Could not find or access '{file}': {e}")),
        };
        let value = match crate::yaml::parse_one(&text) {
            Ok(node) => node.to_value(),
            Err(e) => return Outcome::failed(format!("{}: {e}", path.display())),
        };
        let mut facts = Vec::new();
        if let Some(name) = arg_str(args, "name") {
            facts.push((name, value));
        } else if let Ok(keys) = value.try_iter() {
            for key in keys {
                if let (Some(k), Ok(v)) = (key.as_str(), value.get_item(&key)) {
                    facts.push((k.to_string(), v));
                }
            }
        }
        for (k, v) in &facts {
            self.set_host_var(k, v.clone());
        }
        Outcome::new()
            .with("ansible_facts", Value::from_pairs(facts))
            .with(
                "ansible_included_var_files",
                Value::from(vec![path.display().to_string()]),
            )
    }

    pub(super) fn action_template(
        &self,
        scope: &Inherited,
        args: &Value,
        ctx: &Value,
        mctx: &ModuleContext,
        become_: Option<&Become>,
    ) -> Outcome {
        let Some(src) = arg_str(args, "src") else {
            return Outcome::failed("src and dest are required");
        };
        let Some(dest) = arg_str(args, "dest") else {
            return Outcome::failed("src and dest are required");
        };
        let path = self.resolve_local(scope, &src, "templates");
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(_) => return Outcome::failed(format!("Could not find or access '{src}'")),
        };
        let lstrip = arg_str(args, "lstrip_blocks")
            .and_then(|v| modules::parse_bool(&Value::from(v)))
            .unwrap_or(false);
        let trim = arg_str(args, "trim_blocks")
            .and_then(|v| modules::parse_bool(&Value::from(v)))
            .unwrap_or(true);
        let rendered =
            match render_template_file(&self.templar, &source, ctx, &path, &dest, lstrip, trim) {
                Ok(r) => r,
                Err(e) => return Outcome::failed(format!("{e}")),
            };
        let rendered = match arg_str(args, "newline_sequence").as_deref() {
            Some("\\r\\n") => rendered.replace('\n', "\r\n"),
            _ => rendered,
        };
        let mut module_args = args.clone();
        for key in [
            "src",
            "lstrip_blocks",
            "trim_blocks",
            "newline_sequence",
            "output_encoding",
            "variable_start_string",
            "variable_end_string",
            "block_start_string",
            "block_end_string",
            "comment_start_string",
            "comment_end_string",
        ] {
            module_args = strip_key(&module_args, key);
        }
        module_args = files::with_arg(&module_args, "content", Value::from(rendered));
        let mut outcome = self.run_module("copy", &module_args, mctx, become_);
        if !outcome.is_failed() {
            // ansible-core names its rendered copy of the template (a temporary file);
            // the template itself says more.
            files::set_after_header(&mut outcome, &path.display().to_string());
            outcome.set("src", path.display().to_string());
        }
        outcome
    }
}

/// Templates module arguments, leaving `raw_keys` untouched and dropping `omit` values.
pub(super) fn template_args(
    templar: &Templar,
    args: &Value,
    ctx: &Value,
    raw_keys: &[&str],
) -> Result<Value, TemplateError> {
    let mut out = Vec::new();
    if let Ok(keys) = args.try_iter() {
        for key in keys {
            let value = args.get_item(&key).unwrap_or_default();
            let name = key.as_str().unwrap_or_default();
            let rendered = if raw_keys.contains(&name) {
                value
            } else {
                templar.template(&value, ctx)?
            };
            if rendered.as_str() == Some(OMIT) {
                continue;
            }
            out.push((key, drop_omitted(rendered)));
        }
    }
    Ok(Value::from_pairs(out))
}

pub(super) fn drop_omitted(value: Value) -> Value {
    match value.kind() {
        ValueKind::Map => {
            let mut pairs = Vec::new();
            if let Ok(keys) = value.try_iter() {
                for k in keys {
                    let v = value.get_item(&k).unwrap_or_default();
                    if v.as_str() != Some(OMIT) {
                        pairs.push((k, drop_omitted(v)));
                    }
                }
            }
            Value::from_pairs(pairs)
        }
        ValueKind::Seq => Value::from(
            value
                .try_iter()
                .map(|items| {
                    items
                        .filter(|v| v.as_str() != Some(OMIT))
                        .map(drop_omitted)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        ),
        _ => value,
    }
}

pub(super) fn render_template_file(
    templar: &Templar,
    source: &str,
    ctx: &Value,
    path: &Path,
    dest: &str,
    lstrip: bool,
    trim: bool,
) -> Result<String, TemplateError> {
    // Template-only variables are layered over the task context.
    let extra = [
        ("template_path", Value::from(path.display().to_string())),
        ("template_fullpath", Value::from(path.display().to_string())),
        ("template_destpath", Value::from(dest)),
        ("template_host", Value::from(crate::facts::nodename())),
        ("ansible_managed", Value::from("Ansible managed")),
    ];
    let ctx = Value::from_object(Overlay {
        base: ctx.clone(),
        extra: extra.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    });
    if lstrip || !trim {
        let mut env = templar.environment().clone();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(trim)
            .lstrip_blocks(lstrip)
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| TemplateError::Render {
                message: e.to_string(),
                source_text: path.display().to_string(),
            })?;
        env.set_syntax(syntax);
        return env
            .render_str(source, ctx)
            .map_err(|e| TemplateError::Render {
                message: e.to_string(),
                source_text: path.display().to_string(),
            });
    }
    templar.render_text(source, &ctx)
}

/// A context with a few extra variables on top of another context.
#[derive(Debug)]
pub(super) struct Overlay {
    base: Value,
    extra: Vec<(String, Value)>,
}

impl minijinja::value::Object for Overlay {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if let Some((_, v)) = self.extra.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.base.get_attr(name).ok().filter(|v| !v.is_undefined())
    }
}

pub(super) fn action_pause(args: &Value, check: bool) -> Outcome {
    let seconds = arg_str(args, "seconds")
        .and_then(|s| s.parse::<f64>().ok())
        .or_else(|| {
            arg_str(args, "minutes")
                .and_then(|m| m.parse::<f64>().ok())
                .map(|m| m * 60.0)
        });
    let Some(seconds) = seconds else {
        return Outcome::failed(
            "pause without seconds/minutes needs a terminal; runs are non-interactive",
        );
    };
    if !check || seconds > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds.max(0.0)));
    }
    Outcome::new()
        .with("delta", seconds as i64)
        .with("stdout", format!("Paused for {seconds} seconds"))
}
