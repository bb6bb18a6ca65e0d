//! What each fuzz target does with one input, in one place: `fuzz_targets/<target>.rs` runs it
//! under libFuzzer (nightly, `integration/fuzz.sh`), and dragonfly-http's `cargo test` replays
//! every kept corpus input and every crash ever found through the very same function
//! (`tests/fuzz_corpus.rs`), on stable and in seconds.

/// The head parser must never panic, and what it accepts must hold its invariants (checked
/// by [`dragonfly_http::fuzzing::parse_head`]).
pub(crate) fn parse_head(data: &[u8]) {
    dragonfly_http::fuzzing::parse_head(data);
}
