//! `Transfer`: money to another account of this hub.

use qrcash_protocol::messages::{PhonePush, Receipt, ReceiptKind, ReceiptStatus, Transfer};
use qrcash_protocol::{Amount, RejectReason};

use crate::handler::cmd::operation::{
    Op, book, money_out_checks, movement, new_reference, replayed_operation,
};
use crate::handler::{Ctx, Outcome, refuse};
use crate::ledger::{LedgerAccount, PostingKind};
use crate::restriction::Function;
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus};

const MAX_MEMO_LEN: usize = 140;

pub(in crate::handler) fn transfer(
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
