//! Policy, without sockets: every message type in every mode.

use dhcproto::v4::{Architecture, Flags, relay};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use dragonfly_runtime::config::DaemonConfig;

use super::*;
use crate::config::{RawDhcpd, RawReservation, RawSubnet};
use crate::limits::Link;
use crate::wire;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const RESERVED_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn cfg(mode: &str) -> DhcpdConfig {
    DhcpdConfig::validate(RawDhcpd {
        mode: Some(mode.into()),
        subnets: vec![
            RawSubnet {
                network: "10.99.0.0/24".into(),
                pool_start: Some("10.99.0.100".into()),
                pool_end: Some("10.99.0.102".into()),
                router: Some("10.99.0.1".into()),
                dns: vec!["10.99.0.53".into()],
                domain_name: Some("lab.example".into()),
                lease_time: Some("10m".into()),
            },
            RawSubnet {
                network: "10.98.0.0/24".into(),
                pool_start: Some("10.98.0.10".into()),
                pool_end: Some("10.98.0.20".into()),
                ..Default::default()
            },
        ],
        reservations: vec![RawReservation {
            mac: "52:54:00:12:34:56".into(),
            ip: "10.99.0.10".into(),
        }],
        http_boot_x64_url: Some("http://10.99.0.1:8080/ipxe.efi".into()),
        ipxed: Some("10.99.0.1:8081".into()),
        relays: vec!["10.98.0.1".into(), "172.16.0.1".into()],
        new_clients_per_second: Some(10),
        new_clients_burst: Some(20),
        ..Default::default()
    })
    .unwrap()
}

