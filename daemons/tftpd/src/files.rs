//! Which file a requested name means, and opening it without ever leaving a root.
//!
//! Policy, in order:
//! 1. The name must be printable ASCII (the codec already checked) without `\`; one leading
//!    `/` is stripped, because PXE ROMs and `tftp://host/file` clients send one; after that, an
//!    empty name, an empty component (`a//b`, a second leading `/`), `.` or `..` is refused
//!    with ERROR 2 (access violation). So `/etc/passwd` means `<root>/etc/passwd`, never the
//!    host's file.
//! 2. Roots are tried in configuration order; the **first root in which the name exists**
//!    answers. If that file is refused (a symlink leading out of the root, a directory, a
//!    device), the answer is an access violation: later roots are not consulted, so what a
//!    client gets never depends on a refusal.
//! 3. The file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to the
//!    root: the kernel refuses, atomically, any path (symlinks included, at any depth) that
//!    would resolve outside the root — no check-then-open race. Symlinks that stay inside the
//!    root work (Debian's `/usr/lib/ipxe/*.rom -> qemu/…`); absolute symlinks are refused even
//!    when they point back inside, which is what `RESOLVE_BENEATH` means.
//!    Where `openat2` answers `ENOSYS`, the same rules are applied by walking the path one
//!    component at a time (`walk_beneath`): this is the case under our own unit, because
//!    systemd's `RestrictSUIDSGID=` cannot inspect `openat2`'s arguments with seccomp and so
//!    refuses the call with `ENOSYS`, expecting callers to fall back (units/nspawn-test.sh
//!    found it); also on kernels before 5.6 and under some container runtimes' filters.
//! 4. Only regular files are served (checked with `fstat` on the opened descriptor; `O_NONBLOCK`
//!    so that opening a FIFO cannot hang).
//!
//! This module must never follow a path outside a root or serve anything it could not `fstat`
//! as a regular file.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::packet::ErrorCode;

/// Why a request gets no file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No root holds the name.
    #[error("file not found")]
    NotFound,
    /// The name is malformed, escapes its root, or is not a regular file.
    #[error("access violation: {0}")]
    Forbidden(&'static str),
    /// The file exists but could not be opened or examined.
    #[error("cannot open: {0}")]
    Io(Errno),
}

impl Refusal {
    /// The TFTP error code the client is sent.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::FileNotFound,
            Refusal::Forbidden(_) | Refusal::Io(_) => ErrorCode::AccessViolation,
        }
    }

    /// The TFTP error message the client is sent (no detail an attacker could use).
    pub fn client_message(&self) -> &'static str {
        match self {
            Refusal::NotFound => "file not found",
            Refusal::Forbidden(_) | Refusal::Io(_) => "access violation",
        }
    }
}

/// Checks a requested name and returns it relative to a root.
pub fn relative_name(requested: &str) -> Result<&str, Refusal> {
    let name = requested.strip_prefix('/').unwrap_or(requested);
    if name.is_empty() {
        return Err(Refusal::Forbidden("empty name"));
    }
    if name
        .bytes()
        .any(|b| !(0x20..0x7f).contains(&b) || b == b'\\')
    {
        return Err(Refusal::Forbidden("character not allowed"));
    }
    for component in name.split('/') {
        match component {
            "" => return Err(Refusal::Forbidden("empty path component")),
            "." | ".." => return Err(Refusal::Forbidden("dot path component")),
            _ => {}
        }
    }
    Ok(name)
}

/// An opened regular file and its size at opening time.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub size: u64,
    /// The root it came from, for logs.
    pub root: PathBuf,
}

/// How a name is resolved beneath its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the kernel does it atomically.
    Kernel,
    /// [`walk_beneath`]: one component at a time, for where `openat2` is unavailable.
    Walk,
}

/// Set once `openat2` has answered `ENOSYS`: it will not start working in this process.
static OPENAT2_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Finds and opens `requested` under the first root that has it.
pub fn open_in_roots(roots: &[PathBuf], requested: &str) -> Result<Opened, Refusal> {
    let resolver = if OPENAT2_UNAVAILABLE.load(Ordering::Relaxed) {
        Resolver::Walk
    } else {
        Resolver::Kernel
    };
    open_in_roots_with(roots, requested, resolver)
}

fn open_in_roots_with(
    roots: &[PathBuf],
    requested: &str,
    resolver: Resolver,
) -> Result<Opened, Refusal> {
    let name = relative_name(requested)?;
    for root in roots {
        match open_beneath(root, name, resolver) {
            Err(Refusal::NotFound) => continue,
            Err(refusal) => return Err(refusal),
            Ok((file, size)) => {
                return Ok(Opened {
                    file,
                    size,
                    root: root.clone(),
                });
            }
        }
    }
    Err(Refusal::NotFound)
}

