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
use crate::validate::{self, Problems};

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
    /// Whether people with the `terminal` permission may open terminals on the
    /// project's servers; its admins can turn it off. On for records written before
    /// the setting existed.
    #[serde(default = "terminal_enabled_default")]
    pub terminal_enabled: bool,
}

/// Terminals are allowed unless a project's admins turn them off.
fn terminal_enabled_default() -> bool {
    true
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
    pub terminal_enabled: bool,
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
            terminal_enabled: p.terminal_enabled,
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
    /// Whether terminals may be opened on the project's servers (on when absent at
    /// creation; unchanged when absent on edit).
    pub terminal_enabled: Option<bool>,
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

/// A typed token, trimmed; empty is `None`.
fn typed_token(input: &ProjectInput) -> AppResult<Option<&str>> {
    match input
        .hetzner_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(token) => check_token(token).map(|()| Some(token)),
        None => Ok(None),
    }
}

/// A project name free for the project `own_id` (or a new one), checked into
/// `problems` when the name itself is valid.
fn check_name(
    r: &impl Read,
    name: &AppResult<String>,
    own_id: Option<&str>,
    problems: &mut Problems,
) -> AppResult<()> {
    if let Ok(name) = name {
        if let Some(other) = find(r, name)? {
            if Some(other.id.as_str()) != own_id {
                problems.add(AppError::invalid(
                    "name",
                    format!("a project named {name} exists"),
                ));
            }
        }
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
    create_adding_to(w, keys, actor, input, Problems::new())
}

/// Creates a project when neither `earlier` (what the caller found reading its form)
/// nor the checks here find a problem; else one error naming every bad field.
pub fn create_adding_to(
    w: &mut Writer,
    keys: &Keys,
    actor: &Actor,
    input: &ProjectInput,
    earlier: Problems,
) -> AppResult<Project> {
    let mut problems = earlier;
    let name = problems.check(validate::name("name", input.name.as_deref(), 80));
    check_name(w, &name, None, &mut problems)?;
    let description = problems.check(validate::text(
        "description",
        input.description.as_deref(),
        validate::MAX_TEXT,
    ));
    let budget_monthly = problems.check(validate::money("budget_monthly", input.budget_monthly));
    let deploy_command = problems.check(validate::text(
        "deploy_command",
        input.deploy_command.as_deref(),
        1000,
    ));
    let token = problems.check(typed_token(input));
    problems.finish()?;
    let (name, token) = (name?, token?);
    let project = Project {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        description: description?,
        budget_monthly: budget_monthly?,
        hetzner_token_enc: token.map(|t| keys.encrypt(t)),
        last_sync: None,
        deploy_command: deploy_command?,
        created_at: chrono::Utc::now(),
        terminal_enabled: input.terminal_enabled.unwrap_or(true),
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
    update_adding_to(
        w,
        keys,
        actor,
        project_id,
        input,
        clear_token,
        Problems::new(),
    )
}

/// Edits a project like [`update`] when neither `earlier` (what the caller found
/// reading its form) nor the checks here find a problem; else one error naming every
/// bad field, and nothing changes.
pub fn update_adding_to(
    w: &mut Writer,
    keys: &Keys,
    actor: &Actor,
    project_id: &str,
    input: &ProjectInput,
    clear_token: bool,
    earlier: Problems,
) -> AppResult<Project> {
    let mut project: Project = w
        .get(project_id)?
        .ok_or_else(|| AppError::not_found("project"))?;
    let mut problems = earlier;
    let name = input
        .name
        .as_deref()
        .map(|name| problems.check(validate::name("name", Some(name), 80)));
    if let Some(name) = &name {
        check_name(w, name, Some(&project.id), &mut problems)?;
    }
    let description = input
        .description
        .as_deref()
        .map(|d| problems.check(validate::text("description", Some(d), validate::MAX_TEXT)));
    let budget_monthly = input
        .budget_monthly
        .map(|b| problems.check(validate::money("budget_monthly", Some(b))));
    let deploy_command = input
        .deploy_command
        .as_deref()
        .map(|cmd| problems.check(validate::text("deploy_command", Some(cmd), 1000)));
    let token = problems.check(typed_token(input));
    problems.finish()?;
    let mut changes = Vec::new();
    if let Some(name) = name {
        let name = name?;
        if name != project.name {
            w.index_delete(BY_NAME, &project.name.to_lowercase())?;
            w.index_put(BY_NAME, &name.to_lowercase(), &project.id)?;
            changes.push(format!("renamed {} -> {name}", project.name));
            project.name = name;
        }
    }
    if let Some(description) = description {
        project.description = description?;
    }
    if let Some(budget) = budget_monthly {
        project.budget_monthly = budget?;
        changes.push(format!("budget {:?}", project.budget_monthly));
    }
    if let Some(cmd) = deploy_command {
        project.deploy_command = cmd?;
    }
    if let Some(enabled) = input.terminal_enabled {
        if enabled != project.terminal_enabled {
            project.terminal_enabled = enabled;
            changes.push(format!(
                "terminals {}",
                if enabled { "allowed" } else { "turned off" }
            ));
        }
    }
    match token? {
        Some(token) => {
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
    let user: User = users::by_username(w, username.trim())?.ok_or_else(|| {
        AppError::invalid(
            "username",
            format!("no user named {}", validate::echo(username)),
        )
    })?;
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
    let ids: Vec<String> = r
        .index_scan(GRANT_BY_USER, &grants_prefix(user_id))?
        .into_iter()
        .map(|(_, grant_id)| grant_id)
        .collect();
    // One query for them all on PostgreSQL: every request asks for its caller's grants.
    Ok(r.get_many::<Grant>(&ids)?
        .into_iter()
        .flatten()
        .map(|g| (g.project_id, g.level))
        .collect())
}

/// Adds to `ahead` the read of [`grants_of_user`] that needs no other answer first.
pub fn grants_ahead(ahead: crate::store::Ahead, user_id: &str) -> crate::store::Ahead {
    ahead.scan(GRANT_BY_USER, grants_prefix(user_id))
}

/// Where a user's grants sit in `GRANT_BY_USER`.
fn grants_prefix(user_id: &str) -> String {
    format!("{user_id}/")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The fields an error names, in order.
    fn fields(err: &AppError) -> Vec<&str> {
        err.field_errors().into_iter().map(|(f, _)| f).collect()
    }

    fn world() -> (tempfile::TempDir, Store, Keys, Project) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let keys = Keys::from_master(b"test secret");
        let input = ProjectInput {
            name: Some("Nova HR".into()),
            budget_monthly: Some(100.0),
            ..Default::default()
        };
        let project = store
            .write(|w| Ok(create(w, &keys, &Actor::system(), &input)?))
            .unwrap();
        (dir, store, keys, project)
    }

    /// A new project with a taken name, a negative budget, a long deploy command and a
    /// token with spaces hears about all four at once, and nothing is created; what
    /// the caller found before (a budget that was not a number) comes first.
    #[test]
    fn create_reports_every_problem() {
        let (_dir, store, keys, _) = world();
        let input = ProjectInput {
            name: Some("nova hr".into()),
            budget_monthly: Some(-1.0),
            deploy_command: Some("x".repeat(1001)),
            hetzner_token: Some("two words".into()),
            ..Default::default()
        };
        let err = store
            .write(|w| Ok(create(w, &keys, &Actor::system(), &input)))
            .unwrap()
            .unwrap_err();
        assert_eq!(
            fields(&err),
            ["name", "budget_monthly", "deploy_command", "hetzner_token"]
        );
        assert_eq!(err.message, "a project named nova hr exists");

        let mut earlier = Problems::new();
        earlier.add(AppError::invalid(
            "budget_monthly",
            "Budget monthly must be a number",
        ));
        let input = ProjectInput {
            name: Some(" ".into()),
            ..Default::default()
        };
        let err = store
            .write(|w| {
                Ok(create_adding_to(
                    w,
                    &keys,
                    &Actor::system(),
                    &input,
                    earlier,
                ))
            })
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["budget_monthly", "name"]);
        assert_eq!(store.read(all).unwrap().len(), 1);
    }

    /// An edit with several bad fields names them all and changes nothing; a valid
    /// edit (its own name kept) still goes through.
    #[test]
    fn update_reports_every_problem() {
        let (_dir, store, keys, project) = world();
        store
            .write(|w| {
                let other = ProjectInput {
                    name: Some("Acme".into()),
                    ..Default::default()
                };
                Ok(create(w, &keys, &Actor::system(), &other)?)
            })
            .unwrap();
        let input = ProjectInput {
            name: Some("ACME".into()),
            description: Some("x".repeat(validate::MAX_TEXT + 1)),
            budget_monthly: Some(f64::NAN),
            ..Default::default()
        };
        let err = store
            .write(|w| {
                Ok(update(
                    w,
                    &keys,
                    &Actor::system(),
                    &project.id,
                    &input,
                    false,
                ))
            })
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["name", "description", "budget_monthly"]);
        let kept = store.read(|r| find(r, &project.id)).unwrap().unwrap();
        assert_eq!(
            (kept.name.as_str(), kept.budget_monthly),
            ("Nova HR", Some(100.0))
        );

        let input = ProjectInput {
            name: Some("Nova HR".into()),
            budget_monthly: Some(120.0),
            ..Default::default()
        };
        let saved = store
            .write(|w| {
                Ok(update(
                    w,
                    &keys,
                    &Actor::system(),
                    &project.id,
                    &input,
                    false,
                )?)
            })
            .unwrap();
        assert_eq!(saved.budget_monthly, Some(120.0));
    }
}
