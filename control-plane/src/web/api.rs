//! JSON API handlers under `/api/v1` (names in CONTRACT.md). Each parses its input,
//! asks `policy::can`, calls the domain module and answers JSON.

use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;

use super::{json as reply, Ctx, Req, Resp};
use crate::app::App;
use crate::audit;
use crate::auth;
use crate::error::{AppError, AppResult};
use crate::listing;
use crate::policy::{self, Action, Level};
use crate::projects::{self, Project, ProjectInput, ProjectView};
use crate::servers::{self, Server};
use crate::store::{Ahead, Read};
use crate::users::{self, NewUser, User, UserChange, UserView};

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// `GET /api/v1/me`.
pub fn me(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let projects = app.store.read(projects::all)?;
    let list: Vec<Value> = projects
        .iter()
        .filter_map(|p| {
            ctx.subject
                .level_on(&p.id)
                .map(|level| json!({"id": p.id, "name": p.name, "level": level}))
        })
        .collect();
    Ok(reply(
        StatusCode::OK,
        &json!({
            "username": ctx.user.username,
            "role": ctx.user.role,
            "is_manager": ctx.user.is_manager,
            "full_name": ctx.user.full_name,
            "projects": list,
        }),
    ))
}

/// The API shape of a server.
pub fn server_json(app: &App, r: &impl Read, server: &Server) -> anyhow::Result<Value> {
    let project = r
        .get::<Project>(&server.project_id)?
        .map(|p| p.name)
        .unwrap_or_default();
    server_json_in(app, r, server, project)
}

/// [`server_json`] with its project's name already known.
fn server_json_in(
    app: &App,
    r: &impl Read,
    server: &Server,
    project: String,
) -> anyhow::Result<Value> {
    let agent = super::fleet_api::server_agent_json(app, r, server)?;
    Ok(json!({
        "id": server.id,
        "name": server.name,
        "project": project,
        "project_id": server.project_id,
        "status": server.status,
        "server_type": server.server_type,
        "location": server.location,
        "image": server.image,
        "ipv4": server.ipv4,
        "ipv6": server.ipv6,
        "labels": server.labels,
        "hetzner_id": server.hetzner_id,
        "monthly_cost": server.monthly_cost,
        "created_at": server.created_at,
        "agent": agent,
    }))
}

/// [`server_json`] of each server of a page, reading their agents and presences
/// ahead (one query each on PostgreSQL instead of two per row) and each project once
/// (a page of 100 servers names a few projects).
pub fn server_rows(app: &App, r: &impl Read, list: &[Server]) -> anyhow::Result<Vec<Value>> {
    let agents: Vec<String> = list.iter().filter_map(|s| s.agent_id.clone()).collect();
    let names = project_names(
        app,
        r,
        list,
        Ahead::default().records::<crate::agents::Agent>(&agents),
    )?;
    list.iter()
        .map(|s| {
            let project = names.get(&s.project_id).cloned().unwrap_or_default();
            server_json_in(app, r, s, project)
        })
        .collect()
}

/// A server as the pages list it (Servers, the dashboard, a project): what their
/// templates show and no more. Whether its agent is connected is all they show of
/// the agent, so a page of rows reads no agent record.
#[derive(serde::Serialize)]
pub struct ServerListRow<'a> {
    id: &'a str,
    name: &'a str,
    project: String,
    status: &'a str,
    running: bool,
    server_type: Option<&'a str>,
    location: Option<&'a str>,
    ipv4: Option<&'a str>,
    monthly_cost: Option<f64>,
    agent: Option<ListedAgent<'a>>,
}

/// The agent of a [`ServerListRow`].
#[derive(serde::Serialize)]
struct ListedAgent<'a> {
    id: &'a str,
    connected: bool,
}

/// The [`ServerListRow`]s of a page of servers, asking `more` reads of the page
/// ahead with the rows' projects and (with replicas) their agents' presences.
pub fn server_list_rows<'a>(
    app: &App,
    r: &impl Read,
    list: &'a [Server],
    more: Ahead,
) -> anyhow::Result<Vec<ServerListRow<'a>>> {
    let names = project_names(app, r, list, more)?;
    Ok(list
        .iter()
        .map(|s| ServerListRow {
            id: &s.id,
            name: &s.name,
            project: names.get(&s.project_id).cloned().unwrap_or_default(),
            status: &s.status,
            running: s.status == "running",
            server_type: s.server_type.as_deref(),
            location: s.location.as_deref(),
            ipv4: s.ipv4.as_deref(),
            monthly_cost: s.monthly_cost,
            agent: s.agent_id.as_deref().map(|id| ListedAgent {
                id,
                connected: app.fleet.live(r, id).is_some(),
            }),
        })
        .collect())
}

