//! Boots the installed kernel without going back through the firmware.
//!
//! [`run`] mounts the target filesystem read-only, opens the kernel and initrd and hands them to
//! `kexec_file_load(2)` (the kernel verifies and loads them; no userspace kexec-tools in the
//! image), then unmounts. It does **not** jump: it returns an [`Outcome`] whose
//! [`Reboot`] says what the imaging loop must do after apid acknowledged the action — jump
//! into the loaded kernel (`reboot(LINUX_REBOOT_CMD_KEXEC)`), or, when the kernel refused the
//! load (no `CONFIG_KEXEC_FILE`, a signature policy, lockdown), reboot through the firmware,
//! where ipxed's local-disk boot fate takes over. Either way the operator is told which.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use dragonfly_core::template::Filesystem;

use super::writefile::{Mounted, inside};
use super::{ActionError, Outcome};

/// What the imaging loop does after a successful kexec action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reboot {
    /// The kernel is loaded: jump into it.
    Kexec,
    /// The kernel refused the load (the reason): reboot through the firmware.
    Firmware(String),
}

impl Reboot {
    /// Syncs and reboots as decided. Returns only on failure (not root, or the jump refused),
    /// after trying a firmware reboot.
    pub fn now(&self) -> std::io::Error {
        nix::unistd::sync();
        use nix::sys::reboot::{RebootMode, reboot};
        if *self == Reboot::Kexec {
            let _ = reboot(RebootMode::RB_KEXEC);
        }
        match reboot(RebootMode::RB_AUTOBOOT) {
            Ok(never) => match never {},
            Err(e) => e.into(),
        }
    }
}

/// `kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)`: no wrapper in nix or
/// libc, so the raw syscall.
#[allow(unsafe_code, reason = "a syscall nix does not wrap")]
fn kexec_file_load(kernel: &File, initrd: Option<&File>, cmdline: &CString) -> std::io::Result<()> {
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;
    let (initrd_fd, flags) = match initrd {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    let bytes = cmdline.as_bytes_with_nul();
    // SAFETY: the fds are open for the duration of the call; `cmdline` points to
    // `bytes.len()` readable bytes ending in NUL, as the syscall requires; nothing is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Loads the installed kernel; see the module's documentation.
pub fn run(
    dev: &Path,
    fs: Filesystem,
    kernel: &str,
    initrd: Option<&str>,
    cmdline: &str,
) -> Result<Outcome, ActionError> {
    let cmd = CString::new(cmdline)
        .map_err(|_| ActionError::Unsupported("the command line contains a NUL byte".into()))?;
    let m = Mounted::new(dev, fs, true)?;
    let kpath = inside(&m.dir, kernel)?;
    let k = File::open(&kpath).map_err(ActionError::io("opening the kernel", Path::new(kernel)))?;
    let i = match initrd {
        Some(p) => Some(
            File::open(inside(&m.dir, p)?)
                .map_err(ActionError::io("opening the initrd", Path::new(p)))?,
        ),
        None => None,
    };
    let loaded = kexec_file_load(&k, i.as_ref(), &cmd);
    drop((k, i));
    m.finish()?;
    Ok(match loaded {
        Ok(()) => Outcome {
            message: format!(
                "loaded {kernel} from {} with kexec_file_load; jumping into it",
                dev.display()
            ),
            bytes: None,
            reboot: Some(Reboot::Kexec),
        },
        Err(e) => {
            let why = format!(
                "the kernel refused kexec_file_load ({e}); rebooting through the firmware to boot from disk"
            );
            Outcome {
                message: why.clone(),
                bytes: None,
                reboot: Some(Reboot::Firmware(why)),
            }
        }
    })
}
