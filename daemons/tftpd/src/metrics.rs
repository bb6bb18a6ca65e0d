//! tftpd's metrics: transfers by outcome and the bytes they sent, registered in the frame's
//! registry ([`dragonfly_runtime::Metrics`]). Labels come from closed sets: never a file name
//! or a client address.

use dragonfly_bus::events::TftpTransferred;
use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// How a transfer ended: `complete` (the last block acknowledged) or `failed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// tftpd's counters; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct TftpdMetrics {
    pub transfers: Family<Outcome, Counter>,
    pub bytes_sent: Counter,
}

impl TftpdMetrics {
    /// The counters, registered in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "transfers",
            "Transfers that ended, by outcome (complete or failed; transfers never \
             acknowledged at all are not counted)",
            m.transfers.clone(),
        );
        registry.register(
            "bytes_sent",
            "File bytes sent in transfers that ended (acknowledged ones for a failed transfer)",
            m.bytes_sent.clone(),
        );
        m
    }

    /// Counts a transfer that ended.
    pub fn transferred(&self, event: &TftpTransferred) {
        let outcome = if event.complete { "complete" } else { "failed" };
        self.transfers.get_or_create(&Outcome { outcome }).inc();
        self.bytes_sent.inc_by(event.bytes);
    }
}
