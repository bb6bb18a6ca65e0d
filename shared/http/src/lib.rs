//! dragonfly-http: the one way Dragonfly's daemons serve HTTP (apid's two listeners, ipxed).
//!
//! Why it exists: `axum::serve` gives a connection no deadline at all. hyper's header timeout
//! does nothing without a timer, bodies and idle connections have no bound, and every
//! connection is accepted, so 1 100 half-sent requests from one host took apid and ipxed
//! offline (EMFILE) until that host let go. Each daemon serving its router its own way is how
//! one of them would be left unbounded; so both hand their router to [`Server`], which gives
//! every connection:
//!
//! - a **header timeout** (hyper's, with tokio's timer): the request line and headers, and the
//!   TLS handshake before them, must arrive within `header_timeout`; it also bounds the wait
//!   for the next request on a keep-alive connection;
//! - a **body timeout**: the whole body within `body_timeout` of its headers, however slowly
//!   it trickles;
//! - an **idle timeout**: a connection on which no byte moves either way for `idle_timeout`
//!   is closed (a client that stopped reading its response);
//! - **connection caps**: at most `max_connections` on the listener and
//!   `max_connections_per_client` from one address; beyond them a new connection is closed as
//!   soon as it is accepted, before a byte is read or a task spawned;
//! - **back-off** when accept fails for want of descriptors or memory (EMFILE, ENFILE):
//!   pause [`ACCEPT_BACKOFF`] and accept again, never spin and never stop serving;
//! - a **graceful drain** when the shutdown token is cancelled: stop accepting, close idle
//!   connections, let requests in flight finish (the frame bounds how long); a response that
//!   never finishes by itself (Server-Sent Events) ends on the [`Draining`] signal every
//!   request carries, so it does not hold the shutdown up;
//! - optional **TLS** ([`Tls`]: rustls with ring, certificate and key given as bytes).
//!
//! Each listener has its own caps, so a flood on apid's agent listener cannot take the
//! operator listener's places. The configuration section is [`HttpConfig`] (`[apid.http]`,
//! `[ipxed.http]`). What it must never do: bind a socket (the caller passes the listener),
//! read a file (TLS material comes in as bytes, through the frame's credentials) or speak
//! HTTP/2 (no client of ours needs it, and it is more attack surface).

mod admission;
mod body;
mod config;
mod direct;
mod files;
mod head;
mod io;
mod serve;
mod tls;

pub use body::BodyError;
pub use config::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT, HttpConfig, RawHttpConfig,
    TLS_CERTIFICATE_CREDENTIAL, TLS_KEY_CREDENTIAL, TlsFiles, TlsOff,
};
pub use files::{Answering, FileAnswer, FileBody, FilePart, FileRequest, FileRoutes};
pub use serve::{ACCEPT_BACKOFF, Draining, Secure, ServeError, Server};
pub use tls::{Tls, TlsError};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests;

/// The fuzz target's entry point (`shared/http/fuzz`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `data` as a request head and checks what a parsed head promises: it lies within
    /// the bytes and the size bound, parsing exactly its own bytes gives the same head, its path
    /// is a prefix of its target, and the questions the server asks of it answer. `Ok(None)`
    /// (more bytes needed) only below the size bound.
    pub fn parse_head(data: &[u8]) {
        use crate::head::{MAX_HEAD_BYTES, parse};
        match parse(data) {
            Ok(Some(head)) => {
                assert!(head.len <= data.len() && head.len <= MAX_HEAD_BYTES);
                let again = parse(&data[..head.len])
                    .expect("a head's own bytes parse")
                    .expect("a head's own bytes are complete");
                assert_eq!(
                    (&again.method, &again.target, again.minor, again.len),
                    (&head.method, &head.target, head.minor, head.len)
                );
                assert_eq!(again.headers, head.headers);
                assert!(head.target.starts_with(head.path()));
                let _ = (head.keep_alive(), head.is_plain_fetch());
            }
            Ok(None) => assert!(data.len() < MAX_HEAD_BYTES),
            Err(_) => {}
        }
    }
}
