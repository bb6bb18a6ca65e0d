//! Workflows: one template running on one machine, with per-action progress, and the pure
//! state machine that moves them.
//!
//! workflowd is the one process that changes a workflow's state; it does so only through
//! [`Workflow::apply`] (an agent's report) and [`Workflow::check_time`] (timeouts), then
//! writes the result with the reports it consumed in one transaction. Keeping the machine
//! pure (no clock, no I/O: `now` is passed in) is what lets it be tested step by step, and
//! what makes applying the same report twice harmless: a report that does not match the
//! workflow's attempt and current action changes nothing.
//!
//! Retries: an action's `retries` re-run **that action** (each try is a new attempt, so a
//! report from the failed try can never move the new one); an operator's retry of a failed,
//! timed-out or cancelled workflow restarts it **from its first action** (every native action
//! is safe to run again: tables and images are rewritten whole, files replaced atomically).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::MachineId;
use crate::agent_api::{ActionReport, ReportEvent};
use crate::template::ActionSpec;

/// The message of a first-boot action while the installed OS has not phoned home.
pub const WAITING_FOR_FIRST_BOOT: &str = "installed, waiting for first boot";

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum WorkflowState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped by an operator.
    Cancelled,
}

impl WorkflowState {
    /// True once the workflow can change no more (until an operator retries it).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }
}

/// Where one action of a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum ActionState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// The workflow was cancelled before or while this action ran.
    Cancelled,
}

/// Progress of one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionStatus {
    pub name: String,
    pub state: ActionState,
    /// 0–100.
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Bytes moved so far (image2disk), from the latest progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Total bytes when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Throughput from the latest progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// How many times the action was started (retries included).
    #[serde(default)]
    pub tries: u32,
    /// The agent's last console lines when the action failed, kept with the workflow in the
    /// store so an operator reads why an install failed after any daemon restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// A workflow's status: the `status` of a Workflow resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    pub state: WorkflowState,
    /// Index of the action running now (or that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_action: Option<usize>,
    pub actions: Vec<ActionStatus>,
    /// How many times the workflow has been started (retries included).
    pub attempts: u32,
}

/// A workflow's specification: which template runs on which machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Name of the Hardware resource.
    pub hardware_ref: String,
    /// Name of the Template resource.
    pub template_ref: String,
    /// Default per-action timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

impl WorkflowStatus {
    /// A fresh status for a template's action names: everything pending.
    pub fn pending<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            state: WorkflowState::Pending,
            current_action: None,
            actions: names
                .into_iter()
                .map(|n| ActionStatus {
                    name: n.to_owned(),
                    state: ActionState::Pending,
                    percent: 0,
                    message: None,
                    started_at: None,
                    finished_at: None,
                    bytes_done: None,
                    bytes_total: None,
                    bytes_per_second: None,
                    tries: 0,
                    log_tail: Vec::new(),
                })
                .collect(),
            attempts: 0,
        }
    }
}

impl WorkflowState {
    /// The name stored and shown (`"TimedOut"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl std::str::FromStr for WorkflowState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "TimedOut" => Self::TimedOut,
            "Cancelled" => Self::Cancelled,
            _ => return Err(UnknownState(s.to_owned())),
        })
    }
}

/// A workflow state name nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workflow state {0:?}")]
pub struct UnknownState(pub String);

/// An operator's request, recorded by apid and carried out by workflowd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    Cancel,
    Retry,
}

