//! Shared set-up: apid's router served on a loopback port over the store's `TestDb`, users.

use dragonfly_apid::{ApidConfig, AppState, app, auth};
use dragonfly_core::boot_token::{self, BootClaims};
use dragonfly_core::{HardwareReport, MacAddr};
use dragonfly_runtime::Secret;
use dragonfly_runtime::config::DaemonConfig;
pub(crate) use dragonfly_store::testing::TestDb;
use dragonfly_store::{AuthDb, Db};
use serde_json::{Value, json};

/// The boot-token key every test server uses.
pub(crate) const KEY: [u8; 32] = [0x5a; 32];

/// apid's router on `127.0.0.1:<ephemeral>`, without a bus.
pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) db: Db,
    /// apid's own database (operators, sessions, tokens).
    pub(crate) auth_db: AuthDb,
    pub(crate) store: TestDb,
    pub(crate) http: reqwest::Client,
    /// Cancelling it drains the server (as apid's shutdown does).
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

pub(crate) fn config(tweak: impl FnOnce(&mut dragonfly_apid::config::RawApid)) -> ApidConfig {
    let mut raw = dragonfly_apid::config::RawApid::default();
    tweak(&mut raw);
    ApidConfig::validate(raw).unwrap()
}

impl Server {
    pub(crate) async fn start() -> Self {
        Self::start_with(config(|_| {})).await
    }

    pub(crate) async fn start_with(cfg: ApidConfig) -> Self {
        Self::start_with_bus(cfg, None).await
    }

    /// apid with `bus` as its NATS connection (requests such as power commands go over it,
    /// and its events are published on it).
    pub(crate) async fn start_with_bus(cfg: ApidConfig, bus: Option<dragonfly_bus::Bus>) -> Self {
        Self::start_with_hub(cfg, bus, None).await
    }

    /// apid with `bus`, its event relay feeding `hub` (the default one when `None`) as `run`
    /// starts it.
    pub(crate) async fn start_with_hub(
        cfg: ApidConfig,
        bus: Option<dragonfly_bus::Bus>,
        hub: Option<dragonfly_apid::live::Hub>,
    ) -> Self {
        let store = TestDb::new();
        let db = store.db.clone();
        let auth_db = store.auth_db();
        let events = match &bus {
            // The sending task lives as long as the test's runtime.
            Some(bus) => dragonfly_bus::Publisher::start(bus, dragonfly_bus::DEFAULT_CAPACITY).0,
            None => dragonfly_bus::Publisher::disabled(),
        };
        let mut state = AppState::new(
            db.clone(),
            auth_db.clone(),
            bus,
            events,
            cfg,
            Secret::new(KEY.to_vec()),
        );
        if let Some(hub) = hub {
            state.live = std::sync::Arc::new(hub);
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Some(bus) = &state.bus {
            tokio::spawn(dragonfly_apid::live::relay(
                std::sync::Arc::clone(&state.live),
                bus.clone(),
                shutdown.clone(),
            ));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = state.config.http.clone();
        let server = dragonfly_http::Server::new("test", app(state), http, None);
        tokio::spawn(server.serve(listener, shutdown.clone()));
        let base = format!("http://{addr}");
        Self {
            http: browser(&base),
            base,
            db,
            auth_db,
            store,
            shutdown,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` as the operator of `cookie`; the body as JSON (whatever the status).
    pub(crate) async fn get_json(&self, path: &str, cookie: &str) -> Value {
        self.http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates an administrator directly in the store; returns (username, password).
    pub(crate) async fn add_admin(&self, name: &str) -> (String, String) {
        let password = format!("{name}-correct-horse");
        let hash = auth::hash_password(&password).unwrap();
        self.auth_db
            .auth()
            .create_user(name, &hash, true, jiff::Timestamp::now())
            .await
            .unwrap();
        (name.to_owned(), password)
    }

    /// Logs in and returns the `Cookie` header value.
    pub(crate) async fn login(&self, user: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login failed");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    /// An administrator's session cookie.
    pub(crate) async fn admin_cookie(&self) -> String {
        let (u, p) = self.add_admin("admin").await;
        self.login(&u, &p).await
    }

    pub(crate) async fn machine_count(&self) -> u64 {
        self.db.machines().count().await.unwrap()
    }
}

/// A client that sends `Origin: <base>` with every request, as a browser on apid's own page
/// does with every `fetch` that changes something: the CSRF check lets it through.
pub(crate) fn browser(base: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("origin", base.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

pub(crate) fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0x00, 0xaa, 0x00, n])
}

/// A plausible agent report for a machine with MACs `macs`.
pub(crate) fn report(macs: &[u8]) -> Value {
    json!({
        "macs": macs.iter().map(|n| mac(*n).to_string()).collect::<Vec<_>>(),
        "smbiosUuid": format!("{:08x}-0000-4000-8000-000000000000", u32::from(macs[0])),
        "cpu": {"model": "QEMU Virtual CPU", "cores": 2, "threads": 2},
        "memoryBytes": 2_147_483_648u64,
        "disks": [{"name": "vda", "serial": "disk-1", "sizeBytes": 10_737_418_240u64}],
        "nics": [{"name": "eth0", "mac": mac(macs[0]).to_string(), "driver": "virtio_net"}]
    })
}

/// A boot token for `mac`, valid for an hour, with its boot session open in `db` as ipxed
/// opens it when it mints (the same nonce each call: every token of a test is the same boot's).
pub(crate) async fn token_for(db: &Db, mac: MacAddr) -> String {
    let now = jiff::Timestamp::now();
    db.boot()
        .open_session(mac, NONCE, now, now + jiff::SignedDuration::from_hours(2))
        .await
        .unwrap();
    mint(&KEY, mac)
}

/// The nonce of every test token.
pub(crate) const NONCE: [u8; 16] = [7; 16];

pub(crate) fn mint(key: &[u8], mac: MacAddr) -> String {
    boot_token::mint(
        key,
        &BootClaims {
            mac,
            nonce: NONCE,
            expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
        },
    )
    .unwrap()
}

/// The report's parse check: every hardware report the tests send is valid.
#[test]
fn test_report_is_valid() {
    let r: HardwareReport = serde_json::from_value(report(&[1, 2])).unwrap();
    r.validate().unwrap();
}
