//! Native implementations of Ansible modules.
//!
//! A module takes its (already templated) arguments and a [`ModuleContext`] and returns
//! an [`Outcome`]: the same result dict Ansible's module would return, including
//! `changed` and `failed`. Modules never see variables or templates; whatever needs them
//! (`debug`, `set_fact`, `assert`, `template` rendering, `include_vars`) is handled by
//! the engine as an "action", exactly like Ansible splits action plugins from modules.
//! That split also lets a module run in a child process under `sudo` for `become`: its
//! input and output are plain data.

pub mod alternatives;
pub mod apache;
pub mod apt_state;
pub mod command;
pub mod compose;
pub mod controller;
pub mod deb822;
pub mod docker;
pub mod exec;
pub mod files;
pub mod firewall;
pub mod host_facts;
pub mod lines;
pub mod locale;
pub mod more;
pub mod mount;
pub mod mysql;
pub mod net;
pub mod nodejs;
pub mod packages;
pub mod pamd;
pub mod php;
pub mod postgres;
pub mod reboot;
pub mod repos;
pub mod rpm;
pub mod selinux;
pub mod services;
pub mod snap;
pub mod system;
pub mod timezone;
pub mod users;

use minijinja::value::ValueKind;
use minijinja::Value;

/// How a module should behave.
#[derive(Debug, Clone, Default)]
pub struct ModuleContext {
    /// Check mode: report what would change, change nothing.
    pub check: bool,
    /// Diff mode: include `diff` in the result.
    pub diff: bool,
    /// Environment variables for commands the module runs.
    pub environment: Vec<(String, String)>,
    /// Host facts (for `package`/`service` backend selection).
    pub facts: Value,
}

/// A module result: an ordered dict of return values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    fields: Vec<(String, Value)>,
}

impl Outcome {
    /// An empty, unchanged result.
    pub fn new() -> Outcome {
        Outcome::default().with("changed", false)
    }

    /// A failed result with Ansible's `msg`.
    pub fn failed(msg: impl Into<String>) -> Outcome {
        Outcome::default()
            .with("changed", false)
            .with("failed", true)
            .with("msg", msg.into())
    }

    /// Sets a field and returns the result (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Outcome {
        self.set(key, value);
        self
    }

    /// Sets a field.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
    }

    /// Removes a field.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let index = self.fields.iter().position(|(k, _)| k == key)?;
        Some(self.fields.remove(index).1)
    }

    /// Reads a field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether the result reports a change.
    pub fn changed(&self) -> bool {
        self.get("changed").is_some_and(Value::is_true)
    }

    /// Whether the result reports a failure.
    pub fn is_failed(&self) -> bool {
        self.get("failed").is_some_and(Value::is_true)
    }

    /// Whether the result reports a skip.
    pub fn skipped(&self) -> bool {
        self.get("skipped").is_some_and(Value::is_true)
    }

    /// The result as a template value (for `register`).
    pub fn to_value(&self) -> Value {
        Value::from_pairs(self.fields.iter().map(|(k, v)| (k.clone(), v.clone())))
    }

    /// Rebuilds a result from a dict value.
    pub fn from_value(value: &Value) -> Outcome {
        let mut out = Outcome::default();
        if let Ok(keys) = value.try_iter() {
            for key in keys {
                if let (Some(name), Ok(item)) = (key.as_str(), value.get_item(&key)) {
                    out.set(name, item);
                }
            }
        }
        out
    }

    /// The fields in order.
    pub fn fields(&self) -> &[(String, Value)] {
        &self.fields
    }
}

/// Errors in module arguments; they become a failed result with Ansible's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgError {
    /// A required argument is missing.
    #[error("missing required arguments: {0}")]
    Missing(String),
    /// An argument has the wrong type or value.
    #[error("{0}")]
    Invalid(String),
    /// Arguments the module does not know.
    #[error("Unsupported parameters for ({module}) module: {names}. Supported parameters include: {supported}.")]
    Unsupported {
        /// The module.
        module: String,
        /// The unknown arguments.
        names: String,
        /// The known ones.
        supported: String,
    },
}

impl From<ArgError> for Outcome {
    fn from(e: ArgError) -> Outcome {
        Outcome::failed(e.to_string())
    }
}

/// Typed access to module arguments.
#[derive(Debug, Clone)]
pub struct Args {
    module: String,
    value: Value,
}

