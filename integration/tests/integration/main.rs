//! End-to-end network boots: QEMU machines booting over the network inside a private
//! namespace, first against stand-ins (dnsmasq + busybox httpd, proving the harness), then
//! against Dragonfly's own dhcpd, tftpd and ipxed.
//!
//! Every boot test needs root, QEMU and the lab's packages (see `dragonfly_integration`); VMs
//! run one at a time (a file lock in `target/e2e-cache/`). Run with `--nocapture` to see each
//! boot's timeline. `cargo build --workspace --bins` must have run first.
//!
//! Besides the boots, `example_config` holds the shipped example configuration to every
//! daemon's config types: this crate is the one that sees all the daemons. It needs nothing.
//! `metrics` has a real Prometheus scrape every daemon of a lab (root, no VM).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
#![allow(
    clippy::print_stdout,
    reason = "the boot timelines are this test's report"
)]

mod cli;
mod common;
mod debian;
mod discovery;
mod example_config;
mod metrics;
mod power;
mod power_harness;
mod provision;
mod provision_faults;
mod proxy;
mod reservation;
mod standin;
mod test_os;
mod ui;
