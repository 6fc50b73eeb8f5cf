//! `ConfirmWithdrawal`: the customer's confirmation, bound to the transaction, checked for
//! position and identity proof (PIN); the hold is taken and the signed `DispenseOrder` sent.

use qrcash_protocol::messages::{AtmDown, ConfirmWithdrawal, DispenseOrder, IdentityEvidence};
use qrcash_protocol::{OrderId, Position, RejectReason, SecretField};

use crate::config::IdentityRule;
use crate::handler::guard::{gate, load_own, refuse_keeping, wrong_state};
use crate::handler::{Ctx, Fail, Outcome, refuse, steps};
use crate::restriction::Function;
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow, WithdrawalRow};
use crate::withdrawal::{Event, Phase, TransitionError, transition};

pub(in crate::handler) fn confirm(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    c: &ConfirmWithdrawal,
) -> Outcome {
    let w = load_own(ctx, account, &c.tx_id)?;
    if w.phase != Phase::Presented {
        return Err(wrong_state(&w));
    }
    let confirm_by = w.confirm_by.unwrap_or(0);
    if ctx.now > confirm_by {
        // Late: the session is over either way; end it now rather than at the next sweep.
        let out = match transition(&w.lifecycle(), Event::DeadlinePassed { now: ctx.now }) {
            Ok(step) => steps::apply(ctx, &w, &step, None)?,
            Err(_) => Vec::new(),
        };
        return Err(refuse_keeping(
            RejectReason::ConfirmationTimeout,
            format!("the confirmation deadline {confirm_by} has passed"),
            out,
        ));
    }
    // Dynamic linking: the signature must cover exactly what the hub holds.
    let mismatch = if Some(c.atm_id.as_str()) != w.atm_id.as_deref() {
        Some("atm_id")
    } else if c.amount != w.amount {
        Some("amount")
    } else if Some(c.challenge.as_str()) != w.challenge.as_deref() {
        Some("challenge")
    } else {
        None
    };
    if let Some(field) = mismatch {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: field.into(),
            },
            format!("{field} differs from the transaction"),
        ));
    }
    gate(ctx, account, device, Function::WithdrawalConfirm)?;
    // Only the device that staged the withdrawal was sent the `ConfirmRequest`: another
    // device of the account, even an established one, may not confirm it for it.
    if w.device_id != device.id {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: "device_id".into(),
            },
            "only the device that registered this withdrawal may confirm it",
        ));
    }
    let atm_id = w.atm_id.clone().unwrap_or_default();
    let atm = rows::atm(ctx.db, &atm_id)?
        .ok_or_else(|| refuse(RejectReason::UnknownAtm, format!("ATM {atm_id} is gone")))?;
    check_location(ctx, c.position.as_ref(), &atm.position)?;
    check_identity(ctx, account, &w, &c.identity)?;
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    if available < w.amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    let step =
        transition(&w.lifecycle(), Event::Confirm { now: ctx.now }).map_err(|e| match e {
            TransitionError::Late => refuse(RejectReason::ConfirmationTimeout, e.to_string()),
            _ => wrong_state(&w),
        })?;
    let mut out = steps::apply(ctx, &w, &step, None)?;
    let order_id = OrderId(ctx.rng.bytes16());
    let expires_at = ctx.now + ctx.cfg.withdrawal.order_ttl_s;
    let order = DispenseOrder {
        order_id,
        tx_id: w.tx_id,
        atm_id: atm_id.clone(),
        amount: w.amount,
        notes: w.notes.clone().unwrap_or_default(),
        expires_at,
    };
    debug_assert!(order.notes_match_amount(), "planned notes must add up");
    if !order.notes_match_amount() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            "the ATM cannot pay this amount",
        ));
    }
    let sealed = ctx.send_atm_until(&atm_id, AtmDown::DispenseOrder(order), expires_at)?;
    let payload = String::from_utf8_lossy(&sealed.payload).into_owned();
    rows::record_order(
        ctx.db, &w.tx_id, &order_id, expires_at, &payload, ctx.now, &device.id,
    )?;
    ctx.note(format!(
        "tx {} confirmed; order {order_id} to {atm_id}",
        w.tx_id
    ));
    tracing::info!(tx = %w.tx_id, order = %order_id, atm = %atm_id, "dispense ordered");
    out.insert(0, sealed);
    Ok(out)
}

