//! mage: reads its orders from the kernel command line and runs the agent. It never exits on
//! its own; if it is killed, `/init` starts it again (an init that exits panics the kernel).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use dragonfly_agent::{AgentConfig, Console, Stdout, cmdline, run};
use dragonfly_core::Chain;

fn main() -> ExitCode {
    let console = Stdout;
    let text = match std::fs::read_to_string("/proc/cmdline") {
        Ok(t) => t,
        Err(e) => {
            console.say(&format!(
                "PROBLEM: cannot read /proc/cmdline: {}",
                Chain(&e)
            ));
            return ExitCode::from(2);
        }
    };
    let params = match cmdline::parse(&text) {
        Ok(p) => p,
        Err(e @ cmdline::CmdlineError::NoToken) => {
            console.say(&format!("PROBLEM: {}.", Chain(&e)));
            return ExitCode::from(2);
        }
        Err(e) => {
            console.say(&format!(
                "PROBLEM: {}. This machine was not booted by Dragonfly.",
                Chain(&e)
            ));
            return ExitCode::from(2);
        }
    };
    run(
        &params,
        &AgentConfig::default(),
        &console,
        &AtomicBool::new(false),
    );
    ExitCode::SUCCESS
}
