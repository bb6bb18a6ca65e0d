//! The daemon frame: a daemon's whole life, from arguments to exit code, written once.
//!
//! A daemon is a [`Daemon`] implementation — its config section, its sockets, how its health
//! is proven, and `run` — and its `main` is one line: `dragonfly_runtime::main::<Dhcpd>()`.
//! Everything systemd expects of a service lives here, so no daemon can forget a part of it:
//! dhcpd's unit once promised `WatchdogSec=30s` while dhcpd never sent `WATCHDOG=1`, and
//! systemd killed it every 30 seconds.
//!
//! # What the frame does, in order
//!
//! 1. Parses the shared arguments (`--config`, `--check-config`); bad usage exits 2.
//! 2. Loads and validates the configuration (two stages, [`crate::config`]); an invalid file
//!    exits 2, `--check-config` exits 0 here.
//! 3. Starts logging (journald under systemd, stderr otherwise).
//! 4. Takes the daemon's sockets by name from systemd, or binds them from the config
//!    ([`Daemon::sockets`]), while it might still hold the right to; unused passed sockets
//!    are reported.
//! 5. Loads the daemon's credentials ([`Daemon::credentials`]) and the NATS credentials the
//!    `[nats]` section asks for ([`nats_connect_options`]); a missing or weak one exits 1.
//! 6. Locks down: refuses root, sets `no_new_privs`, drops every capability. Still
//!    single-threaded, so every later thread inherits the reduced set.
//! 7. Builds the tokio runtime and installs SIGTERM/SIGINT handling.
//! 8. Opens the store and checks its schema (if the daemon has one), connects the bus with the
//!    whole `[nats]` section, and starts the bounded [`Publisher`].
//! 9. Starts the watchdog: it feeds systemd only while the daemon's [`Health`] holds, and
//!    serves the daemon's [`Metrics`] on the socket named `metrics` (from systemd, or bound
//!    from `[metrics] <daemon>` in step 4), if there is one ([`crate::metrics`]).
//! 10. Sends `READY=1` and calls [`Daemon::run`] with a [`Context`], the sockets and the
//!     shutdown token.
//! 11. On SIGTERM/SIGINT: `STOPPING=1`, and `run` gets [`Daemon::GRACE`] to drain.
//! 12. Closes the publisher (bounded: events never hold up a stop), stops the watchdog, and
//!     exits 0 on a clean stop, 2 on a configuration error, 1 otherwise.
//!
//! `run` stays the seam tests call: they build a [`Context`] with [`Context::new`], bind
//! their own sockets and cancel their own token.
//!
//! This module must never let a daemon reach READY without its store and schema checked, and
//! never feed the watchdog from a timer that does not look at the daemon's health.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args as _, FromArgMatches as _};
use dragonfly_bus::{Bus, BusAuth, BusTls, ConnectOptions, Publisher};
use dragonfly_store::{Db, StoreError};
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Chain, CommonArgs};
use crate::config::{
    DaemonConfig, Loaded, NATS_CLIENT_KEY_CREDENTIAL, NATS_CREDS_CREDENTIAL, NATS_NKEY_CREDENTIAL,
    NATS_PASSWORD_CREDENTIAL, NatsAuth, NatsConfig, StoreConfig,
};
use crate::credentials::{CredentialError, Secret, credential_path, load_credential};
use crate::metrics::{self, Metrics};
use crate::notify::{self, Heartbeat};
use crate::sockets::{SocketError, Sockets};
use crate::{logging, privileges, signals};

/// How long events still queued at stop may take to reach NATS.
const PUBLISHER_CLOSE: Duration = Duration::from_millis(500);

/// How often the store self-check runs for the watchdog.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often a daemon whose health is [`Health::MainLoop`] must beat, at least (its loop
/// needs a timer arm this short, so that an idle loop still proves it is alive).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How a daemon proves to the watchdog that it is healthy. Not optional: a watchdog fed by a
/// timer alone proves only that the tokio runtime is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The store answers a query through the same pool and blocking threads the daemon's
    /// handlers use (HTTP daemons, whose serving loop is axum's).
    StoreAnswers,
    /// The daemon's main loop beats [`Context::heartbeat`] at least every [`BEAT_EVERY`].
    MainLoop,
    /// Both of the above.
    MainLoopAndStore,
}

