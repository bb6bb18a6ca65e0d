//! The fuzz targets' kept inputs, replayed through the function each target calls
//! (`fuzz/inputs.rs`): every file of `fuzz/corpus/<target>/` and `fuzz/crashes/<target>/`
//! (see `dragonfly_testkit::replay_kept_inputs`). Deterministic, on stable, in seconds: this is
//! what CI runs, while open-ended fuzzing, which finds new inputs, is `integration/fuzz.sh`.

use std::path::Path;

#[path = "../../fuzz/inputs.rs"]
mod inputs;

#[test]
fn kept_parse_packet_inputs_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    dragonfly_testkit::replay_kept_inputs(&fuzz, "parse_packet", 10, inputs::parse_packet);
}

#[test]
fn kept_transfer_inputs_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    dragonfly_testkit::replay_kept_inputs(&fuzz, "transfer", 8, inputs::transfer);
}
