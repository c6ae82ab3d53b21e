//! The API's one error type. Every error answers
//! `{"error": {"code", "message", "requestId"}}` with a fitting status; the
//! code is stable (clients and the SDK match on it). Internal errors answer a
//! generic 500 and are logged in full for the operator, tied by request id.
//!
//! The kernel and the engines say what kind of failure it is
//! ([`ErrorKind`]); the HTTP layer alone maps a kind to its status and
//! renders the body (`crate::http`): its `IntoResponse` has no side
//! effects, it leaves the code and message in a response extension, and
//! the `finish_errors` middleware writes the body with the request id. That
//! middleware also turns the framework's own plain-text rejections (unknown
//! route, wrong method, body too large) into the same shape.

/// What kind of failure an error is (the HTTP layer maps each to one
/// status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request cannot be read (400).
    BadRequest,
    /// No valid credentials (401).
    Unauthenticated,
    /// Not allowed (403).
    Forbidden,
    /// Not there, or another org's (404).
    NotFound,
    /// In conflict with the current state (409).
    Conflict,
    /// Was there and is gone for good (410).
    Gone,
    /// Too large (413).
    TooLarge,
    /// Not a media type the route reads (415).
    UnsupportedMediaType,
    /// Well-formed, but its values are not acceptable (422).
    Invalid,
    /// Too many requests, or a budget spent (429).
    RateLimited,
    /// A fault of the control plane (500).
    Internal,
    /// A dependency answered something wrong (502).
    BadGateway,
    /// A dependency is unavailable, or the keyring is sealed (503).
    Unavailable,
}

/// An API error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human-readable, never contains a secret.
    pub message: String,
}

/// The code and message of an error response, for `finish_errors`.
#[derive(Clone, Debug)]
pub struct ErrorBody {
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
}

impl AppError {
    /// An error of any kind.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    /// 422 for a well-formed body whose values are not acceptable.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }

    /// 404: also the answer for another org's resources.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 403 with a code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }

    /// 409 with a code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    /// 401.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, code, message)
    }

    /// A 500: the detail goes to the log only.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, context, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal",
            "internal error; the operator's log has the details under this request id",
        )
    }

    /// 503 when a dependency (signer nodes) is unavailable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}): {}", self.code, self.kind, self.message)
    }
}

impl std::error::Error for AppError {}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::internal("database", error)
    }
}

impl From<crate::kernel::keyring::KeyringError> for AppError {
    fn from(error: crate::kernel::keyring::KeyringError) -> Self {
        use crate::kernel::keyring::KeyringError as K;
        match &error {
            K::Sealed => AppError::unavailable("sealed", error.to_string()),
            K::NotInitialized => AppError::conflict("not_initialized", error.to_string()),
            K::AlreadyInitialized => AppError::conflict("already_initialized", error.to_string()),
            K::ModeMismatch { .. } => {
                AppError::bad_request("seal_mode_mismatch", error.to_string())
            }
            K::InvalidParameters(_) => {
                AppError::invalid("invalid_seal_parameters", error.to_string())
            }
            K::InvalidShare(_) => AppError::bad_request("invalid_unseal_share", error.to_string()),
            K::DuplicateShare => AppError::conflict("duplicate_unseal_share", error.to_string()),
            K::UnsealFailed => AppError::bad_request("unseal_failed", error.to_string()),
            K::Corrupt(_) | K::MasterKey(_) | K::Database(_) => {
                AppError::internal("keyring", &error)
            }
        }
    }
}

/// Result of a handler.
pub type AppResult<T> = Result<T, AppError>;
