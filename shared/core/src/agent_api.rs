//! The HTTP contract between the agent (mage) and apid, defined once for both sides.
//!
//! The agent runs from a netboot initramfs, possibly built at another time than the apid it
//! talks to; when each side kept its own copy of these bodies, the agent matched the boot fate
//! as a string and nothing noticed when the two drifted. Every path the agent calls and every
//! body either side sends is declared here; apid serves these types and the agent parses them.
//!
//! - `POST` [`REGISTER_PATH`]: the agent sends its [`HardwareReport`](crate::HardwareReport)
//!   and gets the [`Machine`](crate::Machine) back (201 new, 200 known).
//! - `GET` [`INSTRUCTIONS_PATH`]: [`Instructions`], polled while the agent waits; 404 when the
//!   server does not know the machine (register again).
//! - `POST` [`LOG_PATH`]: the agent's console lines, [`AgentLog`]; 204 when kept.
//! - `POST` [`RENEW_PATH`]: a fresh token for the same boot, [`RenewedToken`]. Tokens live
//!   minutes; the running agent renews its token before it expires (after
//!   `renewAfterSeconds`), and a token of a boot that is over (a newer boot of the machine,
//!   `Ready` reached, the session's end) is refused with 401.
//! - `GET` [`WORKFLOW_PATH`]: in imaging mode, the next action to run, [`WorkflowStep`].
//!   The server records the action as *served* (apart from what was *reported*), so an agent
//!   that reconnects, or boots into imaging again, is given the action in progress again.
//! - `POST` [`REPORT_PATH`]: an [`ActionReport`] (started, progress, succeeded, failed); 202
//!   only once the report is durable in the store, so an acknowledged report is never lost.
//!   Reports are idempotent by `(workflowId, attempt, action, seq)`: the agent re-sends one
//!   it has no answer for, and the server keeps the first.
//! - Any refusal: [`ErrorBody`], whose message the agent shows on the console.
//!
//! All four authenticate with the per-boot token (`Authorization: Bearer dfb1.…`).
//!
//! This module must stay plain serde types: the agent links it into a small static binary,
//! so nothing here may pull in an HTTP stack, a runtime or (without the `utoipa` feature, which
//! only apid enables) the OpenAPI machinery.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::template::Action;
use crate::workflow::WorkflowState;
use crate::{BootFate, MachineId, MachineState};

/// Registration: the body is a `HardwareReport`, the answer a `Machine`.
pub const REGISTER_PATH: &str = "/api/machines/register";
/// What the server wants from the machine now: answers [`Instructions`].
pub const INSTRUCTIONS_PATH: &str = "/api/agent/instructions";
/// The agent's console lines: the body is an [`AgentLog`].
pub const LOG_PATH: &str = "/api/agent/log";
/// A fresh token for the same boot session (no body): answers [`RenewedToken`].
pub const RENEW_PATH: &str = "/api/agent/renew";

/// The answer to `POST /api/agent/renew`: the token to use from now on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RenewedToken {
    /// The new token (`dfb1.…`), for the same boot; a secret.
    pub token: String,
    /// It stops working after this many seconds.
    pub expires_in_seconds: u64,
    /// Renew again after this many seconds (well before it expires).
    pub renew_after_seconds: u64,
}

impl std::fmt::Debug for RenewedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewedToken")
            .field("token", &"<redacted>")
            .field("expires_in_seconds", &self.expires_in_seconds)
            .field("renew_after_seconds", &self.renew_after_seconds)
            .finish()
    }
}

/// In imaging mode: the next action of the machine's workflow (answers [`WorkflowStep`]).
pub const WORKFLOW_PATH: &str = "/api/agent/workflow";
/// What happened to an action: the body is an [`ActionReport`]; 202 once durable.
pub const REPORT_PATH: &str = "/api/agent/report";

/// What the server wants from the machine now (the answer to `GET /api/agent/instructions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Instructions {
    pub machine_id: MachineId,
    pub name: String,
    pub state: MachineState,
    /// Flattened: `fate` is `discovery` (stay and wait, with a `reason`), `imaging` (boot into
    /// the workflow `workflowId`) or `localDisk`.
    #[serde(flatten)]
    pub fate: BootFate,
    /// Ask again after this many seconds.
    pub poll_after_seconds: u32,
}

