//! `/api/machines`: the inventory, and the agent's registration.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use dragonfly_bus::events::{MachineApproved, MachineDeleted, MachineRegistered, MachineUpdated};
use dragonfly_core::agent_api;
use dragonfly_core::hardware::validate_hostname;
use dragonfly_core::{HardwareReport, Machine, MachineState, labels};
use dragonfly_store::StoreError;
use dragonfly_store::bmc::Bmc;
use dragonfly_store::machines::{Filter, NewMachines, Patch, Registered};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{self, Principal};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::routes::bmc::BmcType;

/// Registers a machine from its agent's hardware report.
///
/// Idempotent: the report updates the machine owning the reporter's MAC (the boot token's, or
/// for an operator the report's first), or creates one. It may add MACs nobody owns; a MAC or
/// SMBIOS UUID owned by another machine is refused (409, nothing written) and recorded as a
/// conflict (`GET /api/conflicts`). The agent authenticates with the per-boot token from its
/// kernel command line (`Authorization: Bearer dfb1.…`), which must name one of the report's
/// MACs and belong to its MAC's current boot session; an operator's credentials are accepted
/// too. New machines registered by agents are rate-limited (429 with `Retry-After`) and capped
/// (503 with `Retry-After`), nothing written either way; with `[apid] auto_register = false`
/// they wait in `Discovered` for `POST /api/machines/{id}/approve`.
#[utoipa::path(post, path = agent_api::REGISTER_PATH, tag = "machines",
    request_body = HardwareReport,
    security(("bootToken" = []), ("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "A new machine was created", body = Machine),
        (status = 200, description = "An existing machine was updated", body = Machine),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    who: Registrant,
    ApiJson(report): ApiJson<HardwareReport>,
) -> Result<(StatusCode, ApiJson<Machine>), ApiError> {
    let now = jiff::Timestamp::now();
    if let Registrant::Agent(claims) = &who
        && !report.macs.contains(&claims.mac)
    {
        tracing::info!(token_mac = %claims.mac, "boot token names a MAC not in the report");
        return Err(ApiError::Forbidden(
            "the boot token belongs to another machine",
        ));
    }
    report
        .validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let limits = state.new_machines.limits();
    // A new machine spends a token of the shared bucket. Whether the report is new is the
    // store's to find out (no extra read): a token is taken first, handed back when the report
    // turned out to be a known machine's (the heartbeat costs nothing), and without one the
    // store is told to refuse creating a machine (429, nothing written).
    let (reporter, session, admitted) = match &who {
        Registrant::Agent(claims) => (
            claims.mac,
            Some(claims.nonce),
            Some(state.new_machines.admit(std::time::Instant::now())),
        ),
        Registrant::Operator(_) => (report.macs[0], None, None),
    };
    let new = NewMachines {
        allowed: !matches!(admitted, Some(Err(_))),
        max_machines: Some(limits.max_machines),
        pending_approval: !limits.auto_register && matches!(who, Registrant::Agent(_)),
    };
    let outcome = state
        .db
        .machines()
        .register_as(reporter, session, report, new, now)
        .await;
    if let Err(StoreError::SessionNotCurrent) = &outcome {
        tracing::info!(mac = %reporter, "agent registration refused: not its current boot session");
        if let Some(Ok(())) = admitted {
            state.new_machines.refund();
        }
        return Err(ApiError::Unauthorized);
    }
    match (&outcome, admitted) {
        (Err(StoreError::NewMachineRefused), Some(Err(wait))) => {
            tracing::info!(mac = %reporter,
                "new machine refused: new_machines_per_second/burst reached");
            return Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            });
        }
        (Ok(Registered::Created(_)), _) | (_, None | Some(Err(_))) => {}
        (_, Some(Ok(()))) => state.new_machines.refund(),
    }
    let outcome = outcome?;
    let created = matches!(outcome, Registered::Created(_));
    let m = outcome.machine().clone();
    tracing::info!(machine = %m.name, id = %m.id, created, "machine registered");
    state.events.publish(&MachineRegistered {
        machine_id: m.id,
        name: m.name.clone(),
        macs: m.macs().to_vec(),
        created,
    });
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(m)))
}

/// Who may register: an agent holding a valid boot token (for this MAC), or an operator.
///
/// An extractor from the request head, so credentials are checked before the body is even
/// parsed: an anonymous caller learns nothing about what a valid report looks like. For an
/// agent that is the token's signature and expiry; that the token belongs to its MAC's current
/// boot session is checked in the registration's own transaction (one store round trip for
/// a registration, and no boot can supersede the session between the check and the write).
#[derive(Debug, Clone)]
pub enum Registrant {
    Agent(dragonfly_core::boot_token::BootClaims),
    Operator(Box<Principal>),
}

