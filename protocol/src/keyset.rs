//! The hub's key set, endorsed by the keys devices already trust: how ATMs and phones learn a
//! new hub key without a flag day (`docs/protocol.md` §3, "The hub's key set").
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
    /// The set is older than the newest one this device applied (a replay, or a hub
    /// instance still on an old configuration).
    #[error("key set of {iat} is older than the one applied ({newest})")]
    Stale {
        /// The refused set's `iat`.
        iat: u64,
        /// The newest applied.
        newest: u64,
    },
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
    /// The set's `iat`: a device never goes back to an older set.
    pub iat: u64,
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
    if msg.endorsements.is_empty() || msg.endorsements.len() > MAX_ENDORSEMENTS {
        return Err(KeySetError::Malformed(format!(
            "{} endorsements, between 1 and {MAX_ENDORSEMENTS} expected",
            msg.endorsements.len()
        )));
    }
    let mut unknown = Vec::new();
    for text in &msg.endorsements {
        // Only an endorsement by a trusted key is read: any other is skipped, whatever it
        // holds (a later kind of endorsement must not break this device).
        let kid = endorser_kid(text).unwrap_or_default();
        let Some(endorser) = trusted.iter().find(|k| k.kid().as_str() == kid) else {
            unknown.push(kid);
            continue;
        };
        let refused = |reason: String| KeySetError::Refused {
            kid: kid.clone(),
            reason,
        };
        let jws = Compact::parse(text).map_err(|e| refused(e.to_string()))?;
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
            iat: set.iat,
        });
    }
    Err(KeySetError::NoTrustedEndorsement(unknown))
}

/// The `kid` of an endorsement's protected header, read without judging the rest.
fn endorser_kid(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct KidOnly {
        kid: Option<String>,
    }
    let header = crate::jws::unb64(text.split('.').next()?)?;
    serde_json::from_slice::<KidOnly>(&header).ok()?.kid
}

/// What a device trusts of the hub's keys: the keys it was provisioned with (its roots:
/// `hub_keys` of an agent, the app's key of a phone) and what the newest key set endorsed by
/// one of them taught it. Pure: the device persists [`HubTrust::state`] and journals what
/// [`HubTrust::apply`] and [`HubTrust::forget`] say changed. The rules (`docs/protocol.md`
/// §3, "The hub's key set"):
///
/// - a set older than the newest one applied (`iat`) is refused ([`KeySetError::Stale`]);
/// - the learned keys are exactly the newest set's keys, less the roots and the forgotten:
///   a key the hub no longer lists is dropped;
/// - the hub's messages are trusted from its current key (the newest set's first) and, until
///   a set is learned, from the roots; QR codes from every root and learned key (a code
///   signed before a rotation stays valid until it expires);
/// - a forgotten key is never learned again (after a compromise);
/// - learned state belongs to the roots it was learned under: when they change (a new app
///   or configuration), it starts again from the new roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubTrust {
    roots: Vec<PublicKey>,
    state: TrustState,
}

/// The persisted part of [`HubTrust`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    /// Key ids of the roots this was learned under.
    pub roots: Vec<String>,
    /// `iat` of the newest set applied (0: none).
    pub iat: u64,
    /// The newest set's current key.
    pub current: Option<PublicJwk>,
    /// Its keys, less roots and forgotten.
    pub learned: Vec<PublicJwk>,
    /// The key that endorsed it.
    pub endorsed_by: Option<String>,
    /// Key ids never to be learned again.
    pub forgotten: Vec<String>,
}

/// What applying a key set changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustChange {
    /// Keys trusted now that were not before.
    pub added: Vec<PublicKey>,
    /// Learned keys no longer trusted.
    pub dropped: Vec<KeyId>,
    /// The hub's current key, when it changed.
    pub current: Option<PublicKey>,
}

impl TrustChange {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty() && self.current.is_none()
    }
}

