//! The provisioning network is hostile: real floods against the real binary, while real
//! clients must still be served.
//!
//! Four floods at once, all from the client namespace: perfdhcp relaying DORA for random MACs
//! (a listed relay, so it is served within its limit), random-MAC DISCOVERs broadcast on the
//! segment, relayed REQUESTs with a spoofed giaddr or a spoofed relay, and garbage. During them a
//! reserved client (busybox udhcpc) must get its lease and a known PXE machine its boot
//! answer; afterwards the pool must not be exhausted and nothing spoofed may have been served.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, MessageType};
use dragonfly_core::MacAddr;
use dragonfly_testkit::{require_binary, require_root};

use crate::clients::{Daemon, client_mac, script};
use crate::common::{
    TestDb, broadcast, client_socket, encode, exchange, fname, message, pxe_discover,
};
use crate::netns::{NetPair, udp_in};

/// The limits under test: small, so that the floods below would exhaust the 231-address pool
/// within a second without them.
const PER_SECOND: usize = 10;
const BURST: usize = 30;

/// Sends `make(n)` to `to` from `socket`, about `rate` a second, until `stop`; counts sends.
fn flood(
    socket: UdpSocket,
    to: SocketAddrV4,
    rate: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    make: impl Fn(u32) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // Paced in bursts of 10 per (rate / 10)th of a second.
            for _ in 0..10 {
                let _ = socket.send_to(&make(n), to);
                n = n.wrapping_add(1);
            }
            sent.fetch_add(10, Ordering::Relaxed);
            let due = start + Duration::from_secs_f64(f64::from(n) / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
}

/// The `n`th malformed datagram: cycles through noise of every length up to 600 bytes, a
/// DISCOVER cut short, and a DISCOVER with option 152 split in two 4-byte fragments.
fn garbage(n: u32) -> Vec<u8> {
    let mut x = n.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_be_bytes()[0]
            })
            .collect()
    };
    let discover = encode(&message(
        MessageType::Discover,
        mac_from([0x0e, 0x6a], n),
        n | 0x8000_0000,
    ));
    match n % 3 {
        0 => noise(usize::try_from(n % 601).unwrap_or(0)),
        1 => discover[..usize::try_from(n).unwrap_or(0) % discover.len()].to_vec(),
        _ => {
            let mut b = discover[..discover.len() - 1].to_vec();
            b.extend_from_slice(&[152, 4, 0, 0, 0, 1, 152, 4, 0, 0, 0, 2, 255]);
            b
        }
    }
}

fn mac_from(prefix: [u8; 2], n: u32) -> MacAddr {
    let [a, b, c, d] = n.to_be_bytes();
    MacAddr::new([prefix[0], prefix[1], a, b, c, d])
}

fn leases(db: &TestDb) -> Vec<dragonfly_store::leases::Lease> {
    let store = dragonfly_store::BlockingDb::open(&db.path).unwrap();
    store.block_on(store.db().leases().all()).unwrap()
}

