//! The withdrawal life cycle: one enum of phases and one pure transition function.
//!
//! ```text
//!  Registered ──Present──▶ Presented ──Confirm──▶ Ordered ──Report──▶ Dispensed | Partial | Failed
//!      │                      │                     │  │                  ▲
//!      │ Decline / CodeExpired│ Decline / Deadline  │  └─Report(unsure)──▶ InDoubt ──Resolve / Report
//!      ▼                      ▼ SessionCancelled    │     ReportOverdue ─┘
//!   Declined | Expired     Declined | Expired |     └─Refused──▶ Cancelled
//!                          Cancelled
//! ```
//!
//! [`transition`] takes the current [`Lifecycle`] and an [`Event`] and returns the [`Step`]
//! to take: the next phase, the ledger effects (hold, capture, release) and what to tell the
//! ATM and the phone. It does no I/O and reads no clock; the handler persists the step and
//! sends the messages. Money rules enforced here (see `docs/invariants.md`):
//! - a hold is placed only by `Confirm`, exactly once, for the full amount;
//! - the hold is settled (captured and/or released) exactly once, to the cent;
//! - an outcome the device could not tell keeps the hold (`InDoubt`) until a definitive
//!   report or an operator settles it;
//! - a report that contradicts itself is treated as in doubt, never guessed.

use std::fmt;
use std::str::FromStr;

use qrcash_protocol::messages::{AbortReason, DispenseOutcome, ReceiptStatus};

/// Where a withdrawal is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Code issued, not yet shown at an ATM.
    Registered,
    /// Code shown at an ATM; waiting for the phone's confirmation.
    Presented,
    /// Confirmed: funds held and a dispense order sent to the ATM.
    Ordered,
    /// The full amount left the ATM (captured).
    Dispensed,
    /// Part of the amount left the ATM (captured), the rest released.
    Partial,
    /// Nothing left the ATM (released).
    Failed,
    /// Unknown outcome: the hold stays until a definitive report or an operator settles it.
    InDoubt,
    /// The code or the confirmation deadline ran out.
    Expired,
    /// The customer declined on the phone.
    Declined,
    /// The ATM gave up the session or refused the order.
    Cancelled,
}

impl Phase {
    /// Every phase, for exhaustive tests and listings.
    pub const ALL: [Phase; 10] = [
        Phase::Registered,
        Phase::Presented,
        Phase::Ordered,
        Phase::Dispensed,
        Phase::Partial,
        Phase::Failed,
        Phase::InDoubt,
        Phase::Expired,
        Phase::Declined,
        Phase::Cancelled,
    ];

    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Registered => "registered",
            Phase::Presented => "presented",
            Phase::Ordered => "ordered",
            Phase::Dispensed => "dispensed",
            Phase::Partial => "partial",
            Phase::Failed => "failed",
            Phase::InDoubt => "in_doubt",
            Phase::Expired => "expired",
            Phase::Declined => "declined",
            Phase::Cancelled => "cancelled",
        }
    }

    /// No event except an operator's can change it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Dispensed
                | Phase::Partial
                | Phase::Failed
                | Phase::Expired
                | Phase::Declined
                | Phase::Cancelled
        )
    }

    /// Whether the full amount is on hold in this phase.
    pub fn holds_funds(self) -> bool {
        matches!(self, Phase::Ordered | Phase::InDoubt)
    }

    /// Whether the amount counts against the daily limit (it may still leave, or did).
    pub fn counts_against_limit(self) -> bool {
        !matches!(
            self,
            Phase::Failed | Phase::Expired | Phase::Declined | Phase::Cancelled
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown withdrawal phase {s:?}"))
    }
}

/// The facts of a withdrawal the transition rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Current phase.
    pub phase: Phase,
    /// Requested amount, minor units.
    pub amount: u64,
    /// When the code expires, Unix seconds.
    pub code_expires_at: u64,
    /// Confirmation deadline once presented, Unix seconds.
    pub confirm_by: Option<u64>,
}

