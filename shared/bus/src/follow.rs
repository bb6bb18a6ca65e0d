//! The one way a daemon subscribes: events as hints, the store as the truth.
//!
//! Core NATS delivers at most once and keeps nothing for a subscriber that is away, so a
//! daemon that acted only on events would lose work whenever NATS restarts, its connection
//! drops or it starts after the event was sent. The rule "every daemon reconciles from the
//! store on start and after reconnect" is therefore not left to each daemon: a [`Follower`]
//! yields [`Change::Reconcile`] when it starts, after every reconnect and (optionally) on a
//! period, and [`Change::Event`] for each event in between. The daemon re-reads the store for
//! both; an event only says *where* to look first.
//!
//! Ordering: before yielding `Reconcile`, the follower makes sure the server has its
//! subscription (a round trip), so any event published after the daemon's store read is
//! delivered to it — nothing falls between the read and the subscription.
//!
//! Events are hints for a second reason: whoever can publish on the bus can forge one. NATS
//! credentials and TLS ([`crate::BusAuth`], [`crate::BusTls`]) limit who can publish, and
//! re-reading the store limits what a forged or replayed event can do to one wasted read.
//!
//! This module must never treat an event's payload as state that is not also in the store.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::bus::{AllSubscription, Bus, ConnectionState, RawEvent, Subscription};
use crate::{AllEvents, BusError, CloudEvent, Event};

/// How long the subscription check before a reconcile may take; after that the reconcile
/// happens anyway (a reconcile late is worse than one that might miss an event, which the next
/// reconnect or period catches).
const FLUSH_BOUND: Duration = Duration::from_secs(2);

/// What a [`Follower`] follows: one event type `E` (yielding `CloudEvent<E>`), or
/// [`AllEvents`] (yielding [`RawEvent`]s). Sealed.
pub trait Followed: crate::sealed::Followed + Send + 'static {
    /// What the follower yields for each event.
    type Item: Send;
    /// The subscription the events come from.
    #[doc(hidden)]
    type Stream: Stream<Item = Result<Self::Item, BusError>> + Unpin + Send + fmt::Debug;
    /// Subscribes.
    #[doc(hidden)]
    fn subscribe(bus: &Bus) -> SubscribeFuture<'_, Self::Stream>;
}

/// What [`Followed::subscribe`] returns.
pub(crate) type SubscribeFuture<'a, S> =
    Pin<Box<dyn Future<Output = Result<S, BusError>> + Send + 'a>>;

impl<E: Event> Followed for E {
    type Item = CloudEvent<E>;
    type Stream = Subscription<E>;
    fn subscribe(bus: &Bus) -> SubscribeFuture<'_, Subscription<E>> {
        Box::pin(bus.subscribe::<E>())
    }
}

impl Followed for AllEvents {
    type Item = RawEvent;
    type Stream = AllSubscription;
    fn subscribe(bus: &Bus) -> SubscribeFuture<'_, AllSubscription> {
        Box::pin(bus.subscribe_all())
    }
}

/// What a daemon following the bus must do next.
pub enum Change<E: Followed> {
    /// Read the store and act on everything in it: at start, after a reconnect, on a period.
    Reconcile(ReconcileReason),
    /// An event happened (`CloudEvent<E>`, or a [`RawEvent`] for [`AllEvents`]); re-read
    /// what it is about.
    Event(E::Item),
}

impl<E: Followed> fmt::Debug for Change<E>
where
    E::Item: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reconcile(reason) => f.debug_tuple("Reconcile").field(reason).finish(),
            Self::Event(event) => f.debug_tuple("Event").field(event).finish(),
        }
    }
}

/// Why a [`Change::Reconcile`] was yielded (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileReason {
    /// The follower just started.
    Start,
    /// The connection to NATS came (back) up: events may have been missed meanwhile.
    Reconnected,
    /// The safety-net period elapsed.
    Period,
}

/// Subscription to `E` (an event type, or [`AllEvents`]) that also says when to reconcile;
/// see the module docs.
pub struct Follower<E: Followed> {
    bus: Bus,
    events: E::Stream,
    states: watch::Receiver<ConnectionState>,
    period: Option<Interval>,
    pending: Option<ReconcileReason>,
}

impl<E: Followed> fmt::Debug for Follower<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("events", &self.events)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<E: Followed> Follower<E> {
    /// Subscribes to `E`. With `period`, also asks for a reconcile that often (a safety net
    /// for work a lost event and a missed reconnect could both leave behind; pick it long).
    ///
    /// # Errors
    /// [`BusError::Subscribe`] when the client is closed.
    pub async fn new(bus: &Bus, period: Option<Duration>) -> Result<Self, BusError> {
        let events = E::subscribe(bus).await?;
        let mut states = bus.connection_events();
        states.borrow_and_update();
        let period = period.map(|p| {
            let p = p.max(Duration::from_millis(1));
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Ok(Self {
            bus: bus.clone(),
            events,
            states,
            period,
            pending: Some(ReconcileReason::Start),
        })
    }

    /// The next thing to do. `None` only when the NATS client has closed for good.
    pub async fn next(&mut self) -> Option<Change<E>> {
        loop {
            if let Some(reason) = self.pending.take() {
                if *self.states.borrow() == ConnectionState::Connected {
                    // Bounded: a failed check is no reason to delay the reconcile.
                    let _ = tokio::time::timeout(FLUSH_BOUND, self.bus.flush()).await;
                }
                return Some(Change::Reconcile(reason));
            }
            let Self {
                events,
                states,
                period,
                ..
            } = self;
            let tick = async {
                match period {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = states.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    match *states.borrow_and_update() {
                        ConnectionState::Connected => {
                            self.pending = Some(ReconcileReason::Reconnected);
                        }
                        ConnectionState::Closed => return None,
                        ConnectionState::Connecting | ConnectionState::Disconnected => {}
                    }
                }
                () = tick => self.pending = Some(ReconcileReason::Period),
                item = events.next() => match item {
                    Some(Ok(event)) => return Some(Change::Event(event)),
                    // Logged where it was decoded; the stream goes on.
                    Some(Err(_)) => {}
                    None => return None,
                },
            }
        }
    }
}
