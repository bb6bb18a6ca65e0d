//! dhcpd's metrics: leases granted and ended, and boot answers. Registered in the frame's
//! registry ([`dragonfly_runtime::Metrics`]); every label value comes from a closed set in
//! code (an architecture name from [`crate::policy::arch_name`], a client kind, a mode, an
//! end reason), never from a MAC or an address.

use dragonfly_bus::events::LeaseEndReason;
use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// `reason` of an ended lease.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ended {
    pub reason: &'static str,
}

/// What a boot answer told the client.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Pxe {
    /// `bios`, `uefi-x64`, … (option 93).
    pub arch: String,
    /// `firmware`, `ipxe` or `http`.
    pub client: String,
    /// `reservation`, `proxy` or `autoproxy`.
    pub mode: String,
}

/// dhcpd's counters; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct DhcpdMetrics {
    pub leases_granted: Counter,
    pub leases_ended: Family<Ended, Counter>,
    pub pxe_answers: Family<Pxe, Counter>,
}

impl DhcpdMetrics {
    /// The counters, registered in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "leases_granted",
            "Leases granted or renewed (DHCPACK committed to the store)",
            m.leases_granted.clone(),
        );
        registry.register(
            "leases_ended",
            "Leases ended, by reason (released, declined, expired)",
            m.leases_ended.clone(),
        );
        registry.register(
            "pxe_answers",
            "Boot answers sent to network-boot clients, by architecture, client kind and mode",
            m.pxe_answers.clone(),
        );
        m
    }

    pub(crate) fn ended(&self, reason: LeaseEndReason) {
        let reason = match reason {
            LeaseEndReason::Released => "released",
            LeaseEndReason::Declined => "declined",
            LeaseEndReason::Expired => "expired",
        };
        self.leases_ended.get_or_create(&Ended { reason }).inc();
    }
}