/// One workflow as stored: the template's actions rendered for its machine, where it is, and
/// what was served to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub id: Uuid,
    /// Unique, for the `workflows/{name}` resource (`<machine name>-<short id>`).
    pub name: String,
    pub machine_id: MachineId,
    /// The template's name; its actions are copied (rendered) below, so editing the template
    /// later never changes a running workflow.
    pub template: String,
    pub actions: Vec<ActionSpec>,
    /// The values given at assignment (template variables).
    pub values: serde_json::Map<String, serde_json::Value>,
    pub state: WorkflowState,
    /// 1 first, +1 on every retry (an action's or the operator's).
    pub attempt: u32,
    pub status: Vec<ActionStatus>,
    /// The action to run now (or that ended the workflow).
    pub current_action: u32,
    /// When the current action's clock started (first served or reported started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_since: Option<Timestamp>,
    /// Default per-action timeout, and the whole workflow's (`workflow_timeout_seconds`).
    pub action_timeout_seconds: u32,
    pub workflow_timeout_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the current run began: its first report, or an operator's retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Why the workflow failed, timed out or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource_version: i64,
}

/// What apid last served to the agent (recorded apart from what the agent reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    pub attempt: u32,
    pub index: u32,
    /// The first time this (attempt, index) was served.
    pub at: Timestamp,
}

/// What applying something to a workflow changed, for the events and the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing (a stale or duplicate report).
    None,
    /// Pending → Running.
    Started,
    /// An action moved (progress, an action started or succeeded, a retry of it).
    Progress,
    Succeeded,
    Failed(String),
    TimedOut(String),
    Cancelled,
    /// An operator's retry: back to Pending with a new attempt.
    Restarted,
}

impl Workflow {
    fn action_name(&self, i: u32) -> &str {
        self.actions
            .get(i as usize)
            .map_or("?", |a| a.name.as_str())
    }

    fn timeout_of(&self, i: u32) -> u32 {
        self.actions
            .get(i as usize)
            .and_then(|a| a.timeout_seconds)
            .unwrap_or(self.action_timeout_seconds)
    }

    fn finish(&mut self, state: WorkflowState, error: Option<String>, now: Timestamp) {
        let astate = match state {
            WorkflowState::Failed => Some(ActionState::Failed),
            WorkflowState::TimedOut => Some(ActionState::TimedOut),
            WorkflowState::Cancelled => Some(ActionState::Cancelled),
            _ => None,
        };
        if let Some(astate) = astate
            && let Some(a) = self.status.get_mut(self.current_action as usize)
            && !matches!(a.state, ActionState::Succeeded)
        {
            a.state = astate;
            a.finished_at = Some(now);
            if let Some(e) = &error {
                a.message = Some(e.clone());
            }
        }
        self.state = state;
        self.error = error;
        self.finished_at = Some(now);
    }

    /// Applies one agent report. Reports of another attempt or another action than the
    /// current one, and any report to a finished workflow, change nothing.
    pub fn apply(&mut self, r: &ActionReport, now: Timestamp) -> Change {
        if self.state.is_terminal()
            || r.workflow_id != self.id
            || r.attempt != self.attempt
            || r.action != self.current_action
        {
            return Change::None;
        }
        let i = self.current_action as usize;
        let Some(a) = self.status.get_mut(i) else {
            return Change::None;
        };
        let first = self.state == WorkflowState::Pending;
        if first {
            self.state = WorkflowState::Running;
            self.started_at.get_or_insert(now);
        }
        if self.action_since.is_none() {
            self.action_since = Some(now);
        }
        if a.state == ActionState::Pending {
            a.state = ActionState::Running;
            a.started_at = Some(now);
            a.tries += 1;
        }
        let change = match &r.event {
            ReportEvent::Started => Change::Progress,
            ReportEvent::Progress {
                bytes_done,
                bytes_total,
                bytes_per_second,
                message,
            } => {
                a.bytes_done = Some(*bytes_done);
                a.bytes_total = *bytes_total;
                a.bytes_per_second = Some(*bytes_per_second);
                if let Some(t) = bytes_total.filter(|t| *t > 0) {
                    a.percent =
                        u8::try_from((bytes_done.saturating_mul(100) / t).min(100)).unwrap_or(100);
                }
                if message.is_some() {
                    a.message.clone_from(message);
                }
                Change::Progress
            }
            ReportEvent::Succeeded { message } => {
                a.state = ActionState::Succeeded;
                a.percent = 100;
                a.finished_at = Some(now);
                if message.is_some() {
                    a.message.clone_from(message);
                }
                self.current_action += 1;
                self.action_since = None;
                if self.current_action as usize >= self.actions.len() {
                    self.current_action -= 1;
                    self.finish(WorkflowState::Succeeded, None, now);
                    Change::Succeeded
                } else {
                    self.begin_waiting(now);
                    Change::Progress
                }
            }
            ReportEvent::Failed { message, log_tail } => {
                let retries = self.actions.get(i).map_or(0, |s| s.retries);
                a.message = Some(message.clone());
                a.log_tail.clone_from(log_tail);
                if a.tries <= retries {
                    // Run the action again, as a new attempt; its clock keeps running
                    // (an action's timeout counts its retries).
                    a.state = ActionState::Pending;
                    self.attempt += 1;
                    Change::Progress
                } else {
                    let why = format!(
                        "action {:?} failed: {message}",
                        self.action_name(self.current_action)
                    );
                    self.finish(WorkflowState::Failed, Some(why.clone()), now);
                    Change::Failed(why)
                }
            }
        };
        if first && change == Change::Progress {
            Change::Started
        } else {
            change
        }
    }

