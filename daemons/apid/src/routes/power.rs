//! Power commands: `POST /api/machines/{id}/power` for one machine, `POST /api/power` for the
//! machines a label selector picks.
//!
//! apid drives no BMC itself: it asks bmcd over NATS (`dragonfly.power.<op>`,
//! `dragonfly_bus::power`) and answers with bmcd's reply, whose `message` carries the BMC's
//! own words. The HTTP status says who failed: 409 the machine's configuration (no BMC, not
//! configured, an operation the BMC kind cannot do), 502 the BMC (unreachable, credentials
//! refused, an error answer), 504 no answer in time (the effect is unknown), 503 bmcd or NATS
//! not there. This module must never retry a command on its own (a power cycle sent twice
//! is two cycles) nor hold more than [`MAX_IN_FLIGHT`] of them at once.

use std::collections::HashSet;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dragonfly_bus::power::{PowerCommand, PowerFailure, PowerOp, PowerReply};
use dragonfly_bus::{Bus, BusError};
use dragonfly_core::{Machine, MachineId};
use dragonfly_runtime::cli::Chain;
use dragonfly_store::machines::Filter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::routes::machines::{find, selector_labels};

/// Power commands in flight at once for one `POST /api/power`.
pub const MAX_IN_FLIGHT: usize = 32;
/// The most machines one `POST /api/power` may select.
pub const MAX_BULK_MACHINES: usize = 10_000;
/// The selector that picks every machine: "power off everything" must be said explicitly.
pub const EVERY_MACHINE: &str = "*";

const NO_BUS: &str = "apid has no connection to NATS, through which bmcd takes power commands";
const NO_BMCD: &str = "bmcd is not running: nothing answers power commands (start dragonfly-bmcd)";
const NATS_DOWN: &str = "NATS is unreachable: the power command could not be sent to bmcd";

/// The body of `POST /api/machines/{id}/power`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PowerAction {
    /// `on`, `off` (hard), `soft-off` (ACPI shutdown), `cycle`, `reset`, `status`, `boot-pxe`
    /// (next boot from the network), `boot-disk` (next boot from disk).
    #[schema(example = "cycle")]
    pub action: String,
    /// `boot-pxe` and `boot-disk` only: every boot from now on, not the next one only.
    #[serde(default)]
    pub persistent: bool,
}

/// The operation named `action`, or 422 naming the valid ones.
fn parse_action(action: &str, persistent: bool) -> Result<PowerOp, ApiError> {
    let op = PowerOp::parse(action).ok_or_else(|| {
        let all: Vec<&str> = PowerOp::ALL.iter().map(|op| op.as_str()).collect();
        ApiError::Unprocessable(format!(
            "action: {action:?} is not one of {}",
            all.join(", ")
        ))
    })?;
    if persistent && !matches!(op, PowerOp::BootPxe | PowerOp::BootDisk) {
        return Err(ApiError::Unprocessable(
            "persistent: only for boot-pxe and boot-disk".into(),
        ));
    }
    Ok(op)
}

/// bmcd's answer, as the API shows it: the same JSON as `dragonfly_bus::power::PowerReply`
/// (a unit test holds them together), with a schema for the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerResult {
    #[schema(value_type = String, format = Uuid)]
    pub machine_id: uuid::Uuid,
    /// The operation (`cycle`, …).
    pub op: String,
    /// `true` when the BMC did it.
    pub ok: bool,
    /// The power state read or known after the command: `on`, `off`, `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// When not `ok`: `no-bmc`, `no-machine`, `not-configured`, `unreachable`,
    /// `auth-refused`, `untrusted`, `timed-out`, `rejected`, `unsupported`, `internal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What happened, in words: the BMC's own error text when it gave one.
    pub message: String,
    /// Attempts bmcd made (0: apid answered without asking bmcd).
    pub attempts: u32,
    /// Time bmcd spent, in milliseconds.
    pub elapsed_ms: u64,
}

impl From<PowerReply> for PowerResult {
    fn from(r: PowerReply) -> Self {
        Self {
            machine_id: r.machine_id.0,
            op: r.op.as_str().to_owned(),
            ok: r.ok,
            power_state: r.power_state,
            failure: r.failure.map(|f| f.as_str().to_owned()),
            message: r.message,
            attempts: r.attempts,
            elapsed_ms: r.elapsed_ms,
        }
    }
}

