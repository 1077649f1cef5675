//! Projects (one per Hetzner Cloud project), their per-user access grants and
//! budgets. A project's Hetzner token is stored encrypted and never returned.
//! Indexes: `project_by_name` (lower-cased name), `grant_by_user` (`user/project`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::Level;
use crate::secrets::Keys;
use crate::store::{Read, Record, Writer};
use crate::users::{self, User};
use crate::validate;

const BY_NAME: &str = "project_by_name";
const GRANT_BY_USER: &str = "grant_by_user";

/// The outcome of the last Hetzner sync.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub at: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    /// Hetzner's own message when the sync failed.
    pub error: Option<String>,
}

/// A project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub budget_monthly: Option<f64>,
    /// The Hetzner API token, encrypted with the master key.
    pub hetzner_token_enc: Option<String>,
    pub last_sync: Option<SyncStatus>,
    /// The command that deploys the project's application on a server.
    pub deploy_command: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Record for Project {
    const TABLE: &'static str = "projects";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The API view of a project: never the token, only whether one is set.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub budget_monthly: Option<f64>,
    pub has_hetzner_token: bool,
    pub last_sync: Option<SyncStatus>,
    pub deploy_command: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&Project> for ProjectView {
    fn from(p: &Project) -> ProjectView {
        ProjectView {
            id: p.id.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            budget_monthly: p.budget_monthly,
            has_hetzner_token: p.hetzner_token_enc.is_some(),
            last_sync: p.last_sync.clone(),
            deploy_command: p.deploy_command.clone(),
            created_at: p.created_at,
        }
    }
}

/// A user's access to a project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    /// `project_id/user_id`.
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub level: Level,
    pub granted_by: String,
    pub granted_at: chrono::DateTime<chrono::Utc>,
}

impl Record for Grant {
    const TABLE: &'static str = "grants";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Fields of a project as forms and the API send them; absent means unchanged on edit.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub hetzner_token: Option<String>,
    pub budget_monthly: Option<f64>,
    pub deploy_command: Option<String>,
}

/// Finds a project by id or (case-insensitive) name.
pub fn find(r: &impl Read, key: &str) -> anyhow::Result<Option<Project>> {
    if let Some(p) = r.get::<Project>(key)? {
        return Ok(Some(p));
    }
    match r.index_get(BY_NAME, &key.trim().to_lowercase())? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// Every project, sorted by name.
pub fn all(r: &impl Read) -> anyhow::Result<Vec<Project>> {
    let mut projects: Vec<Project> = r.list()?;
    projects.sort_by_key(|p| p.name.to_lowercase());
    Ok(projects)
}

fn check_token(token: &str) -> AppResult<()> {
    if token.len() > 200 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AppError::invalid(
            "hetzner_token",
            "the Hetzner API token must be one word of at most 200 characters",
        ));
    }
    Ok(())
}

/// Creates a project.
pub fn create(
    w: &mut Writer,
    keys: &Keys,
    actor: &Actor,
    input: &ProjectInput,
) -> AppResult<Project> {
    let name = validate::required("name", input.name.as_deref(), 80)?;
    let description = validate::optional(
        "description",
        input.description.as_deref(),
        validate::MAX_TEXT,
    )?;
    let budget_monthly = validate::money("budget_monthly", input.budget_monthly)?;
    let deploy_command =
        validate::optional("deploy_command", input.deploy_command.as_deref(), 1000)?;
    let token = input
        .hetzner_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = token {
        check_token(t)?;
    }
    if find(w, &name)?.is_some() {
        return Err(AppError::invalid(
            "name",
            format!("a project named {name} exists"),
        ));
    }
    let project = Project {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        description,
        budget_monthly,
        hetzner_token_enc: token.map(|t| keys.encrypt(t)),
        last_sync: None,
        deploy_command,
        created_at: chrono::Utc::now(),
    };
    w.put(&project)?;
    w.index_put(BY_NAME, &name.to_lowercase(), &project.id)?;
    audit::record(
        w,
        actor,
        "project.create",
        &format!("project:{name}"),
        if token.is_some() {
            "with Hetzner token"
        } else {
            ""
        },
    )?;
    Ok(project)
}

