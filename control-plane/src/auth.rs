//! Identities, client secrets, bearer tokens and roles.
//!
//! * A machine identity has a client id and a secret shown once; the secret
//!   is stored as an Argon2id PHC string and checked on a blocking thread.
//! * `POST /api/v1/auth/token` trades them for an opaque bearer token
//!   (`cst_` + 32 random bytes). Only the SHA-256 of a token is stored, so a
//!   database dump holds no usable token; tokens are short-lived and every
//!   replica checks them against the database.
//! * Five failed logins lock an identity for five minutes. An unknown client
//!   id costs the same Argon2 work as a wrong secret.
//! * Roles gate actions first (`role_allows`); the org's policies decide
//!   after that.

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{new_id, now_ms, Db, Tx};
use crate::error::{AppError, AppResult};

/// Failed logins before a lockout.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// Lockout length, milliseconds.
pub const LOCKOUT_MS: i64 = 5 * 60 * 1000;

/// A role within an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the org, subject to policy.
    Admin,
    /// Wallets and nodes.
    Operator,
    /// Approves or rejects requests.
    Approver,
    /// Applications: create wallets, sign.
    Service,
    /// Reads the audit log and metadata.
    Auditor,
}

impl Role {
    /// Parses the API name.
    pub fn parse(name: &str) -> Option<Role> {
        Some(match name {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "approver" => Role::Approver,
            "service" => Role::Service,
            "auditor" => Role::Auditor,
            _ => return None,
        })
    }

    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Service => "service",
            Role::Auditor => "auditor",
        }
    }
}

/// Whether `role` may attempt `action` at all (policies decide after).
pub fn role_allows(role: Role, action: &str) -> bool {
    let patterns: &[&str] = match role {
        Role::Admin => &["*"],
        Role::Operator => &[
            "wallet.*",
            "node.*",
            "secret.*",
            "operation.read",
            "webhook.read",
            "key.create",
            "key.read",
            "transit.key.create",
            "transit.read",
            "signing.read",
            "approval.read",
            "policy.read",
            "identity.read",
        ],
        Role::Approver => &[
            "approval.*",
            "operation.read",
            "wallet.read",
            "signing.read",
            "policy.read",
            "identity.mfa",
        ],
        Role::Service => &[
            "key.create",
            "key.read",
            "key.sign",
            "key.verify",
            "key.encrypt",
            "key.decrypt",
            "key.wrap",
            "key.unwrap",
            "secret.read",
            "secret.list",
            "operation.read",
            "wallet.create",
            "wallet.read",
            "wallet.sign",
            "signing.read",
            "transit.read",
            "transit.encrypt",
            "transit.decrypt",
            "transit.rewrap",
            "transit.datakey",
            "transit.sign",
            "transit.verify",
            "transit.hmac",
        ],
        Role::Auditor => &["audit.*", "*.read", "secret.list"],
    };
    // Auditors see metadata and the audit trail, never secret values.
    if role == Role::Auditor && action == "secret.read" {
        return false;
    }
    patterns
        .iter()
        .any(|pattern| crate::policy::glob_match(pattern, action))
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Identity id.
    pub identity: String,
    /// Its name.
    pub name: String,
    /// Its org.
    pub org: String,
    /// Its role.
    pub role: Role,
    /// May manage orgs.
    pub platform_admin: bool,
    /// Client IP.
    pub ip: IpAddr,
    /// The HTTP request id.
    pub request_id: String,
    /// The TOTP code the caller sent with this request (`X-Custos-TOTP`),
    /// for rules that require MFA.
    pub totp: Option<String>,
}

impl Caller {
    /// Refuses with 403 unless the role allows `action`.
    pub fn require(&self, action: &str) -> AppResult<()> {
        if role_allows(self.role, action) {
            Ok(())
        } else {
            Err(AppError::forbidden(
                "forbidden",
                format!("role {} may not {action}", self.role.name()),
            ))
        }
    }
}

/// A new identity's credentials (the secret exists only in this answer).
#[derive(Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCredentials {
    /// Identity id.
    pub id: String,
    /// Client id.
    pub client_id: String,
    /// The secret, shown once.
    pub client_secret: String,
}

impl std::fmt::Debug for NewCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredentials")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Argon2id PHC string of `secret` (blocking: call from `spawn_blocking`).
pub fn hash_secret(secret: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AppError::internal("argon2", error))
}

/// Checks `secret` against a PHC string (blocking; the comparison inside
/// argon2 is constant-time).
pub fn verify_secret(phc: &str, secret: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

async fn hash_blocking(secret: String) -> AppResult<String> {
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|error| AppError::internal("argon2 task", error))?
}

