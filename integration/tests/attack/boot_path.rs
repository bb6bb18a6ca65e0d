//! The boot protocols attacked through the whole stack: what reaches dhcpd and tftpd from the
//! attacker's machine on the provisioning segment, while a known PXE machine and a TFTP
//! client keep being served.
//!
//! The daemons' own suites play each of these harder (`daemons/dhcpd/tests/integration/
//! flood.rs`, `daemons/tftpd/tests/integration/{storm,hostile}.rs`); here they run against the
//! deployed stack — socket-activated daemons as nobody, the shared store, the lab's bridge —
//! so a defence that only holds for the daemon alone (say, a limit the lab's configuration
//! does not pass through) shows up.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stack::{ATTACKER_ADDR, AttackLab};

/// The lab's server address (its bridge).
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// A machine the store knows: its PXE requests must be answered through every flood.
const KNOWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xbb, 0x00, 0x01];
/// New clients a second (and burst) dhcpd allows on the lab's segment in this test: small,
/// so the random-MAC flood below would exhaust the lab's 101-address pool in seconds
/// without the limit.
const NEW_CLIENTS: u32 = 5;

/// A BOOTP/DHCP request from `mac` with transaction `xid`, relayed through `giaddr` when set,
/// carrying `options` (each `(code, value)`, long values split RFC 3396-style by the caller).
fn dhcp(mac: [u8; 6], xid: u32, giaddr: Ipv4Addr, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![1u8, 1, 6, u8::from(!giaddr.is_unspecified())];
    p.extend_from_slice(&xid.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x80, 0]); // secs, flags: broadcast
    p.extend_from_slice(&[0; 12]); // ciaddr, yiaddr, siaddr
    p.extend_from_slice(&giaddr.octets());
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    p.extend_from_slice(&[99, 130, 83, 99]);
    for (code, value) in options {
        p.push(*code);
        p.push(u8::try_from(value.len()).unwrap());
        p.extend_from_slice(value);
    }
    p.push(255);
    p
}

/// A PXE DISCOVER, as BIOS PXE firmware sends it (class, architecture 0, client GUID).
fn pxe_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let guid = [0u8; 17];
    dhcp(
        mac,
        xid,
        Ipv4Addr::UNSPECIFIED,
        &[
            (53, &[1]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
            (93, &[0, 0]),
            (97, &guid),
        ],
    )
}

/// The `n`th datagram of the hostile mix: a plain DISCOVER from a fresh random-looking MAC,
/// the same relayed through the attacker's own address as giaddr (a relay nobody listed),
/// a DISCOVER whose option 152 is split in two 4-byte fragments (the RFC 3396 case that once
/// panicked dhcproto behind dhcpd's filter), and plain noise.
fn hostile(n: u32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let mac = [0x02, 0xaa, b[0], b[1], b[2], b[3]];
    match n % 4 {
        0 => dhcp(mac, n, Ipv4Addr::UNSPECIFIED, &[(53, &[1])]),
        1 => dhcp(mac, n, ATTACKER_ADDR.parse().unwrap(), &[(53, &[1])]),
        2 => dhcp(
            mac,
            n,
            Ipv4Addr::UNSPECIFIED,
            &[(53, &[1]), (152, &[1, 2, 3, 4]), (152, &[5, 6, 7, 8])],
        ),
        _ => b
            .iter()
            .cycle()
            .take(40 + (n as usize % 300))
            .copied()
            .collect(),
    }
}

/// The message type (option 53) and `yiaddr` of a server's answer, if it is one.
fn answer(p: &[u8]) -> Option<(u32, u8, Ipv4Addr)> {
    if p.len() < 240 || p[0] != 2 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut i = 240;
    while i + 1 < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(p[i + 1]);
        if p[i] == 53 && len == 1 {
            return Some((xid, *p.get(i + 2)?, yiaddr));
        }
        i += 2 + len;
    }
    None
}

