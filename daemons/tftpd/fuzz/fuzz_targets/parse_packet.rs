//! `integration/fuzz.sh parse_packet` (or `cargo +nightly fuzz run parse_packet` here): the
//! TFTP codec on arbitrary bytes (see `inputs.rs`). Must never panic.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inputs::parse_packet(data));