/// Something that happened to a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An ATM presented the code at `now`; the customer must confirm by `confirm_by`.
    Present {
        /// Now, Unix seconds.
        now: u64,
        /// The confirmation deadline to set.
        confirm_by: u64,
    },
    /// The phone's confirmation passed every check at `now`.
    Confirm {
        /// Now, Unix seconds.
        now: u64,
    },
    /// The ATM reported what it dispensed.
    Report {
        /// The device's verdict.
        outcome: DispenseOutcome,
        /// Value of the notes that left the machine, minor units.
        dispensed: u64,
    },
    /// The ATM refused the order without touching the dispenser.
    Refused,
    /// The ATM gave up the session.
    SessionCancelled,
    /// The last allowed wrong PIN was entered: the session ends.
    AuthFailed,
    /// The customer declined on the phone.
    Decline {
        /// "This was not me".
        not_me: bool,
    },
    /// The sweeper saw the code expire.
    CodeExpired {
        /// Now, Unix seconds.
        now: u64,
    },
    /// The sweeper saw the confirmation deadline pass.
    DeadlinePassed {
        /// Now, Unix seconds.
        now: u64,
    },
    /// No report arrived long after the order expired: the outcome is unknown.
    ReportOverdue,
    /// An operator counted the cash and settles an unresolved withdrawal.
    Resolve {
        /// Value the customer received, minor units.
        dispensed: u64,
    },
}

impl Event {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Present { .. } => "present",
            Event::Confirm { .. } => "confirm",
            Event::Report { .. } => "report",
            Event::Refused => "order_refused",
            Event::SessionCancelled => "session_cancelled",
            Event::AuthFailed => "auth_failed",
            Event::Decline { .. } => "decline",
            Event::CodeExpired { .. } => "code_expired",
            Event::DeadlinePassed { .. } => "deadline_passed",
            Event::ReportOverdue => "report_overdue",
            Event::Resolve { .. } => "resolve",
        }
    }
}

/// A ledger movement the step requires, in minor units of the withdrawal's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEffect {
    /// Move from the customer's available balance to held.
    Hold(u64),
    /// Move from held to the ATM cash (settlement) account: the cash left.
    Capture(u64),
    /// Move from held back to available.
    Release(u64),
}

/// What to do for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The phase afterwards.
    pub next: Phase,
    /// Ledger movements, in order.
    pub ledger: Vec<LedgerEffect>,
    /// Stop the ATM session with this reason.
    pub abort_atm: Option<AbortReason>,
    /// Tell the phone how it ended.
    pub receipt: Option<ReceiptStatus>,
    /// Value captured by this step (what the customer got).
    pub settled: u64,
    /// Flag the withdrawal for operator reconciliation.
    pub flag: bool,
    /// Send the dispense order again so the ATM answers it definitively.
    pub resend_order: bool,
}

impl Step {
    fn to(next: Phase) -> Step {
        Step {
            next,
            ledger: Vec::new(),
            abort_atm: None,
            receipt: None,
            settled: 0,
            flag: false,
            resend_order: false,
        }
    }

    fn settle(amount: u64, dispensed: u64) -> Step {
        let (next, status) = if dispensed == amount {
            (Phase::Dispensed, ReceiptStatus::Completed)
        } else if dispensed == 0 {
            (Phase::Failed, ReceiptStatus::Failed)
        } else {
            (Phase::Partial, ReceiptStatus::Partial)
        };
        let mut s = Step::to(next);
        if dispensed > 0 {
            s.ledger.push(LedgerEffect::Capture(dispensed));
        }
        if amount > dispensed {
            s.ledger.push(LedgerEffect::Release(amount - dispensed));
        }
        s.receipt = Some(status);
        s.settled = dispensed;
        s
    }

    fn in_doubt() -> Step {
        let mut s = Step::to(Phase::InDoubt);
        s.flag = true;
        s.receipt = Some(ReceiptStatus::InDoubt);
        s
    }
}

/// Why an event does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The code was already presented (or the withdrawal went on past that).
    #[error("the code was already used")]
    CodeAlreadyUsed,
    /// The code has expired.
    #[error("the code has expired")]
    CodeExpired,
    /// The withdrawal was declined or cancelled before the code was used.
    #[error("the code is no longer valid ({0})")]
    CodeWithdrawn(Phase),
    /// The confirmation deadline has passed.
    #[error("the confirmation deadline has passed")]
    Late,
    /// An operator's count exceeds the amount held.
    #[error("dispensed {dispensed} exceeds the amount {amount}")]
    ResolveExceedsAmount {
        /// The count given.
        dispensed: u64,
        /// The amount held.
        amount: u64,
    },
    /// The event makes no sense in this phase.
    #[error("cannot {event} a withdrawal that is {phase}")]
    WrongState {
        /// The current phase.
        phase: Phase,
        /// The event's name.
        event: &'static str,
    },
}

/// Whether a report is definitive and consistent with the amount; `None` means in doubt.
fn definitive(outcome: DispenseOutcome, amount: u64, dispensed: u64) -> Option<u64> {
    match outcome {
        DispenseOutcome::Dispensed if dispensed == amount => Some(dispensed),
        DispenseOutcome::Partial if dispensed > 0 && dispensed < amount => Some(dispensed),
        DispenseOutcome::Failed if dispensed == 0 => Some(0),
        _ => None,
    }
}

