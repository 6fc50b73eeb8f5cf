//! `RegisterWithdrawal`: limits, balance and payable notes checked; a one-time code issued.

use qrcash_protocol::messages::{CodeIssued, PhonePush, RegisterWithdrawal};
use qrcash_protocol::{CodeToken, RejectReason, TxId};

use crate::handler::guard::{check_amount, gate, own_account};
use crate::handler::{Ctx, Fail, Outcome, refuse};
use crate::limits;
use crate::restriction::Function;
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow, WithdrawalRow};
use crate::withdrawal::Phase;

pub(in crate::handler) fn register(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    r: &RegisterWithdrawal,
) -> Outcome {
    own_account(ctx, account, &r.account)?;
    gate(ctx, account, device, Function::WithdrawalRegister)?;
    check_amount(account, &r.amount)?;
    if r.amount.currency != ctx.cfg.currency() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("the ATMs pay out {}", ctx.cfg.currency()),
        ));
    }
    let today = limits::withdrawn_today(
        ctx.db,
        &account.id,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    limits::check_limits(
        r.amount,
        today,
        ctx.cfg.withdrawal.per_transaction,
        ctx.cfg.withdrawal.daily,
    )
    .map_err(|reason| refuse(reason, "the amount exceeds a withdrawal limit"))?;
    if !crate::notes::payable(r.amount.minor, &ctx.cfg.network.denominations) {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!(
                "{} cannot be paid in notes of {:?}",
                r.amount, ctx.cfg.network.denominations
            ),
        ));
    }
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    if available < r.amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    let tx_id = TxId(ctx.rng.bytes16());
    let expires_at = ctx.now + ctx.cfg.withdrawal.code_ttl_s;
    let token = CodeToken::issue(ctx.signer.key(), tx_id, expires_at);
    let (qr_png, qr_svg) = if ctx.cfg.withdrawal.qr_images {
        crate::qr::render(&token).map_err(|e| Fail::Store(crate::error::StoreError::Corrupt(e)))?
    } else {
        (String::new(), String::new())
    };
    rows::insert_withdrawal(
        ctx.db,
        &WithdrawalRow {
            tx_id,
            account: account.id.clone(),
            device_id: device.id.clone(),
            amount: r.amount,
            phase: Phase::Registered,
            registered_at: ctx.now,
            code_expires_at: expires_at,
            atm_id: None,
            presented_at: None,
            confirm_by: None,
            challenge: None,
            notes: None,
            order_id: None,
            order_expires_at: None,
            order_payload: None,
            confirmed_at: None,
            confirmed_by: None,
            settled: 0,
            finished_at: None,
            needs_reconciliation: false,
            note: None,
        },
    )?;
    rows::record_code_issuer(ctx.db, &tx_id, ctx.signer.kid().as_str())?;
    ctx.note(format!("tx {tx_id} registered for {}", r.amount));
    tracing::info!(tx = %tx_id, account = %account.id, amount = %r.amount, "withdrawal registered");
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::CodeIssued(CodeIssued {
            tx_id,
            amount: r.amount,
            token,
            expires_at,
            qr_png,
            qr_svg,
        }),
    )?])
}
