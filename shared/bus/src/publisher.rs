//! The one way a daemon publishes events: a bounded queue in front of the bus.
//!
//! Events are notifications (the store is the truth), so publishing must never slow down the
//! work that caused them: a DHCP ACK, a boot script, an API answer. [`Publisher::publish`] is a
//! plain function that encodes the event and puts it in a bounded queue; one task per daemon
//! sends the queue to NATS. When the queue is full — NATS has been unreachable for a while, or
//! the daemon produces events faster than NATS takes them — the new event is dropped, counted,
//! and logged at a limited rate. Subscribers lose nothing that matters: they reconcile from the
//! store after every (re)connect.
//!
//! While NATS is unreachable the task holds what is queued and sends it on reconnect, so a
//! short outage loses no event; a long one loses the newest beyond the queue's capacity.
//!
//! Stopping must never hold up a daemon's drain ([`Publisher::close`] is bounded): a daemon
//! that stopped in 60 ms with NATS up once took its whole 10 s grace with NATS down, because it
//! waited for a publish that could not happen.
//!
//! This module must never block or await in [`Publisher::publish`], and never retry an event
//! forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Client;
use dragonfly_core::Chain;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Event;
use crate::bus::{Bus, ConnectionState, cloud_event_bytes};

/// Events waiting for NATS at most. A boot storm of 1 000 machines produces a few thousand.
pub const DEFAULT_CAPACITY: usize = 8192;

/// How long one send to the client may take before the event is given up on.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// At most one "dropped" warning per this interval (the count says how many).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One encoded event on its way out.
struct Outgoing {
    subject: &'static str,
    payload: Vec<u8>,
}

/// Counters a daemon may report (e.g. in `STATUS=` or metrics).
#[derive(Debug, Default)]
pub struct PublisherStats {
    published: AtomicU64,
    dropped: AtomicU64,
}

impl PublisherStats {
    /// Events handed to NATS.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Events dropped: queue full, encoding failed, NATS refused, or abandoned at close.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A cloneable handle for publishing events; see the module docs. Create it with
/// [`Publisher::start`] (inside a tokio runtime), or [`Publisher::disabled`] where no bus
/// exists (tests of a layer that publishes but whose events nobody checks).
#[derive(Clone, Debug)]
pub struct Publisher {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Outgoing>,
    source: Arc<str>,
    stats: Arc<PublisherStats>,
    limiter: std::sync::Mutex<DropLog>,
}

/// The sending task, returned by [`Publisher::start`] so the owner can close it.
#[derive(Debug)]
pub struct PublisherTask {
    handle: JoinHandle<()>,
    stop: watch::Sender<Option<Instant>>,
    stats: Arc<PublisherStats>,
}

impl Publisher {
    /// Starts the sending task for `bus` with a queue of `capacity` events.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the task).
    pub fn start(bus: &Bus, capacity: usize) -> (Publisher, PublisherTask) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(PublisherStats::default());
        let (stop, stop_rx) = watch::channel(None);
        let handle = tokio::spawn(send_loop(
            bus.client().clone(),
            bus.connection_events(),
            rx,
            stop_rx,
            Arc::clone(&stats),
        ));
        let publisher = Publisher {
            inner: Some(Arc::new(Inner {
                tx,
                source: bus.source().into(),
                stats: Arc::clone(&stats),
                limiter: std::sync::Mutex::new(DropLog::default()),
            })),
        };
        (
            publisher,
            PublisherTask {
                handle,
                stop,
                stats,
            },
        )
    }

    /// A publisher that drops every event silently (no bus at all).
    pub fn disabled() -> Publisher {
        Publisher { inner: None }
    }

    /// Queues `event` for publishing as a CloudEvent on `E::SUBJECT`. Never blocks; when the
    /// queue is full the event is dropped and counted (see the module docs).
    pub fn publish<E: Event>(&self, event: &E) {
        let Some(inner) = &self.inner else {
            return;
        };
        let payload = match cloud_event_bytes(&inner.source, event) {
            Ok(p) => p,
            Err(e) => {
                // A bug (the payload types serialize infallibly), but never a panic.
                inner.dropped(E::SUBJECT, "cannot encode the event", Some(&e));
                return;
            }
        };
        let out = Outgoing {
            subject: E::SUBJECT,
            payload,
        };
        if inner.tx.try_send(out).is_err() {
            inner.dropped(
                E::SUBJECT,
                "event queue full (NATS unreachable or slow)",
                None,
            );
        }
    }

