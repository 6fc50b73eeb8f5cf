//! How much money may move: the per-transaction and daily limits of withdrawals, payments
//! and top-ups, and what already counts against them today (local time). Who may move money
//! at all is [`crate::restriction::check_may_move_money`].

use qrcash_protocol::messages::LimitKind;
use qrcash_protocol::{Amount, RejectReason};

use crate::error::StoreError;
use crate::store::Db;
use crate::store::operations::{self, Counted};
use crate::store::rows;
use crate::warnings::local_day_start;
use crate::withdrawal::Phase;

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

/// The money operations of one kind (`which`: transfers, payments and payouts, or top-ups)
/// of `account` since the local day started.
pub fn operations_today(
    db: Db<'_>,
    account: &str,
    which: Counted,
    now: u64,
    utc_offset_minutes: i32,
) -> Result<u64, StoreError> {
    let since = local_day_start(now, utc_offset_minutes);
    operations::total_since(db, account, since, which)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::Currency;

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
