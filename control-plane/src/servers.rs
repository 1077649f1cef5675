//! Servers: one record per machine we manage, whether it came from a Hetzner sync, an
//! enrolled agent, or both (then it is one server with both views: `hetzner_id` and
//! `agent_id`). Index: `server_by_name` (`project_id/name`).

use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{self, Action, Subject};
use crate::store::{Read, Record, Writer};
use crate::validate;

const BY_NAME: &str = "server_by_name";

/// A managed server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub project_id: String,
    /// Hetzner's status (`running`, `off`, …), `deleted` when gone at Hetzner, or
    /// `unknown` for a server known only through its agent.
    pub status: String,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub image: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub hetzner_id: Option<i64>,
    pub agent_id: Option<String>,
    pub monthly_cost: Option<f64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Record for Server {
    const TABLE: &'static str = "servers";
    fn id(&self) -> &str {
        &self.id
    }
}

/// What it takes to register a server by hand (or from the demo seed).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub name: Option<String>,
    pub project: Option<String>,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub image: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub status: Option<String>,
    pub monthly_cost: Option<f64>,
}

fn name_key(project_id: &str, name: &str) -> String {
    format!("{project_id}/{}", name.to_lowercase())
}

/// Finds a server of a project by name.
pub fn by_name(r: &impl Read, project_id: &str, name: &str) -> anyhow::Result<Option<Server>> {
    match r.index_get(BY_NAME, &name_key(project_id, name))? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// Validates and registers a server in a project.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    project_id: &str,
    input: &NewServer,
) -> AppResult<Server> {
    let name = validate::required("name", input.name.as_deref(), 63)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(AppError::invalid(
            "name",
            "name may hold letters, digits, '-' and '.' only",
        ));
    }
    if let Some(ip) = input.ipv4.as_deref().filter(|s| !s.is_empty()) {
        ip.parse::<std::net::Ipv4Addr>()
            .map_err(|_| AppError::invalid("ipv4", "ipv4 is not an IPv4 address"))?;
    }
    if by_name(w, project_id, &name)?.is_some() {
        return Err(AppError::invalid(
            "name",
            format!("the project already has a server named {name}"),
        ));
    }
    let now = chrono::Utc::now();
    let server = Server {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        project_id: project_id.to_string(),
        status: input.status.clone().unwrap_or_else(|| "unknown".into()),
        server_type: validate::optional("server_type", input.server_type.as_deref(), 40)?,
        location: validate::optional("location", input.location.as_deref(), 40)?,
        image: validate::optional("image", input.image.as_deref(), 80)?,
        ipv4: validate::optional("ipv4", input.ipv4.as_deref(), 15)?,
        ipv6: validate::optional("ipv6", input.ipv6.as_deref(), 45)?,
        labels: Default::default(),
        hetzner_id: None,
        agent_id: None,
        monthly_cost: validate::money("monthly_cost", input.monthly_cost)?,
        created_at: now,
        updated_at: now,
    };
    save(w, &server)?;
    audit::record(w, actor, "server.create", &format!("server:{name}"), "")?;
    Ok(server)
}

/// Writes a server and keeps its name index current.
pub fn save(w: &mut Writer, server: &Server) -> anyhow::Result<()> {
    if let Some(old) = w.get::<Server>(&server.id)? {
        if old.name != server.name || old.project_id != server.project_id {
            w.index_delete(BY_NAME, &name_key(&old.project_id, &old.name))?;
        }
    }
    w.put(server)?;
    w.index_put(
        BY_NAME,
        &name_key(&server.project_id, &server.name),
        &server.id,
    )?;
    Ok(())
}

/// The servers a subject may see, sorted by name, optionally filtered by a search
/// text matched against name, addresses, type, location and status.
pub fn visible(
    r: &impl Read,
    subject: &Subject,
    query: Option<&str>,
) -> anyhow::Result<Vec<Server>> {
    let needle = query
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty());
    let mut servers: Vec<Server> = r
        .list::<Server>()?
        .into_iter()
        .filter(|s| policy::can(subject, Action::ViewServers, Some(&s.project_id)))
        .filter(|s| match &needle {
            None => true,
            Some(q) => search_text(s).contains(q.as_str()),
        })
        .collect();
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(servers)
}

/// The text a search matches a server against.
pub fn search_text(s: &Server) -> String {
    [
        Some(s.name.as_str()),
        s.ipv4.as_deref(),
        s.ipv6.as_deref(),
        s.server_type.as_deref(),
        s.location.as_deref(),
        Some(s.status.as_str()),
    ]
    .iter()
    .flatten()
    .copied()
    .collect::<Vec<_>>()
    .join(" ")
    .to_lowercase()
}

/// One server the subject may see; 404 for unknown, 403 for another project's.
pub fn get_visible(r: &impl Read, subject: &Subject, id: &str) -> AppResult<Server> {
    let server: Server = r.get(id)?.ok_or_else(|| AppError::not_found("server"))?;
    if !policy::can(subject, Action::ViewServers, Some(&server.project_id)) {
        return Err(AppError::forbidden());
    }
    Ok(server)
}
