//! The one configuration file every Dragonfly daemon reads.
//!
//! All daemons share `/etc/dragonfly/dragonfly.toml` ([`DEFAULT_CONFIG_PATH`]): shared sections
//! (`[store]`, `[nats]`, `[log]`) plus one section per daemon (`[apid]`, `[dhcpd]`, …). Loading
//! happens in two stages so that the rules are testable without files:
//!
//! 1. **Raw**: serde structs with `#[serde(deny_unknown_fields)]` and `Option` fields, so a typo
//!    is an error rather than a silently ignored key.
//! 2. **Validated**: a pure `TryFrom<Raw>` (or [`DaemonConfig::validate`]) that turns strings into
//!    addresses, durations and paths and checks ranges. No I/O happens here: a path is checked
//!    for shape, never for existence, so `--check-config` gives the same answer on a build host.
//!
//! Every error names the file and the dotted key (`dragonfly.toml:3:10: apid.listen: …`), because
//! the person reading it is an operator looking at a journal line, not at this code.
//!
//! This module must never read the environment, print anything, or hold secrets: secrets come
//! from [`crate::credentials`], and a config value may only *name* a credential file.
//!
//! # Layout
//!
//! - this module: the [`DaemonConfig`] contract, [`Loaded`], [`load`] and [`parse_str`];
//! - `error`: [`ConfigError`], [`Invalid`] and the [`Reason`]s a value is refused for;
//! - `file`: TOML parsing, section checks, the line, column and dotted key of an error, and
//!   [`accepted_keys`] (the key names a section's raw struct accepts);
//! - `sections`: the shared `[store]`, `[nats]` and `[log]` sections;
//! - `values`: the value types and validators every section of every daemon uses
//!   ([`ListenConfig`], [`duration_between`], [`count_between`], [`ipv4`], [`http_url`], …), so
//!   a duration or an address is checked and explained alike everywhere. A daemon's own
//!   `config.rs` keeps only the rules that are its own.

mod error;
mod file;
mod sections;
mod values;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use error::{ConfigError, Invalid, Location, Reason};
pub use file::accepted_keys;
pub use sections::{
    DEFAULT_LOG_LEVEL, DEFAULT_NATS_CONNECT_TIMEOUT, DEFAULT_NATS_URL, DEFAULT_STORE_PATH,
    LogConfig, MetricsConfig, NATS_CLIENT_KEY_CREDENTIAL, NATS_CREDS_CREDENTIAL,
    NATS_NKEY_CREDENTIAL, NATS_PASSWORD_CREDENTIAL, NatsAuth, NatsConfig, NatsTls, RawLogConfig,
    RawMetricsConfig, RawNatsConfig, RawStoreConfig, StoreConfig,
};
pub use values::{
    ListenConfig, absolute_path, count_between, duration_between, file_name, http_url, ipv4,
    length_between, parse_duration, required,
};

/// Where the daemons look for their configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dragonfly.toml";

/// Sections shared by every daemon; each daemon gets the validated form in [`Loaded`].
pub const SHARED_SECTIONS: [&str; 4] = ["store", "nats", "log", "metrics"];

/// One section per daemon. A daemon reads its own and ignores the others, so one file can be
/// deployed unchanged to every host.
pub const DAEMON_SECTIONS: [&str; 6] = ["apid", "dhcpd", "tftpd", "ipxed", "workflowd", "bmcd"];

/// Every top-level key the file may contain.
const KNOWN_SECTIONS: [&str; 10] = [
    "store",
    "nats",
    "log",
    "metrics",
    "apid",
    "dhcpd",
    "tftpd",
    "ipxed",
    "workflowd",
    "bmcd",
];

