//! `SessionCancelled`: the customer walked away at the ATM before confirming.

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::SessionCancelled;

use crate::handler::guard::bound;
use crate::handler::{Ctx, Fail, Outgoing, refuse, steps};
use crate::store::rows::AtmRow;
use crate::withdrawal::{Event, transition};

pub(in crate::handler) fn cancelled(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    s: &SessionCancelled,
) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &s.tx_id)?;
    let step = transition(&w.lifecycle(), Event::SessionCancelled).map_err(|_| {
        refuse(
            RejectReason::WrongState {
                state: w.phase.as_str().into(),
            },
            format!("transaction {} is {}", w.tx_id, w.phase),
        )
    })?;
    ctx.note(format!(
        "session for tx {} cancelled ({:?}) while {}",
        w.tx_id, s.reason, w.phase
    ));
    steps::apply(ctx, &w, &step, None)
}
