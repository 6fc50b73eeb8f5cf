//! Carrying out a withdrawal [`Step`]: phase change (conditional), ledger postings, abort,
//! receipt and order resend. The one place where the pure transition's decisions touch the
//! database and the wire.

use qrcash_protocol::messages::{Abort, AtmDown, PhonePush, Receipt, ReceiptKind, ReceiptStatus};
use qrcash_protocol::{Amount, RejectReason};

use super::{Ctx, Fail, Outgoing, refuse};
use crate::error::StoreError;
use crate::ledger::{LedgerAccount, Posting, PostingKind};
use crate::store::ledger as books;
use crate::store::rows::{self, WithdrawalRow};
use crate::withdrawal::{LedgerEffect, Step};

/// The posting for one ledger effect of a withdrawal.
pub(crate) fn posting(w: &WithdrawalRow, effect: LedgerEffect) -> Result<Posting, StoreError> {
    let cust = &w.account;
    let cur = w.amount.currency;
    let atm = w.atm_id.as_deref().unwrap_or("?");
    let (kind, from, to, v, text) = match effect {
        LedgerEffect::Hold(v) => (
            PostingKind::Hold,
            LedgerAccount::Available(cust.clone()),
            LedgerAccount::Held(cust.clone()),
            v,
            format!("hold for ATM withdrawal at {atm}"),
        ),
        LedgerEffect::Capture(v) => (
            PostingKind::Capture,
            LedgerAccount::Held(cust.clone()),
            LedgerAccount::AtmCash(atm.to_owned(), cur),
            v,
            format!("ATM withdrawal at {atm}"),
        ),
        LedgerEffect::Release(v) => (
            PostingKind::Release,
            LedgerAccount::Held(cust.clone()),
            LedgerAccount::Available(cust.clone()),
            v,
            format!("hold released (ATM withdrawal at {atm})"),
        ),
    };
    Posting::movement(kind, from, to, v, cur, w.tx_id.to_string(), text)
        .map_err(|e| StoreError::Unbalanced(e.to_string()))
}

/// Applies `step` to `w`; returns the messages it calls for.
pub(crate) fn apply(
    ctx: &mut Ctx<'_>,
    w: &WithdrawalRow,
    step: &Step,
    note: Option<&str>,
) -> Result<Vec<Outgoing>, Fail> {
    if step.next != w.phase && !rows::set_phase(ctx.db, &w.tx_id, w.phase, step.next, ctx.now)? {
        // Someone else moved it first (another hub instance): nothing of ours applies.
        return Err(refuse(
            RejectReason::WrongState {
                state: w.phase.as_str().into(),
            },
            format!("transaction {} changed concurrently", w.tx_id),
        ));
    }
    for effect in &step.ledger {
        match books::apply(ctx.db, &posting(w, *effect)?, ctx.now) {
            Ok(_) => {}
            Err(StoreError::Overdraft(_)) => {
                return Err(refuse(
                    RejectReason::InsufficientFunds,
                    "the available balance does not cover the amount",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A flag stays until the withdrawal reaches a final phase.
    let flag = step.flag || (w.needs_reconciliation && !step.next.is_final());
    if flag != w.needs_reconciliation || step.settled > 0 || note.is_some() {
        rows::record_settlement(ctx.db, &w.tx_id, w.settled + step.settled, flag, note)?;
    }
    let mut out = Vec::new();
    if let (Some(reason), Some(atm)) = (step.abort_atm, w.atm_id.as_deref()) {
        out.push(ctx.send_atm(
            atm,
            AtmDown::Abort(Abort {
                tx_id: w.tx_id,
                reason,
            }),
        )?);
    }
    if step.resend_order
        && let Some(order) = &w.order_payload
        && let Some(atm) = w.atm_id.as_deref()
    {
        // The same order (id, notes, expiry), in a fresh envelope.
        out.push(ctx.reseal(&Outgoing::new(
            qrcash_protocol::topics::atm_down(atm),
            order.clone().into_bytes(),
        ))?);
    }
    if let Some(status) = step.receipt {
        let (device, receipt) = receipt(ctx.db, w, step.settled, status, ctx.now)?;
        out.push(ctx.push_phone(&device, receipt)?);
    }
    Ok(out)
}

/// The orders outstanding at ATM `atm` (confirmed, still valid, no report yet), each again
/// in a fresh envelope: sent when the ATM comes back online, because an order published while
/// it was away may be lost. The agent executes an order id at most once and answers a repeat
/// with the report it stored; an agent that restarted without the session refuses the order
/// (`OrderRefused`), and the hold is released at once instead of going in doubt an hour later.
pub(crate) fn outstanding_orders(
    ctx: &mut Ctx<'_>,
    atm: &str,
) -> Result<Vec<Outgoing>, StoreError> {
    let listing = rows::Listing::OrderOutstanding { atm, now: ctx.now };
    let mut out = Vec::new();
    for w in rows::withdrawals(ctx.db, &listing)? {
        if let Some(order) = &w.order_payload {
            out.push(ctx.reseal(&Outgoing::new(
                qrcash_protocol::topics::atm_down(atm),
                order.clone().into_bytes(),
            ))?);
        }
    }
    Ok(out)
}

/// The `Receipt` of a settled withdrawal and the device it goes to (the one that confirmed
/// it, else the one that registered it), with the balance after the settlement.
pub(crate) fn receipt(
    db: crate::store::Db<'_>,
    w: &WithdrawalRow,
    settled: u64,
    status: ReceiptStatus,
    now: u64,
) -> Result<(String, PhonePush), StoreError> {
    let (available, _) = books::customer_balances(db, &w.account)?;
    let device = w
        .confirmed_by
        .clone()
        .unwrap_or_else(|| w.device_id.clone());
    Ok((
        device,
        PhonePush::Receipt(Receipt {
            reference: w.tx_id.to_string(),
            kind: ReceiptKind::Withdrawal,
            requested: w.amount,
            settled: Amount::new(settled, w.amount.currency),
            status,
            balance: Amount::new(available, w.amount.currency),
            at: now,
        }),
    ))
}