/// The names of the projects of a page of servers by id, read in one go with the
/// presences of their agents (where the agents are connected, with replicas) and
/// what `more` asks.
fn project_names(
    app: &App,
    r: &impl Read,
    list: &[Server],
    more: Ahead,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut project_ids: Vec<String> = list.iter().map(|s| s.project_id.clone()).collect();
    project_ids.sort_unstable();
    project_ids.dedup();
    let presence: Vec<String> = if app.cluster.is_shared() {
        list.iter().filter_map(|s| s.agent_id.clone()).collect()
    } else {
        Vec::new()
    };
    r.read_ahead(
        &more
            .records::<Project>(&project_ids)
            .records::<crate::cluster::Presence>(&presence),
    )?;
    Ok(r.get_many::<Project>(&project_ids)?
        .into_iter()
        .flatten()
        .map(|p| (p.id, p.name))
        .collect())
}

/// The filters of the server list (API and page).
pub const SERVER_FILTERS: [&str; 3] = ["project", "status", "q"];

/// Reads the server filters of a request: `project` (id or name), `status` (one of
/// `servers::STATUSES`) and `q` (text in the name, addresses, type, location or
/// status). An unknown filter, status or project is a 400 naming it.
pub fn server_filter(r: &impl Read, req: &Req, ctx: &Ctx) -> AppResult<servers::Filter> {
    req.only_filters(&SERVER_FILTERS)?;
    let mut filter = servers::Filter {
        text: req.text_filter("q"),
        ..Default::default()
    };
    if let Some(status) = req.text_filter("status") {
        if !servers::STATUSES.contains(&status.as_str()) {
            return Err(AppError::bad_request(format!(
                "status must be one of {} (not {:?})",
                servers::STATUSES.join(", "),
                status.chars().take(40).collect::<String>()
            )));
        }
        filter.status = Some(status);
    }
    filter.project_id = super::project_filter(r, req, ctx)?;
    Ok(filter)
}

/// `GET /api/v1/servers[?project=…][&status=…][&q=TEXT]`: one page of the servers
/// the caller may see, by name.
pub fn servers(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let filter = server_filter(r, req, ctx)?;
        let page = servers::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let list = server_rows(app, r, &page.items)?;
        Ok((list, page.next))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

/// `GET /api/v1/servers/{id}`.
pub fn server(app: &App, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let value = app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, id)?;
        server_json(app, r, &server)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// The API shape of a project, with access grants for those who may manage them. The
/// deploy command is an operations detail: only those who see the project's servers
/// get it.
fn project_json(r: &impl Read, ctx: &Ctx, project: &Project) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(ProjectView::from(project))?;
    if !policy::can(&ctx.subject, Action::ViewServers, Some(&project.id)) {
        if let Some(map) = value.as_object_mut() {
            map.remove("deploy_command");
        }
    }
    if policy::can(&ctx.subject, Action::ManageAccess, Some(&project.id)) {
        let mut access = Vec::new();
        for grant in projects::all_grants(r)?
            .into_iter()
            .filter(|g| g.project_id == project.id)
        {
            if let Some(user) = r.get::<User>(&grant.user_id)? {
                access.push(json!({"username": user.username, "level": grant.level}));
            }
        }
        value["access"] = Value::Array(access);
    }
    Ok(value)
}

