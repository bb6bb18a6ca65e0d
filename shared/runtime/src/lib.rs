//! The frame every Dragonfly daemon lives in.
//!
//! `apid`, `dhcpd`, `tftpd`, `ipxed`, … each are a library with a `run(ctx, sockets,
//! shutdown)` function plus a one-line `main`. Everything else — all that systemd expects a
//! well-behaved service to do — lives here, once, so the daemons start, stop and fail alike.
//!
//! # The frame
//!
//! [`daemon`] owns a daemon's whole life — arguments, configuration, logging, sockets,
//! credentials, lock-down, the tokio runtime, the store, the bus and its publisher, READY,
//! STATUS, the watchdog, SIGTERM/SIGINT and the drain, exit codes — so a daemon provides only
//! its [`Daemon`] implementation (config section, sockets, health, `run`) and its `main` is
//! one line. The other modules are the frame's parts; daemons rarely call them directly.
//!
//! The reference daemon `src/bin/demo/` (built as `dragonfly-demo`, exercised by the
//! integration tests under `systemd-socket-activate` and a real watchdog) shows the whole
//! shape:
//!
//! ```ignore
#![doc = include_str!("bin/demo/service.rs")]
//! ```
//!
//! Secrets come from [`credentials::load_credential`], never from the config file, the
//! command line or environment values.

pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod privileges;
pub mod signals;
pub mod sockets;

pub use cli::{CommonArgs, exit_code_for};
pub use config::{
    ConfigError, DaemonConfig, Invalid, ListenConfig, Loaded, LogConfig, NatsConfig, StoreConfig,
};
pub use credentials::{CredentialError, Secret, load_credential};
pub use daemon::{
    BEAT_EVERY, Context, CredentialSpec, Credentials, CredentialsError, Daemon, Health,
    NatsCredentialsError, NoStore, StoreAccess, main, nats_connect_options, serve,
};
pub use metrics::Metrics;
pub use privileges::{PrivilegeError, lock_down};
pub use signals::{GraceElapsed, SignalError, drain, shutdown_token};
pub use sockets::{SocketError, Sockets};
