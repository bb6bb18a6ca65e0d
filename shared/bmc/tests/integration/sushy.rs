//! A sushy-emulator (OpenStack's Redfish BMC emulator, PyPI `sushy-tools`) on 127.0.0.1,
//! with its fake systems driver (libvirt has no place in a test) and basic authentication.
//!
//! The fake driver applies a power change 1 to 11 seconds after it is asked, like a BMC
//! whose machine takes its time: tests poll for the effect, never sleep a fixed time.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dragonfly_bmc::Password;
use dragonfly_bmc::redfish::RedfishConfig;
use dragonfly_testkit::{TempDir, free_port, require_binary};
use serde_json::Value;

/// Names the `sushy-emulator` to run when it is not on `PATH` (pip's `bin` of a pyenv
/// Python usually is not); `integration/run-tests.sh` sets it from `packaging/deps.sh`.
pub(crate) const SUSHY_ENV: &str = "DRAGONFLY_SUSHY_EMULATOR";

pub(crate) const USER: &str = "dfadmin";
pub(crate) const PASSWORD: &str = "pw-Rf8kLq3z";
/// `PASSWORD` under bcrypt (cost 4, to keep every request fast): sushy-tools reads only
/// bcrypt in its htpasswd file.
const PASSWORD_BCRYPT: &str = "$2b$04$cq1W2x3p8mfR6iVdbuU60OEJSNmzkp4DVrZ5GrUFh8iEhAoq2teYm";
pub(crate) const SYSTEM_UUID: &str = "7a2f6c0e-3b1d-4c5e-9f8a-0d1e2f3a4b5c";

/// The `sushy-emulator` to run, or `None` (after printing why) outside CI.
pub(crate) fn sushy_emulator() -> Option<PathBuf> {
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
pub(crate) struct Sushy {
    child: Child,
    pub(crate) port: u16,
    dir: TempDir,
}

impl Sushy {
    /// Starts the emulator with `systems` fake systems, or returns `None` (after printing
    /// why) when it is not installed outside CI.
    pub(crate) async fn start(systems: usize) -> Option<Self> {
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
        let config = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n\
             SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\n",
            fake_systems.join(", "),
            dir.path().join("htpasswd").display(),
            dir.path().display(),
        );
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
        let mut sushy = Self { child, port, dir };
        // Ready once the service root (not behind authentication) answers.
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = sushy.child.try_wait().unwrap() {
                panic!("sushy-emulator exited with {status}: {}", sushy.output());
            }
            let root = client.get(sushy.url("/redfish/v1/")).send().await;
            if root.is_ok_and(|r| r.status().is_success()) {
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

    pub(crate) fn output(&self) -> String {
        fs::read_to_string(self.dir.path().join("sushy.out")).unwrap_or_default()
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// The driver's configuration for this BMC, with a timeout that covers the fake
    /// driver's delays within a cycle, and a short poll.
    pub(crate) fn config(&self) -> RedfishConfig {
        let mut config = RedfishConfig::new(self.endpoint(), USER, Password::new(PASSWORD));
        config.timeout = Duration::from_secs(60);
        config.poll_interval = Duration::from_millis(250);
        config
    }

    /// GETs a resource with reqwest itself (not through the driver): the cross-check.
    pub(crate) async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
