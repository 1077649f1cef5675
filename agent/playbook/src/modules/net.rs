//! `get_url` (through curl) and `wait_for`.

use super::exec::{run, which};
use super::files::{
    add_file_facts, apply_attributes, atomic_write, backup_file, bytes_sha1, file_sha1,
};
use super::{ArgError, Args, ModuleContext, Outcome};
use sha2::Digest;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn digest(algorithm: &str, bytes: &[u8]) -> Option<String> {
    Some(match algorithm {
        "sha1" => bytes_sha1(bytes),
        "sha256" => hex::encode(sha2::Sha256::digest(bytes)),
        "sha384" => hex::encode(sha2::Sha384::digest(bytes)),
        "sha512" => hex::encode(sha2::Sha512::digest(bytes)),
        _ => return None,
    })
}

/// `get_url`.
pub fn get_url(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "url",
        "dest",
        "checksum",
        "force",
        "headers",
        "url_username",
        "url_password",
        "username",
        "password",
        "timeout",
        "validate_certs",
        "backup",
        "tmp_dest",
        "force_basic_auth",
        "http_agent",
        "use_proxy",
        "decompress",
        "unredirected_headers",
        "use_netrc",
        "ciphers",
        "client_cert",
        "client_key",
        "sha256sum",
    ])?;
    let url = args.required("url")?;
    let dest_text = args.required("dest")?;
    let mut dest = PathBuf::from(&dest_text);
    if dest.is_dir() {
        let name = url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or("index.html");
        dest = dest.join(if name.is_empty() { "index.html" } else { name });
    }
    let force = args.bool("force", false)?;
    let checksum = args
        .str("checksum")
        .or_else(|| args.str("sha256sum").map(|s| format!("sha256:{s}")));
    let expected = match &checksum {
        Some(spec) => {
            let (algorithm, value) = spec.split_once(':').ok_or_else(|| {
                ArgError::Invalid(
                    "The checksum parameter has to be in format <algorithm>:<checksum>".into(),
                )
            })?;
            if value.starts_with("http://") || value.starts_with("https://") {
                return Ok(Outcome::failed(
                    "get_url: checksum URLs are not supported by the native runtime",
                ));
            }
            Some((algorithm.to_lowercase(), value.trim().to_lowercase()))
        }
        None => None,
    };
    let mut result = Outcome::new()
        .with("url", url.clone())
        .with("dest", dest.display().to_string());
    if dest.exists() {
        let matches = match &expected {
            Some((algorithm, value)) => {
                std::fs::read(&dest)
                    .ok()
                    .and_then(|b| digest(algorithm, &b))
                    .as_deref()
                    == Some(value.as_str())
            }
            None => !force,
        };
        if matches && (!force || expected.is_some()) {
            let changed = apply_attributes(&dest, args, ctx, true).map_err(ArgError::Invalid)?;
            result.set("changed", changed);
            result.set("msg", "file already exists");
            add_file_facts(&mut result, &dest);
            return Ok(result);
        }
    }
    let Some(curl) = which("curl") else {
        return Ok(Outcome::failed(
            "get_url: the native runtime downloads with curl, which is not installed",
        ));
    };
    if ctx.check {
        return check_url(args, ctx, &curl, &url, &dest, result);
    }
    let tmp = std::env::temp_dir().join(format!("dynserv-get_url-{}", std::process::id()));
    let mut argv = curl_arguments(args, &tmp.display().to_string())?;
    argv.push(url.clone());
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let r = run(&curl.display().to_string(), &refs, &ctx.environment, None);
    let status: i64 = r.stdout.trim().parse().unwrap_or(-1);
    if !r.ok() {
        let _ = std::fs::remove_file(&tmp);
        return Ok(
            Outcome::failed(format!("Request failed: {}", r.stderr.trim()))
                .with("status_code", status)
                .with("url", url),
        );
    }
    let content = std::fs::read(&tmp)
        .map_err(|e| ArgError::Invalid(format!("could not read the download: {e}")))?;
    let _ = std::fs::remove_file(&tmp);
    if let Some((algorithm, value)) = &expected {
        let actual = digest(algorithm, &content).ok_or_else(|| {
            ArgError::Invalid(format!("unsupported checksum algorithm {algorithm}"))
        })?;
        if actual != *value {
            return Ok(Outcome::failed(format!(
                "The checksum for {} did not match {value}; it was {actual}.",
                dest.display()
            )));
        }
    }
    let new_sum = bytes_sha1(&content);
    let old_sum = if dest.exists() {
        file_sha1(&dest).ok()
    } else {
        None
    };
    let mut changed = false;
    if old_sum.as_deref() != Some(new_sum.as_str()) {
        if dest.exists() && args.bool("backup", false)? {
            if let Ok(b) = backup_file(&dest) {
                result.set("backup_file", b);
            }
        }
        atomic_write(&dest, &content)
            .map_err(|e| ArgError::Invalid(format!("could not write {}: {e}", dest.display())))?;
        changed = true;
    }
    changed |= apply_attributes(&dest, args, ctx, true).map_err(ArgError::Invalid)?;
    result.set("changed", changed);
    result.set("checksum_src", new_sum.clone());
    result.set("checksum_dest", new_sum);
    result.set("status_code", status);
    result.set("msg", format!("OK ({} bytes)", content.len()));
    add_file_facts(&mut result, &dest);
    Ok(result)
}

fn port_open(host: &str, port: u16, connect_timeout: Duration) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, connect_timeout).is_ok())
}

