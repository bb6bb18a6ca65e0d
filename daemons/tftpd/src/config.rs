//! tftpd's section of the configuration file, `[tftpd]`.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_runtime::config::{
    DaemonConfig, Invalid, ListenConfig, Reason, absolute_path, count_between, duration_between,
};
use serde::Deserialize;

use crate::packet::{DEFAULT_BLKSIZE, MAX_BLKSIZE};

/// `[tftpd]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTftpd {
    /// Address to bind when systemd did not pass a socket named `tftp`.
    pub listen: Option<String>,
    /// Directories served, searched in order: the first that holds the name answers.
    pub roots: Option<Vec<PathBuf>>,
    /// Transfers in progress at once. Beyond it (or beyond a client's share) requests wait in
    /// a queue, four per slot, and start when a slot frees; beyond the queue they are left
    /// unanswered for the client to retransmit — never refused. Each transfer in progress holds
    /// about a kilobyte and two file descriptors.
    pub max_transfers: Option<usize>,
    /// Transfers in progress at once from one client address.
    pub max_transfers_per_client: Option<usize>,
    /// Of those, transfers the client has not acknowledged yet (the slots a host that never
    /// answers, or a forged source, can hold).
    pub max_unacked_per_client: Option<usize>,
    /// Largest `blksize` granted. The default fits a 1500-byte Ethernet MTU.
    pub max_blksize: Option<u16>,
    /// Largest `windowsize` granted.
    pub max_windowsize: Option<u16>,
    /// Retransmission ceiling for clients that do not negotiate `timeout`, e.g. `"1s"`.
    pub timeout: Option<String>,
    /// A transfer with no acknowledged progress for this long is abandoned, e.g. `"10s"`.
    pub idle_timeout: Option<String>,
    /// A transfer whose client never acknowledged anything is abandoned this long after it
    /// started, e.g. `"3s"` (at most `idle_timeout`).
    pub first_ack_timeout: Option<String>,
}

/// `[tftpd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpdConfig {
    pub listen: ListenConfig,
    pub roots: Vec<PathBuf>,
    pub max_transfers: usize,
    pub max_transfers_per_client: usize,
    pub max_unacked_per_client: usize,
    pub max_blksize: u16,
    pub max_windowsize: u16,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub first_ack_timeout: Duration,
}

/// The TFTP port on every address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:69";
/// Debian's iPXE binaries first, then Dragonfly's own files.
pub const DEFAULT_ROOTS: [&str; 2] = ["/usr/lib/ipxe", "/var/lib/dragonfly/tftp"];
/// 1500 (Ethernet MTU) - 20 (IPv4) - 8 (UDP) - 4 (TFTP header): no IP fragmentation.
pub const DEFAULT_MAX_BLKSIZE: u16 = 1468;
/// Transfers in progress at once unless configured.
pub const DEFAULT_MAX_TRANSFERS: usize = 256;
/// Transfers in progress from one client unless configured (at most `max_transfers`).
pub const DEFAULT_MAX_TRANSFERS_PER_CLIENT: usize = 64;
/// Unacknowledged transfers from one client unless configured (at most
/// `max_transfers_per_client`).
pub const DEFAULT_MAX_UNACKED_PER_CLIENT: usize = 4;
/// Largest `windowsize` granted unless configured.
pub const DEFAULT_MAX_WINDOWSIZE: u16 = 64;
/// Retransmission ceiling unless the client negotiates `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// No acknowledged progress for this long abandons a transfer, unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// No acknowledgement at all this long after the start abandons a transfer, unless configured
/// (at most `idle_timeout`).
pub const DEFAULT_FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(3);

impl DaemonConfig for TftpdConfig {
    const SECTION: &'static str = "tftpd";
    type Raw = RawTftpd;

