//! Power commands: request/reply on `dragonfly.power.<op>`, served by bmcd.
//!
//! One subject per operation, so that a NATS permission can allow an operator tool
//! `dragonfly.power.status` without `dragonfly.power.off`. Every request names one machine;
//! the reply says what the BMC answered ([`PowerReply`]) — success, or why not in a kind a
//! caller can act on ([`PowerFailure`]) and in words. A command is idempotent at the BMC
//! (power on an On machine does nothing), so a caller that timed out may send it again.

use dragonfly_core::MachineId;
use serde::{Deserialize, Serialize};

use crate::Request;

/// The operations, each its own subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerOp {
    On,
    /// Hard power off.
    Off,
    /// ACPI shutdown request.
    SoftOff,
    /// Off then on; an Off machine is powered on.
    Cycle,
    Reset,
    Status,
    /// Next boot from the network.
    BootPxe,
    /// Next boot from disk.
    BootDisk,
}

impl PowerOp {
    pub const ALL: [PowerOp; 8] = [
        Self::On,
        Self::Off,
        Self::SoftOff,
        Self::Cycle,
        Self::Reset,
        Self::Status,
        Self::BootPxe,
        Self::BootDisk,
    ];

    /// Its name in subjects and JSON (`soft-off`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::SoftOff => "soft-off",
            Self::Cycle => "cycle",
            Self::Reset => "reset",
            Self::Status => "status",
            Self::BootPxe => "boot-pxe",
            Self::BootDisk => "boot-disk",
        }
    }

    /// The operation named `s` (as in [`PowerOp::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl std::fmt::Display for PowerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every power request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PowerCommand {
    pub machine_id: MachineId,
    /// Boot operations: every boot after the next too, not the next only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
}

/// Why a command did not succeed, in the kinds a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerFailure {
    /// The machine has no BMC configured.
    NoBmc,
    /// The machine does not exist.
    NoMachine,
    /// The BMC's configuration is incomplete (no address, no password, sealed to another key).
    NotConfigured,
    /// Nothing answered at the BMC's address.
    Unreachable,
    /// The BMC refused the credentials.
    AuthRefused,
    /// The BMC's TLS certificate is not what its configuration trusts.
    Untrusted,
    /// No answer in time: the effect is unknown.
    TimedOut,
    /// The BMC answered with an error.
    Rejected,
    /// This kind of BMC cannot do it (Wake-on-LAN cannot power off).
    Unsupported,
    /// bmcd itself failed (its store).
    Internal,
}

impl PowerFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoBmc => "no-bmc",
            Self::NoMachine => "no-machine",
            Self::NotConfigured => "not-configured",
            Self::Unreachable => "unreachable",
            Self::AuthRefused => "auth-refused",
            Self::Untrusted => "untrusted",
            Self::TimedOut => "timed-out",
            Self::Rejected => "rejected",
            Self::Unsupported => "unsupported",
            Self::Internal => "internal",
        }
    }
}

/// bmcd's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PowerReply {
    pub machine_id: MachineId,
    pub op: PowerOp,
    /// `true` when the BMC did it.
    pub ok: bool,
    /// The power state read (status) or known after the command, when known: `on`, `off`,
    /// `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// When not `ok`: why, as a kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<PowerFailure>,
    /// What happened, in words (the BMC's own error text when it gave one).
    pub message: String,
    /// Attempts made (a BMC that did not answer is tried again, a bounded number of times).
    pub attempts: u32,
    /// Time spent, in milliseconds, waiting included.
    pub elapsed_ms: u64,
}

macro_rules! power_requests {
    ($($name:ident = $subject:literal,)*) => {
        $(
            #[doc = concat!("`", $subject, "`: a [`PowerCommand`].")]
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            #[serde(transparent)]
            pub struct $name(pub PowerCommand);

            impl Request for $name {
                const SUBJECT: &'static str = $subject;
                type Reply = PowerReply;
            }
        )*
    };
}

power_requests! {
    PowerOn = "dragonfly.power.on",
    PowerOff = "dragonfly.power.off",
    PowerSoftOff = "dragonfly.power.soft-off",
    PowerCycle = "dragonfly.power.cycle",
    PowerReset = "dragonfly.power.reset",
    PowerStatus = "dragonfly.power.status",
    PowerBootPxe = "dragonfly.power.boot-pxe",
    PowerBootDisk = "dragonfly.power.boot-disk",
}

/// The subject of `op`.
pub fn subject(op: PowerOp) -> &'static str {
    match op {
        PowerOp::On => PowerOn::SUBJECT,
        PowerOp::Off => PowerOff::SUBJECT,
        PowerOp::SoftOff => PowerSoftOff::SUBJECT,
        PowerOp::Cycle => PowerCycle::SUBJECT,
        PowerOp::Reset => PowerReset::SUBJECT,
        PowerOp::Status => PowerStatus::SUBJECT,
        PowerOp::BootPxe => PowerBootPxe::SUBJECT,
        PowerOp::BootDisk => PowerBootDisk::SUBJECT,
    }
}

/// Sends `op` for `command` and waits for bmcd's answer (see [`crate::Bus::request`]).
///
/// # Errors
/// Those of [`crate::Bus::request`]: [`crate::BusError::NoResponders`] when bmcd is not
/// running, [`crate::BusError::Timeout`].
pub async fn request(
    bus: &crate::Bus,
    op: PowerOp,
    command: PowerCommand,
    timeout: std::time::Duration,
) -> Result<PowerReply, crate::BusError> {
    match op {
        PowerOp::On => bus.request(&PowerOn(command), timeout).await,
        PowerOp::Off => bus.request(&PowerOff(command), timeout).await,
        PowerOp::SoftOff => bus.request(&PowerSoftOff(command), timeout).await,
        PowerOp::Cycle => bus.request(&PowerCycle(command), timeout).await,
        PowerOp::Reset => bus.request(&PowerReset(command), timeout).await,
        PowerOp::Status => bus.request(&PowerStatus(command), timeout).await,
        PowerOp::BootPxe => bus.request(&PowerBootPxe(command), timeout).await,
        PowerOp::BootDisk => bus.request(&PowerBootDisk(command), timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_operation_names() {
        for op in PowerOp::ALL {
            assert_eq!(subject(op), format!("dragonfly.power.{op}"));
            assert_eq!(PowerOp::parse(op.as_str()), Some(op));
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{op}\""));
        }
        assert_eq!(PowerOp::parse("explode"), None);
    }

    #[test]
    fn a_command_is_plain_json() {
        let c = PowerBootPxe(PowerCommand {
            machine_id: MachineId(uuid::Uuid::nil()),
            persistent: true,
        });
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"machineId":"00000000-0000-0000-0000-000000000000","persistent":true}"#
        );
    }
}
