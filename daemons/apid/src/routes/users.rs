//! Operator accounts: an operator changes their own password; an administrator lists,
//! creates, disables (or re-enables), promotes or demotes operators, and revokes every
//! session and API token of one.
//!
//! The first administrator still comes only from `dragonfly-apid create-admin` (no first-visitor
//! setup page). Nothing here can leave apid without an enabled administrator (the store
//! refuses it in the same transaction), and every change is logged with who made it.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use dragonfly_store::auth::User;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::admin::{MIN_PASSWORD_LEN, valid_username};
use crate::auth::{self, Principal, Via};
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};

/// Longest password accepted (Argon2 hashes any length; this bounds the request).
const MAX_PASSWORD_LEN: usize = 1024;

/// An operator account, as the API shows it (never its password hash).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    /// A disabled operator cannot log in, and their sessions and tokens do not authenticate.
    pub disabled: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl From<User> for UserInfo {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            is_admin: u.is_admin,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// Body of `POST /api/auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PasswordChange {
    pub current_password: String,
    /// At least 12 characters.
    pub new_password: String,
}

/// Body of `POST /api/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewUser {
    /// 1 to 64 characters of a-z, A-Z, 0-9, '.', '_' or '-'.
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
}

/// Body of `PATCH /api/users/{id}`: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserPatch {
    pub is_admin: Option<bool>,
    pub disabled: Option<bool>,
}

/// What `POST /api/users/{id}/revoke` deleted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub sessions: u64,
    pub api_tokens: u64,
}

fn require_admin(who: &Principal) -> Result<(), ApiError> {
    if who.user.is_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("administrators only"))
    }
}

fn check_new_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::Unprocessable(format!(
            "password: must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

fn busy(_: crate::password::Busy) -> ApiError {
    ApiError::Busy {
        retry_after_secs: 1,
    }
}

/// Changes the calling operator's password. Every other session of theirs ends (the one
/// making the change stays logged in); their API tokens are kept.
///
/// Wrong current passwords count towards the account's login backoff.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 204, description = "Changed"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    extensions: Extensions,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let ip = auth::client_addr(&state, &extensions, &headers);
    let name = &who.user.username;
    let attempt = state
        .account_throttle
        .begin(name, ip, Instant::now())
        .map_err(|wait| ApiError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        })?;
    if body.current_password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::Forbidden("the current password is wrong"));
    }
    check_new_password(&body.new_password)?;
    let stored = state
        .auth_db
        .auth()
        .password_hash(who.user.id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let ok = state
        .passwords
        .verify(&body.current_password, &stored)
        .await
        .map_err(busy)?;
    if !ok {
        attempt.failed(Instant::now());
        tracing::info!(username = %name, %ip, "password change refused: wrong current password");
        return Err(ApiError::Forbidden("the current password is wrong"));
    }
    // Not `succeeded`: a session proving its password does not make its address known-good.
    drop(attempt);
    let hash = state
        .passwords
        .hash(&body.new_password)
        .await
        .map_err(|e| match e {
            crate::password::PasswordError::Busy(b) => busy(b),
            other => ApiError::Internal(other.into()),
        })?;
    let keep = match who.via {
        Via::Session => auth::session_cookie(&headers).map(auth::secret_hash),
        Via::ApiToken => None,
    };
    state
        .auth_db
        .auth()
        .set_password(who.user.id, &hash, keep)
        .await?;
    tracing::info!(username = %name, %ip, "password changed; other sessions ended");
    Ok(StatusCode::NO_CONTENT)
}

/// Lists every operator account (administrators only).
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = Vec<UserInfo>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<ApiJson<Vec<UserInfo>>, ApiError> {
    require_admin(&who)?;
    let users = state.auth_db.auth().list_users().await?;
    Ok(ApiJson(users.into_iter().map(Into::into).collect()))
}

/// Creates an operator or administrator (administrators only).
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, ApiJson<UserInfo>), ApiError> {
    require_admin(&who)?;
    if !valid_username(&body.username) {
        return Err(ApiError::Unprocessable(
            "username: must be 1 to 64 characters of a-z, A-Z, 0-9, '.', '_' or '-'".into(),
        ));
    }
    check_new_password(&body.password)?;
    let hash = state
        .passwords
        .hash(&body.password)
        .await
        .map_err(|e| match e {
            crate::password::PasswordError::Busy(b) => busy(b),
            other => ApiError::Internal(other.into()),
        })?;
    let user = state
        .auth_db
        .auth()
        .create_user(&body.username, &hash, body.is_admin, jiff::Timestamp::now())
        .await?;
    tracing::info!(username = %user.username, is_admin = user.is_admin, by = %who.user.username, "user created");
    Ok((StatusCode::CREATED, ApiJson(user.into())))
}

/// Disables or re-enables an operator, or changes their role (administrators only). Disabling
/// ends their sessions at once; their API tokens stop working while they are disabled. The
/// last enabled administrator cannot be disabled or demoted (409).
#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", request_body = UserPatch,
    params(("id" = i64, Path)),
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<UserPatch>,
) -> Result<ApiJson<UserInfo>, ApiError> {
    require_admin(&who)?;
    let user = state
        .auth_db
        .auth()
        .update_user(id, body.is_admin, body.disabled)
        .await?;
    tracing::info!(username = %user.username, is_admin = user.is_admin, disabled = user.disabled, by = %who.user.username, "user changed");
    Ok(ApiJson(user.into()))
}

/// Deletes every session and API token of an operator (administrators only): for a lost
/// laptop or a leaked token. The account itself stays as it is.
#[utoipa::path(post, path = "/api/users/{id}/revoke", tag = "users",
    params(("id" = i64, Path)),
    responses((status = 200, body = Revoked), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<Revoked>, ApiError> {
    require_admin(&who)?;
    let (sessions, api_tokens) = state.auth_db.auth().revoke_user(id).await?;
    tracing::info!(user = id, sessions, api_tokens, by = %who.user.username, "credentials revoked");
    Ok(ApiJson(Revoked {
        sessions,
        api_tokens,
    }))
}
