//! What the phone's money operations share: the idempotency key (a repeat gets the first
//! receipt), the money-out checks and limits, the posting and the recorded receipt.

use qrcash_protocol::messages::{PhonePush, Receipt, ReceiptKind, ReceiptStatus};
use qrcash_protocol::{Amount, RejectReason};
use serde::Serialize;

use crate::error::StoreError;
use crate::handler::guard::{check_amount, gate};
use crate::handler::{Ctx, Fail, Outgoing, refuse};
use crate::ledger::{LedgerAccount, Posting, PostingKind};
use crate::limits;
use crate::restriction::Function;
use crate::store::rows::{AccountRow, DeviceRow};
use crate::store::{ledger as books, operations};

const MAX_KEY_LEN: usize = 128;

/// An earlier operation with the same key: the same answer again, or a conflict.
pub(in crate::handler) fn replayed_operation<R: Serialize>(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    key: &str,
    kind: &str,
    request: &R,
) -> Result<Option<Vec<Outgoing>>, Fail> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(refuse(
            RejectReason::Malformed,
            format!("idempotency_key must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    let Some(operations::OperationRow {
        kind: k,
        request: req,
        receipt,
    }) = operations::operation(ctx.db, &account.id, key)?
    else {
        return Ok(None);
    };
    let now_req = to_json(request)?;
    if k != kind || req != now_req {
        return Err(refuse(
            RejectReason::IdempotencyConflict,
            format!("idempotency key {key:?} was used for a different request"),
        ));
    }
    let receipt: Receipt =
        serde_json::from_str(&receipt).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    ctx.note(format!("repeat of operation {}", receipt.reference));
    let to = ctx.sender.clone();
    Ok(Some(vec![
        ctx.push_phone(&to, PhonePush::Receipt(receipt))?,
    ]))
}

/// One money operation as its command describes it to [`book`].
pub(in crate::handler) struct Op<'r, R: Serialize> {
    /// `transfer`, `payment`, `bank_withdrawal`, `top_up`.
    pub kind: &'static str,
    /// The idempotency key.
    pub key: &'r str,
    /// The request, kept so that a repeat under the same key can be told apart.
    pub request: &'r R,
    /// The amount.
    pub amount: Amount,
    /// Whether it counts towards the daily payment limit.
    pub counts_to_limit: bool,
}

/// Applies the posting, records the operation with its receipt and answers the sender.
pub(in crate::handler) fn book<R: Serialize>(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    op: Op<'_, R>,
    posting: Posting,
    receipt_kind: ReceiptKind,
    status: ReceiptStatus,
) -> Result<(Receipt, Vec<Outgoing>), Fail> {
    match books::apply(ctx.db, &posting, ctx.now) {
        Ok(_) => {}
        Err(StoreError::Overdraft(_)) => {
            return Err(refuse(
                RejectReason::InsufficientFunds,
                "the available balance does not cover the amount",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    let receipt = Receipt {
        reference: posting.reference.clone(),
        kind: receipt_kind,
        requested: op.amount,
        settled: op.amount,
        status,
        balance: Amount::new(available, account.currency),
        at: ctx.now,
    };
    operations::record_operation(
        ctx.db,
        &operations::NewOperation {
            account: &account.id,
            key: op.key,
            kind: op.kind,
            reference: &posting.reference,
            request: &to_json(op.request)?,
            amount: op.amount,
            counts_to_limit: op.counts_to_limit,
            receipt: &to_json(&receipt)?,
            at: ctx.now,
        },
    )?;
    ctx.note(format!("{} {} {}", op.kind, posting.reference, op.amount));
    let to = ctx.sender.clone();
    let out = vec![ctx.push_phone(&to, PhonePush::Receipt(receipt.clone()))?];
    Ok((receipt, out))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(in crate::handler) fn new_reference(ctx: &mut Ctx<'_>, prefix: &str) -> String {
    let b = ctx.rng.bytes16();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

pub(in crate::handler) fn money_out_checks(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    device: &DeviceRow,
    f: Function,
    amount: &Amount,
) -> Result<(), Fail> {
    gate(ctx, account, device, f)?;
    check_amount(account, amount)?;
    let today = limits::operations_today(
        ctx.db,
        &account.id,
        crate::store::operations::Counted::PaidOut,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    limits::check_limits(
        *amount,
        today,
        ctx.cfg.payments.per_transaction,
        ctx.cfg.payments.daily,
    )
    .map_err(|reason| refuse(reason, "the amount exceeds a payment limit"))?;
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    if available < amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    Ok(())
}

pub(in crate::handler) fn movement(
    kind: PostingKind,
    from: LedgerAccount,
    to: LedgerAccount,
    amount: Amount,
    reference: &str,
    text: String,
) -> Result<Posting, Fail> {
    Posting::movement(
        kind,
        from,
        to,
        amount.minor,
        amount.currency,
        reference,
        text,
    )
    .map_err(|e| refuse(RejectReason::InvalidAmount, e.to_string()))
}
