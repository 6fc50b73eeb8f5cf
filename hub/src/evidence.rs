//! What is known about the cash of one withdrawal, and the rules an operator's settlement
//! must keep. Pure: the caller loads the order and the reports, this decides.
//!
//! The evidence is what the ATM reported, attributed to the order by its id: the notes
//! planned in the order, the notes each report counted (and where the counts came from),
//! and from them the bounds of what can have left the machine:
//!
//! - **low**: the most any consistent report counted as exited (known to have left);
//! - **high**: the least upper bound any consistent report states (`max_dispensed` of an
//!   in-doubt report, the exact count of a definitive one), never above the amount.
//!
//! A settlement (`tx resolve`) must lie within `low..=high` and be payable in the order's
//! own notes with at least the counted notes of each denomination. A report that
//! contradicts itself (another currency, an upper bound below its own counts) bounds
//! nothing and is listed as such.

use std::fmt;

use qrcash_protocol::Amount;
use qrcash_protocol::messages::{CountSource, DispenseOutcome, DispenseReport, NoteCount};

/// One report as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEvidence {
    /// The device's verdict.
    pub outcome: DispenseOutcome,
    /// Where its counts come from.
    pub source: CountSource,
    /// Notes counted as exited, per denomination.
    pub counted: Vec<NoteCount>,
    /// Its bounds (`None`: it contradicts itself).
    pub bounds: Option<(u64, u64)>,
}

/// Everything known about the cash of one withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The amount ordered.
    pub amount: Amount,
    /// The notes the order asked for.
    pub planned: Vec<NoteCount>,
    /// Per report, in the order received.
    pub reports: Vec<ReportEvidence>,
    /// Notes known to have left, per denomination (the most any consistent report counted).
    pub counted: Vec<NoteCount>,
    /// Known to have left (minor units).
    pub low: u64,
    /// May have left at most (minor units).
    pub high: u64,
    /// Consistent reports disagree (one's counts exceed another's upper bound): the bounds
    /// are then the widest of them.
    pub conflicting: bool,
}

impl Evidence {
    /// Builds the evidence from the order's notes and the reports received for the order.
    pub fn new(amount: Amount, planned: &[NoteCount], reports: &[DispenseReport]) -> Evidence {
        let reports: Vec<ReportEvidence> = reports
            .iter()
            .map(|r| ReportEvidence {
                outcome: r.outcome,
                source: r.source.unwrap_or(CountSource::Device),
                counted: r
                    .notes
                    .iter()
                    .filter(|n| n.exited > 0)
                    .map(|n| NoteCount {
                        denomination: n.denomination,
                        count: n.exited,
                    })
                    .collect(),
                bounds: r.bounds(amount).filter(|_| {
                    // The counts must add up to the value the report claims.
                    let exited = r.notes.iter().try_fold(0u64, |acc, n| {
                        n.denomination
                            .checked_mul(u64::from(n.exited))
                            .and_then(|v| acc.checked_add(v))
                    });
                    r.notes.is_empty() || exited == Some(r.dispensed.minor)
                }),
            })
            .collect();
        let consistent = || reports.iter().filter_map(|r| r.bounds);
        let lows = consistent().map(|(l, _)| l);
        let highs = consistent().map(|(_, h)| h);
        let (mut low, mut high) = (
            lows.clone().max().unwrap_or(0),
            highs
                .clone()
                .min()
                .unwrap_or(amount.minor)
                .min(amount.minor),
        );
        let conflicting = low > high;
        if conflicting {
            low = lows.min().unwrap_or(0);
            high = highs.max().unwrap_or(amount.minor).min(amount.minor);
        }
        let mut counted: Vec<NoteCount> = Vec::new();
        // Reports that disagree give no floor per denomination either.
        for r in reports
            .iter()
            .filter(|r| r.bounds.is_some() && !conflicting)
        {
            for n in &r.counted {
                match counted
                    .iter_mut()
                    .find(|c| c.denomination == n.denomination)
                {
                    Some(c) => c.count = c.count.max(n.count),
                    None => counted.push(*n),
                }
            }
        }
        Evidence {
            amount,
            planned: planned.to_vec(),
            reports,
            counted,
            low,
            high,
            conflicting,
        }
    }

    /// Notes of `denomination` known to have left.
    fn counted_of(&self, denomination: u64) -> u32 {
        self.counted
            .iter()
            .find(|c| c.denomination == denomination)
            .map_or(0, |c| c.count)
    }

    /// Whether `value` can be paid with the order's notes, taking at least the counted notes
    /// of each denomination and at most the planned ones.
    pub fn payable(&self, value: u64) -> bool {
        // Reachable sums, denomination by denomination; orders are a few dozen notes.
        let mut reachable = std::collections::BTreeSet::from([0u64]);
        for n in &self.planned {
            let min = self.counted_of(n.denomination).min(n.count);
            let mut next = std::collections::BTreeSet::new();
            for base in &reachable {
                for k in min..=n.count {
                    let v = base.saturating_add(n.denomination.saturating_mul(u64::from(k)));
                    if v <= value {
                        next.insert(v);
                    }
                }
            }
            reachable = next;
        }
        reachable.contains(&value)
    }

    /// Checks an operator's settlement of `value` against the evidence.
    pub fn check(&self, value: u64) -> Result<(), Refusal> {
        if !(self.low..=self.high).contains(&value) {
            return Err(Refusal::OutsideBounds {
                value,
                low: self.low,
                high: self.high,
            });
        }
        if !self.payable(value) {
            return Err(Refusal::NotPayable {
                value,
                planned: self.planned.clone(),
            });
        }
        Ok(())
    }
}

