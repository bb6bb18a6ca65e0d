//! The accept loop and one task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ConnectInfo;
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::admission::{Admission, Permit, Refused};
use crate::body::DeadlineBody;
use crate::direct::ExchangeState;
use crate::io::{Activity, Tracked};
use crate::{FileRoutes, HttpConfig, Tls};

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

/// In every request's extensions: the listener's drain signal. A response that never ends by
/// itself (Server-Sent Events, a long poll) must end when it fires: the drain lets every
/// response in flight finish, so a stream that ignores it holds the daemon's shutdown until
/// the frame's grace period runs out. Responses that end anyway (a file, a JSON answer) need
/// not look at it.
#[derive(Debug, Clone)]
pub struct Draining(CancellationToken);

impl Draining {
    /// Resolves once the listener has begun to drain (at once if it already has).
    pub async fn started(&self) {
        self.0.cancelled().await;
    }

    /// Whether the listener has begun to drain.
    pub fn has_started(&self) -> bool {
        self.0.is_cancelled()
    }

    /// A drain signal that fires when `token` is cancelled: for serving a router some other
    /// way than [`Server`] (tests).
    pub fn new(token: CancellationToken) -> Self {
        Self(token)
    }
}

/// What one listener serves, and how.
#[derive(Debug)]
pub struct Server {
    app: Router,
    config: HttpConfig,
    tls: Option<Tls>,
    files: Option<Arc<dyn FileRoutes>>,
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
            files: None,
            name,
        }
    }

    /// Answers the requests `files` claims from files with `sendfile(2)` on a plain-TCP
    /// listener ([`FileRoutes`]). Ignored with TLS: the router answers them, streamed.
    #[must_use]
    pub fn with_files(mut self, files: Arc<dyn FileRoutes>) -> Self {
        self.files = Some(files);
        self
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
            // No sendfile through TLS: the bytes must be encrypted in userspace.
            files: if self.tls.is_some() { None } else { self.files },
            tls: self.tls,
            name: self.name,
        });
        tracing::info!(
            listener = self.name,
            %addr,
            tls = shared.tls.is_some(),
            sendfile = shared.files.is_some(),
            "serving"
        );
        // Every connection task, so the drain can wait for them; each watches `shutdown`.
        let tasks = TaskTracker::new();
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
            let drain = shutdown.clone();
            tasks.spawn(async move {
                shared.connection(stream, peer, permit, drain).await;
            });
        }
        drop(listener);
        tracing::info!(listener = shared.name, "draining open connections");
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}

/// What every connection task of one listener shares.
#[derive(Debug)]
pub(crate) struct Shared {
    admission: Arc<Admission>,
    refusals: Refusals,
    app: Router,
    pub(crate) config: HttpConfig,
    tls: Option<Tls>,
    /// Only on a plain-TCP listener.
    files: Option<Arc<dyn FileRoutes>>,
    pub(crate) name: &'static str,
}

impl Shared {
    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        drain: CancellationToken,
    ) {
        let activity = Activity::new();
        let served = async {
            match (&self.tls, &self.files) {
                (None, Some(files)) => {
                    crate::direct::connection(
                        self,
                        files.as_ref(),
                        stream,
                        peer,
                        &activity,
                        &drain,
                    )
                    .await;
                }
                (None, None) => {
                    let io = Tracked::new(stream, Arc::clone(&activity));
                    self.http(io, peer, &drain).await;
                }
                (Some(tls), _) => {
                    let io = Tracked::new(stream, Arc::clone(&activity));
                    // The handshake is the first thing a client sends: it gets the header timeout.
                    let handshake =
                        tokio::time::timeout(self.config.header_timeout, tls.0.accept(io));
                    match handshake.await {
                        Ok(Ok(io)) => self.http(io, peer, &drain).await,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = self.name, %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(listener = self.name, %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = served => {}
            () = activity.idle_for(self.config.idle_timeout) => {
                tracing::debug!(listener = self.name, %peer, "closing an idle connection");
            }
        }
        drop(permit);
    }

    /// hyper's HTTP/1 server as every connection of this listener gets it.
    pub(crate) fn builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Without a timer hyper's header timeout does nothing at all. hyper starts it whenever
        // it waits for a request head, so it also bounds an idle keep-alive connection.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .keep_alive(true)
            .max_headers(100);
        builder
    }

    /// The router as hyper's service for a connection from `peer`. With `exchange`, each
    /// response body says when hyper drops it (one exchange of a file-routes connection).
    /// Every request carries [`Draining`] for `drain`.
    pub(crate) fn service(
        &self,
        peer: SocketAddr,
        exchange: Option<Arc<ExchangeState>>,
        drain: &CancellationToken,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<Finished>,
        Error = std::convert::Infallible,
        Future = ResponseFuture,
    > + use<> {
        let app = self.app.clone();
        let secure = self.tls.is_some();
        let body_timeout = self.config.body_timeout;
        let draining = Draining(drain.clone());
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let deadline = Instant::now() + body_timeout;
            let mut request = request.map(|body| DeadlineBody::new(body, deadline));
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(draining.clone());
            if secure {
                request.extensions_mut().insert(Secure);
            }
            let exchange = exchange.clone();
            let response = app.clone().oneshot(request);
            Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|inner| Finished { inner, exchange }))
            }) as ResponseFuture
        })
    }

    /// hyper serves `io` to its end, and lets it finish its request in flight then close when
    /// `drain` is cancelled (an idle connection closes at once).
    pub(crate) async fn http<IO>(&self, io: IO, peer: SocketAddr, drain: &CancellationToken)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self
            .builder()
            .serve_connection(TokioIo::new(io), self.service(peer, None, drain));
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, %peer, error = %e, "connection ended");
        }
    }
}

/// The router's answer to one request, as hyper awaits it.
pub(crate) type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<hyper::Response<Finished>, std::convert::Infallible>> + Send>,
>;

/// A response body that tells an exchange when hyper is done with it (drops it).
#[derive(Debug)]
pub(crate) struct Finished {
    inner: axum::body::Body,
    exchange: Option<Arc<ExchangeState>>,
}

impl Body for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(exchange) = &self.exchange {
            exchange.body_dropped();
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
