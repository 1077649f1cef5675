//! Clients as records: a hosting reseller's customers, with contact details, VAT id
//! and address, that requests and subscriptions point at (`client_id`) instead of
//! repeating a free-text name.
//!
//! A client's name is unique, case-insensitively (`client_by_name`, folded name → id);
//! lists read pages by name (`client_order`). What belongs to a client is found through
//! `request_by_client_id` and `subscription_by_client_id` (`client_id/record_id`), kept
//! by `requests` and `subscriptions` where they save their records. [`resolve`] is how a
//! request or a subscription names its client: by id, or by a name that finds the
//! client or creates it. [`link_free_text`] is the schema step that turned the names
//! stored before clients were records into records, by name.
//!
//! Who sees clients: whoever files requests or manages subscriptions (sales agents and
//! admins). A client's requests and subscriptions are shown as their own rules say
//! (a sales agent sees their own, managers and admins everyone's).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::listing::{self, Order, Page, Source};
use crate::store::{IndexScan, Read, Record, Writer};
use crate::validate::{self, Problems};

/// Folded name → id: one client per name.
const BY_NAME: &str = "client_by_name";
/// `name_position` → id: the list order.
const ORDER: &str = "client_order";
/// `client_id/request_id` → request id (kept by `requests`).
pub const REQUESTS: &str = "request_by_client_id";
/// `client_id/subscription_id` → subscription id (kept by `subscriptions`).
pub const SUBSCRIPTIONS: &str = "subscription_by_client_id";

/// The most requests or subscriptions a client page lists.
pub const RELATED_LIMIT: usize = 200;

/// A client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub company: Option<String>,
    pub vat_id: Option<String>,
    pub address: Option<String>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Record for Client {
    const TABLE: &'static str = "clients";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A client as the API and the form send it; on update absent fields stay, an empty
/// text clears an optional one.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientInput {
    pub name: Option<String>,
    pub email: Option<String>,
    pub company: Option<String>,
    pub vat_id: Option<String>,
    pub address: Option<String>,
    pub notes: Option<String>,
}

fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The client named `name` (case-insensitively), if there is one.
pub fn by_name(r: &impl Read, name: &str) -> anyhow::Result<Option<Client>> {
    match r.index_get(BY_NAME, &name_key(name))? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// The client `id`; 404 when there is none.
pub fn get(r: &impl Read, id: &str) -> AppResult<Client> {
    r.get(id)?.ok_or_else(|| AppError::not_found("client"))
}

/// Checks `input` onto `client` (every bad field named at once); `client` is unchanged
/// on error.
fn apply(
    r: &impl Read,
    client: &mut Client,
    input: &ClientInput,
    mut problems: Problems,
) -> AppResult<()> {
    let name = input
        .name
        .as_deref()
        .map(|n| problems.check(validate::name("name", Some(n), 120)));
    if let Some(Ok(name)) = &name {
        if let Some(other) = by_name(r, name)?.filter(|o| o.id != client.id) {
            problems.add(AppError::invalid(
                "name",
                format!("there is already a client named {}", other.name),
            ));
        }
    }
    let email = input.email.as_deref().map(|e| match e.trim() {
        "" => Ok(None),
        e => problems.check(validate::email("email", Some(e))).map(Some),
    });
    let optional = |problems: &mut Problems, field: &str, value: Option<&str>, max: usize| {
        value.map(|v| problems.check(validate::text(field, Some(v), max)))
    };
    let company = optional(&mut problems, "company", input.company.as_deref(), 200);
    let vat_id = optional(&mut problems, "vat_id", input.vat_id.as_deref(), 40);
    let address = optional(&mut problems, "address", input.address.as_deref(), 1000);
    let notes = optional(
        &mut problems,
        "notes",
        input.notes.as_deref(),
        validate::MAX_TEXT,
    );
    problems.finish()?;
    if let Some(name) = name {
        client.name = name?;
    }
    if let Some(email) = email {
        client.email = email?;
    }
    for (slot, value) in [
        (&mut client.company, company),
        (&mut client.vat_id, vat_id),
        (&mut client.address, address),
        (&mut client.notes, notes),
    ] {
        if let Some(value) = value {
            *slot = value?;
        }
    }
    Ok(())
}

fn save(w: &mut Writer, client: &Client) -> anyhow::Result<()> {
    let old: Option<Client> = w.get(&client.id)?;
    if let Some(old) = &old {
        w.index_delete(BY_NAME, &name_key(&old.name))?;
        w.index_delete(ORDER, &listing::name_position(&old.name, &old.id))?;
    }
    w.put(client)?;
    w.index_put(BY_NAME, &name_key(&client.name), &client.id)?;
    w.index_put(
        ORDER,
        &listing::name_position(&client.name, &client.id),
        &client.id,
    )?;
    Ok(())
}

/// Creates a client (its name required and not taken), audited.
pub fn create(w: &mut Writer, actor: &Actor, input: &ClientInput) -> AppResult<Client> {
    let mut problems = Problems::new();
    if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        problems.add(AppError::invalid("name", "name the client"));
    }
    let now = Utc::now();
    let mut client = Client {
        id: uuid::Uuid::now_v7().to_string(),
        name: String::new(),
        email: None,
        company: None,
        vat_id: None,
        address: None,
        notes: None,
        created_at: now,
        updated_at: now,
    };
    apply(w, &mut client, input, problems)?;
    save(w, &client)?;
    audit::record(
        w,
        actor,
        "client.create",
        &format!("client:{}", client.id),
        client.name.clone(),
    )?;
    Ok(client)
}

