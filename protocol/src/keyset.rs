//! The hub's key set, endorsed by the keys devices already trust: how ATMs and phones learn a
//! new hub key without a flag day (`docs/protocol.md` §3.4).
//!
//! The hub publishes, retained on [`crate::topics::HUB_KEYS`], one endorsement per key it
//! holds: a JWS (header `typ` [`TYP`], `kid` the endorsing key) whose payload is the
//! [`KeySet`], the current signing key first, then the previous keys it still accepts. A
//! device verifies each endorsement whose `kid` it trusts and learns the keys listed; an
//! endorsement by a key it does not know is skipped, never an error (a device enrolled after
//! a rotation knows only the new key).
//!
//! Learning gives nothing to someone who does not hold a trusted key: a key set is only as
//! good as the key that endorsed it. Which keys a device keeps, and for how long, is the
//! device's business (`docs/agent.md`, `docs/phone.md`).

use serde::{Deserialize, Serialize};

use crate::jws::{self, Compact, Header};
use crate::keys::{KeyId, PrivateKey, PublicJwk, PublicKey};

/// The JWS `typ` of an endorsement.
pub const TYP: &str = "qrcash-keyset+jws";
/// Most keys a set may list.
pub const MAX_KEYS: usize = 8;
/// Most endorsements a published message may carry.
pub const MAX_ENDORSEMENTS: usize = 8;
/// Largest published message, in bytes (checked before parsing).
pub const MAX_BYTES: usize = 16 * 1024;

/// What an endorsement says: the hub `iss` signs with `keys[0]` and accepts all of `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// The hub's id.
    pub iss: String,
    /// When the set was made, Unix seconds.
    pub iat: u64,
    /// The current signing key first, then previous keys still accepted.
    pub keys: Vec<PublicJwk>,
}

/// The retained message on [`crate::topics::HUB_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubKeys {
    /// One endorsement of the same [`KeySet`] per key the hub holds.
    pub endorsements: Vec<String>,
}

/// Why a key set message taught nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// Larger than [`MAX_BYTES`].
    #[error("key set message of {0} bytes is larger than {MAX_BYTES}")]
    TooLarge(usize),
    /// Not the JSON of [`HubKeys`], or too many endorsements.
    #[error("malformed key set message: {0}")]
    Malformed(String),
    /// No endorsement was signed by a trusted key.
    #[error("no endorsement by a trusted key (endorsed by {0:?})")]
    NoTrustedEndorsement(Vec<String>),
    /// An endorsement by a trusted key did not verify or said something invalid.
    #[error("endorsement by {kid} refused: {reason}")]
    Refused {
        /// The endorsing key.
        kid: String,
        /// What was wrong.
        reason: String,
    },
}

/// Keys learned from a key set message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The hub's current signing key (first of the set).
    pub current: PublicKey,
    /// Every key of the set, the current one first.
    pub keys: Vec<PublicKey>,
    /// The trusted key whose endorsement taught them.
    pub endorsed_by: KeyId,
}

impl KeySet {
    /// The set for `iss` at `now`: `current` first, then `previous`.
    pub fn new(iss: &str, now: u64, current: &PublicKey, previous: &[PublicKey]) -> Self {
        KeySet {
            iss: iss.to_owned(),
            iat: now,
            keys: std::iter::once(current)
                .chain(previous)
                .map(PublicKey::to_jwk)
                .collect(),
        }
    }

    /// The endorsement of this set by `key`.
    pub fn endorse(&self, key: &PrivateKey) -> String {
        // Serializing strings and integers cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        jws::sign(
            key.signing_key(),
            &Header::eddsa(Some(key.kid().as_str()), Some(TYP)),
            &payload,
        )
    }
}

impl HubKeys {
    /// The message endorsing `set` by each of `endorsers`.
    pub fn new(set: &KeySet, endorsers: &[&PrivateKey]) -> Self {
        HubKeys {
            endorsements: endorsers.iter().map(|k| set.endorse(k)).collect(),
        }
    }

