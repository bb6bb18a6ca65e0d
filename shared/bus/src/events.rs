//! Every event Dragonfly publishes, in one place.
//!
//! This module is the source of truth for the bus's subjects: `docs/events.md` and
//! `docs/architecture.md` are checked against it, so a new event is added here (and to
//! [`ALL_SUBJECTS`]) in the same commit as its documentation. Payloads are plain serde structs;
//! they must never carry secrets (every subscriber sees them) and only gain optional fields, so
//! an older subscriber keeps decoding a newer publisher's events.
//!
//! Subjects are `dragonfly.<kind>.<event>`; the CloudEvents `type` is the subject with the
//! `computer.` prefix (reverse DNS of dragonfly.computer).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// Every subject an [`Event`] in this module is published on.
pub const ALL_SUBJECTS: &[&str] = &[
    MachineRegistered::SUBJECT,
    MachineUpdated::SUBJECT,
    MachineDeleted::SUBJECT,
];

/// A machine was registered, or an already-known machine registered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRegistered {
    /// The machine.
    pub machine_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its MAC addresses, lower-case and colon-separated.
    pub macs: Vec<String>,
    /// `true` when this registration created the machine, `false` when it already existed.
    pub created: bool,
}

impl Event for MachineRegistered {
    const SUBJECT: &'static str = "dragonfly.machine.registered";
    const TYPE: &'static str = "computer.dragonfly.machine.registered";
    fn subject(&self) -> Option<String> {
        Some(self.machine_id.to_string())
    }
}

/// A machine's stored record changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineUpdated {
    /// The machine.
    pub machine_id: Uuid,
    /// Its name after the change.
    pub name: String,
    /// The record's resource version after the change.
    pub resource_version: i64,
    /// Names of the fields that changed.
    pub changed: Vec<String>,
}

impl Event for MachineUpdated {
    const SUBJECT: &'static str = "dragonfly.machine.updated";
    const TYPE: &'static str = "computer.dragonfly.machine.updated";
    fn subject(&self) -> Option<String> {
        Some(self.machine_id.to_string())
    }
}

/// A machine was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeleted {
    /// The machine.
    pub machine_id: Uuid,
    /// Its name when it was deleted.
    pub name: String,
}

impl Event for MachineDeleted {
    const SUBJECT: &'static str = "dragonfly.machine.deleted";
    const TYPE: &'static str = "computer.dragonfly.machine.deleted";
    fn subject(&self) -> Option<String> {
        Some(self.machine_id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<E: Event>() {
        let parts: Vec<&str> = E::SUBJECT.split('.').collect();
        assert_eq!(
            parts.len(),
            3,
            "{} is not dragonfly.<kind>.<event>",
            E::SUBJECT
        );
        assert_eq!(parts[0], "dragonfly");
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{}",
            E::SUBJECT
        );
        assert_eq!(E::TYPE, format!("computer.{}", E::SUBJECT));
        assert!(ALL_SUBJECTS.contains(&E::SUBJECT), "{} missing", E::SUBJECT);
    }

    #[test]
    fn subjects_and_types_follow_the_convention() {
        check::<MachineRegistered>();
        check::<MachineUpdated>();
        check::<MachineDeleted>();
        assert_eq!(ALL_SUBJECTS.len(), 3, "check every event above");
        let mut unique = ALL_SUBJECTS.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ALL_SUBJECTS.len());
    }
}

#[cfg(test)]
mod docs_tests {
    /// docs/events.md is the operator-facing list of subjects; it must not fall behind.
    #[test]
    fn every_subject_is_documented() {
        let doc = include_str!("../../../docs/events.md");
        for subject in super::ALL_SUBJECTS {
            assert!(
                doc.contains(&format!("`{subject}`")),
                "docs/events.md lacks {subject}"
            );
        }
    }
}
