//! The fuzz target's kept inputs, replayed: every file of `fuzz/corpus/parse_packet/` (what fuzzing
//! kept for its coverage, seeded with real clients' packets) and of `fuzz/crashes/parse_packet/` (every
//! crash fuzzing ever found; never deleted), fed to the function the fuzz target calls
//! (`fuzz/inputs.rs`). Deterministic, on stable, in seconds: this is what CI runs, while
//! open-ended fuzzing, which finds new inputs, is `integration/fuzz.sh`.

use std::path::Path;

#[path = "../../fuzz/inputs.rs"]
mod inputs;

#[test]
fn kept_fuzz_inputs_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    let mut panicked = Vec::new();
    for dir in ["corpus/parse_packet", "crashes/parse_packet"] {
        // No crash found yet: git keeps no empty directory.
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| inputs::parse_packet(&data)).is_err() {
                panicked.push(file);
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= 10,
        "only {replayed} kept fuzz inputs in {}",
        fuzz.display()
    );
    assert!(
        panicked.is_empty(),
        "{} of {replayed} kept fuzz inputs panic (messages above): {panicked:#?}",
        panicked.len()
    );
}
