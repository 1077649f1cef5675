//! `community.postgresql.postgresql_user`: PostgreSQL roles, through `psql`.
//!
//! Ansible's module connects with psycopg (libpq); the native module runs libpq's own
//! client, `psql`, with the same connection parameters, so connection failures carry
//! libpq's words. Decisions follow Ansible's module: create or alter the role only when
//! its password (plain text checked against a stored SCRAM or MD5 verifier), its
//! attribute flags, expiry or connection limit differ; comments and per-role settings;
//! `DROP USER` for `absent`. The `queries` returned are Ansible's texts (placeholders
//! for the password and expiry). In check mode nothing is written: Ansible runs its
//! statements in a transaction it rolls back, which reports the same.

use minijinja::Value;
use sha2::{Digest, Sha256};

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

const FLAGS: &[&str] = &[
    "SUPERUSER",
    "CREATEROLE",
    "CREATEDB",
    "INHERIT",
    "LOGIN",
    "REPLICATION",
    "BYPASSRLS",
];

fn column_of(flag: &str) -> &'static str {
    match flag {
        "SUPERUSER" => "rolsuper",
        "CREATEROLE" => "rolcreaterole",
        "CREATEDB" => "rolcreatedb",
        "INHERIT" => "rolinherit",
        "LOGIN" => "rolcanlogin",
        "REPLICATION" => "rolreplication",
        _ => "rolbypassrls",
    }
}

/// The connection arguments every community.postgresql module takes.
const CONNECTION_ARGS: &[&str] = &[
    "login_user",
    "login",
    "login_password",
    "login_host",
    "host",
    "login_unix_socket",
    "unix_socket",
    "port",
    "login_port",
    "ssl_mode",
    "ca_cert",
    "ssl_cert",
    "ssl_key",
    "connect_params",
];

/// [`Args::check_supported`] with a module's own arguments and [`CONNECTION_ARGS`].
fn check_supported(args: &Args, own: &[&str]) -> Result<(), ArgError> {
    args.check_supported(&[own, CONNECTION_ARGS].concat())
}

/// A SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Ansible's `_pg_quote_user`: the role name as a quoted identifier.
pub fn quote_user(user: &str) -> Result<String, String> {
    let starts = user.starts_with('"');
    let ends = user.ends_with('"') && user.len() > 1;
    match (starts, ends) {
        (false, false) => Ok(format!("\"{}\"", user.replace('"', "\"\""))),
        (true, true) => {
            let inner = &user[1..user.len() - 1];
            if inner.contains('"') && !inner.contains("\"\"") {
                Err(format!("User escaped identifier value {user} contains too many dots"))
            } else {
                Ok(user.to_string())
            }
        }
        _ => Err("The value of the user-field can't contain a double-quote in the end if it doesn't start with one and vice-versa.".into()),
    }
}

/// Normalises `role_attr_flags` (`CREATEDB,nologin`) into Ansible's space-separated
/// upper-case set, sorted (Ansible's order is its set's, which varies by run).
pub fn parse_role_attrs(flags: &str) -> Result<String, String> {
    let mut wanted: Vec<String> = flags
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_uppercase)
        .collect();
    wanted.sort();
    wanted.dedup();
    let valid = |f: &str| {
        let bare = f.strip_prefix("NO").unwrap_or(f);
        FLAGS.contains(&f) || FLAGS.contains(&bare)
    };
    let invalid: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|f| !valid(f))
        .collect();
    if !invalid.is_empty() {
        return Err(format!(
            "Invalid role_attr_flags specified: {}",
            invalid.join(" ")
        ));
    }
    Ok(wanted.join(" "))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &first);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, b) in out.iter_mut().zip(&u) {
            *o ^= b;
        }
    }
    out
}

/// Whether `password` matches a stored `SCRAM-SHA-256$iter:salt$stored:server` verifier.
pub fn scram_matches(password: &str, verifier: &str) -> bool {
    use base64::Engine;
    let re = regex::Regex::new(
        r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$",
    )
    .expect("valid");
    let Some(c) = re.captures(verifier) else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let (Ok(iterations), Ok(salt), Ok(server_key)) = (
        c[1].parse::<u32>(),
        engine.decode(&c[2]),
        engine.decode(&c[4]),
    ) else {
        return false;
    };
    let salted = pbkdf2_sha256(password.as_bytes(), &salt, iterations);
    hmac_sha256(&salted, b"Server Key") == server_key
}

