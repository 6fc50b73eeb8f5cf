//! Passwords and PINs on the wire: sealed to the hub with HPKE (RFC 9180), so that nobody who
//! can read the broker (an operator, a compromised broker, a subscriber with a too-wide ACL)
//! can read them, and a sealed secret lifted from one device's message is useless in
//! another's.
//!
//! The construction (`docs/protocol.md` §6.5 states it for other implementations, with test
//! vectors checked by this module's tests):
//!
//! - **Suite**: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305
//!   (KEM 0x0020, KDF 0x0001, AEAD 0x0003).
//! - **Recipient key**: the hub's Ed25519 signing key in its X25519 form: the public key is
//!   the Montgomery form of the Ed25519 public key (RFC 7748 §4.1 birational map, as
//!   libsodium's `crypto_sign_ed25519_pk_to_curve25519`), the private key the first 32 bytes
//!   of SHA-512 of the Ed25519 seed. Phones already trust that key; nothing new to
//!   distribute or rotate.
//! - **info**: `qrcash/v1 sealed secret`.
//! - **aad**: `field || 0x00 || iss || 0x00 || kid`, where `field` is the member's name
//!   (`password`, `pin`, `current_password`, `new_password`), `iss` the sending device's id
//!   and `kid` the key id of the key that signs the message. The hub opens with the values
//!   of the message it verified, so a ciphertext moved into a message of another device, of
//!   another key (a re-keying login) or into another field does not open.
//! - **plaintext**: the secret's UTF-8 bytes, 1 to 256 of them.
//! - **wire**: `{"kid": <hub key id>, "enc": base64url(enc, 32 bytes), "ct": base64url(ct)}`.

use std::fmt;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::ids::random_bytes;
use crate::jws::{b64, unb64};
use crate::keys::{KeyId, PrivateKey, PublicKey};
use crate::messages::Secret;

/// The HPKE `info` string.
pub const INFO: &[u8] = b"qrcash/v1 sealed secret";

/// The longest secret that can be sealed, in bytes.
pub const MAX_SECRET_BYTES: usize = 256;

/// Which message member a secret is: part of the `aad`, so it cannot be moved to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    /// `Login.password`.
    Password,
    /// `IdentityEvidence.pin`.
    Pin,
    /// `ChangePassword.current_password`.
    CurrentPassword,
    /// `ChangePassword.new_password`.
    NewPassword,
}

impl SecretField {
    /// The member's name, as in the `aad`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SecretField::Password => "password",
            SecretField::Pin => "pin",
            SecretField::CurrentPassword => "current_password",
            SecretField::NewPassword => "new_password",
        }
    }
}

/// A secret sealed to the hub, as it travels.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// The key id of the hub key it is sealed to.
    pub kid: String,
    /// The HPKE encapsulated key, base64url (32 bytes).
    pub enc: String,
    /// The ciphertext with its 16-byte tag, base64url.
    pub ct: String,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret(kid {}, {} bytes)", self.kid, self.ct.len())
    }
}

/// A sealed secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed to another hub key than the ones this receiver holds.
    #[error("the secret is sealed to key {0}, not to this hub's key")]
    OtherKey(String),
    /// `enc` or `ct` is not canonical base64url of the right size.
    #[error("the sealed secret is not well-formed: {0}")]
    Malformed(&'static str),
    /// It does not open: tampered with, sealed for another device, key or field.
    #[error("the sealed secret does not open for this device, key and field")]
    DoesNotOpen,
    /// Empty, longer than [`MAX_SECRET_BYTES`] or not UTF-8.
    #[error("a secret must be 1 to {MAX_SECRET_BYTES} bytes of UTF-8")]
    BadSecret,
}

/// The `aad` of a secret in `field` of a message from `iss` signed with `kid`.
pub fn aad(field: SecretField, iss: &str, kid: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.as_str().len() + iss.len() + kid.len() + 2);
    out.extend_from_slice(field.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(iss.as_bytes());
    out.push(0);
    out.extend_from_slice(kid.as_bytes());
    out
}

