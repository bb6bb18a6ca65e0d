//! The test "agent": a Debian kernel and a busybox initramfs that prints [`crate::MARKER`]
//! with the MAC it was booted for and powers off. Built by `integration/e2e/build-test-image.sh`
//! and cached under `target/e2e-cache/test-image-<hash of the script>/`.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

const SCRIPT: &str = include_str!("../e2e/build-test-image.sh");
const SCRIPT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/build-test-image.sh");

/// Paths of the built kernel and initramfs (their directory can serve as ipxed's `agent_dir`).
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Holds `vmlinuz` and `initrd.img`, nothing else.
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the test image once (the first run downloads the kernel package with
/// `apt-get download`, ~70 MB) and returns it; later calls and runs reuse the cache.
///
/// # Panics
/// When the build script fails (its output is in the message).
pub fn test_image() -> TestImage {
    let cache = crate::cache_dir();
    let dir = cache.join(format!("test-image-{:016x}", fnv1a(SCRIPT.as_bytes())));
    let image = TestImage {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        dir: dir.clone(),
    };
    if image.vmlinuz.is_file() && image.initrd.is_file() {
        return image;
    }
    let lock = open_lock(&cache.join("build.lock"));
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking target/e2e-cache/build.lock");
    if image.vmlinuz.is_file() && image.initrd.is_file() {
        return image;
    }
    let out = Command::new("bash")
        .arg(SCRIPT_PATH)
        .arg(&cache)
        .arg(&dir)
        .output()
        .expect("running bash integration/e2e/build-test-image.sh");
    assert!(
        out.status.success() && image.vmlinuz.is_file() && image.initrd.is_file(),
        "build-test-image.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

pub(crate) fn open_lock(path: &std::path::Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// FNV-1a: a cache key that stays the same across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
