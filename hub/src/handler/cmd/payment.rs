//! `Payment`: money to a merchant; where the device paid feeds the new-device policy.

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::{Payment, ReceiptKind, ReceiptStatus};

use crate::handler::cmd::operation::{
    Op, book, money_out_checks, movement, new_reference, replayed_operation,
};
use crate::handler::{Ctx, Outcome, refuse};
use crate::ledger::{LedgerAccount, PostingKind};
use crate::restriction::Function;
use crate::store::operations;
use crate::store::rows::{self, AccountRow, DeviceRow};

pub(in crate::handler) fn payment(
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
