//! `/api/agent/*`: what a booted agent may ask, authenticated by its per-boot token only.
//!
//! The agent cannot read the inventory (that is operators' data); it may only ask what the
//! server wants from the one machine its token names. A token counts only while it belongs to
//! its MAC's current boot session (the store's `boot_sessions`, opened by ipxed when it minted
//! the token): a token of an earlier boot, or of a machine that reached `Ready`, is refused
//! even though its signature and expiry are good. Tokens live minutes; the agent renews its
//! token within the session ([`renew`]). Polling this is how an operator's OS
//! assignment reaches a machine waiting in discovery within seconds. The bodies are
//! [`dragonfly_core::agent_api`]'s, which the agent parses: never a copy of them here.

use axum::extract::State;
use axum::http::StatusCode;
use dragonfly_core::agent_api::{self, AgentLog, Instructions, RenewedToken};
use dragonfly_core::boot::{self, BootView};
use dragonfly_core::{MacAddr, boot_token};
use dragonfly_runtime::cli::Chain;
use dragonfly_store::boot::BootSession;

use crate::AppState;
use crate::auth;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use axum::Extension;

/// How long an agent should wait before asking again.
pub const POLL_AFTER_SECONDS: u32 = 10;

/// The MAC named by a valid boot token in `Authorization: Bearer dfb1.…`.
#[derive(Debug, Clone, Copy)]
pub struct Agent(pub MacAddr);

impl axum::extract::FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let token = auth::boot_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        verify(state, token)
            .await
            .map(|(claims, _)| Agent(claims.mac))
    }
}

/// Why an agent's token was refused, for apid's log (the agent is told only 401).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Token(#[from] boot_token::TokenError),
    #[error("no boot session for this MAC (never minted, or forgotten)")]
    NoSession,
    #[error("the token belongs to another boot of this MAC, or its session is over")]
    NotCurrent,
}

/// Checks a boot token's signature and expiry only (no store access): what the registration
/// extractor checks before the body; its session is checked with the write.
pub fn verify_signature(state: &AppState, token: &str) -> Result<boot_token::BootClaims, ApiError> {
    boot_token::verify(state.boot_token_key.expose(), token, jiff::Timestamp::now()).map_err(|e| {
        tracing::info!(error = %Chain(&e), "agent token refused");
        ApiError::Unauthorized
    })
}

/// Checks a boot token: its signature and expiry, then that it belongs to its MAC's current,
/// unrevoked and unexpired boot session. Returns the claims and that session.
pub async fn verify(
    state: &AppState,
    token: &str,
) -> Result<(boot_token::BootClaims, BootSession), ApiError> {
    let now = jiff::Timestamp::now();
    let refuse = |e: Refused, mac: Option<MacAddr>| {
        tracing::info!(mac = ?mac.map(|m| m.to_string()), error = %Chain(&e), "agent token refused");
        ApiError::Unauthorized
    };
    let claims = boot_token::verify(state.boot_token_key.expose(), token, now)
        .map_err(|e| refuse(e.into(), None))?;
    let session = state
        .db
        .boot()
        .session(claims.mac)
        .await?
        .ok_or_else(|| refuse(Refused::NoSession, Some(claims.mac)))?;
    if !session.admits(&claims.nonce, now) {
        return Err(refuse(Refused::NotCurrent, Some(claims.mac)));
    }
    Ok((claims, session))
}

/// A fresh token for the same boot: the same MAC and nonce, a new expiry (`[apid]
/// agent_token_ttl` from now, never past the session's end). The running agent calls this
/// before its token expires; a token whose boot is over cannot be renewed.
#[utoipa::path(post, path = agent_api::RENEW_PATH, tag = "machines",
    security(("bootToken" = [])),
    responses((status = 200, body = RenewedToken), (status = 401, body = ErrorBody)))]
pub async fn renew(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let token = auth::boot_token(&headers).ok_or(ApiError::Unauthorized)?;
    let (claims, session) = verify(&state, token).await?;
    let now = jiff::Timestamp::now();
    let ttl = jiff::SignedDuration::try_from(state.config.agent_token_ttl)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let expires = now
        .checked_add(ttl)
        .map_err(|e| ApiError::Internal(e.into()))?
        .min(session.expires_at);
    let token = boot_token::mint(
        state.boot_token_key.expose(),
        &boot_token::BootClaims { expires, ..claims },
    )
    .map_err(|e| ApiError::Internal(e.into()))?;
    let expires_in_seconds = expires.duration_since(now).as_secs().max(0).unsigned_abs();
    tracing::debug!(mac = %claims.mac, expires_in_seconds, "agent token renewed");
    Ok((
        [(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        )],
        ApiJson(RenewedToken {
            token,
            expires_in_seconds,
            // A third of the lifetime: two more chances before it expires.
            renew_after_seconds: (expires_in_seconds / 3).max(1),
        }),
    ))
}

