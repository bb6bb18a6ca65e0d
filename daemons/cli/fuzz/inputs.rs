//! What each fuzz target does with one input, in one place: `fuzz_targets/<target>.rs` runs it
//! under libFuzzer (nightly, `integration/fuzz.sh`), and dragonfly-cli's `cargo test` replays
//! every kept corpus input and every crash ever found through the very same function
//! (`tests/fuzz_corpus.rs`), on stable and in seconds.

use dragonfly_cli::sse::{Decoder, MAX_EVENT, MAX_LINE};

/// The event-stream decoder on what a server (or anything answering in its place) sends:
/// never a panic, and where the network cuts the bytes never changes what is decoded. The
/// first byte chooses the cut.
pub(crate) fn sse_decode(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = Decoder::new().feed(stream);
    let cut = usize::from(cut).min(stream.len());
    let mut d = Decoder::new();
    let mut parts = d.feed(&stream[..cut]);
    parts.extend(d.feed(&stream[cut..]));
    assert_eq!(whole, parts, "decoding depends on where the stream was cut");
    // Bounded whatever is sent (a byte decoded lossily may grow to U+FFFD's three).
    for e in &whole {
        assert!(e.data.len() <= MAX_EVENT && e.event.len() <= 3 * MAX_LINE);
    }
}
