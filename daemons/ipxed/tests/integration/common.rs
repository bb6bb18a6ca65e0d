//! Shared set-up: a migrated database, an agent directory, ipxed's router on a loopback port,
//! machines in given states (the store's fixtures), and a syntax check for rendered scripts.

use std::path::PathBuf;

use dragonfly_core::{MacAddr, MachineId, MachineState};
use dragonfly_ipxed::config::RawIpxed;
use dragonfly_ipxed::{AppState, IpxedConfig};
use dragonfly_runtime::Secret;
use dragonfly_runtime::config::DaemonConfig;
use dragonfly_store::Db;
use dragonfly_store::testing::{self, NewMachine, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The boot-token key every test server uses.
pub(crate) const KEY: [u8; 32] = [0x5a; 32];

/// A migrated database and an agent directory in one temporary directory.
pub(crate) struct Fixture {
    /// The database; its directory holds the agent directory too.
    pub(crate) store: TestDb,
    pub(crate) db_path: PathBuf,
    pub(crate) agent_dir: PathBuf,
    /// The agent kernel's bytes (`vmlinuz`).
    pub(crate) kernel: Vec<u8>,
}

/// Deterministic, incompressible-looking bytes.
pub(crate) fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let store = TestDb::new();
        let db_path = store.path.clone();
        let agent_dir = store.dir.path().join("agent");
        std::fs::create_dir(&agent_dir).unwrap();
        let kernel = bytes(300_000, 1);
        std::fs::write(agent_dir.join("vmlinuz"), &kernel).unwrap();
        std::fs::write(agent_dir.join("initrd.img"), bytes(3 << 20, 2)).unwrap();
        Self {
            store,
            db_path,
            agent_dir,
            kernel,
        }
    }

    pub(crate) fn raw_config(&self) -> RawIpxed {
        RawIpxed {
            public_url: Some("http://10.99.0.1:8080".into()),
            apid_url: Some("http://10.99.0.1:3000".into()),
            agent_dir: Some(self.agent_dir.clone()),
            ..Default::default()
        }
    }
}

/// ipxed's router on `127.0.0.1:<ephemeral>`, without a bus unless given one.
pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) db: Db,
    pub(crate) fx: Fixture,
    pub(crate) http: reqwest::Client,
}

impl Server {
    pub(crate) async fn start() -> Self {
        Self::start_with(Fixture::new(), |_| {}, None).await
    }

    pub(crate) async fn start_with(
        fx: Fixture,
        tweak: impl FnOnce(&mut RawIpxed),
        bus: Option<dragonfly_bus::Bus>,
    ) -> Self {
        let mut raw = fx.raw_config();
        tweak(&mut raw);
        let cfg = IpxedConfig::validate(raw).unwrap();
        let db = fx.store.db.clone();
        let events = bus.map_or_else(dragonfly_bus::Publisher::disabled, |b| {
            dragonfly_bus::Publisher::start(&b, dragonfly_bus::DEFAULT_CAPACITY).0
        });
        let http = cfg.http.clone();
        let state = AppState::new(db.clone(), events, cfg, Secret::new(KEY.to_vec())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = dragonfly_ipxed::server(state, http, None);
        tokio::spawn(server.serve(listener, tokio_util::sync::CancellationToken::new()));
        Self {
            base: format!("http://{addr}"),
            db,
            fx,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`; returns (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

pub(crate) fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0x00, 0x12, 0x34, n])
}

/// Records that dhcpd answered `mac`'s network boot just now, offering it `address` (the
/// tests' client asks from 127.0.0.1), as dhcpd does before iPXE asks for its script.
pub(crate) async fn sight(db: &Db, mac: MacAddr, address: Option<std::net::Ipv4Addr>) {
    // Times are stored to the millisecond: a boot is sighted after the last session opened.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    db.boot()
        .sighted(dragonfly_store::boot::Sighting {
            mac,
            seen_at: jiff::Timestamp::now(),
            address,
            via: dragonfly_store::boot::SightedVia::Reservation,
        })
        .await
        .unwrap();
}

/// [`sight`] from the tests' own address.
pub(crate) async fn sight_here(db: &Db, mac: MacAddr) {
    sight(db, mac, Some(std::net::Ipv4Addr::LOCALHOST)).await;
}

/// Registers a machine with `mac`, as its agent would; returns its id.
pub(crate) async fn register(db: &Db, mac: MacAddr) -> Uuid {
    testing::machine(db, NewMachine::with_mac(mac)).await.id.0
}

/// Moves a machine to `state` in `workflow` through the lifecycle, as workflowd will.
pub(crate) async fn set_state(db: &Db, id: Uuid, state: MachineState, workflow: Option<Uuid>) {
    testing::set_state(db, MachineId(id), state, workflow).await;
}

/// The value of `key=` on the script's `kernel` line.
pub(crate) fn kernel_arg<'a>(script: &'a str, key: &str) -> Option<&'a str> {
    let line = script.lines().find(|l| l.starts_with("kernel "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// iPXE commands our scripts may use. A typo'd or unsupported command would stop a real boot.
const KNOWN: [&str; 9] = [
    "echo", "kernel", "initrd", "boot", "sleep", "goto", "exit", "sanboot", "imgfree",
];

/// A basic syntax check: `#!ipxe` first, then only comments, labels and known commands;
/// every `goto` names a label that exists; nothing handlebars left behind.
pub(crate) fn check_syntax(script: &str) {
    let mut lines = script.lines();
    assert_eq!(lines.next(), Some("#!ipxe"), "{script}");
    assert!(script.ends_with('\n'), "no final newline: {script}");
    assert!(!script.contains("{{") && !script.contains("}}"), "{script}");
    let labels: Vec<&str> = script.lines().filter_map(|l| l.strip_prefix(':')).collect();
    for line in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(label) = line.strip_prefix(':') {
            assert!(
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "bad label {line:?}"
            );
            continue;
        }
        assert!(!line.starts_with(' '), "indented line {line:?}");
        for command in line.split("||") {
            let command = command.trim();
            let word = command.split_whitespace().next().unwrap_or_default();
            assert!(
                KNOWN.contains(&word),
                "unknown command {word:?} in {line:?}"
            );
            if word == "goto" {
                let target = command.split_whitespace().nth(1).unwrap_or_default();
                assert!(
                    labels.contains(&target),
                    "goto to a missing label in {line:?}"
                );
            }
        }
    }
}

/// Sends `path` verbatim (no client-side normalisation) and returns the raw response.
pub(crate) async fn raw_get(base: &str, path: &str) -> String {
    let addr = base.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
