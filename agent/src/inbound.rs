//! Verifying messages from the hub before anything acts on them. Pure logic.
//!
//! In this order: the topic is this ATM's down-link; size limit ([`MAX_DOWNLINK_BYTES`],
//! before decoding); qrcash JWS signed by a trusted hub key found by `kid` (strict
//! Ed25519); claims parse as [`AtmDown`] with unknown fields refused; `aud` is this ATM and
//! `iss` the hub; times within the replay rules; `seq` not seen before. The caller persists
//! the returned window.

use qrcash_protocol::envelope::Claims;
use qrcash_protocol::messages::AtmDown;
use qrcash_protocol::receive::Receiver;
use qrcash_protocol::replay::{ReplayConfig, SenderWindow};
use qrcash_protocol::{MAX_DOWNLINK_BYTES, PublicKey, topics};

use crate::error::InboundError;

/// Checks hub messages for one ATM.
#[derive(Debug, Clone)]
pub struct InboundVerifier {
    down_topic: String,
    receiver: Receiver,
}

impl InboundVerifier {
    /// A verifier for messages from `hub_id` (signed by one of `hub_keys`) to `atm_id`.
    pub fn new(atm_id: &str, hub_id: &str, hub_keys: Vec<PublicKey>, replay: ReplayConfig) -> Self {
        InboundVerifier {
            down_topic: topics::atm_down(atm_id),
            receiver: Receiver::new(atm_id, hub_id, hub_keys, MAX_DOWNLINK_BYTES, replay),
        }
    }

    /// Trusts `keys` from now on (the hub's key set changed them).
    pub fn set_keys(&mut self, keys: Vec<PublicKey>) {
        self.receiver.set_keys(keys);
    }

    /// The trusted hub keys.
    pub fn keys(&self) -> &[PublicKey] {
        self.receiver.keys()
    }

    /// Verifies `bytes` received on `topic` at `now` against the hub's `window`; returns the
    /// claims and the window to persist.
    pub fn verify(
        &self,
        topic: &str,
        bytes: &[u8],
        window: SenderWindow,
        now: u64,
    ) -> Result<(Claims<AtmDown>, SenderWindow), InboundError> {
        if topic != self.down_topic {
            return Err(InboundError::WrongTopic(topic.to_owned()));
        }
        Ok(self.receiver.accept(bytes, window, now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::EnvelopeError;
    use qrcash_protocol::messages::{Ack, AtmUp, Heartbeat};
    use qrcash_protocol::{PrivateKey, ReplayError, Signer};
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    fn ack() -> AtmDown {
        AtmDown::Ack(Ack {
            ids: vec!["x".into()],
        })
    }

    fn seal(s: &Signer, aud: &str, seq: u64, iat: u64) -> Vec<u8> {
        s.seal(&Claims::new(
            s.id(),
            aud,
            seq,
            iat,
            Duration::from_secs(60),
            ack(),
        ))
        .into_bytes()
    }

    #[test]
    fn genuine_accepted_once_everything_else_refused() {
        let hub = Signer::new("hub", PrivateKey::generate());
        let v = InboundVerifier::new(
            "atm-1",
            "hub",
            vec![
                PrivateKey::generate().public().clone(),
                hub.key().public().clone(),
            ],
            ReplayConfig::default(),
        );
        let down = topics::atm_down("atm-1");
        let w = SenderWindow::default();
        let good = seal(&hub, "atm-1", 1, NOW);
        let (c, w2) = v.verify(&down, &good, w, NOW).unwrap();
        assert_eq!(c.msg, ack());
        assert!(matches!(
            v.verify(&down, &good, w2, NOW),
            Err(InboundError::Replay(ReplayError::Replayed { .. }))
        ));
        assert!(matches!(
            v.verify(&topics::atm_down("atm-2"), &good, w, NOW),
            Err(InboundError::WrongTopic(_))
        ));
        let forged = seal(&Signer::new("hub", PrivateKey::generate()), "atm-1", 1, NOW);
        assert!(matches!(
            v.verify(&down, &forged, w, NOW),
            Err(InboundError::Envelope(EnvelopeError::UnknownKey(_)))
        ));
        let other_atm = seal(&hub, "atm-2", 1, NOW);
        assert!(matches!(
            v.verify(&down, &other_atm, w, NOW),
            Err(InboundError::Envelope(EnvelopeError::WrongAudience { .. }))
        ));
        let old = seal(&hub, "atm-1", 1, NOW - 7200);
        assert!(matches!(
            v.verify(&down, &old, w, NOW),
            Err(InboundError::Replay(ReplayError::Expired { .. }))
        ));
        assert!(matches!(
            v.verify(&down, b"not json", w, NOW),
            Err(InboundError::Envelope(_))
        ));
        let big = vec![b'x'; MAX_DOWNLINK_BYTES + 1];
        assert!(matches!(
            v.verify(&down, &big, w, NOW),
            Err(InboundError::Envelope(EnvelopeError::TooLarge { .. }))
        ));
        // An up-link message type signed by the hub does not parse as AtmDown.
        let up = hub.seal(&Claims::new(
            "hub",
            "atm-1",
            2,
            NOW,
            Duration::from_secs(60),
            AtmUp::Heartbeat(Heartbeat {
                state: qrcash_protocol::messages::AtmState::Idle,
                cassettes: vec![],
                outbox: 0,
                software: "x".into(),
            }),
        ));
        assert!(matches!(
            v.verify(&down, up.as_bytes(), w, NOW),
            Err(InboundError::Envelope(EnvelopeError::Claims(_)))
        ));
    }
}