/// `wait_for`.
pub fn wait_for(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "host",
        "port",
        "path",
        "state",
        "timeout",
        "delay",
        "sleep",
        "search_regex",
        "connect_timeout",
        "msg",
        "exclude_hosts",
        "active_connection_states",
    ])?;
    let host = args.str("host").unwrap_or_else(|| "127.0.0.1".into());
    let port = args
        .int("port")?
        .map(|p| u16::try_from(p).map_err(|_| ArgError::Invalid(format!("invalid port {p}"))))
        .transpose()?;
    let path = args.str("path");
    let state = args
        .choice(
            "state",
            &["started", "present", "stopped", "absent", "drained"],
            Some("started"),
        )?
        .unwrap_or_default();
    let timeout = Duration::from_secs_f64(args.float("timeout")?.unwrap_or(300.0).max(0.0));
    let delay = Duration::from_secs_f64(args.float("delay")?.unwrap_or(0.0).max(0.0));
    let sleep = Duration::from_secs_f64(args.float("sleep")?.unwrap_or(1.0).max(0.05));
    let connect_timeout =
        Duration::from_secs_f64(args.float("connect_timeout")?.unwrap_or(5.0).max(0.1));
    let search = args
        .str("search_regex")
        .map(|r| regex::Regex::new(&r))
        .transpose()
        .map_err(|e| ArgError::Invalid(e.to_string()))?;
    if port.is_some() && path.is_some() {
        return Err(ArgError::Invalid(
            "port and path parameter can not both be passed to wait_for".into(),
        ));
    }
    let start = Instant::now();
    std::thread::sleep(delay);
    let mut result = Outcome::new().with("state", state.clone());
    if port.is_none() && path.is_none() && state != "drained" {
        std::thread::sleep(timeout);
        result.set("elapsed", start.elapsed().as_secs());
        return Ok(result);
    }
    let want_present = matches!(state.as_str(), "started" | "present");
    loop {
        let satisfied = if let Some(path) = &path {
            let exists = Path::new(path).exists();
            if want_present {
                exists
                    && match &search {
                        Some(re) => std::fs::read_to_string(path)
                            .map(|t| re.is_match(&t))
                            .unwrap_or(false),
                        None => true,
                    }
            } else {
                !exists
            }
        } else if let Some(port) = port {
            let open = port_open(&host, port, connect_timeout);
            if want_present {
                open
            } else {
                !open
            }
        } else {
            true
        };
        if satisfied {
            break;
        }
        if start.elapsed() >= timeout {
            let what = match (&path, port) {
                (Some(p), _) => format!("file {p}"),
                (None, Some(port)) => format!("{host}:{port}"),
                _ => host.clone(),
            };
            let default_msg = if want_present {
                format!("Timeout when waiting for {what}")
            } else {
                format!("Timeout when waiting for {what} to stop")
            };
            return Ok(Outcome::failed(args.str("msg").unwrap_or(default_msg))
                .with("elapsed", start.elapsed().as_secs()));
        }
        std::thread::sleep(
            sleep
                .min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
    if let Some(port) = port {
        result.set("port", port);
    }
    if let Some(path) = path {
        result.set("path", path);
    }
    result.set("elapsed", start.elapsed().as_secs());
    Ok(result)
}

/// curl's arguments for a get_url request writing the body to `output` (the URL last).
fn curl_arguments(args: &Args, output: &str) -> Result<Vec<String>, ArgError> {
    let timeout = args.int("timeout")?.unwrap_or(10).to_string();
    let mut argv: Vec<String> = vec![
        "-sS".into(),
        "-L".into(),
        "--fail".into(),
        "--connect-timeout".into(),
        timeout.clone(),
        "-o".into(),
        output.to_string(),
        "-w".into(),
        "%{http_code}".into(),
    ];
    if !args.bool("validate_certs", true)? {
        argv.push("-k".into());
    }
    if let Some(user) = args.str_any(&["url_username", "username"]) {
        let password = args
            .str_any(&["url_password", "password"])
            .unwrap_or_default();
        argv.extend(["-u".into(), format!("{user}:{password}")]);
    }
    if let Some(headers) = args.get("headers") {
        if let Ok(keys) = headers.try_iter() {
            for key in keys {
                let value = headers
                    .get_item(&key)
                    .map(|v| super::value_to_string(&v))
                    .unwrap_or_default();
                argv.extend([
                    "-H".into(),
                    format!("{}: {value}", super::value_to_string(&key)),
                ]);
            }
        }
    }
    if let Some(agent) = args.str("http_agent") {
        argv.extend(["-A".into(), agent]);
    }
    Ok(argv)
}

/// Check mode: a HEAD request proves the URL answers (as Ansible's check mode does), and
/// the file counts as changed unless it is already empty, Ansible comparing it to an
/// empty download.
fn check_url(
    args: &Args,
    ctx: &ModuleContext,
    curl: &Path,
    url: &str,
    dest: &Path,
    mut result: Outcome,
) -> Result<Outcome, ArgError> {
    let mut argv = curl_arguments(args, "/dev/null")?;
    argv.push("--head".into());
    argv.push(url.to_string());
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let r = run(&curl.display().to_string(), &refs, &ctx.environment, None);
    if !r.ok() {
        let status: i64 = r.stdout.trim().parse().unwrap_or(-1);
        return Ok(
            Outcome::failed(format!("Request failed: {}", r.stderr.trim()))
                .with("status_code", status)
                .with("url", url),
        );
    }
    let empty = std::fs::metadata(dest).is_ok_and(|m| m.is_file() && m.len() == 0);
    result.set("changed", !empty);
    result.set("msg", "OK");
    Ok(result)
}
