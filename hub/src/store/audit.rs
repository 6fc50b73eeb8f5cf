//! The append-only audit log: one row per message received (accepted, duplicate or
//! rejected, with the reason) and per operator or sweeper action. Never a secret or a
//! payload: ids, types and reasons only. Triggers in the schema refuse updates and deletes.

use super::sql::params;
use crate::store::Db;

use super::{from_sql, to_sql};
use crate::error::StoreError;

/// One audit entry to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// `atm`, `phone`, `operator`, `sweeper`, `unknown`.
    pub source: String,
    /// Sender id, when known.
    pub sender: Option<String>,
    /// MQTT topic, for messages.
    pub topic: Option<String>,
    /// Message type or operator command.
    pub msg_type: Option<String>,
    /// Message id.
    pub jti: Option<String>,
    /// `accepted`, `duplicate`, `rejected`, `done`.
    pub outcome: String,
    /// Machine-readable reason code of a refusal.
    pub reason: Option<String>,
    /// Human-readable detail (ids, amounts; never secrets).
    pub detail: Option<String>,
}

/// Records a refused message of a phone that has no enrolled device (a login signed by the
/// key it carries) in the pruned `login_refusals` table instead of the append-only audit
/// log: such keys cost nothing to make, so their refusals must not grow the hub forever.
pub fn append_login_refusal(db: Db<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    let clip =
        |s: &Option<String>, n: usize| s.as_ref().map(|s| s.chars().take(n).collect::<String>());
    db.exec_cached(
        "INSERT INTO login_refusals(at, sender, msg_type, reason, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            to_sql(e.at),
            clip(&e.sender, 128),
            clip(&e.msg_type, 64),
            clip(&e.reason, 64),
            clip(&e.detail, 256)
        ],
    )?;
    Ok(())
}

/// Forgets login refusals from before `before`; returns how many.
pub fn prune_login_refusals(db: Db<'_>, before: u64) -> Result<usize, StoreError> {
    Ok(db.exec_cached("DELETE FROM login_refusals WHERE at < ?1", [to_sql(before)])?)
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Row id (increasing).
    pub id: i64,
    /// The entry.
    pub entry: AuditEntry,
}

/// Appends an entry.
pub fn append(db: Db<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO audit(at, source, sender, topic, msg_type, jti, outcome, reason, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            to_sql(e.at),
            e.source,
            e.sender,
            e.topic,
            e.msg_type,
            e.jti,
            e.outcome,
            e.reason,
            e.detail
        ],
    )?;
    Ok(())
}

/// The latest `n` entries, oldest first.
pub fn tail(db: Db<'_>, n: usize) -> Result<Vec<AuditRow>, StoreError> {
    let mut rows = db.rows(
        "SELECT id, at, source, sender, topic, msg_type, jti, outcome, reason, detail
         FROM audit ORDER BY id DESC LIMIT ?1",
        [i64::try_from(n).unwrap_or(i64::MAX)],
        |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                entry: AuditEntry {
                    at: from_sql(r.get(1)?),
                    source: r.get(2)?,
                    sender: r.get(3)?,
                    topic: r.get(4)?,
                    msg_type: r.get(5)?,
                    jti: r.get(6)?,
                    outcome: r.get(7)?,
                    reason: r.get(8)?,
                    detail: r.get(9)?,
                },
            })
        },
    )?;
    rows.reverse();
    Ok(rows)
}

/// Number of entries with `outcome` (tests and operators).
pub fn count(db: Db<'_>, outcome: &str) -> Result<u64, StoreError> {
    let n: i64 = db.row_cached(
        "SELECT COUNT(*) FROM audit WHERE outcome = ?1",
        [outcome],
        |r| r.get(0),
    )?;
    Ok(from_sql(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn entries_append_and_cannot_be_changed() {
        let s = Store::open_test();
        let db = s.db();
        for i in 0..3 {
            append(
                db,
                &AuditEntry {
                    at: i,
                    source: "atm".into(),
                    outcome: "accepted".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let t = tail(db, 2).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].entry.at, t[1].entry.at), (1, 2));
        assert_eq!(count(db, "accepted").unwrap(), 3);
        assert!(db.exec_cached("DELETE FROM audit", []).is_err());
        assert!(
            db.exec_cached("UPDATE audit SET outcome = 'x'", [])
                .is_err()
        );
    }
}
