//! Provisioning: templates, assignment (`provision`), workflows, and the agent's side of a
//! workflow (the next action, reports).
//!
//! apid never changes a workflow's state: it creates workflows, records what it *served* an
//! agent and an operator's request (cancel, retry), and appends the agent's reports durably
//! before answering 202. workflowd applies them (docs/architecture.md, "The report path").
//! Templates are checked when written (typed actions, `validate()`, and every `{{variable}}`
//! of a writefile's contents or a kexec command line must be one apid knows), so a bad template
//! never fails half-way through an install.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dragonfly_core::agent_api::{self, ActionReport, ReportEvent, ServedAction, WorkflowStep};
use dragonfly_core::resource::{self, ObjectMeta, TEMPLATE};
use dragonfly_core::template::{Action, ActionSpec, TemplateSpec};
use dragonfly_core::workflow::{ActionStatus, Request, Workflow, WorkflowSpec, WorkflowStatus};
use dragonfly_core::{Machine, MachineState};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::routes::agent::Agent;
use crate::routes::resources::{ListMeta, render};

/// Template variables apid knows; `values.*` are the assignment's own.
pub const VARIABLES: &[&str] = &[
    "machine",
    "hostname",
    "mac",
    "macs",
    "ip",
    "labels",
    "sshKeys",
    "values",
    "metadataUrl",
    "networkConfig",
];

/// Default per-action timeout when the template gives none.
pub const ACTION_TIMEOUT_SECONDS: u32 = 1800;
/// Default timeout of a whole workflow.
pub const WORKFLOW_TIMEOUT_SECONDS: u32 = 4 * 3600;
/// How often the agent asks for its next action while it has none.
pub const WORKFLOW_POLL_SECONDS: u32 = 5;

fn hb() -> handlebars::Handlebars<'static> {
    let mut h = handlebars::Handlebars::new();
    h.set_strict_mode(true);
    h.register_escape_fn(handlebars::no_escape);
    h
}

/// The texts of an action that are rendered per machine.
fn rendered_fields(a: &mut Action) -> Vec<&mut String> {
    match a {
        Action::Writefile {
            contents: Some(c), ..
        } => vec![c],
        Action::Kexec { cmdline, .. } => vec![cmdline],
        Action::Cloudinit { user_data } => vec![user_data],
        _ => vec![],
    }
}

/// The root names of the `{{…}}` expressions of a text (`{{values.hostname}}` → `values`).
fn roots(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find("}}") else { break };
        let expr = rest[..end].trim_start_matches(['{', '~', '&']).trim();
        rest = &rest[end..];
        // `{{#each macs}}`: a helper, then its argument.
        let mut words = expr.split_whitespace();
        let Some(first) = words.next() else { continue };
        let word = if first.starts_with('#') {
            words.next().unwrap_or("")
        } else if first.starts_with('/') || first.starts_with('!') || first == "else" {
            continue;
        } else {
            first
        };
        let root = word
            .trim_start_matches("this.")
            .split(['.', '[', '/'])
            .next()
            .unwrap_or("");
        if !root.is_empty() && !root.starts_with('@') && root != "this" {
            out.insert(root.to_owned());
        }
    }
    out
}

