//! Building the phone's requests. Pure: no I/O, no clock (time comes in as an argument).
//!
//! The one that matters most is [`confirmation`]: it copies the transaction id, ATM id,
//! amount and challenge *from the hub's `ConfirmRequest` as shown to the customer*, so the
//! device signature covers exactly what the customer approved (PSD2 dynamic linking). A phone
//! app must never let the user edit those fields.

use std::time::Duration;

use qrcash_protocol::envelope::{Claims, new_jti};
use qrcash_protocol::messages::{
    BiometricAttestation, BiometricMethod, ConfirmRequest, ConfirmWithdrawal, DeviceInfo,
    IdentityEvidence, Login, PhoneUp, Secret,
};
use qrcash_protocol::{
    Position, PrivateKey, PublicKey, SealError, SecretField, SecretSealer, Signer,
};

/// How long a phone request stays valid. Phones are online when they ask; a request that
/// arrives later than this is refused by the hub rather than acted on late.
pub const REQUEST_TTL: Duration = Duration::from_secs(60);

/// Seals this device's secrets (password, PIN) to the hub key `hub`, for messages from
/// `device_id` signed with `key` (`qrcash_protocol::sealed`).
pub fn sealer(hub: &PublicKey, device_id: &str, key: &PrivateKey) -> SecretSealer {
    SecretSealer::new(hub.clone(), device_id, key.kid().clone())
}

/// A `Login` for `account`, introducing this device and its public key (the hub enrols the
/// key on success; the message must be signed with it, which proves possession). The
/// password travels sealed to the hub.
pub fn login(
    account: &str,
    password: &str,
    device_name: &str,
    key: &PrivateKey,
    position: Option<Position>,
    sealer: &SecretSealer,
) -> Result<PhoneUp, SealError> {
    Ok(PhoneUp::Login(Login {
        account: account.to_owned(),
        password: sealer.seal(SecretField::Password, password)?,
        device: DeviceInfo {
            device_id: sealer.iss().to_owned(),
            name: device_name.to_owned(),
            public_key: key.public().to_jwk(),
        },
        position,
    }))
}

/// What the customer gave to show they are the account holder, before the PIN is sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The account PIN.
    pub pin: Option<Secret>,
    /// The platform's biometric check.
    pub biometric: Option<BiometricAttestation>,
}

/// Identity evidence from an optional PIN and an optional biometric check passed at `now`.
pub fn evidence(pin: Option<&str>, biometric: Option<BiometricMethod>, now: u64) -> Evidence {
    Evidence {
        pin: pin.map(Secret::new),
        biometric: biometric.map(|method| BiometricAttestation {
            method,
            verified_at: now,
        }),
    }
}

/// What the request asks for that the answer does not carry, as text for the user; empty
/// when the answer satisfies the request. The hub decides; this only spares a round trip.
pub fn missing_auth(
    request: &ConfirmRequest,
    identity: &Evidence,
    position: Option<&Position>,
) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let auth = request.auth;
    if auth.pin && identity.pin.is_none() {
        missing.push("the account PIN");
    }
    if !auth.pin && auth.biometric && identity.pin.is_none() && identity.biometric.is_none() {
        missing.push("a biometric check or the PIN");
    }
    if auth.location && position.is_none() {
        missing.push("the phone's position");
    }
    missing
}

/// The confirmation of `request`, signed later by the device key: every identifying field
/// is copied from the request, never typed in; the PIN travels sealed to the hub.
pub fn confirmation(
    request: &ConfirmRequest,
    evidence: Evidence,
    position: Option<Position>,
    sealer: &SecretSealer,
) -> Result<PhoneUp, SealError> {
    let pin = match &evidence.pin {
        Some(pin) => Some(sealer.seal(SecretField::Pin, pin.expose())?),
        None => None,
    };
    Ok(PhoneUp::ConfirmWithdrawal(ConfirmWithdrawal {
        tx_id: request.tx_id,
        atm_id: request.atm.atm_id.clone(),
        amount: request.amount,
        challenge: request.challenge.clone(),
        position,
        identity: IdentityEvidence {
            pin,
            biometric: evidence.biometric,
        },
    }))
}

/// A fresh idempotency key for transfers, payments, payouts and top-ups.
pub fn idempotency_key() -> String {
    new_jti()
}