impl axum::extract::FromRequestParts<AppState> for Registrant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        if let Some(token) = auth::boot_token(&parts.headers) {
            return super::agent::verify_signature(state, token).map(Registrant::Agent);
        }
        match auth::authenticate(state, &parts.headers).await? {
            Some(p) => Ok(Registrant::Operator(Box::new(p))),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// Approves a machine awaiting it (registered by its agent while `[apid] auto_register` is
/// off): `Discovered` → `Registered`. 409 for a machine in any other state.
#[utoipa::path(post, path = "/api/machines/{id}/approve", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = Machine), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Machine>, ApiError> {
    let m = find(&state, id).await?;
    let approved = state
        .db
        .machines()
        .approve(m.id, jiff::Timestamp::now())
        .await?;
    tracing::info!(machine = %approved.name, by = %who.user.username, "machine approved");
    state.events.publish(&MachineApproved {
        machine_id: approved.id,
        name: approved.name.clone(),
        approved_by: who.user.username.clone(),
    });
    Ok(ApiJson(approved))
}

/// One state a machine entered, as `GET /api/machines/{id}/history` lists it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    /// The state it left; absent for its first state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<MachineState>,
    pub to: MachineState,
    /// What moved it: `Created`, `Register`, `Approve`, `AssignOs`, `StartProvisioning`,
    /// `ProvisioningSucceeded`, `Fail`, `Retry`, `UnassignOs`.
    pub event: String,
    /// The workflow that moved it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub workflow_id: Option<uuid::Uuid>,
}

/// A machine's lifecycle history, oldest first: every state it entered, written in the same
/// transaction as the move (the newest 200 are kept).
#[utoipa::path(get, path = "/api/machines/{id}/history", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = Vec<HistoryEntry>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Vec<HistoryEntry>>, ApiError> {
    let m = find(&state, id).await?;
    let entries = state.db.machines().history(m.id).await?;
    Ok(ApiJson(
        entries
            .into_iter()
            .map(|e| HistoryEntry {
                at: e.at,
                from: e.from,
                to: e.to,
                event: e.event,
                workflow_id: e.workflow_id,
            })
            .collect(),
    ))
}

/// Query of `GET /api/machines`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only machines in this state.
    pub state: Option<MachineState>,
    /// Comma-separated `key=value` pairs that must all match, e.g. `rack=r1,role=gpu`.
    pub label_selector: Option<String>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<usize>,
    /// `next` from the previous page.
    pub after: Option<String>,
}

/// A machine as the operators' views show it: the machine, and how its power is doing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineView {
    #[serde(flatten)]
    pub machine: Machine,
    /// Its BMC's power state and condition; absent when it has no BMC configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<MachinePower>,
    /// The IPv4 address reserved for it (`/api/machines/{id}/address`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reserved_ip: Option<std::net::Ipv4Addr>,
}

/// A machine's power at a glance (the whole BMC view is `/api/machines/{id}/bmc`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachinePower {
    /// `ipmi`, `redfish` or `wol`.
    #[serde(rename = "type")]
    pub kind: BmcType,
    /// What bmcd last read: `on`, `off`, `unknown`; null before its first reading.
    pub state: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_at: Option<jiff::Timestamp>,
    /// Why bmcd cannot drive the BMC (unreachable, credentials refused, certificate not
    /// trusted, …), while that lasts: the machine's power condition.
    pub condition: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub condition_since: Option<jiff::Timestamp>,
}

impl From<Bmc> for MachinePower {
    fn from(b: Bmc) -> Self {
        Self {
            kind: b.spec.kind.into(),
            state: b.power_state.map(|s| s.as_str().to_owned()),
            checked_at: b.power_checked_at,
            condition: b.condition,
            condition_since: b.condition_since,
        }
    }
}

/// The machines with their power, in the same order.
async fn views(state: &AppState, machines: Vec<Machine>) -> Result<Vec<MachineView>, ApiError> {
    let ids: Vec<_> = machines.iter().map(|m| m.id).collect();
    let mut bmcs = state.db.bmcs().of(ids.clone()).await?;
    let mut reserved = state.db.reservations().of(ids).await?;
    Ok(machines
        .into_iter()
        .map(|machine| MachineView {
            power: bmcs.remove(&machine.id).map(MachinePower::from),
            reserved_ip: reserved.remove(&machine.id).map(|r| r.ip),
            machine,
        })
        .collect())
}

