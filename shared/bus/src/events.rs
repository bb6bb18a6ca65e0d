//! Every event Dragonfly publishes, in one place.
//!
//! This module is the source of truth for the bus's subjects. Each event is declared once, in
//! the `events!` list below: its payload struct, its subject and what its CloudEvents
//! `subject` is about. The macro derives the rest — the [`Event`] impl, the CloudEvents `type`
//! (`computer.` + subject, reverse DNS of dragonfly.computer) and [`ALL_SUBJECTS`] — and
//! [`Event`] is sealed, so an event cannot exist without being listed. Unit tests hold
//! `docs/events.md` (subjects, and each payload's fields with their types) and
//! `docs/architecture.md` (subjects) to that list in both directions.
//!
//! Payloads use the core types (`MacAddr`, `Ipv4Addr`, `BootFate`, …), whose serde forms are
//! the wire format: publishers never format addresses themselves. They must never carry
//! secrets (every subscriber sees them) and only gain optional fields, so an older subscriber
//! keeps decoding a newer publisher's events. A new value of an enum field (a new
//! [`LeaseEndReason`]) is a new event shape: an older subscriber fails to decode it, and
//! reconciles from the store as for any lost event.
//!
//! Subjects are `dragonfly.<kind>.<event>`.

use std::net::{Ipv4Addr, SocketAddr};

