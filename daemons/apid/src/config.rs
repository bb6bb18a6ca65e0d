//! apid's section of the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_http::{HttpConfig, RawHttpConfig};
use dragonfly_runtime::config::{
    DaemonConfig, Invalid, ListenConfig, Reason, absolute_path, count_between, duration_between,
    http_url,
};
use serde::Deserialize;

use crate::agent_logs::AgentLogLimits;
use crate::registration::RegistrationLimits;
use crate::throttle::{Cidr, TrustedProxies};

/// `[apid]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApid {
    /// The operators' listener: address to bind when systemd did not pass a socket named
    /// `http`.
    pub listen: Option<String>,
    /// The agents' listener: address to bind when systemd did not pass a socket named `agent`.
    pub agent_listen: Option<String>,
    /// Where to read the boot-token HMAC key when systemd's `LoadCredential=` is not used.
    pub boot_token_key_file: Option<PathBuf>,
    /// How long a browser session lasts, e.g. `12h`.
    pub session_lifetime: Option<String>,
    /// Mark the session cookie `Secure` (HTTPS only). Follows `http.tls` unless set; set it
    /// to true behind a proxy that terminates TLS.
    pub secure_cookies: Option<bool>,
    /// Failed-or-not login attempts allowed per client address per minute.
    pub login_attempts_per_minute: Option<u32>,
    /// apid's own database of operators, sessions and API tokens (0600, apid's user only).
    pub auth_db: Option<PathBuf>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Bytes of agent log lines kept per machine.
    pub agent_log_bytes_per_machine: Option<usize>,
    /// Bytes of agent log lines kept for all machines together.
    pub agent_log_bytes_total: Option<usize>,
    /// Log requests one agent token (MAC) may make per minute.
    pub agent_log_requests_per_minute: Option<u32>,
    /// Agent lines per machine per minute copied into apid's own log.
    pub agent_log_journal_lines_per_minute: Option<u32>,
    /// Agent lines of all machines together per minute copied into apid's own log.
    pub agent_log_journal_lines_per_minute_total: Option<u32>,
    /// `[apid.http]`: both listeners' timeouts and caps (each listener has its own caps),
    /// the body limit, and TLS for the operators' listener.
    pub http: Option<RawHttpConfig>,
    /// How long a renewed agent token lives (`POST /api/agent/renew`), e.g. `15m`.
    pub agent_token_ttl: Option<String>,
    /// New machines agents may register per second (sustained), all agents together.
    pub new_machines_per_second: Option<u32>,
    /// New machines agents may register at once.
    pub new_machines_burst: Option<u32>,
    /// Machines the store may hold; registrations of new ones beyond it get 503.
    pub max_machines: Option<u64>,
    /// `true`: a new machine is `Registered` at once; `false`: it waits in `Discovered` for an
    /// operator's `POST /api/machines/{id}/approve`.
    pub auto_register: Option<bool>,
    /// How long `POST /api/machines/{id}/power` (and each machine of `POST /api/power`) waits
    /// for bmcd's answer, e.g. `60s`.
    pub power_timeout: Option<String>,
    /// The metadata service's base URL as installed machines reach it (ipxed's public URL
    /// and `/metadata`), for templates' `{{metadataUrl}}`.
    pub metadata_url: Option<String>,
    /// Where local images are served to agents: ipxed's public URL and `/images` (a template's
    /// `image: NAME` becomes `images_url/NAME`).
    pub images_url: Option<String>,
    /// The directory of the library's local images, which apid checksums when one is added.
    pub images_dir: Option<PathBuf>,
}

