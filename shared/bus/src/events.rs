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

use std::net::{Ipv4Addr, SocketAddr};

use dragonfly_core::{BootFate, MacAddr, MachineId};
use serde::{Deserialize, Serialize};

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
    pub machine_id: MachineId,
    /// Its name.
    pub name: String,
    /// Its MAC addresses (lower-case and colon-separated on the wire).
    pub macs: Vec<MacAddr>,
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
    pub machine_id: MachineId,
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
    pub machine_id: MachineId,
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
    /// Client MAC.
    pub mac: MacAddr,
    /// The leased address.
    pub ip: Ipv4Addr,
    /// Lease length in seconds.
    pub lease_seconds: u32,
    /// `true` for a fixed address of a known machine, `false` for one from the pool.
    pub reserved: bool,
    /// The machine, when the MAC belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
    /// The relay agent (giaddr) the request came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<Ipv4Addr>,
}

impl Event for LeaseGranted {
    const SUBJECT: &'static str = "dragonfly.lease.granted";
    const TYPE: &'static str = "computer.dragonfly.lease.granted";
    fn subject(&self) -> Option<String> {
        Some(self.mac.to_string())
    }
}

/// A lease ended before or at its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseEnded {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub reason: LeaseEndReason,
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseEndReason {
    /// The client gave it back (DHCPRELEASE).
    Released,
    /// The client found the address in use (DHCPDECLINE).
    Declined,
    /// It ran out.
    Expired,
}

impl Event for LeaseEnded {
    const SUBJECT: &'static str = "dragonfly.lease.ended";
    const TYPE: &'static str = "computer.dragonfly.lease.ended";
    fn subject(&self) -> Option<String> {
        Some(self.mac.to_string())
    }
}

/// dhcpd told a network-booting client what to boot (in any mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PxeAnswered {
    pub mac: MacAddr,
    /// `bios`, `uefi-x64`, `uefi-arm64`, … from option 93.
    pub arch: String,
    /// `firmware` (PXE ROM), `ipxe`, or `http` (UEFI HTTP boot).
    pub client: String,
    /// The boot file name or URL given.
    pub boot: String,
    /// `reservation`, `proxy` or `autoproxy`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
}

impl Event for PxeAnswered {
    const SUBJECT: &'static str = "dragonfly.pxe.answered";
    const TYPE: &'static str = "computer.dragonfly.pxe.answered";
    fn subject(&self) -> Option<String> {
        Some(self.mac.to_string())
    }
}

/// tftpd finished (or abandoned) a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TftpTransferred {
    /// The file as requested.
    pub file: String,
    /// Client address (`ip:port` on the wire).
    pub client: SocketAddr,
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
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
    /// Flattened: `fate` (`discovery`, `imaging` or `localDisk`) with `reason` for discovery
    /// (`unknownMachine`, `awaitingAssignment`, …) and `workflowId` for imaging.
    #[serde(flatten)]
    pub fate: BootFate,
}

