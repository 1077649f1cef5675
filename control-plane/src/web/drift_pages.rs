//! Drift pages: `/drift` (every server × desired-state script with its last result),
//! `/drift/{id}` (a report: each drifting task's diff like a code review, Apply, Check
//! now), and the forms of the script page's Desired state card. Thin: parse,
//! authorize, call `drift`, render.

use chrono::Utc;
use serde_json::{json, Value};

use super::pages::page;
use super::{redirect, Ctx, Req, Resp};
use crate::app::App;
use crate::drift::{self, DesiredInput, DriftResult, DriftStatus, TargetsInput};
use crate::error::{AppError, AppResult, Kind};
use crate::policy::{self, Action};
use crate::store::Read;

/// One line of a diff as the report page shows it: its CSS class and text.
pub fn diff_lines(diff: &str) -> Vec<Value> {
    // The printed diff ends with an empty line (as ansible-core's); the page does not.
    diff.trim_end_matches('\n')
        .lines()
        .map(|line| {
            let class =
                if line.starts_with("+++") || line.starts_with("---") || line.starts_with("@@") {
                    "ds-diff-head"
                } else if line.starts_with('+') {
                    "ds-diff-add"
                } else if line.starts_with('-') {
                    "ds-diff-del"
                } else {
                    "ds-diff-ctx"
                };
            json!({"class": class, "text": line})
        })
        .collect()
}

/// The badge of a result's status.
fn badge(status: DriftStatus) -> &'static str {
    match status {
        DriftStatus::InSync => "text-bg-success",
        DriftStatus::Drifted => "text-bg-warning",
        DriftStatus::Failed => "text-bg-danger",
        DriftStatus::Never => "text-bg-secondary",
    }
}

/// A row of the Drift list (and the server page's card).
pub fn row(r: &impl Read, ctx: &Ctx, result: &DriftResult) -> anyhow::Result<Value> {
    let mut value = drift::view(r, result, false)?;
    value["badge"] = json!(badge(result.status));
    value["label"] = json!(match result.status {
        DriftStatus::InSync => "in sync".to_string(),
        DriftStatus::Drifted => format!("drifted: {} task(s)", result.changed),
        DriftStatus::Failed => "failed".to_string(),
        DriftStatus::Never => "never checked".to_string(),
    });
    value["may_operate"] = json!(policy::can(
        &ctx.subject,
        Action::OperateServers,
        Some(&result.project_id)
    ));
    Ok(value)
}

/// `GET /drift[?project=…][&status=…]`.
pub fn list_page(app: &App, req: &Req, ctx: &Ctx) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    let paging = req.paging_with(100)?;
    let filter = super::drift_api::filter(app, req, ctx)?;
    let data = app.store.read(|r| {
        let page = drift::query(
            r,
            &ctx.subject,
            &filter,
            paging.cursor.as_deref(),
            paging.limit,
        )?;
        let mut rows = page
            .items
            .iter()
            .map(|d| row(r, ctx, d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    v["server_name"].as_str().unwrap_or("").to_lowercase(),
                    v["script_name"].as_str().unwrap_or("").to_lowercase(),
                )
            };
            key(a).cmp(&key(b))
        });
        let given = |name: &str| req.text_filter(name).unwrap_or_default();
        let project = given("project");
        let projects: Vec<Value> = crate::projects::all(r)?
            .into_iter()
            .filter(|p| policy::can(&ctx.subject, Action::ViewServers, Some(&p.id)))
            .map(|p| {
                let selected = project == p.id || project == p.name;
                json!({"id": p.id, "name": p.name, "selected": selected})
            })
            .collect();
        Ok(json!({
            "results": rows,
            "filters": {"project": project, "status": given("status")},
            "projects": projects,
            "statuses": DriftStatus::ALL.map(|s| s.as_str()),
            "filtered": super::drift_api::FILTERS.iter().any(|n| req.text_filter(n).is_some()),
            "pager": req.pager(&paging, page.next.as_deref()),
        }))
    })?;
    page(app, req, ctx, "drift", "Drift", data)
}

/// `GET /drift/{id}`: the report of a server × script.
pub fn report_page(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    let (data, title) = app.store.read(|r| {
        let result = drift::get_visible(r, &ctx.subject, id)?;
        let mut data = row(r, ctx, &result)?;
        let tasks: Vec<Value> = result
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "action": t.action,
                    "status": t.status,
                    "drifting": t.status == "changed",
                    "failed": t.status == "failed",
                    "lines": t.diff.as_deref().map(diff_lines).unwrap_or_default(),
                })
            })
            .collect();
        let drifting = tasks.iter().filter(|t| t["drifting"] == true).count();
        data["tasks"] = json!(tasks);
        data["drifting_count"] = json!(drifting);
        data["truncated"] = json!(result.truncated);
        let title = format!(
            "Drift of {} on {}",
            data["script_name"].as_str().unwrap_or(""),
            data["server_name"].as_str().unwrap_or("")
        );
        Ok((json!({"result": data}), title))
    })?;
    page(app, req, ctx, "drift_report", &title, data)
}

fn back_with(result: AppResult<String>, back: &str) -> AppResult<Resp> {
    match result {
        Ok(message) => Ok(redirect(back, Some(("success", &message)))),
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::Conflict) => {
            Ok(redirect(back, Some(("danger", &e.message))))
        }
        Err(e) => Err(e),
    }
}

/// `POST /drift/{id}/apply` (the button asks for confirmation): runs the script for
/// real on the server, then shows its execution.
pub fn apply_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    match super::drift_api::start_apply(app, req, ctx, id) {
        Ok(execution) => Ok(redirect(
            &format!("/executions/{}", execution.id),
            Some(("success", "Apply started")),
        )),
        Err(e) => back_with(Err(e), &format!("/drift/{}", super::urlencode(id))),
    }
}

