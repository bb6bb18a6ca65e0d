//! Power control of machines through their BMCs, or by Wake-on-LAN when they have none.
//!
//! "No human at the console" needs power: provisioning a machine means setting its next boot
//! to the network and cycling it, and a finished install means booting it from disk. This
//! crate is the driver layer of that: one trait, [`PowerDriver`], and the drivers behind it.
//!
//! - [`ipmi::IpmiDriver`]: IPMI 2.0 over LAN (RMCP+, `lanplus`), by running Debian's
//!   `ipmitool` as a child process. There is no mature Rust RMCP+ client on crates.io, while
//!   `ipmitool` is packaged everywhere, is what OpenStack Ironic and MAAS drive, and has met
//!   every BMC firmware quirk already (docs/dependencies.md has the full reason). The child
//!   gets an argument vector, never a shell string, and the password only through its
//!   environment (`-E` reads `IPMI_PASSWORD`), never in its argv where `ps` would show it.
//! - [`redfish::RedfishDriver`]: Redfish over HTTP (basic authentication, no sessions), the
//!   REST interface of current BMCs; its module docs list every request it makes. Plain
//!   `http://` only for now.
//! - [`wol::WolDriver`]: Wake-on-LAN, power on only: a magic packet per MAC over UDP.
//!
//! Each driver keeps what it says on the wire pure and separate from the I/O: the argument
//! vectors, the boot-flag bytes and the parsing of `ipmitool`'s output live in
//! `ipmi::command`, the Redfish request bodies and answer parsing in `redfish::wire`, the magic packet in [`wol::magic_packet`], all unit-tested without a BMC.
//!
//! What this crate must never do: log or print a credential (`Password`'s `Debug` is
//! redacted), put one in a child's argv, or let an operation run without a deadline — every
//! driver bounds every operation with its configured timeout and kills a child that outlives
//! it.
//!
//! What comes next (issue 10): the `bmcd` daemon,
//! which owns per-machine credentials, serialises commands per BMC, polls power state and
//! answers `dragonfly.power.<op>` requests. Policy (retries, "cycle an off machine means power
//! it on", concurrency limits) belongs there, not here: a driver does exactly one operation.

pub mod ipmi;
pub mod redfish;
pub mod seal;
pub mod wol;

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// A change of power state asked of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerAction {
    /// Power on; nothing happens when it is already on.
    On,
    /// Ask the operating system to shut down (ACPI power button); it may take its time or
    /// ignore it.
    OffSoft,
    /// Cut power at once.
    OffHard,
    /// Power off, then on again. What a BMC does with a machine that is off varies (IPMI
    /// allows it to do nothing); the daemon decides whether to power on instead.
    Cycle,
    /// Hard reset (the reset button), without removing power.
    Reset,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "power on",
            Self::OffSoft => "power off (soft)",
            Self::OffHard => "power off (hard)",
            Self::Cycle => "power cycle",
            Self::Reset => "reset",
        })
    }
}

/// A machine's power state as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    On,
    Off,
    /// The BMC answered, but with a state that is neither on nor off.
    Unknown,
}

/// The device a machine boots from next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// The network (PXE), to be provisioned.
    Pxe,
    /// The default hard disk, once provisioned.
    Disk,
}

/// Whether a boot device applies to the next boot only or to every boot after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootPersistence {
    Once,
    Persistent,
}

/// The firmware interface the machine boots through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootMode {
    Uefi,
    /// BIOS (PC compatible) boot.
    Legacy,
}

/// Everything "set next boot device" says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootTarget {
    pub device: BootDevice,
    pub persistence: BootPersistence,
    pub mode: BootMode,
}

/// An operation of [`PowerDriver`], to say which one failed or is not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Power(PowerAction),
    Status,
    SetBoot,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Power(action) => action.fmt(f),
            Self::Status => f.write_str("read power status"),
            Self::SetBoot => f.write_str("set the next boot device"),
        }
    }
}

/// Why a power operation failed, in the cases a caller acts on differently: an unreachable
/// BMC is retried later, refused credentials need an operator, an unsupported operation
/// needs another driver.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// Nothing answered at the BMC's address (no route, nothing listening, packets lost).
    #[error("BMC unreachable: {detail}")]
    Unreachable { detail: String },
    /// The BMC answered and refused the user name or password.
    #[error("BMC refused the credentials: {detail}")]
    AuthRefused { detail: String },
    /// The BMC's TLS certificate is not what its configuration trusts (unknown issuer, wrong
    /// name, not the pinned fingerprint): an operator must say what to trust; sending again
    /// will not help.
    #[error("BMC's certificate not trusted: {detail}")]
    Untrusted { detail: String },
    /// The operation did not finish within the driver's timeout; it was abandoned (its
    /// child process killed), so its effect on the machine is unknown.
    #[error("no answer from the BMC within {after:?}")]
    TimedOut { after: Duration },
    /// The BMC answered the operation with an error; `message` is its text.
    #[error("BMC answered an error: {message}")]
    Rejected { message: String },
    /// The BMC answered something this driver cannot read.
    #[error("unexpected answer from the BMC: {output:?}")]
    UnexpectedOutput { output: String },
    /// A Redfish service manages no system or several, and the configuration does not say
    /// which one is the machine: an operator must name it. `members` are their `@odata.id`s.
    #[error("the BMC has {} systems ({}); configure which one", members.len(), members.join(", "))]
    NoSingleSystem { members: Vec<String> },
    /// This kind of driver cannot do this operation at all (Wake-on-LAN cannot power off).
    #[error("{driver} cannot {operation}")]
    Unsupported {
        driver: &'static str,
        operation: Operation,
    },
    /// Something on this side failed before reaching the BMC: the client program could not
    /// be started, or a socket could not be opened.
    #[error("{what}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One machine's power control: a driver is built for one BMC (or one machine's MACs) with
/// its credentials and timeout, and does exactly one operation per call — no retries, no
/// policy. Every operation is bounded by the driver's timeout.
///
/// The futures are `Send` so that a daemon can drive many BMCs from spawned tasks.
pub trait PowerDriver {
    /// A short name of the driver for messages ("ipmi", "wol").
    fn kind(&self) -> &'static str;

    /// Changes the power state.
    fn power(&self, action: PowerAction) -> impl Future<Output = Result<(), BmcError>> + Send;

    /// Reads the power state.
    fn status(&self) -> impl Future<Output = Result<PowerState, BmcError>> + Send;

    /// Sets the device the machine boots from next.
    fn set_boot(&self, target: BootTarget) -> impl Future<Output = Result<(), BmcError>> + Send;
}

/// A password (or other secret) that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that hands it to the BMC's client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Bytes as lower-case hex: key ids and certificate fingerprints.
fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::new("hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(p.expose(), "hunter2");
    }

    #[test]
    fn unsupported_says_which_driver_and_operation() {
        let e = BmcError::Unsupported {
            driver: "wol",
            operation: Operation::Power(PowerAction::OffHard),
        };
        assert_eq!(e.to_string(), "wol cannot power off (hard)");
    }
}
