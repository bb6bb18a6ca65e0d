//! `integration/fuzz.sh receive` (or `cargo +nightly fuzz run receive` here): dhcpd's receive
//! path on arbitrary bytes (see `inputs.rs`). Must never panic.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inputs::receive(data));
