//! Field validation shared by the JSON API, the page forms and the CLI, so a value
//! that one of them refuses is refused by all with the same message. [`Problems`]
//! collects the checks of a whole form so one answer names every bad field.

use crate::error::{AppError, AppResult, Kind};

/// Longest accepted free text (descriptions, notes).
pub const MAX_TEXT: usize = 4000;

/// A required, trimmed single-line value of at most `max` characters.
pub fn required(field: &str, value: Option<&str>, max: usize) -> AppResult<String> {
    let value = value.map(str::trim).unwrap_or("");
    if value.is_empty() {
        return Err(AppError::invalid(
            field,
            format!("{} is required", human(field)),
        ));
    }
    single_line(field, value, max)
}

/// An optional trimmed value; empty becomes `None`.
pub fn optional(field: &str, value: Option<&str>, max: usize) -> AppResult<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.chars().count() > max => Err(AppError::invalid(
            field,
            format!("{} is longer than {max} characters", human(field)),
        )),
        Some(v) => Ok(Some(v.to_string())),
    }
}

fn single_line(field: &str, value: &str, max: usize) -> AppResult<String> {
    if value.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("{} is longer than {max} characters", human(field)),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            format!("{} must be one line of text", human(field)),
        ));
    }
    Ok(value.to_string())
}

/// A username: 3 to 32 of lower-case letters, digits, `.`, `_` and `-`, starting with a letter.
pub fn username(value: Option<&str>) -> AppResult<String> {
    let value = required("username", value, 32)?;
    let ok = value.len() >= 3
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !ok {
        return Err(AppError::invalid(
            "username",
            "username must be 3 to 32 lower-case letters, digits, '.', '_' or '-', starting with a letter",
        ));
    }
    Ok(value)
}

/// A new password: at least 8 characters, at most 256.
pub fn password(field: &str, value: Option<&str>) -> AppResult<String> {
    let value = value.unwrap_or("");
    if value.chars().count() < 8 {
        return Err(AppError::invalid(
            field,
            "password must have at least 8 characters",
        ));
    }
    if value.len() > 256 {
        return Err(AppError::invalid(
            field,
            "password is longer than 256 characters",
        ));
    }
    Ok(value.to_string())
}

/// An e-mail address in the usual `local@domain.tld` shape.
pub fn email(field: &str, value: Option<&str>) -> AppResult<String> {
    let value = required(field, value, 254)?;
    let valid = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !value.contains(' ')
    });
    if !valid {
        return Err(AppError::invalid(
            field,
            format!("{} is not a valid e-mail address", human(field)),
        ));
    }
    Ok(value)
}

/// A non-negative amount of money with at most two decimals.
pub fn money(field: &str, value: Option<f64>) -> AppResult<Option<f64>> {
    match value {
        None => Ok(None),
        Some(v) if !v.is_finite() || v < 0.0 => Err(AppError::invalid(
            field,
            format!("{} must be a positive amount", human(field)),
        )),
        Some(v) if v > 1e9 => Err(AppError::invalid(
            field,
            format!("{} is too large", human(field)),
        )),
        Some(v) => Ok(Some((v * 100.0).round() / 100.0)),
    }
}

/// Parses an optional amount typed into a form field.
pub fn money_text(field: &str, value: Option<&str>) -> AppResult<Option<f64>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => {
            let v: f64 = text.parse().map_err(|_| {
                AppError::invalid(field, format!("{} must be a number", human(field)))
            })?;
            money(field, Some(v))
        }
    }
}

