//! What goes wrong while loading configuration, in the words an operator needs.
//!
//! Two levels: [`Invalid`] is a validator's answer (a key relative to the section being
//! validated, and a [`Reason`]); [`ConfigError`] is what the loader returns (the file, and
//! either a parse [`Location`] or the fully dotted [`Invalid`]). Every [`Reason`] says what
//! would have been accepted, and none ever echoes a value that may hold a secret.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

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
    /// A key with no default was left out.
    #[error("is required: there is no default")]
    Required,
    /// An empty string where a value is needed.
    #[error("must not be empty")]
    Empty,
    /// Not an IPv4 address.
    #[error("invalid IPv4 address {value:?}: expected four decimal numbers, e.g. 10.0.0.1")]
    Ipv4 {
        /// What was written.
        value: String,
    },
    /// A string too short or too long. The value is not shown: it may be long.
    #[error("is {len} bytes long: must be {min} to {max} bytes")]
    Length {
        /// Its length in bytes.
        len: usize,
        /// Fewest bytes accepted.
        min: usize,
        /// Most bytes accepted.
        max: usize,
    },
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
    #[error("{}", dragonfly_core::Chain(.0.as_ref()))]
    Custom(Box<dyn StdError + Send + Sync>),
}

impl Reason {
    /// `value` is outside `min..=max`; all three written as the operator would write them
    /// (`"90s"`, not `Duration { secs: 90, .. }`).
    pub fn out_of_range(value: impl ToString, min: impl ToString, max: impl ToString) -> Self {
        Self::OutOfRange {
            value: value.to_string(),
            min: min.to_string(),
            max: max.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_within_prefixes_keys() {
        let err = Invalid::new("addr", Reason::Empty)
            .within("http")
            .within("apid");
        assert_eq!(err.key(), "apid.http.addr");
        assert_eq!(err.to_string(), "apid.http.addr: must not be empty");
        assert_eq!(Invalid::new("", Reason::Empty).within("log").key(), "log");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no such interface")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("binding eth9")]
    struct Outer(#[source] Inner);

    #[test]
    fn custom_reason_shows_its_whole_chain_once() {
        let err = Invalid::custom("interface", Outer(Inner));
        assert_eq!(
            err.to_string(),
            "interface: binding eth9: no such interface"
        );
    }

    #[test]
    fn out_of_range_says_what_is_allowed() {
        let err = Invalid::new("max_transfers", Reason::out_of_range(0, 1, 65_536));
        assert_eq!(
            err.to_string(),
            "max_transfers: 0 is out of range: must be between 1 and 65536"
        );
    }

    #[test]
    fn location_shows_what_is_known() {
        let full = Location {
            line_column: Some((3, 10)),
            key: Some("apid.listen".to_owned()),
        };
        assert_eq!(full.to_string(), ":3:10: apid.listen");
        let key_only = Location {
            line_column: None,
            key: Some("log".to_owned()),
        };
        assert_eq!(key_only.to_string(), ": log");
        assert_eq!(Location::default().to_string(), "");
    }

    #[test]
    fn config_error_key_is_the_dotted_key() {
        let read = ConfigError::Read {
            path: "/x".into(),
            source: io::Error::other("gone"),
        };
        assert_eq!(read.key(), None);
        let invalid = ConfigError::Invalid {
            path: "/x".into(),
            invalid: Invalid::new("path", Reason::Empty).within("store"),
        };
        assert_eq!(invalid.key(), Some("store.path"));
        assert_eq!(invalid.to_string(), "/x: store.path: must not be empty");
    }
}