impl Health {
    fn store(self) -> bool {
        matches!(self, Health::StoreAnswers | Health::MainLoopAndStore)
    }

    fn main_loop(self) -> bool {
        matches!(self, Health::MainLoop | Health::MainLoopAndStore)
    }
}

/// How a daemon reaches the store: [`Db`] for daemons that use it, [`NoStore`] for those that
/// never open it (tftpd).
pub trait StoreAccess: Clone + Send + Sync + 'static {
    /// Whether there is a store at all.
    const PRESENT: bool;
    /// Opens it and checks that the schema is the one this build knows.
    fn open(config: &StoreConfig) -> impl Future<Output = Result<Self, StoreError>> + Send;
    /// A trivial query for the watchdog.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl StoreAccess for Db {
    const PRESENT: bool = true;

    async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Db::open(&config.path).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}

/// The store of a daemon that never opens it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl StoreAccess for NoStore {
    const PRESENT: bool = false;

    async fn open(_: &StoreConfig) -> Result<Self, StoreError> {
        Ok(NoStore)
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A secret a daemon needs before it may start: loaded by the frame from systemd's
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), else from a path its config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    /// The credential's name (`LoadCredential=<name>:…`).
    pub name: &'static str,
    /// Where to read it outside systemd.
    pub fallback: Option<PathBuf>,
    /// Shorter secrets are refused (a truncated key file must not start a daemon).
    pub min_len: usize,
}

