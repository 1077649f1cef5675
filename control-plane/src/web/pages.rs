//! HTML page handlers. A form that fails validation re-renders with the message
//! beside its field and what the user typed; a success redirects with a flash.

use serde_json::{json, Map, Value};
use warp::http::{HeaderValue, StatusCode};

use super::{redirect, Ctx, Form, Req, Resp};
use crate::app::App;
use crate::audit;
use crate::auth;
use crate::error::{AppError, AppResult, Kind};
use crate::policy::{self, Action, Level, Role};
use crate::projects::{self, Project, ProjectInput, ProjectView};
use crate::servers;
use crate::store::Read;
use crate::users::{self, NewUser, User, UserChange, UserView};
use crate::validate::Problems;

/// One navigation entry.
struct NavItem {
    label: &'static str,
    href: &'static str,
    icon: &'static str,
    visible: bool,
}

/// The navigation for a subject: every entry is decided by `policy::can`.
fn nav(ctx: &Ctx, path: &str) -> Value {
    let s = &ctx.subject;
    let items = [
        NavItem {
            label: "Dashboard",
            href: "/",
            icon: "fa-gauge-high",
            visible: true,
        },
        NavItem {
            label: "Servers",
            href: "/servers",
            icon: "fa-server",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Agents",
            href: "/agents",
            icon: "fa-satellite-dish",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Executions",
            href: "/executions",
            icon: "fa-terminal",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Rollouts",
            href: "/rollouts",
            icon: "fa-layer-group",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Scripts",
            href: "/scripts",
            icon: "fa-scroll",
            visible: policy::can(s, Action::ManageScripts, None)
                || policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Backups",
            href: "/backups",
            icon: "fa-database",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Updates",
            href: "/updates",
            icon: "fa-arrows-rotate",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Drift",
            href: "/drift",
            icon: "fa-code-compare",
            visible: policy::can(s, Action::ViewServers, None),
        },
        NavItem {
            label: "Webhooks",
            href: "/webhooks",
            icon: "fa-bolt",
            visible: super::alerts_pages::may_see_webhooks(s),
        },
        NavItem {
            label: "Requests",
            href: "/requests",
            icon: "fa-file-circle-plus",
            visible: super::business_api::may_see_requests(ctx),
        },
        NavItem {
            label: "Clients",
            href: "/clients",
            icon: "fa-address-book",
            visible: super::business_api::may_see_clients(ctx),
        },
        NavItem {
            label: "Subscriptions",
            href: "/subscriptions",
            icon: "fa-file-contract",
            visible: policy::can(s, Action::ManageSubscriptions, None),
        },
        NavItem {
            label: "Revenue",
            href: "/revenue",
            icon: "fa-chart-line",
            visible: policy::can(s, Action::ViewRevenue, None),
        },
        NavItem {
            label: "Notifications",
            href: "/notifications",
            icon: "fa-bell",
            visible: true,
        },
        NavItem {
            label: "Projects",
            href: "/projects",
            icon: "fa-folder-tree",
            visible: policy::can(s, Action::ViewProject, None),
        },
        NavItem {
            label: "Project access",
            href: "/access",
            icon: "fa-user-lock",
            visible: policy::can(s, Action::ManageAccess, None),
        },
        NavItem {
            label: "Users",
            href: "/users",
            icon: "fa-users",
            visible: policy::can(s, Action::ManageUsers, None),
        },
        NavItem {
            label: "Audit log",
            href: "/audit",
            icon: "fa-clipboard-list",
            visible: policy::can(s, Action::ViewAudit, None),
        },
    ];
    Value::Array(
        items
            .iter()
            .filter(|i| i.visible)
            .map(|i| {
                let active = if i.href == "/" {
                    path == "/"
                } else {
                    path.starts_with(i.href)
                };
                json!({"label": i.label, "href": i.href, "icon": i.icon, "active": active})
            })
            .collect(),
    )
}

fn flash_of(req: &Req) -> Value {
    let Some(raw) = req.cookie("dsv_flash") else {
        return Value::Null;
    };
    let decoded: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={raw}"))
        .ok()
        .and_then(|v| v.into_iter().next())
        .map(|(_, v)| v)
        .unwrap_or_default();
    match decoded.split_once('|') {
        Some((level, message)) if ["success", "info", "warning", "danger"].contains(&level) => {
            json!({"level": level, "message": message})
        }
        _ => Value::Null,
    }
}

/// Renders a page inside the shell for a logged-in user.
pub fn page(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    template: &str,
    title: &str,
    data: Value,
) -> AppResult<Resp> {
    page_with_status(app, req, ctx, StatusCode::OK, template, title, data)
}

