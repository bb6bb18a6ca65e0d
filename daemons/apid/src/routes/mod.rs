//! The HTTP routes. Each module owns one area; [`router_for`] assembles them for one
//! listener's [`Audience`] under one authentication layer and one body limit.
//!
//! Operators and agents are served apart (issue 8): the agents' listener, on the
//! provisioning network where anyone may be, serves only what an agent needs
//! ([`Audience::Agent`]); the operators' listener serves everything else, and registration
//! too, for an operator who registers a machine by hand. It answers 404 for the agent-only
//! routes and 403 to any request carrying a boot token, so a boot token works on the agents'
//! listener only. [`router`] has every route, for tests that play both sides on one address.

pub mod address;
pub mod agent;
pub mod bmc;
pub mod conflicts;
pub mod events;
pub mod health;
pub mod images;
pub mod machines;
pub mod power;
pub mod resources;
pub mod session;
pub mod ui;
pub mod users;
pub mod workflows;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dragonfly_core::agent_api;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::error::ApiError;
use crate::{AppState, auth};

/// Who a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The web UI and the whole API, registration by hand included; no agent-only route.
    Operator,
    /// Registration, instructions and console lines with a boot token, and health.
    Agent,
}

/// The routes of `audience`'s listener. Paths here and in the OpenAPI document must agree
/// (a test checks it, on [`router`]).
pub fn router_for(state: AppState, audience: Audience) -> Router {
    let routes = match audience {
        Audience::Operator => shared_routes()
            .merge(operator_routes())
            .layer(axum::middleware::from_fn(refuse_boot_tokens)),
        Audience::Agent => shared_routes().merge(agent_routes()),
    };
    finish(routes, state)
}

/// Every route, both audiences on one router.
pub fn router(state: AppState) -> Router {
    finish(
        shared_routes()
            .merge(operator_routes())
            .merge(agent_routes()),
        state,
    )
}

/// On both listeners: health, and registration (agents by boot token, operators by hand).
fn shared_routes() -> Router<AppState> {
    Router::new()
        .route("/api/health", get(health::health))
        .route(agent_api::REGISTER_PATH, post(machines::register))
}

/// What only agents call: on the agents' listener alone.
pub fn agent_routes() -> Router<AppState> {
    Router::new()
        .route(agent_api::INSTRUCTIONS_PATH, get(agent::instructions))
        .route(agent_api::LOG_PATH, post(agent::log))
        .route(agent_api::RENEW_PATH, post(agent::renew))
        .route(agent_api::WORKFLOW_PATH, get(workflows::next_step))
        .route(agent_api::REPORT_PATH, post(workflows::report))
}

/// What only operators call.
fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/api/openapi.json", get(crate::openapi::serve))
        .route("/api/events", get(events::events))
        .route("/api/auth/login", post(session::login))
        .route("/api/auth/logout", post(session::logout))
        .route("/api/auth/me", get(session::me))
        .route("/api/auth/password", post(users::change_password))
        .route("/api/users", get(users::list).post(users::create))
        .route("/api/users/{id}", axum::routing::patch(users::patch))
        .route("/api/users/{id}/revoke", post(users::revoke))
        .route(
            "/api/tokens",
            get(session::list_tokens).post(session::create_token),
        )
        .route(
            "/api/tokens/{id}",
            axum::routing::delete(session::delete_token),
        )
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
        .route(
            "/apis/dragonfly.computer/v1/templates",
            get(workflows::list_templates).post(workflows::create_template),
        )
        .route(
            "/apis/dragonfly.computer/v1/templates/{name}",
            get(workflows::get_template)
                .put(workflows::replace_template)
                .delete(workflows::delete_template),
        )
        .route(
            "/apis/dragonfly.computer/v1/images",
            get(images::list_images).post(images::create_image),
        )
        .route(
            "/apis/dragonfly.computer/v1/images/{name}",
            get(images::get_image).delete(images::delete_image),
        )
        .route(
            "/apis/dragonfly.computer/v1/workflows",
            get(workflows::list_workflows),
        )
        .route(
            "/apis/dragonfly.computer/v1/workflows/{name}",
            get(workflows::get_workflow),
        )
        .route(
            "/api/machines/{id}/bmc",
            get(bmc::get).put(bmc::put).delete(bmc::delete),
        )
        .route(
            "/api/machines/{id}/address",
            get(address::get).put(address::put).delete(address::delete),
        )
        .route("/api/machines/{id}/power", post(power::power))
        .route("/api/power", post(power::bulk))
        .route("/api/machines/{id}/provision", post(workflows::provision))
        .route("/api/workflows/{id}/progress", get(workflows::progress))
        .route("/api/workflows/{id}/cancel", post(workflows::cancel))
        .route("/api/workflows/{id}/retry", post(workflows::retry))
}

/// The layers every listener has: 404 for other paths, operator authentication, the body
/// limit and request tracing.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let limit = state.config.http.max_body_bytes;
    routes
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer(DefaultBodyLimit::max(limit))
        // A 5xx is logged by `ApiError` where it is a failure (500, with its cause chain);
        // the 503s of a login flood are answers, not one ERROR line each.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// On the operators' listener a boot token is refused whatever the route: a token leaked
/// from the provisioning network must not reach the operators' side.
async fn refuse_boot_tokens(request: Request, next: Next) -> Response {
    if auth::boot_token(request.headers()).is_some() {
        return ApiError::Forbidden("boot tokens are accepted on apid's agent listener only")
            .into_response();
    }
    next.run(request).await
}
