//! Dragonfly's domain model: machines, templates, workflows, and the rules that govern them.
//!
//! This crate is the vocabulary every daemon shares. It holds data types and *pure* decisions
//! — the machine lifecycle, the boot-fate choice, memorable names — so that each rule lives in
//! one place and can be tested exhaustively without a database, a socket or a clock.
//!
//! It must never do I/O: no files, no network, no reading the system time. Callers pass the
//! current time in where a value needs one. It also holds the wire contracts both sides of a
//! conversation must agree on ([`agent_api`]), so each is defined once.
//!
//! The netboot agent links this crate into a small static binary: OpenAPI schemas (utoipa)
//! are derived only with the `utoipa` feature, which apid enables.
//!
//! Being the lowest crate, it also holds the one way to print an error with its causes
//! ([`Chain`]), so every crate above logs errors alike.

pub mod agent_api;
pub mod boot;
pub mod boot_token;
pub mod chain;
pub mod hardware;
pub mod image;
pub mod labels;
pub mod lifecycle;
pub mod mac;
pub mod machine;
pub mod metadata;
pub mod names;
pub mod resource;
pub mod template;
pub mod workflow;

pub use boot::{BootFate, DiscoveryReason};
pub use chain::Chain;
pub use hardware::{
    Bmc, BmcKind, Cpu, Disk, Firmware, HardwareReport, Nic, ReportError, SystemInfo,
};
pub use lifecycle::{IllegalTransition, LifecycleEvent, MachineState};
pub use mac::{MacAddr, MacParseError};
pub use machine::{Machine, MachineId};
