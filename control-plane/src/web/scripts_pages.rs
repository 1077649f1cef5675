//! Script pages: the list with live search, the editor (body, variables, validation
//! errors with line:column beside the body), the Run form (variables, targets, batch
//! size, failure threshold) and the rollout page (summary grid and one live log per
//! server). Thin: parse the form, authorize, call `scripts` / `rollouts`, render.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use warp::http::StatusCode;

use super::pages::{form_errors_or, page, page_with_status};
use super::scripts_api;
use super::{redirect, Ctx, Form, Req, Resp};
use crate::agents;
use crate::app::App;
use crate::error::{AppError, AppResult, Kind};
use crate::policy::{self, Action};
use crate::projects;
use crate::rollouts::{self, RunInput, Targets};
use crate::scripts::{self, Script, ScriptInput, ScriptKind, Variable};
use crate::store::Read;

/// Blank variable rows offered by the editor below the declared ones.
const BLANK_VARIABLE_ROWS: usize = 3;

/// Scripts are fleet work: a caller without the fleet (a sales agent) is refused
/// before anything is looked up.
fn require_fleet(ctx: &Ctx) -> AppResult<()> {
    if policy::can(&ctx.subject, Action::UseFleet, None)
        && (policy::can(&ctx.subject, Action::ViewServers, None)
            || policy::can(&ctx.subject, Action::ManageScripts, None))
    {
        Ok(())
    } else {
        Err(AppError::forbidden())
    }
}

/// `GET /scripts`.
pub fn list_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let rows = app.store.read(|r| {
        scripts::visible(r, &ctx.subject)?
            .iter()
            .map(|s| scripts::view(r, s))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let can_create = policy::can(&ctx.subject, Action::ManageScripts, None);
    page(
        app,
        req,
        ctx,
        "scripts",
        "Scripts",
        json!({"scripts": rows, "can_create": can_create}),
    )
}

fn editable_projects(r: &impl Read, ctx: &Ctx) -> anyhow::Result<Vec<Value>> {
    Ok(projects::all(r)?
        .into_iter()
        .filter(|p| policy::can(&ctx.subject, Action::ManageScripts, Some(&p.id)))
        .map(|p| json!({"id": p.id, "name": p.name}))
        .collect())
}

fn variable_rows(variables: &[Variable]) -> Vec<Value> {
    variables
        .iter()
        .cloned()
        .chain(std::iter::repeat_with(Variable::default).take(BLANK_VARIABLE_ROWS))
        .enumerate()
        .map(|(i, v)| {
            json!({"index": i, "name": v.name, "default": v.default, "description": v.description,
                   "secret": v.secret, "required": v.required})
        })
        .collect()
}

/// Renders the editor for a new script (`script` None) or an existing one.
#[allow(clippy::too_many_arguments)]
fn editor(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    status: StatusCode,
    script: Option<&Script>,
    values: Value,
    variables: &[Variable],
    errors: Value,
) -> AppResult<Resp> {
    let (projects, rollouts, desired) = app.store.read(|r| {
        let projects = editable_projects(r, ctx)?;
        // The Desired state card (drift checks) of a saved playbook.
        let desired = match script {
            Some(s) => super::drift_pages::script_card(r, ctx, s)?,
            None => json!({"available": false}),
        };
        let rollouts = match script {
            Some(s) => rollouts::recent_of_script(r, &ctx.subject, &s.id, 10)?
                .iter()
                .map(|ro| rollouts::view(r, &ctx.subject, ro))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok((projects, rollouts, desired))
    })?;
    let can_edit = match script {
        Some(s) => scripts::may_manage(&ctx.subject, s.project_id.as_deref()),
        None => policy::can(&ctx.subject, Action::ManageScripts, None),
    };
    let can_run = policy::can(&ctx.subject, Action::OperateServers, None);
    let can_global = scripts::may_manage(&ctx.subject, None);
    let title = match script {
        Some(s) => format!("Script {}", s.name),
        None => "New script".to_string(),
    };
    page_with_status(
        app,
        req,
        ctx,
        status,
        "scripts_edit",
        &title,
        json!({
            "script": script.map(|s| json!({"id": s.id, "name": s.name, "sample": s.sample,
                "updated_by": s.updated_by, "updated_at": s.updated_at,
                "playbook": s.kind == ScriptKind::Playbook,
                "files": file_rows(s)})),
            "values": values,
            "variables": variable_rows(variables),
            "errors": errors,
            "projects": projects,
            "can_edit": can_edit,
            "can_run": can_run,
            "can_global": can_global,
            "rollouts": rollouts,
            "desired": desired,
            "action": script.map(|s| format!("/scripts/{}", s.id)).unwrap_or_else(|| "/scripts/new".into()),
        }),
    )
}

/// The editor's list of a script's files, each with the link to its own editor.
fn file_rows(script: &Script) -> Vec<Value> {
    script
        .files
        .iter()
        .map(|f| {
            json!({"path": f.path, "size": f.size, "binary": f.binary,
                "href": format!("/scripts/{}/file?path={}", script.id, super::urlencode(&f.path))})
        })
        .collect()
}

fn values_of(script: &Script) -> Value {
    json!({
        "name": script.name,
        "description": script.description,
        "kind": script.kind.as_str(),
        "body": script.body,
        "interpreter": script.interpreter,
        "allow_ansible_fallback": script.allow_ansible_fallback,
        "project": script.project_id.clone().unwrap_or_default(),
    })
}

/// `GET /scripts/new`.
pub fn new_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    if !policy::can(&ctx.subject, Action::ManageScripts, None) {
        return Err(AppError::forbidden());
    }
    let values = json!({"name": "", "description": "", "kind": "playbook",
        "body": "- name: My playbook\n  hosts: all\n  tasks:\n    - name: Say hello\n      debug:\n        msg: Hello\n",
        "interpreter": "/bin/sh", "project": ""});
    editor(app, req, ctx, StatusCode::OK, None, values, &[], json!({}))
}

/// `GET /scripts/{id}`.
pub fn edit_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let script = app
        .store
        .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?;
    editor(
        app,
        req,
        ctx,
        StatusCode::OK,
        Some(&script),
        values_of(&script),
        &script.variables,
        json!({}),
    )
}

