//! The HTTP routes. Each module owns one area; [`router`] assembles them under one
//! authentication layer and one body limit.

pub mod agent;
pub mod conflicts;
pub mod health;
pub mod machines;
pub mod resources;
pub mod session;
pub mod ui;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use dragonfly_core::agent_api;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::{AppState, auth};

/// All routes. Paths here and in the OpenAPI document must agree (a test checks it).
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/api/health", get(health::health))
        .route("/api/openapi.json", get(crate::openapi::serve))
        .route("/api/auth/login", post(session::login))
        .route("/api/auth/logout", post(session::logout))
        .route("/api/auth/me", get(session::me))
        .route(
            "/api/tokens",
            get(session::list_tokens).post(session::create_token),
        )
        .route(
            "/api/tokens/{id}",
            axum::routing::delete(session::delete_token),
        )
        .route(agent_api::REGISTER_PATH, post(machines::register))
        .route(agent_api::INSTRUCTIONS_PATH, get(agent::instructions))
        .route(agent_api::LOG_PATH, post(agent::log))
        .route(agent_api::RENEW_PATH, post(agent::renew))
        .route("/api/machines/{id}/agent-log", get(agent::read_log))
        .route("/api/machines", get(machines::list))
        .route("/api/conflicts", get(conflicts::list))
        .route("/api/machines/{id}/conflicts", get(conflicts::of_machine))
        .route("/api/machines/{id}/approve", post(machines::approve))
        .route(
            "/api/machines/{id}",
            get(machines::get)
                .patch(machines::patch)
                .delete(machines::delete),
        )
        .route(
            "/apis/dragonfly.computer/v1/hardware",
            get(resources::list_hardware),
        )
        .route(
            "/apis/dragonfly.computer/v1/hardware/{name}",
            get(resources::get_hardware),
        )
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
