//! The NATS connection and the typed operations on it.
//!
//! Everything that touches async-nats lives here, so the rest of Dragonfly never sees a raw
//! subject string or payload. Nothing here may block a caller indefinitely: publishes and
//! requests are bounded by timeouts even while NATS is unreachable.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use dragonfly_core::Chain;
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::cloudevent::{CloudEvent, DecodeError, JSON_CONTENT_TYPE, SpecVersion};
use crate::{BusError, Event, Request};

/// Longest wait between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How long a publish may wait for room in the client's send buffer (full only after NATS has
/// been unreachable for a while). Events are notifications: dropping one with an error beats
/// stalling the caller, since subscribers reconcile from the store on reconnect.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Bus::flush`] waits for its round trip.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests one [`Bus::serve`] task handles at once.
const MAX_IN_FLIGHT: usize = 64;

/// How long a stopping [`Bus::serve`] task waits for the server to confirm its unsubscribe.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Header on a reply carrying why a service rejected a request (with an empty body).
const ERROR_HEADER: &str = "Dragonfly-Error";

/// The client's view of its NATS connection, as published by [`Bus::connection_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected yet since [`Bus::connect`].
    Connecting,
    /// Connected (first time or again). Subscriptions are in place; reconcile from the store.
    Connected,
    /// Lost the connection; reconnecting in the background.
    Disconnected,
    /// The client was closed; it will not reconnect.
    Closed,
}

/// How to reach NATS and how to introduce ourselves: [`Bus::connect`]'s argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `nats://host:port`, or `tls://host:port` for TLS.
    pub url: String,
    /// The connection's name in the server's monitoring (`nats server report connections`):
    /// which host and daemon this client is.
    pub client_name: String,
    /// The CloudEvents `source` of what this bus publishes: `/dragonfly/<daemon>`.
    pub source: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How this client proves who it is.
    pub auth: BusAuth,
    /// TLS towards the server.
    pub tls: BusTls,
}

/// How the bus proves who it is to NATS. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum BusAuth {
    /// No credentials.
    #[default]
    None,
    /// A user and its password.
    UserPassword {
        /// The NATS user.
        user: String,
        /// Its password.
        password: String,
    },
    /// An nkey seed (`SU…`): the server's nonce is signed with it.
    NkeySeed(String),
    /// The text of a `.creds` file: a user JWT and its nkey seed.
    Creds(String),
}

