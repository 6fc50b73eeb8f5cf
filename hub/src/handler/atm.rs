//! ATM messages: `CodePresented` (the race for a code is won by a conditional update),
//! `DispenseReport` (journalled always, applied once), `OrderRefused`, `SessionCancelled`
//! and `Heartbeat`. Every accepted message is acknowledged by `jti`.

use std::collections::BTreeMap;

use qrcash_protocol::messages::{
    Ack, AtmDown, AtmInfo, AuthRequired, AwaitConfirmation, CassetteState, CodePresented,
    ConfirmRequest, DispenseOutcome, DispenseReport, Heartbeat, OrderRefused, PhonePush,
    SessionCancelled,
};
use qrcash_protocol::{CodeToken, OrderId, RejectReason, TokenError, TxId};

use super::{Ctx, Fail, Outcome, Outgoing, refuse, steps};
use crate::config::IdentityRule;
use crate::store::rows::{self, AtmRow, WithdrawalRow};
use crate::store::settlement;
use crate::warnings::{Situation, in_hour_window, local_hour};
use crate::withdrawal::{Event, Phase, TransitionError, transition};

/// Routes an ATM message; accepted messages end with an `Ack`.
pub(super) fn dispatch(ctx: &mut Ctx<'_>, atm: &AtmRow, msg: &qrcash_protocol::AtmUp) -> Outcome {
    use qrcash_protocol::AtmUp;
    if !atm.active {
        return Err(refuse(
            RejectReason::UnknownAtm,
            format!("ATM {} is not in service", atm.id),
        ));
    }
    let mut out = match msg {
        AtmUp::CodePresented(c) => presented(ctx, atm, c)?,
        AtmUp::DispenseReport(r) => report(ctx, atm, r)?,
        AtmUp::OrderRefused(r) => refused(ctx, atm, r)?,
        AtmUp::SessionCancelled(s) => cancelled(ctx, atm, s)?,
        AtmUp::Heartbeat(h) => heartbeat(ctx, atm, h)?,
    };
    let jti = ctx.jti.clone();
    out.push(ctx.send_atm(&atm.id, AtmDown::Ack(Ack { ids: vec![jti] }))?);
    Ok(out)
}

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

fn presented(ctx: &mut Ctx<'_>, atm: &AtmRow, c: &CodePresented) -> Result<Vec<Outgoing>, Fail> {
    let keys = [ctx.signer.key().public().clone()];
    let token = CodeToken::verify_signature(&c.token, &keys).map_err(token_refusal)?;
    token.check_expiry(ctx.now).map_err(token_refusal)?;
    let w = rows::withdrawal(ctx.db, &token.tx_id)?
        .filter(|w| w.code_expires_at == token.expires_at)
        .ok_or_else(|| refuse(RejectReason::CodeInvalid, "no withdrawal for this code"))?;
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
    // Exactly one of two ATMs presenting the same code at the same moment changes the row.
    if !rows::claim_presentation(
        ctx.db, &w.tx_id, &atm.id, ctx.now, confirm_by, &challenge, &notes,
    )? {
        return Err(refuse(
            RejectReason::CodeAlreadyUsed,
            "this code was already presented at another ATM",
        ));
    }
    let situation = situation(ctx, atm, &w)?;
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
        challenge,
        warnings,
        auth: AuthRequired {
            pin,
            biometric,
            location: auth.location_required,
        },
    };
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

/// The withdrawal an ATM message is about: it must exist and be bound to this ATM.
fn bound(ctx: &Ctx<'_>, atm: &AtmRow, tx: &TxId) -> Result<WithdrawalRow, Fail> {
    let w = rows::withdrawal(ctx.db, tx)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownTransaction,
            format!("no transaction {tx}"),
        )
    })?;
    if w.atm_id.as_deref() != Some(atm.id.as_str()) {
        return Err(refuse(
            RejectReason::AtmMismatch,
            format!("transaction {tx} is not bound to ATM {}", atm.id),
        ));
    }
    Ok(w)
}

fn same_order(w: &WithdrawalRow, order: &OrderId) -> Result<(), Fail> {
    if w.order_id.as_ref() != Some(order) {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: "order_id".into(),
            },
            format!("order {order} is not the order of transaction {}", w.tx_id),
        ));
    }
    Ok(())
}