/// `[apid]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApidConfig {
    /// The operators' listener (`http`): the web UI and the whole API.
    pub listen: ListenConfig,
    /// The agents' listener (`agent`): registration, instructions, console lines, health.
    pub agent_listen: ListenConfig,
    pub boot_token_key_file: Option<PathBuf>,
    pub session_lifetime: Duration,
    pub secure_cookies: bool,
    /// Timeouts, caps and body limit of both listeners; TLS of the operators' only.
    pub http: HttpConfig,
    pub login_attempts_per_minute: u32,
    /// apid's own database: operators, sessions, API tokens.
    pub auth_db: PathBuf,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// The agent log buffer's budgets.
    pub agent_logs: AgentLogLimits,
    /// How long a renewed agent token lives.
    pub agent_token_ttl: Duration,
    /// How fast and how far agents may add machines.
    pub registration: RegistrationLimits,
    /// How long a power command waits for bmcd's answer.
    pub power_timeout: Duration,
    /// `[apid] metadata_url`, when set.
    pub metadata_url: Option<String>,
    /// `[apid] images_url`, when set.
    pub images_url: Option<String>,
    /// `[apid] images_dir`.
    pub images_dir: PathBuf,
}

/// The default port: the web UI and API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// The agents' default port: on every interface, since agents boot on the provisioning
/// network. Under systemd the port is the socket unit's anyway.
pub const DEFAULT_AGENT_LISTEN: &str = "0.0.0.0:3001";
/// How long a browser session lasts unless configured.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// apid's own database unless configured: in the directory systemd's `StateDirectory=`
/// gives apid alone.
pub const DEFAULT_AUTH_DB: &str = "/var/lib/dragonfly-apid/auth.db";
/// `[apid] images_dir` (and ipxed's) by default.
pub const DEFAULT_IMAGES_DIR: &str = "/var/lib/dragonfly/images";
/// Login attempts allowed per client address per minute unless configured.
pub const DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;
/// Agent log bytes kept per machine unless configured: 32 KiB, a few hundred console lines.
pub const DEFAULT_AGENT_LOG_BYTES_PER_MACHINE: usize = 32 << 10;
/// Agent log bytes kept in all unless configured: 32 MiB, a full buffer for each of 1 000
/// machines (a rack powered on together).
pub const DEFAULT_AGENT_LOG_BYTES_TOTAL: usize = 32 << 20;
/// Agent log requests per token per minute unless configured. The agent sends what it has
/// after each poll (every 10 s), in batches of 100 lines: 30 a minute is ample.
pub const DEFAULT_AGENT_LOG_REQUESTS_PER_MINUTE: u32 = 30;
/// Agent lines per machine per minute copied into apid's own log unless configured.
pub const DEFAULT_AGENT_LOG_JOURNAL_LINES_PER_MINUTE: u32 = 60;
/// Agent lines of all machines per minute copied into apid's own log unless configured.
pub const DEFAULT_AGENT_LOG_JOURNAL_LINES_PER_MINUTE_TOTAL: u32 = 3_000;

/// How long a renewed agent token lives unless configured: as long as ipxed's first one.
pub const DEFAULT_AGENT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// How long a power command waits for bmcd unless configured: bmcd bounds each BMC operation
/// and retries an unanswered one a few times, so a minute covers a slow BMC's power cycle.
pub const DEFAULT_POWER_TIMEOUT: Duration = Duration::from_secs(60);