/// The hub's public key in its X25519 form (the Montgomery form of the Ed25519 key).
pub fn x25519_public(hub: &PublicKey) -> [u8; 32] {
    hub.verifying_key().to_montgomery().to_bytes()
}

/// The hub's private key in its X25519 form (the first half of SHA-512 of the seed; X25519
/// clamps it).
pub fn x25519_private(hub: &PrivateKey) -> [u8; 32] {
    hub.signing_key().to_scalar_bytes()
}

/// The operating system's random source for HPKE's encapsulation.
struct OsRandom;

impl hpke::rand_core::RngCore for OsRandom {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        random_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        random_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        random_bytes(dst);
    }
}

impl hpke::rand_core::CryptoRng for OsRandom {}

/// Seals secrets for one device's messages: the hub key, the device id and the key id of
/// the key that signs them.
#[derive(Debug, Clone)]
pub struct SecretSealer {
    hub: PublicKey,
    iss: String,
    kid: KeyId,
}

impl SecretSealer {
    /// For messages from device `iss` signed with the key `kid`, to the hub key `hub`.
    pub fn new(hub: PublicKey, iss: impl Into<String>, kid: KeyId) -> Self {
        SecretSealer {
            hub,
            iss: iss.into(),
            kid,
        }
    }

    /// The device id the secrets are for.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// Seals `secret` as `field`.
    pub fn seal(&self, field: SecretField, secret: &str) -> Result<SealedSecret, SealError> {
        if secret.is_empty() || secret.len() > MAX_SECRET_BYTES {
            return Err(SealError::BadSecret);
        }
        let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&x25519_public(&self.hub))
            .map_err(|_| SealError::Malformed("hub key"))?;
        let (enc, ct) =
            hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
                &OpModeS::Base,
                &pk,
                INFO,
                secret.as_bytes(),
                &aad(field, &self.iss, self.kid.as_str()),
                &mut OsRandom,
            )
            .map_err(|_| SealError::DoesNotOpen)?;
        Ok(SealedSecret {
            kid: self.hub.kid().as_str().to_owned(),
            enc: b64(&enc.to_bytes()),
            ct: b64(&ct),
        })
    }
}