pub(crate) fn page_with_status(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    status: StatusCode,
    template: &str,
    title: &str,
    data: Value,
) -> AppResult<Resp> {
    let mut context = match data {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    context.insert("title".into(), json!(title));
    context.insert(
        "user".into(),
        json!({"username": ctx.user.username, "role": ctx.user.role, "role_label": ctx.user.role.label(), "is_manager": ctx.user.is_manager}),
    );
    context.insert("nav".into(), nav(ctx, &req.path));
    context.insert("csrf".into(), json!(ctx.csrf));
    let flash = flash_of(req);
    let had_flash = !flash.is_null();
    context.insert("flash".into(), flash);
    let unread = match ctx.unread {
        Some(unread) => unread,
        None => app
            .store
            .read(|r| crate::notifications::unread_count(r, &ctx.user.id))
            .unwrap_or(0),
    };
    context.insert("unread".into(), json!(unread));
    let html = app.render.page(template, context)?;
    let mut resp = super::text(status, html, "text/html; charset=utf-8");
    if had_flash {
        resp.headers_mut().append(
            "set-cookie",
            HeaderValue::from_static("dsv_flash=; Path=/; Max-Age=0"),
        );
    }
    Ok(resp)
}

/// Renders an error inside the shell (or bare when not logged in).
pub fn error_page(app: &App, req: &Req, ctx: Option<&Ctx>, err: &AppError) -> Resp {
    let data = json!({"status": err.status().as_u16(), "message": err.public_message()});
    let rendered = match ctx {
        Some(ctx) => page_with_status(app, req, ctx, err.status(), "error", "Error", data),
        None => Err(err.clone()),
    };
    rendered.unwrap_or_else(|_| {
        super::text(
            err.status(),
            err.public_message().to_string(),
            "text/plain; charset=utf-8",
        )
    })
}

fn require(ctx: &Ctx, action: Action, project_id: Option<&str>) -> AppResult<()> {
    if policy::can(&ctx.subject, action, project_id) {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// Reads a posted form and checks its CSRF token.
pub(crate) fn form(req: &Req, ctx: &Ctx) -> AppResult<Form> {
    let form = req.form()?;
    super::check_csrf(req, ctx, Some(&form))?;
    Ok(form)
}

/// What a form template shows beside its fields: `errors.<field>` for every field the
/// error names (empty when it names none; then the message is the page's `error`).
pub(crate) fn form_errors(err: &AppError) -> Map<String, Value> {
    err.field_errors()
        .into_iter()
        .map(|(field, message)| (field.to_string(), json!(message)))
        .collect()
}

/// [`form_errors`] of an error that should sit beside a field: one that names no field
/// is shown beside `fallback_field`.
pub(crate) fn form_errors_or(err: &AppError, fallback_field: &str) -> Map<String, Value> {
    let mut errors = form_errors(err);
    if errors.is_empty() {
        errors.insert(fallback_field.to_string(), json!(err.message));
    }
    errors
}

/// Turns a validation error into a re-rendered form (422); other errors pass through.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rerender(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    err: AppError,
    template: &str,
    title: &str,
    mut data: Value,
    values: Map<String, Value>,
) -> AppResult<Resp> {
    if !matches!(err.kind, Kind::Invalid | Kind::BadRequest | Kind::Conflict) {
        return Err(err);
    }
    data["errors"] = Value::Object(form_errors(&err));
    data["error"] = if err.field.is_none() {
        json!(err.message)
    } else {
        Value::Null
    };
    data["values"] = Value::Object(values);
    page_with_status(app, req, ctx, err.status(), template, title, data)
}

// ---- login ----

/// `GET /login`: the form, with an anonymous CSRF token bound to a pre-session cookie.
pub fn login_form(app: &App, req: &Req, error: Option<(&AppError, &str)>) -> Resp {
    let pre = req
        .cookie(auth::PRE_COOKIE)
        .filter(|c| c.len() >= 20 && c.len() <= 64)
        .map(String::from)
        .unwrap_or_else(|| crate::secrets::random_token(24));
    let next = crate::validate::local_redirect(req.query("next"));
    let data = json!({
        "title": "Sign in",
        "user": null,
        "nav": [],
        "csrf": auth::anonymous_csrf(&app.keys, &pre),
        "flash": flash_of(req),
        "unread": 0,
        "next": next,
        "demo": app.store.read(|r| users::by_username(r, "sohila")).ok().flatten().is_some(),
        "error": error.map(|(e, _)| e.public_message().to_string()),
        "username": error.map(|(_, u)| crate::validate::echo(u)).unwrap_or_default(),
    });
    let status = error.map(|(e, _)| e.status()).unwrap_or(StatusCode::OK);
    let data = match data {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let html = app
        .render
        .page("login", data)
        .unwrap_or_else(|e| format!("template error: {e:#}"));
    let mut resp = super::text(status, html, "text/html; charset=utf-8");
    let secure = if req.secure { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={pre}; Path=/; HttpOnly; SameSite=Lax{secure}",
        auth::PRE_COOKIE
    )) {
        resp.headers_mut().append("set-cookie", v);
    }
    resp
}

/// `POST /login`: checks CSRF, throttling and the password; starts a new session.
pub async fn login(app: &App, req: &Req) -> Resp {
    let form = match req.form() {
        Ok(f) => f,
        Err(e) => return login_form(app, req, Some((&e, ""))),
    };
    let username = form.get("username").unwrap_or("").trim().to_lowercase();
    let pre = req.cookie(auth::PRE_COOKIE).unwrap_or("");
    let sent = form.get("csrf").unwrap_or("");
    if pre.is_empty()
        || !crate::secrets::constant_time_eq(sent, &auth::anonymous_csrf(&app.keys, pre))
    {
        let err = AppError::new(
            Kind::Forbidden,
            "the sign-in form expired or its CSRF token is missing; please try again",
        );
        return login_form(app, req, Some((&err, &username)));
    }
    let keys = auth::ThrottleKey::login(&username, req.client_ip);
    let now = chrono::Utc::now();
    if let Err(e) = app.throttle.check(&keys, now) {
        return login_form(app, req, Some((&e, &username)));
    }
    let password = form.get("password").unwrap_or("").to_string();
    if username.is_empty() || password.is_empty() {
        let err = AppError::invalid("username", "enter your username and password");
        return login_form(app, req, Some((&err, &username)));
    }
    let store = app.store.clone();
    let name = username.clone();
    let checked = tokio::task::spawn_blocking(move || {
        crate::store::allow_blocking_here();
        store.read(|r| Ok(auth::check_login(r, &name, &password)))
    })
    .await
    .map_err(|e| AppError::from(anyhow::anyhow!("login task: {e}")))
    .and_then(|r| r.map_err(AppError::from))
    .and_then(|r| r);
    let user = match checked {
        Ok(u) => u,
        Err(e) => {
            if e.kind == Kind::Unauthenticated {
                app.throttle.fail(&keys, now);
                let _ = app.store.write(|w| {
                    audit::record(
                        w,
                        &audit::Actor {
                            username: username.clone(),
                            ip: Some(req.client_ip.to_string()),
                        },
                        "session.login_failed",
                        &format!("user:{username}"),
                        "",
                    )
                });
            }
            return login_form(app, req, Some((&e, &username)));
        }
    };
    app.throttle.succeed(&keys[0]);
    let actor = req.actor(&user);
    let cookie = match app.store.write(|w| auth::create_session(w, &user, &actor)) {
        Ok((cookie, _)) => cookie,
        Err(e) => return login_form(app, req, Some((&AppError::from(e), &username))),
    };
    let next = crate::validate::local_redirect(form.get("next"));
    let mut resp = redirect(&next, None);
    let secure = if req.secure { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={cookie}; Path=/; HttpOnly; SameSite=Lax{secure}",
        auth::SESSION_COOKIE
    )) {
        resp.headers_mut().append("set-cookie", v);
    }
    resp
}

/// `POST /logout`.
pub fn logout(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    form(req, ctx)?;
    if let Some(cookie) = req.cookie(auth::SESSION_COOKIE) {
        app.store.write(|w| auth::end_session(w, cookie))?;
    }
    let mut resp = redirect("/login", Some(("info", "You are signed out.")));
    resp.headers_mut().append(
        "set-cookie",
        HeaderValue::from_static("dsv_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
    );
    Ok(resp)
}

// ---- dashboard ----

/// `GET /`: a dashboard made for the caller's role. Its figures are kept counts and
/// its lists single pages read through indexes, so it costs the same with ten servers
/// or ten thousand.
pub fn dashboard(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let data = app.store.read(|r| {
        let all_projects = projects::all(r)?;
        let shown: Vec<&str> = all_projects
            .iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
            .map(|p| p.id.as_str())
            .collect();
        servers::prefetch_project_counts(r, &shown)?;
        r.prefetch_counters(
            &shown
                .iter()
                .map(|p| crate::drift::drifted_counter(p))
                .collect::<Vec<_>>(),
        )?;
        let mut project_rows = Vec::new();
        for p in all_projects
            .iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
        {
            // Server figures are fleet facts, for those who see the project's servers.
            let counts = if policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)) {
                servers::project_counts(r, &p.id)?
            } else {
                servers::Counts::default()
            };
            // Its drifted server × script pairs (`drift`, a kept count).
            let drifted = if policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)) {
                r.counter(&crate::drift::drifted_counter(&p.id))?
            } else {
                0
            };
            let cost = counts.monthly_cost;
            let percent = p
                .budget_monthly
                .filter(|b| *b > 0.0)
                .map(|b| (cost / b * 100.0).round());
            project_rows.push(json!({
                "id": p.id, "name": p.name, "description": p.description, "servers": counts.servers,
                "cost": cost, "budget": p.budget_monthly, "budget_percent": percent,
                "over_budget": percent.is_some_and(|x| x >= 100.0),
                "near_budget": percent.is_some_and(|x| (80.0..100.0).contains(&x)),
                "level": ctx.subject.level_on(&p.id).map(|l| l.as_str()),
                "drifted": drifted,
            }));
        }
        let counts = servers::visible_counts(r, &ctx.subject)?;
        let first = servers::query(r, &ctx.subject, &servers::Filter::default(), None, 12)?;
        let mut data = json!({
            "role": ctx.user.role.as_str(),
            "is_admin": ctx.user.role == Role::Admin,
            "is_technical": ctx.user.role == Role::Technical,
            "is_sales": ctx.user.role == Role::Sales,
            "projects": project_rows,
            "server_count": counts.servers,
            "running_count": counts.running,
            "servers": super::api::server_list_rows(app, r, &first.items, Default::default())?,
            "recent": [],
            "user_count": 0,
        });
        if policy::can(&ctx.subject, Action::ViewAudit, None) {
            data["recent"] = serde_json::to_value(audit::recent(r, None, 8)?)?;
            data["user_count"] = json!(r.count::<User>()?);
        }
        data["business"] = super::business_pages::dashboard_figures(r, ctx)?;
        Ok(data)
    })?;
    page(app, req, ctx, "dashboard", "Dashboard", data)
}

