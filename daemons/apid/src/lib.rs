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
pub mod agent_logs;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod openapi;
pub mod registration;
pub mod routes;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;

use axum::Router;
use dragonfly_bus::{Bus, Publisher};
use dragonfly_core::boot_token::MIN_KEY_LEN;
use dragonfly_runtime::sockets::{SocketError, Sockets};
use dragonfly_runtime::{Context, CredentialSpec, CredentialsError, Daemon, Health, Secret};
use dragonfly_store::Db;
use tokio_util::sync::CancellationToken;

pub use config::ApidConfig;

/// The boot-token key's credential name (`LoadCredential=boot-token-key:…`).
pub const BOOT_TOKEN_KEY: &str = "boot-token-key";

/// apid, as the daemon frame runs it.
#[derive(Debug)]
pub struct Apid;

impl Daemon for Apid {
    const NAME: &'static str = "apid";
    const ABOUT: &'static str = "Dragonfly HTTP API and web UI";
    // Handlers are axum's loop; what they all need is the store, checked through their pool.
    const HEALTH: Health = Health::StoreAnswers;
    type Config = ApidConfig;
    type Sockets = StdTcpListener;
    type Store = Db;
    type Error = ApidError;

    fn sockets(config: &ApidConfig, passed: &mut Sockets) -> Result<StdTcpListener, SocketError> {
        passed.tcp_or_bind("http", config.listen.addr)
    }

    fn credentials(config: &ApidConfig) -> Vec<CredentialSpec> {
        vec![CredentialSpec {
            name: BOOT_TOKEN_KEY,
            fallback: config.boot_token_key_file.clone(),
            min_len: MIN_KEY_LEN,
        }]
    }

    async fn run(
        ctx: Context<Self>,
        listener: StdTcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ApidError> {
        run(ctx, listener, shutdown).await
    }
}

/// Why apid stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("the boot-token key")]
    Credentials(#[from] CredentialsError),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    /// For the health report only; `None` in tests that exercise the HTTP layer alone.
    pub bus: Option<Bus>,
    /// Where every change is announced, after it is stored.
    pub events: Publisher,
    pub config: Arc<ApidConfig>,
    pub boot_token_key: Arc<Secret>,
    pub login_limiter: Arc<auth::RateLimiter>,
    /// Agents' recent console lines.
    pub agent_logs: Arc<agent_logs::AgentLogs>,
    /// The rate at which agents may add machines.
    pub new_machines: Arc<registration::NewMachineLimiter>,
}

impl AppState {
    /// Builds the state; the caller has opened the store and, usually, the bus.
    pub fn new(
        db: Db,
        bus: Option<Bus>,
        events: Publisher,
        config: ApidConfig,
        boot_token_key: Secret,
    ) -> Self {
        let login_limiter = Arc::new(auth::RateLimiter::new(config.login_attempts_per_minute));
        let agent_logs = Arc::new(agent_logs::AgentLogs::new(config.agent_logs));
        let new_machines = Arc::new(registration::NewMachineLimiter::new(config.registration));
        Self {
            db,
            bus,
            events,
            config: Arc::new(config),
            boot_token_key: Arc::new(boot_token_key),
            login_limiter,
            agent_logs,
            new_machines,
        }
    }
}

/// The whole HTTP application, with authentication applied to every route.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then drains open requests.
pub async fn run(
    ctx: Context<Apid>,
    listener: StdTcpListener,
    shutdown: CancellationToken,
) -> Result<(), ApidError> {
    let key = Secret::new(ctx.credentials.get(BOOT_TOKEN_KEY)?.expose().to_vec());
    let state = AppState::new(ctx.store, ctx.bus, ctx.events, ctx.config, key);
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ApidError::Serve)?;
    let addr = listener.local_addr().map_err(ApidError::Serve)?;
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(%addr, "serving");
    dragonfly_runtime::notify::status(&format!("serving on {addr}"));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ApidError::Serve)
}