fn report(ctx: &mut Ctx<'_>, atm: &AtmRow, r: &DispenseReport) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &r.tx_id)?;
    same_order(&w, &r.order_id)?;
    // A report that contradicts itself (currency, note counts) is in doubt, never guessed.
    let exited: Option<u64> = r.notes.iter().try_fold(0u64, |acc, n| {
        n.denomination
            .checked_mul(u64::from(n.exited))
            .and_then(|v| acc.checked_add(v))
    });
    let consistent = r.dispensed.currency == w.amount.currency
        && (r.notes.is_empty() || exited == Some(r.dispensed.minor));
    let outcome = if consistent {
        r.outcome
    } else {
        DispenseOutcome::InDoubt
    };
    let json = serde_json::to_string(r).unwrap_or_default();
    let step = transition(
        &w.lifecycle(),
        Event::Report {
            outcome,
            dispensed: r.dispensed.minor,
        },
    );
    settlement::record_report(
        ctx.db,
        &settlement::ReceivedReport {
            atm: &atm.id,
            jti: &ctx.jti,
            at: ctx.now,
            report: r,
            json: &json,
            applied: step.is_ok(),
        },
    )?;
    match step {
        Ok(step) => {
            let note = (!consistent).then_some("inconsistent dispense report: treated as in doubt");
            let out = steps::apply(ctx, &w, &step, note)?;
            ctx.note(format!(
                "tx {} {} {} → {}",
                w.tx_id,
                format!("{:?}", r.outcome).to_lowercase(),
                r.dispensed,
                step.next
            ));
            if step.next == Phase::InDoubt {
                tracing::warn!(tx = %w.tx_id, atm = %atm.id, "dispense in doubt: flagged");
            }
            Ok(out)
        }
        Err(_) => {
            // A second report for a settled order: journalled above, applied never. If it
            // tells a different story, an operator must look; if it proves another amount
            // left the machine, the correcting postings are proposed for approval, so the
            // books are never silently left wrong next to a flag.
            let settled_phase =
                matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::Failed);
            let bounds = r.bounds(w.amount).filter(|_| consistent);
            let agrees = bounds.is_some_and(|(low, high)| (low..=high).contains(&w.settled))
                && (r.outcome == DispenseOutcome::InDoubt || settled_phase);
            let mut proposed = None;
            if !agrees {
                let text = format!(
                    "late report ({:?}, {}) for a {} transaction settled at {}",
                    r.outcome, r.dispensed, w.phase, w.settled
                );
                if settled_phase
                    && r.outcome != DispenseOutcome::InDoubt
                    && let Some((exact, _)) = bounds
                {
                    proposed = Some(settlement::propose_correction(
                        ctx.db, &w.tx_id, w.settled, exact, &text, ctx.now,
                    )?);
                }
                rows::flag(ctx.db, &w.tx_id, &text)?;
                tracing::warn!(tx = %w.tx_id, ?proposed, "late dispense report disagrees: flagged");
            }
            ctx.note(format!(
                "tx {} report not applied (transaction is {}){}",
                w.tx_id,
                w.phase,
                match (agrees, proposed) {
                    (true, _) => String::new(),
                    (false, None) => "; flagged".into(),
                    (false, Some(id)) => format!("; flagged, correction {id} proposed"),
                }
            ));
            Ok(Vec::new())
        }
    }
}

fn refused(ctx: &mut Ctx<'_>, atm: &AtmRow, r: &OrderRefused) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &r.tx_id)?;
    same_order(&w, &r.order_id)?;
    match transition(&w.lifecycle(), Event::Refused) {
        Ok(step) => {
            let out = steps::apply(ctx, &w, &step, None)?;
            ctx.note(format!(
                "order {} refused by {}: {}",
                r.order_id, atm.id, r.reason
            ));
            Ok(out)
        }
        Err(_) => {
            if matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::InDoubt) {
                rows::flag(
                    ctx.db,
                    &w.tx_id,
                    "order refused after a dispense was reported",
                )?;
            }
            ctx.note(format!(
                "order {} refused while transaction is {}",
                r.order_id, w.phase
            ));
            Ok(Vec::new())
        }
    }
}

fn cancelled(ctx: &mut Ctx<'_>, atm: &AtmRow, s: &SessionCancelled) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &s.tx_id)?;
    let step = transition(&w.lifecycle(), Event::SessionCancelled).map_err(|_| {
        refuse(
            RejectReason::WrongState {
                state: w.phase.as_str().into(),
            },
            format!("transaction {} is {}", w.tx_id, w.phase),
        )
    })?;
    ctx.note(format!(
        "session for tx {} cancelled ({:?}) while {}",
        w.tx_id, s.reason, w.phase
    ));
    steps::apply(ctx, &w, &step, None)
}

fn heartbeat(ctx: &mut Ctx<'_>, atm: &AtmRow, h: &Heartbeat) -> Result<Vec<Outgoing>, Fail> {
    let state = serde_json::to_value(h.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    rows::atm_heartbeat(ctx.db, &atm.id, &state, &h.cassettes, ctx.now)?;
    Ok(Vec::new())
}
