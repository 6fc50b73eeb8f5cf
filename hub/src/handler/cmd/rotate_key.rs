//! `RotateKey`: an enrolled ATM hands over from its key to a new one. Signed by the enrolled
//! key (so only the board that holds it can), carrying the new key and that key's signature
//! of the rotation statement (possession). The old key stays accepted for the ATM messages'
//! maximum age, so what the board queued under it is still delivered; a second rotation
//! drops the key before.

use qrcash_protocol::enrol;
use qrcash_protocol::messages::RotateKey;
use qrcash_protocol::{PublicKey, RejectReason};

use crate::handler::{Ctx, Fail, refuse};
use crate::store::registry;
use crate::store::rows::AtmRow;

pub(in crate::handler) fn rotate_key(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    r: &RotateKey,
) -> Result<Vec<crate::handler::Outgoing>, Fail> {
    if ctx.sender_kid != atm.kid {
        return Err(refuse(
            RejectReason::BadSignature,
            "a key rotation must be signed by the ATM's current key, not a previous one",
        ));
    }
    let new = PublicKey::from_jwk(&r.public_key)
        .map_err(|e| refuse(RejectReason::Malformed, format!("public_key: {e}")))?;
    if new.kid().as_str() == atm.kid {
        return Err(refuse(
            RejectReason::Malformed,
            "the new key is the current key",
        ));
    }
    if !enrol::verify_rotation(&new, &atm.id, &atm.kid, &r.proof) {
        return Err(refuse(
            RejectReason::BadSignature,
            "the proof is not the new key's signature of the rotation statement",
        ));
    }
    let jwk = serde_json::to_string(&new.to_jwk())
        .map_err(|e| refuse(RejectReason::Internal, e.to_string()))?;
    let until = ctx
        .now
        .saturating_add(ctx.cfg.replay.atm().max_age.as_secs());
    registry::rotate_atm_key(
        ctx.db,
        &atm.id,
        (&jwk, new.kid().as_str()),
        (ctx.seq, ctx.iat),
        until,
    )?;
    ctx.note(format!(
        "key {} rotated to {}; the old one accepted until {until}",
        atm.kid,
        new.kid()
    ));
    Ok(Vec::new())
}
