//! The sections every daemon reads: `[store]`, `[nats]`, `[log]` and `[metrics]`, each as written (`Raw…`,
//! serde) and validated (a pure `TryFrom`). The frame validates them for every daemon, so a
//! daemon never re-reads or re-checks them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::url_authority;
use super::{Invalid, ListenConfig, Reason, absolute_path, duration_between};

/// Default database location for [`StoreConfig`].
pub const DEFAULT_STORE_PATH: &str = "/var/lib/dragonfly/dragonfly.db";
/// Default NATS server for [`NatsConfig`].
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default NATS connect timeout for [`NatsConfig`].
pub const DEFAULT_NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default log level for [`LogConfig`].
pub const DEFAULT_LOG_LEVEL: &str = "info";

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
        match raw.path {
            None => Ok(Self::default()),
            Some(path) => Ok(Self {
                path: absolute_path("path", path)?,
            }),
        }
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
    /// `"user-password"`, `"nkey"` or `"creds"`; unset: no credentials.
    pub auth: Option<String>,
    /// The NATS user, with `auth = "user-password"` (the password is a credential).
    pub user: Option<String>,
    /// Outside systemd: where to read the auth credential.
    pub credential_file: Option<PathBuf>,
    /// CA certificates (PEM) that verify the server; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// The client's certificate (PEM), when the server asks for one.
    pub tls_client_cert_file: Option<PathBuf>,
    /// Outside systemd: where to read the client's private key (a credential).
    pub tls_client_key_file: Option<PathBuf>,
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
    /// How the daemon proves who it is to NATS; the secret itself is a credential.
    pub auth: NatsAuth,
    /// Outside systemd: where to read the auth credential (and only then).
    pub credential_file: Option<PathBuf>,
    /// TLS towards the server.
    pub tls: NatsTls,
}

/// How a daemon authenticates to NATS. The secret is never in the config file: it is the
/// systemd credential [`NatsAuth::credential`] names (`LoadCredential=`), or outside systemd
/// the file `[nats] credential_file` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a NATS that trusts its network: a lab).
    #[default]
    None,
    /// A user and password; the credential holds the password.
    UserPassword {
        /// The NATS user.
        user: String,
    },
    /// An nkey; the credential holds its seed (`SU…`).
    Nkey,
    /// A `.creds` file (a user JWT and its nkey seed, as `nsc` writes them).
    Creds,
}

impl NatsAuth {
    /// The systemd credential holding the secret, if any.
    pub fn credential(&self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::UserPassword { .. } => Some(NATS_PASSWORD_CREDENTIAL),
            Self::Nkey => Some(NATS_NKEY_CREDENTIAL),
            Self::Creds => Some(NATS_CREDS_CREDENTIAL),
        }
    }
}

/// The credential with the NATS password (`auth = "user-password"`).
pub const NATS_PASSWORD_CREDENTIAL: &str = "nats-password";
/// The credential with the nkey seed (`auth = "nkey"`).
pub const NATS_NKEY_CREDENTIAL: &str = "nats-nkey";
/// The credential with the `.creds` file (`auth = "creds"`).
pub const NATS_CREDS_CREDENTIAL: &str = "nats.creds";
/// The credential with the TLS client's private key (`tls_client_cert_file` set).
pub const NATS_CLIENT_KEY_CREDENTIAL: &str = "nats-client-key";

/// TLS towards NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse a connection without TLS: the URL is `tls://` or a CA file is set.
    pub required: bool,
    /// CA certificates (PEM) that verify the server, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate (PEM); its key is the credential
    /// [`NATS_CLIENT_KEY_CREDENTIAL`].
    pub client_cert_file: Option<PathBuf>,
    /// Outside systemd: where the client's key is read.
    pub client_key_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            name_prefix: None,
            connect_timeout: DEFAULT_NATS_CONNECT_TIMEOUT,
            auth: NatsAuth::None,
            credential_file: None,
            tls: NatsTls::default(),
        }
    }
}

/// A `[nats]` key that only makes sense with another.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NeedsOther(&'static str);

