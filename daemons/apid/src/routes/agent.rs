//! `/api/agent/*`: what a booted agent may ask, authenticated by its per-boot token only.
//!
//! The agent cannot read the inventory (that is operators' data); it may only ask what the
//! server wants from the one machine its token names. Polling this is how an operator's OS
//! assignment reaches a machine waiting in discovery within seconds. The bodies are
//! [`dragonfly_core::agent_api`]'s, which the agent parses: never a copy of them here.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::StatusCode;
use dragonfly_core::agent_api::{self, AgentLog, Instructions};
use dragonfly_core::boot::{self, BootView};
use dragonfly_core::{MacAddr, boot_token};
use dragonfly_runtime::cli::Chain;
use serde::Serialize;
use utoipa::ToSchema;

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
        boot_token::verify(state.boot_token_key.expose(), token, jiff::Timestamp::now())
            .map(|claims| Agent(claims.mac))
            .map_err(|e| {
                tracing::info!(error = %Chain(&e), "agent request refused");
                ApiError::Unauthorized
            })
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
    }));
    Ok(ApiJson(Instructions {
        machine_id: info.id,
        name: info.name,
        state: info.state,
        fate,
        poll_after_seconds: POLL_AFTER_SECONDS,
    }))
}

/// Lines kept per machine (the newest).
pub const LINES_KEPT: usize = 500;
/// Machines whose lines are kept; beyond it the quietest machine's lines are dropped.
pub const MACHINES_KEPT: usize = 10_000;

/// The agents' recent console lines, per machine, in memory.
///
/// They also go to apid's own log (the journal) with the machine's name, which is where they
/// persist; this buffer lets an operator read a booting machine's console through the API
/// without a crash cart. Bounded in lines per machine and in machines.
#[derive(Debug, Default)]
pub struct AgentLogs {
    by_machine: Mutex<HashMap<uuid::Uuid, VecDeque<LogLine>>>,
}

/// One line an agent said.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// When apid received it.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: jiff::Timestamp,
    pub line: String,
}

impl AgentLogs {
    fn push(&self, machine: uuid::Uuid, lines: Vec<String>, now: jiff::Timestamp) {
        let mut all = self.by_machine.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(&machine) && all.len() >= MACHINES_KEPT {
            let quietest = all
                .iter()
                .min_by_key(|(_, l)| l.back().map(|x| x.received_at))
                .map(|(k, _)| *k);
            if let Some(k) = quietest {
                all.remove(&k);
            }
        }
        let buf = all.entry(machine).or_default();
        for line in lines {
            if buf.len() == LINES_KEPT {
                buf.pop_front();
            }
            buf.push_back(LogLine {
                received_at: now,
                line,
            });
        }
    }

    /// The lines kept for `machine`, oldest first.
    pub fn get(&self, machine: uuid::Uuid) -> Vec<LogLine> {
        let all = self.by_machine.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&machine)
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Receives the agent's console lines: they go to apid's log with the machine's name and
/// into a per-machine buffer operators read with `GET /api/machines/{id}/agent-log`.
#[utoipa::path(post, path = agent_api::LOG_PATH, tag = "machines", request_body = AgentLog,
    security(("bootToken" = [])),
    responses((status = 204, description = "Stored"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn log(
    State(state): State<AppState>,
    Agent(mac): Agent,
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
    for line in &lines {
        tracing::info!(target: "agent", machine = %info.name, %mac, "{line}");
    }
    state
        .agent_logs
        .push(info.id.0, lines, jiff::Timestamp::now());
    Ok(StatusCode::NO_CONTENT)
}

/// The machine's agent's recent console lines (kept in memory, newest 500).
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
    Ok(ApiJson(state.agent_logs.get(m.id.0)))
}