/// An agent that may send console lines now: its token is valid and its MAC is within
/// `[apid] agent_log_requests_per_minute`. An extractor, so the check runs before the body is
/// read and parsed: a refused flood costs a table look-up per request, not a JSON parse.
#[derive(Debug, Clone, Copy)]
pub struct LoggingAgent(pub MacAddr);

impl axum::extract::FromRequestParts<AppState> for LoggingAgent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let Agent(mac) = Agent::from_request_parts(parts, state).await?;
        state
            .agent_logs
            .admit(mac, std::time::Instant::now())
            .map_err(|wait| ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            })?;
        Ok(Self(mac))
    }
}

/// Tells the agent what to do next. 404 means the machine is unknown (never registered, or
/// deleted by an operator): register again.
#[utoipa::path(get, path = agent_api::INSTRUCTIONS_PATH, tag = "machines",
    security(("bootToken" = [])),
    responses((status = 200, body = Instructions), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn instructions(
    State(state): State<AppState>,
    Agent(mac): Agent,
) -> Result<ApiJson<Instructions>, ApiError> {
    let info = state
        .db
        .machines()
        .boot_info(mac)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    let fate = boot::decide(Some(BootView {
        state: info.state,
        workflow_id: info.workflow_id,
        workflow_state: info.workflow_state,
        installed: info.installed,
    }));
    Ok(ApiJson(Instructions {
        machine_id: info.id,
        name: info.name,
        state: info.state,
        fate,
        poll_after_seconds: POLL_AFTER_SECONDS,
    }))
}

pub use crate::agent_logs::{AgentLogs, LogLine};

/// Receives the agent's console lines: they are kept in the store (so they outlive apid),
/// per machine, within byte budgets, for `GET /api/machines/{id}/agent-log`, and a sample of
/// them goes to apid's log with the machine's name. A token sending too often is told 429
/// with `Retry-After`.
#[utoipa::path(post, path = agent_api::LOG_PATH, tag = "machines", request_body = AgentLog,
    security(("bootToken" = [])),
    responses((status = 204, description = "Stored"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn log(
    State(state): State<AppState>,
    LoggingAgent(mac): LoggingAgent,
    ApiJson(body): ApiJson<AgentLog>,
) -> Result<StatusCode, ApiError> {
    if body.lines.len() > AgentLog::MAX_LINES {
        return Err(ApiError::Unprocessable(format!(
            "lines: at most {} per request",
            AgentLog::MAX_LINES
        )));
    }
    let info = state
        .db
        .machines()
        .boot_info(mac)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    let lines: Vec<String> = body
        .lines
        .into_iter()
        .map(|l| {
            // Control characters (escape sequences) never reach a terminal reading the log.
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .take(AgentLog::MAX_LINE_CHARS)
                .collect()
        })
        .collect();
    let journal = state
        .agent_logs
        .journal(info.id.0, &lines, std::time::Instant::now());
    state
        .db
        .console()
        .append(
            info.id,
            lines,
            jiff::Timestamp::now(),
            state.agent_logs.limits().budget(),
        )
        .await?;
    if journal.suppressed_before > 0 {
        tracing::info!(target: "agent", machine = %info.name, %mac,
            suppressed = journal.suppressed_before,
            "agent lines of the last minute not logged here (over the sampling limit)");
    }
    if journal.suppressed_total_before > 0 {
        tracing::info!(target: "agent", suppressed = journal.suppressed_total_before,
            "agent lines of the last minute not logged here (over the total sampling limit)");
    }
    for line in &journal.lines {
        tracing::info!(target: "agent", machine = %info.name, %mac, "{line}");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The machine's agent's recent console lines: those kept in the store, oldest first (the
/// newest that fit its budget, `[apid] agent_log_bytes_per_machine`; they survive apid
/// restarting).
#[utoipa::path(get, path = "/api/machines/{id}/agent-log", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = Vec<LogLine>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn read_log(
    State(state): State<AppState>,
    Extension(_who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Vec<LogLine>>, ApiError> {
    if id.len() > 256 {
        return Err(ApiError::NotFound("machine"));
    }
    let m = state
        .db
        .machines()
        .get_by_id_or_name(&id)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    // Everything kept: the per-machine budget bounds it.
    let lines = state.db.console().tail(m.id, usize::MAX).await?;
    Ok(ApiJson(lines.into_iter().map(LogLine::from).collect()))
}