/// Edits a project. An empty token field keeps the stored token; `clear_token` removes it.
pub fn update(
    w: &mut Writer,
    keys: &Keys,
    actor: &Actor,
    project_id: &str,
    input: &ProjectInput,
    clear_token: bool,
) -> AppResult<Project> {
    let mut project: Project = w
        .get(project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let mut changes = Vec::new();
    if let Some(name) = input.name.as_deref() {
        let name = validate::required("name", Some(name), 80)?;
        if name != project.name {
            if let Some(other) = find(w, &name)? {
                if other.id != project.id {
                    return Err(AppError::invalid(
                        "name",
                        format!("a project named {name} exists"),
                    ));
                }
            }
            w.index_delete(BY_NAME, &project.name.to_lowercase())?;
            w.index_put(BY_NAME, &name.to_lowercase(), &project.id)?;
            changes.push(format!("renamed {} -> {name}", project.name));
            project.name = name;
        }
    }
    if let Some(d) = input.description.as_deref() {
        project.description = validate::optional("description", Some(d), validate::MAX_TEXT)?;
    }
    if input.budget_monthly.is_some() {
        project.budget_monthly = validate::money("budget_monthly", input.budget_monthly)?;
        changes.push(format!("budget {:?}", project.budget_monthly));
    }
    if let Some(cmd) = input.deploy_command.as_deref() {
        project.deploy_command = validate::optional("deploy_command", Some(cmd), 1000)?;
    }
    match input
        .hetzner_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(token) => {
            check_token(token)?;
            project.hetzner_token_enc = Some(keys.encrypt(token));
            changes.push("Hetzner token replaced".into());
        }
        None if clear_token && project.hetzner_token_enc.is_some() => {
            project.hetzner_token_enc = None;
            changes.push("Hetzner token removed".into());
        }
        None => {}
    }
    w.put(&project)?;
    audit::record(
        w,
        actor,
        "project.update",
        &format!("project:{}", project.name),
        changes.join(", "),
    )?;
    Ok(project)
}

/// Grants (or changes) a user's level on a project.
pub fn grant(
    w: &mut Writer,
    actor: &Actor,
    project_id: &str,
    username: &str,
    level: Level,
) -> AppResult<Grant> {
    let project: Project = w
        .get(project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let user: User = users::by_username(w, username.trim())?
        .ok_or_else(|| AppError::invalid("username", format!("no user named {username}")))?;
    let grant = Grant {
        id: format!("{}/{}", project.id, user.id),
        project_id: project.id.clone(),
        user_id: user.id.clone(),
        level,
        granted_by: actor.username.clone(),
        granted_at: chrono::Utc::now(),
    };
    w.put(&grant)?;
    w.index_put(
        GRANT_BY_USER,
        &format!("{}/{}", user.id, project.id),
        &grant.id,
    )?;
    audit::record(
        w,
        actor,
        "access.grant",
        &format!("project:{}", project.name),
        format!("{} {}", user.username, level.as_str()),
    )?;
    Ok(grant)
}

/// Revokes a user's access to a project; 404 when there was none.
pub fn revoke(w: &mut Writer, actor: &Actor, project_id: &str, username: &str) -> AppResult<()> {
    let project: Project = w
        .get(project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let user = users::by_username(w, username)?.ok_or_else(|| AppError::not_found("user"))?;
    if !w.delete::<Grant>(&format!("{}/{}", project.id, user.id))? {
        return Err(AppError::not_found("access grant"));
    }
    w.index_delete(GRANT_BY_USER, &format!("{}/{}", user.id, project.id))?;
    audit::record(
        w,
        actor,
        "access.revoke",
        &format!("project:{}", project.name),
        user.username.clone(),
    )?;
    Ok(())
}

/// A user's grants: project id -> level.
pub fn grants_of_user(r: &impl Read, user_id: &str) -> anyhow::Result<HashMap<String, Level>> {
    let mut out = HashMap::new();
    for (_, grant_id) in r.index_scan(GRANT_BY_USER, &format!("{user_id}/"))? {
        if let Some(g) = r.get::<Grant>(&grant_id)? {
            out.insert(g.project_id, g.level);
        }
    }
    Ok(out)
}

/// Every grant, for the access page.
pub fn all_grants(r: &impl Read) -> anyhow::Result<Vec<Grant>> {
    r.list()
}

/// Decrypts a project's Hetzner token, falling back to the default token.
pub fn hetzner_token(
    keys: &Keys,
    project: &Project,
    default: Option<&str>,
) -> anyhow::Result<Option<String>> {
    match &project.hetzner_token_enc {
        Some(enc) => Ok(Some(keys.decrypt(enc)?)),
        None => Ok(default.map(String::from)),
    }
}
