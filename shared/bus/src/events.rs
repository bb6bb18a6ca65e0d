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
    LeaseGranted::SUBJECT,
    LeaseEnded::SUBJECT,
    PxeAnswered::SUBJECT,
    TftpTransferred::SUBJECT,
    BootDecided::SUBJECT,
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

/// dhcpd handed out (or renewed) an address. Reservation mode only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseGranted {
    /// Client MAC, lower-case and colon-separated.
    pub mac: String,
    /// The leased IPv4 address.
    pub ip: String,
    /// Lease length in seconds.
    pub lease_seconds: u32,
    /// `true` for a fixed address of a known machine, `false` for one from the pool.
    pub reserved: bool,
    /// The machine, when the MAC belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
    /// The relay agent (giaddr) the request came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl Event for LeaseGranted {
    const SUBJECT: &'static str = "dragonfly.lease.granted";
    const TYPE: &'static str = "computer.dragonfly.lease.granted";
    fn subject(&self) -> Option<String> {
        Some(self.mac.clone())
    }
}

/// A lease ended before or at its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseEnded {
    pub mac: String,
    pub ip: String,
    /// `released` (DHCPRELEASE), `declined` (DHCPDECLINE: the address is in use) or `expired`.
    pub reason: String,
}

impl Event for LeaseEnded {
    const SUBJECT: &'static str = "dragonfly.lease.ended";
    const TYPE: &'static str = "computer.dragonfly.lease.ended";
    fn subject(&self) -> Option<String> {
        Some(self.mac.clone())
    }
}

/// dhcpd told a network-booting client what to boot (in any mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PxeAnswered {
    pub mac: String,
    /// `bios`, `uefi-x64`, `uefi-arm64`, … from option 93.
    pub arch: String,
    /// `firmware` (PXE ROM), `ipxe`, or `http` (UEFI HTTP boot).
    pub client: String,
    /// The boot file name or URL given.
    pub boot: String,
    /// `reservation`, `proxy` or `autoproxy`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
}

impl Event for PxeAnswered {
    const SUBJECT: &'static str = "dragonfly.pxe.answered";
    const TYPE: &'static str = "computer.dragonfly.pxe.answered";
    fn subject(&self) -> Option<String> {
        Some(self.mac.clone())
    }
}

/// tftpd finished (or abandoned) a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TftpTransferred {
    /// The file as requested.
    pub file: String,
    /// Client address, `ip:port`.
    pub client: String,
    /// Bytes sent.
    pub bytes: u64,
    pub duration_ms: u64,
    /// `true` when the client acknowledged the last block.
    pub complete: bool,
    /// Why it stopped early, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event for TftpTransferred {
    const SUBJECT: &'static str = "dragonfly.tftp.transferred";
    const TYPE: &'static str = "computer.dragonfly.tftp.transferred";
}

/// ipxed decided a booting machine's fate and served it a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootDecided {
    pub mac: String,
    /// `discovery`, `imaging` or `localDisk`.
    pub fate: String,
    /// Why discovery, when it is (`unknownMachine`, `awaitingAssignment`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
}

impl Event for BootDecided {
    const SUBJECT: &'static str = "dragonfly.boot.decided";
    const TYPE: &'static str = "computer.dragonfly.boot.decided";
    fn subject(&self) -> Option<String> {
        Some(self.mac.clone())
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
        check::<LeaseGranted>();
        check::<LeaseEnded>();
        check::<PxeAnswered>();
        check::<TftpTransferred>();
        check::<BootDecided>();
        assert_eq!(ALL_SUBJECTS.len(), 8, "check every event above");
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
