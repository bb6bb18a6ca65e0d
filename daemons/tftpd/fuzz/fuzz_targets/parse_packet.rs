//! `cargo +nightly fuzz run parse_packet -- -max_total_time=30` (from daemons/tftpd/fuzz).
//!
//! The codec must never panic, and whatever it accepts must survive a re-encode: parsing the
//! bytes it writes gives the same packet back (ACKs may carry padding, errors may lack their
//! NUL, so the comparison is on the re-encoded form).
#![no_main]

use dragonfly_tftpd::packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = packet::parse(data) {
        let bytes = p.to_bytes();
        let again = packet::parse(&bytes).expect("re-encoded packet parses");
        assert_eq!(again.to_bytes(), bytes);
    }
});
