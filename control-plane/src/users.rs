//! People: user records, their passwords (argon2id hashes only) and the rules for
//! creating, editing and deactivating them. The username index is `user_by_name`.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::policy::{Role, Subject};
use crate::projects;
use crate::store::{Read, Record, Writer};
use crate::validate::{self, Problems};

const BY_NAME: &str = "user_by_name";

/// A person who can log in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub full_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    pub is_manager: bool,
    pub active: bool,
    pub password_hash: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Record for User {
    const TABLE: &'static str = "users";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The public view of a user (no hash), as the API and pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub full_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    pub role_label: &'static str,
    pub is_manager: bool,
    pub active: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> UserView {
        UserView {
            id: u.id.clone(),
            username: u.username.clone(),
            full_name: u.full_name.clone(),
            email: u.email.clone(),
            role: u.role,
            role_label: u.role.label(),
            is_manager: u.is_manager,
            active: u.active,
            created_at: u.created_at,
        }
    }
}

/// What it takes to create a user.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: Option<String>,
    pub password: Option<String>,
    pub role: Option<String>,
    #[serde(default)]
    pub is_manager: bool,
    pub full_name: Option<String>,
    pub email: Option<String>,
}

/// A change to a user; absent fields stay as they are.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub role: Option<String>,
    pub is_manager: Option<bool>,
    pub active: Option<bool>,
    pub password: Option<String>,
    pub full_name: Option<String>,
    pub email: Option<String>,
    /// With a password reset: also revoke the user's API tokens (the default). Tokens
    /// are `auth`'s; the web layer acts on this in the same transaction.
    pub revoke_tokens: Option<bool>,
}

impl UserChange {
    /// Whether this change resets the password and revokes the user's API tokens.
    pub fn revokes_tokens(&self) -> bool {
        self.password.as_deref().is_some_and(|p| !p.is_empty()) && self.revoke_tokens != Some(false)
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Checks a password against a stored hash.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, used to spend the same time on unknown usernames.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password of anyone").expect("hashing works"))
}

fn parse_role(value: Option<&str>) -> AppResult<Role> {
    let text = value.map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err(AppError::invalid("role", "role is required"));
    }
    Role::parse(text)
        .ok_or_else(|| AppError::invalid("role", "role must be admin, technical or sales"))
}

/// Finds a user by username.
pub fn by_username(r: &impl Read, username: &str) -> anyhow::Result<Option<User>> {
    match r.index_get(BY_NAME, username)? {
        Some(id) => r.get(&id),
        None => Ok(None),
    }
}

/// Finds a user by id or username.
pub fn find(r: &impl Read, key: &str) -> anyhow::Result<Option<User>> {
    match r.get::<User>(key)? {
        Some(u) => Ok(Some(u)),
        None => by_username(r, key),
    }
}

/// An optional e-mail address: empty is `None`.
fn optional_email(value: Option<&str>) -> AppResult<Option<String>> {
    match value.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => validate::email("email", Some(e)).map(Some),
        None => Ok(None),
    }
}

/// The fields of a new user but the password, checked into `problems` one by one; the
/// username's availability too when it is well formed.
fn check_new_fields(
    r: &impl Read,
    input: &NewUser,
    problems: &mut Problems,
) -> AppResult<(String, Role, Option<String>, Option<String>)> {
    let username = problems.check(validate::username(input.username.as_deref()));
    if let Ok(name) = &username {
        if by_username(r, name)?.is_some() {
            problems.add(AppError::invalid(
                "username",
                format!("username {name} is taken"),
            ));
        }
    }
    let role = problems.check(parse_role(input.role.as_deref()));
    let full_name = problems.check(validate::optional_name(
        "full_name",
        input.full_name.as_deref(),
        120,
    ));
    let email = problems.check(optional_email(input.email.as_deref()));
    Ok((username?, role?, full_name?, email?))
}

