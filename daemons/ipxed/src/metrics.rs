//! ipxed's metrics: boot decisions by fate and the file bytes it answers with, registered in
//! the frame's registry ([`dragonfly_runtime::Metrics`]). Labels come from closed sets: a fate
//! name, never a MAC or a file name.

use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// `discovery`, `imaging` or `localDisk` ([`crate::script::fate_str`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Fate {
    pub fate: &'static str,
}

/// ipxed's counters; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct IpxedMetrics {
    pub boot_decisions: Family<Fate, Counter>,
    pub file_bytes: Counter,
    pub file_transfers: Counter,
    pub file_transfers_busy: Counter,
}

impl IpxedMetrics {
    /// The counters, registered in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "boot_decisions",
            "Boot scripts served, by the fate decided (discovery, imaging, localDisk)",
            m.boot_decisions.clone(),
        );
        registry.register(
            "file_bytes",
            "Bytes of agent, iPXE and image file bodies answered to GET requests (the \
             Content-Length of each answer, Range parts included)",
            m.file_bytes.clone(),
        );
        registry.register(
            "file_transfers",
            "File bodies answered to GET requests (agent, iPXE binaries, images)",
            m.file_transfers.clone(),
        );
        registry.register(
            "file_transfers_busy",
            "File requests refused with 503 because max_file_transfers were in progress",
            m.file_transfers_busy.clone(),
        );
        m
    }
}