fn server_row(
    app: &App,
    r: &impl crate::store::Read,
    s: &servers::Server,
) -> anyhow::Result<Value> {
    super::api::server_json(app, r, s)
}

/// The pager of a list by name: like [`Req::pager`], with first and next instead of
/// newest and older.
pub fn pager_by_name(req: &Req, paging: &super::Paging, next: Option<&str>) -> Value {
    let mut pager = req.pager(paging, next);
    pager["first_label"] = json!("First");
    pager["next_label"] = json!("Next");
    pager
}

// ---- servers ----

/// `GET /servers[?project=…][&status=…][&q=…]`: one page of the servers the caller
/// may see, by name, with a filter form; its search box asks the server as you type
/// (`data-live-search-url`), so it finds any of thousands of servers.
pub fn servers(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ViewServers, None)?;
    let paging = req.paging_with(100)?;
    let data = app.store.read(|r| {
        let filter = super::api::server_filter(r, req, ctx)?;
        let page = servers::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        // The filter's project list, read with the rows.
        let ahead = crate::store::Ahead::default().list::<Project>();
        let rows = super::api::server_list_rows(app, r, &page.items, ahead)?;
        let project = filter.project_id.clone().unwrap_or_default();
        let projects: Vec<Value> = projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name, "selected": p.id == project}))
            .collect();
        Ok(json!({
            "servers": rows,
            "q": req.text_filter("q").unwrap_or_default(),
            "filters": {"status": filter.status.clone().unwrap_or_default()},
            "projects": projects,
            "statuses": servers::STATUSES,
            "filtered": super::api::SERVER_FILTERS.iter().any(|n| req.text_filter(n).is_some()),
            "pager": pager_by_name(req, &paging, page.next.as_deref()),
            "can_add": policy::can(&ctx.subject, Action::EditProject, None),
        }))
    })?;
    page(app, req, ctx, "servers", "Servers", data)
}