/// Creates an identity in `org` inside `tx`.
pub async fn create_identity(
    tx: &mut Tx,
    org: &str,
    name: &str,
    role: Role,
    platform_admin: bool,
) -> AppResult<NewCredentials> {
    let id = new_id("idn");
    let client_id = new_id("cid");
    let client_secret = random_token("cs");
    let secret_hash = hash_blocking(client_secret.clone()).await?;
    let inserted = sqlx::query(
        "INSERT INTO identities (id, org_id, name, role, platform_admin, client_id, secret_hash, \
         failed_attempts, locked_until, totp_secret, totp_last_step, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, NULL, 0, $8)",
    )
    .bind(&id)
    .bind(org)
    .bind(name)
    .bind(role.name())
    .bind(i64::from(platform_admin))
    .bind(&client_id)
    .bind(secret_hash)
    .bind(now_ms())
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(NewCredentials {
            id,
            client_id,
            client_secret,
        }),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Err(
            AppError::conflict("already_exists", format!("an identity named {name} exists")),
        ),
        Err(error) => Err(error.into()),
    }
}

/// The answer of `POST /api/v1/auth/token`.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnswer {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAnswer(<redacted>)")
    }
}

/// A verified login: the identity's org and id, for the audit record.
#[derive(Clone, Debug)]
pub struct Login {
    /// Identity id.
    pub identity: String,
    /// Org id.
    pub org: String,
}

/// Why a login failed, with who it was when known (for the audit).
#[derive(Debug)]
pub struct LoginFailure {
    /// The error to answer.
    pub error: AppError,
    /// The identity whose secret was wrong, when the client id exists.
    pub who: Option<Login>,
}

/// Checks client credentials, counts failures and locks out; on success
/// issues a token valid for `ttl_secs`.
pub async fn login(
    db: &Db,
    client_id: &str,
    client_secret: &str,
    ttl_secs: u64,
) -> Result<(Login, TokenAnswer), LoginFailure> {
    let internal = |error: sqlx::Error| LoginFailure {
        error: error.into(),
        who: None,
    };
    let row = sqlx::query(
        "SELECT id, org_id, secret_hash, failed_attempts, locked_until FROM identities \
         WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(db.pool())
    .await
    .map_err(internal)?;
    let invalid = || AppError::unauthenticated("invalid_credentials", "invalid client credentials");
    let Some(row) = row else {
        // Same work as a real check, so an unknown id is not faster.
        let secret = client_secret.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            verify_secret(
                "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                 ZGVjb3lkZWNveWRlY295ZGVjb3lkZWNveWRlY295ZGU",
                &secret,
            )
        })
        .await;
        return Err(LoginFailure {
            error: invalid(),
            who: None,
        });
    };
    let get = |column: &str| -> Result<String, LoginFailure> {
        row.try_get::<String, _>(column).map_err(internal)
    };
    let who = Login {
        identity: get("id")?,
        org: get("org_id")?,
    };
    let phc = get("secret_hash")?;
    let locked_until: i64 = row.try_get("locked_until").map_err(internal)?;
    let now = now_ms();
    if locked_until > now {
        return Err(LoginFailure {
            error: AppError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "locked_out",
                "too many failed logins; try again later",
            ),
            who: Some(who),
        });
    }
    let secret = client_secret.to_string();
    let matches = tokio::task::spawn_blocking(move || verify_secret(&phc, &secret))
        .await
        .unwrap_or(false);
    if !matches {
        // Count the failure atomically; the fifth one locks.
        sqlx::query(
            "UPDATE identities SET failed_attempts = failed_attempts + 1, \
             locked_until = CASE WHEN failed_attempts + 1 >= $1 THEN $2 ELSE locked_until END \
             WHERE id = $3",
        )
        .bind(MAX_FAILED_LOGINS)
        .bind(now + LOCKOUT_MS)
        .bind(&who.identity)
        .execute(db.pool())
        .await
        .map_err(internal)?;
        return Err(LoginFailure {
            error: invalid(),
            who: Some(who),
        });
    }
    let token = random_token("cst");
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut tx = db.begin().await.map_err(internal)?;
    sqlx::query("UPDATE identities SET failed_attempts = 0, locked_until = 0 WHERE id = $1")
        .bind(&who.identity)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    sqlx::query(
        "INSERT INTO tokens (token_hash, identity_id, org_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash(&token))
    .bind(&who.identity)
    .bind(&who.org)
    .bind(now.saturating_add(ttl_ms))
    .execute(&mut *tx)
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok((
        who,
        TokenAnswer {
            access_token: token,
            token_type: "Bearer",
            expires_in: ttl_secs,
        },
    ))
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"custos/token/v1")
        .chain_update(token.as_bytes())
        .finalize()
        .to_vec()
}

