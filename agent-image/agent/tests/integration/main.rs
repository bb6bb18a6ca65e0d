//! The agent against a real apid (in-process on loopback), and booted in QEMU.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![allow(unreachable_pub, reason = "test helpers")]

mod actions;
mod boot;
mod common;
mod register;