#[test]
fn dhcp_floods_from_the_segment_are_bounded_and_a_known_pxe_machine_is_answered() {
    let Some(mut lab) = AttackLab::start_configured(|c| {
        if let Some(d) = c.dhcpd.as_mut() {
            d.new_clients = Some(NEW_CLIENTS);
        }
    }) else {
        return;
    };
    let known = KNOWN_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    lab.lab.register_machine(&known);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (offers, relayed, known_answers, probes) = lab.as_attacker(|| {
        // Answers to non-relayed requests are broadcast to :68; a relay gets them on :67, so
        // the attacker listens there too: a dhcpd that believed the forged giaddr would answer
        // the attacker's own address.
        let client = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).unwrap();
        client.set_broadcast(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let relay = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).unwrap();
        relay.set_nonblocking(true).unwrap();
        let to = SocketAddrV4::new(SERVER, 67);
        // The known machine is answered before the flood, which also starts dhcpd.
        let probe = |xid: u32| {
            client.send_to(&pxe_discover(KNOWN_MAC, xid), to).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                if let Ok((n, _)) = client.recv_from(&mut buf)
                    && answer(&buf[..n]).is_some_and(|(x, t, _)| x == xid && t == 2)
                {
                    return true;
                }
            }
            false
        };
        assert!(
            probe(0x0b00_0000),
            "the known PXE machine is answered before the flood"
        );

        let flooder = {
            let socket =
                UdpSocket::bind(SocketAddrV4::new(ATTACKER_ADDR.parse().unwrap(), 0)).unwrap();
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..20 {
                        let _ = socket.send_to(&hostile(n), to);
                        n += 1;
                    }
                    sent.fetch_add(20, Ordering::Relaxed);
                    // About 2 000 datagrams a second.
                    let due = start + Duration::from_millis(u64::from(n) / 2);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        // During 6 s of flood: the known machine asks every 0.5 s; every OFFER to a flooding
        // MAC is counted (each holds a pool address for the offer's hold).
        let mut offers = std::collections::HashSet::new();
        let mut known_answers = 0;
        let mut probes = 0;
        let mut relayed = 0;
        let mut buf = [0u8; 1500];
        let until = Instant::now() + Duration::from_secs(6);
        let mut next_probe = Instant::now();
        while Instant::now() < until {
            if Instant::now() >= next_probe {
                probes += 1;
                let xid = 0x0b00_0000 + probes;
                client.send_to(&pxe_discover(KNOWN_MAC, xid), to).unwrap();
                next_probe += Duration::from_millis(500);
            }
            if let Ok((n, _)) = client.recv_from(&mut buf)
                && let Some((xid, kind, yiaddr)) = answer(&buf[..n])
                && kind == 2
            {
                if xid >> 24 == 0x0b {
                    known_answers += 1;
                } else {
                    offers.insert(yiaddr);
                }
            }
            while relay.recv_from(&mut buf).is_ok() {
                relayed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        (offers.len(), relayed, known_answers, probes)
    });
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "DHCP flood: {sent} hostile datagrams in 6 s (random-MAC DISCOVERs, a forged giaddr, \
         split option 152, noise); {offers} addresses offered to flooding MACs (limit \
         {NEW_CLIENTS}/s, burst {NEW_CLIENTS}); {relayed} answers to the forged relay; the \
         known PXE machine answered {known_answers} of {probes} times"
    );
    assert!(sent > 5_000, "the flood ran ({sent})");
    assert_eq!(relayed, 0, "a forged giaddr is never served");
    // Burst plus the rate over the flood's 6 s, and slack for the probe's timing.
    let bound = usize::try_from(NEW_CLIENTS * 8).unwrap();
    assert!(
        offers <= bound,
        "{offers} addresses offered to a flood (bound {bound}): the pool is not protected"
    );
    assert!(
        known_answers + 1 >= probes,
        "the known machine was answered {known_answers} of {probes} times"
    );
    let logs = lab.lab.logs();
    assert!(!logs.contains("panicked"), "a daemon panicked:\n{logs}");
}

#[test]
fn a_trickle_of_unacknowledged_rrqs_does_not_lock_tftp_clients_out() {
    const RRQS: u32 = 300;
    let Some(lab) = AttackLab::start() else {
        return;
    };
    let file = "undionly.kpxe";
    let expected = std::fs::read(lab.lab.dir().join("tftp").join(file)).unwrap();
    let fetch = |tag: &str| {
        let out_path = lab.lab.dir().join(format!("fetched-{tag}"));
        let started = Instant::now();
        let status = lab.as_client(|| {
            std::process::Command::new("curl")
                .args(["--silent", "--max-time", "20", "-o"])
                .arg(&out_path)
                .arg(format!("tftp://{SERVER}/{file}"))
                .status()
                .unwrap()
        });
        let took = started.elapsed();
        assert!(status.success(), "curl {tag}: {status}");
        assert_eq!(
            std::fs::read(&out_path).unwrap(),
            expected,
            "{tag}: bytes differ"
        );
        took
    };
    let idle = fetch("idle");
    // The attacker asks for the file 300 times from 300 ports and never acknowledges a block
    // (an old tftpd gave such a host every slot and told real clients "busy" for 10 s).
    let answered = lab.as_attacker(|| {
        let mut sockets = Vec::new();
        let mut rrq = vec![0u8, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.push(0);
        rrq.extend_from_slice(b"octet\0");
        for _ in 0..RRQS {
            let s = UdpSocket::bind(SocketAddrV4::new(ATTACKER_ADDR.parse().unwrap(), 0)).unwrap();
            s.send_to(&rrq, SocketAddrV4::new(SERVER, 69)).unwrap();
            s.set_nonblocking(true).unwrap();
            sockets.push(s);
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut buf = [0u8; 1500];
        sockets
            .iter()
            .filter(|s| s.recv_from(&mut buf).is_ok())
            .count()
    });
    let during = fetch("during");
    println!(
        "TFTP trickle: {RRQS} never-acknowledged RRQs from one host, {answered} answered; a \
         client fetched {file} in {idle:?} before and {during:?} during"
    );
    assert!(
        answered < 16,
        "{answered} of {RRQS} unacknowledged requests got transfers: one host holds the slots"
    );
    assert!(
        during < Duration::from_secs(5),
        "the client waited {during:?} behind the trickle"
    );
}
