//! Every answer of the simulator, read back through the `hcloud` crate's strict models:
//! the client the control plane uses must accept what the simulator says.

use std::time::Duration;

use dynserv_hetzner_sim::{Fault, FaultKind, NewServer, SimConfig, Simulator};
use hcloud::apis::configuration::Configuration;
use hcloud::apis::{actions_api, pricing_api, server_types_api, servers_api, Error};
use hcloud::models;

fn client(sim: &Simulator, token: &str) -> Configuration {
    let mut config = Configuration::new();
    config
        .base_path_mapping
        .insert("https://api.hetzner.cloud/v1".into(), sim.url());
    config.bearer_access_token = Some(token.into());
    config
}

async fn start() -> Simulator {
    let sim = Simulator::start(SimConfig {
        action_duration: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    sim.add_project("tok");
    sim
}

/// Listing pages through `meta.pagination` and every server parses.
#[tokio::test]
async fn list_servers_pages_and_parses() {
    let sim = start().await;
    sim.add_servers("tok", 120, "web");
    let config = client(&sim, "tok");
    let mut page = Some(1);
    let mut seen = 0;
    while let Some(p) = page {
        let answer = servers_api::list_servers(
            &config,
            servers_api::ListServersParams {
                page: Some(p),
                per_page: Some(50),
                ..Default::default()
            },
        )
        .await
        .expect("list_servers parses");
        seen += answer.servers.len();
        assert_eq!(answer.meta.pagination.total_entries, Some(120));
        page = answer.meta.pagination.next_page;
    }
    assert_eq!(seen, 120);
    let filtered = servers_api::list_servers(
        &config,
        servers_api::ListServersParams {
            label_selector: Some("index=7".into()),
            ..Default::default()
        },
    )
    .await
    .expect("label selector");
    assert_eq!(filtered.servers.len(), 1);
    assert_eq!(filtered.servers[0].name, "web-007");
}

/// Create, get, power actions and the action's way from running to success parse.
#[tokio::test]
async fn create_power_and_actions_parse() {
    let sim = start().await;
    let config = client(&sim, "tok");
    let mut request =
        models::CreateServerRequest::new("ubuntu-24.04".into(), "app-1".into(), "cpx21".into());
    request.location = Some("nbg1".into());
    request.labels = Some([("dynserv-request".to_string(), "r1".to_string())].into());
    let created = servers_api::create_server(
        &config,
        servers_api::CreateServerParams {
            create_server_request: request,
        },
    )
    .await
    .expect("create_server parses");
    assert_eq!(created.server.status, models::server::Status::Initializing);
    assert_eq!(created.action.status, models::action::Status::Running);
    let id = created.server.id;

    let got = servers_api::get_server(&config, servers_api::GetServerParams { id })
        .await
        .expect("get_server parses");
    assert_eq!(got.server.expect("server").name, "app-1");

    let off = servers_api::power_off_server(&config, servers_api::PowerOffServerParams { id })
        .await
        .expect("poweroff parses");
    let on = servers_api::power_on_server(&config, servers_api::PowerOnServerParams { id })
        .await
        .expect("poweron parses");
    let reboot =
        servers_api::soft_reboot_server(&config, servers_api::SoftRebootServerParams { id })
            .await
            .expect("reboot parses");
    servers_api::reset_server(&config, servers_api::ResetServerParams { id })
        .await
        .expect("reset parses");
    servers_api::shutdown_server(&config, servers_api::ShutdownServerParams { id })
        .await
        .expect("shutdown parses");
    assert_eq!(off.action.command, "stop_server");
    assert_eq!(on.action.command, "start_server");
    assert_eq!(reboot.action.command, "reboot_server");

    let running =
        actions_api::get_action(&config, actions_api::GetActionParams { id: off.action.id })
            .await
            .expect("get_action parses");
    assert_eq!(running.action.status, models::action::Status::Running);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let done = actions_api::get_action(&config, actions_api::GetActionParams { id: off.action.id })
        .await
        .expect("get_action parses");
    assert_eq!(done.action.status, models::action::Status::Success);
    assert_eq!(done.action.progress, 100);
    assert!(done.action.finished.is_some());
}

/// Server types and pricing parse and agree on the monthly price.
#[tokio::test]
async fn server_types_and_pricing_parse() {
    let sim = start().await;
    let config = client(&sim, "tok");
    let types = server_types_api::list_server_types(&config, Default::default())
        .await
        .expect("server types parse");
    assert!(types.server_types.iter().any(|t| t.name == "cx22"));
    let pricing = pricing_api::list_prices(&config)
        .await
        .expect("pricing parses");
    let cx22 = pricing
        .pricing
        .server_types
        .iter()
        .find(|t| t.name == "cx22")
        .expect("cx22 priced");
    let fsn1 = cx22
        .prices
        .iter()
        .find(|p| p.location == "fsn1")
        .expect("fsn1 price");
    assert_eq!(fsn1.price_monthly.net, "3.7900");
    assert_eq!(fsn1.price_monthly.gross, "4.5101");
}

/// Errors carry Hetzner's body: a wrong token, an injected 429 with its headers, a
/// locked server and an unknown server type.
#[tokio::test]
async fn errors_parse_as_error_responses() {
    let sim = start().await;
    let ids = sim.add_servers("tok", 1, "web");

    let wrong = client(&sim, "nope");
    match servers_api::list_servers(&wrong, Default::default()).await {
        Err(Error::ResponseError(r)) => {
            assert_eq!(r.status.as_u16(), 401);
            let body: models::ErrorResponse = serde_json::from_str(&r.content).unwrap();
            assert_eq!(body.error.code, "unauthorized");
            assert_eq!(body.error.message, "unable to authenticate");
        }
        other => panic!("expected 401, got {other:?}"),
    }

    sim.inject(Fault {
        skip: 0,
        times: 1,
        path_prefix: None,
        method: None,
        kind: FaultKind::RateLimit { reset_secs: None },
    });
    let raw = reqwest::Client::new()
        .get(format!("{}/servers", sim.url()))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 429);
    assert_eq!(raw.headers()["ratelimit-limit"], "3600");
    assert_eq!(raw.headers()["ratelimit-remaining"], "0");
    // An empty bucket is full again in an hour.
    let reset: i64 = header(&raw, "ratelimit-reset");
    let now = chrono::Utc::now().timestamp();
    assert!((now + 3599..=now + 3601).contains(&reset), "{reset} {now}");
    let body: models::ErrorResponse = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(body.error.code, "rate_limit_exceeded");

    let config = client(&sim, "tok");
    sim.set_locked(ids[0], true);
    match servers_api::power_on_server(&config, servers_api::PowerOnServerParams { id: ids[0] })
        .await
    {
        Err(Error::ResponseError(r)) => {
            assert_eq!(r.status.as_u16(), 423);
            let body: models::ErrorResponse = serde_json::from_str(&r.content).unwrap();
            assert_eq!(body.error.code, "locked");
        }
        other => panic!("expected 423, got {other:?}"),
    }

    let request =
        models::CreateServerRequest::new("ubuntu-24.04".into(), "x".into(), "cx9999".into());
    match servers_api::create_server(
        &config,
        servers_api::CreateServerParams {
            create_server_request: request,
        },
    )
    .await
    {
        Err(Error::ResponseError(r)) => {
            let body: models::ErrorResponse = serde_json::from_str(&r.content).unwrap();
            assert_eq!(body.error.code, "invalid_input");
            assert!(
                body.error.message.contains("cx9999"),
                "{}",
                body.error.message
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let duplicate = sim.add_server(
        "tok",
        NewServer {
            name: "web-001".into(),
            ..Default::default()
        },
    );
    assert!(duplicate.is_err());
}

fn header(response: &reqwest::Response, name: &str) -> i64 {
    response.headers()[name]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a number"))
}

/// Every answer tells the project's budget as Hetzner does: the limit, the whole
/// requests left, and the unix second the bucket is full again (one request a second);
/// an empty bucket answers 429 and takes nothing.
#[tokio::test]
async fn rate_limit_headers_follow_the_bucket() {
    let sim = start().await;
    sim.add_project("tok");
    let get = || {
        reqwest::Client::new()
            .get(format!("{}/servers", sim.url()))
            .bearer_auth("tok")
            .send()
    };
    let first = get().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(header(&first, "ratelimit-limit"), 3600);
    assert_eq!(header(&first, "ratelimit-remaining"), 3599);
    let now = chrono::Utc::now().timestamp();
    assert!((now..=now + 2).contains(&header(&first, "ratelimit-reset")));

    sim.set_rate_limit("tok", 3600, 2);
    let second = get().await.unwrap();
    assert_eq!(second.status().as_u16(), 200);
    assert_eq!(header(&second, "ratelimit-remaining"), 1);
    let third = get().await.unwrap();
    assert_eq!(third.status().as_u16(), 200);
    assert_eq!(header(&third, "ratelimit-remaining"), 0);
    let refused = get().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    let now = chrono::Utc::now().timestamp();
    let reset = header(&refused, "ratelimit-reset");
    assert!((now + 3598..=now + 3601).contains(&reset), "{reset} {now}");
    let body: models::ErrorResponse = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body.error.code, "rate_limit_exceeded");
    assert_eq!(sim.requests().iter().filter(|r| r.status == 429).count(), 1);
}