/// Why a settlement does not fit the evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Below what is known to have left, or above what can have left.
    #[error("{value} lies outside what the evidence allows ({low}..={high})")]
    OutsideBounds {
        /// The value given.
        value: u64,
        /// Known to have left.
        low: u64,
        /// May have left at most.
        high: u64,
    },
    /// Not a sum of the order's notes (with the counted ones included).
    #[error("{value} cannot be paid in the order's notes ({})", Notes(planned))]
    NotPayable {
        /// The value given.
        value: u64,
        /// The order's notes.
        planned: Vec<NoteCount>,
    },
}

/// Notes as `3 × 10000 + 2 × 1000`.
pub struct Notes<'a>(pub &'a [NoteCount]);

impl fmt::Display for Notes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{} × {}", n.count, n.denomination)?;
        }
        Ok(())
    }
}

/// The name of a count source as shown to operators.
pub fn source_name(source: CountSource) -> &'static str {
    match source {
        CountSource::Device => "the device's answers",
        CountSource::LateAnswer => "the device's late answer, read after the agent restarted",
        CountSource::DriverRecord => "the driver's record of this order",
        CountSource::NoRecord => "no device record of this order",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::messages::NoteOutcome;
    use qrcash_protocol::{Currency, OrderId, TxId};

    fn yen(v: u64) -> Amount {
        Amount::new(v, Currency::JPY)
    }

    fn planned() -> Vec<NoteCount> {
        vec![
            NoteCount {
                denomination: 10_000,
                count: 1,
            },
            NoteCount {
                denomination: 1_000,
                count: 9,
            },
        ]
    }

    fn report(
        outcome: DispenseOutcome,
        exited: (u32, u32),
        max: Option<u64>,
        source: CountSource,
    ) -> DispenseReport {
        let notes = vec![
            NoteOutcome {
                denomination: 10_000,
                requested: 1,
                picked: exited.0,
                exited: exited.0,
                rejected: 0,
            },
            NoteOutcome {
                denomination: 1_000,
                requested: 9,
                picked: exited.1,
                exited: exited.1,
                rejected: 0,
            },
        ];
        DispenseReport {
            order_id: OrderId([1; 16]),
            tx_id: TxId([2; 16]),
            dispensed: yen(u64::from(exited.0) * 10_000 + u64::from(exited.1) * 1_000),
            notes,
            outcome,
            device_error: None,
            max_dispensed: max.map(yen),
            source: Some(source),
        }
    }

    #[test]
    fn no_record_bounds_are_nothing_to_everything() {
        let r = report(
            DispenseOutcome::InDoubt,
            (0, 0),
            Some(19_000),
            CountSource::NoRecord,
        );
        let e = Evidence::new(yen(19_000), &planned(), &[r]);
        assert_eq!((e.low, e.high, e.conflicting), (0, 19_000, false));
        assert!(e.check(0).is_ok() && e.check(19_000).is_ok() && e.check(12_000).is_ok());
        // 500 yen cannot be paid in 10,000 and 1,000 yen notes.
        assert!(matches!(e.check(500), Err(Refusal::NotPayable { .. })));
        assert!(matches!(
            e.check(20_000),
            Err(Refusal::OutsideBounds { .. })
        ));
    }

    #[test]
    fn counted_notes_raise_the_floor_per_denomination() {
        // The 10,000 yen note and two 1,000 yen notes are known out; a batch of the other
        // seven was in flight.
        let r = report(
            DispenseOutcome::InDoubt,
            (1, 2),
            Some(19_000),
            CountSource::DriverRecord,
        );
        let e = Evidence::new(yen(19_000), &planned(), &[r]);
        assert_eq!((e.low, e.high), (12_000, 19_000));
        assert!(e.check(12_000).is_ok() && e.check(15_000).is_ok());
        assert!(matches!(
            e.check(11_000),
            Err(Refusal::OutsideBounds { .. })
        ));
    }

    #[test]
    fn a_definitive_report_pins_the_value_and_self_contradiction_bounds_nothing() {
        let done = report(
            DispenseOutcome::Dispensed,
            (1, 9),
            None,
            CountSource::Device,
        );
        let e = Evidence::new(yen(19_000), &planned(), &[done]);
        assert_eq!((e.low, e.high), (19_000, 19_000));
        assert!(e.check(9_000).is_err());

        // Claims 0 but counts 19,000: bounds nothing.
        let mut liar = report(DispenseOutcome::InDoubt, (1, 9), None, CountSource::Device);
        liar.dispensed = yen(0);
        let e = Evidence::new(yen(19_000), &planned(), &[liar]);
        assert_eq!(e.reports[0].bounds, None);
        assert_eq!((e.low, e.high), (0, 19_000));
    }

    #[test]
    fn disagreeing_reports_widen_instead_of_inventing() {
        let a = report(
            DispenseOutcome::InDoubt,
            (0, 0),
            Some(0),
            CountSource::DriverRecord,
        );
        let b = report(
            DispenseOutcome::Dispensed,
            (1, 9),
            None,
            CountSource::LateAnswer,
        );
        let e = Evidence::new(yen(19_000), &planned(), &[a, b]);
        assert!(e.conflicting);
        assert_eq!((e.low, e.high), (0, 19_000));
    }
}
