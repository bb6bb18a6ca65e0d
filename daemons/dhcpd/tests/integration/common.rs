//! Shared set-up: a migrated store, dhcpd's `run` in a server namespace, crafted packets.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use dragonfly_core::MacAddr;
use dragonfly_dhcpd::config::{RawDhcpd, RawReservation, RawSubnet};
use dragonfly_dhcpd::{Dhcpd, DhcpdConfig, Sockets};
use dragonfly_runtime::config::DaemonConfig;
use dragonfly_runtime::{Context, Credentials};
use dragonfly_store::BlockingDb;
use tokio_util::sync::CancellationToken;

use crate::netns::{NetPair, udp_in};

pub(crate) use dragonfly_store::testing::TestDb;

/// The address the store has leased to `mac`.
pub(crate) async fn lease_of(db: &TestDb, mac: MacAddr) -> Option<Ipv4Addr> {
    db.db.leases().get_by_mac(mac).await.unwrap().map(|l| l.ip)
}

/// [`lease_of`] for tests without a runtime.
pub(crate) fn lease_of_blocking(db: &TestDb, mac: MacAddr) -> Option<Ipv4Addr> {
    let store = BlockingDb::open(&db.path).unwrap();
    store.block_on(lease_of(db, mac))
}

/// The lab configuration for `net`: its /24 (pool .100–.199) and the relay's /24.
pub(crate) fn raw_config(net: &NetPair, mode: &str) -> RawDhcpd {
    let p = net.prefix;
    RawDhcpd {
        mode: Some(mode.into()),
        subnets: vec![
            RawSubnet {
                network: format!("{}.{}.{}.0/24", p[0], p[1], p[2]),
                pool_start: Some(net.ip(100).to_string()),
                pool_end: Some(net.ip(199).to_string()),
                router: Some(net.server_ip().to_string()),
                dns: vec![net.server_ip().to_string()],
                domain_name: Some("lab.test".into()),
                lease_time: Some("1h".into()),
            },
            RawSubnet {
                network: format!("{}.{}.{}.0/24", p[0], p[1], p[2] + 1),
                pool_start: Some(format!("{}.{}.{}.50", p[0], p[1], p[2] + 1)),
                pool_end: Some(format!("{}.{}.{}.60", p[0], p[1], p[2] + 1)),
                ..Default::default()
            },
        ],
        reservations: vec![RawReservation {
            mac: "52:54:00:99:00:01".into(),
            ip: net.ip(10).to_string(),
        }],
        http_boot_x64_url: Some(format!("http://{}:8080/ipxe.efi", net.server_ip())),
        relays: vec![net.relay_ip().to_string()],
        ..Default::default()
    }
}

/// dhcpd's `run`, in this process, on sockets created inside the server namespace.
pub(crate) struct InProcess {
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<Result<(), dragonfly_dhcpd::DhcpdError>>,
}

impl InProcess {
    pub(crate) fn start(net: &NetPair, db: &TestDb, raw: RawDhcpd) -> Self {
        let dhcpd = DhcpdConfig::validate(raw).unwrap();
        let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let sockets = Sockets {
            dhcp: udp_in(&net.server_ns, any(67), None),
            pxe: Some(udp_in(&net.server_ns, any(4011), None)),
        };
        let path = db.path.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let store = dragonfly_store::Db::open(&path)
                .await
                .expect("opening the test database");
            let ctx = Context::<Dhcpd>::new(dhcpd, store, None, Credentials::default());
            dragonfly_dhcpd::run(ctx, sockets, token).await
        });
        Self { shutdown, task }
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub(crate) fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0x00, 0x99, 0x00, n])
}

pub(crate) fn message(kind: MessageType, mac: MacAddr, xid: u32) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, z, z, z, z, &mac.octets());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

pub(crate) fn pxe_discover(mac: MacAddr, class: &str, arch: u16) -> Message {
    let mut m = message(MessageType::Discover, mac, 0x1234);
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    let mut guid = vec![0u8];
    guid.extend_from_slice(&[0xab; 16]);
    m.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(guid));
    m
}

/// A client socket on the client side: 0.0.0.0:68 on its veth.
pub(crate) fn client_socket(net: &NetPair) -> UdpSocket {
    let s = udp_in(
        &net.client_ns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        Some(&net.client_if),
    );
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

pub(crate) fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Sends `m` to `to` and returns the decoded reply with its length, or `None` when three
/// tries (each waiting the socket's read timeout) got none. Retrying as real clients do keeps a
/// packet lost while a fresh veth comes up from failing the test. Blocking: call from
/// `spawn_blocking`.
pub(crate) fn exchange(s: &UdpSocket, m: &Message, to: SocketAddrV4) -> Option<(Message, usize)> {
    exchange_from(s, m, to).map(|(reply, n, _)| (reply, n))
}

/// [`exchange`], also returning where the reply came from.
pub(crate) fn exchange_from(
    s: &UdpSocket,
    m: &Message,
    to: SocketAddrV4,
) -> Option<(Message, usize, std::net::SocketAddr)> {
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        s.send_to(&encode(m), to).unwrap();
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let reply = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
            if reply.xid() == m.xid() {
                return Some((reply, n, from));
            }
        }
    }
    None
}

pub(crate) async fn exchange_async(
    s: &UdpSocket,
    m: &Message,
    to: SocketAddrV4,
) -> Option<(Message, usize)> {
    let s = s.try_clone().unwrap();
    let m = m.clone();
    tokio::task::spawn_blocking(move || exchange(&s, &m, to))
        .await
        .unwrap()
}

pub(crate) fn broadcast() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)
}

pub(crate) fn fname(m: &Message) -> String {
    m.fname_str()
        .and_then(Result::ok)
        .unwrap_or_default()
        .trim_end_matches('\0')
        .to_owned()
}
