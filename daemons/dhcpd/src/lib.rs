//! dragonfly-dhcpd (being built).
