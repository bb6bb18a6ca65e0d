//! Command-line arguments of `dragonfly-apid`.

use std::path::PathBuf;

/// `dragonfly-apid [--config PATH] [--check-config] [create-admin …]`.
#[derive(Debug, clap::Parser)]
#[command(name = "dragonfly-apid", version, about = <crate::Apid as dragonfly_runtime::Daemon>::ABOUT)]
pub struct Args {
    #[command(flatten)]
    pub common: dragonfly_runtime::CommonArgs,
    /// Without a command, serve the API.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an administrator; the password is read from stdin or --password-file.
    CreateAdmin {
        #[arg(long)]
        username: String,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}
