//! `dragonfly-demo`: the thin `main` every Dragonfly daemon copies. `service` stands in for the
//! daemon's library crate; real daemons also use `anyhow` here instead of `Box<dyn Error>`.
use std::{error::Error, ops::ControlFlow, process::ExitCode, time::Duration};

use clap::Parser;
use dragonfly_runtime::{cli, config::Loaded, logging, privileges, signals, sockets::Sockets};
use tokio::net::TcpListener;

mod service;
use service::Demo;

/// How long in-flight work may take after SIGTERM (keep it below `TimeoutStopSec=`).
const GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(version, about = "Dragonfly runtime reference daemon")]
struct Args {
    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse(); // Bad usage: clap prints and exits 2.
    let config = match cli::load_config::<Demo>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code, // --check-config, or an invalid file (2).
    };
    logging::init(&config.log, "dragonfly-demo");
    match start(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %cli::Chain(&*error), "exiting");
            cli::exit_code_for(&*error)
        }
    }
}

fn start(config: &Loaded<Demo>) -> Result<(), Box<dyn Error + Send + Sync>> {
    // Sockets first, while privileges may still be needed; dropping `Sockets` at the end of
    // this statement reports any socket systemd passed that we did not take.
    let listener = Sockets::from_env()?.tcp_or_bind("http", config.daemon.listen.addr)?;
    // Still single-threaded, so every runtime thread inherits the reduced privileges.
    privileges::lock_down(&[])?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = signals::shutdown_token()?;
        let work = service::run(TcpListener::from_std(listener)?, shutdown.clone());
        Ok(signals::drain(shutdown, GRACE, work).await??)
    })
}
