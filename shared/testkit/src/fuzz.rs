//! Replaying a fuzz target's kept inputs in `cargo test`.
//!
//! Each daemon's `fuzz/inputs.rs` holds what its fuzz targets do with one input; libFuzzer runs
//! it open-ended (`integration/fuzz.sh`), and the daemon's tests replay every kept input through
//! the very same function: `fuzz/corpus/<target>/` (what fuzzing kept for its coverage) and
//! `fuzz/crashes/<target>/` (every crash ever found; never deleted). Deterministic, on stable,
//! in seconds: this is what CI runs.

use std::panic::{RefUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Feeds every file of `<fuzz_dir>/corpus/<target>/` and `<fuzz_dir>/crashes/<target>/` to
/// `input`, in name order, and returns how many there were.
///
/// # Panics
/// When fewer than `at_least` inputs are kept (a corpus gone missing would otherwise pass), or
/// when any input panics: the message lists every such file (each panic's own message is
/// printed above it).
pub fn replay_kept_inputs(
    fuzz_dir: &Path,
    target: &str,
    at_least: usize,
    input: impl Fn(&[u8]) + RefUnwindSafe,
) -> usize {
    let mut replayed = 0;
    let mut panicked: Vec<PathBuf> = Vec::new();
    for kind in ["corpus", "crashes"] {
        // No crash found yet: git keeps no empty directory.
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(kind).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("reading a fuzz input directory").path())
            .collect();
        files.sort();
        for file in files {
            let data =
                std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            if catch_unwind(|| input(&data)).is_err() {
                panicked.push(file);
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= at_least,
        "only {replayed} kept inputs of fuzz target {target} in {}",
        fuzz_dir.display()
    );
    assert!(
        panicked.is_empty(),
        "{} of {replayed} kept inputs of fuzz target {target} panic (messages above): {panicked:#?}",
        panicked.len()
    );
    replayed
}
