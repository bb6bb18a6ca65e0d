//! apid's integration tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

mod address;
mod api;
mod auth_walk;
mod binary;
mod common;
mod console;
mod events;
mod images;
mod listeners;
mod operators;
mod power;
mod workflows;