/// Changes a client, audited. A new name is carried into its subscriptions (running
/// contracts, listed and billed under the client's current name); its requests keep the
/// name they were filed with (a record of what was asked), and their `client_id`.
pub fn update(w: &mut Writer, actor: &Actor, id: &str, input: &ClientInput) -> AppResult<Client> {
    let mut client = get(w, id)?;
    let old_name = client.name.clone();
    apply(w, &mut client, input, Problems::new())?;
    client.updated_at = Utc::now();
    save(w, &client)?;
    if client.name != old_name {
        for sub_id in related_ids(w, SUBSCRIPTIONS, &client.id)? {
            crate::subscriptions::rename_client(w, &sub_id, &client.name)?;
        }
    }
    audit::record(
        w,
        actor,
        "client.update",
        &format!("client:{}", client.id),
        client.name.clone(),
    )?;
    Ok(client)
}

/// The client a request or a subscription names: the one with `id` when given (422 on
/// `client_id` when there is none), else the one called `name`, created (with `email`)
/// when there is none yet.
pub fn resolve(
    w: &mut Writer,
    actor: &Actor,
    id: Option<&str>,
    name: &str,
    email: Option<&str>,
) -> AppResult<Client> {
    if let Some(client) = chosen(w, id)? {
        return Ok(client);
    }
    if let Some(client) = by_name(w, name)? {
        return Ok(client);
    }
    let email = email.filter(|e| validate::email("email", Some(e)).is_ok());
    create(
        w,
        actor,
        &ClientInput {
            name: Some(name.to_string()),
            email: email.map(String::from),
            ..Default::default()
        },
    )
}

/// The client a `client_id` field names: `None` when it is absent or empty, 422 on
/// `client_id` when there is no such client.
pub fn chosen(r: &impl Read, id: Option<&str>) -> AppResult<Option<Client>> {
    let Some(id) = id.map(str::trim).filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    match r.get::<Client>(id)? {
        Some(client) => Ok(Some(client)),
        None => Err(AppError::invalid(
            "client_id",
            format!("there is no client {id}"),
        )),
    }
}

/// One page of clients by name; `text` keeps those whose name, company, e-mail or VAT
/// id contains it (case-insensitively).
pub fn query(
    r: &impl Read,
    text: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page<Client>> {
    let needle = text.map(str::to_lowercase);
    listing::page(
        r,
        vec![Source::index(ORDER, "")],
        Order::Ascending,
        cursor,
        limit,
        |c: &Client| {
            needle.as_deref().is_none_or(|q| {
                [
                    Some(&c.name),
                    c.company.as_ref(),
                    c.email.as_ref(),
                    c.vat_id.as_ref(),
                ]
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains(q))
            })
        },
    )
}

/// The ids a related index lists for `client_id` (newest first: ids are UUIDv7).
pub fn related_ids(r: &impl Read, index: &str, client_id: &str) -> anyhow::Result<Vec<String>> {
    let scan = IndexScan::prefix(index, &format!("{client_id}/"), RELATED_LIMIT).backward();
    Ok(r.index_page(&scan)?.into_iter().map(|(_, id)| id).collect())
}

