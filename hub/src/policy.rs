//! Who may move money out, and how much: the one gate every asset-decreasing operation
//! passes ([`check_may_move_money`]), plus the per-transaction and daily limits.
//!
//! The gate combines the account freeze ("not me"), the device's status and the device's
//! new-device restriction, which [`crate::restriction`] decides and the login handler stores
//! on the device row.

use qrcash_protocol::messages::{LimitKind, RestrictionReason};
use qrcash_protocol::{Amount, RejectReason};

use crate::error::StoreError;
use crate::restriction::{self, ActiveRestriction, Function};
use crate::store::rows;
use crate::store::rows::{AccountRow, DeviceRow, DeviceStatus};
use crate::store::{Db, operations};
use crate::warnings::local_day_start;
use crate::withdrawal::Phase;

/// The stored restriction of a device, if it has one (active or not).
pub fn device_restriction(device: &DeviceRow) -> Option<ActiveRestriction> {
    let reason = match device.restriction_reason.as_deref()? {
        "new_device" => RestrictionReason::NewDevice,
        "impossible_travel" => RestrictionReason::ImpossibleTravel,
        _ => RestrictionReason::AccountFrozen,
    };
    Some(ActiveRestriction {
        reason,
        until: device.restricted_until,
    })
}

/// The restriction to report for a device at `now` (account freeze first).
pub fn effective_restriction(
    account: &AccountRow,
    device: &DeviceRow,
    now: u64,
) -> Option<ActiveRestriction> {
    if account.frozen {
        return Some(ActiveRestriction::frozen());
    }
    device_restriction(device).filter(|r| r.is_active(now))
}

/// The single gate of every asset-decreasing operation (register and confirm withdrawal,
/// transfer, payment, bank withdrawal): the account must not be frozen, the device must be
/// active and not restricted.
pub fn check_may_move_money(
    account: &AccountRow,
    device: &DeviceRow,
    function: Function,
    now: u64,
) -> Result<(), RejectReason> {
    debug_assert!(function.decreases_assets(), "{function:?} is not money out");
    if device.status == DeviceStatus::Revoked {
        return Err(RejectReason::DeviceRevoked);
    }
    if account.frozen {
        restriction::check(function, Some(&ActiveRestriction::frozen()), now)?;
    }
    restriction::check(function, device_restriction(device).as_ref(), now)
}

/// Refuses `amount` above `per_transaction`, or if `spent_today + amount` exceeds `daily`.
pub fn check_limits(
    amount: Amount,
    spent_today: u64,
    per_transaction: u64,
    daily: u64,
) -> Result<(), RejectReason> {
    if amount.minor > per_transaction {
        return Err(RejectReason::LimitExceeded {
            limit: LimitKind::PerTransaction,
            max: Amount::new(per_transaction, amount.currency),
        });
    }
    if spent_today.saturating_add(amount.minor) > daily {
        return Err(RejectReason::LimitExceeded {
            limit: LimitKind::Daily,
            max: Amount::new(daily, amount.currency),
        });
    }
    Ok(())
}

/// Withdrawals of `account` registered since the local day started that still count (not
/// failed, expired, declined or cancelled; partial ones count what was paid).
pub fn withdrawn_today(
    db: Db<'_>,
    account: &str,
    now: u64,
    utc_offset_minutes: i32,
) -> Result<u64, StoreError> {
    let since = local_day_start(now, utc_offset_minutes);
    let mut total = 0u64;
    for (phase, amount, settled) in rows::withdrawn_since(db, account, since)? {
        if phase == Phase::Partial {
            total = total.saturating_add(settled);
        } else if phase.counts_against_limit() {
            total = total.saturating_add(amount);
        }
    }
    Ok(total)
}

/// Transfers, payments and bank withdrawals of `account` since the local day started.
pub fn paid_out_today(
    db: Db<'_>,
    account: &str,
    now: u64,
    utc_offset_minutes: i32,
) -> Result<u64, StoreError> {
    let since = local_day_start(now, utc_offset_minutes);
    operations::total_since(db, account, since, operations::Counted::PaidOut)
}

/// Top-ups of `account` since the start of the local day.
pub fn topped_up_today(
    db: Db<'_>,
    account: &str,
    now: u64,
    utc_offset_minutes: i32,
) -> Result<u64, StoreError> {
    let since = local_day_start(now, utc_offset_minutes);
    operations::total_since(db, account, since, operations::Counted::TopUps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PinState;
    use qrcash_protocol::Currency;

    fn account(frozen: bool) -> AccountRow {
        AccountRow {
            id: "a".into(),
            currency: Currency::JPY,
            password_hash: String::new(),
            pin_hash: String::new(),
            created_at: 0,
            password_changed_at: 0,
            frozen,
            frozen_reason: None,
            pin: PinState::default(),
        }
    }

    fn device(status: DeviceStatus, restricted_until: Option<u64>) -> DeviceRow {
        DeviceRow {
            id: "d".into(),
            account: "a".into(),
            name: "n".into(),
            public_jwk: String::new(),
            kid: String::new(),
            status,
            enrolled_at: 0,
            key_changed_at: 0,
            last_login_at: Some(0),
            restricted_until,
            restriction_reason: restricted_until.map(|_| "new_device".to_owned()),
            revoked_reason: None,
        }
    }

    #[test]
    fn the_gate_checks_freeze_status_and_restriction() {
        let f = Function::Transfer;
        let ok = device(DeviceStatus::Active, None);
        assert_eq!(check_may_move_money(&account(false), &ok, f, 10), Ok(()));
        assert_eq!(
            check_may_move_money(&account(true), &ok, f, 10),
            Err(RejectReason::AccountFrozen)
        );
        assert_eq!(
            check_may_move_money(&account(false), &device(DeviceStatus::Revoked, None), f, 10),
            Err(RejectReason::DeviceRevoked)
        );
        let restricted = device(DeviceStatus::Active, Some(100));
        assert_eq!(
            check_may_move_money(&account(false), &restricted, f, 10),
            Err(RejectReason::Restricted { until: 100 })
        );
        assert_eq!(
            check_may_move_money(&account(false), &restricted, f, 100),
            Ok(())
        );
        assert!(effective_restriction(&account(false), &restricted, 100).is_none());
        assert!(effective_restriction(&account(true), &ok, 100).is_some());
    }

    #[test]
    fn limits() {
        let a = Amount::new(100, Currency::JPY);
        assert_eq!(check_limits(a, 0, 100, 1000), Ok(()));
        assert!(matches!(
            check_limits(a, 0, 99, 1000),
            Err(RejectReason::LimitExceeded {
                limit: LimitKind::PerTransaction,
                ..
            })
        ));
        assert!(matches!(
            check_limits(a, 901, 100, 1000),
            Err(RejectReason::LimitExceeded {
                limit: LimitKind::Daily,
                ..
            })
        ));
        assert_eq!(check_limits(a, 900, 100, 1000), Ok(()));
    }
}
