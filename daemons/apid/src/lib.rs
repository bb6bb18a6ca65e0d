//! apid: Dragonfly's HTTP API and web UI.
//!
//! Serves the machine inventory (`/api/machines`, and the same data as Kubernetes-shaped
//! documents under `/apis/dragonfly.computer/v1`), operator authentication, and the agent's
//! registration endpoint. Every change is written to the store first and published on the bus
//! second: the store is the truth, and a lost event costs a subscriber nothing more than a
//! reconcile.
//!
//! [`run`] takes its listening socket and shutdown token from the caller (systemd or a test);
//! it never binds anything itself.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use dragonfly_bus::{Bus, Event};
use dragonfly_runtime::Secret;
use dragonfly_store::Db;
use tokio_util::sync::CancellationToken;

pub use config::ApidConfig;

/// Everything [`run`] needs.
#[derive(Debug)]
pub struct Config {
    pub apid: ApidConfig,
    /// The SQLite database (already migrated).
    pub store_path: std::path::PathBuf,
    pub nats_url: String,
    /// HMAC key for agents' boot tokens.
    pub boot_token_key: Secret,
}

/// Why apid stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("opening the store")]
    Store(#[from] dragonfly_store::StoreError),
    #[error("connecting to NATS")]
    Bus(#[from] dragonfly_bus::BusError),
    #[error(
        "the boot-token key is shorter than {} bytes",
        dragonfly_core::boot_token::MIN_KEY_LEN
    )]
    WeakBootTokenKey,
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    /// `None` only in tests that exercise the HTTP layer alone.
    pub bus: Option<Bus>,
    pub config: Arc<ApidConfig>,
    pub boot_token_key: Arc<Secret>,
    pub login_limiter: Arc<auth::RateLimiter>,
    /// Agents' recent console lines.
    pub agent_logs: Arc<routes::agent::AgentLogs>,
}

impl AppState {
    /// Builds the state; the caller has opened the store and, usually, the bus.
    pub fn new(db: Db, bus: Option<Bus>, config: ApidConfig, boot_token_key: Secret) -> Self {
        let login_limiter = Arc::new(auth::RateLimiter::new(config.login_attempts_per_minute));
        Self {
            db,
            bus,
            config: Arc::new(config),
            boot_token_key: Arc::new(boot_token_key),
            login_limiter,
            agent_logs: Arc::default(),
        }
    }

    /// Publishes an event after a store write. A failure is logged, not returned: the write
    /// already happened, and subscribers reconcile from the store.
    pub async fn publish<E: Event>(&self, event: &E) {
        if let Some(bus) = &self.bus
            && let Err(e) = bus.publish(event).await
        {
            tracing::warn!(subject = E::SUBJECT, error = %e, "event not published; subscribers will reconcile from the store");
        }
    }
}

/// The whole HTTP application, with authentication applied to every route.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// How often the store must answer for the watchdog to be fed.
const SELF_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` is cancelled, then drains open requests.
pub async fn run(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ApidError> {
    if config.boot_token_key.expose().len() < dragonfly_core::boot_token::MIN_KEY_LEN {
        return Err(ApidError::WeakBootTokenKey);
    }
    let db = Db::open(&config.store_path).await?;
    dragonfly_runtime::notify::status("connecting to NATS");
    let bus = Bus::connect(&config.nats_url, "dragonfly-apid", "/dragonfly/apid").await?;
    let state = AppState::new(db.clone(), Some(bus), config.apid, config.boot_token_key);
    // The drain grace (10 s) is shorter than the unit's WatchdogSec=, so the watchdog may
    // stop with the shutdown token.
    let checked = db.clone();
    dragonfly_runtime::notify::spawn_self_checked_watchdog(
        shutdown.clone(),
        SELF_CHECK_EVERY,
        move || {
            let db = checked.clone();
            async move { db.ping().await }
        },
    );
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ApidError::Serve)?;
    let addr = listener.local_addr().map_err(ApidError::Serve)?;
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(%addr, "serving");
    dragonfly_runtime::notify::ready();
    dragonfly_runtime::notify::status(&format!("serving on {addr}"));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ApidError::Serve)
}
