//! `DispenseReport`: journalled always, applied once; a report that contradicts itself is
//! in doubt, never guessed.
//!
//! Load (the withdrawal, bound to this ATM and order) → [`decide`] (pure: the step, or for a
//! report that comes too late whether it agrees with the settlement and which correction it
//! proves) → apply (the report kept as evidence, then the step or the flag and proposal).

use qrcash_protocol::messages::{DispenseOutcome, DispenseReport};

use crate::handler::guard::{bound, same_order};
use crate::handler::{Ctx, Fail, Outgoing, steps};
use crate::store::rows::{self, AtmRow, WithdrawalRow};
use crate::store::settlement;
use crate::withdrawal::{Event, Phase, Step, transition};

pub(in crate::handler) fn report(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    r: &DispenseReport,
) -> Result<Vec<Outgoing>, Fail> {
    let w = bound(ctx, atm, &r.tx_id)?;
    same_order(&w, &r.order_id)?;
    let verdict = decide(&w, r);
    let json = serde_json::to_string(r).unwrap_or_default();
    settlement::record_report(
        ctx.db,
        &settlement::ReceivedReport {
            atm: &atm.id,
            jti: &ctx.jti,
            at: ctx.now,
            report: r,
            json: &json,
            applied: matches!(verdict, Verdict::Apply { .. }),
        },
    )?;
    match verdict {
        Verdict::Apply { step, consistent } => {
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
        Verdict::Late(late) => {
            let mut proposed = None;
            if let Some(disagreement) = &late.disagreement {
                if let Some(exact) = disagreement.proves {
                    proposed = Some(settlement::propose_correction(
                        ctx.db,
                        &w.tx_id,
                        w.settled,
                        exact,
                        &disagreement.text,
                        ctx.now,
                    )?);
                }
                rows::flag(ctx.db, &w.tx_id, &disagreement.text)?;
                tracing::warn!(tx = %w.tx_id, ?proposed, "late dispense report disagrees: flagged");
            }
            ctx.note(format!(
                "tx {} report not applied (transaction is {}){}",
                w.tx_id,
                w.phase,
                match (&late.disagreement, proposed) {
                    (None, _) => String::new(),
                    (Some(_), None) => "; flagged".into(),
                    (Some(_), Some(id)) => format!("; flagged, correction {id} proposed"),
                }
            ));
            Ok(Vec::new())
        }
    }
}

/// What a report does to its withdrawal.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// It moves the withdrawal: `step`, from the report as sent if it is `consistent`, else
    /// as in doubt.
    Apply { step: Step, consistent: bool },
    /// The withdrawal is past the point where a report moves it (a second report for a
    /// settled order): kept as evidence, applied never.
    Late(Late),
}

/// A report that came after the withdrawal was settled.
#[derive(Debug, Clone, PartialEq)]
struct Late {
    /// `None` when it agrees with the settlement; else why an operator must look.
    disagreement: Option<Disagreement>,
}

/// A late report that tells another story than the settlement.
#[derive(Debug, Clone, PartialEq)]
struct Disagreement {
    /// For the flag, the audit and the proposal.
    text: String,
    /// The amount it proves left the machine, when it proves one for a settled withdrawal:
    /// the correcting postings are proposed for approval, so the books are never silently
    /// left wrong next to a flag.
    proves: Option<u64>,
}

/// The pure decision: what report `r` does to withdrawal `w` (already bound to the ATM and
/// the order).
fn decide(w: &WithdrawalRow, r: &DispenseReport) -> Verdict {
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
    let event = Event::Report {
        outcome,
        dispensed: r.dispensed.minor,
    };
    if let Ok(step) = transition(&w.lifecycle(), event) {
        // Still unsure about a withdrawal already in doubt (an agent answers an order sent
        // again with the report it kept): nothing to apply, the report is kept as evidence.
        // Its bounds join the evidence an operator resolves the withdrawal by.
        if w.phase == Phase::InDoubt && step.next == Phase::InDoubt {
            return Verdict::Late(Late { disagreement: None });
        }
        return Verdict::Apply { step, consistent };
    }
    let settled_phase = matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::Failed);
    let bounds = r.bounds(w.amount).filter(|_| consistent);
    let agrees = bounds.is_some_and(|(low, high)| (low..=high).contains(&w.settled))
        && (r.outcome == DispenseOutcome::InDoubt || settled_phase);
    let disagreement = (!agrees).then(|| Disagreement {
        text: format!(
            "late report ({:?}, {}) for a {} transaction settled at {}",
            r.outcome, r.dispensed, w.phase, w.settled
        ),
        proves: bounds
            .filter(|_| settled_phase && r.outcome != DispenseOutcome::InDoubt)
            .map(|(exact, _)| exact),
    });
    Verdict::Late(Late { disagreement })
}

