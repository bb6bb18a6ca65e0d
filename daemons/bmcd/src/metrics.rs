//! bmcd's metrics: power operations by operation, caller and outcome, with their latency,
//! registered in the frame's registry ([`dragonfly_runtime::Metrics`]). Labels come from
//! closed sets (`PowerOp` and `PowerFailure` names): never a machine id or a BMC address.

use dragonfly_bus::power::{PowerFailure, PowerOp};
use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets, in seconds: a Redfish call answers in tens of milliseconds, an IPMI one
/// with retries in seconds, a timed-out one after the configured timeout.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One operation's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// `on`, `off`, `soft-off`, `cycle`, `reset`, `status`, `boot-pxe`, `boot-disk`.
    pub operation: &'static str,
    /// `command` (an operator's or a workflow's) or `poll` (bmcd's own state reads).
    pub caller: &'static str,
    /// `ok`, or the failure (`unreachable`, `timed-out`, …).
    pub outcome: &'static str,
}

/// The latency's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpKind {
    pub operation: &'static str,
    pub caller: &'static str,
}

/// bmcd's metrics; clones count into the same series.
#[derive(Debug, Clone)]
pub struct BmcdMetrics {
    pub operations: Family<Op, Counter>,
    pub duration: Family<OpKind, Histogram>,
}

impl Default for BmcdMetrics {
    fn default() -> Self {
        Self {
            operations: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl BmcdMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "power_operations",
            "Power operations carried out on BMCs, by operation, caller and outcome",
            m.operations.clone(),
        );
        registry.register(
            "power_operation_duration_seconds",
            "Time from a power operation's request to its outcome (queueing behind the \
             BMC's lock and retries included), by operation and caller",
            m.duration.clone(),
        );
        m
    }

    /// Counts one operation's outcome.
    pub fn observe(&self, op: PowerOp, poll: bool, failure: Option<PowerFailure>, seconds: f64) {
        let caller = if poll { "poll" } else { "command" };
        let operation = op.as_str();
        self.operations
            .get_or_create(&Op {
                operation,
                caller,
                outcome: failure.map_or("ok", PowerFailure::as_str),
            })
            .inc();
        self.duration
            .get_or_create(&OpKind { operation, caller })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_counted_by_closed_names() {
        let registry = Metrics::new("bmcd");
        let m = BmcdMetrics::register(&registry);
        m.observe(PowerOp::SoftOff, false, None, 0.02);
        m.observe(PowerOp::Status, true, Some(PowerFailure::Unreachable), 3.0);
        let text = registry.encode();
        assert!(
            text.contains(
                "dragonfly_bmcd_power_operations_total{operation=\"soft-off\",caller=\"command\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "dragonfly_bmcd_power_operations_total{operation=\"status\",caller=\"poll\",outcome=\"unreachable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "dragonfly_bmcd_power_operation_duration_seconds_bucket{le=\"5.0\",operation=\"status\",caller=\"poll\"} 1"
            ),
            "{text}"
        );
    }
}
