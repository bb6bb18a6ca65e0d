//! `integration/fuzz.sh sse_decode` (or `cargo +nightly fuzz run sse_decode` here): the
//! client's Server-Sent Events decoder on arbitrary bytes (see `inputs.rs`). Must never panic.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inputs::sse_decode(data));
