//! The hub's keys across a rotation: the one it signs with, and the previous ones it still
//! accepts until everything they signed or were sent has expired (`docs/deployment.md` §4).
//!
//! A previous key never signs a message, an order or a code. It verifies the hub's own QR
//! codes issued before the rotation, opens passwords and PINs that phones sealed to it before
//! they learned the new key, and endorses the key set that teaches devices the new key
//! ([`qrcash_protocol::keyset`]).

use qrcash_protocol::keyset::{self, HubKeys, KeySet};
use qrcash_protocol::messages::Secret;
use qrcash_protocol::{PrivateKey, PublicKey, SealError, SealedSecret, SecretField};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: PrivateKey,
    previous: Vec<PrivateKey>,
}

/// Why a set of hub keys is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// More keys than a key set may list.
    #[error("{0} hub keys; a key set lists at most {max}", max = keyset::MAX_KEYS)]
    TooMany(usize),
}

impl KeyRing {
    /// Only `current`: no rotation under way.
    pub fn new(current: PrivateKey) -> Self {
        KeyRing {
            current,
            previous: Vec::new(),
        }
    }

    /// With `previous` keys still accepted (a copy of the current key, or one listed twice,
    /// counts once).
    pub fn with_previous(mut self, previous: Vec<PrivateKey>) -> Result<Self, KeyRingError> {
        for key in previous {
            if key.kid() != self.current.kid()
                && !self.previous.iter().any(|k| k.kid() == key.kid())
            {
                self.previous.push(key);
            }
        }
        if 1 + self.previous.len() > keyset::MAX_KEYS {
            return Err(KeyRingError::TooMany(1 + self.previous.len()));
        }
        Ok(self)
    }

    /// The signing key.
    pub fn current(&self) -> &PrivateKey {
        &self.current
    }

    /// The previous keys, verify-only.
    pub fn previous(&self) -> &[PrivateKey] {
        &self.previous
    }

    /// Every public key, the current one first: what the hub's own codes may be signed by.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.all().map(|k| k.public().clone()).collect()
    }

    fn all(&self) -> impl Iterator<Item = &PrivateKey> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// Opens a secret sealed to whichever of the keys it names.
    pub fn open_secret(
        &self,
        sealed: &SealedSecret,
        field: SecretField,
        iss: &str,
        kid: &str,
    ) -> Result<Secret, SealError> {
        let key = self
            .all()
            .find(|k| k.kid().as_str() == sealed.kid)
            .unwrap_or(&self.current);
        sealed.open(key, field, iss, kid)
    }

    /// The retained key set message: the set endorsed by every key held, so a device that
    /// trusts any one of them learns the current key.
    pub fn key_set(&self, hub_id: &str, now: u64) -> HubKeys {
        let previous: Vec<PublicKey> = self.previous.iter().map(|k| k.public().clone()).collect();
        let set = KeySet::new(hub_id, now, self.current.public(), &previous);
        HubKeys::new(&set, &self.all().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::SecretSealer;

    #[test]
    fn previous_keys_open_what_was_sealed_to_them_and_endorse_the_current_key() {
        let old = PrivateKey::generate();
        let new = PrivateKey::generate();
        let ring = KeyRing::new(new.clone())
            .with_previous(vec![old.clone(), new.clone(), old.clone()])
            .unwrap();
        assert_eq!(ring.previous().len(), 1, "duplicates count once");
        assert_eq!(
            ring.public_keys(),
            vec![new.public().clone(), old.public().clone()]
        );

        let device = PrivateKey::generate();
        for hub in [&old, &new] {
            let sealed = SecretSealer::new(hub.public().clone(), "phone-1", device.kid().clone())
                .seal(SecretField::Pin, "1234")
                .unwrap();
            let secret = ring
                .open_secret(&sealed, SecretField::Pin, "phone-1", device.kid().as_str())
                .unwrap();
            assert_eq!(secret.expose(), "1234");
        }
        // Sealed to a key the hub does not hold: refused.
        let stranger = PrivateKey::generate();
        let sealed = SecretSealer::new(stranger.public().clone(), "phone-1", device.kid().clone())
            .seal(SecretField::Pin, "1234")
            .unwrap();
        assert!(
            ring.open_secret(&sealed, SecretField::Pin, "phone-1", device.kid().as_str())
                .is_err()
        );

        // A device that trusts only the old key learns the new one.
        let msg = ring.key_set("hub", 1_800_000_000).to_bytes();
        let learned = keyset::learn(&msg, "hub", &[old.public().clone()]).unwrap();
        assert_eq!(&learned.current, new.public());

        let many: Vec<PrivateKey> = (0..keyset::MAX_KEYS)
            .map(|_| PrivateKey::generate())
            .collect();
        assert_eq!(
            KeyRing::new(new).with_previous(many).unwrap_err(),
            KeyRingError::TooMany(keyset::MAX_KEYS + 1)
        );
    }
}