/// `GET /servers/{id}`.
pub fn server(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let (server, row, project, cockpit, inventory) = app.store.read(|r| {
        let server = servers::get_visible(r, &ctx.subject, id)?;
        let row = server_row(app, r, &server)?;
        let project: Option<Project> = r.get(&server.project_id)?;
        let cockpit = super::server_page::panel(app, r, ctx, &server, project.as_ref())?;
        let inventory = super::inventory_pages::server_panel(r, ctx, &server, project.as_ref())?;
        Ok((server, row, project, cockpit, inventory))
    })?;
    let can_operate = policy::can(
        &ctx.subject,
        Action::OperateServers,
        Some(&server.project_id),
    );
    let data = json!({
        "server": row,
        "project": project.as_ref().map(ProjectView::from),
        "can_operate": can_operate,
    });
    let mut data = data;
    data["hetzner"] = super::hetzner_pages::server_panel(app, ctx, &server)?;
    data["ssh"] = super::ssh_pages::server_panel(app, ctx, &server)?;
    data["notes"] = json!(server.notes);
    data["cockpit"] = cockpit;
    data["inventory"] = inventory;
    page(app, req, ctx, "server", &server.name, data)
}

// ---- projects ----

/// `GET /projects`.
pub fn projects(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ViewProject, None)?;
    let rows = app.store.read(|r| {
        let shown: Vec<Project> = projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewProject, Some(&p.id)))
            .collect();
        let ids: Vec<&str> = shown.iter().map(|p| p.id.as_str()).collect();
        servers::prefetch_project_counts(r, &ids)?;
        let mut rows = Vec::new();
        for p in &shown {
            let mut v = serde_json::to_value(ProjectView::from(p)).unwrap_or_default();
            if !policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)) {
                v["deploy_command"] = Value::Null;
            }
            v["servers"] = json!(servers::project_counts(r, &p.id)?.servers);
            v["can_edit"] = json!(policy::can(&ctx.subject, Action::EditProject, Some(&p.id)));
            rows.push(v);
        }
        Ok(rows)
    })?;
    page(
        app,
        req,
        ctx,
        "projects",
        "Projects",
        json!({"projects": rows, "can_create": policy::can(&ctx.subject, Action::CreateProject, None)}),
    )
}

