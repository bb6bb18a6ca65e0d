//! `dragonfly-apid`: the daemon frame runs the API; `create-admin` is the one subcommand.
use std::process::ExitCode;

use clap::Parser;
use dragonfly_apid::cli::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        None => dragonfly_runtime::serve::<dragonfly_apid::Apid>(&args.common),
        Some(Command::CreateAdmin {
            username,
            password_file,
        }) => dragonfly_apid::admin::main(&args.common, &username, password_file.as_deref()),
    }
}