/// Why a credential could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It could not be read.
    #[error("loading credential {name:?}")]
    Load {
        /// The credential.
        name: &'static str,
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// It is shorter than the daemon requires.
    #[error("credential {name:?} is {len} bytes; at least {min} are required")]
    TooShort {
        /// The credential.
        name: &'static str,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The daemon asked for a credential it did not declare (a bug).
    #[error("credential {name:?} was not declared by the daemon")]
    Undeclared {
        /// The credential.
        name: String,
    },
}

/// The credentials a daemon declared, loaded.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Arc<Vec<(&'static str, Secret)>>);

impl Credentials {
    /// Loads every credential in `specs` (the frame does this before READY).
    ///
    /// # Errors
    /// The first credential that is missing, unreadable, too open or too short.
    pub fn load(specs: &[CredentialSpec]) -> Result<Self, CredentialsError> {
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in specs {
            let secret =
                load_credential(spec.name, spec.fallback.as_deref()).map_err(|source| {
                    CredentialsError::Load {
                        name: spec.name,
                        source,
                    }
                })?;
            loaded.push((spec.name, secret));
        }
        Self::checked(specs, loaded)
    }

    /// Credentials given directly (tests), checked against `specs` like loaded ones.
    ///
    /// # Errors
    /// A credential in `specs` that is absent from `given` or too short.
    pub fn from_secrets(
        specs: &[CredentialSpec],
        given: Vec<(&'static str, Secret)>,
    ) -> Result<Self, CredentialsError> {
        Self::checked(specs, given)
    }

    fn checked(
        specs: &[CredentialSpec],
        given: Vec<(&'static str, Secret)>,
    ) -> Result<Self, CredentialsError> {
        for spec in specs {
            let Some((_, secret)) = given.iter().find(|(n, _)| *n == spec.name) else {
                return Err(CredentialsError::Undeclared {
                    name: spec.name.to_owned(),
                });
            };
            let len = secret.expose().len();
            if len < spec.min_len {
                return Err(CredentialsError::TooShort {
                    name: spec.name,
                    len,
                    min: spec.min_len,
                });
            }
        }
        Ok(Self(Arc::new(given)))
    }

    /// The credential `name`.
    ///
    /// # Errors
    /// [`CredentialsError::Undeclared`] when the daemon did not declare it.
    pub fn get(&self, name: &str) -> Result<&Secret, CredentialsError> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| CredentialsError::Undeclared {
                name: name.to_owned(),
            })
    }
}

/// A Dragonfly daemon, as the frame runs it. See the module docs.
pub trait Daemon: Sized + 'static {
    /// The short name: `dhcpd`. The program is `dragonfly-<NAME>`, its config section is
    /// [`DaemonConfig::SECTION`], its NATS client `dragonfly-<NAME>`.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// How its health is proven to the watchdog.
    const HEALTH: Health;
    /// How long in-flight work may go on after SIGTERM; below the unit's `TimeoutStopSec=`.
    const GRACE: Duration = Duration::from_secs(10);

    /// Its config section.
    type Config: DaemonConfig + Send + Sync + 'static;
    /// What `run` serves on.
    type Sockets: Send + 'static;
    /// [`Db`] or [`NoStore`].
    type Store: StoreAccess;
    /// Why `run` can fail.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Takes its sockets by name from those systemd passed, binding from `config` what
    /// systemd did not pass.
    ///
    /// # Errors
    /// A passed socket of the wrong kind, or a bind that failed.
    fn sockets(config: &Self::Config, passed: &mut Sockets) -> Result<Self::Sockets, SocketError>;

    /// The credentials it needs before it may start.
    fn credentials(_config: &Self::Config) -> Vec<CredentialSpec> {
        Vec::new()
    }

    /// Threads for blocking work beyond tokio's default (512), if it needs a different bound.
    fn max_blocking_threads(_config: &Self::Config) -> Option<usize> {
        None
    }

    /// Serves until `shutdown` is cancelled, then drains within [`Self::GRACE`].
    fn run(
        ctx: Context<Self>,
        sockets: Self::Sockets,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What the frame hands a daemon's `run`: its config, the store, the bus, the publisher, its
/// heartbeat, credentials and metrics registry.
pub struct Context<D: Daemon> {
    /// The daemon's own config section.
    pub config: D::Config,
    /// The store (or [`NoStore`]).
    pub store: D::Store,
    /// The bus, for subscribing and requests. `None` only in tests that run without NATS.
    pub bus: Option<Bus>,
    /// The one way to publish events.
    pub events: Publisher,
    /// Beat it from the main loop when the daemon's health is [`Health::MainLoop`].
    pub heartbeat: Heartbeat,
    /// The credentials declared by [`Daemon::credentials`].
    pub credentials: Credentials,
    /// The process's metrics registry (already holding the process basics and the
    /// publisher's counters): register the daemon's own metrics here.
    pub metrics: Metrics,
}

impl<D: Daemon> std::fmt::Debug for Context<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("daemon", &D::NAME)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl<D: Daemon> Context<D> {
    /// A context for tests (and the frame): starts a publisher on `bus` (so call it inside a
    /// tokio runtime) or a disabled one without. The publisher task is detached; the frame
    /// uses [`Context::with_publisher`] to keep it.
    pub fn new(
        config: D::Config,
        store: D::Store,
        bus: Option<Bus>,
        credentials: Credentials,
    ) -> Self {
        let events = match &bus {
            Some(bus) => Publisher::start(bus, dragonfly_bus::DEFAULT_CAPACITY).0,
            None => Publisher::disabled(),
        };
        Self::with_publisher(config, store, bus, events, credentials)
    }

    /// A context with a publisher the caller started.
    pub fn with_publisher(
        config: D::Config,
        store: D::Store,
        bus: Option<Bus>,
        events: Publisher,
        credentials: Credentials,
    ) -> Self {
        let metrics = Metrics::new(D::NAME);
        metrics.register_publisher(&events);
        Self {
            config,
            store,
            bus,
            events,
            heartbeat: Heartbeat::new(),
            credentials,
            metrics,
        }
    }

    /// `STATUS=` for `systemctl status`.
    pub fn status(&self, line: &str) {
        notify::status(line);
    }
}

/// `main` for daemon `D`: parses the shared arguments and runs [`serve`]. Exit codes as in
/// [`crate::cli`].
pub fn main<D: Daemon>() -> ExitCode {
    let command = CommonArgs::augment_args(
        clap::Command::new(format!("dragonfly-{}", D::NAME))
            .about(D::ABOUT)
            .version(env!("CARGO_PKG_VERSION")),
    );
    let matches = command.get_matches(); // Bad usage: clap prints and exits 2.
    match CommonArgs::from_arg_matches(&matches) {
        Ok(args) => serve::<D>(&args),
        Err(e) => e.exit(),
    }
}

/// The daemon's life after argument parsing, for mains with more arguments of their own
/// (apid's `create-admin`): config, logging, sockets, credentials, lock-down, runtime, run.
pub fn serve<D: Daemon>(args: &CommonArgs) -> ExitCode {
    let config = match cli::load_config::<D::Config>(args) {
        std::ops::ControlFlow::Continue(config) => config,
        std::ops::ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, &format!("dragonfly-{}", D::NAME));
    match start::<D>(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %Chain(e.as_ref()), "exiting");
            cli::exit_code_for(e.as_ref())
        }
    }
}