fn needs(key: &str, why: &'static str) -> Invalid {
    Invalid::new(key, Reason::Custom(Box::new(NeedsOther(why))))
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
        let connect_timeout = duration_between(
            "connect_timeout",
            raw.connect_timeout.as_deref(),
            defaults.connect_timeout,
            Duration::from_millis(1)..=Duration::from_secs(300),
        )?;
        let auth = match raw.auth.as_deref() {
            None | Some("none") => NatsAuth::None,
            Some("user-password") => {
                let user = raw
                    .user
                    .clone()
                    .ok_or(Invalid::new("user", Reason::Required))?;
                if user.is_empty()
                    || user.len() > 256
                    || user.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(Invalid::new(
                        "user",
                        Reason::Characters {
                            value: user,
                            allowed: "1 to 256 characters, no spaces or control characters",
                        },
                    ));
                }
                NatsAuth::UserPassword { user }
            }
            Some("nkey") => NatsAuth::Nkey,
            Some("creds") => NatsAuth::Creds,
            Some(other) => {
                return Err(Invalid::new(
                    "auth",
                    Reason::Characters {
                        value: other.to_owned(),
                        allowed: "expected \"none\", \"user-password\", \"nkey\" or \"creds\"",
                    },
                ));
            }
        };
        if raw.user.is_some() && !matches!(auth, NatsAuth::UserPassword { .. }) {
            return Err(needs("user", "is used only with auth = \"user-password\""));
        }
        let credential_file = raw
            .credential_file
            .map(|p| absolute_path("credential_file", p))
            .transpose()?;
        if credential_file.is_some() && auth == NatsAuth::None {
            return Err(needs("credential_file", "is used only with an auth method"));
        }
        let ca_file = raw
            .tls_ca_file
            .map(|p| absolute_path("tls_ca_file", p))
            .transpose()?;
        let client_cert_file = raw
            .tls_client_cert_file
            .map(|p| absolute_path("tls_client_cert_file", p))
            .transpose()?;
        let client_key_file = raw
            .tls_client_key_file
            .map(|p| absolute_path("tls_client_key_file", p))
            .transpose()?;
        if client_key_file.is_some() && client_cert_file.is_none() {
            return Err(needs(
                "tls_client_key_file",
                "is used only with tls_client_cert_file",
            ));
        }
        let required = url.starts_with("tls://") || ca_file.is_some() || client_cert_file.is_some();
        Ok(Self {
            url,
            name_prefix,
            connect_timeout,
            auth,
            credential_file,
            tls: NatsTls {
                required,
                ca_file,
                client_cert_file,
                client_key_file,
            },
        })
    }
}