/// The declared variables of the editor form: rows `var_{i}_name` etc.; rows without
/// a name are ignored.
fn form_variables(form: &Form) -> Vec<Variable> {
    let mut out = Vec::new();
    for i in 0..scripts::MAX_VARIABLES + BLANK_VARIABLE_ROWS + 1 {
        let Some(name) = form.get(&format!("var_{i}_name")) else {
            break;
        };
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        out.push(Variable {
            name: name.to_string(),
            default: form
                .get(&format!("var_{i}_default"))
                .unwrap_or("")
                .to_string(),
            description: form
                .get(&format!("var_{i}_description"))
                .unwrap_or("")
                .trim()
                .to_string(),
            secret: form.checked(&format!("var_{i}_secret")),
            required: form.checked(&format!("var_{i}_required")),
        });
    }
    out
}

/// `POST /scripts/new` and `POST /scripts/{id}`: saves, or re-renders with the
/// errors (a playbook's with line:column beside the body).
pub fn save(app: &App, req: &Req, ctx: &Ctx, id: Option<&str>) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let form = req.form()?;
    let variables = form_variables(&form);
    let input = ScriptInput {
        name: form.get("name").map(String::from),
        description: form.get("description").map(String::from),
        kind: form.get("kind").map(String::from),
        body: form.get("body").map(|b| b.replace("\r\n", "\n")),
        interpreter: form.get("interpreter").map(String::from),
        variables: Some(variables.clone()),
        allow_ansible_fallback: Some(form.checked("allow_ansible_fallback")),
        project: Some(form.get("project").unwrap_or("").to_string()),
        files: None,
    };
    let old = match id {
        Some(id) => Some(
            app.store
                .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?,
        ),
        None => None,
    };
    // Whether the caller may save into that scope comes first; then the body, whose
    // own error carries its position so the editor can point at it.
    let authorized = app.store.read(|r| {
        Ok(scripts::authorize_save(
            r,
            &ctx.subject,
            &input,
            old.as_ref(),
        ))
    })?;
    let kind = input
        .kind
        .as_deref()
        .and_then(ScriptKind::parse)
        .unwrap_or(ScriptKind::Playbook);
    let result = match authorized.map(|_| {
        scripts::check_body(
            kind,
            input.body.as_deref().unwrap_or(""),
            input.allow_ansible_fallback.unwrap_or(false),
        )
    }) {
        Err(e) => Err((e, None)),
        Ok(Err(e)) => Err((
            AppError::invalid("body", e.display()),
            Some(json!({"message": e.message, "line": e.line, "column": e.column})),
        )),
        Ok(Ok(())) => app
            .store
            .write(|w| {
                Ok(match id {
                    Some(id) => scripts::update(w, &ctx.actor(req), &ctx.subject, id, &input),
                    None => scripts::create(w, &ctx.actor(req), &ctx.subject, &input),
                })
            })?
            .map_err(|e| (e, None)),
    };
    match result {
        Ok(script) => Ok(redirect(
            &format!("/scripts/{}", script.id),
            Some(("success", &format!("Script {} saved.", script.name))),
        )),
        Err((e, position)) if e.kind == Kind::Invalid => {
            let mut errors = form_errors_or(&e, "body");
            if let Some(position) = position {
                errors.insert("body_position".into(), position);
            }
            editor(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                old.as_ref(),
                Value::Object(form.values()),
                &variables,
                Value::Object(errors),
            )
        }
        Err((e, _)) => Err(e),
    }
}

