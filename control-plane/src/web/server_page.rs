//! The technician's parts of the server page (`/servers/{id}`): the agent's facts and
//! live figures, the charts' settings (drawn by `web/static/server_charts.js` from
//! `GET /api/v1/servers/{id}/metrics`), the server's recent executions, backups and
//! updates (a few rows each, read through their by-server indexes), and the project's
//! deploy command. Rendered by the `metrics/*` partials.

use serde_json::{json, Value};

use super::Ctx;
use crate::agents::Agent;
use crate::app::App;
use crate::backups;
use crate::executions;
use crate::policy::{self, Action};
use crate::projects::Project;
use crate::servers::Server;
use crate::store::Read;
use crate::updates;

/// Rows of each recent list.
const RECENT: usize = 5;

/// The chart ranges the page offers: label, `since` seconds back, step.
const RANGES: [(&str, i64, i64); 4] = [
    ("Hour", 3_600, 10),
    ("Day", 86_400, 300),
    ("Week", 7 * 86_400, 1_800),
    ("Month", 30 * 86_400, 7_200),
];

/// What the partials show; `null` parts are left out. Sales never reach a server page
/// (the caller checked `ViewServers` for the server's project).
pub fn panel(
    app: &App,
    r: &impl Read,
    ctx: &Ctx,
    server: &Server,
    project: Option<&Project>,
) -> anyhow::Result<Value> {
    let fleet = policy::can(&ctx.subject, Action::UseFleet, None);
    if !fleet {
        return Ok(json!({
            "fleet": false, "facts": null, "playbook_facts": null, "has_agent": false, "ranges": [],
            "executions": [], "backups": [], "updates": [], "deploy_command": null,
            "drift": [],
        }));
    }
    let agent = match &server.agent_id {
        Some(id) => r.get::<Agent>(id)?,
        None => None,
    };
    let facts = agent.as_ref().map(|a| {
        let live = app.fleet.live(r, &a.id);
        let load = live.as_ref().and_then(|(_, load)| load.clone());
        let f = &a.facts;
        json!({
            "os": f.os,
            "kernel": f.kernel,
            "arch": f.arch,
            "hostname": f.hostname,
            "cpus": f.cpus,
            "memory": bytes(load.as_ref().map_or(f.memory_bytes, |l| l.memory_total)),
            "memory_used": load.as_ref().map(|l| bytes(l.memory_total.saturating_sub(l.memory_available))),
            "disk": bytes(load.as_ref().map_or(f.disk_bytes, |l| l.disk_total)),
            "disk_used": load.as_ref().map(|l| bytes(l.disk_total.saturating_sub(l.disk_available))),
            "uptime": duration(load.as_ref().map_or(f.uptime_s, |l| l.uptime_s)),
            "load": load.as_ref().map(|l| format!("{:.2} {:.2} {:.2}", l.load[0], l.load[1], l.load[2])),
            "cpu_percent": load.as_ref().and_then(|l| l.cpu_percent).map(|c| format!("{c:.1} %")),
            "version": f.agent_version,
            "live": live.is_some(),
        })
    });
    let executions = executions::query(
        r,
        &ctx.subject,
        &executions::Filter {
            server_id: Some(server.id.clone()),
            ..Default::default()
        },
        None,
        RECENT,
    )?
    .items
    .iter()
    .map(|e| super::fleet_api::execution_view(r, e))
    .collect::<anyhow::Result<Vec<_>>>()?;
    let by_server = backups::Filter {
        server_id: Some(server.id.clone()),
        ..Default::default()
    };
    let backups: Vec<Value> = backups::query(r, &ctx.subject, &by_server, None, RECENT)?
        .items
        .iter()
        .map(|b| {
            json!({
                "id": b.id,
                "status": b.status.as_str(),
                "created_at": b.created_at,
                "what": if b.service.is_empty() { b.compose_project.clone() } else { format!("{}/{}", b.compose_project, b.service) },
                "size": b.size.map(bytes),
                "error": b.error,
            })
        })
        .collect();
    let updates: Vec<Value> = updates::query(r, &ctx.subject, &by_server, None, RECENT)?
        .items
        .iter()
        .map(|u| {
            json!({
                "id": u.id,
                "status": u.status.as_str(),
                "created_at": u.created_at,
                "check": u.check,
                "packages": u.packages.len(),
                "error": u.error,
            })
        })
        .collect();
    // Its drift status against each desired-state script covering it.
    let drift: Vec<Value> = crate::drift::results_of_server(r, &server.id)?
        .iter()
        .map(|d| super::drift_pages::row(r, ctx, d))
        .collect::<anyhow::Result<_>>()?;
    let can_operate = policy::can(
        &ctx.subject,
        Action::OperateServers,
        Some(&server.project_id),
    );
    // The facts hold the environment of a run: shown to those who may run playbooks
    // here, who can read them through `hostvars` anyway.
    let playbook_facts = if can_operate {
        crate::inventory::facts_of_server(r, server)?.map(|f| playbook_facts(&f))
    } else {
        None
    };
    let deploy = project
        .and_then(|p| p.deploy_command.clone())
        .filter(|c| !c.trim().is_empty() && can_operate && server.agent_id.is_some());
    let ranges: Vec<Value> = RANGES
        .iter()
        .enumerate()
        .map(|(i, (label, back, step))| {
            json!({"label": label, "since": back, "step": step, "first": i == 0})
        })
        .collect();
    Ok(json!({
        "fleet": true,
        "facts": facts,
        "playbook_facts": playbook_facts,
        "has_agent": agent.is_some(),
        "ranges": ranges,
        "executions": executions,
        "backups": backups,
        "updates": updates,
        "deploy_command": deploy,
        "drift": drift,
    }))
}

/// The Playbook facts card: the server's last gathering (with what modules such as
/// `service_facts` returned), a few of them picked out, and all as JSON.
fn playbook_facts(stored: &crate::inventory::ServerFacts) -> Value {
    let f = &stored.facts;
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let mut picked: Vec<Value> = Vec::new();
    let mut pick = |label: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            picked.push(json!({"label": label, "value": value}));
        }
    };
    pick(
        "Distribution",
        text(f.get("distribution")).map(|d| match text(f.get("distribution_version")) {
            Some(v) => format!("{d} {v}"),
            None => d,
        }),
    );
    pick("FQDN", text(f.get("fqdn")));
    pick(
        "Default IPv4",
        text(f.get("default_ipv4").and_then(|i| i.get("address"))),
    );
    pick("Python", text(f.get("python_version")));
    pick(
        "Services",
        f.get("services")
            .and_then(Value::as_object)
            .map(|services| {
                let running = services
                    .values()
                    .filter(|s| s.get("state").and_then(Value::as_str) == Some("running"))
                    .count();
                format!("{running} running of {}", services.len())
            }),
    );
    json!({
        "gathered_at": stored.gathered_at,
        "received_at": stored.received_at,
        "execution_id": stored.execution_id,
        "count": f.len(),
        "picked": picked,
        "json": serde_json::to_string_pretty(f).unwrap_or_default(),
    })
}

/// Bytes for people: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds for people: `3 d 4 h`, `5 h 12 min`, `42 min`.
pub fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
        assert_eq!(duration(59), "0 min");
        assert_eq!(duration(3_600 * 5 + 720), "5 h 12 min");
        assert_eq!(duration(86_400 * 3 + 3_600 * 4), "3 d 4 h");
    }
}
