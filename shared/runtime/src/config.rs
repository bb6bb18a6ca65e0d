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

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dragonfly_core::Chain;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Where the daemons look for their configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dragonfly.toml";

/// Sections shared by every daemon; each daemon gets the validated form in [`Loaded`].
pub const SHARED_SECTIONS: [&str; 3] = ["store", "nats", "log"];

/// One section per daemon. A daemon reads its own and ignores the others, so one file can be
/// deployed unchanged to every host.
pub const DAEMON_SECTIONS: [&str; 6] = ["apid", "dhcpd", "tftpd", "ipxed", "workflowd", "bmcd"];

/// Every top-level key the file may contain.
const KNOWN_SECTIONS: [&str; 9] = [
    "store",
    "nats",
    "log",
    "apid",
    "dhcpd",
    "tftpd",
    "ipxed",
    "workflowd",
    "bmcd",
];

/// Default database location for [`StoreConfig`].
pub const DEFAULT_STORE_PATH: &str = "/var/lib/dragonfly/dragonfly.db";
/// Default NATS server for [`NatsConfig`].
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default NATS connect timeout for [`NatsConfig`].
pub const DEFAULT_NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default log level for [`LogConfig`].
pub const DEFAULT_LOG_LEVEL: &str = "info";

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
    /// The daemon's own section.
    pub daemon: C,
}

/// Why the configuration could not be loaded. Display always starts with the file path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read configuration file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}{location}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line, column and dotted key, as far as they are known.
        location: Location,
        /// toml's description of the problem.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{}: {invalid}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key (fully dotted) and the reason.
        invalid: Invalid,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when there is one (syntax errors have none).
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { location, .. } => location.key.as_deref(),
            Self::Invalid { invalid, .. } => Some(invalid.key()),
        }
    }
}

/// Where in the file a parse error is: `:line:column` then `: key`, each when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// 1-based line and column.
    pub line_column: Option<(usize, usize)>,
    /// Dotted key path, e.g. `apid.listen`.
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

/// A validation failure: which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    key: String,
    reason: Reason,
}

impl Invalid {
    /// A failure at `key` (relative to the section being validated).
    pub fn new(key: impl Into<String>, reason: Reason) -> Self {
        Self {
            key: key.into(),
            reason,
        }
    }

    /// A daemon-specific failure; `error` should be the daemon's own `thiserror` type.
    pub fn custom(key: impl Into<String>, error: impl StdError + Send + Sync + 'static) -> Self {
        Self::new(key, Reason::Custom(Box::new(error)))
    }

    /// Prefix the key with the enclosing table, for sections embedded in other sections.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }

    /// The dotted key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }
}

/// The ways a value can be refused. Each message says what would have been accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// Not an `IP:PORT`.
    #[error("invalid socket address {value:?}: expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080")]
    SocketAddr {
        /// What was written.
        value: String,
    },
    /// A URL with a scheme we do not speak.
    #[error("invalid URL {value:?}: expected {expected}")]
    Url {
        /// What was written.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A URL with `user:password@` in it.
    #[error(
        "must not contain credentials: the config file is not secret, load them with LoadCredential="
    )]
    CredentialsInUrl,
    /// An empty string where a value is needed.
    #[error("must not be empty")]
    Empty,
    /// A relative path where an absolute one is needed.
    #[error("must be an absolute path, got {0:?}")]
    RelativePath(PathBuf),
    /// Not a duration like `5s`.
    #[error(
        "invalid duration {value:?}: expected a whole number with a unit: ms, s, m or h (e.g. \"5s\")"
    )]
    Duration {
        /// What was written.
        value: String,
    },
    /// A value outside its allowed range.
    #[error("{value} is out of range: must be between {min} and {max}")]
    OutOfRange {
        /// What was written.
        value: String,
        /// Smallest accepted value.
        min: String,
        /// Largest accepted value.
        max: String,
    },
    /// Characters that are not allowed in this value.
    #[error("invalid value {value:?}: {allowed}")]
    Characters {
        /// What was written.
        value: String,
        /// What would be accepted.
        allowed: &'static str,
    },
    /// Not a log filter.
    #[error(
        "invalid log filter {value:?}: expected a level (error, warn, info, debug, trace, off) or target=level directives"
    )]
    LogFilter {
        /// What was written.
        value: String,
    },
    /// A daemon-specific reason; shown with its whole cause chain.
    #[error("{}", Chain(.0.as_ref()))]
    Custom(Box<dyn StdError + Send + Sync>),
}

// ---------------------------------------------------------------------------------------------
// Reusable value types
// ---------------------------------------------------------------------------------------------

/// The address a daemon binds when systemd did not pass it a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenConfig {
    /// The address to bind.
    pub addr: SocketAddr,
}