/// Servers a project's page lists; past them it links to the Servers page.
const PROJECT_PAGE_SERVERS: usize = 50;

/// `GET /projects/{id}`.
pub fn project(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let data = app.store.read(|r| {
        let project: Project = projects::find(r, id)?.ok_or_else(|| AppError::not_found("project"))?;
        require(ctx, Action::ViewProject, Some(&project.id))?;
        let can_view_servers = policy::can(&ctx.subject, Action::ViewServers, Some(&project.id));
        // One page of the project's servers; the Servers page lists them all.
        let (servers, more_servers): (Value, bool) = if can_view_servers {
            let of_project = servers::Filter { project_id: Some(project.id.clone()), ..Default::default() };
            let page = servers::query(r, &ctx.subject, &of_project, None, PROJECT_PAGE_SERVERS)?;
            (json!(super::api::server_list_rows(app, r, &page.items, Default::default())?), page.next.is_some())
        } else {
            (json!([]), false)
        };
        let mut access = Vec::new();
        let can_manage_access = policy::can(&ctx.subject, Action::ManageAccess, Some(&project.id));
        if can_manage_access {
            for g in projects::all_grants(r)?.into_iter().filter(|g| g.project_id == project.id) {
                if let Some(u) = r.get::<User>(&g.user_id)? {
                    access.push(json!({"username": u.username, "level": g.level.as_str(), "role": u.role.label()}));
                }
            }
        }
        // Server costs and the deploy command are fleet facts, for those who see the
        // project's servers.
        let counts = if can_view_servers { servers::project_counts(r, &project.id)? } else { servers::Counts::default() };
        let cost = counts.monthly_cost;
        let mut view = ProjectView::from(&project);
        if !can_view_servers {
            view.deploy_command = None;
        }
        Ok(json!({
            "project": view,
            "servers": servers,
            "more_servers": more_servers,
            "server_count": counts.servers,
            "can_view_servers": can_view_servers,
            "can_edit": policy::can(&ctx.subject, Action::EditProject, Some(&project.id)),
            "can_manage_access": can_manage_access,
            "access": access,
            "cost": cost,
            "budget_percent": project.budget_monthly.filter(|b| *b > 0.0 && can_view_servers).map(|b| (cost / b * 100.0).round()),
        }))
    })?;
    let title = data["project"]["name"]
        .as_str()
        .unwrap_or("Project")
        .to_string();
    let mut data = data;
    let project_id = data["project"]["id"].as_str().unwrap_or("").to_string();
    data["hetzner"] = super::hetzner_pages::project_panel(app, ctx, &project_id)?;
    data["ssh"] = super::ssh_pages::project_panel(app, ctx, &project_id)?;
    data["offsite"] = super::offsite_pages::project_panel(app, ctx, &project_id)?;
    page(app, req, ctx, "project", &title, data)
}

/// `GET /projects/new` and `GET /projects/{id}/edit`.
pub fn project_form(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    let (data, title) = match id {
        None => {
            require(ctx, Action::CreateProject, None)?;
            (
                json!({"project": null, "values": {"terminal_enabled": "on"}, "errors": {}, "error": null}),
                "New project".to_string(),
            )
        }
        Some(id) => {
            let project = app
                .store
                .read(|r| projects::find(r, id))?
                .ok_or_else(|| AppError::not_found("project"))?;
            require(ctx, Action::EditProject, Some(&project.id))?;
            let values = json!({
                "name": project.name, "description": project.description.clone().unwrap_or_default(),
                "budget_monthly": project.budget_monthly.map(|b| b.to_string()).unwrap_or_default(),
                "deploy_command": project.deploy_command.clone().unwrap_or_default(),
                "terminal_enabled": if project.terminal_enabled { "on" } else { "" },
            });
            (
                json!({"project": ProjectView::from(&project), "values": values, "errors": {}, "error": null}),
                format!("Edit {}", project.name),
            )
        }
    };
    page(app, req, ctx, "project_form", &title, data)
}

