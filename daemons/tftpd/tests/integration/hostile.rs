//! A hostile provisioning network, each case a real flood with a legitimate client served
//! during it: a host trickling requests it never acknowledges, garbage at the listening port,
//! and requests with a forged source (in namespaces: the only place a test may forge one),
//! where the bytes reflected at the victim are counted by nftables.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_testkit::{require_binary, require_root, unprivileged};
use dragonfly_tftpd::transfer::{FIRST_SENDS, FIRST_SENDS_SILENT};

use crate::binary::{TFTPD, write_config};
use crate::common::{Client, Server, Tree, config};
use crate::flood::{bare_rrq, garbage, pxe_rrq, trickle};
use crate::lossy::{NetnsPair, ip};

/// The defaults a test relies on (`[tftpd]` defaults).
const UNACKED_PER_CLIENT: usize = 4;
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Fetches `small.bin` with every installed real client; returns how many did (each
/// byte-identical).
async fn real_clients_fetch(tree: &Tree, server: SocketAddr, tag: &str) -> usize {
    let want = std::fs::read(tree.root.join("small.bin")).unwrap();
    let mut fetched = 0;
    for client in [Client::Curl, Client::TftpHpa] {
        if !client.available() {
            continue;
        }
        let out = tree.scratch.join(format!("{tag}-{client:?}"));
        assert!(
            client.fetch(server, "small.bin", &out).await,
            "{client:?} was not served during the {tag}"
        );
        assert!(std::fs::read(&out).unwrap() == want, "{client:?}: damaged");
        fetched += 1;
    }
    fetched
}

/// 300 requests from one host that never acknowledges (the old server gave them 256 slots for
/// 10 s and told everyone else "busy"): they hold at most `max_unacked_per_client` slots, get
/// at most three blocks each and no ERROR, and real clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_unacknowledged_requests_holds_a_few_slots_and_clients_are_served() {
    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root], |_| {}), None);
    let host = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let flood = tokio::spawn(trickle(
        host,
        server.addr,
        bare_rrq("small.bin"),
        300,
        Duration::from_millis(10),
        Duration::from_secs(2),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetched = real_clients_fetch(&tree, server.addr, "trickle").await;
    let arrivals = flood.await.unwrap();

    let mut per_tid: HashMap<SocketAddr, usize> = HashMap::new();
    for a in &arrivals {
        *per_tid.entry(a.from).or_default() += 1;
    }
    // No transfer of that host can end before `first_ack_timeout`: whatever answered before
    // it came from at most that many transfers at once.
    let early: HashSet<SocketAddr> = arrivals
        .iter()
        .filter(|a| a.at < FIRST_ACK_TIMEOUT)
        .map(|a| a.from)
        .collect();
    let bytes: usize = arrivals.iter().map(|a| a.len).sum();
    eprintln!(
        "300 unacknowledged requests in 3 s from one host: {} transfers answered ({} in the \
         first 3 s), {} datagrams, {bytes} bytes back; {fetched} real clients served meanwhile",
        per_tid.len(),
        early.len(),
        arrivals.len(),
    );
    assert!(!early.is_empty(), "the trickle was never answered at all");
    assert!(
        early.len() <= UNACKED_PER_CLIENT,
        "{} transfers at once",
        early.len()
    );
    assert!(
        arrivals.iter().all(|a| !a.error),
        "an ERROR went to the host"
    );
    assert!(
        per_tid.values().all(|&n| n <= usize::from(FIRST_SENDS)),
        "{per_tid:?}"
    );
    assert!(fetched > 0 || std::env::var_os("CI").is_none());
}

/// 20 000 datagrams of junk at the listening port while a real client fetches: none is
/// answered, the client is served, and so is the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_never_answered_and_clients_are_served_through_it() {
    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root], |_| {}), None);
    let flood = tokio::spawn(garbage(server.addr, 20_000, 42));
    let fetched = real_clients_fetch(&tree, server.addr, "garbage flood").await;
    let socket = flood.await.unwrap();
    let mut buf = [0u8; 2048];
    let answered = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .is_ok();
    assert!(!answered, "a garbage datagram was answered");
    let after = real_clients_fetch(&tree, server.addr, "aftermath").await;
    assert_eq!(fetched, after);
    eprintln!("20 000 garbage datagrams: none answered; {fetched} real clients served during");
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it creates stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// `(packets, bytes)` of each victim's nftables counter, in rule order: what reached the forged
/// sources.
fn reflected(ns: &str) -> Vec<(u64, u64)> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "table", "netdev", "victim",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let counters: Vec<(u64, u64)> = words
        .windows(4)
        .filter(|w| w[0] == "packets" && w[2] == "bytes")
        .map(|w| (w[1].parse().unwrap(), w[3].parse().unwrap()))
        .collect();
    assert_eq!(counters.len(), 2, "{text}");
    counters
}

/// IP + UDP headers: what a datagram costs on the wire beyond its payload.
const HEADERS: u64 = 28;

