//! `dragonfly-bmcd`: the daemon frame runs [`dragonfly_bmcd::Bmcd`].
use std::process::ExitCode;

fn main() -> ExitCode {
    dragonfly_runtime::main::<dragonfly_bmcd::Bmcd>()
}
