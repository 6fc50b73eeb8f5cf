//! Phone money operations besides cash: `Transfer`, `Payment`, `BankWithdrawal`, `TopUp`
//! (each with an idempotency key) and `BalanceQuery`. Every one is a double-entry posting;
//! the asset-decreasing ones pass the same gate and limits as withdrawals.

use qrcash_protocol::messages::{
    Balance, BalanceQuery, BankWithdrawal, EntryDirection, HistoryEntry, Payment, PhonePush,
    Receipt, ReceiptKind, ReceiptStatus, TopUp, Transfer,
};
use qrcash_protocol::{Amount, RejectReason};
use serde::Serialize;

use super::phone::{check_amount, gate, own_account};
use super::{Ctx, Fail, Outcome, Outgoing, refuse};
use crate::error::StoreError;
use crate::ledger::{LedgerAccount, Posting, PostingKind};
use crate::policy;
use crate::restriction::Function;
use crate::store::ledger as books;
use crate::store::operations;
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus};

/// Most history entries a balance query may ask for.
pub const MAX_HISTORY: u32 = 50;
const MAX_KEY_LEN: usize = 128;
const MAX_MEMO_LEN: usize = 140;

/// An earlier operation with the same key: the same answer again, or a conflict.
fn replayed_operation<R: Serialize>(
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

struct Op<'r, R: Serialize> {
    kind: &'static str,
    key: &'r str,
    request: &'r R,
    amount: Amount,
    counts_to_limit: bool,
}

/// Applies the posting, records the operation with its receipt and answers the sender.
fn book<R: Serialize>(
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

fn new_reference(ctx: &mut Ctx<'_>, prefix: &str) -> String {
    let b = ctx.rng.bytes16();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn money_out_checks(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    device: &DeviceRow,
    f: Function,
    amount: &Amount,
) -> Result<(), Fail> {
    gate(ctx, account, device, f)?;
    check_amount(account, amount)?;
    let today = policy::paid_out_today(
        ctx.db,
        &account.id,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    policy::check_limits(
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

fn movement(
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

pub(super) fn transfer(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    t: &Transfer,
) -> Outcome {
    if let Some(out) = replayed_operation(ctx, account, &t.idempotency_key, "transfer", t)? {
        return Ok(out);
    }
    if t.memo
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_MEMO_LEN)
    {
        return Err(refuse(
            RejectReason::Malformed,
            format!("memo is longer than {MAX_MEMO_LEN} characters"),
        ));
    }
    let to = rows::account(ctx.db, &t.to_account)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownAccount,
            format!("no account {}", t.to_account),
        )
    })?;
    if to.id == account.id {
        return Err(refuse(
            RejectReason::InvalidAmount,
            "a transfer needs another account",
        ));
    }
    if to.currency != t.amount.currency {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("account {} is in {}", to.id, to.currency),
        ));
    }
    money_out_checks(ctx, account, device, Function::Transfer, &t.amount)?;
    let reference = new_reference(ctx, "tr");
    let text = match &t.memo {
        Some(m) => format!("transfer {} → {}: {m}", account.id, to.id),
        None => format!("transfer {} → {}", account.id, to.id),
    };
    let posting = movement(
        PostingKind::Transfer,
        LedgerAccount::Available(account.id.clone()),
        LedgerAccount::Available(to.id.clone()),
        t.amount,
        &reference,
        text,
    )?;
    let op = Op {
        kind: "transfer",
        key: &t.idempotency_key,
        request: t,
        amount: t.amount,
        counts_to_limit: true,
    };
    let (_, mut out) = book(
        ctx,
        account,
        op,
        posting,
        ReceiptKind::TransferSent,
        ReceiptStatus::Completed,
    )?;
    let (their_available, _) = books::customer_balances(ctx.db, &to.id)?;
    for d in rows::devices(ctx.db, Some(&to.id))? {
        if d.status == DeviceStatus::Active {
            out.push(ctx.push_phone(
                &d.id,
                PhonePush::Receipt(Receipt {
                    reference: reference.clone(),
                    kind: ReceiptKind::TransferReceived,
                    requested: t.amount,
                    settled: t.amount,
                    status: ReceiptStatus::Completed,
                    balance: Amount::new(their_available, to.currency),
                    at: ctx.now,
                }),
            )?);
        }
    }
    Ok(out)
}