/// The caller of the token whose SHA-256 is `hash`, and the token's expiry.
/// Lookup is by the token's hash, so no secret is compared byte by byte.
async fn authenticate_in(
    db: &Db,
    hash: &[u8],
    ip: IpAddr,
    request_id: &str,
) -> AppResult<(Caller, i64)> {
    let row = sqlx::query(
        "SELECT t.expires_at, i.id, i.name, i.org_id, i.role, i.platform_admin \
         FROM tokens t JOIN identities i ON i.id = t.identity_id WHERE t.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Err(AppError::unauthenticated(
            "invalid_token",
            "the bearer token is not valid",
        ));
    };
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= now_ms() {
        return Err(AppError::unauthenticated(
            "token_expired",
            "the bearer token has expired",
        ));
    }
    let role: String = row.try_get("role")?;
    let caller = Caller {
        identity: row.try_get("id")?,
        name: row.try_get("name")?,
        org: row.try_get("org_id")?,
        role: Role::parse(&role)
            .ok_or_else(|| AppError::internal("identity role", format!("unknown role {role}")))?,
        platform_admin: row.try_get::<i64, _>("platform_admin")? == 1,
        ip,
        request_id: request_id.to_string(),
        totp: None,
    };
    Ok((caller, expires_at))
}

/// Verified tokens, kept for a short time so that a busy client's every
/// call does not read the database (the transit data plane). Keyed by the
/// token's SHA-256, like the table; an entry answers only until the
/// earlier of its token's expiry and `ttl` after it was read. A token made
/// invalid in the database (none of the API's operations does so today;
/// an operator's manual delete) stays usable on a replica for at most
/// `ttl`.
pub struct TokenCache {
    ttl_ms: i64,
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    identity: String,
    name: String,
    org: String,
    role: Role,
    platform_admin: bool,
    expires_at: i64,
    good_until: i64,
}

/// The most tokens a replica keeps (the cache is emptied when full).
const TOKEN_CACHE_CAPACITY: usize = 100_000;

impl TokenCache {
    /// A cache keeping tokens for `ttl_ms` (0: no caching).
    pub fn new(ttl_ms: u64) -> TokenCache {
        TokenCache {
            ttl_ms: i64::try_from(ttl_ms).unwrap_or(i64::MAX),
            entries: Default::default(),
        }
    }

    /// The caller of `token`, from the cache or the database.
    pub async fn authenticate(
        &self,
        db: &Db,
        token: &str,
        ip: IpAddr,
        request_id: &str,
    ) -> AppResult<Caller> {
        let hash = token_hash(token);
        let now = now_ms();
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            .cloned();
        if let Some(entry) = cached.filter(|entry| entry.good_until > now) {
            if entry.expires_at <= now {
                return Err(AppError::unauthenticated(
                    "token_expired",
                    "the bearer token has expired",
                ));
            }
            return Ok(Caller {
                identity: entry.identity,
                name: entry.name,
                org: entry.org,
                role: entry.role,
                platform_admin: entry.platform_admin,
                ip,
                request_id: request_id.to_string(),
                totp: None,
            });
        }
        let (caller, expires_at) = authenticate_in(db, &hash, ip, request_id).await?;
        if self.ttl_ms > 0 {
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if entries.len() >= TOKEN_CACHE_CAPACITY {
                entries.clear();
            }
            entries.insert(
                hash,
                CachedToken {
                    identity: caller.identity.clone(),
                    name: caller.name.clone(),
                    org: caller.org.clone(),
                    role: caller.role,
                    platform_admin: caller.platform_admin,
                    expires_at,
                    good_until: now + self.ttl_ms,
                },
            );
        }
        Ok(caller)
    }
}

/// On the first start: creates the platform org, its default policy and the
/// root identity, and returns the root credentials (shown once). Later
/// starts return `None`. Safe with several replicas starting at once: the
/// `meta` row is the claim.
pub async fn bootstrap(db: &Db) -> AppResult<Option<NewCredentials>> {
    let mut tx = db.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('bootstrapped', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(now_ms().to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let org = crate::orgs::create_org(db, &mut tx, "platform").await?;
    let credentials = create_identity(&mut tx, &org, "root", Role::Admin, true).await?;
    crate::audit::append(
        db,
        &mut tx,
        &crate::audit::AuditEvent {
            org: &org,
            action: "system.bootstrap",
            resource: "org:platform",
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome: "success",
            request_id: "",
            detail: serde_json::json!({"rootIdentity": credentials.id}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(credentials))
}

/// A request for a new identity (`POST /api/v1/identities`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewIdentity {
    /// Unique in the org.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Reserved: finer scopes within the role.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Platform admins may create identities in another org.
    #[serde(default)]
    pub org_id: Option<String>,
}