fn open_beneath(root: &Path, name: &str, resolver: Resolver) -> Result<(File, u64), Refusal> {
    let dir = match open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        // A root that does not exist (yet) holds nothing.
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(Refusal::NotFound),
        Err(errno) => return Err(Refusal::Io(errno)),
    };
    let fd = match resolver {
        Resolver::Kernel => {
            let how = OpenHow::new()
                .flags(READ_FLAGS)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match openat2(&dir, name, how) {
                Ok(fd) => fd,
                Err(Errno::ENOSYS) => {
                    if !OPENAT2_UNAVAILABLE.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "openat2 is not available (ENOSYS: systemd's RestrictSUIDSGID=, a \
                             kernel before 5.6, or a seccomp filter); resolving names beneath \
                             the roots one component at a time instead"
                        );
                    }
                    walk_beneath(dir, name)?
                }
                Err(errno) => return Err(refusal(errno)),
            }
        }
        Resolver::Walk => walk_beneath(dir, name)?,
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Refusal::Io(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    if !meta.is_file() {
        return Err(Refusal::Forbidden("not a regular file"));
    }
    Ok((file, meta.len()))
}

/// How a served file is opened: read-only, and never blocking (a FIFO) or becoming a
/// controlling terminal.
const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_NONBLOCK);

/// Symlinks followed in one name before it is refused, as the kernel's own limit (40).
const MAX_SYMLINKS: usize = 40;

fn refusal(errno: Errno) -> Refusal {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => Refusal::NotFound,
        Errno::EXDEV => Refusal::Forbidden("resolves outside the root"),
        Errno::ELOOP => Refusal::Forbidden("symlink loop or magic link"),
        Errno::EACCES | Errno::EPERM => Refusal::Forbidden("permission denied"),
        errno => Refusal::Io(errno),
    }
}