use dragonfly_core::{BootFate, MacAddr, MachineId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// Declares the events: for each, its doc comment, `Name = "dragonfly.<kind>.<event>"`,
/// optionally `about field` (the payload field whose text is the CloudEvents `subject`), and
/// the payload's fields. Every payload is camelCase on the wire.
macro_rules! events {
    ($(
        $(#[$meta:meta])*
        $name:ident = $subject:literal $(, about $about:ident)? {
            $($fields:tt)*
        }
    )*) => {
        $(
            $(#[$meta])*
            #[doc = ""]
            #[doc = concat!("Published on `", $subject, "`.")]
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            #[serde(rename_all = "camelCase")]
            pub struct $name {
                $($fields)*
            }

            impl crate::sealed::Sealed for $name {}

            impl Event for $name {
                const SUBJECT: &'static str = $subject;
                const TYPE: &'static str = concat!("computer.", $subject);
                $(
                    fn subject(&self) -> Option<String> {
                        Some(self.$about.to_string())
                    }
                )?
            }
        )*

        /// Every subject an [`Event`] is published on, in declaration order.
        pub const ALL_SUBJECTS: &[&str] = &[$($subject),*];

        /// Every event's CloudEvents `type`, in the order of [`ALL_SUBJECTS`].
        pub const ALL_TYPES: &[&str] = &[$(concat!("computer.", $subject)),*];

        /// Each event's subject and the field names its `Deserialize` asks for (`None` when
        /// it flattens another type, which hides the list).
        #[cfg(test)]
        fn declared_fields() -> Vec<(&'static str, Option<&'static [&'static str]>)> {
            vec![$(($subject, tests::struct_fields::<$name>())),*]
        }
    };
}

events! {
    /// A machine was registered, or an already-known machine registered again.
    MachineRegistered = "dragonfly.machine.registered", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// Its name.
        pub name: String,
        /// Its MAC addresses.
        pub macs: Vec<MacAddr>,
        /// `true` when this registration created the machine, `false` when it already existed.
        pub created: bool,
    }

    /// A machine's stored record changed.
    MachineUpdated = "dragonfly.machine.updated", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// Its name after the change.
        pub name: String,
        /// The record's resource version after the change.
        pub resource_version: i64,
        /// Names of the fields that changed.
        pub changed: Vec<String>,
    }

    /// An operator approved a machine that registered while `[apid] auto_register` was off: it
    /// moved from `Discovered` to `Registered`.
    MachineApproved = "dragonfly.machine.approved", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// Its name.
        pub name: String,
        /// The operator who approved it.
        pub approved_by: String,
    }

    /// A machine was deleted.
    MachineDeleted = "dragonfly.machine.deleted", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// Its name when it was deleted.
        pub name: String,
    }

    /// dhcpd handed out (or renewed) an address. Reservation mode only.
    LeaseGranted = "dragonfly.lease.granted", about mac {
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

    /// A lease ended before or at its expiry.
    LeaseEnded = "dragonfly.lease.ended", about mac {
        /// Client MAC.
        pub mac: MacAddr,
        /// The address it held.
        pub ip: Ipv4Addr,
        pub reason: LeaseEndReason,
    }

    /// dhcpd told a network-booting client what to boot (in any mode).
    PxeAnswered = "dragonfly.pxe.answered", about mac {
        /// Client MAC.
        pub mac: MacAddr,
        /// `bios`, `uefi-x64`, `uefi-arm64`, … from option 93.
        pub arch: String,
        /// `firmware` (PXE ROM), `ipxe`, or `http` (UEFI HTTP boot).
        pub client: String,
        /// The boot file name or URL given.
        pub boot: String,
        /// `reservation`, `proxy` or `autoproxy`.
        pub mode: String,
        /// The machine, when the MAC belongs to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub machine_id: Option<MachineId>,
    }

    /// tftpd finished (or abandoned) a transfer.
    TftpTransferred = "dragonfly.tftp.transferred" {
        /// The file as requested.
        pub file: String,
        /// Client address and port.
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

    /// ipxed decided a booting machine's fate and served it a script.
    BootDecided = "dragonfly.boot.decided", about mac {
        pub mac: MacAddr,
        /// The machine, when the MAC belongs to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub machine_id: Option<MachineId>,
        /// Flattened: `fate` (`discovery`, `imaging` or `localDisk`) with `reason` for discovery
        /// (`unknownMachine`, `awaitingAssignment`, …) and `workflowId` for imaging.
        #[serde(flatten)]
        pub fate: BootFate,
    }

    /// An operator assigned a template: a workflow was created (Pending).
    WorkflowCreated = "dragonfly.workflow.created", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its name.
        pub name: String,
        /// The machine it provisions.
        pub machine_id: MachineId,
        /// The template it runs.
        pub template: String,
    }

    /// A hint from apid: an agent's report was stored durably (workflowd applies it).
    WorkflowReported = "dragonfly.workflow.reported", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
    }

    /// A hint from apid: an operator asked to cancel or retry a workflow.
    WorkflowRequested = "dragonfly.workflow.requested", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
    }

    /// The workflow's first report arrived: Pending → Running (also after a retry).
    WorkflowStarted = "dragonfly.workflow.started", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
        /// Which start of the workflow.
        pub attempt: u32,
    }

    /// An action moved (at most once a second per workflow).
    WorkflowProgress = "dragonfly.workflow.progress", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
        /// The current action's index.
        pub action: u32,
        /// Its name.
        pub action_name: String,
        /// Its state.
        pub state: String,
        /// 0–100.
        pub percent: u8,
    }

    /// Every action succeeded; the machine is Ready.
    WorkflowSucceeded = "dragonfly.workflow.succeeded", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
    }

    /// An action failed (retries spent); the machine is in Error.
    WorkflowFailed = "dragonfly.workflow.failed", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
        /// Why.
        pub message: String,
    }

    /// An action or the workflow ran out of time; the machine is in Error.
    WorkflowTimedout = "dragonfly.workflow.timedout", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
        /// Which action and why.
        pub message: String,
    }

    /// An operator cancelled the workflow; the machine is in Error, held in discovery.
    WorkflowCancelled = "dragonfly.workflow.cancelled", about workflow_id {
        /// The workflow.
        pub workflow_id: Uuid,
        /// Its machine.
        pub machine_id: MachineId,
    }

    /// bmcd read a power state different from the one it had stored (or its first).
    PowerChanged = "dragonfly.power.changed", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// The state before (`on`, `off`, `unknown`); absent on the first reading.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from: Option<String>,
        /// The state now.
        pub to: String,
    }

    /// bmcd can no longer drive a machine's BMC (`condition` says why: unreachable,
    /// credentials refused, …), or can again (`condition` absent).
    PowerCondition = "dragonfly.power.condition", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// Why the BMC cannot be driven; absent when it can again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub condition: Option<String>,
    }

    /// An operator reserved an address for a machine, moved it, or released it (`ip` absent).
    ReservationChanged = "dragonfly.reservation.changed", about machine_id {
        /// The machine.
        pub machine_id: MachineId,
        /// The MAC address the reservation is for (the old one when released).
        pub mac: MacAddr,
        /// The reserved address; absent when released.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ip: Option<Ipv4Addr>,
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use dragonfly_core::DiscoveryReason;
    use serde::de::{self, Visitor};
    use serde_json::{Map, Value};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn subjects_follow_the_convention_and_are_unique() {
        for subject in ALL_SUBJECTS {
            let parts: Vec<&str> = subject.split('.').collect();
            assert_eq!(parts.len(), 3, "{subject} is not dragonfly.<kind>.<event>");
            assert_eq!(parts[0], "dragonfly", "{subject}");
            assert!(
                parts.iter().all(
                    |p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                ),
                "{subject}"
            );
        }
        let unique: BTreeSet<_> = ALL_SUBJECTS.iter().collect();
        assert_eq!(
            unique.len(),
            ALL_SUBJECTS.len(),
            "a subject is declared twice"
        );
    }

    #[test]
    fn the_cloudevents_type_is_the_subject_under_computer() {
        // Derived by the macro; checked once on a real event so a change to the macro shows.
        assert_eq!(LeaseEnded::TYPE, "computer.dragonfly.lease.ended");
        assert_eq!(TftpTransferred::TYPE, "computer.dragonfly.tftp.transferred");
    }

    /// A deserializer that answers nothing, but remembers the field list a derived
    /// `Deserialize` of a plain struct hands to `deserialize_struct`.
    struct Capture<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a plain struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(de::Error::custom("captured"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    /// The wire names of `E`'s fields, or `None` when `E` flattens another type.
    pub(super) fn struct_fields<E: Event>() -> Option<&'static [&'static str]> {
        let mut fields = None;
        let _ = E::deserialize(Capture(&mut fields));
        fields
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

    const WF: Uuid = Uuid::from_u128(0x0193a5c0_0000_7000_8000_0000000000aa);
    const MACHINE: MachineId = MachineId(Uuid::from_u128(0x0193a5c0_0000_7000_8000_000000000001));
    const WORKFLOW: Uuid = Uuid::from_u128(0x0193a5c0_0000_7000_8000_0000000000ff);
    const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    /// One pinned example per event and shape (every optional field both set and absent, every
    /// variant): the wire format docs/events.md promises, and what subscribers decode.
    pub(super) fn examples() -> Vec<(&'static str, Map<String, Value>)> {
        vec![
            pin(
                WorkflowCreated {
                    workflow_id: WF,
                    name: "hungry-00000aa".into(),
                    machine_id: MACHINE,
                    template: "debian".into(),
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","name":"hungry-00000aa","machineId":"0193a5c0-0000-7000-8000-000000000001","template":"debian"}"#,
            ),
            pin(
                WorkflowReported {
                    workflow_id: WF,
                    machine_id: MACHINE,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
            pin(
                WorkflowRequested {
                    workflow_id: WF,
                    machine_id: MACHINE,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
            pin(
                WorkflowStarted {
                    workflow_id: WF,
                    machine_id: MACHINE,
                    attempt: 1,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001","attempt":1}"#,
            ),
            pin(
                WorkflowProgress {
                    workflow_id: WF,
                    machine_id: MACHINE,
                    action: 1,
                    action_name: "image".into(),
                    state: "Running".into(),
                    percent: 42,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001","action":1,"actionName":"image","state":"Running","percent":42}"#,
            ),
            pin(
                WorkflowSucceeded {
                    workflow_id: WF,
                    machine_id: MACHINE,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
            pin(
                PowerChanged {
                    machine_id: MACHINE,
                    from: Some("off".into()),
                    to: "on".into(),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","from":"off","to":"on"}"#,
            ),
            pin(
                PowerChanged {
                    machine_id: MACHINE,
                    from: None,
                    to: "off".into(),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","to":"off"}"#,
            ),
            pin(
                PowerCondition {
                    machine_id: MACHINE,
                    condition: None,
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
            pin(
                PowerCondition {
                    machine_id: MACHINE,
                    condition: Some("BMC refused the credentials".into()),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","condition":"BMC refused the credentials"}"#,
            ),
            pin(
                ReservationChanged {
                    machine_id: MACHINE,
                    mac: MAC,
                    ip: Some(Ipv4Addr::new(10, 99, 0, 20)),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","mac":"52:54:00:ab:cd:ef","ip":"10.99.0.20"}"#,
            ),
            pin(
                ReservationChanged {
                    machine_id: MACHINE,
                    mac: MAC,
                    ip: None,
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","mac":"52:54:00:ab:cd:ef"}"#,
            ),
            pin(
                WorkflowFailed {
                    workflow_id: WF,
                    machine_id: MACHINE,
                    message: "action \"image\" failed: checksum mismatch".into(),
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001","message":"action \"image\" failed: checksum mismatch"}"#,
            ),
            pin(
                WorkflowTimedout {
                    workflow_id: WF,
                    machine_id: MACHINE,
                    message: "action \"image\" timed out".into(),
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001","message":"action \"image\" timed out"}"#,
            ),
            pin(
                WorkflowCancelled {
                    workflow_id: WF,
                    machine_id: MACHINE,
                },
                r#"{"workflowId":"0193a5c0-0000-7000-8000-0000000000aa","machineId":"0193a5c0-0000-7000-8000-000000000001"}"#,
            ),
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
                MachineApproved {
                    machine_id: MACHINE,
                    name: "HungryDynamicHybridSwear".into(),
                    approved_by: "admin".into(),
                },
                r#"{"machineId":"0193a5c0-0000-7000-8000-000000000001","name":"HungryDynamicHybridSwear","approvedBy":"admin"}"#,
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

    /// So that the examples (and through them the docs test) cannot miss an optional field:
    /// every field an event declares is set in at least one of its examples.
    #[test]
    fn examples_show_every_declared_field() {
        let examples = examples();
        let mut flattening = Vec::new();
        for (subject, declared) in declared_fields() {
            let Some(declared) = declared else {
                flattening.push(subject);
                continue;
            };
            let shown: BTreeSet<&str> = examples
                .iter()
                .filter(|(s, _)| *s == subject)
                .flat_map(|(_, m)| m.keys().map(String::as_str))
                .collect();
            let declared: BTreeSet<&str> = declared.iter().copied().collect();
            assert_eq!(shown, declared, "{subject}: examples vs declared fields");
        }
        // A flattening event hides its field list; BootDecided's flattened BootFate has one
        // example per variant above. Another such event needs the same care.
        assert_eq!(flattening, [BootDecided::SUBJECT]);
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
    //! docs/events.md is the operator-facing contract of the bus, and docs/architecture.md
    //! maps every subject to its publisher: both are held to the code here, in both
    //! directions. docs/events.md has one `### `subject`` section per event with a table
    //! `| field | type | required | meaning |`; its field types are the words listed under
    //! "Field types" there, each checked against the pinned examples.

    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, SocketAddr};

    use dragonfly_core::MacAddr;
    use serde_json::Value;
    use uuid::Uuid;

    use super::ALL_SUBJECTS;
    use super::tests::examples;

    const EVENTS_MD: &str = include_str!("../../../docs/events.md");
    const ARCHITECTURE_MD: &str = include_str!("../../../docs/architecture.md");

    /// One row of a subject's field table.
    #[derive(Debug)]
    struct DocField {
        name: String,
        ty: String,
        required: bool,
    }

    /// The `### `subject`` sections of docs/events.md, with their field tables, in order.
    fn documented() -> Vec<(String, Vec<DocField>)> {
        let mut sections: Vec<(String, Vec<DocField>)> = Vec::new();
        // Whether the last section is still open (no other heading since).
        let mut open = false;
        for line in EVENTS_MD.lines() {
            if line.starts_with('#') {
                let subject = line
                    .strip_prefix("### `")
                    .and_then(|rest| rest.trim_end().strip_suffix('`'));
                open = subject.is_some();
                if let Some(subject) = subject {
                    sections.push((subject.to_owned(), Vec::new()));
                }
            } else if open
                && line.starts_with("| `")
                && let Some((_, fields)) = sections.last_mut()
            {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                assert!(cells.len() >= 5, "docs/events.md: malformed row {line:?}");
                let required = match cells[3] {
                    "yes" => true,
                    "no" => false,
                    other => panic!("docs/events.md: required is {other:?} in {line:?}"),
                };
                fields.push(DocField {
                    name: cells[1].trim_matches('`').to_owned(),
                    ty: cells[2].to_owned(),
                    required,
                });
            }
        }
        sections
    }

    /// Every `dragonfly.<kind>.<event>` written in backticks outside code blocks.
    fn subjects_mentioned(doc: &str) -> BTreeSet<String> {
        let mut in_fence = false;
        let mut found = BTreeSet::new();
        for line in doc.lines() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                continue;
            }
            for code in line.split('`').skip(1).step_by(2) {
                let parts: Vec<&str> = code.split('.').collect();
                if parts.len() == 3
                    && parts[0] == "dragonfly"
                    && parts[1..].iter().all(|p| {
                        !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
                {
                    found.insert(code.to_owned());
                }
            }
        }
        found
    }

    /// Checks one JSON value against a documented type; `Err` says why not.
    fn conforms(ty: &str, v: &Value) -> Result<(), String> {
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .ok_or(format!("{v} is not a string"))
        };
        let canonical = |ok: bool, s: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{s:?} is not a canonical {ty}"))
            }
        };
        if let Some(inner) = ty.strip_prefix("list of ") {
            let items = v.as_array().ok_or(format!("{v} is not a list"))?;
            return items.iter().try_for_each(|item| conforms(inner, item));
        }
        if let Some(values) = ty.strip_prefix("one of ") {
            let allowed: Vec<&str> = values.split('`').skip(1).step_by(2).collect();
            let s = text(v)?;
            return if allowed.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(format!("{s:?} is not one of {allowed:?}"))
            };
        }
        match ty {
            "string" => text(v).map(drop),
            "integer" => v.as_i64().map(drop).ok_or(format!("{v} is not an integer")),
            "boolean" => v.as_bool().map(drop).ok_or(format!("{v} is not a boolean")),
            "UUID" => {
                let s = text(v)?;
                canonical(s.parse::<Uuid>().is_ok_and(|u| u.to_string() == s), &s)
            }
            "MAC" => {
                let s = text(v)?;
                canonical(s.parse::<MacAddr>().is_ok_and(|m| m.to_string() == s), &s)
            }
            "IPv4" => {
                let s = text(v)?;
                canonical(s.parse::<Ipv4Addr>().is_ok_and(|a| a.to_string() == s), &s)
            }
            "ip:port" => {
                let s = text(v)?;
                canonical(
                    s.parse::<SocketAddr>().is_ok_and(|a| a.to_string() == s),
                    &s,
                )
            }
            other => Err(format!("unknown type {other:?} (see \"Field types\")")),
        }
    }

    #[test]
    fn every_subject_is_documented_and_every_documented_subject_exists() {
        let code: BTreeSet<String> = ALL_SUBJECTS.iter().map(|s| (*s).to_owned()).collect();
        let sections: Vec<String> = documented().into_iter().map(|(s, _)| s).collect();
        let unique: BTreeSet<String> = sections.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            sections.len(),
            "docs/events.md: a section repeats"
        );
        assert_eq!(unique, code, "docs/events.md sections vs the code's events");
        for (doc, text) in [
            ("docs/events.md", EVENTS_MD),
            ("docs/architecture.md", ARCHITECTURE_MD),
        ] {
            assert_eq!(
                subjects_mentioned(text),
                code,
                "subjects named in {doc} vs the code's"
            );
        }
    }

    #[test]
    fn documented_fields_match_the_serialized_payloads() {
        let examples = examples();
        for (subject, fields) in documented() {
            let shapes: Vec<_> = examples
                .iter()
                .filter(|(s, _)| *s == subject)
                .map(|(_, m)| m)
                .collect();
            assert!(!shapes.is_empty(), "{subject}: no example");
            let serialized: BTreeSet<&str> = shapes
                .iter()
                .flat_map(|m| m.keys().map(String::as_str))
                .collect();
            let listed: BTreeSet<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(
                listed.len(),
                fields.len(),
                "{subject}: a field is listed twice"
            );
            assert_eq!(
                listed, serialized,
                "{subject}: docs/events.md vs serialized fields"
            );
            for f in &fields {
                let present = shapes.iter().filter(|m| m.contains_key(&f.name)).count();
                if f.required {
                    assert_eq!(
                        present,
                        shapes.len(),
                        "{subject}: `{}` is documented as required but is sometimes absent",
                        f.name
                    );
                } else {
                    assert!(
                        present < shapes.len(),
                        "{subject}: `{}` is documented as optional but no example omits it",
                        f.name
                    );
                }
                for m in &shapes {
                    if let Some(v) = m.get(&f.name)
                        && let Err(why) = conforms(&f.ty, v)
                    {
                        panic!("{subject}: `{}` ({}): {why}", f.name, f.ty);
                    }
                }
            }
        }
    }

    #[test]
    fn the_docs_parser_reads_what_it_should() {
        // A parser that found nothing would make the tests above vacuous.
        let sections = documented();
        let (_, granted) = sections
            .iter()
            .find(|(s, _)| s == "dragonfly.lease.granted")
            .expect("lease.granted section");
        let relay = granted.iter().find(|f| f.name == "relay").expect("relay");
        assert_eq!((relay.ty.as_str(), relay.required), ("IPv4", false));
        assert!(conforms("MAC", &Value::from("52:54:00:AB:CD:EF")).is_err());
        assert!(conforms("list of MAC", &Value::from(vec!["52:54:00:ab:cd:ef"])).is_ok());
        assert!(conforms("one of `a`, `b`", &Value::from("c")).is_err());
        assert!(conforms("integer", &Value::from("1")).is_err());
        assert_eq!(
            subjects_mentioned("`dragonfly.x.y`, `dragonfly.<kind>.>`\n```\n`dragonfly.a.b`\n```"),
            BTreeSet::from(["dragonfly.x.y".to_owned()])
        );
    }
}