/// The HTTP status of bmcd's answer.
pub fn reply_status(reply: &PowerReply) -> StatusCode {
    if reply.ok {
        return StatusCode::OK;
    }
    match reply.failure {
        Some(PowerFailure::NoBmc | PowerFailure::NotConfigured | PowerFailure::Unsupported) => {
            StatusCode::CONFLICT
        }
        Some(PowerFailure::NoMachine) => StatusCode::NOT_FOUND,
        Some(
            PowerFailure::Unreachable
            | PowerFailure::AuthRefused
            | PowerFailure::Untrusted
            | PowerFailure::Rejected,
        ) => StatusCode::BAD_GATEWAY,
        Some(PowerFailure::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
        // `Internal`, or a failure without a kind (bmcd breaking its contract).
        Some(PowerFailure::Internal) | None => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The answer apid gives itself for a machine without a BMC: bmcd would say the same, and
/// saying it here works while bmcd is down and sends nothing for machines it cannot drive.
fn no_bmc(machine: MachineId, op: PowerOp) -> PowerReply {
    PowerReply {
        machine_id: machine,
        op,
        ok: false,
        power_state: None,
        failure: Some(PowerFailure::NoBmc),
        message: "the machine has no BMC: configure one with PUT /api/machines/{id}/bmc".into(),
        attempts: 0,
        elapsed_ms: 0,
    }
}

/// Why a command got no answer from bmcd, as the API error it becomes.
fn bus_failure(e: BusError, timeout: Duration) -> ApiError {
    match e {
        BusError::NoResponders { .. } => ApiError::Unavailable {
            message: NO_BMCD,
            retry_after_secs: 10,
        },
        BusError::Timeout { .. } => ApiError::GatewayTimeout(format!(
            "bmcd did not answer within {} s: the command's effect is unknown (ask with \
             \"status\")",
            timeout.as_secs()
        )),
        BusError::Request { .. } | BusError::Publish { .. } => ApiError::Unavailable {
            message: NATS_DOWN,
            retry_after_secs: 10,
        },
        other => ApiError::Internal(anyhow::Error::new(other).context("a power command")),
    }
}

/// Sends `op` for `machine` to bmcd (no BMC row: apid's own 409 answer, nothing sent).
async fn command(
    bus: &Bus,
    machine: MachineId,
    has_bmc: bool,
    op: PowerOp,
    persistent: bool,
    timeout: Duration,
) -> Result<PowerReply, ApiError> {
    if !has_bmc {
        return Ok(no_bmc(machine, op));
    }
    let cmd = PowerCommand {
        machine_id: machine,
        persistent,
    };
    dragonfly_bus::power::request(bus, op, cmd, timeout)
        .await
        .map_err(|e| bus_failure(e, timeout))
}

fn bus(state: &AppState) -> Result<&Bus, ApiError> {
    state.bus.as_ref().ok_or(ApiError::Unavailable {
        message: NO_BUS,
        retry_after_secs: 10,
    })
}

/// Sends a power command to one machine's BMC through bmcd and answers with bmcd's reply.
///
/// 200 when the BMC did it. When it did not, bmcd's reply is the body all the same (its
/// `message` has the BMC's words): 409 no BMC / not configured / unsupported by this kind of
/// BMC (Wake-on-LAN powers on only), 502 BMC unreachable / credentials refused / error
/// answer, 504 the BMC did not answer in time, 500 bmcd failed. 503 (an error body) when bmcd
/// is not running or NATS is unreachable; 504 (an error body) when bmcd did not answer within
/// `[apid] power_timeout`: the command's effect is then unknown.
#[utoipa::path(post, path = "/api/machines/{id}/power", tag = "power",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    request_body = PowerAction,
    responses((status = 200, body = PowerResult), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = PowerResult),
        (status = 422, body = ErrorBody), (status = 500, body = PowerResult),
        (status = 502, body = PowerResult),
        (status = 503, description = "bmcd is not running, or NATS is unreachable", body = ErrorBody),
        (status = 504, description = "No answer in time: from the BMC (a PowerResult) or from bmcd (an ErrorBody)", body = PowerResult)))]
