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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
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
    (Method::GET, "/"),
    (Method::GET, "/ui/app.js"),
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

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
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
        let user = state.db.auth().token_user(hash, now).await?;
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
        let user = state.db.auth().session_user(hash, now).await?;
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

/// A per-client-address token bucket for login attempts.
///
/// IPv6 clients are keyed by their /64, since one host can trivially use many addresses in it.
/// The table is bounded: when it is full, buckets that have refilled completely (clients that
/// have gone quiet) are forgotten first, and if none have, the attempt is refused rather than
/// letting the table grow without bound.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

const MAX_TRACKED_CLIENTS: usize = 10_000;

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// Takes one attempt for `ip` at `now`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(ip);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED_CLIENTS {
            let cap = self.per_minute;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < cap
            });
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                return Err(Duration::from_secs(60));
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate)
            .min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// The client's address as the listener saw it.
pub fn client_ip(req_ext: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    req_ext.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
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

    #[test]
    fn rate_limit_refills_over_time() {
        let rl = RateLimiter::new(6);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(rl.check(ip, t0).is_ok());
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Another client is unaffected.
        assert!(rl.check("192.0.2.2".parse().unwrap(), t0).is_ok());
        // After 10 s one more attempt is allowed.
        assert!(rl.check(ip, t0 + Duration::from_secs(10)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let rl = RateLimiter::new(1);
        let t0 = Instant::now();
        assert!(rl.check("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(rl.check("2001:db8::2".parse().unwrap(), t0).is_err());
        assert!(rl.check("2001:db8:0:1::1".parse().unwrap(), t0).is_ok());
    }
}
