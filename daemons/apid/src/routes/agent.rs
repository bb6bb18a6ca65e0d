//! `/api/agent/*`: what a booted agent may ask, authenticated by its per-boot token only.
//!
//! The agent cannot read the inventory (that is operators' data); it may only ask what the
//! server wants from the one machine its token names. Polling this is how an operator's OS
//! assignment reaches a machine waiting in discovery within seconds.

use axum::extract::State;
use dragonfly_core::boot::{self, BootFate, BootView};
use dragonfly_core::{MacAddr, MachineState, boot_token};
use dragonfly_store::machines as repo;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth;
use crate::error::{ApiError, ApiJson, ErrorBody};

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
                tracing::info!(error = %e, "agent request refused");
                ApiError::Unauthorized
            })
    }
}

/// What the server wants from the machine now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instructions {
    #[schema(value_type = String, format = Uuid)]
    pub machine_id: uuid::Uuid,
    pub name: String,
    pub state: MachineState,
    /// `discovery` (stay and wait), `imaging` (boot into the workflow), or `localDisk`.
    pub fate: &'static str,
    /// Why discovery, when it is: `awaitingAssignment`, `awaitingWorkflow`, `heldAfterError`…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub workflow_id: Option<uuid::Uuid>,
    /// Ask again after this many seconds.
    pub poll_after_seconds: u32,
}

/// Tells the agent what to do next. 404 means the machine is unknown (never registered, or
/// deleted by an operator): register again.
#[utoipa::path(get, path = "/api/agent/instructions", tag = "machines",
    security(("bootToken" = [])),
    responses((status = 200, body = Instructions), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn instructions(
    State(state): State<AppState>,
    Agent(mac): Agent,
) -> Result<ApiJson<Instructions>, ApiError> {
    let info = state
        .db
        .run(move |c| repo::boot_info_by_mac(c, mac))
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    let fate = boot::decide(Some(BootView {
        state: info.state,
        workflow_id: info.workflow_id,
    }));
    let (fate_name, reason, workflow_id) = match fate {
        BootFate::Discovery { reason } => (
            "discovery",
            serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned)),
            None,
        ),
        BootFate::Imaging { workflow_id } => ("imaging", None, Some(workflow_id)),
        BootFate::LocalDisk => ("localDisk", None, None),
    };
    Ok(ApiJson(Instructions {
        machine_id: info.id.0,
        name: info.name,
        state: info.state,
        fate: fate_name,
        reason,
        workflow_id,
        poll_after_seconds: POLL_AFTER_SECONDS,
    }))
}
