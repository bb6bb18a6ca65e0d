//! ipxed: the iPXE boot server. Tells each network-booting machine what to boot.
//!
//! iPXE (chained from dhcpd) asks `GET /boot/{mac}?platform=…&arch=…`; ipxed reads the
//! machine from the store, lets [`dragonfly_core::boot::decide`] choose its fate, and answers
//! with a script rendered by [`script`] (pure) that boots the agent (discovery or imaging,
//! with a fresh per-boot token on the kernel line) or the local disk. It also serves the
//! agent's kernel and initrd and, for UEFI HTTP-boot firmware (dhcpd's `http_boot_*_url`), the
//! iPXE binaries of `ipxe_dir` ([`files`]), and publishes `BootDecided` for every answer.
//!
//! A token is minted only for a boot dhcpd witnessed ([`admission`]: the MAC's leased address,
//! or a fresh boot sighting), and each mint opens the MAC's boot session in the store (its one
//! write), which ends the MAC's previous session: a token of a past boot stops working. Other
//! requests get the script without a token. Tokens are secrets: they go into the script and
//! nowhere else (never a log line or an event). [`run`] takes its listening socket and
//! shutdown token from the caller; it never binds anything itself. It serves through
//! `dragonfly-http` (`[ipxed.http]`: timeouts, connection caps, optional TLS), like apid; the
//! peer address it puts in every request is part of the evidence for a token.

pub mod admission;
pub mod config;
pub mod files;
pub mod metadata;
pub mod metrics;
pub mod script;

use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dragonfly_bus::Publisher;
use dragonfly_bus::events::BootDecided;
use dragonfly_core::boot::{self, BootView};
use dragonfly_core::boot_token::{self, BootClaims};
use dragonfly_core::{BootFate, MacAddr, MachineId};
use dragonfly_http::{Server, TLS_CERTIFICATE_CREDENTIAL, TLS_KEY_CREDENTIAL, Tls, TlsError};
use dragonfly_runtime::cli::Chain;
use dragonfly_runtime::sockets::{SocketError, Sockets};
use dragonfly_runtime::{Context, CredentialSpec, CredentialsError, Daemon, Health, Secret};
use dragonfly_store::Db;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use config::IpxedConfig;
use script::{Client, MachineView, Platform, Renderer, Settings};

/// The boot-token key's credential name (`LoadCredential=boot-token-key:…`), shared with apid.
pub const BOOT_TOKEN_KEY: &str = "boot-token-key";

/// ipxed, as the daemon frame runs it.
#[derive(Debug)]
pub struct Ipxed;

impl Daemon for Ipxed {
    const NAME: &'static str = "ipxed";
    const ABOUT: &'static str = "Dragonfly iPXE boot server: boot scripts and the agent's files";
    // Every boot answer reads the store; its self-check runs through the same pool.
    const HEALTH: Health = Health::StoreAnswers;
    type Config = IpxedConfig;
    type Sockets = StdTcpListener;
    type Store = Db;
    type Error = IpxedError;

    fn sockets(config: &IpxedConfig, passed: &mut Sockets) -> Result<StdTcpListener, SocketError> {
        passed.tcp_or_bind("http", config.listen.addr)
    }