impl fmt::Debug for BusAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"[redacted]")
                .finish(),
            Self::NkeySeed(_) => f.write_str("NkeySeed([redacted])"),
            Self::Creds(_) => f.write_str("Creds([redacted])"),
        }
    }
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusTls {
    /// Refuse to talk to a server without TLS (also implied by a `tls://` URL).
    pub required: bool,
    /// CA certificates (PEM) that verify the server, instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The client's certificate and private key (PEM files), for a server that asks.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// An nkey user seed: `SU` and 56 more base32 characters. Checked before connecting, so a
/// truncated credential is a clear error at start rather than "failed signing nonce" forever.
fn is_plausible_nkey_seed(seed: &str) -> bool {
    seed.len() == 58
        && seed.starts_with("SU")
        && seed
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

impl ConnectOptions {
    /// Options for `daemon` (e.g. `"dhcpd"`) at `url`: client name `dragonfly-<daemon>`, or
    /// `<prefix>-dragonfly-<daemon>` with a prefix; source `/dragonfly/<daemon>`; 5 s attempts.
    pub fn new(url: impl Into<String>, daemon: &str, name_prefix: Option<&str>) -> Self {
        let base = format!("dragonfly-{daemon}");
        Self {
            url: url.into(),
            client_name: match name_prefix {
                Some(prefix) => format!("{prefix}-{base}"),
                None => base,
            },
            source: format!("/dragonfly/{daemon}"),
            connect_timeout: Duration::from_secs(5),
            auth: BusAuth::None,
            tls: BusTls::default(),
        }
    }
}

/// A cloneable handle on one NATS connection. Clones share the connection.
#[derive(Clone)]
pub struct Bus {
    client: Client,
    source: Arc<str>,
    state: watch::Receiver<ConnectionState>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("source", &self.source)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects to NATS as `options` say.
    ///
    /// Returns at once, connected or not: the connection is made in the background and
    /// retried forever (backoff capped at 2 s, each attempt bounded by
    /// [`ConnectOptions::connect_timeout`]), and messages wait in a buffer meanwhile.
    ///
    /// Credentials and TLS are as [`ConnectOptions::auth`] and [`ConnectOptions::tls`] say. A
    /// server that refuses them (or whose certificate does not verify) is retried like an
    /// unreachable one, and said so in the log at `error` level once per distinct failure:
    /// the daemon keeps serving without the bus meanwhile.
    ///
    /// # Errors
    /// [`BusError::Connect`] when the URL does not parse; [`BusError::Credentials`] when the
    /// credentials are malformed.
    pub async fn connect(options: ConnectOptions) -> Result<Bus, BusError> {
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let state_tx = Arc::new(state_tx);
        let last_failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let url = options.url;
        let mut nats = match options.auth {
            BusAuth::None => async_nats::ConnectOptions::new(),
            BusAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
            BusAuth::NkeySeed(seed) => {
                if !is_plausible_nkey_seed(&seed) {
                    return Err(BusError::Credentials(
                        "the nkey seed is not a user seed (SU followed by 56 base32 characters)",
                    ));
                }
                async_nats::ConnectOptions::with_nkey(seed)
            }
            BusAuth::Creds(text) => {
                async_nats::ConnectOptions::with_credentials(&text).map_err(|_| {
                    // The error's text may quote the file: never log it.
                    BusError::Credentials("the .creds file has no user JWT and nkey seed")
                })?
            }
        };
        if options.tls.required {
            nats = nats.require_tls(true);
        }
        if let Some(ca) = options.tls.ca_file {
            nats = nats.add_root_certificates(ca);
        }
        if let Some((cert, key)) = options.tls.client_cert {
            nats = nats.add_client_certificate(cert, key);
        }
        let client = nats
            .name(&options.client_name)
            .connection_timeout(options.connect_timeout)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let state_tx = Arc::clone(&state_tx);
                let last_failure = Arc::clone(&last_failure);
                async move { on_event(&state_tx, &last_failure, event) }
            })
            .connect(url.as_str())
            .await
            .map_err(|source| BusError::Connect {
                url: url.clone(),
                source,
            })?;
        Ok(Bus {
            client,
            source: options.source.into(),
            state,
        })
    }

    /// The underlying client, for the publisher task.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The CloudEvents `source` of events this bus publishes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The connection state, updated on every change. Reconcile from the store whenever it
    /// *becomes* [`ConnectionState::Connected`]: the watch keeps only the latest state, so a
    /// quick disconnect and reconnect shows as one change to `Connected`, never as nothing.
    ///
    /// ```no_run
    /// # async fn example(bus: dragonfly_bus::Bus) {
    /// let mut state = bus.connection_events();
    /// while state.changed().await.is_ok() {
    ///     if *state.borrow_and_update() == dragonfly_bus::ConnectionState::Connected {
    ///         // reconcile from the store
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connection_events(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Publishes `data` as a [`CloudEvent`] on `E::SUBJECT`: new UUID v7 id, current time,
    /// this bus's source, `E::TYPE`, `data.subject()`. Returns once the message is queued
    /// ([`flush`](Self::flush) waits for the server).
    ///
    /// # Errors
    /// [`BusError::Encode`], [`BusError::Publish`], or [`BusError::Timeout`] when the send
    /// buffer stayed full for 5 s (NATS unreachable for long).
    pub async fn publish<E: Event>(&self, data: &E) -> Result<(), BusError> {
        let payload = cloud_event_bytes(&self.source, data)?;
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.client.publish(E::SUBJECT, payload.into()),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(BusError::Publish {
                subject: E::SUBJECT.to_owned(),
                source,
            }),
            Err(_elapsed) => Err(BusError::Timeout {
                subject: E::SUBJECT.to_owned(),
                timeout: PUBLISH_TIMEOUT,
            }),
        }
    }

    /// Subscribes to every `E` published from now on (by anyone, this bus included). The
    /// subscription survives reconnects; events published while disconnected are lost.
    ///
    /// # Errors
    /// [`BusError::Subscribe`] when the client is closed.
    pub async fn subscribe<E: Event>(&self) -> Result<Subscription<E>, BusError> {
        let inner =
            self.client
                .subscribe(E::SUBJECT)
                .await
                .map_err(|source| BusError::Subscribe {
                    subject: E::SUBJECT.to_owned(),
                    source,
                })?;
        Ok(Subscription {
            inner,
            _event: PhantomData,
        })
    }

    /// Sends `req` on `R::SUBJECT` and waits up to `timeout` for one reply.
    ///
    /// # Errors
    /// [`BusError::NoResponders`] when nobody serves the subject, [`BusError::Timeout`] when no
    /// reply came in time (also while NATS is unreachable), [`BusError::Rejected`] when the
    /// service could not decode the request, [`BusError::Decode`] when the reply does not
    /// decode, [`BusError::Encode`] or [`BusError::Request`] otherwise.
    pub async fn request<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Reply, BusError> {
        let subject = R::SUBJECT;
        let payload = encode(subject, req)?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let reply =
            self.client
                .send_request(subject, request)
                .await
                .map_err(|source| match source.kind() {
                    RequestErrorKind::TimedOut => BusError::Timeout {
                        subject: subject.to_owned(),
                        timeout,
                    },
                    RequestErrorKind::NoResponders => BusError::NoResponders {
                        subject: subject.to_owned(),
                    },
                    _ => BusError::Request {
                        subject: subject.to_owned(),
                        source,
                    },
                })?;
        if let Some(reason) = reply.headers.as_ref().and_then(|h| h.get(ERROR_HEADER)) {
            return Err(BusError::Rejected {
                subject: subject.to_owned(),
                reason: reason.to_string(),
            });
        }
        serde_json::from_slice(&reply.payload).map_err(|source| BusError::Decode {
            subject: subject.to_owned(),
            source: DecodeError::Json(source),
        })
    }

    /// Answers every `R` with `handler`, in the queue group `R::SUBJECT` (each request goes to
    /// one of the instances serving it), up to 64 requests at once. A request that does not
    /// decode is answered with a rejection, so the caller gets [`BusError::Rejected`] rather
    /// than a timeout.
    ///
    /// The returned task runs until `shutdown` is cancelled (or the client closes); it then
    /// unsubscribes, answers the requests already received, and ends.
    ///
    /// # Errors
    /// [`BusError::Subscribe`] when the client is closed.
    pub async fn serve<R, F, Fut>(
        &self,
        shutdown: CancellationToken,
        handler: F,
    ) -> Result<JoinHandle<()>, BusError>
    where
        R: Request,
        F: Fn(R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R::Reply> + Send + 'static,
    {
        let mut requests = self
            .client
            .queue_subscribe(R::SUBJECT, R::SUBJECT.to_owned())
            .await
            .map_err(|source| BusError::Subscribe {
                subject: R::SUBJECT.to_owned(),
                source,
            })?;
        let client = self.client.clone();
        let handler = Arc::new(handler);
        Ok(tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let answer = |tasks: &mut JoinSet<()>, msg: Message| {
                tasks.spawn(answer::<R, F, Fut>(
                    client.clone(),
                    Arc::clone(&handler),
                    msg,
                ));
            };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(R::SUBJECT, joined),
                    msg = requests.next(), if tasks.len() < MAX_IN_FLIGHT => match msg {
                        Some(msg) => answer(&mut tasks, msg),
                        None => break,
                    },
                }
            }
            debug!(subject = R::SUBJECT, "draining request subscription");
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                if requests.drain().await.is_ok() {
                    while let Some(msg) = requests.next().await {
                        answer(&mut tasks, msg);
                    }
                }
            })
            .await;
            if drained.is_err() {
                warn!(
                    subject = R::SUBJECT,
                    "request subscription not drained in time"
                );
            }
            while let Some(joined) = tasks.join_next().await {
                log_join(R::SUBJECT, joined);
            }
        }))
    }

    /// Waits until the server has processed everything this bus sent before — subscriptions
    /// included — by a round trip to it (what NATS clients call a flush). Subscribe, `flush`,
    /// *then* read the store: no event published after the read can be missed.
    ///
    /// # Errors
    /// [`BusError::Timeout`] when the round trip took over 10 s (e.g. NATS is unreachable),
    /// [`BusError::Request`] when the client is closed.
    pub async fn flush(&self) -> Result<(), BusError> {
        // A request to a fresh inbox nobody listens on: the server answers "no responders"
        // only after it has processed this connection's earlier operations, in order.
        // (async-nats' own `flush` only empties the socket's write buffer.)
        let subject = self.client.new_inbox();
        let request = async_nats::Request::new().timeout(Some(FLUSH_TIMEOUT));
        match self.client.send_request(subject.clone(), request).await {
            Ok(_) => Ok(()),
            Err(err) => match err.kind() {
                RequestErrorKind::NoResponders => Ok(()),
                RequestErrorKind::TimedOut => Err(BusError::Timeout {
                    subject,
                    timeout: FLUSH_TIMEOUT,
                }),
                _ => Err(BusError::Request {
                    subject,
                    source: err,
                }),
            },
        }
    }
}