/// `POST /projects/new` and `POST /projects/{id}/edit`.
pub fn project_save(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    let existing = match id {
        Some(id) => Some(
            app.store
                .read(|r| projects::find(r, id))?
                .ok_or_else(|| AppError::not_found("project"))?,
        ),
        None => None,
    };
    match &existing {
        Some(p) => require(ctx, Action::EditProject, Some(&p.id))?,
        None => require(ctx, Action::CreateProject, None)?,
    }
    let form = form(req, ctx)?;
    let actor = ctx.actor(req);
    let result = {
        // A budget that is not a number is reported with the other fields' problems.
        let mut problems = Problems::new();
        let budget_monthly = problems.check(crate::validate::money_text(
            "budget_monthly",
            form.get("budget_monthly"),
        ));
        let input = ProjectInput {
            name: form.get("name").map(String::from),
            description: Some(form.get("description").unwrap_or("").to_string()),
            hetzner_token: form.get("hetzner_token").map(String::from),
            budget_monthly: budget_monthly.unwrap_or(None),
            deploy_command: Some(form.get("deploy_command").unwrap_or("").to_string()),
            terminal_enabled: Some(form.checked("terminal_enabled")),
        };
        let clear = form.checked("clear_token");
        app.store
            .write(|w| {
                Ok(match &existing {
                    Some(p) => projects::update_adding_to(
                        w, &app.keys, &actor, &p.id, &input, clear, problems,
                    )?,
                    None => projects::create_adding_to(w, &app.keys, &actor, &input, problems)?,
                })
            })
            .map_err(AppError::from)
    };
    match result {
        Ok(project) => Ok(redirect(
            &format!("/projects/{}", project.id),
            Some(("success", &format!("Project {} saved.", project.name))),
        )),
        Err(e) => {
            let title = if existing.is_some() {
                "Edit project"
            } else {
                "New project"
            };
            let data = json!({"project": existing.as_ref().map(ProjectView::from)});
            rerender(app, req, ctx, e, "project_form", title, data, form.values())
        }
    }
}

// ---- access ----

/// `GET /access`: who has which level on which project.
pub fn access(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageAccess, None)?;
    let data = app.store.read(|r| {
        let all_users = users::all(r)?;
        let grants = projects::all_grants(r)?;
        let projects: Vec<Value> = projects::all(r)?
            .iter()
            .filter(|p| policy::can(&ctx.subject, Action::ManageAccess, Some(&p.id)))
            .map(|p| {
                let rows: Vec<Value> = grants
                    .iter()
                    .filter(|g| g.project_id == p.id)
                    .filter_map(|g| all_users.iter().find(|u| u.id == g.user_id).map(|u| (g, u)))
                    .map(|(g, u)| json!({"username": u.username, "role": u.role.label(), "level": g.level.as_str(), "granted_by": g.granted_by, "granted_at": g.granted_at}))
                    .collect();
                json!({"id": p.id, "name": p.name, "grants": rows})
            })
            .collect();
        let user_options: Vec<Value> = all_users.iter().filter(|u| u.active && u.role != Role::Admin).map(|u| json!({"username": u.username, "role": u.role.label()})).collect();
        Ok(json!({"projects": projects, "users": user_options, "levels": ["read", "write", "admin"]}))
    })?;
    page(app, req, ctx, "access", "Project access", data)
}

/// `POST /access/grant`.
pub fn access_grant(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let form = form(req, ctx)?;
    let project_id = form.get("project_id").unwrap_or("");
    require(ctx, Action::ManageAccess, Some(project_id))?;
    let level = Level::parse(form.get("level").unwrap_or(""))
        .ok_or_else(|| AppError::invalid("level", "choose read, write or admin"))?;
    let username = form.get("username").unwrap_or("").to_string();
    let actor = ctx.actor(req);
    match app
        .store
        .write(|w| Ok(projects::grant(w, &actor, project_id, &username, level)?))
    {
        Ok(_) => Ok(redirect(
            "/access",
            Some((
                "success",
                &format!("{username} now has {} access.", level.as_str()),
            )),
        )),
        Err(e) => Ok(redirect(
            "/access",
            Some(("danger", AppError::from(e).public_message())),
        )),
    }
}

