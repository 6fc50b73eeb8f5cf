//! What the agent asks a dispenser to do: cassette positions and notes per cassette.
//!
//! Only the request lives here; what the device actually did is in `outcome`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A cassette position, counted from 1 (the upper cassette) downwards.
///
/// Positions rather than denominations: which note sits in which cassette is the agent's
/// configuration, the dispenser only moves paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CassetteId(pub u8);

impl CassetteId {
    /// The upper (first) cassette; the only one on an LCDM-1000.
    pub const UPPER: CassetteId = CassetteId(1);
    /// The lower (second) cassette of an LCDM-2000.
    pub const LOWER: CassetteId = CassetteId(2);

    /// Zero-based index of this cassette in per-cassette vectors (`None` for position 0).
    pub fn index(self) -> Option<usize> {
        usize::from(self.0).checked_sub(1)
    }

    /// The cassette at a zero-based index.
    pub fn from_index(index: usize) -> Option<CassetteId> {
        u8::try_from(index + 1).ok().map(CassetteId)
    }
}

impl fmt::Display for CassetteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CassetteId::UPPER => write!(f, "cassette 1 (upper)"),
            CassetteId::LOWER => write!(f, "cassette 2 (lower)"),
            CassetteId(n) => write!(f, "cassette {n}"),
        }
    }
}

/// Notes to dispense, per cassette.
///
/// `notes[i]` is the number of notes wanted from cassette `i + 1`; missing trailing entries
/// mean zero. A request for zero notes in total is invalid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispenseRequest {
    /// Notes per cassette, index 0 = cassette 1 (upper).
    pub notes: Vec<u32>,
}

impl DispenseRequest {
    /// A request for `count` notes from the upper cassette only.
    pub fn upper(count: u32) -> Self {
        DispenseRequest { notes: vec![count] }
    }

    /// A request for notes from the upper and the lower cassette.
    pub fn upper_lower(upper: u32, lower: u32) -> Self {
        DispenseRequest {
            notes: vec![upper, lower],
        }
    }

    /// A request from a list of per-cassette counts (index 0 = upper).
    pub fn from_counts(notes: impl Into<Vec<u32>>) -> Self {
        DispenseRequest {
            notes: notes.into(),
        }
    }

    /// Notes wanted from `cassette` (zero for cassettes the request does not mention).
    pub fn notes_for(&self, cassette: CassetteId) -> u32 {
        cassette
            .index()
            .and_then(|i| self.notes.get(i).copied())
            .unwrap_or(0)
    }

    /// Total number of notes requested over all cassettes.
    pub fn total(&self) -> u64 {
        self.notes.iter().map(|&n| u64::from(n)).sum()
    }

    /// Cassettes with a non-zero count, with their counts, in position order.
    pub fn non_zero(&self) -> impl Iterator<Item = (CassetteId, u32)> + '_ {
        self.notes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(i, n)| CassetteId::from_index(i).map(|c| (c, *n)))
    }

    /// True when no note is requested at all.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cassette_index_round_trips_and_rejects_position_zero() {
        assert_eq!(CassetteId::UPPER.index(), Some(0));
        assert_eq!(CassetteId::LOWER.index(), Some(1));
        assert_eq!(CassetteId(0).index(), None);
        assert_eq!(CassetteId::from_index(1), Some(CassetteId::LOWER));
        assert_eq!(CassetteId::from_index(255), None);
    }

    #[test]
    fn request_accessors() {
        let r = DispenseRequest::upper_lower(3, 0);
        assert_eq!(r.notes_for(CassetteId::UPPER), 3);
        assert_eq!(r.notes_for(CassetteId::LOWER), 0);
        assert_eq!(r.notes_for(CassetteId(7)), 0);
        assert_eq!(r.total(), 3);
        assert_eq!(
            r.non_zero().collect::<Vec<_>>(),
            vec![(CassetteId::UPPER, 3)]
        );
        assert!(DispenseRequest::default().is_empty());
    }

    #[test]
    fn request_json_shape_is_stable() {
        let r = DispenseRequest::upper_lower(25, 4);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"notes":[25,4]}"#);
        assert_eq!(serde_json::from_str::<DispenseRequest>(&json).unwrap(), r);
    }
}