/// Every event on the bus, as it was received: what [`Follower<AllEvents>`](crate::Follower)
/// yields. For a relay (apid's `/api/events`), which passes events on without acting on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The subject it came on, one of [`ALL_SUBJECTS`](crate::events::ALL_SUBJECTS).
    pub subject: &'static str,
    /// The envelope, `data` undecoded. Its `type` is the subject's (checked).
    pub envelope: CloudEvent<serde_json::Value>,
    /// The message exactly as received: the CloudEvents JSON document.
    pub json: String,
}

/// Every declared event, undecoded: follow it with [`Follower<AllEvents>`](crate::Follower).
///
/// Not one `dragonfly.>` subscription: requests share the namespace (`dragonfly.power.<op>`),
/// and a subscription matching a request's subject makes NATS deliver the request to it instead
/// of answering "no responders", so a request to a service that is down would time out rather
/// than fail at once. So one subscription per kind, `dragonfly.<kind>.>` (events of a kind
/// arrive in the order they were published), except for a kind that also carries requests,
/// whose events are subscribed one subject each ([`all_events_subjects`]).
#[derive(Debug, Clone, Copy)]
pub struct AllEvents;

/// What [`AllEvents`] subscribes to: `dragonfly.<kind>.>` for each kind of
/// [`ALL_SUBJECTS`](crate::events::ALL_SUBJECTS) that carries no request, and each event
/// subject of a kind that does (`dragonfly.power.changed`, …).
pub fn all_events_subjects() -> Vec<String> {
    let requests: Vec<&str> = crate::power::PowerOp::ALL
        .iter()
        .map(|op| crate::power::subject(*op))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for subject in crate::events::ALL_SUBJECTS {
        let kind = subject.rsplit_once('.').map_or(*subject, |(kind, _)| kind);
        let prefix = format!("{kind}.");
        let shared = requests.iter().any(|r| r.starts_with(&prefix));
        let pattern = if shared {
            (*subject).to_owned()
        } else {
            format!("{kind}.>")
        };
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    out
}

/// A stream of every event ([`AllEvents`]). A message on an event's subject that does not
/// decode yields an `Err` item (and is logged); the stream goes on. Dropping it unsubscribes.
pub struct AllSubscription {
    inner: futures::stream::SelectAll<async_nats::Subscriber>,
}

impl fmt::Debug for AllSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllSubscription")
            .field("subscriptions", &self.inner.len())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Subscribes to every event published from now on ([`AllEvents`]).
    ///
    /// # Errors
    /// [`BusError::Subscribe`] when the client is closed.
    pub async fn subscribe_all(&self) -> Result<AllSubscription, BusError> {
        let mut inner = futures::stream::SelectAll::new();
        for subject in all_events_subjects() {
            let sub = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|source| BusError::Subscribe { subject, source })?;
            inner.push(sub);
        }
        Ok(AllSubscription { inner })
    }
}

