//! `integration/fuzz.sh parse_head` (or `cargo +nightly fuzz run parse_head` here): the
//! request-head parser of the sendfile listeners on arbitrary bytes (see `inputs.rs`). Must
//! never panic.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inputs::parse_head(data));