/// `POST /access/revoke`.
pub fn access_revoke(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let form = form(req, ctx)?;
    let project_id = form.get("project_id").unwrap_or("");
    require(ctx, Action::ManageAccess, Some(project_id))?;
    let username = form.get("username").unwrap_or("").to_string();
    let actor = ctx.actor(req);
    match app
        .store
        .write(|w| Ok(projects::revoke(w, &actor, project_id, &username)?))
    {
        Ok(()) => Ok(redirect(
            "/access",
            Some(("success", &format!("Access of {username} revoked."))),
        )),
        Err(e) => Ok(redirect(
            "/access",
            Some(("danger", AppError::from(e).public_message())),
        )),
    }
}

// ---- users ----

/// `GET /users`.
pub fn users(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let rows: Vec<Value> = app
        .store
        .read(users::all)?
        .iter()
        .map(|u| {
            let mut v = serde_json::to_value(UserView::from(u)).unwrap_or_default();
            v["search"] = json!(format!(
                "{} {} {} {}",
                u.username,
                u.full_name.clone().unwrap_or_default(),
                u.email.clone().unwrap_or_default(),
                u.role.label()
            )
            .to_lowercase());
            v
        })
        .collect();
    page(app, req, ctx, "users", "Users", json!({"users": rows}))
}

fn role_options() -> Value {
    Value::Array(
        Role::ALL
            .iter()
            .map(|r| json!({"value": r.as_str(), "label": r.label()}))
            .collect(),
    )
}

/// `GET /users/new` and `GET /users/{id}/edit`.
pub fn user_form(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let (edit, values, title) = match id {
        None => (
            Value::Null,
            json!({"role": "technical"}),
            "New user".to_string(),
        ),
        Some(id) => {
            let user = app
                .store
                .read(|r| users::find(r, id))?
                .ok_or_else(|| AppError::not_found("user"))?;
            let values = json!({"username": user.username, "role": user.role.as_str(), "is_manager": user.is_manager, "active": user.active, "full_name": user.full_name.clone().unwrap_or_default(), "email": user.email.clone().unwrap_or_default(), "revoke_tokens": true});
            (
                user_edit_view(app, &user)?,
                values,
                format!("Edit {}", user.username),
            )
        }
    };
    page(
        app,
        req,
        ctx,
        "user_form",
        &title,
        json!({"edit": edit, "values": values, "errors": {}, "error": null, "roles": role_options()}),
    )
}

/// What the edit form shows of a user: the public view and their API tokens.
fn user_edit_view(app: &App, user: &User) -> AppResult<Value> {
    let tokens: Vec<auth::ApiTokenView> = app
        .store
        .read(|r| auth::tokens_of(r, &user.id))?
        .iter()
        .map(auth::ApiTokenView::from)
        .collect();
    let mut view = serde_json::to_value(UserView::from(user)).map_err(anyhow::Error::from)?;
    view["tokens"] = json!(tokens);
    Ok(view)
}

/// `POST /users/new` and `POST /users/{id}/edit`.
pub async fn user_save(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let form = form(req, ctx)?;
    let existing = match id {
        Some(id) => Some(
            app.store
                .read(|r| users::find(r, id))?
                .ok_or_else(|| AppError::not_found("user"))?,
        ),
        None => None,
    };
    let actor = ctx.actor(req);
    let result: AppResult<User> = async {
        match &existing {
            None => {
                let input = NewUser {
                    username: form.get("username").map(|u| u.trim().to_lowercase()),
                    password: form.get("password").map(String::from),
                    role: form.get("role").map(String::from),
                    is_manager: form.checked("is_manager"),
                    full_name: form.get("full_name").map(String::from),
                    email: form.get("email").map(String::from),
                };
                // Every field, and whether the username is free, before argon2 time.
                app.store.read(|r| Ok(users::check_new(r, &input)?))?;
                let password = input.password.clone().unwrap_or_default();
                let hash = super::api::hash_off_thread(password).await?;
                Ok(app
                    .store
                    .write(|w| Ok(users::create(w, &actor, &input, Some(hash))?))?)
            }
            Some(user) => {
                let change = UserChange {
                    role: form.get("role").map(String::from),
                    is_manager: Some(form.checked("is_manager")),
                    active: Some(form.checked("active")),
                    password: form
                        .get("password")
                        .filter(|p| !p.is_empty())
                        .map(String::from),
                    full_name: Some(form.get("full_name").unwrap_or("").to_string()),
                    email: Some(form.get("email").unwrap_or("").to_string()),
                    revoke_tokens: Some(form.checked("revoke_tokens")),
                };
                users::check_change(user, &change)?;
                let hash = match change.password.clone() {
                    Some(p) => Some(super::api::hash_off_thread(p).await?),
                    None => None,
                };
                let reset = hash.is_some();
                Ok(app.store.write(|w| {
                    let updated = users::update(w, &actor, &user.id, &change, hash)?;
                    if reset || !updated.active {
                        auth::end_sessions_of(w, &updated.id)?;
                    }
                    if change.revokes_tokens() {
                        auth::revoke_api_tokens_of(w, &actor, &updated)?;
                    }
                    Ok(updated)
                })?)
            }
        }
    }
    .await;
    match result {
        Ok(user) => Ok(redirect(
            "/users",
            Some(("success", &format!("User {} saved.", user.username))),
        )),
        Err(e) => {
            let edit = match existing.as_ref() {
                Some(u) => user_edit_view(app, u)?,
                None => Value::Null,
            };
            let title = if existing.is_some() {
                "Edit user"
            } else {
                "New user"
            };
            // Checkboxes absent from a form mean unticked.
            let mut values = form.values();
            values.insert("is_manager".into(), json!(form.checked("is_manager")));
            values.insert("active".into(), json!(form.checked("active")));
            values.insert("revoke_tokens".into(), json!(form.checked("revoke_tokens")));
            rerender(
                app,
                req,
                ctx,
                e,
                "user_form",
                title,
                json!({"edit": edit, "roles": role_options()}),
                values,
            )
        }
    }
}