impl Stream for AllSubscription {
    type Item = Result<RawEvent, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    if let Some(item) = decode_raw(&msg) {
                        return Poll::Ready(Some(item));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// `None` for a subject that carries no event (one this build does not know).
fn decode_raw(msg: &Message) -> Option<Result<RawEvent, BusError>> {
    let at = crate::events::ALL_SUBJECTS
        .iter()
        .position(|s| *s == msg.subject.as_str())?;
    let subject = crate::events::ALL_SUBJECTS[at];
    let expected = crate::events::ALL_TYPES[at];
    let decoded = CloudEvent::<serde_json::Value>::from_json(&msg.payload).and_then(|event| {
        if event.ty == expected {
            Ok(event)
        } else {
            Err(DecodeError::WrongType {
                expected,
                found: event.ty,
            })
        }
    });
    Some(match decoded {
        Ok(envelope) => Ok(RawEvent {
            subject,
            envelope,
            json: String::from_utf8_lossy(&msg.payload).into_owned(),
        }),
        Err(source) => {
            warn!(subject, error = %Chain(&source), "received a malformed event");
            Err(BusError::Decode {
                subject: subject.to_owned(),
                source,
            })
        }
    })
}

/// A stream of `E` events from [`Bus::subscribe`]. A message that does not decode yields an
/// `Err` item (and is logged); the stream goes on. It ends only when the client closes.
/// Dropping it unsubscribes.
pub struct Subscription<E> {
    inner: async_nats::Subscriber,
    _event: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("event", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}

impl<E: Event> Stream for Subscription<E> {
    type Item = Result<CloudEvent<E>, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .poll_next_unpin(cx)
            .map(|msg| msg.map(|msg| decode_event::<E>(&msg)))
    }
}

fn decode_event<E: Event>(msg: &Message) -> Result<CloudEvent<E>, BusError> {
    CloudEvent::<E>::from_json(&msg.payload)
        .and_then(|event| {
            if event.ty == E::TYPE {
                Ok(event)
            } else {
                Err(DecodeError::WrongType {
                    expected: E::TYPE,
                    found: event.ty,
                })
            }
        })
        .map_err(|source| {
            warn!(
                subject = %msg.subject,
                error = %Chain(&source),
                "received a malformed event"
            );
            BusError::Decode {
                subject: msg.subject.to_string(),
                source,
            }
        })
}

async fn answer<R, F, Fut>(client: Client, handler: Arc<F>, msg: Message)
where
    R: Request,
    F: Fn(R) -> Fut,
    Fut: Future<Output = R::Reply>,
{
    let Some(reply_to) = msg.reply else {
        warn!(
            subject = R::SUBJECT,
            "request without a reply subject; ignored"
        );
        return;
    };
    let request: R = match serde_json::from_slice(&msg.payload) {
        Ok(request) => request,
        Err(err) => {
            warn!(subject = R::SUBJECT, error = %Chain(&err), "rejecting a malformed request");
            return reject(
                &client,
                reply_to,
                R::SUBJECT,
                &format!("malformed request: {}", Chain(&err)),
            )
            .await;
        }
    };
    let reply = handler(request).await;
    match serde_json::to_vec(&reply) {
        Ok(body) => {
            if let Err(err) = client.publish(reply_to, body.into()).await {
                warn!(subject = R::SUBJECT, error = %Chain(&err), "sending a reply");
            }
        }
        Err(err) => {
            error!(subject = R::SUBJECT, error = %Chain(&err), "encoding a reply");
            reject(
                &client,
                reply_to,
                R::SUBJECT,
                "the service could not encode its reply",
            )
            .await;
        }
    }
}

async fn reject(client: &Client, reply_to: async_nats::Subject, subject: &str, reason: &str) {
    // Header values end at a line break: keep the reason on one line.
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_HEADER, reason.as_str());
    if let Err(err) = client
        .publish_with_headers(reply_to, headers, Vec::new().into())
        .await
    {
        warn!(subject, error = %Chain(&err), "sending a rejection");
    }
}

fn log_join(subject: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        error!(subject, error = %Chain(&err), "a request handler panicked");
    }
}

