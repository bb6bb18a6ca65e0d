//! `/api/machines/{id}/address`: the IPv4 address reserved for a machine, which dhcpd hands
//! to it (reservation mode) and the metadata service's network-config names.
//!
//! The checks that need the store's current state (the address is in a subnet dhcpd serves,
//! not its network, broadcast or router address, not reserved by dhcpd's file or another
//! machine, not leased to another client) run in the store's write transaction
//! (`dragonfly_store::reservations`), so two operators cannot both reserve one address; this
//! module maps their refusals to 422 (the request cannot be right) or 409 (it collides with
//! what exists), and tells dhcpd with `dragonfly.reservation.changed` after the commit.

use std::net::Ipv4Addr;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use dragonfly_bus::events::ReservationChanged;
use dragonfly_core::MacAddr;
use dragonfly_store::reservations::Reservation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::routes::machines::find;

/// A reservation to make or move.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressRequest {
    /// The IPv4 address, in a subnet dhcpd serves.
    #[schema(value_type = String, example = "10.99.0.20")]
    pub ip: String,
    /// Which of the machine's MAC addresses gets it; required when it has more than one.
    #[schema(value_type = Option<String>, example = "52:54:00:12:34:56")]
    pub mac: Option<String>,
    /// The reservation's version this change is based on (0: none yet); a stale one is 409.
    pub resource_version: Option<i64>,
}

/// A machine's reserved address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    #[schema(value_type = String)]
    pub mac: MacAddr,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
    pub resource_version: i64,
}

impl From<Reservation> for AddressView {
    fn from(r: Reservation) -> Self {
        Self {
            ip: r.ip,
            mac: r.mac,
            created_at: r.created_at,
            updated_at: r.updated_at,
            resource_version: r.resource_version,
        }
    }
}

/// Reserves (or moves) a machine's IPv4 address. 422 when the address cannot be right (in no
/// subnet dhcpd serves, its network/broadcast/router address, dhcpd in proxy mode, a MAC not
/// the machine's); 409 when it is taken (dhcpd's file, another machine, another client's
/// lease) or `resourceVersion` is stale. dhcpd serves it from the machine's next DHCP
/// exchange, without a restart.
#[utoipa::path(put, path = "/api/machines/{id}/address", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    request_body = AddressRequest,
    responses((status = 200, body = AddressView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AddressRequest>,
) -> Result<ApiJson<AddressView>, ApiError> {
    let ip: Ipv4Addr = body.ip.trim().parse().map_err(|_| {
        ApiError::Unprocessable(format!("ip: {:?} is not an IPv4 address", body.ip))
    })?;
    let m = find(&state, id).await?;
    let mac = match &body.mac {
        Some(s) => s
            .parse::<MacAddr>()
            .map_err(|e| ApiError::Unprocessable(format!("mac: {e}")))?,
        None => match m.hardware.macs.as_slice() {
            [one] => *one,
            macs => {
                return Err(ApiError::Unprocessable(format!(
                    "mac: the machine has {} MAC addresses; say which one gets the address",
                    macs.len()
                )));
            }
        },
    };
    let reserved = state
        .db
        .reservations()
        .reserve(m.id, mac, ip, body.resource_version, jiff::Timestamp::now())
        .await?;
    let r = match reserved {
        Ok(r) => r,
        Err(refusal) if refusal.is_conflict() => {
            return Err(ApiError::Conflict(refusal.to_string()));
        }
        Err(refusal) => return Err(ApiError::Unprocessable(refusal.to_string())),
    };
    tracing::info!(machine = %m.name, by = %who.user.username, %ip, %mac, "address reserved");
    state.events.publish(&ReservationChanged {
        machine_id: m.id,
        mac,
        ip: Some(ip),
    });
    Ok(ApiJson(r.into()))
}

/// A machine's reserved address; 404 when it has none.
#[utoipa::path(get, path = "/api/machines/{id}/address", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = AddressView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<AddressView>, ApiError> {
    let m = find(&state, id).await?;
    let r = state
        .db
        .reservations()
        .get(m.id)
        .await?
        .ok_or(ApiError::Absent("the machine has no reserved address"))?;
    Ok(ApiJson(r.into()))
}

/// Releases a machine's reserved address: dhcpd stops reserving it (a lease it holds runs
/// out as usual). 404 when it had none.
#[utoipa::path(delete, path = "/api/machines/{id}/address", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 204, description = "Released"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let m = find(&state, id).await?;
    let Some(r) = state.db.reservations().get(m.id).await? else {
        return Err(ApiError::Absent("the machine has no reserved address"));
    };
    if !state.db.reservations().release(m.id).await? {
        return Err(ApiError::Absent("the machine has no reserved address"));
    }
    tracing::info!(machine = %m.name, by = %who.user.username, ip = %r.ip, "address released");
    state.events.publish(&ReservationChanged {
        machine_id: m.id,
        mac: r.mac,
        ip: None,
    });
    Ok(StatusCode::NO_CONTENT)
}
