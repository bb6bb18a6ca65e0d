//! Run a test's child process as an unprivileged user when the tests run as root.
//!
//! Dragonfly's daemons refuse to run as root, and CI runs the tests as root: such tests start
//! the daemon through [`unprivileged`] and hand it directories prepared with
//! [`chown_for_unprivileged`]. Outside root both are no-ops, so the same test runs anywhere.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Group, User};

/// The user [`unprivileged`] runs programs as.
pub const UNPRIVILEGED_USER: &str = "nobody";
/// The group [`unprivileged`] runs programs as (Debian's name for 65534).
pub const UNPRIVILEGED_GROUP: &str = "nogroup";

/// Whether this process runs with effective UID 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command that runs `program` as [`UNPRIVILEGED_USER`]:[`UNPRIVILEGED_GROUP`] with no
/// supplementary groups, no capabilities (inheritable and bounding sets cleared) and
/// `no_new_privs`, through util-linux `setpriv`; when not root, simply `program`.
///
/// Add arguments, environment and working directory as usual. For tokio, convert with
/// `tokio::process::Command::from(unprivileged(p))`. The process that runs is `setpriv`, which
/// `exec`s `program` in place, so its PID is the program's PID. `program` and the directories
/// leading to it must be readable and searchable by that user.
pub fn unprivileged(program: impl AsRef<OsStr>) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={UNPRIVILEGED_USER}"))
        .arg(format!("--regid={UNPRIVILEGED_GROUP}"))
        .args([
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(program);
    cmd
}

/// Gives `path` and everything under it (symlinks not followed) to
/// [`UNPRIVILEGED_USER`]:[`UNPRIVILEGED_GROUP`], so a program started with [`unprivileged`]
/// can write there. Does nothing when not root.
///
/// # Errors
/// The user or group does not exist, or a `chown` failed.
pub fn chown_for_unprivileged(path: impl AsRef<Path>) -> io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let user = User::from_name(UNPRIVILEGED_USER)?
        .ok_or_else(|| io::Error::other(format!("no user {UNPRIVILEGED_USER}")))?;
    let group = Group::from_name(UNPRIVILEGED_GROUP)?
        .ok_or_else(|| io::Error::other(format!("no group {UNPRIVILEGED_GROUP}")))?;
    chown_tree(path.as_ref(), user.uid.as_raw(), group.gid.as_raw())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_as_nobody_and_can_write_a_chowned_dir() {
        if !crate::require_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        chown_for_unprivileged(dir.path()).expect("chown");

        let out = unprivileged("sh")
            .arg("-c")
            .arg("id -u; id -G; touch sub/file")
            .current_dir(dir.path())
            .output()
            .expect("run setpriv");
        assert!(out.status.success(), "{out:?}");
        let nobody = User::from_name(UNPRIVILEGED_USER)
            .expect("getpwnam")
            .expect("nobody");
        let nogroup = Group::from_name(UNPRIVILEGED_GROUP)
            .expect("getgrnam")
            .expect("nogroup");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(nobody.uid.to_string().as_str()));
        assert_eq!(lines.next(), Some(nogroup.gid.to_string().as_str()));
        assert!(dir.path().join("sub/file").exists());
    }
}
