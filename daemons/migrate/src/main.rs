//! `dragonfly-migrate`: parses arguments and configuration, then migrates the database.
use std::{ops::ControlFlow, process::ExitCode};

use clap::Parser;
use dragonfly_migrate::MigrateConfig;
use dragonfly_runtime::{cli, logging, privileges};

#[derive(Parser)]
#[command(version, about = "Create or migrate the Dragonfly database, then exit")]
struct Args {
    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<MigrateConfig>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-migrate");
    let path = config.store.path;
    let result = privileges::lock_down(&[])
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(dragonfly_migrate::run(&path)?));
    match result {
        Ok(m) => {
            tracing::info!(path = %path.display(), from = m.from, to = m.to, applied = ?m.applied, "database ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %cli::Chain(e.as_ref()), "migration failed");
            cli::exit_code_for(e.as_ref())
        }
    }
}
