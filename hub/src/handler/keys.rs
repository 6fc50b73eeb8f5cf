//! The hub's key directory: where [`qrcash_protocol::receive::open`] finds the key a sender
//! signed with. An ATM signs with its enrolled key. A phone signs with its enrolled key, or,
//! in a `Login` only, with the key that login carries (a first login, or a re-keying one):
//! proof of possession of the key it enrols, never the key it replaces.

use qrcash_protocol::messages::PhoneUp;
use qrcash_protocol::receive::KeyDirectory;
use qrcash_protocol::{Claims, EnvelopeError, PublicKey, Sealed};

use super::HandleError;
use crate::store::Db;
use crate::store::rows::{self, AtmRow, DeviceRow};

/// The enrolled ATMs.
pub(super) struct AtmKeys<'a>(pub Db<'a>);

impl KeyDirectory for AtmKeys<'_> {
    type Entry = AtmRow;
    type Error = HandleError;

    fn key(&self, id: &str, sealed: &Sealed<'_>) -> Result<(PublicKey, AtmRow), HandleError> {
        let atm = rows::atm(self.0, id)
            .map_err(|e| HandleError::Internal(e.to_string()))?
            .ok_or_else(|| HandleError::UnknownSender(id.to_owned()))?;
        if atm.kid != sealed.kid().as_str() {
            return Err(EnvelopeError::UnknownKey(sealed.kid().to_string()).into());
        }
        let key = PublicKey::from_jwk_json(&atm.public_jwk)
            .map_err(|e| HandleError::Internal(format!("enrolled key of ATM {id}: {e}")))?;
        Ok((key, atm))
    }
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
