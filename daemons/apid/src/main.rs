//! `dragonfly-apid`: parses arguments, loads configuration, and hands over to the library.
use std::{ops::ControlFlow, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use dragonfly_apid::{ApidConfig, Config, admin, cli::Args, cli::Command};
use dragonfly_runtime::{
    cli, config::Loaded, load_credential, logging, privileges, signals, sockets::Sockets,
};

const GRACE: Duration = Duration::from_secs(10); // Below the unit's TimeoutStopSec=.

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<ApidConfig>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-apid");
    let result = match args.command {
        None => serve(config),
        Some(Command::CreateAdmin {
            username,
            password_file,
        }) => admin::command(&config.store.path, &username, password_file.as_deref())
            .map(drop)
            .map_err(Into::into),
    };
    result.map_or_else(
        |e: anyhow::Error| {
            tracing::error!(error = format!("{e:#}"), "exiting");
            cli::exit_code_for(e.as_ref())
        },
        |()| ExitCode::SUCCESS,
    )
}

fn serve(config: Loaded<ApidConfig>) -> anyhow::Result<()> {
    let listener = Sockets::from_env()?.tcp_or_bind("http", config.daemon.listen.addr)?;
    let key = load_credential(
        "boot-token-key",
        config.daemon.boot_token_key_file.as_deref(),
    )
    .context("loading the boot-token key")?;
    privileges::lock_down(&[])?;
    let run_config = Config {
        apid: config.daemon,
        store_path: config.store.path,
        nats_url: config.nats.url,
        boot_token_key: key,
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = signals::shutdown_token()?;
        let work = dragonfly_apid::run(run_config, listener, shutdown.clone());
        Ok(signals::drain(shutdown, GRACE, work).await??)
    })
}
