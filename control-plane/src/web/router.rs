//! Wires `(method, path)` to handlers; nothing else happens here. Public routes first,
//! then the JSON API (bearer token or session), then the pages (session; anonymous
//! visitors are sent to the login page).

use warp::http::{Method, StatusCode};

use super::{
    api, assets, fleet_api, fleet_pages, hetzner_api, hetzner_pages, pages, ssh_api, ssh_pages,
    Req, Resp,
};
use crate::app::App;
use crate::error::AppError;

/// Answers one request.
pub async fn dispatch(app: &App, req: &Req) -> Resp {
    let segments = req.segments();
    let m = &req.method;
    match (m, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => return super::healthz(app),
        (&Method::GET, ["metrics"]) => {
            return super::text(
                StatusCode::OK,
                app.metrics.render(),
                "text/plain; version=0.0.4",
            )
        }
        (&Method::GET, ["static", ..]) => return assets::serve(req, &req.path["/static/".len()..]),
        (&Method::GET, ["login"]) => return pages::login_form(app, req, None),
        (&Method::POST, ["login"]) => return pages::login(app, req).await,
        (&Method::GET, ["download", "dynserv-agent"]) => {
            return hetzner_pages::download_agent().await
        }
        _ => {}
    }
    if let ["api", "v1", rest @ ..] = segments.as_slice() {
        return api_routes(app, req, rest).await;
    }
    page_routes(app, req, &segments).await
}

