//! Reservations made through the store (as apid makes them) reach a running dhcpd without a
//! restart: the real binary, socket-activated with its DHCP socket inside the server
//! namespace while the process itself stays in the host's (so it reaches a real nats-server
//! on loopback), and busybox udhcpc as the client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_bus::events::ReservationChanged;
use dragonfly_bus::{Bus, ConnectOptions};
use dragonfly_store::testing::NewMachine;
use dragonfly_testkit::{
    NatsServer, chown_for_unprivileged, require_binary, require_nats_servers, require_root,
    unprivileged,
};

use crate::clients::{client_mac, script};
use crate::common::{TestDb, lease_of};
use crate::netns::NetPair;

const DHCPD: &str = env!("CARGO_BIN_EXE_dragonfly-dhcpd");

/// dhcpd behind `systemd-socket-activate --datagram` run in the server namespace; the daemon
/// is exec'd back into the test's network namespace by `nsenter`, keeping the passed socket.
/// It starts on the first datagram. Killed on drop.
struct Activated {
    child: Child,
    log: PathBuf,
}

impl Activated {
    fn start(net: &NetPair, db: &TestDb, nats_url: &str) -> Self {
        let dir = db.dir.path();
        let p = net.prefix;
        let cfg = dir.join("dragonfly.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = {path:?}\n[nats]\nurl = \"{nats_url}\"\n[log]\nlevel = \"info\"\n\
                 [dhcpd]\nmode = \"reservation\"\nlease_time = \"1h\"\npxe_listen = \"\"\n\
                 reconcile_period = \"1h\"\n\
                 [[dhcpd.subnets]]\nnetwork = \"{a}.{b}.{c}.0/24\"\npool_start = \"{a}.{b}.{c}.100\"\n\
                 pool_end = \"{a}.{b}.{c}.199\"\nrouter = \"{a}.{b}.{c}.1\"\n",
                path = db.path.display().to_string(),
                a = p[0],
                b = p[1],
                c = p[2],
            ),
        )
        .unwrap();
        chown_for_unprivileged(dir).unwrap();
        let log = dir.join("dhcpd-activated.log");
        let inner = unprivileged(DHCPD);
        let child = Command::new("ip")
            .args(["netns", "exec", &net.server_ns])
            .args([
                "systemd-socket-activate",
                "--datagram",
                "--listen=0.0.0.0:67",
                "--fdname=dhcp",
                "--",
                "nsenter",
                // Back into this test's own namespace (where nats-server listens).
                &format!("--net=/proc/{}/ns/net", std::process::id()),
                "--",
            ])
            .arg(inner.get_program())
            .args(inner.get_args())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        // systemd-socket-activate execs the daemon (no --accept), so this is dhcpd.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_reaches_a_running_dhcpd_on_its_hint() {
    if !require_root() || require_nats_servers().is_empty() {
        return;
    }
    let Some(busybox) = require_binary("busybox", "apt-get install busybox-static") else {
        return;
    };
    if require_binary("systemd-socket-activate", "apt-get install systemd").is_none()
        || require_binary("nsenter", "apt-get install util-linux").is_none()
    {
        return;
    }
    let nats = NatsServer::start().await.unwrap();
    let net = NetPair::new();
    let db = TestDb::new();
    let mac = client_mac(&net);
    let machine = db.machine(NewMachine::with_mac(mac)).await.id;
    let dhcpd = Activated::start(&net, &db, &nats.url());

    let events = db.dir.path().join("udhcpc.events");
    let s = script(
        db.dir.path(),
        &format!(
            "echo \"$1 $ip\" >> {ev}\n\
             [ \"$1\" = bound ] && ip addr flush dev $interface && ip addr add $ip/24 dev $interface\n\
             exit 0",
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
            "-t",
            "10",
            "-T",
            "1",
            "-s",
        ])
        .arg(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&events).unwrap_or_default();
    let waited = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nudhcpc: {}\ndhcpd: {}",
                read(),
                dhcpd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    tokio::task::block_in_place(|| waited("a pool lease", &|| read().contains("bound ")));
    let pool_ip = lease_of(&db, mac).await.expect("lease stored");
    assert!(
        net.ip(100) <= pool_ip && pool_ip <= net.ip(199),
        "{pool_ip}"
    );

    // dhcpd published its subnet at start, so the store accepts an address in it; an address
    // outside it is refused there already.
    let published = db.db.reservations().published().await.unwrap().unwrap();
    assert_eq!(published.mode, "reservation");
    assert!(
        db.db
            .reservations()
            .reserve(
                machine,
                mac,
                "192.0.2.9".parse().unwrap(),
                None,
                jiff::Timestamp::now()
            )
            .await
            .unwrap()
            .is_err()
    );
    let fixed = net.ip(50);
    db.db
        .reservations()
        .reserve(machine, mac, fixed, None, jiff::Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    let bus = Bus::connect(ConnectOptions::new(nats.url(), "test", None))
        .await
        .unwrap();
    bus.publish(&ReservationChanged {
        machine_id: machine,
        mac,
        ip: Some(fixed),
    })
    .await
    .unwrap();
    bus.flush().await.unwrap();
    // reconcile_period is an hour: only the hint explains a reload now.
    tokio::task::block_in_place(|| {
        waited("the reload", &|| {
            dhcpd
                .log_text()
                .contains("reservations changed: served from now on")
        });
    });
    // Renewal: the pool address is no longer this client's; it is refused and the client
    // starts over and is given its reserved address.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(udhcpc.id()).unwrap()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    tokio::task::block_in_place(|| {
        waited("the reserved address", &|| {
            read().contains(&format!("bound {fixed}"))
        });
    });
    assert_eq!(lease_of(&db, mac).await, Some(fixed));
    let _ = udhcpc.kill();
    let _ = udhcpc.wait();
    let log = dhcpd.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}