pub async fn power(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PowerAction>,
) -> Result<Response, ApiError> {
    let op = parse_action(&body.action, body.persistent)?;
    let m = find(&state, id).await?;
    let bus = bus(&state)?;
    let has_bmc = state.db.bmcs().get(m.id).await?.is_some();
    let reply = command(
        bus,
        m.id,
        has_bmc,
        op,
        body.persistent,
        state.config.power_timeout,
    )
    .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(machine = %m.name, %op, by = %who.user.username, "power command not answered: {e}");
            return Err(e);
        }
    };
    let status = reply_status(&reply);
    tracing::info!(machine = %m.name, %op, by = %who.user.username, ok = reply.ok,
        failure = reply.failure.map(PowerFailure::as_str), "power command");
    Ok((status, ApiJson(PowerResult::from(reply))).into_response())
}

/// The body of `POST /api/power`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BulkPowerAction {
    /// Labels every selected machine has, `key=value` pairs separated by commas (as
    /// `GET /api/machines?labelSelector=`), or `*` for every machine. Never empty: acting on
    /// every machine must be asked for.
    #[schema(example = "rack=r1,role=gpu")]
    pub selector: String,
    /// As for one machine (`on`, `off`, `cycle`, …).
    #[schema(example = "status")]
    pub action: String,
    /// `boot-pxe` and `boot-disk` only.
    #[serde(default)]
    pub persistent: bool,
}

/// One machine's outcome in `POST /api/power`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkPowerItem {
    #[schema(value_type = String, format = Uuid)]
    pub machine_id: uuid::Uuid,
    pub name: String,
    pub ok: bool,
    /// The status `POST /api/machines/{id}/power` would have answered for this machine.
    pub status: u16,
    /// bmcd's answer (or apid's, for a machine without a BMC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<PowerResult>,
    /// Why there is no answer (bmcd not running, no answer in time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of `POST /api/power`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkPowerResult {
    /// One per selected machine, in name order.
    pub results: Vec<BulkPowerItem>,
    pub succeeded: usize,
    pub failed: usize,
}

/// The labels a bulk selector asks for; `*` is every machine (no labels to match).
fn bulk_selector(selector: &str) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let selector = selector.trim();
    if selector == EVERY_MACHINE {
        return Ok(Default::default());
    }
    let labels =
        selector_labels(selector).map_err(|e| ApiError::Unprocessable(format!("selector: {e}")))?;
    if labels.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "selector: empty; name labels (rack=r1,role=gpu), or \"{EVERY_MACHINE}\" for every \
             machine"
        )));
    }
    Ok(labels)
}