/// New machines per second unless configured.
pub const DEFAULT_NEW_MACHINES_PER_SECOND: u32 = 20;
/// New machines at once unless configured: a rack of a few hundred machines powered on
/// together registers without waiting; a larger one waits seconds (its agents back off).
pub const DEFAULT_NEW_MACHINES_BURST: u32 = 500;
/// Machines the store may hold unless configured.
pub const DEFAULT_MAX_MACHINES: u64 = 50_000;

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
        let agent_listen = ListenConfig::parse(
            "agent_listen",
            raw.agent_listen.as_deref().unwrap_or(DEFAULT_AGENT_LISTEN),
        )?;
        let http =
            HttpConfig::validate(raw.http.unwrap_or_default()).map_err(|e| e.within("http"))?;
        // Cookies follow TLS. A TLS listener that sent a cookie without `Secure` would let a
        // browser send it back over plain HTTP: refused rather than obeyed.
        let secure_cookies = match (raw.secure_cookies, http.tls.is_some()) {
            (Some(false), true) => {
                return Err(Invalid::custom("secure_cookies", InsecureCookiesOverTls));
            }
            (Some(set), _) => set,
            (None, tls) => tls,
        };
        let login_attempts_per_minute = count_between(
            "login_attempts_per_minute",
            raw.login_attempts_per_minute,
            DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
            1..=10_000,
        )?;
        let agent_log_bytes_per_machine = count_between(
            "agent_log_bytes_per_machine",
            raw.agent_log_bytes_per_machine,
            DEFAULT_AGENT_LOG_BYTES_PER_MACHINE,
            // At least one longest line (1 000 characters of up to 4 bytes each).
            8 << 10..=16 << 20,
        )?;
        let agent_log_bytes_total = count_between(
            "agent_log_bytes_total",
            raw.agent_log_bytes_total,
            DEFAULT_AGENT_LOG_BYTES_TOTAL,
            agent_log_bytes_per_machine..=4 << 30,
        )?;
        let agent_log_requests_per_minute = count_between(
            "agent_log_requests_per_minute",
            raw.agent_log_requests_per_minute,
            DEFAULT_AGENT_LOG_REQUESTS_PER_MINUTE,
            1..=100_000,
        )?;
        let agent_log_journal_lines_per_minute = count_between(
            "agent_log_journal_lines_per_minute",
            raw.agent_log_journal_lines_per_minute,
            DEFAULT_AGENT_LOG_JOURNAL_LINES_PER_MINUTE,
            0..=100_000,
        )?;
        let agent_log_journal_lines_per_minute_total = count_between(
            "agent_log_journal_lines_per_minute_total",
            raw.agent_log_journal_lines_per_minute_total,
            DEFAULT_AGENT_LOG_JOURNAL_LINES_PER_MINUTE_TOTAL,
            0..=1_000_000,
        )?;
        let auth_db = absolute_path(
            "auth_db",
            raw.auth_db
                .unwrap_or_else(|| PathBuf::from(DEFAULT_AUTH_DB)),
        )?;
        let trusted_proxies = TrustedProxies(
            raw.trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|p| p.trim().parse::<Cidr>())
                .collect::<Result<_, _>>()
                .map_err(|e| Invalid::new("trusted_proxies", Reason::Custom(Box::new(e))))?,
        );
        let agent_token_ttl = duration_between(
            "agent_token_ttl",
            raw.agent_token_ttl.as_deref(),
            DEFAULT_AGENT_TOKEN_TTL,
            Duration::from_secs(60)..=Duration::from_secs(24 * 3600),
        )?;
        let new_machines_per_second = count_between(
            "new_machines_per_second",
            raw.new_machines_per_second,
            DEFAULT_NEW_MACHINES_PER_SECOND,
            1..=100_000,
        )?;
        let new_machines_burst = count_between(
            "new_machines_burst",
            raw.new_machines_burst,
            DEFAULT_NEW_MACHINES_BURST,
            1..=1_000_000,
        )?;
        let max_machines = count_between(
            "max_machines",
            raw.max_machines,
            DEFAULT_MAX_MACHINES,
            1..=10_000_000,
        )?;
        let power_timeout = duration_between(
            "power_timeout",
            raw.power_timeout.as_deref(),
            DEFAULT_POWER_TIMEOUT,
            Duration::from_secs(1)..=Duration::from_secs(15 * 60),
        )?;
        let boot_token_key_file = raw
            .boot_token_key_file
            .map(|path| absolute_path("boot_token_key_file", path))
            .transpose()?;
        Ok(Self {
            listen,
            agent_listen,
            boot_token_key_file,
            session_lifetime,
            secure_cookies,
            http,
            login_attempts_per_minute,
            auth_db,
            trusted_proxies,
            agent_logs: AgentLogLimits {
                per_machine_bytes: agent_log_bytes_per_machine,
                total_bytes: agent_log_bytes_total,
                requests_per_minute: agent_log_requests_per_minute,
                journal_lines_per_minute: agent_log_journal_lines_per_minute,
                journal_lines_per_minute_total: agent_log_journal_lines_per_minute_total,
            },
            agent_token_ttl,
            registration: RegistrationLimits {
                per_second: new_machines_per_second,
                burst: new_machines_burst,
                max_machines,
                auto_register: raw.auto_register.unwrap_or(true),
            },
            power_timeout,
            metadata_url: raw
                .metadata_url
                .as_deref()
                .map(|u| http_url("metadata_url", u))
                .transpose()?,
            images_url: raw
                .images_url
                .as_deref()
                .map(|u| http_url("images_url", u))
                .transpose()?,
            images_dir: absolute_path(
                "images_dir",
                raw.images_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGES_DIR)),
            )?,
        })
    }
}