async fn api_routes(app: &App, req: &Req, rest: &[&str]) -> Resp {
    let ctx = match super::authenticate(app, req) {
        Ok(Some(ctx)) => ctx,
        Ok(None) => return super::api_error(&AppError::unauthenticated()),
        Err(e) => return super::api_error(&e),
    };
    if req.method != Method::GET {
        if let Err(e) = super::check_csrf(req, &ctx, None) {
            return super::api_error(&e);
        }
    }
    let m = &req.method;
    let result = match (m, rest) {
        (&Method::GET, ["me"]) => api::me(app, &ctx),
        // Live events for pages (server-sent events).
        (&Method::GET, ["events"]) => super::live_api::events(app, req, &ctx),
        // Alerts: webhooks and their deliveries, the caller's e-mail choices.
        (&Method::GET, ["me", "alerts"]) => super::alerts_api::my_alerts(app, &ctx),
        (&Method::PUT, ["me", "alerts"]) => super::alerts_api::save_my_alerts(app, req, &ctx),
        (&Method::GET, ["webhooks"]) => super::alerts_api::list(app, req, &ctx),
        (&Method::POST, ["webhooks"]) => super::alerts_api::create(app, req, &ctx),
        (&Method::GET, ["webhooks", id]) => super::alerts_api::get(app, &ctx, id),
        (&Method::DELETE, ["webhooks", id]) => super::alerts_api::delete(app, req, &ctx, id),
        (&Method::GET, ["webhooks", id, "deliveries"]) => {
            super::alerts_api::deliveries(app, req, &ctx, id)
        }
        (&Method::GET, ["servers"]) => api::servers(app, req, &ctx),
        (&Method::GET, ["servers", id]) => api::server(app, &ctx, id),
        (&Method::GET, ["servers", id, "metrics"]) => fleet_api::server_metrics(app, req, &ctx, id),
        // Bringing existing servers in: by hand, SSH settings and tests, agent installs.
        (&Method::POST, ["servers"]) => ssh_api::create_server_api(app, req, &ctx),
        // Run inventories: a server's groups and host variables, a project's group
        // variables and the inventory its runs get.
        (&Method::GET, ["servers", id, "inventory"]) => {
            super::inventory_api::get_server(app, &ctx, id)
        }
        (&Method::GET, ["servers", id, "facts"]) => {
            super::inventory_api::get_server_facts(app, &ctx, id)
        }
        (&Method::PUT, ["servers", id, "inventory"]) => {
            super::inventory_api::put_server(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "inventory"]) => {
            super::inventory_api::get_project(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "groups", group, "vars"]) => {
            super::inventory_api::get_group_vars(app, &ctx, id, group)
        }
        (&Method::PUT, ["projects", id, "groups", group, "vars"]) => {
            super::inventory_api::put_group_vars(app, req, &ctx, id, group)
        }
        (&Method::GET, ["projects", id, "ssh"]) => ssh_api::get_settings(app, &ctx, id),
        (&Method::PUT, ["projects", id, "ssh"]) => ssh_api::put_settings(app, req, &ctx, id),
        (&Method::DELETE, ["projects", id, "ssh"]) => ssh_api::delete_settings(app, req, &ctx, id),
        (&Method::POST, ["projects", id, "install-agent"]) => {
            ssh_api::install_project(app, req, &ctx, id)
        }
        (&Method::GET, ["servers", id, "ssh"]) => ssh_api::server_state(app, &ctx, id),
        (&Method::GET, ["servers", id, "terminal"]) => super::terminal::check_api(app, &ctx, id),
        (&Method::POST, ["servers", id, "ssh-test"]) => ssh_api::test(app, req, &ctx, id).await,
        (&Method::POST, ["servers", id, "ssh-host-key", "accept"]) => {
            ssh_api::accept_host_key(app, req, &ctx, id)
        }
        (&Method::POST, ["servers", id, "install-agent"]) => ssh_api::install(app, req, &ctx, id),
        (&Method::GET, ["agent-installs", id]) => ssh_api::get_install(app, &ctx, id),
        (&Method::GET, ["projects"]) => api::projects(app, req, &ctx),
        (&Method::POST, ["projects"]) => api::create_project(app, req, &ctx),
        (&Method::GET, ["projects", id]) => api::project(app, &ctx, id),
        (&Method::PUT, ["projects", id]) => api::update_project(app, req, &ctx, id),
        (&Method::POST, ["projects", id, "access"]) => api::grant_access(app, req, &ctx, id),
        (&Method::POST, ["projects", id, "sync"]) => hetzner_api::sync_project(app, req, &ctx, id),
        (&Method::GET, ["projects", id, "costs"]) => hetzner_api::costs(app, &ctx, id),
        (&Method::GET, ["requests", id, "provisioning"]) => {
            hetzner_api::provisioning(app, &ctx, id)
        }
        (&Method::POST, ["servers", id, "power"]) => hetzner_api::power(app, req, &ctx, id).await,
        (&Method::GET, ["servers", id, "actions"]) => hetzner_api::actions(app, &ctx, id),
        (&Method::GET, ["servers", id, "actions", action_id]) => {
            hetzner_api::action(app, &ctx, id, action_id)
        }
        (&Method::DELETE, ["projects", id, "access", username]) => {
            api::revoke_access(app, req, &ctx, id, username)
        }
        (&Method::GET, ["users"]) => api::users(app, req, &ctx),
        (&Method::POST, ["users"]) => api::create_user(app, req, &ctx).await,
        (&Method::PUT, ["users", id]) => api::update_user(app, req, &ctx, id).await,
        (&Method::POST, ["users", id, "apitokens"]) => api::create_api_token(app, req, &ctx, id),
        (&Method::GET, ["users", id, "tokens"]) => api::user_tokens(app, &ctx, id),
        (&Method::GET, ["tokens"]) => api::tokens(app, &ctx),
        (&Method::DELETE, ["tokens", id]) => api::revoke_token(app, req, &ctx, id),
        (&Method::GET, ["audit"]) => api::audit(app, req, &ctx),
        (&Method::GET, ["requests"]) => super::business_api::list_requests(app, req, &ctx),
        (&Method::POST, ["requests"]) => super::business_api::create_request(app, req, &ctx),
        (&Method::GET, ["requests", id]) => super::business_api::get_request(app, &ctx, id),
        (&Method::POST, ["requests", id, step]) => match request_action(step) {
            Some(action) => super::business_api::move_request(app, req, &ctx, id, action),
            None => Err(AppError::not_found("endpoint")),
        },
        (&Method::GET, ["notifications"]) => super::business_api::notifications(app, req, &ctx),
        (&Method::GET, ["notifications", "unread"]) => super::business_api::unread(app, &ctx),
        (&Method::POST, ["notifications", "read_all"]) => {
            super::business_api::mark_all_read(app, &ctx)
        }
        (&Method::POST, ["notifications", id, "read"]) => {
            super::business_api::mark_read(app, &ctx, id)
        }
        (&Method::GET, ["subscriptions"]) => {
            super::business_api::list_subscriptions(app, req, &ctx)
        }
        (&Method::POST, ["subscriptions"]) => {
            super::business_api::create_subscription(app, req, &ctx)
        }
        (&Method::GET, ["subscriptions", id]) => {
            super::business_api::get_subscription(app, &ctx, id)
        }
        (&Method::PUT, ["subscriptions", id]) => {
            super::business_api::update_subscription(app, req, &ctx, id)
        }
        (&Method::DELETE, ["subscriptions", id]) => {
            super::business_api::delete_subscription(app, req, &ctx, id)
        }
        (&Method::POST, ["subscriptions", id, what]) => {
            super::business_api::change_subscription(app, req, &ctx, id, what)
        }
        (&Method::GET, ["clients"]) => super::business_api::list_clients(app, req, &ctx),
        (&Method::POST, ["clients"]) => super::business_api::create_client(app, req, &ctx),
        (&Method::GET, ["clients", id]) => super::business_api::get_client(app, &ctx, id),
        (&Method::PUT, ["clients", id]) => super::business_api::update_client(app, req, &ctx, id),
        (&Method::GET, ["clients", id, "statement"]) => {
            super::business_api::client_statement(app, req, &ctx, id)
        }
        (&Method::GET, ["revenue"]) => super::business_api::revenue(app, req, &ctx),
        // Fleet: agents, enrollment tokens, executions.
        (&Method::GET, ["agents"]) => fleet_api::agents_list(app, req, &ctx),
        (&Method::GET, ["agents", id]) => fleet_api::agent(app, &ctx, id),
        (&Method::GET, ["agent-versions"]) => fleet_api::agent_versions(app, req, &ctx),
        (&Method::POST, ["agents", id, "revoke"]) => fleet_api::revoke_agent(app, req, &ctx, id),
        (&Method::POST, ["agents", "upgrade"]) => fleet_api::upgrade_agents(app, req, &ctx),
        (&Method::POST, ["agents", id, "upgrade"]) => fleet_api::upgrade_agent(app, req, &ctx, id),
        (&Method::GET, ["agent-upgrades", id]) => fleet_api::agent_upgrade(app, &ctx, id),
        (&Method::POST, ["agents", id, "accept-host"]) => {
            fleet_api::accept_host_api(app, req, &ctx, id)
        }
        // The fleet's certificate authorities (admins).
        (&Method::GET, ["ca"]) => super::ca_api::list(app, req, &ctx),
        (&Method::POST, ["ca", "rotate"]) => super::ca_api::rotate_api(app, req, &ctx),
        (&Method::POST, ["ca", id, "retire"]) => super::ca_api::retire_api(app, req, &ctx, id),
        (&Method::POST, ["enrollment-tokens"]) => fleet_api::create_token_api(app, req, &ctx),
        (&Method::GET, ["enrollment-tokens"]) => fleet_api::enrollment_tokens_list(app, &ctx),
        (&Method::DELETE, ["enrollment-tokens", id]) => {
            fleet_api::revoke_enrollment_token_api(app, req, &ctx, id)
        }
        (&Method::GET, ["executions"]) => fleet_api::executions_list(app, req, &ctx),
        (&Method::POST, ["executions"]) => fleet_api::create_execution(app, req, &ctx),
        // Deployment scripts and their rollouts.
        (&Method::GET, ["scripts"]) => super::scripts_api::list(app, req, &ctx),
        (&Method::POST, ["scripts"]) => super::scripts_api::create(app, req, &ctx),
        (&Method::GET, ["scripts", id]) => super::scripts_api::get(app, &ctx, id),
        (&Method::PUT, ["scripts", id]) => super::scripts_api::update(app, req, &ctx, id),
        (&Method::POST, ["scripts", id, "run"]) => super::scripts_api::run(app, req, &ctx, id),
        (&Method::GET, ["scripts", id, "files"]) => super::scripts_api::files(app, &ctx, id),
        (&Method::GET, ["scripts", id, "archive"]) => super::scripts_api::archive(app, &ctx, id),
        (&Method::PUT, ["scripts", id, "archive"]) => {
            super::scripts_api::upload_archive(app, req, &ctx, id)
        }
        // Drift: desired states, checks, results and Apply.
        (&Method::GET, ["scripts", id, "desired-state"]) => {
            super::drift_api::get_desired(app, &ctx, id)
        }
        (&Method::PUT, ["scripts", id, "desired-state"]) => {
            super::drift_api::put_desired(app, req, &ctx, id)
        }
        (&Method::DELETE, ["scripts", id, "desired-state"]) => {
            super::drift_api::delete_desired(app, req, &ctx, id)
        }
        (&Method::POST, ["scripts", id, "drift-check"]) => {
            super::drift_api::check(app, req, &ctx, id)
        }
        (&Method::GET, ["drift"]) => super::drift_api::list(app, req, &ctx),
        (&Method::GET, ["drift", id]) => super::drift_api::get(app, &ctx, id),
        (&Method::POST, ["drift", id, "apply"]) => super::drift_api::apply(app, req, &ctx, id),
        (&Method::GET, ["rollouts"]) => super::scripts_api::rollouts_list(app, req, &ctx),
        (&Method::GET, ["rollouts", id]) => super::scripts_api::rollout(app, &ctx, id),
        (&Method::POST, ["rollouts", id, "cancel"]) => {
            super::scripts_api::cancel_rollout(app, req, &ctx, id)
        }
        (&Method::POST, ["rollouts", id, "retry-failed"]) => {
            super::scripts_api::retry_failed(app, req, &ctx, id)
        }
        (&Method::GET, ["executions", id]) => fleet_api::execution(app, &ctx, id),
        (&Method::GET, ["executions", id, "log"]) => fleet_api::execution_log(app, req, &ctx, id),
        (&Method::POST, ["executions", id, "cancel"]) => {
            fleet_api::cancel_execution(app, req, &ctx, id)
        }
        (&Method::POST, ["executions", id, "rerun"]) => {
            fleet_api::rerun_execution(app, req, &ctx, id)
        }
        // Operations: backups, restores, system updates, schedules.
        (&Method::GET, ["backups"]) => super::ops_api::backups_list(app, req, &ctx),
        (&Method::GET, ["backups", id]) => super::ops_api::backup(app, &ctx, id),
        (&Method::POST, ["backups", id, "verify"]) => {
            super::ops_api::backup_verify(app, req, &ctx, id)
        }
        (&Method::POST, ["backups", id, "offsite", "upload"]) => {
            super::offsite_api::upload(app, req, &ctx, id)
        }
        (&Method::POST, ["backups", id, "offsite", "verify"]) => {
            super::offsite_api::verify(app, req, &ctx, id)
        }
        (&Method::POST, ["backups", id, "offsite", "restore"]) => {
            super::offsite_api::restore(app, req, &ctx, id)
        }
        (&Method::GET, ["offsite"]) => super::offsite_api::get_default(app, &ctx),
        (&Method::PUT, ["offsite"]) => super::offsite_api::put_default(app, req, &ctx),
        (&Method::DELETE, ["offsite"]) => super::offsite_api::delete_default(app, req, &ctx),
        (&Method::POST, ["offsite", "test"]) => super::offsite_api::test_default(app, &ctx).await,
        (&Method::GET, ["projects", id, "offsite"]) => {
            super::offsite_api::get_settings(app, &ctx, id)
        }
        (&Method::PUT, ["projects", id, "offsite"]) => {
            super::offsite_api::put_settings(app, req, &ctx, id)
        }
        (&Method::DELETE, ["projects", id, "offsite"]) => {
            super::offsite_api::delete_settings(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "offsite", "test"]) => {
            super::offsite_api::test(app, &ctx, id).await
        }
        (&Method::POST, ["projects", id, "offsite", "prune"]) => {
            super::offsite_api::prune(app, &ctx, id).await
        }
        (&Method::POST, ["backups", id, "restore"]) => {
            super::ops_api::backup_restore(app, req, &ctx, id)
        }
        (&Method::POST, ["servers", id, "backup"]) => {
            super::ops_api::server_backup(app, req, &ctx, id)
        }
        (&Method::POST, ["servers", id, "update"]) => {
            super::ops_api::server_update(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "backup"]) => {
            super::ops_api::project_backup(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "update"]) => {
            super::ops_api::project_update(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "backup-recipe"]) => super::ops_api::recipe(app, &ctx, id),
        (&Method::PUT, ["projects", id, "backup-recipe"]) => {
            super::ops_api::save_recipe(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "schedules"]) => {
            super::ops_api::schedules_get(app, &ctx, id)
        }
        (&Method::PUT, ["projects", id, "schedules"]) => {
            super::ops_api::schedules_put(app, req, &ctx, id)
        }
        (&Method::GET, ["updates"]) => super::ops_api::updates_list(app, req, &ctx),
        (&Method::GET, ["updates", id]) => super::ops_api::update(app, &ctx, id),
        _ => Err(AppError::not_found("endpoint")),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => super::api_error(&e),
    }
}

