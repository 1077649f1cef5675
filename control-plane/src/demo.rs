//! The demo seed for `dynserv serve --demo`: the seed's people, projects and servers,
//! written only into an empty store, so a newcomer sees a populated product at once.
//! Demo users exist only when this runs.

use anyhow::Result;

use crate::audit::Actor;
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
        Ok(())
    })?;
    Ok(true)
}
