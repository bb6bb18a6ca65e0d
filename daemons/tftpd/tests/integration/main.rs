//! tftpd's integration tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod binary;
mod clients;
mod common;
mod flood;
mod fuzz_corpus;
mod hostile;
mod lossy;
mod refusals;
mod storm;
