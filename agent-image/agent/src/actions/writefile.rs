//! Writes one file into a filesystem on the target disk.
//!
//! The filesystem is mounted in a fresh temporary directory under `/run` (never a fixed path
//! another action could be using), `nosuid,nodev,noexec`, in the agent's mount namespace
//! (private propagation in the initramfs, which has no systemd making mounts shared).
//! The file is written next to its destination as `.<name>.dragonfly-tmp`, given its
//! mode/uid/gid, fsynced, then renamed over the destination: a reader (or a crash) sees the
//! old file or the new one, never half of one. Parent directories are created `0755`
//! root-owned. Paths are checked to stay inside the mount: no `..`, and symlinks in the
//! image are not followed out of it (each parent is opened as a directory below the mount
//! root, and a symlink as a parent is refused). Then unmount and `sync`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use dragonfly_core::template::Filesystem;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{ActionError, Context, Outcome};
use crate::http;

/// Largest file fetched from a URL.
const MAX_URL_FILE: u64 = 64 << 20;

/// Where the contents come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Inline(&'a [u8]),
    Url(&'a str),
}

/// The file's mode and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn fs_type(fs: Filesystem) -> Result<&'static str, ActionError> {
    match fs {
        Filesystem::Ext4 => Ok("ext4"),
        Filesystem::Xfs => Ok("xfs"),
        Filesystem::Vfat => Ok("vfat"),
        Filesystem::Swap => Err(ActionError::Unsupported("swap cannot be mounted".into())),
    }
}

/// A new, empty directory under `base` for one mount. Named by process and counter, not by a
/// random UUID: randomness blocks until the kernel's pool is seeded, which on a machine
/// without a hardware RNG (a QEMU VM without virtio-rng) can be never — the agent hung in
/// its first writefile that way.
fn fresh_dir(base: &Path) -> Result<PathBuf, ActionError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("mnt-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier agent process with the same id: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => {}
            Err(e) => return Err(ActionError::io("creating", &dir)(e)),
        }
    }
}

/// Why `dev` did not mount as `kind`. `EINVAL` is the kernel's answer for a device without
/// that filesystem (blank, or formatted otherwise): said in words, naming the device, since
/// "Invalid argument" alone sends an operator looking at the wrong thing.
fn mount_error(dev: &Path, kind: &'static str, e: nix::Error) -> ActionError {
    if e == nix::Error::EINVAL {
        return ActionError::NoFilesystem {
            device: dev.to_owned(),
            filesystem: kind,
        };
    }
    ActionError::Io {
        what: "mounting",
        path: dev.to_owned(),
        source: std::io::Error::from(e),
    }
}

/// A mounted filesystem, unmounted on drop (lazily, if busy, so an error path never leaves it
/// behind) and its directory removed.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    done: bool,
}

impl Mounted {
    /// Mounts `dev` (of type `fs`) on a new directory under `/run/dragonfly`.
    pub fn new(dev: &Path, fs: Filesystem, read_only: bool) -> Result<Self, ActionError> {
        let kind = fs_type(fs)?;
        let base = Path::new("/run/dragonfly");
        fs::create_dir_all(base).map_err(ActionError::io("creating", base))?;
        let dir = fresh_dir(base)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if let Err(e) = mount(Some(dev), &dir, Some(kind), flags, None::<&str>) {
            let _ = fs::remove_dir(&dir);
            return Err(mount_error(dev, kind, e));
        }
        // Keep this mount out of any shared peer group (a host with systemd shares `/`).
        let _ = mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        );
        Ok(Self { dir, done: false })
    }

    /// Unmounts and syncs; an error here (a busy filesystem) is the action's error.
    pub fn finish(mut self) -> Result<(), ActionError> {
        self.done = true;
        nix::unistd::sync();
        umount2(&self.dir, MntFlags::empty()).map_err(|e| ActionError::Io {
            what: "unmounting",
            path: self.dir.clone(),
            source: e.into(),
        })?;
        let _ = fs::remove_dir(&self.dir);
        nix::unistd::sync();
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.done {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// Joins a template's absolute `path` below `root`, refusing `..` and symlinked parents.
pub fn inside(root: &Path, path: &str) -> Result<PathBuf, ActionError> {
    let bad = || {
        ActionError::Unsupported(format!(
            "{path:?} is not an absolute path inside the filesystem"
        ))
    };
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(bad());
    }
    let mut out = root.to_owned();
    let comps: Vec<_> = p.components().collect();
    for (i, c) in comps.iter().enumerate() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                out.push(n);
                let last = i + 1 == comps.len();
                if !last && fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(ActionError::Unsupported(format!(
                        "{path:?}: {} is a symbolic link; refusing to follow it out of the filesystem",
                        out.display()
                    )));
                }
            }
            _ => return Err(bad()),
        }
    }
    if out == root {
        return Err(bad());
    }
    Ok(out)
}