async fn view(state: &AppState, machine: Machine) -> Result<MachineView, ApiError> {
    let mut one = views(state, vec![machine]).await?;
    Ok(one.remove(0))
}

/// One page of machines.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineList {
    pub items: Vec<MachineView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Parses `k=v,k2=v2` into a label map.
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, ApiError> {
    selector_labels(s).map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))
}

/// The label map of a selector `k=v,k2=v2` (every pair must match), or why it is not one:
/// the one parser of label selectors (`GET /api/machines`, `POST /api/power`).
pub fn selector_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    labels::validate(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Checks a page size.
pub fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=500 => Ok(n),
        n => Err(ApiError::BadRequest(format!(
            "limit: {n} is not between 1 and 500"
        ))),
    }
}

/// Lists machines, filtered by state and labels, in pages ordered by name.
#[utoipa::path(get, path = "/api/machines", tag = "machines", params(ListQuery),
    responses((status = 200, body = MachineList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<MachineList>, ApiError> {
    let filter = Filter {
        state: q.state,
        labels: q
            .label_selector
            .as_deref()
            .map(parse_selector)
            .transpose()?
            .unwrap_or_default(),
    };
    let limit = page_size(q.limit)?;
    let page = state.db.machines().list(filter, q.after, limit).await?;
    Ok(ApiJson(MachineList {
        items: views(&state, page.items).await?,
        next: page.next_after,
    }))
}

/// The machine named by id or memorable name, or 404.
pub(crate) async fn find(state: &AppState, key: String) -> Result<Machine, ApiError> {
    if key.len() > 256 {
        return Err(ApiError::NotFound("machine"));
    }
    state
        .db
        .machines()
        .get_by_id_or_name(&key)
        .await?
        .ok_or(ApiError::NotFound("machine"))
}

/// Gets one machine by id or memorable name.
#[utoipa::path(get, path = "/api/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = MachineView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<MachineView>, ApiError> {
    let machine = find(&state, id).await?;
    view(&state, machine).await.map(ApiJson)
}

/// Body of `PATCH /api/machines/{id}`. Absent fields are left alone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachinePatch {
    /// Replaces the whole label set.
    pub labels: Option<BTreeMap<String, String>>,
    /// A new host name, or `null` to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub hostname: Option<Option<String>>,
    /// Refuse the change (409) unless the machine is still at this version.
    pub resource_version: Option<i64>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Changes a machine's labels and host name.
#[utoipa::path(patch, path = "/api/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    request_body = MachinePatch,
    responses((status = 200, body = Machine), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MachinePatch>,
) -> Result<ApiJson<Machine>, ApiError> {
    if let Some(l) = &body.labels {
        labels::validate(l).map_err(|e| ApiError::Unprocessable(format!("labels: {e}")))?;
    }
    if let Some(Some(h)) = &body.hostname {
        validate_hostname(h).map_err(|e| ApiError::Unprocessable(format!("hostname: {e}")))?;
    }
    let m = find(&state, id).await?;
    let mut changed = Vec::new();
    if body.labels.is_some() {
        changed.push("labels".to_owned());
    }
    if body.hostname.is_some() {
        changed.push("hostname".to_owned());
    }
    let p = Patch {
        labels: body.labels,
        hostname: body.hostname,
    };
    let version = body.resource_version;
    let now = jiff::Timestamp::now();
    let updated = state.db.machines().patch(m.id, version, p, now).await?;
    tracing::info!(machine = %updated.name, by = %who.user.username, ?changed, "machine updated");
    state.events.publish(&MachineUpdated {
        machine_id: updated.id,
        name: updated.name.clone(),
        resource_version: updated.resource_version,
        changed,
    });
    Ok(ApiJson(updated))
}

/// Query of `DELETE /api/machines/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Refuse (409) unless the machine is still at this version.
    pub resource_version: Option<i64>,
}

/// Deletes a machine. If it boots again it is rediscovered, with the same name.
#[utoipa::path(delete, path = "/api/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name"), DeleteQuery),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let m = find(&state, id).await?;
    let gone = state.db.machines().delete(m.id, q.resource_version).await?;
    tracing::info!(machine = %gone.name, by = %who.user.username, "machine deleted");
    state.events.publish(&MachineDeleted {
        machine_id: gone.id,
        name: gone.name,
    });
    Ok(StatusCode::NO_CONTENT)
}