/// The agent's console lines (the body of `POST /api/agent/log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentLog {
    /// Console lines, oldest first; at most 100 per request, each cut to 1000 characters by
    /// the server.
    pub lines: Vec<String>,
}

impl AgentLog {
    /// Most lines one request may carry; the server refuses more (422). (In the OpenAPI
    /// description of `lines` too.)
    pub const MAX_LINES: usize = 100;
    /// Longest line the server keeps; longer ones are cut.
    pub const MAX_LINE_CHARS: usize = 1000;
}

/// The answer to `GET /api/agent/workflow`: what an agent in imaging mode runs next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStep {
    pub workflow_id: Uuid,
    /// Which start of the workflow this is (1 first, +1 on every retry); reports carry it, so
    /// a report from an earlier attempt never moves the current one.
    pub attempt: u32,
    pub state: WorkflowState,
    /// The action to run now; `None` when there is nothing to run (the workflow is finished,
    /// cancelled, or waiting): poll again after `poll_after_seconds`, or act on `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ServedAction>,
    /// Ask again after this many seconds.
    pub poll_after_seconds: u32,
}

/// One action as served to the agent: template variables already rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServedAction {
    /// Position in the template, from 0.
    pub index: u32,
    /// The action's unique name in its template.
    pub name: String,
    /// The server gives up on the action after this long (retries included).
    pub timeout_seconds: u32,
    /// What to do (the template's action, rendered for this machine).
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub spec: Action,
    /// The `seq` the agent's first report for this action must carry: one past the highest
    /// the server already keeps for it in this attempt (0 when it keeps none). An agent that
    /// rebooted and is served the same action again numbers on from there, so its new reports
    /// are never taken for re-sent copies of the old ones and dropped. Absent (0) from an
    /// older server.
    #[serde(default)]
    pub next_seq: u64,
}

/// The body of `POST /api/agent/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
// No `deny_unknown_fields`: serde cannot combine it with the flattened event.
#[serde(rename_all = "camelCase")]
pub struct ActionReport {
    pub workflow_id: Uuid,
    pub attempt: u32,
    /// The action's index, as served.
    pub action: u32,
    /// Increases with every report the agent sends for this action, from the served action's
    /// `nextSeq` (so across agent restarts too); with the fields above it makes a report
    /// idempotent.
    pub seq: u64,
    #[serde(flatten)]
    pub event: ReportEvent,
}

