//! Accepting messages from one trusted sender: every check a receiver runs, in one place.
//!
//! ATMs and phones receive only from the hub, with a short list of trusted hub keys (several
//! during a key rotation). [`Receiver::accept`] runs, in order: the size limit (before any
//! decoding); the qrcash JWS with a `kid` naming one of the trusted keys; strict Ed25519
//! verification; the claims with unknown fields refused; `aud` is this receiver and `iss` the
//! sender; times within the replay rules; `seq` not seen before in the sender's window. It
//! returns the claims and the window to persist; on any error nothing is to change.
//!
//! The hub receives from many senders and finds their keys in its database. It runs the same
//! checks through the same functions, in steps, because it answers some failures and not
//! others (`docs/protocol.md` §2) and answers a duplicate before the window refuses it:
//! [`open`] (size, JWS, the key from a [`KeyDirectory`], signature, claims), then
//! [`check_claims`] (addressing, times), then [`SenderWindow::check`]. [`Receiver::accept`]
//! is those three in a row over a fixed list of keys.

use serde::de::DeserializeOwned;

use crate::envelope::{Claims, Sealed};
use crate::error::{EnvelopeError, ReplayError};
use crate::keys::{KeyId, PublicKey};
use crate::replay::{self, ReplayConfig, SenderWindow};

/// Where a receiver finds the key a sender signed with. A device trusts a fixed list of hub
/// keys (`[PublicKey]` is a directory); the hub looks its ATMs and phones up in its database.
pub trait KeyDirectory {
    /// What the directory knows of the sender besides the key (the hub: its ATM or device).
    type Entry;
    /// Why no key was found (an unknown sender, a database failure); an envelope error
    /// converts into it.
    type Error: From<EnvelopeError>;

    /// The key `sender` signed `sealed` with. It may [`Sealed::peek`] at the unverified
    /// claims to find it (a first login carries its own key), never act on them: nothing is
    /// authentic until [`open`] verified the signature with the key returned here.
    fn key(
        &self,
        sender: &str,
        sealed: &Sealed<'_>,
    ) -> Result<(PublicKey, Self::Entry), Self::Error>;
}

impl KeyDirectory for [PublicKey] {
    type Entry = ();
    type Error = EnvelopeError;

    fn key(&self, _sender: &str, sealed: &Sealed<'_>) -> Result<(PublicKey, ()), EnvelopeError> {
        self.iter()
            .find(|k| k.kid() == sealed.kid())
            .map(|k| (k.clone(), ()))
            .ok_or_else(|| EnvelopeError::UnknownKey(sealed.kid().to_string()))
    }
}

/// A message whose signature holds with its sender's key, and whose claims decoded.
#[derive(Debug, Clone)]
pub struct Authentic<B, E> {
    /// The verified claims.
    pub claims: Claims<B>,
    /// The key that signed them.
    pub kid: KeyId,
    /// What the directory knows of the sender.
    pub entry: E,
}

/// Why [`open`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError<E> {
    /// Not shown to be the sender's (size, JWS, no key, bad signature, or the directory's
    /// own refusal): nobody to answer.
    #[error(transparent)]
    Refused(E),
    /// Signed by the sender's key, but the claims do not decode: the sender can be told
    /// `malformed` about message `jti`.
    #[error("malformed message {jti}: {message}")]
    Malformed {
        /// The message's `jti`.
        jti: String,
        /// What did not decode (at most 200 characters).
        message: String,
    },
}