/// Checks a template as apid stores it: the spec's own rules, then its variables.
fn check_template(spec: &TemplateSpec) -> Result<(), ApiError> {
    spec.validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let mut spec = spec.clone();
    let h = hb();
    for a in &mut spec.actions {
        let name = a.name.clone();
        for text in rendered_fields(&mut a.action) {
            // Rendered with nothing: a missing variable is expected here, a syntax error is not.
            if let Err(e) = h.render_template(text, &serde_json::json!({}))
                && !matches!(
                    e.reason(),
                    handlebars::RenderErrorReason::MissingVariable(_)
                )
            {
                return Err(ApiError::Unprocessable(format!(
                    "action {name:?}: the template text does not parse: {e}"
                )));
            }
            let unknown: Vec<String> = roots(text)
                .into_iter()
                .filter(|r| !VARIABLES.contains(&r.as_str()))
                .collect();
            if !unknown.is_empty() {
                return Err(ApiError::Unprocessable(format!(
                    "action {name:?}: unknown template variable(s) {}; known: {}",
                    unknown.join(", "),
                    VARIABLES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Renders a template's actions for a machine (handlebars, strict: a missing value is 422
/// naming it).
fn render_actions(
    spec: &TemplateSpec,
    machine: &Machine,
    values: &serde_json::Map<String, serde_json::Value>,
    leased: Option<std::net::Ipv4Addr>,
    metadata_url: Option<String>,
    network_config: &serde_json::Value,
) -> Result<Vec<ActionSpec>, ApiError> {
    let macs: Vec<String> = machine.macs().iter().map(ToString::to_string).collect();
    let hostname = values
        .get("hostname")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| machine.hostname.clone())
        .unwrap_or_else(|| machine.name.to_lowercase());
    let mut ctx = serde_json::json!({
        "machine": {"id": machine.id.0.to_string(), "name": machine.name},
        "hostname": hostname,
        "macs": macs,
        "labels": machine.labels,
        "values": values,
    });
    if let Some(m) = macs.first() {
        ctx["mac"] = m.clone().into();
    }
    if let Some(keys) = values.get("sshKeys") {
        ctx["sshKeys"] = keys.clone();
    }
    // The address given at assignment, else the one dhcpd leased to the boot MAC.
    if let Some(ip) = values.get("ip") {
        ctx["ip"] = ip.clone();
    } else if let Some(ip) = leased {
        ctx["ip"] = ip.to_string().into();
    }
    if let Some(url) = metadata_url {
        ctx["metadataUrl"] = url.into();
    }
    // On one line: JSON is YAML in flow style, so `network: {{networkConfig}}` is valid in a
    // cloud-init configuration file whatever the indentation around it.
    ctx["networkConfig"] = network_config.to_string().into();
    let h = hb();
    let mut out = spec.actions.clone();
    // Per machine: `values.userData` replaces the template's user-data (rendered the same way).
    if let Some(ud) = values.get("userData") {
        let Some(ud) = ud.as_str() else {
            return Err(ApiError::Unprocessable(
                "values.userData: must be a string (#cloud-config YAML)".into(),
            ));
        };
        let Some(Action::Cloudinit { user_data }) = out.last_mut().map(|a| &mut a.action) else {
            return Err(ApiError::Unprocessable(
                "values.userData: the template has no cloudinit action to give it to".into(),
            ));
        };
        ud.clone_into(user_data);
    }
    for a in &mut out {
        let name = a.name.clone();
        for text in rendered_fields(&mut a.action) {
            *text = h.render_template(text, &ctx).map_err(|e| {
                let what = match e.reason() {
                    handlebars::RenderErrorReason::MissingVariable(Some(v))
                        if v == "metadataUrl" =>
                    {
                        "missing value \"metadataUrl\": apid has no [apid] metadata_url \
                         (the metadata service's URL as installed machines reach it)"
                            .to_owned()
                    }
                    handlebars::RenderErrorReason::MissingVariable(Some(v)) => {
                        format!("missing value {v:?}")
                    }
                    _ => e.to_string(),
                };
                ApiError::Unprocessable(format!("action {name:?}: {what}"))
            })?;
        }
        if let Action::Cloudinit { user_data } = &a.action {
            dragonfly_core::template::check_cloud_config(user_data).map_err(|e| {
                ApiError::Unprocessable(format!("action {name:?}: the rendered userData {e}"))
            })?;
        }
    }
    Ok(out)
}

/// Replaces each `image2disk` that names a library image by the image's URL, checksum and
/// compression (see [`dragonfly_core::image::resolve`]): 422 when the image is missing or not
/// ready, or is local and apid has no `images_url`.
async fn resolve_images(state: &AppState, actions: &mut [ActionSpec]) -> Result<(), ApiError> {
    for a in actions {
        let Action::Image2disk {
            image: Some(name), ..
        } = &a.action
        else {
            continue;
        };
        let name = name.clone();
        let image = state.db.images().get(&name).await?.ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "action {:?}: no image {name:?} in the library",
                a.name
            ))
        })?;
        dragonfly_core::image::resolve(
            &mut a.action,
            &name,
            &image.spec,
            &image.status,
            state.config.images_url.as_deref(),
        )
        .map_err(|e| ApiError::Unprocessable(format!("action {:?}: {e}", a.name)))?;
    }
    Ok(())
}

/// Parses a request body as JSON or, by its Content-Type, YAML.
pub(crate) fn parse_doc<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    match ct {
        "application/json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid document: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid document: {e}"))),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

