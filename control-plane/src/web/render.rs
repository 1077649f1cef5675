//! Templates: handlebars in strict mode, embedded in the binary at build time and
//! rendered through [`Render::render`]. Every page goes through the shell partial
//! (`partials/shell`), whose navigation comes from the policy function.

use handlebars::{handlebars_helper, Handlebars};
use rust_embed::RustEmbed;
use serde_json::Value;

#[derive(RustEmbed)]
#[folder = "../web/templates/"]
struct Templates;

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

    /// Renders a template with a context. The value moves into handlebars' context:
    /// `Handlebars::render` takes a reference and serializes it into a new value first,
    /// a deep copy of every map and string of the page's data on every page load.
    pub fn render(&self, name: &str, ctx: Value) -> anyhow::Result<String> {
        self.hb
            .render_with_context(name, &handlebars::Context::from(ctx))
            .map_err(|e| anyhow::anyhow!("rendering {name}: {e}"))
    }
}
