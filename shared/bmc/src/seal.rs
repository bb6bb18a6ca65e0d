//! BMC passwords sealed to bmcd's public key, so that only bmcd can read them.
//!
//! An operator's password reaches apid (`PUT /api/machines/{id}/bmc`), is stored in the shared
//! database, and is used by bmcd. Every daemon's user can read that database (they share its
//! group), so the password must not be stored in a form any of them can reverse. A symmetric
//! key would have to be held by apid (to encrypt) as well as bmcd (to decrypt); instead bmcd
//! holds an X25519 private key (its systemd credential `bmc-key`) and publishes the public
//! key in the store, and apid *seals* each password to it: a libsodium-style sealed box
//! (an ephemeral X25519 key agreement with the recipient's key, XSalsa20-Poly1305, the
//! nonce derived from both public keys), from the RustCrypto `crypto_box` crate. apid can
//! seal but never open; a copy of the database, or a compromised apid, dhcpd or ipxed,
//! yields no password.
//!
//! The credential is 32 or more random bytes (like the boot-token key); the private key is
//! SHA-256 of a domain label and those bytes, so the same file can never collide with a key
//! of another purpose. A key id (the first 8 bytes of the public key, in hex) is stored with
//! each sealed password: when the credential is replaced, bmcd says "sealed to another key,
//! set the password again" instead of "authentication failed".

use crypto_box::aead::OsRng;
use sha2::{Digest, Sha256};

/// The shortest `bmc-key` credential accepted.
pub const MIN_KEY_LEN: usize = 32;

/// Why sealing or opening failed. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the BMC key credential is {len} bytes; at least {MIN_KEY_LEN} are required")]
    ShortKey { len: usize },
    #[error("the public key is {len} bytes, not 32")]
    BadPublicKey { len: usize },
    #[error("the password was sealed to key {sealed_to}, but bmcd holds key {held}: set it again")]
    OtherKey { sealed_to: String, held: String },
    #[error(
        "the sealed password does not open with bmcd's key (corrupt, or sealed to another key)"
    )]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error("the opened password is not UTF-8")]
    NotUtf8,
}

/// bmcd's private key.
pub struct OpeningKey(crypto_box::SecretKey);

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpeningKey(public {})", self.public_key().id())
    }
}

impl OpeningKey {
    /// The key derived from the `bmc-key` credential's bytes.
    ///
    /// # Errors
    /// [`SealError::ShortKey`] below [`MIN_KEY_LEN`] bytes.
    pub fn from_credential(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(SealError::ShortKey { len: bytes.len() });
        }
        let mut h = Sha256::new();
        h.update(b"dragonfly bmc-key v1\0");
        h.update(bytes);
        let scalar: [u8; 32] = h.finalize().into();
        Ok(Self(crypto_box::SecretKey::from(scalar)))
    }

    /// The public key apid seals to.
    pub fn public_key(&self) -> SealingKey {
        SealingKey(self.0.public_key())
    }

    /// Opens a password sealed to this key; `key_id` is the id stored with it.
    ///
    /// # Errors
    /// [`SealError::OtherKey`] when it was sealed to another key, [`SealError::Open`] when it
    /// does not open, [`SealError::NotUtf8`].
    pub fn open(&self, sealed: &[u8], key_id: &str) -> Result<crate::Password, SealError> {
        let held = self.public_key().id();
        if key_id != held {
            return Err(SealError::OtherKey {
                sealed_to: key_id.to_owned(),
                held,
            });
        }
        let plain = self.0.unseal(sealed).map_err(|_| SealError::Open)?;
        String::from_utf8(plain)
            .map(crate::Password::new)
            .map_err(|_| SealError::NotUtf8)
    }
}

/// bmcd's public key, as apid reads it from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingKey(crypto_box::PublicKey);

impl SealingKey {
    /// The key from its 32 stored bytes.
    ///
    /// # Errors
    /// [`SealError::BadPublicKey`] for another length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::BadPublicKey { len: bytes.len() })?;
        Ok(Self(crypto_box::PublicKey::from(arr)))
    }

    /// Its 32 bytes, to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.as_bytes().to_vec()
    }

    /// Its id: the first 8 bytes in hex.
    pub fn id(&self) -> String {
        crate::hex(&self.0.as_bytes()[..8])
    }

    /// Seals `password` so that only the holder of the private key opens it.
    ///
    /// # Errors
    /// [`SealError::Seal`] if the system's random source fails.
    pub fn seal(&self, password: &str) -> Result<Vec<u8>, SealError> {
        self.0
            .seal(&mut OsRng, password.as_bytes())
            .map_err(|_| SealError::Seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_only_with_the_private_key() {
        let k = OpeningKey::from_credential(&[7; 32]).unwrap();
        let pk = k.public_key();
        let sealed = pk.seal("hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&sealed, &pk.id()).unwrap().expose(), "hunter2");
        // Two seals of the same password differ (ephemeral key each time).
        assert_ne!(sealed, pk.seal("hunter2").unwrap());

        let other = OpeningKey::from_credential(&[8; 32]).unwrap();
        assert!(matches!(
            other.open(&sealed, &pk.id()),
            Err(SealError::OtherKey { .. })
        ));
        assert!(matches!(
            other.open(&sealed, &other.public_key().id()),
            Err(SealError::Open)
        ));
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert!(matches!(k.open(&flipped, &pk.id()), Err(SealError::Open)));
    }

    #[test]
    fn short_credentials_are_refused_and_keys_round_trip() {
        assert!(matches!(
            OpeningKey::from_credential(&[1; 31]),
            Err(SealError::ShortKey { len: 31 })
        ));
        let k = OpeningKey::from_credential(&[1; 40]).unwrap();
        let pk = SealingKey::from_bytes(&k.public_key().to_bytes()).unwrap();
        assert_eq!(pk, k.public_key());
        assert_eq!(pk.id().len(), 16);
        assert!(!format!("{k:?}").contains("[1"));
        assert!(SealingKey::from_bytes(&[0; 31]).is_err());
    }
}