impl Event for BootDecided {
    const SUBJECT: &'static str = "dragonfly.boot.decided";
    const TYPE: &'static str = "computer.dragonfly.boot.decided";
    fn subject(&self) -> Option<String> {
        Some(self.mac.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use dragonfly_core::DiscoveryReason;
    use serde_json::{Map, Value};
    use uuid::Uuid;

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

    /// Asserts that `value` serialises to exactly `json` and that `json` decodes back to it;
    /// returns the subject and the decoded object.
    fn pin<E: Event + PartialEq + Debug>(
        value: E,
        json: &str,
    ) -> (&'static str, Map<String, Value>) {
        let encoded = serde_json::to_string(&value).expect("encode");
        assert_eq!(encoded, json, "{} encodes differently", E::SUBJECT);
        let decoded: E = serde_json::from_str(json).expect("decode");
        assert_eq!(decoded, value, "{} does not round-trip", E::SUBJECT);
        match serde_json::from_str(json).expect("json") {
            Value::Object(map) => (E::SUBJECT, map),
            other => panic!("{} is not a JSON object: {other}", E::SUBJECT),
        }
    }

    const MACHINE: MachineId = MachineId(Uuid::from_u128(0x0193a5c0_0000_7000_8000_000000000001));
    const WORKFLOW: Uuid = Uuid::from_u128(0x0193a5c0_0000_7000_8000_0000000000ff);
    const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    /// One pinned example per event and shape (every optional field both set and absent, every
    /// variant): the wire format docs/events.md promises, and what subscribers decode.
    fn examples() -> Vec<(&'static str, Map<String, Value>)> {
        vec![
            pin(
                MachineRegistered {
                    machine_id: MACHINE,
                    name: "HungryDynamicHybridSwear".into(),
                    macs: vec![MAC, MacAddr::new([0x52, 0x54, 0, 0x12, 0x34, 0x56])],
                    created: true,
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","macs":["52:54:00:ab:cd:ef","52:54:00:12:34:56"],"created":true}"#,
            ),
            pin(
                MachineUpdated {
                    machine_id: MACHINE,
                    name: "HungryDynamicHybridSwear".into(),
                    resource_version: 7,
                    changed: vec!["labels".into(), "hostname".into()],
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","resourceVersion":7,"changed":["labels","hostname"]}"#,
            ),
            pin(
                MachineDeleted {
                    machine_id: MACHINE,
                    name: "HungryDynamicHybridSwear".into(),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear"}"#,
            ),
            pin(
                LeaseGranted {
                    mac: MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 50),
                    lease_seconds: 3600,
                    reserved: true,
                    machine_id: Some(MACHINE),
                    relay: Some(Ipv4Addr::new(10, 0, 1, 1)),
                },
                r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.50","leaseSeconds":3600,"reserved":true,"machineId":"0193a5c0-0000-7000-8000-000000000001","relay":"10.0.1.1"}"#,
            ),
            pin(
                LeaseGranted {
                    mac: MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 100),
                    lease_seconds: 600,
                    reserved: false,
                    machine_id: None,
                    relay: None,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.100","leaseSeconds":600,"reserved":false}"#,
            ),
            pin(
                LeaseEnded {
                    mac: MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 100),
                    reason: LeaseEndReason::Released,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.100","reason":"released"}"#,
            ),
            pin(
                LeaseEnded {
                    mac: MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 100),
                    reason: LeaseEndReason::Declined,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.100","reason":"declined"}"#,
            ),
            pin(
                LeaseEnded {
                    mac: MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 100),
                    reason: LeaseEndReason::Expired,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.100","reason":"expired"}"#,
            ),
            pin(
                PxeAnswered {
                    mac: MAC,
                    arch: "uefi-x64".into(),
                    client: "ipxe".into(),
                    boot: "http://10.0.0.1:8080/boot/${mac}".into(),
                    mode: "reservation".into(),
                    machine_id: Some(MACHINE),
                },
                r#"{"mac":"52:54:00:ab:cd:ef","arch":"uefi-x64","client":"ipxe","boot":"http://10.0.0.1:8080/boot/${mac}","mode":"reservation","machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
            pin(
                PxeAnswered {
                    mac: MAC,
                    arch: "bios".into(),
                    client: "firmware".into(),
                    boot: "undionly.kpxe".into(),
                    mode: "proxy".into(),
                    machine_id: None,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","arch":"bios","client":"firmware","boot":"undionly.kpxe","mode":"proxy"}"#,
            ),
            pin(
                TftpTransferred {
                    file: "ipxe.efi".into(),
                    client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 100), 2070)),
                    bytes: 1_048_576,
                    duration_ms: 850,
                    complete: true,
                    error: None,
                },
                r#"{"file":"ipxe.efi","client":"10.0.0.100:2070","bytes":1048576,"durationMs":850,"complete":true}"#,
            ),
            pin(
                TftpTransferred {
                    file: "undionly.kpxe".into(),
                    client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 101), 49152)),
                    bytes: 8192,
                    duration_ms: 15_000,
                    complete: false,
                    error: Some("no acknowledgement after 5 tries".into()),
                },
                r#"{"file":"undionly.kpxe","client":"10.0.0.101:49152","bytes":8192,"durationMs":15000,"complete":false,"error":"no acknowledgement after 5 tries"}"#,
            ),
            pin(
                BootDecided {
                    mac: MAC,
                    machine_id: None,
                    fate: BootFate::Discovery {
                        reason: DiscoveryReason::UnknownMachine,
                    },
                },
                r#"{"mac":"52:54:00:ab:cd:ef","fate":"discovery","reason":"unknownMachine"}"#,
            ),
            pin(
                BootDecided {
                    mac: MAC,
                    machine_id: Some(MACHINE),
                    fate: BootFate::Imaging {
                        workflow_id: WORKFLOW,
                    },
                },
                r#"{"mac":"52:54:00:ab:cd:ef","machineId":"0193a5c0-0000-7000-8000-000000000001","fate":"imaging","workflowId":"0193a5c0-0000-7000-8000-0000000000ff"}"#,
            ),
            pin(
                BootDecided {
                    mac: MAC,
                    machine_id: Some(MACHINE),
                    fate: BootFate::LocalDisk,
                },
                r#"{"mac":"52:54:00:ab:cd:ef","machineId":"0193a5c0-0000-7000-8000-000000000001","fate":"localDisk"}"#,
            ),
        ]
    }

    #[test]
    fn every_event_has_pinned_json() {
        let examples = examples();
        for subject in ALL_SUBJECTS {
            assert!(
                examples.iter().any(|(s, _)| s == subject),
                "{subject} has no example in examples()"
            );
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for json in [
            r#"{"mac":"52:54:00:ab:cd","ip":"10.0.0.1","reason":"released"}"#,
            r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0","reason":"released"}"#,
            r#"{"mac":"52:54:00:ab:cd:ef","ip":"10.0.0.1","reason":"stolen"}"#,
        ] {
            assert!(serde_json::from_str::<LeaseEnded>(json).is_err(), "{json}");
        }
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