// ---- account ----

/// `GET /account`: the caller's own details, API tokens (with when each was last used,
/// and a revoke button) and token creation.
pub fn account(app: &App, req: &Req, ctx: &Ctx, new_token: Option<String>) -> AppResult<Resp> {
    let tokens: Vec<auth::ApiTokenView> = app
        .store
        .read(|r| auth::tokens_of(r, &ctx.user.id))?
        .iter()
        .map(auth::ApiTokenView::from)
        .collect();
    let prefs = app.store.read(|r| crate::alerts::prefs(r, &ctx.user.id))?;
    page(
        app,
        req,
        ctx,
        "account",
        "Account",
        json!({
            "me": UserView::from(&ctx.user),
            "tokens": tokens,
            "new_token": new_token,
            "alert_events": super::alerts_pages::event_choices(&prefs.email),
            "smtp_configured": app.config.smtp_url.is_some(),
        }),
    )
}

/// `POST /account/tokens/{id}/revoke`: revokes one of the caller's own API tokens.
pub fn account_token_revoke(app: &App, req: &Req, ctx: &Ctx, token_id: &str) -> AppResult<Resp> {
    let actor = ctx.actor(req);
    let token = app
        .store
        .write(|w| Ok(auth::revoke_api_token(w, &actor, &ctx.user, token_id)?))?;
    Ok(redirect(
        "/account",
        Some(("success", &format!("API token {} revoked.", token.name))),
    ))
}

/// `POST /users/{id}/tokens/{token}/revoke` (admin): revokes one of a user's API tokens.
pub fn user_token_revoke(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    user_key: &str,
    token_id: &str,
) -> AppResult<Resp> {
    require(ctx, Action::ManageUsers, None)?;
    let actor = ctx.actor(req);
    let (user, token) = app.store.write(|w| {
        let user = users::find(w, user_key)?.ok_or_else(|| AppError::not_found("user"))?;
        let token = auth::revoke_api_token(w, &actor, &user, token_id)?;
        Ok((user, token))
    })?;
    Ok(redirect(
        &format!("/users/{}/edit", user.id),
        Some((
            "success",
            &format!("API token {} of {} revoked.", token.name, user.username),
        )),
    ))
}

/// `POST /account/apitoken`: creates a token for the caller and shows it once.
pub fn account_token(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    let form = form(req, ctx)?;
    let name =
        crate::validate::optional("name", form.get("name"), 80)?.unwrap_or_else(|| "api".into());
    let actor = ctx.actor(req);
    let token = app
        .store
        .write(|w| auth::create_api_token(w, &actor, &ctx.user, &name))?;
    account(app, req, ctx, Some(token))
}

// ---- audit ----

/// `GET /audit?q=TEXT`.
pub fn audit(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require(ctx, Action::ViewAudit, None)?;
    let paging = req.paging_with(50)?;
    let filter = super::api::audit_filter(req)?;
    let (entries, next) = app
        .store
        .read(|r| audit::query(r, &filter, paging.cursor.as_deref(), paging.limit))?;
    let filters: Map<String, Value> = super::api::AUDIT_FILTERS
        .iter()
        .map(|name| {
            (
                name.to_string(),
                json!(req.text_filter(name).unwrap_or_default()),
            )
        })
        .collect();
    let data = json!({
        "entries": entries,
        "filters": filters,
        "filtered": super::api::AUDIT_FILTERS.iter().any(|n| req.text_filter(n).is_some()),
        "pager": req.pager(&paging, next.as_deref()),
    });
    page(app, req, ctx, "audit", "Audit log", data)
}
