//! The receive path on arbitrary bytes: decode, then policy in every mode and on both ports,
//! then encode any reply. Must never panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

use dragonfly_dhcpd::config::{DhcpdConfig, RawDhcpd, RawReservation, RawSubnet};
use dragonfly_dhcpd::leases::Leases;
use dragonfly_dhcpd::policy::{self, Arrival, Known, Port};
use dragonfly_dhcpd::wire;
use dragonfly_runtime::config::DaemonConfig;
use libfuzzer_sys::fuzz_target;

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
                    ..Default::default()
                })
                .expect("fuzz config is valid")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::decode(data) else { return };
    for cfg in configs() {
        for port in [Port::Dhcp, Port::Pxe] {
            let mut leases = Leases::default();
            let arrival = Arrival {
                port,
                source: SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 5), 68),
                local: Ipv4Addr::new(10, 99, 0, 1),
                ifindex: 2,
            };
            for known in [Known::default(), Known { machine_id: Some(uuid_nil()) }] {
                let out = policy::decide(cfg, &req, &arrival, known, &mut leases, 1_000_000);
                if let Some(r) = out.reply {
                    let _ = wire::encode(&r.msg);
                }
            }
        }
    }
});

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}
