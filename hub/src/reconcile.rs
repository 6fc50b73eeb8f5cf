//! Cassette reconciliation: what an ATM says it holds, against what the hub knows left it.
//!
//! The hub keeps every change of the cassette counts an ATM reports in its heartbeats
//! (`atm_counts`), and every dispense report with the notes picked per denomination. Between
//! two consecutive snapshots, each cassette should have lost exactly the notes picked in the
//! reports received in between (picked includes notes sent to the reject tray: they left the
//! cassette too). More notes than that is a replenishment or a technician's count; fewer is a
//! discrepancy to investigate. Pure: the figures come in, the verdicts go out.

use serde::Serialize;

/// One cassette between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CassetteChange {
    /// The denomination.
    pub denomination: u64,
    /// Notes at the earlier snapshot.
    pub before: u32,
    /// Notes at the later one.
    pub after: u32,
    /// Notes picked by the dispenses reported in between.
    pub picked: u32,
    /// What the change means.
    pub verdict: Verdict,
}

/// What a change of count means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "notes")]
pub enum Verdict {
    /// Exactly the notes dispensed.
    Balanced,
    /// More notes than dispensing leaves: replenished or counted up by a technician.
    Added(u32),
    /// Fewer notes than dispensing explains: notes unaccounted for.
    Missing(u32),
}

/// The change between two snapshots, with the time span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// Earlier snapshot, Unix seconds.
    pub from: u64,
    /// Later snapshot.
    pub to: u64,
    /// Each cassette.
    pub cassettes: Vec<CassetteChange>,
}

/// Judges each cassette of `before` → `after` (denomination, notes) given the notes `picked`
/// per denomination in between. A denomination missing from one snapshot counts as zero
/// there.
pub fn judge(
    before: &[(u64, u32)],
    after: &[(u64, u32)],
    picked: &[(u64, u32)],
) -> Vec<CassetteChange> {
    let get =
        |list: &[(u64, u32)], d: u64| list.iter().find(|(k, _)| *k == d).map_or(0, |(_, n)| *n);
    let mut denominations: Vec<u64> = before.iter().chain(after).map(|(d, _)| *d).collect();
    denominations.sort_unstable();
    denominations.dedup();
    denominations
        .into_iter()
        .map(|d| {
            let (b, a, p) = (get(before, d), get(after, d), get(picked, d));
            let expected = i64::from(b) - i64::from(p);
            let diff = i64::from(a) - expected;
            let verdict = match diff {
                0 => Verdict::Balanced,
                n if n > 0 => Verdict::Added(u32::try_from(n).unwrap_or(u32::MAX)),
                n => Verdict::Missing(u32::try_from(-n).unwrap_or(u32::MAX)),
            };
            CassetteChange {
                denomination: d,
                before: b,
                after: a,
                picked: p,
                verdict,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispensed_notes_balance_and_the_rest_is_added_or_missing() {
        let before = [(10_000, 100), (1_000, 100)];
        let v = judge(
            &before,
            &[(10_000, 99), (1_000, 98)],
            &[(10_000, 1), (1_000, 2)],
        );
        assert!(v.iter().all(|c| c.verdict == Verdict::Balanced), "{v:?}");
        let v = judge(
            &before,
            &[(10_000, 99), (1_000, 90)],
            &[(10_000, 1), (1_000, 2)],
        );
        assert_eq!(v[0].verdict, Verdict::Missing(8), "1,000s: {v:?}");
        assert_eq!(v[1].verdict, Verdict::Balanced);
        let v = judge(&before, &[(10_000, 500), (1_000, 100)], &[]);
        assert_eq!(v[1].verdict, Verdict::Added(400));
        // A cassette that disappeared from the report lost every note.
        let v = judge(&before, &[(10_000, 100)], &[]);
        assert_eq!(v[0].verdict, Verdict::Missing(100));
    }
}