fn template_doc(t: &dragonfly_store::workflows::Template) -> resource::Template {
    resource::Template::new(
        TEMPLATE,
        ObjectMeta {
            name: t.name.clone(),
            uid: None,
            labels: Default::default(),
            annotations: Default::default(),
            creation_timestamp: Some(t.created_at),
            resource_version: Some(t.resource_version.to_string()),
        },
        t.spec.clone(),
        None,
    )
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(
            "metadata.name: 1–63 characters of a-z, 0-9, '-' and '.'".into(),
        ))
    }
}

fn parse_version(meta: &ObjectMeta) -> Result<Option<i64>, ApiError> {
    meta.resource_version
        .as_deref()
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::Unprocessable("metadata.resourceVersion: not a version".into())
            })
        })
        .transpose()
}

/// A list of resources.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    items: Vec<T>,
}

/// Lists templates (JSON, or YAML with `Accept: application/yaml`).
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/templates", tag = "resources",
    responses((status = 200, description = "A TemplateList", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody)))]
pub async fn list_templates(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = state.db.templates().list().await?;
    render(
        &headers,
        &List {
            api_version: resource::API_VERSION,
            kind: "TemplateList",
            metadata: ListMeta { continue_: None },
            items: items.iter().map(template_doc).collect(),
        },
    )
}

/// Creates a template from a `Template` document (JSON, or YAML by Content-Type); validated
/// before it is stored (422 says what and where).
#[utoipa::path(post, path = "/apis/dragonfly.computer/v1/templates", tag = "resources",
    request_body(content = Object, description = "A Template document", content_type = "application/json"),
    responses((status = 201, description = "The stored Template"),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_template(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let doc: resource::Template = parse_doc(&headers, &body)?;
    doc.check_type(TEMPLATE)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    check_name(&doc.metadata.name)?;
    check_template(&doc.spec)?;
    let t = state
        .db
        .templates()
        .create(doc.metadata.name, doc.spec, jiff::Timestamp::now())
        .await?;
    let mut r = render(&headers, &template_doc(&t))?;
    *r.status_mut() = StatusCode::CREATED;
    Ok(r)
}

/// Gets one template.
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/templates/{name}", tag = "resources",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "A Template document", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_template(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let t = state
        .db
        .templates()
        .get(&name)
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    render(&headers, &template_doc(&t))
}

/// Replaces a template (its `metadata.resourceVersion`, when given, must be current).
/// Running workflows keep the actions they were created with.
#[utoipa::path(put, path = "/apis/dragonfly.computer/v1/templates/{name}", tag = "resources",
    params(("name" = String, Path, description = "Template name")),
    request_body(content = Object, description = "A Template document", content_type = "application/json"),
    responses((status = 200, description = "The stored Template"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn replace_template(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let doc: resource::Template = parse_doc(&headers, &body)?;
    doc.check_type(TEMPLATE)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if doc.metadata.name != name {
        return Err(ApiError::Unprocessable(
            "metadata.name: must be the name in the path".into(),
        ));
    }
    check_template(&doc.spec)?;
    let version = parse_version(&doc.metadata)?;
    let t = state
        .db
        .templates()
        .replace(name, version, doc.spec, jiff::Timestamp::now())
        .await?;
    render(&headers, &template_doc(&t))
}

/// Deletes a template; 409 while an active workflow uses it.
#[utoipa::path(delete, path = "/apis/dragonfly.computer/v1/templates/{name}", tag = "resources",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_template(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.db.templates().delete(name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /api/machines/{id}/provision`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProvisionRequest {
    /// The template's name.
    pub template: String,
    /// Values for the template's variables (`{{values.x}}`; `hostname`, `sshKeys` and `ip`
    /// also set `{{hostname}}`, `{{sshKeys}}`, `{{ip}}`; without `ip`, `{{ip}}` is the
    /// address dhcpd leased to the machine's first MAC, if any).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub values: serde_json::Map<String, serde_json::Value>,
    /// Required to re-image a `Ready` machine (its disk is wiped).
    #[serde(default)]
    pub reimage: bool,
}

/// A workflow as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    pub name: String,
    #[schema(value_type = String, format = Uuid)]
    pub machine_id: uuid::Uuid,
    pub template: String,
    #[schema(value_type = String)]
    pub state: dragonfly_core::workflow::WorkflowState,
    pub attempt: u32,
    pub current_action: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub actions: Vec<ActionStatus>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl From<&Workflow> for WorkflowView {
    fn from(w: &Workflow) -> Self {
        Self {
            id: w.id,
            name: w.name.clone(),
            machine_id: w.machine_id.0,
            template: w.template.clone(),
            state: w.state,
            attempt: w.attempt,
            current_action: w.current_action,
            error: w.error.clone(),
            actions: w.status.clone(),
            created_at: w.created_at,
        }
    }
}

/// The answer to `POST /api/machines/{id}/provision`: the workflow, and what happens to the
/// machine's power.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provisioned {
    #[serde(flatten)]
    pub workflow: WorkflowView,
    /// Who powers the machine on: bmcd (the machine has a BMC: the power request was made
    /// with the workflow, in the same transaction) or the operator.
    pub power: String,
}

