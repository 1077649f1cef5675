//! `ansible.posix.firewalld`, through firewalld's own command-line clients.
//!
//! Ansible's module talks to firewalld through its Python bindings (D-Bus when the daemon
//! runs, the on-disk configuration when it does not). The native module drives the same
//! two paths with `firewall-cmd` (running daemon) and `firewall-offline-cmd` (stopped
//! daemon, permanent configuration only), with Ansible's transaction logic: query,
//! then add or remove in the permanent and/or runtime configuration, check mode
//! answering `changed` without a message, and Ansible's messages.
//!
//! Without firewalld installed Ansible fails in its sanity check, before looking at
//! anything else but the arguments; so does this module, with Ansible's message (the
//! Python library it names is the one `firewall-cmd` is written with).

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

/// Ansible's `missing_required_lib` message for a Python library the module needs on
/// the host (the interpreter named is the system Python Ansible respawns into).
pub fn missing_required_lib(library: &str) -> String {
    let host = crate::facts::nodename();
    format!(
        "Failed to import the required Python library ({library}) on {host}'s Python /usr/bin/python3. \
         Please read the module documentation and install it in the appropriate location. \
         If the required library is installed, but Ansible is using the wrong Python interpreter, \
         please consult the documentation on ansible_python_interpreter"
    )
}

/// The first two arguments of a mutually exclusive set given together, as Ansible
/// reports them (`parameters are mutually exclusive: a|b|c`).
pub fn mutually_exclusive(args: &Args, group: &[&str]) -> Result<(), ArgError> {
    if group.iter().filter(|k| args.has(k)).count() > 1 {
        return Err(ArgError::Invalid(format!(
            "parameters are mutually exclusive: {}",
            group.join("|")
        )));
    }
    Ok(())
}

/// How the module reaches firewalld.
struct Client {
    /// `firewall-offline-cmd` when the daemon is stopped, else `firewall-cmd`.
    program: &'static str,
    offline: bool,
    env: Vec<(String, String)>,
}

impl Client {
    fn call(&self, permanent: bool, options: &[String]) -> super::exec::Run {
        let mut argv: Vec<&str> = Vec::new();
        if permanent && !self.offline {
            argv.push("--permanent");
        }
        argv.extend(options.iter().map(String::as_str));
        run(self.program, &argv, &self.env, None)
    }

    /// A `--query-*` answer: exit 0 is yes, 1 is no, anything else an error.
    fn query(&self, permanent: bool, options: &[String]) -> Result<bool, String> {
        let r = self.call(permanent, options);
        match r.rc {
            0 => Ok(true),
            1 => Ok(false),
            _ => Err(exception(&r)),
        }
    }

    fn act(&self, permanent: bool, options: &[String]) -> Result<(), String> {
        let r = self.call(permanent, options);
        if r.ok() {
            Ok(())
        } else {
            Err(exception(&r))
        }
    }
}

/// Ansible's `ERROR: Exception caught: ...` message from a failed client call.
fn exception(r: &super::exec::Run) -> String {
    let text = format!("{}{}", r.stderr, r.stdout);
    let text = text.trim().trim_start_matches("Error: ");
    let mut msg = format!("ERROR: Exception caught: {text}");
    if text.contains("INVALID_SERVICE") {
        msg.push_str(" Services are defined by port/tcp relationship and named as they are in /etc/services (on most systems)");
    }
    msg
}

/// One thing that is enabled or disabled in a zone.
struct Item {
    /// `--query-X[=value]`, `--add-X[=value]`, `--remove-X[=value]` share this suffix.
    option: String,
    /// Whether `--timeout` applies to runtime additions.
    timed: bool,
    enabled_msg: Option<String>,
    disabled_msg: Option<String>,
}

impl Item {
    fn new(name: &str, value: Option<&str>, timed: bool) -> Item {
        Item {
            option: match value {
                Some(v) => format!("{name}={v}"),
                None => name.to_string(),
            },
            timed,
            enabled_msg: None,
            disabled_msg: None,
        }
    }
}

