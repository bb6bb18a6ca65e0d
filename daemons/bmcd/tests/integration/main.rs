//! bmcd with its real binary (as an unprivileged user), a real `nats-server`, a real SQLite
//! file and real BMC emulators: OpenIPMI's `ipmi_sim` driven through Debian's `ipmitool`, and
//! sushy-emulator (Redfish). Commands go over NATS exactly as apid sends them; every effect is
//! checked at the emulator (its chassis log, or `ipmitool` itself, or a plain GET), never only
//! in bmcd's answer.
//!
//! Needs `nats-server`, `ipmi_sim` and `ipmitool` (and sushy-emulator for the Redfish test);
//! outside CI each test skips with a message when one is missing.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers panic on set-up failure by design"
)]

mod fixture;
mod ipmi;
mod load;
mod overhead;
mod redfish;
