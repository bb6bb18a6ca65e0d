//! `dragonfly`: the operator's command-line client.
//!
//! Everything an operator does through apid's API, from a shell: log in, list and label
//! machines, apply templates, provision, follow a workflow live, power machines, manage API
//! tokens. People get tables; scripts get `-o json|yaml|name` and documented exit codes
//! ([`error::EXIT_CODES`]). It is a client of the public API only — no store, no bus — so it
//! works from any host that reaches apid's operators' listener, and never needs more rights
//! than the operator's token.
//!
//! A library with a thin `main` (like the daemons): [`run`] takes the parsed command line,
//! the environment's token and the output streams, so tests drive it as they drive the
//! binary.

pub mod cli;
pub mod client;
pub mod credentials;
pub mod error;
pub mod http;
pub mod output;
pub mod sse;

mod commands;
mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

pub use cli::Cli;
pub use error::CliError;

/// What a command reads from its surroundings besides the command line.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `DRAGONFLY_TOKEN`.
    pub token: Option<String>,
    /// Whether standard input is a terminal (prompts and confirmations need one).
    pub interactive: bool,
}

impl Env {
    /// The process's environment.
    pub fn from_process() -> Self {
        use std::io::IsTerminal as _;
        Self {
            token: std::env::var("DRAGONFLY_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            interactive: std::io::stdin().is_terminal(),
        }
    }
}

/// The binary's whole life: parse, run, print the error with its causes, exit with its code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::Output(e)),
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(run(cli, env, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`dragonfly machines list | head`): not a failure.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &CliError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "dragonfly: {}", dragonfly_core::Chain(e));
    ExitCode::from(e.exit_code())
}

/// Runs one command, writing its results to `out` (messages for people go to stderr).
///
/// # Errors
/// Whatever the command failed with; [`CliError::exit_code`] says how the process ends.
pub async fn run(cli: Cli, env: Env, out: &mut dyn Write) -> Result<(), CliError> {
    let credentials = cli.credentials.clone().or_else(credentials::default_path);
    let ctx = commands::Ctx {
        format: cli.output,
        timeout: Duration::from_secs(cli.timeout),
        url: cli.url.clone(),
        ca_file: cli.ca_file.clone(),
        credentials,
        env,
    };
    commands::dispatch(&ctx, cli.command, out).await
}

/// The credentials file a command uses, or why there is none.
fn credentials_path(path: Option<&PathBuf>) -> Result<&PathBuf, CliError> {
    path.ok_or_else(|| {
        CliError::NotLoggedIn(
            "no credentials file: set HOME or XDG_CONFIG_HOME, or pass --credentials".into(),
        )
    })
}