/// Requests whose source is forged to a victim that never answers (an address on the client
/// namespace's veth whose incoming UDP nftables counts and drops). One request is reflected at
/// most three times; once the victim is known to be silent, once; and a sustained flood at it
/// is reflected at a bounded rate, far below what it costs the attacker — while a real client
/// in the same namespace is served.
#[test]
fn a_forged_source_is_reflected_a_bounded_number_of_times() {
    if !require_root()
        || require_binary("nft", "apt-get install nftables").is_none()
        || require_binary("curl", "apt-get install curl").is_none()
    {
        return;
    }
    let tree = Tree::new();
    let cfg = write_config(&tree, "10.200.0.1:6969");
    let mut pair = NetnsPair::new(0);
    let server_addr: SocketAddr = "10.200.0.1:6969".parse().unwrap();
    let victim = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 3));
    // A second victim, for a request with options as PXE firmware sends it.
    let victim_pxe = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 4));
    let (_, vc) = pair.devices.clone();
    for address in ["10.200.0.3/24", "10.200.0.4/24"] {
        ip(&["-n", &pair.client, "addr", "add", address, "dev", &vc]);
    }
    let rules = format!(
        "table netdev victim {{\n chain in {{\n  type filter hook ingress device \"{vc}\" priority 0;\n  ip daddr 10.200.0.3 meta l4proto udp counter drop\n  ip daddr 10.200.0.4 meta l4proto udp counter drop\n }}\n}}\n"
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &pair.client, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());
    let mut server = unprivileged(TFTPD);
    server.arg("--config").arg(&cfg);
    pair.spawn(&pair.server.clone(), &server);
    assert!(
        pair.wait_udp_bound(&pair.server, 6969),
        "tftpd never bound 6969"
    );

    let rrq = bare_rrq("small.bin");
    let cost = rrq.len() as u64 + HEADERS;
    let attacker = |source: IpAddr, count: usize| {
        in_netns(&pair.client, move || {
            (0..count)
                .map(|_| std::net::UdpSocket::bind((source, 0)).unwrap())
                .collect::<Vec<_>>()
        })
    };

    // One forged request at each victim: bare, and with options.
    attacker(victim, 1)[0].send_to(&rrq, server_addr).unwrap();
    let pxe = pxe_rrq("small.bin");
    let pxe_cost = pxe.len() as u64 + HEADERS;
    attacker(victim_pxe, 1)[0]
        .send_to(&pxe, server_addr)
        .unwrap();
    std::thread::sleep(FIRST_ACK_TIMEOUT + Duration::from_secs(1));
    let [(p1, b1), (pp, bp)] = reflected(&pair.client)[..] else {
        unreachable!("two counters")
    };
    // The victim is now known as silent: the next one is answered once.
    attacker(victim, 1)[0].send_to(&rrq, server_addr).unwrap();
    std::thread::sleep(FIRST_ACK_TIMEOUT + Duration::from_secs(1));
    let (p2, b2) = reflected(&pair.client)[0];

    // A sustained flood at the victim, 200 requests a second for 5 s, while curl fetches from
    // the real client address.
    let flood = attacker(victim, 1000);
    let out = tree.scratch.join("during-flood");
    let mut curl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client,
            "curl",
            "-sS",
            "--max-time",
            "60",
        ])
        .args(["--tftp-blksize", "1468", "-o"])
        .arg(&out)
        .arg("tftp://10.200.0.1:6969/small.bin")
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    for (i, socket) in flood.iter().enumerate() {
        socket.send_to(&rrq, server_addr).unwrap();
        let next = t0 + Duration::from_millis(5) * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let served = curl.wait().unwrap().success();
    std::thread::sleep(FIRST_ACK_TIMEOUT + Duration::from_secs(1));
    let window = t0.elapsed();
    let (p3, b3) = reflected(&pair.client)[0];

    let ratio = |out: u64, requests: u64| out as f64 / (requests * cost) as f64;
    eprintln!(
        "forged {}-byte RRQ ({cost} on the wire): 1st reflected as {p1} datagrams, {b1} bytes \
         (x{:.1}); with PXE's options ({pxe_cost} on the wire) as {pp} OACKs, {bp} bytes \
         (x{:.1}); at a known-silent victim {} datagram(s), {} bytes (x{:.1}); 1000 in 5 s: {} \
         datagrams, {} bytes in {window:.1?} (x{:.2}); curl served during the flood: {served}",
        rrq.len(),
        ratio(b1, 1),
        bp as f64 / pxe_cost as f64,
        p2 - p1,
        b2 - b1,
        ratio(b2 - b1, 1),
        p3 - p2,
        b3 - b2,
        ratio(b3 - b2, 1000),
    );
    assert!(served, "curl was not served during the flood");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(tree.root.join("small.bin")).unwrap(),
        "curl's copy is damaged"
    );
    assert!((1..=u64::from(FIRST_SENDS)).contains(&p1), "{p1} datagrams");
    assert!((1..=u64::from(FIRST_SENDS)).contains(&pp), "{pp} OACKs");
    assert!(
        bp < u64::from(FIRST_SENDS) * pxe_cost,
        "OACKs larger than their request"
    );
    assert_eq!(p2 - p1, u64::from(FIRST_SENDS_SILENT));
    // At most `max_unacked_per_client` transfers at once, each living `first_ack_timeout` and
    // answering once (the victim is silent): a rate, whatever the attacker sends.
    let lifetimes = window.as_secs_f64() / FIRST_ACK_TIMEOUT.as_secs_f64();
    let bound = UNACKED_PER_CLIENT as u64 * (lifetimes.ceil() as u64 + 1);
    assert!(p3 - p2 <= bound, "{} datagrams, bound {bound}", p3 - p2);
    assert!(b3 - b2 < 1000 * cost, "the flood was amplified");
}
