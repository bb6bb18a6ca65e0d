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
    pub db: Db,
    /// What agents shipped with `POST /api/agent/log`.
    pub agent_logs: std::sync::Arc<dragonfly_apid::routes::agent::AgentLogs>,
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
        let (addr, agent_logs) = rt.block_on(async {
            let state = AppState::new(
                db.clone(),
                store.auth_db(),
                None,
                dragonfly_bus::Publisher::disabled(),
                cfg,
                Secret::new(KEY.to_vec()),
            );
            let agent_logs = state.agent_logs.clone();
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
            (addr, agent_logs)
        });
        Self {
            base: format!("http://{addr}"),
            db,
            agent_logs,
            rt,
            _store: store,
        }
    }

    pub fn machine_count(&self) -> u64 {
        self.rt.block_on(self.db.machines().count()).unwrap()
    }
}

/// A boot token for `mac` under `key`, valid for an hour.
pub fn mint(key: &[u8], mac: MacAddr) -> String {
    boot_token::mint(
        key,
        &BootClaims {
            mac,
            nonce: [7; 16],
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
