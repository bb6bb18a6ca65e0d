//! `dragonfly-workflowd`: the daemon frame runs [`dragonfly_workflowd::Workflowd`].
use std::process::ExitCode;

fn main() -> ExitCode {
    dragonfly_runtime::main::<dragonfly_workflowd::Workflowd>()
}