    /// When the current action is one no agent runs (the installed OS's first boot), it
    /// starts now: its clock runs (so a first boot that never phones home times out) and it
    /// says what it waits for.
    fn begin_waiting(&mut self, now: Timestamp) {
        let i = self.current_action as usize;
        if self
            .actions
            .get(i)
            .is_some_and(|a| !a.action.runs_on_agent())
            && let Some(a) = self.status.get_mut(i)
        {
            self.action_since = Some(now);
            a.state = ActionState::Running;
            a.started_at = Some(now);
            a.tries += 1;
            a.message = Some(WAITING_FOR_FIRST_BOOT.into());
        }
    }

    /// Times the workflow out when its current action, or the whole workflow, ran too long.
    /// The action's clock starts when it is first served (or reported started): an agent
    /// that never answers times out like one that stops answering.
    pub fn check_time(&mut self, now: Timestamp) -> Change {
        if self.state.is_terminal() {
            return Change::None;
        }
        let i = self.current_action;
        let since = self.action_since.or(self
            .served
            .filter(|s| s.attempt == self.attempt && s.index == i)
            .map(|s| s.at));
        if let Some(since) = since {
            let limit = i64::from(self.timeout_of(i));
            if now.duration_since(since).as_secs() >= limit {
                let why = format!(
                    "action {:?} timed out: no end reported within {limit} s",
                    self.action_name(i)
                );
                self.finish(WorkflowState::TimedOut, Some(why.clone()), now);
                return Change::TimedOut(why);
            }
        }
        // The whole run's clock: from its first report (or from the assignment, or the
        // operator's retry, while none came), so a machine that never boots times out too.
        let limit = i64::from(self.workflow_timeout_seconds);
        if now
            .duration_since(self.started_at.unwrap_or(self.created_at))
            .as_secs()
            >= limit
        {
            let why = format!(
                "workflow timed out after {limit} s, during action {:?}",
                self.action_name(i)
            );
            self.finish(WorkflowState::TimedOut, Some(why.clone()), now);
            return Change::TimedOut(why);
        }
        Change::None
    }

    /// Carries out an operator's request.
    pub fn request(&mut self, req: Request, now: Timestamp) -> Change {
        match req {
            Request::Cancel if !self.state.is_terminal() => {
                self.finish(
                    WorkflowState::Cancelled,
                    Some("cancelled by an operator".into()),
                    now,
                );
                Change::Cancelled
            }
            Request::Retry
                if self.state.is_terminal() && self.state != WorkflowState::Succeeded =>
            {
                self.attempt += 1;
                self.state = WorkflowState::Pending;
                self.current_action = 0;
                self.action_since = None;
                // The retry's own clock (`created_at` stays the assignment's time).
                self.started_at = Some(now);
                self.finished_at = None;
                self.error = None;
                let names: Vec<&str> = self.actions.iter().map(|a| a.name.as_str()).collect();
                self.status = WorkflowStatus::pending(names).actions;
                Change::Restarted
            }
            _ => Change::None,
        }
    }

