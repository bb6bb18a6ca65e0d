//! Memorable machine names: `CensusAbleQualityParent` instead of `52:54:00:12:34:56`.
//!
//! A name is four BIP39 English words in CamelCase, taken from a SHA-256 hash of the MAC.
//! Hashing (rather than slicing the MAC's bits into words) matters: machines from one vendor
//! share the first three octets, and a bit-slicing scheme gives every QEMU VM (`52:54:00:…`)
//! the same first words. Names are deterministic per MAC, so a machine that is deleted and
//! rediscovered gets its old name back.
//!
//! 2048⁴ ≈ 1.8·10¹³ names make a collision rare but possible. Uniqueness is the store's job
//! (it knows which names are taken); this module supplies the ordered list of candidates —
//! four words, then the same four plus a fifth, then a sixth, … — so the store takes the
//! first one that is free and every machine's name still starts with its own four words.

use sha2::{Digest, Sha256};

use crate::MacAddr;

/// Words in a name before any collision handling.
pub const BASE_WORDS: usize = 4;

/// Bits per BIP39 word (2048 words).
const WORD_BITS: usize = 11;
/// Whole words one SHA-256 block yields.
const WORDS_PER_BLOCK: usize = 256 / WORD_BITS;

/// The `n`-th word (from 0) of the endless word stream for `mac`.
fn word(mac: MacAddr, n: usize) -> &'static str {
    let block = u32::try_from(n / WORDS_PER_BLOCK).unwrap_or(u32::MAX);
    let mut h = Sha256::new();
    h.update(b"dragonfly.computer/name/v1");
    h.update(mac.octets());
    h.update(block.to_be_bytes());
    let digest = h.finalize();
    let bit = (n % WORDS_PER_BLOCK) * WORD_BITS;
    // Read 24 bits starting at the byte that holds `bit`, then take the 11 we want.
    let byte = bit / 8;
    let window = (u32::from(digest[byte]) << 16)
        | (u32::from(digest[byte + 1]) << 8)
        | u32::from(*digest.get(byte + 2).unwrap_or(&0));
    let shift = 24 - WORD_BITS - (bit % 8);
    let index = (window >> shift) as usize & ((1 << WORD_BITS) - 1);
    bip39::Language::English.word_list()[index]
}

/// The name made of the first `words` words for `mac`.
pub fn name_with_words(mac: MacAddr, words: usize) -> String {
    (0..words)
        .map(|n| {
            let w = word(mac, n);
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The machine's preferred name: four words.
pub fn memorable_name(mac: MacAddr) -> String {
    name_with_words(mac, BASE_WORDS)
}

/// Candidates in order of preference: four words, then five, six, … Endless.
pub fn candidates(mac: MacAddr) -> impl Iterator<Item = String> {
    (BASE_WORDS..).map(move |n| name_with_words(mac, n))
}

/// The first candidate for which `taken` is false.
pub fn first_free(mac: MacAddr, mut taken: impl FnMut(&str) -> bool) -> String {
    candidates(mac)
        .find(|c| !taken(c))
        .unwrap_or_else(|| unreachable!("candidates() is endless"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn qemu(last: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0x00, 0x12, 0x34, last])
    }

    #[test]
    fn four_camel_case_bip39_words() {
        let name = memorable_name(qemu(0x56));
        let words: Vec<&str> = name
            .split(char::is_uppercase)
            .filter(|w| !w.is_empty())
            .collect();
        assert_eq!(words.len(), 4, "{name}");
        for w in words {
            let lower = w.to_lowercase();
            let word_list = bip39::Language::English.word_list();
            assert!(
                word_list.iter().any(|x| x[1..] == lower),
                "{w} not from BIP39 in {name}"
            );
        }
        assert!(name.chars().next().unwrap().is_ascii_uppercase());
    }

    #[test]
    fn stable_across_releases() {
        // Changing the derivation renames every machine in every deployment: this pins it.
        assert_eq!(memorable_name(qemu(0x56)), memorable_name(qemu(0x56)));
        let pinned = memorable_name(MacAddr::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(pinned, PINNED, "the name derivation changed");
    }
    const PINNED: &str = "HungryDynamicHybridSwear";

    #[test]
    fn one_vendor_does_not_share_a_first_word() {
        let firsts: HashSet<String> = (0..=255u8).map(|i| name_with_words(qemu(i), 1)).collect();
        // 256 draws from 2048 words: expect ~241 distinct; a bit-slicing scheme gives 1.
        assert!(
            firsts.len() > 200,
            "only {} distinct first words",
            firsts.len()
        );
    }

    #[test]
    fn a_collision_adds_a_fifth_word() {
        let mac = qemu(1);
        let four = memorable_name(mac);
        let taken: HashSet<String> = [four.clone()].into();
        let got = first_free(mac, |c| taken.contains(c));
        assert!(got.starts_with(&four) && got.len() > four.len(), "{got}");
        assert_eq!(got, name_with_words(mac, 5));
        // A second collision goes on to six words.
        let taken: HashSet<String> = [four, got].into();
        assert_eq!(
            first_free(mac, |c| taken.contains(c)),
            name_with_words(mac, 6)
        );
    }

    #[test]
    fn words_beyond_one_hash_block_are_fine() {
        let long = name_with_words(qemu(2), 50);
        assert!(long.starts_with(&name_with_words(qemu(2), 23)));
    }

    #[test]
    fn hundred_thousand_random_macs_get_unique_names() {
        // SplitMix64: deterministic, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut macs = HashSet::new();
        let mut names = HashSet::new();
        while macs.len() < 100_000 {
            let b = next().to_le_bytes();
            let mac = MacAddr::new([b[0], b[1], b[2], b[3], b[4], b[5]]);
            if !macs.insert(mac) {
                continue;
            }
            let name = first_free(mac, |c| names.contains(c));
            assert!(names.insert(name));
        }
        assert_eq!(names.len(), 100_000);
    }

    proptest! {
        #[test]
        fn same_mac_same_name(o: [u8; 6]) {
            let mac = MacAddr::new(o);
            prop_assert_eq!(memorable_name(mac), memorable_name(MacAddr::new(o)));
            let five = name_with_words(mac, 5);
            prop_assert!(five.starts_with(&memorable_name(mac)));
        }
    }
}
