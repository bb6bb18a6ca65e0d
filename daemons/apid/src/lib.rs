//! apid: Dragonfly's HTTP API and web UI.
//!
//! Serves the machine inventory (`/api/machines`, and the same data as Kubernetes-shaped
//! documents under `/apis/dragonfly.computer/v1`), operator authentication, and the agent's
//! registration endpoint. Every change is written to the store first and published on the bus
//! second: the store is the truth, and a lost event costs a subscriber nothing more than a
//! reconcile.
//!
//! Two listeners, each its own socket unit: operators (`http`, port 3000: the web UI and the
//! whole API, optionally over TLS) and agents (`agent`, port 3001, on the provisioning
//! network: registration, instructions, console lines and health, nothing else; see
//! [`routes::Audience`]). Both are served by `dragonfly-http`, with its timeouts and caps.
//!
//! [`run`] takes its listening sockets and shutdown token from the caller (systemd or a test);
//! it never binds anything itself.
//!
//! The operators' listener also relays the bus to browsers and scripts (`GET /api/events`,
//! Server-Sent Events, [`live`]): one follower of every event, fanned out in-process.
//!
//! Operators' credentials live in apid's own database ([`dragonfly_store::AuthDb`],
//! `[apid] auth_db`), which `run` creates and migrates itself: no other process may open it.

pub mod admin;
pub mod agent_logs;
pub mod auth;
pub mod cli;
pub mod config;
pub mod csrf;
pub mod error;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod password;
pub mod registration;
pub mod routes;
pub mod throttle;

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;

use axum::Router;
use dragonfly_bus::{Bus, Publisher};
use dragonfly_core::boot_token::MIN_KEY_LEN;
use dragonfly_http::{Server, TLS_CERTIFICATE_CREDENTIAL, TLS_KEY_CREDENTIAL, Tls, TlsError};
use dragonfly_runtime::sockets::{SocketError, Sockets};
use dragonfly_runtime::{Context, CredentialSpec, CredentialsError, Daemon, Health, Secret};
use dragonfly_store::{AuthDb, Db, StoreError};
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
    type Sockets = Listeners;
    type Store = Db;
    type Error = ApidError;

    fn sockets(config: &ApidConfig, passed: &mut Sockets) -> Result<Listeners, SocketError> {
        Ok(Listeners {
            operator: passed.tcp_or_bind("http", config.listen.addr)?,
            agent: passed.tcp_or_bind("agent", config.agent_listen.addr)?,
        })
    }

    fn credentials(config: &ApidConfig) -> Vec<CredentialSpec> {
        let mut specs = vec![CredentialSpec {
            name: BOOT_TOKEN_KEY,
            fallback: config.boot_token_key_file.clone(),
            min_len: MIN_KEY_LEN,
        }];
        if let Some(tls) = &config.http.tls {
            specs.push(CredentialSpec {
                name: TLS_CERTIFICATE_CREDENTIAL,
                fallback: tls.certificate_file.clone(),
                min_len: 1,
            });
            specs.push(CredentialSpec {
                name: TLS_KEY_CREDENTIAL,
                fallback: tls.key_file.clone(),
                min_len: 1,
            });
        }
        specs
    }

    async fn run(
        ctx: Context<Self>,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<(), ApidError> {
        run(ctx, listeners, shutdown).await
    }
}

/// apid's two listening sockets (systemd's `http` and `agent`).
#[derive(Debug)]
pub struct Listeners {
    /// Operators: the web UI and the whole API (`[apid] listen`, port 3000).
    pub operator: StdTcpListener,
    /// Agents: only their routes (`[apid] agent_listen`, port 3001).
    pub agent: StdTcpListener,
}