/// `power` when bmcd has a power request for the new workflow.
pub const POWER_BY_BMCD: &str = "bmcd sets next boot to the network and powers the machine on";
/// `power` when the machine has no BMC.
pub const POWER_BY_OPERATOR: &str =
    "no BMC configured: power the machine on (it boots from the network) yourself";

/// Assigns a template to a machine: renders its actions for the machine and creates a
/// Workflow (Pending), moving the machine to OsAssigned. 409 when the machine has an active
/// workflow, or is Ready without `reimage: true`; 422 for a missing template value. `power`
/// says whether bmcd powers the machine on (it has a BMC) or the operator must.
#[utoipa::path(post, path = "/api/machines/{id}/provision", tag = "workflows",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    request_body = ProvisionRequest,
    responses((status = 201, body = Provisioned), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn provision(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ProvisionRequest>,
) -> Result<(StatusCode, ApiJson<Provisioned>), ApiError> {
    let machine = state
        .db
        .machines()
        .get_by_id_or_name(&id)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    if machine.state == MachineState::Ready && !req.reimage {
        return Err(ApiError::Conflict(
            "the machine is Ready: re-imaging wipes its disk, so it needs \"reimage\": true".into(),
        ));
    }
    let template = state
        .db
        .templates()
        .get(&req.template)
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    let leased = match machine.macs().first() {
        Some(mac) => state
            .db
            .leases()
            .get_by_mac(*mac)
            .await?
            .filter(|l| l.state == dragonfly_store::leases::LeaseState::Bound)
            .map(|l| l.ip),
        None => None,
    };
    let now = jiff::Timestamp::now();
    // The workflow's id first: the metadata URL's secret is the install's (see
    // `dragonfly_core::metadata`).
    let mut wf = dragonfly_store::workflows::new_workflow(
        &machine,
        &template.name,
        template.spec.actions.clone(),
        req.values.clone(),
        ACTION_TIMEOUT_SECONDS,
        WORKFLOW_TIMEOUT_SECONDS,
        now,
    );
    let metadata_url = state.config.metadata_url.as_deref().map(|base| {
        dragonfly_core::metadata::datasource_url(
            base,
            state.boot_token_key.expose(),
            machine.id,
            wf.id,
        )
    });
    let fixed = state.db.reservations().fixed_address(machine.id).await?;
    let network = dragonfly_core::metadata::network_config(machine.macs(), fixed.as_ref());
    wf.actions = render_actions(
        &template.spec,
        &machine,
        &req.values,
        leased,
        metadata_url,
        &network,
    )?;
    resolve_images(&state, &mut wf.actions).await?;
    let (wf, _machine) = state
        .db
        .workflows()
        .create(wf, Some(machine.resource_version), now)
        .await?;
    state
        .events
        .publish(&dragonfly_bus::events::WorkflowCreated {
            workflow_id: wf.id,
            name: wf.name.clone(),
            machine_id: wf.machine_id,
            template: wf.template.clone(),
        });
    // The store made the power request in the workflow's transaction when the machine had a
    // BMC: the newest request naming this workflow is the truth, whatever changed since.
    let by_bmcd = state
        .db
        .bmcs()
        .requests_of(machine.id, 1)
        .await?
        .first()
        .is_some_and(|r| r.workflow_id == Some(wf.id));
    tracing::info!(workflow = %wf.name, machine = %machine.name, template = %wf.template, by_bmcd, "workflow created");
    let power = if by_bmcd {
        POWER_BY_BMCD
    } else {
        POWER_BY_OPERATOR
    };
    Ok((
        StatusCode::CREATED,
        ApiJson(Provisioned {
            workflow: WorkflowView::from(&wf),
            power: power.to_owned(),
        }),
    ))
}

fn workflow_doc(w: &Workflow) -> resource::Workflow {
    resource::Workflow::new(
        resource::WORKFLOW,
        ObjectMeta {
            name: w.name.clone(),
            uid: Some(w.id),
            labels: Default::default(),
            annotations: Default::default(),
            creation_timestamp: Some(w.created_at),
            resource_version: Some(w.resource_version.to_string()),
        },
        WorkflowSpec {
            hardware_ref: w.machine_id.0.to_string(),
            template_ref: w.template.clone(),
            timeout_seconds: Some(w.action_timeout_seconds),
        },
        Some(WorkflowStatus {
            state: w.state,
            current_action: Some(w.current_action as usize),
            actions: w.status.clone(),
            attempts: w.attempt,
        }),
    )
}

/// Lists workflows, newest first.
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/workflows", tag = "resources",
    responses((status = 200, description = "A WorkflowList", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody)))]