/// The run form's servers: every agent the subject may operate.
fn run_targets(app: &App, ctx: &Ctx) -> AppResult<(Vec<Value>, Vec<Value>)> {
    Ok(app.store.read(|r| {
        let mut servers = Vec::new();
        for agent in agents::visible(r, &ctx.subject)? {
            if agent.revoked_at.is_some()
                || !policy::can(
                    &ctx.subject,
                    Action::OperateServers,
                    Some(&agent.project_id),
                )
            {
                continue;
            }
            let view = super::fleet_api::agent_view(app, r, &agent)?;
            servers.push(json!({
                "agent_id": agent.id,
                "server_id": agent.server_id,
                "name": agent.name,
                "project": view.project,
                "connected": view.connected,
            }));
        }
        let projects = projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::OperateServers, Some(&p.id)))
            .map(|p| json!({"id": p.id, "name": p.name}))
            .collect();
        Ok((servers, projects))
    })?)
}

fn run_form(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    status: StatusCode,
    script: &Script,
    values: Value,
    errors: Value,
) -> AppResult<Resp> {
    let (mut servers, projects) = run_targets(app, ctx)?;
    // Ticked again after an error, or preselected by `?server=ID` (a server or agent).
    let preselected = values.get("server").and_then(Value::as_str).unwrap_or("");
    for server in servers.iter_mut() {
        let agent_id = server["agent_id"].as_str().unwrap_or_default().to_string();
        let checked = values.get(format!("server_{agent_id}")).is_some()
            || (!preselected.is_empty()
                && (agent_id == preselected || server["server_id"] == preselected));
        server["checked"] = json!(checked);
    }
    let variables: Vec<Value> = script
        .variables
        .iter()
        .map(|v| {
            let value = if v.secret {
                String::new()
            } else {
                values
                    .get(format!("var_{}", v.name))
                    .and_then(Value::as_str)
                    .unwrap_or(&v.default)
                    .to_string()
            };
            json!({"name": v.name, "description": v.description, "secret": v.secret,
                   "required": v.required, "default": v.default, "value": value})
        })
        .collect();
    page_with_status(
        app,
        req,
        ctx,
        status,
        "scripts_run",
        &format!("Run {}", script.name),
        json!({
            "script": {"id": script.id, "name": script.name, "kind": script.kind.as_str(), "description": script.description},
            "variables": variables,
            "servers": servers,
            "projects": projects,
            "values": values,
            "errors": errors,
        }),
    )
}

