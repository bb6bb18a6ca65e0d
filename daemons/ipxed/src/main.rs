//! `dragonfly-ipxed`: the daemon frame runs [`dragonfly_ipxed::Ipxed`].
use std::process::ExitCode;

fn main() -> ExitCode {
    dragonfly_runtime::main::<dragonfly_ipxed::Ipxed>()
}
