//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! It is served at `/api/openapi.json` and kept as a golden file
//! (`tests/fixtures/openapi.json`): an API change shows up as a reviewed diff, and the
//! authentication test walks every path in it.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    address, agent, bmc, conflicts, events, health, images, machines, power, resources, session,
    users, workflows,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dragonfly API", description = "Bare-metal provisioning: machines, resources, operators and agent registration."),
    paths(
        health::health,
        serve,
        session::login, session::logout, session::me,
        session::create_token, session::list_tokens, session::delete_token,
        users::change_password, users::list, users::create, users::patch, users::revoke,
        machines::register, agent::instructions, agent::log, agent::renew, agent::read_log, machines::list, machines::get, machines::patch, machines::delete,
        machines::approve, conflicts::list, conflicts::of_machine,
        resources::list_hardware, resources::get_hardware,
        images::list_images, images::create_image, images::get_image, images::delete_image,
        workflows::list_templates, workflows::create_template, workflows::get_template,
        workflows::replace_template, workflows::delete_template,
        workflows::list_workflows, workflows::get_workflow,
        workflows::provision, workflows::progress, workflows::cancel, workflows::retry,
        workflows::next_step, workflows::report,
        bmc::put, bmc::get, bmc::delete, power::power, power::bulk,
        address::put, address::get, address::delete,
        events::events,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "machines", description = "The machine inventory and agent registration"),
        (name = "resources", description = "The inventory as dragonfly.computer/v1 documents"),
        (name = "auth", description = "Operator sessions and API tokens"),
        (name = "users", description = "Operator accounts (administrators only)"),
        (name = "system", description = "Health and API description"),
        (name = "workflows", description = "Provisioning: assignment, progress, cancel and retry"),
        (name = "power", description = "Machines' BMCs and power commands (carried out by bmcd)"),
        (name = "events", description = "The bus, live: Server-Sent Events for the web UI and scripts"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (dft_…) created with POST /api/tokens"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
        c.add_security_scheme(
            "bootToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The per-boot agent token (dfb1.…) from the agent's kernel command line",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON text (stable: used for the golden file).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Serves this API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
