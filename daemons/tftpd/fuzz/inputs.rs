//! What each fuzz target does with one input, in one place: `fuzz_targets/<target>.rs` runs it
//! under libFuzzer (nightly, `integration/fuzz.sh`), and tftpd's `cargo test` replays every
//! kept corpus input and every crash ever found through the very same function
//! (`tests/integration/fuzz_corpus.rs`), on stable and in seconds. Both include this file by
//! path: it belongs to neither crate.
//!
//! It must never hold anything but the targets' bodies: what they do here is what is fuzzed.
#![allow(
    dead_code,
    reason = "each fuzz target calls one of these; the replay test calls all"
)]

use std::time::{Duration, Instant};

use dragonfly_tftpd::packet;
use dragonfly_tftpd::transfer::{FIRST_SENDS, Heard, MIN_RTO, Plan, Status, Transfer};

/// The codec must never panic, and whatever it accepts must survive a re-encode: parsing the
/// bytes it writes gives the same packet back (ACKs may carry padding, errors may lack their
/// NUL, so the comparison is on the re-encoded form).
pub(crate) fn parse_packet(data: &[u8]) {
    if let Ok(p) = packet::parse(data) {
        let bytes = p.to_bytes();
        let again = packet::parse(&bytes).expect("re-encoded packet parses");
        assert_eq!(again.to_bytes(), bytes);
    }
}

/// The transfer state machine driven by arbitrary input: whatever a client sends, and whenever
/// the timer runs, it must never panic, never offer a unit outside its window (or data before
/// the OACK is acknowledged), never send because of a datagram that acknowledged nothing new,
/// and keep a deadline exactly while it runs.
pub(crate) fn transfer(data: &[u8]) {
    let Some((head, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let windowsize = u16::from(head[0] % 64) + 1;
    let oack = head[1] & 1 == 1 || windowsize > 1;
    let last = u64::from(u16::from_le_bytes([head[2], head[3]])) + 1;
    let plan = Plan {
        last,
        oack,
        windowsize,
        timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        first_ack_timeout: Duration::from_secs(3),
        first_sends: FIRST_SENDS,
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut t = Transfer::new(plan, t0);
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        if let Some((unit, count)) = t.to_send() {
            assert!(count >= 1);
            if t.confirmed() {
                let acked = t.blocks_acked();
                assert!(unit > acked && unit + count - 1 <= acked + u64::from(windowsize));
            } else {
                assert_eq!((unit, count), (u64::from(!oack), 1));
            }
        }
        match op % 4 {
            0 => {
                let len = usize::from(op / 4).min(rest.len());
                let (datagram, tail) = rest.split_at(len);
                rest = tail;
                let before = t.to_send();
                if let Heard::Nothing | Heard::Spurious { .. } = t.on_datagram(datagram, now) {
                    assert_eq!(
                        t.to_send(),
                        before,
                        "sent on a datagram that acknowledged nothing"
                    );
                }
            }
            1 => {
                now += Duration::from_millis(u64::from(op) * 8);
                t.on_timer(now);
            }
            2 => {
                t.on_request_again(now);
            }
            _ => {
                while let Some((_, count)) = t.to_send() {
                    t.sent(count, now, MIN_RTO);
                }
            }
        }
        assert_eq!(t.deadline().is_some(), t.status() == &Status::Running);
    }
}
