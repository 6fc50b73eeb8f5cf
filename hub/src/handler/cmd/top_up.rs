//! `TopUp`: money in from the account's own linked funding account.

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::{ReceiptKind, ReceiptStatus, TopUp};

use crate::handler::cmd::operation::{Op, book, movement, new_reference, replayed_operation};
use crate::handler::guard::{check_amount, gate};
use crate::handler::{Ctx, Outcome, refuse};
use crate::ledger::{LedgerAccount, PostingKind};
use crate::limits;
use crate::restriction::Function;
use crate::store::rows::{self, AccountRow, DeviceRow};

pub(in crate::handler) fn top_up(
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
    let today = limits::operations_today(
        ctx.db,
        &account.id,
        crate::store::operations::Counted::TopUps,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    limits::check_limits(
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
