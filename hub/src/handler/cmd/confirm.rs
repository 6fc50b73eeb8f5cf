//! `ConfirmWithdrawal`: the customer's confirmation, bound to the transaction, checked for
//! position and identity proof (PIN); the hold is taken and the signed `DispenseOrder` sent.
//!
//! Load (the withdrawal, its ATM, the balance) → decide ([`check`], pure; the identity
//! proof; [`decide`], pure: the funds and the step; the order) → apply (the step, the order
//! sealed and recorded).

use qrcash_protocol::messages::{AtmDown, ConfirmWithdrawal, DispenseOrder, IdentityEvidence};
use qrcash_protocol::{OrderId, Position, RejectReason, SecretField};

use crate::config::{AuthSection, IdentityRule};
use crate::handler::guard::{load_own, money_out, refuse_keeping, wrong_state};
use crate::handler::{Ctx, Fail, Outcome, refuse, steps};
use crate::restriction::Function;
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, AtmRow, DeviceRow, WithdrawalRow};
use crate::withdrawal::{Event, Phase, Step, TransitionError, transition};

pub(in crate::handler) fn confirm(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    c: &ConfirmWithdrawal,
) -> Outcome {
    // Load.
    let w = load_own(ctx, account, &c.tx_id)?;
    let atm = match &w.atm_id {
        Some(id) => rows::atm(ctx.db, id)?,
        None => None,
    };
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;

    // Decide, up to the identity proof.
    let atm = match check(&w, atm.as_ref(), account, device, c, &ctx.cfg.auth, ctx.now) {
        Ok(atm) => atm,
        Err(Unconfirmed::Refused(fail)) => return Err(fail),
        Err(Unconfirmed::Late { confirm_by }) => {
            // The session is over either way; end it now rather than at the next sweep.
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
    };
    // The identity proof comes last: it is the one check with an effect of its own (a wrong
    // PIN counts even though the confirmation is refused) and the only one that may cost an
    // argon2 hash.
    check_identity(ctx, account, &w, &c.identity)?;

    // Decide the step, then the order (its id drawn only for a confirmation that holds).
    let step = decide(&w, available, ctx.now)?;
    let order = DispenseOrder {
        order_id: OrderId(ctx.rng.bytes16()),
        tx_id: w.tx_id,
        atm_id: atm.id.clone(),
        amount: w.amount,
        notes: w.notes.clone().unwrap_or_default(),
        expires_at: ctx.now + ctx.cfg.withdrawal.order_ttl_s,
    };
    debug_assert!(order.notes_match_amount(), "planned notes must add up");
    if !order.notes_match_amount() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            "the ATM cannot pay this amount",
        ));
    }

    // Apply.
    let mut out = steps::apply(ctx, &w, &step, None)?;
    let (order_id, expires_at, atm_id) = (order.order_id, order.expires_at, order.atm_id.clone());
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

/// Why a confirmation was not taken before its identity proof.
enum Unconfirmed {
    /// The deadline passed: the session ends.
    Late {
        /// The deadline.
        confirm_by: u64,
    },
    /// Refused; nothing changes.
    Refused(Fail),
}

impl From<Fail> for Unconfirmed {
    fn from(f: Fail) -> Self {
        Unconfirmed::Refused(f)
    }
}

/// The checks before the identity proof, in the order their refusals take precedence: the
/// phase, the deadline, dynamic linking (the signature covers exactly what the hub holds),
/// the money-out gate, the staging device, the ATM, the phone's position. Returns the ATM.
fn check<'a>(
    w: &WithdrawalRow,
    atm: Option<&'a AtmRow>,
    account: &AccountRow,
    device: &DeviceRow,
    c: &ConfirmWithdrawal,
    auth: &AuthSection,
    now: u64,
) -> Result<&'a AtmRow, Unconfirmed> {
    if w.phase != Phase::Presented {
        return Err(wrong_state(w).into());
    }
    let confirm_by = w.confirm_by.unwrap_or(0);
    if now > confirm_by {
        return Err(Unconfirmed::Late { confirm_by });
    }
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
        )
        .into());
    }
    money_out(account, device, Function::WithdrawalConfirm, now)?;
    // Only the device that staged the withdrawal was sent the `ConfirmRequest`: another
    // device of the account, even an established one, may not confirm it for it.
    if w.device_id != device.id {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: "device_id".into(),
            },
            "only the device that registered this withdrawal may confirm it",
        )
        .into());
    }
    let atm = atm.ok_or_else(|| {
        refuse(
            RejectReason::UnknownAtm,
            format!("ATM {} is gone", w.atm_id.as_deref().unwrap_or_default()),
        )
    })?;
    check_location(auth, c.position.as_ref(), &atm.position)?;
    Ok(atm)
}

/// After the identity proof: the funds, then the step that holds them.
fn decide(w: &WithdrawalRow, available: u64, now: u64) -> Result<Step, Fail> {
    if available < w.amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    let step = transition(&w.lifecycle(), Event::Confirm { now }).map_err(|e| match e {
        TransitionError::Late => refuse(RejectReason::ConfirmationTimeout, e.to_string()),
        _ => wrong_state(w),
    })?;
    Ok(step)
}

fn check_location(
    auth: &AuthSection,
    position: Option<&Position>,
    atm: &Position,
) -> Result<(), Fail> {
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