pub(super) fn payment(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    p: &Payment,
) -> Outcome {
    if let Some(out) = replayed_operation(ctx, account, &p.idempotency_key, "payment", p)? {
        return Ok(out);
    }
    let merchant = rows::merchant(ctx.db, &p.merchant_id)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownMerchant,
            format!("no merchant {}", p.merchant_id),
        )
    })?;
    if merchant.currency != p.amount.currency {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("merchant {} takes {}", merchant.id, merchant.currency),
        ));
    }
    money_out_checks(ctx, account, device, Function::Payment, &p.amount)?;
    let reference = new_reference(ctx, "pay");
    let posting = movement(
        PostingKind::Payment,
        LedgerAccount::Available(account.id.clone()),
        LedgerAccount::Merchant(merchant.id.clone()),
        p.amount,
        &reference,
        format!("payment at {}", merchant.name),
    )?;
    // Where the device paid feeds the new-device policy's position estimate.
    operations::record_payment(
        ctx.db,
        &operations::PaymentRow {
            reference: &reference,
            account: &account.id,
            device: &device.id,
            merchant: &merchant.id,
            amount: p.amount,
            at: ctx.now,
            position: merchant.position,
        },
    )?;
    let op = Op {
        kind: "payment",
        key: &p.idempotency_key,
        request: p,
        amount: p.amount,
        counts_to_limit: true,
    };
    let (_, out) = book(
        ctx,
        account,
        op,
        posting,
        ReceiptKind::Payment,
        ReceiptStatus::Completed,
    )?;
    Ok(out)
}

pub(super) fn bank_withdrawal(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    b: &BankWithdrawal,
) -> Outcome {
    if let Some(out) = replayed_operation(ctx, account, &b.idempotency_key, "bank_withdrawal", b)? {
        return Ok(out);
    }
    if rows::bank_account_owner(ctx.db, &b.bank_account)?.as_deref() != Some(account.id.as_str()) {
        return Err(refuse(
            RejectReason::UnknownBankAccount,
            format!("no registered bank account {}", b.bank_account),
        ));
    }
    money_out_checks(ctx, account, device, Function::BankWithdrawal, &b.amount)?;
    let reference = new_reference(ctx, "bw");
    let posting = movement(
        PostingKind::BankWithdrawal,
        LedgerAccount::Available(account.id.clone()),
        LedgerAccount::Payouts(b.amount.currency),
        b.amount,
        &reference,
        format!("payout to bank account {}", b.bank_account),
    )?;
    operations::record_payout(
        ctx.db,
        &reference,
        &account.id,
        &b.bank_account,
        b.amount,
        ctx.now,
    )?;
    let op = Op {
        kind: "bank_withdrawal",
        key: &b.idempotency_key,
        request: b,
        amount: b.amount,
        counts_to_limit: true,
    };
    let (_, out) = book(
        ctx,
        account,
        op,
        posting,
        ReceiptKind::BankWithdrawal,
        ReceiptStatus::Pending,
    )?;
    Ok(out)
}

pub(super) fn top_up(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    t: &TopUp,
) -> Outcome {
    if let Some(out) = replayed_operation(ctx, account, &t.idempotency_key, "top_up", t)? {
        return Ok(out);
    }
    // Money comes from the account's own linked funding account, never from nowhere; it
    // draws on the customer's bank, so a frozen account or a restricted device cannot.
    if rows::bank_account_owner(ctx.db, &t.from)?.as_deref() != Some(account.id.as_str()) {
        return Err(refuse(
            RejectReason::UnknownBankAccount,
            format!("no funding account {} linked to this account", t.from),
        ));
    }
    gate(ctx, account, device, Function::TopUp)?;
    check_amount(account, &t.amount)?;
    let today = policy::topped_up_today(
        ctx.db,
        &account.id,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    policy::check_limits(
        t.amount,
        today,
        ctx.cfg.payments.topup_per_transaction,
        ctx.cfg.payments.topup_daily,
    )
    .map_err(|reason| refuse(reason, "the amount exceeds a top-up limit"))?;
    let reference = new_reference(ctx, "tu");
    let posting = movement(
        PostingKind::TopUp,
        LedgerAccount::TopUpSource(t.amount.currency),
        LedgerAccount::Available(account.id.clone()),
        t.amount,
        &reference,
        format!("top-up from funding account {}", t.from),
    )?;
    let op = Op {
        kind: "top_up",
        key: &t.idempotency_key,
        request: t,
        amount: t.amount,
        counts_to_limit: false,
    };
    let (_, out) = book(
        ctx,
        account,
        op,
        posting,
        ReceiptKind::TopUp,
        ReceiptStatus::Completed,
    )?;
    Ok(out)
}

pub(super) fn balance(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    q: &BalanceQuery,
) -> Outcome {
    own_account(ctx, account, &q.account)?;
    if q.history > MAX_HISTORY {
        return Err(refuse(
            RejectReason::Malformed,
            format!("history is at most {MAX_HISTORY}"),
        ));
    }
    let (available, held) = books::customer_balances(ctx.db, &account.id)?;
    let history = books::history(ctx.db, &account.id, q.history)?
        .into_iter()
        .map(|(at, amount, description)| HistoryEntry {
            at,
            direction: if amount >= 0 {
                EntryDirection::Credit
            } else {
                EntryDirection::Debit
            },
            amount: Amount::new(amount.unsigned_abs(), account.currency),
            description,
        })
        .collect();
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::Balance(Balance {
            account: account.id.clone(),
            available: Amount::new(available, account.currency),
            held: Amount::new(held, account.currency),
            history,
        }),
    )?])
}
