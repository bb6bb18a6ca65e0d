//! Random values that never wait for the kernel's entropy pool: the one source of randomness
//! in the agent.
//!
//! Why it exists: the agent needs values that are *unique*, not secret (GPT disk and partition
//! GUIDs, an MBR disk signature), and plain `getrandom(2)` — what `Uuid::new_v4` and every
//! `rand` generator call — blocks until the kernel's pool is initialised. On a machine without
//! a hardware RNG (a QEMU TCG VM without virtio-rng) running from an initramfs, nothing may
//! ever seed it: the agent once hung for good in its first writefile that way. So, in order:
//!
//! 1. `getrandom(GRND_INSECURE)` (Linux ≥ 5.6): never blocks; the kernel's best effort, which
//!    is plenty for uniqueness;
//! 2. `getrandom(GRND_NONBLOCK)` (older kernels, which refuse the flag with `EINVAL`): random
//!    bytes if the pool is ready, else `EAGAIN` at once;
//! 3. SHA-256 of the wall clock, the monotonic clock, the pid and thread id and a process-wide
//!    counter: distinct across calls in a process, and across processes and boots as long as
//!    the clocks differ.
//!
//! What it must never do: block, or be used for a secret (boot tokens come from apid).
//! Everything random in the agent goes through here (std's own `HashMap` keys aside: std
//! takes them with `GRND_INSECURE` too); a test checks no other module calls `Uuid::new_v4`,
//! `getrandom` or `rand`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Where random bytes may come from (all of them, in order, for [`fill`]; tests pick one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Insecure,
    NonBlock,
    Mixed,
}

/// Fills `buf` with random bytes, without ever blocking.
pub fn fill(buf: &mut [u8]) {
    for source in [Source::Insecure, Source::NonBlock, Source::Mixed] {
        if fill_from(source, buf) {
            return;
        }
    }
}

/// A random (version 4, RFC 9562 variant) UUID.
pub fn uuid_v4() -> Uuid {
    let mut b = [0u8; 16];
    fill(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// A random GUID as a GPT stores it (mixed-endian: the first three fields little-endian), so
/// that tools that read the table (`sgdisk`, `blkid`) see a valid version 4 GUID.
pub fn gpt_guid() -> [u8; 16] {
    uuid_v4().to_bytes_le()
}

/// A random `u32` (an MBR disk signature).
pub fn u32() -> u32 {
    let mut b = [0u8; 4];
    fill(&mut b);
    u32::from_le_bytes(b)
}

/// A random `u64` (retry jitter).
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

/// Fills `buf` from one source; false when that source cannot (the next one is tried).
fn fill_from(source: Source, buf: &mut [u8]) -> bool {
    match source {
        Source::Insecure => getrandom(buf, libc::GRND_INSECURE),
        Source::NonBlock => getrandom(buf, libc::GRND_NONBLOCK),
        Source::Mixed => {
            mixed(buf);
            true
        }
    }
}

/// `getrandom(2)` with `flags` until `buf` is full; false on any error but `EINTR` (`EINVAL`:
/// a kernel without the flag; `EAGAIN`: a pool not ready; `ENOSYS`: no such call).
#[allow(
    unsafe_code,
    reason = "getrandom(2) with GRND_INSECURE: neither std nor nix offers the flag"
)]
fn getrandom(buf: &mut [u8], flags: libc::c_uint) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid,
        // writable memory of that length for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        match usize::try_from(n) {
            Ok(n) => done += n,
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The last resort: SHA-256 of everything that differs between two calls, for each 32 bytes.
fn mixed(buf: &mut [u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for chunk in buf.chunks_mut(32) {
        let mut h = Sha256::new();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.update(wall.to_le_bytes());
        // The monotonic clock (since boot): `Instant` shows its raw timespec only as Debug.
        h.update(format!("{:?}", Instant::now()).as_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(nix::unistd::gettid().as_raw().to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let out = h.finalize();
        chunk.copy_from_slice(&out[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_source_fills_and_differs_from_call_to_call() {
        for source in [Source::Insecure, Source::NonBlock, Source::Mixed] {
            let mut seen = HashSet::new();
            for _ in 0..1000 {
                // 70 bytes: more than one SHA-256 block of the mixed source, and a ragged tail.
                let mut b = [0u8; 70];
                if !fill_from(source, &mut b) {
                    // GRND_NONBLOCK on a machine whose pool is not ready yet: allowed.
                    assert_eq!(source, Source::NonBlock);
                    break;
                }
                assert!(seen.insert(b), "{source:?} repeated itself");
            }
        }
        assert!(
            fill_from(Source::Insecure, &mut [0u8; 16]),
            "GRND_INSECURE needs Linux 5.6"
        );
    }

    #[test]
    fn guids_are_unique_version_4_as_tools_read_a_gpt() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let g = gpt_guid();
            assert!(seen.insert(g));
            // A GPT entry is read mixed-endian.
            let u = Uuid::from_bytes_le(g);
            assert_eq!(u.get_version(), Some(uuid::Version::Random), "{u}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{u}");
        }
        assert_ne!(u32(), u32());
    }

    /// The rule this module exists for: nothing else in the agent may draw randomness in a way
    /// that can block on an unseeded pool.
    #[test]
    fn no_other_module_draws_randomness_itself() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 5, "{files:?}");
        let banned = [
            ["new", "_v4("].concat(),
            ["get", "random("].concat(),
            ["rand", "::"].concat(),
            ["/dev/", "random"].concat(),
        ];
        for f in files.iter().filter(|f| !f.ends_with("random.rs")) {
            let text = std::fs::read_to_string(f).unwrap();
            for b in &banned {
                assert!(
                    !text.contains(b.as_str()),
                    "{} uses {b}: take randomness from crate::random",
                    f.display()
                );
            }
        }
    }
}