/// `secure_cookies = false` with `http.tls = true`.
#[derive(Debug, thiserror::Error)]
#[error("cannot be false while http.tls is true: a cookie of a TLS listener is always Secure")]
pub struct InsecureCookiesOverTls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let c = ApidConfig::validate(RawApid::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.agent_listen.addr.to_string(), DEFAULT_AGENT_LISTEN);
        // Plain HTTP by default, so the cookie cannot be Secure; with TLS it is.
        assert!(!c.secure_cookies);
        let tls = ApidConfig::validate(RawApid {
            http: Some(RawHttpConfig {
                tls: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(tls.secure_cookies);
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.session_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(c.power_timeout, DEFAULT_POWER_TIMEOUT);
        // A rack of 1 000 machines fits the total with a full buffer each, in tens of MiB.
        assert!(c.agent_logs.total_bytes >= 1000 * c.agent_logs.per_machine_bytes);
        assert!(c.agent_logs.total_bytes <= 64 << 20);
        assert_eq!(c.auth_db, PathBuf::from(DEFAULT_AUTH_DB));
        assert!(
            c.trusted_proxies.0.is_empty(),
            "X-Forwarded-For ignored by default"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let c = ApidConfig::validate(RawApid {
            trusted_proxies: Some(vec![
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "fd00::/8".into(),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert!(c.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
        assert!(!c.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
        let e = ApidConfig::validate(RawApid {
            trusted_proxies: Some(vec!["10.0.0.0/40".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key(), "trusted_proxies");
        assert!(e.to_string().contains("10.0.0.0/40"), "{e}");
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
                    http: Some(RawHttpConfig {
                        max_body_bytes: Some(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "http.max_body_bytes",
            ),
            (
                RawApid {
                    agent_listen: Some("3001".into()),
                    ..Default::default()
                },
                "agent_listen",
            ),
            (
                RawApid {
                    secure_cookies: Some(false),
                    http: Some(RawHttpConfig {
                        tls: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "secure_cookies",
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
            (
                RawApid {
                    auth_db: Some("auth.db".into()),
                    ..Default::default()
                },
                "auth_db",
            ),
            (
                RawApid {
                    agent_log_bytes_per_machine: Some(100),
                    ..Default::default()
                },
                "agent_log_bytes_per_machine",
            ),
            (
                RawApid {
                    agent_log_bytes_per_machine: Some(1 << 20),
                    agent_log_bytes_total: Some(512 << 10),
                    ..Default::default()
                },
                "agent_log_bytes_total",
            ),
            (
                RawApid {
                    agent_log_requests_per_minute: Some(0),
                    ..Default::default()
                },
                "agent_log_requests_per_minute",
            ),
            (
                RawApid {
                    agent_log_journal_lines_per_minute: Some(100_001),
                    ..Default::default()
                },
                "agent_log_journal_lines_per_minute",
            ),
            (
                RawApid {
                    power_timeout: Some("0s".into()),
                    ..Default::default()
                },
                "power_timeout",
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
            http: Some(RawHttpConfig {
                max_body_bytes: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            ApidConfig::validate(raw).unwrap_err().to_string(),
            "http.max_body_bytes: 1 is out of range: must be between 1024 and 67108864"
        );
    }
}