/// The words of a person a password must not be made of: username, full name and
/// e-mail address, as given.
fn person_words<'a>(
    username: Option<&'a str>,
    full_name: Option<&'a str>,
    email: Option<&'a str>,
) -> Vec<&'a str> {
    [username, full_name, email].into_iter().flatten().collect()
}

/// Checks a new user's password with [`validate::password`] against their own words.
fn check_new_password(input: &NewUser) -> AppResult<String> {
    validate::password(
        "password",
        input.password.as_deref(),
        &person_words(
            input.username.as_deref(),
            input.full_name.as_deref(),
            input.email.as_deref(),
        ),
    )
}

/// Checks every field of a new user, its password and whether the username is free,
/// reporting all problems at once: what the web layer asks before spending argon2
/// time on the password.
pub fn check_new(r: &impl Read, input: &NewUser) -> AppResult<()> {
    let mut problems = Problems::new();
    let fields = check_new_fields(r, input, &mut problems);
    let _ = problems.check(check_new_password(input));
    problems.finish()?;
    fields.map(|_| ())
}

/// Validates and creates a user. The password is hashed before the transaction.
pub fn create(
    w: &mut Writer,
    actor: &Actor,
    input: &NewUser,
    password_hash: Option<String>,
) -> AppResult<User> {
    let mut problems = Problems::new();
    let fields = check_new_fields(w, input, &mut problems);
    // A given hash stands for a password the caller checked already.
    let password = match &password_hash {
        Some(_) => Ok(String::new()),
        None => problems.check(check_new_password(input)),
    };
    problems.finish()?;
    let (username, role, full_name, email) = fields?;
    let password_hash = match password_hash {
        Some(hash) => hash,
        None => hash_password(&password?)?,
    };
    let now = chrono::Utc::now();
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.clone(),
        full_name,
        email,
        role,
        is_manager: input.is_manager,
        active: true,
        password_hash,
        created_at: now,
        updated_at: now,
    };
    w.put(&user)?;
    w.index_put(BY_NAME, &username, &user.id)?;
    audit::record(
        w,
        actor,
        "user.create",
        &format!("user:{username}"),
        format!(
            "role {}{}",
            role.as_str(),
            if user.is_manager { ", manager" } else { "" }
        ),
    )?;
    Ok(user)
}

/// Validates a change of `user` before any hashing (so a bad form costs no argon2
/// time), reporting every bad field at once.
pub fn check_change(user: &User, change: &UserChange) -> AppResult<()> {
    let mut problems = Problems::new();
    check_change_into(user, change, &mut problems);
    problems.finish()
}

fn check_change_into(user: &User, change: &UserChange, problems: &mut Problems) {
    if let Some(role) = change.role.as_deref() {
        let _ = problems.check(parse_role(Some(role)));
    }
    let _ = problems.check(validate::optional_name(
        "full_name",
        change.full_name.as_deref(),
        120,
    ));
    let _ = problems.check(optional_email(change.email.as_deref()));
    if let Some(p) = change.password.as_deref().filter(|p| !p.is_empty()) {
        // The name and address the user will have after the change, and those before.
        let mut words = person_words(
            Some(&user.username),
            change.full_name.as_deref(),
            change.email.as_deref(),
        );
        words.extend(person_words(
            None,
            user.full_name.as_deref(),
            user.email.as_deref(),
        ));
        let _ = problems.check(validate::password("password", Some(p), &words));
    }
}