    /// The index an agent should run now, given the actions of this attempt whose success or
    /// failure the store holds but workflowd has not applied yet: a stored success of the
    /// current action moves past it (so an agent never runs an action twice for want of
    /// workflowd), a stored failure serves nothing. Reports about other actions are ignored,
    /// as [`Workflow::apply`] ignores them. `None`: nothing to run.
    pub fn to_serve(&self, succeeded: &[u32], failed: &[u32]) -> Option<u32> {
        if self.state.is_terminal() {
            return None;
        }
        let mut next = self.current_action;
        while succeeded.contains(&next) {
            next += 1;
        }
        if failed.contains(&next) {
            return None;
        }
        // The installed OS's first boot is not the agent's to run.
        self.actions
            .get(next as usize)
            .filter(|a| a.action.runs_on_agent())
            .map(|_| next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_status_lists_every_action() {
        let s = WorkflowStatus::pending(["disk", "image"]);
        assert_eq!(s.actions.len(), 2);
        assert!(s.actions.iter().all(|a| a.state == ActionState::Pending));
        assert!(!s.state.is_terminal());
        assert!(WorkflowState::TimedOut.is_terminal());
    }

    fn wf(timeout: u32, retries: u32) -> Workflow {
        let actions: Vec<ActionSpec> = serde_json::from_value(serde_json::json!([
            {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
             "timeoutSeconds": timeout, "retries": retries,
             "partitions": [{"label": "root", "size": "rest", "type": "linux"}]},
            {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
             "filesystem": "ext4", "kernel": "/boot/vmlinuz"}
        ]))
        .unwrap();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        Workflow {
            id: Uuid::from_u128(1),
            name: "w".into(),
            machine_id: MachineId(Uuid::from_u128(2)),
            template: "t".into(),
            status: WorkflowStatus::pending(actions.iter().map(|a| a.name.as_str())).actions,
            actions,
            values: Default::default(),
            state: WorkflowState::Pending,
            attempt: 1,
            current_action: 0,
            action_since: None,
            action_timeout_seconds: 600,
            workflow_timeout_seconds: 3600,
            served: None,
            request: None,
            created_at: t0,
            updated_at: t0,
            started_at: None,
            finished_at: None,
            error: None,
            resource_version: 1,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    fn r(attempt: u32, action: u32, event: ReportEvent) -> ActionReport {
        ActionReport {
            workflow_id: Uuid::from_u128(1),
            attempt,
            action,
            seq: 0,
            event,
        }
    }

    fn ok() -> ReportEvent {
        ReportEvent::Succeeded { message: None }
    }

    #[test]
    fn reports_run_the_workflow_and_stale_ones_change_nothing() {
        let mut w = wf(60, 0);
        assert_eq!(
            w.apply(&r(1, 0, ReportEvent::Started), at(1)),
            Change::Started
        );
        assert_eq!(
            w.apply(&r(1, 1, ok()), at(2)),
            Change::None,
            "not the current action"
        );
        assert_eq!(
            w.apply(&r(0, 0, ok()), at(2)),
            Change::None,
            "another attempt"
        );
        assert_eq!(w.apply(&r(1, 0, ok()), at(3)), Change::Progress);
        assert_eq!(w.current_action, 1);
        assert_eq!(w.apply(&r(1, 1, ok()), at(4)), Change::Succeeded);
        assert_eq!(w.state, WorkflowState::Succeeded);
        assert_eq!(w.apply(&r(1, 1, ok()), at(5)), Change::None, "finished");
    }

    #[test]
    fn an_action_times_out_from_when_it_was_served() {
        let mut w = wf(30, 0);
        assert_eq!(
            w.check_time(at(1000)),
            Change::None,
            "never served: only the workflow clock"
        );
        w.served = Some(Served {
            attempt: 1,
            index: 0,
            at: at(10),
        });
        assert_eq!(w.check_time(at(39)), Change::None);
        let Change::TimedOut(why) = w.check_time(at(40)) else {
            panic!("not timed out")
        };
        assert!(why.contains("\"disk\""), "{why}");
        assert_eq!(w.status[0].state, ActionState::TimedOut);
        assert!(matches!(
            wf(30, 0).check_time(at(3600)),
            Change::TimedOut(_)
        ));
    }

    #[test]
    fn the_first_boot_waits_for_its_phone_home_and_times_out_without_it() {
        let mut w = wf(60, 0);
        let first_boot: ActionSpec = serde_json::from_value(serde_json::json!(
            {"name": "first-boot", "type": "cloudinit", "timeoutSeconds": 300,
             "userData": "#cloud-config\n"}
        ))
        .unwrap();
        w.actions.push(first_boot);
        w.status = WorkflowStatus::pending(w.actions.iter().map(|a| a.name.as_str())).actions;
        let ok = || ReportEvent::Succeeded { message: None };
        w.apply(&r(1, 0, ok()), at(1));
        assert_eq!(w.to_serve(&[], &[]), Some(1));
        assert_eq!(w.apply(&r(1, 1, ok()), at(2)), Change::Progress);
        // The kexec is done: nothing is served to an agent, the wait has begun.
        assert_eq!((w.current_action, w.to_serve(&[], &[])), (2, None));
        assert_eq!(w.to_serve(&[1], &[]), None);
        assert_eq!(w.status[2].state, ActionState::Running);
        assert_eq!(w.status[2].message.as_deref(), Some(WAITING_FOR_FIRST_BOOT));
        assert_eq!(w.check_time(at(301)), Change::None);
        let mut late = w.clone();
        let Change::TimedOut(why) = late.check_time(at(302)) else {
            panic!("no timeout")
        };
        assert!(why.contains("\"first-boot\""), "{why}");
        // The phone home (a report of the first-boot action) finishes the workflow.
        assert_eq!(w.apply(&r(1, 2, ok()), at(100)), Change::Succeeded);
        assert_eq!(w.state, WorkflowState::Succeeded);
    }

    #[test]
    fn retries_rerun_the_action_then_fail_and_an_operator_restarts_it() {
        let failed = || ReportEvent::Failed {
            message: "no disk".into(),
            log_tail: vec!["mage: no disk matches".into()],
        };
        let mut w = wf(60, 1);
        w.apply(&r(1, 0, ReportEvent::Started), at(1));
        assert_eq!(w.apply(&r(1, 0, failed()), at(2)), Change::Progress);
        assert_eq!((w.attempt, w.current_action), (2, 0));
        assert_eq!(w.to_serve(&[], &[]), Some(0));
        assert!(matches!(
            w.apply(&r(2, 0, failed()), at(3)),
            Change::Failed(_)
        ));
        assert_eq!(w.to_serve(&[], &[]), None);
        assert_eq!(
            w.request(Request::Cancel, at(4)),
            Change::None,
            "already over"
        );
        assert_eq!(w.request(Request::Retry, at(4)), Change::Restarted);
        assert_eq!(
            (w.state, w.attempt, w.current_action),
            (WorkflowState::Pending, 3, 0)
        );
        assert_eq!(w.to_serve(&[0], &[]), Some(1));
        assert_eq!(
            w.to_serve(&[1], &[]),
            Some(0),
            "a later success skips nothing"
        );
        assert_eq!(w.to_serve(&[], &[0]), None);
    }
}