impl ListenConfig {
    /// Parse an `IP:PORT` found at `key`. Host names are refused: resolving them would be I/O.
    pub fn parse(key: &str, value: &str) -> Result<Self, Invalid> {
        value.trim().parse().map(|addr| Self { addr }).map_err(|_| {
            Invalid::new(
                key,
                Reason::SocketAddr {
                    value: value.to_owned(),
                },
            )
        })
    }
}

/// Parse a duration written as a whole number and a unit: `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, Invalid> {
    let invalid = || {
        Invalid::new(
            key,
            Reason::Duration {
                value: value.to_owned(),
            },
        )
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let seconds_per_unit = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

// ---------------------------------------------------------------------------------------------
// Shared sections
// ---------------------------------------------------------------------------------------------

/// `[store]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreConfig {
    /// SQLite database file.
    pub path: Option<PathBuf>,
}

/// `[store]`: where the SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Absolute path of the database file.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_STORE_PATH),
        }
    }
}

impl TryFrom<RawStoreConfig> for StoreConfig {
    type Error = Invalid;

    fn try_from(raw: RawStoreConfig) -> Result<Self, Invalid> {
        let Some(path) = raw.path else {
            return Ok(Self::default());
        };
        if path.as_os_str().is_empty() {
            return Err(Invalid::new("path", Reason::Empty));
        }
        if !path.is_absolute() {
            return Err(Invalid::new("path", Reason::RelativePath(path)));
        }
        Ok(Self { path })
    }
}

/// `[nats]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNatsConfig {
    /// `nats://host:port` or `tls://host:port`.
    pub url: Option<String>,
    /// Prefix of the client connection name.
    pub name_prefix: Option<String>,
    /// E.g. `"5s"`.
    pub connect_timeout: Option<String>,
}

/// `[nats]`: how to reach the message bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL, scheme `nats://` or `tls://`, without credentials.
    pub url: String,
    /// Prefix of the client connection name (the daemon appends `-<daemon>`), so
    /// `nats server report connections` shows which host and daemon each client is.
    pub name_prefix: Option<String>,
    /// How long to wait for the first connection.
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            name_prefix: None,
            connect_timeout: DEFAULT_NATS_CONNECT_TIMEOUT,
        }
    }
}

impl TryFrom<RawNatsConfig> for NatsConfig {
    type Error = Invalid;

    fn try_from(raw: RawNatsConfig) -> Result<Self, Invalid> {
        let defaults = Self::default();
        let url = match raw.url {
            None => defaults.url,
            Some(url) => validate_nats_url(url)?,
        };
        let name_prefix = raw.name_prefix.map(validate_name_prefix).transpose()?;
        let connect_timeout = match raw.connect_timeout {
            None => defaults.connect_timeout,
            Some(text) => {
                let timeout = parse_duration("connect_timeout", &text)?;
                let (min, max) = (Duration::from_millis(1), Duration::from_secs(300));
                if !(min..=max).contains(&timeout) {
                    return Err(Invalid::new(
                        "connect_timeout",
                        Reason::OutOfRange {
                            value: text,
                            min: "1ms".to_owned(),
                            max: "300s".to_owned(),
                        },
                    ));
                }
                timeout
            }
        };
        Ok(Self {
            url,
            name_prefix,
            connect_timeout,
        })
    }
}

fn validate_nats_url(url: String) -> Result<String, Invalid> {
    const EXPECTED: &str = "nats://HOST:PORT or tls://HOST:PORT";
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"));
    let Some(rest) = rest else {
        return Err(Invalid::new(
            "url",
            Reason::Url {
                value: url,
                expected: EXPECTED,
            },
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        // Do not echo the value: it contains a password.
        return Err(Invalid::new("url", Reason::CredentialsInUrl));
    }
    if authority.is_empty() || authority.contains(char::is_whitespace) || authority.contains(',') {
        return Err(Invalid::new(
            "url",
            Reason::Url {
                value: url,
                expected: EXPECTED,
            },
        ));
    }
    Ok(url)
}

fn validate_name_prefix(prefix: String) -> Result<String, Invalid> {
    if prefix.is_empty() {
        return Err(Invalid::new("name_prefix", Reason::Empty));
    }
    let ok = prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Invalid::new(
            "name_prefix",
            Reason::Characters {
                value: prefix,
                allowed: "at most 64 of A-Z a-z 0-9 - _ .",
            },
        ));
    }
    Ok(prefix)
}

/// `[log]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogConfig {
    /// A level or `tracing` filter directives.
    pub level: Option<String>,
}

/// `[log]`: the default log filter (`RUST_LOG` overrides it; see [`crate::logging`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `info`, or directives such as `info,dragonfly_dhcpd=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

impl TryFrom<RawLogConfig> for LogConfig {
    type Error = Invalid;

