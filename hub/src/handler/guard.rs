//! The checks several commands share: a live session, the account named, a valid amount,
//! the money-out gate, the withdrawal a message is about, and the refusals they give.

use qrcash_protocol::{Amount, OrderId, RejectReason, TxId};

use crate::handler::{Ctx, Fail, Refusal, refuse};
use crate::restriction::{self, Function, check_may_move_money};
use crate::store::rows::{self, AccountRow, AtmRow, DeviceRow, DeviceStatus, WithdrawalRow};

/// The device must be enrolled, active and logged in; returns it with its account.
pub(in crate::handler) fn session(
    ctx: &Ctx<'_>,
    device: Option<&DeviceRow>,
) -> Result<(DeviceRow, AccountRow), Fail> {
    let d = device.ok_or_else(|| refuse(RejectReason::NotLoggedIn, "log in first"))?;
    if d.status == DeviceStatus::Revoked {
        return Err(refuse(
            RejectReason::DeviceRevoked,
            "this device was revoked; contact support",
        ));
    }
    let fresh = d
        .last_login_at
        .is_some_and(|t| ctx.now <= t.saturating_add(ctx.cfg.auth.session_ttl_s));
    if !fresh {
        return Err(refuse(
            RejectReason::NotLoggedIn,
            "the session has expired; log in again",
        ));
    }
    let account = rows::account(ctx.db, &d.account)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownAccount,
            format!("account {} no longer exists", d.account),
        )
    })?;
    Ok((d.clone(), account))
}

/// The request names the session's account (or another one, which is refused).
pub(in crate::handler) fn own_account(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    named: &str,
) -> Result<(), Fail> {
    if named == account.id {
        return Ok(());
    }
    if rows::account(ctx.db, named)?.is_some() {
        Err(refuse(
            RejectReason::NotLoggedIn,
            format!("this device is not logged in to account {named}"),
        ))
    } else {
        Err(refuse(
            RejectReason::UnknownAccount,
            format!("no account {named}"),
        ))
    }
}

/// An amount must be positive, in the account currency and storable.
pub(in crate::handler) fn check_amount(account: &AccountRow, amount: &Amount) -> Result<(), Fail> {
    if amount.currency != account.currency {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!(
                "the account is in {}, not {}",
                account.currency, amount.currency
            ),
        ));
    }
    if amount.minor == 0 || i64::try_from(amount.minor).is_err() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("{amount} is not a valid amount"),
        ));
    }
    Ok(())
}

/// The money-out gate ([`check_may_move_money`]) at the message's time.
pub(in crate::handler) fn gate(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    device: &DeviceRow,
    f: Function,
) -> Result<(), Fail> {
    money_out(account, device, f, ctx.now)
}

/// The money-out gate ([`check_may_move_money`]) at `now`, with the refusal's explanation.
pub(in crate::handler) fn money_out(
    account: &AccountRow,
    device: &DeviceRow,
    f: Function,
    now: u64,
) -> Result<(), Fail> {
    check_may_move_money(account, device, f, now).map_err(|reason| {
        let message = match &reason {
            RejectReason::AccountFrozen => {
                "the account's payments are frozen until support clears them".to_owned()
            }
            RejectReason::Restricted { until } => {
                format!("this new device may not move money out until {until}")
            }
            _ => "this device may not move money out".to_owned(),
        };
        refuse(reason, message)
    })
}

/// Refuses `f` from a device under a restriction of its own (the account freeze is not
/// checked: see the module comment).
pub(in crate::handler) fn established(
    ctx: &Ctx<'_>,
    device: &DeviceRow,
    f: Function,
) -> Result<(), Fail> {
    debug_assert!(f.needs_established_device());
    match restriction::device_restriction(device).filter(|r| r.is_active(ctx.now)) {
        None => Ok(()),
        Some(r) => Err(refuse(
            r.until.map_or(RejectReason::AccountFrozen, |until| {
                RejectReason::Restricted { until }
            }),
            format!(
                "a device under the new-device restriction may not {}",
                match f {
                    Function::ChangePassword => "change the password",
                    _ => "sign other devices out",
                }
            ),
        )),
    }
}

pub(in crate::handler) fn load_own(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    tx: &TxId,
) -> Result<WithdrawalRow, Fail> {
    rows::withdrawal(ctx.db, tx)?
        .filter(|w| w.account == account.id)
        .ok_or_else(|| {
            refuse(
                RejectReason::UnknownTransaction,
                format!("no transaction {tx} on this account"),
            )
        })
}

pub(in crate::handler) fn wrong_state(w: &WithdrawalRow) -> Fail {
    refuse(
        RejectReason::WrongState {
            state: w.phase.as_str().into(),
        },
        format!("transaction {} is {}", w.tx_id, w.phase),
    )
}

/// A refusal that keeps the effects already made (and sends `extra`).
pub(in crate::handler) fn refuse_keeping(
    reason: RejectReason,
    message: String,
    extra: Vec<crate::handler::Outgoing>,
) -> Fail {
    Fail::Refused(Refusal {
        reason,
        message,
        keep_effects: true,
        extra,
    })
}

/// The withdrawal an ATM message is about: it must exist and be bound to this ATM.
pub(in crate::handler) fn bound(
    ctx: &Ctx<'_>,
    atm: &AtmRow,
    tx: &TxId,
) -> Result<WithdrawalRow, Fail> {
    let w = rows::withdrawal(ctx.db, tx)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownTransaction,
            format!("no transaction {tx}"),
        )
    })?;
    if w.atm_id.as_deref() != Some(atm.id.as_str()) {
        return Err(refuse(
            RejectReason::AtmMismatch,
            format!("transaction {tx} is not bound to ATM {}", atm.id),
        ));
    }
    Ok(w)
}

pub(in crate::handler) fn same_order(w: &WithdrawalRow, order: &OrderId) -> Result<(), Fail> {
    if w.order_id.as_ref() != Some(order) {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: "order_id".into(),
            },
            format!("order {order} is not the order of transaction {}", w.tx_id),
        ));
    }
    Ok(())
}
