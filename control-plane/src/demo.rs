//! The demo seed for `dynserv serve --demo`: the seed's people, projects and servers,
//! written only into an empty store, so a newcomer sees a populated product at once.
//! Demo users exist only when this runs.

use anyhow::Result;

use crate::audit::Actor;
use crate::hetzner::TokenRule;
use crate::policy::Level;
use crate::projects::{self, ProjectInput};
use crate::secrets::Keys;
use crate::servers::{self, NewServer};
use crate::store::{Read, Store};
use crate::users::{self, NewUser, User};

/// Demo accounts: username, password, role, manager flag, full name.
pub const DEMO_USERS: &[(&str, &str, &str, bool, &str)] = &[
    ("admin", "admin123", "admin", false, "Amira Admin"),
    ("tech", "tech123", "technical", true, "Tarek Technician"),
    ("sales", "sales123", "sales", false, "Salma Sales"),
    ("sohila", "sohila123", "technical", false, "Sohila"),
];

/// Demo projects: name, description, monthly budget (EUR), deploy command.
const DEMO_PROJECTS: &[(&str, &str, f64, Option<&str>)] = &[
    (
        "Nova HR",
        "Nova HR platform: web, API, database and backups",
        120.0,
        Some("cd /home/dynamic/nova-hr-docker && ./deploy.sh"),
    ),
    (
        "Frappe ERP",
        "Frappe/ERPNext deployments for clients",
        80.0,
        Some("cd /home/dynamic/frappe-docker && ./deploy.sh"),
    ),
    ("Django Projects", "Client Django sites", 40.0, None),
    ("Local", "This machine, through its local agent", 0.0, None),
];

/// Demo servers: project, name, type, IPv4, location, monthly cost.
const DEMO_SERVERS: &[(&str, &str, &str, &str, &str, f64)] = &[
    (
        "Nova HR",
        "nova-hr-web-01",
        "cx21",
        "168.119.249.64",
        "fsn1",
        5.83,
    ),
    (
        "Nova HR",
        "nova-hr-api-01",
        "cx31",
        "168.119.249.65",
        "fsn1",
        10.59,
    ),
    (
        "Nova HR",
        "nova-hr-db-01",
        "cx41",
        "168.119.249.66",
        "fsn1",
        18.92,
    ),
    (
        "Nova HR",
        "nova-hr-backup-01",
        "cx21",
        "168.119.249.67",
        "nbg1",
        5.83,
    ),
    (
        "Frappe ERP",
        "frappe-erp-app-01",
        "cx31",
        "95.217.12.40",
        "hel1",
        10.59,
    ),
    (
        "Frappe ERP",
        "frappe-erp-db-01",
        "cx41",
        "95.217.12.41",
        "hel1",
        18.92,
    ),
    (
        "Django Projects",
        "django-portal-01",
        "cx21",
        "49.12.101.7",
        "nbg1",
        5.83,
    ),
    (
        "Django Projects",
        "django-api-01",
        "cx11",
        "49.12.101.8",
        "nbg1",
        3.29,
    ),
];

/// Seeds the store when it has no users yet; returns whether it seeded.
pub fn seed(store: &Store, keys: &Keys) -> Result<bool> {
    if store.read(|r| r.count::<User>())? > 0 {
        return Ok(false);
    }
    // Hash outside the transaction: argon2 is slow on purpose.
    let hashes: Vec<String> = DEMO_USERS
        .iter()
        .map(|u| users::hash_password(u.1))
        .collect::<Result<_>>()?;
    let actor = Actor::system();
    store.write(|w| {
        for ((username, _, role, manager, full_name), hash) in DEMO_USERS.iter().zip(hashes) {
            let input = NewUser {
                username: Some(username.to_string()),
                role: Some(role.to_string()),
                is_manager: *manager,
                full_name: Some(full_name.to_string()),
                email: Some(format!("{username}@dynamic.example")),
                password: None,
            };
            users::create(w, &actor, &input, Some(hash))?;
        }
        for (name, description, budget, deploy) in DEMO_PROJECTS {
            let input = ProjectInput {
                name: Some(name.to_string()),
                description: Some(description.to_string()),
                budget_monthly: (*budget > 0.0).then_some(*budget),
                deploy_command: deploy.map(String::from),
                hetzner_token: None,
                terminal_enabled: None,
            };
            projects::create(w, keys, &actor, &input)?;
        }
        for (project, name, server_type, ipv4, location, cost) in DEMO_SERVERS {
            let project = projects::find(w, project)?.expect("seeded above");
            let input = NewServer {
                name: Some(name.to_string()),
                server_type: Some(server_type.to_string()),
                ipv4: Some(ipv4.to_string()),
                location: Some(location.to_string()),
                image: Some("ubuntu-22.04".into()),
                status: Some("running".into()),
                monthly_cost: Some(*cost),
                ..Default::default()
            };
            servers::create(w, &actor, &project.id, &input)?;
        }
        let nova = projects::find(w, "Nova HR")?.expect("seeded above");
        projects::grant(w, &actor, &nova.id, "sohila", Level::Write)?;
        // Nova HR's database backup recipe, so the Backups pages show one.
        let admin = users::by_username(w, "admin")?.expect("seeded above");
        let recipe = crate::backups::RecipeInput {
            compose_project: Some("nova-hr-docker".into()),
            service: Some("db".into()),
            command: Some("pg_dump -U novahr -Fc novahr".into()),
            keep: Some(7),
            restore_command: Some("pg_restore -U novahr -d novahr --clean".into()),
            ..Default::default()
        };
        crate::backups::save_recipe(w, &actor, &users::subject(w, &admin)?, &nova.id, &recipe)?;
        seed_business(w)?;
        Ok(())
    })?;
    Ok(true)
}

