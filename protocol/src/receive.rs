//! Accepting messages from one trusted sender: every check a receiver runs, in one place.
//!
//! ATMs and phones receive only from the hub, with a short list of trusted hub keys (several
//! during a key rotation). [`Receiver::accept`] runs, in order: the size limit (before any
//! decoding); the qrcash JWS with a `kid` naming one of the trusted keys; strict Ed25519
//! verification; the claims with unknown fields refused; `aud` is this receiver and `iss` the
//! sender; times within the replay rules; `seq` not seen before in the sender's window. It
//! returns the claims and the window to persist; on any error nothing is to change.

use serde::de::DeserializeOwned;

use crate::envelope::{Claims, Sealed};
use crate::error::{EnvelopeError, ReplayError};
use crate::keys::PublicKey;
use crate::replay::{self, ReplayConfig, SenderWindow};

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

    /// Runs every check on `bytes` at `now` against the sender's `window`; returns the claims
    /// and the window to persist with whatever the message causes.
    pub fn accept<B: DeserializeOwned>(
        &self,
        bytes: &[u8],
        window: SenderWindow,
        now: u64,
    ) -> Result<(Claims<B>, SenderWindow), ReceiveError> {
        let sealed = Sealed::parse(bytes, self.max_bytes)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid() == sealed.kid())
            .ok_or_else(|| EnvelopeError::UnknownKey(sealed.kid().to_string()))?;
        let claims: Claims<B> = sealed.open(key)?;
        claims.check_addressing(&self.me, Some(&self.sender))?;
        replay::check_times(&self.replay, claims.iat, claims.exp, now)?;
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
}
