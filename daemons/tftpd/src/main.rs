//! dragonfly-tftpd (being built).
fn main() {}
