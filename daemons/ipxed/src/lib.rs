//! dragonfly-ipxed (being built).