/// The one transition function of the withdrawal life cycle.
pub fn transition(w: &Lifecycle, event: Event) -> Result<Step, TransitionError> {
    use Phase as P;
    let wrong = || TransitionError::WrongState {
        phase: w.phase,
        event: event.name(),
    };
    let step = match (w.phase, event) {
        (P::Registered, Event::Present { now, confirm_by }) => {
            if now >= w.code_expires_at {
                return Err(TransitionError::CodeExpired);
            }
            debug_assert!(confirm_by > now);
            Step::to(P::Presented)
        }
        (P::Expired, Event::Present { .. }) => return Err(TransitionError::CodeExpired),
        (p @ (P::Declined | P::Cancelled), Event::Present { .. }) if w.confirm_by.is_none() => {
            return Err(TransitionError::CodeWithdrawn(p));
        }
        (_, Event::Present { .. }) => return Err(TransitionError::CodeAlreadyUsed),

        (P::Presented, Event::Confirm { now }) => {
            if w.confirm_by.is_none_or(|by| now > by) {
                return Err(TransitionError::Late);
            }
            let mut s = Step::to(P::Ordered);
            s.ledger.push(LedgerEffect::Hold(w.amount));
            s
        }

        (P::Ordered | P::InDoubt, Event::Report { outcome, dispensed }) => {
            match definitive(outcome, w.amount, dispensed) {
                Some(d) => Step::settle(w.amount, d),
                None if w.phase == P::InDoubt => {
                    // Still unsure: nothing changes, no second receipt.
                    let mut s = Step::to(P::InDoubt);
                    s.flag = true;
                    s
                }
                None => Step::in_doubt(),
            }
        }

        // Nothing left the machine: the same as a failed dispense.
        (P::Ordered, Event::Refused) => Step::settle(w.amount, 0),

        (P::Presented, Event::SessionCancelled) => {
            let mut s = Step::to(P::Cancelled);
            s.receipt = Some(ReceiptStatus::Cancelled);
            s
        }
        // The order may be on its way: keep the hold and make the ATM answer the order.
        (P::Ordered, Event::SessionCancelled) => {
            let mut s = Step::to(P::Ordered);
            s.resend_order = true;
            s
        }
        (p, Event::SessionCancelled) if p.is_final() || p == P::InDoubt => Step::to(p),

        (P::Registered, Event::Decline { .. }) => Step::to(P::Declined),
        (P::Presented, Event::Decline { not_me }) => {
            let mut s = Step::to(P::Declined);
            s.abort_atm = Some(if not_me {
                AbortReason::NotMe
            } else {
                AbortReason::Declined
            });
            s
        }

        (P::Presented, Event::AuthFailed) => {
            let mut s = Step::to(P::Declined);
            s.abort_atm = Some(AbortReason::AuthenticationFailed);
            s.receipt = Some(ReceiptStatus::Cancelled);
            s
        }

        (P::Registered, Event::CodeExpired { now }) if now >= w.code_expires_at => {
            Step::to(P::Expired)
        }
        (P::Presented, Event::DeadlinePassed { now }) if w.confirm_by.is_some_and(|b| now > b) => {
            let mut s = Step::to(P::Expired);
            s.abort_atm = Some(AbortReason::Timeout);
            s.receipt = Some(ReceiptStatus::Cancelled);
            s
        }

        (P::Ordered, Event::ReportOverdue) => Step::in_doubt(),

        (P::Ordered | P::InDoubt, Event::Resolve { dispensed }) => {
            if dispensed > w.amount {
                return Err(TransitionError::ResolveExceedsAmount {
                    dispensed,
                    amount: w.amount,
                });
            }
            Step::settle(w.amount, dispensed)
        }

        _ => return Err(wrong()),
    };
    debug_assert!(step_keeps_money_rules(w, &step));
    Ok(step)
}