    fn credentials(config: &IpxedConfig) -> Vec<CredentialSpec> {
        let mut specs = vec![CredentialSpec {
            name: BOOT_TOKEN_KEY,
            fallback: config.boot_token_key_file.clone(),
            min_len: boot_token::MIN_KEY_LEN,
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
        listener: StdTcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), IpxedError> {
        run(ctx, listener, shutdown).await
    }
}

/// Why ipxed stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IpxedError {
    #[error("the boot-token key")]
    Credentials(#[from] CredentialsError),
    #[error(
        "the boot-token key is shorter than {} bytes",
        dragonfly_core::boot_token::MIN_KEY_LEN
    )]
    WeakBootTokenKey,
    #[error("compiling the script templates")]
    Templates(#[from] script::TemplateError),
    #[error("the TLS certificate and key")]
    Tls(#[from] TlsError),
    #[error("taking the listening socket")]
    Listener(#[source] std::io::Error),
    #[error("serving HTTP")]
    Serve(#[from] dragonfly_http::ServeError),
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    db: Db,
    config: Arc<IpxedConfig>,
    settings: Arc<Settings>,
    renderer: Arc<Renderer>,
    boot_token_key: Arc<Secret>,
    events: Publisher,
    /// Refused mints are logged at most this often (an attacker asking for every MAC must not
    /// flood the journal).
    refusals: Arc<std::sync::Mutex<Throttle>>,
    /// One place per file body being sent (`max_file_transfers`).
    transfers: Arc<tokio::sync::Semaphore>,
    /// Downloads refused for want of a place, logged at most every [`REFUSAL_LOG_EVERY`].
    busy: Arc<std::sync::Mutex<Throttle>>,
    /// Counters (unregistered until [`AppState::with_metrics`]).
    metrics: metrics::IpxedMetrics,
}

/// At most one log line per period, with a count of the lines left out.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(lines left out since the last one)` when a line may be logged now.
    fn note(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// How often a refused mint is logged at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl AppState {
    /// Builds the state.
    pub fn new(
        db: Db,
        events: Publisher,
        config: IpxedConfig,
        boot_token_key: Secret,
    ) -> Result<Self, IpxedError> {
        if boot_token_key.expose().len() < boot_token::MIN_KEY_LEN {
            return Err(IpxedError::WeakBootTokenKey);
        }
        let settings = Settings {
            public_url: config.public_url.clone(),
            apid_url: config.apid_url.clone(),
            agent_kernel: config.agent_kernel.clone(),
            agent_initrd: config.agent_initrd.clone(),
            kernel_cmdline_extra: config.kernel_cmdline_extra.clone(),
        };
        let transfers = Arc::new(tokio::sync::Semaphore::new(config.max_file_transfers));
        Ok(Self {
            db,
            transfers,
            busy: Arc::default(),
            config: Arc::new(config),
            settings: Arc::new(settings),
            renderer: Arc::new(Renderer::new()?),
            boot_token_key: Arc::new(boot_token_key),
            events,
            refusals: Arc::default(),
            metrics: metrics::IpxedMetrics::default(),
        })
    }

    /// Counts into `metrics` (registered in the frame's registry).
    #[must_use]
    pub fn with_metrics(mut self, metrics: metrics::IpxedMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A download was refused for want of a place: `Some(suppressed)` when it is to be logged.
    fn note_busy(&self) -> Option<u64> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).note()
    }
}

/// ipxed's listener: [`app`], with the agent's and iPXE's files sent by `sendfile(2)` when the
/// listener is plain TCP ([`files::Files`]).
pub fn server(state: AppState, http: dragonfly_http::HttpConfig, tls: Option<Tls>) -> Server {
    let files = Arc::new(files::Files::new(state.clone()));
    Server::new("http", app(state), http, tls).with_files(files)
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/boot/{mac}", get(boot_script))
        .route("/agent/{file}", get(files::agent_file))
        .route("/ipxe/{file}", get(files::ipxe_file))
        .route("/images/{name}", get(files::image_file))
        .route(
            "/metadata/{machine}/{secret}/",
            get(metadata::nocloud_dir_by_secret),
        )
        .route(
            "/metadata/{machine}/{secret}/phone-home",
            axum::routing::post(metadata::phone_home),
        )
        .route(
            "/metadata/{machine}/{secret}/latest/{*path}",
            get(metadata::ec2_by_secret),
        )
        .route(
            "/metadata/{machine}/{secret}/{doc}",
            get(metadata::nocloud_by_secret),
        )
        .route("/metadata/{doc}", get(metadata::nocloud_by_address))
        .route("/latest/", get(metadata::ec2_by_address))
        .route("/latest/{*path}", get(metadata::ec2_by_address))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.max_body_bytes,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `?platform=${platform}&arch=${buildarch}` as dhcpd's chain URL sends them.
#[derive(Debug, Deserialize)]
struct BootQuery {
    platform: Option<String>,
    arch: Option<String>,
}

/// A script answer. Scripts are never cached: each carries a fresh token.
fn script_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// An error script with `status`. iPXE does not execute the body of a 4xx/5xx answer (its
/// `chain` fails with the HTTP error instead), so dhcpd's script must handle that failure; the
/// body is for anyone who fetches the URL by hand, and for firmware that does run it.
fn error_response(state: &AppState, status: StatusCode, message: &'static str) -> Response {
    match state.renderer.render_error(message) {
        Ok(body) => script_response(status, body),
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot render the error script");
            status.into_response()
        }
    }
}

/// Validates what the client said about itself. `Err` carries a fixed message: client input
/// never reaches a script unless it passed these checks.
fn client_from(mac: &str, query: Option<BootQuery>) -> Result<Client, &'static str> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|_| "malformed MAC address in the request")?;
    let query = query.ok_or("malformed query string")?;
    let (platform, platform_assumed) = match query.platform.as_deref() {
        // An unset iPXE setting expands to nothing: treat `platform=` like no platform.
        None | Some("") => (Platform::Pcbios, true),
        Some(p) => (
            Platform::parse(p).ok_or("unsupported platform (expected pcbios or efi)")?,
            false,
        ),
    };
    let arch = match query.arch {
        None => None,
        Some(a) if a.is_empty() => None,
        Some(a) if script::is_word(&a) => Some(a),
        Some(_) => return Err("malformed arch"),
    };
    Ok(Client {
        mac,
        platform,
        platform_assumed,
        arch,
    })
}

/// `GET /boot/{mac}`.
async fn boot_script(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<BootQuery>, QueryRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let client = match client_from(&mac, query.ok().map(|q| q.0)) {
        Ok(c) => c,
        Err(message) => {
            tracing::info!(reason = message, "refused a boot request");
            return error_response(&state, StatusCode::BAD_REQUEST, message);
        }
    };
    let mac = client.mac;
    let machine = match state.db.machines().boot_info(mac).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(%mac, error = %Chain(&e), "store lookup failed");
            return error_response(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "the boot server cannot read its database",
            );
        }
    };
    let fate = boot::decide(machine.as_ref().map(|m| BootView {
        state: m.state,
        workflow_id: m.workflow_id,
        workflow_state: m.workflow_state,
        installed: m.installed,
    }));
    let view = MachineView {
        id: machine.as_ref().map(|m| m.id.0),
        name: machine.map(|m| m.name),
    };
    let token = match fate {
        BootFate::LocalDisk => String::new(),
        BootFate::Discovery { .. } | BootFate::Imaging { .. } => {
            match token_for(&state, mac, peer).await {
                Ok(t) => t,
                Err(response) => return response,
            }
        }
    };
    let body = match state
        .renderer
        .render(&fate, &client, &view, &state.settings, &token)
    {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(%mac, error = %Chain(&e), "cannot render the boot script");
            return error_response(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the boot server cannot render a script",
            );
        }
    };
    let (reason, workflow_id) = match fate {
        BootFate::Discovery { reason } => (Some(script::reason_str(reason)), None),
        BootFate::Imaging { workflow_id } => (None, Some(workflow_id)),
        BootFate::LocalDisk => (None, None),
    };
    tracing::info!(
        %mac,
        platform = %client.platform,
        fate = script::fate_str(&fate),
        reason,
        machine = ?view.id,
        workflow = ?workflow_id,
        "boot decided"
    );
    state
        .metrics
        .boot_decisions
        .get_or_create(&metrics::Fate {
            fate: script::fate_str(&fate),
        })
        .inc();
    state.events.publish(&BootDecided {
        mac,
        machine_id: view.id.map(MachineId),
        fate,
    });
    script_response(StatusCode::OK, body)
}