impl HubTrust {
    /// Trust under `roots`, resuming `saved` when it was learned under the same roots
    /// (forgotten keys are kept whatever the roots). Keys in `saved` that do not parse are
    /// dropped.
    pub fn new(roots: Vec<PublicKey>, saved: Option<TrustState>) -> Self {
        let kids: Vec<String> = roots.iter().map(|k| k.kid().to_string()).collect();
        let saved = saved.unwrap_or_default();
        let state = if saved.roots == kids {
            saved
        } else {
            TrustState {
                roots: kids,
                forgotten: saved.forgotten,
                ..TrustState::default()
            }
        };
        let mut trust = HubTrust { roots, state };
        trust
            .state
            .learned
            .retain(|j| PublicKey::from_jwk(j).is_ok());
        if trust
            .state
            .current
            .as_ref()
            .is_some_and(|j| PublicKey::from_jwk(j).is_err())
        {
            trust.state.current = None;
        }
        trust
    }

    /// What to persist.
    pub fn state(&self) -> &TrustState {
        &self.state
    }

    /// The roots.
    pub fn roots(&self) -> &[PublicKey] {
        &self.roots
    }

    fn learned(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.state
            .learned
            .iter()
            .filter_map(|j| PublicKey::from_jwk(j).ok())
    }

    /// The hub's current key, once a set taught it.
    pub fn current(&self) -> Option<PublicKey> {
        self.state
            .current
            .as_ref()
            .and_then(|j| PublicKey::from_jwk(j).ok())
    }

    /// Keys the hub's messages may be signed by: its current key once known, else the roots.
    pub fn message_keys(&self) -> Vec<PublicKey> {
        match self.current() {
            Some(current) => vec![current],
            None => self.roots.clone(),
        }
    }

    /// Keys the hub's QR codes may be signed by: the roots and every learned key.
    pub fn code_keys(&self) -> Vec<PublicKey> {
        let mut keys = self.roots.clone();
        for k in self.learned() {
            if !keys.iter().any(|r| r.kid() == k.kid()) {
                keys.push(k);
            }
        }
        keys
    }

    /// The key to seal secrets to: the current key once known, else the first root.
    pub fn sealing_key(&self) -> Option<PublicKey> {
        self.current().or_else(|| self.roots.first().cloned())
    }

    /// Reads a key set message from hub `iss` and applies it. Endorsements are checked
    /// against the roots and the learned keys.
    pub fn apply(&mut self, bytes: &[u8], iss: &str) -> Result<TrustChange, KeySetError> {
        let learned = learn(bytes, iss, &self.code_keys())?;
        if learned.iat < self.state.iat {
            return Err(KeySetError::Stale {
                iat: learned.iat,
                newest: self.state.iat,
            });
        }
        let is_root = |k: &PublicKey| self.roots.iter().any(|r| r.kid() == k.kid());
        let forgotten = |k: &PublicKey| self.state.forgotten.iter().any(|f| f == k.kid().as_str());
        let before_keys = self.code_keys();
        let before_current = self.current();
        let keep: Vec<PublicKey> = learned
            .keys
            .iter()
            .filter(|k| !is_root(k) && !forgotten(k))
            .cloned()
            .collect();
        let current = Some(learned.current.clone()).filter(|k| !forgotten(k));
        self.state.iat = learned.iat;
        self.state.learned = keep.iter().map(PublicKey::to_jwk).collect();
        self.state.current = current.as_ref().map(PublicKey::to_jwk);
        self.state.endorsed_by = Some(learned.endorsed_by.to_string());
        let after = self.code_keys();
        Ok(TrustChange {
            added: after
                .iter()
                .filter(|k| !before_keys.iter().any(|b| b.kid() == k.kid()))
                .cloned()
                .collect(),
            dropped: before_keys
                .iter()
                .filter(|k| !after.iter().any(|a| a.kid() == k.kid()))
                .map(|k| k.kid().clone())
                .collect(),
            current: current.filter(|c| before_current.as_ref() != Some(c)),
        })
    }

    /// Forgets a learned key for good (a compromised key): it is dropped now and never
    /// learned again. False when `kid` is a root (remove it from the configuration instead)
    /// or already forgotten.
    pub fn forget(&mut self, kid: &str) -> bool {
        if self.roots.iter().any(|r| r.kid().as_str() == kid)
            || self.state.forgotten.iter().any(|f| f == kid)
        {
            return false;
        }
        self.state.forgotten.push(kid.to_owned());
        self.state.learned.retain(|j| j.kid.as_deref() != Some(kid));
        if self
            .state
            .current
            .as_ref()
            .is_some_and(|j| j.kid.as_deref() == Some(kid))
        {
            self.state.current = None;
        }
        true
    }
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

