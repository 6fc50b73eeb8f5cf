//! The notes in each cassette, as the agent counts them: seeded once from the configuration,
//! decreased by every recorded dispense in the transaction that records it, and set by a
//! technician who replenishes or counts a cassette. Kept here, not in `agent.toml`, so a
//! restart never resets them.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::Store;
use super::journal::{self, JournalKind};
use crate::error::StoreError;
use qrcash_protocol::messages::DispenseReport;

impl Store {
    /// Seeds the counts of cassettes not known yet (the first start, or a denomination
    /// added to the configuration) from `configured`; returns the denominations seeded.
    /// Counts already kept are never reset from the configuration.
    pub fn seed_cassettes(
        &mut self,
        configured: &[(u64, u32)],
        now: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let tx = self.conn().transaction()?;
        let mut seeded = Vec::new();
        for &(denomination, notes) in configured {
            let added = tx.execute(
                "INSERT OR IGNORE INTO cassettes (denomination, notes, updated_at)
                 VALUES (?1, ?2, ?3)",
                params![denomination as i64, i64::from(notes), now as i64],
            )?;
            if added == 1 {
                seeded.push(denomination);
            }
        }
        tx.commit()?;
        Ok(seeded)
    }

    /// The kept count of each denomination, by denomination.
    pub fn cassette_counts(&mut self) -> Result<Vec<(u64, u32)>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT denomination, notes FROM cassettes ORDER BY denomination DESC")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(d, n)| (d.max(0) as u64, u32::try_from(n.max(0)).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Sets the count of one cassette (a technician replenished or counted it); journals
    /// `cassette_set` with the count before. `Ok(None)` when no cassette of this
    /// denomination is kept.
    pub fn set_cassette_count(
        &mut self,
        denomination: u64,
        notes: u32,
        now: u64,
        why: &str,
    ) -> Result<Option<u32>, StoreError> {
        let tx = self.conn().transaction()?;
        let before: Option<i64> = tx
            .query_row(
                "SELECT notes FROM cassettes WHERE denomination = ?1",
                [denomination as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(before) = before else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE cassettes SET notes = ?2, updated_at = ?3 WHERE denomination = ?1",
            params![denomination as i64, i64::from(notes), now as i64],
        )?;
        journal::append(
            &tx,
            now,
            JournalKind::CassetteSet,
            None,
            None,
            &json!({ "denomination": denomination, "before": before, "after": notes, "why": why }),
        )?;
        tx.commit()?;
        Ok(Some(u32::try_from(before.max(0)).unwrap_or(u32::MAX)))
    }
}

/// Takes the notes picked from each cassette in `report` out of the kept counts (those that
/// reached the customer and those that went to the reject tray), inside the transaction that
/// records the report (never below zero). A report in doubt without counts takes nothing:
/// the count then stays high until a technician counts the cassette.
pub(super) fn count_out(
    conn: &Connection,
    report: &DispenseReport,
    now: u64,
) -> Result<(), StoreError> {
    for n in &report.notes {
        conn.execute(
            "UPDATE cassettes SET notes = MAX(notes - ?2, 0), updated_at = ?3
             WHERE denomination = ?1",
            params![n.denomination as i64, i64::from(n.picked), now as i64],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use qrcash_protocol::messages::{DispenseOutcome, NoteOutcome};

    use super::super::orders::tests::order;
    use super::super::{Outgoing, Store, testing};
    use super::*;

    /// A dispense of `tens` and `ones` notes picked (one of the tens rejected when any).
    fn dispensed(store: &mut Store, n: u8, tens: u32, ones: u32) {
        let o = order(n);
        store.begin_dispense(&o, 10, None, json!({})).unwrap();
        let note = |denomination, picked: u32| {
            let rejected = u32::from(denomination == 10_000 && picked > 0);
            NoteOutcome {
                denomination,
                requested: picked - rejected,
                picked,
                exited: picked - rejected,
                rejected,
            }
        };
        let r = DispenseReport {
            order_id: o.order_id,
            tx_id: o.tx_id,
            notes: vec![note(10_000, tens), note(1_000, ones)],
            dispensed: o.amount,
            outcome: DispenseOutcome::Dispensed,
            device_error: None,
            max_dispensed: None,
            source: None,
        };
        store
            .finish_dispense(&r, json!({}), 11, |seq| Outgoing {
                jti: format!("r{seq}"),
                kind: "DispenseReport",
                sealed: "x".into(),
            })
            .unwrap();
    }

    #[test]
    fn counts_survive_restarts_and_only_dispenses_and_technicians_change_them() {
        let (dir, mut s) = testing::store();
        let configured = [(10_000, 500), (1_000, 470)];
        assert_eq!(
            s.seed_cassettes(&configured, 1).unwrap(),
            vec![10_000, 1_000]
        );
        dispensed(&mut s, 1, 3, 5);
        dispensed(&mut s, 2, 1, 0);
        assert_eq!(
            s.cassette_counts().unwrap(),
            vec![(10_000, 496), (1_000, 465)]
        );

        // A restart with the same (stale) configuration resets nothing; a new
        // denomination is seeded.
        drop(s);
        let mut s = Store::open(&dir.path().join("agent.db"), Default::default()).unwrap();
        assert_eq!(
            s.seed_cassettes(&[(10_000, 500), (1_000, 470), (5_000, 100)], 2)
                .unwrap(),
            vec![5_000]
        );
        assert_eq!(
            s.cassette_counts().unwrap(),
            vec![(10_000, 496), (5_000, 100), (1_000, 465)]
        );

        // A technician replenishes: journalled with the count before.
        assert_eq!(
            s.set_cassette_count(1_000, 2_000, 3, "replenished")
                .unwrap(),
            Some(465)
        );
        assert_eq!(s.set_cassette_count(2_000, 10, 3, "typo").unwrap(), None);
        let set = s.journal_of_kind(JournalKind::CassetteSet).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].detail["before"], 465);
        assert_eq!(set[0].detail["after"], 2_000);

        // Counts never go below zero, whatever a report says.
        dispensed(&mut s, 3, 600, 0);
        assert_eq!(s.cassette_counts().unwrap()[0], (10_000, 0));
    }
}