fn is_md5_verifier(password: &str) -> bool {
    password.starts_with("md5") && password.len() == 35
}

fn is_scram_verifier(password: &str) -> bool {
    password.starts_with("SCRAM-SHA-256$") && password.matches('$').count() == 2
}

/// A `psql` session's connection settings.
struct Connection {
    conninfo: String,
    env: Vec<(String, String)>,
}

impl Connection {
    /// Runs one statement; rows of fields (unit-separator separated), or libpq's error.
    fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let r = run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\u{1f}",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.conninfo,
                "-c",
                sql,
            ],
            &self.env,
            None,
        );
        if !r.ok() {
            let text = r.stderr;
            let text = text.strip_prefix("psql: error: ").unwrap_or(&text);
            let text = match text.split_once("ERROR:  ") {
                Some((_, rest)) if text.starts_with("psql:") || text.starts_with("ERROR:") => rest,
                _ => text,
            };
            return Err(text.to_string());
        }
        Ok(r.stdout
            .lines()
            .map(|l| l.split('\u{1f}').map(String::from).collect())
            .collect())
    }

    fn value(&self, sql: &str) -> Result<Option<String>, String> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next()))
    }
}

fn conninfo_value(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The `psql` session Ansible's common connection options describe (`dbname`: the
/// database to connect to, if any).
fn connection(args: &Args, ctx: &ModuleContext, dbname: Option<String>) -> Connection {
    let env_user = std::env::var("PGUSER").ok().filter(|u| !u.is_empty());
    let login_user = args
        .str_any(&["login_user", "login"])
        .or(env_user)
        .unwrap_or_else(|| "postgres".into());
    let mut parts: Vec<String> = vec![format!("user={}", conninfo_value(&login_user))];
    let host = args
        .str_any(&["login_host", "host"])
        .filter(|h| !h.is_empty());
    let socket = args
        .str_any(&["login_unix_socket", "unix_socket"])
        .filter(|s| !s.is_empty());
    match (&host, &socket) {
        (Some(h), Some(s)) if h == "localhost" => parts.push(format!("host={}", conninfo_value(s))),
        (Some(h), _) => parts.push(format!("host={}", conninfo_value(h))),
        (None, Some(s)) => parts.push(format!("host={}", conninfo_value(s))),
        (None, None) => {}
    }
    let port = args
        .str_any(&["login_port", "port"])
        .unwrap_or_else(|| "5432".into());
    parts.push(format!("port={}", conninfo_value(&port)));
    if let Some(db) = dbname.filter(|d| !d.is_empty()) {
        parts.push(format!("dbname={}", conninfo_value(&db)));
    }
    if let Some(p) = args.str("login_password").filter(|p| !p.is_empty()) {
        parts.push(format!("password={}", conninfo_value(&p)));
    }
    parts.push(format!(
        "sslmode={}",
        conninfo_value(&args.str("ssl_mode").unwrap_or_else(|| "prefer".into()))
    ));
    for (key, name) in [
        ("ca_cert", "sslrootcert"),
        ("ssl_cert", "sslcert"),
        ("ssl_key", "sslkey"),
    ] {
        if let Some(v) = args.str(key).filter(|v| !v.is_empty()) {
            parts.push(format!("{name}={}", conninfo_value(&v)));
        }
    }
    Connection {
        conninfo: parts.join(" "),
        env: ctx.environment.clone(),
    }
}

/// `postgresql_user`: creates, changes or removes a role.
pub fn postgresql_user(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    check_supported(
        args,
        &[
            "user",
            "name",
            "password",
            "state",
            "login_db",
            "db",
            "fail_on_user",
            "fail_on_role",
            "role_attr_flags",
            "encrypted",
            "no_password_changes",
            "expires",
            "conn_limit",
            "session_role",
            "comment",
            "trust_input",
            "configuration",
            "reset_unspecified_configuration",
            "quote_configuration_values",
        ],
    )?;
    let user = args
        .str_any(&["user", "name"])
        .ok_or_else(|| ArgError::Missing("user".into()))?;
    let password = args.str("password");
    let state = args
        .choice("state", &["absent", "present"], Some("present"))?
        .unwrap_or_default();
    let fail_on_user = match args.get("fail_on_user") {
        Some(_) => args.bool("fail_on_user", true)?,
        None => args.bool("fail_on_role", true)?,
    };
    let encrypted = if args.bool("encrypted", true)? {
        "ENCRYPTED"
    } else {
        "UNENCRYPTED"
    };
    let no_password_changes = args.bool("no_password_changes", false)?;
    let expires = args.str("expires");
    let conn_limit = args.int("conn_limit")?;
    let comment = args.str("comment");
    let reset_unspecified = args.bool("reset_unspecified_configuration", false)?;
    let quote_values = args.bool("quote_configuration_values", true)?;
    let mut configuration: Vec<(String, String)> = Vec::new();
    if let Some(conf) = args.get("configuration") {
        if let Ok(keys) = conf.try_iter() {
            for key in keys {
                let value = conf.get_item(&key).unwrap_or_default();
                configuration.push((super::value_to_string(&key), super::value_to_string(&value)));
            }
        }
    }

    if which("psql").is_none() {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "psycopg2",
        )));
    }
    let login_db = args.str_any(&["login_db", "db"]);
    let conn = connection(args, ctx, login_db);
    let result = (|| -> Result<Outcome, Outcome> {
        let fail = |msg: String| Outcome::failed(msg);
        conn.value("SELECT 1")
            .map_err(|e| fail(format!("unable to connect to database: {e}")))?;
        if let Some(role) = args.str("session_role") {
            // Every statement runs in its own session here; the role check is what a
            // wrong session_role would fail on.
            conn.value(&format!("SET ROLE {}", quote_user(&role).map_err(fail)?))
                .map_err(|e| fail(format!("Could not switch role: {e}")))?;
        }
        for (key, value) in configuration.iter_mut() {
            if quote_values {
                if key.contains('"') || key.contains('\'') {
                    return Err(fail(
                        "The key of a configuration may not contain single or double quotes".into(),
                    ));
                }
                *value = value.replace('\'', "''");
            }
        }
        let flags =
            parse_role_attrs(&args.str("role_attr_flags").unwrap_or_default()).map_err(fail)?;
        let quoted = quote_user(&user).map_err(fail)?;
        let sql_err = |e: String| fail(e.trim_end().to_string());
        let exists = user == "PUBLIC"
            || conn
                .value(&format!(
                    "SELECT rolname FROM pg_roles WHERE rolname={}",
                    quote_literal(&user)
                ))
                .map_err(sql_err)?
                .is_some();
        let mut queries: Vec<String> = Vec::new();
        let mut changed = false;
        let mut out = Outcome::new().with("user", user.clone());
        let execute = |text_for_queries: String, sql: String, queries: &mut Vec<String>| {
            queries.push(text_for_queries);
            if ctx.check {
                return Ok(());
            }
            conn.query(&sql).map(|_| ())
        };
        let substitute = |template: &str| {
            template
                .replace(
                    "%(password)s",
                    &password
                        .as_deref()
                        .map(quote_literal)
                        .unwrap_or_else(|| "NULL".into()),
                )
                .replace(
                    "%(expires)s",
                    &expires
                        .as_deref()
                        .map(quote_literal)
                        .unwrap_or_else(|| "NULL".into()),
                )
        };
        if state == "present" {
            if exists {
                if user == "PUBLIC" {
                    if password.is_some() {
                        return Err(fail("cannot change the password for PUBLIC user".into()));
                    }
                    if !flags.is_empty() {
                        return Err(fail(
                            "cannot change the role_attr_flags for PUBLIC user".into(),
                        ));
                    }
                } else {
                    changed = alter_user(
                        &conn,
                        &user,
                        &quoted,
                        password.as_deref(),
                        &flags,
                        encrypted,
                        expires.as_deref(),
                        no_password_changes,
                        conn_limit,
                        &mut |q| execute(q.clone(), substitute(&q), &mut queries),
                    )
                    .map_err(sql_err)?;
                }
            } else {
                let mut query = vec![format!("CREATE USER {quoted}")];
                if password.as_deref().is_some_and(|p| !p.is_empty()) {
                    query.push(format!("WITH {encrypted}"));
                    query.push("PASSWORD %(password)s".into());
                }
                if expires.is_some() {
                    query.push("VALID UNTIL %(expires)s".into());
                }
                if let Some(limit) = conn_limit {
                    query.push(format!("CONNECTION LIMIT {limit}"));
                }
                query.push(flags.clone());
                let text = query.join(" ");
                execute(text.clone(), substitute(&text), &mut queries).map_err(|e| {
                    fail(format!(
                        "Unable to add user with given requirement due to : {}",
                        e.trim_end()
                    ))
                })?;
                changed = true;
            }
            let created_in_check = ctx.check && !exists;
            if let Some(comment) = &comment {
                let current = if created_in_check {
                    String::new()
                } else {
                    conn.value(&format!(
                        "SELECT pg_catalog.shobj_description(r.oid, 'pg_authid') AS comment FROM pg_catalog.pg_roles AS r WHERE r.rolname = {}",
                        quote_literal(&user)
                    ))
                    .map_err(|e| fail(format!("Unable to add comment on role: {}", e.trim_end())))?
                    .unwrap_or_default()
                };
                if *comment != current {
                    let sql = format!("COMMENT ON ROLE \"{user}\" IS {}", quote_literal(comment));
                    execute(sql.clone(), sql, &mut queries).map_err(|e| {
                        fail(format!("Unable to add comment on role: {}", e.trim_end()))
                    })?;
                    changed = true;
                }
            }
            let current: Vec<(String, String)> = if created_in_check {
                Vec::new()
            } else {
                let row = conn
                    .value(&format!(
                        "SELECT array_to_string(rolconfig, chr(31)) FROM pg_roles WHERE rolname = {}",
                        quote_literal(&user)
                    ))
                    .map_err(sql_err)?;
                if row.is_none() && user != "PUBLIC" {
                    return Err(fail(format!("Can't find user {user} in 'pg_roles'")));
                }
                row.unwrap_or_default()
                    .split('\u{1f}')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let (k, v) = s.split_once('=').unwrap_or((s, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect()
            };
            for (key, _) in &current {
                if reset_unspecified && !configuration.iter().any(|(k, _)| k == key) {
                    let sql = format!("ALTER ROLE {quoted} RESET \"{key}\";");
                    execute(sql.clone(), sql, &mut queries).map_err(|e| {
                        fail(format!(
                            "Unable to update configuration for '{user}' due to: {e}"
                        ))
                    })?;
                    changed = true;
                }
            }
            for (key, value) in &configuration {
                if current.iter().any(|(k, v)| k == key && v == value) {
                    continue;
                }
                let sql = if quote_values {
                    format!("ALTER ROLE {quoted} SET \"{key}\" TO '{value}';")
                } else {
                    format!("ALTER ROLE {quoted} SET \"{key}\" TO {value};")
                };
                execute(sql.clone(), sql, &mut queries).map_err(|e| {
                    fail(format!(
                        "Unable to update configuration for '{user}' due to: {e}"
                    ))
                })?;
                changed = true;
            }
        } else if exists {
            if ctx.check {
                changed = true;
                out.set("user_removed", true);
            } else {
                let sql = format!("DROP USER {quoted}");
                queries.push(sql.clone());
                match conn.query(&sql) {
                    Ok(_) => {
                        changed = true;
                        out.set("user_removed", true);
                    }
                    Err(e) => {
                        if fail_on_user {
                            return Err(fail(format!("Unable to remove user: {}", e.trim_end())));
                        }
                        out.set("user_removed", false);
                    }
                }
            }
        }
        out.set("changed", changed);
        out.set("queries", Value::from(queries));
        Ok(out)
    })();
    Ok(result.unwrap_or_else(|failure| failure))
}

/// Ansible's `user_alter`: `Ok(changed)`; `execute` records and runs a statement.
#[allow(clippy::too_many_arguments)]
fn alter_user(
    conn: &Connection,
    user: &str,
    quoted: &str,
    password: Option<&str>,
    flags: &str,
    encrypted: &str,
    expires: Option<&str>,
    no_password_changes: bool,
    conn_limit: Option<i64>,
    execute: &mut dyn FnMut(String) -> Result<(), String>,
) -> Result<bool, String> {
    let attrs = |conn: &Connection| -> Result<Vec<(String, String)>, String> {
        let columns = "rolsuper, rolcreaterole, rolcreatedb, rolinherit, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, rolpassword";
        let mut rows = conn
            .query(&format!(
                "SELECT {columns} FROM pg_authid WHERE rolname={}",
                quote_literal(user)
            ))
            .or_else(|_| {
                conn.query(&format!(
                    "SELECT {columns} FROM pg_roles WHERE rolname={}",
                    quote_literal(user)
                ))
            })?;
        let row = rows.pop().unwrap_or_default();
        Ok(columns
            .split(", ")
            .map(String::from)
            .zip(row.into_iter().chain(std::iter::repeat(String::new())))
            .collect())
    };
    let get = |attrs: &[(String, String)], key: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let flags_changing = |attrs: &[(String, String)]| {
        flags.split(' ').filter(|f| !f.is_empty()).any(|f| {
            let (name, wanted) = match f.strip_prefix("NO") {
                Some(rest) => (rest, "f"),
                None => (f, "t"),
            };
            get(attrs, column_of(name)) != wanted
        })
    };
    if !no_password_changes
        && (password.is_some() || !flags.is_empty() || expires.is_some() || conn_limit.is_some())
    {
        let current = attrs(conn)?;
        let stored = get(&current, "rolpassword");
        let stored = (!stored.is_empty()).then_some(stored);
        let pw_changing = match password {
            None => false,
            Some("") => stored.is_some(),
            Some(p) if is_scram_verifier(p) => Some(p) != stored.as_deref(),
            Some(p) if stored.as_deref().is_some_and(is_scram_verifier) => {
                !scram_matches(p, stored.as_deref().unwrap_or_default())
            }
            Some(p) if is_md5_verifier(p) || encrypted == "UNENCRYPTED" => {
                Some(p) != stored.as_deref()
            }
            Some(p) => match conn.value("SHOW password_encryption")?.as_deref() {
                Some("md5") => {
                    use md5::Digest as _;
                    let hashed = format!(
                        "md5{}",
                        hex::encode(md5::Md5::digest(format!("{p}{user}").as_bytes()))
                    );
                    Some(hashed) != stored
                }
                Some("scram-sha-256") => true,
                _ => false,
            },
        };
        let flags_change = flags_changing(&current);
        let expires_change = match expires {
            None => false,
            Some(e) => conn
                .value(&format!(
                    "SELECT ({}::timestamptz IS DISTINCT FROM rolvaliduntil) FROM pg_roles WHERE rolname={}",
                    quote_literal(e),
                    quote_literal(user)
                ))?
                .as_deref()
                == Some("t"),
        };
        let limit_change =
            conn_limit.is_some_and(|l| get(&current, "rolconnlimit") != l.to_string());
        if !pw_changing && !flags_change && !expires_change && !limit_change {
            return Ok(false);
        }
        let mut alter = vec![format!("ALTER USER {quoted}")];
        if pw_changing {
            if password != Some("") {
                alter.push(format!("WITH {encrypted}"));
                alter.push("PASSWORD %(password)s".into());
            } else {
                alter.push("WITH PASSWORD NULL".into());
            }
            alter.push(flags.to_string());
        } else if !flags.is_empty() {
            alter.push(format!("WITH {flags}"));
        }
        if expires.is_some() {
            alter.push("VALID UNTIL %(expires)s".into());
        }
        if let Some(limit) = conn_limit {
            alter.push(format!("CONNECTION LIMIT {limit}"));
        }
        execute(alter.join(" "))?;
        return Ok(true);
    }
    if no_password_changes && !flags.is_empty() {
        let current = attrs(conn)?;
        if !flags_changing(&current) {
            return Ok(false);
        }
        execute(format!("ALTER USER {quoted} WITH {flags}"))?;
        return Ok(true);
    }
    Ok(false)
}

/// `postgresql_db`: creates, changes (owner, connection limit, tablespace, comment) or
/// drops a database, connected to `maintenance_db`. As in Ansible's module, a database
/// whose encoding or locale differs is a failure (those cannot change); check mode
/// reports whether anything would change without writing. Dump, restore and rename
/// are not implemented natively.
pub fn postgresql_db(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    check_supported(
        args,
        &[
            "db",
            "name",
            "owner",
            "template",
            "encoding",
            "lc_collate",
            "lc_ctype",
            "icu_locale",
            "locale_provider",
            "state",
            "target",
            "target_opts",
            "maintenance_db",
            "session_role",
            "conn_limit",
            "tablespace",
            "dump_extra_args",
            "trust_input",
            "force",
            "comment",
        ],
    )?;
    let db = args
        .str_any(&["db", "name"])
        .ok_or_else(|| ArgError::Missing("db".into()))?;
    let text = |key: &str| args.str(key).unwrap_or_default();
    let (owner, template, encoding) = (text("owner"), text("template"), text("encoding"));
    let (lc_collate, lc_ctype) = (text("lc_collate"), text("lc_ctype"));
    let (icu_locale, locale_provider) = (text("icu_locale"), text("locale_provider"));
    let (conn_limit, tablespace) = (text("conn_limit"), text("tablespace"));
    let comment = args.get("comment").map(|c| super::value_to_string(&c));
    let state = args
        .choice(
            "state",
            &["absent", "dump", "present", "rename", "restore"],
            Some("present"),
        )?
        .unwrap_or_default();
    args.bool("trust_input", true)?;
    let force = args.bool("force", false)?;
    if !matches!(state.as_str(), "present" | "absent") {
        return Ok(Outcome::failed(format!(
            "postgresql_db: state={state} is not implemented by the native runtime"
        )));
    }
    if which("psql").is_none() {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "psycopg2",
        )));
    }
    let maintenance_db = args
        .str("maintenance_db")
        .unwrap_or_else(|| "postgres".into());
    let conn = connection(args, ctx, Some(maintenance_db));
    let fail = |msg: String| Outcome::failed(msg);
    let query_failed = |e: String| fail(format!("Database query failed: {}", e.trim_end()));
    let result = (|| -> Result<Outcome, Outcome> {
        conn.value("SELECT 1")
            .map_err(|e| fail(format!("unable to connect to database: {e}")))?;
        if let Some(role) = args.str("session_role") {
            conn.value(&format!("SET ROLE \"{role}\""))
                .map_err(|e| fail(format!("Could not switch role: {e}")))?;
        }
        let version: i64 = conn
            .value("SHOW server_version_num")
            .map_err(query_failed)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let info = |conn: &Connection| -> Result<Option<Vec<String>>, String> {
            let (icu, provider) = if version >= 170000 {
                (
                    "datlocale",
                    "CASE datlocprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' END",
                )
            } else if version >= 150000 {
                (
                    "daticulocale",
                    "CASE datlocprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' END",
                )
            } else {
                ("null::text", "null::text")
            };
            let rows = conn.query(&format!(
                "SELECT rolname, pg_encoding_to_char(encoding), encoding, datcollate, datctype, \
                 coalesce({icu}, ''), coalesce({provider}, ''), datconnlimit, spcname, \
                 coalesce(pg_catalog.shobj_description(pg_database.oid, 'pg_database'), '') \
                 FROM pg_database JOIN pg_roles ON pg_roles.oid = pg_database.datdba \
                 JOIN pg_tablespace ON pg_tablespace.oid = pg_database.dattablespace \
                 WHERE datname = {}",
                quote_literal(&db)
            ))?;
            Ok(rows.into_iter().next())
        };
        let encoding_id = |conn: &Connection| -> Result<String, String> {
            Ok(conn
                .value(&format!(
                    "SELECT pg_char_to_encoding({})",
                    quote_literal(&encoding)
                ))?
                .unwrap_or_default())
        };
        let current = info(&conn).map_err(query_failed)?;
        let mut commands: Vec<String> = Vec::new();
        let mut changed = false;
        let execute = |sql: String, commands: &mut Vec<String>| -> Result<(), Outcome> {
            commands.push(sql.clone());
            conn.query(&sql).map(|_| ()).map_err(query_failed)
        };
        if state == "absent" {
            if current.is_some() {
                changed = true;
                if !ctx.check {
                    let sql = if force && version >= 130000 {
                        format!("DROP DATABASE \"{db}\" WITH (FORCE)")
                    } else {
                        format!("DROP DATABASE \"{db}\"")
                    };
                    execute(sql, &mut commands)?;
                }
            }
        } else if let Some(row) = current {
            let field = |i: usize| row.get(i).cloned().unwrap_or_default();
            let unsupported =
                if !encoding.is_empty() && encoding_id(&conn).map_err(query_failed)? != field(2) {
                    Some(format!(
                        "Changing database encoding is not supported. Current encoding: {}",
                        field(1)
                    ))
                } else if !lc_collate.is_empty() && lc_collate != field(3) {
                    Some(format!(
                        "Changing LC_COLLATE is not supported. Current LC_COLLATE: {}",
                        field(3)
                    ))
                } else if !lc_ctype.is_empty() && lc_ctype != field(4) {
                    Some(format!(
                        "Changing LC_CTYPE is not supported.Current LC_CTYPE: {}",
                        field(4)
                    ))
                } else if !icu_locale.is_empty() && icu_locale != field(5) {
                    Some(format!(
                        "Changing ICU_LOCALE is not supported.Current ICU_LOCALE: {}",
                        field(5)
                    ))
                } else if !locale_provider.is_empty() && locale_provider != field(6) {
                    Some(format!(
                        "Changing LOCALE_PROVIDER is not supported.Current LOCALE_PROVIDER: {}",
                        field(6)
                    ))
                } else {
                    None
                };
            if let Some(msg) = unsupported {
                if ctx.check {
                    // db_matches answers "does not match" where the update would fail.
                    changed = true;
                } else {
                    return Err(fail(msg));
                }
            } else {
                let mut wanted: Vec<String> = Vec::new();
                if !owner.is_empty() && owner != field(0) {
                    wanted.push(format!("ALTER DATABASE \"{db}\" OWNER TO \"{owner}\""));
                }
                if !conn_limit.is_empty() && conn_limit != field(7) {
                    wanted.push(format!(
                        "ALTER DATABASE \"{db}\" CONNECTION LIMIT {conn_limit}"
                    ));
                }
                if !tablespace.is_empty() && tablespace != field(8) {
                    wanted.push(format!(
                        "ALTER DATABASE \"{db}\" SET TABLESPACE \"{tablespace}\""
                    ));
                }
                if let Some(comment) = comment.as_ref().filter(|c| **c != field(9)) {
                    wanted.push(format!(
                        "COMMENT ON DATABASE \"{db}\" IS {}",
                        quote_literal(comment)
                    ));
                }
                changed = !wanted.is_empty();
                if !ctx.check {
                    for sql in wanted {
                        execute(sql, &mut commands)?;
                    }
                }
            }
        } else {
            changed = true;
            if !ctx.check {
                let mut query = vec![format!("CREATE DATABASE \"{db}\"")];
                if !owner.is_empty() {
                    query.push(format!("OWNER \"{owner}\""));
                }
                if !template.is_empty() {
                    query.push(format!("TEMPLATE \"{template}\""));
                }
                if !encoding.is_empty() {
                    query.push(format!("ENCODING {}", quote_literal(&encoding)));
                }
                if !lc_collate.is_empty() {
                    query.push(format!("LC_COLLATE {}", quote_literal(&lc_collate)));
                }
                if !lc_ctype.is_empty() {
                    query.push(format!("LC_CTYPE {}", quote_literal(&lc_ctype)));
                }
                if version >= 150000 {
                    if !icu_locale.is_empty() {
                        query.push(format!("ICU_LOCALE {}", quote_literal(&icu_locale)));
                    }
                    if !locale_provider.is_empty() {
                        query.push(format!(
                            "LOCALE_PROVIDER {}",
                            quote_literal(&locale_provider)
                        ));
                    }
                }
                if !tablespace.is_empty() {
                    query.push(format!("TABLESPACE \"{tablespace}\""));
                }
                if !conn_limit.is_empty() {
                    query.push(format!("CONNECTION LIMIT {conn_limit}"));
                }
                execute(query.join(" "), &mut commands)?;
                if let Some(comment) = comment.as_ref().filter(|c| !c.is_empty()) {
                    execute(
                        format!("COMMENT ON DATABASE \"{db}\" IS {}", quote_literal(comment)),
                        &mut commands,
                    )?;
                }
            }
        }
        Ok(Outcome::new()
            .with("changed", changed)
            .with("db", db.clone())
            .with("executed_commands", Value::from(commands)))
    })();
    Ok(result.unwrap_or_else(|failure| failure))
}

