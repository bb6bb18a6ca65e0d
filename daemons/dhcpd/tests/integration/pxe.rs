//! Crafted DHCP packets against `run` in a namespace pair: boot answers in every mode, relays,
//! INIT-REBOOT.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, MessageType, OptionCode, UnknownOption, relay};

use dragonfly_core::MacAddr;
use dragonfly_store::boot::{SightedVia, Sighting};
use dragonfly_store::testing::NewMachine;

use crate::common::*;
use crate::netns::{NetPair, udp_in};

fn setup() -> Option<(NetPair, TestDb)> {
    if !dragonfly_testkit::require_root() {
        return None;
    }
    Some((NetPair::new(), TestDb::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_mode_leases_and_answers_firmware_ipxe_and_http_clients() {
    let Some((net, db)) = setup() else { return };
    let server = InProcess::start(&net, &db, raw_config(&net, "reservation"));
    let c = client_socket(&net);

    let (r, len) = exchange_async(
        &c,
        &pxe_discover(mac(1), "PXEClient:Arch:00000:UNDI:002001", 0),
        broadcast(),
    )
    .await
    .expect("an offer");
    assert!(len >= 300, "padded to the BOOTP minimum, got {len}");
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        r.yiaddr(),
        net.ip(10),
        "mac(1) has a reservation in raw_config"
    );
    assert_eq!(fname(&r), "undionly.kpxe");
    assert_eq!(r.siaddr(), net.server_ip());
    let o = r.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(net.server_ip()))
    );
    assert_eq!(
        o.get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        o.get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert!(
        matches!(o.get(OptionCode::ClientMachineIdentifier), Some(DhcpOption::ClientMachineIdentifier(g)) if g.len() == 17)
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
    );

    let mut ipxe = pxe_discover(mac(2), "PXEClient:Arch:00007", 7);
    ipxe.opts_mut()
        .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (r, _) = exchange_async(&c, &ipxe, broadcast())
        .await
        .expect("an iPXE offer");
    assert_eq!(
        fname(&r),
        format!(
            "http://{}:8080/boot/${{mac}}?platform=${{platform}}",
            net.server_ip()
        )
    );
    assert_eq!(
        r.opts().get(OptionCode::Unknown(175)),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1]
        )))
    );

    let (r, _) = exchange_async(
        &c,
        &pxe_discover(mac(3), "HTTPClient:Arch:00016", 16),
        broadcast(),
    )
    .await
    .expect("an HTTP-boot offer");
    assert_eq!(
        fname(&r),
        format!("http://{}:8080/ipxe.efi", net.server_ip())
    );
    assert_eq!(
        r.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );

    let (r, _) = exchange_async(
        &c,
        &pxe_discover(mac(4), "PXEClient:Arch:00011", 11),
        broadcast(),
    )
    .await
    .unwrap();
    assert_eq!(fname(&r), "ipxe-arm64.efi");
    // Every boot answer was witnessed in the store before it was sent (ipxed mints tokens
    // only for sighted boots), with the address offered.
    let s = sighting(&db, mac(1)).await.expect("a sighting of mac(1)");
    assert_eq!(s.address, Some(net.ip(10)));
    assert_eq!(s.via, SightedVia::Reservation);
    for n in [2, 3, 4] {
        assert!(sighting(&db, mac(n)).await.is_some(), "mac({n})");
    }
    server.stop().await;
}

