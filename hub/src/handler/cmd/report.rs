//! `DispenseReport`: journalled always, applied once; a report that contradicts itself is
//! in doubt, never guessed.

use qrcash_protocol::messages::{DispenseOutcome, DispenseReport};

use crate::handler::guard::{bound, same_order};
use crate::handler::{Ctx, Fail, Outgoing, steps};
use crate::store::rows::{self, AtmRow};
use crate::store::settlement;
use crate::withdrawal::{Event, Phase, transition};

pub(in crate::handler) fn report(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    r: &DispenseReport,
) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &r.tx_id)?;
    same_order(&w, &r.order_id)?;
    // A report that contradicts itself (currency, note counts) is in doubt, never guessed.
    let exited: Option<u64> = r.notes.iter().try_fold(0u64, |acc, n| {
        n.denomination
            .checked_mul(u64::from(n.exited))
            .and_then(|v| acc.checked_add(v))
    });
    let consistent = r.dispensed.currency == w.amount.currency
        && (r.notes.is_empty() || exited == Some(r.dispensed.minor));
    let outcome = if consistent {
        r.outcome
    } else {
        DispenseOutcome::InDoubt
    };
    let json = serde_json::to_string(r).unwrap_or_default();
    let step = transition(
        &w.lifecycle(),
        Event::Report {
            outcome,
            dispensed: r.dispensed.minor,
        },
    );
    settlement::record_report(
        ctx.db,
        &settlement::ReceivedReport {
            atm: &atm.id,
            jti: &ctx.jti,
            at: ctx.now,
            report: r,
            json: &json,
            applied: step.is_ok(),
        },
    )?;
    match step {
        Ok(step) => {
            let note = (!consistent).then_some("inconsistent dispense report: treated as in doubt");
            let out = steps::apply(ctx, &w, &step, note)?;
            ctx.note(format!(
                "tx {} {} {} → {}",
                w.tx_id,
                format!("{:?}", r.outcome).to_lowercase(),
                r.dispensed,
                step.next
            ));
            if step.next == Phase::InDoubt {
                tracing::warn!(tx = %w.tx_id, atm = %atm.id, "dispense in doubt: flagged");
            }
            Ok(out)
        }
        Err(_) => {
            // A second report for a settled order: journalled above, applied never. If it
            // tells a different story, an operator must look; if it proves another amount
            // left the machine, the correcting postings are proposed for approval, so the
            // books are never silently left wrong next to a flag.
            let settled_phase =
                matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::Failed);
            let bounds = r.bounds(w.amount).filter(|_| consistent);
            let agrees = bounds.is_some_and(|(low, high)| (low..=high).contains(&w.settled))
                && (r.outcome == DispenseOutcome::InDoubt || settled_phase);
            let mut proposed = None;
            if !agrees {
                let text = format!(
                    "late report ({:?}, {}) for a {} transaction settled at {}",
                    r.outcome, r.dispensed, w.phase, w.settled
                );
                if settled_phase
                    && r.outcome != DispenseOutcome::InDoubt
                    && let Some((exact, _)) = bounds
                {
                    proposed = Some(settlement::propose_correction(
                        ctx.db, &w.tx_id, w.settled, exact, &text, ctx.now,
                    )?);
                }
                rows::flag(ctx.db, &w.tx_id, &text)?;
                tracing::warn!(tx = %w.tx_id, ?proposed, "late dispense report disagrees: flagged");
            }
            ctx.note(format!(
                "tx {} report not applied (transaction is {}){}",
                w.tx_id,
                w.phase,
                match (agrees, proposed) {
                    (true, _) => String::new(),
                    (false, None) => "; flagged".into(),
                    (false, Some(id)) => format!("; flagged, correction {id} proposed"),
                }
            ));
            Ok(Vec::new())
        }
    }
}
