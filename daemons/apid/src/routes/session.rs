//! Operators: login and logout (browser sessions), and API tokens.
//!
//! Login is where an anonymous caller can make apid spend the most: it passes the per-address
//! limit, then the per-account backoff ([`crate::throttle`]), and only then a bounded
//! password slot ([`crate::password`]); each refusal costs no Argon2 work.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::http::Extensions;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dragonfly_store::auth as repo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{self, API_TOKEN_PREFIX, Principal, SESSION_COOKIE};
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};

/// Body of `POST /api/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// Who is logged in.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub username: String,
    pub is_admin: bool,
}

/// A valid Argon2id hash of nothing anyone knows: verified against when the user does not
/// exist (or is disabled), so a login takes as long for unknown users as for wrong passwords.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    auth::hash_password("dragonfly-timing-equaliser").unwrap_or_default()
});

/// `Retry-After` for a login refused because every password slot is busy.
const BUSY_RETRY_SECS: u64 = 1;

/// Starts a browser session: sets an HttpOnly, SameSite=Strict session cookie.
///
/// Rate-limited per client address (per /64 for IPv6), and per account after failed
/// passwords (backoff from 1 s to 60 s; addresses the account last logged in from have their
/// own). 503 when every password-hashing slot and its short queue are busy.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = Login,
    security(()),
    responses((status = 200, body = Me, headers(("set-cookie" = String))),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody, headers(("retry-after" = String)))))]
pub async fn login(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let ip = auth::client_addr(&state, &extensions, &headers);
    let limited = |wait: std::time::Duration| ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    };
    state
        .login_limiter
        .check(ip, Instant::now())
        .map_err(limited)?;
    if body.username.len() > 128 || body.password.len() > 1024 {
        return Err(ApiError::Unauthorized);
    }
    let attempt = state
        .account_throttle
        .begin(&body.username, ip, Instant::now())
        .map_err(limited)?;
    let found = state
        .auth_db
        .auth()
        .user_with_password(&body.username)
        .await?;
    let (user, hash) = match found {
        Some((u, h)) if !u.disabled => (Some(u), h),
        _ => (None, DUMMY_HASH.clone()),
    };
    let ok = state
        .passwords
        .verify(&body.password, &hash)
        .await
        .map_err(|_| ApiError::Busy {
            retry_after_secs: BUSY_RETRY_SECS,
        })?;
    let Some(user) = user.filter(|_| ok) else {
        attempt.failed(Instant::now());
        tracing::info!(username = %body.username, %ip, "login failed");
        return Err(ApiError::Unauthorized);
    };
    attempt.succeeded(Instant::now());
    let (secret, hash) = auth::new_secret("");
    let now = jiff::Timestamp::now();
    let lifetime = state.config.session_lifetime;
    let expires =
        now + jiff::SignedDuration::try_from(lifetime).map_err(|e| ApiError::Internal(e.into()))?;
    let uid = user.id;
    state
        .auth_db
        .auth()
        .create_session(hash, uid, now, expires)
        .await?;
    tracing::info!(username = %user.username, %ip, "login");
    let secure = if state.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        lifetime.as_secs()
    );
    let mut resp = ApiJson(Me {
        username: user.username,
        is_admin: user.is_admin,
    })
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.into()))?,
    );
    Ok(resp)
}

/// Ends the current browser session.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses((status = 204, description = "Logged out"), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(cookie) = auth::session_cookie(&headers) {
        let hash = auth::secret_hash(cookie);
        state.auth_db.auth().delete_session(hash).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "dragonfly_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

/// The logged-in operator.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(Extension(who): Extension<Principal>) -> ApiJson<Me> {
    ApiJson(Me {
        username: who.user.username,
        is_admin: who.user.is_admin,
    })
}

/// Body of `POST /api/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewToken {
    /// What the token is for, e.g. `ci`.
    pub name: String,
    /// Lifetime in days; absent for a token that does not expire.
    pub expires_in_days: Option<u32>,
}

/// An API token's public record.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used: Option<jiff::Timestamp>,
}

impl From<repo::ApiToken> for TokenInfo {
    fn from(t: repo::ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used: t.last_used,
        }
    }
}

/// A new token: the only response that ever contains its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Send as `Authorization: Bearer <token>`. Shown once; only its hash is stored.
    pub token: String,
}

/// Creates an API token for the calling operator.
#[utoipa::path(post, path = "/api/tokens", tag = "auth", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, ApiJson<CreatedToken>), ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::Unprocessable(
            "name: must be 1 to 64 characters".into(),
        ));
    }
    let now = jiff::Timestamp::now();
    let expires = match body.expires_in_days {
        None => None,
        Some(d @ 1..=3650) => Some(now + jiff::SignedDuration::from_hours(i64::from(d) * 24)),
        Some(_) => {
            return Err(ApiError::Unprocessable(
                "expiresInDays: must be between 1 and 3650".into(),
            ));
        }
    };
    let (secret, hash) = auth::new_secret(API_TOKEN_PREFIX);
    let uid = who.user.id;
    let t = state
        .auth_db
        .auth()
        .create_api_token(uid, &name, hash, now, expires)
        .await?;
    tracing::info!(token = %t.id, name = %t.name, by = %who.user.username, "API token created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedToken {
            info: t.into(),
            token: secret,
        }),
    ))
}

/// Lists the calling operator's API tokens (never their secrets).
#[utoipa::path(get, path = "/api/tokens", tag = "auth",
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<ApiJson<Vec<TokenInfo>>, ApiError> {
    let uid = who.user.id;
    let tokens = state.auth_db.auth().list_api_tokens(uid).await?;
    Ok(ApiJson(tokens.into_iter().map(Into::into).collect()))
}

/// Revokes one of the calling operator's API tokens.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "auth",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_token(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let uid = who.user.id;
    if state.auth_db.auth().delete_api_token(uid, id).await? {
        tracing::info!(token = %id, by = %who.user.username, "API token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("token"))
    }
}