/// `data` in its CloudEvents envelope, as JSON: new UUID v7 id, the current time, `source`,
/// `E::TYPE` and `data.subject()`.
pub(crate) fn cloud_event_bytes<E: Event>(source: &str, data: &E) -> Result<Vec<u8>, BusError> {
    let event = CloudEvent {
        specversion: SpecVersion::V1_0,
        id: Uuid::now_v7().to_string(),
        source: source.to_owned(),
        ty: E::TYPE.to_owned(),
        time: Timestamp::now(),
        subject: data.subject(),
        datacontenttype: JSON_CONTENT_TYPE.to_owned(),
        data,
    };
    encode(E::SUBJECT, &event)
}

fn encode<T: Serialize + ?Sized>(subject: &str, value: &T) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(value).map_err(|source| BusError::Encode {
        subject: subject.to_owned(),
        source,
    })
}

/// No wait before the first two attempts, then 100 ms doubling up to 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(5);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(MAX_RECONNECT_DELAY)
}

/// A failed connection attempt that retrying will not cure: the operator must act.
fn needs_operator(error: &str) -> Option<&'static str> {
    if error.contains("authorization violation") || error.contains("failed signing nonce") {
        Some(
            "NATS refused this daemon's credentials: check [nats] auth/user and the credential \
             (LoadCredential=); serving without the bus meanwhile",
        )
    } else if error.contains("TLS error") {
        Some(
            "TLS to NATS failed (the server's certificate, [nats] tls_ca_file, or the client \
             certificate and key); serving without the bus meanwhile",
        )
    } else {
        None
    }
}

