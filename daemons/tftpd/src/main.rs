//! `dragonfly-tftpd`: parses arguments, loads configuration, and hands over to the library.
use std::{ops::ControlFlow, process::ExitCode, time::Duration};

use clap::Parser;
use dragonfly_runtime::{cli, config::Loaded, logging, privileges, signals, sockets::Sockets};
use dragonfly_tftpd::{Config, TftpdConfig};

/// How long transfers in progress may go on after SIGTERM (below the unit's TimeoutStopSec=).
const GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(version, about = "Dragonfly read-only TFTP server")]
struct Args {
    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<TftpdConfig>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-tftpd");
    serve(config).map_or_else(
        |e: anyhow::Error| {
            tracing::error!(error = format!("{e:#}"), "exiting");
            cli::exit_code_for(e.as_ref())
        },
        |()| ExitCode::SUCCESS,
    )
}

fn serve(config: Loaded<TftpdConfig>) -> anyhow::Result<()> {
    // Taken (or bound) before lock_down; the temporary `Sockets` reports any socket not taken.
    let socket = Sockets::from_env()?.udp_or_bind("tftp", config.daemon.listen.addr)?;
    privileges::lock_down(&[])?;
    let run_config = Config {
        tftpd: config.daemon,
        nats_url: Some(config.nats.url),
    };
    // One blocking thread per transfer in progress (see `transfer`), plus a few spare.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(run_config.tftpd.max_transfers + 4)
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = signals::shutdown_token()?;
        let work = dragonfly_tftpd::run(run_config, socket, shutdown.clone());
        Ok(signals::drain(shutdown, GRACE, work).await??)
    });
    // Transfers run on blocking threads, which dropping the runtime would wait for: the grace
    // period is over, so abandon them.
    runtime.shutdown_background();
    result
}