impl Args {
    /// Wraps a dict of arguments for `module`.
    pub fn new(module: &str, value: Value) -> Args {
        Args {
            module: module.to_string(),
            value,
        }
    }

    /// The raw dict.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Fails on arguments outside `supported` (common file arguments are always allowed).
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), ArgError> {
        const FILE_COMMON: &[&str] = &[
            "mode",
            "owner",
            "group",
            "seuser",
            "serole",
            "setype",
            "selevel",
            "unsafe_writes",
            "attributes",
            "attr",
        ];
        let mut unknown = Vec::new();
        if let Ok(keys) = self.value.try_iter() {
            for key in keys {
                let name = key.as_str().unwrap_or_default().to_string();
                if !supported.contains(&name.as_str())
                    && !FILE_COMMON.contains(&name.as_str())
                    && !name.starts_with('_')
                {
                    unknown.push(name);
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let mut all: Vec<&str> = supported.to_vec();
        all.sort_unstable();
        Err(ArgError::Unsupported {
            module: self.module.clone(),
            names: unknown.join(", "),
            supported: all.join(", "),
        })
    }

    /// The argument, if present and not null.
    pub fn get(&self, key: &str) -> Option<Value> {
        let v = self.value.get_attr(key).ok()?;
        if v.is_undefined() || v.is_none() {
            None
        } else {
            Some(v)
        }
    }

    /// Whether the argument is present.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string argument (numbers and booleans are converted like Ansible's `str` type).
    pub fn str(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| value_to_string(&v))
    }

    /// A required string argument.
    pub fn required(&self, key: &str) -> Result<String, ArgError> {
        self.str(key)
            .ok_or_else(|| ArgError::Missing(key.to_string()))
    }

    /// Fails unless every one of `keys` is present, naming all the missing ones (sorted,
    /// like Ansible's `check_required_arguments`).
    pub fn require_all(&self, keys: &[&str]) -> Result<(), ArgError> {
        let mut missing: Vec<&str> = keys.iter().copied().filter(|k| !self.has(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        Err(ArgError::Missing(missing.join(", ")))
    }

    /// The first present argument among aliases.
    pub fn str_any(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| self.str(k))
    }

    /// A boolean argument with Ansible's conversion.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ArgError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| {
                ArgError::Invalid(format!(
                    "argument '{key}' is of type {} and we were unable to convert to bool: The value '{v}' is not a valid boolean.",
                    super::template::python_type_name(&v)
                ))
            }),
        }
    }

    /// An integer argument.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ArgError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                if let Some(i) = v.as_i64() {
                    return Ok(Some(i));
                }
                value_to_string(&v)
                    .trim()
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| {
                        ArgError::Invalid(format!(
                            "argument '{key}' is of type {} and we were unable to convert to int",
                            super::template::python_type_name(&v)
                        ))
                    })
            }
        }
    }

    /// A float argument.
    pub fn float(&self, key: &str) -> Result<Option<f64>, ArgError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => value_to_string(&v)
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| {
                    ArgError::Invalid(format!("argument '{key}' could not be converted to float"))
                }),
        }
    }

    /// A list argument; a string is split on commas, like Ansible's `list` type.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(v) => value_to_list(&v),
        }
    }

    /// A choice among fixed values.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&str],
        default: Option<&str>,
    ) -> Result<Option<String>, ArgError> {
        match self.str(key) {
            None => Ok(default.map(String::from)),
            Some(v) if choices.contains(&v.as_str()) => Ok(Some(v)),
            Some(v) => Err(ArgError::Invalid(format!(
                "value of {key} must be one of: {}, got: {v}",
                choices.join(", ")
            ))),
        }
    }
}

/// Ansible's `boolean()` conversion; `None` for values that are not booleans.
pub fn parse_bool(value: &Value) -> Option<bool> {
    match value.kind() {
        ValueKind::Bool => Some(value.is_true()),
        ValueKind::Number => match value.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        ValueKind::String => match value
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_lowercase()
            .as_str()
        {
            "yes" | "on" | "1" | "true" | "y" | "t" => Some(true),
            "no" | "off" | "0" | "false" | "n" | "f" | "" => Some(false),
            _ => None,
        },
        ValueKind::None => Some(false),
        _ => None,
    }
}

