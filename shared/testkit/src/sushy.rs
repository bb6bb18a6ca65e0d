//! A sushy-emulator (OpenStack's Redfish BMC emulator, PyPI `sushy-tools`) on 127.0.0.1,
//! with its fake systems driver (libvirt has no place in a test) and basic authentication.
//!
//! The fake driver applies a power change 1 to 11 seconds after it is asked, like a BMC
//! whose machine takes its time: tests poll for the effect, never sleep a fixed time.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test set-up: a failure panics, as each `# Panics` says"
)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::{TempDir, free_port, require_binary};

/// Names the `sushy-emulator` to run when it is not on `PATH` (pip's `bin` of a pyenv
/// Python usually is not); `integration/run-tests.sh` sets it from `packaging/deps.sh`.
pub const SUSHY_ENV: &str = "DRAGONFLY_SUSHY_EMULATOR";

/// The BMC's user.
pub const USER: &str = "dfadmin";
/// Its password.
pub const PASSWORD: &str = "pw-Rf8kLq3z";
/// `PASSWORD` under bcrypt (cost 4, to keep every request fast): sushy-tools reads only
/// bcrypt in its htpasswd file.
const PASSWORD_BCRYPT: &str = "$2b$04$cq1W2x3p8mfR6iVdbuU60OEJSNmzkp4DVrZ5GrUFh8iEhAoq2teYm";
/// The first fake system's UUID (the others differ in the last digit).
pub const SYSTEM_UUID: &str = "7a2f6c0e-3b1d-4c5e-9f8a-0d1e2f3a4b5c";

/// The `sushy-emulator` to run, or `None` (after printing why) outside CI.
pub fn sushy_emulator() -> Option<PathBuf> {
    match std::env::var_os(SUSHY_ENV) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => require_binary(
            "sushy-emulator",
            "pip install sushy-tools, or packaging/deps.sh's deps_sushy_pypi; or set \
             DRAGONFLY_SUSHY_EMULATOR",
        ),
    }
}

/// A running sushy-emulator, killed on drop.
#[derive(Debug)]
pub struct Sushy {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Whether it serves `https://` (with the certificate it was started with).
    pub https: bool,
    dir: TempDir,
}

impl Sushy {
    /// Starts the emulator with `systems` fake systems, or returns `None` (after printing
    /// why) when it is not installed outside CI.
    ///
    /// # Panics
    /// When it cannot be set up or does not answer.
    pub async fn start(systems: usize) -> Option<Self> {
        Self::start_with(systems, None).await
    }

    /// Like [`Sushy::start`], serving `https://` with this certificate chain and key (PEM).
    ///
    /// # Panics
    /// When it cannot be set up or does not answer.
    pub async fn start_tls(systems: usize, cert_pem: &str, key_pem: &str) -> Option<Self> {
        Self::start_with(systems, Some((cert_pem, key_pem))).await
    }

    async fn start_with(systems: usize, tls: Option<(&str, &str)>) -> Option<Self> {
        let binary = sushy_emulator()?;
        let dir = TempDir::new().unwrap();
        let port = free_port();
        fs::write(
            dir.path().join("htpasswd"),
            format!("{USER}:{PASSWORD_BCRYPT}\n"),
        )
        .unwrap();
        let fake_systems: Vec<String> = (0..systems)
            .map(|i| {
                let uuid = if i == 0 {
                    SYSTEM_UUID.to_owned()
                } else {
                    format!("{}{i:x}", &SYSTEM_UUID[..SYSTEM_UUID.len() - 1])
                };
                format!(
                    "{{'uuid': '{uuid}', 'name': 'node{i}', 'power_state': 'Off', \
                     'external_notifier': False, 'nics': [{{'mac': '52:54:00:aa:bb:{i:02x}'}}]}}"
                )
            })
            .collect();
        let mut config = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n\
             SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\n",
            fake_systems.join(", "),
            dir.path().join("htpasswd").display(),
            dir.path().display(),
        );
        if let Some((cert, key)) = tls {
            fs::write(dir.path().join("cert.pem"), cert).unwrap();
            fs::write(dir.path().join("key.pem"), key).unwrap();
            config.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display(),
            ));
        }
        fs::write(dir.path().join("sushy.conf"), config).unwrap();
        let log = fs::File::create(dir.path().join("sushy.out")).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.path().join("sushy.conf"))
            .args(["--interface", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sushy = Self {
            child,
            port,
            https: tls.is_some(),
            dir,
        };
        // Ready once the service root (not behind authentication) answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = sushy.child.try_wait().unwrap() {
                panic!("sushy-emulator exited with {status}: {}", sushy.output());
            }
            // Over TLS, listening is enough: this crate has no TLS client, and the driver
            // under test is what checks the answers.
            let ready = if sushy.https {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                root_answers(port)
            };
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sushy-emulator did not answer on 127.0.0.1:{port}: {}",
                sushy.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(sushy)
    }

    /// What the emulator printed (its request log included).
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.path().join("sushy.out")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`, or `https://` when it serves TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /redfish/v1/` on 127.0.0.1:`port` answers 200 (plain HTTP/1.0 over a socket:
/// this crate needs no HTTP client for it).
fn root_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /redfish/v1/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