/// `GET /scripts/{id}/run`.
pub fn run_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::OperateServers, None) {
        return Err(AppError::forbidden());
    }
    let script = app
        .store
        .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?;
    let values = json!({"target_mode": "servers", "serial": "1", "max_failures": "", "project": "",
        "server": req.query("server").unwrap_or("")});
    run_form(app, req, ctx, StatusCode::OK, &script, values, json!({}))
}

fn number(form: &Form, name: &str) -> AppResult<Option<u32>> {
    match form.get(name).map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<u32>()
            .map(Some)
            .map_err(|_| AppError::invalid(name, format!("{name} must be a whole number"))),
    }
}

/// `POST /scripts/{id}/run`: starts the rollout and opens its page.
pub fn run_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    if !policy::can(&ctx.subject, Action::OperateServers, None) {
        return Err(AppError::forbidden());
    }
    let form = req.form()?;
    let script = app
        .store
        .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?;
    let parsed = (|| {
        let mut vars = BTreeMap::new();
        for v in &script.variables {
            if let Some(value) = form.get(&format!("var_{}", v.name)) {
                vars.insert(v.name.clone(), json!(value));
            }
        }
        let targets = if form.get("target_mode") == Some("project") {
            Targets::Project {
                project: form.get("project").unwrap_or("").to_string(),
            }
        } else {
            let (servers, _) = run_targets(app, ctx)?;
            let chosen: Vec<String> = servers
                .iter()
                .filter_map(|s| s["agent_id"].as_str())
                .filter(|agent_id| form.checked(&format!("server_{agent_id}")))
                .map(String::from)
                .collect();
            if chosen.is_empty() {
                return Err(AppError::invalid("targets", "choose at least one server"));
            }
            Targets::Servers { servers: chosen }
        };
        let input = RunInput {
            targets,
            vars,
            serial: number(&form, "serial")?,
            max_failures: number(&form, "max_failures")?,
            check: form.checked("check"),
        };
        scripts_api::start_rollout(app, req, ctx, &script.id, &input)
    })();
    match parsed {
        Ok(rollout) => Ok(redirect(&format!("/rollouts/{}", rollout.id), None)),
        Err(e) if e.kind == Kind::Invalid => {
            let errors = form_errors_or(&e, "targets");
            // Secret values are never sent back to the browser.
            let mut values = form.values();
            for v in script.variables.iter().filter(|v| v.secret) {
                values.remove(&format!("var_{}", v.name));
            }
            run_form(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                &script,
                Value::Object(values),
                Value::Object(errors),
            )
        }
        Err(e) => Err(e),
    }
}

/// `GET /rollouts/{id}`: the summary grid and one live log per server.
pub fn rollout_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let view = app.store.read(|r| {
        let rollout = rollouts::get_visible(r, &ctx.subject, id)?;
        rollouts::view(r, &ctx.subject, &rollout)
    })?;
    let title = format!(
        "Rollout of {}",
        view["script"]["name"].as_str().unwrap_or("a script")
    );
    let may_operate = view["targets"].as_array().is_some_and(|targets| {
        targets.iter().all(|t| {
            t["project_id"].as_str().is_some_and(|p| {
                crate::policy::can(&ctx.subject, crate::policy::Action::OperateServers, Some(p))
            })
        })
    });
    let running = view["status"] == "running";
    let retryable = !running
        && view["secret_vars"].as_array().is_some_and(Vec::is_empty)
        && (view["summary"]["failed"].as_u64() > Some(0)
            || view["summary"]["skipped"].as_u64() > Some(0));
    page(
        app,
        req,
        ctx,
        "rollout",
        &title,
        json!({
            "rollout": view,
            "can_cancel": may_operate && running,
            "can_retry": may_operate && retryable,
        }),
    )
}