fn arrival() -> Arrival {
    Arrival {
        port: Port::Dhcp,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        local: SERVER,
        ifindex: 7,
    }
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(42, z, z, z, z, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

/// Through the wire layer, as the daemon sees it.
fn req(m: &Message) -> wire::Request {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    wire::decode(&b).unwrap()
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

struct Lab {
    cfg: DhcpdConfig,
    leases: Leases,
    new_clients: NewClients,
    now: i64,
}

impl Lab {
    fn new(mode: &str) -> Self {
        let cfg = cfg(mode);
        Self {
            new_clients: NewClients::new(cfg.new_clients),
            cfg,
            leases: Leases::default(),
            now: 1_000_000,
        }
    }
    fn ask(&mut self, m: &Message) -> Outcome {
        self.ask_at(m, arrival(), Known::default())
    }
    fn ask_at(&mut self, m: &Message, a: Arrival, k: Known) -> Outcome {
        decide(
            &self.cfg,
            &req(m),
            &a,
            k,
            &mut self.leases,
            &mut self.new_clients,
            self.now,
        )
    }
    /// DISCOVER + REQUEST; returns the address.
    fn dora(&mut self, mac: [u8; 6]) -> Ipv4Addr {
        let offer = self
            .ask(&msg(MessageType::Discover, mac))
            .reply
            .unwrap()
            .msg;
        let mut r = msg(MessageType::Request, mac);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let out = self.ask(&r);
        let ack = out.reply.unwrap().msg;
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert!(matches!(out.write, Some(LeaseWrite::Bind { .. })));
        ack.yiaddr()
    }
}

fn kind(o: &Outcome) -> Option<MessageType> {
    o.reply.as_ref().and_then(|r| r.msg.opts().msg_type())
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

#[test]
fn discover_gets_a_pool_offer_with_network_options_broadcast_on_the_arrival_interface() {
    let mut lab = Lab::new("reservation");
    let out = lab.ask(&msg(MessageType::Discover, mac(1)));
    assert!(out.write.is_none(), "offers are not stored");
    let r = out.reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.msg.opcode(), Opcode::BootReply);
    assert_eq!(r.msg.xid(), 42);
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!((r.ifindex, r.source), (Some(7), SERVER));
    let m = &r.msg;
    assert_eq!(
        opt(m, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
    );
    assert_eq!(
        opt(m, OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(
        opt(m, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![[10, 99, 0, 53].into()]))
    );
    assert_eq!(
        opt(m, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.example".into()))
    );
    assert_eq!(
        opt(m, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(opt(m, OptionCode::Renewal), Some(&DhcpOption::Renewal(300)));
    assert_eq!(
        opt(m, OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(525))
    );
    assert_eq!(
        opt(m, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert!(m.fname().is_none() && opt(m, OptionCode::BootfileName).is_none());
    // The same client asking again is offered the same address.
    let again = lab.ask(&msg(MessageType::Discover, mac(1))).reply.unwrap();
    assert_eq!(again.msg.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
}

#[test]
fn dora_binds_and_emits_a_granted_event() {
    let mut lab = Lab::new("reservation");
    let offer = lab
        .ask(&msg(MessageType::Discover, mac(1)))
        .reply
        .unwrap()
        .msg;
    let mut r = msg(MessageType::Request, mac(1));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let out = lab.ask(&r);
    assert_eq!(kind(&out), Some(MessageType::Ack));
    assert_eq!(
        out.write,
        Some(LeaseWrite::Bind {
            ip: offer.yiaddr(),
            mac: MacAddr::new(mac(1)),
            reserved: false,
            expires_at: timestamp(lab.now + 600_000),
        })
    );
    let Some(LeaseEvent::Granted(g)) = out.lease_event else {
        panic!("no event")
    };
    assert_eq!(
        (g.ip, g.lease_seconds, g.reserved, g.relay),
        (Ipv4Addr::new(10, 99, 0, 100), 600, false, None)
    );
    assert!(lab.leases.binding(MacAddr::new(mac(1))).unwrap().bound);
}

#[test]
fn reserved_client_gets_its_fixed_address_and_others_never_do() {
    let mut lab = Lab::new("reservation");
    assert_eq!(lab.dora(RESERVED_MAC), Ipv4Addr::new(10, 99, 0, 10));
    // Asking for the reserved address as another client: not offered, NAKed on REQUEST.
    let mut d = msg(MessageType::Discover, mac(2));
    d.opts_mut()
        .insert(DhcpOption::RequestedIpAddress([10, 99, 0, 10].into()));
    assert_eq!(
        lab.ask(&d).reply.unwrap().msg.yiaddr(),
        Ipv4Addr::new(10, 99, 0, 100)
    );
    let mut r = msg(MessageType::Request, mac(2));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress([10, 99, 0, 10].into()));
    assert_eq!(kind(&lab.ask(&r)), Some(MessageType::Nak));
}

#[test]
fn pool_exhaustion_is_silence_and_expiry_frees_addresses() {
    let mut lab = Lab::new("reservation");
    for n in 1..=3 {
        lab.dora(mac(n));
    }
    let out = lab.ask(&msg(MessageType::Discover, mac(4)));
    assert_eq!(out.silent, Some("pool exhausted"));
    lab.now += 600_001;
    assert_eq!(lab.dora(mac(4)), Ipv4Addr::new(10, 99, 0, 100));
}

#[test]
fn offers_expire_and_are_dropped_when_the_client_picks_another_server() {
    let mut lab = Lab::new("reservation");
    let ip = lab
        .ask(&msg(MessageType::Discover, mac(1)))
        .reply
        .unwrap()
        .msg
        .yiaddr();
    // Held for the offer: another client gets a different address.
    let other = lab
        .ask(&msg(MessageType::Discover, mac(2)))
        .reply
        .unwrap()
        .msg
        .yiaddr();
    assert_ne!(ip, other);
    let mut r = msg(MessageType::Request, mac(1));
    r.opts_mut()
        .insert(DhcpOption::ServerIdentifier([10, 99, 0, 254].into()));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let out = lab.ask(&r);
    assert!(out.reply.is_none() && out.write.is_none());
    assert!(lab.leases.binding(MacAddr::new(mac(1))).is_none());
    // mac 2's offer lapses after offer_hold (10 s).
    lab.now += 10_001;
    let mut r = msg(MessageType::Request, mac(3));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(other));
    assert_eq!(
        kind(&lab.ask(&r)),
        Some(MessageType::Ack),
        "a lapsed offer's address is free"
    );
}

#[test]
fn init_reboot_ack_nak_or_silence() {
    let mut lab = Lab::new("reservation");
    let ip = lab.dora(mac(1));
    let reboot = |m: [u8; 6], want: [u8; 4]| {
        let mut r = msg(MessageType::Request, m);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(want.into()));
        r
    };
    assert_eq!(
        kind(&lab.ask(&reboot(mac(1), ip.octets()))),
        Some(MessageType::Ack)
    );
    let nak = lab.ask(&reboot(mac(1), [10, 99, 0, 101]));
    assert_eq!(kind(&nak), Some(MessageType::Nak));
    let r = nak.reply.unwrap();
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&r.msg, OptionCode::AddressLeaseTime).is_none());
    assert_eq!(
        kind(&lab.ask(&reboot(mac(1), [192, 168, 1, 5]))),
        Some(MessageType::Nak),
        "wrong network"
    );
    let unknown = lab.ask(&reboot(mac(9), [10, 99, 0, 101]));
    assert!(unknown.reply.is_none(), "unknown client: silence");
    // A reserved client rebooting with its address is ACKed without a prior lease.
    assert_eq!(
        kind(&lab.ask(&reboot(RESERVED_MAC, [10, 99, 0, 10]))),
        Some(MessageType::Ack)
    );
}

#[test]
fn renew_is_unicast_and_extends_rebind_of_wrong_address_is_naked() {
    let mut lab = Lab::new("reservation");
    let ip = lab.dora(mac(1));
    lab.now += 300_000;
    let mut r = msg(MessageType::Request, mac(1));
    r.set_ciaddr(ip);
    let out = lab.ask(&r);
    assert_eq!(kind(&out), Some(MessageType::Ack));
    let reply = out.reply.unwrap();
    assert_eq!(reply.dest, SocketAddrV4::new(ip, 68));
    assert_eq!(
        reply.ifindex,
        Some(7),
        "out of the arrival interface, not by route"
    );
    assert_eq!((reply.msg.ciaddr(), reply.msg.yiaddr()), (ip, ip));
    assert_eq!(
        lab.leases.binding(MacAddr::new(mac(1))).unwrap().expires_ms,
        lab.now + 600_000
    );
    let mut wrong = msg(MessageType::Request, mac(1));
    wrong.set_ciaddr(Ipv4Addr::new(10, 99, 0, 102));
    assert_eq!(kind(&lab.ask(&wrong)), Some(MessageType::Nak));
    let mut stranger = msg(MessageType::Request, mac(5));
    stranger.set_ciaddr(Ipv4Addr::new(10, 99, 0, 102));
    assert!(lab.ask(&stranger).reply.is_none());
}

#[test]
fn release_and_decline() {
    let mut lab = Lab::new("reservation");
    let ip = lab.dora(mac(1));
    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(ip);
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let out = lab.ask(&rel);
    assert!(out.reply.is_none());
    assert_eq!(
        out.write,
        Some(LeaseWrite::Free {
            ip,
            mac: MacAddr::new(mac(1))
        })
    );
    assert!(
        matches!(out.lease_event, Some(LeaseEvent::Ended(ref e)) if e.reason == LeaseEndReason::Released)
    );
    assert!(lab.leases.binding(MacAddr::new(mac(1))).is_none());
    assert!(
        lab.ask(&rel).write.is_none(),
        "a second release does nothing"
    );

    let ip = lab.dora(mac(2));
    let mut dec = msg(MessageType::Decline, mac(2));
    dec.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let out = lab.ask(&dec);
    assert!(matches!(out.write, Some(LeaseWrite::Decline { ip: d, .. }) if d == ip));
    assert!(
        matches!(out.lease_event, Some(LeaseEvent::Ended(ref e)) if e.reason == LeaseEndReason::Declined)
    );
    // The declined address is skipped by the next client until decline_hold passes.
    assert_ne!(lab.dora(mac(2)), ip);
    let mut bogus = msg(MessageType::Decline, mac(7));
    bogus
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress([10, 99, 0, 102].into()));
    assert!(
        lab.ask(&bogus).write.is_none(),
        "cannot decline someone else's address"
    );
}

#[test]
fn relayed_requests_pick_the_subnet_by_giaddr_and_go_back_to_the_relay_with_option_82() {
    let mut lab = Lab::new("reservation");
    let from = |relay: [u8; 4]| Arrival {
        source: SocketAddrV4::new(relay.into(), 67),
        ..arrival()
    };
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(Ipv4Addr::new(10, 98, 0, 1));
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
    d.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    let out = lab.ask_at(&d, from([10, 98, 0, 1]), Known::default());
    let r = out.reply.unwrap();
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::new(10, 98, 0, 10));
    assert_eq!(r.msg.giaddr(), Ipv4Addr::new(10, 98, 0, 1));
    assert_eq!(
        (r.dest, r.ifindex),
        (SocketAddrV4::new([10, 98, 0, 1].into(), 67), None)
    );
    assert_eq!(
        opt(&r.msg, OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
    assert!(opt(&r.msg, OptionCode::Router).is_none());
    let mut unknown = msg(MessageType::Discover, mac(1));
    unknown.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(
        lab.ask_at(&unknown, from([172, 16, 0, 1]), Known::default())
            .reply
            .is_none(),
        "no subnet for that relay"
    );
}

/// A relayed request is served only when both its giaddr and its sender are listed relays:
/// anyone on the segment can write a giaddr.
#[test]
fn relayed_requests_from_unlisted_relays_or_senders_are_silence() {
    let mut lab = Lab::new("reservation");
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(Ipv4Addr::new(10, 98, 0, 1));
    let spoofed = Arrival {
        source: SocketAddrV4::new([10, 99, 0, 66].into(), 68),
        ..arrival()
    };
    let out = lab.ask_at(&d, spoofed, Known::default());
    assert!(out.reply.is_none() && out.silent.is_some());
    let mut unlisted = d.clone();
    unlisted.set_giaddr(Ipv4Addr::new(10, 99, 0, 66));
    assert!(
        lab.ask_at(&unlisted, spoofed, Known::default())
            .reply
            .is_none()
    );
    lab.cfg.relays.clear();
    let relay = Arrival {
        source: SocketAddrV4::new([10, 98, 0, 1].into(), 67),
        ..arrival()
    };
    assert!(
        lab.ask_at(&d, relay, Known::default()).reply.is_none(),
        "no relays listed: none served"
    );
    // Proxy modes refuse them as well.
    let mut lab = Lab::new("autoproxy");
    let mut p = pxe(MessageType::Discover, mac(2), "PXEClient", 0);
    p.set_giaddr(Ipv4Addr::new(10, 99, 0, 66));
    assert!(lab.ask_at(&p, spoofed, Known::default()).reply.is_none());
    assert!(lab.leases.is_empty());
}

#[test]
fn broadcast_flag_and_chaddr_are_kept() {
    let mut lab = Lab::new("reservation");
    let mut d = msg(MessageType::Discover, mac(3));
    d.set_flags(Flags::default().set_broadcast());
    let r = lab.ask(&d).reply.unwrap();
    assert!(r.msg.flags().broadcast());
    assert_eq!(r.msg.chaddr(), &mac(3));
}

fn pxe(kind: MessageType, m: [u8; 6], class: &str, arch: u16) -> Message {
    let mut d = msg(kind, m);
    d.opts_mut()
        .insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    d.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(vec![
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ]));
    d
}

#[test]
fn firmware_gets_tftp_file_by_architecture() {
    let mut lab = Lab::new("reservation");
    for (arch, file) in [
        (0, "undionly.kpxe"),
        (7, "ipxe.efi"),
        (9, "ipxe.efi"),
        (11, "ipxe-arm64.efi"),
    ] {
        let out = lab.ask(&pxe(
            MessageType::Discover,
            mac(1),
            "PXEClient:Arch:00000:UNDI:002001",
            arch,
        ));
        let m = &out.reply.as_ref().unwrap().msg;
        assert_eq!(m.fname_str().unwrap().unwrap(), file);
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(
            opt(m, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            opt(m, OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        assert!(
            matches!(opt(m, OptionCode::ClientMachineIdentifier), Some(DhcpOption::ClientMachineIdentifier(v)) if v.len() == 17)
        );
        assert_ne!(
            m.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "reservation mode also leases"
        );
        let p = out.pxe.unwrap();
        assert_eq!(
            (p.client.as_str(), p.boot.as_str(), p.mode.as_str()),
            ("firmware", file, "reservation")
        );
    }
    // Unknown architecture: an address but no boot answer.
    let out = lab.ask(&pxe(MessageType::Discover, mac(1), "PXEClient", 2));
    assert!(out.pxe.is_none());
    assert!(out.reply.unwrap().msg.fname().is_none());
}

#[test]
fn ipxe_gets_the_script_url_with_no_pxedhcp_and_http_clients_an_url() {
    let mut lab = Lab::new("reservation");
    let mut d = pxe(MessageType::Discover, mac(1), "PXEClient:Arch:00000", 0);
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let out = lab.ask(&d);
    let m = &out.reply.unwrap().msg;
    let url = "http://10.99.0.1:8081/boot/${mac}?platform=${platform}";
    assert_eq!(m.fname_str().unwrap().unwrap(), url);
    assert_eq!(
        opt(m, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(url.as_bytes().to_vec()))
    );
    assert_eq!(
        opt(m, OptionCode::Unknown(175)),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1]
        )))
    );
    assert_eq!(out.pxe.unwrap().client, "ipxe");

    let out = lab.ask(&pxe(
        MessageType::Discover,
        mac(2),
        "HTTPClient:Arch:00016",
        16,
    ));
    let m = &out.reply.unwrap().msg;
    assert_eq!(
        m.fname_str().unwrap().unwrap(),
        "http://10.99.0.1:8080/ipxe.efi"
    );
    assert_eq!(
        opt(m, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    // No arm64 HTTP URL configured: no boot answer.
    assert!(
        lab.ask(&pxe(MessageType::Discover, mac(3), "HTTPClient", 19))
            .pxe
            .is_none()
    );
}

#[test]
fn default_ipxed_is_the_server_id_on_8080() {
    let mut lab = Lab::new("reservation");
    lab.cfg.ipxed = None;
    let mut d = msg(MessageType::Discover, mac(1));
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let m = lab.ask(&d).reply.unwrap().msg;
    assert_eq!(
        m.fname_str().unwrap().unwrap(),
        "http://10.99.0.1:8080/boot/${mac}?platform=${platform}"
    );
}

#[test]
fn proxy_answers_known_pxe_clients_only_and_never_leases() {
    let mut lab = Lab::new("proxy");
    let known = Known {
        machine_id: Some(Uuid::nil()),
    };
    let d = pxe(MessageType::Discover, mac(1), "PXEClient:Arch:00000", 0);
    assert!(lab.ask(&d).reply.is_none(), "unknown machine");
    let plain = msg(MessageType::Discover, mac(1));
    assert!(
        lab.ask_at(&plain, arrival(), known).reply.is_none(),
        "not a PXE client"
    );
    let out = lab.ask_at(&d, arrival(), known);
    assert!(out.write.is_none());
    let r = out.reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&r.msg, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&r.msg, OptionCode::SubnetMask).is_none());
    assert_eq!(r.msg.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert_eq!(out.pxe.unwrap().machine_id, Some(MachineId(Uuid::nil())));
    // Boot server on 4011: REQUEST → ACK, unicast back to the sender.
    let mut r4011 = pxe(MessageType::Request, mac(1), "PXEClient:Arch:00007", 7);
    r4011.set_ciaddr(Ipv4Addr::new(10, 99, 0, 150));
    let a = Arrival {
        port: Port::Pxe,
        source: SocketAddrV4::new([10, 99, 0, 150].into(), 4011),
        ..arrival()
    };
    let out = lab.ask_at(&r4011, a, known);
    let r = out.reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.dest, a.source);
    assert_eq!(r.msg.ciaddr(), Ipv4Addr::new(10, 99, 0, 150));
    assert_eq!(r.msg.fname_str().unwrap().unwrap(), "ipxe.efi");
    // A REQUEST on 67 belongs to the address server, even when it shares our address (the
    // same host): ProxyDHCP answers REQUESTs on 4011 only.
    for sid in [Ipv4Addr::new(10, 99, 0, 254), SERVER] {
        let mut other = pxe(MessageType::Request, mac(1), "PXEClient", 0);
        other.opts_mut().insert(DhcpOption::ServerIdentifier(sid));
        other
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 99, 0, 150].into()));
        assert!(
            lab.ask_at(&other, arrival(), known).reply.is_none(),
            "{sid}"
        );
    }
    assert!(lab.leases.is_empty());
}

/// What iPXE's `dhcp.c` needs to take an offer as ProxyDHCP, and then an ACK from 4011.
#[test]
fn proxy_answers_to_ipxe_carry_pxeclient_and_leave_through_the_arrival_interface() {
    let mut lab = Lab::new("proxy");
    let known = Known {
        machine_id: Some(Uuid::nil()),
    };
    let mut d = pxe(
        MessageType::Discover,
        mac(1),
        "PXEClient:Arch:00000:UNDI:002001",
        0,
    );
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let out = lab.ask_at(&d, arrival(), known);
    assert_eq!(out.pxe.as_ref().unwrap().client, "ipxe");
    let r = out.reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        opt(&r.msg, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
        "iPXE ignores a ProxyDHCP offer without option 60 PXEClient"
    );
    assert_eq!(
        opt(&r.msg, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert!(
        opt(&r.msg, OptionCode::Unknown(175)).is_none(),
        "no-pxedhcp has no meaning in a ProxyDHCP offer"
    );
    assert_eq!(
        r.msg.siaddr(),
        SERVER,
        "iPXE takes a ProxyDHCP boot file only with a next-server"
    );
    assert_eq!(
        (r.dest, r.ifindex, r.source),
        (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), Some(7), SERVER)
    );
    // iPXE's ProxyDHCP REQUEST: unicast to 4011 from its new address, port 68.
    let mut q = d.clone();
    q.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    q.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    q.set_ciaddr(Ipv4Addr::new(10, 99, 0, 182));
    let a = Arrival {
        port: Port::Pxe,
        source: SocketAddrV4::new([10, 99, 0, 182].into(), 68),
        ..arrival()
    };
    let r = lab.ask_at(&q, a, known).reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((r.dest, r.ifindex, r.source), (a.source, Some(7), SERVER));
    assert_eq!(
        opt(&r.msg, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        opt(&r.msg, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        r.msg.fname_str().unwrap().unwrap(),
        "http://10.99.0.1:8081/boot/${mac}?platform=${platform}"
    );
    assert_eq!(r.msg.siaddr(), SERVER);
    // HTTP-boot clients keep HTTPClient.
    let h = pxe(MessageType::Discover, mac(2), "HTTPClient:Arch:00016", 16);
    let r = lab.ask_at(&h, arrival(), known).reply.unwrap();
    assert_eq!(
        opt(&r.msg, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert!(lab.leases.is_empty());
}

/// A datagram queued before `IP_PKTINFO` was enabled has no arrival interface: it is answered
/// from the configured server address (whose interface the kernel then uses, no route
/// needed), or gets silence without one (the client retransmits).
#[test]
fn unknown_arrival_interface_uses_the_server_address_or_is_silence() {
    let unknown = Arrival {
        ifindex: 0,
        local: Ipv4Addr::UNSPECIFIED,
        ..arrival()
    };
    let known = Known {
        machine_id: Some(Uuid::nil()),
    };
    for mode in ["reservation", "proxy", "autoproxy"] {
        let mut lab = Lab::new(mode);
        let d = pxe(MessageType::Discover, mac(1), "PXEClient", 0);
        let out = lab.ask_at(&d, unknown, known);
        assert!(out.reply.is_none() && out.silent.is_some(), "{mode}");
        assert!(lab.leases.is_empty(), "{mode}: nothing offered");
        lab.cfg.server_ip = Some(SERVER);
        let r = lab.ask_at(&d, unknown, known).reply.expect(mode);
        assert_eq!(
            (r.dest, r.ifindex, r.source),
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), None, SERVER),
            "{mode}"
        );
        assert_eq!(
            r.msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
    }
}

#[test]
fn autoproxy_answers_unknown_pxe_clients_too() {
    let mut lab = Lab::new("autoproxy");
    let out = lab.ask(&pxe(MessageType::Discover, mac(1), "PXEClient", 0));
    assert_eq!(out.pxe.unwrap().mode, "autoproxy");
    assert_eq!(out.reply.unwrap().msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(lab.ask(&msg(MessageType::Discover, mac(1))).reply.is_none());
}

#[test]
fn replies_encode_padded_and_round_trip() {
    let mut lab = Lab::new("reservation");
    let r = lab
        .ask(&pxe(MessageType::Discover, mac(1), "PXEClient", 0))
        .reply
        .unwrap();
    let bytes = wire::encode(&r.msg).unwrap();
    assert!(bytes.len() >= wire::BOOTP_MIN_LEN);
    let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    // dhcproto keeps the NUL terminator when decoding the file field.
    assert_eq!(
        back.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "undionly.kpxe"
    );
}

#[test]
fn no_subnet_for_the_interface_is_silence() {
    let mut lab = Lab::new("reservation");
    let a = Arrival {
        local: Ipv4Addr::new(192, 168, 5, 1),
        ..arrival()
    };
    assert!(
        lab.ask_at(&msg(MessageType::Discover, mac(1)), a, Known::default())
            .reply
            .is_none()
    );
}

#[test]
fn arch_names() {
    assert_eq!(arch_name(Some(0)), "bios");
    assert_eq!(arch_name(Some(9)), "uefi-x64");
    assert_eq!(arch_name(Some(11)), "uefi-arm64");
    assert_eq!(arch_name(Some(16)), "uefi-x64-http");
    assert_eq!(arch_name(Some(200)), "other");
    assert_eq!(arch_name(None), "unknown");
}

/// A lab whose /24 pool has 100 addresses, 20 new clients at once and 5 a second, offers
/// held 2 s: small enough that a flood left alone would fill the pool within a second.
fn flood_lab() -> Lab {
    let cfg = DhcpdConfig::validate(RawDhcpd {
        subnets: vec![RawSubnet {
            network: "10.99.0.0/24".into(),
            pool_start: Some("10.99.0.100".into()),
            pool_end: Some("10.99.0.199".into()),
            ..Default::default()
        }],
        reservations: vec![RawReservation {
            mac: "52:54:00:12:34:56".into(),
            ip: "10.99.0.10".into(),
        }],
        relays: vec!["10.98.0.1".into()],
        offer_hold: Some("2s".into()),
        new_clients_per_second: Some(5),
        new_clients_burst: Some(20),
        ..Default::default()
    })
    .unwrap();
    Lab {
        new_clients: NewClients::new(cfg.new_clients),
        cfg,
        leases: Leases::default(),
        now: 1_000_000,
    }
}

/// A MAC no one has seen: 0e:xx:… from a counter.
fn random_mac(n: u32) -> [u8; 6] {
    let [a, b, c, d] = n.to_be_bytes();
    [0x0e, 0x77, a, b, c, d]
}

#[test]
fn new_clients_beyond_the_burst_get_silence_known_ones_never_do() {
    let mut lab = flood_lab();
    let mut answered = 0;
    for n in 0..100 {
        let out = lab.ask(&msg(MessageType::Discover, random_mac(n)));
        if out.reply.is_some() {
            answered += 1;
        } else {
            assert_eq!(out.limited, Some(Link::Interface(7)));
        }
    }
    assert_eq!(answered, 20, "the burst");
    // The same instant: a reserved client, a machine the store knows, a client re-sending its
    // DISCOVER (it holds an offer) and its REQUEST are all answered.
    assert!(
        lab.ask(&msg(MessageType::Discover, RESERVED_MAC))
            .reply
            .is_some()
    );
    let known = Known {
        machine_id: Some(Uuid::nil()),
    };
    let out = lab.ask_at(
        &pxe(MessageType::Discover, mac(9), "PXEClient:Arch:00007", 7),
        arrival(),
        known,
    );
    assert_eq!(
        out.reply.unwrap().msg.fname_str().unwrap().unwrap(),
        "ipxe.efi"
    );
    let offer = lab
        .ask(&msg(MessageType::Discover, random_mac(0)))
        .reply
        .unwrap();
    let mut r = msg(MessageType::Request, random_mac(0));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
    assert_eq!(kind(&lab.ask(&r)), Some(MessageType::Ack));
    // A REQUEST from a stranger (no DISCOVER first) is a new client too.
    let mut bold = msg(MessageType::Request, random_mac(500));
    bold.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    bold.opts_mut()
        .insert(DhcpOption::RequestedIpAddress([10, 99, 0, 150].into()));
    assert_eq!(lab.ask(&bold).limited, Some(Link::Interface(7)));
    // Another interface and a listed relay have buckets of their own.
    let eth2 = Arrival {
        ifindex: 8,
        ..arrival()
    };
    assert!(
        lab.ask_at(
            &msg(MessageType::Discover, random_mac(600)),
            eth2,
            Known::default()
        )
        .reply
        .is_some()
    );
    // 200 ms later: one more token (5 a second).
    lab.now += 200;
    let admitted = (700..710)
        .filter(|n| {
            lab.ask(&msg(MessageType::Discover, random_mac(*n)))
                .limited
                .is_none()
        })
        .count();
    assert_eq!(admitted, 1);
}

/// A minute of random-MAC DISCOVERs, one every millisecond, never holds more than
/// `burst + per_second × offer_hold` addresses in offers; the pool never fills, and a client
/// on another interface is offered an address every second of it.
#[test]
fn a_random_mac_discover_flood_cannot_starve_the_pool() {
    let mut lab = flood_lab();
    let start = lab.now;
    let eth2 = Arrival {
        ifindex: 8,
        ..arrival()
    };
    let mut most = 0;
    for n in 0..60_000u32 {
        lab.now = start + i64::from(n);
        let _ = lab.ask(&msg(MessageType::Discover, random_mac(n)));
        most = most.max(lab.leases.offers(lab.now));
        if n % 1000 == 999 {
            let out = lab.ask_at(
                &msg(MessageType::Discover, random_mac(1_000_000 + n)),
                eth2,
                Known::default(),
            );
            assert!(out.reply.is_some(), "second {}: {:?}", n / 1000, out.silent);
        }
    }
    // 20 + 5 × 2 from the flood, plus the other interface's clients still on offer.
    assert!(most <= 20 + 5 * 2 + 2, "{most} offers held at once");
    // The flood's offers lapse: with it over, the whole pool is free again.
    lab.now += 2_000;
    assert_eq!(lab.leases.offers(lab.now), 0);
}

/// Random MACs completing DORA bind at most `burst + per_second × t` leases in `t` seconds:
/// the limit slows a full starvation attack down (only switch port security stops it), and
/// reserved clients keep their addresses whatever happens to the pool.
#[test]
fn a_random_mac_dora_flood_binds_at_the_limits_rate() {
    let mut lab = flood_lab();
    let start = lab.now;
    let mut bound = 0;
    for n in 0..10_000u32 {
        lab.now = start + i64::from(n);
        let m = random_mac(n);
        let Some(offer) = lab.ask(&msg(MessageType::Discover, m)).reply else {
            continue;
        };
        let mut r = msg(MessageType::Request, m);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
        if kind(&lab.ask(&r)) == Some(MessageType::Ack) {
            bound += 1;
        }
    }
    // 10 s: 20 at once, then 5 a second.
    assert!(
        (20..=20 + 5 * 10 + 1).contains(&bound),
        "{bound} leases bound"
    );
    assert_eq!(lab.dora(RESERVED_MAC), Ipv4Addr::new(10, 99, 0, 10));
}

/// Random DORA traffic (repeated MACs, lost REQUESTs, lapsing offers) against a model of the
/// store built from the writes policy returns: no OFFER or ACK ever names an address the store
/// holds, unexpired, for another MAC.
#[test]
fn offers_never_name_an_address_bound_to_another_client() {
    let mut lab = flood_lab();
    lab.new_clients = NewClients::new(crate::config::RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    });
    let mut store: std::collections::HashMap<Ipv4Addr, (MacAddr, i64)> = Default::default();
    let mut x: u32 = 12345;
    let mut rnd = |n: u32| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x % n
    };
    for step in 0..50_000 {
        lab.now += i64::from(rnd(3));
        let m = random_mac(rnd(400));
        let Some(offer) = lab.ask(&msg(MessageType::Discover, m)).reply else {
            continue;
        };
        let ip = offer.msg.yiaddr();
        if let Some((holder, until)) = store.get(&ip) {
            assert!(
                *holder == MacAddr::new(m) || *until <= lab.now,
                "step {step}: {ip} offered to {:?}, bound to {holder} until {until} (now {})",
                MacAddr::new(m),
                lab.now
            );
        }
        if rnd(4) == 0 {
            continue; // the REQUEST is lost
        }
        let mut r = msg(MessageType::Request, m);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let out = lab.ask(&r);
        if let Some(LeaseWrite::Bind {
            ip,
            mac,
            expires_at,
            ..
        }) = out.write
        {
            store.retain(|_, (holder, _)| *holder != mac);
            store.insert(ip, (mac, expires_at.as_millisecond()));
        }
        if rnd(1000) == 0 {
            lab.leases.sweep(lab.now);
        }
    }
}
