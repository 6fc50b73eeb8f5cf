//! `Heartbeat`: the ATM's cassettes and state, kept for note breakdowns and operators.

use qrcash_protocol::messages::Heartbeat;

use crate::handler::{Ctx, Fail, Outgoing};
use crate::store::rows::{self, AtmRow};

pub(in crate::handler) fn heartbeat(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    h: &Heartbeat,
) -> Result<Vec<Outgoing>, Fail> {
    let state = serde_json::to_value(h.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    rows::atm_heartbeat(ctx.db, &atm.id, &state, &h.cassettes, ctx.now)?;
    Ok(Vec::new())
}