fn on_event(
    state: &watch::Sender<ConnectionState>,
    last_failure: &std::sync::Mutex<Option<String>>,
    event: async_nats::Event,
) {
    use async_nats::Event as E;
    match event {
        E::Connected => {
            *last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
            info!("connected to NATS");
            state.send_replace(ConnectionState::Connected);
        }
        E::Disconnected => {
            warn!("disconnected from NATS; reconnecting");
            state.send_replace(ConnectionState::Disconnected);
        }
        E::Closed => {
            info!("NATS client closed");
            state.send_replace(ConnectionState::Closed);
        }
        E::SlowConsumer(sid) => warn!(
            sid,
            "slow consumer: NATS dropped messages for a subscription"
        ),
        E::LameDuckMode => warn!("NATS server entered lame duck mode"),
        E::Draining => debug!("NATS client draining"),
        E::ServerError(err) => warn!(error = %Chain(&err), "NATS server error"),
        // `ClientError` is not a `std::error::Error`: async-nats flattens its causes into the
        // text, so its `Display` is already the whole chain.
        // While disconnected every failed reconnect attempt reports an I/O error; the
        // disconnect was already logged once, so repeating it would only flood the journal.
        E::ClientError(err) if *state.borrow() != ConnectionState::Connected => {
            let text = err.to_string();
            let mut last = last_failure.lock().unwrap_or_else(|p| p.into_inner());
            // Credentials and certificates do not fix themselves: say so once, loudly (and
            // again only if the failure changes); every attempt after that at debug.
            match needs_operator(&text) {
                Some(what) if last.as_deref() != Some(text.as_str()) => {
                    error!(error = %text, "{what}");
                    *last = Some(text);
                }
                _ => debug!(error = %text, "NATS reconnect attempt failed"),
            }
        }
        E::ClientError(err) => warn!(error = %err, "NATS client error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NATS pattern `pattern` matches `subject`.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        for (i, token) in p.iter().enumerate() {
            match *token {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    #[test]
    fn all_events_match_every_event_once_and_no_request() {
        let patterns = all_events_subjects();
        for subject in crate::events::ALL_SUBJECTS {
            let n = patterns.iter().filter(|p| matches(p, subject)).count();
            assert_eq!(n, 1, "{subject}: {patterns:?}");
        }
        for op in crate::power::PowerOp::ALL {
            let request = crate::power::subject(op);
            assert!(
                !patterns.iter().any(|p| matches(p, request)),
                "{request} would look answered: {patterns:?}"
            );
        }
        assert!(patterns.contains(&"dragonfly.workflow.>".to_owned()));
        assert!(patterns.contains(&"dragonfly.power.changed".to_owned()));
    }

    #[test]
    fn credentials_never_print() {
        let auth = BusAuth::UserPassword {
            user: "dragonfly".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{auth:?}");
        assert!(
            shown.contains("dragonfly") && !shown.contains("hunter2"),
            "{shown}"
        );
        let seed = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4";
        for auth in [BusAuth::NkeySeed(seed.into()), BusAuth::Creds(seed.into())] {
            assert!(!format!("{auth:?}").contains(seed));
        }
    }

    #[test]
    fn nkey_seeds_are_checked_before_connecting() {
        assert!(is_plausible_nkey_seed(
            "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
        ));
        assert!(!is_plausible_nkey_seed("SUAIBDPBAUTW"));
        assert!(!is_plausible_nkey_seed(
            "UAAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
        ));
        assert!(!is_plausible_nkey_seed(
            "SUaIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
        ));
    }

    #[tokio::test]
    async fn malformed_credentials_are_refused_without_quoting_them() {
        for auth in [
            BusAuth::NkeySeed("SUtruncated".into()),
            BusAuth::Creds("not a creds file: hunter2".into()),
        ] {
            let mut options = ConnectOptions::new("nats://127.0.0.1:1", "test", None);
            options.auth = auth;
            let err = Bus::connect(options).await.unwrap_err();
            let text = Chain(&err).to_string();
            assert!(matches!(err, BusError::Credentials(_)), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("SUtruncated"),
                "{text}"
            );
        }
    }

    #[test]
    fn failures_an_operator_must_fix_are_told_apart() {
        assert!(needs_operator("nats: authorization violation").is_some());
        assert!(needs_operator("nats: TLS error").is_some());
        assert!(needs_operator("nats: IO error").is_none());
        assert!(needs_operator("nats: timed out").is_none());
    }

    #[test]
    fn reconnect_backoff_is_capped_at_two_seconds() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(6), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(7), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn chain_prints_every_cause_once() {
        let err = BusError::Decode {
            subject: "dragonfly.machine.registered".to_owned(),
            source: DecodeError::SpecVersion {
                found: Some("0.3".to_owned()),
            },
        };
        assert_eq!(
            Chain(&err).to_string(),
            "decoding a message on dragonfly.machine.registered: \
             unsupported CloudEvents specversion 0.3 (expected \"1.0\")"
        );
    }
}
