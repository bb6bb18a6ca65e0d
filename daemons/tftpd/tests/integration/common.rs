//! Shared set-up: a served directory with random files, the server run in-process on a
//! loopback port, real clients, and a raw-socket client for what real clients cannot send.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dragonfly_bus::{Bus, ConnectOptions};
use dragonfly_runtime::config::DaemonConfig;
use dragonfly_runtime::{Context, Credentials, NoStore};
use dragonfly_tftpd::config::RawTftpd;
use dragonfly_tftpd::packet::{self, Packet};
use dragonfly_tftpd::{Tftpd, TftpdConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub(crate) const MIB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A served root with `small.bin` (1 MiB) and `large.bin` (5 MiB), plus a scratch directory
/// for clients' downloads. Everything is readable by the unprivileged test user.
pub(crate) struct Tree {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) scratch: PathBuf,
}

impl Tree {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(root.join("small.bin"), random_bytes(MIB, 1)).unwrap();
        std::fs::write(root.join("large.bin"), random_bytes(5 * MIB, 2)).unwrap();
        dragonfly_testkit::chown_for_unprivileged(dir.path()).unwrap();
        Self { dir, root, scratch }
    }
}

pub(crate) fn config(roots: &[&Path], tweak: impl FnOnce(&mut RawTftpd)) -> TftpdConfig {
    let mut raw = RawTftpd {
        roots: Some(roots.iter().map(|r| r.to_path_buf()).collect()),
        ..RawTftpd::default()
    };
    tweak(&mut raw);
    TftpdConfig::validate(raw).unwrap()
}

/// `run()` on `127.0.0.1:<ephemeral>`; stopped on drop.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Server {
    pub(crate) fn start(tftpd: TftpdConfig, nats_url: Option<String>) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let bus = match nats_url {
                Some(url) => Some(
                    Bus::connect(ConnectOptions::new(url, "tftpd", None))
                        .await
                        .unwrap(),
                ),
                None => None,
            };
            let ctx = Context::<Tftpd>::new(tftpd, NoStore, bus, Credentials::default());
            dragonfly_tftpd::run(ctx, socket, token).await.unwrap();
        });
        Self { addr, shutdown }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real TFTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// tftp-hpa, lock-step, blksize 512.
    TftpHpa,
    /// atftp with blksize 1468, tsize and windowsize 16.
    Atftp,
    /// curl with blksize 1468.
    Curl,
}

impl Client {
    pub(crate) const ALL: [Client; 3] = [Client::TftpHpa, Client::Atftp, Client::Curl];

    fn binary(self) -> (&'static str, &'static str) {
        match self {
            Client::TftpHpa => ("tftp", "apt-get install tftp-hpa"),
            Client::Atftp => ("atftp", "apt-get install atftp"),
            Client::Curl => ("curl", "apt-get install curl"),
        }
    }

    /// Whether the client is installed (skips outside CI, fails in CI otherwise).
    pub(crate) fn available(self) -> bool {
        let (name, install) = self.binary();
        dragonfly_testkit::require_binary(name, install).is_some()
    }

    /// The command that fetches `file` from `host:port` into `out` (wrap it as needed).
    pub(crate) fn command(self, host: &str, port: u16, file: &str, out: &Path) -> Vec<String> {
        let out = out.display().to_string();
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            Client::TftpHpa => v(&[
                "tftp",
                host,
                &port.to_string(),
                "-m",
                "binary",
                "-c",
                "get",
                file,
                &out,
            ]),
            Client::Atftp => v(&[
                "atftp",
                "--option",
                "blksize 1468",
                "--option",
                "tsize 0",
                "--option",
                "windowsize 16",
                "-g",
                "-r",
                file,
                "-l",
                &out,
                host,
                &port.to_string(),
            ]),
            Client::Curl => v(&[
                "curl",
                "-sS",
                "--max-time",
                "120",
                "--tftp-blksize",
                "1468",
                "-o",
                &out,
                &format!("tftp://{host}:{port}/{file}"),
            ]),
        }
    }

    /// Fetches `file` from `server` into `out`; returns whether the client reported success.
    pub(crate) async fn fetch(self, server: SocketAddr, file: &str, out: &Path) -> bool {
        let argv = self.command(&server.ip().to_string(), server.port(), file, out);
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("client finished within 120 s")
        .unwrap();
        output.status.success()
    }
}

/// A raw client socket for requests real clients will not send.
pub(crate) struct Raw {
    pub(crate) socket: UdpSocket,
    server: SocketAddr,
}

impl Raw {
    pub(crate) async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    /// Sends raw bytes to the listening port.
    pub(crate) async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// An octet RRQ for `name` (which may contain anything but NUL).
    pub(crate) fn rrq(name: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend_from_slice(name);
        b.extend_from_slice(b"\0octet\0");
        b
    }

    /// The next datagram, parsed by `f`, within 5 s; `None` if nothing came.
    pub(crate) async fn recv<T>(&self, f: impl FnOnce(Packet<'_>, SocketAddr) -> T) -> Option<T> {
        let mut buf = vec![0u8; 70_000];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
        Some(f(packet::parse(&buf[..n]).unwrap(), from))
    }

    /// The ERROR answering the last request: `(code, message)`.
    pub(crate) async fn error(&self) -> (u16, String) {
        self.recv(|p, _| match p {
            Packet::Error { code, message } => (
                u16::from(code),
                String::from_utf8_lossy(message).into_owned(),
            ),
            other => panic!("expected an ERROR, got {other:?}"),
        })
        .await
        .expect("an ERROR within 5 s")
    }
}