/// The problems found while checking a form field by field, so a person sees every
/// bad field at once instead of one per submission.
///
/// Pass each field's check through [`Problems::check`] (it hands the result back for
/// later use), add what needs other fields or the store with [`Problems::add`], then
/// call [`Problems::finish`]: after it returned `Ok`, every checked result is `Ok` too.
/// Only the first problem of a field is kept. An error that is not about a field (a
/// storage failure, say) is kept aside and wins: `finish` returns it as it is.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    fields: Vec<(String, String)>,
    other: Option<AppError>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records the problem of one check, if any, and returns the check's result.
    pub fn check<T>(&mut self, result: AppResult<T>) -> AppResult<T> {
        if let Err(e) = &result {
            self.add(e.clone());
        }
        result
    }

    /// Records a problem: each field of an invalid-input error (after the fields
    /// already listed), or an error about no field.
    pub fn add(&mut self, error: AppError) {
        let fields = error.field_errors();
        if error.kind != Kind::Invalid || fields.is_empty() {
            self.other.get_or_insert(error);
            return;
        }
        for (field, message) in fields {
            if !self.has(field) {
                self.fields.push((field.to_string(), message.to_string()));
            }
        }
    }

    /// Whether `field` has a problem already.
    pub fn has(&self, field: &str) -> bool {
        self.fields.iter().any(|(f, _)| f == field)
    }

    /// Whether nothing was wrong so far.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.other.is_none()
    }

    /// `Ok` when every check passed; else the error about no field if there was one,
    /// or one invalid-input error listing every bad field, the first found first.
    pub fn finish(self) -> AppResult<()> {
        if let Some(other) = self.other {
            return Err(other);
        }
        match AppError::invalid_fields(self.fields) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// A field name as a person reads it.
pub fn human(field: &str) -> String {
    let text = field.replace('_', " ");
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Usernames follow the documented shape; each refusal names the field.
    #[test]
    fn usernames() {
        for good in ["sohila", "ali.b", "tech-1", "a_b"] {
            assert_eq!(username(Some(good)).unwrap(), good);
        }
        for bad in ["", "ab", "Sohila", "1abc", "a b", "a/b", &"x".repeat(33)] {
            let err = username(Some(bad)).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("username"), "{bad}");
        }
    }

    /// Money is positive, finite and rounded to cents.
    #[test]
    fn amounts() {
        assert_eq!(money_text("budget", Some("12.345")).unwrap(), Some(12.35));
        assert_eq!(money_text("budget", Some("")).unwrap(), None);
        assert!(money_text("budget", Some("-1")).is_err());
        assert!(money_text("budget", Some("abc")).is_err());
        assert!(money_text("budget", Some("NaN")).is_err());
    }

    /// The accumulator lists every bad field once, in the order checked, keeps the
    /// values of good checks, and puts the first problem up front for callers that
    /// read one field.
    #[test]
    fn problems_list_every_bad_field() {
        let mut problems = Problems::new();
        let name = problems.check(required("name", Some("  Acme "), 80));
        let mail = problems.check(email("email", Some("a@b")));
        let user = problems.check(username(Some("X")));
        problems.add(AppError::invalid("email", "a second word on the e-mail"));
        let budget = problems.check(money_text("budget", Some("abc")));
        assert_eq!(name.unwrap(), "Acme");
        assert!(mail.is_err() && user.is_err() && budget.is_err());
        assert!(problems.has("email") && !problems.has("name"));
        let err = problems.finish().unwrap_err();
        assert_eq!(err.kind, Kind::Invalid);
        assert_eq!(err.field.as_deref(), Some("email"));
        assert_eq!(err.message, "Email is not a valid e-mail address");
        let fields: Vec<&str> = err.field_errors().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["email", "username", "budget"]);
        let json = err.to_json();
        assert_eq!(json["field"], "email");
        assert_eq!(json["error"], "Email is not a valid e-mail address");
        assert_eq!(json["errors"]["budget"], "Budget must be a number");
        assert_eq!(json["errors"].as_object().unwrap().len(), 3);
        assert_eq!(
            err.to_string(),
            "Email is not a valid e-mail address; username must be 3 to 32 lower-case \
             letters, digits, '.', '_' or '-', starting with a letter; Budget must be a number"
        );
    }

    /// No problem is `Ok`; one problem is the plain error of that field; an error
    /// about no field (a storage failure) is returned as it is, before the fields.
    #[test]
    fn problems_finish() {
        assert!(Problems::new().finish().is_ok());
        let mut one = Problems::new();
        let _ = one.check(required("purpose", Some(" "), 10));
        let err = one.finish().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("purpose"));
        assert_eq!(err.field_errors(), [("purpose", "Purpose is required")]);
        assert_eq!(err.to_json()["errors"]["purpose"], "Purpose is required");
        let mut mixed = Problems::new();
        let _ = mixed.check(required("purpose", None, 10));
        mixed.add(AppError::new(Kind::Internal, "disk full"));
        mixed.add(AppError::new(Kind::Internal, "later"));
        assert!(!mixed.is_empty());
        let err = mixed.finish().unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (Kind::Internal, "disk full")
        );
    }

    /// E-mail addresses need a local part and a dotted domain.
    #[test]
    fn emails() {
        assert!(email("email", Some("a@b.co")).is_ok());
        for bad in ["a", "a@b", "@b.co", "a@.co", "a b@c.de"] {
            assert!(email("email", Some(bad)).is_err(), "{bad}");
        }
    }
}