/// Every machine with all of `labels`, in name order; 422 beyond [`MAX_BULK_MACHINES`].
async fn select(
    state: &AppState,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<Vec<Machine>, ApiError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let filter = Filter {
            state: None,
            labels: labels.clone(),
        };
        let page = state.db.machines().list(filter, after, 500).await?;
        out.extend(page.items);
        if out.len() > MAX_BULK_MACHINES {
            return Err(ApiError::Unprocessable(format!(
                "selector: selects more than {MAX_BULK_MACHINES} machines; narrow it"
            )));
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Sends a power command to every machine a label selector picks, at most
/// [`MAX_IN_FLIGHT`] at once, and answers 200 with each machine's outcome (its `status` is
/// what `POST /api/machines/{id}/power` would have answered). 422 for an empty selector (use
/// `*` for every machine) or one that selects more than 10 000 machines; 503 when apid has no
/// NATS connection.
#[utoipa::path(post, path = "/api/power", tag = "power",
    request_body = BulkPowerAction,
    responses((status = 200, body = BulkPowerResult), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn bulk(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<BulkPowerAction>,
) -> Result<ApiJson<BulkPowerResult>, ApiError> {
    let op = parse_action(&body.action, body.persistent)?;
    let labels = bulk_selector(&body.selector)?;
    let bus = bus(&state)?.clone();
    let machines = select(&state, labels).await?;
    let with_bmc: HashSet<MachineId> = state
        .db
        .bmcs()
        .list()
        .await?
        .into_iter()
        .map(|b| b.machine_id)
        .collect();
    let timeout = state.config.power_timeout;
    let persistent = body.persistent;
    let mut slots: Vec<Option<BulkPowerItem>> = Vec::with_capacity(machines.len());
    slots.resize_with(machines.len(), || None);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = machines.into_iter().enumerate();
    loop {
        while tasks.len() < MAX_IN_FLIGHT {
            let Some((i, m)) = pending.next() else { break };
            let has_bmc = with_bmc.contains(&m.id);
            let bus = bus.clone();
            tasks.spawn(async move {
                let outcome = command(&bus, m.id, has_bmc, op, persistent, timeout).await;
                (i, item(&m, outcome))
            });
        }
        match tasks.join_next().await {
            Some(Ok((i, item))) => slots[i] = Some(item),
            Some(Err(e)) => {
                return Err(ApiError::Internal(
                    anyhow::Error::new(e).context("a power command's task"),
                ));
            }
            None => break,
        }
    }
    let results: Vec<BulkPowerItem> = slots.into_iter().flatten().collect();
    let succeeded = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - succeeded;
    tracing::info!(%op, selector = %body.selector, by = %who.user.username, machines = results.len(),
        succeeded, failed, "bulk power command");
    Ok(ApiJson(BulkPowerResult {
        results,
        succeeded,
        failed,
    }))
}

fn item(m: &Machine, outcome: Result<PowerReply, ApiError>) -> BulkPowerItem {
    match outcome {
        Ok(reply) => BulkPowerItem {
            machine_id: m.id.0,
            name: m.name.clone(),
            ok: reply.ok,
            status: reply_status(&reply).as_u16(),
            reply: Some(reply.into()),
            error: None,
        },
        Err(e) => {
            if let ApiError::Internal(cause) = &e {
                tracing::error!(machine = %m.name, error = %Chain(cause.as_ref()), "power command failed");
            }
            BulkPowerItem {
                machine_id: m.id.0,
                name: m.name.clone(),
                ok: false,
                status: e.status().as_u16(),
                reply: None,
                error: Some(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(ok: bool, failure: Option<PowerFailure>) -> PowerReply {
        PowerReply {
            machine_id: MachineId(uuid::Uuid::nil()),
            op: PowerOp::SoftOff,
            ok,
            power_state: ok.then(|| "off".to_owned()),
            failure,
            message: "BMC says: busy".into(),
            attempts: 2,
            elapsed_ms: 1234,
        }
    }

    #[test]
    fn the_api_shows_bmcds_reply_unchanged() {
        for r in [
            reply(true, None),
            reply(false, Some(PowerFailure::AuthRefused)),
        ] {
            assert_eq!(
                serde_json::to_value(PowerResult::from(r.clone())).unwrap(),
                serde_json::to_value(&r).unwrap()
            );
        }
    }

    #[test]
    fn failures_map_to_who_failed() {
        use PowerFailure::*;
        for (failure, status) in [
            (NoBmc, 409),
            (NotConfigured, 409),
            (Unsupported, 409),
            (NoMachine, 404),
            (Unreachable, 502),
            (AuthRefused, 502),
            (Untrusted, 502),
            (Rejected, 502),
            (TimedOut, 504),
            (Internal, 500),
        ] {
            assert_eq!(
                reply_status(&reply(false, Some(failure))),
                status,
                "{failure:?}"
            );
        }
        assert_eq!(reply_status(&reply(true, None)), 200);
        assert_eq!(reply_status(&reply(false, None)), 500);
    }

    #[test]
    fn actions_and_selectors_are_checked() {
        assert_eq!(parse_action("soft-off", false).unwrap(), PowerOp::SoftOff);
        assert_eq!(parse_action("boot-pxe", true).unwrap(), PowerOp::BootPxe);
        let e = parse_action("explode", false).unwrap_err().to_string();
        assert!(e.contains("explode") && e.contains("boot-disk"), "{e}");
        assert!(parse_action("off", true).is_err());
        assert!(bulk_selector("*").unwrap().is_empty());
        assert_eq!(bulk_selector("rack=r1").unwrap().len(), 1);
        for empty in ["", " ", ","] {
            let e = bulk_selector(empty).unwrap_err().to_string();
            assert!(e.contains("\"*\""), "{e}");
        }
        assert!(bulk_selector("rack").is_err());
    }

    #[test]
    fn no_answer_is_503_or_504() {
        let t = Duration::from_secs(60);
        let e = bus_failure(
            BusError::NoResponders {
                subject: "s".into(),
            },
            t,
        );
        assert_eq!(e.status(), 503);
        let e = bus_failure(
            BusError::Timeout {
                subject: "s".into(),
                timeout: t,
            },
            t,
        );
        assert_eq!(e.status(), 504);
        assert!(e.to_string().contains("60 s"), "{e}");
    }
}
