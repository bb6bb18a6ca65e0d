//! `dragonfly-ipxed`: parses arguments, loads configuration, and hands over to the library.
use std::{ops::ControlFlow, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use dragonfly_ipxed::{Config, IpxedConfig};
use dragonfly_runtime::{
    CommonArgs, cli, config::Loaded, load_credential, logging, privileges, signals,
    sockets::Sockets,
};

const GRACE: Duration = Duration::from_secs(10); // Below the unit's TimeoutStopSec=.

/// `dragonfly-ipxed [--config PATH] [--check-config]`.
#[derive(Parser)]
#[command(
    version,
    about = "Dragonfly iPXE boot server: boot scripts and the agent's files"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<IpxedConfig>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-ipxed");
    serve(config).map_or_else(
        |e: anyhow::Error| {
            tracing::error!(error = format!("{e:#}"), "exiting");
            cli::exit_code_for(e.as_ref())
        },
        |()| ExitCode::SUCCESS,
    )
}

fn serve(config: Loaded<IpxedConfig>) -> anyhow::Result<()> {
    let listener = Sockets::from_env()?.tcp_or_bind("http", config.daemon.listen.addr)?;
    let key = load_credential(
        "boot-token-key",
        config.daemon.boot_token_key_file.as_deref(),
    )
    .context("loading the boot-token key")?;
    privileges::lock_down(&[])?;
    let run_config = Config {
        ipxed: config.daemon,
        store_path: config.store.path,
        nats_url: config.nats.url,
        boot_token_key: key,
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = signals::shutdown_token()?;
        let work = dragonfly_ipxed::run(run_config, listener, shutdown.clone());
        Ok(signals::drain(shutdown, GRACE, work).await??)
    })
}