/// Claims from this device to the hub with `seq`, issued at `now`.
pub fn claims(signer: &Signer, hub_id: &str, seq: u64, now: u64, msg: PhoneUp) -> Claims<PhoneUp> {
    Claims::new(signer.id(), hub_id, seq, now, REQUEST_TTL, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::envelope::{self, Sealed};
    use qrcash_protocol::messages::{AtmInfo, AuthRequired};
    use qrcash_protocol::{Amount, Currency, MAX_UPLINK_BYTES, TxId};

    const NOW: u64 = 1_800_000_000;

    fn request() -> ConfirmRequest {
        ConfirmRequest {
            tx_id: TxId([7; 16]),
            amount: Amount::new(30_000, Currency::JPY),
            atm: AtmInfo {
                atm_id: "atm-shibuya-1".into(),
                name: "Shibuya 1".into(),
                address: "Tokyo".into(),
                position: Position::new(35.66, 139.70, 0.0),
            },
            presented_at: NOW,
            confirm_by: NOW + 60,
            challenge: "c-123".into(),
            warnings: vec![],
            auth: AuthRequired {
                pin: true,
                biometric: false,
                location: true,
            },
        }
    }

    /// The hub key and a device key, with the sealer for that device.
    fn keys() -> (PrivateKey, PrivateKey, SecretSealer) {
        let hub = PrivateKey::generate();
        let device = PrivateKey::generate();
        let s = sealer(hub.public(), "dev-1", &device);
        (hub, device, s)
    }

    #[test]
    fn confirmation_copies_the_exact_transaction_details_and_seals_the_pin() {
        let (hub, device, s) = keys();
        let req = request();
        let pos = Position::new(35.66, 139.70, 15.0);
        let PhoneUp::ConfirmWithdrawal(c) =
            confirmation(&req, evidence(Some("1234"), None, NOW), Some(pos), &s).unwrap()
        else {
            panic!("not a confirmation");
        };
        assert_eq!(c.tx_id, req.tx_id);
        assert_eq!(c.atm_id, "atm-shibuya-1");
        assert_eq!(c.amount, req.amount);
        assert_eq!(c.challenge, "c-123");
        assert_eq!(c.position, Some(pos));
        let pin = c.identity.pin.expect("a sealed PIN");
        assert!(!serde_json::to_string(&pin).unwrap().contains("1234"));
        let opened = pin
            .open(&hub, SecretField::Pin, "dev-1", device.kid().as_str())
            .unwrap();
        assert_eq!(opened.expose(), "1234");
    }

    #[test]
    fn signed_confirmation_verifies_with_the_device_key_and_tampering_breaks_it() {
        let (_, key, s) = keys();
        let device = Signer::new("dev-1", key);
        let msg = confirmation(&request(), evidence(Some("1234"), None, NOW), None, &s).unwrap();
        let text = device.seal(&claims(&device, "hub", 3, NOW, msg.clone()));
        let key = device.key().public().clone();
        let opened = envelope::open::<PhoneUp>(text.as_bytes(), MAX_UPLINK_BYTES, |k| {
            (k == key.kid()).then(|| key.clone())
        })
        .unwrap();
        assert_eq!(opened.claims.msg, msg);
        assert_eq!(opened.claims.iss, "dev-1");
        assert_eq!(opened.claims.aud, "hub");
        assert_eq!(opened.claims.seq, 3);
        assert_eq!(opened.claims.exp, NOW + REQUEST_TTL.as_secs());
        // Change the amount inside the signed payload: the signature no longer holds.
        let parts: Vec<&str> = text.split('.').collect();
        let payload = String::from_utf8(qrcash_protocol::jws::unb64(parts[1]).unwrap())
            .unwrap()
            .replace("30000", "90000");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            qrcash_protocol::jws::b64(payload.as_bytes()),
            parts[2]
        );
        let sealed = Sealed::parse(tampered.as_bytes(), MAX_UPLINK_BYTES).unwrap();
        assert!(sealed.open::<PhoneUp>(&key).is_err());
    }

    #[test]
    fn login_carries_the_signing_key_and_seals_the_password() {
        let (hub, key, s) = keys();
        let msg = login("hanako", "s3cret-pw", "Hanako's phone", &key, None, &s).unwrap();
        let PhoneUp::Login(l) = &msg else {
            panic!("not a login")
        };
        assert_eq!(l.device.device_id, "dev-1");
        assert_eq!(l.device.public_key.kid.as_deref(), Some(key.kid().as_str()));
        assert!(!format!("{msg:?}").contains("s3cret-pw"));
        assert!(!serde_json::to_string(&msg).unwrap().contains("s3cret-pw"));
        let opened = l
            .password
            .open(&hub, SecretField::Password, "dev-1", key.kid().as_str())
            .unwrap();
        assert_eq!(opened.expose(), "s3cret-pw");
    }

    #[test]
    fn missing_auth_names_what_the_hub_will_ask_for() {
        let req = request();
        assert_eq!(
            missing_auth(&req, &evidence(None, None, NOW), None),
            vec!["the account PIN", "the phone's position"]
        );
        let pos = Position::new(35.0, 139.0, 5.0);
        assert!(missing_auth(&req, &evidence(Some("1"), None, NOW), Some(&pos)).is_empty());
        let mut bio = request();
        bio.auth = AuthRequired {
            pin: false,
            biometric: true,
            location: false,
        };
        assert!(
            missing_auth(
                &bio,
                &evidence(None, Some(BiometricMethod::Face), NOW),
                None
            )
            .is_empty()
        );
        assert_eq!(
            missing_auth(&bio, &evidence(None, None, NOW), None).len(),
            1
        );
    }
}
