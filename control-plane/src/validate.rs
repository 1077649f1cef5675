//! Field validation shared by the JSON API, the page forms and the CLI, so a value
//! that one of them refuses is refused by all with the same message. [`Problems`]
//! collects the checks of a whole form so one answer names every bad field.
//!
//! Text rules, the same everywhere input is stored:
//! * single-line fields ([`required`], [`optional`], [`name`]) refuse every control
//!   character (NUL, tab, newline, escape, C1 controls) and the line separators;
//! * multi-line free text ([`text`]: descriptions, notes) keeps `\n`, `\r` and `\t`
//!   and refuses NUL and every other control character;
//! * names of things people pick from a list ([`name`]: projects, scripts, clients,
//!   people) also refuse the bidirectional embedding, override and isolate controls
//!   (U+202A–U+202E, U+2066–U+2069), with which `gpj.exe` can be shown as `exe.jpg`.
//!
//! What is echoed back to a person (flash messages, error texts quoting input) goes
//! through [`echo`], so a 100 kB field never comes back as a 100 kB answer.

use crate::error::{AppError, AppResult, Kind};

/// Longest accepted free text (descriptions, notes).
pub const MAX_TEXT: usize = 4000;

/// Characters of user input quoted back in a message at most (see [`echo`]).
pub const MAX_ECHO: usize = 80;

/// The lowest zxcvbn score a new password must reach: 3 of 4, "safely unguessable"
/// (about 10^10 guesses), the estimator's own advice for passwords that guard
/// something.
pub const MIN_PASSWORD_SCORE: zxcvbn::Score = zxcvbn::Score::Three;

/// Shortest new password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Longest new password, in bytes (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Words every password of this product is checked against besides the person's own
/// (a password made of the product's name is the first an attacker tries).
const PRODUCT_WORDS: &[&str] = &["dynserv", "dynamic", "servers", "dynamicservers"];

/// Whether `c` is a bidirectional embedding, override or isolate control.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` may not appear in one line of text: control characters (NUL, tab,
/// newline, escape, DEL, C1) and the Unicode line and paragraph separators.
fn breaks_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

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

/// An optional trimmed single-line value; empty becomes `None`.
pub fn optional(field: &str, value: Option<&str>, max: usize) -> AppResult<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => single_line(field, v, max).map(Some),
    }
}

/// A required name of at most `max` characters: one line, and no bidirectional
/// controls, so what a list shows is what was typed.
pub fn name(field: &str, value: Option<&str>, max: usize) -> AppResult<String> {
    let value = required(field, value, max)?;
    no_bidi(field, &value)?;
    Ok(value)
}

/// An optional name: like [`name`], empty becomes `None`.
pub fn optional_name(field: &str, value: Option<&str>, max: usize) -> AppResult<Option<String>> {
    let value = optional(field, value, max)?;
    if let Some(v) = &value {
        no_bidi(field, v)?;
    }
    Ok(value)
}

/// Optional multi-line free text (descriptions, notes) of at most `max` characters,
/// trimmed; empty becomes `None`. Keeps newlines, carriage returns and tabs; refuses
/// NUL and every other control character.
pub fn text(field: &str, value: Option<&str>, max: usize) -> AppResult<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => {
            check_text(field, v, max)?;
            Ok(Some(v.to_string()))
        }
    }
}

/// Checks multi-line text as it is (untrimmed: script bodies, commands): at most `max`
/// characters, no NUL and no control character but `\n`, `\r` and `\t`.
pub fn check_text(field: &str, value: &str, max: usize) -> AppResult<()> {
    if value.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("{} is longer than {max} characters", human(field)),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(AppError::invalid(
            field,
            format!(
                "{} must not contain control characters such as NUL",
                human(field)
            ),
        ));
    }
    Ok(())
}

fn single_line(field: &str, value: &str, max: usize) -> AppResult<String> {
    if value.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("{} is longer than {max} characters", human(field)),
        ));
    }
    if value.chars().any(breaks_line) {
        return Err(AppError::invalid(
            field,
            format!(
                "{} must be one line of text without control characters",
                human(field)
            ),
        ));
    }
    Ok(value.to_string())
}

fn no_bidi(field: &str, value: &str) -> AppResult<()> {
    if value.chars().any(is_bidi_control) {
        return Err(AppError::invalid(
            field,
            format!(
                "{} must not contain right-to-left or other direction override characters",
                human(field)
            ),
        ));
    }
    Ok(())
}

