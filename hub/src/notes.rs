//! Banknote arithmetic: whether an amount is payable, and the note breakdown of an order.
//!
//! Pure functions over denominations (minor units) and cassette counts; no storage. The
//! breakdown prefers large notes (greedy, as ATMs do) and falls back to an exhaustive search
//! when the greedy choice gets stuck (e.g. 6,000 from 5,000s and 2,000s).

use std::collections::BTreeMap;

use qrcash_protocol::messages::NoteCount;

/// Largest amount (in units of the denominations' common divisor) the payability check
/// explores; beyond that only the divisibility test applies (every realistic amount is far
/// below it once limits are checked).
const MAX_DP_UNITS: u64 = 1_000_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Whether `amount` can be paid with unlimited notes of `denominations`.
pub fn payable(amount: u64, denominations: &[u64]) -> bool {
    let denoms: Vec<u64> = denominations.iter().copied().filter(|d| *d > 0).collect();
    if amount == 0 || denoms.is_empty() {
        return false;
    }
    let g = denoms.iter().copied().fold(0, gcd);
    if !amount.is_multiple_of(g) {
        return false;
    }
    let target = amount / g;
    if target > MAX_DP_UNITS {
        // Divisible by the common divisor and huge: every such amount is payable once it is
        // above the Frobenius number, which for note systems is tiny.
        return true;
    }
    let units: Vec<usize> = denoms.iter().map(|d| (d / g) as usize).collect();
    let n = target as usize;
    let mut reachable = vec![false; n + 1];
    reachable[0] = true;
    for i in 1..=n {
        reachable[i] = units.iter().any(|u| *u <= i && reachable[i - u]);
    }
    reachable[n]
}

/// The notes for `amount` from cassettes holding `available[denomination] = count`
/// (`None` count: unknown, treated as unlimited). Greedy from the largest note, then an
/// exhaustive search if greedy cannot finish. `None` if the ATM cannot pay the amount.
pub fn breakdown(amount: u64, available: &BTreeMap<u64, Option<u32>>) -> Option<Vec<NoteCount>> {
    let denoms: Vec<(u64, u64)> = available
        .iter()
        .rev()
        .filter(|(d, c)| **d > 0 && c.is_none_or(|c| c > 0))
        .map(|(d, c)| (*d, c.map_or(u64::MAX, u64::from)))
        .collect();
    if amount == 0 || denoms.is_empty() {
        return None;
    }
    let counts = greedy(amount, &denoms).or_else(|| search(amount, &denoms))?;
    let notes: Vec<NoteCount> = denoms
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|((d, _), c)| NoteCount {
            denomination: *d,
            count: u32::try_from(c).unwrap_or(u32::MAX),
        })
        .collect();
    debug_assert_eq!(
        notes
            .iter()
            .map(|n| n.denomination * u64::from(n.count))
            .sum::<u64>(),
        amount
    );
    Some(notes)
}

fn greedy(amount: u64, denoms: &[(u64, u64)]) -> Option<Vec<u64>> {
    let mut rest = amount;
    let mut counts = Vec::with_capacity(denoms.len());
    for (d, avail) in denoms {
        let take = (rest / d).min(*avail);
        rest -= take * d;
        counts.push(take);
    }
    (rest == 0).then_some(counts)
}

/// Depth-first over the counts of each denomination, largest first, fewest notes found
/// first. Bounded: note counts are capped by what an ATM can hand out in one bundle.
fn search(amount: u64, denoms: &[(u64, u64)]) -> Option<Vec<u64>> {
    const MAX_NOTES_PER_DENOMINATION: u64 = 200;
    fn go(rest: u64, denoms: &[(u64, u64)], counts: &mut Vec<u64>) -> bool {
        let Some(((d, avail), tail)) = denoms.split_first() else {
            return rest == 0;
        };
        let max = (rest / d).min(*avail).min(MAX_NOTES_PER_DENOMINATION);
        for take in (0..=max).rev() {
            counts.push(take);
            if go(rest - take * d, tail, counts) {
                return true;
            }
            counts.pop();
        }
        false
    }
    let mut counts = Vec::new();
    go(amount, denoms, &mut counts).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cassettes(list: &[(u64, Option<u32>)]) -> BTreeMap<u64, Option<u32>> {
        list.iter().copied().collect()
    }

    #[test]
    fn payability_follows_the_notes() {
        let yen = [10_000, 5_000, 2_000, 1_000];
        assert!(payable(1_000, &yen));
        assert!(payable(123_000, &yen));
        assert!(!payable(1_500, &yen));
        assert!(!payable(0, &yen));
        assert!(!payable(1_000, &[]));
        // 5,000 and 2,000 only: 1,000 and 3,000 cannot be paid, 6,000 and 7,000 can.
        let odd = [5_000, 2_000];
        assert!(!payable(1_000, &odd));
        assert!(!payable(3_000, &odd));
        assert!(payable(6_000, &odd));
        assert!(payable(7_000, &odd));
    }

    #[test]
    fn greedy_prefers_large_notes() {
        let c = cassettes(&[(10_000, None), (5_000, None), (1_000, None)]);
        let notes = breakdown(37_000, &c).unwrap();
        assert_eq!(
            notes,
            vec![
                NoteCount {
                    denomination: 10_000,
                    count: 3
                },
                NoteCount {
                    denomination: 5_000,
                    count: 1
                },
                NoteCount {
                    denomination: 1_000,
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn availability_is_respected() {
        let c = cassettes(&[(10_000, Some(1)), (1_000, Some(30))]);
        let notes = breakdown(30_000, &c).unwrap();
        assert_eq!(notes[0].count, 1);
        assert_eq!(notes[1].count, 20);
        let empty = cassettes(&[(10_000, Some(0)), (1_000, Some(5))]);
        assert_eq!(breakdown(10_000, &empty), None);
    }

    #[test]
    fn search_finds_what_greedy_misses() {
        let c = cassettes(&[(5_000, None), (2_000, None)]);
        let notes = breakdown(6_000, &c).unwrap();
        assert_eq!(
            notes,
            vec![NoteCount {
                denomination: 2_000,
                count: 3
            }]
        );
        assert_eq!(breakdown(3_000, &c), None);
    }
}