/// What an [`ActionReport`] says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
// Each variant says `rename_all` itself rather than the enum saying `rename_all_fields`:
// utoipa does not read the latter, and the OpenAPI document then named the fields in
// snake_case, which the wire never uses.
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ReportEvent {
    /// The agent began the action.
    Started,
    /// At least every 2 s while the action runs.
    #[serde(rename_all = "camelCase")]
    Progress {
        bytes_done: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_total: Option<u64>,
        bytes_per_second: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The action finished well.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The action failed: why, and the last console lines.
    #[serde(rename_all = "camelCase")]
    Failed {
        message: String,
        #[serde(default)]
        log_tail: Vec<String>,
    },
}

impl ReportEvent {
    /// Most lines a `Failed` report's `logTail` may carry.
    pub const MAX_LOG_TAIL: usize = 100;
    /// Longest message the server keeps; longer ones are cut.
    pub const MAX_MESSAGE_CHARS: usize = 2000;
}

/// The body of every error answer apid gives, to agents and operators alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `not_found`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::DiscoveryReason;

    fn pin<T>(value: &T, json: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
    }

    #[test]
    fn instructions_keep_their_wire_shape() {
        let machine_id = MachineId(Uuid::from_u128(0x0196d6a2_0000_7000_8000_000000000001));
        let with = |fate| Instructions {
            machine_id,
            name: "HungryDynamicHybridSwear".into(),
            state: MachineState::Registered,
            fate,
            poll_after_seconds: 10,
        };
        pin(
            &with(BootFate::Discovery {
                reason: DiscoveryReason::AwaitingAssignment,
            }),
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","state":"Registered","fate":"discovery","reason":"awaitingAssignment","pollAfterSeconds":10}"#,
        );
        pin(
            &with(BootFate::Imaging {
                workflow_id: Uuid::from_u128(0x0196d6a2_0000_7000_8000_0000000000aa),
            }),
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","state":"Registered","fate":"imaging","workflowId":"0196d6a2-0000-7000-8000-0000000000aa","pollAfterSeconds":10}"#,
        );
        pin(
            &with(BootFate::LocalDisk),
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","state":"Registered","fate":"localDisk","pollAfterSeconds":10}"#,
        );
    }

    #[test]
    fn instructions_refuse_a_fate_without_its_detail() {
        for json in [
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"N","state":"Registered","fate":"imaging","pollAfterSeconds":10}"#,
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"N","state":"Registered","fate":"discovery","pollAfterSeconds":10}"#,
            r#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"N","state":"Registered","fate":"reboot","pollAfterSeconds":10}"#,
        ] {
            assert!(
                serde_json::from_str::<Instructions>(json).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn reports_keep_their_wire_shape() {
        let workflow_id = Uuid::from_u128(0x0196d6a2_0000_7000_8000_0000000000aa);
        let report = |seq, event| ActionReport {
            workflow_id,
            attempt: 1,
            action: 2,
            seq,
            event,
        };
        pin(
            &report(0, ReportEvent::Started),
            r#"{"workflowId":"0196d6a2-0000-7000-8000-0000000000aa","attempt":1,"action":2,"seq":0,"kind":"started"}"#,
        );
        pin(
            &report(
                1,
                ReportEvent::Progress {
                    bytes_done: 10,
                    bytes_total: Some(100),
                    bytes_per_second: 5,
                    message: None,
                },
            ),
            r#"{"workflowId":"0196d6a2-0000-7000-8000-0000000000aa","attempt":1,"action":2,"seq":1,"kind":"progress","bytesDone":10,"bytesTotal":100,"bytesPerSecond":5}"#,
        );
        pin(
            &report(
                2,
                ReportEvent::Failed {
                    message: "checksum mismatch".into(),
                    log_tail: vec!["x".into()],
                },
            ),
            r#"{"workflowId":"0196d6a2-0000-7000-8000-0000000000aa","attempt":1,"action":2,"seq":2,"kind":"failed","message":"checksum mismatch","logTail":["x"]}"#,
        );
        assert!(
            serde_json::from_str::<ActionReport>(
                r#"{"workflowId":"0196d6a2-0000-7000-8000-0000000000aa","attempt":1,"action":2,"seq":0,"kind":"exploded"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_finished_workflow_serves_no_action() {
        let step: WorkflowStep = serde_json::from_str(
            r#"{"workflowId":"0196d6a2-0000-7000-8000-0000000000aa","attempt":1,"state":"Succeeded","pollAfterSeconds":5}"#,
        )
        .unwrap();
        assert_eq!(step.action, None);
        assert_eq!(step.state, WorkflowState::Succeeded);
    }

    #[test]
    fn a_renewed_token_keeps_its_wire_shape_and_hides_in_debug() {
        let r = RenewedToken {
            token: "dfb1.a.b".into(),
            expires_in_seconds: 900,
            renew_after_seconds: 300,
        };
        pin(
            &r,
            r#"{"token":"dfb1.a.b","expiresInSeconds":900,"renewAfterSeconds":300}"#,
        );
        assert!(!format!("{r:?}").contains("dfb1"));
    }

    #[test]
    fn log_and_error_bodies_keep_their_wire_shape() {
        pin(
            &AgentLog {
                lines: vec!["starting".into(), "registered".into()],
            },
            r#"{"lines":["starting","registered"]}"#,
        );
        assert!(serde_json::from_str::<AgentLog>(r#"{"lines":[],"extra":1}"#).is_err());
        pin(
            &ErrorBody {
                error: "not_found".into(),
                message: "machine not found".into(),
            },
            r#"{"error":"not_found","message":"machine not found"}"#,
        );
    }
}