impl SealedSecret {
    /// Opens the secret with the hub key `hub`, for `field` of a message from `iss` signed
    /// with the key `kid` (the values of the verified message, never of the sealed secret).
    pub fn open(
        &self,
        hub: &PrivateKey,
        field: SecretField,
        iss: &str,
        kid: &str,
    ) -> Result<Secret, SealError> {
        if self.kid != hub.kid().as_str() {
            let shown: String = self.kid.chars().take(64).collect();
            return Err(SealError::OtherKey(shown));
        }
        let enc = unb64(&self.enc).ok_or(SealError::Malformed("enc is not base64url"))?;
        let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc)
            .map_err(|_| SealError::Malformed("enc is not an X25519 public key"))?;
        let ct = unb64(&self.ct).ok_or(SealError::Malformed("ct is not base64url"))?;
        if ct.len() <= 16 || ct.len() > MAX_SECRET_BYTES + 16 {
            return Err(SealError::Malformed("ct has the wrong size"));
        }
        let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&x25519_private(hub))
            .map_err(|_| SealError::Malformed("hub key"))?;
        let plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            INFO,
            &ct,
            &aad(field, iss, kid),
        )
        .map_err(|_| SealError::DoesNotOpen)?;
        let text = String::from_utf8(plain).map_err(|_| SealError::BadSecret)?;
        if text.is_empty() {
            return Err(SealError::BadSecret);
        }
        Ok(Secret::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 8037 example key, as the hub key of `docs/protocol.md`.
    fn hub() -> PrivateKey {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&unb64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap());
        PrivateKey::from_bytes(seed)
    }

    fn sealer() -> SecretSealer {
        SecretSealer::new(
            hub().public().clone(),
            "dev-hanako-1",
            KeyId::from_wire("kid-a"),
        )
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_device_key_and_field() {
        let s = sealer()
            .seal(SecretField::Password, "correct horse battery")
            .unwrap();
        let hub = hub();
        let open = |field, iss: &str, kid: &str| s.open(&hub, field, iss, kid);
        assert_eq!(
            open(SecretField::Password, "dev-hanako-1", "kid-a")
                .unwrap()
                .expose(),
            "correct horse battery"
        );
        for (field, iss, kid) in [
            (SecretField::Pin, "dev-hanako-1", "kid-a"),
            (SecretField::Password, "dev-thief", "kid-a"),
            (SecretField::Password, "dev-hanako-1", "kid-thief"),
        ] {
            assert_eq!(open(field, iss, kid), Err(SealError::DoesNotOpen));
        }
        let mut tampered = s.clone();
        tampered.ct = b64(&[0u8; 30]);
        assert_eq!(
            tampered.open(&hub, SecretField::Password, "dev-hanako-1", "kid-a"),
            Err(SealError::DoesNotOpen)
        );
        let other = PrivateKey::generate();
        assert!(matches!(
            s.open(&other, SecretField::Password, "dev-hanako-1", "kid-a"),
            Err(SealError::OtherKey(_))
        ));
        // Fresh randomness every time: the same secret never looks the same twice.
        let again = sealer()
            .seal(SecretField::Password, "correct horse battery")
            .unwrap();
        assert_ne!(s.enc, again.enc);
        assert_ne!(s.ct, again.ct);
    }

    #[test]
    fn secrets_must_be_one_to_256_bytes() {
        assert_eq!(
            sealer().seal(SecretField::Pin, ""),
            Err(SealError::BadSecret)
        );
        assert!(sealer().seal(SecretField::Pin, &"7".repeat(256)).is_ok());
        assert_eq!(
            sealer().seal(SecretField::Pin, &"7".repeat(257)),
            Err(SealError::BadSecret)
        );
    }

    #[test]
    fn the_x25519_form_of_the_hub_key_is_the_documented_one() {
        // docs/protocol.md §6.5 lists these for the RFC 8037 key.
        let hub = hub();
        assert_eq!(
            b64(&x25519_public(hub.public())),
            DOC_X25519_PUBLIC,
            "X25519 public key"
        );
        let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&x25519_private(&hub)).unwrap();
        assert_eq!(
            b64(&X25519HkdfSha256::sk_to_pk(&sk).to_bytes()),
            DOC_X25519_PUBLIC,
            "the private half matches"
        );
    }

    #[test]
    fn the_documented_vector_opens() {
        let s = SealedSecret {
            kid: hub().kid().as_str().to_owned(),
            enc: DOC_ENC.into(),
            ct: DOC_CT.into(),
        };
        let secret = s
            .open(
                &hub(),
                SecretField::Password,
                "dev-hanako-1",
                DOC_SENDER_KID,
            )
            .unwrap();
        assert_eq!(secret.expose(), "correct horse battery");
    }

    /// Prints a fresh vector for the document: `cargo test -p qrcash-protocol -- --ignored
    /// --nocapture print_a_vector`.
    #[test]
    #[ignore]
    fn print_a_vector() {
        let s = SecretSealer::new(
            hub().public().clone(),
            "dev-hanako-1",
            KeyId::from_wire(DOC_SENDER_KID),
        )
        .seal(SecretField::Password, "correct horse battery")
        .unwrap();
        println!("x25519 public {}", b64(&x25519_public(hub().public())));
        println!("{}", serde_json::to_string(&s).unwrap());
    }

    const DOC_SENDER_KID: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
    const DOC_X25519_PUBLIC: &str = "2F4H7CKwrYgVN8L0TWYtGhQ8-DDFespDBdhcepD2ti4";
    const DOC_ENC: &str = "j3jN2JHlymc_cWfdWNolvLUi5xTvR7fayUsgwKqXKVo";
    const DOC_CT: &str = "OUIchDbj0xosxKG5Tn3cLvxE54EynAb7xfdS1ZiKvYSVLdlh3Q";
}
