//! Who is calling: operators by session cookie or API token, agents by boot token.
//!
//! One router-wide middleware ([`require_auth`]) authenticates every request, with an explicit
//! allow-list ([`PUBLIC_ROUTES`]) of the few routes that must work without an operator's
//! credentials. New routes are therefore private unless someone adds them to the list, and a
//! test walks every route in the OpenAPI document to prove it.
//!
//! Secrets (session cookies, API tokens) are 256-bit random values; only their SHA-256 is
//! stored. Passwords are Argon2id with the crate's defaults (19 MiB, 2 passes), hashed on the
//! blocking pool so a login never stalls the async workers.

use std::net::{IpAddr, SocketAddr};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Extensions, HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dragonfly_core::agent_api;
use dragonfly_store::auth::User;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dragonfly_session";
/// API tokens start with this, so a leaked one is recognisable (e.g. by secret scanners).
pub const API_TOKEN_PREFIX: &str = "dft_";

/// Routes reachable without an operator's credentials, as (method, route template).
/// Registration and the agent's instructions authenticate the agent themselves, with its
/// boot token, in an extractor.
pub const PUBLIC_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/health"),
    (Method::POST, "/api/auth/login"),
    (Method::POST, agent_api::REGISTER_PATH),
    (Method::GET, agent_api::INSTRUCTIONS_PATH),
    (Method::POST, agent_api::LOG_PATH),
    (Method::POST, agent_api::RENEW_PATH),
    (Method::GET, agent_api::WORKFLOW_PATH),
    (Method::POST, agent_api::REPORT_PATH),
    (Method::GET, "/"),
    (Method::GET, "/ui/app.js"),
    (Method::GET, "/ui/app.css"),
];

/// How an operator proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Session,
    ApiToken,
}

/// An authenticated operator, put in the request's extensions by [`require_auth`].
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub via: Via,
}

/// A fresh random secret and the SHA-256 under which it is stored.
pub fn new_secret(prefix: &str) -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let text = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = secret_hash(&text);
    (text, hash)
}

/// The stored form of a secret.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Hashes a password with Argon2id (blocking: ~tens of ms of CPU).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing password: {e}")))
}

/// Checks a password against a stored hash (blocking). A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The boot token in `Authorization: Bearer dfb1.…`, if that is what was sent.
pub fn boot_token(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).filter(|t| t.starts_with("dfb1."))
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// Finds the operator behind a request's API token or session cookie, if any.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let now = jiff::Timestamp::now();
    if let Some(token) = bearer(headers) {
        if !token.starts_with(API_TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let hash = secret_hash(token);
        let user = state.auth_db.auth().token_user(hash, now).await?;
        return Ok(user.map(|user| Principal {
            user,
            via: Via::ApiToken,
        }));
    }
    if let Some(cookie) = session_cookie(headers) {
        if cookie.len() > 128 {
            return Ok(None);
        }
        let hash = secret_hash(cookie);
        let user = state.auth_db.auth().session_user(hash, now).await?;
        return Ok(user.map(|user| Principal {
            user,
            via: Via::Session,
        }));
    }
    Ok(None)
}

/// Whether a matched route is on the allow-list.
pub fn is_public(method: &Method, route: &str) -> bool {
    PUBLIC_ROUTES
        .iter()
        .any(|(m, r)| m == method && *r == route)
}

/// The router-wide authentication layer.
pub async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // CSRF first, before any credential is looked up: a request that a browser may have sent
    // on its own (a session cookie, no Authorization header) and that changes something must
    // come from apid's own origin. Logging in with a cookie left over is checked too, which
    // also stops a cross-origin page from logging the browser into another account.
    if crate::csrf::changes_state(req.method())
        && bearer(req.headers()).is_none()
        && (session_cookie(req.headers()).is_some() || req.headers().contains_key(header::ORIGIN))
    {
        check_same_origin(&state, &req)?;
    }
    let public = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| is_public(req.method(), p.as_str()));
    if public {
        return Ok(next.run(req).await);
    }
    match authenticate(&state, req.headers()).await? {
        Some(p) => {
            req.extensions_mut().insert(p);
            Ok(next.run(req).await)
        }
        None => Err(ApiError::Unauthorized),
    }
}

/// The client's address for limits and logs: the connection's peer, or, when the peer is one
/// of `[apid] trusted_proxies`, the client its `X-Forwarded-For` names (see
/// [`crate::throttle::client_addr`]).
pub fn client_addr(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    crate::throttle::client_addr(peer, headers, &state.config.trusted_proxies)
}

/// Refuses a state-changing request authenticated by a session cookie unless it provably
/// comes from apid's own origin ([`crate::csrf`]).
fn check_same_origin(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let via_proxy = peer.is_some_and(|p| state.config.trusted_proxies.contains(p));
    let forwarded = |name: &str| {
        via_proxy
            .then(|| headers.get(name)?.to_str().ok())
            .flatten()
            .map(|v| v.split(',').next().unwrap_or(v).trim())
    };
    let scheme = if req.extensions().get::<dragonfly_http::Secure>().is_some() {
        "https"
    } else {
        match forwarded("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        }
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| headers.get(header::HOST)?.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    crate::csrf::check(headers, scheme, host).map_err(|why| {
        tracing::warn!(
            method = %req.method(),
            path = %req.uri().path(),
            origin = ?headers.get(header::ORIGIN),
            reason = %why,
            "cross-origin request with a session cookie refused"
        );
        ApiError::Forbidden("cross-origin request refused")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, ha) = new_secret(API_TOKEN_PREFIX);
        let (b, _) = new_secret(API_TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("dft_") && a.len() == 4 + 43);
        assert_eq!(secret_hash(&a), ha);
    }

    #[test]
    fn reads_bearer_and_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer dft_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("dft_abc"));
        assert_eq!(boot_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer dfb1.x.y".parse().unwrap());
        assert_eq!(boot_token(&h), Some("dfb1.x.y"));
        h.insert(
            header::COOKIE,
            "a=b; dragonfly_session=s3cret; c=d".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some("s3cret"));
    }
}
