//! workflowd with its real binary, a real nats-server and a real SQLite file.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers panic on set-up failure by design"
)]

mod binary;