fn check_location(ctx: &Ctx<'_>, position: Option<&Position>, atm: &Position) -> Result<(), Fail> {
    let auth = &ctx.cfg.auth;
    let Some(p) = position else {
        if auth.location_required {
            return Err(refuse(
                RejectReason::LocationRequired,
                "the phone's position is required to confirm",
            ));
        }
        return Ok(());
    };
    p.validate()
        .map_err(|e| refuse(RejectReason::Malformed, format!("position: {e}")))?;
    if p.accuracy_m > auth.max_accuracy_m {
        return Err(refuse(
            RejectReason::LocationInaccurate {
                accuracy_m: p.accuracy_m.round() as u64,
                max_m: auth.max_accuracy_m.round() as u64,
            },
            format!(
                "the position is accurate to {:.0} m; at most {:.0} m is accepted",
                p.accuracy_m, auth.max_accuracy_m
            ),
        ));
    }
    let distance = p.min_distance_m(atm);
    if distance > auth.radius_m {
        return Err(refuse(
            RejectReason::TooFarFromAtm {
                distance_m: distance.round() as u64,
                allowed_m: auth.radius_m.round() as u64,
            },
            format!(
                "your phone is {:.0} m from the ATM; confirm at the ATM",
                distance
            ),
        ));
    }
    Ok(())
}

fn check_identity(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    w: &WithdrawalRow,
    id: &IdentityEvidence,
) -> Result<(), Fail> {
    let auth = &ctx.cfg.auth;
    let skew = ctx.cfg.replay.max_skew_s;
    let presented = w.presented_at.unwrap_or(ctx.now);
    let biometric_ok = id.biometric.as_ref().is_some_and(|b| {
        // `verified_at` comes from the wire: saturating, never a panic.
        b.verified_at.saturating_add(skew) >= presented
            && b.verified_at <= ctx.now.saturating_add(skew)
            && ctx.now.saturating_sub(b.verified_at) <= auth.biometric_max_age_s
    });
    let (need_pin, need_bio) = match auth.identity {
        IdentityRule::Pin => (true, false),
        IdentityRule::Biometric => (false, true),
        IdentityRule::PinAndBiometric => (true, true),
        IdentityRule::PinOrBiometric => (id.pin.is_some() || !biometric_ok, false),
    };
    if need_bio && !biometric_ok {
        return Err(refuse(
            RejectReason::IdentityRequired,
            "a fresh biometric check on this phone is required",
        ));
    }
    if !need_pin {
        return Ok(());
    }
    if let Some(locked) = account.pin.locked(ctx.now) {
        return Err(refuse(
            locked,
            "the PIN is locked after too many wrong attempts",
        ));
    }
    let Some(pin) = &id.pin else {
        return Err(refuse(
            RejectReason::IdentityRequired,
            "the PIN is required",
        ));
    };
    let pin = ctx.open_secret(pin, SecretField::Pin)?;
    let correct = ctx.secret_matches(pin.expose(), &account.pin_hash);
    let (state, verdict) =
        account
            .pin
            .attempt(correct, ctx.now, auth.pin_max_failures, auth.pin_lockout_s);
    if state != account.pin {
        rows::save_pin_state(ctx.db, &account.id, &state)?;
    }
    match verdict {
        Ok(()) => Ok(()),
        Err(reason @ RejectReason::PinLocked { .. }) => {
            // The last allowed attempt failed: the session ends at the ATM too.
            let out = match transition(&w.lifecycle(), Event::AuthFailed) {
                Ok(step) => steps::apply(ctx, w, &step, None)?,
                Err(_) => Vec::new(),
            };
            ctx.note(format!(
                "PIN locked on {}; tx {} ended",
                account.id, w.tx_id
            ));
            Err(refuse_keeping(
                reason,
                "wrong PIN; the PIN is now locked".into(),
                out,
            ))
        }
        Err(reason) => Err(refuse_keeping(reason, "wrong PIN".into(), Vec::new())),
    }
}