/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` in user space: opens `name` beneath `root` (an
/// `O_PATH` directory) for reading, one component at a time, never letting the kernel follow a
/// symlink. Every step is relative to a descriptor this function holds, and `..` pops this
/// function's own stack of directories rather than asking the kernel, so renaming a directory
/// during the walk cannot lead outside the root. A symlink's text is read and resolved the
/// same way: relative ones may go anywhere inside the root, absolute ones and any `..` past the
/// root are refused (as `RESOLVE_BENEATH` refuses them); magic links (`/proc/…/fd/…`) are
/// never followed, since only their text is. The last component is opened with `O_NOFOLLOW`,
/// so a swap to a symlink between the check and the open is refused, not followed.
fn walk_beneath(root: OwnedFd, name: &str) -> Result<OwnedFd, Refusal> {
    let mut dirs = vec![root];
    let mut pending: Vec<Vec<u8>> = name
        .split('/')
        .rev()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let mut symlinks = 0;
    while let Some(component) = pending.pop() {
        match component.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if dirs.len() == 1 {
                    return Err(Refusal::Forbidden("resolves outside the root"));
                }
                dirs.pop();
                continue;
            }
            _ => {}
        }
        let here = dirs
            .last()
            .ok_or(Refusal::Forbidden("resolves outside the root"))?;
        let path = std::ffi::OsStr::from_bytes(&component);
        let fd = openat(
            here.as_fd(),
            path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(refusal)?;
        let kind = SFlag::from_bits_truncate(fstat(&fd).map_err(refusal)?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            symlinks += 1;
            if symlinks > MAX_SYMLINKS {
                return Err(Refusal::Forbidden("symlink loop or magic link"));
            }
            let target = readlinkat(here.as_fd(), path).map_err(refusal)?;
            let target = target.as_bytes();
            if target.first() == Some(&b'/') {
                return Err(Refusal::Forbidden("resolves outside the root"));
            }
            pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            continue;
        }
        if pending.is_empty() {
            return openat(
                here.as_fd(),
                path,
                READ_FLAGS | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(refusal);
        }
        if kind != SFlag::S_IFDIR {
            return Err(Refusal::NotFound);
        }
        dirs.push(fd);
    }
    // The name ended on `..` or `.`: a directory, never served.
    Err(Refusal::Forbidden("not a regular file"))
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let Some(at) = offset.checked_add(done as u64) else {
            break;
        };
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        match file.read_at(rest, at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn names_are_checked() {
        assert_eq!(relative_name("undionly.kpxe"), Ok("undionly.kpxe"));
        assert_eq!(relative_name("/undionly.kpxe"), Ok("undionly.kpxe"));
        assert_eq!(relative_name("/etc/passwd"), Ok("etc/passwd"));
        assert_eq!(relative_name("efi/ipxe.efi"), Ok("efi/ipxe.efi"));
        for bad in [
            "/",
            "",
            "//etc/passwd",
            "../etc/passwd",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/",
            "..",
            "boot\\x86\\pxe",
            "a\u{1}b",
        ] {
            assert!(
                matches!(relative_name(bad), Err(Refusal::Forbidden(_))),
                "{bad:?}"
            );
        }
    }

    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("both"), "from a").unwrap();
        std::fs::write(b.join("both"), "from b").unwrap();
        std::fs::write(b.join("only-b"), "b").unwrap();
        std::fs::write(a.join("sub/file"), "deep").unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        symlink("sub/file", a.join("inside")).unwrap();
        symlink("../secret", a.join("outside")).unwrap();
        symlink(dir.path().join("secret"), a.join("absolute")).unwrap();
        symlink("../..", a.join("sub/up")).unwrap();
        (dir, a, b)
    }

    fn read(opened: Opened) -> String {
        let mut buf = vec![0; 100];
        let n = read_full_at(&opened.file, &mut buf, 0).unwrap();
        buf.truncate(n);
        String::from_utf8(buf).unwrap()
    }

    /// Every rule holds for both resolvers: the kernel's and the component walk.
    const RESOLVERS: [Resolver; 2] = [Resolver::Kernel, Resolver::Walk];

    #[test]
    fn first_root_wins_and_later_roots_are_searched() {
        for resolver in RESOLVERS {
            let (_dir, a, b) = tree();
            let roots = [a, b.clone()];
            let open = |name| open_in_roots_with(&roots, name, resolver);
            assert_eq!(read(open("both").unwrap()), "from a");
            let only_b = open("/only-b").unwrap();
            assert_eq!(only_b.root, b);
            assert_eq!(only_b.size, 1);
            assert_eq!(read(open("sub/file").unwrap()), "deep");
            assert_eq!(
                open("missing").unwrap_err(),
                Refusal::NotFound,
                "{resolver:?}"
            );
            assert_eq!(open("sub/missing/x").unwrap_err(), Refusal::NotFound);
            assert_eq!(open("both/x").unwrap_err(), Refusal::NotFound);
        }
    }

    #[test]
    fn nothing_outside_a_root_is_served() {
        for resolver in RESOLVERS {
            let (dir, a, b) = tree();
            symlink("sub/../sub/./file", a.join("winding")).unwrap();
            symlink("loop", a.join("loop")).unwrap();
            symlink("up/secret", a.join("sub/via-up")).unwrap();
            symlink("/proc/self/fd/0", a.join("magic")).unwrap();
            std::fs::create_dir(dir.path().join("c")).unwrap();
            symlink("../a/sub/file", dir.path().join("c/back-out-and-in")).unwrap();
            let roots = [a, b];
            let open = |name| open_in_roots_with(&roots, name, resolver);
            assert_eq!(read(open("inside").unwrap()), "deep");
            assert_eq!(read(open("winding").unwrap()), "deep", "{resolver:?}");
            for name in [
                "outside",
                "absolute",
                "sub/up/secret",
                "sub/via-up",
                "../secret",
                "sub",
                "loop",
                "magic",
            ] {
                let refusal = open(name).unwrap_err();
                assert_eq!(
                    refusal.code(),
                    ErrorCode::AccessViolation,
                    "{resolver:?} {name}"
                );
            }
            // Beneath c, a symlink that leaves c is refused even though it lands in a.
            let c = [dir.path().join("c")];
            let refusal = open_in_roots_with(&c, "back-out-and-in", resolver).unwrap_err();
            assert_eq!(refusal.code(), ErrorCode::AccessViolation, "{resolver:?}");
        }
    }

    #[test]
    fn a_missing_root_is_skipped() {
        for resolver in RESOLVERS {
            let (dir, a, _b) = tree();
            let roots = [dir.path().join("absent"), a];
            assert_eq!(
                read(open_in_roots_with(&roots, "both", resolver).unwrap()),
                "from a"
            );
        }
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        for resolver in RESOLVERS {
            let (_dir, a, _b) = tree();
            nix::unistd::mkfifo(&a.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
            assert!(matches!(
                open_in_roots_with(&[a], "fifo", resolver),
                Err(Refusal::Forbidden(_))
            ));
        }
    }
}