/// Applies a change to a user. `new_password_hash` is the hash of `change.password`.
/// An admin cannot demote or deactivate themselves, so the system always keeps one.
pub fn update(
    w: &mut Writer,
    actor: &Actor,
    user_id: &str,
    change: &UserChange,
    new_password_hash: Option<String>,
) -> AppResult<User> {
    let mut user: User = w.get(user_id)?.ok_or_else(|| AppError::not_found("user"))?;
    let self_edit = user.username == actor.username;
    let mut problems = Problems::new();
    check_change_into(&user, change, &mut problems);
    let role = change.role.as_deref().map(|r| parse_role(Some(r)));
    if let Some(Ok(role)) = role {
        if role != user.role && self_edit && user.role == Role::Admin {
            problems.add(AppError::invalid("role", "you cannot change your own role"));
        }
    }
    if change.active == Some(false) && user.active && self_edit {
        problems.add(AppError::invalid(
            "active",
            "you cannot deactivate yourself",
        ));
    }
    problems.finish()?;
    let mut changes = Vec::new();
    if let Some(role) = role {
        let role = role?;
        if role != user.role {
            changes.push(format!("role {} -> {}", user.role.as_str(), role.as_str()));
            user.role = role;
        }
    }
    if let Some(m) = change.is_manager {
        if m != user.is_manager {
            changes.push(format!("manager {m}"));
            user.is_manager = m;
        }
    }
    if let Some(active) = change.active {
        if active != user.active {
            changes.push(if active {
                "reactivated".to_string()
            } else {
                "deactivated".to_string()
            });
            user.active = active;
        }
    }
    if let Some(name) = change.full_name.as_deref() {
        user.full_name = validate::optional_name("full_name", Some(name), 120)?;
    }
    if let Some(email) = change.email.as_deref() {
        user.email = optional_email(Some(email))?;
    }
    if let Some(hash) = new_password_hash {
        user.password_hash = hash;
        changes.push("password reset".into());
    }
    user.updated_at = chrono::Utc::now();
    w.put(&user)?;
    audit::record(
        w,
        actor,
        "user.update",
        &format!("user:{}", user.username),
        if changes.is_empty() {
            "details".to_string()
        } else {
            changes.join(", ")
        },
    )?;
    Ok(user)
}

/// The reads that find a user and build their [`subject`], asked ahead together
/// (see [`crate::store::Ahead`]): a request's sign-in check once it knows the user id.
pub fn subject_ahead(user_id: &str) -> crate::store::Ahead {
    let ahead = crate::store::Ahead::default().records::<User>(&[user_id.to_string()]);
    projects::grants_ahead(ahead, user_id)
}

/// The policy subject of a user: role, manager flag and project grants.
pub fn subject(r: &impl Read, user: &User) -> anyhow::Result<Subject> {
    Ok(Subject {
        user_id: user.id.clone(),
        username: user.username.clone(),
        role: user.role,
        is_manager: user.is_manager,
        grants: projects::grants_of_user(r, &user.id)?,
    })
}

/// Every user, sorted by username.
pub fn all(r: &impl Read) -> anyhow::Result<Vec<User>> {
    let mut users: Vec<User> = r.list()?;
    users.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(users)
}

