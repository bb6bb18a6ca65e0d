//! `dragonfly-demo`: the reference daemon. Its `main` is what every Dragonfly daemon's is.
use std::process::ExitCode;

mod service;

fn main() -> ExitCode {
    dragonfly_runtime::main::<service::Demo>()
}