async fn page_routes(app: &App, req: &Req, segments: &[&str]) -> Resp {
    let ctx = match super::authenticate(app, req) {
        Ok(Some(ctx)) => ctx,
        Ok(None) => {
            let next = super::urlencode(&req.path);
            return super::redirect(&format!("/login?next={next}"), None);
        }
        Err(e) => return pages::error_page(app, req, None, &e),
    };
    // Every state-changing page route needs the session's CSRF token: checked here,
    // once, so that no handler can forget it.
    if req.method != Method::GET && req.method != Method::HEAD {
        let form = req.form().ok();
        if let Err(e) = super::check_csrf(req, &ctx, form.as_ref()) {
            return pages::error_page(app, req, Some(&ctx), &e);
        }
    }
    let m = &req.method;
    let result = match (m, segments) {
        (&Method::GET, []) => pages::dashboard(app, req, &ctx),
        (&Method::POST, ["logout"]) => pages::logout(app, req, &ctx),
        (&Method::GET, ["servers"]) => pages::servers(app, req, &ctx),
        (&Method::GET, ["servers", "new"]) => ssh_pages::new_server_form(app, req, &ctx),
        (&Method::POST, ["servers", "new"]) => ssh_pages::new_server_save(app, req, &ctx),
        (&Method::GET, ["servers", id]) => pages::server(app, req, &ctx, id),
        (&Method::POST, ["servers", id, "ssh-test"]) => ssh_pages::test(app, req, &ctx, id).await,
        (&Method::POST, ["servers", id, "ssh-accept"]) => ssh_pages::accept(app, req, &ctx, id),
        (&Method::POST, ["servers", id, "install-agent"]) => ssh_pages::install(app, req, &ctx, id),
        (&Method::GET, ["agent-installs", id]) => ssh_pages::install_page(app, req, &ctx, id),
        (&Method::GET, ["projects", id, "offsite"]) => {
            super::offsite_pages::settings_form(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "offsite"]) => {
            super::offsite_pages::settings_save(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "offsite", "test"]) => {
            super::offsite_pages::test(app, req, &ctx, id).await
        }
        (&Method::POST, ["projects", id, "offsite", "delete"]) => {
            super::offsite_pages::settings_delete(app, req, &ctx, id)
        }
        (&Method::POST, ["backups", id, "offsite", action @ ("upload" | "verify" | "restore")]) => {
            super::offsite_pages::backup_action(app, req, &ctx, id, action)
        }
        (&Method::POST, ["servers", id, "inventory"]) => {
            super::inventory_pages::server_save(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "groups", group]) => {
            super::inventory_pages::group_form(app, req, &ctx, id, group)
        }
        (&Method::POST, ["projects", id, "groups", group]) => {
            super::inventory_pages::group_save(app, req, &ctx, id, group)
        }
        (&Method::GET, ["projects", id, "ssh"]) => ssh_pages::settings_form(app, req, &ctx, id),
        (&Method::POST, ["projects", id, "ssh"]) => ssh_pages::settings_save(app, req, &ctx, id),
        (&Method::POST, ["projects", id, "ssh", "delete"]) => {
            ssh_pages::settings_delete(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "install-agent"]) => {
            ssh_pages::install_project(app, req, &ctx, id)
        }
        (&Method::GET, ["projects"]) => pages::projects(app, req, &ctx),
        (&Method::GET, ["projects", "new"]) => pages::project_form(app, req, &ctx, None),
        (&Method::POST, ["projects", "new"]) => pages::project_save(app, req, &ctx, None),
        (&Method::GET, ["projects", id]) => pages::project(app, req, &ctx, id),
        (&Method::GET, ["projects", id, "edit"]) => pages::project_form(app, req, &ctx, Some(id)),
        (&Method::POST, ["projects", id, "edit"]) => pages::project_save(app, req, &ctx, Some(id)),
        (&Method::POST, ["projects", id, "sync"]) => hetzner_pages::sync(app, req, &ctx, id),
        (&Method::POST, ["servers", id, "power"]) => hetzner_pages::power(app, req, &ctx, id).await,
        (&Method::GET, ["access"]) => pages::access(app, req, &ctx),
        (&Method::POST, ["access", "grant"]) => pages::access_grant(app, req, &ctx),
        (&Method::POST, ["access", "revoke"]) => pages::access_revoke(app, req, &ctx),
        (&Method::GET, ["users"]) => pages::users(app, req, &ctx),
        (&Method::GET, ["users", "new"]) => pages::user_form(app, req, &ctx, None),
        (&Method::POST, ["users", "new"]) => pages::user_save(app, req, &ctx, None).await,
        (&Method::GET, ["users", id, "edit"]) => pages::user_form(app, req, &ctx, Some(id)),
        (&Method::POST, ["users", id, "edit"]) => pages::user_save(app, req, &ctx, Some(id)).await,
        (&Method::GET, ["account"]) => pages::account(app, req, &ctx, None),
        (&Method::POST, ["account", "apitoken"]) => pages::account_token(app, req, &ctx),
        (&Method::POST, ["account", "alerts"]) => {
            super::alerts_pages::account_alerts(app, req, &ctx)
        }
        (&Method::GET, ["webhooks"]) => super::alerts_pages::webhooks_page(app, req, &ctx),
        (&Method::POST, ["webhooks"]) => super::alerts_pages::webhook_create(app, req, &ctx),
        (&Method::GET, ["webhooks", id]) => super::alerts_pages::webhook_page(app, req, &ctx, id),
        (&Method::POST, ["webhooks", id, "delete"]) => {
            super::alerts_pages::webhook_delete(app, req, &ctx, id)
        }
        (&Method::POST, ["account", "tokens", token, "revoke"]) => {
            pages::account_token_revoke(app, req, &ctx, token)
        }
        (&Method::POST, ["users", id, "tokens", token, "revoke"]) => {
            pages::user_token_revoke(app, req, &ctx, id, token)
        }
        (&Method::GET, ["audit"]) => pages::audit(app, req, &ctx),
        (&Method::GET, ["requests"]) => super::business_pages::requests_list(app, req, &ctx),
        (&Method::GET, ["requests", "new"]) => super::business_pages::request_form(app, req, &ctx),
        (&Method::POST, ["requests", "new"]) => super::business_pages::request_save(app, req, &ctx),
        (&Method::GET, ["requests", id]) => super::business_pages::request_page(app, req, &ctx, id),
        (&Method::POST, ["requests", id, step]) => match request_action(step) {
            Some(action) => super::business_pages::request_move(app, req, &ctx, id, action),
            None => Err(AppError::not_found("page")),
        },
        (&Method::GET, ["notifications"]) => super::business_pages::inbox(app, req, &ctx),
        (&Method::POST, ["notifications", "read_all"]) => {
            super::business_pages::read_all_notifications(app, req, &ctx)
        }
        (&Method::GET, ["notifications", id]) => {
            super::business_pages::open_notification(app, &ctx, id)
        }
        (&Method::POST, ["notifications", id, "read"]) => {
            super::business_pages::read_notification(app, req, &ctx, id)
        }
        (&Method::GET, ["subscriptions"]) => {
            super::business_pages::subscriptions_list(app, req, &ctx)
        }
        (&Method::GET, ["subscriptions", "new"]) => {
            super::business_pages::subscription_form(app, req, &ctx, None)
        }
        (&Method::POST, ["subscriptions", "new"]) => {
            super::business_pages::subscription_save(app, req, &ctx, None)
        }
        (&Method::GET, ["subscriptions", id]) => {
            super::business_pages::subscription_form(app, req, &ctx, Some(id))
        }
        (&Method::POST, ["subscriptions", id]) => {
            super::business_pages::subscription_save(app, req, &ctx, Some(id))
        }
        (&Method::POST, ["subscriptions", id, "delete"]) => {
            super::business_pages::subscription_delete(app, req, &ctx, id)
        }
        (&Method::POST, ["subscriptions", id, what]) => {
            super::business_pages::subscription_change(app, req, &ctx, id, what)
        }
        (&Method::GET, ["clients"]) => super::business_pages::clients_list(app, req, &ctx),
        (&Method::GET, ["clients", "new"]) => {
            super::business_pages::client_form(app, req, &ctx, None)
        }
        (&Method::POST, ["clients", "new"]) => {
            super::business_pages::client_save(app, req, &ctx, None)
        }
        (&Method::GET, ["clients", id]) => {
            super::business_pages::client_form(app, req, &ctx, Some(id))
        }
        (&Method::POST, ["clients", id]) => {
            super::business_pages::client_save(app, req, &ctx, Some(id))
        }
        (&Method::GET, ["clients", id, "statement"]) => {
            super::business_pages::statement_page(app, req, &ctx, id)
        }
        (&Method::GET, ["clients", id, "statement.csv"]) => {
            super::business_pages::statement_download(app, req, &ctx, id)
        }
        (&Method::GET, ["revenue"]) => super::business_pages::revenue_page(app, req, &ctx),
        (&Method::GET, ["revenue", file]) => super::business_pages::revenue_csv(app, &ctx, file),
        // Fleet pages.
        (&Method::GET, ["agents"]) => fleet_pages::agents_page(app, req, &ctx),
        (&Method::GET, ["agents", "enroll"]) => fleet_pages::enroll_form(app, req, &ctx),
        (&Method::POST, ["agents", "enroll"]) => fleet_pages::enroll_create(app, req, &ctx),
        (&Method::POST, ["agents", "ca", "rotate"]) => super::ca_api::rotate_page(app, req, &ctx),
        (&Method::POST, ["agents", "ca", id, "retire"]) => {
            super::ca_api::retire_page(app, req, &ctx, id)
        }
        (&Method::POST, ["agents", id, "revoke"]) => fleet_pages::revoke_page(app, req, &ctx, id),
        (&Method::POST, ["agents", "upgrade"]) => fleet_pages::upgrade_all_page(app, req, &ctx),
        (&Method::POST, ["agents", id, "upgrade"]) => {
            fleet_pages::upgrade_agent_page(app, req, &ctx, id)
        }
        (&Method::GET, ["agent-upgrades", id]) => {
            fleet_pages::agent_upgrade_page(app, req, &ctx, id)
        }
        (&Method::POST, ["agents", id, "accept-host"]) => {
            fleet_pages::accept_host_page(app, req, &ctx, id)
        }
        (&Method::POST, ["agents", "tokens", id, "revoke"]) => {
            fleet_pages::revoke_token_page(app, req, &ctx, id)
        }
        (&Method::GET, ["servers", id, "run"]) => fleet_pages::run_form(app, req, &ctx, id),
        (&Method::GET, ["servers", id, "terminal"]) => super::terminal::page(app, req, &ctx, id),
        (&Method::POST, ["servers", id, "run"]) => fleet_pages::run_submit(app, req, &ctx, id),
        (&Method::GET, ["executions"]) => fleet_pages::executions_page(app, req, &ctx),
        // Deployment scripts: list, editor, run form, rollouts.
        (&Method::GET, ["scripts"]) => super::scripts_pages::list_page(app, req, &ctx),
        (&Method::GET, ["scripts", "new"]) => super::scripts_pages::new_page(app, req, &ctx),
        (&Method::POST, ["scripts", "new"]) => super::scripts_pages::save(app, req, &ctx, None),
        (&Method::GET, ["scripts", id]) => super::scripts_pages::edit_page(app, req, &ctx, id),
        (&Method::POST, ["scripts", id]) => super::scripts_pages::save(app, req, &ctx, Some(id)),
        (&Method::GET, ["scripts", id, "file"]) => {
            super::scripts_pages::file_page(app, req, &ctx, id)
        }
        (&Method::POST, ["scripts", id, "file"]) => {
            super::scripts_pages::file_save(app, req, &ctx, id)
        }
        (&Method::GET, ["scripts", id, "archive"]) => super::scripts_api::archive(app, &ctx, id),
        (&Method::POST, ["scripts", id, "archive"]) => {
            super::scripts_pages::upload(app, req, &ctx, id)
        }
        (&Method::GET, ["scripts", id, "run"]) => {
            super::scripts_pages::run_page(app, req, &ctx, id)
        }
        (&Method::POST, ["scripts", id, "run"]) => {
            super::scripts_pages::run_submit(app, req, &ctx, id)
        }
        // Drift: the list, a report, Apply, Check now and the script's Desired state card.
        (&Method::GET, ["drift"]) => super::drift_pages::list_page(app, req, &ctx),
        (&Method::GET, ["drift", id]) => super::drift_pages::report_page(app, req, &ctx, id),
        (&Method::POST, ["drift", id, "apply"]) => {
            super::drift_pages::apply_submit(app, req, &ctx, id)
        }
        (&Method::POST, ["drift", id, "check"]) => {
            super::drift_pages::check_one_submit(app, req, &ctx, id)
        }
        (&Method::POST, ["scripts", id, "desired-state"]) => {
            super::drift_pages::desired_submit(app, req, &ctx, id)
        }
        (&Method::POST, ["scripts", id, "drift-check"]) => {
            super::drift_pages::check_submit(app, req, &ctx, id)
        }
        (&Method::GET, ["rollouts"]) => super::scripts_pages::rollouts_page(app, req, &ctx),
        (&Method::GET, ["rollouts", id]) => super::scripts_pages::rollout_page(app, req, &ctx, id),
        (&Method::POST, ["rollouts", id, "cancel"]) => {
            super::scripts_pages::rollout_cancel(app, req, &ctx, id)
        }
        (&Method::POST, ["rollouts", id, "retry-failed"]) => {
            super::scripts_pages::rollout_retry(app, req, &ctx, id)
        }
        (&Method::GET, ["executions", id]) => fleet_pages::execution_page(app, req, &ctx, id),
        (&Method::POST, ["executions", id, "cancel"]) => {
            fleet_pages::cancel_page(app, req, &ctx, id)
        }
        (&Method::GET, ["executions", id, "rerun"]) => fleet_pages::rerun_form(app, req, &ctx, id),
        (&Method::POST, ["executions", id, "rerun"]) => fleet_pages::rerun_page(app, req, &ctx, id),
        // Operations pages: backups, restores, system updates, schedules.
        (&Method::GET, ["backups"]) => super::ops_pages::backups_page(app, req, &ctx),
        (&Method::GET, ["backups", id]) => super::ops_pages::backup_page(app, req, &ctx, id),
        (&Method::POST, ["backups", id, "verify"]) => super::ops_pages::verify(app, req, &ctx, id),
        (&Method::POST, ["backups", id, "restore"]) => {
            super::ops_pages::restore(app, req, &ctx, id)
        }
        (&Method::POST, ["servers", id, "backup"]) => {
            super::ops_pages::server_backup(app, req, &ctx, id)
        }
        (&Method::POST, ["servers", id, "update"]) => {
            super::ops_pages::server_update(app, req, &ctx, id)
        }
        (&Method::GET, ["projects", id, "operations"]) => {
            super::ops_pages::project_page(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "operations"]) => {
            super::ops_pages::project_save(app, req, &ctx, id)
        }
        (&Method::POST, ["projects", id, "backup"]) => {
            super::ops_pages::project_run(app, req, &ctx, id, "backup")
        }
        (&Method::POST, ["projects", id, "update"]) => {
            super::ops_pages::project_run(app, req, &ctx, id, "update")
        }
        (&Method::GET, ["updates"]) => super::ops_pages::updates_page(app, req, &ctx),
        (&Method::GET, ["updates", id]) => super::ops_pages::update_page(app, req, &ctx, id),
        _ => Err(AppError::not_found("page")),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => pages::error_page(app, req, Some(&ctx), &e),
    }
}

/// The workflow move named by the last segment of `/requests/{id}/{step}`.
fn request_action(step: &str) -> Option<crate::requests::Action> {
    use crate::requests::Action;
    match step {
        "approve" => Some(Action::Approve),
        "reject" => Some(Action::Reject),
        "deployed" => Some(Action::MarkDeployed),
        "retry" => Some(Action::Retry),
        _ => None,
    }
}
