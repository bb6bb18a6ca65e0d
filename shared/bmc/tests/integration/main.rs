//! dragonfly-bmc's integration tests: one binary, one module per area.
//!
//! The IPMI tests drive a real `ipmi_sim` (OpenIPMI's BMC simulator) on loopback with the real
//! `ipmitool`, and cross-check every effect with `ipmitool` itself; they skip outside CI when
//! either is missing (`apt-get install openipmi ipmitool`, or `packaging/deps.sh bmc`).
//!
//! The Redfish tests drive a real sushy-emulator (PyPI `sushy-tools`, fake systems driver) on
//! loopback and cross-check every effect with plain GETs; they skip outside CI when it is
//! missing (`pip install sushy-tools`, and `DRAGONFLY_SUSHY_EMULATOR` when it is not on PATH).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod child;
mod ipmi;
mod redfish;
mod redfish_tls;
mod sim;
mod sushy;
mod wol;