/// `POST /drift/{id}/check`: checks this server × script now.
pub fn check_one_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    let result = app
        .store
        .read(|r| Ok(drift::get_visible(r, &ctx.subject, id)?))?;
    let started =
        super::drift_api::start_check(app, req, ctx, &result.script_id, Some(&result.server_id))
            .map(|_| "check started".to_string());
    back_with(started, &format!("/drift/{}", super::urlencode(id)))
}

/// `POST /scripts/{id}/drift-check`: Check now on every target.
pub fn check_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    let started = super::drift_api::start_check(app, req, ctx, id, None)
        .map(|list| format!("check started on {} server(s)", list.len()));
    back_with(started, &format!("/scripts/{}", super::urlencode(id)))
}

/// `POST /scripts/{id}/desired-state`: the Desired state card's form (`stop=1` stops
/// it; otherwise `targets` = `project` or `servers`, `servers` names, `schedule`).
pub fn desired_submit(app: &App, req: &Req, ctx: &Ctx, id: &str) -> AppResult<Resp> {
    super::drift_api::require_fleet(ctx)?;
    let form = req.form()?;
    let back = format!("/scripts/{}", super::urlencode(id));
    if form.get("stop") == Some("1") {
        let stopped = app
            .store
            .write(|w| Ok(drift::stop(w, &ctx.actor(req), &ctx.subject, id)?))
            .map_err(AppError::from)
            .map(|_| "desired state stopped".to_string());
        return back_with(stopped, &back);
    }
    let servers: Vec<String> = form
        .get("servers")
        .unwrap_or("")
        .split([',', '\n', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let targets = match form.get("targets") {
        Some("servers") => TargetsInput {
            project: None,
            servers: Some(servers),
            group: None,
        },
        Some("group") => TargetsInput {
            project: form.get("project").map(String::from),
            servers: None,
            // An empty group is refused, never taken for the whole project.
            group: Some(form.get("group").unwrap_or("").to_string()),
        },
        _ => TargetsInput {
            project: form.get("project").map(String::from),
            servers: None,
            group: None,
        },
    };
    let input = DesiredInput {
        targets,
        schedule: form.get("schedule").unwrap_or("").to_string(),
    };
    let saved = app.store.write(|w| {
        let state = drift::set(w, &ctx.actor(req), &ctx.subject, id, &input, Utc::now())?;
        drift::state_view(w, &state, Utc::now())
    });
    match saved {
        Ok(view) => Ok(redirect(
            &back,
            Some((
                "success",
                &format!(
                    "desired state saved: checked {}",
                    view["description"].as_str().unwrap_or("")
                ),
            )),
        )),
        Err(e) => {
            let e = AppError::from(e);
            if matches!(e.kind, Kind::Invalid | Kind::BadRequest | Kind::Conflict) {
                // The script page shows the message on its card.
                return Ok(redirect(&back, Some(("danger", &e.message))));
            }
            Err(e)
        }
    }
}

/// The script page's Desired state card: the state (or none), whether the caller may
/// change it, and the results of its servers.
pub fn script_card(
    r: &impl Read,
    ctx: &Ctx,
    script: &crate::scripts::Script,
) -> anyhow::Result<Value> {
    if script.kind != crate::scripts::ScriptKind::Playbook {
        return Ok(json!({"available": false}));
    }
    let state = drift::of_script(r, &script.id)?
        .filter(|s| policy::can(&ctx.subject, Action::ViewServers, Some(&s.project_id)));
    let may_operate = match (&state, &script.project_id) {
        (Some(s), _) => policy::can(&ctx.subject, Action::OperateServers, Some(&s.project_id)),
        (None, Some(p)) => policy::can(&ctx.subject, Action::OperateServers, Some(p)),
        (None, None) => policy::can(&ctx.subject, Action::OperateServers, None),
    };
    let projects: Vec<Value> = crate::projects::all(r)?
        .into_iter()
        .filter(|p| script.project_id.as_ref().is_none_or(|own| *own == p.id))
        .filter(|p| policy::can(&ctx.subject, Action::OperateServers, Some(&p.id)))
        .map(|p| {
            let selected = state.as_ref().is_some_and(|s| s.project_id == p.id);
            json!({"id": p.id, "name": p.name, "selected": selected})
        })
        .collect();
    let (view, results) = match &state {
        Some(s) => {
            let results = drift::results_of_script(r, &script.id)?
                .iter()
                .map(|d| row(r, ctx, d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (drift::state_view(r, s, Utc::now())?, results)
        }
        None => (Value::Null, Vec::new()),
    };
    let servers_text = match state.as_ref().map(|s| &s.targets) {
        Some(drift::Targets::Servers { server_ids }) => r
            .get_many::<crate::servers::Server>(server_ids)?
            .into_iter()
            .flatten()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let by_servers = matches!(
        state.as_ref().map(|s| &s.targets),
        Some(drift::Targets::Servers { .. })
    );
    let group = match state.as_ref().map(|s| &s.targets) {
        Some(drift::Targets::Group { group }) => group.clone(),
        _ => String::new(),
    };
    Ok(json!({
        "available": true,
        "state": view,
        "results": results,
        "may_operate": may_operate,
        "projects": projects,
        "servers_text": servers_text,
        "by_servers": by_servers,
        "by_group": !group.is_empty(),
        "group": group,
        "schedule": state.as_ref().map(|s| s.cron.clone()).unwrap_or_else(|| "0 * * * *".into()),
    }))
}
