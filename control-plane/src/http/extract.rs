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
        let bearer = header.and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        });
        // Two different tokens in one request: which identity acts is not
        // the client's to leave open, so neither is used.
        if let (Some(bearer), Some(vault)) = (bearer, vault_token) {
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                bearer.trim().as_bytes(),
                vault.trim().as_bytes(),
            )) {
                return Err(AppError::unauthenticated(
                    "conflicting_tokens",
                    "Authorization and X-Vault-Token carry different tokens: send one",
                ));
            }
        }
        let Some(token) = bearer.or(vault_token) else {
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
        if !is_json(request.headers()) {
            return Err(AppError::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "send JSON with content-type application/json",
            ));
        }
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body (`Option<ApiJson<T>>`): none when the request
/// has no JSON content type, no body or a JSON `null`; otherwise parsed as
/// [`ApiJson`] parses it (the Vault dialect's optional bodies).
impl<T, S> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> AppResult<Option<Self>> {
        if !is_json(request.headers()) {
            return Ok(None);
        }
        let bytes = read_body(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(None);
        }
        parse_json(&bytes).map(|value| Some(ApiJson(value)))
    }
}

/// The body's bytes, within the body limit.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> AppResult<axum::body::Bytes> {
    match axum::body::Bytes::from_request(request, state).await {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            "request body too large",
        )),
        Err(_) => Err(AppError::bad_request(
            "bad_body",
            "the body could not be read",
        )),
    }
}

/// `bytes` as a `T`, with the API's error codes. Every body of the API is
/// a JSON object; serde would also read a struct from an array of its
/// fields in order, which no client means.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> AppResult<T> {
    if bytes.trim_ascii_start().first() == Some(&b'[') {
        return Err(AppError::invalid(
            "invalid_body",
            "the body is a JSON object, not an array",
        ));
    }
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(value)) => Ok(value),
        Err(JsonRejection::JsonDataError(error)) => {
            // JSON Schema (and so OpenAPI 3.1) counts `2.0` as an
            // integer; serde does not. Only a body that failed is read
            // again with its integral numbers as integers, so the common
            // path parses once.
            if let Some(value) = integral_numbers_as_integers(bytes) {
                if let Ok(parsed) = serde_json::from_value::<T>(value) {
                    return Ok(parsed);
                }
            }
            Err(AppError::invalid(
                "invalid_body",
                sanitize_serde_message(&error.body_text()),
            ))
        }
        Err(_) => Err(AppError::bad_request(
            "malformed_json",
            "the body is not valid JSON",
        )),
    }
}

/// Whether the request says its body is JSON (`application/json` or a
/// `+json` type), as axum's `Json` asks.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `bytes` as JSON with every number that is a whole float within the
/// exactly representable range (`2.0`, `1e3`) made an integer; `None` when
/// it is not JSON or nothing changed.
fn integral_numbers_as_integers(bytes: &[u8]) -> Option<serde_json::Value> {
    fn walk(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(number) if number.is_f64() => {
                let float = number.as_f64().unwrap_or(f64::NAN);
                const SAFE: f64 = 9_007_199_254_740_992.0;
                if float.fract() == 0.0 && float.abs() <= SAFE {
                    // Exact: a whole float below 2^53 converts without loss.
                    #[allow(clippy::cast_possible_truncation)]
                    let integer = float as i64;
                    *value = serde_json::Value::from(integer);
                    true
                } else {
                    false
                }
            }
            serde_json::Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| walk(item) | changed),
            serde_json::Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, item| walk(item) | changed),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut value).then_some(value)
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
    // No body, or a JSON `null`, is the default body.
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let ApiJson(body) = ApiJson::<T>::from_request(request, &()).await?;
    Ok(body)
}
