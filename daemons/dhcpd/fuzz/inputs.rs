//! What the fuzz targets do with one input, in one place: `fuzz_targets/receive.rs` runs it
//! under libFuzzer (nightly, `integration/fuzz.sh`), and dhcpd's `cargo test` replays every
//! kept corpus input and every crash ever found through the very same function
//! (`tests/integration/fuzz_corpus.rs`), on stable and in seconds. Both include this file by
//! path: it belongs to neither crate.
//!
//! It must never hold anything but the target's body: what it does here is what is fuzzed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

use dragonfly_dhcpd::config::{DhcpdConfig, RawDhcpd, RawReservation, RawSubnet};
use dragonfly_dhcpd::leases::Leases;
use dragonfly_dhcpd::limits::NewClients;
use dragonfly_dhcpd::policy::{self, Arrival, Known, Port};
use dragonfly_dhcpd::wire;
use dragonfly_runtime::config::DaemonConfig;

/// The receive path on arbitrary bytes: decode, then policy in every mode, on both ports, for
/// an unknown and a known machine, then encode any reply. Must never panic.
pub(crate) fn receive(data: &[u8]) {
    let Ok(req) = wire::decode(data) else { return };
    for cfg in configs() {
        for port in [Port::Dhcp, Port::Pxe] {
            let mut leases = Leases::default();
            let mut new_clients = NewClients::new(cfg.new_clients);
            let arrival = Arrival {
                port,
                source: SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 5), 68),
                local: Ipv4Addr::new(10, 99, 0, 1),
                ifindex: 2,
            };
            let known_machine = Known {
                machine_id: Some(uuid::Uuid::nil()),
            };
            for known in [Known::default(), known_machine] {
                let out = policy::decide(
                    cfg,
                    &req,
                    &arrival,
                    known,
                    &mut leases,
                    &mut new_clients,
                    1_000_000,
                );
                if let Some(r) = out.reply {
                    let _ = wire::encode(&r.msg);
                }
            }
        }
    }
}

/// One configuration per mode: reservation, proxy, autoproxy.
fn configs() -> &'static [DhcpdConfig] {
    static C: OnceLock<Vec<DhcpdConfig>> = OnceLock::new();
    C.get_or_init(|| {
        ["reservation", "proxy", "autoproxy"]
            .iter()
            .map(|mode| {
                DhcpdConfig::validate(RawDhcpd {
                    mode: Some((*mode).into()),
                    subnets: vec![RawSubnet {
                        network: "10.99.0.0/24".into(),
                        pool_start: Some("10.99.0.100".into()),
                        pool_end: Some("10.99.0.110".into()),
                        ..Default::default()
                    }],
                    reservations: vec![RawReservation {
                        mac: "52:54:00:12:34:56".into(),
                        ip: "10.99.0.10".into(),
                    }],
                    http_boot_x64_url: Some("http://10.99.0.1/ipxe.efi".into()),
                    relays: vec!["10.99.0.5".into()],
                    ..Default::default()
                })
                .expect("fuzz config is valid")
            })
            .collect()
    })
}