#[test]
fn random_macs_and_spoofed_relays_cannot_starve_the_pool_or_crowd_out_real_clients() {
    if !require_root() {
        return;
    }
    let Some(busybox) = require_binary("busybox", "apt-get install busybox-static") else {
        return;
    };
    if require_binary("perfdhcp", "apt-get install kea-admin").is_none() {
        return;
    }
    let net = NetPair::new();
    net.add_relay();
    let db = TestDb::new();
    let p = net.prefix;
    let reserved_mac = client_mac(&net);
    let pxe_mac = MacAddr::new([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);
    let store = dragonfly_store::BlockingDb::open(&db.path).unwrap();
    store.block_on(db.machine(dragonfly_store::testing::NewMachine::with_mac(pxe_mac)));
    let daemon = Daemon::start_with(
        &net,
        &db,
        &format!(
            "mode = \"reservation\"\nlease_time = \"1h\"\noffer_hold = \"2s\"\n\
             relays = [\"{client}\"]\n\
             new_clients_per_second = {PER_SECOND}\nnew_clients_burst = {BURST}\n\
             [[dhcpd.subnets]]\nnetwork = \"{a}.{b}.{c}.0/24\"\npool_start = \"{a}.{b}.{c}.20\"\n\
             pool_end = \"{a}.{b}.{c}.250\"\nrouter = \"{a}.{b}.{c}.1\"\n\
             [[dhcpd.subnets]]\nnetwork = \"{a}.{b}.{c1}.0/24\"\npool_start = \"{a}.{b}.{c1}.50\"\n\
             pool_end = \"{a}.{b}.{c1}.60\"\n\
             [[dhcpd.reservations]]\nmac = \"{reserved_mac}\"\nip = \"{a}.{b}.{c}.10\"\n",
            client = net.client_ip(),
            a = p[0],
            b = p[1],
            c = p[2],
            c1 = p[2] + 1,
        ),
    );
    let server67 = SocketAddrV4::new(net.server_ip(), 67);
    let cpu_before = daemon.cpu_time();
    let started = Instant::now();

    // 1. perfdhcp: DORA for random MACs at 1 000/s, relayed from the client's address (a
    //    listed relay).
    let mut perfdhcp = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &net.client_ns, "perfdhcp"])
        .args([
            "-r",
            "1000",
            "-R",
            "1000000",
            "-p",
            "40",
            "-l",
            &net.client_if,
        ])
        .arg(net.server_ip().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = Vec::new();
    let sent = Arc::new(AtomicU64::new(0));
    // 2. Random-MAC DISCOVERs broadcast on the segment, 2 000/s.
    let bcast = udp_in(
        &net.client_ns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        Some(&net.client_if),
    );
    floods.push(flood(
        bcast,
        broadcast(),
        2000,
        stop.clone(),
        sent.clone(),
        |n| {
            // xids with the top bit set never match the real clients' below.
            encode(&message(
                MessageType::Discover,
                mac_from([0x0e, 0xd1], n),
                n | 0x8000_0000,
            ))
        },
    ));
    // 3. Relayed REQUESTs that would bind an address if served: giaddr an unlisted relay (sent
    //    from it), and giaddr the listed relay sent from an unlisted address.
    let server = net.server_ip();
    let request = move |giaddr: Ipv4Addr, prefix: [u8; 2], want: Ipv4Addr| {
        move |n: u32| {
            let mut m = message(MessageType::Request, mac_from(prefix, n), n | 0x8000_0000);
            m.set_giaddr(giaddr).set_hops(1);
            m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(want));
            encode(&m)
        }
    };
    let relay_sock = udp_in(&net.client_ns, SocketAddrV4::new(net.relay_ip(), 67), None);
    relay_sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let relay_net_ip = Ipv4Addr::new(p[0], p[1], p[2] + 1, 55);
    floods.push(flood(
        relay_sock.try_clone().unwrap(),
        server67,
        500,
        stop.clone(),
        sent.clone(),
        request(net.relay_ip(), [0x0e, 0x5a], relay_net_ip),
    ));
    floods.push(flood(
        udp_in(&net.client_ns, SocketAddrV4::new(net.relay_ip(), 0), None),
        server67,
        500,
        stop.clone(),
        sent.clone(),
        request(net.client_ip(), [0x0e, 0x5b], net.ip(240)),
    ));
    // 4. Garbage: random bytes, truncated requests, and the split option 152 that once
    //    panicked dhcproto, 1 000/s.
    floods.push(flood(
        udp_in(&net.client_ns, SocketAddrV4::new(net.client_ip(), 0), None),
        server67,
        1000,
        stop.clone(),
        sent.clone(),
        garbage,
    ));
    // Long enough for every bucket to be empty and the first offers to have lapsed.
    std::thread::sleep(Duration::from_secs(3));

    // During the floods: the reserved client gets its lease...
    let events = db.dir.path().join("udhcpc.events");
    let s = script(
        db.dir.path(),
        &format!("echo \"$1 $ip\" >> {}\nexit 0", events.display()),
    );
    let udhcpc = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &net.client_ns])
        .arg(&busybox)
        .args([
            "udhcpc",
            "-i",
            &net.client_if,
            "-f",
            "-n",
            "-q",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
        ])
        .arg(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(udhcpc.success(), "udhcpc: {udhcpc:?}; events: {text}");
    assert!(text.contains(&format!("bound {}", net.ip(10))), "{text}");
    // ... and a machine the store knows gets its boot answer and an address.
    let c = client_socket(&net);
    let (offer, _) = exchange(
        &c,
        &pxe_discover(pxe_mac, "PXEClient:Arch:00007:UNDI:003016", 7),
        broadcast(),
    )
    .expect("the known PXE machine is answered during the flood");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(fname(&offer), "ipxe.efi");
    assert_ne!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    let answered_after = started.elapsed();
    assert!(
        perfdhcp.try_wait().unwrap().is_none() && !stop.load(Ordering::Relaxed),
        "the floods ended before the clients were answered"
    );
    // Nothing answered the spoofed relay.
    let mut buf = [0u8; 1500];
    let mut spoof_replies = 0;
    while relay_sock.recv_from(&mut buf).is_ok() {
        spoof_replies += 1;
    }

    // Stop the floods after 6 s at least.
    if let Some(rest) = Duration::from_secs(6).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(perfdhcp.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = perfdhcp.wait_with_output().unwrap();
    let flood_time = started.elapsed();
    let cpu = daemon.cpu_time().saturating_sub(cpu_before);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();

    // Bounded pool use: perfdhcp's random MACs bound at most the burst plus the rate for the
    // time it ran (plus one second of slack), the broadcast flood's offers lapsed.
    let all = leases(&db);
    let flooded = all
        .iter()
        .filter(|l| l.mac.is_some_and(|m| m != reserved_mac && m != pxe_mac))
        .count();
    let bound = BURST + PER_SECOND * (flood_time.as_secs() as usize + 1);
    let perfdhcp_sent = report
        .lines()
        .find_map(|l| l.strip_prefix("sent packets: "))
        .unwrap_or("?");
    eprintln!(
        "flood: {:.1} s; perfdhcp sent {perfdhcp_sent} DISCOVERs, {} datagrams from the other floods; \
         {flooded} random-MAC leases bound (limit {bound}); {spoof_replies} replies to the spoofed relay; \
         real clients answered after {:.1} s; daemon CPU {:.2} s",
        flood_time.as_secs_f64(),
        sent.load(Ordering::Relaxed),
        answered_after.as_secs_f64(),
        cpu.as_secs_f64(),
    );
    assert!(
        flooded <= bound,
        "{flooded} random-MAC leases, limit {bound}"
    );
    assert!(
        flooded >= BURST,
        "perfdhcp was served within its limit: {flooded} leases\n{report}"
    );
    assert_eq!(spoof_replies, 0, "answers reached the unlisted relay");
    let spoofed: Vec<_> = all
        .iter()
        .filter(|l| {
            l.mac
                .is_some_and(|m| matches!(m.octets(), [0x0e, 0x5a | 0x5b, ..]))
        })
        .collect();
    assert!(
        spoofed.is_empty(),
        "spoofed relays were served: {spoofed:?}"
    );
    // The pool was never exhausted: once the burst has refilled, a new client is offered an
    // address.
    std::thread::sleep(Duration::from_millis(1000 / PER_SECOND as u64 * 2));
    let fresh = message(MessageType::Discover, mac_from([0x02, 0x99], 1), 0x4242);
    let (offer, _) = exchange(&c, &fresh, broadcast()).expect("a new client after the floods");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert!(
        daemon.log_text().contains("dropped malformed packet"),
        "the garbage arrived: {}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("new clients over the limit"),
        "the limit is logged: {}",
        daemon.log_text()
    );
}
