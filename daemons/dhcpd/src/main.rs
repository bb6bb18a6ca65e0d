//! dragonfly-dhcpd (being built).
fn main() {}