/// A daemon's own section of the configuration file.
///
/// ```
/// use dragonfly_runtime::config::{DaemonConfig, Invalid, ListenConfig};
///
/// #[derive(Debug, Default, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct RawTftpd { listen: Option<String> }
///
/// struct Tftpd { listen: ListenConfig }
///
/// impl DaemonConfig for Tftpd {
///     const SECTION: &'static str = "tftpd";
///     type Raw = RawTftpd;
///     fn validate(raw: RawTftpd) -> Result<Self, Invalid> {
///         let listen = raw.listen.as_deref().unwrap_or("0.0.0.0:69");
///         Ok(Tftpd { listen: ListenConfig::parse("listen", listen)? })
///     }
/// }
/// ```
pub trait DaemonConfig: Sized {
    /// The top-level table this daemon owns, e.g. `"apid"`.
    const SECTION: &'static str;
    /// The raw serde form; use `#[serde(deny_unknown_fields)]`. `Default` is what an absent
    /// section means.
    type Raw: DeserializeOwned + Default;
    /// Pure validation (no I/O). Keys in the returned [`Invalid`] are relative to the section
    /// (`"listen"`, not `"apid.listen"`); [`load`] adds the prefix.
    fn validate(raw: Self::Raw) -> Result<Self, Invalid>;
}