/// The boot sighting dhcpd recorded for `mac`, if any.
async fn sighting(db: &TestDb, mac: MacAddr) -> Option<Sighting> {
    db.db
        .boot()
        .mint_facts(mac, jiff::Timestamp::now())
        .await
        .unwrap()
        .sighting
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_answers_known_machines_only_on_67_and_4011() {
    let Some((net, db)) = setup() else { return };
    let server = InProcess::start(&net, &db, raw_config(&net, "proxy"));
    let c = client_socket(&net);
    let d = pxe_discover(mac(5), "PXEClient:Arch:00000", 0);
    assert!(
        exchange_async(&c, &d, broadcast()).await.is_none(),
        "unknown machine: silence"
    );
    db.machine(NewMachine::with_mac(mac(5))).await;
    let (r, len) = exchange_async(&c, &d, broadcast())
        .await
        .expect("a ProxyDHCP offer");
    assert!(len >= 300);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        r.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "proxy never hands out addresses"
    );
    assert_eq!(fname(&r), "undionly.kpxe");
    assert!(r.opts().get(OptionCode::AddressLeaseTime).is_none());
    // The boot server on 4011: REQUEST → ACK, unicast back.
    let b = udp_in(&net.client_ns, SocketAddrV4::new(net.client_ip(), 0), None);
    b.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut req = pxe_discover(mac(5), "PXEClient:Arch:00007", 7);
    req.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    req.set_ciaddr(net.client_ip());
    let to = SocketAddrV4::new(net.server_ip(), 4011);
    let (r, _, from) = tokio::task::spawn_blocking(move || exchange_from(&b, &req, to))
        .await
        .unwrap()
        .expect("an ACK from 4011");
    assert_eq!(from.port(), 4011, "answered from the boot server's port");
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(fname(&r), "ipxe.efi");
    assert!(lease_of(&db, mac(5)).await.is_none());
    let s = sighting(&db, mac(5)).await.expect("a sighting of mac(5)");
    assert_eq!(
        (s.address, s.via),
        (Some(net.client_ip()), SightedVia::Proxy),
        "the address the client asked 4011 from"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoproxy_mode_answers_unknown_pxe_clients_but_not_plain_dhcp() {
    let Some((net, db)) = setup() else { return };
    let server = InProcess::start(&net, &db, raw_config(&net, "autoproxy"));
    let c = client_socket(&net);
    let (r, _) = exchange_async(
        &c,
        &pxe_discover(mac(6), "PXEClient:Arch:00000", 0),
        broadcast(),
    )
    .await
    .expect("an offer");
    assert_eq!(
        (r.yiaddr(), fname(&r).as_str()),
        (Ipv4Addr::UNSPECIFIED, "undionly.kpxe")
    );
    let s = sighting(&db, mac(6)).await.expect("a sighting of mac(6)");
    // No address offered: the one it sent from (this test's client socket has one; firmware
    // asking from 0.0.0.0 is sighted without an address).
    assert_eq!(
        (s.address, s.via),
        (Some(net.client_ip()), SightedVia::Autoproxy)
    );
    assert!(
        exchange_async(&c, &message(MessageType::Discover, mac(7), 9), broadcast())
            .await
            .is_none()
    );
    assert!(
        sighting(&db, mac(7)).await.is_none(),
        "plain DHCP clients cost no sighting"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_request_is_answered_to_giaddr_port_67_from_the_relays_subnet() {
    let Some((net, db)) = setup() else { return };
    net.add_relay();
    let server = InProcess::start(&net, &db, raw_config(&net, "reservation"));
    let relay_sock = udp_in(&net.client_ns, SocketAddrV4::new(net.relay_ip(), 67), None);
    relay_sock
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut d = message(MessageType::Discover, mac(8), 77);
    d.set_giaddr(net.relay_ip()).set_hops(1);
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"eth7".to_vec()));
    d.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    let (r, _) = exchange_async(&relay_sock, &d, SocketAddrV4::new(net.server_ip(), 67))
        .await
        .expect("an offer to the relay");
    let relay_net = net.relay_ip().octets();
    assert_eq!(
        r.yiaddr(),
        Ipv4Addr::new(relay_net[0], relay_net[1], relay_net[2], 50)
    );
    assert_eq!(r.giaddr(), net.relay_ip());
    assert_eq!(
        r.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dora_is_stored_and_init_reboot_is_acked_or_naked() {
    let Some((net, db)) = setup() else { return };
    let server = InProcess::start(&net, &db, raw_config(&net, "reservation"));
    let c = client_socket(&net);
    let (offer, _) = exchange_async(&c, &message(MessageType::Discover, mac(9), 1), broadcast())
        .await
        .unwrap();
    let mut req = message(MessageType::Request, mac(9), 2);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(net.server_ip()));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let (ack, _) = exchange_async(&c, &req, broadcast()).await.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        lease_of(&db, mac(9)).await,
        Some(offer.yiaddr()),
        "the ACK came after the commit"
    );

    let reboot = |xid, ip: Ipv4Addr| {
        let mut r = message(MessageType::Request, mac(9), xid);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        r
    };
    let (nak, _) = exchange_async(&c, &reboot(3, net.ip(150)), broadcast())
        .await
        .expect("a NAK");
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    let (ok, _) = exchange_async(&c, &reboot(4, offer.yiaddr()), broadcast())
        .await
        .expect("an ACK");
    assert_eq!(ok.opts().msg_type(), Some(MessageType::Ack));
    let mut stranger = message(MessageType::Request, mac(10), 5);
    stranger
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(net.ip(150)));
    assert!(
        exchange_async(&c, &stranger, broadcast()).await.is_none(),
        "unknown client: silence"
    );
    // Garbage does not stop the server.
    let g = udp_in(&net.client_ns, SocketAddrV4::new(net.client_ip(), 0), None);
    for junk in [&b""[..], b"\x01\x01\x06", &[0xff; 400]] {
        g.send_to(junk, SocketAddrV4::new(net.server_ip(), 67))
            .unwrap();
    }
    assert!(
        exchange_async(&c, &reboot(6, offer.yiaddr()), broadcast())
            .await
            .is_some()
    );
    server.stop().await;
}
