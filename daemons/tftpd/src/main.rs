//! `dragonfly-tftpd`: the daemon frame runs [`dragonfly_tftpd::Tftpd`].
use std::process::ExitCode;

fn main() -> ExitCode {
    dragonfly_runtime::main::<dragonfly_tftpd::Tftpd>()
}
