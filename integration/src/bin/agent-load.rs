//! `agent-load`: plays N agents registering with a running apid, then polling, all at once;
//! prints p50/p99 latency per round and exits 1 when any request was refused or failed.
//!
//!     agent-load --url http://127.0.0.1:3001 --key-file /etc/dragonfly/boot-token-key \
//!         --db /var/lib/dragonfly/dragonfly.db --agents 500
//!
//! Every simulated agent connects from this host's one address, where real agents each have
//! their own: raise apid's `[apid.http] max_connections_per_client` (default 64) above
//! `--agents`, or the connections beyond it are closed on arrival.
//!
//! The key is apid's boot-token key (each agent mints its own token under it, as ipxed does),
//! and each agent's boot session is opened in apid's database (as ipxed does). Run it against
//! a scratch apid: it creates N machines (mind `[apid] new_machines_burst`).
#![allow(clippy::print_stdout, reason = "the figures are this program's output")]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dragonfly_integration::load::{LoadConfig, run};

/// Simulated agents against a running apid.
#[derive(Debug, Parser)]
struct Args {
    /// apid's agents' listener (agents are refused on the operators').
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    url: String,
    /// apid's boot-token key file.
    #[arg(long)]
    key_file: PathBuf,
    /// apid's database (each agent's boot session is opened there).
    #[arg(long, default_value = "/var/lib/dragonfly/dragonfly.db")]
    db: PathBuf,
    /// How many agents.
    #[arg(long, default_value_t = 500)]
    agents: usize,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let key = std::fs::read(&args.key_file)
        .with_context(|| format!("reading {}", args.key_file.display()))?;
    let config = LoadConfig {
        base: args.url,
        key,
        db: args.db,
        agents: args.agents,
        timeout: Duration::from_secs(60),
    };
    let report = tokio::runtime::Runtime::new()?.block_on(run(&config));
    println!("register: {}", report.register);
    println!("poll:     {}", report.poll);
    let ok = report.register.count(201) == config.agents && report.poll.count(200) == config.agents;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