    /// The JSON bytes to publish.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reads a key set message from hub `iss` and returns what the first endorsement by one of
/// `trusted` says. Endorsements by unknown keys are skipped; one by a trusted key that does
/// not verify, names another hub, or lists invalid keys refuses the whole message.
pub fn learn(bytes: &[u8], iss: &str, trusted: &[PublicKey]) -> Result<Learned, KeySetError> {
    if bytes.len() > MAX_BYTES {
        return Err(KeySetError::TooLarge(bytes.len()));
    }
    let msg: HubKeys =
        serde_json::from_slice(bytes).map_err(|e| KeySetError::Malformed(e.to_string()))?;
    if msg.endorsements.len() > MAX_ENDORSEMENTS {
        return Err(KeySetError::Malformed(format!(
            "{} endorsements, at most {MAX_ENDORSEMENTS}",
            msg.endorsements.len()
        )));
    }
    let mut unknown = Vec::new();
    for text in &msg.endorsements {
        let jws = Compact::parse(text).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        let kid = jws.header.kid.clone().unwrap_or_default();
        let Some(endorser) = trusted.iter().find(|k| k.kid().as_str() == kid) else {
            unknown.push(kid);
            continue;
        };
        let refused = |reason: String| KeySetError::Refused {
            kid: kid.clone(),
            reason,
        };
        if jws.header.typ.as_deref() != Some(TYP) {
            return Err(refused(format!("typ is not {TYP}")));
        }
        let payload = jws
            .verify(endorser.verifying_key())
            .map_err(|e| refused(e.to_string()))?;
        let set: KeySet = serde_json::from_slice(&payload).map_err(|e| refused(e.to_string()))?;
        if set.iss != iss {
            return Err(refused(format!("issued by {}, not {iss}", set.iss)));
        }
        if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
            return Err(refused(format!(
                "{} keys, between 1 and {MAX_KEYS} expected",
                set.keys.len()
            )));
        }
        let keys = set
            .keys
            .iter()
            .map(PublicKey::from_jwk)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(e.to_string()))?;
        return Ok(Learned {
            current: keys[0].clone(),
            keys,
            endorsed_by: endorser.kid().clone(),
        });
    }
    Err(KeySetError::NoTrustedEndorsement(unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_device_learns_the_new_key_from_the_old_keys_endorsement() {
        let old = PrivateKey::generate();
        let new = PrivateKey::generate();
        let set = KeySet::new("hub", NOW, new.public(), &[old.public().clone()]);
        let bytes = HubKeys::new(&set, &[&new, &old]).to_bytes();

        // A device that trusts only the old key skips the new key's endorsement.
        let learned = learn(&bytes, "hub", &[old.public().clone()]).unwrap();
        assert_eq!(&learned.current, new.public());
        assert_eq!(
            learned.keys,
            vec![new.public().clone(), old.public().clone()]
        );
        assert_eq!(&learned.endorsed_by, old.kid());
        // One enrolled after the rotation trusts the new key.
        let learned = learn(&bytes, "hub", &[new.public().clone()]).unwrap();
        assert_eq!(&learned.endorsed_by, new.kid());
    }

    #[test]
    fn only_a_trusted_key_teaches_anything() {
        let old = PrivateKey::generate();
        let mallory = PrivateKey::generate();
        let trusted = [old.public().clone()];
        // Mallory endorses her own key: nothing learned.
        let set = KeySet::new("hub", NOW, mallory.public(), &[]);
        let bytes = HubKeys::new(&set, &[&mallory]).to_bytes();
        assert!(matches!(
            learn(&bytes, "hub", &trusted),
            Err(KeySetError::NoTrustedEndorsement(kids)) if kids == [mallory.kid().to_string()]
        ));
        // She takes the old key's endorsement and swaps its payload: the signature fails.
        let genuine = KeySet::new("hub", NOW, old.public(), &[]).endorse(&old);
        let forged_payload = jws::b64(&serde_json::to_vec(&set).unwrap());
        let parts: Vec<&str> = genuine.split('.').collect();
        let forged = HubKeys {
            endorsements: vec![format!("{}.{forged_payload}.{}", parts[0], parts[2])],
        };
        assert!(matches!(
            learn(&forged.to_bytes(), "hub", &trusted),
            Err(KeySetError::Refused { .. })
        ));
        // Another hub's set, a plain message signed by the key, garbage and oversize.
        let other = HubKeys::new(&KeySet::new("other-hub", NOW, old.public(), &[]), &[&old]);
        assert!(matches!(
            learn(&other.to_bytes(), "hub", &trusted),
            Err(KeySetError::Refused { .. })
        ));
        let untyped = jws::sign(
            old.signing_key(),
            &Header::eddsa(Some(old.kid().as_str()), None),
            &serde_json::to_vec(&set).unwrap(),
        );
        let untyped = HubKeys {
            endorsements: vec![untyped],
        };
        assert!(matches!(
            learn(&untyped.to_bytes(), "hub", &trusted),
            Err(KeySetError::Refused { .. })
        ));
        assert!(matches!(
            learn(b"{\"keys\":1}", "hub", &trusted),
            Err(KeySetError::Malformed(_))
        ));
        assert!(matches!(
            learn(&vec![b' '; MAX_BYTES + 1], "hub", &trusted),
            Err(KeySetError::TooLarge(_))
        ));
        let empty = KeySet {
            keys: vec![],
            ..KeySet::new("hub", NOW, old.public(), &[])
        };
        assert!(matches!(
            learn(&HubKeys::new(&empty, &[&old]).to_bytes(), "hub", &trusted),
            Err(KeySetError::Refused { .. })
        ));
    }
}