/// The configurations a transaction looks at: permanent (`true`) and/or runtime.
fn scopes(permanent: bool, immediate: bool) -> Vec<bool> {
    match (permanent, immediate) {
        (true, true) => vec![true, false],
        (true, false) => vec![true],
        _ => vec![false],
    }
}

/// Ansible's transaction logic as a pure function: given whether the item is enabled
/// in each of [`scopes`], which scopes to change and the operation's message.
pub fn plan(
    permanent: bool,
    immediate: bool,
    enabled: &[bool],
    enable: bool,
) -> (Vec<bool>, Vec<String>) {
    let header = match (permanent, immediate) {
        (true, true) => "Permanent and Non-Permanent(immediate) operation",
        (true, false) => "Permanent operation",
        _ => "Non-permanent operation",
    };
    let todo = scopes(permanent, immediate)
        .into_iter()
        .zip(enabled)
        .filter(|(_, on)| **on != enable)
        .map(|(perm, _)| perm)
        .collect();
    (todo, vec![header.to_string()])
}

/// The outcome of one transaction: `Ok((changed, msgs))`, or an early result (check
/// mode's bare `changed`, or a failure).
type Transaction = Result<(bool, Vec<String>), Outcome>;

#[allow(clippy::too_many_arguments)]
fn transaction(
    client: &Client,
    ctx: &ModuleContext,
    zone: &str,
    item: &Item,
    enable: bool,
    permanent: bool,
    immediate: bool,
    timeout: i64,
) -> Transaction {
    let zone_opt = format!("--zone={zone}");
    let query = |perm: bool| {
        client
            .query(
                perm,
                &[zone_opt.clone(), format!("--query-{}", item.option)],
            )
            .map_err(Outcome::failed)
    };
    let set = |perm: bool, on: bool| {
        let mut options = vec![
            zone_opt.clone(),
            format!("--{}-{}", if on { "add" } else { "remove" }, item.option),
        ];
        if on && !perm && item.timed && timeout > 0 {
            options.push(format!("--timeout={timeout}"));
        }
        client.act(perm, &options).map_err(Outcome::failed)
    };
    let mut changed = false;
    let scopes = scopes(permanent, immediate);
    let mut states = Vec::new();
    for perm in &scopes {
        states.push(query(*perm)?);
    }
    let (todo, mut msgs) = plan(permanent, immediate, &states, enable);
    if !todo.is_empty() && ctx.check {
        return Err(Outcome::new().with("changed", true));
    }
    for perm in todo {
        set(perm, enable)?;
        changed = true;
    }
    let extra = if enable {
        &item.enabled_msg
    } else {
        &item.disabled_msg
    };
    if let (true, Some(msg)) = (changed, extra) {
        msgs.push(msg.clone());
    }
    Ok((changed, msgs))
}

const NOT_PERMANENT: &str = "Zone operations must be permanent. Make sure you didn't set the 'permanent' flag to 'false' or the 'immediate' flag to 'true'.";