/// A user for unit tests of other modules: the given role, no usable password.
#[cfg(test)]
pub(crate) fn test_user(w: &mut Writer, username: &str, role: &str) -> anyhow::Result<User> {
    let input = NewUser {
        username: Some(username.into()),
        role: Some(role.into()),
        ..Default::default()
    };
    Ok(create(w, &Actor::system(), &input, Some("x".into()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The fields an error names, in order.
    fn fields(err: &AppError) -> Vec<&str> {
        err.field_errors().into_iter().map(|(f, _)| f).collect()
    }

    fn store_with_sohila() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.write(|w| test_user(w, "sohila", "admin")).unwrap();
        (dir, store)
    }

    /// A new user with every field wrong hears about every field at once, a taken
    /// username included, and nothing is created.
    #[test]
    fn new_user_problems_are_reported_together() {
        let (_dir, store) = store_with_sohila();
        let input = NewUser {
            username: Some("sohila".into()),
            password: Some("short".into()),
            role: Some("king".into()),
            full_name: Some("x".repeat(121)),
            email: Some("sohila@localhost".into()),
            ..Default::default()
        };
        let err = store
            .read(|r| Ok(check_new(r, &input)))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Invalid);
        assert_eq!(
            fields(&err),
            ["username", "role", "full_name", "email", "password"]
        );
        assert_eq!(err.field.as_deref(), Some("username"));
        assert_eq!(err.message, "username sohila is taken");
        let created = store
            .write(|w| Ok(create(w, &Actor::system(), &input, None)))
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&created), fields(&err));
        assert_eq!(store.read(all).unwrap().len(), 1);

        // A malformed username is reported as such, not looked up.
        let input = NewUser {
            username: Some("Bad Name".into()),
            email: Some("nope".into()),
            role: Some("sales".into()),
            password: Some("violet-anchor-lunar-91".into()),
            ..Default::default()
        };
        let err = store
            .read(|r| Ok(check_new(r, &input)))
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["username", "email"]);
        assert!(
            err.message.starts_with("username must be"),
            "{}",
            err.message
        );
    }

    /// What was valid stays valid: a good new user passes and is created.
    #[test]
    fn a_good_new_user_passes() {
        let (_dir, store) = store_with_sohila();
        let input = NewUser {
            username: Some("ali.b".into()),
            password: Some("violet-anchor-lunar-91".into()),
            role: Some("technical".into()),
            email: Some(" ali@example.com ".into()),
            ..Default::default()
        };
        store.read(|r| Ok(check_new(r, &input)?)).unwrap();
        let user = store
            .write(|w| Ok(create(w, &Actor::system(), &input, None)?))
            .unwrap();
        assert_eq!(user.email.as_deref(), Some("ali@example.com"));
        assert!(verify_password(
            "violet-anchor-lunar-91",
            &user.password_hash
        ));
    }

    /// A new password is checked against the person it is for: their username, and
    /// the name and address they have or are given, in the CLI's, the forms' and the
    /// API's one rule.
    #[test]
    fn passwords_made_of_the_person_are_refused() {
        let (_dir, store) = store_with_sohila();
        let input = NewUser {
            username: Some("marwa.k".into()),
            password: Some("marwa.k".into()),
            role: Some("sales".into()),
            ..Default::default()
        };
        let err = store
            .read(|r| Ok(check_new(r, &input)))
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["password"]);
        let sohila = store.read(|r| by_username(r, "sohila")).unwrap().unwrap();
        for (password, full_name) in [
            ("sohila2024", None),
            ("Nourhan Farouk", Some("Nourhan Farouk")),
        ] {
            let change = UserChange {
                password: Some(password.into()),
                full_name: full_name.map(String::from),
                ..Default::default()
            };
            let err = check_change(&sohila, &change).unwrap_err();
            assert_eq!(fields(&err), ["password"], "{password}");
        }
    }

    /// A change with several bad fields names them all; an admin editing themselves
    /// hears that they may neither change their role nor deactivate themselves, both
    /// at once, and nothing changes.
    #[test]
    fn change_problems_are_reported_together() {
        let change = UserChange {
            role: Some("king".into()),
            password: Some("short".into()),
            full_name: Some("x".repeat(121)),
            email: Some("a@b".into()),
            ..Default::default()
        };
        let (_dir, store) = store_with_sohila();
        let sohila = store.read(|r| by_username(r, "sohila")).unwrap().unwrap();
        let err = check_change(&sohila, &change).unwrap_err();
        assert_eq!(fields(&err), ["role", "full_name", "email", "password"]);
        let me = Actor {
            username: "sohila".into(),
            ip: None,
        };
        let change = UserChange {
            role: Some("sales".into()),
            active: Some(false),
            email: Some("not an address".into()),
            ..Default::default()
        };
        let err = store
            .write(|w| Ok(update(w, &me, &sohila.id, &change, None)))
            .unwrap()
            .unwrap_err();
        assert_eq!(fields(&err), ["email", "role", "active"]);
        let after = store.read(|r| by_username(r, "sohila")).unwrap().unwrap();
        assert_eq!((after.role, after.active), (Role::Admin, true));
    }
}
