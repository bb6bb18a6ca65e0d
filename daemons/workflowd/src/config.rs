//! workflowd's section of the configuration file, `[workflowd]`. Pure: no I/O.

use std::time::Duration;

use dragonfly_runtime::config::{DaemonConfig, Invalid, count_between, duration_between};
use serde::Deserialize;

/// Default of `tick`.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Default of `reconcile_period`.
pub const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(60);
/// Default of `batch`.
pub const DEFAULT_BATCH: usize = 256;

/// `[workflowd]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflowd {
    /// How often timeouts are checked and the reports table is read without a hint
    /// (default `1s`, 100ms–10s).
    pub tick: Option<String>,
    /// The follower's safety-net reconcile period (default `60s`, 5s–1h).
    pub reconcile_period: Option<String>,
    /// Reports applied per pass (default 256, 1–10000).
    pub batch: Option<usize>,
}

/// `[workflowd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowdConfig {
    pub tick: Duration,
    pub reconcile_period: Duration,
    pub batch: usize,
}

impl Default for WorkflowdConfig {
    fn default() -> Self {
        Self {
            tick: DEFAULT_TICK,
            reconcile_period: DEFAULT_RECONCILE_PERIOD,
            batch: DEFAULT_BATCH,
        }
    }
}

impl DaemonConfig for WorkflowdConfig {
    const SECTION: &'static str = "workflowd";
    type Raw = RawWorkflowd;

    fn validate(raw: RawWorkflowd) -> Result<Self, Invalid> {
        Ok(Self {
            // At most 10 s: the main loop feeds the watchdog.
            tick: duration_between(
                "tick",
                raw.tick.as_deref(),
                DEFAULT_TICK,
                Duration::from_millis(100)..=Duration::from_secs(10),
            )?,
            reconcile_period: duration_between(
                "reconcile_period",
                raw.reconcile_period.as_deref(),
                DEFAULT_RECONCILE_PERIOD,
                Duration::from_secs(5)..=Duration::from_secs(3600),
            )?,
            batch: count_between("batch", raw.batch, DEFAULT_BATCH, 1..=10_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            WorkflowdConfig::validate(RawWorkflowd::default()).unwrap(),
            WorkflowdConfig::default()
        );
        let bad = RawWorkflowd {
            tick: Some("1m".into()),
            ..Default::default()
        };
        assert!(WorkflowdConfig::validate(bad).is_err());
    }
}
