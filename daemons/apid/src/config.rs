//! apid's section of the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_runtime::config::{
    DaemonConfig, Invalid, ListenConfig, absolute_path, count_between, duration_between,
};
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
/// How long a browser session lasts unless configured.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Largest request body accepted unless configured: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Login attempts allowed per client address per minute unless configured.
pub const DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;

impl DaemonConfig for ApidConfig {
    const SECTION: &'static str = "apid";
    type Raw = RawApid;

    fn validate(raw: RawApid) -> Result<Self, Invalid> {
        let listen =
            ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let session_lifetime = duration_between(
            "session_lifetime",
            raw.session_lifetime.as_deref(),
            DEFAULT_SESSION_LIFETIME,
            Duration::from_secs(60)..=Duration::from_secs(720 * 3600),
        )?;
        let max_body_bytes = count_between(
            "max_body_bytes",
            raw.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1024..=64 << 20,
        )?;
        let login_attempts_per_minute = count_between(
            "login_attempts_per_minute",
            raw.login_attempts_per_minute,
            DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
            1..=10_000,
        )?;
        let boot_token_key_file = raw
            .boot_token_key_file
            .map(|path| absolute_path("boot_token_key_file", path))
            .transpose()?;
        Ok(Self {
            listen,
            boot_token_key_file,
            session_lifetime,
            secure_cookies: raw.secure_cookies.unwrap_or(true),
            max_body_bytes,
            login_attempts_per_minute,
        })
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
                    boot_token_key_file: Some("boot-token-key".into()),
                    ..Default::default()
                },
                "boot_token_key_file",
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
            (
                RawApid {
                    login_attempts_per_minute: Some(10_001),
                    ..Default::default()
                },
                "login_attempts_per_minute",
            ),
        ];
        for (raw, key) in cases {
            assert_eq!(ApidConfig::validate(raw).unwrap_err().key(), key);
        }
    }

    #[test]
    fn range_errors_say_what_is_allowed() {
        let raw = RawApid {
            session_lifetime: Some("5s".into()),
            ..Default::default()
        };
        assert_eq!(
            ApidConfig::validate(raw).unwrap_err().to_string(),
            "session_lifetime: 5s is out of range: must be between 1m and 720h"
        );
        let raw = RawApid {
            max_body_bytes: Some(1),
            ..Default::default()
        };
        assert_eq!(
            ApidConfig::validate(raw).unwrap_err().to_string(),
            "max_body_bytes: 1 is out of range: must be between 1024 and 67108864"
        );
    }
}