/// The money rules every step obeys: holds only on confirm, settle exactly what is held.
fn step_keeps_money_rules(w: &Lifecycle, s: &Step) -> bool {
    let (mut hold, mut out) = (0u64, 0u64);
    for e in &s.ledger {
        match e {
            LedgerEffect::Hold(v) => hold += v,
            LedgerEffect::Capture(v) | LedgerEffect::Release(v) => out += v,
        }
    }
    let held_before = if w.phase.holds_funds() { w.amount } else { 0 };
    let held_after = if s.next.holds_funds() { w.amount } else { 0 };
    held_before + hold == held_after + out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_800_000_000;

    fn at(phase: Phase) -> Lifecycle {
        Lifecycle {
            phase,
            amount: 30_000,
            code_expires_at: T0 + 600,
            confirm_by: (!matches!(phase, Phase::Registered)).then_some(T0 + 120),
        }
    }

    #[test]
    fn happy_path_holds_then_captures_everything() {
        let w = at(Phase::Registered);
        let s = transition(
            &w,
            Event::Present {
                now: T0,
                confirm_by: T0 + 120,
            },
        )
        .unwrap();
        assert_eq!(s.next, Phase::Presented);
        assert!(s.ledger.is_empty());
        let s = transition(&at(Phase::Presented), Event::Confirm { now: T0 + 10 }).unwrap();
        assert_eq!(
            (s.next, s.ledger),
            (Phase::Ordered, vec![LedgerEffect::Hold(30_000)])
        );
        let s = transition(
            &at(Phase::Ordered),
            Event::Report {
                outcome: DispenseOutcome::Dispensed,
                dispensed: 30_000,
            },
        )
        .unwrap();
        assert_eq!(s.next, Phase::Dispensed);
        assert_eq!(s.ledger, vec![LedgerEffect::Capture(30_000)]);
        assert_eq!(s.receipt, Some(ReceiptStatus::Completed));
    }

    #[test]
    fn partial_failed_and_in_doubt_reports() {
        let o = at(Phase::Ordered);
        let rep = |outcome, dispensed| transition(&o, Event::Report { outcome, dispensed });
        let p = rep(DispenseOutcome::Partial, 10_000).unwrap();
        assert_eq!(p.next, Phase::Partial);
        assert_eq!(
            p.ledger,
            vec![LedgerEffect::Capture(10_000), LedgerEffect::Release(20_000)]
        );
        let f = rep(DispenseOutcome::Failed, 0).unwrap();
        assert_eq!(
            (f.next, f.ledger),
            (Phase::Failed, vec![LedgerEffect::Release(30_000)])
        );
        let d = rep(DispenseOutcome::InDoubt, 10_000).unwrap();
        assert_eq!(d.next, Phase::InDoubt);
        assert!(d.ledger.is_empty() && d.flag);
        // Self-contradicting reports are never guessed: in doubt.
        for (o, v) in [
            (DispenseOutcome::Dispensed, 20_000),
            (DispenseOutcome::Failed, 1_000),
            (DispenseOutcome::Partial, 0),
            (DispenseOutcome::Partial, 30_000),
            (DispenseOutcome::Dispensed, 40_000),
        ] {
            assert_eq!(rep(o, v).unwrap().next, Phase::InDoubt, "{o:?} {v}");
        }
    }

    #[test]
    fn in_doubt_is_settled_by_a_definitive_report_or_an_operator() {
        let d = at(Phase::InDoubt);
        let s = transition(
            &d,
            Event::Report {
                outcome: DispenseOutcome::Partial,
                dispensed: 5_000,
            },
        )
        .unwrap();
        assert_eq!(s.next, Phase::Partial);
        let s = transition(&d, Event::Resolve { dispensed: 30_000 }).unwrap();
        assert_eq!(s.next, Phase::Dispensed);
        assert_eq!(
            transition(&d, Event::Resolve { dispensed: 30_001 }).unwrap_err(),
            TransitionError::ResolveExceedsAmount {
                dispensed: 30_001,
                amount: 30_000
            }
        );
        let s = transition(
            &d,
            Event::Report {
                outcome: DispenseOutcome::InDoubt,
                dispensed: 0,
            },
        )
        .unwrap();
        assert_eq!((s.next, s.receipt), (Phase::InDoubt, None));
    }

    #[test]
    fn codes_are_one_time_and_expire() {
        let present = Event::Present {
            now: T0,
            confirm_by: T0 + 120,
        };
        for p in [
            Phase::Presented,
            Phase::Ordered,
            Phase::Dispensed,
            Phase::InDoubt,
        ] {
            assert_eq!(
                transition(&at(p), present).unwrap_err(),
                TransitionError::CodeAlreadyUsed
            );
        }
        assert_eq!(
            transition(&at(Phase::Expired), present).unwrap_err(),
            TransitionError::CodeExpired
        );
        let mut late = at(Phase::Registered);
        late.code_expires_at = T0;
        assert_eq!(
            transition(&late, present).unwrap_err(),
            TransitionError::CodeExpired
        );
        let mut declined = at(Phase::Declined);
        declined.confirm_by = None;
        assert_eq!(
            transition(&declined, present).unwrap_err(),
            TransitionError::CodeWithdrawn(Phase::Declined)
        );
    }

    #[test]
    fn confirmation_must_be_on_time_and_only_once() {
        let p = at(Phase::Presented);
        assert_eq!(
            transition(&p, Event::Confirm { now: T0 + 121 }).unwrap_err(),
            TransitionError::Late
        );
        assert!(transition(&p, Event::Confirm { now: T0 + 120 }).is_ok());
        assert!(matches!(
            transition(&at(Phase::Ordered), Event::Confirm { now: T0 }),
            Err(TransitionError::WrongState { .. })
        ));
        let s = transition(&p, Event::DeadlinePassed { now: T0 + 121 }).unwrap();
        assert_eq!(
            (s.next, s.abort_atm),
            (Phase::Expired, Some(AbortReason::Timeout))
        );
        assert!(transition(&p, Event::DeadlinePassed { now: T0 + 120 }).is_err());
    }

    #[test]
    fn decline_cancel_and_refusal() {
        let s = transition(&at(Phase::Presented), Event::Decline { not_me: true }).unwrap();
        assert_eq!(
            (s.next, s.abort_atm),
            (Phase::Declined, Some(AbortReason::NotMe))
        );
        assert!(transition(&at(Phase::Ordered), Event::Decline { not_me: true }).is_err());
        let s = transition(&at(Phase::Ordered), Event::Refused).unwrap();
        assert_eq!(
            (s.next, s.ledger),
            (Phase::Failed, vec![LedgerEffect::Release(30_000)])
        );
        let s = transition(&at(Phase::Presented), Event::AuthFailed).unwrap();
        assert_eq!(
            (s.next, s.abort_atm),
            (Phase::Declined, Some(AbortReason::AuthenticationFailed))
        );
        let s = transition(&at(Phase::Ordered), Event::SessionCancelled).unwrap();
        assert_eq!(s.next, Phase::Ordered);
        assert!(s.resend_order && s.ledger.is_empty());
        let s = transition(&at(Phase::Presented), Event::SessionCancelled).unwrap();
        assert_eq!(s.next, Phase::Cancelled);
        assert!(transition(&at(Phase::Registered), Event::SessionCancelled).is_err());
    }

    #[test]
    fn phase_names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        assert!("nope".parse::<Phase>().is_err());
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let outcome = prop_oneof![
            Just(DispenseOutcome::Dispensed),
            Just(DispenseOutcome::Partial),
            Just(DispenseOutcome::Failed),
            Just(DispenseOutcome::InDoubt),
        ];
        prop_oneof![
            (0u64..800).prop_map(|d| Event::Present {
                now: T0 + d,
                confirm_by: T0 + d + 120
            }),
            (0u64..800).prop_map(|d| Event::Confirm { now: T0 + d }),
            (outcome, 0u64..4).prop_map(|(outcome, n)| Event::Report {
                outcome,
                dispensed: n * 10_000
            }),
            Just(Event::Refused),
            Just(Event::SessionCancelled),
            Just(Event::AuthFailed),
            any::<bool>().prop_map(|not_me| Event::Decline { not_me }),
            (0u64..800).prop_map(|d| Event::CodeExpired { now: T0 + d }),
            (0u64..800).prop_map(|d| Event::DeadlinePassed { now: T0 + d }),
            Just(Event::ReportOverdue),
            (0u64..4).prop_map(|n| Event::Resolve {
                dispensed: n * 10_000
            }),
        ]
    }

    proptest! {
        /// Whatever happens, at most one hold is placed, what is held is settled exactly
        /// once, and the customer is never charged more than the amount.
        #[test]
        fn holds_are_settled_exactly(events in proptest::collection::vec(any_event(), 0..30)) {
            let mut w = at(Phase::Registered);
            let (mut held, mut holds, mut captured, mut released) = (0u64, 0u32, 0u64, 0u64);
            for e in events {
                if let Event::Present { confirm_by, .. } = e && w.phase == Phase::Registered {
                    w.confirm_by = Some(confirm_by);
                }
                let Ok(s) = transition(&w, e) else { continue };
                for l in &s.ledger {
                    match *l {
                        LedgerEffect::Hold(v) => { held += v; holds += 1; }
                        LedgerEffect::Capture(v) => { held -= v; captured += v; }
                        LedgerEffect::Release(v) => { held -= v; released += v; }
                    }
                }
                w.phase = s.next;
                prop_assert_eq!(held, if w.phase.holds_funds() { w.amount } else { 0 });
            }
            prop_assert!(holds <= 1);
            prop_assert!(captured <= w.amount);
            if holds == 1 && w.phase.is_final() {
                prop_assert_eq!(captured + released, w.amount);
            }
        }
    }
}
