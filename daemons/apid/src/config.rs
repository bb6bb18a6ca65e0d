//! apid's section of the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_runtime::config::{DaemonConfig, Invalid, ListenConfig, Reason, parse_duration};
use serde::Deserialize;

/// `[apid]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApid {
    /// Address to bind when systemd did not pass a socket named `http`.
    pub listen: Option<String>,
    /// Where to read the boot-token HMAC key when systemd's `LoadCredential=` is not used.
    pub boot_token_key_file: Option<PathBuf>,
    /// How long a browser session lasts, e.g. `12h`.
    pub session_lifetime: Option<String>,
    /// Mark the session cookie `Secure` (HTTPS only). Only turn off for plain-HTTP labs.
    pub secure_cookies: Option<bool>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Failed-or-not login attempts allowed per client address per minute.
    pub login_attempts_per_minute: Option<u32>,
}

/// `[apid]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApidConfig {
    pub listen: ListenConfig,
    pub boot_token_key_file: Option<PathBuf>,
    pub session_lifetime: Duration,
    pub secure_cookies: bool,
    pub max_body_bytes: usize,
    pub login_attempts_per_minute: u32,
}

/// The default port: the web UI and API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

impl DaemonConfig for ApidConfig {
    const SECTION: &'static str = "apid";
    type Raw = RawApid;

    fn validate(raw: RawApid) -> Result<Self, Invalid> {
        let listen =
            ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let session_lifetime = match raw.session_lifetime.as_deref() {
            Some(s) => parse_duration("session_lifetime", s)?,
            None => Duration::from_secs(12 * 3600),
        };
        if session_lifetime < Duration::from_secs(60)
            || session_lifetime > Duration::from_secs(30 * 86400)
        {
            return Err(Invalid::new(
                "session_lifetime",
                range(raw.session_lifetime.unwrap_or_default(), "1m", "720h"),
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(1 << 20);
        if !(1024..=64 << 20).contains(&max_body_bytes) {
            return Err(Invalid::new(
                "max_body_bytes",
                range(max_body_bytes, 1024, 64 << 20),
            ));
        }
        let login_attempts_per_minute = raw.login_attempts_per_minute.unwrap_or(10);
        if login_attempts_per_minute == 0 {
            return Err(Invalid::new(
                "login_attempts_per_minute",
                range(0, 1, 10_000),
            ));
        }
        Ok(Self {
            listen,
            boot_token_key_file: raw.boot_token_key_file,
            session_lifetime,
            secure_cookies: raw.secure_cookies.unwrap_or(true),
            max_body_bytes,
            login_attempts_per_minute,
        })
    }
}

fn range(value: impl ToString, min: impl ToString, max: impl ToString) -> Reason {
    Reason::OutOfRange {
        value: value.to_string(),
        min: min.to_string(),
        max: max.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let c = ApidConfig::validate(RawApid::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), DEFAULT_LISTEN);
        assert!(c.secure_cookies);
        assert_eq!(c.session_lifetime, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                RawApid {
                    listen: Some("nope".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                RawApid {
                    session_lifetime: Some("5s".into()),
                    ..Default::default()
                },
                "session_lifetime",
            ),
            (
                RawApid {
                    max_body_bytes: Some(1),
                    ..Default::default()
                },
                "max_body_bytes",
            ),
            (
                RawApid {
                    login_attempts_per_minute: Some(0),
                    ..Default::default()
                },
                "login_attempts_per_minute",
            ),
        ];
        for (raw, key) in cases {
            assert_eq!(ApidConfig::validate(raw).unwrap_err().key(), key);
        }
    }
}