fn start<D: Daemon>(loaded: Loaded<D::Config>) -> anyhow::Result<()> {
    let Loaded {
        store,
        nats,
        metrics: metrics_config,
        daemon: config,
        ..
    } = loaded;
    let (sockets, metrics_socket) = {
        let mut passed = Sockets::from_env()?;
        let metrics_socket = match metrics_config.listen(D::NAME) {
            Some(addr) => Some(passed.tcp_or_bind(metrics::SOCKET_NAME, addr)?),
            None => passed.take_tcp(metrics::SOCKET_NAME)?,
        };
        (D::sockets(&config, &mut passed)?, metrics_socket)
        // Dropping `passed` reports sockets systemd passed that we did not take.
    };
    let credentials = Credentials::load(&D::credentials(&config))?;
    let nats = nats_connect_options(&nats, D::NAME)?;
    privileges::lock_down(&[])?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = D::max_blocking_threads(&config) {
        builder.max_blocking_threads(n.max(1));
    }
    let runtime = builder.build().context("building the tokio runtime")?;
    let result = runtime.block_on(lifetime::<D>(
        config,
        store,
        nats,
        (sockets, metrics_socket),
        credentials,
    ));
    // Work on blocking threads that outlived the grace period is abandoned, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn lifetime<D: Daemon>(
    config: D::Config,
    store: StoreConfig,
    nats: ConnectOptions,
    (sockets, metrics_socket): (D::Sockets, Option<std::net::TcpListener>),
    credentials: Credentials,
) -> anyhow::Result<()> {
    let shutdown = signals::shutdown_token()?;
    if D::HEALTH.store() && !D::Store::PRESENT {
        anyhow::bail!(
            "dragonfly-{}: health is proven by a store it does not have",
            D::NAME
        );
    }
    if D::Store::PRESENT {
        notify::status("opening the store");
    }
    let db = D::Store::open(&store)
        .await
        .with_context(|| format!("opening the store at {}", store.path.display()))?;
    let bus = Bus::connect(nats).await?;
    let (events, publisher) = Publisher::start(&bus, dragonfly_bus::DEFAULT_CAPACITY);
    let ctx = Context::<D>::with_publisher(config, db.clone(), Some(bus), events, credentials);

    // systemd enforces the watchdog while the service stops, too: it runs until the very end.
    let watchdog_stop = CancellationToken::new();
    spawn_watchdog(D::HEALTH, &ctx, watchdog_stop.clone());
    if let Some(listener) = metrics_socket {
        let listener =
            tokio::net::TcpListener::from_std(listener).context("adopting the metrics socket")?;
        // Metrics are served until the very end, like the watchdog: a stop is worth seeing.
        tokio::spawn(metrics::serve(
            listener,
            ctx.metrics.clone(),
            watchdog_stop.clone(),
        ));
    }

    notify::ready();
    notify::status("serving");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "started");
    let work = Box::pin(D::run(ctx, sockets, shutdown.clone()));
    let outcome = signals::drain(shutdown, D::GRACE, work).await;
    publisher.close(PUBLISHER_CLOSE).await;
    watchdog_stop.cancel();
    match outcome {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e)),
        Err(elapsed) => Err(elapsed.into()),
    }
}