/// User input as it may be quoted back in a message: at most [`MAX_ECHO`] characters
/// (cut with `…`), control and direction characters shown as `?`.
pub fn echo(input: &str) -> String {
    let mut out: String = input
        .chars()
        .take(MAX_ECHO)
        .map(|c| {
            if breaks_line(c) || is_bidi_control(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if input.chars().nth(MAX_ECHO).is_some() {
        out.push('…');
    }
    out
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

/// A new password: [`MIN_PASSWORD_CHARS`] characters to [`MAX_PASSWORD_BYTES`] bytes,
/// and hard to guess: the zxcvbn estimator must score it [`MIN_PASSWORD_SCORE`] or
/// better, with `person` (the username, the full name, the e-mail address) and the
/// product's name counted as words an attacker tries first. The one rule for the CLI,
/// the forms and the API; the `--demo` seed alone stores its known passwords without
/// it, and logging in never checks strength, so existing passwords keep working.
pub fn password(field: &str, value: Option<&str>, person: &[&str]) -> AppResult<String> {
    let value = value.unwrap_or("");
    if value.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::invalid(
            field,
            format!("password must have at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if value.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::invalid(
            field,
            format!("password is longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let mut words: Vec<&str> = person
        .iter()
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
        .collect();
    // An e-mail address's parts are words of their own.
    let parts: Vec<&str> = words
        .iter()
        .flat_map(|w| w.split(['@', '.', ' ', '-', '_']))
        .filter(|w| w.chars().count() >= 3)
        .collect();
    words.extend(parts);
    words.extend_from_slice(PRODUCT_WORDS);
    if value.trim().is_empty() || words.iter().any(|w| w.eq_ignore_ascii_case(value.trim())) {
        return Err(AppError::invalid(
            field,
            "password is too easy to guess: it must not be blank or your username or name",
        ));
    }
    let estimate = zxcvbn::zxcvbn(value, &words);
    if estimate.score() < MIN_PASSWORD_SCORE {
        let mut message = String::from("password is too easy to guess");
        let feedback = estimate.feedback();
        if let Some(warning) = feedback.and_then(|f| f.warning()) {
            let warning = warning.to_string();
            let mut chars = warning.trim_end_matches('.').chars();
            if let Some(first) = chars.next() {
                message.push_str(": ");
                message.extend(first.to_lowercase());
                message.push_str(chars.as_str());
            }
        }
        message.push_str(
            "; use a longer passphrase of several unrelated words, or a password manager's",
        );
        return Err(AppError::invalid(field, message));
    }
    Ok(value.to_string())
}

/// Where to send a browser after signing in: `next` when it is a path on this site,
/// else `/`. `next` is parsed as a URL joined onto a fixed base the way a browser
/// would (backslashes are slashes, tabs and newlines are dropped), and kept only when
/// the result has the base's origin; the answer is the parsed path, query and
/// fragment, so the browser follows exactly what was checked.
pub fn local_redirect(next: Option<&str>) -> String {
    const BASE: &str = "http://dynserv.invalid/";
    let Some(next) = next.filter(|n| n.starts_with('/')) else {
        return "/".into();
    };
    let Ok(base) = url::Url::parse(BASE) else {
        return "/".into();
    };
    let Ok(joined) = base.join(next) else {
        return "/".into();
    };
    if joined.origin() != base.origin() {
        return "/".into();
    }
    let local = &joined[url::Position::BeforePath..];
    // A path that starts with two slashes would be read as another host by the
    // browser following the Location header.
    if !local.starts_with('/') || local.starts_with("//") || local.contains('\\') {
        return "/".into();
    }
    local.to_string()
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
    number_text(field, value).and_then(|v| money(field, v))
}

/// Parses a number typed into a form field (empty is `None`).
pub fn number_text(field: &str, value: Option<&str>) -> AppResult<Option<f64>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| AppError::invalid(field, format!("{} must be a number", human(field)))),
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

    /// Single-line fields refuse control characters and line separators; multi-line
    /// text keeps newlines and tabs but refuses NUL and other controls; names refuse
    /// the bidirectional controls; every refusal names its field.
    #[test]
    fn nul_controls_and_bidi_overrides_are_refused() {
        for bad in [
            "a\0b",
            "a\nb",
            "a\tb",
            "a\u{1b}[31mb",
            "a\u{85}b",
            "a\u{2028}b",
        ] {
            let err = required("name", Some(bad), 80).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("name"), "{bad:?}");
            let err = optional("full_name", Some(bad), 80).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("full_name"), "{bad:?}");
        }
        assert_eq!(
            text("notes", Some(" line one\r\n\tline two \n"), 100).unwrap(),
            Some("line one\r\n\tline two".to_string())
        );
        assert_eq!(text("notes", Some("  "), 100).unwrap(), None);
        for bad in ["a\0b", "a\u{1b}b", "a\u{7f}b", "a\u{9b}b"] {
            let err = text("description", Some(bad), 100).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("description"), "{bad:?}");
        }
        assert!(text("notes", Some(&"x".repeat(101)), 100).is_err());
        for bidi in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}',
        ] {
            let spoofed = format!("invoice{bidi}fdp.exe");
            let err = name("name", Some(&spoofed), 80).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("name"));
            assert!(err.message.contains("direction"), "{}", err.message);
            assert!(optional_name("full_name", Some(&spoofed), 80).is_err());
        }
        // Right-to-left text itself (and the plain marks) is a name like any other.
        assert_eq!(name("name", Some("مشروع نوفا"), 80).unwrap(), "مشروع نوفا");
        assert_eq!(name("name", Some("a\u{200F}b"), 80).unwrap(), "a\u{200F}b");
    }

    /// Echoed input is cut to a bounded length and shows no control or direction
    /// characters.
    #[test]
    fn echoed_input_is_bounded() {
        assert_eq!(echo("sohila"), "sohila");
        let long = "x".repeat(100_000);
        let echoed = echo(&long);
        assert_eq!(echoed.chars().count(), MAX_ECHO + 1);
        assert!(echoed.ends_with('…'));
        assert_eq!(echo("a\u{202E}b\nc\0"), "a?b?c?");
    }

    /// Common, short, blank and personal passwords are refused with a message that
    /// says why; long unrelated passphrases pass.
    #[test]
    fn weak_passwords_are_refused() {
        let person = ["sohila", "Sohila Ahmed", "sohila@example.com"];
        for weak in [
            "password",
            "12345678",
            "        ",
            "sohila",
            "sohila12",
            "Sohila Ahmed",
            "admin123",
            "dynserv1",
            "qwertyuiop",
            "aaaaaaaaaaaa",
        ] {
            let err = password("password", Some(weak), &person).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("password"), "{weak:?}");
            assert!(
                err.message.starts_with("password"),
                "{weak:?}: {}",
                err.message
            );
        }
        let err = password("password", Some("password"), &person).unwrap_err();
        assert!(err.message.contains("too easy to guess"), "{}", err.message);
        let err = password("password", Some("sohila"), &[]).unwrap_err();
        assert!(err.message.contains("at least 8"), "{}", err.message);
        assert!(password("password", Some(&"x".repeat(300)), &person).is_err());
        for strong in [
            "correct horse battery staple",
            "Tq9#vLm2!xR7pw",
            "violet-anchor-lunar-91",
        ] {
            assert_eq!(password("password", Some(strong), &person).unwrap(), strong);
        }
    }

    /// Only paths of this site survive as a login's `next`: other hosts written with
    /// backslashes, tabs, newlines, schemes or doubled slashes become `/`.
    #[test]
    fn login_next_stays_on_this_origin() {
        for (next, expected) in [
            (
                Some("/servers?project=Nova%20HR#top"),
                "/servers?project=Nova%20HR#top",
            ),
            (Some("/projects/../audit"), "/audit"),
            (None, "/"),
            (Some(""), "/"),
            (Some("//127.0.0.2:8080/"), "/"),
            (Some("/\\127.0.0.2:8080/"), "/"),
            (Some("/\t/127.0.0.2:8080/"), "/"),
            (Some("/\n/127.0.0.2:8080/"), "/"),
            (Some("/\\/evil.example/"), "/"),
            (Some("/.//evil.example/"), "/"),
            (Some("https://evil.example/"), "/"),
            (Some("javascript:alert(1)"), "/"),
            (Some("servers"), "/"),
        ] {
            assert_eq!(local_redirect(next), expected, "{next:?}");
        }
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
