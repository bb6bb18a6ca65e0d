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
//! 4. Only regular files are served (checked with `fstat` on the opened descriptor; `O_NONBLOCK`
//!    so that opening a FIFO cannot hang).
//!
//! This module must never follow a path outside a root or serve anything it could not `fstat`
//! as a regular file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

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

/// Finds and opens `requested` under the first root that has it.
pub fn open_in_roots(roots: &[PathBuf], requested: &str) -> Result<Opened, Refusal> {
    let name = relative_name(requested)?;
    for root in roots {
        match open_beneath(root, name) {
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

fn open_beneath(root: &Path, name: &str) -> Result<(File, u64), Refusal> {
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
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&dir, name, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(Refusal::NotFound),
        Err(Errno::EXDEV) => return Err(Refusal::Forbidden("resolves outside the root")),
        Err(Errno::ELOOP) => return Err(Refusal::Forbidden("symlink loop or magic link")),
        Err(Errno::EACCES | Errno::EPERM) => return Err(Refusal::Forbidden("permission denied")),
        Err(errno) => return Err(Refusal::Io(errno)),
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

    #[test]
    fn first_root_wins_and_later_roots_are_searched() {
        let (_dir, a, b) = tree();
        let roots = [a, b.clone()];
        assert_eq!(read(open_in_roots(&roots, "both").unwrap()), "from a");
        let only_b = open_in_roots(&roots, "/only-b").unwrap();
        assert_eq!(only_b.root, b);
        assert_eq!(only_b.size, 1);
        assert_eq!(read(open_in_roots(&roots, "sub/file").unwrap()), "deep");
        assert_eq!(
            open_in_roots(&roots, "missing").unwrap_err(),
            Refusal::NotFound
        );
    }

    #[test]
    fn nothing_outside_a_root_is_served() {
        let (_dir, a, b) = tree();
        let roots = [a, b];
        assert_eq!(read(open_in_roots(&roots, "inside").unwrap()), "deep");
        for name in ["outside", "absolute", "sub/up/secret", "../secret", "sub"] {
            let refusal = open_in_roots(&roots, name).unwrap_err();
            assert_eq!(refusal.code(), ErrorCode::AccessViolation, "{name}");
        }
    }

    #[test]
    fn a_missing_root_is_skipped() {
        let (dir, a, _b) = tree();
        let roots = [dir.path().join("absent"), a];
        assert_eq!(read(open_in_roots(&roots, "both").unwrap()), "from a");
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let (_dir, a, _b) = tree();
        nix::unistd::mkfifo(&a.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(
            open_in_roots(&[a], "fifo"),
            Err(Refusal::Forbidden(_))
        ));
    }
}
