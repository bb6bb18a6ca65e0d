//! Slowloris: the attacker opens 2 000 connections to each HTTP listener (apid's operators'
//! and agents', ipxed) and sends half a request, a header line now and then, never the end.
//!
//! On main, 1 100 such connections from one host took both apid and ipxed offline (EMFILE)
//! until the host let go: hyper's header timeout had no timer, and every connection was
//! accepted. Now each listener keeps at most `max_connections_per_client` (64) from one address
//! and closes the rest as they arrive, cuts the ones it keeps at `header_timeout` however
//! steadily they trickle, and an operator and a booting machine are served meanwhile.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stack::AttackLab;

/// Connections the attacker opens to each listener.
const CONNECTIONS: usize = 2_000;
/// The daemons' header timeout in this test (the default is 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// `[apid.http]`/`[ipxed.http]` max_connections_per_client, the default.
const PER_CLIENT: usize = 64;
/// Slowest acceptable answer to a legitimate request during the attack.
const BOUND: Duration = Duration::from_secs(2);
/// A MAC the legitimate machine boots with.
const LEGIT_MAC: &str = "52:54:00:5a:10:01";

/// One attacked listener.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The half request: a request line and a first header, no blank line.
    start: &'static [u8],
}

fn targets() -> [Target; 3] {
    [
        Target {
            name: "apid operators (:3000)",
            addr: "10.99.0.1:3000".parse().unwrap(),
            start: b"POST /api/auth/login HTTP/1.1\r\nHost: 10.99.0.1\r\n",
        },
        Target {
            name: "apid agents (:3001)",
            addr: "10.99.0.1:3001".parse().unwrap(),
            start: b"GET /api/agent/instructions HTTP/1.1\r\nHost: 10.99.0.1\r\n",
        },
        Target {
            name: "ipxed (:8080)",
            addr: "10.99.0.1:8080".parse().unwrap(),
            start: b"GET /boot/52:54:00:66:66:66 HTTP/1.1\r\nHost: 10.99.0.1\r\n",
        },
    ]
}

/// What the attacker saw on one listener.
#[derive(Debug, Default)]
struct Seen {
    opened: usize,
    failed: usize,
    /// Still open 1.5 s after they were opened (the refused ones are closed at once).
    held_after_grace: usize,
    /// The longest a connection stayed open.
    longest: Duration,
    /// When the last one was closed, after the first was opened.
    cleared_after: Option<Duration>,
}

/// One attacker connection.
struct Slot {
    stream: TcpStream,
    opened: Instant,
    closed: Option<Instant>,
}

/// `true` once the server has closed `stream` (a read returns 0 or fails).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Opens [`CONNECTIONS`] to `target`, trickles a header line into each every second, and
/// watches them until all are closed or `give_up` passes.
fn attack(target: &Target, give_up: Duration, opened_all: &AtomicBool) -> Seen {
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut slots = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        match TcpStream::connect_timeout(&target.addr, Duration::from_secs(3)) {
            Ok(mut stream) => {
                let _ = stream.write_all(target.start);
                stream.set_nonblocking(true).unwrap();
                slots.push(Slot {
                    stream,
                    opened: Instant::now(),
                    closed: None,
                });
            }
            Err(_) => seen.failed += 1,
        }
    }
    seen.opened = slots.len();
    opened_all.store(true, Ordering::SeqCst);
    let mut counted_grace = false;
    let mut last_trickle = Instant::now();
    while started.elapsed() < give_up {
        let now = Instant::now();
        let trickle = now.duration_since(last_trickle) >= Duration::from_secs(1);
        for slot in slots.iter_mut().filter(|s| s.closed.is_none()) {
            if closed_by_server(&mut slot.stream) {
                slot.closed = Some(now);
            } else if trickle {
                // A header line a second: a per-read timeout would never fire.
                let _ = slot.stream.write_all(b"X-Slow: 1\r\n");
            }
        }
        if trickle {
            last_trickle = now;
        }
        let open = slots.iter().filter(|s| s.closed.is_none()).count();
        if !counted_grace
            && slots
                .last()
                .is_some_and(|s| now.duration_since(s.opened) >= Duration::from_millis(1500))
        {
            seen.held_after_grace = slots
                .iter()
                .filter(|s| {
                    s.closed
                        .is_none_or(|c| c.duration_since(s.opened) >= Duration::from_millis(1500))
                })
                .count();
            counted_grace = true;
        }
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for slot in &slots {
        let end = slot.closed.unwrap_or_else(Instant::now);
        seen.longest = seen.longest.max(end.duration_since(slot.opened));
    }
    if slots.iter().all(|s| s.closed.is_some()) {
        seen.cleared_after = slots
            .iter()
            .filter_map(|s| s.closed)
            .max()
            .map(|c| c.duration_since(started));
    }
    seen
}

/// The pid of `dragonfly-<name>` in the lab's network namespace.
fn daemon_pid(lab: &AttackLab, name: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/run/netns/{}", lab.lab.name()))
        .unwrap()
        .ino();
    let wanted = format!("net:[{ns}]");
    let comm_wanted = format!("dragonfly-{name}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
        if comm.trim() == comm_wanted && net.to_string_lossy() == wanted {
            return pid;
        }
    }
    panic!("no {comm_wanted} in {}", lab.lab.name());
}

