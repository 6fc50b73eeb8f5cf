//! Verifying pushes from the hub: the only way a [`PhonePush`] reaches the app. Pure logic.
//!
//! A push is accepted only if, in this order: it fits [`MAX_DOWNLINK_BYTES`], it is a qrcash
//! JWS signed with the hub key the phone was provisioned with (by `kid`, then strict
//! Ed25519), its claims parse, it is addressed to this device and issued by the hub id, its
//! times are within the replay rules and its `seq` was not seen before. The caller persists
//! the returned window (see [`crate::store`]) so a replay is refused across restarts too.

use qrcash_protocol::envelope::Claims;
use qrcash_protocol::messages::PhonePush;
use qrcash_protocol::receive::Receiver;
use qrcash_protocol::replay::{ReplayConfig, SenderWindow};
use qrcash_protocol::{MAX_DOWNLINK_BYTES, PublicKey};

use crate::error::PushError;

/// Checks pushes for one device against the hub keys it trusts for messages.
#[derive(Debug, Clone)]
pub struct PushVerifier {
    receiver: Receiver,
}

impl PushVerifier {
    /// A verifier for pushes from `hub_id` (signed with `hub_key`) to `device_id`.
    pub fn new(hub_id: &str, device_id: &str, hub_key: PublicKey, replay: ReplayConfig) -> Self {
        PushVerifier {
            receiver: Receiver::new(device_id, hub_id, vec![hub_key], MAX_DOWNLINK_BYTES, replay),
        }
    }

    /// The keys pushes may be signed by.
    pub fn keys(&self) -> &[PublicKey] {
        self.receiver.keys()
    }

    /// Trusts `keys` from now on (the hub's key set changed them).
    pub fn set_keys(&mut self, keys: Vec<PublicKey>) {
        self.receiver.set_keys(keys);
    }

    /// Verifies `bytes` at time `now` against the hub's replay `window`; returns the claims
    /// and the window to persist. On error nothing is to be changed.
    pub fn verify(
        &self,
        bytes: &[u8],
        window: SenderWindow,
        now: u64,
    ) -> Result<(Claims<PhonePush>, SenderWindow), PushError> {
        Ok(self.receiver.accept(bytes, window, now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::EnvelopeError;
    use qrcash_protocol::messages::{Ack, AtmDown, RejectReason, Rejected};
    use qrcash_protocol::{PrivateKey, ReplayError, Signer};
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    fn push() -> PhonePush {
        PhonePush::Rejected(Rejected {
            reason: RejectReason::Internal,
            message: "x".into(),
        })
    }

    fn setup() -> (Signer, PushVerifier) {
        let hub = Signer::new("hub", PrivateKey::generate());
        let v = PushVerifier::new(
            "hub",
            "dev-1",
            hub.key().public().clone(),
            ReplayConfig::default(),
        );
        (hub, v)
    }

    fn sealed(hub: &Signer, aud: &str, seq: u64, iat: u64) -> String {
        hub.seal(&Claims::new(
            hub.id(),
            aud,
            seq,
            iat,
            Duration::from_secs(60),
            push(),
        ))
    }

    #[test]
    fn accepts_a_genuine_push_once() {
        let (hub, v) = setup();
        let text = sealed(&hub, "dev-1", 1, NOW);
        let (claims, w) = v
            .verify(text.as_bytes(), SenderWindow::default(), NOW)
            .unwrap();
        assert_eq!(claims.seq, 1);
        assert!(matches!(
            v.verify(text.as_bytes(), w, NOW),
            Err(PushError::Replay(ReplayError::Replayed { seq: 1 }))
        ));
    }

    #[test]
    fn refuses_forged_misaddressed_expired_and_foreign_pushes() {
        let (hub, v) = setup();
        let w = SenderWindow::default();
        // Signed by another key.
        let mallory = Signer::new("hub", PrivateKey::generate());
        let forged = sealed(&mallory, "dev-1", 1, NOW);
        assert!(matches!(
            v.verify(forged.as_bytes(), w, NOW),
            Err(PushError::Envelope(EnvelopeError::UnknownKey(_)))
        ));
        // For another device.
        let other = sealed(&hub, "dev-2", 1, NOW);
        assert!(matches!(
            v.verify(other.as_bytes(), w, NOW),
            Err(PushError::Envelope(EnvelopeError::WrongAudience { .. }))
        ));
        // Issued under another sender id with the hub key.
        let wrong_iss = Signer::new("atm-1", hub.key().clone());
        let text = sealed(&wrong_iss, "dev-1", 1, NOW);
        assert!(matches!(
            v.verify(text.as_bytes(), w, NOW),
            Err(PushError::Envelope(EnvelopeError::WrongIssuer { .. }))
        ));
        // Expired.
        let old = sealed(&hub, "dev-1", 1, NOW - 3600);
        assert!(matches!(
            v.verify(old.as_bytes(), w, NOW),
            Err(PushError::Replay(ReplayError::Expired { .. }))
        ));
        // Oversized and garbage.
        let big = vec![b'a'; MAX_DOWNLINK_BYTES + 1];
        assert!(matches!(
            v.verify(&big, w, NOW),
            Err(PushError::Envelope(EnvelopeError::TooLarge { .. }))
        ));
        assert!(v.verify(b"{\"type\":\"Balance\"}", w, NOW).is_err());
        // A message of another direction, correctly signed: claims do not parse.
        let atm_msg = hub.seal(&Claims::new(
            "hub",
            "dev-1",
            1,
            NOW,
            Duration::from_secs(60),
            AtmDown::Ack(Ack { ids: vec![] }),
        ));
        assert!(matches!(
            v.verify(atm_msg.as_bytes(), w, NOW),
            Err(PushError::Envelope(EnvelopeError::Claims(_)))
        ));
    }
}
