//! `cargo +nightly fuzz run transfer -- -max_total_time=30` (from daemons/tftpd/fuzz).
//!
//! The transfer state machine driven by arbitrary input; the body is `inputs::transfer`, so that
//! `cargo test` replays this target's corpus too.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inputs::transfer(data));