/// Sockets `pid` holds: its listeners, the store's and NATS' and the attacker's it kept.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// One legitimate round: a machine fetches its boot script from ipxed, an operator logs in
/// to apid and lists the machines. Returns (boot, login and list) times.
fn legit_round(client: &reqwest::blocking::Client, lab: &AttackLab) -> (Duration, Duration) {
    let t = Instant::now();
    let boot = client
        .get(format!("{}/boot/{LEGIT_MAC}", lab.ipxed))
        .send()
        .unwrap();
    assert!(boot.status().is_success(), "boot script: {}", boot.status());
    let script = boot.text().unwrap();
    assert!(script.starts_with("#!ipxe"), "{script}");
    let boot_time = t.elapsed();

    let t = Instant::now();
    let login = client
        .post(format!("{}/api/auth/login", lab.apid))
        .json(&serde_json::json!({"username": crate::common::ADMIN, "password": crate::common::PASSWORD}))
        .send()
        .unwrap();
    assert!(login.status().is_success(), "login: {}", login.status());
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let list = client
        .get(format!("{}/api/machines", lab.apid))
        .header("cookie", cookie)
        .send()
        .unwrap();
    assert!(list.status().is_success(), "list: {}", list.status());
    (boot_time, t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn slowloris_is_cut_at_the_header_timeout_and_bounded_per_client() {
    let timeout = format!("{}s", HEADER_TIMEOUT.as_secs());
    let Some(lab) = AttackLab::start_configured(|c| {
        if let Some(apid) = &mut c.apid {
            apid.http.header_timeout = Some(timeout.clone());
        }
        if let Some(ipxed) = &mut c.ipxed {
            ipxed.http.header_timeout = Some(timeout.clone());
        }
    }) else {
        return;
    };
    let (apid_pid, ipxed_pid) = (daemon_pid(&lab, "apid"), daemon_pid(&lab, "ipxed"));
    let (apid_base, ipxed_base) = (sockets(apid_pid), sockets(ipxed_pid));
    let client = lab.as_client(|| {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    });

    // Idle: how long the legitimate requests take without an attack.
    let idle: Vec<_> = (0..2)
        .map(|_| lab.as_client(|| legit_round(&client, &lab)))
        .collect();

    let targets = targets();
    let opened_all: Vec<AtomicBool> = targets.iter().map(|_| AtomicBool::new(false)).collect();
    let give_up = HEADER_TIMEOUT * 3;
    let peak = Mutex::new((0usize, 0usize));
    let stop_sampling = AtomicBool::new(false);
    let (seen, during) = std::thread::scope(|s| {
        let attackers: Vec<_> = targets
            .iter()
            .zip(&opened_all)
            .map(|(target, opened)| s.spawn(|| lab.as_attacker(|| attack(target, give_up, opened))))
            .collect();
        // The daemons' side: the most sockets each holds while the attack lasts.
        let sampler = s.spawn(|| {
            while !stop_sampling.load(Ordering::SeqCst) {
                let mut p = peak.lock().unwrap();
                p.0 = p.0.max(sockets(apid_pid));
                p.1 = p.1.max(sockets(ipxed_pid));
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        while !opened_all.iter().all(|o| o.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // All 6 000 opened, and the kept ones still held: the legitimate clients now.
        let during: Vec<_> = (0..4)
            .map(|_| {
                let round = lab.as_client(|| legit_round(&client, &lab));
                std::thread::sleep(Duration::from_millis(300));
                round
            })
            .collect();
        let seen: Vec<Seen> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
        stop_sampling.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        (seen, during)
    });
    let (apid_peak, ipxed_peak) = *peak.lock().unwrap();

    let max = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
        v.iter().map(f).max().unwrap()
    };
    println!(
        "slowloris: {CONNECTIONS} half-sent requests to each of 3 listeners, header timeout {timeout}"
    );
    for (target, seen) in targets.iter().zip(&seen) {
        println!(
            "  {:<24} opened {:>4} (failed {:>3}), held past 1.5 s {:>3}, longest open {:>6.0} ms, \
             all closed after {}",
            target.name,
            seen.opened,
            seen.failed,
            seen.held_after_grace,
            ms(seen.longest),
            seen.cleared_after.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            ),
        );
    }
    println!(
        "  sockets held: apid {apid_base} idle → {apid_peak} at most; ipxed {ipxed_base} → {ipxed_peak}"
    );
    println!(
        "  legitimate: /boot/{{mac}} idle {:.0} ms, during {:.0} ms (worst); login + list idle \
         {:.0} ms, during {:.0} ms (worst)",
        ms(max(&idle, |r| r.0)),
        ms(max(&during, |r| r.0)),
        ms(max(&idle, |r| r.1)),
        ms(max(&during, |r| r.1)),
    );

    for (target, seen) in targets.iter().zip(&seen) {
        assert!(
            seen.opened > PER_CLIENT,
            "{}: the attack never got going",
            target.name
        );
        assert!(
            seen.held_after_grace <= PER_CLIENT,
            "{}: {} connections held, beyond the per-client cap",
            target.name,
            seen.held_after_grace
        );
        assert!(
            seen.held_after_grace > 0,
            "{}: nothing held: the header timeout is not what closed them",
            target.name
        );
        assert!(
            seen.longest <= HEADER_TIMEOUT + Duration::from_secs(2),
            "{}: a connection lived {:?}",
            target.name,
            seen.longest
        );
        assert!(
            seen.cleared_after.is_some(),
            "{}: never cleared",
            target.name
        );
    }
    // apid: two listeners' worth of kept connections; ipxed one. A little slack for the
    // legitimate client's own and for NATS reconnecting.
    assert!(
        apid_peak <= apid_base + 2 * PER_CLIENT + 8,
        "apid held {apid_peak} sockets"
    );
    assert!(
        ipxed_peak <= ipxed_base + PER_CLIENT + 8,
        "ipxed held {ipxed_peak} sockets"
    );
    for (boot, operator) in &during {
        assert!(
            *boot <= BOUND,
            "a boot script took {boot:?} during the attack"
        );
        assert!(
            *operator <= BOUND,
            "login and list took {operator:?} during the attack"
        );
    }
}
