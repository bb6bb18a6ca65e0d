//! Where log lines go: the journal under systemd, stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=<dev>:<inode>` when it connects stdout/stderr to the journal.
//! When that matches our actual stderr, logs go to journald natively, so fields (`mac=…`,
//! `lease=…`) stay structured and `journalctl -u dragonfly-dhcpd mac=…` works. Otherwise they
//! are formatted to stderr (a terminal, a test, a container runtime).
//!
//! The filter is `RUST_LOG` when set (for a one-off debugging session), else `[log] level`.
//!
//! This module must never be initialised before the configuration is loaded (the level comes
//! from it), and must never log secrets: [`crate::credentials::Secret`] prints as `[redacted]`.

use std::io::IsTerminal;

use dragonfly_core::Chain;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journald protocol.
    Journald,
    /// Formatted text on stderr.
    Stderr,
    /// A global subscriber already existed (a second `init`, or a test); nothing changed.
    AlreadyInitialised,
}

/// Install the global `tracing` subscriber for daemon `daemon` (its journal
/// `SYSLOG_IDENTIFIER`). Safe to call more than once: later calls change nothing.
pub fn init(log: &LogConfig, daemon: &str) -> LogTarget {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad_rust_log) = build_filter(rust_log.as_deref(), &log.level);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();

    let mut journald_error = None;
    let result = if journal_stream_matches(journal_stream.as_deref(), stderr_identity()) {
        match tracing_journald::layer() {
            Ok(layer) => tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier(daemon.to_owned()))
                .try_init()
                .map(|()| LogTarget::Journald),
            Err(error) => {
                // stderr goes to the journal anyway, just without structured fields.
                journald_error = Some(error);
                init_stderr(filter)
            }
        }
    } else {
        init_stderr(filter)
    };
    let target = result.unwrap_or(LogTarget::AlreadyInitialised);
    if target != LogTarget::AlreadyInitialised {
        if let Some(error) = journald_error {
            tracing::warn!(error = %Chain(&error), "cannot reach journald; logging to stderr");
        }
        if let Some(value) = bad_rust_log {
            tracing::warn!(rust_log = %value, level = %log.level, "ignoring invalid RUST_LOG");
        }
    }
    target
}

fn init_stderr(filter: EnvFilter) -> Result<LogTarget, tracing_subscriber::util::TryInitError> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map(|()| LogTarget::Stderr)
}

/// The filter from `RUST_LOG` if it parses, else from the (already validated) configured level.
/// Also returns an unusable `RUST_LOG`, to warn about once logging works.
fn build_filter(rust_log: Option<&str>, configured: &str) -> (EnvFilter, Option<String>) {
    let parse = |directives: &str| EnvFilter::builder().parse(directives);
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(value) => match parse(value) {
            Ok(filter) => (filter, None),
            Err(_) => (configured_filter(configured), Some(value.to_owned())),
        },
        None => (configured_filter(configured), None),
    }
}

/// Dependencies whose `info` is our `debug`: async-nats logs every reconnect attempt, which
/// `dragonfly-bus` already reports once per state change. An explicit directive for the same
/// target in the configured filter or `RUST_LOG` overrides these.
const QUIET_DEPENDENCIES: &str = "async_nats=warn";

fn configured_filter(configured: &str) -> EnvFilter {
    // `LogConfig` validated it; `parse_lossy` only matters for a hand-built `LogConfig`.
    EnvFilter::builder().parse_lossy(format!("{QUIET_DEPENDENCIES},{configured}"))
}

/// `(st_dev, st_ino)` of our stderr, if it is open.
fn stderr_identity() -> Option<(u64, u64)> {
    let stat = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    #[allow(
        clippy::useless_conversion,
        reason = "the field types differ between targets"
    )]
    Some((u64::from(stat.st_dev), u64::from(stat.st_ino)))
}

/// True when `JOURNAL_STREAM` (`"<dev>:<inode>"`) names our stderr: the variable is inherited by
/// children whose stderr was redirected elsewhere, so its presence alone proves nothing.
fn journal_stream_matches(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some(stderr)) = (journal_stream, stderr) else {
        return false;
    };
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    matches!((dev.parse(), ino.parse()), (Ok(dev), Ok(ino)) if (dev, ino) == stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(journal_stream_matches(Some("8:1234"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1234"), Some((8, 99))));
        assert!(!journal_stream_matches(Some("8:1234"), None));
        assert!(!journal_stream_matches(None, Some((8, 1234))));
        assert!(!journal_stream_matches(Some("garbage"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:x"), Some((8, 1234))));
    }

    #[test]
    fn rust_log_overrides_the_configured_level() {
        let (filter, bad) = build_filter(Some("dragonfly=trace"), "info");
        assert_eq!(filter.to_string(), "dragonfly=trace");
        assert_eq!(bad, None);
    }

    #[test]
    fn configured_level_applies_without_rust_log() {
        for rust_log in [None, Some(""), Some("  ")] {
            let (filter, bad) = build_filter(rust_log, "warn,dragonfly_dhcpd=debug");
            let text = filter.to_string();
            assert!(
                text.contains("dragonfly_dhcpd=debug") && text.contains("warn"),
                "{text}"
            );
            assert_eq!(bad, None);
        }
    }

    #[test]
    fn invalid_rust_log_falls_back_and_is_reported() {
        let (filter, bad) = build_filter(Some("dragonfly=loud"), "info");
        let text = filter.to_string();
        assert!(text.contains("info") && !text.contains("loud"), "{text}");
        assert_eq!(bad.as_deref(), Some("dragonfly=loud"));
    }

    #[test]
    fn noisy_dependencies_are_quieted_unless_asked_for() {
        let (filter, _) = build_filter(None, "info");
        assert!(filter.to_string().contains("async_nats=warn"), "{filter}");
        let (filter, _) = build_filter(None, "info,async_nats=debug");
        assert!(filter.to_string().contains("async_nats=debug"), "{filter}");
    }
}
