//! Per-boot agent tokens: how a netbooted agent proves which machine it is.
//!
//! The boot path (ipxed) puts a token on the agent's kernel command line; the agent presents
//! it to apid when it registers. A token binds one MAC address, a random per-boot nonce and an
//! expiry time under an HMAC-SHA256 key that only the server holds, so a token cannot be forged
//! or moved to another MAC, and a leaked one stops working at its expiry. Verification needs
//! no database: the token carries everything but the key. See `docs/security.md`.
//!
//! Format: `dfb1.<payload>.<tag>`, both parts unpadded base64url, where
//! `payload = mac (6 bytes) ‖ nonce (16 bytes) ‖ expiry (u64 big-endian Unix seconds)` and
//! `tag = HMAC-SHA256(key, "dragonfly.computer/boot-token/v1" ‖ payload)`.
//!
//! Pure: the caller supplies the key, the nonce (from a CSPRNG) and the current time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::MacAddr;

const PREFIX: &str = "dfb1.";
const CONTEXT: &[u8] = b"dragonfly.computer/boot-token/v1";
const PAYLOAD_LEN: usize = 6 + 16 + 8;
/// The shortest key accepted: 256 bits, as much as the HMAC's output.
pub const MIN_KEY_LEN: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClaims {
    pub mac: MacAddr,
    pub nonce: [u8; 16],
    pub expires: Timestamp,
}

/// Why a token was refused. Deliberately coarse: a client learns only that it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("boot token is malformed")]
    Malformed,
    #[error("boot token signature does not verify")]
    BadSignature,
    #[error("boot token expired")]
    Expired,
    #[error("boot token key is shorter than {MIN_KEY_LEN} bytes")]
    WeakKey,
    /// Minting only: the expiry cannot be carried (before 1970, or a lifetime that overflows
    /// the calendar). A server-side problem, not a malformed token.
    #[error("boot token expiry is out of range")]
    ExpiryOutOfRange,
}

fn tag(key: &[u8], payload: &[u8]) -> Result<[u8; 32], TokenError> {
    if key.len() < MIN_KEY_LEN {
        return Err(TokenError::WeakKey);
    }
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| TokenError::WeakKey)?;
    m.update(CONTEXT);
    m.update(payload);
    Ok(m.finalize().into_bytes().into())
}

/// Issues a token for `mac`, valid until `expires`.
pub fn mint(key: &[u8], claims: &BootClaims) -> Result<String, TokenError> {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..6].copy_from_slice(&claims.mac.octets());
    payload[6..22].copy_from_slice(&claims.nonce);
    let secs =
        u64::try_from(claims.expires.as_second()).map_err(|_| TokenError::ExpiryOutOfRange)?;
    payload[22..].copy_from_slice(&secs.to_be_bytes());
    let t = tag(key, &payload)?;
    Ok(format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(t)
    ))
}

/// Checks a token's signature and expiry and returns its claims.
pub fn verify(key: &[u8], token: &str, now: Timestamp) -> Result<BootClaims, TokenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (p, t) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    // Bound the work done on hostile input before decoding.
    if p.len() > 64 || t.len() > 64 {
        return Err(TokenError::Malformed);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Malformed)?;
    let given = URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| TokenError::Malformed)?;
    if payload.len() != PAYLOAD_LEN || given.len() != 32 {
        return Err(TokenError::Malformed);
    }
    let want = tag(key, &payload)?;
    if !bool::from(want.ct_eq(&given[..])) {
        return Err(TokenError::BadSignature);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&payload[..6]);
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&payload[6..22]);
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&payload[22..]);
    let secs = i64::try_from(u64::from_be_bytes(secs)).map_err(|_| TokenError::Malformed)?;
    let expires = Timestamp::from_second(secs).map_err(|_| TokenError::Malformed)?;
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(BootClaims {
        mac: MacAddr::new(mac),
        nonce,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn claims() -> BootClaims {
        BootClaims {
            mac: MacAddr::new([0x52, 0x54, 0, 1, 2, 3]),
            nonce: [9; 16],
            expires: "2026-11-22T00:00:00Z".parse().unwrap(),
        }
    }

    fn now() -> Timestamp {
        "2026-11-21T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn round_trip() {
        let t = mint(&KEY, &claims()).unwrap();
        assert!(t.starts_with("dfb1."));
        assert_eq!(verify(&KEY, &t, now()), Ok(claims()));
    }

    #[test]
    fn refuses_other_keys_expiry_and_tampering() {
        let t = mint(&KEY, &claims()).unwrap();
        assert_eq!(
            verify(&[0x43; 32], &t, now()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify(&KEY, &t, claims().expires), Err(TokenError::Expired));
        // Move the token to another MAC: flip a payload bit.
        let mut other = claims();
        other.mac = MacAddr::new([0x52, 0x54, 0, 1, 2, 4]);
        let forged_payload = mint(&[0x43; 32], &other).unwrap();
        let (_, fp) = forged_payload.split_at(5);
        let (fp, _) = fp.split_once('.').unwrap();
        let (_, orig_tag) = t.rsplit_once('.').unwrap();
        let spliced = format!("dfb1.{fp}.{orig_tag}");
        assert_eq!(verify(&KEY, &spliced, now()), Err(TokenError::BadSignature));
        for bad in [
            "",
            "dfb1.",
            "dfb1.a.b",
            "dfb2.x.y",
            &t[..t.len() - 1],
            &format!("{t}="),
        ] {
            assert!(verify(&KEY, bad, now()).is_err(), "{bad:?}");
        }
        assert_eq!(mint(&[1; 16], &claims()), Err(TokenError::WeakKey));
    }

    #[test]
    fn an_expiry_before_1970_is_out_of_range_not_malformed() {
        let mut old = claims();
        old.expires = "1969-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(mint(&KEY, &old), Err(TokenError::ExpiryOutOfRange));
    }

    proptest! {
        #[test]
        fn verify_never_panics(s in "\\PC{0,200}") {
            let _ = verify(&KEY, &s, now());
        }

        #[test]
        fn any_claims_round_trip(mac: [u8; 6], nonce: [u8; 16], secs in 1i64..4_000_000_000) {
            let c = BootClaims {
                mac: MacAddr::new(mac),
                nonce,
                expires: Timestamp::from_second(secs).unwrap(),
            };
            let t = mint(&KEY, &c).unwrap();
            prop_assert_eq!(verify(&KEY, &t, Timestamp::from_second(0).unwrap()), Ok(c));
        }
    }
}
