//! The machine lifecycle as a state machine.
//!
//! ```text
//! Discovered ─register─▶ Registered ─assign─▶ OsAssigned ─start─▶ Provisioning ─succeed─▶ Ready
//!                            ▲  ◀──unassign──┘  ▲   │                  │                   │
//!                            │                  │   └──fail──▶ Error ◀─fail─┘               │
//!                            └─────unassign─────┼────────────── │                            │
//!                                               └────retry──────┘◀──────────assign───────────┘
//! ```
//!
//! Every state change of a machine goes through [`MachineState::apply`], so an illegal move
//! (say, `Ready` straight to `Provisioning`, which would reimage a machine nobody asked to
//! reimage) is refused in one place rather than guarded ad hoc in each daemon.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum MachineState {
    /// Seen on the network (a DHCP or boot request) but no agent has reported yet.
    Discovered,
    /// The agent reported its hardware; no OS chosen.
    Registered,
    /// An operator chose an OS template; imaging starts on its next network boot.
    OsAssigned,
    /// A workflow is writing the OS.
    Provisioning,
    /// The OS is installed; the machine boots from its disk.
    Ready,
    /// Provisioning failed; waits for a retry or for the operator.
    Error,
}

/// Something that happened to a machine, asking for a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    /// The agent reported hardware. Legal in every state: it refreshes the inventory, and only
    /// a `Discovered` machine changes state (to `Registered`).
    Register,
    /// The operator assigned (or changed) the OS template.
    AssignOs,
    /// The operator withdrew the OS assignment.
    UnassignOs,
    /// A workflow began executing on the machine.
    StartProvisioning,
    /// The workflow finished and the machine is booting its OS.
    ProvisioningSucceeded,
    /// The workflow failed or timed out.
    Fail,
    /// Try the same assignment again after an error.
    Retry,
}

impl LifecycleEvent {
    /// Every event, for exhaustive tests and documentation.
    pub const ALL: [LifecycleEvent; 7] = [
        Self::Register,
        Self::AssignOs,
        Self::UnassignOs,
        Self::StartProvisioning,
        Self::ProvisioningSucceeded,
        Self::Fail,
        Self::Retry,
    ];
}

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a machine in state {from} cannot take event {event:?}")]
pub struct IllegalTransition {
    pub from: MachineState,
    pub event: LifecycleEvent,
}

impl MachineState {
    /// Every state, for exhaustive tests and documentation.
    pub const ALL: [MachineState; 6] = [
        Self::Discovered,
        Self::Registered,
        Self::OsAssigned,
        Self::Provisioning,
        Self::Ready,
        Self::Error,
    ];

    /// The state after `event`, or the reason it is not allowed.
    pub fn apply(self, event: LifecycleEvent) -> Result<MachineState, IllegalTransition> {
        use LifecycleEvent as E;
        use MachineState as S;
        let next = match (self, event) {
            (S::Discovered, E::Register) => S::Registered,
            (s, E::Register) => s,
            (S::Registered | S::OsAssigned | S::Ready | S::Error, E::AssignOs) => S::OsAssigned,
            (S::OsAssigned | S::Error, E::UnassignOs) => S::Registered,
            (S::OsAssigned, E::StartProvisioning) => S::Provisioning,
            (S::Provisioning, E::ProvisioningSucceeded) => S::Ready,
            (S::OsAssigned | S::Provisioning, E::Fail) => S::Error,
            (S::Error, E::Retry) => S::OsAssigned,
            (from, event) => return Err(IllegalTransition { from, event }),
        };
        Ok(next)
    }

