//! tftpd's integration tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod binary;
mod clients;
mod common;
mod lossy;
mod refusals;
