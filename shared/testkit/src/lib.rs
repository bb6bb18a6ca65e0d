//! Helpers for Dragonfly's integration tests.
//!
//! This crate exists so that every crate's tests start real servers (NATS), pick ports, skip
//! or fail on missing tools, and drop root privileges the same way. It is only ever a
//! `[dev-dependencies]` entry: nothing here may be reachable from a daemon.
//!
//! Tests must never pass silently in CI: every `require_*` helper panics when `CI` is set and
//! the requirement is missing, and otherwise prints `SKIP: <test>: <why>` to stderr so that a
//! skipped test is visible in `cargo test -- --nocapture` output.

mod activate;
mod fuzz;
pub mod ipmi_sim;
mod nats;
mod privilege;
mod require;
pub mod sushy;

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

pub use activate::SocketActivated;
pub use fuzz::replay_kept_inputs;
pub use nats::{NATS_SERVER_ENV, NatsBinary, NatsServer, nats_server_binaries};
pub use privilege::{
    UNPRIVILEGED_GROUP, UNPRIVILEGED_USER, chown_for_unprivileged, is_root, unprivileged,
};
pub use require::{require_binary, require_nats_servers, require_root};
/// A temporary directory removed on drop (re-exported from `tempfile`).
pub use tempfile::TempDir;

/// Returns a port on 127.0.0.1 that was free for both TCP and UDP a moment ago.
///
/// The sockets are closed before returning, so another process may take the port in between:
/// good enough for tests, never for production code (which receives its sockets instead).
///
/// # Panics
/// If no port is free on loopback after many tries (the machine is broken).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0/tcp");
        let port = tcp
            .local_addr()
            .expect("local address of a bound socket")
            .port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 was free for both TCP and UDP after 100 tries");
}

/// Polls `condition` every 10 ms until it returns `true` (→ `true`) or `timeout` passes
/// (→ `false`). Use it as `assert!(wait_for(…).await, "what did not happen")`.
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_for_tcp_and_udp() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("tcp");
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("udp");
    }

    #[tokio::test]
    async fn wait_for_sees_a_condition_become_true() {
        let mut calls = 0;
        assert!(
            wait_for(Duration::from_secs(5), || {
                calls += 1;
                calls == 3
            })
            .await
        );
    }

    #[tokio::test]
    async fn wait_for_gives_up_after_the_timeout() {
        assert!(!wait_for(Duration::from_millis(50), || false).await);
    }
}
