//! The attack suite: what an attacker on the provisioning network can do to Dragonfly, played
//! against the real daemons.
//!
//! Each test starts the whole stack (NATS, a migrated store, dhcpd, tftpd, ipxed and apid, as
//! nobody through socket activation) in a lab namespace ([`stack::AttackLab`]), plays one
//! attack from a second namespace joined to the lab's bridge (the attacker's machine), and
//! expects refusal or a bounded effect — while a legitimate client, from the lab's own
//! namespace, keeps being served. docs/security.md says what each attack was before and is
//! now.
//!
//! The boot protocols are attacked here through the whole stack (`boot_path`: a random-MAC
//! DISCOVER flood with a forged giaddr, split option 152 and noise while a known PXE machine is
//! answered; a trickle of never-acknowledged RRQs while a TFTP client fetches), and harder next
//! to their daemons, with the same rule (real floods, a real client served meanwhile):
//! - dhcpd (`daemons/dhcpd/tests/integration/flood.rs`): random-MAC DISCOVER flood, spoofed
//!   giaddr and relay source, RFC 3396 option concatenation, garbage;
//! - tftpd (`daemons/tftpd/tests/integration/{storm,hostile}.rs`): a rack-sized RRQ storm,
//!   a trickle of never-acknowledged RRQs from one host, spoofed-source reflection, garbage.
//!
//! Every test needs root, `nats-server` and the built daemons (`cargo build --workspace
//! --bins`); without them it prints `SKIP:` and passes, except in CI.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
#![allow(
    clippy::print_stdout,
    reason = "each attack prints its measured effect"
)]

mod agent_log;
mod boot_path;
#[path = "../integration/common.rs"]
#[allow(
    dead_code,
    reason = "shared with the boot tests; the attack suite uses only the stack and the admin"
)]
mod common;
mod identity;
mod login;
mod slowloris;
mod stack;
