//! The API's one error type. Every error answers
//! `{"error": {"code", "message", "requestId"}}` with a fitting status; the
//! code is stable (clients and the SDK match on it). Internal errors answer a
//! generic 500 and are logged in full for the operator, tied by request id.
//!
//! `IntoResponse` has no side effects: it leaves the code and message in a
//! response extension, and the `finish_errors` middleware (see `api`) writes
//! the body with the request id. That middleware also turns the framework's
//! own plain-text rejections (unknown route, wrong method, body too large)
//! into the same shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
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
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422 for a well-formed body whose values are not acceptable.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404: also the answer for another org's resources.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 403 with a code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 409 with a code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 401.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A 500: the detail goes to the log only.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, context, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the operator's log has the details under this request id",
        )
    }

    /// 503 when a dependency (signer nodes) is unavailable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for AppError {}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::internal("database", error)
    }
}

impl From<crate::keyring::KeyringError> for AppError {
    fn from(error: crate::keyring::KeyringError) -> Self {
        use crate::keyring::KeyringError as K;
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(ErrorBody {
            code: self.code,
            message: self.message,
        });
        response
    }
}

/// Result of a handler.
pub type AppResult<T> = Result<T, AppError>;
