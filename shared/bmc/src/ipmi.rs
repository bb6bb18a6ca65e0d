//! IPMI 2.0 over LAN (RMCP+, `lanplus`) by running `ipmitool` as a child process.
//!
//! Each operation is one (or, for the boot device, two) short `ipmitool` runs: a session is
//! opened, the command sent, the session closed. That costs a few round trips per operation
//! but keeps no session state that a BMC reboot could invalidate.
//!
//! The child is started with an argument vector (never through a shell), a cleared
//! environment holding only `IPMI_PASSWORD` (read by `-E`), `PATH` and `LC_ALL=C`, and is
//! killed when the operation's timeout expires. The password is never in its argv: `ps`,
//! `/proc/<pid>/cmdline` and the journal's process listings are readable by every user, while
//! a process's environment is readable only by its owner and root.

mod command;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::{BmcError, BootTarget, Operation, Password, PowerAction, PowerDriver, PowerState};

/// How to reach one BMC over IPMI LAN.
#[derive(Debug, Clone)]
pub struct IpmiConfig {
    /// The BMC's address or host name.
    pub host: String,
    /// UDP port; 623 (RMCP) unless the BMC is elsewhere.
    pub port: u16,
    pub username: String,
    pub password: Password,
    /// The `ipmitool` program: a path, or a name looked up on `PATH`.
    pub binary: PathBuf,
    /// RMCP+ cipher suite (`-C`). 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) is what
    /// every IPMI 2.0 BMC supports; 17 (SHA-256) where the BMC has it and 3 is disabled.
    pub cipher_suite: u8,
    /// Seconds ipmitool waits for each answer before sending again (`-N`).
    pub retransmit_secs: u32,
    /// How many times ipmitool sends again (`-R`).
    pub retries: u32,
    /// The most one operation may take, retransmissions included; the child is killed then.
    pub timeout: Duration,
}

impl IpmiConfig {
    /// A configuration with the defaults: port 623, `ipmitool` from `PATH`, cipher suite 3,
    /// 1 s × 3 retransmissions, and a 30 s timeout per operation.
    pub fn new(host: impl Into<String>, username: impl Into<String>, password: Password) -> Self {
        Self {
            host: host.into(),
            port: 623,
            username: username.into(),
            password,
            binary: PathBuf::from("ipmitool"),
            cipher_suite: 3,
            retransmit_secs: 1,
            retries: 3,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The IPMI driver for one BMC.
#[derive(Debug, Clone)]
pub struct IpmiDriver {
    config: IpmiConfig,
    session: Vec<OsString>,
}

impl IpmiDriver {
    pub fn new(config: IpmiConfig) -> Self {
        let session = command::session_args(&config);
        Self { config, session }
    }

    pub fn config(&self) -> &IpmiConfig {
        &self.config
    }

    /// Runs the commands one after the other, all within the timeout; returns the output of
    /// the last one.
    async fn run(&self, operation: Operation, commands: &[&[&str]]) -> Result<Output, BmcError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.run_unbounded(commands)).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            // Dropping the future dropped the child, and `kill_on_drop` killed it.
            Err(_) => Err(BmcError::TimedOut {
                after: self.config.timeout,
            }),
        };
        tracing::debug!(
            host = %self.config.host,
            %operation,
            elapsed_ms = started.elapsed().as_millis(),
            ok = outcome.is_ok(),
            "ipmitool"
        );
        outcome
    }

    async fn run_unbounded(&self, commands: &[&[&str]]) -> Result<Output, BmcError> {
        let mut last = None;
        for args in commands {
            let mut child = Command::new(&self.config.binary);
            child
                .args(&self.session)
                .args(*args)
                .env_clear()
                .env("IPMI_PASSWORD", self.config.password.expose())
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(path) = std::env::var_os("PATH") {
                child.env("PATH", path);
            }
            let output = child.output().await.map_err(|source| BmcError::Local {
                what: format!("running {}", self.config.binary.display()),
                source,
            })?;
            if !output.status.success() {
                return Err(command::classify_failure(
                    &String::from_utf8_lossy(&output.stdout),
                    &String::from_utf8_lossy(&output.stderr),
                    output.status.code(),
                ));
            }
            last = Some(output);
        }
        Ok(last.unwrap_or_else(|| Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }))
    }
}

impl PowerDriver for IpmiDriver {
    fn kind(&self) -> &'static str {
        "ipmi"
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        self.run(Operation::Power(action), &[&command::power_args(action)])
            .await
            .map(drop)
    }

    async fn status(&self) -> Result<PowerState, BmcError> {
        let output = self
            .run(Operation::Status, &[&command::STATUS_ARGS])
            .await?;
        command::parse_power_status(&String::from_utf8_lossy(&output.stdout))
    }

    async fn set_boot(&self, target: BootTarget) -> Result<(), BmcError> {
        let flags = command::set_boot_args(target);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.run(
            Operation::SetBoot,
            &[&command::KEEP_BOOT_FLAGS_ARGS, &flags],
        )
        .await
        .map(drop)
    }
}
