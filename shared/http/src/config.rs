//! `[<daemon>.http]`: how a daemon's HTTP listener bounds what clients may hold.
//!
//! Embedded by every daemon that serves HTTP (`[apid.http]`, `[ipxed.http]`), validated with
//! the shared validators so a duration or a count reads and fails alike everywhere. Pure: the
//! TLS file names are checked for shape only; reading them is the daemon frame's (credentials).

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_runtime::config::{Invalid, absolute_path, count_between, duration_between};
use serde::Deserialize;

/// `[<daemon>.http]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpConfig {
    /// How long a client may take to send a request's line and headers, e.g. `10s`.
    pub header_timeout: Option<String>,
    /// How long a client may take to send a request's body, once its headers are in.
    pub body_timeout: Option<String>,
    /// How long a connection may stay open with no byte moving either way.
    pub idle_timeout: Option<String>,
    /// Connections held at once on this listener; more are closed as they arrive.
    pub max_connections: Option<usize>,
    /// Connections held at once from one client address on this listener.
    pub max_connections_per_client: Option<usize>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Terminate TLS on this listener (certificate and key from credentials).
    pub tls: Option<bool>,
    /// The PEM certificate chain outside systemd (`LoadCredential=tls-certificate:…` inside).
    pub tls_certificate_file: Option<PathBuf>,
    /// The PEM private key outside systemd (`LoadCredential=tls-key:…` inside).
    pub tls_key_file: Option<PathBuf>,
}

/// `[<daemon>.http]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_body_bytes: usize,
    /// `Some` when the listener terminates TLS.
    pub tls: Option<TlsFiles>,
}

/// Where the certificate and key are outside systemd; under systemd the credentials
/// [`TLS_CERTIFICATE_CREDENTIAL`] and [`TLS_KEY_CREDENTIAL`] come first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The certificate chain's credential name (`LoadCredential=tls-certificate:…`).
pub const TLS_CERTIFICATE_CREDENTIAL: &str = "tls-certificate";
/// The private key's credential name (`LoadCredential=tls-key:…`).
pub const TLS_KEY_CREDENTIAL: &str = "tls-key";

/// Time to send a request line and headers unless configured. A browser or an agent sends them
/// in one segment; 10 s is generous for a slow link and short for a slowloris.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a body unless configured: 1 MiB at 35 KiB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte either way for this long closes a connection unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections per listener unless configured: each costs a descriptor and a few KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections per client address unless configured: a browser opens 6, an agent 1.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Largest request body unless configured: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

impl HttpConfig {
    /// Pure validation. Keys in the error are relative to the `http` table; the daemon adds
    /// `http.` with [`Invalid::within`].
    pub fn validate(raw: RawHttpConfig) -> Result<Self, Invalid> {
        let header_timeout = duration_between(
            "header_timeout",
            raw.header_timeout.as_deref(),
            DEFAULT_HEADER_TIMEOUT,
            Duration::from_millis(100)..=Duration::from_secs(300),
        )?;
        let body_timeout = duration_between(
            "body_timeout",
            raw.body_timeout.as_deref(),
            DEFAULT_BODY_TIMEOUT,
            Duration::from_millis(100)..=Duration::from_secs(3600),
        )?;
        let idle_timeout = duration_between(
            "idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_millis(100)..=Duration::from_secs(3600),
        )?;
        let max_connections = count_between(
            "max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1..=1_000_000,
        )?;
        let max_connections_per_client = count_between(
            "max_connections_per_client",
            raw.max_connections_per_client,
            DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections),
            1..=max_connections,
        )?;
        let max_body_bytes = count_between(
            "max_body_bytes",
            raw.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1024..=64 << 20,
        )?;
        let certificate_file = raw
            .tls_certificate_file
            .map(|p| absolute_path("tls_certificate_file", p))
            .transpose()?;
        let key_file = raw
            .tls_key_file
            .map(|p| absolute_path("tls_key_file", p))
            .transpose()?;
        let tls = if raw.tls.unwrap_or(false) {
            Some(TlsFiles {
                certificate_file,
                key_file,
            })
        } else {
            // A file named for TLS that is off is a mistake the operator should hear about.
            for (key, set) in [
                ("tls_certificate_file", certificate_file.is_some()),
                ("tls_key_file", key_file.is_some()),
            ] {
                if set {
                    return Err(Invalid::custom(key, TlsOff));
                }
            }
            None
        };
        Ok(Self {
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_client,
            max_body_bytes,
            tls,
        })
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::validate(RawHttpConfig::default()).unwrap_or_else(|_| unreachable!())
    }
}

/// A TLS file named while `tls` is off.
#[derive(Debug, thiserror::Error)]
#[error("is set but tls is false: set tls = true, or remove it")]
pub struct TlsOff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = HttpConfig::default();
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.max_connections_per_client, 64);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.tls, None);
    }

    #[test]
    fn a_small_cap_lowers_the_default_per_client_cap() {
        let c = HttpConfig::validate(RawHttpConfig {
            max_connections: Some(10),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_connections_per_client, 10);
    }

    #[test]
    fn tls_files() {
        let c = HttpConfig::validate(RawHttpConfig {
            tls: Some(true),
            tls_certificate_file: Some("/etc/dragonfly/tls.crt".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                certificate_file: Some("/etc/dragonfly/tls.crt".into()),
                key_file: None
            })
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        type Tweak = fn(&mut RawHttpConfig);
        let cases: Vec<(Tweak, &str)> = vec![
            (|r| r.header_timeout = Some("10ms".into()), "header_timeout"),
            (|r| r.header_timeout = Some("1h".into()), "header_timeout"),
            (|r| r.body_timeout = Some("x".into()), "body_timeout"),
            (|r| r.idle_timeout = Some("2h".into()), "idle_timeout"),
            (|r| r.max_connections = Some(0), "max_connections"),
            (
                |r| {
                    r.max_connections = Some(10);
                    r.max_connections_per_client = Some(11);
                },
                "max_connections_per_client",
            ),
            (|r| r.max_body_bytes = Some(1), "max_body_bytes"),
            (|r| r.tls_key_file = Some("/k".into()), "tls_key_file"),
            (
                |r| {
                    r.tls = Some(true);
                    r.tls_certificate_file = Some("cert.pem".into());
                },
                "tls_certificate_file",
            ),
        ];
        for (tweak, key) in cases {
            let mut raw = RawHttpConfig::default();
            tweak(&mut raw);
            let got = HttpConfig::validate(raw)
                .map(|_| ())
                .map_err(|e| e.key().to_owned());
            assert_eq!(got, Err(key.to_owned()));
        }
    }
}
