//! The accept loop and one task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::admission::{Admission, Permit, Refused};
use crate::body::DeadlineBody;
use crate::io::{Activity, Tracked};
use crate::{HttpConfig, Tls};

/// How long accept pauses when the process or the system is out of descriptors (or memory):
/// long enough for connections to finish and free some, short enough that a legitimate client
/// waiting in the backlog barely notices.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refusals are logged at most this often (with how many there were), so a flood of them
/// does not become a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket has no local address (it is not a bound TCP socket).
    #[error("reading the listening socket's address")]
    Listener(#[source] std::io::Error),
}

/// In every request's extensions on a listener that terminated TLS: the request's origin is
/// `https://` (a CSRF check comparing `Origin` with the request's own origin needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secure;

/// What one listener serves, and how.
#[derive(Debug)]
pub struct Server {
    app: Router,
    config: HttpConfig,
    tls: Option<Tls>,
    /// A name for log lines: `operator`, `agent`, `http`.
    name: &'static str,
}

impl Server {
    /// `app` on a listener called `name` (in log lines), bounded by `config`, with `tls` when
    /// the listener terminates TLS. The router gets each client's address as
    /// `ConnectInfo<SocketAddr>`.
    pub fn new(name: &'static str, app: Router, config: HttpConfig, tls: Option<Tls>) -> Self {
        Self {
            app,
            config,
            tls,
            name,
        }
    }

    /// Accepts on `listener` until `shutdown` is cancelled, then stops accepting and waits for
    /// the open connections to finish (idle ones are closed at once). The caller bounds the
    /// wait (the daemon frame's grace period). Accept errors never end the loop: running out
    /// of descriptors pauses accepting for [`ACCEPT_BACKOFF`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        let shared = Arc::new(Shared {
            admission: Admission::new(
                self.config.max_connections,
                self.config.max_connections_per_client,
            ),
            refusals: Refusals::default(),
            app: self.app,
            config: self.config,
            tls: self.tls,
            name: self.name,
        });
        tracing::info!(listener = self.name, %addr, tls = shared.tls.is_some(), "serving");
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) if out_of_resources(&e) => {
                    tracing::warn!(
                        listener = shared.name,
                        error = %e,
                        held = shared.admission.held(),
                        "cannot accept: out of descriptors or memory; pausing"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
                Err(e) => {
                    // ECONNABORTED and the like: that connection is gone, the next is not.
                    tracing::debug!(listener = shared.name, error = %e, "accept failed");
                    continue;
                }
            };
            let permit = match shared.admission.admit(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    shared.refusals.note(shared.name, peer, why);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&shared);
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                shared.connection(stream, peer, permit, watcher).await;
            });
        }
        drop(listener);
        tracing::info!(listener = shared.name, "draining open connections");
        graceful.shutdown().await;
        Ok(())
    }
}

/// What every connection task of one listener shares.
#[derive(Debug)]
struct Shared {
    admission: Arc<Admission>,
    refusals: Refusals,
    app: Router,
    config: HttpConfig,
    tls: Option<Tls>,
    name: &'static str,
}

impl Shared {
    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let activity = Activity::new();
        let io = Tracked::new(stream, Arc::clone(&activity));
        match &self.tls {
            None => self.http(io, peer, &activity, watcher).await,
            Some(tls) => {
                // The handshake is the first thing a client sends: it gets the header timeout.
                let handshake = tokio::time::timeout(self.config.header_timeout, tls.0.accept(io));
                match handshake.await {
                    Ok(Ok(io)) => self.http(io, peer, &activity, watcher).await,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = self.name, %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(listener = self.name, %peer, "TLS handshake timed out");
                    }
                }
            }
        }
        drop(permit);
    }

    async fn http<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
        activity: &Activity,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let secure = self.tls.is_some();
        let body_timeout = self.config.body_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let deadline = Instant::now() + body_timeout;
            let mut request = request.map(|body| DeadlineBody::new(body, deadline));
            request.extensions_mut().insert(ConnectInfo(peer));
            if secure {
                request.extensions_mut().insert(Secure);
            }
            app.clone().oneshot(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Without a timer hyper's header timeout does nothing at all. hyper starts it whenever
        // it waits for a request head, so it also bounds an idle keep-alive connection.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .keep_alive(true)
            .max_headers(100);
        let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(listener = self.name, %peer, error = %e, "connection ended");
                }
            }
            () = activity.idle_for(self.config.idle_timeout) => {
                tracing::debug!(listener = self.name, %peer, "closing an idle connection");
            }
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: accepting again at once would fail again at once.
fn out_of_resources(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .iter()
            .any(|errno| *errno as i32 == code)
    })
}

/// Counts refused connections and logs them at most every [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct Refusals {
    total: AtomicU64,
    per_client: AtomicU64,
    /// When refusals were last logged.
    last_logged: std::sync::Mutex<Option<Instant>>,
}

impl Refusals {
    fn note(&self, listener: &'static str, peer: SocketAddr, why: Refused) {
        match why {
            Refused::Total => self.total.fetch_add(1, Ordering::Relaxed),
            Refused::PerClient => self.per_client.fetch_add(1, Ordering::Relaxed),
        };
        tracing::debug!(listener, %peer, ?why, "connection refused: too many held");
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                listener,
                last_client = %peer.ip(),
                refused_at_total_cap = self.total.swap(0, Ordering::Relaxed),
                refused_at_client_cap = self.per_client.swap(0, Ordering::Relaxed),
                "closing new connections: connection caps reached"
            );
        }
    }
}
