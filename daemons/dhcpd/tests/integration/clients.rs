//! Real clients (busybox udhcpc, ISC dhclient, Kea's perfdhcp) against the real binary, run as
//! nobody in the server namespace (which lets unprivileged processes bind 67 and 4011).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_testkit::{chown_for_unprivileged, require_binary, require_root, unprivileged};

use dragonfly_store::BlockingDb;

use crate::common::{TestDb, lease_of_blocking};
use crate::netns::NetPair;

const DHCPD: &str = env!("CARGO_BIN_EXE_dragonfly-dhcpd");

/// The binary, killed on drop.
pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Reservation mode on `net`'s /24 with pool `.lo`–`.hi`; perfdhcp (which relays from the
    /// client's address) is a listed relay.
    fn start(net: &NetPair, db: &TestDb, pool: (u8, u8)) -> Self {
        let p = net.prefix;
        Self::start_with(
            net,
            db,
            &format!(
                "mode = \"reservation\"\nlease_time = \"1h\"\nrelays = [\"{client}\"]\n\
                 [[dhcpd.subnets]]\nnetwork = \"{a}.{b}.{c}.0/24\"\npool_start = \"{a}.{b}.{c}.{lo}\"\n\
                 pool_end = \"{a}.{b}.{c}.{hi}\"\nrouter = \"{a}.{b}.{c}.1\"\n",
                client = net.client_ip(),
                a = p[0],
                b = p[1],
                c = p[2],
                lo = pool.0,
                hi = pool.1,
            ),
        )
    }

    /// The binary as nobody in the server namespace, with `dhcpd` as its `[dhcpd]` section
    /// (and any `[[dhcpd.…]]` tables after it); returns once it serves.
    pub(crate) fn start_with(net: &NetPair, db: &TestDb, dhcpd: &str) -> Self {
        let dir = db.dir.path();
        let cfg = dir.join("dragonfly.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = {db:?}\n[nats]\nurl = \"nats://127.0.0.1:1\"\n[log]\nlevel = \"info\"\n\
                 [dhcpd]\n{dhcpd}",
                db = db.path.display().to_string(),
            ),
        )
        .unwrap();
        chown_for_unprivileged(dir).unwrap();
        let log = dir.join(format!("dhcpd-{}.log", Instant::now().elapsed().as_nanos()));
        let inner = unprivileged(DHCPD);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.server_ns])
            .arg(inner.get_program())
            .args(inner.get_args())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let d = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log_text().contains("serving") {
            assert!(
                Instant::now() < deadline,
                "dhcpd did not start: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// CPU time the daemon has used so far (`ip netns exec` and `setpriv` exec into it, so
    /// the child is the daemon).
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client_mac(net: &NetPair) -> MacAddr {
    let out = net.exec_c(&["cat", &format!("/sys/class/net/{}/address", net.client_if)]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub(crate) fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join(format!("script-{}.sh", body.len()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udhcpc_gets_renews_and_releases_a_lease() {
    if !require_root() {
        return;
    }
    let Some(busybox) = require_binary("busybox", "apt-get install busybox-static") else {
        return;
    };
    let net = NetPair::new();
    let db = TestDb::new();
    let _d = Daemon::start(&net, &db, (100, 199));
    let events = db.dir.path().join("udhcpc.events");
    let s = script(
        db.dir.path(),
        &format!(
            "echo \"$1 $ip\" >> {ev}\n[ \"$1\" = bound ] && ip addr add $ip/24 dev $interface\nexit 0",
            ev = events.display()
        ),
    );
    let mut udhcpc = Command::new("ip")
        .args(["netns", "exec", &net.client_ns])
        .arg(&busybox)
        .args([
            "udhcpc",
            "-i",
            &net.client_if,
            "-f",
            "-n",
            "-t",
            "3",
            "-R",
            "-s",
        ])
        .arg(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&events).unwrap_or_default();
    wait_for("udhcpc bound", || read().contains("bound "));
    let mac = client_mac(&net);
    let ip = lease_of_blocking(&db, mac).expect("lease stored");
    assert!(read().contains(&format!("bound {ip}")), "{}", read());
    // SIGUSR1: renew (unicast from the bound address).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(udhcpc.id()).unwrap()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_for("udhcpc renewed", || read().contains(&format!("renew {ip}")));
    // SIGTERM with -R: release on exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(udhcpc.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = udhcpc.wait();
    wait_for("lease released", || lease_of_blocking(&db, mac).is_none());
}

fn dhclient(net: &NetPair, dir: &Path, s: &Path, release: bool, tag: &str) -> std::process::Output {
    let lf = dir.join(format!("dhclient-{tag}.leases"));
    let pf = dir.join(format!("dhclient-{tag}.pid"));
    let mut cmd = Command::new("timeout");
    cmd.args([
        "30",
        "ip",
        "netns",
        "exec",
        &net.client_ns,
        "dhclient",
        "-1",
        "-v",
    ]);
    if release {
        cmd.arg("-r");
    }
    cmd.arg("-sf")
        .arg(s)
        .arg("-pf")
        .arg(&pf)
        .arg("-lf")
        .arg(&lf)
        .arg(&net.client_if);
    cmd.output().unwrap()
}

#[test]
fn dhclient_lease_survives_a_dhcpd_restart_and_is_released() {
    if !require_root() {
        return;
    }
    if require_binary("dhclient", "apt-get install isc-dhcp-client").is_none() {
        return;
    }
    let net = NetPair::new();
    let db = TestDb::new();
    let events = db.dir.path().join("dhclient.events");
    let s = script(
        db.dir.path(),
        &format!(
            "echo \"$reason $new_ip_address\" >> {}\nexit 0",
            events.display()
        ),
    );
    let mac = client_mac(&net);
    let first = {
        let _d = Daemon::start(&net, &db, (100, 199));
        let out = dhclient(&net, db.dir.path(), &s, false, "a");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lease_of_blocking(&db, mac).expect("lease stored")
    };
    // Fill the pool's start so a fresh allocation would differ, then restart dhcpd: the stored
    // lease must win.
    let _d = Daemon::start(&net, &db, (100, 199));
    let out = dhclient(&net, db.dir.path(), &s, false, "b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&events).unwrap();
    assert_eq!(text.matches(&format!("BOUND {first}")).count(), 2, "{text}");
    let out = dhclient(&net, db.dir.path(), &s, true, "b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("lease released", || lease_of_blocking(&db, mac).is_none());
}

#[test]
fn perfdhcp_dora_load_is_answered() {
    if !require_root() {
        return;
    }
    if require_binary("perfdhcp", "apt-get install kea-admin").is_none() {
        return;
    }
    let net = NetPair::new();
    let db = TestDb::new();
    let _d = Daemon::start(&net, &db, (20, 250));
    let server = net.server_ip().to_string();
    // perfdhcp acts as a relay: giaddr is its interface address, in our subnet.
    let out = Command::new("timeout")
        .args([
            "60",
            "ip",
            "netns",
            "exec",
            &net.client_ns,
            "perfdhcp",
            "-r",
            "200",
            "-n",
            "600",
            "-R",
            "200",
            "-p",
            "10",
            "-l",
        ])
        .arg(&net.client_if)
        .arg(&server)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        text.contains("sent packets: 600") || text.contains("sent packets:"),
        "{text}"
    );
    // perfdhcp exits 3 when anything at all was dropped; the last DISCOVER of a run (`-n`) is
    // often counted as dropped because perfdhcp stops before its OFFER arrives. Allow 1 %.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "perfdhcp: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ratios: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("drops ratio: "))
        .map(|r| r.trim_end_matches(" %").trim().parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), 2, "{text}");
    assert!(ratios.iter().all(|r| *r <= 1.0), "drop ratios {ratios:?}");
    let store = BlockingDb::open(&db.path).unwrap();
    let n = store.block_on(store.db().leases().all()).unwrap().len();
    assert!(n >= 150, "{n} leases stored");
}