    /// A set endorsed by `by` listing `keys` (current first) at `iat`.
    fn set(iat: u64, keys: &[&PrivateKey], by: &[&PrivateKey]) -> Vec<u8> {
        let publics: Vec<PublicKey> = keys.iter().skip(1).map(|k| k.public().clone()).collect();
        HubKeys::new(&KeySet::new("hub", iat, keys[0].public(), &publics), by).to_bytes()
    }

    #[test]
    fn trust_follows_the_newest_set_and_never_goes_back() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let c = PrivateKey::generate();
        let mut t = HubTrust::new(vec![a.public().clone()], None);
        assert_eq!(t.message_keys(), vec![a.public().clone()]);
        assert_eq!(t.sealing_key().as_ref(), Some(a.public()));

        // Rotation A → B: messages from B only, codes from both, secrets to B.
        let change = t.apply(&set(10, &[&b, &a], &[&b, &a]), "hub").unwrap();
        assert_eq!(change.added, vec![b.public().clone()]);
        assert_eq!(change.current.as_ref(), Some(b.public()));
        assert_eq!(t.message_keys(), vec![b.public().clone()]);
        assert_eq!(t.code_keys(), vec![a.public().clone(), b.public().clone()]);
        assert_eq!(t.sealing_key().as_ref(), Some(b.public()));
        // The same set again changes nothing; an older one is refused.
        assert!(
            t.apply(&set(10, &[&b, &a], &[&b, &a]), "hub")
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            t.apply(&set(9, &[&a], &[&a]), "hub"),
            Err(KeySetError::Stale { iat: 9, newest: 10 })
        ));
        assert_eq!(t.message_keys(), vec![b.public().clone()]);

        // B → C, endorsed by B only (a learned key endorses too); B is dropped once the hub
        // no longer lists it.
        t.apply(&set(20, &[&c, &b], &[&c, &b]), "hub").unwrap();
        assert_eq!(t.message_keys(), vec![c.public().clone()]);
        let change = t.apply(&set(30, &[&c], &[&c]), "hub").unwrap();
        assert_eq!(change.dropped, vec![b.kid().clone()]);
        assert_eq!(t.code_keys(), vec![a.public().clone(), c.public().clone()]);

        // The state resumes under the same roots, and starts over under others.
        let resumed = HubTrust::new(vec![a.public().clone()], Some(t.state().clone()));
        assert_eq!(resumed.message_keys(), vec![c.public().clone()]);
        let other = HubTrust::new(vec![b.public().clone()], Some(t.state().clone()));
        assert_eq!(other.message_keys(), vec![b.public().clone()]);
        assert_eq!(other.state().iat, 0);
    }

    #[test]
    fn a_forgotten_key_is_never_learned_again() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let mut t = HubTrust::new(vec![a.public().clone()], None);
        t.apply(&set(10, &[&b, &a], &[&b, &a]), "hub").unwrap();
        assert!(t.forget(b.kid().as_str()));
        assert!(!t.forget(b.kid().as_str()), "already forgotten");
        assert!(
            !t.forget(a.kid().as_str()),
            "a root is removed from the configuration"
        );
        assert_eq!(t.message_keys(), vec![a.public().clone()]);
        // The retained set still lists B: it stays forgotten, also under new roots.
        t.apply(&set(11, &[&b, &a], &[&b, &a]), "hub").unwrap();
        assert_eq!(t.code_keys(), vec![a.public().clone()]);
        assert_eq!(t.sealing_key().as_ref(), Some(a.public()));
        let other = HubTrust::new(vec![b.public().clone()], Some(t.state().clone()));
        assert_eq!(other.state().forgotten, vec![b.kid().to_string()]);
    }

    #[test]
    fn an_unreadable_endorsement_by_an_unknown_key_is_skipped() {
        let a = PrivateKey::generate();
        let good = KeySet::new("hub", NOW, a.public(), &[]).endorse(&a);
        let msg = HubKeys {
            endorsements: vec!["not a jws".into(), good],
        };
        assert!(learn(&msg.to_bytes(), "hub", &[a.public().clone()]).is_ok());
        let none = HubKeys {
            endorsements: vec![],
        };
        assert!(matches!(
            learn(&none.to_bytes(), "hub", &[a.public().clone()]),
            Err(KeySetError::Malformed(_))
        ));
    }
}