/// A token for `mac`'s boot, or `""` when the boot path did not witness it ([`admission`]);
/// `Err` is the error answer when the store or the key fails.
async fn token_for(
    state: &AppState,
    mac: MacAddr,
    peer: Option<IpAddr>,
) -> Result<String, Response> {
    let now = jiff::Timestamp::now();
    let facts = match state.db.boot().mint_facts(mac, now).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(%mac, error = %Chain(&e), "store lookup failed");
            return Err(error_response(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                "the boot server cannot read its database",
            ));
        }
    };
    let proof = match admission::decide(
        &facts,
        admission::peer_v4(peer),
        now,
        state.config.sighting_window,
    ) {
        Ok(p) => p,
        Err(refusal) => {
            log_refusal(state, mac, peer, refusal);
            return Ok(String::new());
        }
    };
    let mut nonce = [0u8; 16];
    rand::fill(&mut nonce);
    let minted = expiry(now, state.config.token_ttl).and_then(|expires| {
        boot_token::mint(
            state.boot_token_key.expose(),
            &BootClaims {
                mac,
                nonce,
                expires,
            },
        )
    });
    let session_end = expiry(now, state.config.boot_session_lifetime);
    let (token, session_end) = match (minted, session_end) {
        (Ok(t), Ok(end)) => (t, end),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(%mac, error = %Chain(&e), "cannot mint a boot token");
            return Err(error_response(
                state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the boot server cannot issue a token",
            ));
        }
    };
    // The session first: a token whose session was never stored would be refused anyway.
    if let Err(e) = state
        .db
        .boot()
        .open_session(mac, nonce, now, session_end)
        .await
    {
        tracing::error!(%mac, error = %Chain(&e), "cannot open a boot session");
        return Err(error_response(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "the boot server cannot write its database",
        ));
    }
    tracing::info!(%mac, proof = ?proof, "boot session opened");
    Ok(token)
}

