//! Integration tests for `dragonfly-runtime`: the reference daemon (`dragonfly-demo`) run as a
//! real process, under `systemd-socket-activate` and `setpriv` where available.

// `cfg(test)` on the modules lets clippy apply the workspace's test allowances (unwrap, print)
// to their helper functions too, not only to the `#[test]` functions.
#[cfg(test)]
mod demo;
#[cfg(test)]
mod logging;
#[cfg(test)]
mod nats_auth;