/// `GET /api/v1/projects`: one page of the projects the caller may see, by name. A
/// small table, read whole and paged in memory (`listing::page_of_all`).
pub fn projects(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    req.only_filters(&[])?;
    let paging = req.paging()?;
    let (list, next) = app.store.read(|r| {
        let visible: Vec<Project> = projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
            .collect();
        let page = listing::page_of_all(
            visible,
            |p| listing::name_position(&p.name, &p.id),
            paging.cursor.as_deref(),
            paging.limit,
        );
        let list = page
            .items
            .iter()
            .map(|p| project_json(r, ctx, p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((list, page.next))
    })?;
    Ok(super::json_page(req, &list, next.as_deref()))
}

fn visible_project(r: &impl Read, ctx: &Ctx, key: &str) -> AppResult<Project> {
    let project = projects::find(r, key)?.ok_or_else(|| AppError::not_found("project"))?;
    require(ctx, Action::ViewProject, Some(&project.id))?;
    Ok(project)
}

/// `GET /api/v1/projects/{id}`.
pub fn project(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    let value = app.store.read(|r| {
        let project = visible_project(r, ctx, key)?;
        project_json(r, ctx, &project)
    })?;
    Ok(reply(StatusCode::OK, &value))
}

/// `POST /api/v1/projects`.
pub fn create_project(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::CreateProject, None)?;
    let input: ProjectInput = req.json()?;
    let actor = ctx.actor(req);
    let project = app
        .store
        .write(|w| Ok(projects::create(w, &app.keys, &actor, &input)?))?;
    let value = app.store.read(|r| project_json(r, ctx, &project))?;
    Ok(reply(StatusCode::CREATED, &value))
}

/// `PUT /api/v1/projects/{id}`.
pub fn update_project(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    let project = app.store.read(|r| Ok(visible_project(r, ctx, key)?))?;
    require(ctx, Action::EditProject, Some(&project.id))?;
    let input: ProjectInput = req.json()?;
    let actor = ctx.actor(req);
    let project = app.store.write(|w| {
        Ok(projects::update(
            w,
            &app.keys,
            &actor,
            &project.id,
            &input,
            false,
        )?)
    })?;
    let value = app.store.read(|r| project_json(r, ctx, &project))?;
    Ok(reply(StatusCode::OK, &value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessInput {
    username: String,
    level: String,
}

/// `POST /api/v1/projects/{id}/access`.
pub fn grant_access(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    let project = app.store.read(|r| Ok(visible_project(r, ctx, key)?))?;
    require(ctx, Action::ManageAccess, Some(&project.id))?;
    let input: AccessInput = req.json()?;
    let level = Level::parse(input.level.trim())
        .ok_or_else(|| AppError::invalid("level", "level must be read, write or admin"))?;
    let actor = ctx.actor(req);
    app.store.write(|w| {
        Ok(projects::grant(
            w,
            &actor,
            &project.id,
            &input.username,
            level,
        )?)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"project": project.name, "username": input.username.trim(), "level": level}),
    ))
}

/// `DELETE /api/v1/projects/{id}/access/{username}`.
pub fn revoke_access(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    key: &str,
    username: &str,
) -> AppResult<Resp> {
    let project = app.store.read(|r| Ok(visible_project(r, ctx, key)?))?;
    require(ctx, Action::ManageAccess, Some(&project.id))?;
    let actor = ctx.actor(req);
    app.store
        .write(|w| Ok(projects::revoke(w, &actor, &project.id, username)?))?;
    Ok(reply(StatusCode::OK, &json!({"revoked": username})))
}

/// `GET /api/v1/users` (admin): one page of the users by username. A small table,
/// read whole and paged in memory (`listing::page_of_all`).
pub fn users(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    req.only_filters(&[])?;
    let paging = req.paging()?;
    let page = listing::page_of_all(
        app.store.read(users::all)?,
        |u| listing::name_position(&u.username, &u.id),
        paging.cursor.as_deref(),
        paging.limit,
    );
    let list: Vec<UserView> = page.items.iter().map(UserView::from).collect();
    Ok(super::json_page(req, &list, page.next.as_deref()))
}

/// Hashes a password off the async executor (argon2 is deliberately slow).
pub async fn hash_off_thread(password: String) -> AppResult<String> {
    tokio::task::spawn_blocking(move || users::hash_password(&password))
        .await
        .map_err(|e| AppError::from(anyhow::anyhow!("hashing task: {e}")))?
        .map_err(AppError::from)
}

/// `POST /api/v1/users` (admin).
pub async fn create_user(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let input: NewUser = req.json()?;
    // Validate everything cheap, every field at once, before spending argon2 time.
    app.store.read(|r| Ok(users::check_new(r, &input)?))?;
    let password = input.password.clone().unwrap_or_default();
    let hash = hash_off_thread(password).await?;
    let actor = ctx.actor(req);
    let user = app
        .store
        .write(|w| Ok(users::create(w, &actor, &input, Some(hash))?))?;
    Ok(reply(StatusCode::CREATED, &UserView::from(&user)))
}

/// `PUT /api/v1/users/{id}` (admin): role, manager flag, active, password reset.
pub async fn update_user(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let change: UserChange = req.json()?;
    let user = app
        .store
        .read(|r| users::find(r, key))?
        .ok_or_else(|| AppError::not_found("user"))?;
    users::check_change(&user, &change)?;
    let hash = match change.password.clone().filter(|p| !p.is_empty()) {
        Some(p) => Some(hash_off_thread(p).await?),
        None => None,
    };
    let actor = ctx.actor(req);
    let reset = hash.is_some();
    let (user, revoked) = app.store.write(|w| {
        let user = users::update(w, &actor, &user.id, &change, hash)?;
        if reset || !user.active {
            auth::end_sessions_of(w, &user.id)?;
        }
        let revoked = match change.revokes_tokens() {
            true => auth::revoke_api_tokens_of(w, &actor, &user)?,
            false => 0,
        };
        Ok((user, revoked))
    })?;
    let mut value = serde_json::to_value(UserView::from(&user)).map_err(anyhow::Error::from)?;
    if reset {
        value["revoked_tokens"] = json!(revoked);
    }
    Ok(reply(StatusCode::OK, &value))
}

/// `GET /api/v1/tokens`: the caller's API tokens, newest first, never their secrets.
pub fn tokens(app: &App, ctx: &Ctx) -> AppResult<Resp> {
    let list = app.store.read(|r| auth::tokens_of(r, &ctx.user.id))?;
    Ok(reply(
        StatusCode::OK,
        &list
            .iter()
            .map(auth::ApiTokenView::from)
            .collect::<Vec<_>>(),
    ))
}

/// `GET /api/v1/users/{id}/tokens`: a user's API tokens (admin, or the user).
pub fn user_tokens(app: &App, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    if key != ctx.user.id && key != ctx.user.username {
        require(ctx, Action::ManageUsers, None)?;
    }
    let list = app.store.read(|r| {
        let user = users::find(r, key)?.ok_or_else(|| AppError::not_found("user"))?;
        auth::tokens_of(r, &user.id)
    })?;
    Ok(reply(
        StatusCode::OK,
        &list
            .iter()
            .map(auth::ApiTokenView::from)
            .collect::<Vec<_>>(),
    ))
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of the caller's API tokens; an admin
/// revokes anyone's. Anyone else's token answers 404, like an unknown one.
pub fn revoke_token(app: &App, req: &Req, ctx: &Ctx, token_id: &str) -> AppResult<Resp> {
    let actor = ctx.actor(req);
    let may_revoke_any = policy::can(&ctx.subject, Action::ManageUsers, None);
    let revoked = app.store.write(|w| {
        let owner = match w.get::<auth::ApiToken>(token_id)? {
            Some(t) if t.user_id == ctx.user.id => ctx.user.clone(),
            Some(t) if may_revoke_any => w
                .get::<User>(&t.user_id)?
                .ok_or_else(|| AppError::not_found("API token"))?,
            _ => return Err(AppError::not_found("API token").into()),
        };
        Ok(auth::revoke_api_token(w, &actor, &owner, token_id)?)
    })?;
    Ok(reply(StatusCode::OK, &auth::ApiTokenView::from(&revoked)))
}

/// `POST /api/v1/users/{id}/apitokens`: a new API token for that user (admin, or the
/// user themselves). The token is in the answer once and never again.
pub fn create_api_token(app: &App, req: &Req, ctx: &Ctx, key: &str) -> AppResult<Resp> {
    // Someone else's tokens take ManageUsers, decided before the name is looked up.
    if key != ctx.user.id && key != ctx.user.username {
        require(ctx, Action::ManageUsers, None)?;
    }
    let user = app
        .store
        .read(|r| users::find(r, key))?
        .ok_or_else(|| AppError::not_found("user"))?;
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Input {
        name: Option<String>,
    }
    let input: Input = if req.body.is_empty() {
        Input::default()
    } else {
        req.json()?
    };
    let name = crate::validate::optional("name", input.name.as_deref(), 80)?
        .unwrap_or_else(|| "api".into());
    let actor = ctx.actor(req);
    let token = app
        .store
        .write(|w| auth::create_api_token(w, &actor, &user, &name))?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"token": token, "username": user.username, "name": name}),
    ))
}

/// `GET /api/v1/audit?q=TEXT&limit=N` (admin).
pub fn audit(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ViewAudit, None)?;
    let paging = req.paging()?;
    let filter = audit_filter(req)?;
    let (entries, next) = app
        .store
        .read(|r| audit::query(r, &filter, paging.cursor.as_deref(), paging.limit))?;
    Ok(super::json_page(req, &entries, next.as_deref()))
}

/// The filters of the audit list (API and page).
pub const AUDIT_FILTERS: [&str; 6] = ["actor", "action", "subject", "since", "until", "q"];

/// Reads the audit filters of a request; an unknown one is a 400.
pub fn audit_filter(req: &Req) -> AppResult<audit::Filter> {
    req.only_filters(&AUDIT_FILTERS)?;
    Ok(audit::Filter {
        actor: req.text_filter("actor"),
        action: req.text_filter("action"),
        subject: req.text_filter("subject"),
        since: req.time_filter("since")?,
        until: req.time_filter("until")?,
        text: req.text_filter("q"),
    })
}