#[cfg(test)]
mod tests {
    use qrcash_protocol::messages::NoteOutcome;
    use qrcash_protocol::{Amount, Currency, OrderId, TxId};

    use super::*;

    fn yen(v: u64) -> Amount {
        Amount::new(v, Currency::JPY)
    }

    fn withdrawal(phase: Phase, settled: u64) -> WithdrawalRow {
        WithdrawalRow {
            tx_id: TxId([1; 16]),
            account: "hanako".into(),
            device_id: "phone-1".into(),
            amount: yen(30_000),
            phase,
            registered_at: 0,
            code_expires_at: 300,
            atm_id: Some("atm-1".into()),
            presented_at: Some(10),
            confirm_by: Some(70),
            challenge: Some("c".into()),
            notes: None,
            order_id: Some(OrderId([2; 16])),
            order_expires_at: Some(100),
            order_payload: None,
            confirmed_at: Some(20),
            confirmed_by: Some("phone-1".into()),
            settled,
            finished_at: None,
            needs_reconciliation: false,
            note: None,
        }
    }

    fn report(outcome: DispenseOutcome, dispensed: u64, notes: u32) -> DispenseReport {
        DispenseReport {
            order_id: OrderId([2; 16]),
            tx_id: TxId([1; 16]),
            outcome,
            dispensed: yen(dispensed),
            max_dispensed: None,
            notes: vec![NoteOutcome {
                denomination: 10_000,
                requested: 3,
                picked: notes,
                exited: notes,
                rejected: 0,
            }],
            device_error: None,
            source: None,
        }
    }

    #[test]
    fn a_report_moves_an_ordered_withdrawal_and_a_contradiction_is_in_doubt() {
        let w = withdrawal(Phase::Ordered, 0);
        let Verdict::Apply { step, consistent } =
            decide(&w, &report(DispenseOutcome::Dispensed, 30_000, 3))
        else {
            panic!("an ordered withdrawal takes its report");
        };
        assert!(consistent);
        assert_eq!(step.next, Phase::Dispensed);
        // Three notes of 10,000 are not 20,000: the report contradicts itself.
        let Verdict::Apply { step, consistent } =
            decide(&w, &report(DispenseOutcome::Dispensed, 20_000, 3))
        else {
            panic!("an ordered withdrawal takes its report");
        };
        assert!(!consistent);
        assert_eq!(step.next, Phase::InDoubt);
    }

    #[test]
    fn a_second_unsure_report_leaves_a_withdrawal_in_doubt_unapplied_and_a_sure_one_settles_it() {
        let w = withdrawal(Phase::InDoubt, 0);
        // The agent's answer to an order sent again: the unsure report it kept.
        assert_eq!(
            decide(&w, &report(DispenseOutcome::InDoubt, 10_000, 1)),
            Verdict::Late(Late { disagreement: None })
        );
        let Verdict::Apply { step, consistent } =
            decide(&w, &report(DispenseOutcome::Failed, 0, 0))
        else {
            panic!("a definitive report settles a withdrawal in doubt");
        };
        assert!(consistent);
        assert_eq!(step.next, Phase::Failed);
    }

    #[test]
    fn a_late_report_is_checked_against_the_settlement() {
        let settled = withdrawal(Phase::Dispensed, 30_000);
        assert_eq!(
            decide(&settled, &report(DispenseOutcome::Dispensed, 30_000, 3)),
            Verdict::Late(Late { disagreement: None })
        );
        // It proves that only 20,000 left: flagged, and the correction proposed.
        let Verdict::Late(Late {
            disagreement: Some(d),
        }) = decide(&settled, &report(DispenseOutcome::Partial, 20_000, 2))
        else {
            panic!("a disagreeing late report is flagged");
        };
        assert_eq!(d.proves, Some(20_000));
        // An unsure late report that cannot cover the settlement proves nothing exact.
        let failed = withdrawal(Phase::Failed, 0);
        let Verdict::Late(Late {
            disagreement: Some(d),
        }) = decide(&failed, &report(DispenseOutcome::InDoubt, 10_000, 1))
        else {
            panic!("a disagreeing late report is flagged");
        };
        assert_eq!(d.proves, None);
    }
}
