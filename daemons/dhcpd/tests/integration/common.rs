//! Shared set-up: a migrated store, dhcpd's `run` in a server namespace, crafted packets.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use dragonfly_core::{HardwareReport, MacAddr};
use dragonfly_dhcpd::config::{RawDhcpd, RawReservation, RawSubnet};
use dragonfly_dhcpd::{Config, DhcpdConfig, Sockets};
use dragonfly_runtime::config::DaemonConfig;
use tokio_util::sync::CancellationToken;

use crate::netns::{NetPair, udp_in};

pub(crate) struct TestDb {
    /// Holds the database; removed on drop.
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl TestDb {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dragonfly.db");
        let mut conn = dragonfly_store::open_connection(&path, true).unwrap();
        dragonfly_store::migrate(&mut conn).unwrap();
        Self { dir, path }
    }

    pub(crate) fn register(&self, mac: MacAddr) {
        let report = HardwareReport {
            macs: vec![mac],
            smbios_uuid: None,
            hostname: None,
            cpu: None,
            memory_bytes: None,
            disks: vec![],
            nics: vec![],
            bmc: None,
            ..Default::default()
        };
        let mut c = dragonfly_store::open_connection(&self.path, false).unwrap();
        dragonfly_store::machines::register(&mut c, &report, jiff::Timestamp::now()).unwrap();
    }

    pub(crate) fn lease_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        let c = dragonfly_store::open_connection(&self.path, false).unwrap();
        dragonfly_store::leases::get_by_mac(&c, mac)
            .unwrap()
            .map(|l| l.ip)
    }
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
        let config = Config {
            dhcpd,
            store_path: db.path.clone(),
            nats_url: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dragonfly_dhcpd::run(config, sockets, shutdown.clone()));
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
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        s.send_to(&encode(m), to).unwrap();
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            let reply = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
            if reply.xid() == m.xid() {
                return Some((reply, n));
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
