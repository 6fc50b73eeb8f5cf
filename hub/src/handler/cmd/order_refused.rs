//! `OrderRefused`: the ATM will not execute an order; nothing was dispensed.

use qrcash_protocol::messages::OrderRefused;

use crate::handler::guard::{bound, same_order};
use crate::handler::{Ctx, Fail, Outgoing, steps};
use crate::store::rows::{self, AtmRow};
use crate::withdrawal::{Event, Phase, transition};

pub(in crate::handler) fn refused(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    r: &OrderRefused,
) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &r.tx_id)?;
    same_order(&w, &r.order_id)?;
    match transition(&w.lifecycle(), Event::Refused) {
        Ok(step) => {
            let out = steps::apply(ctx, &w, &step, None)?;
            ctx.note(format!(
                "order {} refused by {}: {}",
                r.order_id, atm.id, r.reason
            ));
            Ok(out)
        }
        Err(_) => {
            if matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::InDoubt) {
                rows::flag(
                    ctx.db,
                    &w.tx_id,
                    "order refused after a dispense was reported",
                )?;
            }
            ctx.note(format!(
                "order {} refused while transaction is {}",
                r.order_id, w.phase
            ));
            Ok(Vec::new())
        }
    }
}
