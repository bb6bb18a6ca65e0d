//! The fuzz target's kept inputs, replayed through the function it calls (`fuzz/inputs.rs`):
//! every file of `fuzz/corpus/sse_decode/` and `fuzz/crashes/sse_decode/`. Deterministic, on
//! stable, in seconds: what CI runs; `integration/fuzz.sh sse_decode` finds new inputs.

use std::path::Path;

#[path = "../fuzz/inputs.rs"]
mod inputs;

#[test]
fn kept_sse_decode_inputs_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    dragonfly_testkit::replay_kept_inputs(&fuzz, "sse_decode", 3, inputs::sse_decode);
}