/// `firewalld`: services, ports, rules, sources, interfaces and zones.
pub fn firewalld(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "icmp_block",
        "icmp_block_inversion",
        "service",
        "protocol",
        "port",
        "port_forward",
        "rich_rule",
        "zone",
        "immediate",
        "source",
        "permanent",
        "state",
        "timeout",
        "interface",
        "forward",
        "masquerade",
        "offline",
        "target",
    ])?;
    let state = args
        .choice("state", &["absent", "disabled", "enabled", "present"], None)?
        .ok_or_else(|| ArgError::Missing("state".into()))?;
    let permanent = args.bool("permanent", false)?;
    let mut immediate = args.bool("immediate", false)?;
    let timeout = args.int("timeout")?.unwrap_or(0);
    let offline = args.bool("offline", false)?;
    let icmp_block_inversion = match args.get("icmp_block_inversion") {
        Some(_) => Some(args.bool("icmp_block_inversion", false)?),
        None => None,
    };
    let forward = match args.get("forward") {
        Some(_) => Some(args.bool("forward", false)?),
        None => None,
    };
    let masquerade = match args.get("masquerade") {
        Some(_) => Some(args.bool("masquerade", false)?),
        None => None,
    };
    let target = args.choice("target", &["default", "ACCEPT", "DROP", "%%REJECT%%"], None)?;
    mutually_exclusive(
        args,
        &[
            "icmp_block",
            "icmp_block_inversion",
            "service",
            "protocol",
            "port",
            "port_forward",
            "rich_rule",
            "interface",
            "forward",
            "masquerade",
            "source",
            "target",
        ],
    )?;
    for (key, needs) in [
        ("interface", "zone"),
        ("target", "zone"),
        ("source", "permanent"),
    ] {
        if args.has(key) && !args.has(needs) {
            return Err(ArgError::Invalid(format!(
                "missing parameter(s) required by '{key}': {needs}"
            )));
        }
    }

    // The sanity check: firewalld must be installed.
    let Some(online_cmd) = which("firewall-cmd") else {
        return Ok(Outcome::failed(format!(
            "{}. Version 0.2.11 or newer required (0.3.9 or newer for offline operations)",
            missing_required_lib("firewall")
        )));
    };
    let running = run(
        &online_cmd.display().to_string(),
        &["--state"],
        &ctx.environment,
        None,
    )
    .ok();
    let client = Client {
        program: if running {
            "firewall-cmd"
        } else {
            "firewall-offline-cmd"
        },
        offline: !running,
        env: ctx.environment.clone(),
    };

    if offline {
        if !permanent {
            return Ok(Outcome::failed(
                "offline cannot be enabled unless permanent changes are allowed",
            ));
        }
        if client.offline {
            immediate = false;
        }
    }
    if !permanent && !immediate {
        immediate = true;
    }
    if immediate && client.offline {
        return Ok(Outcome::failed("firewall is not currently running, unable to perform immediate actions without a running firewall daemon"));
    }

    let port = match args.str("port") {
        None => None,
        Some(p) => match p.trim().split_once('/') {
            Some((number, proto)) if !proto.is_empty() => Some(format!("{number}/{proto}")),
            _ => return Ok(Outcome::failed("improper port format (missing protocol?)")),
        },
    };
    let port_forward = match args.get("port_forward") {
        None => None,
        Some(list) => {
            let items: Vec<minijinja::Value> =
                list.try_iter().map(|i| i.collect()).unwrap_or_default();
            if items.len() > 1 {
                return Ok(Outcome::failed("Only one port forward supported at a time"));
            }
            match items.first() {
                None => None,
                Some(pf) => {
                    let field = |k: &str| {
                        pf.get_attr(k)
                            .ok()
                            .filter(|v| !v.is_undefined())
                            .map(|v| super::value_to_string(&v))
                    };
                    let (Some(p), Some(proto), Some(toport)) =
                        (field("port"), field("proto"), field("toport"))
                    else {
                        let msg = if field("port").is_none() {
                            "port must be specified for port forward"
                        } else if field("proto").is_none() {
                            "proto udp/tcp must be specified for port forward"
                        } else {
                            "toport must be specified for port forward"
                        };
                        return Ok(Outcome::failed(msg));
                    };
                    Some(format!(
                        "port={p}:proto={proto}:toport={toport}:toaddr={}",
                        field("toaddr").unwrap_or_default()
                    ))
                }
            }
        }
    };

    let modification = [
        "icmp_block",
        "icmp_block_inversion",
        "service",
        "protocol",
        "port",
        "port_forward",
        "rich_rule",
        "interface",
        "forward",
        "masquerade",
        "source",
        "target",
    ]
    .iter()
    .any(|k| args.has(k));
    if modification && matches!(state.as_str(), "absent" | "present") && target.is_none() {
        return Ok(Outcome::failed(
            "absent and present state can only be used in zone level operations",
        ));
    }

    let zone = match args.str("zone") {
        Some(z) => z,
        None => {
            let r = client.call(false, &["--get-default-zone".to_string()]);
            if !r.ok() {
                return Ok(Outcome::failed(exception(&r)));
            }
            r.stdout.trim().to_string()
        }
    };
    let enabled = state == "enabled";
    let mut items: Vec<(Item, bool, Option<String>)> = Vec::new();
    if let Some(v) = args.str("icmp_block") {
        items.push((
            Item::new("icmp-block", Some(&v), true),
            enabled,
            Some(format!("Changed icmp-block {v} to {state}")),
        ));
    }
    if let Some(inversion) = icmp_block_inversion {
        items.push((
            Item::new("icmp-block-inversion", None, false),
            enabled == inversion,
            Some(format!(
                "Changed icmp-block-inversion {} to {state}",
                if inversion { "True" } else { "False" }
            )),
        ));
    }
    if let Some(v) = args.str("service") {
        items.push((
            Item::new("service", Some(&v), true),
            enabled,
            Some(format!("Changed service {v} to {state}")),
        ));
    }
    if let Some(v) = args.str("protocol") {
        items.push((
            Item::new("protocol", Some(&v), true),
            enabled,
            Some(format!("Changed protocol {v} to {state}")),
        ));
    }
    if let Some(v) = args.str("source") {
        let mut item = Item::new("source", Some(&v), false);
        item.enabled_msg = Some(format!("Added {v} to zone {zone}"));
        item.disabled_msg = Some(format!("Removed {v} from zone {zone}"));
        items.push((item, enabled, None));
    }
    if let Some(v) = &port {
        items.push((
            Item::new("port", Some(v), true),
            enabled,
            Some(format!("Changed port {v} to {state}")),
        ));
    }
    if let Some(v) = &port_forward {
        items.push((
            Item::new("forward-port", Some(v), true),
            enabled,
            Some(format!("Changed port_forward {v} to {state}")),
        ));
    }
    if let Some(v) = args.str("rich_rule") {
        items.push((
            Item::new("rich-rule", Some(&v), true),
            enabled,
            Some(format!("Changed rich_rule {v} to {state}")),
        ));
    }
    if let Some(v) = args.str("interface") {
        let mut item = Item::new("interface", Some(&v), false);
        item.enabled_msg = Some(format!("Changed {v} to zone {zone}"));
        item.disabled_msg = Some(format!("Removed {v} from zone {zone}"));
        items.push((item, enabled, None));
    }
    if let Some(on) = forward {
        let mut item = Item::new("forward", None, false);
        item.enabled_msg = Some(format!("Added forward to zone {zone}"));
        item.disabled_msg = Some(format!("Removed forward from zone {zone}"));
        items.push((item, enabled == on, None));
    }
    if let Some(on) = masquerade {
        let mut item = Item::new("masquerade", None, true);
        item.enabled_msg = Some(format!("Added masquerade to zone {zone}"));
        item.disabled_msg = Some(format!("Removed masquerade from zone {zone}"));
        items.push((item, enabled == on, None));
    }

    let mut changed = false;
    let mut msgs: Vec<String> = Vec::new();
    for (item, enable, after) in &items {
        match transaction(
            &client, ctx, &zone, item, *enable, permanent, immediate, timeout,
        ) {
            Ok((c, m)) => {
                changed = c;
                msgs.extend(m);
                if let (true, Some(after)) = (c, after) {
                    msgs.push(after.clone());
                }
            }
            Err(early) => return Ok(early),
        }
    }

    if let Some(target) = &target {
        if immediate {
            return Ok(Outcome::failed(NOT_PERMANENT));
        }
        msgs.push("Permanent operation".into());
        let enable = matches!(state.as_str(), "present" | "enabled");
        let zone_opt = format!("--zone={zone}");
        let r = client.call(true, &[zone_opt.clone(), "--get-target".into()]);
        if !r.ok() {
            return Ok(Outcome::failed(exception(&r)));
        }
        let current = r.stdout.trim().to_string();
        let wanted = if enable { target.as_str() } else { "default" };
        let is_set = current == *target;
        // Ansible compares with the target given: `absent` resets a zone whose target
        // is the one named, whatever it is (even `default`).
        if is_set != enable {
            if ctx.check {
                return Ok(Outcome::new().with("changed", true));
            }
            if let Err(e) = client.act(true, &[zone_opt, format!("--set-target={wanted}")]) {
                return Ok(Outcome::failed(e));
            }
            changed = true;
            msgs.push(if enable {
                format!("Set zone {zone} target to {target}")
            } else {
                format!("Reset zone {zone} target to default")
            });
        } else {
            changed = false;
        }
    }

    if !modification && matches!(state.as_str(), "absent" | "present") {
        if immediate {
            return Ok(Outcome::failed(NOT_PERMANENT));
        }
        msgs.push("Permanent operation".into());
        let r = client.call(true, &["--get-zones".into()]);
        if !r.ok() {
            return Ok(Outcome::failed(exception(&r)));
        }
        let exists = r.stdout.split_whitespace().any(|z| z == zone);
        let want = state == "present";
        changed = false;
        if exists != want {
            if ctx.check {
                return Ok(Outcome::new().with("changed", true));
            }
            let option = if want {
                format!("--new-zone={zone}")
            } else {
                format!("--delete-zone={zone}")
            };
            if let Err(e) = client.act(true, &[option]) {
                return Ok(Outcome::failed(e));
            }
            changed = true;
            msgs.push(if want {
                format!("Added zone {zone}")
            } else {
                format!("Removed zone {zone}")
            });
            msgs.push(format!("Changed zone {zone} to {state}"));
        }
    }

    if client.offline {
        msgs.push("(offline operation: only on-disk configs were altered)".into());
    }
    Ok(Outcome::new()
        .with("changed", changed)
        .with("msg", msgs.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, minijinja::Value)]) -> Args {
        Args::new(
            "firewalld",
            minijinja::Value::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.clone()))),
        )
    }

    /// Only the configurations that differ change; the message names the operation.
    #[test]
    fn transaction_plans() {
        let (todo, msgs) = plan(true, true, &[true, false], true);
        assert_eq!(todo, vec![false]);
        assert_eq!(
            msgs,
            vec!["Permanent and Non-Permanent(immediate) operation"]
        );
        let (todo, msgs) = plan(true, false, &[true], false);
        assert_eq!(todo, vec![true]);
        assert_eq!(msgs, vec!["Permanent operation"]);
        let (todo, msgs) = plan(false, true, &[true], true);
        assert!(todo.is_empty());
        assert_eq!(msgs, vec!["Non-permanent operation"]);
    }

    /// Arguments are checked before firewalld is looked for, with Ansible's messages.
    #[test]
    fn argument_errors_come_first() {
        let ctx = ModuleContext::default();
        let both = args(&[
            ("service", "http".into()),
            ("port", "80/tcp".into()),
            ("state", "enabled".into()),
        ]);
        assert_eq!(
            firewalld(&both, &ctx).unwrap_err().to_string(),
            "parameters are mutually exclusive: icmp_block|icmp_block_inversion|service|protocol|port|port_forward|rich_rule|interface|forward|masquerade|source|target"
        );
        let no_state = args(&[("service", "http".into())]);
        assert_eq!(
            firewalld(&no_state, &ctx).unwrap_err().to_string(),
            "missing required arguments: state"
        );
        let source = args(&[("source", "10.0.0.0/8".into()), ("state", "enabled".into())]);
        assert_eq!(
            firewalld(&source, &ctx).unwrap_err().to_string(),
            "missing parameter(s) required by 'source': permanent"
        );
    }
}
