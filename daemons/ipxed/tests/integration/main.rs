//! ipxed's integration tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod agent;
mod binary;
mod boot;
mod common;
mod golden;
mod images;
mod ipxe;
mod metadata;
mod sendfile;
