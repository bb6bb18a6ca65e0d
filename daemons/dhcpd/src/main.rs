//! `dragonfly-dhcpd`: the daemon frame runs [`dragonfly_dhcpd::Dhcpd`].
use std::process::ExitCode;

fn main() -> ExitCode {
    dragonfly_runtime::main::<dragonfly_dhcpd::Dhcpd>()
}
