//! Workflows: one template running on one machine, with per-action progress.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

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
                })
                .collect(),
            attempts: 0,
        }
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
}