/// Converts a value to text the way Ansible's `str` argument type does.
pub fn value_to_string(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::None => "None".to_string(),
        ValueKind::Seq | ValueKind::Map => super::filters::json_compact(value).unwrap_or_default(),
        _ => value.to_string(),
    }
}

/// Converts a value to a list of strings (comma-separated strings are split).
pub fn value_to_list(value: &Value) -> Vec<String> {
    match value.kind() {
        ValueKind::Seq => value
            .try_iter()
            .map(|items| items.map(|i| value_to_string(&i)).collect())
            .unwrap_or_default(),
        ValueKind::String => value
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ValueKind::None | ValueKind::Undefined => Vec::new(),
        _ => vec![value_to_string(value)],
    }
}

/// Runs a native module by canonical name.
pub fn run_module(name: &str, args: &Value, ctx: &ModuleContext) -> Outcome {
    let args = Args::new(name, args.clone());
    let result = match name {
        "command" | "shell" | "raw" => command::run(name, &args, ctx),
        "copy" => files::copy(&args, ctx),
        "file" => files::file(&args, ctx),
        "stat" => files::stat(&args, ctx),
        "slurp" => files::slurp(&args, ctx),
        "lineinfile" => lines::lineinfile(&args, ctx),
        "blockinfile" => lines::blockinfile(&args, ctx),
        "replace" => lines::replace(&args, ctx),
        "apt" => packages::apt(&args, ctx),
        "service" | "systemd" => services::service(name, &args, ctx),
        "user" => users::user(&args, ctx),
        "group" => users::group(&args, ctx),
        "get_url" => net::get_url(&args, ctx),
        "wait_for" => net::wait_for(&args, ctx),
        "cron" => system::cron(&args, ctx),
        "authorized_key" => system::authorized_key(&args, ctx),
        "sysctl" => system::sysctl(&args, ctx),
        "hostname" => system::hostname(&args, ctx),
        "reboot" => reboot::reboot(&args, ctx),
        "ping" => {
            Ok(Outcome::new().with("ping", args.str("data").unwrap_or_else(|| "pong".into())))
        }
        "docker_compose_v2" => compose::compose(&args, ctx),
        "apt_repository" => repos::apt_repository(&args, ctx),
        "apt_key" => repos::apt_key(&args, ctx),
        "pip" => repos::pip(&args, ctx),
        "dnf" | "yum" => repos::dnf(name, &args, ctx),
        "ufw" => more::ufw(&args, ctx),
        "unarchive" => more::unarchive(&args, ctx),
        "git" => more::git_module(&args, ctx),
        "firewalld" => firewall::firewalld(&args, ctx),
        "npm" => nodejs::npm(&args, ctx),
        "fetch" => controller::fetch(&args, ctx),
        "set_stats" => controller::set_stats(&args, ctx),
        "mount" => mount::mount(&args, ctx),
        "timezone" => timezone::timezone(&args, ctx),
        "alternatives" => alternatives::alternatives(&args, ctx),
        "deb822_repository" => deb822::deb822_repository(&args, ctx),
        "pamd" => pamd::pamd(&args, ctx),
        "selinux" => selinux::selinux(&args, ctx),
        "snap" => snap::snap(&args, ctx),
        "postgresql_user" => postgres::postgresql_user(&args, ctx),
        "postgresql_db" => postgres::postgresql_db(&args, ctx),
        "getent" => host_facts::getent(&args, ctx),
        "service_facts" => host_facts::service_facts(&args, ctx),
        "locale_gen" => locale::locale_gen(&args, ctx),
        "apache2_module" => apache::apache2_module(&args, ctx),
        "seport" => selinux::seport(&args, ctx),
        "seboolean" => selinux::seboolean(&args, ctx),
        "composer" => php::composer(&args, ctx),
        "postgresql_privs" => postgres::postgresql_privs(&args, ctx),
        "rpm_key" => rpm::rpm_key(&args, ctx),
        "mysql_user" => mysql::mysql_user(&args, ctx),
        "mysql_db" => mysql::mysql_db(&args, ctx),
        "docker_image" => docker::docker_image(&args, ctx),
        "docker_container" => docker::docker_container(&args, ctx),
        other => Ok(Outcome::failed(format!(
            "module '{other}' is not implemented by the native runtime"
        ))),
    };
    result.unwrap_or_else(Outcome::from)
}
