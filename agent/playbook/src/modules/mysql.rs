//! `community.mysql.mysql_user` and `community.mysql.mysql_db`.
//!
//! Ansible's modules need a Python MySQL driver (PyMySQL or mysqlclient) and fail
//! without one before connecting; the native counterpart of that driver is the
//! `mysql` client program, so a host without it gets the same failure, in Ansible's
//! words. Managing users and databases where a client exists is not implemented
//! natively yet: the module then fails saying so rather than guessing.

use super::exec::which;
use super::{ArgError, Args, ModuleContext, Outcome};

/// Ansible's `mysql_driver_fail_msg`.
pub const DRIVER_FAIL_MSG: &str = "A MySQL module is required: for Python 2.7 either PyMySQL, or MySQL-python, or for Python 3.X mysqlclient or PyMySQL. Consider setting ansible_python_interpreter to use the intended Python version.";

/// Options every community.mysql module takes (`mysql_common_argument_spec`).
const COMMON: &[&str] = &[
    "login_user",
    "login_password",
    "login_host",
    "login_port",
    "login_unix_socket",
    "config_file",
    "connect_timeout",
    "client_cert",
    "ssl_cert",
    "client_key",
    "ssl_key",
    "ca_cert",
    "ssl_ca",
    "check_hostname",
];

fn check_common(args: &Args, own: &[&str]) -> Result<(), ArgError> {
    let all: Vec<&str> = COMMON.iter().chain(own.iter()).copied().collect();
    args.check_supported(&all)?;
    args.int("login_port")?;
    args.int("connect_timeout")?;
    if args.has("check_hostname") {
        args.bool("check_hostname", false)?;
    }
    Ok(())
}

fn driver_or_gap(module: &str) -> Outcome {
    if which("mysql").is_none() && which("mariadb").is_none() {
        return Outcome::failed(DRIVER_FAIL_MSG);
    }
    Outcome::failed(format!(
        "{module}: managing MySQL through its client is not implemented by the native runtime"
    ))
}

/// `mysql_user`: a MySQL account and its privileges.
pub fn mysql_user(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    check_common(
        args,
        &[
            "name",
            "user",
            "password",
            "encrypted",
            "host",
            "host_all",
            "state",
            "priv",
            "tls_requires",
            "append_privs",
            "subtract_privs",
            "attributes",
            "check_implicit_admin",
            "update_password",
            "sql_log_bin",
            "plugin",
            "plugin_hash_string",
            "plugin_auth_string",
            "salt",
            "resource_limits",
            "force_context",
            "session_vars",
            "column_case_sensitive",
            "password_expire",
            "password_expire_interval",
            "locked",
        ],
    )?;
    if !args.has("name") && !args.has("user") {
        return Err(ArgError::Missing("name".into()));
    }
    for (key, default) in [
        ("encrypted", false),
        ("host_all", false),
        ("append_privs", false),
        ("subtract_privs", false),
        ("check_implicit_admin", false),
        ("sql_log_bin", true),
        ("force_context", false),
    ] {
        args.bool(key, default)?;
    }
    args.choice("state", &["absent", "present"], Some("present"))?;
    args.choice(
        "update_password",
        &["always", "on_create", "on_new_username"],
        Some("always"),
    )?;
    args.choice(
        "password_expire",
        &["now", "never", "default", "interval"],
        None,
    )?;
    super::firewall::mutually_exclusive(args, &["append_privs", "subtract_privs"])?;
    if let Some(privileges) = args.get("priv") {
        use minijinja::value::ValueKind;
        if !matches!(privileges.kind(), ValueKind::String | ValueKind::Map) && privileges.is_true()
        {
            let python = match privileges.kind() {
                ValueKind::Seq => "list",
                ValueKind::Bool => "bool",
                ValueKind::Number if privileges.as_i64().is_some() => "int",
                ValueKind::Number => "float",
                _ => "str",
            };
            return Ok(Outcome::failed(format!(
                "priv parameter must be str or dict but <class '{python}'> was passed"
            )));
        }
    }
    Ok(driver_or_gap("mysql_user"))
}

/// `mysql_db`: MySQL databases (create, drop, dump, import).
pub fn mysql_db(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    check_common(
        args,
        &[
            "name",
            "db",
            "encoding",
            "collation",
            "target",
            "state",
            "single_transaction",
            "quick",
            "ignore_tables",
            "hex_blob",
            "force",
            "master_data",
            "skip_lock_tables",
            "dump_extra_args",
            "use_shell",
            "unsafe_login_password",
            "restrict_config_file",
            "check_implicit_admin",
            "config_overrides_defaults",
            "chdir",
            "pipefail",
            "sql_log_bin",
        ],
    )?;
    if !args.has("name") && !args.has("db") {
        return Err(ArgError::Missing("name".into()));
    }
    for (key, default) in [
        ("single_transaction", false),
        ("quick", true),
        ("hex_blob", false),
        ("force", false),
        ("skip_lock_tables", false),
        ("use_shell", false),
        ("unsafe_login_password", false),
        ("restrict_config_file", false),
        ("check_implicit_admin", false),
        ("config_overrides_defaults", false),
        ("pipefail", false),
        ("sql_log_bin", true),
    ] {
        args.bool(key, default)?;
    }
    args.choice(
        "state",
        &["absent", "dump", "import", "present"],
        Some("present"),
    )?;
    if let Some(master_data) = args.int("master_data")? {
        if !(0..=2).contains(&master_data) {
            return Err(ArgError::Invalid(format!(
                "value of master_data must be one of: 0, 1, 2, got: {master_data}"
            )));
        }
    }
    Ok(driver_or_gap("mysql_db"))
}
