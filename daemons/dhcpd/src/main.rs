//! `dragonfly-dhcpd`: parses arguments, loads configuration, and hands over to the library.
use std::{ops::ControlFlow, process::ExitCode, time::Duration};

use clap::Parser;
use dragonfly_dhcpd::{Config, DhcpdConfig, Sockets};
use dragonfly_runtime::{cli, config::Loaded, logging, privileges, signals, sockets};

const GRACE: Duration = Duration::from_secs(10); // Below the unit's TimeoutStopSec=.

#[derive(Parser)]
#[command(version, about = "Dragonfly DHCP and PXE boot-information server")]
struct Args {
    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<DhcpdConfig>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-dhcpd");
    serve(config).map_or_else(
        |e: anyhow::Error| {
            tracing::error!(error = format!("{e:#}"), "exiting");
            cli::exit_code_for(e.as_ref())
        },
        |()| ExitCode::SUCCESS,
    )
}

fn serve(config: Loaded<DhcpdConfig>) -> anyhow::Result<()> {
    let mut passed = sockets::Sockets::from_env()?;
    let dhcp = passed.udp_or_bind("dhcp", config.daemon.listen.addr)?;
    let pxe = match config.daemon.pxe_listen {
        Some(l) => Some(passed.udp_or_bind("pxe", l.addr)?),
        None => None,
    };
    drop(passed); // Reports sockets systemd passed that we did not take.
    privileges::lock_down(&[])?;
    let run_config = Config {
        dhcpd: config.daemon,
        store_path: config.store.path,
        nats_url: Some(config.nats.url),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = signals::shutdown_token()?;
        // Boxed: run's state machine is large (clippy::large_futures).
        let work = Box::pin(dragonfly_dhcpd::run(
            run_config,
            Sockets { dhcp, pxe },
            shutdown.clone(),
        ));
        Ok(signals::drain(shutdown, GRACE, work).await??)
    })
}
