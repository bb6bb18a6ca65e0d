//! Creates (or extends) a migrated database holding N registered machines, and prints their
//! MACs one a line: the fixture of `integration/bench/ipxed.sh`.
//!
//!     cargo run --release -p dragonfly-ipxed --example seed-machines -- DB N > macs.txt
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use dragonfly_core::{HardwareReport, MacAddr};

fn main() -> ExitCode {
    match seed() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a command-line tool reports to stderr")]
            {
                eprintln!("seed-machines: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}

fn seed() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(db), Some(n)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: seed-machines DB N");
    };
    let n: u32 = n.parse().context("N")?;
    dragonfly_store::migrate_file(db.as_ref())?;
    let store = dragonfly_store::BlockingDb::open(&db)?;
    let now = jiff::Timestamp::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..n {
        let b = i.to_be_bytes();
        // Locally administered unicast (0x02), so no real vendor's MAC is ever used.
        let mac = MacAddr::new([0x02, 0xdf, b[0], b[1], b[2], b[3]]);
        let report: HardwareReport = serde_json::from_value(serde_json::json!({
            "macs": [mac.to_string()],
            "memoryBytes": 1u64 << 31,
        }))?;
        store.block_on(store.db().machines().register(report, now))?;
        writeln!(out, "{mac}")?;
    }
    out.flush()?;
    Ok(())
}
