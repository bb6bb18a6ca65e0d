//! The boot-fate decision: what a machine does when it network-boots.
//!
//! The server decides, never the client: iPXE asks `/boot/{mac}` and gets a script chosen
//! here from the machine's recorded state. The rule is deliberately conservative — only a
//! machine that an operator assigned an OS to, with a workflow ready for it, is ever imaged;
//! anything uncertain boots the harmless discovery agent, which writes nothing to disk.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::MachineState;
use crate::workflow::WorkflowState;

/// What the boot path knows about a machine when it asks. `None` means the MAC is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootView {
    pub state: MachineState,
    /// The workflow waiting for (or running on) the machine, if one exists.
    pub workflow_id: Option<Uuid>,
    /// That workflow's state, when the store has it: it decides before the machine's state
    /// (see [`decide`]).
    pub workflow_state: Option<WorkflowState>,
    /// The workflow has installed the OS and waits for its first boot to phone home: the
    /// machine boots its disk even though the workflow still runs.
    pub installed: bool,
}

/// What the machine should boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(tag = "fate", rename_all = "camelCase")]
pub enum BootFate {
    /// Boot the agent in discovery mode: report hardware, then wait. Writes nothing to disk.
    Discovery { reason: DiscoveryReason },
    /// Boot the agent in imaging mode to run this workflow.
    Imaging {
        #[serde(rename = "workflowId")]
        workflow_id: Uuid,
    },
    /// Boot the installed OS from the local disk.
    LocalDisk,
}

/// Why a machine is sent to discovery, for logs and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum DiscoveryReason {
    /// No machine has this MAC.
    UnknownMachine,
    /// Known, but no hardware report yet.
    NotRegistered,
    /// Registered; waiting for an operator to assign an OS.
    AwaitingAssignment,
    /// OS assigned, but no workflow exists yet to run.
    AwaitingWorkflow,
    /// Provisioning failed: hold the machine in the agent until an operator retries.
    HeldAfterError,
}

/// Decides a machine's boot fate from its recorded state.
pub fn decide(machine: Option<BootView>) -> BootFate {
    use DiscoveryReason as R;
    let Some(m) = machine else {
        return BootFate::Discovery {
            reason: R::UnknownMachine,
        };
    };
    let discovery = |reason| BootFate::Discovery { reason };
    // The workflow decides when there is one: pending or running → imaging; succeeded → the
    // installed OS; failed, timed out or cancelled → discovery, held (never re-imaged in a
    // loop: only an operator's retry makes it pending again).
    if let (Some(workflow_id), Some(ws)) = (m.workflow_id, m.workflow_state) {
        return match ws {
            WorkflowState::Running if m.installed => BootFate::LocalDisk,
            WorkflowState::Pending | WorkflowState::Running => BootFate::Imaging { workflow_id },
            WorkflowState::Succeeded => BootFate::LocalDisk,
            WorkflowState::Failed | WorkflowState::TimedOut | WorkflowState::Cancelled => {
                discovery(R::HeldAfterError)
            }
        };
    }
    match m.state {
        MachineState::Discovered => discovery(R::NotRegistered),
        MachineState::Registered => discovery(R::AwaitingAssignment),
        MachineState::OsAssigned | MachineState::Provisioning => match m.workflow_id {
            Some(workflow_id) => BootFate::Imaging { workflow_id },
            None => discovery(R::AwaitingWorkflow),
        },
        MachineState::Ready => BootFate::LocalDisk,
        MachineState::Error => discovery(R::HeldAfterError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_with_and_without_a_workflow() {
        let wf = Uuid::from_u128(7);
        assert_eq!(
            decide(None),
            BootFate::Discovery {
                reason: DiscoveryReason::UnknownMachine
            }
        );
        for state in MachineState::ALL {
            for workflow_id in [None, Some(wf)] {
                let got = decide(Some(BootView {
                    state,
                    workflow_id,
                    workflow_state: None,
                    installed: false,
                }));
                let want = match (state, workflow_id) {
                    (MachineState::Discovered, _) => BootFate::Discovery {
                        reason: DiscoveryReason::NotRegistered,
                    },
                    (MachineState::Registered, _) => BootFate::Discovery {
                        reason: DiscoveryReason::AwaitingAssignment,
                    },
                    (MachineState::OsAssigned | MachineState::Provisioning, Some(w)) => {
                        BootFate::Imaging { workflow_id: w }
                    }
                    (MachineState::OsAssigned | MachineState::Provisioning, None) => {
                        BootFate::Discovery {
                            reason: DiscoveryReason::AwaitingWorkflow,
                        }
                    }
                    (MachineState::Ready, _) => BootFate::LocalDisk,
                    (MachineState::Error, _) => BootFate::Discovery {
                        reason: DiscoveryReason::HeldAfterError,
                    },
                };
                assert_eq!(got, want, "{state} {workflow_id:?}");
            }
        }
    }

    #[test]
    fn only_assigned_machines_with_a_workflow_are_imaged() {
        for state in MachineState::ALL {
            let fate = decide(Some(BootView {
                state,
                workflow_id: Some(Uuid::nil()),
                workflow_state: None,
                installed: false,
            }));
            let imaging = matches!(fate, BootFate::Imaging { .. });
            assert_eq!(
                imaging,
                matches!(state, MachineState::OsAssigned | MachineState::Provisioning),
                "{state}"
            );
        }
    }

    #[test]
    fn the_workflow_decides_and_a_failed_one_is_held() {
        let wf = Uuid::from_u128(9);
        let fate = |state, ws| {
            decide(Some(BootView {
                state,
                workflow_id: Some(wf),
                workflow_state: Some(ws),
                installed: false,
            }))
        };
        use MachineState as M;
        use WorkflowState as W;
        assert_eq!(
            fate(M::OsAssigned, W::Pending),
            BootFate::Imaging { workflow_id: wf }
        );
        assert_eq!(
            fate(M::Provisioning, W::Running),
            BootFate::Imaging { workflow_id: wf }
        );
        // A Ready machine given a new workflow (reimage) images again.
        assert_eq!(
            fate(M::Ready, W::Pending),
            BootFate::Imaging { workflow_id: wf }
        );
        assert_eq!(fate(M::Ready, W::Succeeded), BootFate::LocalDisk);
        // Installed, waiting for the first boot's phone home: the disk, not the agent again.
        assert_eq!(
            decide(Some(BootView {
                state: M::Provisioning,
                workflow_id: Some(wf),
                workflow_state: Some(W::Running),
                installed: true,
            })),
            BootFate::LocalDisk
        );
        for ws in [W::Failed, W::TimedOut, W::Cancelled] {
            assert_eq!(
                fate(M::Error, ws),
                BootFate::Discovery {
                    reason: DiscoveryReason::HeldAfterError
                }
            );
        }
    }
}
