//! Dragonfly's typed NATS bus: events in CloudEvents 1.0 envelopes, and request/reply.
//!
//! Daemons share state through the SQLite store; the bus only *tells* them that something
//! changed (events) or asks another daemon something (requests). It is core NATS: at most once,
//! nothing kept while a subscriber or the server is down. So a daemon must never treat an event
//! as the only copy of a fact — it reconciles from the store at start and after every
//! (re)connect, which [`Bus::connection_events`] announces.
//!
//! - Subjects are `dragonfly.<kind>.<event>`; every event type is declared in [`events`].
//! - An [`Event`] is published as a [`CloudEvent`] (JSON format) on `E::SUBJECT`; a
//!   [`Subscription`] yields decoded events, and an error item (never the end of the stream)
//!   for a message that does not decode.
//! - A [`Request`] is plain JSON on `R::SUBJECT`; [`Bus::serve`] answers it in a queue group
//!   named after the subject, so several instances of a daemon share the load.
//! - Daemons publish through a [`Publisher`] (bounded, never blocks, drops counted) and
//!   subscribe through a [`Follower`] (which also says when to reconcile from the store): of
//!   one event type, or of [`AllEvents`] (undecoded [`RawEvent`]s, for a relay).
//! - [`Bus::connect`] returns at once even when NATS is down: messages wait in the client's
//!   buffer and go out on connect; reconnects never stop, with backoff capped at 2 s, and the
//!   client re-creates its subscriptions on the new connection.
//!
//! # Credentials and TLS
//! [`ConnectOptions`] carries how the client authenticates ([`BusAuth`]: user and password,
//! an nkey seed, or a `.creds` file; the frame reads them from systemd credentials, never from
//! the config file) and TLS ([`BusTls`]: a CA file to verify the server, a client certificate).
//! A server that refuses them is retried like an unreachable one and logged once at `error`:
//! the daemon keeps serving without the bus, as it does while NATS is down.
//!
//! # TLS: exactly one rustls crypto provider
//! async-nats is built with `default-features = false, features = ["ring", "nkeys"]`. rustls picks its
//! provider from crate features only when exactly one of `ring` / `aws-lc-rs` is compiled in;
//! with both (say, another dependency enabling `aws-lc-rs`) async-nats panics when it sets up
//! TLS for a `tls://` URL. Keep `ring` the only provider in the workspace; a daemon that cannot
//! guarantee it calls [`install_crypto_provider`] at start.

mod bus;
mod cloudevent;
mod error;
pub mod events;
mod follow;
pub mod power;
mod publisher;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bus::{
    AllEvents, AllSubscription, Bus, BusAuth, BusTls, ConnectOptions, ConnectionState, RawEvent,
    Subscription, all_events_subjects,
};
pub use cloudevent::{CloudEvent, DecodeError, JSON_CONTENT_TYPE, SpecVersion};
pub use error::BusError;
pub use follow::{Change, Followed, Follower, ReconcileReason};
pub use publisher::{DEFAULT_CAPACITY, Publisher, PublisherStats, PublisherTask};

/// A payload published on the bus as the `data` of a [`CloudEvent`].
///
/// Sealed: only the events declared in [`events`] implement it, so every event is in
/// [`events::ALL_SUBJECTS`] and in the docs tests.
pub trait Event: sealed::Sealed + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The NATS subject, `dragonfly.<kind>.<event>`.
    const SUBJECT: &'static str;
    /// The CloudEvents `type`: `computer.` followed by the subject.
    const TYPE: &'static str;
    /// The CloudEvents `subject`: what the event is about (e.g. the machine id), if anything.
    fn subject(&self) -> Option<String> {
        None
    }
}

mod sealed {
    /// Implemented by the `events!` macro only.
    pub trait Sealed {}

    /// What a follower may follow: each event, and every event at once.
    pub trait Followed {}
    impl<E: super::Event> Followed for E {}
    impl Followed for crate::AllEvents {}
}

/// A request answered by one instance of a service ([`Bus::serve`]); sent with
/// [`Bus::request`]. Both directions are plain JSON.
pub trait Request: Serialize + DeserializeOwned + Send + 'static {
    /// The NATS subject, `dragonfly.<kind>.<verb>`; also the serving queue group's name.
    const SUBJECT: &'static str;
    /// What the service answers. Use a `Result`-like enum when the service can refuse.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// Installs rustls' `ring` provider as the process default, so `tls://` connections work even
/// if another dependency also compiles in `aws-lc-rs`. Idempotent; call it first thing in
/// `main`. Not needed while `ring` is the only provider compiled in.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: whoever did it chose, and that is fine.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn tls_setup_finds_exactly_one_crypto_provider() {
        // What async-nats does for a tls:// URL: panics when zero or two providers are compiled
        // in and none is installed. One test, in this order, so that nothing installed one yet.
        let _config = async_nats::rustls::ClientConfig::builder()
            .with_root_certificates(async_nats::rustls::RootCertStore::empty())
            .with_no_client_auth();

        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(async_nats::rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
