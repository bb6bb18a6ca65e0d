//! The frame every Dragonfly daemon lives in.
//!
//! `apid`, `dhcpd`, `tftpd`, `ipxed`, … each are a library with a `run(config, sockets,
//! shutdown)` function plus a thin `main`. Everything that is the same in all of those `main`s
//! — and that systemd expects a well-behaved service to do — lives here, once, so the daemons
//! start, stop and fail alike.
//!
//! # Start-up order
//!
//! The order matters; each step explains why it is where it is.
//!
//! 1. **Parse arguments** ([`cli::CommonArgs`] flattened into the daemon's clap parser). Bad
//!    usage exits 2 (clap does this).
//! 2. **Load and validate the configuration** ([`cli::load_config`] → [`config::load`]). Errors
//!    are printed (logging does not exist yet) and exit 2.
//! 3. **`--check-config`** prints `config OK: <path>` and exits 0 here, before anything
//!    touches sockets or the system.
//! 4. **Logging** ([`logging::init`]): journald under systemd, else stderr.
//! 5. **Sockets** ([`sockets::Sockets::from_env`], then `tcp_or_bind`/`udp_or_bind` per
//!    socket): systemd's if it passed them, else bound from config — while we might still hold
//!    `CAP_NET_BIND_SERVICE`. Drop the `Sockets` afterwards so unused ones are reported.
//! 6. **Lock down** ([`privileges::lock_down`]): refuse root, `no_new_privs`, drop capabilities.
//!    Still single-threaded, so every later thread inherits the reduced set.
//! 7. **Build the tokio runtime**, and inside it [`signals::shutdown_token`].
//! 8. **`run(config, sockets, shutdown)`** under [`signals::drain`]. `run` calls
//!    [`notify::ready`] itself, once it is really serving (store open, bus connected), and may
//!    start [`notify::spawn_watchdog`].
//! 9. **On SIGTERM/SIGINT** the token is cancelled; `drain` sends `STOPPING=1` and gives `run`
//!    its grace period.
//! 10. **Exit code**: 0 on a clean stop, [`cli::exit_code_for`] otherwise (2 for configuration
//!     errors, 1 for everything else).
//!
//! # A thin `main`
//!
//! The reference daemon `src/bin/demo/` (built as `dragonfly-demo`, exercised by the
//! integration tests under `systemd-socket-activate`) is the `main` to copy. Its `service`
//! module stands in for the daemon's library crate (config section and `run`).
//!
//! ```ignore
#![doc = include_str!("bin/demo/main.rs")]
//! ```
//!
//! Secrets come from [`credentials::load_credential`], never from the config file, the
//! command line or environment values.

pub mod cli;
pub mod config;
pub mod credentials;
pub mod logging;
pub mod notify;
pub mod privileges;
pub mod signals;
pub mod sockets;

pub use cli::{CommonArgs, exit_code_for};
pub use config::{
    ConfigError, DaemonConfig, Invalid, ListenConfig, Loaded, LogConfig, NatsConfig, StoreConfig,
};
pub use credentials::{CredentialError, Secret, load_credential};
pub use privileges::{PrivilegeError, lock_down};
pub use signals::{GraceElapsed, SignalError, drain, shutdown_token};
pub use sockets::{SocketError, Sockets};