/// Why apid stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("the boot-token key")]
    Credentials(#[from] CredentialsError),
    #[error("the TLS certificate and key")]
    Tls(#[from] TlsError),
    #[error("taking the listening socket")]
    Listener(#[source] std::io::Error),
    #[error("opening apid's credentials database")]
    AuthDb(#[source] StoreError),
    #[error("serving HTTP")]
    Serve(#[from] dragonfly_http::ServeError),
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    /// Operators, sessions and API tokens: apid's own file.
    pub auth_db: AuthDb,
    /// For the health report only; `None` in tests that exercise the HTTP layer alone.
    pub bus: Option<Bus>,
    /// Where every change is announced, after it is stored.
    pub events: Publisher,
    pub config: Arc<ApidConfig>,
    pub boot_token_key: Arc<Secret>,
    pub login_limiter: Arc<throttle::AddressLimiter>,
    /// Per-account backoff after failed passwords.
    pub account_throttle: Arc<throttle::AccountThrottle>,
    /// The bounded Argon2 workers every password check goes through.
    pub passwords: Arc<password::PasswordPool>,
    /// The rates that bound the agents' console lines (the lines themselves are in the store).
    pub agent_logs: Arc<agent_logs::AgentLogs>,
    /// The rate at which agents may add machines.
    pub new_machines: Arc<registration::NewMachineLimiter>,
    /// One image checksummed at a time (they read whole files).
    pub image_checks: Arc<tokio::sync::Semaphore>,
    /// The bus relayed to `/api/events`: numbering, the ring of recent events, the stream
    /// limit. Fed by [`live::relay`], which [`run`] starts.
    pub live: Arc<live::Hub>,
}

impl AppState {
    /// Builds the state; the caller has opened the store and, usually, the bus.
    pub fn new(
        db: Db,
        auth_db: AuthDb,
        bus: Option<Bus>,
        events: Publisher,
        config: ApidConfig,
        boot_token_key: Secret,
    ) -> Self {
        let login_limiter = Arc::new(throttle::AddressLimiter::new(
            config.login_attempts_per_minute,
        ));
        let agent_logs = Arc::new(agent_logs::AgentLogs::new(config.agent_logs));
        let new_machines = Arc::new(registration::NewMachineLimiter::new(config.registration));
        Self {
            db,
            auth_db,
            bus,
            events,
            config: Arc::new(config),
            boot_token_key: Arc::new(boot_token_key),
            login_limiter,
            account_throttle: Arc::new(throttle::AccountThrottle::default()),
            passwords: password::PasswordPool::for_this_host(),
            agent_logs,
            new_machines,
            image_checks: Arc::new(tokio::sync::Semaphore::new(1)),
            live: Arc::new(live::Hub::new(live::RING_CAPACITY, live::MAX_STREAMS)),
        }
    }
}

/// Every route on one router, with authentication applied to every route: for tests that
/// play operator and agent against one address. The daemon serves [`routes::router_for`]
/// each audience on its own listener.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Opens (creating and migrating when needed) apid's own database at `path`, and moves into
/// it, once, the credentials that earlier releases kept in the shared database at `shared`.
pub async fn open_auth_db(
    path: &std::path::Path,
    shared: &std::path::Path,
) -> Result<AuthDb, ApidError> {
    let auth_db = AuthDb::create_or_open(path)
        .await
        .map_err(ApidError::AuthDb)?;
    let imported = auth_db
        .import_from_shared(shared)
        .await
        .map_err(ApidError::AuthDb)?;
    if imported != dragonfly_store::auth::Imported::default() {
        tracing::info!(
            users = imported.users,
            sessions = imported.sessions,
            api_tokens = imported.api_tokens,
            purged_from_shared = imported.purged,
            auth_db = %path.display(),
            "moved operators' credentials out of the shared database"
        );
    }
    Ok(auth_db)
}

/// Serves operators and agents, each on its listener, until `shutdown` is cancelled, then
/// drains open requests on both.
pub async fn run(
    ctx: Context<Apid>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ApidError> {
    let key = Secret::new(ctx.credentials.get(BOOT_TOKEN_KEY)?.expose().to_vec());
    let tls = match ctx.config.http.tls {
        Some(_) => Some(Tls::from_pem(
            ctx.credentials.get(TLS_CERTIFICATE_CREDENTIAL)?.expose(),
            ctx.credentials.get(TLS_KEY_CREDENTIAL)?.expose(),
        )?),
        None => None,
    };
    let http = ctx.config.http.clone();
    let metrics = metrics::ApidMetrics::register(&ctx.metrics);
    let auth_db = open_auth_db(&ctx.config.auth_db, ctx.store.path()).await?;
    let state = AppState::new(ctx.store, auth_db, ctx.bus, ctx.events, ctx.config, key);
    // Images a previous run left half-added (the store says which).
    tokio::spawn(routes::images::resume(state.clone()));
    // One follower of every event, for every `/api/events` stream.
    if let Some(bus) = &state.bus {
        tokio::spawn(live::relay(
            Arc::clone(&state.live),
            bus.clone(),
            shutdown.clone(),
        ));
    }
    let tokio_listener =
        |l: StdTcpListener| tokio::net::TcpListener::from_std(l).map_err(ApidError::Listener);
    let operator = tokio_listener(listeners.operator)?;
    let agent = tokio_listener(listeners.agent)?;
    let addrs = (operator.local_addr(), agent.local_addr());
    if let (Ok(operator), Ok(agent)) = addrs {
        dragonfly_runtime::notify::status(&format!(
            "serving operators on {operator}, agents on {agent}"
        ));
    }
    let operators = Server::new(
        "operator",
        routes::router_for(state.clone(), routes::Audience::Operator).layer(
            axum::middleware::from_fn_with_state(metrics.clone(), metrics::track),
        ),
        http.clone(),
        tls,
    );
    let agents = Server::new(
        "agent",
        routes::router_for(state, routes::Audience::Agent).layer(
            axum::middleware::from_fn_with_state(metrics.for_listener("agent"), metrics::track),
        ),
        http,
        None,
    );
    // One failing listener stops the other: half an apid is not one systemd should keep.
    tokio::try_join!(
        operators.serve(operator, shutdown.clone()),
        agents.serve(agent, shutdown)
    )?;
    Ok(())
}
