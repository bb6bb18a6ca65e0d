//! `dragonfly-migrate`: creates the database if needed and applies pending schema migrations.
//!
//! The one place the schema changes (a systemd oneshot every daemon orders itself after), so
//! two daemons of different releases never race to migrate the same file; daemons themselves
//! only check that the schema is the version they know.
use std::{ops::ControlFlow, process::ExitCode};

use clap::Parser;
use dragonfly_runtime::config::{DaemonConfig, Invalid};
use dragonfly_runtime::{cli, logging, privileges};
use dragonfly_store::{migrate, open_connection};

#[derive(Parser)]
#[command(version, about = "Create or migrate the Dragonfly database, then exit")]
struct Args {
    #[command(flatten)]
    common: cli::CommonArgs,
}

/// `[migrate]` has no keys; the struct exists so unknown ones are refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrate {}

struct Migrate;

impl DaemonConfig for Migrate {
    const SECTION: &'static str = "migrate";
    type Raw = RawMigrate;
    fn validate(_: RawMigrate) -> Result<Self, Invalid> {
        Ok(Migrate)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load_config::<Migrate>(&args.common) {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    logging::init(&config.log, "dragonfly-migrate");
    let path = config.store.path;
    let result = (|| -> anyhow::Result<_> {
        privileges::lock_down(&[])?;
        let mut conn = open_connection(&path, true)?;
        Ok(migrate(&mut conn)?)
    })();
    match result {
        Ok(m) => {
            tracing::info!(path = %path.display(), from = m.from, to = m.to, applied = ?m.applied, "database ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = format!("{e:#}"), "migration failed");
            cli::exit_code_for(e.as_ref())
        }
    }
}