    /// The stable name used in the store, the API and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "Discovered",
            Self::Registered => "Registered",
            Self::OsAssigned => "OsAssigned",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Error => "Error",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`MachineState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown machine state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for MachineState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::LifecycleEvent as E;
    use super::MachineState as S;
    use super::*;

    /// The whole transition table, written out independently of `apply`: every
    /// (state, event) pair must appear, and `apply` must agree with it.
    const TABLE: &[(S, E, Option<S>)] = &[
        (S::Discovered, E::Register, Some(S::Registered)),
        (S::Discovered, E::AssignOs, None),
        (S::Discovered, E::UnassignOs, None),
        (S::Discovered, E::StartProvisioning, None),
        (S::Discovered, E::ProvisioningSucceeded, None),
        (S::Discovered, E::Fail, None),
        (S::Discovered, E::Retry, None),
        (S::Registered, E::Register, Some(S::Registered)),
        (S::Registered, E::AssignOs, Some(S::OsAssigned)),
        (S::Registered, E::UnassignOs, None),
        (S::Registered, E::StartProvisioning, None),
        (S::Registered, E::ProvisioningSucceeded, None),
        (S::Registered, E::Fail, None),
        (S::Registered, E::Retry, None),
        (S::OsAssigned, E::Register, Some(S::OsAssigned)),
        (S::OsAssigned, E::AssignOs, Some(S::OsAssigned)),
        (S::OsAssigned, E::UnassignOs, Some(S::Registered)),
        (S::OsAssigned, E::StartProvisioning, Some(S::Provisioning)),
        (S::OsAssigned, E::ProvisioningSucceeded, None),
        (S::OsAssigned, E::Fail, Some(S::Error)),
        (S::OsAssigned, E::Retry, None),
        (S::Provisioning, E::Register, Some(S::Provisioning)),
        (S::Provisioning, E::AssignOs, None),
        (S::Provisioning, E::UnassignOs, None),
        (S::Provisioning, E::StartProvisioning, None),
        (S::Provisioning, E::ProvisioningSucceeded, Some(S::Ready)),
        (S::Provisioning, E::Fail, Some(S::Error)),
        (S::Provisioning, E::Retry, None),
        (S::Ready, E::Register, Some(S::Ready)),
        (S::Ready, E::AssignOs, Some(S::OsAssigned)),
        (S::Ready, E::UnassignOs, None),
        (S::Ready, E::StartProvisioning, None),
        (S::Ready, E::ProvisioningSucceeded, None),
        (S::Ready, E::Fail, None),
        (S::Ready, E::Retry, None),
        (S::Error, E::Register, Some(S::Error)),
        (S::Error, E::AssignOs, Some(S::OsAssigned)),
        (S::Error, E::UnassignOs, Some(S::Registered)),
        (S::Error, E::StartProvisioning, None),
        (S::Error, E::ProvisioningSucceeded, None),
        (S::Error, E::Fail, None),
        (S::Error, E::Retry, Some(S::OsAssigned)),
    ];

    #[test]
    fn table_covers_every_pair_once() {
        assert_eq!(TABLE.len(), S::ALL.len() * E::ALL.len());
        for s in S::ALL {
            for e in E::ALL {
                let n = TABLE
                    .iter()
                    .filter(|(ts, te, _)| *ts == s && *te == e)
                    .count();
                assert_eq!(n, 1, "({s}, {e:?}) appears {n} times");
            }
        }
    }

    #[test]
    fn apply_matches_table_exhaustively() {
        for &(from, event, want) in TABLE {
            let got = from.apply(event);
            match want {
                Some(to) => assert_eq!(got, Ok(to), "({from}, {event:?})"),
                None => assert_eq!(
                    got,
                    Err(IllegalTransition { from, event }),
                    "({from}, {event:?})"
                ),
            }
        }
    }

    #[test]
    fn ready_is_reached_only_through_provisioning() {
        for s in S::ALL {
            for e in E::ALL {
                if s.apply(e) == Ok(S::Ready) && s != S::Ready {
                    assert_eq!((s, e), (S::Provisioning, E::ProvisioningSucceeded));
                }
            }
        }
    }

    #[test]
    fn every_state_is_reachable_from_discovered() {
        let mut seen = vec![S::Discovered];
        let mut i = 0;
        while i < seen.len() {
            for e in E::ALL {
                if let Ok(n) = seen[i].apply(e)
                    && !seen.contains(&n)
                {
                    seen.push(n);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), S::ALL.len(), "{seen:?}");
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("ready".parse::<S>().is_err());
    }
}
