//! The extractors every route uses: the authenticated [`Caller`] (bearer
//! token or `X-Vault-Token`, the TOTP header, the per-identity rate limit),
//! the request [`Context`] for routes without a caller, and JSON bodies
//! whose rejections are API errors with stable codes ([`ApiJson`],
//! [`optional_body`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::state::AppState;

use super::request_id_of;

/// The client's IP: the socket peer (no proxy headers are trusted).
fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> AppResult<Caller> {
        let request_id = request_id_of(&parts.extensions, &parts.headers);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        // Vault clients send their token in `X-Vault-Token`: a Custos token
        // works there too (the Vault-compatible transit routes).
        let vault_token = parts
            .headers
            .get("x-vault-token")
            .and_then(|value| value.to_str().ok());
        let Some(token) = header
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .or(vault_token)
        else {
            return Err(AppError::unauthenticated(
                "unauthenticated",
                "send Authorization: Bearer <token> (from POST /api/v1/auth/token)",
            ));
        };
        let mut caller = state
            .tokens
            .authenticate(
                &state.db,
                &state.keyring,
                token.trim(),
                client_ip(parts),
                &request_id,
            )
            .await?;
        caller.totp = totp_header(&parts.headers).map(str::to_string);
        if !state.limiter.allow(&caller.identity) {
            return Err(AppError::new(
                ErrorKind::RateLimited,
                "rate_limited",
                "too many requests for this identity; slow down",
            ));
        }
        Ok(caller)
    }
}

/// The caller's current TOTP code (`X-Custos-TOTP`), for rules that
/// require MFA.
fn totp_header(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("x-custos-totp")
        .and_then(|value| value.to_str().ok())
}

/// The request id and client IP, for handlers without a caller.
pub(crate) struct Context {
    /// The request id.
    pub(crate) request_id: String,
    /// The client's address.
    pub(crate) ip: IpAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> AppResult<Context> {
        Ok(Context {
            request_id: request_id_of(&parts.extensions, &parts.headers),
            ip: client_ip(parts),
        })
    }
}

/// A JSON body whose rejections become API errors with stable codes.
pub struct ApiJson<T>(pub T);

/// Drops quoted input values from serde messages (they may be secrets),
/// keeping field names.
fn sanitize_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for character in message.chars() {
        match (character, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quote = false;
                out.push('"');
            }
            (_, true) => {}
            (character, false) => out.push(character),
        }
    }
    out
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> AppResult<Self> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(error) => {
                    AppError::invalid("invalid_body", sanitize_serde_message(&error.body_text()))
                }
                JsonRejection::JsonSyntaxError(_) => {
                    AppError::bad_request("malformed_json", "the body is not valid JSON")
                }
                JsonRejection::MissingJsonContentType(_) => AppError::new(
                    ErrorKind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "send JSON with content-type application/json",
                ),
                JsonRejection::BytesRejection(error) => {
                    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        AppError::new(
                            ErrorKind::TooLarge,
                            "payload_too_large",
                            "request body too large",
                        )
                    } else {
                        AppError::bad_request("bad_body", "the body could not be read")
                    }
                }
                _ => AppError::bad_request("bad_body", "the body could not be read"),
            }),
        }
    }
}

/// An optional JSON body: an empty body is the default.
pub(crate) async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    request: Request,
) -> AppResult<T> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
        AppError::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            "request body too large",
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let ApiJson(body) = ApiJson::<T>::from_request(request, &()).await?;
    Ok(body)
}
