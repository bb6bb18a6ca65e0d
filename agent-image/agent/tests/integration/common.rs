//! apid's router served in-process on `127.0.0.1:0`, as daemons/apid/tests/integration does,
//! but on its own runtime so the (blocking) agent can be called straight from a test.

use std::net::SocketAddr;
use std::sync::Mutex;

use dragonfly_apid::{ApidConfig, AppState, app};
use dragonfly_core::MacAddr;
use dragonfly_core::boot_token::{self, BootClaims};
use dragonfly_runtime::Secret;
use dragonfly_runtime::config::DaemonConfig;
use dragonfly_store::Db;
use dragonfly_store::testing::TestDb;

/// The boot-token key the test server uses.
pub const KEY: [u8; 32] = [0x5a; 32];

pub struct Server {
    pub base: String,
    /// The store; what agents shipped with `POST /api/agent/log` is in `db.console()`.
    pub db: Db,
    pub rt: tokio::runtime::Runtime,
    _store: TestDb,
}

impl Server {
    pub fn start() -> Self {
        let store = TestDb::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = ApidConfig::validate(dragonfly_apid::config::RawApid::default()).unwrap();
        let db = store.db.clone();
        let addr = rt.block_on(async {
            let state = AppState::new(
                db.clone(),
                store.auth_db(),
                None,
                dragonfly_bus::Publisher::disabled(),
                cfg,
                Secret::new(KEY.to_vec()),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app(state).into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
                .unwrap();
            });
            addr
        });
        Self {
            base: format!("http://{addr}"),
            db,
            rt,
            _store: store,
        }
    }

    pub fn machine_count(&self) -> u64 {
        self.rt.block_on(self.db.machines().count()).unwrap()
    }

    /// A boot token for `mac` whose boot session is open, as ipxed leaves it when it mints.
    pub fn token(&self, mac: MacAddr) -> String {
        let now = jiff::Timestamp::now();
        let end = now + jiff::SignedDuration::from_hours(2);
        self.rt
            .block_on(self.db.boot().open_session(mac, NONCE, now, end))
            .unwrap();
        mint(&KEY, mac)
    }
}

/// The nonce of [`mint`]'s tokens.
const NONCE: [u8; 16] = [7; 16];

/// A token for `mac` under `key` with its boot session opened in the database at `db` (a
/// fresh nonce: a new boot, which ends the MAC's previous one), as ipxed does.
pub fn session_token(db: &std::path::Path, key: &[u8], mac: MacAddr) -> String {
    let store = dragonfly_store::BlockingDb::open(db).unwrap();
    let now = jiff::Timestamp::now();
    let mut nonce = [0u8; 16];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_be_bytes();
    nonce.copy_from_slice(&nanos);
    let end = now + jiff::SignedDuration::from_hours(2);
    store
        .block_on(store.db().boot().open_session(mac, nonce, now, end))
        .unwrap();
    mint_with(key, mac, nonce)
}

/// A boot token for `mac` under `key`, valid for an hour (no session: see [`Server::token`]).
pub fn mint(key: &[u8], mac: MacAddr) -> String {
    mint_with(key, mac, NONCE)
}

fn mint_with(key: &[u8], mac: MacAddr, nonce: [u8; 16]) -> String {
    boot_token::mint(
        key,
        &BootClaims {
            mac,
            nonce,
            expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
        },
    )
    .unwrap()
}

/// A console that remembers what the agent said.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl dragonfly_agent::Console for Recorder {
    fn say(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}