/// `GET /rollouts`: every rollout the caller may see, newest first, with filters and a
/// pager.
pub fn rollouts_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let filter = super::scripts_api::rollout_filter(app, req, ctx)?;
    let paging = req.paging_with(50)?;
    let (rows, projects) = app.store.read(|r| {
        let page = rollouts::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let rows: Vec<serde_json::Value> = page
            .items
            .iter()
            .map(|ro| {
                let view = rollouts::view(r, &ctx.subject, ro)?;
                Ok(json!({
                    "id": ro.id,
                    "script": ro.script_name,
                    "script_id": ro.script_id,
                    "status": ro.status.as_str(),
                    "created_by": ro.created_by,
                    "created_at": ro.created_at,
                    "finished_at": ro.finished_at,
                    "summary": view["summary"],
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let projects: Vec<serde_json::Value> = crate::projects::all(r)?
            .into_iter()
            .filter(|p| {
                crate::policy::can(
                    &ctx.subject,
                    crate::policy::Action::ViewServers,
                    Some(&p.id),
                )
            })
            .map(|p| {
                let selected = filter.project_id.as_deref() == Some(p.id.as_str());
                json!({"id": p.id, "name": p.name, "selected": selected})
            })
            .collect();
        Ok(((rows, page.next), projects))
    })?;
    let (rows, next) = rows;
    let statuses: Vec<&str> = rollouts::RolloutStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let data = json!({
        "rollouts": rows,
        "projects": projects,
        "statuses": statuses,
        "filters": {
            "status": filter.status.map(|s| s.as_str()).unwrap_or(""),
            "script": req.text_filter("script").unwrap_or_default(),
        },
        "filtered": filter.status.is_some() || filter.script_id.is_some() || filter.project_id.is_some(),
        "pager": req.pager(&paging, next.as_deref()),
    });
    page(app, req, ctx, "rollouts", "Rollouts", data)
}

/// `POST /rollouts/{id}/cancel`.
pub fn rollout_cancel(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let rollout = super::scripts_api::cancel_rollout_now(app, req, ctx, id)?;
    Ok(super::redirect(
        &format!("/rollouts/{}", rollout.id),
        Some((
            "success",
            "Rollout cancelled: running jobs were told to stop.",
        )),
    ))
}

/// `POST /rollouts/{id}/retry-failed`: a new rollout over the failed and skipped
/// targets (rollouts with secret variables are retried through the API, which takes
/// them again).
pub fn rollout_retry(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    let rollout =
        super::scripts_api::retry_failed_now(app, req, ctx, id, &rollouts::RetryInput::default())?;
    Ok(super::redirect(
        &format!("/rollouts/{}", rollout.id),
        Some((
            "success",
            &format!("Retrying on {} server(s).", rollout.targets.len()),
        )),
    ))
}

/// The page of one file of a script's tree: `GET /scripts/{id}/file?path=P` (no
/// `path`: a new file).
pub fn file_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let path = req
        .query
        .get("path")
        .map(|p| p.trim().to_string())
        .unwrap_or_default();
    let (script, file) = app.store.read(|r| {
        let script = scripts::get_visible(r, &ctx.subject, id)?;
        let file = match path.as_str() {
            "" => None,
            p => Some(
                scripts::files_of(r, &script)?
                    .into_iter()
                    .find(|f| f.path == p)
                    .ok_or_else(|| AppError::not_found("file"))?,
            ),
        };
        Ok((script, file))
    })?;
    let values = json!({
        "path": path,
        "content": file.as_ref().filter(|f| !f.base64).map(|f| f.content.clone()).unwrap_or_default(),
    });
    file_editor(
        app,
        req,
        ctx,
        StatusCode::OK,
        &script,
        file.is_some(),
        file.as_ref().is_some_and(|f| f.base64),
        values,
        json!({}),
    )
}

#[allow(clippy::too_many_arguments)]
fn file_editor(
    app: &App,
    req: &Req,
    ctx: &Ctx,
    status: StatusCode,
    script: &Script,
    exists: bool,
    binary: bool,
    values: Value,
    errors: Value,
) -> AppResult<Resp> {
    let can_edit = scripts::may_manage(&ctx.subject, script.project_id.as_deref());
    let path = values["path"].as_str().unwrap_or_default().to_string();
    let title = if exists {
        format!("{} · {}", script.name, path)
    } else {
        format!("{} · new file", script.name)
    };
    page_with_status(
        app,
        req,
        ctx,
        status,
        "scripts_file",
        &title,
        json!({
            "script": {"id": script.id, "name": script.name},
            "exists": exists,
            "binary": binary,
            "values": values,
            "errors": errors,
            "can_edit": can_edit,
            "mode": if path.ends_with(".yml") || path.ends_with(".yaml") { "yaml" } else { "text" },
        }),
    )
}

/// `POST /scripts/{id}/file`: saves one file (fields `path`, `content`), or deletes it
/// (`delete`); the whole tree is validated again, and an error re-renders the file with
/// the message.
pub fn file_save(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let form = req.form()?;
    let path = form.get("path").unwrap_or("").trim().to_string();
    let original = form.get("original").unwrap_or("").trim().to_string();
    let delete = form.get("delete").is_some();
    let content = form.get("content").unwrap_or("").replace("\r\n", "\n");
    let result = app.store.write(|w| {
        Ok(scripts::edit_file(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            Some(original.as_str()),
            &path,
            (!delete).then(|| content.clone()),
        ))
    })?;
    match result {
        Ok(script) => {
            let message = if delete {
                format!("{original} deleted.")
            } else {
                format!("{path} saved.")
            };
            Ok(redirect(
                &format!("/scripts/{}#files", script.id),
                Some(("success", &message)),
            ))
        }
        Err(e) if e.kind == Kind::Invalid => {
            let script = app
                .store
                .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?;
            let errors = form_errors_or(&e, "content");
            file_editor(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                &script,
                !original.is_empty(),
                false,
                json!({"path": path, "content": content, "original": original}),
                Value::Object(errors),
            )
        }
        Err(e) => Err(e),
    }
}

/// `POST /scripts/{id}/archive` (multipart, field `archive`): the uploaded `.tar.gz`
/// replaces the script's files (and its playbook, when the archive has one).
pub fn upload(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    require_fleet(ctx)?;
    let parts = super::multipart::parts(req)?
        .ok_or_else(|| AppError::bad_request("upload the archive as multipart/form-data"))?;
    let archive = parts
        .iter()
        .find(|p| p.name == "archive")
        .map(|p| p.data.clone())
        .unwrap_or_default();
    let result = app.store.write(|w| {
        Ok(scripts::replace_from_archive(
            w,
            &ctx.actor(req),
            &ctx.subject,
            id,
            &archive,
        ))
    })?;
    match result {
        Ok(script) => Ok(redirect(
            &format!("/scripts/{}#files", script.id),
            Some((
                "success",
                &format!(
                    "Uploaded: {} now has {} files.",
                    script.name,
                    script.files.len()
                ),
            )),
        )),
        Err(e) if e.kind == Kind::Invalid => {
            let script = app
                .store
                .read(|r| Ok(scripts::get_visible(r, &ctx.subject, id)?))?;
            let mut errors = form_errors_or(&e, "archive");
            if let Some(message) = errors.remove("files").or_else(|| errors.remove("body")) {
                errors.insert("archive".into(), message);
            }
            editor(
                app,
                req,
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&script),
                values_of(&script),
                &script.variables,
                Value::Object(errors),
            )
        }
        Err(e) => Err(e),
    }
}
