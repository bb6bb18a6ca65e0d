//! dragonfly-ipxed (being built).
fn main() {}