    fn try_from(raw: RawLogConfig) -> Result<Self, Invalid> {
        let Some(level) = raw.level else {
            return Ok(Self::default());
        };
        let refuse = || {
            Invalid::new(
                "level",
                Reason::LogFilter {
                    value: level.clone(),
                },
            )
        };
        if !is_plausible_filter(&level) {
            return Err(refuse());
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(&level)
            .map_err(|_| refuse())?;
        Ok(Self { level })
    }
}

/// `EnvFilter` reads a bare word as a *target* name, so a typo like `infoo` would silently mean
/// "trace everything under target `infoo`". Only bare level names are accepted without `=`.
fn is_plausible_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    !filter.trim().is_empty()
        && filter.split(',').all(|directive| {
            let directive = directive.trim();
            directive.contains('=') || LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        })
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

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
    check_sections(path, text, C::SECTION)?;
    let seed = FileSeed::<C::Raw> {
        section: C::SECTION,
        raw: PhantomData,
    };
    let raw = toml::Deserializer::parse(text)
        .and_then(|deserializer| seed.deserialize(deserializer))
        .map_err(|error| parse_error(path, text, &error))?;

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
        daemon: C::validate(raw.daemon).map_err(invalid(C::SECTION))?,
    })
}

/// Refuse unknown top-level keys up front, pointing at the key itself (serde would only know
/// the position of the whole document).
fn check_sections(path: &Path, text: &str, own: &str) -> Result<(), ConfigError> {
    let root = toml::de::DeTable::parse(text).map_err(|error| parse_error(path, text, &error))?;
    for key in root.get_ref().keys() {
        let name = key.get_ref();
        if name == own || KNOWN_SECTIONS.contains(&name.as_ref()) {
            continue;
        }
        let mut known: Vec<&str> = KNOWN_SECTIONS.to_vec();
        if !known.contains(&own) {
            known.push(own);
        }
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            location: Location {
                line_column: Some(line_column(text, key.span().start)),
                key: Some(name.to_string()),
            },
            message: format!("unknown section, expected one of: {}", known.join(", ")),
        });
    }
    Ok(())
}

fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => Location {
            line_column: Some(line_column(text, span.start)),
            key: key_at(text, span.start),
        },
        None => Location::default(),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        location,
        // toml messages are short, but keep journal entries on one line regardless.
        message: error.message().trim().replace('\n', "; "),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key whose name or value covers byte `offset`, found by re-parsing with spans.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(root.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if find_in_value(value.get_ref(), offset, path) {
            return true;
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &toml::de::DeValue<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    if let Some(table) = value.as_table() {
        return find_key(table, offset, path);
    }
    if let Some(array) = value.as_array() {
        for (index, item) in array.iter().enumerate() {
            if let Some(last) = path.last_mut() {
                last.push_str(&format!("[{index}]"));
            }
            if find_in_value(item.get_ref(), offset, path) || item.span().contains(&offset) {
                return true;
            }
            if let Some(last) = path.last_mut() {
                last.truncate(last.rfind('[').unwrap_or(last.len()));
            }
        }
    }
    false
}

/// The whole file as written: shared sections typed, our section typed, others skipped.
struct RawFile<R> {
    store: RawStoreConfig,
    nats: RawNatsConfig,
    log: RawLogConfig,
    daemon: R,
}

/// Deserializes the top level by hand because the daemon section's name is only known at run
/// time (`C::SECTION`), and so that errors inside it keep toml's position information.
struct FileSeed<R> {
    section: &'static str,
    raw: PhantomData<fn() -> R>,
}

impl<'de, R: DeserializeOwned + Default> DeserializeSeed<'de> for FileSeed<R> {
    type Value = RawFile<R>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, R: DeserializeOwned + Default> Visitor<'de> for FileSeed<R> {
    type Value = RawFile<R>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Dragonfly configuration file")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut file = RawFile {
            store: RawStoreConfig::default(),
            nats: RawNatsConfig::default(),
            log: RawLogConfig::default(),
            daemon: R::default(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "store" => file.store = map.next_value()?,
                "nats" => file.nats = map.next_value()?,
                "log" => file.log = map.next_value()?,
                own if own == self.section => file.daemon = map.next_value()?,
                other if DAEMON_SECTIONS.contains(&other) => {
                    map.next_value::<IgnoredAny>()?;
                }
                other => return Err(de::Error::unknown_field(other, &KNOWN_SECTIONS)),
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

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
    fn unknown_top_level_section_is_refused_with_position() {
        let err = parse("[apid]\nworkers = 1\n\n[dhcp]\nx = 1\n").unwrap_err();
        assert_eq!(err.key(), Some("dhcp"));
        assert_eq!(
            err.to_string(),
            format!(
                "{PATH}:4:2: dhcp: unknown section, expected one of: store, nats, log, apid, \
                 dhcpd, tftpd, ipxed, workflowd, bmcd"
            )
        );
        let err = parse("stray = 1\n").unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("{PATH}:1:1: stray: ")),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_own_section_is_refused_with_key_and_position() {
        let err = parse("[apid]\nworkers = 1\nlisen = \"0.0.0.0:1\"\n").unwrap_err();
        assert_eq!(err.key(), Some("apid.lisen"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{PATH}:3:1: apid.lisen: ")),
            "{text}"
        );
        assert!(text.contains("unknown field `lisen`"), "{text}");
    }

    #[test]
    fn unknown_key_in_shared_section_is_refused() {
        let err = parse("[nats]\nurl = \"nats://a:1\"\ntimeout = \"1s\"\n").unwrap_err();
        assert_eq!(err.key(), Some("nats.timeout"), "{err}");
    }

    #[test]
    fn other_daemons_sections_are_not_validated_by_us() {
        let loaded = parse("[apid]\nworkers = 1\n[bmcd]\nanything = [1, 2]\n[tftpd]\n").unwrap();
        assert_eq!(loaded.daemon.workers, 1);
    }

    #[test]
    fn wrong_type_reports_key_line_and_column() {
        let err = parse("[apid]\nworkers = \"many\"\n").unwrap_err();
        assert_eq!(err.key(), Some("apid.workers"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{PATH}:2:11: apid.workers: ")),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_in_dotted_and_inline_tables_reports_key() {
        let err = parse("apid = { workers = -1 }\n").unwrap_err();
        assert_eq!(err.key(), Some("apid.workers"), "{err}");
        let err = parse("log.level = 3\n").unwrap_err();
        assert_eq!(err.key(), Some("log.level"), "{err}");
    }

    #[test]
    fn syntax_error_keeps_line_and_column() {
        let text = error("[apid]\nworkers = = 1\n");
        assert!(text.starts_with(&format!("{PATH}:2:")), "{text}");
        assert!(!text.contains('\n'), "must be one journal line: {text}");
    }

    #[test]
    fn store_path_must_be_absolute() {
        assert_eq!(
            error("[store]\npath = \"db.sqlite\"\n[apid]\nworkers = 1\n"),
            format!("{PATH}: store.path: must be an absolute path, got \"db.sqlite\"")
        );
        assert!(error("[store]\npath = \"\"\n").contains("store.path: must not be empty"));
    }

    #[test]
    fn nats_url_scheme_is_checked() {
        let text = error("[nats]\nurl = \"http://127.0.0.1:4222\"\n[apid]\nworkers = 1\n");
        assert!(text.contains("nats.url: invalid URL"), "{text}");
        assert!(
            text.contains("nats://HOST:PORT or tls://HOST:PORT"),
            "{text}"
        );
        assert!(error("[nats]\nurl = \"nats://\"\n").contains("nats.url"));
    }

    #[test]
    fn nats_url_with_password_is_refused_without_echoing_it() {
        let text = error("[nats]\nurl = \"nats://bob:hunter2@bus:4222\"\n[apid]\nworkers = 1\n");
        assert!(
            text.contains("nats.url: must not contain credentials"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn nats_timeout_and_prefix_are_checked() {
        assert!(
            error("[nats]\nconnect_timeout = \"5\"\n")
                .contains("nats.connect_timeout: invalid duration")
        );
        assert!(
            error("[nats]\nconnect_timeout = \"0s\"\n")
                .contains("nats.connect_timeout: 0s is out of range")
        );
        assert!(
            error("[nats]\nname_prefix = \"a b\"\n").contains("nats.name_prefix: invalid value")
        );
    }

    #[test]
    fn log_level_typos_are_refused() {
        assert!(error("[log]\nlevel = \"infoo\"\n").contains("log.level: invalid log filter"));
        assert!(error("[log]\nlevel = \"\"\n").contains("log.level"));
        for good in [
            "debug",
            "WARN",
            "info,hyper=warn",
            "dragonfly_dhcpd[lease]=trace",
        ] {
            let raw = RawLogConfig {
                level: Some(good.to_owned()),
            };
            assert!(LogConfig::try_from(raw).is_ok(), "{good}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("k", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("k", " 2m ").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("k", "1h").unwrap(),
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "s",
            "5",
            "5 sec",
            "-1s",
            "1.5s",
            "99999999999999999999h",
        ] {
            let err = parse_duration("k", bad).unwrap_err();
            assert_eq!(err.key(), "k");
            assert!(matches!(err.reason(), Reason::Duration { .. }), "{bad}");
        }
    }

    #[test]
    fn invalid_within_prefixes_keys() {
        let err = ListenConfig::parse("addr", "nope")
            .unwrap_err()
            .within("http")
            .within("apid");
        assert_eq!(err.key(), "apid.http.addr");
        assert_eq!(Invalid::new("", Reason::Empty).within("log").key(), "log");
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