pub async fn list_workflows(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = state.db.workflows().list(500).await?;
    render(
        &headers,
        &List {
            api_version: resource::API_VERSION,
            kind: "WorkflowList",
            metadata: ListMeta { continue_: None },
            items: items.iter().map(workflow_doc).collect(),
        },
    )
}

/// Gets one workflow by name (or id).
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/workflows/{name}", tag = "resources",
    params(("name" = String, Path, description = "Workflow name (or id)")),
    responses((status = 200, description = "A Workflow document", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let w = find(&state, &name).await?;
    render(&headers, &workflow_doc(&w))
}

async fn find(state: &AppState, key: &str) -> Result<Workflow, ApiError> {
    if key.len() > 256 {
        return Err(ApiError::NotFound("workflow"));
    }
    state
        .db
        .workflows()
        .get_by_id_or_name(key)
        .await?
        .ok_or(ApiError::NotFound("workflow"))
}

/// A workflow's progress, per action: state, percent, bytes done, bytes/s, message, start
/// and end.
#[utoipa::path(get, path = "/api/workflows/{id}/progress", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID) or name")),
    responses((status = 200, body = WorkflowView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<WorkflowView>, ApiError> {
    Ok(ApiJson(WorkflowView::from(&find(&state, &id).await?)))
}

async fn request(state: &AppState, id: &str, req: Request) -> Result<StatusCode, ApiError> {
    let w = find(state, id).await?;
    match req {
        Request::Cancel if w.state.is_terminal() => {
            return Err(ApiError::Conflict(format!("the workflow is {:?}", w.state)));
        }
        Request::Retry
            if !w.state.is_terminal()
                || w.state == dragonfly_core::workflow::WorkflowState::Succeeded =>
        {
            return Err(ApiError::Conflict(format!(
                "only a failed, timed-out or cancelled workflow can be retried; it is {:?}",
                w.state
            )));
        }
        _ => {}
    }
    state.db.workflows().request(w.id, req).await?;
    state
        .events
        .publish(&dragonfly_bus::events::WorkflowRequested {
            workflow_id: w.id,
            machine_id: w.machine_id,
        });
    Ok(StatusCode::ACCEPTED)
}

/// Cancels an active workflow: 202, carried out by workflowd (the machine goes to Error and
/// is held in discovery).
#[utoipa::path(post, path = "/api/workflows/{id}/cancel", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID) or name")),
    responses((status = 202, description = "Requested"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    request(&state, &id, Request::Cancel).await
}

/// Retries a failed, timed-out or cancelled workflow from its first action, as a new
/// attempt: 202, carried out by workflowd.
#[utoipa::path(post, path = "/api/workflows/{id}/retry", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID) or name")),
    responses((status = 202, description = "Requested"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    request(&state, &id, Request::Retry).await
}

/// The agent's machine's workflow (the one its machine is assigned).
async fn agent_workflow(state: &AppState, agent: Agent) -> Result<uuid::Uuid, ApiError> {
    let m = state
        .db
        .machines()
        .get_by_mac(agent.0)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    m.workflow_id.ok_or(ApiError::NotFound("workflow"))
}

/// The next action for an agent in imaging mode. Recorded as served (apart from what is
/// reported): an agent that reconnects or reboots is given the action in progress again.
#[utoipa::path(get, path = agent_api::WORKFLOW_PATH, tag = "machines",
    security(("bootToken" = [])),
    responses((status = 200, body = WorkflowStep), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn next_step(
    State(state): State<AppState>,
    agent: Agent,
) -> Result<ApiJson<WorkflowStep>, ApiError> {
    let id = agent_workflow(&state, agent).await?;
    let (wf, served) = state
        .db
        .workflows()
        .serve(id, jiff::Timestamp::now())
        .await?;
    let action = served.and_then(|s| {
        let a = wf.actions.get(s.index as usize)?;
        Some(ServedAction {
            index: s.index,
            name: a.name.clone(),
            timeout_seconds: a.timeout_seconds.unwrap_or(wf.action_timeout_seconds),
            spec: a.action.clone(),
            next_seq: s.next_seq,
        })
    });
    Ok(ApiJson(WorkflowStep {
        workflow_id: wf.id,
        attempt: wf.attempt,
        state: wf.state,
        action,
        poll_after_seconds: WORKFLOW_POLL_SECONDS,
    }))
}

/// An action's report: 202 once it is durable in the store (re-sending the same
/// (workflowId, attempt, action, seq) is 202 again, kept once); workflowd applies it.
#[utoipa::path(post, path = agent_api::REPORT_PATH, tag = "machines", request_body = ActionReport,
    security(("bootToken" = [])),
    responses((status = 202, description = "Stored durably"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    agent: Agent,
    ApiJson(mut r): ApiJson<ActionReport>,
) -> Result<StatusCode, ApiError> {
    let m = state
        .db
        .machines()
        .get_by_mac(agent.0)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    let wf = state
        .db
        .workflows()
        .get(r.workflow_id)
        .await?
        .ok_or(ApiError::NotFound("workflow"))?;
    if wf.machine_id != m.id {
        return Err(ApiError::Forbidden(
            "the workflow belongs to another machine",
        ));
    }
    let cut = |s: &mut String| {
        if s.chars().count() > ReportEvent::MAX_MESSAGE_CHARS {
            *s = s.chars().take(ReportEvent::MAX_MESSAGE_CHARS).collect();
        }
    };
    match &mut r.event {
        ReportEvent::Failed { message, log_tail } => {
            cut(message);
            if log_tail.len() > ReportEvent::MAX_LOG_TAIL {
                let drop = log_tail.len() - ReportEvent::MAX_LOG_TAIL;
                log_tail.drain(..drop);
            }
            for l in log_tail.iter_mut() {
                cut(l);
            }
        }
        ReportEvent::Succeeded {
            message: Some(message),
        }
        | ReportEvent::Progress {
            message: Some(message),
            ..
        } => cut(message),
        _ => {}
    }
    let stored = state
        .db
        .workflows()
        .report(r.clone(), jiff::Timestamp::now())
        .await?;
    if stored {
        // A hint only: workflowd reconciles from the table at start and on every reconnect.
        state
            .events
            .publish(&dragonfly_bus::events::WorkflowReported {
                workflow_id: r.workflow_id,
                machine_id: m.id,
            });
    }
    Ok(StatusCode::ACCEPTED)
}

impl IntoResponse for WorkflowView {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_expressions() {
        let r = roots("h={{hostname}} {{values.x}} {{#each macs}}{{this}}{{/each}} {{ bogus.y }}");
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            ["bogus", "hostname", "macs", "values"]
        );
    }
}
