//! What the fuzz target does with one input, in one place: `fuzz_targets/parse_packet.rs` runs
//! it under libFuzzer (nightly, `integration/fuzz.sh`), and tftpd's `cargo test` replays every
//! kept corpus input and every crash ever found through the very same function
//! (`tests/integration/fuzz_corpus.rs`), on stable and in seconds. Both include this file by
//! path: it belongs to neither crate.
//!
//! It must never hold anything but the target's body: what it does here is what is fuzzed.

use dragonfly_tftpd::packet;

/// The codec must never panic, and whatever it accepts must survive a re-encode: parsing the
/// bytes it writes gives the same packet back (ACKs may carry padding, errors may lack their
/// NUL, so the comparison is on the re-encoded form).
pub(crate) fn parse_packet(data: &[u8]) {
    if let Ok(p) = packet::parse(data) {
        let bytes = p.to_bytes();
        let again = packet::parse(&bytes).expect("re-encoded packet parses");
        assert_eq!(again.to_bytes(), bytes);
    }
}
