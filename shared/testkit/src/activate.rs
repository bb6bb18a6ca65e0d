//! A daemon binary started the way systemd starts it: by socket activation.
//!
//! `systemd-socket-activate` (from the systemd package) binds the listening socket, names it
//! like `FileDescriptorName=` would, and starts the daemon — as [`crate::unprivileged`] when the
//! tests run as root — on the first connection, passing the fd. A test that talks to the
//! daemon through it proves the daemon serves the socket it was given.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A socket-activated daemon; killed when dropped.
#[derive(Debug)]
pub struct SocketActivated {
    child: tokio::process::Child,
    pid: Pid,
    port: u16,
}

impl SocketActivated {
    /// Starts `binary args…` behind `activate` (the path of `systemd-socket-activate`) with a
    /// TCP socket on 127.0.0.1:`port` named `fdname`, and returns once that socket accepts
    /// connections. The first connection — made here — starts the daemon. Its stderr is kept
    /// for [`SocketActivated::stop`].
    ///
    /// # Panics
    /// When the program cannot be started or the socket never listens.
    pub async fn tcp(
        activate: &Path,
        port: u16,
        fdname: &str,
        binary: impl AsRef<OsStr>,
        args: &[&OsStr],
    ) -> SocketActivated {
        let child = tokio::process::Command::from(crate::unprivileged(activate))
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("--fdname={fdname}"))
            .arg(binary)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("systemd-socket-activate starts");
        let pid = Pid::from_raw(
            i32::try_from(child.id().expect("a running child has a pid")).expect("pid fits"),
        );
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return SocketActivated { child, pid, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("systemd-socket-activate never listened on 127.0.0.1:{port}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM and waits (at most `grace`) for the exit; returns whether it exited 0,
    /// and its stderr.
    ///
    /// # Panics
    /// When it does not exit within `grace`.
    pub async fn stop(self, grace: Duration) -> (bool, String) {
        // The pid is the daemon's: socket-activate and setpriv exec it in place.
        let _ = kill(self.pid, Signal::SIGTERM);
        let out = tokio::time::timeout(grace, self.child.wait_with_output())
            .await
            .expect("the daemon stops within its grace period")
            .expect("waiting for the daemon");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
