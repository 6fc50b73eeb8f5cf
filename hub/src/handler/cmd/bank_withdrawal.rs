//! `BankWithdrawal`: money out to the account's own bank account (payout pending).

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::{BankWithdrawal, ReceiptKind, ReceiptStatus};

use crate::handler::cmd::operation::{
    Op, book, money_out_checks, movement, new_reference, replayed_operation,
};
use crate::handler::{Ctx, Outcome, refuse};
use crate::ledger::{LedgerAccount, PostingKind};
use crate::restriction::Function;
use crate::store::operations;
use crate::store::rows::{self, AccountRow, DeviceRow};

pub(in crate::handler) fn bank_withdrawal(
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
