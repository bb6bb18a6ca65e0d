//! The fuzz target's kept inputs, replayed through the function it calls (`fuzz/inputs.rs`):
//! every file of `fuzz/corpus/parse_head/` and `fuzz/crashes/parse_head/`. Deterministic, on
//! stable, in seconds: what CI runs; `integration/fuzz.sh parse_head` finds new inputs.

use std::path::Path;

#[path = "../fuzz/inputs.rs"]
mod inputs;

#[test]
fn kept_parse_head_inputs_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    dragonfly_testkit::replay_kept_inputs(&fuzz, "parse_head", 5, inputs::parse_head);
}
