//! `BalanceQuery`: balances and recent history; free for every device.

use qrcash_protocol::messages::{Balance, BalanceQuery, EntryDirection, HistoryEntry, PhonePush};
use qrcash_protocol::{Amount, RejectReason};

use crate::handler::guard::own_account;
use crate::handler::{Ctx, Outcome, refuse};
use crate::store::ledger as books;
use crate::store::rows::{AccountRow, DeviceRow};

/// Most history entries a balance query may ask for.
pub const MAX_HISTORY: u32 = 50;

pub(in crate::handler) fn balance(
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
