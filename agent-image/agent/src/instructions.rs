//! Asking apid what to do next (`GET /api/agent/instructions`, boot token only).
//!
//! A registered agent polls this so an operator's OS assignment reaches a machine waiting in
//! discovery within seconds. Polling (rather than a stream) survives every kind of network
//! hiccup with no state on either side. The answer's type is core's
//! [`Instructions`], the one apid serves.

use std::time::Duration;

use dragonfly_core::Chain;
use dragonfly_core::agent_api::{INSTRUCTIONS_PATH, Instructions};
use dragonfly_core::{BootFate, DiscoveryReason};

use crate::http::{self, Url};

/// One poll's outcome.
#[derive(Debug)]
pub enum Poll {
    Answer(Instructions),
    /// 404: the server does not know this machine (deleted by an operator): register again.
    Unknown,
    /// Anything else: try again later.
    Failed(String),
}

/// Asks once.
pub fn ask(base: &Url, token: &str, timeout: Duration) -> Poll {
    match http::get(base, INSTRUCTIONS_PATH, token, timeout) {
        Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
            Ok(i) => Poll::Answer(i),
            Err(e) => Poll::Failed(format!(
                "the server's answer is not understood: {}",
                Chain(&e)
            )),
        },
        Ok(r) if r.status == 404 => Poll::Unknown,
        Ok(r) => Poll::Failed(format!("the server answered HTTP {}", r.status)),
        Err(e) => Poll::Failed(Chain(&e).to_string()),
    }
}

/// The sentence an operator at the console reads for an answer.
pub fn describe(i: &Instructions) -> String {
    use DiscoveryReason as R;
    match i.fate {
        BootFate::Imaging { workflow_id } => format!(
            "an OS was assigned to {} (workflow {workflow_id}): installing it.",
            i.name
        ),
        BootFate::LocalDisk => format!("{} is provisioned: restarting to boot its disk.", i.name),
        BootFate::Discovery {
            reason: R::AwaitingWorkflow,
        } => format!(
            "{}: an OS is assigned; waiting for its workflow to be created.",
            i.name
        ),
        BootFate::Discovery {
            reason: R::HeldAfterError,
        } => format!(
            "{}: the last installation failed; waiting for an operator to retry.",
            i.name
        ),
        BootFate::Discovery {
            reason: R::UnknownMachine | R::NotRegistered | R::AwaitingAssignment,
        } => format!(
            "{} ({}): waiting for an operator to assign an OS.",
            i.name, i.state
        ),
    }
}

/// Whether the answer sends the machine elsewhere (the agent's job here is done). Only the
/// local disk does: imaging runs in place whatever mode the agent was booted in (a discovery
/// agent takes the fast track, with no reboot through PXE).
pub fn wants_elsewhere(fate: &BootFate, _mode: crate::Mode) -> bool {
    match fate {
        BootFate::LocalDisk => true,
        BootFate::Imaging { .. } | BootFate::Discovery { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use dragonfly_core::{MachineId, MachineState};
    use uuid::Uuid;

    use super::*;
    use crate::Mode;

    fn answer(fate: BootFate) -> Instructions {
        Instructions {
            machine_id: MachineId(Uuid::nil()),
            name: "HungryDynamicHybridSwear".into(),
            state: MachineState::Registered,
            fate,
            poll_after_seconds: 10,
        }
    }

    fn discovery(reason: DiscoveryReason) -> BootFate {
        BootFate::Discovery { reason }
    }

    #[test]
    fn every_fate_reads_plainly() {
        let wf = Uuid::from_u128(0xaa);
        assert!(
            describe(&answer(discovery(DiscoveryReason::AwaitingAssignment)))
                .contains("waiting for an operator")
        );
        let imaging = describe(&answer(BootFate::Imaging { workflow_id: wf }));
        assert!(imaging.contains("installing it"), "{imaging}");
        assert!(imaging.contains(&wf.to_string()), "{imaging}");
        assert!(describe(&answer(BootFate::LocalDisk)).contains("boot its disk"));
        assert!(describe(&answer(discovery(DiscoveryReason::HeldAfterError))).contains("failed"));
        assert!(
            describe(&answer(discovery(DiscoveryReason::AwaitingWorkflow)))
                .contains("waiting for its workflow")
        );
    }

    #[test]
    fn only_local_disk_sends_the_machine_away() {
        let imaging = BootFate::Imaging {
            workflow_id: Uuid::nil(),
        };
        assert!(wants_elsewhere(&BootFate::LocalDisk, Mode::Discovery));
        assert!(!wants_elsewhere(&imaging, Mode::Discovery));
        assert!(!wants_elsewhere(&imaging, Mode::Imaging));
        assert!(!wants_elsewhere(
            &discovery(DiscoveryReason::AwaitingAssignment),
            Mode::Discovery
        ));
    }

    #[test]
    fn parses_the_server_answer() {
        let body = br#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"N","state":"Registered","fate":"discovery","reason":"awaitingAssignment","pollAfterSeconds":10}"#;
        let i: Instructions = serde_json::from_slice(body).unwrap();
        assert_eq!(i.fate, discovery(DiscoveryReason::AwaitingAssignment));
        assert_eq!(i.state, MachineState::Registered);
        assert_eq!(i.poll_after_seconds, 10);
    }
}