/// A fully validated configuration for daemon `C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<C> {
    /// The file it came from, for log lines and `--check-config`.
    pub path: PathBuf,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[nats]`.
    pub nats: NatsConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// The daemon's own section.
    pub daemon: C,
}

/// Read and validate `path` for daemon `C`. A missing file is an error: a daemon that quietly
/// runs on defaults because of a typo in `--config` is worse than one that refuses to start.
pub fn load<C: DaemonConfig>(path: &Path) -> Result<Loaded<C>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_str(path, &text)
}

/// Validate configuration text; `path` is only used in messages. Pure, for tests.
pub fn parse_str<C: DaemonConfig>(path: &Path, text: &str) -> Result<Loaded<C>, ConfigError> {
    let raw = file::parse_raw::<C::Raw>(path, text, C::SECTION)?;
    let invalid = |section: &str| {
        let path = path.to_owned();
        let section = section.to_owned();
        move |invalid: Invalid| ConfigError::Invalid {
            path,
            invalid: invalid.within(&section),
        }
    };
    Ok(Loaded {
        path: path.to_owned(),
        store: StoreConfig::try_from(raw.store).map_err(invalid("store"))?,
        nats: NatsConfig::try_from(raw.nats).map_err(invalid("nats"))?,
        log: LogConfig::try_from(raw.log).map_err(invalid("log"))?,
        metrics: MetricsConfig::try_from(raw.metrics).map_err(invalid("metrics"))?,
        daemon: C::validate(raw.daemon).map_err(invalid(C::SECTION))?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawApid {
        listen: Option<String>,
        #[serde(default)]
        workers: u32,
    }

    #[derive(Debug, PartialEq)]
    struct Apid {
        listen: ListenConfig,
        workers: u32,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("must be at least 1")]
    struct TooFewWorkers;

    impl DaemonConfig for Apid {
        const SECTION: &'static str = "apid";
        type Raw = RawApid;

        fn validate(raw: RawApid) -> Result<Self, Invalid> {
            let listen =
                ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or("0.0.0.0:8080"))?;
            if raw.workers == 0 {
                return Err(Invalid::custom("workers", TooFewWorkers));
            }
            Ok(Self {
                listen,
                workers: raw.workers,
            })
        }
    }

    const PATH: &str = "/etc/dragonfly/dragonfly.toml";

    fn parse(text: &str) -> Result<Loaded<Apid>, ConfigError> {
        parse_str::<Apid>(Path::new(PATH), text)
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn defaults_apply_to_absent_shared_sections() {
        let loaded = parse("[apid]\nworkers = 2\n").unwrap();
        assert_eq!(loaded.store, StoreConfig::default());
        assert_eq!(loaded.nats, NatsConfig::default());
        assert_eq!(loaded.log, LogConfig::default());
        assert_eq!(
            loaded.daemon.listen.addr,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080)
        );
        assert_eq!(loaded.path, Path::new(PATH));
    }

    #[test]
    fn metrics_listeners_are_per_daemon_and_checked() {
        assert_eq!(
            parse("[apid]\nworkers = 2\n").unwrap().metrics,
            MetricsConfig::default()
        );
        let loaded = parse(
            "[apid]\nworkers = 2\n[metrics]\napid = \"127.0.0.1:9644\"\nbmcd = \"[::1]:9646\"\n",
        )
        .unwrap();
        assert_eq!(
            loaded.metrics.listen("apid"),
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9644))
        );
        assert_eq!(loaded.metrics.listen("bmcd").map(|a| a.port()), Some(9646));
        assert_eq!(loaded.metrics.listen("dhcpd"), None);
        let err = error("[apid]\nworkers = 2\n[metrics]\ndhcpd = \"localhost:9641\"\n");
        assert!(err.contains("metrics.dhcpd"), "{err}");
        let err = error("[apid]\nworkers = 2\n[metrics]\nnats = \"127.0.0.1:1\"\n");
        assert!(err.contains("nats"), "{err}");
    }

    #[test]
    fn full_file_is_validated() {
        let loaded = parse(
            r#"
            [store]
            path = "/srv/df.db"
            [nats]
            url = "tls://bus.example:4222"
            name_prefix = "rack-7"
            connect_timeout = "250ms"
            [log]
            level = "info,dragonfly_apid=debug"
            [apid]
            listen = "[::1]:9000"
            workers = 4
            [dhcpd]
            whatever = "belongs to dhcpd, not us"
            "#,
        )
        .unwrap();
        assert_eq!(loaded.store.path, Path::new("/srv/df.db"));
        assert_eq!(loaded.nats.url, "tls://bus.example:4222");
        assert_eq!(loaded.nats.name_prefix.as_deref(), Some("rack-7"));
        assert_eq!(loaded.nats.connect_timeout, Duration::from_millis(250));
        assert_eq!(loaded.log.level, "info,dragonfly_apid=debug");
        assert_eq!(loaded.daemon.listen.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(loaded.daemon.workers, 4);
    }

    #[test]
    fn invalid_listen_names_file_and_key() {
        assert_eq!(
            error("[apid]\nlisten = \"x\"\nworkers = 1\n"),
            "/etc/dragonfly/dragonfly.toml: apid.listen: invalid socket address \"x\": \
             expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080"
        );
    }

    #[test]
    fn custom_daemon_reason_is_shown_with_key() {
        let err = parse("[apid]\nworkers = 0\n").unwrap_err();
        assert_eq!(err.key(), Some("apid.workers"));
        assert_eq!(
            err.to_string(),
            "/etc/dragonfly/dragonfly.toml: apid.workers: must be at least 1"
        );
    }

    #[test]
    fn shared_section_errors_name_their_section() {
        assert_eq!(
            error("[store]\npath = \"db.sqlite\"\n[apid]\nworkers = 1\n"),
            format!("{PATH}: store.path: must be an absolute path, got \"db.sqlite\"")
        );
        assert!(
            error("[nats]\nurl = \"http://127.0.0.1:4222\"\n[apid]\nworkers = 1\n")
                .starts_with(&format!("{PATH}: nats.url: invalid URL"))
        );
        assert!(
            error("[log]\nlevel = \"infoo\"\n[apid]\nworkers = 1\n")
                .starts_with(&format!("{PATH}: log.level: invalid log filter"))
        );
    }

    #[test]
    fn parse_errors_come_before_validation() {
        let err = parse("[apid]\nworkers = 1\nlisen = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert_eq!(err.key(), Some("apid.lisen"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = load::<Apid>(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert_eq!(
            err.to_string(),
            format!("{}: cannot read configuration file", path.display())
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dragonfly.toml");
        std::fs::write(&path, "[apid]\nworkers = 3\n").unwrap();
        assert_eq!(load::<Apid>(&path).unwrap().daemon.workers, 3);
    }
}