/// Writes `data` (or what `reader` yields) to `dest` atomically with its owner and mode.
pub fn write_atomic(dest: &Path, reader: &mut dyn Read, owner: Owner) -> Result<u64, ActionError> {
    let parent = dest
        .parent()
        .ok_or_else(|| ActionError::Unsupported("no parent".into()))?;
    fs::create_dir_all(parent).map_err(ActionError::io("creating", parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.dragonfly-tmp"));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(ActionError::io("creating", &tmp))?;
        let n = std::io::copy(&mut reader.take(MAX_URL_FILE + 1), &mut f)
            .map_err(ActionError::io("writing", &tmp))?;
        if n > MAX_URL_FILE {
            return Err(ActionError::Unsupported(format!(
                "the file is larger than {} MiB",
                MAX_URL_FILE >> 20
            )));
        }
        f.flush().map_err(ActionError::io("writing", &tmp))?;
        // vfat has no owners: chown fails with EPERM there, and is skipped.
        match std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && (owner.uid, owner.gid) == (0, 0) => {
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(ActionError::io("changing the owner of", &tmp)(e)),
        }
        f.set_permissions(fs::Permissions::from_mode(owner.mode))
            .map_err(ActionError::io("changing the mode of", &tmp))?;
        f.sync_all().map_err(ActionError::io("syncing", &tmp))?;
        fs::rename(&tmp, dest).map_err(ActionError::io("renaming into", dest))?;
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(n)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fetches a URL's body (`http://` or `https://`, no token) as a reader.
fn fetch(url: &str, ctx: &Context) -> Result<Box<dyn Read>, ActionError> {
    let u = http::Url::parse_download(url)
        .map_err(|e| ActionError::Download(dragonfly_core::Chain(&e).to_string()))?;
    let tls = if u.tls {
        Some(
            http::tls_config(&ctx.ca_files)
                .map_err(|e| ActionError::Download(format!("fetching {url}: {e}")))?,
        )
    } else {
        None
    };
    let (head, body) =
        http::get_stream(&u, 0, ctx.http_timeout, tls.as_ref(), None).map_err(|e| {
            ActionError::Download(format!("fetching {url}: {}", dragonfly_core::Chain(&e)))
        })?;
    if head.status != 200 {
        return Err(ActionError::Download(format!(
            "fetching {url}: the server answered {}",
            head.status
        )));
    }
    Ok(Box::new(body))
}

/// Mounts, writes, unmounts.
pub fn run(
    ctx: &Context,
    dev: &Path,
    fs: Filesystem,
    path: &str,
    source: Source<'_>,
    owner: Owner,
) -> Result<Outcome, ActionError> {
    // Fetch before mounting: a slow or failing server never holds the filesystem mounted.
    let mut reader: Box<dyn Read> = match source {
        Source::Inline(b) => Box::new(b),
        Source::Url(u) => fetch(u, ctx)?,
    };
    let m = Mounted::new(dev, fs, false)?;
    let dest = inside(&m.dir, path)?;
    let n = write_atomic(&dest, &mut reader, owner)?;
    m.finish()?;
    Ok(Outcome {
        message: format!(
            "{path} ({n} bytes, mode {:o}) on {}",
            owner.mode,
            dev.display()
        ),
        bytes: Some(n),
        reboot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_without_the_filesystem_is_named_in_words() {
        let dev = Path::new("/dev/vda2");
        let e = mount_error(dev, "ext4", nix::Error::EINVAL);
        assert_eq!(
            dragonfly_core::Chain(&e).to_string(),
            "/dev/vda2 has no ext4 filesystem the kernel can mount (blank, or formatted \
             otherwise?)"
        );
        let e = mount_error(dev, "ext4", nix::Error::EBUSY);
        let text = dragonfly_core::Chain(&e).to_string();
        assert!(text.starts_with("mounting /dev/vda2: "), "{text}");
    }

    #[test]
    fn paths_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(inside(r, "/etc/hostname").unwrap(), r.join("etc/hostname"));
        assert!(inside(r, "etc/hostname").is_err());
        assert!(inside(r, "/etc/../../x").is_err());
        assert!(inside(r, "/").is_err());
        std::os::unix::fs::symlink("/etc", r.join("etc")).unwrap();
        assert!(inside(r, "/etc/hostname").is_err());
        // A symlink as the file itself is replaced by the rename, not followed.
        assert!(inside(r, "/etc").is_ok());
    }

    #[test]
    fn atomic_write_with_mode_and_parents() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("a/b/c.conf");
        let me = Owner {
            mode: 0o640,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        assert_eq!(write_atomic(&dest, &mut &b"one\n"[..], me).unwrap(), 4);
        assert_eq!(fs::read(&dest).unwrap(), b"one\n");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        write_atomic(&dest, &mut &b"two"[..], Owner { mode: 0o600, ..me }).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
