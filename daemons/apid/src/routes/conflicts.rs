//! `/api/conflicts`: hardware reports refused because they claimed another machine's identity.
//!
//! A report may describe only its reporter's machine (docs/security.md, "Agents: per-boot
//! tokens"): one that claims a MAC or an SMBIOS UUID owned by another machine is refused with
//! 409 and nothing of it written. That is either an attack (a token for one MAC trying to
//! rewrite or take over another machine) or real hardware moved between machines (a NIC or a
//! mainboard swapped): only an operator can tell, so each claim is kept, counted, and listed
//! here. Operators only; the agent never sees who owns what.

use axum::extract::State;
use dragonfly_core::{MacAddr, MachineId};
use dragonfly_store::machines::Conflict;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

/// What kind of identity a refused report claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConflictKind {
    Mac,
    SmbiosUuid,
}

/// One claim on another machine's identity, from refused reports.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityConflict {
    pub id: i64,
    pub kind: ConflictKind,
    /// The MAC address or SMBIOS UUID claimed.
    pub claimed: String,
    /// The MAC of the agent (its boot token) that claimed it.
    pub claimant_mac: MacAddr,
    /// The machine that owns what was claimed.
    pub owner_id: MachineId,
    #[schema(value_type = String, format = DateTime)]
    pub first_seen: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: jiff::Timestamp,
    /// How many refused reports made this claim.
    pub count: i64,
}

impl From<Conflict> for IdentityConflict {
    fn from(c: Conflict) -> Self {
        Self {
            id: c.id,
            kind: match c.kind {
                dragonfly_store::machines::ConflictKind::Mac => ConflictKind::Mac,
                dragonfly_store::machines::ConflictKind::SmbiosUuid => ConflictKind::SmbiosUuid,
            },
            claimed: c.claimed,
            claimant_mac: c.claimant_mac,
            owner_id: c.owner,
            first_seen: c.first_seen,
            last_seen: c.last_seen,
            count: c.count,
        }
    }
}

/// Query of `GET /api/conflicts`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// At most this many, 1–500 (default 100), the most recent first.
    pub limit: Option<usize>,
}

/// Lists identity conflicts: claims refused reports made on other machines' MACs and SMBIOS
/// UUIDs, the most recent first.
#[utoipa::path(get, path = "/api/conflicts", tag = "machines", params(ConflictQuery),
    responses((status = 200, body = Vec<IdentityConflict>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ConflictQuery>,
) -> Result<ApiJson<Vec<IdentityConflict>>, ApiError> {
    let limit = super::machines::page_size(q.limit)?;
    let items = state.db.machines().conflicts(limit).await?;
    Ok(ApiJson(items.into_iter().map(Into::into).collect()))
}

/// Identity conflicts naming this machine as the owner: refused reports that claimed its MACs
/// or SMBIOS UUID, the most recent first.
#[utoipa::path(get, path = "/api/machines/{id}/conflicts", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = Vec<IdentityConflict>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn of_machine(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Vec<IdentityConflict>>, ApiError> {
    if id.len() > 256 {
        return Err(ApiError::NotFound("machine"));
    }
    let m = state
        .db
        .machines()
        .get_by_id_or_name(&id)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    let items = state.db.machines().conflicts_of(m.id).await?;
    Ok(ApiJson(items.into_iter().map(Into::into).collect()))
}
