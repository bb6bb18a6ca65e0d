//! dhcpd's integration tests: one binary, one module per area. Everything runs inside network
//! namespaces the tests create (root required; skipped outside CI without it).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod clients;
mod common;
mod flood;
mod fuzz_corpus;
mod netns;
mod pxe;
mod reservations;
