//! MAC addresses, parsed leniently and printed one way.
//!
//! A MAC reaches us from iPXE (`52:54:00:12:34:56`, or `52-54-00-…` with `${mac:hexhyp}`),
//! from operators (upper case, Cisco dotted `5254.0012.3456`) and from agents. Every form is
//! normalised here to lower-case colon-separated text so that the store, the bus and the URLs
//! agree on one spelling; nothing downstream compares MACs as strings it did not get from here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets such as 52:54:00:12:34:56")]
pub struct MacParseError {
    input: String,
}

impl MacAddr {
    /// Wraps raw octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// The raw octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True for the group (multicast/broadcast) bit: such an address never names one NIC.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for `00:00:00:00:00:00`, which firmware reports for an unset address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True when the address can name a single physical interface.
    pub fn is_unicast_station(&self) -> bool {
        !self.is_zero() && !self.is_multicast()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and `aabbccddeeff`,
    /// in any case. Anything else — including mixed separators — is rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.chars().take(64).collect(),
        };
        let digits: String = match s.len() {
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(err());
                }
                for (i, b) in s.bytes().enumerate() {
                    if i % 3 == 2 && b != sep {
                        return Err(err());
                    }
                }
                s.split(sep as char).collect()
            }
            14 => {
                let b = s.as_bytes();
                if b[4] != b'.' || b[9] != b'.' {
                    return Err(err());
                }
                s.split('.').collect()
            }
            12 => s.to_owned(),
            _ => return Err(err()),
        };
        if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            *octet = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(octets))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "MAC address; accepted as aa:bb:cc:dd:ee:ff, aa-bb-…, aabb.ccdd.eeff or \
                 aabbccddeeff, always returned lower-case with colons",
            ))
            .examples([serde_json::json!("52:54:00:12:34:56")])
            .into()
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for MacAddr {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_every_common_spelling() {
        let want = MacAddr::new([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for s in [
            "52:54:00:ab:cd:ef",
            "52:54:00:AB:CD:EF",
            "52-54-00-ab-cd-ef",
            "5254.00ab.cdef",
            "525400abcdef",
        ] {
            assert_eq!(s.parse::<MacAddr>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54-00:ab:cd:ef",
            "52:54:00:ab:cd:eg",
            "5254.00ab-cdef",
            "+2:54:00:ab:cd:ef",
            "52:54:00:ab:cd:e",
            "525400abcdeg",
            "52::4:00:ab:cd:ef",
            "é2:54:00:ab:cd:e",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn classifies_addresses() {
        assert!(MacAddr::new([0; 6]).is_zero());
        assert!(!MacAddr::new([0; 6]).is_unicast_station());
        assert!(MacAddr::new([0xff; 6]).is_multicast());
        assert!(MacAddr::new([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr::new([0x52, 0x54, 0, 0, 0, 1]).is_unicast_station());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(octets: [u8; 6]) {
            let mac = MacAddr::new(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
            let json = serde_json::to_string(&mac).unwrap();
            prop_assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<MacAddr>();
        }
    }
}
