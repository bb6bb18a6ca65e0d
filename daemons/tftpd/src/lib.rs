//! dragonfly-tftpd (being built).