/// `postgresql_privs`: Ansible's argument checks, its missing-library and connection
/// failures (the database named by `login_db`); granting and revoking is not
/// implemented natively and fails saying so once connected.
pub fn postgresql_privs(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    check_supported(
        args,
        &[
            "login_db",
            "db",
            "database",
            "state",
            "privs",
            "priv",
            "type",
            "objs",
            "obj",
            "schema",
            "roles",
            "role",
            "session_role",
            "target_roles",
            "grant_option",
            "admin_option",
            "fail_on_role",
            "trust_input",
        ],
    )?;
    let mut missing = Vec::new();
    let login_db = args.str_any(&["login_db", "db", "database"]);
    if login_db.is_none() {
        missing.push("login_db");
    }
    if args.str_any(&["roles", "role"]).is_none() {
        missing.push("roles");
    }
    if !missing.is_empty() {
        return Err(ArgError::Missing(missing.join(", ")));
    }
    args.choice("state", &["present", "absent"], Some("present"))?;
    let kind = args
        .choice(
            "type",
            &[
                "table",
                "sequence",
                "function",
                "procedure",
                "database",
                "schema",
                "language",
                "tablespace",
                "group",
                "default_privs",
                "foreign_data_wrapper",
                "foreign_server",
                "type",
                "parameter",
            ],
            Some("table"),
        )?
        .unwrap_or_default();
    args.bool("fail_on_role", true)?;
    args.bool("trust_input", true)?;
    let objs = args.str_any(&["objs", "obj"]);
    let privs = args.str_any(&["privs", "priv"]);
    let with_schema = [
        "table",
        "sequence",
        "function",
        "procedure",
        "type",
        "default_privs",
    ];
    if !with_schema.contains(&kind.as_str()) && args.str("schema").is_some() {
        return Ok(Outcome::failed(format!(
            "Argument \"schema\" is not allowed for type \"{kind}\"."
        )));
    }
    if objs.as_deref() == Some("ALL_IN_SCHEMA")
        && !["table", "sequence", "function", "procedure"].contains(&kind.as_str())
    {
        return Ok(Outcome::failed(format!(
            "Argument \"objs\": ALL_IN_SCHEMA can be used only for type: table, sequence, function or procedure, {kind} was passed."
        )));
    }
    if kind != "database" && objs.is_none() {
        return Ok(Outcome::failed(format!(
            "Argument \"objs\" is required for type \"{kind}\"."
        )));
    }
    if kind == "group" {
        if privs.is_some() {
            return Ok(Outcome::failed(
                "Argument \"privs\" is not allowed for type \"group\".",
            ));
        }
    } else if privs.is_none() {
        return Ok(Outcome::failed(format!(
            "Argument \"privs\" is required for type \"{kind}\"."
        )));
    }
    if which("psql").is_none() {
        return Ok(Outcome::failed(super::firewall::missing_required_lib(
            "psycopg2",
        )));
    }
    let conn = connection(args, ctx, login_db);
    if let Err(e) = conn.value("SELECT 1") {
        return Ok(Outcome::failed(format!(
            "unable to connect to database: {e}"
        )));
    }
    Ok(Outcome::failed(
        "postgresql_privs: granting and revoking privileges is not implemented by the native runtime",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags are upper-cased, deduplicated and checked like Ansible's.
    #[test]
    fn role_attr_flags() {
        assert_eq!(
            parse_role_attrs("createdb,NOLOGIN").unwrap(),
            "CREATEDB NOLOGIN"
        );
        assert_eq!(parse_role_attrs("").unwrap(), "");
        assert_eq!(
            parse_role_attrs("CREATEDB,FLY").unwrap_err(),
            "Invalid role_attr_flags specified: FLY"
        );
    }

    /// A SCRAM verifier (RFC 7677's test vector: user "user", password "pencil",
    /// 4096 iterations) verifies its password only; a malformed one never matches.
    #[test]
    fn scram_verifier() {
        let verifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        assert!(scram_matches("pencil", verifier));
        assert!(!scram_matches("pencils", verifier));
        assert!(!scram_matches("pencil", "SCRAM-SHA-256$x"));
    }

    /// Role names are quoted as identifiers.
    #[test]
    fn quoting() {
        assert_eq!(quote_user("app.user").unwrap(), "\"app.user\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(quote_user("\"half").is_err());
    }
}
