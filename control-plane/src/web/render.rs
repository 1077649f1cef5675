//! Templates: handlebars in strict mode, embedded in the binary at build time and
//! rendered through [`Render::render`]. Every page renders inside the shell
//! (`shell.hbs`, through [`Render::page`]), whose navigation comes from the policy
//! function.

use handlebars::{handlebars_helper, Handlebars};
use rust_embed::RustEmbed;
use serde_json::Value;

#[derive(RustEmbed)]
#[folder = "../web/templates/"]
struct Templates;

/// The keys the shell reads (its context contract, `shell.hbs`).
pub const SHELL_KEYS: [&str; 6] = ["title", "user", "nav", "csrf", "flash", "unread"];

/// The template registry.
pub struct Render {
    hb: Handlebars<'static>,
}

handlebars_helper!(money: |v: Value| match v.as_f64() {
    // `+ 0.0` turns the -0.0 of an empty float sum into 0.0.
    Some(n) => format!("{:.2}", n + 0.0),
    None => String::from("—"),
});

handlebars_helper!(datetime: |v: Value| match v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
    Some(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string(),
    None => String::from("—"),
});

handlebars_helper!(json: |v: Value| serde_json::to_string(&v).unwrap_or_default());

// `{{field values "name"}}`: a key of an object, or null when absent. Form templates
// use it for values and errors, which hold only the fields that have something to say.
handlebars_helper!(field: |obj: Value, key: str| obj.get(key).cloned().unwrap_or(Value::Null));

handlebars_helper!(contains: |list: Value, item: Value| list.as_array().is_some_and(|l| l.contains(&item)));

impl Render {
    /// Loads every embedded template; fails on a template that does not parse.
    pub fn new() -> anyhow::Result<Render> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_embed_templates_with_extension::<Templates>(".hbs")
            .map_err(|e| anyhow::anyhow!("loading templates: {e}"))?;
        hb.register_helper("money", Box::new(money));
        hb.register_helper("datetime", Box::new(datetime));
        hb.register_helper("json", Box::new(json));
        hb.register_helper("contains", Box::new(contains));
        hb.register_helper("field", Box::new(field));
        Ok(Render { hb })
    }

    /// Renders a page: its own template with `data`, then the shell around it with the
    /// shell's keys taken from `data` ([`SHELL_KEYS`], each must be present) and the
    /// page's HTML as `body`. The page's data is never copied: a partial block would
    /// have made handlebars clone it whole (100 server rows) on every page load.
    pub fn page(&self, name: &str, data: serde_json::Map<String, Value>) -> anyhow::Result<String> {
        let mut shell = serde_json::Map::new();
        for key in SHELL_KEYS {
            let value = data
                .get(key)
                .ok_or_else(|| anyhow::anyhow!("rendering {name}: the shell needs {key:?}"))?;
            shell.insert(key.to_string(), value.clone());
        }
        let body = self.render(name, Value::Object(data))?;
        shell.insert("body".into(), Value::String(body));
        self.render("shell", Value::Object(shell))
    }

    /// Renders a template with a context. The value moves into handlebars' context:
    /// `Handlebars::render` takes a reference and serializes it into a new value first,
    /// a deep copy of every map and string of the page's data on every page load.
    pub fn render(&self, name: &str, ctx: Value) -> anyhow::Result<String> {
        self.hb
            .render_with_context(name, &handlebars::Context::from(ctx))
            .map_err(|e| anyhow::anyhow!("rendering {name}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shell_context() -> serde_json::Map<String, Value> {
        let Value::Object(map) = json!({
            "title": "Servers",
            "user": {"username": "sohila", "role": "technical", "is_manager": false},
            "nav": [],
            "csrf": "token-1",
            "flash": null,
            "unread": 2,
        }) else {
            unreachable!()
        };
        map
    }

    /// A page renders with its own data inside the shell, which sees only its keys;
    /// the page's HTML goes in as it is (escaped once, by the page's template).
    #[test]
    fn pages_render_inside_the_shell() {
        let render = Render::new().unwrap();
        let mut data = shell_context();
        data.insert("status".into(), json!(404));
        data.insert("message".into(), json!("no <such> page"));
        let html = render.page("error", data).unwrap();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("<title>Servers · Dynamic Servers</title>"));
        assert!(html.contains("no &lt;such&gt; page"), "{html}");
        assert!(!html.contains("&amp;lt;"), "escaped twice: {html}");
        assert!(html.contains("data-unread=\"2\""), "{html}");
        let main = html.find("<main").unwrap();
        assert!(
            html[main..].contains("no &lt;such&gt; page"),
            "inside <main>"
        );

        let mut missing = shell_context();
        missing.remove("csrf");
        missing.insert("status".into(), json!(404));
        missing.insert("message".into(), json!("gone"));
        let err = render.page("error", missing).unwrap_err().to_string();
        assert!(err.contains("\"csrf\""), "{err}");
    }
}