fn validate_nats_url(url: String) -> Result<String, Invalid> {
    const EXPECTED: &str = "nats://HOST:PORT or tls://HOST:PORT";
    let authority = url_authority("url", &url, &["nats", "tls"], EXPECTED)?;
    // One server per URL: a comma-separated server list is not supported.
    if authority.contains(',') {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: &str) -> Result<StoreConfig, String> {
        let raw = RawStoreConfig {
            path: Some(path.into()),
        };
        StoreConfig::try_from(raw).map_err(|e| e.to_string())
    }

    fn nats(
        url: Option<&str>,
        prefix: Option<&str>,
        timeout: Option<&str>,
    ) -> Result<NatsConfig, String> {
        let raw = RawNatsConfig {
            url: url.map(str::to_owned),
            name_prefix: prefix.map(str::to_owned),
            connect_timeout: timeout.map(str::to_owned),
            ..Default::default()
        };
        NatsConfig::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn absent_keys_are_the_defaults() {
        assert_eq!(
            StoreConfig::try_from(RawStoreConfig::default()).unwrap(),
            StoreConfig::default()
        );
        assert_eq!(nats(None, None, None).unwrap(), NatsConfig::default());
        assert_eq!(
            LogConfig::try_from(RawLogConfig::default()).unwrap(),
            LogConfig::default()
        );
    }

    #[test]
    fn store_path_must_be_absolute() {
        assert_eq!(
            store("/srv/df.db").unwrap().path,
            PathBuf::from("/srv/df.db")
        );
        assert_eq!(
            store("db.sqlite").unwrap_err(),
            "path: must be an absolute path, got \"db.sqlite\""
        );
        assert_eq!(store("").unwrap_err(), "path: must not be empty");
    }

    #[test]
    fn nats_url_scheme_is_checked() {
        assert_eq!(
            nats(Some("tls://bus.example:4222"), None, None)
                .unwrap()
                .url,
            "tls://bus.example:4222"
        );
        let text = nats(Some("http://127.0.0.1:4222"), None, None).unwrap_err();
        assert!(text.starts_with("url: invalid URL"), "{text}");
        assert!(
            text.contains("nats://HOST:PORT or tls://HOST:PORT"),
            "{text}"
        );
        for bad in ["nats://", "nats://a b:1", "nats://a:1,b:2"] {
            assert!(
                nats(Some(bad), None, None)
                    .unwrap_err()
                    .starts_with("url: "),
                "{bad}"
            );
        }
    }

    #[test]
    fn nats_auth_and_tls_are_checked() {
        let check = |raw: RawNatsConfig| NatsConfig::try_from(raw);
        let ok = check(RawNatsConfig {
            auth: Some("user-password".into()),
            user: Some("dragonfly".into()),
            tls_ca_file: Some("/etc/dragonfly/nats-ca.pem".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            ok.auth,
            NatsAuth::UserPassword {
                user: "dragonfly".into()
            }
        );
        assert_eq!(ok.auth.credential(), Some(NATS_PASSWORD_CREDENTIAL));
        assert!(ok.tls.required, "a CA file means TLS is required");
        let tls_url = check(RawNatsConfig {
            url: Some("tls://bus:4222".into()),
            auth: Some("nkey".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(tls_url.tls.required);
        assert_eq!(tls_url.auth.credential(), Some(NATS_NKEY_CREDENTIAL));
        assert!(!check(RawNatsConfig::default()).unwrap().tls.required);

        let cases = [
            (
                RawNatsConfig {
                    auth: Some("password".into()),
                    ..Default::default()
                },
                "auth",
            ),
            (
                RawNatsConfig {
                    auth: Some("user-password".into()),
                    ..Default::default()
                },
                "user",
            ),
            (
                RawNatsConfig {
                    auth: Some("user-password".into()),
                    user: Some("a b".into()),
                    ..Default::default()
                },
                "user",
            ),
            (
                RawNatsConfig {
                    user: Some("bob".into()),
                    ..Default::default()
                },
                "user",
            ),
            (
                RawNatsConfig {
                    credential_file: Some("/etc/x".into()),
                    ..Default::default()
                },
                "credential_file",
            ),
            (
                RawNatsConfig {
                    auth: Some("creds".into()),
                    credential_file: Some("nats.creds".into()),
                    ..Default::default()
                },
                "credential_file",
            ),
            (
                RawNatsConfig {
                    tls_ca_file: Some("ca.pem".into()),
                    ..Default::default()
                },
                "tls_ca_file",
            ),
            (
                RawNatsConfig {
                    tls_client_key_file: Some("/etc/key.pem".into()),
                    ..Default::default()
                },
                "tls_client_key_file",
            ),
        ];
        for (raw, key) in cases {
            assert_eq!(check(raw).unwrap_err().key(), key);
        }
    }

    #[test]
    fn nats_url_with_password_is_refused_without_echoing_it() {
        let text = nats(Some("nats://bob:hunter2@bus:4222"), None, None).unwrap_err();
        assert!(text.contains("url: must not contain credentials"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn nats_timeout_and_prefix_are_checked() {
        let good = nats(None, Some("rack-7"), Some("250ms")).unwrap();
        assert_eq!(good.name_prefix.as_deref(), Some("rack-7"));
        assert_eq!(good.connect_timeout, Duration::from_millis(250));
        assert!(
            nats(None, None, Some("5"))
                .unwrap_err()
                .starts_with("connect_timeout: invalid duration")
        );
        assert!(
            nats(None, None, Some("0s"))
                .unwrap_err()
                .starts_with("connect_timeout: 0s is out of range")
        );
        assert!(
            nats(None, Some("a b"), None)
                .unwrap_err()
                .starts_with("name_prefix: invalid value")
        );
        assert!(
            nats(None, Some(""), None)
                .unwrap_err()
                .starts_with("name_prefix: must not be empty")
        );
    }

    #[test]
    fn log_level_typos_are_refused() {
        let level = |level: &str| {
            LogConfig::try_from(RawLogConfig {
                level: Some(level.to_owned()),
            })
        };
        assert!(
            level("infoo")
                .unwrap_err()
                .to_string()
                .starts_with("level: invalid log filter")
        );
        assert_eq!(level("").unwrap_err().key(), "level");
        for good in [
            "debug",
            "WARN",
            "info,hyper=warn",
            "dragonfly_dhcpd[lease]=trace",
        ] {
            assert!(level(good).is_ok(), "{good}");
        }
    }
}

/// `[metrics]` as written: where each daemon serves `GET /metrics` outside systemd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsConfig {
    /// apid's metrics listener, `IP:PORT` (the units use 127.0.0.1:9644).
    pub apid: Option<String>,
    /// dhcpd's (units: 127.0.0.1:9641).
    pub dhcpd: Option<String>,
    /// tftpd's (units: 127.0.0.1:9642).
    pub tftpd: Option<String>,
    /// ipxed's (units: 127.0.0.1:9643).
    pub ipxed: Option<String>,
    /// workflowd's (units: 127.0.0.1:9645).
    pub workflowd: Option<String>,
    /// bmcd's (units: 127.0.0.1:9646).
    pub bmcd: Option<String>,
}

/// `[metrics]`: each daemon's metrics address when systemd passes no socket named `metrics`.
/// A daemon with neither serves no metrics (the registry still counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    listen: Vec<(&'static str, SocketAddr)>,
}

impl MetricsConfig {
    /// The address daemon `name` binds for its metrics outside systemd, if configured.
    pub fn listen(&self, name: &str) -> Option<SocketAddr> {
        self.listen
            .iter()
            .find(|(daemon, _)| *daemon == name)
            .map(|(_, addr)| *addr)
    }
}

impl TryFrom<RawMetricsConfig> for MetricsConfig {
    type Error = Invalid;

    fn try_from(raw: RawMetricsConfig) -> Result<Self, Invalid> {
        let mut listen = Vec::new();
        for (name, value) in [
            ("apid", raw.apid),
            ("dhcpd", raw.dhcpd),
            ("tftpd", raw.tftpd),
            ("ipxed", raw.ipxed),
            ("workflowd", raw.workflowd),
            ("bmcd", raw.bmcd),
        ] {
            if let Some(value) = value {
                listen.push((name, ListenConfig::parse(name, &value)?.addr));
            }
        }
        Ok(Self { listen })
    }
}