/// Logs a refused mint, at most once per [`REFUSAL_LOG_EVERY`] with a count of the others.
fn log_refusal(state: &AppState, mac: MacAddr, peer: Option<IpAddr>, refusal: admission::Refusal) {
    let Some(suppressed) = state
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .note()
    else {
        return;
    };
    tracing::warn!(%mac, peer = ?peer, reason = refusal.as_str(), suppressed,
        "no token for this boot: {refusal} (the agent will not be able to register)");
}

/// When a token minted at `now` stops working. A lifetime past the calendar's end is the
/// server's problem (its configuration), not a malformed token.
fn expiry(
    now: jiff::Timestamp,
    ttl: std::time::Duration,
) -> Result<jiff::Timestamp, boot_token::TokenError> {
    jiff::SignedDuration::try_from(ttl)
        .ok()
        .and_then(|ttl| now.checked_add(ttl).ok())
        .ok_or(boot_token::TokenError::ExpiryOutOfRange)
}

/// Serves boot scripts and agent files on `listener` until `shutdown` is cancelled.
pub async fn run(
    ctx: Context<Ipxed>,
    listener: StdTcpListener,
    shutdown: CancellationToken,
) -> Result<(), IpxedError> {
    for name in &ctx.config.agent_files {
        let path = ctx.config.agent_dir.join(name);
        if !path.is_file() {
            tracing::warn!(path = %path.display(), "agent file not found; machines cannot boot the agent until it exists");
        }
    }
    // Not fatal: HTTP boot is optional, and a site may install the iPXE binaries later.
    if !ctx.config.ipxe_dir.is_dir() {
        tracing::warn!(path = %ctx.config.ipxe_dir.display(), "ipxe_dir is not a directory; UEFI HTTP-boot clients get 404 for /ipxe/… until it exists");
    }
    let key = Secret::new(ctx.credentials.get(BOOT_TOKEN_KEY)?.expose().to_vec());
    let tls = match ctx.config.http.tls {
        Some(_) => Some(Tls::from_pem(
            ctx.credentials.get(TLS_CERTIFICATE_CREDENTIAL)?.expose(),
            ctx.credentials.get(TLS_KEY_CREDENTIAL)?.expose(),
        )?),
        None => None,
    };
    let http = ctx.config.http.clone();
    let metrics = metrics::IpxedMetrics::register(&ctx.metrics);
    let state = AppState::new(ctx.store, ctx.events, ctx.config, key)?.with_metrics(metrics);
    let listener = tokio::net::TcpListener::from_std(listener).map_err(IpxedError::Listener)?;
    if let Ok(addr) = listener.local_addr() {
        dragonfly_runtime::notify::status(&format!("serving on {addr}"));
    }
    server(state, http, tls).serve(listener, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(platform: Option<&str>, arch: Option<&str>) -> Option<BootQuery> {
        Some(BootQuery {
            platform: platform.map(Into::into),
            arch: arch.map(Into::into),
        })
    }

    #[test]
    fn client_parsing() {
        let c = client_from("52-54-00-AA-bb-01", q(None, None)).unwrap();
        assert_eq!(c.mac.to_string(), "52:54:00:aa:bb:01");
        assert!(c.platform_assumed);
        assert_eq!(c.platform, Platform::Pcbios);
        let c = client_from("525400aabb01", q(Some("efi"), Some("x86_64"))).unwrap();
        assert_eq!((c.platform, c.platform_assumed), (Platform::Efi, false));
        assert_eq!(c.arch.as_deref(), Some("x86_64"));
        assert!(client_from("52:54:00:aa:bb", q(None, None)).is_err());
        assert!(client_from("52:54:00:aa:bb:01", q(Some("linux"), None)).is_err());
        assert!(client_from("52:54:00:aa:bb:01", q(None, Some("x 86\nboot"))).is_err());
        assert!(client_from("52:54:00:aa:bb:01", None).is_err());
    }

    #[test]
    fn tls_asks_for_the_certificate_and_key_credentials() {
        use dragonfly_runtime::config::DaemonConfig;
        let raw = |tls: bool| config::RawIpxed {
            public_url: Some("http://10.99.0.1:8080".into()),
            apid_url: Some("http://10.99.0.1:3001".into()),
            agent_dir: Some("/var/lib/dragonfly/agent".into()),
            http: Some(dragonfly_http::RawHttpConfig {
                tls: Some(tls),
                tls_key_file: tls.then(|| "/etc/dragonfly/credentials/ipxed-tls-key".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let names = |tls: bool| {
            let config = IpxedConfig::validate(raw(tls)).unwrap();
            Ipxed::credentials(&config)
                .into_iter()
                .map(|c| (c.name, c.fallback))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), [(BOOT_TOKEN_KEY, None)]);
        assert_eq!(
            names(true),
            [
                (BOOT_TOKEN_KEY, None),
                (TLS_CERTIFICATE_CREDENTIAL, None),
                (
                    TLS_KEY_CREDENTIAL,
                    Some("/etc/dragonfly/credentials/ipxed-tls-key".into())
                ),
            ]
        );
    }

    #[test]
    fn token_expiry_is_now_plus_ttl_or_out_of_range() {
        let now: jiff::Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        assert_eq!(
            expiry(now, std::time::Duration::from_secs(3600)),
            Ok("2026-11-21T13:00:00Z".parse().unwrap())
        );
        for ttl in [
            std::time::Duration::from_secs(400 * 365 * 86_400 * 100),
            std::time::Duration::MAX,
        ] {
            assert_eq!(
                expiry(now, ttl),
                Err(boot_token::TokenError::ExpiryOutOfRange),
                "{ttl:?}"
            );
        }
    }
}
