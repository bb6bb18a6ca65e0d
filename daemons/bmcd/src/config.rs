//! bmcd's section of the configuration file, `[bmcd]`. Pure: no I/O.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use dragonfly_runtime::config::{
    DaemonConfig, Invalid, absolute_path, count_between, duration_between, ipv4,
};
use serde::Deserialize;

/// Default of `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `poll_jitter_percent`.
pub const DEFAULT_POLL_JITTER_PERCENT: u8 = 10;
/// Default of `max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default of `command_timeout`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `retries`.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default of `retry_delay`.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Default of `request_attempts`.
pub const DEFAULT_REQUEST_ATTEMPTS: u32 = 3;
/// Default of `tick`.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Default of `reconcile_period`.
pub const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(60);

/// `[bmcd]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBmcd {
    /// How often each BMC's power state is read (default `60s`, 1s–1h).
    pub poll_interval: Option<String>,
    /// Each poll is moved by up to this share of the interval, at random, so that a rack's
    /// BMCs are not all asked in the same second (default 10, 0–50).
    pub poll_jitter_percent: Option<u8>,
    /// BMC operations in flight at once, over all BMCs (default 64, 1–4096). One BMC never has
    /// more than one.
    pub max_concurrent: Option<usize>,
    /// The most one operation on a BMC may take (default `30s`, 1s–10m).
    pub command_timeout: Option<String>,
    /// A command that got no answer is sent again this many times (default 2, 0–10).
    pub retries: Option<u32>,
    /// Wait between those tries (default `2s`, 0s–1m).
    pub retry_delay: Option<String>,
    /// Times a provisioning power request is tried before it fails (default 3, 1–20).
    pub request_attempts: Option<u32>,
    /// The main loop's pace: due polls and power requests are started on it; it feeds the
    /// watchdog (default `1s`, 100ms–10s).
    pub tick: Option<String>,
    /// The safety-net reconcile of its NATS followers (default `60s`, 5s–1h).
    pub reconcile_period: Option<String>,
    /// The `ipmitool` program (default `/usr/bin/ipmitool`).
    pub ipmitool: Option<PathBuf>,
    /// Where Wake-on-LAN packets go: the limited broadcast (default `255.255.255.255`) or a
    /// directed broadcast such as `192.168.10.255`; port 9.
    pub wol_broadcast: Option<String>,
    /// The `bmc-key` credential outside systemd (under systemd: `LoadCredential=bmc-key:…`).
    pub key_file: Option<PathBuf>,
}

/// `[bmcd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcdConfig {
    pub poll_interval: Duration,
    pub poll_jitter_percent: u8,
    pub max_concurrent: usize,
    pub command_timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
    pub request_attempts: u32,
    pub tick: Duration,
    pub reconcile_period: Duration,
    pub ipmitool: PathBuf,
    pub wol_target: SocketAddr,
    pub key_file: Option<PathBuf>,
}

impl Default for BmcdConfig {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            poll_jitter_percent: DEFAULT_POLL_JITTER_PERCENT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            request_attempts: DEFAULT_REQUEST_ATTEMPTS,
            tick: DEFAULT_TICK,
            reconcile_period: DEFAULT_RECONCILE_PERIOD,
            ipmitool: PathBuf::from("/usr/bin/ipmitool"),
            wol_target: SocketAddrV4::new(Ipv4Addr::BROADCAST, 9).into(),
            key_file: None,
        }
    }
}

impl DaemonConfig for BmcdConfig {
    const SECTION: &'static str = "bmcd";
    type Raw = RawBmcd;

    fn validate(raw: RawBmcd) -> Result<Self, Invalid> {
        let d = Self::default();
        Ok(Self {
            poll_interval: duration_between(
                "poll_interval",
                raw.poll_interval.as_deref(),
                DEFAULT_POLL_INTERVAL,
                Duration::from_secs(1)..=Duration::from_secs(3600),
            )?,
            poll_jitter_percent: count_between(
                "poll_jitter_percent",
                raw.poll_jitter_percent,
                DEFAULT_POLL_JITTER_PERCENT,
                0..=50,
            )?,
            max_concurrent: count_between(
                "max_concurrent",
                raw.max_concurrent,
                DEFAULT_MAX_CONCURRENT,
                1..=4096,
            )?,
            command_timeout: duration_between(
                "command_timeout",
                raw.command_timeout.as_deref(),
                DEFAULT_COMMAND_TIMEOUT,
                Duration::from_secs(1)..=Duration::from_secs(600),
            )?,
            retries: count_between("retries", raw.retries, DEFAULT_RETRIES, 0..=10)?,
            retry_delay: duration_between(
                "retry_delay",
                raw.retry_delay.as_deref(),
                DEFAULT_RETRY_DELAY,
                Duration::ZERO..=Duration::from_secs(60),
            )?,
            request_attempts: count_between(
                "request_attempts",
                raw.request_attempts,
                DEFAULT_REQUEST_ATTEMPTS,
                1..=20,
            )?,
            // At most 10 s: the main loop feeds the watchdog.
            tick: duration_between(
                "tick",
                raw.tick.as_deref(),
                DEFAULT_TICK,
                Duration::from_millis(100)..=Duration::from_secs(10),
            )?,
            reconcile_period: duration_between(
                "reconcile_period",
                raw.reconcile_period.as_deref(),
                DEFAULT_RECONCILE_PERIOD,
                Duration::from_secs(5)..=Duration::from_secs(3600),
            )?,
            ipmitool: match raw.ipmitool {
                Some(p) => absolute_path("ipmitool", p)?,
                None => d.ipmitool,
            },
            wol_target: match raw.wol_broadcast.as_deref() {
                Some(a) => SocketAddrV4::new(ipv4("wol_broadcast", a)?, 9).into(),
                None => d.wol_target,
            },
            key_file: raw
                .key_file
                .map(|p| absolute_path("key_file", p))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            BmcdConfig::validate(RawBmcd::default()).unwrap(),
            BmcdConfig::default()
        );
        for bad in [
            RawBmcd {
                tick: Some("1m".into()),
                ..Default::default()
            },
            RawBmcd {
                poll_jitter_percent: Some(60),
                ..Default::default()
            },
            RawBmcd {
                max_concurrent: Some(0),
                ..Default::default()
            },
            RawBmcd {
                ipmitool: Some("ipmitool".into()),
                ..Default::default()
            },
            RawBmcd {
                wol_broadcast: Some("everyone".into()),
                ..Default::default()
            },
        ] {
            assert!(BmcdConfig::validate(bad).is_err());
        }
        let c = BmcdConfig::validate(RawBmcd {
            wol_broadcast: Some("192.168.10.255".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.wol_target.to_string(), "192.168.10.255:9");
    }
}