    /// The counters, when this publisher has a bus.
    pub fn stats(&self) -> Option<&PublisherStats> {
        self.inner.as_deref().map(|i| &*i.stats)
    }
}

impl Inner {
    fn dropped(
        &self,
        subject: &'static str,
        why: &'static str,
        error: Option<&dyn std::error::Error>,
    ) {
        let total = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut log = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = log.due(Instant::now()) {
            match error {
                Some(e) => {
                    tracing::warn!(subject, dropped_total = total, dropped_since_last = since, error = %Chain(e), why)
                }
                None => tracing::warn!(
                    subject,
                    dropped_total = total,
                    dropped_since_last = since,
                    why
                ),
            }
        }
    }
}

/// Logs at most once per [`LOG_EVERY`], saying how many drops happened since the last line.
#[derive(Debug, Default)]
struct DropLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl DropLog {
    /// Counts one drop; returns how many to report when a log line is due now.
    fn due(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

impl PublisherTask {
    /// Stops the task: what is queued is sent while NATS is connected and `within` lasts; the
    /// rest is dropped (counted, logged once). Returns within `within` plus one send timeout
    /// at the very most, whatever NATS does.
    pub async fn close(self, within: Duration) {
        let deadline = Instant::now() + within;
        self.stop.send_replace(Some(deadline));
        let grace = within + SEND_TIMEOUT;
        let mut handle = self.handle;
        if tokio::time::timeout(grace, &mut handle).await.is_err() {
            handle.abort();
        }
        let dropped = self.stats.dropped();
        if dropped > 0 {
            tracing::info!(
                published = self.stats.published(),
                dropped,
                "event publisher stopped; dropped events are recovered by subscribers' reconcile"
            );
        }
    }

    /// The counters.
    pub fn stats(&self) -> &PublisherStats {
        &self.stats
    }
}

async fn send_loop(
    client: Client,
    mut state: watch::Receiver<ConnectionState>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<Option<Instant>>,
    stats: Arc<PublisherStats>,
) {
    loop {
        let closing = *stop.borrow_and_update();
        // Hold events while disconnected: the client would only buffer them itself and then
        // block us. While closing, wait for the connection only until the deadline.
        let connected = wait_connected(&mut state);
        let is_connected = match closing {
            None => tokio::select! {
                c = connected => c,
                _ = stop.changed() => continue,
            },
            Some(deadline) => tokio::time::timeout_at(deadline, connected)
                .await
                .unwrap_or(false),
        };
        if !is_connected {
            // Closing while NATS is away, or the client closed for good: give up the queue.
            abandon(&mut rx, &stats);
            return;
        }
        let next = match closing {
            None => tokio::select! {
                m = rx.recv() => m,
                _ = stop.changed() => continue,
                // Re-check the connection now and then, so a disconnect is noticed while idle.
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            },
            Some(deadline) if Instant::now() >= deadline => {
                abandon(&mut rx, &stats);
                return;
            }
            // Empty (or every sender gone): done.
            Some(_) => rx.try_recv().ok(),
        };
        let Some(out) = next else {
            return; // Closing with an empty queue, or every Publisher dropped.
        };
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            client.publish(out.subject, out.payload.into()),
        );
        match sent.await {
            Ok(Ok(())) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = out.subject, error = %Chain(&e), "event not published");
            }
            Err(_) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = out.subject, timeout = ?SEND_TIMEOUT, "event not published: NATS did not take it in time");
            }
        }
    }
}

/// True once connected; false if the client closed for good.
async fn wait_connected(state: &mut watch::Receiver<ConnectionState>) -> bool {
    state
        .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::Closed))
        .await
        .map(|s| *s == ConnectionState::Connected)
        .unwrap_or(false)
}

fn abandon(rx: &mut mpsc::Receiver<Outgoing>, stats: &PublisherStats) {
    rx.close();
    let mut n = 0u64;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    if n > 0 {
        stats.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(
            dropped = n,
            "stopping with events queued and NATS unreachable; dropping them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_log_is_rate_limited_and_counts_what_it_skipped() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.due(t0), Some(1));
        assert_eq!(log.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.due(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.due(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(log.due(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_disabled_publisher_accepts_everything() {
        let p = Publisher::disabled();
        p.publish(&crate::events::TftpTransferred {
            file: "x".into(),
            client: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            bytes: 1,
            duration_ms: 1,
            complete: true,
            error: None,
        });
        assert!(p.stats().is_none());
    }
}
