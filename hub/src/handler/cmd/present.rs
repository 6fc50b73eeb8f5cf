//! `CodePresented`: an ATM scanned a code. The race for a code is won by a conditional
//! update; the phone gets the details, the fraud warnings and the confirmation request.
//!
//! Load (the code's withdrawal, what the fraud warnings look at) → decide (the transition,
//! the notes this ATM can pay, the warnings, the request) → apply (the conditional claim,
//! the only write, then the answers).

use std::collections::BTreeMap;

use qrcash_protocol::messages::{
    AtmDown, AtmInfo, AuthRequired, AwaitConfirmation, CassetteState, CodePresented,
    ConfirmRequest, PhonePush,
};
use qrcash_protocol::{CodeToken, RejectReason, TokenError};

use crate::config::IdentityRule;
use crate::handler::{Ctx, Fail, Outgoing, refuse};
use crate::store::rows::{self, AtmRow, WithdrawalRow};
use crate::warnings::{Situation, in_hour_window, local_hour};
use crate::withdrawal::{Event, TransitionError, transition};

fn token_refusal(e: TokenError) -> Fail {
    match e {
        TokenError::Expired { .. } => refuse(RejectReason::CodeExpired, e.to_string()),
        _ => refuse(RejectReason::CodeInvalid, e.to_string()),
    }
}

/// The notes an ATM can pay from: its enrolled denominations with the counts of its last
/// heartbeat (unknown counts before the first one).
fn cassettes(atm: &AtmRow) -> BTreeMap<u64, Option<u32>> {
    atm.denominations
        .iter()
        .map(|d| {
            // Unknown until a heartbeat lists a cassette of this denomination.
            let count = atm.cassettes.as_ref().and_then(|cs| {
                let listed: Vec<_> = cs.iter().filter(|c| c.denomination == *d).collect();
                (!listed.is_empty()).then(|| {
                    listed
                        .iter()
                        .filter(|c| matches!(c.state, CassetteState::Ok | CassetteState::Low))
                        .map(|c| c.notes)
                        // Counts come from the wire: never overflow on them.
                        .fold(0u32, u32::saturating_add)
                })
            });
            (*d, count)
        })
        .collect()
}

pub(in crate::handler) fn presented(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    c: &CodePresented,
) -> Result<Vec<Outgoing>, Fail> {
    // The hub's own codes: signed by the current key, or by a previous one before a rotation.
    let keys = ctx.keys.public_keys();
    let token = CodeToken::verify_signature(&c.token, &keys).map_err(token_refusal)?;
    token.check_expiry(ctx.now).map_err(token_refusal)?;
    let w = rows::withdrawal(ctx.db, &token.tx_id)?
        .filter(|w| w.code_expires_at == token.expires_at)
        .ok_or_else(|| refuse(RejectReason::CodeInvalid, "no withdrawal for this code"))?;
    // Only the key that signed this withdrawal's code: a previous key kept after a rotation
    // cannot vouch for a withdrawal registered since.
    if let Some(kid) = rows::code_issuer(ctx.db, &token.tx_id)?
        && !token.issued_by(&qrcash_protocol::KeyId::from_wire(&kid))
    {
        return Err(refuse(
            RejectReason::CodeInvalid,
            "the code was not signed by the key that issued it",
        ));
    }
    let situation = situation(ctx, atm, &w)?;
    let confirm_by = ctx.now + ctx.cfg.withdrawal.confirm_timeout_s;
    transition(
        &w.lifecycle(),
        Event::Present {
            now: ctx.now,
            confirm_by,
        },
    )
    .map_err(|e| match e {
        TransitionError::CodeExpired => refuse(RejectReason::CodeExpired, e.to_string()),
        TransitionError::CodeAlreadyUsed => refuse(
            RejectReason::CodeAlreadyUsed,
            "this code was already presented",
        ),
        _ => refuse(RejectReason::CodeInvalid, e.to_string()),
    })?;
    let notes = crate::notes::breakdown(w.amount.minor, &cassettes(atm)).ok_or_else(|| {
        refuse(
            RejectReason::InvalidAmount,
            format!("this ATM cannot pay {} now; try another ATM", w.amount),
        )
    })?;
    let challenge = ctx.random_token();
    let warnings = ctx.warnings.select(&situation);
    let auth = &ctx.cfg.auth;
    let (pin, biometric) = match auth.identity {
        IdentityRule::Pin => (true, false),
        IdentityRule::Biometric | IdentityRule::PinOrBiometric => (false, true),
        IdentityRule::PinAndBiometric => (true, true),
    };
    let request = ConfirmRequest {
        tx_id: w.tx_id,
        amount: w.amount,
        atm: AtmInfo {
            atm_id: atm.id.clone(),
            name: atm.name.clone(),
            address: atm.address.clone(),
            position: atm.position,
        },
        presented_at: ctx.now,
        confirm_by,
        challenge: challenge.clone(),
        warnings,
        auth: AuthRequired {
            pin,
            biometric,
            location: auth.location_required,
        },
    };
    // Exactly one of two ATMs presenting the same code at the same moment changes the row.
    if !rows::claim_presentation(
        ctx.db, &w.tx_id, &atm.id, ctx.now, confirm_by, &challenge, &notes,
    )? {
        return Err(refuse(
            RejectReason::CodeAlreadyUsed,
            "this code was already presented at another ATM",
        ));
    }
    ctx.note(format!("tx {} presented at {}", w.tx_id, atm.id));
    tracing::info!(tx = %w.tx_id, atm = %atm.id, "code presented");
    Ok(vec![
        ctx.send_atm(
            &atm.id,
            AtmDown::AwaitConfirmation(AwaitConfirmation {
                tx_id: w.tx_id,
                amount: w.amount,
                confirm_by,
            }),
        )?,
        ctx.push_phone(&w.device_id, PhonePush::ConfirmRequest(request))?,
    ])
}

/// Which fraud warnings apply to this presentation.
fn situation(ctx: &Ctx<'_>, atm: &AtmRow, w: &WithdrawalRow) -> Result<Situation, Fail> {
    let cfg = &ctx.cfg.warnings;
    let used_before = rows::cash_taken_at(ctx.db, &w.account, &atm.id, &w.tx_id)?;
    let since = ctx.now.saturating_sub(cfg.recent_change_days * 86_400);
    let changed = rows::credential_changes_since(ctx.db, &w.account, since)?;
    let hour = local_hour(ctx.now, ctx.cfg.network.utc_offset_minutes);
    Ok(Situation {
        first_use_of_atm: used_before == 0,
        large_amount: w.amount.minor >= cfg.large_amount,
        late_hours: in_hour_window(hour, cfg.late_start_hour, cfg.late_end_hour),
        account_recently_changed: changed > 0,
    })
}
