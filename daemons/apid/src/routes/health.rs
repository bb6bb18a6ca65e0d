//! Liveness for load balancers and the run script.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: &'static str,
    /// The store's schema version.
    pub schema_version: i64,
    /// `connected`, `disconnected` or `disabled`.
    pub bus: &'static str,
}

/// Reports that apid is up and whether it is connected to NATS. Needs no credentials.
#[utoipa::path(get, path = "/api/health", tag = "system",
    responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let bus = match &state.bus {
        None => "disabled",
        Some(b) => match *b.connection_events().borrow() {
            dragonfly_bus::ConnectionState::Connected => "connected",
            _ => "disconnected",
        },
    };
    Json(Health {
        status: "ok",
        schema_version: dragonfly_store::SCHEMA_VERSION,
        bus,
    })
}
