//! `DeclineWithdrawal`: the customer says no; the ATM is told to abort.

use qrcash_protocol::Amount;
use qrcash_protocol::messages::{DeclineWithdrawal, PhonePush};

use crate::handler::guard::{load_own, wrong_state};
use crate::handler::{Ctx, Outcome, steps};
use crate::restriction;
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow};
use crate::withdrawal::{Event, transition};

pub(in crate::handler) fn decline(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    d: &DeclineWithdrawal,
) -> Outcome {
    let w = load_own(ctx, account, &d.tx_id)?;
    // "Not me" freezes the account: a device under the new-device restriction (possibly the
    // fraudster's own) may decline, but never lock the owner out.
    let restricted = restriction::device_restriction(device).is_some_and(|r| r.is_active(ctx.now));
    let not_me = d.not_me && !restricted;
    if d.not_me && restricted {
        ctx.note(format!(
            "not me from restricted device {}: declined without freezing",
            device.id
        ));
    }
    let step =
        transition(&w.lifecycle(), Event::Decline { not_me }).map_err(|_| wrong_state(&w))?;
    let mut out = steps::apply(ctx, &w, &step, None)?;
    if not_me {
        rows::set_frozen(
            ctx.db,
            &account.id,
            true,
            Some(&format!("not me: withdrawal {}", w.tx_id)),
            ctx.now,
        )?;
        tracing::warn!(account = %account.id, tx = %w.tx_id, "not me: account frozen");
    }
    if !(d.not_me && restricted) {
        ctx.note(format!(
            "tx {} declined{}",
            w.tx_id,
            if not_me {
                " (not me: account frozen)"
            } else {
                ""
            }
        ));
    }
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    out.push(ctx.push_phone(
        &device.id,
        PhonePush::Receipt(qrcash_protocol::messages::Receipt {
            reference: w.tx_id.to_string(),
            kind: qrcash_protocol::messages::ReceiptKind::Withdrawal,
            requested: w.amount,
            settled: Amount::new(0, w.amount.currency),
            status: qrcash_protocol::messages::ReceiptStatus::Cancelled,
            balance: Amount::new(available, w.amount.currency),
            at: ctx.now,
        }),
    )?);
    Ok(out)
}
