//! The one error type of the web layer and the domain functions it calls: a stable
//! kind, a message a person can act on, and optionally the form field at fault (or,
//! when a validation found several, every field at fault with its own message). The
//! kind decides the HTTP status in exactly one place, [`AppError::status`].

use warp::http::StatusCode;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The body or a parameter is malformed (400).
    BadRequest,
    /// The request is well formed but a value is invalid (422); `field` names it, and
    /// [`AppError::field_errors`] lists every invalid field when there are several.
    Invalid,
    /// No valid session or token (401).
    Unauthenticated,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// The thing does not exist, or the caller may not know it exists (404).
    NotFound,
    /// The move conflicts with the current state, e.g. a workflow transition (409).
    Conflict,
    /// Too many attempts; try later (429).
    TooManyRequests,
    /// The store cannot be written (a full disk, an I/O error) or the disk is below
    /// its floor; nothing was written; try again later (503).
    Unavailable,
    /// A bug or an I/O failure on our side (500); the message is logged, not shown.
    Internal,
}

/// An error with its kind, message and field.
#[derive(Debug, Clone)]
pub struct AppError {
    pub kind: Kind,
    pub message: String,
    pub field: Option<String>,
    /// Every field at fault with its message, in the order they were checked, when a
    /// validation reported several at once; the first is `field` and `message`. Empty
    /// for an error about one field or none; read it through [`AppError::field_errors`].
    fields: Vec<(String, String)>,
}

/// The result type of domain functions called from the web layer.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(kind: Kind, message: impl Into<String>) -> AppError {
        AppError {
            kind,
            message: message.into(),
            field: None,
            fields: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> AppError {
        AppError::new(Kind::BadRequest, message)
    }
    /// An invalid value of a named field.
    pub fn invalid(field: &str, message: impl Into<String>) -> AppError {
        AppError {
            kind: Kind::Invalid,
            message: message.into(),
            field: Some(field.to_string()),
            fields: Vec::new(),
        }
    }
    /// One error for several invalid fields, each `(field, message)`, in the order
    /// they were found: the first is the primary `field` and `message` (what a caller
    /// that reads one field sees), [`AppError::field_errors`] lists them all. `None`
    /// when `fields` is empty.
    pub fn invalid_fields(fields: Vec<(String, String)>) -> Option<AppError> {
        let (field, message) = fields.first()?.clone();
        Some(AppError {
            kind: Kind::Invalid,
            message,
            field: Some(field),
            fields: if fields.len() > 1 { fields } else { Vec::new() },
        })
    }
    pub fn forbidden() -> AppError {
        AppError::new(Kind::Forbidden, "you do not have permission to do that")
    }
    pub fn not_found(what: &str) -> AppError {
        AppError::new(Kind::NotFound, format!("{what} not found"))
    }
    pub fn conflict(message: impl Into<String>) -> AppError {
        AppError::new(Kind::Conflict, message)
    }
    pub fn unauthenticated() -> AppError {
        AppError::new(Kind::Unauthenticated, "authentication required")
    }

    /// The HTTP status of this error; the only mapping from kind to status.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message to show: internal details stay in the log.
    pub fn public_message(&self) -> &str {
        if self.kind == Kind::Internal {
            "internal error; the details are in the server log"
        } else {
            &self.message
        }
    }

    /// Every field at fault with its message, the primary one first; empty when the
    /// error is about no field.
    pub fn field_errors(&self) -> Vec<(&str, &str)> {
        if !self.fields.is_empty() {
            return self
                .fields
                .iter()
                .map(|(field, message)| (field.as_str(), message.as_str()))
                .collect();
        }
        match &self.field {
            Some(field) => vec![(field.as_str(), self.message.as_str())],
            None => Vec::new(),
        }
    }

    /// The JSON body of an API error: `error` and `field` name the primary problem (as
    /// scripts have always read them), `errors` maps every field at fault to its message.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.public_message() });
        if let Some(field) = &self.field {
            body["field"] = serde_json::Value::String(field.clone());
            let errors: serde_json::Map<String, serde_json::Value> = self
                .field_errors()
                .into_iter()
                .map(|(field, message)| (field.to_string(), message.into()))
                .collect();
            body["errors"] = serde_json::Value::Object(errors);
        }
        body
    }
}

/// The primary message, then the other fields' messages, so a log line or a CLI error
/// names every problem.
impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for (_, message) in self.fields.iter().skip(1) {
            write!(f, "; {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AppError {}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> AppError {
        // A domain error wrapped in anyhow keeps its kind.
        match e.downcast::<AppError>() {
            Ok(app) => app,
            Err(e) => {
                if let Some(low) = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<crate::store::LowDisk>())
                {
                    return AppError::new(Kind::Unavailable, low.to_string());
                }
                if let Some(down) = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<crate::store::Unavailable>())
                {
                    return AppError::new(
                        Kind::Unavailable,
                        format!("{down}; nothing was saved, try again once the operator has freed space"),
                    );
                }
                tracing::error!("internal error: {e:#}");
                AppError::new(Kind::Internal, format!("{e:#}"))
            }
        }
    }
}
