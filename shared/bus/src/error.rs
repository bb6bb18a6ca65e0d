//! The bus's one error type: a variant per case a caller acts on differently.

use std::time::Duration;

use crate::cloudevent::DecodeError;

/// What went wrong on the bus. Display text names the operation and subject; the cause is the
/// `source()`, never repeated in the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The URL is unusable (connection failures themselves are retried in the background).
    #[error("connecting to NATS at {url}")]
    Connect {
        /// The URL given to [`Bus::connect`](crate::Bus::connect).
        url: String,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials given to [`Bus::connect`](crate::Bus::connect) are unusable (a
    /// malformed `.creds` file or nkey seed). Never carries the secret.
    #[error("the NATS credentials: {0}")]
    Credentials(&'static str),
    /// A payload could not be serialized.
    #[error("encoding a message for {subject}")]
    Encode {
        /// Where it was going.
        subject: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The client could not queue a message (it is closed, or the subject is invalid).
    #[error("publishing to {subject}")]
    Publish {
        /// Where it was going.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::PublishError,
    },
    /// The client could not subscribe.
    #[error("subscribing to {subject}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// A request failed for a reason other than a timeout or no responders.
    #[error("requesting on {subject}")]
    Request {
        /// The request's subject.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::RequestError,
    },
    /// No reply within the timeout, a flush without an answer, or a publish stuck behind a
    /// full send buffer (NATS has been unreachable for a while).
    #[error("{subject}: timed out after {timeout:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Nobody serves this request subject (NATS answered at once).
    #[error("no service answers on {subject}")]
    NoResponders {
        /// The request's subject.
        subject: String,
    },
    /// The service could not decode the request (or encode its reply) and said why.
    #[error("the service on {subject} rejected the request: {reason}")]
    Rejected {
        /// The request's subject.
        subject: String,
        /// The service's explanation.
        reason: String,
    },
    /// A received message did not decode as the expected type.
    #[error("decoding a message on {subject}")]
    Decode {
        /// The message's subject.
        subject: String,
        /// The cause.
        #[source]
        source: DecodeError,
    },
}
