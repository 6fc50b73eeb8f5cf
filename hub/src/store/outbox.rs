//! The transactional outbox: every answer the hub decides is written here in the same
//! transaction as the decision, and deleted once it reached the broker. An instance that
//! dies between its commit and its publish leaves its answers here, and the sweeper of any
//! live instance publishes them again, each in a fresh envelope (receivers recognise a repeat
//! by its content, `docs/protocol.md` §4).

use super::sql::{Param, params};
use super::{Db, StoreError, from_sql, to_sql};

/// An answer waiting to be confirmed published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its row.
    pub id: i64,
    /// The MQTT topic.
    pub topic: String,
    /// The sealed message, as first published.
    pub payload: Vec<u8>,
}

/// Keeps an answer until [`confirm`]; a sweeper may publish it again from `due_at` on, and
/// forgets it at `expires_at` (the message's own expiry: receivers refuse it after that).
pub fn put(
    db: Db<'_>,
    topic: &str,
    payload: &[u8],
    now: u64,
    due_at: u64,
    expires_at: u64,
) -> Result<i64, StoreError> {
    Ok(db.row_cached(
        "INSERT INTO outbox(topic, payload, created_at, due_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![
            topic,
            payload,
            to_sql(now),
            to_sql(due_at),
            to_sql(expires_at)
        ],
        |r| r.get(0),
    )?)
}

/// Forgets answers that reached the broker (one statement per 64 ids).
pub fn confirm(db: Db<'_>, ids: &[i64]) -> Result<usize, StoreError> {
    let mut n = 0;
    for chunk in ids.chunks(64) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("?{i}")).collect();
        let values: Vec<&dyn Param> = chunk.iter().map(|id| id as &dyn Param).collect();
        n += db.exec_cached(
            &format!("DELETE FROM outbox WHERE id IN ({})", marks.join(", ")),
            values.as_slice(),
        )?;
    }
    Ok(n)
}

/// Takes up to `limit` answers due for publishing again, oldest first, and makes each due
/// again `retry_s` later (until confirmed). On PostgreSQL, rows another instance's sweeper
/// holds are skipped rather than waited for.
pub fn due(db: Db<'_>, now: u64, retry_s: u64, limit: u32) -> Result<Vec<Pending>, StoreError> {
    let sql = if db.is_postgres() {
        "UPDATE outbox SET due_at = ?2 WHERE id IN (
             SELECT id FROM outbox WHERE due_at <= ?1 AND expires_at > ?1
             ORDER BY id LIMIT ?3 FOR UPDATE SKIP LOCKED)
         RETURNING id, topic, payload"
    } else {
        "UPDATE outbox SET due_at = ?2 WHERE id IN (
             SELECT id FROM outbox WHERE due_at <= ?1 AND expires_at > ?1 ORDER BY id LIMIT ?3)
         RETURNING id, topic, payload"
    };
    let mut rows = db.rows_cached(
        sql,
        params![
            to_sql(now),
            to_sql(now.saturating_add(retry_s)),
            i64::from(limit)
        ],
        |r| {
            Ok(Pending {
                id: r.get(0)?,
                topic: r.get(1)?,
                payload: r.get(2)?,
            })
        },
    )?;
    rows.sort_by_key(|p| p.id);
    Ok(rows)
}

/// Forgets answers that expired unconfirmed (their receivers would refuse them now);
/// returns how many.
pub fn drop_expired(db: Db<'_>, now: u64) -> Result<usize, StoreError> {
    Ok(db.exec_cached("DELETE FROM outbox WHERE expires_at <= ?1", [to_sql(now)])?)
}

/// How many answers wait, and since when the oldest (operators, tests).
pub fn backlog(db: Db<'_>) -> Result<(u64, Option<u64>), StoreError> {
    let (n, oldest): (i64, Option<i64>) =
        db.row_cached("SELECT COUNT(*), MIN(created_at) FROM outbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((from_sql(n), oldest.map(from_sql)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn answers_wait_until_confirmed_come_due_again_and_expire() {
        let s = Store::open_test();
        let db = s.db();
        let a = put(db, "t/a", b"one", 100, 110, 400).unwrap();
        let b = put(db, "t/b", b"two", 101, 111, 130).unwrap();
        assert_eq!(backlog(db).unwrap(), (2, Some(100)));
        assert!(due(db, 109, 10, 10).unwrap().is_empty());
        let got = due(db, 111, 10, 10).unwrap();
        assert_eq!(
            got,
            vec![
                Pending {
                    id: a,
                    topic: "t/a".into(),
                    payload: b"one".to_vec()
                },
                Pending {
                    id: b,
                    topic: "t/b".into(),
                    payload: b"two".to_vec()
                },
            ]
        );
        // Taken: due again only 10 s later.
        assert!(due(db, 120, 10, 10).unwrap().is_empty());
        assert_eq!(confirm(db, &[a]).unwrap(), 1);
        assert_eq!(confirm(db, &[a]).unwrap(), 0);
        // `b` expired at 130: never published again, then forgotten.
        assert!(due(db, 131, 10, 10).unwrap().is_empty());
        assert_eq!(drop_expired(db, 131).unwrap(), 1);
        assert_eq!(backlog(db).unwrap(), (0, None));
    }
}
