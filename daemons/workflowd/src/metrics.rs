//! workflowd's metrics: workflows by state (a gauge read from the store, the truth) and the
//! transitions workflowd made, registered in the frame's registry
//! ([`dragonfly_runtime::Metrics`]). Labels are state and change names: never a workflow or
//! machine id.

use std::sync::atomic::AtomicU64;

use dragonfly_core::workflow::{Change, WorkflowState};
use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Every state, so a state with no workflow reads 0 rather than vanishing.
const STATES: [WorkflowState; 6] = [
    WorkflowState::Pending,
    WorkflowState::Running,
    WorkflowState::Succeeded,
    WorkflowState::Failed,
    WorkflowState::TimedOut,
    WorkflowState::Cancelled,
];

/// A workflow state (`Running`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

/// A transition: `started`, `restarted`, `succeeded`, `failed`, `timed_out`, `cancelled`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    pub transition: &'static str,
}

/// workflowd's metrics; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct WorkflowdMetrics {
    pub workflows: Family<State, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub transitions: Family<Transition, Counter<u64, AtomicU64>>,
}

impl WorkflowdMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "workflows",
            "Workflows in the store, by state (read every few seconds)",
            m.workflows.clone(),
        );
        registry.register(
            "transitions",
            "Workflow state changes workflowd made and stored, by transition",
            m.transitions.clone(),
        );
        m
    }

    /// Sets the gauge from the store's counts.
    pub fn set_counts(&self, counts: &[(WorkflowState, u64)]) {
        for state in STATES {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| i64::try_from(*n).unwrap_or(i64::MAX));
            self.workflows
                .get_or_create(&State {
                    state: state.as_str(),
                })
                .set(n);
        }
    }

    /// Counts a stored change (progress and no-change are not transitions).
    pub fn changed(&self, change: &Change) {
        let transition = match change {
            Change::None | Change::Progress => return,
            Change::Started => "started",
            Change::Restarted => "restarted",
            Change::Succeeded => "succeeded",
            Change::Failed(_) => "failed",
            Change::TimedOut(_) => "timed_out",
            Change::Cancelled => "cancelled",
        };
        self.transitions
            .get_or_create(&Transition { transition })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_a_series_and_progress_is_no_transition() {
        let registry = Metrics::new("workflowd");
        let m = WorkflowdMetrics::register(&registry);
        m.set_counts(&[(WorkflowState::Running, 3)]);
        m.changed(&Change::Started);
        m.changed(&Change::Progress);
        m.changed(&Change::Failed("disk".into()));
        let text = registry.encode();
        assert!(
            text.contains("dragonfly_workflowd_workflows{state=\"Running\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("dragonfly_workflowd_workflows{state=\"TimedOut\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("dragonfly_workflowd_transitions_total{transition=\"failed\"} 1"),
            "{text}"
        );
        assert_eq!(
            text.matches("dragonfly_workflowd_transitions_total{")
                .count(),
            2
        );
    }
}