    fn validate(raw: RawTftpd) -> Result<Self, Invalid> {
        let listen =
            ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let roots = match raw.roots {
            None => DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
            Some(roots) if roots.is_empty() => return Err(Invalid::new("roots", Reason::Empty)),
            Some(roots) => roots
                .into_iter()
                .enumerate()
                .map(|(i, root)| absolute_path(&format!("roots[{i}]"), root))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let max_transfers = count_between(
            "max_transfers",
            raw.max_transfers,
            DEFAULT_MAX_TRANSFERS,
            1..=65_536,
        )?;
        let max_transfers_per_client = count_between(
            "max_transfers_per_client",
            raw.max_transfers_per_client,
            max_transfers.min(DEFAULT_MAX_TRANSFERS_PER_CLIENT),
            1..=max_transfers,
        )?;
        let max_unacked_per_client = count_between(
            "max_unacked_per_client",
            raw.max_unacked_per_client,
            max_transfers_per_client.min(DEFAULT_MAX_UNACKED_PER_CLIENT),
            1..=max_transfers_per_client,
        )?;
        let max_blksize = count_between(
            "max_blksize",
            raw.max_blksize,
            DEFAULT_MAX_BLKSIZE,
            DEFAULT_BLKSIZE..=MAX_BLKSIZE,
        )?;
        let max_windowsize = count_between(
            "max_windowsize",
            raw.max_windowsize,
            DEFAULT_MAX_WINDOWSIZE,
            1..=u16::MAX,
        )?;
        let timeout = duration_between(
            "timeout",
            raw.timeout.as_deref(),
            DEFAULT_TIMEOUT,
            Duration::from_secs(1)..=Duration::from_secs(255),
        )?;
        let idle_timeout = duration_between(
            "idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(1)..=Duration::from_secs(3600),
        )?;
        let first_ack_timeout = duration_between(
            "first_ack_timeout",
            raw.first_ack_timeout.as_deref(),
            DEFAULT_FIRST_ACK_TIMEOUT.min(idle_timeout),
            Duration::from_secs(1)..=idle_timeout,
        )?;
        Ok(Self {
            listen,
            roots,
            max_transfers,
            max_transfers_per_client,
            max_unacked_per_client,
            max_blksize,
            max_windowsize,
            timeout,
            idle_timeout,
            first_ack_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = TftpdConfig::validate(RawTftpd::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            c.roots,
            [
                PathBuf::from("/usr/lib/ipxe"),
                PathBuf::from("/var/lib/dragonfly/tftp")
            ]
        );
        assert_eq!(c.max_transfers, 256);
        assert_eq!(c.max_transfers_per_client, 64);
        assert_eq!(c.max_unacked_per_client, 4);
        assert_eq!(c.first_ack_timeout, Duration::from_secs(3));
        assert_eq!(c.max_blksize, 1468);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.idle_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                RawTftpd {
                    listen: Some("69".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                RawTftpd {
                    roots: Some(vec![]),
                    ..Default::default()
                },
                "roots",
            ),
            (
                RawTftpd {
                    roots: Some(vec!["/srv/tftp".into(), "relative/dir".into()]),
                    ..Default::default()
                },
                "roots[1]",
            ),
            (
                RawTftpd {
                    max_transfers: Some(0),
                    ..Default::default()
                },
                "max_transfers",
            ),
            (
                RawTftpd {
                    max_blksize: Some(100),
                    ..Default::default()
                },
                "max_blksize",
            ),
            (
                RawTftpd {
                    max_windowsize: Some(0),
                    ..Default::default()
                },
                "max_windowsize",
            ),
            (
                RawTftpd {
                    timeout: Some("256s".into()),
                    ..Default::default()
                },
                "timeout",
            ),
            (
                RawTftpd {
                    idle_timeout: Some("500ms".into()),
                    ..Default::default()
                },
                "idle_timeout",
            ),
            (
                RawTftpd {
                    max_transfers: Some(10),
                    max_transfers_per_client: Some(11),
                    ..Default::default()
                },
                "max_transfers_per_client",
            ),
            (
                RawTftpd {
                    max_unacked_per_client: Some(0),
                    ..Default::default()
                },
                "max_unacked_per_client",
            ),
            (
                RawTftpd {
                    idle_timeout: Some("5s".into()),
                    first_ack_timeout: Some("6s".into()),
                    ..Default::default()
                },
                "first_ack_timeout",
            ),
        ];
        for (raw, key) in cases {
            assert_eq!(TftpdConfig::validate(raw).unwrap_err().key(), key);
        }
    }

    #[test]
    fn limits_that_depend_on_others_say_so() {
        let raw = RawTftpd {
            max_transfers: Some(10),
            max_transfers_per_client: Some(11),
            ..Default::default()
        };
        assert_eq!(
            TftpdConfig::validate(raw).unwrap_err().to_string(),
            "max_transfers_per_client: 11 is out of range: must be between 1 and 10"
        );
        let raw = RawTftpd {
            idle_timeout: Some("5s".into()),
            first_ack_timeout: Some("6s".into()),
            ..Default::default()
        };
        assert_eq!(
            TftpdConfig::validate(raw).unwrap_err().to_string(),
            "first_ack_timeout: 6s is out of range: must be between 1s and 5s"
        );
        // Lowering a ceiling lowers the defaults below it rather than refusing them.
        let c = TftpdConfig::validate(RawTftpd {
            max_transfers: Some(2),
            idle_timeout: Some("2s".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.max_transfers_per_client, c.max_unacked_per_client),
            (2, 2)
        );
        assert_eq!(c.first_ack_timeout, Duration::from_secs(2));
    }
}