/// Checks the size limit, parses the JWS, finds the sender's key in `directory`, verifies
/// the signature strictly and decodes the claims (unknown fields refused).
pub fn open<B, D>(
    directory: &D,
    sender: &str,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Authentic<B, D::Entry>, OpenError<D::Error>>
where
    B: DeserializeOwned,
    D: KeyDirectory + ?Sized,
{
    let sealed = Sealed::parse(bytes, max_bytes).map_err(|e| OpenError::Refused(e.into()))?;
    let (key, entry) = directory.key(sender, &sealed).map_err(OpenError::Refused)?;
    match sealed.open(&key) {
        Ok(claims) => Ok(Authentic {
            claims,
            kid: sealed.kid().clone(),
            entry,
        }),
        Err(EnvelopeError::Claims(message)) => match sealed.authentic_jti(&key) {
            Some(jti) => Err(OpenError::Malformed {
                jti,
                message: message.chars().take(200).collect(),
            }),
            None => Err(OpenError::Refused(EnvelopeError::Claims(message).into())),
        },
        Err(e) => Err(OpenError::Refused(e.into())),
    }
}

/// Checks that an authentic message is addressed to `me` from `sender` and that its times
/// are within the `replay` rules at `now`.
pub fn check_claims<B>(
    claims: &Claims<B>,
    me: &str,
    sender: &str,
    replay: &ReplayConfig,
    now: u64,
) -> Result<(), ReceiveError> {
    claims.check_addressing(me, Some(sender))?;
    replay::check_times(replay, claims.iat, claims.exp, now)?;
    Ok(())
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// Size, JWS, key, signature, claims or addressing.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Replayed, expired, stale or future-dated.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Accepts messages from `sender` to `me`.
#[derive(Debug, Clone)]
pub struct Receiver {
    me: String,
    sender: String,
    keys: Vec<PublicKey>,
    max_bytes: usize,
    replay: ReplayConfig,
}

impl Receiver {
    /// A receiver `me` of messages from `sender`, signed by one of `keys`, of at most
    /// `max_bytes`, under the `replay` rules.
    pub fn new(
        me: &str,
        sender: &str,
        keys: Vec<PublicKey>,
        max_bytes: usize,
        replay: ReplayConfig,
    ) -> Self {
        Receiver {
            me: me.to_owned(),
            sender: sender.to_owned(),
            keys,
            max_bytes,
            replay,
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Trusts `keys` from now on instead (the sender's keys changed: a key set).
    pub fn set_keys(&mut self, keys: Vec<PublicKey>) {
        self.keys = keys;
    }

    /// Runs every check on `bytes` at `now` against the sender's `window`; returns the claims
    /// and the window to persist with whatever the message causes.
    pub fn accept<B: DeserializeOwned>(
        &self,
        bytes: &[u8],
        window: SenderWindow,
        now: u64,
    ) -> Result<(Claims<B>, SenderWindow), ReceiveError> {
        let claims: Claims<B> =
            match open(self.keys.as_slice(), &self.sender, bytes, self.max_bytes) {
                Ok(a) => a.claims,
                Err(OpenError::Refused(e)) => return Err(e.into()),
                Err(OpenError::Malformed { message, .. }) => {
                    return Err(EnvelopeError::Claims(message).into());
                }
            };
        check_claims(&claims, &self.me, &self.sender, &self.replay, now)?;
        window.check(claims.seq, self.replay.seq_window)?;
        let next = window.record(claims.seq);
        Ok((claims, next))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::messages::{Ack, AtmDown};
    use crate::{PrivateKey, Signer};

    const NOW: u64 = 1_800_000_000;

    fn seal(s: &Signer, aud: &str, seq: u64, iat: u64) -> Vec<u8> {
        let msg = AtmDown::Ack(Ack { ids: vec![] });
        s.seal(&Claims::new(
            s.id(),
            aud,
            seq,
            iat,
            Duration::from_secs(60),
            msg,
        ))
        .into_bytes()
    }

    #[test]
    fn accepts_once_from_any_trusted_key_and_refuses_the_rest() {
        let old = Signer::new("hub", PrivateKey::generate());
        let new = Signer::new("hub", PrivateKey::generate());
        let r = Receiver::new(
            "atm-1",
            "hub",
            vec![old.key().public().clone(), new.key().public().clone()],
            crate::MAX_DOWNLINK_BYTES,
            ReplayConfig::default(),
        );
        let w = SenderWindow::default();
        let (_, w) = r
            .accept::<AtmDown>(&seal(&old, "atm-1", 1, NOW), w, NOW)
            .unwrap();
        let (_, w) = r
            .accept::<AtmDown>(&seal(&new, "atm-1", 2, NOW), w, NOW)
            .unwrap();
        assert_eq!(w.highest, 2);
        let err = |bytes: Vec<u8>| r.accept::<AtmDown>(&bytes, w, NOW).unwrap_err();
        assert_eq!(
            err(seal(&new, "atm-1", 2, NOW)),
            ReceiveError::Replay(ReplayError::Replayed { seq: 2 })
        );
        assert!(matches!(
            err(seal(
                &Signer::new("hub", PrivateKey::generate()),
                "atm-1",
                3,
                NOW
            )),
            ReceiveError::Envelope(EnvelopeError::UnknownKey(_))
        ));
        assert!(matches!(
            err(seal(&new, "atm-2", 3, NOW)),
            ReceiveError::Envelope(EnvelopeError::WrongAudience { .. })
        ));
        assert!(matches!(
            err(seal(
                &Signer::new("mallory", new.key().clone()),
                "atm-1",
                3,
                NOW
            )),
            ReceiveError::Envelope(EnvelopeError::WrongIssuer { .. })
        ));
        assert!(matches!(
            err(seal(&new, "atm-1", 3, NOW - 3600)),
            ReceiveError::Replay(ReplayError::Expired { .. })
        ));
        assert!(matches!(
            r.accept::<AtmDown>(&vec![b'x'; crate::MAX_DOWNLINK_BYTES + 1], w, NOW),
            Err(ReceiveError::Envelope(EnvelopeError::TooLarge { .. }))
        ));
    }

    /// A directory of one sender, which also says who it is.
    struct OneAtm(PublicKey);

    impl KeyDirectory for OneAtm {
        type Entry = &'static str;
        type Error = EnvelopeError;

        fn key(
            &self,
            sender: &str,
            sealed: &Sealed<'_>,
        ) -> Result<(PublicKey, &'static str), EnvelopeError> {
            if sender != "atm-1" || sealed.kid() != self.0.kid() {
                return Err(EnvelopeError::UnknownKey(sealed.kid().to_string()));
            }
            Ok((self.0.clone(), "the ATM at the station"))
        }
    }

    #[test]
    fn open_tells_an_authentic_malformed_message_from_a_forged_one() {
        let atm = Signer::new("atm-1", PrivateKey::generate());
        let dir = OneAtm(atm.key().public().clone());
        let good = seal(&atm, "hub", 1, NOW);
        let a = open::<AtmDown, _>(&dir, "atm-1", &good, crate::MAX_UPLINK_BYTES).unwrap();
        assert_eq!(a.entry, "the ATM at the station");
        assert_eq!(&a.kid, atm.key().public().kid());
        check_claims(&a.claims, "hub", "atm-1", &ReplayConfig::default(), NOW).unwrap();
        assert!(matches!(
            check_claims(&a.claims, "hub", "atm-2", &ReplayConfig::default(), NOW),
            Err(ReceiveError::Envelope(EnvelopeError::WrongIssuer { .. }))
        ));

        // Signed by the ATM, but not an `AtmDown`: the ATM can be told which message.
        let mut claims = Claims::new("atm-1", "hub", 2, NOW, Duration::from_secs(60), "hello");
        claims.jti = "j-2".into();
        let odd = atm.seal(&claims).into_bytes();
        match open::<AtmDown, _>(&dir, "atm-1", &odd, crate::MAX_UPLINK_BYTES) {
            Err(OpenError::Malformed { jti, .. }) => assert_eq!(jti, "j-2"),
            other => panic!("expected malformed, got {other:?}"),
        }
        // The same claims signed by anyone else: nobody to answer.
        let forger = Signer::new("atm-1", PrivateKey::generate());
        let forged = forger.seal(&claims).into_bytes();
        assert!(matches!(
            open::<AtmDown, _>(&dir, "atm-1", &forged, crate::MAX_UPLINK_BYTES),
            Err(OpenError::Refused(EnvelopeError::UnknownKey(_)))
        ));
        // The right key id on a signature that does not hold.
        let mut tampered = good.clone();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            open::<AtmDown, _>(&dir, "atm-1", &tampered, crate::MAX_UPLINK_BYTES),
            Err(OpenError::Refused(EnvelopeError::Jws(_)))
        ));
        // Another sender name: the directory's refusal.
        assert!(matches!(
            open::<AtmDown, _>(&dir, "atm-9", &good, crate::MAX_UPLINK_BYTES),
            Err(OpenError::Refused(EnvelopeError::UnknownKey(_)))
        ));
    }
}