/// Schema step: the free-text clients of requests and subscriptions stored before
/// clients were records become records, by name (the first e-mail seen kept), and
/// each request and subscription is linked to its client.
pub fn link_free_text(w: &mut Writer) -> anyhow::Result<()> {
    crate::requests::link_clients(w)?;
    crate::subscriptions::link_clients(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// Names are unique case-insensitively; a rename frees the old name; bad fields
    /// are named together; `resolve` finds by id or name and creates by name.
    #[test]
    fn names_resolve_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let actor = Actor::system();
        let acme = store
            .write(|w| {
                Ok(create(
                    w,
                    &actor,
                    &ClientInput {
                        name: Some("Acme".into()),
                        email: Some("ops@acme.example".into()),
                        ..Default::default()
                    },
                )?)
            })
            .unwrap();
        let taken = store
            .write(|w| {
                Ok(create(
                    w,
                    &actor,
                    &ClientInput {
                        name: Some("ACME ".into()),
                        email: Some("nope".into()),
                        vat_id: Some("x".repeat(41)),
                        ..Default::default()
                    },
                ))
            })
            .unwrap()
            .unwrap_err();
        let fields: Vec<String> = taken
            .field_errors()
            .into_iter()
            .map(|(f, _)| f.to_string())
            .collect();
        assert_eq!(fields, ["name", "email", "vat_id"]);
        let (by_id, by_name_found, made) = store
            .write(|w| {
                let a = resolve(w, &actor, Some(&acme.id), "ignored", None)?;
                let b = resolve(w, &actor, None, "acme", None)?;
                let c = resolve(w, &actor, None, "Globex", Some("bad-address"))?;
                Ok((a, b, c))
            })
            .unwrap();
        assert_eq!(by_id.id, acme.id);
        assert_eq!(by_name_found.id, acme.id);
        assert_eq!(
            (made.name.as_str(), made.email.as_deref()),
            ("Globex", None)
        );
        let renamed = store
            .write(|w| {
                Ok(update(
                    w,
                    &actor,
                    &acme.id,
                    &ClientInput {
                        name: Some("Acme Holding".into()),
                        ..Default::default()
                    },
                )?)
            })
            .unwrap();
        assert_eq!(renamed.email.as_deref(), Some("ops@acme.example"));
        store
            .read(|r| {
                assert!(by_name(r, "acme")?.is_none(), "the old name is free");
                assert_eq!(by_name(r, "acme holding")?.unwrap().id, acme.id);
                let page = query(r, None, None, 10)?;
                let names: Vec<&str> = page.items.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["Acme Holding", "Globex"]);
                assert_eq!(query(r, Some("ops@"), None, 10)?.items.len(), 1);
                Ok(())
            })
            .unwrap();
        let unknown = store
            .write(|w| Ok(resolve(w, &actor, Some("nope"), "x", None)))
            .unwrap()
            .unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("client_id"));
    }

    /// The schema steps, on a store written at version 7 and opened by this binary:
    /// requests and subscriptions stored with a free-text client (no `client_id`) are
    /// linked to records made by name, one per name whatever its case, with the
    /// request's e-mail (running it again changes nothing), and subscriptions list by
    /// end date.
    #[test]
    fn free_text_clients_become_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let request = |id: &str, client: &str| -> crate::requests::Request {
            serde_json::from_value(serde_json::json!({
                "id": id, "client_name": client, "client_email": "it@blue.example",
                "purpose": "web", "project_id": "p", "server_type": "cx22",
                "location": "fsn1", "image": "ubuntu-24.04", "cpu_cores": null,
                "ram_gb": null, "disk_gb": null, "monthly_budget": null, "notes": null,
                "status": "pending", "requested_by": "u", "requested_by_name": "sales",
                "history": [], "server_id": null, "budget_warning": null,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            }))
            .unwrap()
        };
        let subscription: crate::subscriptions::Subscription =
            serde_json::from_value(serde_json::json!({
                "id": "0193a5b2-7c1d-7000-8000-00000000000s", "client": "BLUE NILE",
                "server_ids": [], "monthly_cost": 10.0, "currency": "EUR",
                "starts_on": "2026-01-01", "hosting_until": "2026-12-31",
                "auto_renew": false, "renewal_months": 12, "sales_agent_id": "u",
                "sales_agent": "sales", "status": "active", "notes": null,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            }))
            .unwrap();
        store
            .write(|w| {
                w.put(&request(
                    "0193a5b2-7c1d-7000-8000-000000000001",
                    "Blue Nile",
                ))?;
                w.put(&request(
                    "0193a5b2-7c1d-7000-8000-000000000002",
                    "blue nile ",
                ))?;
                w.put(&request("0193a5b2-7c1d-7000-8000-000000000003", "Red Sea"))?;
                w.put(&subscription)?;
                w.meta_put("schema_version", &7u64)
            })
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            crate::store::SCHEMA_VERSION
        );
        store.write(link_free_text).unwrap();
        store
            .read(|r| {
                let clients = query(r, None, None, 10)?.items;
                let names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["Blue Nile", "Red Sea"]);
                let blue = &clients[0];
                assert_eq!(blue.email.as_deref(), Some("it@blue.example"));
                assert_eq!(related_ids(r, REQUESTS, &blue.id)?.len(), 2);
                assert_eq!(
                    related_ids(r, SUBSCRIPTIONS, &blue.id)?,
                    ["0193a5b2-7c1d-7000-8000-00000000000s"]
                );
                let linked: crate::requests::Request =
                    r.get("0193a5b2-7c1d-7000-8000-000000000003")?.unwrap();
                assert_eq!(linked.client_id.as_deref(), Some(clients[1].id.as_str()));
                let by_end = crate::subscriptions::Filter {
                    sort: crate::subscriptions::Sort::End,
                    ..Default::default()
                };
                let subject = crate::policy::Subject {
                    user_id: "admin".into(),
                    username: "admin".into(),
                    role: crate::policy::Role::Admin,
                    is_manager: false,
                    grants: Default::default(),
                };
                let listed = crate::subscriptions::query(r, &subject, &by_end, None, 10)?;
                assert_eq!(listed.items.len(), 1, "the end-date index was backfilled");
                Ok(())
            })
            .unwrap();
    }
}