/// Demo server requests (one pending, one deployed by hand, one rejected) and client
/// subscriptions in several currencies, so the business pages start populated.
fn seed_business(w: &mut crate::store::Writer) -> Result<()> {
    use crate::requests::{self, Action, NewRequest};
    use crate::subscriptions::{self, SubscriptionInput};
    let sales = users::by_username(w, "sales")?.expect("seeded above");
    let as_sales = Actor {
        username: "sales".into(),
        ip: None,
    };
    let as_admin = Actor {
        username: "admin".into(),
        ip: None,
    };
    let request = |client: &str,
                   email: &str,
                   purpose: &str,
                   project: &str,
                   server_type: &str,
                   budget: f64| NewRequest {
        client_id: None,
        client_name: Some(client.into()),
        client_email: Some(email.into()),
        purpose: Some(purpose.into()),
        project: Some(project.into()),
        server_type: Some(server_type.into()),
        location: Some("fsn1".into()),
        image: Some("ubuntu-22.04".into()),
        cpu_cores: Some(2),
        ram_gb: Some(4),
        disk_gb: Some(40),
        monthly_budget: Some(budget),
        margin_percent: Some(30.0),
        notes: None,
    };
    requests::create(
        w,
        &as_sales,
        &sales,
        &request(
            "Acme Logistics",
            "it@acme-logistics.example",
            "Staging for the HR rollout",
            "Nova HR",
            "cx21",
            6.0,
        ),
    )?;
    let deployed = requests::create(
        w,
        &as_sales,
        &sales,
        &request(
            "Blue Nile Pharmacy",
            "ops@bluenile.example",
            "ERPNext for 3 branches",
            "Frappe ERP",
            "cx31",
            11.0,
        ),
    )?;
    // The seed is written before the control plane starts: its requests are judged
    // by the projects' own tokens, so one is marked deployed by hand even when
    // HETZNER_API_TOKEN is set.
    requests::transition(
        w,
        TokenRule::own_tokens_only(),
        &as_admin,
        &deployed.id,
        Action::Approve,
        Some("fits the budget"),
    )?;
    requests::transition(
        w,
        TokenRule::own_tokens_only(),
        &as_admin,
        &deployed.id,
        Action::MarkDeployed,
        Some("set up by hand"),
    )?;
    let rejected = requests::create(
        w,
        &as_sales,
        &sales,
        &request(
            "Delta Games",
            "dev@delta.example",
            "Game server farm",
            "Django Projects",
            "ccx13",
            90.0,
        ),
    )?;
    requests::transition(
        w,
        TokenRule::own_tokens_only(),
        &as_admin,
        &rejected.id,
        Action::Reject,
        Some("not a Django project; file it under a new project"),
    )?;

    let today = chrono::Utc::now().date_naive();
    let date = |days: i64| (today + chrono::Duration::days(days)).to_string();
    let server_id = |project: &str, name: &str| -> Result<String> {
        let project = projects::find(w, project)?.expect("seeded above");
        Ok(servers::by_name(w, &project.id, name)?
            .expect("seeded above")
            .id)
    };
    let subs = [
        (
            "Acme Logistics",
            150.0,
            "EUR",
            -150,
            365,
            true,
            vec![
                server_id("Nova HR", "nova-hr-web-01")?,
                server_id("Nova HR", "nova-hr-api-01")?,
            ],
        ),
        (
            "Blue Nile Pharmacy",
            2500.0,
            "EGP",
            -60,
            20,
            false,
            vec![server_id("Frappe ERP", "frappe-erp-app-01")?],
        ),
        (
            "Globex",
            30.0,
            "USD",
            -200,
            165,
            true,
            vec![server_id("Django Projects", "django-api-01")?],
        ),
    ];
    for (client, cost, currency, start, end, auto_renew, server_ids) in subs {
        let input = SubscriptionInput {
            client_id: None,
            client: Some(client.into()),
            server_ids: Some(server_ids),
            monthly_cost: Some(cost),
            currency: Some(currency.into()),
            starts_on: Some(date(start)),
            hosting_until: Some(date(end)),
            auto_renew: Some(auto_renew),
            renewal_months: Some(12),
            sales_agent: None,
            notes: None,
            request_id: None,
        };
        subscriptions::create(w, &as_sales, &sales, &input)?;
    }
    Ok(())
}
