//! The hub's key directory: where [`qrcash_protocol::receive::open`] finds the key a sender
//! signed with. An ATM signs with its enrolled key, or, in an `Enrol` only, with the key that
//! message carries (a new board, or a re-keyed one). A phone signs with its enrolled key, or,
//! in a `Login` only, with the key that login carries (a first login, or a re-keying one):
//! proof of possession of the key it enrols, never the key it replaces.

use qrcash_protocol::messages::{AtmUp, PhoneUp};
use qrcash_protocol::receive::KeyDirectory;
use qrcash_protocol::{Claims, EnvelopeError, PublicKey, Sealed};

use super::HandleError;
use crate::store::Db;
use crate::store::rows::{self, AtmRow, DeviceRow};

/// Who sent an ATM message.
#[derive(Debug, Clone)]
pub(super) enum AtmSender {
    /// The enrolled ATM, signing with its enrolled key.
    Enrolled(AtmRow),
    /// A board enrolling the key its `Enrol` carries; the ATM as enrolled before, if it was.
    Enrolling(Option<AtmRow>),
}

/// The enrolled ATMs (their key, and during the overlap after a rotation the previous one),
/// and the key of an enrolment; the second field is now, which ends overlaps.
pub(super) struct AtmKeys<'a>(pub Db<'a>, pub u64);

impl KeyDirectory for AtmKeys<'_> {
    type Entry = AtmSender;
    type Error = HandleError;

    fn key(&self, id: &str, sealed: &Sealed<'_>) -> Result<(PublicKey, AtmSender), HandleError> {
        let kid = sealed.kid().as_str();
        let atm = rows::atm(self.0, id).map_err(|e| HandleError::Internal(e.to_string()))?;
        if let Some(a) = atm.as_ref().filter(|a| a.kid == kid) {
            let key = PublicKey::from_jwk_json(&a.public_jwk)
                .map_err(|e| HandleError::Internal(format!("enrolled key of ATM {id}: {e}")))?;
            return Ok((key, AtmSender::Enrolled(a.clone())));
        }
        // Messages the board queued before it rotated its key, during the overlap: numbered
        // up to the rotation and dated no later, so the old key can sign nothing new. (The
        // claims are peeked at for that; `open` verifies the signature before anything else.)
        if let Some(a) = atm.as_ref()
            && let Some(p) = a
                .previous
                .as_ref()
                .filter(|p| p.kid == kid && self.1 < p.until)
            && sealed
                .peek::<serde_json::Value>()
                .is_ok_and(|c| c.seq <= p.up_to_seq && c.iat <= p.dated_by)
        {
            let key = PublicKey::from_jwk_json(&p.public_jwk)
                .map_err(|e| HandleError::Internal(format!("previous key of ATM {id}: {e}")))?;
            return Ok((key, AtmSender::Enrolled(a.clone())));
        }
        // Not the enrolled key: only an enrolment carrying its own key may introduce one.
        // The claims are peeked at only to find that key; `open` then verifies the signature
        // with it before anything is acted on.
        let Ok(AtmUp::Enrol(enrol)) = sealed.peek::<AtmUp>().map(|c| c.msg) else {
            return Err(match atm {
                Some(_) => EnvelopeError::UnknownKey(kid.to_owned()).into(),
                None => HandleError::UnknownSender(id.to_owned()),
            });
        };
        let key = PublicKey::from_jwk(&enrol.public_key)
            .map_err(|_| EnvelopeError::UnknownKey(kid.to_owned()))?;
        if key.kid().as_str() != kid {
            return Err(EnvelopeError::UnknownKey(kid.to_owned()).into());
        }
        Ok((key, AtmSender::Enrolling(atm)))
    }
}

/// An enrolment that carries another key than the one that signed it is refused: it must be
/// signed by the key it enrols (possession).
pub(super) fn enrol_signed_by_its_key(
    kid: &str,
    claims: &Claims<AtmUp>,
) -> Result<(), HandleError> {
    if let AtmUp::Enrol(e) = &claims.msg
        && PublicKey::from_jwk(&e.public_key).map_or(true, |k| k.kid().as_str() != kid)
    {
        return Err(EnvelopeError::UnknownKey(format!(
            "{kid}: an enrolment carrying another key must be signed by that key"
        ))
        .into());
    }
    Ok(())
}

/// The enrolled phones, and the key of a login. The entry is the device as enrolled before
/// this message (`None`: not enrolled yet).
pub(crate) struct PhoneKeys<'a>(pub Db<'a>);

impl KeyDirectory for PhoneKeys<'_> {
    type Entry = Option<DeviceRow>;
    type Error = HandleError;

    fn key(
        &self,
        id: &str,
        sealed: &Sealed<'_>,
    ) -> Result<(PublicKey, Option<DeviceRow>), HandleError> {
        let kid = sealed.kid().as_str();
        let device = rows::device(self.0, id).map_err(|e| HandleError::Internal(e.to_string()))?;
        if let Some(d) = device.as_ref().filter(|d| d.kid == kid) {
            let key = PublicKey::from_jwk_json(&d.public_jwk)
                .map_err(|e| HandleError::Internal(format!("enrolled key of device {id}: {e}")))?;
            return Ok((key, device));
        }
        // Not the enrolled key: only a login carrying its own key may introduce one. The
        // claims are peeked at only to find that key; `open` then verifies the signature
        // with it before anything is acted on.
        let PhoneUp::Login(login) = sealed.peek::<PhoneUp>()?.msg else {
            return Err(match device {
                Some(_) => EnvelopeError::UnknownKey(kid.to_owned()).into(),
                None => HandleError::UnknownSender(id.to_owned()),
            });
        };
        let key = PublicKey::from_jwk(&login.device.public_key)
            .map_err(|_| EnvelopeError::UnknownKey(kid.to_owned()))?;
        if key.kid().as_str() != kid {
            return Err(EnvelopeError::UnknownKey(kid.to_owned()).into());
        }
        Ok((key, device))
    }
}

/// A login that enrols another key than the one that signed it is refused: it must be signed
/// by the key it carries (proof of possession), not by the key it replaces. Checked on the
/// verified claims, so the common case (the enrolled key, no login) decodes them only once.
pub(super) fn login_signed_by_its_key(
    id: &str,
    kid: &str,
    claims: &Claims<PhoneUp>,
) -> Result<(), HandleError> {
    if let PhoneUp::Login(l) = &claims.msg
        && l.device.device_id == id
        && PublicKey::from_jwk(&l.device.public_key).map_or(true, |k| k.kid().as_str() != kid)
    {
        return Err(EnvelopeError::UnknownKey(format!(
            "{kid}: a login carrying another key must be signed by that key"
        ))
        .into());
    }
    Ok(())
}