/// Why the `[nats]` credentials could not be used (the secrets themselves never appear).
#[derive(Debug, thiserror::Error)]
pub enum NatsCredentialsError {
    /// The credential is missing, unreadable or readable by others.
    #[error("loading NATS credential {name:?}")]
    Load {
        /// The credential.
        name: &'static str,
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// The credential is not text.
    #[error("NATS credential {name:?} is not UTF-8 text")]
    NotText {
        /// The credential.
        name: &'static str,
    },
}

/// The bus options from the whole `[nats]` section, with its credentials read from systemd's
/// `$CREDENTIALS_DIRECTORY` (or the configured fallback files): never from the config itself.
///
/// # Errors
/// A credential the section asks for is missing, too open, or not text.
pub fn nats_connect_options(
    nats: &NatsConfig,
    daemon: &str,
) -> Result<ConnectOptions, NatsCredentialsError> {
    let mut options = ConnectOptions::new(nats.url.clone(), daemon, nats.name_prefix.as_deref());
    options.connect_timeout = nats.connect_timeout;
    let secret_text = |name: &'static str| {
        let secret = load_credential(name, nats.credential_file.as_deref())
            .map_err(|source| NatsCredentialsError::Load { name, source })?;
        std::str::from_utf8(secret.expose())
            .map(str::to_owned)
            .map_err(|_| NatsCredentialsError::NotText { name })
    };
    options.auth = match &nats.auth {
        NatsAuth::None => BusAuth::None,
        NatsAuth::UserPassword { user } => {
            let text = secret_text(NATS_PASSWORD_CREDENTIAL)?;
            // A file written with `echo` ends in a newline that is not part of the password.
            let password = text.strip_suffix('\n').unwrap_or(&text);
            let password = password.strip_suffix('\r').unwrap_or(password);
            BusAuth::UserPassword {
                user: user.clone(),
                password: password.to_owned(),
            }
        }
        NatsAuth::Nkey => BusAuth::NkeySeed(secret_text(NATS_NKEY_CREDENTIAL)?.trim().to_owned()),
        NatsAuth::Creds => BusAuth::Creds(secret_text(NATS_CREDS_CREDENTIAL)?),
    };
    let client_cert = match &nats.tls.client_cert_file {
        None => None,
        Some(cert) => {
            let key = credential_path(
                NATS_CLIENT_KEY_CREDENTIAL,
                nats.tls.client_key_file.as_deref(),
            )
            .map_err(|source| NatsCredentialsError::Load {
                name: NATS_CLIENT_KEY_CREDENTIAL,
                source,
            })?;
            Some((cert.clone(), key))
        }
    };
    options.tls = BusTls {
        required: nats.tls.required,
        ca_file: nats.tls.ca_file.clone(),
        client_cert,
    };
    Ok(options)
}

/// Feeds systemd's watchdog while `health` holds: the store answers (checked every 5 s) and/or
/// the main loop beats. Nothing is spawned when the unit has no watchdog.
fn spawn_watchdog<D: Daemon>(health: Health, ctx: &Context<D>, stop: CancellationToken) {
    let store_ok = Heartbeat::new();
    let mut store_progress = store_ok.progressed();
    let mut loop_progress = ctx.heartbeat.progressed();
    let checks = move || {
        // Both are evaluated every time, so each sees "since my last call".
        let store = !health.store() || store_progress();
        let main_loop = !health.main_loop() || loop_progress();
        store && main_loop
    };
    if notify::spawn_watchdog(stop.clone(), checks).is_none() {
        return;
    }
    if health.store() {
        let db = ctx.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STORE_CHECK_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match tokio::time::timeout(STORE_CHECK_EVERY, db.check()).await {
                    Ok(Ok(())) => store_ok.beat(),
                    Ok(Err(e)) => tracing::error!(
                        error = %Chain(&e),
                        "store self-check failed; not feeding the watchdog"
                    ),
                    Err(_) => tracing::error!(
                        timeout = ?STORE_CHECK_EVERY,
                        "store self-check did not answer; not feeding the watchdog"
                    ),
                }
            }
        });
    }
}
